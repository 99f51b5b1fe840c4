//! Safe parsing of Ethernet / 802.1Q / 802.1ad / IPv4 / IPv6 / UDP headers, shared by the
//! XDP program and the host.
//!
//! The parser is generic over [`Frame`]: the XDP program implements it over packet pointers
//! (every read bounds-checked against `data_end`, as the verifier demands), the host over a
//! byte slice. The same code therefore runs in the kernel and in host unit tests, including
//! frames the kernel never hands to XDP (shorter than an Ethernet header). Multi-byte fields
//! are read big-endian from byte arrays, so no unaligned access is ever made.

// The XDP program has no function calls to spare: every step of the parser is inlined into it.
#![expect(
    clippy::inline_always,
    reason = "the parser is inlined into the XDP program"
)]

use crate::Verdict;

/// Read access to one frame, from its Ethernet header on.
pub trait Frame {
    /// Whether the frame is at least `len` bytes long.
    fn has(&self, len: usize) -> bool;
    /// Bytes `[offset, offset + N)`, or `None` when the frame is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    fn has(&self, len: usize) -> bool {
        self.len() >= len
    }

    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// IEEE 802.1Q customer VLAN tag.
const ETH_P_8021Q: u16 = 0x8100;
/// IEEE 802.1ad service VLAN tag (the outer tag of Q-in-Q).
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;

/// Q-in-Q: an outer service tag and an inner customer tag. Deeper stacks are not IP to us.
const MAX_VLAN_TAGS: usize = 2;

/// Where a UDP datagram's headers sit in a frame that parsed cleanly.
#[derive(Clone, Copy)]
pub struct UdpFrame {
    /// IP version: 4 or 6.
    pub ip_version: u8,
    /// Offset of the IP header from the start of the frame.
    pub l3: usize,
    /// Offset of the UDP header from the start of the frame.
    pub l4: usize,
}

impl UdpFrame {
    pub const fn verdict(self) -> Verdict {
        if self.ip_version == 4 {
            Verdict::Udp4
        } else {
            Verdict::Udp6
        }
    }
}

#[inline(always)]
fn be16<F: Frame + ?Sized>(frame: &F, offset: usize) -> Option<u16> {
    frame.read::<2>(offset).map(u16::from_be_bytes)
}

/// Parses the frame down to its UDP header. `Err` carries the verdict for every frame that is
/// not a clean, unfragmented UDP datagram.
#[inline(always)]
pub fn udp_frame<F: Frame + ?Sized>(frame: &F) -> Result<UdpFrame, Verdict> {
    let mut ethertype = be16(frame, ETH_HLEN - 2).ok_or(Verdict::Truncated)?;
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // The tag is TCI (2 bytes) then the encapsulated ethertype (2 bytes).
        ethertype = be16(frame, l3 + 2).ok_or(Verdict::Truncated)?;
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(frame, l3),
        ETH_P_IPV6 => ipv6(frame, l3),
        _ => Err(Verdict::NonIp),
    }
}

/// RFC 791 section 3.1. Headers are checked for presence first (a frame cut short still
/// announces its original lengths), then the lengths for consistency.
#[inline(always)]
fn ipv4<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<UdpFrame, Verdict> {
    let header = frame.read::<IPV4_MIN_HLEN>(l3).ok_or(Verdict::Truncated)?;
    if header[0] >> 4 != 4 {
        return Err(Verdict::Malformed);
    }
    let ihl = usize::from(header[0] & 0x0F) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Verdict::Malformed);
    }
    // Options: the whole announced header must be in the frame.
    if !frame.has(l3 + ihl) {
        return Err(Verdict::Truncated);
    }
    // Any fragment (More Fragments set or a non-zero offset) goes to the stack to be reassembled.
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    if flags_offset & 0x3FFF != 0 || header[9] != IPPROTO_UDP {
        return Err(Verdict::OtherIp);
    }
    let l4 = l3 + ihl;
    let udp_len = udp_len(frame, l4)?;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total_len < ihl || !frame.has(l3 + total_len) {
        return Err(Verdict::Malformed);
    }
    check_udp_len(udp_len, total_len - ihl)?;
    Ok(UdpFrame {
        ip_version: 4,
        l3,
        l4,
    })
}

/// RFC 8200 section 3. Only UDP straight after the fixed header is ours; extension headers
/// go to the stack.
#[inline(always)]
fn ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<UdpFrame, Verdict> {
    let header = frame.read::<IPV6_HLEN>(l3).ok_or(Verdict::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(Verdict::Malformed);
    }
    if header[6] != IPPROTO_UDP {
        return Err(Verdict::OtherIp);
    }
    let l4 = l3 + IPV6_HLEN;
    let udp_len = udp_len(frame, l4)?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if !frame.has(l4 + payload_len) {
        return Err(Verdict::Malformed);
    }
    check_udp_len(udp_len, payload_len)?;
    Ok(UdpFrame {
        ip_version: 6,
        l3,
        l4,
    })
}

/// The UDP header's length field, once the whole header is known to be in the frame.
#[inline(always)]
fn udp_len<F: Frame + ?Sized>(frame: &F, l4: usize) -> Result<usize, Verdict> {
    let header = frame.read::<UDP_HLEN>(l4).ok_or(Verdict::Truncated)?;
    Ok(usize::from(u16::from_be_bytes([header[4], header[5]])))
}

/// RFC 768: the UDP length covers header and data and must fit in the IP payload.
#[inline(always)]
const fn check_udp_len(udp_len: usize, ip_payload_len: usize) -> Result<(), Verdict> {
    if udp_len < UDP_HLEN || udp_len > ip_payload_len {
        Err(Verdict::Malformed)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames shorter than an Ethernet header never reach XDP on Linux (drivers, test-run and
    /// `bpf_xdp_adjust_head` all refuse them), so this is where they are tested.
    #[test]
    fn frames_shorter_than_ethernet_are_truncated() {
        for len in 0..14 {
            let frame = [0x08_u8; 14];
            assert_eq!(
                udp_frame(&frame[..len]).err(),
                Some(Verdict::Truncated),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn slice_reads_are_bounds_checked() {
        let bytes = [1_u8, 2, 3];
        assert_eq!(bytes[..].read::<2>(1), Some([2, 3]));
        assert_eq!(bytes[..].read::<2>(2), None);
        assert_eq!(bytes[..].read::<1>(usize::MAX), None);
        assert!(bytes[..].has(3) && !bytes[..].has(4));
    }
}
