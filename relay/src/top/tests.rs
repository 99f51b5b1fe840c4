use std::time::Duration;

use super::*;
use relay_common::flow::FAMILY_IPV4;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0; 16];
    o[..4].copy_from_slice(&a);
    o
}

/// Client 10.0.0.1:5000's channel 0x4000 to peer 10.0.0.9:7000, counters at `stats_index`.
fn flow(
    client: u8,
    stats_index: u32,
    tenant: u32,
    packets: u64,
) -> (FlowKey, FlowAction, FlowStats) {
    let key = FlowKey {
        src: v4([10, 0, 0, client]),
        dst: v4([10, 0, 0, 2]),
        src_port: 5000_u16.to_be_bytes(),
        dst_port: 3478_u16.to_be_bytes(),
        channel: 0x4000,
        family: FAMILY_IPV4,
        pad: 0,
    };
    let action = FlowAction {
        src: v4([10, 0, 0, 2]),
        dst: v4([10, 0, 0, 9]),
        src_port: 49152_u16.to_be_bytes(),
        dst_port: 7000_u16.to_be_bytes(),
        channel: 0,
        kind: ActionKind::StripChannel as u8,
        family: FAMILY_IPV4,
        stats_index,
        tenant_policer: tenant,
        allocation_policer: 0,
        hairpin_stats_index: 0,
        expires_ns: u64::MAX,
        hairpin_tenant_policer: 0,
        hairpin_allocation_policer: 0,
    };
    let stats = FlowStats {
        packets,
        bytes: packets * 100,
        last_seen_ns: 1,
    };
    (key, action, stats)
}

fn route(slot: u32, tenant: u32, packets: u64, missed: u64) -> (RouteKey, RoomRoute, RouteStats) {
    let key = RouteKey {
        local: v4([10, 0, 0, 2]),
        remote: v4([10, 0, 0, 30]),
        local_port: 40000_u16.to_be_bytes(),
        remote_port: 6000_u16.to_be_bytes(),
        ssrc: 0x1234_5678_u32.to_be_bytes(),
        family: FAMILY_IPV4,
        kind: 0,
        pad: [0; 2],
    };
    let r = RoomRoute {
        destinations: 3,
        slot,
        tenant_policer: tenant,
        family: FAMILY_IPV4,
        ..RoomRoute::default()
    };
    let stats = RouteStats {
        packets,
        bytes: packets * 1000,
        copies: packets * 3 - missed,
        missed,
        ..RouteStats::default()
    };
    (key, r, stats)
}

fn snapshot(at: Instant, forwarded: u64, udp4: u64, over_limit: u64) -> Snapshot {
    let mut verdicts = VerdictCounters::default();
    for (v, packets) in [
        (Verdict::Forwarded, forwarded),
        (Verdict::Udp4, udp4),
        (Verdict::OverLimit, over_limit),
    ] {
        verdicts.0[v.index() as usize] = Counters {
            packets,
            bytes: packets * 100,
        };
    }
    Snapshot {
        at,
        verdicts,
        flows: Vec::new(),
        routes: Vec::new(),
        tenants: Vec::new(),
    }
}

