//! Micro-benchmarks of Relay's per-packet building blocks, all pure CPU work (no I/O):
//!
//! - `stun/decode/*`: `Message::decode` of a Binding request and of an authenticated
//!   Allocate request (USERNAME, REALM, NONCE, REQUESTED-TRANSPORT, MESSAGE-INTEGRITY,
//!   FINGERPRINT), and the MESSAGE-INTEGRITY (HMAC-SHA1) and FINGERPRINT checks of the
//!   decoded Allocate;
//! - `stun/encode/*`: building that Allocate request with `MessageBuilder` (integrity and
//!   fingerprint included), and a Binding success response with XOR-MAPPED-ADDRESS;
//! - `channel_data/{encode,decode}/*`: ChannelData framing of a 160-byte (audio) and a
//!   1200-byte (video) payload;
//! - `police/*`: the GCRA policer (`relay_common::police::Policer`) admitting a packet,
//!   refusing one over its packet or its bit rate, and being configured;
//! - `policy/*`: a decision of the shipped telemedicine Rego policy (regorus' VM), as the
//!   TURN server asks it for an Allocate and for a CreatePermission it refuses, with and
//!   without the audit line; beside it, in the same group, the MESSAGE-INTEGRITY check
//!   every such request already pays, as the baseline of the ratio.
//!
//! Run with:
//!
//! ```text
//! AYA_BUILD_SKIP=1 cargo bench -p relay-bench --bench micro -- --warm-up-time 0.5 --measurement-time 1
//! ```
//!
//! A filter after `--` narrows the run, e.g. `-- stun/decode`.

use std::{hint::black_box, net::SocketAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relay::stun::{
    ChannelData, Class, Message, MessageBuilder, Method, TransactionId, attr,
    integrity::{IntegrityKind, long_term_key},
};
use relay_common::police::{Limit, Policer};

const TID: TransactionId = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
/// A TURN REST API username (expiry:user), as WebRTC clients send them.
const USERNAME: &str = "1700000000:alice";
const REALM: &str = "relay.example.org";
const NONCE: &str = "6d2f3c1a9b8e7f60a1b2c3d4e5f60718";
const PASSWORD: &str = "d8soP47RbdIKLDUOpnJPVQyq5Ts=";
const CLIENT: &str = "203.0.113.7:54321";
const CHANNEL: u16 = 0x4001;
const MS: u64 = 1_000_000;

/// A Binding request as ICE consent checks and STUN keepalives send it: header and
/// FINGERPRINT.
fn binding_request() -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TID);
    b.add_fingerprint();
    b.build()
}

/// The second, authenticated Allocate request of a TURN client, built as
/// `relay::turn::client` builds it, plus FINGERPRINT.
fn allocate_request(key: &[u8]) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TID);
    b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0])
        .add(attr::USERNAME, USERNAME.as_bytes())
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, NONCE.as_bytes())
        .add_message_integrity(key)
        .add_fingerprint();
    b.build()
}

/// The Binding success response to [`binding_request`], as the server builds it: the
/// client's reflexive address, no integrity, FINGERPRINT because the request had one.
fn binding_response(client: SocketAddr) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Success, Method::BINDING, TID);
    b.add_xor_address(attr::XOR_MAPPED_ADDRESS, client)
        .add_fingerprint();
    b.build()
}

