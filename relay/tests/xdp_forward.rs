//! Packet-in / packet-out tests of the fast path through `BPF_PROG_TEST_RUN`: flows installed
//! as the daemon installs them, each row an input frame, the expected XDP action and the
//! exact expected output frame (built by etherparse, which computes its own checksums), in
//! both directions, IPv4 and IPv6, with and without a VLAN tag. Every output frame is also
//! re-parsed and its UDP checksum recomputed. The runs happen inside the lab's relay
//! namespace, as if the frame arrived on its `eth0`, so that the program's next-hop lookup
//! (bpf_fib_lookup) resolves the lab's neighbours, with forwarding enabled on it as the
//! daemon enables it. Needs root.

mod lab_frames;

use std::net::IpAddr;

use etherparse::PacketBuilder;
use lab_frames::{checksum_is_right, ip, octets, udp_frame};
use relay::dataplane::Dataplane;
use relay_common::{
    Verdict,
    flow::{ActionKind, FAMILY_IPV4, FAMILY_IPV6, FlowAction, FlowKey},
};
use xtask::lab::{Host, Lab};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const LISTEN_PORT: u16 = 3478;
const CLIENT_PORT: u16 = 40000;
const RELAYED_PORT: u16 = 50000;
const PEER_PORT: u16 = 3480;
const CHANNEL: u16 = 0x4000;
const DATA: &[u8] = b"RTP packet: 12-byte header, then the media, opaque to the relay.";

fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, channel: u16) -> FlowKey {
    FlowKey {
        src: octets(src),
        dst: octets(dst),
        src_port: sport.to_be_bytes(),
        dst_port: dport.to_be_bytes(),
        channel,
        family: if src.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        pad: 0,
    }
}

