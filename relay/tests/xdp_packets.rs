//! Packet-in / packet-out tests of the XDP program through `BPF_PROG_TEST_RUN`: each row is a
//! description, an input frame, the expected verdict and the expected output frame. Frames are
//! built with etherparse, an encoder independent of the program's parser. Needs root.
//!
//! Every row also runs through the same parser on the host (`relay_common::parse`). Frames
//! shorter than an Ethernet header are refused by the kernel's test-run (as by every path
//! into XDP), so for those the host run is the verdict and the kernel's refusal is asserted.

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6Header, PacketBuilder,
    VlanId,
};
mod frames;

use frames::{DST_MAC, DST4, DST6, SRC_MAC, SRC4, SRC6, V4_L4, arp, cut, patched};
use relay::dataplane::Dataplane;
use relay_common::{Counters, Verdict, parse};

/// An RTP-sized payload (12-byte header plus 160 bytes of audio).
const PAYLOAD: [u8; 172] = [0xAB; 172];

/// Ethernet (14): where the IP header starts in an untagged frame.
const L3: usize = 14;
/// Ethernet (14) + IPv6 (40).
const V6_L4: usize = 54;

fn vlan(id: u16) -> VlanId {
    VlanId::try_new(id).unwrap()
}

fn udp4() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .udp(40000, 3478)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn udp6() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(SRC6, DST6, 64)
        .udp(40000, 3478)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn vlan_udp4() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .single_vlan(vlan(100))
        .ipv4(SRC4, DST4, 64)
        .udp(40000, 3478)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn qinq_udp6() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .double_vlan(vlan(10), vlan(200))
        .ipv6(SRC6, DST6, 64)
        .udp(40000, 3478)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

/// IPv4 with `options` (a multiple of 4 bytes): IHL above 5.
fn udp4_with_options<const N: usize>(options: [u8; N]) -> Vec<u8>
where
    etherparse::Ipv4Options: From<[u8; N]>,
{
    let mut header = Ipv4Header::new(0, 64, IpNumber::UDP, SRC4, DST4).unwrap();
    header.options = options.into();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(IpHeaders::Ipv4(header, Ipv4Extensions::default()))
        .udp(40000, 3478)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

fn icmp4() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut f, &[0; 56])
        .unwrap();
    f
}

fn tcp6() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(SRC6, DST6, 64)
        .tcp(40000, 443, 1, 65535)
        .write(&mut f, &[0; 20])
        .unwrap();
    f
}

/// UDP behind an IPv6 hop-by-hop options header: left to the stack.
fn udp6_hop_by_hop() -> Vec<u8> {
    let header = Ipv6Header {
        source: SRC6,
        destination: DST6,
        hop_limit: 64,
        next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP,
        ..Ipv6Header::default()
    };
    let ext = Ipv6Extensions {
        hop_by_hop_options: Some(
            etherparse::Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[1, 4, 0, 0, 0, 0]).unwrap(),
        ),
        ..Ipv6Extensions::default()
    };
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(IpHeaders::Ipv6(header, ext))
        .udp(40000, 3478)
        .write(&mut f, &PAYLOAD)
        .unwrap();
    f
}

/// `frame` padded with zeros to `len` bytes, as a NIC pads short Ethernet frames.
fn padded(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.resize(len, 0);
    frame
}

struct Row {
    description: &'static str,
    input: Vec<u8>,
    verdict: Verdict,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
}