fn tenant(slot: u32, policed: u64) -> Tenant {
    Tenant {
        slot,
        name: Some("north".to_owned()),
        limit: Limit {
            packets_per_sec: 100,
            bits_per_sec: 0,
            burst_ns: 0,
        },
        policed: Counters {
            packets: policed,
            bytes: 0,
        },
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn verdict_rates_and_the_kernel_share_come_from_two_snapshots() {
    let t0 = Instant::now();
    let before = snapshot(t0, 1000, 500, 10);
    let now = snapshot(t0 + Duration::from_secs(2), 3000, 1000, 50);
    let view = compare(Some(&before), &now, 10);
    assert_eq!(view.seconds, Some(2.0));
    let row = |v: Verdict| view.verdicts.iter().find(|r| r.verdict == v).unwrap();
    let forwarded = row(Verdict::Forwarded);
    assert!(close(forwarded.rate.packets, 1000.0), "{forwarded:?}");
    assert!(close(forwarded.rate.bytes, 100_000.0), "{forwarded:?}");
    assert_eq!(forwarded.total.packets, 3000);
    // 1000/s forwarded in the kernel, 250/s of UDP passed up.
    assert!(close(view.kernel_share.unwrap(), 0.8), "{view:?}");
    let over = view
        .drops
        .iter()
        .find(|d| d.reason == "over-limit")
        .unwrap();
    assert!(close(over.rate, 20.0), "{over:?}");
    assert_eq!(over.total, 50);
    // Every drop verdict is listed, and nothing that passes.
    let reasons: Vec<_> = view.drops.iter().map(|d| d.reason).collect();
    assert_eq!(
        reasons,
        [
            "truncated",
            "malformed",
            "over-limit",
            "unpermitted",
            "fan-out-missed"
        ]
    );
}

#[test]
fn one_snapshot_has_totals_but_no_rates() {
    let mut now = snapshot(Instant::now(), 1000, 10, 0);
    now.flows.push(flow(1, 1, 0, 500));
    let view = compare(None, &now, 10);
    assert_eq!(view.seconds, None);
    assert!(view.verdicts.iter().all(|r| r.rate == Rate::default()));
    assert_eq!(view.kernel_share, None);
    assert_eq!(view.flows[0].total, 500);
    assert_eq!(view.flows[0].rate, Rate::default());
}

#[test]
fn the_busiest_flows_come_first_and_only_the_top_ones() {
    let t0 = Instant::now();
    let mut before = snapshot(t0, 0, 0, 0);
    let mut now = snapshot(t0 + Duration::from_secs(1), 0, 0, 0);
    // Flow 1 moves 10/s, flow 2 300/s, flow 3 50/s; flow 4 is new: all its 70 are new.
    for (client, was, is) in [(1, 100, 110), (2, 1000, 1300), (3, 0, 50)] {
        before.flows.push(flow(client, u32::from(client), 0, was));
        now.flows.push(flow(client, u32::from(client), 0, is));
    }
    now.flows.push(flow(4, 4, 0, 70));
    let view = compare(Some(&before), &now, 3);
    let got: Vec<(String, f64)> = view
        .flows
        .iter()
        .map(|f| (f.from.to_string(), f.rate.packets))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.2:5000".to_owned(), 300.0),
            ("10.0.0.4:5000".to_owned(), 70.0),
            ("10.0.0.3:5000".to_owned(), 50.0),
        ]
    );
    assert_eq!(view.flow_entries, 4);
    let f = &view.flows[0];
    assert_eq!(f.to.to_string(), "10.0.0.9:7000");
    assert_eq!(
        (f.channel, f.kind),
        (0x4000, Some(ActionKind::StripChannel))
    );
}

#[test]
fn a_reused_slot_counts_from_zero_not_backwards() {
    let t0 = Instant::now();
    let mut before = snapshot(t0, 0, 0, 0);
    let mut now = snapshot(t0 + Duration::from_secs(1), 0, 0, 0);
    // The same key now on other counters, and a slot reset under the same key.
    before.flows.push(flow(1, 1, 0, 1000));
    now.flows.push(flow(1, 2, 0, 40));
    before.routes.push(route(5, 0, 900, 0));
    now.routes.push(route(5, 0, 30, 0));
    let view = compare(Some(&before), &now, 10);
    assert!(close(view.flows[0].rate.packets, 40.0), "{view:?}");
    assert!(close(view.routes[0].rate.packets, 30.0), "{view:?}");
}

#[test]
fn routes_show_their_copies_and_tenants_what_they_carry() {
    let t0 = Instant::now();
    let mut before = snapshot(t0, 0, 0, 0);
    let mut now = snapshot(t0 + Duration::from_millis(500), 0, 0, 0);
    before.routes.push(route(1, 1, 100, 0));
    now.routes.push(route(1, 1, 200, 6));
    before.flows.push(flow(1, 1, 1, 0));
    now.flows.push(flow(1, 1, 1, 25));
    before.flows.push(flow(2, 2, 0, 0));
    now.flows.push(flow(2, 2, 0, 1000));
    before.tenants.push(tenant(1, 10));
    now.tenants.push(tenant(1, 30));
    let view = compare(Some(&before), &now, 10);
    let r = &view.routes[0];
    assert_eq!(
        (r.publisher.to_string(), r.endpoint.to_string()),
        ("10.0.0.30:6000".to_owned(), "10.0.0.2:40000".to_owned())
    );
    assert_eq!((r.ssrc, r.rtcp, r.subscribers), (0x1234_5678, false, 3));
    // 100 packets in half a second, each to 3 subscribers, 6 copies missed.
    assert!(close(r.rate.packets, 200.0), "{r:?}");
    assert!(close(r.copies, (300.0 - 6.0) * 2.0), "{r:?}");
    let missed = view
        .drops
        .iter()
        .find(|d| d.reason == "fan-out-missed")
        .unwrap();
    assert!(close(missed.rate, 12.0), "{missed:?}");
    // Tenant 1: the route's 200/s and its one flow's 50/s; the other flow is no tenant's.
    let [t] = view.tenants.as_slice() else {
        panic!("{view:?}")
    };
    assert!(close(t.rate.packets, 250.0), "{t:?}");
    assert!(close(t.policed, 40.0), "{t:?}");
    assert_eq!(t.tenant.limit.packets_per_sec, 100);
}