fn action(
    kind: ActionKind,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    stats_index: u32,
) -> FlowAction {
    FlowAction {
        src: octets(src),
        dst: octets(dst),
        src_port: sport.to_be_bytes(),
        dst_port: dport.to_be_bytes(),
        channel: CHANNEL,
        kind: kind as u8,
        family: if src.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        stats_index,
        tenant_policer: 0,
        allocation_policer: 0,
        hairpin_stats_index: 0,
        expires_ns: u64::MAX,
        hairpin_tenant_policer: 0,
        hairpin_allocation_policer: 0,
    }
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

struct Row {
    description: String,
    input: Vec<u8>,
    action: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    /// The counters index of the flow that forwards it.
    flow: Option<u32>,
}

/// Installs a channel's two flows for `v6` and returns the rows that exercise them.
#[expect(
    clippy::too_many_lines,
    reason = "one block per row reads best as one table"
)]
fn channel_rows(dp: &mut Dataplane, v6: bool, stats: u32) -> Vec<Row> {
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let (client, relay, peer) = (
        ip(Host::ClientA, v6),
        ip(Host::Relay, v6),
        ip(Host::Peer, v6),
    );
    dp.insert_flow(
        &key(client, CLIENT_PORT, relay, LISTEN_PORT, CHANNEL),
        &action(
            ActionKind::StripChannel,
            relay,
            RELAYED_PORT,
            peer,
            PEER_PORT,
            stats,
        ),
    )
    .unwrap();
    dp.insert_flow(
        &key(peer, PEER_PORT, relay, RELAYED_PORT, 0),
        &action(
            ActionKind::AddChannel,
            relay,
            LISTEN_PORT,
            client,
            CLIENT_PORT,
            stats + 1,
        ),
    )
    .unwrap();
    // An expired flow from another client port.
    let mut expired = action(
        ActionKind::StripChannel,
        relay,
        RELAYED_PORT,
        peer,
        PEER_PORT,
        stats,
    );
    expired.expires_ns = 1;
    dp.insert_flow(
        &key(client, CLIENT_PORT + 1, relay, LISTEN_PORT, CHANNEL),
        &expired,
    )
    .unwrap();

    let c = (Host::ClientA, client, CLIENT_PORT);
    let l = (Host::Relay, relay, LISTEN_PORT);
    let r = (Host::Relay, relay, RELAYED_PORT);
    let p = (Host::Peer, peer, PEER_PORT);
    let mut rows = Vec::new();
    for vlan in [None, Some(100)] {
        let tag = if vlan.is_some() { ", VLAN 100" } else { "" };
        rows.push(Row {
            description: format!("{fam}{tag}: client -> peer, ChannelData stripped"),
            input: udp_frame(c, l, vlan, &channel_data(CHANNEL, DATA)),
            action: XDP_TX,
            output: Some(udp_frame(r, p, vlan, DATA)),
            flow: Some(stats),
        });
        rows.push(Row {
            description: format!("{fam}{tag}: peer -> client, ChannelData added"),
            input: udp_frame(p, r, vlan, DATA),
            action: XDP_TX,
            output: Some(udp_frame(l, c, vlan, &channel_data(CHANNEL, DATA))),
            flow: Some(stats + 1),
        });
    }
    rows.push(Row {
        description: format!("{fam}: client -> peer, an empty ChannelData"),
        input: udp_frame(c, l, None, &channel_data(CHANNEL, b"")),
        action: XDP_TX,
        output: Some(udp_frame(r, p, None, b"")),
        flow: Some(stats),
    });
    if !v6 {
        let mut input = udp_frame(c, l, None, &channel_data(CHANNEL, DATA));
        input[34 + 6..34 + 8].copy_from_slice(&[0, 0]);
        let mut output = udp_frame(r, p, None, DATA);
        output[34 + 6..34 + 8].copy_from_slice(&[0, 0]);
        rows.push(Row {
            description: "IPv4: zero UDP checksum stays zero".into(),
            input,
            action: XDP_TX,
            output: Some(output),
            flow: Some(stats),
        });
    }
    // Everything below goes to the stack unchanged: the daemon deals with it.
    let pass = |description: String, input: Vec<u8>| Row {
        description,
        input,
        action: XDP_PASS,
        output: None,
        flow: None,
    };
    rows.push(pass(
        format!("{fam}: channel not installed"),
        udp_frame(c, l, None, &channel_data(CHANNEL + 1, DATA)),
    ));
    let mut padded = channel_data(CHANNEL, DATA);
    padded.extend_from_slice(&[0; 3]);
    rows.push(pass(
        format!("{fam}: ChannelData with padding after the data"),
        udp_frame(c, l, None, &padded),
    ));
    let mut long = channel_data(CHANNEL, DATA);
    long[3] += 8;
    rows.push(pass(
        format!("{fam}: ChannelData length beyond the datagram"),
        udp_frame(c, l, None, &long),
    ));
    rows.push(pass(
        format!("{fam}: not ChannelData (channel 0x3FFF) from the client"),
        udp_frame(c, l, None, &channel_data(0x3FFF, DATA)),
    ));
    rows.push(pass(
        format!("{fam}: STUN from the client"),
        udp_frame(
            c,
            l,
            None,
            &[
                0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
        ),
    ));
    rows.push(pass(
        format!("{fam}: expired flow (permission gone)"),
        udp_frame(
            (Host::ClientA, client, CLIENT_PORT + 1),
            l,
            None,
            &channel_data(CHANNEL, DATA),
        ),
    ));
    rows.push(pass(
        format!("{fam}: a peer without a flow"),
        udp_frame((Host::Peer, peer, PEER_PORT + 1), r, None, DATA),
    ));
    rows.push(pass(
        format!("{fam}: the peer, but to another relayed port"),
        udp_frame(p, (Host::Relay, relay, RELAYED_PORT + 1), None, DATA),
    ));
    rows
}

#[test]
fn channel_flows_are_rewritten_exactly_and_everything_else_passes() {
    let failures = lab_frames::on_relay("xf-table", |dp, ifindex| {
        let mut rows = channel_rows(dp, false, 10);
        rows.extend(channel_rows(dp, true, 20));
        let mut failures = Vec::new();
        for row in &rows {
            let out = dp.test_run_on(&row.input, ifindex).unwrap();
            let want = row.output.as_ref().unwrap_or(&row.input);
            failures.extend(lab_frames::mismatch(
                &row.description,
                &out,
                row.action,
                want,
            ));
        }
        // Each forwarding row was counted once on its flow, with the bytes that left.
        for index in [10, 11, 20, 21] {
            let stats = dp.flow_stats(index).unwrap();
            let mine: Vec<_> = rows.iter().filter(|r| r.flow == Some(index)).collect();
            let bytes: u64 = mine
                .iter()
                .map(|r| r.output.as_ref().unwrap().len() as u64)
                .sum();
            if (stats.packets, stats.bytes) != (mine.len() as u64, bytes) || stats.last_seen_ns == 0
            {
                failures.push(format!(
                    "flow {index}: counted {stats:?}, want {} packets, {bytes} bytes",
                    mine.len()
                ));
            }
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
fn removed_flows_are_no_longer_forwarded() {
    let lab = Lab::up("xf-remove").unwrap();
    lab.in_netns(Host::Relay, || {
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        relay::dataplane::enable_forwarding("eth0").unwrap();
        let mut dp = Dataplane::load().unwrap();
        let rows = channel_rows(&mut dp, false, 1);
        assert_eq!(
            dp.test_run_on(&rows[0].input, ifindex).unwrap().action,
            XDP_TX
        );
        let (client, relay) = (ip(Host::ClientA, false), ip(Host::Relay, false));
        dp.remove_flow(&key(client, CLIENT_PORT, relay, LISTEN_PORT, CHANNEL))
            .unwrap();
        let out = dp.test_run_on(&rows[0].input, ifindex).unwrap();
        assert_eq!((out.action, out.frame), (XDP_PASS, rows[0].input.clone()));
        // Removing again is fine.
        dp.remove_flow(&key(client, CLIENT_PORT, relay, LISTEN_PORT, CHANNEL))
            .unwrap();
    })
    .unwrap();
}

/// The kernel spends the policers the daemon configured through its mapping of the same
/// array: over the budget a flow's packets are dropped and counted against the policer that
/// refused them; a refusal by the tenant spends nothing of the allocation; and the daemon's
/// userspace admission sees what the kernel spent.
#[test]
fn policers_drop_over_the_limit_in_the_kernel_and_share_budgets_with_userspace() {
    const TENANT: u32 = 1;
    const ALLOCATION: u32 = 7;
    let lab = Lab::up("xf-police").unwrap();
    lab.in_netns(Host::Relay, || {
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        relay::dataplane::enable_forwarding("eth0").unwrap();
        let mut dp = Dataplane::load().unwrap();
        let (client, relay, peer) = (
            ip(Host::ClientA, false),
            ip(Host::Relay, false),
            ip(Host::Peer, false),
        );
        let mut to_peer = action(
            ActionKind::StripChannel,
            relay,
            RELAYED_PORT,
            peer,
            PEER_PORT,
            3,
        );
        to_peer.tenant_policer = TENANT;
        to_peer.allocation_policer = ALLOCATION;
        dp.insert_flow(
            &key(client, CLIENT_PORT, relay, LISTEN_PORT, CHANNEL),
            &to_peer,
        )
        .unwrap();
        // The bursts hold 3 packets for the tenant, 5 for the allocation.
        let policers = dp.policers().unwrap();
        policers.configure(TENANT, limit(3));
        policers.configure(ALLOCATION, limit(5));
        let frame = udp_frame(
            (Host::ClientA, client, CLIENT_PORT),
            (Host::Relay, relay, LISTEN_PORT),
            None,
            &channel_data(CHANNEL, DATA),
        );
        let actions: Vec<u32> = (0..5)
            .map(|_| dp.test_run_on(&frame, ifindex).unwrap().action)
            .collect();
        assert_eq!(actions, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
        let over = dp.verdict_counters().unwrap().get(Verdict::OverLimit);
        assert_eq!(over.packets, 2);
        assert_eq!(dp.policed(TENANT).unwrap().packets, 2);
        assert_eq!(dp.policed(ALLOCATION).unwrap().packets, 0);
        // The allocation spent 3 of its 5 in the kernel: userspace may send 2 more on it
        // alone, then not; the tenant has nothing left for userspace either.
        let now = relay::clock::monotonic_now_ns();
        let bytes = DATA.len() as u64;
        assert!(!policers.admit([0, TENANT], now, bytes));
        assert!(policers.admit([ALLOCATION, 0], now, bytes));
        assert!(policers.admit([ALLOCATION, 0], now, bytes));
        assert!(!policers.admit([ALLOCATION, 0], now, bytes));
        // Now the allocation refuses first, in the kernel too.
        assert_eq!(dp.test_run_on(&frame, ifindex).unwrap().action, XDP_DROP);
        assert_eq!(dp.policed(ALLOCATION).unwrap().packets, 1);
    })
    .unwrap();
}

/// A peer behind a second interface of the relay (`eth1`, 10.88.0.0/24): the flow leaves by
/// another interface than it came in by, through the `DEVICES` devmap, and only once the
/// daemon listed that interface there (before, the stack routes the packet).
#[test]
fn a_flow_to_another_interface_is_redirected_through_the_devmap() {
    const OTHER_MAC: [u8; 6] = [0x02, 0x52, 0x4c, 0x00, 0x01, 0x01];
    const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x52, 0x4c, 0x00, 0x01, 0x02];
    const XDP_REDIRECT: u32 = 4;
    let lab = Lab::up("xf-devmap").unwrap();
    for args in [
        "link add eth1 address 02:52:4c:00:01:01 type veth peer name eth1p",
        "addr add 10.88.0.1/24 dev eth1",
        "link set eth1 up",
        "link set eth1p up",
        "neigh add 10.88.0.2 lladdr 02:52:4c:00:01:02 dev eth1 nud permanent",
    ] {
        let status = lab
            .command(Host::Relay, "ip")
            .args(args.split(' '))
            .status()
            .unwrap();
        assert!(status.success(), "ip {args}");
    }
    let (client, relay, peer): (IpAddr, IpAddr, IpAddr) = (
        ip(Host::ClientA, false),
        ip(Host::Relay, false),
        "10.88.0.2".parse().unwrap(),
    );
    let relayed: IpAddr = "10.88.0.1".parse().unwrap();
    lab.in_netns(Host::Relay, || {
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        relay::dataplane::enable_forwarding("eth0").unwrap();
        relay::dataplane::enable_forwarding("eth1").unwrap();
        let mut dp = Dataplane::load().unwrap();
        dp.insert_flow(
            &key(client, CLIENT_PORT, relay, LISTEN_PORT, CHANNEL),
            &action(
                ActionKind::StripChannel,
                relayed,
                RELAYED_PORT,
                peer,
                PEER_PORT,
                1,
            ),
        )
        .unwrap();
        let input = udp_frame(
            (Host::ClientA, client, CLIENT_PORT),
            (Host::Relay, relay, LISTEN_PORT),
            None,
            &channel_data(CHANNEL, DATA),
        );
        let out = dp.test_run_on(&input, ifindex).unwrap();
        assert_eq!(
            (out.action, &out.frame),
            (XDP_PASS, &input),
            "eth1 is not in DEVICES yet: left to the stack, unchanged"
        );

        dp.add_device("eth1").unwrap();
        let out = dp.test_run_on(&input, ifindex).unwrap();
        let mut want = Vec::new();
        let IpAddr::V4(s) = relayed else {
            unreachable!()
        };
        let IpAddr::V4(d) = peer else { unreachable!() };
        PacketBuilder::ethernet2(OTHER_MAC, NEXT_HOP_MAC)
            .ipv4(s.octets(), d.octets(), 64)
            .udp(RELAYED_PORT, PEER_PORT)
            .write(&mut want, DATA)
            .unwrap();
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(out.frame, want, "rewritten for eth1's next hop");
        assert!(checksum_is_right(&out.frame));
    })
    .unwrap();
}

/// One bit per second, so minutes per packet of `DATA`: a burst of `packets` packets, and
/// nothing refills while a test runs.
fn limit(packets: u64) -> relay_common::police::Limit {
    relay_common::police::Limit {
        packets_per_sec: 0,
        bits_per_sec: 1,
        burst_ns: packets * 8 * DATA.len() as u64 * 1_000_000_000,
    }
}

/// Client A's channel 0x4000 to client B's relayed address and B's channel 0x4001 to A's,
/// with counter slots 30/31 and 40/41 and allocation policers `policers`.
fn relay_relay_channels(policers: [u32; 2]) -> [relay::dataplane::KernelChannel; 2] {
    use relay::turn::{ChannelFlow, ClientTuple, Transport};
    let at = |host: Host, port: u16| std::net::SocketAddr::new(ip(host, false), port);
    let relayed = [
        at(Host::Relay, RELAYED_PORT),
        at(Host::Relay, RELAYED_PORT + 2),
    ];
    let clients = [Host::ClientA, Host::ClientB];
    std::array::from_fn(|i| relay::dataplane::KernelChannel {
        flow: ChannelFlow {
            client: ClientTuple {
                transport: Transport::Udp,
                client: at(clients[i], CLIENT_PORT),
                server: at(Host::Relay, LISTEN_PORT),
            },
            relayed: relayed[i],
            channel: 0x4000 + i as u16,
            peer: relayed[1 - i],
        },
        stats: [30 + 10 * i as u32, 31 + 10 * i as u32],
        policers: [policers[i], 0],
    })
}

/// Two clients of this relay, each with a channel to the other's relayed address
/// (relay/relay, as two browsers sharing a TURN server): with the daemon's hairpin entries,
/// one client's ChannelData leaves for the other client on the other's channel in one
/// pass, counted on both channels and spending both allocations' budgets, or neither's.
#[test]
fn a_hairpin_hands_one_clients_channel_data_to_the_other_in_one_pass() {
    const ALLOCATION_A: u32 = 5;
    const ALLOCATION_B: u32 = 6;
    let lab = Lab::up("xf-hairpin").unwrap();
    lab.in_netns(Host::Relay, || {
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        relay::dataplane::enable_forwarding("eth0").unwrap();
        let mut dp = Dataplane::load().unwrap();
        let [a, b] = relay_relay_channels([ALLOCATION_A, ALLOCATION_B]);
        for (from, to) in [(&a, &b), (&b, &a)] {
            for (key, action) in from.entries(u64::MAX).unwrap() {
                dp.insert_flow(&key, &action).unwrap();
            }
            let (key, action) = from.hairpin(to, u64::MAX).unwrap();
            dp.insert_flow(&key, &action).unwrap();
        }
        let policers = dp.policers().unwrap();
        // B's budget holds 2 packets, A's 5.
        policers.configure(ALLOCATION_A, limit(5));
        policers.configure(ALLOCATION_B, limit(2));

        let relay = ip(Host::Relay, false);
        let from_a = udp_frame(
            (Host::ClientA, ip(Host::ClientA, false), CLIENT_PORT),
            (Host::Relay, relay, LISTEN_PORT),
            None,
            &channel_data(0x4000, DATA),
        );
        let to_b = udp_frame(
            (Host::Relay, relay, LISTEN_PORT),
            (Host::ClientB, ip(Host::ClientB, false), CLIENT_PORT),
            None,
            &channel_data(0x4001, DATA),
        );
        let out = dp.test_run_on(&from_a, ifindex).unwrap();
        assert_eq!(out.action, XDP_TX);
        assert_eq!(out.frame, to_b, "\n{:02x?}\n{:02x?}", out.frame, to_b);
        assert!(checksum_is_right(&out.frame));
        // Counted as A's packet to its peer and as B's packet from its peer.
        for (slot, want) in [(30, 1), (41, 1), (31, 0), (40, 0)] {
            assert_eq!(dp.flow_stats(slot).unwrap().packets, want, "slot {slot}");
        }
        // B's budget is spent after its second packet: the third is dropped, and A, which
        // admitted it first, gets its share back.
        assert_eq!(dp.test_run_on(&from_a, ifindex).unwrap().action, XDP_TX);
        assert_eq!(dp.test_run_on(&from_a, ifindex).unwrap().action, XDP_DROP);
        assert_eq!(dp.policed(ALLOCATION_B).unwrap().packets, 1);
        let now = relay::clock::monotonic_now_ns();
        let bytes = DATA.len() as u64;
        for _ in 0..3 {
            assert!(
                policers.admit([ALLOCATION_A, 0], now, bytes),
                "A was refunded"
            );
        }
        assert!(!policers.admit([ALLOCATION_A, 0], now, bytes));
    })
    .unwrap();
}

/// RFC 8656 section 9 in the kernel: to a relayed address the daemon guards, only peers
/// with a live permission pass; on the relay's own address, only relayed ports.
#[test]
fn peers_without_a_permission_are_dropped_in_the_kernel() {
    let lab = Lab::up("xf-permit").unwrap();
    lab.in_netns(Host::Relay, || {
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        let mut dp = Dataplane::load().unwrap();
        let (relay, peer) = (ip(Host::Relay, false), ip(Host::Peer, false));
        let relayed = std::net::SocketAddr::new(relay, RELAYED_PORT);
        let neighbour = std::net::SocketAddr::new(relay, RELAYED_PORT + 2);
        let from = |host: Host, addr: IpAddr, port: u16| {
            udp_frame(
                (host, addr, port),
                (Host::Relay, relay, RELAYED_PORT),
                None,
                DATA,
            )
        };
        let run = |dp: &mut Dataplane, frame: &[u8]| dp.test_run_on(frame, ifindex).unwrap().action;
        let from_peer = from(Host::Peer, peer, PEER_PORT);
        // Not guarded: the stack (and the daemon) decide.
        assert_eq!(run(&mut dp, &from_peer), XDP_PASS);
        dp.insert_relayed(relayed).unwrap();
        assert_eq!(run(&mut dp, &from_peer), XDP_DROP, "no permission");
        let far = relay::clock::monotonic_now_ns() + 60_000_000_000;
        dp.insert_permission(relayed, peer, far, false).unwrap();
        assert_eq!(run(&mut dp, &from_peer), XDP_PASS, "permitted");
        dp.insert_permission(relayed, peer, 1, false).unwrap();
        assert_eq!(run(&mut dp, &from_peer), XDP_DROP, "expired");
        dp.remove_permission(relayed, peer).unwrap();
        // The relay's own address: only its relayed addresses, port-exact.
        dp.insert_permission(relayed, relay, far, true).unwrap();
        let from_neighbour = from(Host::Relay, relay, RELAYED_PORT + 2);
        assert_eq!(
            run(&mut dp, &from_neighbour),
            XDP_DROP,
            "not a relayed address yet"
        );
        dp.insert_relayed(neighbour).unwrap();
        assert_eq!(
            run(&mut dp, &from_neighbour),
            XDP_PASS,
            "a live relayed address"
        );
        assert_eq!(
            run(&mut dp, &from(Host::Relay, relay, 7)),
            XDP_DROP,
            "port 7"
        );
        assert_eq!(
            run(&mut dp, &from(Host::Relay, relay, LISTEN_PORT)),
            XDP_DROP,
            "the listener"
        );
        assert_eq!(
            dp.verdict_counters()
                .unwrap()
                .get(Verdict::Unpermitted)
                .packets,
            5
        );
        // Removed from RELAYED: passed to the stack again.
        dp.remove_relayed(relayed).unwrap();
        assert_eq!(run(&mut dp, &from(Host::Relay, relay, 7)), XDP_PASS);
    })
    .unwrap();
}