fn row(description: &'static str, input: Vec<u8>, verdict: Verdict) -> Row {
    Row {
        description,
        input,
        verdict,
        output: None,
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one line per row reads best as one table"
)]
fn table() -> Vec<Row> {
    use Verdict::{Malformed, NonIp, OtherIp, Truncated, Udp4, Udp6};
    let small_udp4 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(SRC4, DST4, 64)
            .udp(40000, 3478)
            .write(&mut f, &[1, 2])
            .unwrap();
        f
    };
    vec![
        // Clean UDP: the fast path's candidates.
        row("IPv4/UDP", udp4(), Udp4),
        row("IPv6/UDP", udp6(), Udp6),
        row("802.1Q VLAN, IPv4/UDP", vlan_udp4(), Udp4),
        row("Q-in-Q (802.1ad + 802.1Q), IPv6/UDP", qinq_udp6(), Udp6),
        row(
            "IPv4 with 8 bytes of options, UDP",
            udp4_with_options([1, 1, 1, 1, 1, 1, 1, 0]),
            Udp4,
        ),
        row(
            "IPv4 with 40 bytes of options (IHL 15), UDP",
            udp4_with_options([1; 40]),
            Udp4,
        ),
        row(
            "IPv4/UDP padded to the 60-byte Ethernet minimum",
            padded(small_udp4.clone(), 60),
            Udp4,
        ),
        row(
            "IPv4/UDP, zero UDP checksum (allowed in IPv4)",
            patched(udp4(), V4_L4 + 6, &[0, 0]),
            Udp4,
        ),
        // Other traffic goes to the stack untouched.
        row("IPv4/ICMP echo", icmp4(), OtherIp),
        row("IPv6/TCP", tcp6(), OtherIp),
        row(
            "IPv6 hop-by-hop header, then UDP",
            udp6_hop_by_hop(),
            OtherIp,
        ),
        row(
            "IPv4 first fragment (MF set)",
            patched(udp4(), L3 + 6, &[0x20, 0]),
            OtherIp,
        ),
        row(
            "IPv4 later fragment (offset 185)",
            patched(udp4(), L3 + 6, &[0, 185]),
            OtherIp,
        ),
        row("ARP request", arp(), NonIp),
        row(
            "LLDP ethertype, header only",
            patched(cut(udp4(), 14), 12, &[0x88, 0xcc]),
            NonIp,
        ),
        row(
            "three stacked VLAN tags (beyond Q-in-Q)",
            {
                let mut f = vlan_udp4();
                f.splice(12..12, [0x88, 0xa8, 0, 1, 0x88, 0xa8, 0, 2]);
                f
            },
            NonIp,
        ),
        // Frames that end inside a header they announce.
        row("empty frame", Vec::new(), Truncated),
        row("1 byte", cut(udp4(), 1), Truncated),
        row(
            "10 bytes: shorter than an Ethernet header",
            cut(udp4(), 10),
            Truncated,
        ),
        row(
            "13 bytes: Ethernet header one byte short",
            cut(udp4(), 13),
            Truncated,
        ),
        row(
            "Ethernet header only, IPv4 ethertype",
            cut(udp4(), 14),
            Truncated,
        ),
        row("cut inside the VLAN tag", cut(vlan_udp4(), 16), Truncated),
        row(
            "cut inside the IPv4 header (19 of 20 bytes)",
            cut(udp4(), L3 + 19),
            Truncated,
        ),
        row(
            "cut inside the IPv4 options (IHL 7, 24 bytes present)",
            cut(udp4_with_options([1, 1, 1, 1, 1, 1, 1, 0]), L3 + 24),
            Truncated,
        ),
        row(
            "cut inside the IPv6 header (39 of 40 bytes)",
            cut(udp6(), L3 + 39),
            Truncated,
        ),
        row(
            "cut inside the UDP header (IPv4, 5 of 8 bytes)",
            cut(udp4(), V4_L4 + 5),
            Truncated,
        ),
        row(
            "cut inside the UDP header (IPv6, 7 of 8 bytes)",
            cut(udp6(), V6_L4 + 7),
            Truncated,
        ),
        row(
            "cut inside the UDP header behind a VLAN tag",
            cut(vlan_udp4(), 18 + 20 + 4),
            Truncated,
        ),
        // Frames whose fields contradict each other.
        row(
            "IPv4 ethertype, IP version 6",
            patched(udp4(), L3, &[0x65]),
            Malformed,
        ),
        row(
            "IPv4 IHL 4 (shorter than the fixed header)",
            patched(udp4(), L3, &[0x44]),
            Malformed,
        ),
        row(
            "IPv4 total length beyond the frame",
            patched(udp4(), L3 + 2, &[0x05, 0xdc]),
            Malformed,
        ),
        row(
            "IPv4 total length shorter than its header",
            patched(udp4(), L3 + 2, &[0, 19]),
            Malformed,
        ),
        row(
            "IPv4 payload cut after the UDP header",
            cut(udp4(), V4_L4 + 8 + 10),
            Malformed,
        ),
        row(
            "UDP length 7 (shorter than its header)",
            patched(udp4(), V4_L4 + 4, &[0, 7]),
            Malformed,
        ),
        row(
            "UDP length beyond the IPv4 payload",
            patched(udp4(), V4_L4 + 4, &[0x01, 0x00]),
            Malformed,
        ),
        row(
            "IPv6 ethertype, IP version 4",
            patched(udp6(), L3, &[0x40]),
            Malformed,
        ),
        row(
            "IPv6 payload length beyond the frame",
            patched(udp6(), L3 + 4, &[0x05, 0xdc]),
            Malformed,
        ),
        row(
            "UDP length beyond the IPv6 payload",
            patched(udp6(), V6_L4 + 4, &[0x01, 0x00]),
            Malformed,
        ),
    ]
}

