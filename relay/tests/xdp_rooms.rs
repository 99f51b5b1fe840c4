//! Packet-in / packet-out tests of the room routes in XDP through `BPF_PROG_TEST_RUN`, in
//! the style of `xdp_forward.rs`: routes installed as the daemon installs them, each row an
//! input frame, the expected XDP action and the exact expected output frame (built by
//! etherparse, which computes its own checksums; the UDP payload, SRTP in real life, is the
//! same bytes in and out), IPv4 and IPv6, with and without a VLAN tag. A route with several
//! destinations is marked for the TC program (the mark shows in the test run's output,
//! which starts at the metadata); the clones themselves need real interfaces (`lab_rooms_kernel`).
//! Runs inside the lab's relay namespace, so that next-hop lookups resolve. Needs root.

mod lab_frames;

use etherparse::{SlicedPacket, TransportSlice};
use lab_frames::{ip, octets, udp_frame};
use relay::dataplane::Dataplane;
use relay_common::{
    Verdict,
    flow::{FAMILY_IPV4, FAMILY_IPV6},
    room::{
        FANOUT_MARK, KIND_RTCP, KIND_RTP, MAX_ROUTE_DESTINATIONS, RoomDestination, RoomRoute,
        RouteKey, destination_index,
    },
};
use xtask::lab::Host;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// The publisher's endpoint on the relay, and the subscribers'.
const PUBLISHER_ENDPOINT: u16 = 40000;
const SUBSCRIBER_ENDPOINT: u16 = 40002;
const PUBLISHER_PORT: u16 = 5004;
const SUBSCRIBER_PORT: u16 = 6004;
const SSRC: u32 = 0x1234_5678;

const fn family(v6: bool) -> u8 {
    if v6 { FAMILY_IPV6 } else { FAMILY_IPV4 }
}

/// An RTP packet of `ssrc` (sequence 7, payload type 96, flags in `b0`) and an opaque
/// payload standing for SRTP (bytes no relay may change).
fn rtp(b0: u8, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut v = vec![b0, 96, 0, 7, 0, 0, 0x10, 0];
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend((0..payload_len).map(|i| (i * 37 + 11) as u8));
    v
}

/// An RTCP sender report from `ssrc` (as SRTCP would carry it: header in clear, the rest
/// opaque).
fn rtcp_sr(ssrc: u32) -> Vec<u8> {
    let mut v = vec![0x80, 200, 0, 6];
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend((0_u8..20).map(|i| i.wrapping_mul(13).wrapping_add(5)));
    v
}

fn key(v6: bool, publisher_port: u16, ssrc: u32, kind: u8) -> RouteKey {
    RouteKey {
        local: octets(ip(Host::Relay, v6)),
        remote: octets(ip(Host::ClientA, v6)),
        local_port: PUBLISHER_ENDPOINT.to_be_bytes(),
        remote_port: publisher_port.to_be_bytes(),
        ssrc: ssrc.to_be_bytes(),
        family: family(v6),
        kind,
        pad: [0; 2],
    }
}

/// Installs a route as the daemon does: destinations first, then the key.
fn install(
    dp: &mut Dataplane,
    key: &RouteKey,
    slot: u32,
    to: &[RoomDestination],
    [endpoint, room, tenant]: [u32; 3],
) {
    for (i, d) in to.iter().enumerate() {
        dp.set_room_destination(destination_index(slot, i as u32).unwrap(), d)
            .unwrap();
    }
    dp.reset_route_stats(slot).unwrap();
    dp.insert_room_route(
        key,
        &RoomRoute {
            destinations: to.len() as u32,
            slot,
            room_policer: room,
            tenant_policer: tenant,
            family: key.family,
            pad: [0; 3],
            endpoint_policer: endpoint,
        },
    )
    .unwrap();
}

fn to_subscriber(v6: bool, host: Host, port: u16) -> RoomDestination {
    RoomDestination {
        src: octets(ip(Host::Relay, v6)),
        dst: octets(ip(host, v6)),
        src_port: SUBSCRIBER_ENDPOINT.to_be_bytes(),
        dst_port: port.to_be_bytes(),
    }
}

