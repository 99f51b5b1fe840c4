//! Arbitrary datagrams from clients and peers into the TURN server, on a clock that moves:
//! it must never panic, whatever arrives in whatever order.
#![no_main]

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use relay::turn::{ClientTuple, Config, Output, Server, Transport, auth::Credentials, policy::PeerPolicy};

fn server(now: Instant) -> Server {
    let config = Config {
        realm: "fuzz".into(),
        software: "fuzz".into(),
        credentials: Credentials { users: HashMap::from([("u".into(), "p".into())]), rest_secret: Some("s".into()) },
        relay_ips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        external_ips: HashMap::new(),
        min_port: 50000,
        max_port: 50015,
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        nonce_lifetime: Duration::from_secs(600),
        peer_policy: PeerPolicy::new(vec![], vec![], vec![]),
        max_bps: None,
        user_quota: Some(4),
        total_quota: Some(8),
        tenants: vec![],
    };
    Server::new(config, now, 1_800_000_000, 0)
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut s = server(now);
    let mut relayed: Vec<SocketAddr> = Vec::new();
    // Records: [kind, length, bytes...]; kind picks who sends, or a clock step.
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let client: SocketAddr = format!("198.51.100.{}:4000", kind % 4).parse().unwrap();
        let transport = if kind & 0x10 == 0 { Transport::Udp } else { Transport::Tcp };
        let tuple = ClientTuple { transport, client, server: "192.0.2.1:3478".parse().unwrap() };
        match kind % 8 {
            0..=3 => s.handle_client(now, tuple, payload),
            4 | 5 => {
                if let Some(r) = relayed.get(usize::from(*kind) % relayed.len().max(1)) {
                    s.handle_peer(now, *r, "203.0.113.9:5000".parse().unwrap(), payload);
                }
            }
            6 => s.handle_client_closed(now, tuple),
            _ => {
                now += Duration::from_secs(u64::from(payload.first().copied().unwrap_or(1)) * 10);
                s.handle_timeout(now);
            }
        }
        while let Some(o) = s.poll_output() {
            if let Output::Bind { id, addrs, .. } = o {
                relayed.extend(&addrs);
                s.relay_bound(now, id, if kind & 0x20 == 0 { Ok(()) } else { Err(std::io::Error::other("x")) });
            }
        }
    }
});
