//! Packet-in / packet-out tests of the benchmark's ceiling ([`Bounce`], the XDP object's
//! `relay_bounce` program) through `BPF_PROG_TEST_RUN`: clean UDP comes back `XDP_TX` with its
//! MACs, IP addresses and UDP ports swapped, exactly the frame etherparse builds with source
//! and destination exchanged, and with checksums that etherparse recomputes to the same
//! values; anything else passes untouched. Then attached to the lab relay's veth, where it
//! sends real datagrams straight back to their sender. Needs root.

mod frames;
mod support;

// The packet tables' addresses: the client sends, the relay bounces.
use frames::{
    DST_MAC as RELAY_MAC, DST4 as RELAY4, DST6 as RELAY6, SRC_MAC as CLIENT_MAC, SRC4 as CLIENT4,
    SRC6 as CLIENT6, V4_L4, arp, cut, patched,
};

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice, VlanId,
};
use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use relay::dataplane::{AttachedMode, Bounce, Dataplane, XdpModeChoice};
use relay_common::Verdict;
use xtask::lab::{Host, Lab};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT_PORT: u16 = 40000;
const RELAY_PORT: u16 = 3478;
/// An RTP-sized payload (12-byte header plus 160 bytes of audio), not all one byte, so that
/// the checksums depend on where each byte sits.
const PAYLOAD: [u8; 172] = {
    let mut p = [0; 172];
    let mut i = 0;
    while i < p.len() {
        p[i] = (i * 7 + 3) as u8;
        i += 1;
    }
    p
};

/// Who sends: the client (the input frames) or the relay (what the bounce should send back).
#[derive(Clone, Copy)]
enum Sender {
    Client,
    Relay,
}

impl Sender {
    fn macs(self) -> ([u8; 6], [u8; 6]) {
        match self {
            Self::Client => (CLIENT_MAC, RELAY_MAC),
            Self::Relay => (RELAY_MAC, CLIENT_MAC),
        }
    }

    fn v4(self) -> ([u8; 4], [u8; 4]) {
        match self {
            Self::Client => (CLIENT4, RELAY4),
            Self::Relay => (RELAY4, CLIENT4),
        }
    }

    fn v6(self) -> ([u8; 16], [u8; 16]) {
        match self {
            Self::Client => (CLIENT6, RELAY6),
            Self::Relay => (RELAY6, CLIENT6),
        }
    }

    fn ports(self) -> (u16, u16) {
        match self {
            Self::Client => (CLIENT_PORT, RELAY_PORT),
            Self::Relay => (RELAY_PORT, CLIENT_PORT),
        }
    }
}

fn udp4(from: Sender) -> Vec<u8> {
    let ((smac, dmac), (src, dst), (sport, dport)) = (from.macs(), from.v4(), from.ports());
    let mut f = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn udp6(from: Sender) -> Vec<u8> {
    let ((smac, dmac), (src, dst), (sport, dport)) = (from.macs(), from.v6(), from.ports());
    let mut f = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn vlan_udp4(from: Sender) -> Vec<u8> {
    let ((smac, dmac), (src, dst), (sport, dport)) = (from.macs(), from.v4(), from.ports());
    let mut f = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

/// IPv4 with 8 bytes of options (IHL 7): the addresses stay where they are, UDP moves.
fn udp4_with_options(from: Sender) -> Vec<u8> {
    let ((smac, dmac), (src, dst), (sport, dport)) = (from.macs(), from.v4(), from.ports());
    let mut header = Ipv4Header::new(0, 64, IpNumber::UDP, src, dst).unwrap();
    header.options = [1, 1, 1, 1, 1, 1, 1, 0].into();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ip(IpHeaders::Ipv4(header, Ipv4Extensions::default()))
        .udp(sport, dport)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn tcp4() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, RELAY_MAC)
        .ipv4(CLIENT4, RELAY4, 64)
        .tcp(CLIENT_PORT, 443, 1, 65535)
        .write(&mut f, &[0; 20])
        .unwrap();
    f
}

fn tcp6() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, RELAY_MAC)
        .ipv6(CLIENT6, RELAY6, 64)
        .tcp(CLIENT_PORT, 443, 1, 65535)
        .write(&mut f, &[0; 20])
        .unwrap();
    f
}

/// The IPv4 header checksum (if any) and the UDP checksum of `frame`, recomputed by
/// etherparse, equal the ones it carries (an IPv4 UDP checksum may be absent: zero).
fn checksums_are_right(frame: &[u8]) -> bool {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Udp(udp)) = packet.transport else {
        return false;
    };
    let header = udp.to_header();
    let want = match packet.net.as_ref().unwrap() {
        NetSlice::Ipv4(ip) => {
            let ip = ip.header().to_header();
            if ip.header_checksum != ip.calc_header_checksum() {
                return false;
            }
            if header.checksum == 0 {
                return true;
            }
            header.calc_checksum_ipv4(&ip, udp.payload()).unwrap()
        }
        NetSlice::Ipv6(ip) => header
            .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
            .unwrap(),
    };
    want == header.checksum
}

struct Row {
    description: &'static str,
    input: Vec<u8>,
    action: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
}

fn bounced(description: &'static str, input: Vec<u8>, output: Vec<u8>) -> Row {
    Row {
        description,
        input,
        action: XDP_TX,
        output: Some(output),
    }
}