fn stun_decode(c: &mut Criterion) {
    let key = long_term_key(USERNAME, REALM, PASSWORD);
    let binding = binding_request();
    let allocate = allocate_request(&key);

    // Check once that the inputs are what the benchmarks claim to measure.
    let msg = Message::decode(&allocate).expect("the Allocate request decodes");
    assert_eq!(msg.verify_integrity(&key), Ok(IntegrityKind::Sha1));
    assert_eq!(msg.verify_fingerprint(), Some(true));
    assert_eq!(msg.get(attr::USERNAME), Some(USERNAME.as_bytes()));

    let mut g = c.benchmark_group("stun/decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("binding", |b| {
        b.iter(|| Message::decode(black_box(&binding)).map(|m| m.method()));
    });
    g.bench_function("allocate", |b| {
        b.iter(|| Message::decode(black_box(&allocate)).map(|m| m.method()));
    });
    // The checks alone, on an already decoded message.
    g.bench_function("allocate/verify_integrity", |b| {
        b.iter(|| black_box(&msg).verify_integrity(black_box(&key)));
    });
    g.bench_function("allocate/verify_fingerprint", |b| {
        b.iter(|| black_box(&msg).verify_fingerprint());
    });
    // What a server does with each authenticated request before looking at it: decode,
    // then check FINGERPRINT and MESSAGE-INTEGRITY.
    g.bench_function("allocate/decode_and_verify", |b| {
        b.iter(|| {
            let msg = Message::decode(black_box(&allocate)).expect("decodes");
            (msg.verify_fingerprint(), msg.verify_integrity(&key))
        });
    });
    g.finish();
}

fn stun_encode(c: &mut Criterion) {
    let key = long_term_key(USERNAME, REALM, PASSWORD);
    let client: SocketAddr = CLIENT.parse().expect("an address");

    let mut g = c.benchmark_group("stun/encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("allocate", |b| {
        b.iter(|| allocate_request(black_box(&key)));
    });
    g.bench_function("binding_success", |b| {
        b.iter(|| binding_response(black_box(client)));
    });
    g.finish();
}

fn channel_data(c: &mut Criterion) {
    let payloads: Vec<(&str, Vec<u8>)> = [("audio_160B", 160_usize), ("video_1200B", 1200)]
        .into_iter()
        .map(|(name, len)| (name, (0..len).map(|i| i as u8).collect()))
        .collect();

    // Encoding copies the payload: bytes per second is the figure that compares.
    let mut g = c.benchmark_group("channel_data/encode");
    for (name, payload) in &payloads {
        let frame = ChannelData {
            channel: CHANNEL,
            data: payload,
        };
        let len = frame.encode(false).len();
        g.throughput(Throughput::Bytes(len as u64));
        // A fresh Vec each time, as `encode` allocates.
        g.bench_function(*name, |b| {
            b.iter(|| black_box(&frame).encode(false));
        });
        // Into a reused buffer, as a data path with a send buffer does.
        g.bench_function(format!("{name}/into_buffer"), |b| {
            let mut out = Vec::with_capacity(len + 3);
            b.iter(|| {
                out.clear();
                black_box(&frame).encode_into(false, &mut out);
                black_box(out.len())
            });
        });
    }
    g.finish();

    // Decoding borrows the payload (header checks only): its cost does not grow with the
    // size, so it is counted in messages.
    let mut g = c.benchmark_group("channel_data/decode");
    g.throughput(Throughput::Elements(1));
    for (name, payload) in &payloads {
        let frame = ChannelData {
            channel: CHANNEL,
            data: payload,
        };
        let encoded = frame.encode(false);
        assert_eq!(ChannelData::decode(&encoded), Ok(frame));
        g.bench_function(*name, |b| {
            b.iter(|| ChannelData::decode(black_box(&encoded)));
        });
    }
    g.finish();
}

