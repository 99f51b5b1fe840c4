#![expect(
    clippy::inline_always,
    reason = "inlined into the XDP and TC programs in the kernel"
)]
//! Room routes as the kernel forwards them: packets that arrive at a room endpoint's port
//! from a publisher's address, by SSRC, go to every subscriber of that SSRC, each from the
//! subscriber endpoint's own port, bytes of the UDP payload untouched (SRTP stays valid).
//!
//! A route is a [`RouteKey`] in `ROOM_ROUTES` whose [`RoomRoute`] names a slot: its
//! destinations are the entries `slot * MAX_ROUTE_DESTINATIONS + i` (`i < destinations`) of
//! the array `ROOM_DESTINATIONS`, its counters entry `slot` of the per-CPU `ROUTE_STATS`.
//! One destination: the XDP program rewrites and sends the packet itself. More: it marks
//! the packet ([`FANOUT_MARK`] in the XDP metadata) and passes it to the TC ingress
//! program, which sends one rewritten clone per destination (`bpf_loop`) and drops the
//! original.

use crate::parse::Frame;

/// Route slots: entries of `ROUTE_STATS`, and `ROOM_DESTINATIONS` holds
/// `MAX_ROOM_ROUTES * MAX_ROUTE_DESTINATIONS` destinations (about 9 MiB).
pub const MAX_ROOM_ROUTES: u32 = 1024;
/// Destinations one route can have in the kernel (rtpengine's kernel module stops at 32);
/// a route with more stays in userspace.
pub const MAX_ROUTE_DESTINATIONS: u32 = 256;

/// What the XDP program leaves in the packet's metadata (4 bytes before the frame, native
/// byte order) for the TC program: "a room route with several destinations; policed".
pub const FANOUT_MARK: u32 = 0x5259_4d46;

/// [`RouteKey::kind`]: an RTP packet, matched by its SSRC.
pub const KIND_RTP: u8 = 0;
/// [`RouteKey::kind`]: an RTCP packet (RFC 5761 section 4: second byte 192..=223), matched
/// by its sender's SSRC.
pub const KIND_RTCP: u8 = 1;

/// Matches a packet arriving at a room endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// The endpoint's address (the packet's destination), network byte order; IPv4 in the
    /// first 4 bytes, the rest zero.
    pub local: [u8; 16],
    /// The publisher's address (the packet's source), same layout.
    pub remote: [u8; 16],
    /// The endpoint's port, network byte order.
    pub local_port: [u8; 2],
    /// The publisher's port, network byte order.
    pub remote_port: [u8; 2],
    /// The RTP SSRC or RTCP sender SSRC, network byte order (as on the wire).
    pub ssrc: [u8; 4],
    /// `flow::FAMILY_IPV4` or `flow::FAMILY_IPV6`.
    pub family: u8,
    /// [`KIND_RTP`] or [`KIND_RTCP`].
    pub kind: u8,
    /// Explicit padding, always zero (keys are compared bytewise by the kernel).
    pub pad: [u8; 2],
}

const _: () = assert!(size_of::<RouteKey>() == 44);

/// The value of a [`RouteKey`]. Every field is native byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomRoute {
    /// How many destinations (1..=[`MAX_ROUTE_DESTINATIONS`]) the route has.
    pub destinations: u32,
    /// The route's slot (< [`MAX_ROOM_ROUTES`]): its destinations in `ROOM_DESTINATIONS`,
    /// its counters in `ROUTE_STATS`.
    pub slot: u32,
    /// Index in `POLICERS` of the room's limit (0: none).
    pub room_policer: u32,
    /// Index in `POLICERS` of the room's tenant's limit (0: none).
    pub tenant_policer: u32,
    /// Family of the key and of every destination (the kernel does not translate).
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
    /// Index in `POLICERS` of the publishing endpoint's limit (0: none). Where an older
    /// layout had padding (zero), so routes it pinned read as "no endpoint limit".
    pub endpoint_policer: u32,
}

const _: () = assert!(size_of::<RoomRoute>() == 24);

/// Where one copy goes: from the subscriber endpoint's own port to the subscriber.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomDestination {
    /// The subscriber endpoint's address (the copy's source), network byte order; IPv4 in
    /// the first 4 bytes.
    pub src: [u8; 16],
    /// The subscriber's address (the copy's destination), same layout.
    pub dst: [u8; 16],
    /// Network byte order.
    pub src_port: [u8; 2],
    /// Network byte order.
    pub dst_port: [u8; 2],
}

const _: () = assert!(size_of::<RoomDestination>() == 36);

/// Per-route, per-CPU counters (`ROUTE_STATS`), native byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Packets the kernel forwarded (to every destination).
    pub packets: u64,
    /// Their bytes as received (the frame from the Ethernet header on).
    pub bytes: u64,
    /// Copies sent: `packets` times the destinations, less `missed`.
    pub copies: u64,
    /// Copies the TC program could not send (no next hop for that destination).
    pub missed: u64,
    /// Packets dropped over the room's or the tenant's limit.
    pub dropped: u64,
    /// CLOCK_MONOTONIC nanoseconds of the last packet forwarded.
    pub last_seen_ns: u64,
}

const _: () = assert!(size_of::<RouteStats>() == 48);

impl RouteStats {
    /// Adds another CPU's counts; the latest `last_seen_ns` wins.
    #[must_use]
    pub const fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(o.packets),
            bytes: self.bytes.wrapping_add(o.bytes),
            copies: self.copies.wrapping_add(o.copies),
            missed: self.missed.wrapping_add(o.missed),
            dropped: self.dropped.wrapping_add(o.dropped),
            last_seen_ns: if o.last_seen_ns > self.last_seen_ns {
                o.last_seen_ns
            } else {
                self.last_seen_ns
            },
        }
    }
}