fn passed(description: &'static str, input: Vec<u8>) -> Row {
    Row {
        description,
        input,
        action: XDP_PASS,
        output: None,
    }
}

fn table() -> Vec<Row> {
    use Sender::{Client, Relay};
    vec![
        // Clean UDP: bounced with every address swapped.
        bounced("IPv4/UDP", udp4(Client), udp4(Relay)),
        bounced("IPv6/UDP", udp6(Client), udp6(Relay)),
        bounced("802.1Q VLAN, IPv4/UDP", vlan_udp4(Client), vlan_udp4(Relay)),
        bounced(
            "IPv4 with options, UDP",
            udp4_with_options(Client),
            udp4_with_options(Relay),
        ),
        bounced(
            "IPv4/UDP without a checksum: stays without",
            patched(udp4(Client), V4_L4 + 6, &[0, 0]),
            patched(udp4(Relay), V4_L4 + 6, &[0, 0]),
        ),
        // Everything else: to the stack, untouched.
        passed("ARP request", arp()),
        passed("IPv4/TCP", tcp4()),
        passed("IPv6/TCP", tcp6()),
        passed("Ethernet header only", cut(udp4(Client), 14)),
        passed(
            "cut inside the IPv4 header (19 of 20 bytes)",
            cut(udp4(Client), 14 + 19),
        ),
        passed(
            "cut inside the UDP header (IPv6, 7 of 8 bytes)",
            cut(udp6(Client), 14 + 40 + 7),
        ),
        passed(
            "UDP length beyond the IPv4 payload",
            patched(udp4(Client), V4_L4 + 4, &[0x01, 0x00]),
        ),
    ]
}

#[test]
fn udp_is_bounced_with_addresses_swapped_and_the_rest_passes() {
    let mut bounce = Bounce::load().expect("loading the XDP program (needs root)");
    let rows = table();
    let mut failures = Vec::new();
    for row in &rows {
        let out = bounce.test_run(&row.input).expect(row.description);
        if out.action != row.action {
            failures.push(format!(
                "{}: action {} (want {})",
                row.description, out.action, row.action
            ));
        }
        let want = row.output.as_ref().unwrap_or(&row.input);
        if &out.frame != want {
            failures.push(format!(
                "{}: output frame differs from the expected frame",
                row.description
            ));
        }
        if row.action == XDP_TX && !checksums_are_right(&out.frame) {
            failures.push(format!("{}: wrong checksum", row.description));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures over {} rows:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Bouncing a frame twice gives it back as it was.
#[test]
fn bouncing_twice_is_the_identity() {
    let mut bounce = Bounce::load().unwrap();
    for frame in [udp4(Sender::Client), udp6(Sender::Client)] {
        let once = bounce.test_run(&frame).unwrap().frame;
        let twice = bounce.test_run(&once).unwrap();
        assert_eq!(twice.action, XDP_TX);
        assert_eq!(twice.frame, frame);
    }
}

/// The ceiling and the relay's program come from the same object: loading one leaves the
/// other as it was, and they share no map.
#[test]
fn the_ceiling_leaves_the_relays_program_alone() {
    let mut dataplane = Dataplane::load().unwrap();
    let mut bounce = Bounce::load().unwrap();
    let frame = udp4(Sender::Client);
    assert_eq!(bounce.test_run(&frame).unwrap().action, XDP_TX);
    assert_eq!(
        dataplane.verdict_counters().unwrap().total().packets,
        0,
        "the ceiling counted in the relay's maps"
    );
    // No flow installed: the relay's program passes the frame up, counted as udp4.
    let out = dataplane.test_run(&frame).unwrap();
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(out.frame, frame);
    let counters = dataplane.verdict_counters().unwrap();
    assert_eq!(counters.get(Verdict::Udp4).packets, 1);
    assert_eq!(counters.total().packets, 1);
    // And the ceiling still bounces after the relay's program ran.
    assert_eq!(bounce.test_run(&frame).unwrap().frame, udp4(Sender::Relay));
}

/// Attached (natively) to the lab relay's `eth0`, the ceiling answers every datagram a
/// client sends to any port of the relay with that datagram, from that port: the client's
/// own stack receives it, so addresses, ports and checksums are right on the wire too.
#[test]
fn attached_to_a_veth_it_sends_datagrams_straight_back() {
    const DATAGRAMS: usize = 100;
    let lab = Lab::up("rt-bounce").unwrap();
    let _switch_port = support::xdp_on_switch_port(&lab);
    let mut bounce = Bounce::load().unwrap();
    let mode = lab
        .in_netns(Host::Relay, || bounce.attach("eth0", XdpModeChoice::Native))
        .unwrap()
        .expect("attaching the ceiling to the relay's eth0");
    assert_eq!(mode, AttachedMode::Native);
    for to in [
        SocketAddr::from((Host::Relay.ipv4(), 5004)),
        SocketAddr::from((Host::Relay.ipv6(), 5004)),
    ] {
        lab.in_netns(Host::ClientA, || {
            let socket =
                UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0_u8; 2048];
            for i in 0..DATAGRAMS {
                let mut payload = PAYLOAD;
                payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
                socket.send_to(&payload, to).unwrap();
                let (n, from) = socket
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("datagram {i} to {to} not bounced: {e}"));
                assert_eq!(from, to);
                assert_eq!(&buf[..n], &payload[..]);
            }
        })
        .unwrap();
    }
}