fn police(c: &mut Criterion) {
    // 1000 packets/s and 8 Mbit/s, 10 ms of burst: a 1200-byte packet costs 1 ms of the
    // packet rate and 1.2 ms of the bit rate.
    let limit = Limit {
        packets_per_sec: 1000,
        bits_per_sec: 8_000_000,
        burst_ns: 10 * MS,
    };
    let configured = || {
        let p = Policer::default();
        p.configure(limit);
        p
    };

    let mut g = c.benchmark_group("police");
    g.throughput(Throughput::Elements(1));

    // Packets 2 ms apart, slower than both rates: every one passes both limits and
    // advances both TATs (two compare-and-swaps).
    g.bench_function("admit/passes", |b| {
        let p = configured();
        let mut now = 1_000 * MS;
        assert!((0..100).all(|i| p.admit(now + i * 2 * MS, 1200)));
        now += 200 * MS;
        b.iter(|| {
            now += 2 * MS;
            p.admit(black_box(now), black_box(1200))
        });
    });

    // The packet rate's burst spent at a frozen clock: refused at the first limit, nothing
    // written.
    g.bench_function("admit/refused_packet_rate", |b| {
        let p = configured();
        let now = 1_000 * MS;
        while p.admit(now, 100) {}
        assert!(!p.admit(now, 100));
        b.iter(|| p.admit(black_box(now), black_box(100)));
    });

    // Plenty of packet rate, the bit rate's burst spent: the packet limit admits, the bit
    // limit refuses, and the packet's cost is given back (a CAS and a fetch_sub).
    g.bench_function("admit/refused_bit_rate", |b| {
        let p = Policer::default();
        p.configure(Limit {
            packets_per_sec: 1_000_000_000,
            ..limit
        });
        let now = 1_000 * MS;
        while p.admit(now, 1200) {}
        assert!(!p.admit(now, 1200));
        b.iter(|| p.admit(black_box(now), black_box(1200)));
    });

    // No limit configured (a socket without `--max-bps`): three loads, no write.
    g.bench_function("admit/unlimited", |b| {
        let p = Policer::default();
        b.iter(|| p.admit(black_box(1_000 * MS), black_box(1200)));
    });

    g.bench_function("configure", |b| {
        let p = Policer::default();
        b.iter(|| p.configure(black_box(limit)));
    });

    g.finish();
}

/// The telemedicine policy shipped in `appliance/policy/`, auditing to `audit` if given.
fn telemedicine(audit: Option<&str>) -> relay::policy::Policy {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/policy");
    relay::policy::Policy::start(relay::policy::PolicyConfig {
        sources: relay::policy::Sources {
            rego: vec![dir.join("telemedicine.rego")],
            data: Some(dir.join("telemedicine.json")),
        },
        audit: audit.map(|file| relay::policy::AuditConfig {
            file: file.into(),
            max_bytes: u64::MAX,
            keep: 0,
        }),
        timeout: std::time::Duration::from_millis(20),
    })
    .expect("the shipped policy loads")
}

fn policy(c: &mut Criterion) {
    use relay::policy::Action;
    use serde_json::json;
    // The documents the TURN server builds for each request (`turn/authorize.rs`).
    let subject = || {
        json!({ "user": "1700000000:dr-okafor", "name": "dr-okafor", "tenant": null,
                "address": "10.1.0.5", "port": 54321, "transport": "udp" })
    };
    let allocate = || json!({ "requested_transport": "udp", "family": "ipv4" });
    let off_site = || {
        json!({ "peer": { "address": "203.0.113.9", "port": 40000 },
                "relayed": { "address": "10.77.0.1", "port": 50000 }, "channel": null })
    };
    let mut quiet = telemedicine(None);
    let mut audited = telemedicine(Some("/dev/null"));
    assert!(
        quiet
            .decide(Action::TurnAllocate, subject(), allocate())
            .allow
    );
    assert!(
        !quiet
            .decide(Action::TurnCreatePermission, subject(), off_site())
            .allow
    );
    let key = long_term_key(USERNAME, REALM, PASSWORD);
    let request = allocate_request(&key);
    let msg = Message::decode(&request).expect("the Allocate request decodes");

    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/verify_integrity", |b| {
        b.iter(|| black_box(&msg).verify_integrity(black_box(&key)));
    });
    g.bench_function("decide/turn.allocate", |b| {
        b.iter(|| {
            quiet
                .decide(Action::TurnAllocate, subject(), allocate())
                .allow
        });
    });
    g.bench_function("decide/turn.create_permission/denied", |b| {
        b.iter(|| {
            quiet
                .decide(Action::TurnCreatePermission, subject(), off_site())
                .allow
        });
    });
    g.bench_function("decide/turn.allocate/audited", |b| {
        b.iter(|| {
            audited
                .decide(Action::TurnAllocate, subject(), allocate())
                .allow
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    stun_decode,
    stun_encode,
    channel_data,
    police,
    policy
);
criterion_main!(benches);
