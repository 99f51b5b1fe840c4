//! Which peers a client may reach through the relay (RFC 8656 section 21.3: an open relay
//! is an attack tool). By default loopback, private, link-local, unique-local, multicast and
//! unspecified ranges are refused; operators open or close ranges with `--allowed-peer-ip`
//! and `--denied-peer-ip` as in coturn. The relay host's own addresses are refused whatever
//! is opened, except port-exact where they are live relayed addresses (the class of
//! CVE-2020-26262: a relay must not be a way into its own host's services).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// An inclusive range of addresses of one family: `A`, `A-B` (coturn's syntax) or `A/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    first: IpAddr,
    last: IpAddr,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.first, self.last, canonical(ip)) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => (a..=b).contains(&x),
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => (a..=b).contains(&x),
            _ => false,
        }
    }

    fn cidr(ip: IpAddr, prefix: u8) -> Result<Self, RangeError> {
        match ip {
            IpAddr::V4(ip) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                let first = u32::from(ip) & mask;
                Ok(Self {
                    first: Ipv4Addr::from(first).into(),
                    last: Ipv4Addr::from(first | !mask).into(),
                })
            }
            IpAddr::V6(ip) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let first = u128::from(ip) & mask;
                Ok(Self {
                    first: Ipv6Addr::from(first).into(),
                    last: Ipv6Addr::from(first | !mask).into(),
                })
            }
            _ => Err(RangeError::Prefix),
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("not an IP address, range (A-B) or prefix (A/len)")]
    Syntax,
    #[error("the two ends of the range are of different families, or reversed")]
    Ends,
    #[error("prefix length too long for the address family")]
    Prefix,
}

