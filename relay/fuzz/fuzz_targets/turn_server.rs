//! Datagrams from clients and peers into the TURN server, on a clock that moves: it must never
//! panic, whatever arrives in whatever order. Most requests are built here and signed as a
//! known user with the nonce the server last gave that client, so the fuzzer reaches the
//! handlers behind authentication (Allocate, Refresh, CreatePermission, ChannelBind, Send),
//! not only the 401.
#![no_main]

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use relay::{
    stun::{Class, Message, MessageBuilder, Method, attr, integrity::long_term_key},
    turn::{ClientTuple, Config, Output, Server, Transport, auth::Credentials, policy::PeerPolicy},
};

const REALM: &str = "fuzz";
const USER: &str = "u";
const PASSWORD: &str = "p";

fn server(now: Instant) -> Server {
    let config = Config {
        realm: REALM.into(),
        software: "fuzz".into(),
        credentials: Credentials {
            users: HashMap::from([(USER.into(), PASSWORD.into())]),
            rest_secret: Some("s".into()),
        },
        relay_ips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        external_ips: HashMap::new(),
        min_port: 50000,
        max_port: 50015,
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        nonce_lifetime: Duration::from_secs(600),
        peer_policy: PeerPolicy::new(vec![], vec![], vec!["192.0.2.1".parse().unwrap()]),
        max_bps: None,
        user_quota: Some(4),
        total_quota: Some(8),
        max_permissions: 8,
        max_channels: 4,
        unauthenticated_rate: 100,
        tenants: vec![],
        policy: None,
    };
    Server::new(config, now, 1_800_000_000, rand::SeedableRng::seed_from_u64(0))
}

/// Methods of the signed requests, by the record's first byte.
const METHODS: [Method; 5] = [
    Method::ALLOCATE,
    Method::REFRESH,
    Method::CREATE_PERMISSION,
    Method::CHANNEL_BIND,
    Method::SEND,
];

/// Attributes a fuzzed request carries, by a selector byte: the ones the handlers read.
const ATTRIBUTES: [u16; 12] = [
    attr::REQUESTED_TRANSPORT,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::CHANNEL_NUMBER,
    attr::DATA,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::DONT_FRAGMENT,
    attr::SOFTWARE,
    attr::FINGERPRINT,
];

/// A request of `METHODS[spec[0]]` with attributes from `spec[1..]` (selector, length,
/// value...), signed as `USER` with `nonce`.
fn signed(spec: &[u8], nonce: &[u8], tid: u8) -> Vec<u8> {
    let Some((selector, mut rest)) = spec.split_first() else {
        return Vec::new();
    };
    let method = METHODS[usize::from(*selector) % METHODS.len()];
    let class = if method == Method::SEND {
        Class::Indication
    } else {
        Class::Request
    };
    let mut b = MessageBuilder::new(class, method, [tid; 12]);
    while let [typ, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (value, next) = tail.split_at(len);
        b.add(ATTRIBUTES[usize::from(*typ) % ATTRIBUTES.len()], value);
        rest = next;
    }
    b.add(attr::USERNAME, USER.as_bytes())
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, nonce);
    b.add_message_integrity(&long_term_key(USER, REALM, PASSWORD));
    b.build()
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut s = server(now);
    let mut relayed: Vec<SocketAddr> = Vec::new();
    // The nonce each client was last given (from its 401s and 438s).
    let mut nonces: HashMap<ClientTuple, Vec<u8>> = HashMap::new();
    // Records: [kind, length, bytes...]; kind picks who sends what, or a clock step.
    let mut rest = data;
    let mut tid = 0_u8;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        tid = tid.wrapping_add(1);
        let client: SocketAddr = format!("198.51.100.{}:4000", kind % 4).parse().unwrap();
        let transport = if kind & 0x10 == 0 { Transport::Udp } else { Transport::Tcp };
        let tuple = ClientTuple { transport, client, server: "192.0.2.1:3478".parse().unwrap() };
        match (kind >> 2) % 8 {
            0 | 1 => s.handle_client(now, tuple, payload),
            2..=4 => {
                // Unsigned until the client has a nonce: the 401 gives it one.
                let nonce = nonces.get(&tuple).cloned().unwrap_or_default();
                s.handle_client(now, tuple, &signed(payload, &nonce, tid));
            }
            5 => {
                if let Some(r) = relayed.get(usize::from(*kind) % relayed.len().max(1)) {
                    let peer = if kind & 0x40 == 0 { "203.0.113.9:5000".parse().unwrap() } else { *r };
                    s.handle_peer(now, *r, peer, payload);
                }
            }
            6 => s.handle_client_closed(now, tuple),
            _ => {
                now += Duration::from_secs(u64::from(payload.first().copied().unwrap_or(1)) * 10);
                s.handle_timeout(now);
            }
        }
        while let Some(o) = s.poll_output() {
            match o {
                Output::Bind { id, addrs, .. } => {
                    relayed.extend(&addrs);
                    s.relay_bound(now, id, if kind & 0x20 == 0 { Ok(()) } else { Err(std::io::Error::other("x")) });
                }
                Output::ToClient { tuple, data } => {
                    if let Some(nonce) = Message::decode(&data).ok().and_then(|m| m.get(attr::NONCE).map(<[u8]>::to_vec)) {
                        nonces.insert(tuple, nonce);
                    }
                }
                _ => {}
            }
        }
    }
});
