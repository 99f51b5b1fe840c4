//! What the packet tables that run in the lab's relay namespace (`xdp_forward`,
//! `xdp_rooms`) share: addresses of the lab's hosts as the maps lay them out, frames between
//! the hosts built by etherparse, and the check of a rewritten frame's UDP checksum.

use std::net::IpAddr;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice, VlanId};
use xtask::lab::Host;

/// The maps' address layout: network byte order, IPv4 in the first 4 bytes.
pub(crate) fn octets(ip: IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

pub(crate) fn ip(host: Host, v6: bool) -> IpAddr {
    if v6 {
        host.ipv6().into()
    } else {
        host.ipv4().into()
    }
}

/// A UDP frame from `from` to `to` (MACs from the lab), optionally VLAN-tagged.
pub(crate) fn udp_frame(
    from: (Host, IpAddr, u16),
    to: (Host, IpAddr, u16),
    vlan: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(from.0.mac(), to.0.mac());
    let mut out = Vec::new();
    match (vlan, from.1, to.1) {
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .udp(from.2, to.2)
            .write(&mut out, payload),
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .udp(from.2, to.2)
            .write(&mut out, payload),
        (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv4(s.octets(), d.octets(), 64)
            .udp(from.2, to.2)
            .write(&mut out, payload),
        (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv6(s.octets(), d.octets(), 64)
            .udp(from.2, to.2)
            .write(&mut out, payload),
        _ => unreachable!("one family per frame"),
    }
    .unwrap();
    out
}

/// The UDP checksum of `frame` recomputed by etherparse equals the one it carries (or the
/// frame carries none, which IPv4 allows).
pub(crate) fn checksum_is_right(frame: &[u8]) -> bool {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Udp(udp)) = packet.transport else {
        return false;
    };
    let header = udp.to_header();
    if header.checksum == 0 {
        return packet
            .net
            .as_ref()
            .is_some_and(|n| matches!(n, etherparse::NetSlice::Ipv4(_)));
    }
    let want = match packet.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => header
            .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
            .unwrap(),
        etherparse::NetSlice::Ipv6(ip) => header
            .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
            .unwrap(),
    };
    want == header.checksum
}

/// What is wrong with a test run's result, if anything: its action, its frame (`want`
/// exactly), or, for a frame sent on (`XDP_TX`), its UDP checksum.
pub(crate) fn mismatch(
    description: &str,
    out: &relay::dataplane::TestRunOutput,
    action: u32,
    want: &[u8],
) -> Option<String> {
    const XDP_TX: u32 = 3;
    if out.action != action {
        Some(format!(
            "{description}: action {} (want {action})",
            out.action
        ))
    } else if out.frame != want {
        Some(format!(
            "{description}: output\n  {:02x?}\nwant\n  {want:02x?}",
            out.frame
        ))
    } else if action == XDP_TX && !checksum_is_right(&out.frame) {
        Some(format!("{description}: wrong UDP checksum"))
    } else {
        None
    }
}

/// Runs `f` in a lab (prefix `prefix`, removed afterwards) inside the relay's namespace,
/// with a freshly loaded data plane and the ifindex of its `eth0`, forwarding enabled there
/// as the daemon enables it (the fast path's next-hop lookups need it).
pub(crate) fn on_relay<T: Send>(
    prefix: &str,
    f: impl FnOnce(&mut relay::dataplane::Dataplane, u32) -> T + Send,
) -> T {
    let lab = xtask::lab::Lab::up(prefix).unwrap();
    lab.in_netns(Host::Relay, || {
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        relay::dataplane::enable_forwarding("eth0").unwrap();
        let mut dp = relay::dataplane::Dataplane::load().unwrap();
        f(&mut dp, ifindex)
    })
    .unwrap()
}