impl FromStr for IpRange {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some((ip, len)) = s.split_once('/') {
            let ip = ip.parse().map_err(|_| RangeError::Syntax)?;
            let len = len.parse().map_err(|_| RangeError::Syntax)?;
            return Self::cidr(ip, len);
        }
        let (first, last) = s.split_once('-').unwrap_or((s, s));
        let first: IpAddr = first.trim().parse().map_err(|_| RangeError::Syntax)?;
        let last: IpAddr = last.trim().parse().map_err(|_| RangeError::Syntax)?;
        let ordered = match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
            (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
            _ => false,
        };
        if !ordered {
            return Err(RangeError::Ends);
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Ranges refused by default (RFC 6890 special-purpose blocks that never hold a legitimate
/// media peer on the Internet).
const DEFAULT_DENIED: &[&str] = &[
    "0.0.0.0/8",      // "this network"
    "10.0.0.0/8",     // private (RFC 1918)
    "100.64.0.0/10",  // shared address space (RFC 6598)
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local
    "172.16.0.0/12",  // private
    "192.168.0.0/16", // private
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, and broadcast
    "::/128",         // unspecified
    "::1/128",        // loopback
    "fc00::/7",       // unique local
    "fe80::/10",      // link-local
    "ff00::/8",       // multicast
];

/// The peer address policy.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    allowed: Vec<IpRange>,
    denied: Vec<IpRange>,
    /// The relay host's own addresses (every interface's, the listening and relay IPs, the
    /// advertised external IPs): a peer there only where it is a live relayed address.
    own: Vec<IpAddr>,
}

impl PeerPolicy {
    /// `allowed` wins over `denied` and over the defaults, as in coturn.
    pub fn new(allowed: Vec<IpRange>, denied: Vec<IpRange>, own: Vec<IpAddr>) -> Self {
        let mut all_denied: Vec<IpRange> = DEFAULT_DENIED
            .iter()
            .map(|r| r.parse().expect("default ranges parse"))
            .collect();
        all_denied.extend(denied);
        Self {
            allowed,
            denied: all_denied,
            own: own.into_iter().map(canonical).collect(),
        }
    }

    /// Whether `ip` is the relay host's own (loopback and unspecified included): a peer
    /// there must be a live relayed address, checked port-exact on every datagram.
    pub fn is_own(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || self.own.contains(&ip)
    }

    /// Whether a client may reach `peer`. `is_own_relayed` says whether `peer` is a relayed
    /// address of this same relay: those are always allowed, so that two clients of one
    /// relay reach each other even when the relay's addresses are private. The host's other
    /// ports never are.
    pub fn permits(&self, peer: SocketAddr, is_own_relayed: bool) -> bool {
        if is_own_relayed {
            return true;
        }
        if self.is_own(peer.ip()) {
            return false;
        }
        let ip = canonical(peer.ip());
        if self.allowed.iter().any(|r| r.contains(ip)) {
            return true;
        }
        !self.denied.iter().any(|r| r.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_in_coturn_and_cidr_syntax() {
        let r: IpRange = "10.77.0.0-10.77.0.255".parse().unwrap();
        assert!(
            r.contains("10.77.0.21".parse().unwrap()) && !r.contains("10.77.1.0".parse().unwrap())
        );
        let r: IpRange = "fd77::/64".parse().unwrap();
        assert!(r.contains("fd77::21".parse().unwrap()) && !r.contains("fd78::1".parse().unwrap()));
        let r: IpRange = "192.0.2.7".parse().unwrap();
        assert!(
            r.contains("192.0.2.7".parse().unwrap()) && !r.contains("192.0.2.8".parse().unwrap())
        );
        assert_eq!(
            "10.0.0.9-10.0.0.1".parse::<IpRange>(),
            Err(RangeError::Ends)
        );
        assert_eq!("10.0.0.1-::1".parse::<IpRange>(), Err(RangeError::Ends));
        assert_eq!("10.0.0.0/33".parse::<IpRange>(), Err(RangeError::Prefix));
        assert_eq!("nonsense".parse::<IpRange>(), Err(RangeError::Syntax));
    }

    #[test]
    fn defaults_refuse_special_ranges_and_allow_public_peers() {
        let p = PeerPolicy::new(vec![], vec![], vec!["192.0.2.1".parse().unwrap()]);
        for denied in [
            "127.0.0.1:5000",
            "[::1]:5000",
            "10.1.2.3:5000",
            "172.20.0.1:5000",
            "192.168.1.1:5000",
            "169.254.1.1:5000",
            "[fe80::1]:5000",
            "[fd00::1]:5000",
            "224.0.0.1:5000",
            "[ff02::1]:5000",
            "0.0.0.0:5000",
            "[::ffff:127.0.0.1]:5000",
            "100.64.0.1:5000",
        ] {
            assert!(!p.permits(addr(denied), false), "{denied}");
        }
        assert!(p.permits(addr("198.51.100.7:5000"), false));
        assert!(p.permits(addr("[2001:db8::7]:5000"), false));
        // The relay's own address is never a peer, on any port, unless relayed there.
        assert!(!p.permits(addr("192.0.2.1:3478"), false));
        assert!(!p.permits(addr("192.0.2.1:7"), false));
        assert!(!p.permits(addr("[::ffff:192.0.2.1]:7"), false));
        assert!(p.permits(addr("192.0.2.1:50000"), true));
    }

    #[test]
    fn allowed_wins_and_own_relayed_addresses_always_pass() {
        let p = PeerPolicy::new(
            vec!["10.77.0.0/24".parse().unwrap()],
            vec!["198.51.100.0/24".parse().unwrap()],
            vec!["10.77.0.1".parse().unwrap()],
        );
        assert!(p.permits(addr("10.77.0.21:3480"), false));
        // Opening a range that holds the relay's address does not open the relay.
        assert!(!p.permits(addr("10.77.0.1:7"), false));
        assert!(!p.permits(addr("10.77.1.21:3480"), false));
        assert!(!p.permits(addr("198.51.100.7:5000"), false));
        assert!(p.permits(addr("127.0.0.1:50000"), true));
    }
}