struct Row {
    description: String,
    input: Vec<u8>,
    action: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    /// The route slot that counts it as forwarded.
    slot: Option<u32>,
}

/// Installs the routes of one family in slots `slot..slot + 3` and returns the rows that
/// exercise them: RTP and the publisher's RTCP to one subscriber, RTP of a second SSRC to
/// two (marked for TC).
#[expect(
    clippy::too_many_lines,
    reason = "one block per row reads best as one table"
)]
fn rows(dp: &mut Dataplane, v6: bool, slot: u32) -> Vec<Row> {
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let (publisher, relay, subscriber) = (
        ip(Host::ClientA, v6),
        ip(Host::Relay, v6),
        ip(Host::ClientB, v6),
    );
    let one = [to_subscriber(v6, Host::ClientB, SUBSCRIBER_PORT)];
    install(
        dp,
        &key(v6, PUBLISHER_PORT, SSRC, KIND_RTP),
        slot,
        &one,
        [0, 0, 0],
    );
    install(
        dp,
        &key(v6, PUBLISHER_PORT, SSRC, KIND_RTCP),
        slot + 1,
        &one,
        [0, 0, 0],
    );
    let two = [
        to_subscriber(v6, Host::ClientB, SUBSCRIBER_PORT),
        to_subscriber(v6, Host::Peer, SUBSCRIBER_PORT),
    ];
    install(
        dp,
        &key(v6, PUBLISHER_PORT, SSRC + 1, KIND_RTP),
        slot + 2,
        &two,
        [0, 0, 0],
    );

    let p = (Host::ClientA, publisher, PUBLISHER_PORT);
    let e = (Host::Relay, relay, PUBLISHER_ENDPOINT);
    let s_from = (Host::Relay, relay, SUBSCRIBER_ENDPOINT);
    let s = (Host::ClientB, subscriber, SUBSCRIBER_PORT);
    let mut rows = Vec::new();
    for vlan in [None, Some(100)] {
        let tag = if vlan.is_some() { ", VLAN 100" } else { "" };
        let media = rtp(0x80, SSRC, 160);
        rows.push(Row {
            description: format!("{fam}{tag}: RTP to its one subscriber, from its endpoint"),
            input: udp_frame(p, e, vlan, &media),
            action: XDP_TX,
            output: Some(udp_frame(s_from, s, vlan, &media)),
            slot: Some(slot),
        });
    }
    // Padding bit and two CSRCs: bytes untouched.
    let padded = {
        let mut v = rtp(0xA2, SSRC, 40);
        v.splice(12..12, [0, 0, 0, 1, 0, 0, 0, 2]);
        v.extend_from_slice(&[0, 0, 0, 4]);
        v
    };
    rows.push(Row {
        description: format!("{fam}: RTP with padding and CSRCs, bytes untouched"),
        input: udp_frame(p, e, None, &padded),
        action: XDP_TX,
        output: Some(udp_frame(s_from, s, None, &padded)),
        slot: Some(slot),
    });
    rows.push(Row {
        description: format!("{fam}: the publisher's sender report, by its RTCP route"),
        input: udp_frame(p, e, None, &rtcp_sr(SSRC)),
        action: XDP_TX,
        output: Some(udp_frame(s_from, s, None, &rtcp_sr(SSRC))),
        slot: Some(slot + 1),
    });
    if !v6 {
        let l4 = 14 + 20;
        let mut input = udp_frame(p, e, None, &rtp(0x80, SSRC, 100));
        input[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let mut output = udp_frame(s_from, s, None, &rtp(0x80, SSRC, 100));
        output[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        rows.push(Row {
            description: "IPv4: zero UDP checksum stays zero".into(),
            input,
            action: XDP_TX,
            output: Some(output),
            slot: Some(slot),
        });
    }
    // Several destinations: marked (the 4 bytes of metadata before the frame), passed.
    let media = rtp(0x80, SSRC + 1, 160);
    let input = udp_frame(p, e, None, &media);
    let mut marked = FANOUT_MARK.to_ne_bytes().to_vec();
    marked.extend_from_slice(&input);
    rows.push(Row {
        description: format!("{fam}: RTP to two subscribers, marked for TC"),
        input,
        action: XDP_PASS,
        output: Some(marked),
        slot: None,
    });
    // Everything below goes to the stack unchanged: the daemon deals with it.
    let pass = |description: String, input: Vec<u8>| Row {
        description,
        input,
        action: XDP_PASS,
        output: None,
        slot: None,
    };
    rows.push(pass(
        format!("{fam}: an SSRC without a route"),
        udp_frame(p, e, None, &rtp(0x80, SSRC + 7, 160)),
    ));
    rows.push(pass(
        format!("{fam}: the SSRC from another port of the publisher's address"),
        udp_frame(
            (Host::ClientA, publisher, PUBLISHER_PORT + 2),
            e,
            None,
            &rtp(0x80, SSRC, 160),
        ),
    ));
    rows.push(pass(
        format!("{fam}: the SSRC to another endpoint port"),
        udp_frame(
            p,
            (Host::Relay, relay, PUBLISHER_ENDPOINT + 4),
            None,
            &rtp(0x80, SSRC, 160),
        ),
    ));
    rows.push(pass(
        format!("{fam}: a receiver report of another SSRC"),
        udp_frame(p, e, None, &{
            let mut v = rtcp_sr(SSRC + 9);
            v[1] = 201;
            v
        }),
    ));
    rows.push(pass(
        format!("{fam}: RTP cut inside its fixed header (11 bytes)"),
        udp_frame(p, e, None, &rtp(0x80, SSRC, 0)[..11]),
    ));
    rows.push(pass(
        format!("{fam}: RTP whose CSRCs run past the datagram"),
        udp_frame(p, e, None, &rtp(0x8F, SSRC, 4)),
    ));
    rows.push(pass(
        format!("{fam}: RTP version 1"),
        udp_frame(p, e, None, &rtp(0x40, SSRC, 160)),
    ));
    rows.push(pass(
        format!("{fam}: STUN on the endpoint"),
        udp_frame(
            p,
            e,
            None,
            &[
                0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
        ),
    ));
    rows
}

#[test]
fn room_routes_are_rewritten_exactly_and_everything_else_passes() {
    let failures = lab_frames::on_relay("xr-table", |dp, ifindex| {
        let mut all = rows(dp, false, 10);
        all.extend(rows(dp, true, 20));
        let mut failures = Vec::new();
        for row in &all {
            let out = dp.test_run_on(&row.input, ifindex).unwrap();
            let want = row.output.as_ref().unwrap_or(&row.input);
            failures.extend(lab_frames::mismatch(
                &row.description,
                &out,
                row.action,
                want,
            ));
            // The payload (SRTP) is the same bytes in and out.
            let payload = |frame: &[u8]| match SlicedPacket::from_ethernet(frame) {
                Ok(SlicedPacket {
                    transport: Some(TransportSlice::Udp(udp)),
                    ..
                }) => udp.payload().to_vec(),
                _ => Vec::new(),
            };
            if row.action == XDP_TX && payload(&out.frame) != payload(&row.input) {
                failures.push(format!("{}: payload changed", row.description));
            }
        }
        // Each forwarding row was counted once on its route, with the bytes it came in.
        for slot in [10, 11, 20, 21] {
            let stats = dp.route_stats(slot).unwrap();
            let mine: Vec<_> = all.iter().filter(|r| r.slot == Some(slot)).collect();
            let bytes: u64 = mine.iter().map(|r| r.input.len() as u64).sum();
            let n = mine.len() as u64;
            if (stats.packets, stats.bytes, stats.copies) != (n, bytes, n)
                || stats.last_seen_ns == 0
            {
                failures.push(format!(
                    "route {slot}: counted {stats:?}, want {n} packets, {bytes} bytes"
                ));
            }
        }
        let verdicts = dp.verdict_counters().unwrap();
        if verdicts.get(Verdict::FanOut).packets != 2 {
            failures.push(format!(
                "fan-out verdicts: {:?}",
                verdicts.get(Verdict::FanOut)
            ));
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn removed_routes_are_no_longer_forwarded() {
    lab_frames::on_relay("xr-remove", |dp, ifindex| {
        let rows = rows(dp, false, 1);
        assert_eq!(
            dp.test_run_on(&rows[0].input, ifindex).unwrap().action,
            XDP_TX
        );
        dp.remove_room_route(&key(false, PUBLISHER_PORT, SSRC, KIND_RTP))
            .unwrap();
        let out = dp.test_run_on(&rows[0].input, ifindex).unwrap();
        assert_eq!((out.action, out.frame), (XDP_PASS, rows[0].input.clone()));
        dp.remove_room_route(&key(false, PUBLISHER_PORT, SSRC, KIND_RTP))
            .unwrap();
        assert_eq!(dp.room_route_keys().unwrap().len(), 2);
    });
}

/// A limit whose burst is `packets` packets of `len` bytes and whose rate (1 bit/s)
/// refills nothing while a test runs.
fn burst_of(packets: u64, len: usize) -> relay_common::police::Limit {
    relay_common::police::Limit {
        packets_per_sec: 0,
        bits_per_sec: 1,
        burst_ns: packets * 8 * len as u64 * 1_000_000_000,
    }
}

/// The room's and the tenant's policers are spent once per packet received, before it is
/// forwarded (one destination) or marked (several); over the limit it is dropped and
/// counted, on the policer and on the route.
#[test]
fn room_routes_spend_their_policers_once_per_packet() {
    const TENANT: u32 = 1;
    lab_frames::on_relay("xr-police", |dp, ifindex| {
        let media = rtp(0x80, SSRC, 160);
        let one = [to_subscriber(false, Host::ClientB, SUBSCRIBER_PORT)];
        install(
            dp,
            &key(false, PUBLISHER_PORT, SSRC, KIND_RTP),
            3,
            &one,
            [0, 0, TENANT],
        );
        let many: Vec<_> = (0..8)
            .map(|i| to_subscriber(false, Host::ClientB, SUBSCRIBER_PORT + 2 * i))
            .collect();
        install(
            dp,
            &key(false, PUBLISHER_PORT, SSRC + 1, KIND_RTP),
            4,
            &many,
            [0, 0, TENANT],
        );
        // A burst of 3 packets of this size, nothing refilled while the test runs.
        dp.policers()
            .unwrap()
            .configure(TENANT, burst_of(3, media.len()));
        let relay = ip(Host::Relay, false);
        let frame = |ssrc| {
            udp_frame(
                (Host::ClientA, ip(Host::ClientA, false), PUBLISHER_PORT),
                (Host::Relay, relay, PUBLISHER_ENDPOINT),
                None,
                &rtp(0x80, ssrc, 160),
            )
        };
        let actions: Vec<u32> = [SSRC, SSRC + 1, SSRC, SSRC + 1, SSRC]
            .into_iter()
            .map(|ssrc| dp.test_run_on(&frame(ssrc), ifindex).unwrap().action)
            .collect();
        assert_eq!(actions, [XDP_TX, XDP_PASS, XDP_TX, XDP_DROP, XDP_DROP]);
        assert_eq!(dp.policed(TENANT).unwrap().packets, 2);
        assert_eq!(
            dp.verdict_counters()
                .unwrap()
                .get(Verdict::OverLimit)
                .packets,
            2
        );
        assert_eq!(dp.route_stats(3).unwrap().dropped, 1);
        assert_eq!(dp.route_stats(4).unwrap().dropped, 1);
    });
}

/// A publishing endpoint's own limit comes first: a packet it refuses spends nothing of
/// the tenant's budget, and one the tenant refuses gives the endpoint's spending back.
#[test]
fn an_endpoints_policer_is_spent_with_the_tenants_all_or_none() {
    const TENANT: u32 = 1;
    const ENDPOINT: u32 = 9;
    lab_frames::on_relay("xr-endpoint", |dp, ifindex| {
        let media = rtp(0x80, SSRC, 160);
        let one = [to_subscriber(false, Host::ClientB, SUBSCRIBER_PORT)];
        install(
            dp,
            &key(false, PUBLISHER_PORT, SSRC, KIND_RTP),
            5,
            &one,
            [ENDPOINT, 0, TENANT],
        );
        // Bursts of 2 packets (the endpoint) and 3 (the tenant), nothing refilled while
        // the test runs.
        let burst = |packets| burst_of(packets, media.len());
        let policers = dp.policers().unwrap();
        policers.configure(ENDPOINT, burst(2));
        policers.configure(TENANT, burst(3));
        let frame = udp_frame(
            (Host::ClientA, ip(Host::ClientA, false), PUBLISHER_PORT),
            (Host::Relay, ip(Host::Relay, false), PUBLISHER_ENDPOINT),
            None,
            &media,
        );
        let run = |dp: &mut Dataplane| dp.test_run_on(&frame, ifindex).unwrap().action;
        assert_eq!([run(dp), run(dp), run(dp)], [XDP_TX, XDP_TX, XDP_DROP]);
        assert_eq!(dp.policed(ENDPOINT).unwrap().packets, 1);
        assert_eq!(
            dp.policed(TENANT).unwrap().packets,
            0,
            "nothing refused there"
        );
        // The tenant has one packet left: the endpoint's refusal spent none of it. Spent
        // by the daemon's side (another route of the tenant), then the endpoint refills
        // and the tenant refuses: the endpoint is given back what it spent.
        let now = relay::clock::monotonic_now_ns;
        let len = media.len() as u64;
        assert!(policers.admit([0, TENANT], now(), len));
        policers.configure(ENDPOINT, burst(2));
        assert_eq!(run(dp), XDP_DROP);
        assert_eq!(dp.policed(TENANT).unwrap().packets, 1);
        assert!(policers.admit([ENDPOINT, 0], now(), len));
        assert!(policers.admit([ENDPOINT, 0], now(), len));
        assert_eq!(dp.route_stats(5).unwrap().dropped, 2);
    });
}

/// The TC program leaves everything XDP did not mark alone (test runs cannot carry XDP
/// metadata; the clones are tested on real interfaces in `lab_rooms_kernel`), and the
/// verifier accepts it with its `bpf_loop` over up to `MAX_ROUTE_DESTINATIONS`
/// destinations: one iteration is verified, whatever the count. Prints the verifier's
/// figures.
#[test]
fn the_fanout_program_verifies_and_passes_unmarked_packets() {
    let mut dp = Dataplane::load().unwrap();
    let [(xdp_verified, xdp_size), (tc_verified, tc_size)] = dp.verifier_figures().unwrap();
    println!(
        "verifier: relay_xdp {xdp_verified} instructions processed ({xdp_size} long); \
         relay_fanout {tc_verified} processed ({tc_size} long), for up to \
         {MAX_ROUTE_DESTINATIONS} destinations per route"
    );
    assert!(tc_verified > 0 && tc_verified < 1_000_000);
    // A route with the most destinations fits the maps.
    let v6 = false;
    let many: Vec<_> = (0..MAX_ROUTE_DESTINATIONS)
        .map(|i| to_subscriber(v6, Host::ClientB, 10_000 + i as u16))
        .collect();
    install(
        &mut dp,
        &key(v6, PUBLISHER_PORT, SSRC, KIND_RTP),
        1023,
        &many,
        [0, 0, 0],
    );
    let frame = udp_frame(
        (Host::ClientA, ip(Host::ClientA, v6), PUBLISHER_PORT),
        (Host::Relay, ip(Host::Relay, v6), PUBLISHER_ENDPOINT),
        None,
        &rtp(0x80, SSRC, 160),
    );
    // TC_ACT_OK: not marked, so not for the fan-out.
    assert_eq!(dp.test_run_fanout(&frame).unwrap(), 0);
}
