//! What the XDP program decided about a frame, and the per-verdict counters it keeps.

/// The outcome of the XDP program for one frame. The discriminant is the index into the
/// `VERDICTS` per-CPU array map.
///
/// Frames the relay cannot have sent or received legitimately (cut short inside a header they
/// claim, or with lengths that contradict each other) are dropped in the kernel and counted;
/// everything else is passed to the network stack.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// IPv4/UDP, first fragment or unfragmented: candidate for the fast path. Passed.
    Udp4 = 0,
    /// IPv6/UDP (UDP directly after the fixed header): candidate for the fast path. Passed.
    Udp6 = 1,
    /// IPv4 or IPv6 but not UDP, an IPv6 extension header, or a non-first IPv4 fragment. Passed.
    OtherIp = 2,
    /// Not IP at all (ARP, LLDP, ...). Passed.
    NonIp = 3,
    /// The frame ends inside a header it announces (Ethernet, VLAN, IPv4 with its options,
    /// IPv6, UDP). Dropped.
    Truncated = 4,
    /// Header fields contradict each other or the frame: IPv4 version or IHL invalid, IP total
    /// or payload length beyond the frame, UDP length outside the IP payload. Dropped.
    Malformed = 5,
    /// A packet of an installed flow, rewritten and sent on (XDP_TX or XDP_REDIRECT).
    Forwarded = 6,
    /// A packet of an installed flow over its tenant's or allocation's rate limit. Dropped
    /// (and counted per policer in `POLICED`), not passed: userspace would only drop it too.
    OverLimit = 7,
    /// A datagram to a relayed address from a peer without a permission (RFC 8656 section
    /// 9), or from a port of the relay host's own address that is not a relayed address.
    /// Dropped before it spends any budget: userspace would only drop it too.
    Unpermitted = 8,
    /// A packet of a room route with several destinations: marked in its XDP metadata and
    /// passed to the TC program, which sends one copy per destination (`room`). Policed
    /// already.
    FanOut = 9,
}

impl Verdict {
    /// Number of verdicts: the size of the `VERDICTS` map.
    pub const COUNT: u32 = 10;

    /// Every verdict, in map-index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Udp4,
        Self::Udp6,
        Self::OtherIp,
        Self::NonIp,
        Self::Truncated,
        Self::Malformed,
        Self::Forwarded,
        Self::OverLimit,
        Self::Unpermitted,
        Self::FanOut,
    ];

    /// Whether the program lets the frame go on to the network stack (`XDP_PASS`) or drops it
    /// (`XDP_DROP`).
    pub const fn passes(self) -> bool {
        !matches!(
            self,
            Self::Truncated | Self::Malformed | Self::OverLimit | Self::Unpermitted
        )
    }

    /// The XDP action this verdict maps to (values from `enum xdp_action` in the kernel
    /// UAPI). A forwarded packet leaves by XDP_TX or, to another interface, XDP_REDIRECT.
    pub const fn xdp_action(self) -> u32 {
        match self {
            Self::Forwarded => XDP_TX,
            Self::Truncated | Self::Malformed | Self::OverLimit | Self::Unpermitted => XDP_DROP,
            _ => XDP_PASS,
        }
    }

    /// The map index.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The verdict's name as operators see it in logs, metrics and the demo.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Udp4 => "udp4",
            Self::Udp6 => "udp6",
            Self::OtherIp => "other-ip",
            Self::NonIp => "non-ip",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::Forwarded => "forwarded",
            Self::OverLimit => "over-limit",
            Self::Unpermitted => "unpermitted",
            Self::FanOut => "fan-out",
        }
    }
}

/// `XDP_DROP` from the kernel's `enum xdp_action`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS` from the kernel's `enum xdp_action`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX` from the kernel's `enum xdp_action`.
pub const XDP_TX: u32 = 3;

/// Packets and bytes counted for one verdict on one CPU: the value of the `VERDICTS` map.
/// Both fields are native-endian (the map is only ever read on the host that wrote it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames counted.
    pub packets: u64,
    /// Bytes counted: the frame from the Ethernet header to its end, as XDP sees it.
    pub bytes: u64,
}

const _: () = assert!(size_of::<Counters>() == 16);

impl Counters {
    /// Adds another CPU's (or another period's) counts to these.
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `Counters` is `repr(C)`, has no padding (asserted above) and every bit pattern is valid.
unsafe impl aya::Pod for Counters {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_verdict_in_index_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.index() as usize, i, "{v:?}");
        }
    }

    #[test]
    fn only_broken_over_limit_and_unpermitted_frames_are_dropped() {
        let dropped = [
            Verdict::Truncated,
            Verdict::Malformed,
            Verdict::OverLimit,
            Verdict::Unpermitted,
        ];
        for v in Verdict::ALL {
            assert_eq!(v.passes(), !dropped.contains(&v), "{v:?}");
            let want = match v {
                Verdict::Forwarded => XDP_TX,
                _ if v.passes() => XDP_PASS,
                _ => XDP_DROP,
            };
            assert_eq!(v.xdp_action(), want);
        }
    }

    #[test]
    fn counters_add_wraps_instead_of_panicking() {
        let a = Counters {
            packets: u64::MAX,
            bytes: 10,
        };
        let b = Counters {
            packets: 2,
            bytes: 5,
        };
        assert_eq!(
            a.add(b),
            Counters {
                packets: 1,
                bytes: 15
            }
        );
    }
}