/// Frames at least this long reach XDP; shorter ones never do.
const ETH_HLEN: usize = 14;

/// The verdict of the shared parser run on the host.
fn host_verdict(frame: &[u8]) -> Verdict {
    match parse::udp_frame(frame) {
        Ok(udp) => udp.verdict(),
        Err(verdict) => verdict,
    }
}

#[test]
fn every_row_gets_its_verdict_in_the_kernel_and_on_the_host() {
    let mut dataplane = Dataplane::load().expect("loading the XDP program (needs root)");
    let rows = table();
    let mut expected = [Counters::default(); Verdict::COUNT as usize];
    let mut failures = Vec::new();
    for row in &rows {
        let host = host_verdict(&row.input);
        if host != row.verdict {
            failures.push(format!(
                "{}: host parser says {host:?}, want {:?}",
                row.description, row.verdict
            ));
        }
        if row.input.len() < ETH_HLEN {
            match dataplane.test_run(&row.input) {
                Err(relay::dataplane::DataplaneError::TestRun(_)) => {}
                other => failures.push(format!(
                    "{}: the kernel ran XDP on a frame shorter than Ethernet: {other:?}",
                    row.description
                )),
            }
            continue;
        }
        let out = dataplane.test_run(&row.input).expect(row.description);
        let want_frame = row.output.as_ref().unwrap_or(&row.input);
        if out.action != row.verdict.xdp_action() {
            failures.push(format!(
                "{}: action {} (want {} for {:?})",
                row.description,
                out.action,
                row.verdict.xdp_action(),
                row.verdict
            ));
        }
        if &out.frame != want_frame {
            failures.push(format!(
                "{}: output frame differs from the expected frame",
                row.description
            ));
        }
        let c = &mut expected[row.verdict.index() as usize];
        *c = c.add(Counters {
            packets: 1,
            bytes: row.input.len() as u64,
        });
    }
    // The action alone cannot tell udp4 from other-ip: the counters say which verdict the
    // kernel gave, and that each frame was counted once with its full length.
    let counters = dataplane.verdict_counters().unwrap();
    for v in Verdict::ALL {
        if counters.get(v) != expected[v.index() as usize] {
            failures.push(format!(
                "{}: counted {:?}, want {:?}",
                v.name(),
                counters.get(v),
                expected[v.index() as usize]
            ));
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

/// Each row through its own freshly loaded program, so that a wrong verdict names the row.
#[test]
fn each_row_is_counted_under_its_own_verdict() {
    let mut failures = Vec::new();
    for row in table().into_iter().filter(|r| r.input.len() >= ETH_HLEN) {
        let mut dataplane = Dataplane::load().unwrap();
        dataplane.test_run(&row.input).unwrap();
        let counters = dataplane.verdict_counters().unwrap();
        let got: Vec<_> = Verdict::ALL
            .into_iter()
            .filter(|v| counters.get(*v).packets > 0)
            .collect();
        if got != [row.verdict] {
            failures.push(format!(
                "{}: counted as {got:?}, want {:?}",
                row.description, row.verdict
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