/// The index in `ROOM_DESTINATIONS` of destination `i` of the route in `slot`, or `None`
/// out of range (the programs then pass the packet up).
#[inline(always)]
pub const fn destination_index(slot: u32, i: u32) -> Option<u32> {
    if slot >= MAX_ROOM_ROUTES || i >= MAX_ROUTE_DESTINATIONS {
        None
    } else {
        Some(slot * MAX_ROUTE_DESTINATIONS + i)
    }
}

/// The route key's `kind` and `ssrc` of a UDP payload of `len` bytes starting with `head`,
/// read as the daemon's `rtp::classify` does (RFC 3550 section 5.1, RFC 5761 section 4):
/// version 2; RTCP when the second byte is 192..=223 (its sender SSRC in bytes 4..8); RTP
/// otherwise, which must hold its fixed header and the CSRCs its CC field announces (its
/// SSRC in bytes 8..12). `None`: not for a room route (the packet goes up).
#[inline(always)]
pub const fn classify(head: &[u8; 12], len: usize) -> Option<(u8, [u8; 4])> {
    if len < 8 || head[0] >> 6 != 2 {
        return None;
    }
    if head[1] >= 192 && head[1] <= 223 {
        return Some((KIND_RTCP, [head[4], head[5], head[6], head[7]]));
    }
    let csrcs = (head[0] & 0x0f) as usize;
    if len < 12 + 4 * csrcs {
        return None;
    }
    Some((KIND_RTP, [head[8], head[9], head[10], head[11]]))
}

/// [`classify`] of the UDP payload of `len` bytes at `offset` in `frame`, reading only
/// what the payload holds (8 bytes of a shorter RTCP packet, 12 otherwise).
#[inline(always)]
pub fn classify_payload<F: Frame + ?Sized>(
    frame: &F,
    offset: usize,
    len: usize,
) -> Option<(u8, [u8; 4])> {
    let head: [u8; 12] = if len >= 12 {
        frame.read(offset)?
    } else {
        let e: [u8; 8] = frame.read(offset)?;
        [e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], 0, 0, 0, 0]
    };
    classify(&head, len)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no implicit padding (sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::RouteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RoomRoute {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RoomDestination {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(b0: u8, b1: u8) -> [u8; 12] {
        [b0, b1, 0, 1, 0, 0, 0, 2, 0x12, 0x34, 0x56, 0x78]
    }

    #[test]
    fn rtp_is_matched_by_its_ssrc() {
        assert_eq!(
            classify(&head(0x80, 96), 100),
            Some((KIND_RTP, [0x12, 0x34, 0x56, 0x78]))
        );
        // Marker bit set, padding bit set: still RTP, bytes untouched.
        assert_eq!(
            classify(&head(0xa0, 0x80 | 0x60), 12),
            Some((KIND_RTP, [0x12, 0x34, 0x56, 0x78]))
        );
    }

    #[test]
    fn rtcp_is_matched_by_its_sender_ssrc() {
        for pt in [192, 200, 201, 206, 223] {
            assert_eq!(
                classify(&head(0x81, pt), 8),
                Some((KIND_RTCP, [0, 0, 0, 2])),
                "{pt}"
            );
        }
    }

    #[test]
    fn others_go_up() {
        // Version 0 (STUN), version 1, too short, CSRCs beyond the payload.
        assert_eq!(classify(&head(0x00, 1), 100), None);
        assert_eq!(classify(&head(0x40, 96), 100), None);
        assert_eq!(classify(&head(0x80, 96), 7), None);
        assert_eq!(classify(&head(0x80, 96), 11), None);
        assert_eq!(classify(&head(0x82, 96), 19), None);
        assert!(classify(&head(0x82, 96), 20).is_some());
    }

    #[test]
    fn payloads_are_read_no_further_than_they_go() {
        // An 8-byte RTCP packet at the end of a frame: read whole, nothing past it.
        let mut frame = [0_u8; 20];
        frame[12..].copy_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 9]);
        assert_eq!(
            classify_payload(&frame[..], 12, 8),
            Some((KIND_RTCP, [0, 0, 0, 9]))
        );
        assert_eq!(classify_payload(&frame[..], 13, 8), None);
        let rtp = head(0x80, 96);
        assert_eq!(
            classify_payload(&rtp[..], 0, 12),
            Some((KIND_RTP, [0x12, 0x34, 0x56, 0x78]))
        );
    }

    #[test]
    fn destination_indexes_stay_in_the_array() {
        assert_eq!(destination_index(0, 0), Some(0));
        assert_eq!(
            destination_index(2, 5),
            Some(2 * MAX_ROUTE_DESTINATIONS + 5)
        );
        assert_eq!(
            destination_index(MAX_ROOM_ROUTES - 1, MAX_ROUTE_DESTINATIONS - 1),
            Some(MAX_ROOM_ROUTES * MAX_ROUTE_DESTINATIONS - 1)
        );
        assert_eq!(destination_index(MAX_ROOM_ROUTES, 0), None);
        assert_eq!(destination_index(0, MAX_ROUTE_DESTINATIONS), None);
    }

    #[test]
    fn stats_add_keeps_the_latest_sighting() {
        let a = RouteStats {
            packets: 1,
            bytes: 10,
            copies: 8,
            missed: 0,
            dropped: 2,
            last_seen_ns: 5,
        };
        let b = RouteStats {
            last_seen_ns: 3,
            ..a
        };
        let sum = a.add(b);
        assert_eq!((sum.packets, sum.copies, sum.dropped), (2, 16, 4));
        assert_eq!(sum.last_seen_ns, 5);
    }
}
