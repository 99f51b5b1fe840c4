//! The TURN server driven on a virtual clock: no sockets, no sleeping.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    ChannelFlow, ClientTuple, Config, Output, Server, Snapshot, Transport, auth::Credentials,
    policy::PeerPolicy,
};
use crate::stun::{
    ChannelData, Class, Message, MessageBuilder, Method,
    attr::{self, decode_error_code, decode_u32, decode_xor_address},
    integrity::{long_term_key, rest_password},
};

const UNIX_START: u64 = 1_800_000_000;
const REALM: &str = "lab";
const RELAY4: &str = "10.77.0.1";
const RELAY6: &str = "fd77::1";
const LISTENER: &str = "10.77.0.1:3478";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A replayable random number generator (production seeds from the OS).
fn seeded(seed: u64) -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(seed)
}

/// The relay host's addresses: its listener's and its relay IPs.
fn own_ips() -> Vec<std::net::IpAddr> {
    vec![
        addr(LISTENER).ip(),
        RELAY4.parse().unwrap(),
        RELAY6.parse().unwrap(),
    ]
}

fn config() -> Config {
    Config {
        realm: REALM.to_owned(),
        software: "Relay test".to_owned(),
        credentials: Credentials {
            users: HashMap::from([
                ("alice".to_owned(), "secret".to_owned()),
                ("bob".to_owned(), "hunter2".to_owned()),
            ]),
            rest_secret: Some("north".to_owned()),
        },
        relay_ips: vec![RELAY4.parse().unwrap(), RELAY6.parse().unwrap()],
        external_ips: HashMap::new(),
        min_port: 50000,
        max_port: 50999,
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        nonce_lifetime: Duration::from_secs(600),
        // The lab's range is private: open it, as the lab tests do.
        peer_policy: PeerPolicy::new(
            vec![
                "10.77.0.0/24".parse().unwrap(),
                "fd77::/64".parse().unwrap(),
            ],
            vec![],
            own_ips(),
        ),
        max_bps: None,
        user_quota: None,
        total_quota: None,
        max_permissions: 128,
        max_channels: 64,
        unauthenticated_rate: 100,
        tenants: vec![],
        policy: None,
    }
}

/// The server, a virtual clock, and an I/O layer that binds whatever it is asked to.
struct Harness {
    server: Server,
    config: Config,
    /// The instant of `UNIX_START`.
    start: Instant,
    now: Instant,
    fail_binds: bool,
    /// When set, `Bind`s wait here for the test to answer them.
    held_binds: Option<Vec<(u64, Vec<SocketAddr>)>>,
    /// Every address the server had the harness bind.
    bound: Vec<SocketAddr>,
    /// Sockets open: relaying (`open`) and held for a reservation (`held`). A relaying
    /// socket is closed by the data path, later: at the end of the drain that released it.
    open: HashSet<SocketAddr>,
    held: HashSet<SocketAddr>,
    closing: Vec<SocketAddr>,
    /// The data path's permissions: (relayed, peer IP) -> expiry.
    permitted: HashMap<(SocketAddr, std::net::IpAddr), Instant>,
    /// Every output but `Bind`, in order, whoever consumed it.
    history: Vec<Output>,
}

impl Harness {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        Self {
            server: Server::new(config.clone(), now, UNIX_START, seeded(42)),
            config,
            start: now,
            now,
            fail_binds: false,
            held_binds: None,
            bound: Vec::new(),
            open: HashSet::new(),
            held: HashSet::new(),
            closing: Vec::new(),
            permitted: HashMap::new(),
            history: Vec::new(),
        }
    }

    /// Binds as the control task does: a held reservation's socket is taken over, any other
    /// address still open is EADDRINUSE; all or none.
    fn bind(&mut self, addrs: &[SocketAddr], reserve: Option<SocketAddr>) -> std::io::Result<()> {
        let busy = |a: &SocketAddr| self.open.contains(a) || self.held.contains(a);
        if self.fail_binds
            || addrs.iter().any(|a| self.open.contains(a))
            || reserve.is_some_and(|r| busy(&r))
        {
            return Err(std::io::Error::other("EADDRINUSE"));
        }
        for a in addrs {
            self.held.remove(a);
            self.open.insert(*a);
        }
        self.held.extend(reserve);
        self.bound.extend(addrs.iter().chain(&reserve));
        Ok(())
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.server.poll_output() {
            match o {
                Output::Bind { id, addrs, .. } if self.held_binds.is_some() => {
                    self.held_binds.as_mut().unwrap().push((id, addrs));
                }
                Output::Bind {
                    id, addrs, reserve, ..
                } => {
                    let result = self.bind(&addrs, reserve);
                    self.server.relay_bound(self.now, id, result);
                }
                // The data path's copy of the permissions.
                o @ Output::Permit {
                    relayed,
                    peer,
                    expires,
                    ..
                } => {
                    self.permitted.insert((relayed, peer), expires);
                    self.history.push(o);
                }
                o @ Output::Unpermit { relayed, peer } => {
                    self.permitted.remove(&(relayed, peer));
                    self.history.push(o);
                }
                Output::Release { addr } if !self.held.remove(&addr) => {
                    self.closing.push(addr);
                    self.history.push(Output::Release { addr });
                    out.push(Output::Release { addr });
                }
                o => {
                    self.history.push(o.clone());
                    out.push(o);
                }
            }
        }
        for addr in self.closing.drain(..) {
            self.open.remove(&addr);
        }
        out
    }

    fn client_sends(&mut self, tuple: ClientTuple, bytes: &[u8]) -> Vec<Output> {
        self.server.handle_client(self.now, tuple, bytes);
        self.drain()
    }

    fn peer_sends(&mut self, relayed: SocketAddr, peer: SocketAddr, bytes: &[u8]) -> Vec<Output> {
        self.server.handle_peer(self.now, relayed, peer, bytes);
        self.drain()
    }

    /// The relay is killed now and started again `down` later from the snapshot it had
    /// written, through JSON; the new server's outputs are left for the test to drain.
    fn restart(&mut self, down: Duration, seed: u64) -> Snapshot {
        let snapshot = self.server.snapshot(self.now);
        let json = serde_json::to_string(&snapshot).unwrap();
        let read: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(read, snapshot);
        self.now += down;
        // The old process's sockets closed with it.
        self.open.clear();
        self.held.clear();
        self.permitted.clear();
        let unix_ms = UNIX_START * 1000 + (self.now - self.start).as_millis() as u64;
        self.server = Server::restore(self.config.clone(), &read, self.now, unix_ms, seeded(seed));
        snapshot
    }

    /// Moves the clock and fires every timer due, as the I/O layer's sleep would.
    fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.now += by;
        let mut out = Vec::new();
        while self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
            out.extend(self.drain());
        }
        out
    }
}

/// A TURN client speaking to the harness.
struct Client {
    tuple: ClientTuple,
    username: String,
    password: String,
    nonce: Option<String>,
    next_tid: u32,
}

impl Client {
    fn udp(client: &str, username: &str, password: &str) -> Self {
        Self::new(Transport::Udp, client, username, password)
    }

    fn new(transport: Transport, client: &str, username: &str, password: &str) -> Self {
        Self {
            tuple: ClientTuple {
                transport,
                client: addr(client),
                server: addr(LISTENER),
            },
            username: username.to_owned(),
            password: password.to_owned(),
            nonce: None,
            next_tid: 0,
        }
    }

    fn key(&self) -> Vec<u8> {
        long_term_key(&self.username, REALM, &self.password)
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        let mut tid = [self.next_tid as u8; 12];
        tid[..4].copy_from_slice(&self.next_tid.to_be_bytes());
        tid
    }

    /// A request with `attrs`, authenticated when the client holds a nonce.
    fn request(&mut self, method: Method, attrs: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
        let tid = self.tid();
        let mut b = MessageBuilder::new(Class::Request, method, tid);
        attrs(&mut b);
        if let Some(nonce) = &self.nonce {
            b.add(attr::USERNAME, self.username.as_bytes())
                .add(attr::REALM, REALM.as_bytes())
                .add(attr::NONCE, nonce.as_bytes())
                .add_message_integrity(&self.key());
        }
        b.build()
    }

    /// Sends `method` until it is not answered 401/438 (at most twice), like real clients.
    fn call(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Vec<u8> {
        for _ in 0..3 {
            let req = self.request(method, &attrs);
            let response = response_in(&h.client_sends(self.tuple, &req));
            let msg = Message::decode(&response).unwrap();
            let retry = match error_code(&msg) {
                Some(401) => self.nonce.is_none(),
                Some(438) => true,
                _ => false,
            };
            if retry {
                self.nonce =
                    Some(String::from_utf8(msg.get(attr::NONCE).unwrap().to_vec()).unwrap());
            } else {
                return response;
            }
        }
        panic!("{method} kept being refused");
    }

    /// An Allocate for UDP relaying with `extra` attributes, answered as real clients
    /// retry it; returns the final response.
    fn try_allocate(
        &mut self,
        h: &mut Harness,
        extra: impl Fn(&mut MessageBuilder),
    ) -> Message<'static> {
        leak(self.call(h, Method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            extra(b);
        }))
    }

    fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        let msg = self.try_allocate(h, |_| {});
        assert_eq!(msg.class(), Class::Success, "{:?}", error_code(&msg));
        assert!(
            msg.verify_integrity(&self.key()).is_ok(),
            "success responses carry integrity"
        );
        relayed(&msg)[0]
    }

    fn permit(&mut self, h: &mut Harness, peer: SocketAddr) -> Message<'static> {
        let r = self.call(h, Method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        leak(r)
    }

    fn bind(&mut self, h: &mut Harness, channel: u16, peer: SocketAddr) -> Message<'static> {
        let r = self.call(h, Method::CHANNEL_BIND, |b| {
            b.add(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            );
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        leak(r)
    }

    fn refresh(&mut self, h: &mut Harness, lifetime: u32) -> Message<'static> {
        leak(self.call(h, Method::REFRESH, |b| {
            b.add_u32(attr::LIFETIME, lifetime);
        }))
    }

    fn send(&mut self, h: &mut Harness, peer: SocketAddr, data: &[u8]) -> Vec<Output> {
        let tid = self.tid();
        let mut b = MessageBuilder::new(Class::Indication, Method::SEND, tid);
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add(attr::DATA, data);
        h.client_sends(self.tuple, &b.build())
    }
}

fn leak(bytes: Vec<u8>) -> Message<'static> {
    Message::decode(Box::leak(bytes.into_boxed_slice())).unwrap()
}

fn error_code(msg: &Message<'_>) -> Option<u16> {
    msg.get(attr::ERROR_CODE)
        .map(|v| decode_error_code(v).unwrap().0)
}

fn relayed(msg: &Message<'_>) -> Vec<SocketAddr> {
    msg.all(attr::XOR_RELAYED_ADDRESS)
        .map(|v| decode_xor_address(v, &msg.transaction_id()).unwrap())
        .collect()
}

/// The response among `outputs` (flow and release outputs may come with it).
fn response_in(outputs: &[Output]) -> Vec<u8> {
    let mut responses = outputs.iter().filter_map(|o| match o {
        Output::ToClient { data, .. } => Some(data.clone()),
        _ => None,
    });
    let r = responses
        .next()
        .unwrap_or_else(|| panic!("no response in {outputs:?}"));
    assert!(responses.next().is_none(), "two responses in {outputs:?}");
    r
}

fn only_response(outputs: &[Output]) -> Vec<u8> {
    match outputs {
        [Output::ToClient { data, .. }] => data.clone(),
        other => panic!("expected one response, got {other:?}"),
    }
}

fn to_peer(outputs: &[Output]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::ToPeer {
                relayed,
                peer,
                data,
            } => Some((*relayed, *peer, data.clone())),
            _ => None,
        })
        .collect()
}

const PEER: &str = "10.77.0.21:3480";

#[test]
fn binding_request_gets_its_mapped_address_without_credentials() {
    let mut h = Harness::new(config());
    let tuple = ClientTuple {
        transport: Transport::Udp,
        client: addr("10.77.0.11:40000"),
        server: addr(LISTENER),
    };
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, [3; 12]);
    b.add_fingerprint();
    let r = only_response(&h.client_sends(tuple, &b.build()));
    let msg = Message::decode(&r).unwrap();
    assert_eq!(
        (msg.class(), msg.transaction_id()),
        (Class::Success, [3; 12])
    );
    assert_eq!(
        decode_xor_address(msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(), &[3; 12]),
        Ok(tuple.client)
    );
    assert_eq!(
        msg.verify_fingerprint(),
        Some(true),
        "FINGERPRINT answered with FINGERPRINT"
    );
    // A Binding indication (keepalive) gets nothing back.
    let ind = MessageBuilder::new(Class::Indication, Method::BINDING, [4; 12]).build();
    assert!(h.client_sends(tuple, &ind).is_empty());
}

/// Spoofing a victim's address, a 20-byte request gets a larger answer (Allocate: a 401
/// with REALM and NONCE; Binding: the mapped address). Over UDP those answers are limited
/// per source prefix; over TCP the handshake proves the source, and answers to
/// authenticated requests take a user's key.
#[test]
fn unauthenticated_answers_are_limited_per_source_prefix() {
    let mut config = config();
    config.unauthenticated_rate = 10;
    let mut h = Harness::new(config);
    let victim = |transport, host: u8| ClientTuple {
        transport,
        client: addr(&format!("203.0.113.{host}:9")),
        server: addr(LISTENER),
    };
    let allocate = MessageBuilder::new(Class::Request, Method::ALLOCATE, [5; 12]).build();
    let binding = MessageBuilder::new(Class::Request, Method::BINDING, [6; 12]).build();
    assert_eq!((allocate.len(), binding.len()), (20, 20));
    let (mut sent, mut answered) = (0, 0);
    for i in 0..200_u8 {
        for request in [&allocate, &binding] {
            sent += request.len();
            let out = h.client_sends(victim(Transport::Udp, i), request);
            answered += out
                .iter()
                .map(|o| match o {
                    Output::ToClient { data, .. } => data.len(),
                    _ => 0,
                })
                .sum::<usize>();
        }
    }
    // Five seconds' worth at 10 per second, for the whole /24.
    assert_eq!(h.server.stats().withheld, 400 - 50);
    assert!(
        answered < sent,
        "{answered} bytes answered to {sent} bytes of requests"
    );
    // Another prefix has its own budget; so does the same prefix over TCP.
    let other = ClientTuple {
        client: addr("198.51.100.7:9"),
        ..victim(Transport::Udp, 1)
    };
    assert!(!h.client_sends(other, &binding).is_empty());
    assert!(
        !h.client_sends(victim(Transport::Tcp, 1), &binding)
            .is_empty()
    );
    // A user in the flooded prefix still allocates: their nonce came before the flood, and
    // answers to authenticated requests are never withheld.
    let mut c = Client::udp("203.0.113.50:40000", "alice", "secret");
    c.nonce = Some(
        String::from_utf8(
            leak(only_response(&h.client_sends(other, &allocate)))
                .get(attr::NONCE)
                .unwrap()
                .to_vec(),
        )
        .unwrap(),
    );
    c.allocate(&mut h);
    // The bucket refills at the rate.
    h.now += Duration::from_millis(100);
    assert!(
        !h.client_sends(victim(Transport::Udp, 9), &binding)
            .is_empty()
    );
    assert!(
        h.client_sends(victim(Transport::Udp, 9), &binding)
            .is_empty()
    );
}

#[test]
fn allocate_is_challenged_then_granted_with_integrity() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let first = c.request(Method::ALLOCATE, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let r = leak(only_response(&h.client_sends(c.tuple, &first)));
    assert_eq!(error_code(&r), Some(401));
    assert_eq!(r.get(attr::REALM), Some(REALM.as_bytes()));
    assert!(r.get(attr::NONCE).is_some());
    assert_eq!(
        h.server.stats().unauthorized,
        0,
        "the usual first 401 is not counted as a failure"
    );

    let relayed = c.allocate(&mut h);
    assert_eq!(relayed.ip().to_string(), RELAY4);
    assert!((50000..=50999).contains(&relayed.port()));
    assert_eq!(h.server.stats().allocations, 1);
}

#[test]
fn wrong_password_unknown_user_and_unknown_attributes() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "not-the-password");
    let r = c.try_allocate(&mut h, |_| {});
    assert_eq!(error_code(&r), Some(401));
    let mut c = Client::udp("10.77.0.12:40000", "mallory", "x");
    let r = c.try_allocate(&mut h, |_| {});
    assert_eq!(error_code(&r), Some(401));
    assert!(h.server.stats().unauthorized >= 2);

    let mut c = Client::udp("10.77.0.11:40001", "alice", "secret");
    let r = c.try_allocate(&mut h, |b| {
        b.add(0x7F01, b"????");
    });
    assert_eq!(error_code(&r), Some(420));
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x7F, 0x01][..]));
    assert_eq!(h.server.stats().allocations, 0);
}

#[test]
fn stale_nonce_is_answered_438_and_a_fresh_one_works() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    c.allocate(&mut h);
    h.advance(Duration::from_secs(500));
    assert_eq!(c.refresh(&mut h, 600).class(), Class::Success);
    h.advance(Duration::from_secs(101));
    let req = c.request(Method::REFRESH, |_| {});
    let r = leak(only_response(&h.client_sends(c.tuple, &req)));
    assert_eq!(error_code(&r), Some(438));
    // `call` picks up the new nonce and retries.
    let r = c.refresh(&mut h, 600);
    assert_eq!(r.class(), Class::Success);
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_a_new_one_437() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    c.allocate(&mut h);
    // The transaction id of the Allocate that succeeded, sent again.
    c.next_tid -= 1;
    let tid = c.tid();
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, tid);
    b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .add(attr::USERNAME, b"alice")
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, c.nonce.clone().unwrap().as_bytes())
        .add_message_integrity(&c.key());
    let again = leak(only_response(&h.client_sends(c.tuple, &b.build())));
    assert_eq!(again.class(), Class::Success);
    let r = c.try_allocate(&mut h, |_| {});
    assert_eq!(error_code(&r), Some(437));
}

#[test]
fn transport_and_family_errors() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let r = leak(c.call(&mut h, Method::ALLOCATE, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    }));
    assert_eq!(error_code(&r), Some(442));
    let r = leak(c.call(&mut h, Method::ALLOCATE, |_| {}));
    assert_eq!(error_code(&r), Some(400));

    let mut v4_only = config();
    v4_only.relay_ips.truncate(1);
    let mut h = Harness::new(v4_only);
    let r = c.try_allocate(&mut h, |b| {
        b.add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(error_code(&r), Some(440));
}

#[test]
fn ipv6_and_dual_allocations() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let r = c.try_allocate(&mut h, |b| {
        b.add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(
        relayed(&r)
            .iter()
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>(),
        [RELAY6]
    );

    let mut c = Client::udp("10.77.0.11:40001", "alice", "secret");
    let r = c.try_allocate(&mut h, |b| {
        b.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    let both = relayed(&r);
    assert_eq!(both.len(), 2);
    assert!(both[0].is_ipv4() && both[1].is_ipv6());
    // Each family's peers go out through the relayed address of that family.
    c.permit(&mut h, addr("[fd77::21]:3480"));
    let out = c.send(&mut h, addr("[fd77::21]:3480"), b"v6");
    assert_eq!(
        to_peer(&out),
        [(both[1], addr("[fd77::21]:3480"), b"v6".to_vec())]
    );
}

#[test]
fn peer_family_mismatch_is_443() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    c.allocate(&mut h);
    assert_eq!(
        error_code(&c.permit(&mut h, addr("[fd77::21]:3480"))),
        Some(443)
    );
}

#[test]
fn lifetimes_refresh_and_deletion() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    // Asking for more than the maximum gets the maximum; less than the default, the default.
    let r = c.refresh(&mut h, 100_000);
    assert_eq!(decode_u32(r.get(attr::LIFETIME).unwrap()), Ok(3600));
    let r = c.refresh(&mut h, 30);
    assert_eq!(decode_u32(r.get(attr::LIFETIME).unwrap()), Ok(600));
    assert!(h.advance(Duration::from_secs(599)).is_empty());
    let out = h.advance(Duration::from_secs(1));
    assert!(out.contains(&Output::Release { addr: relayed }), "{out:?}");
    assert_eq!(h.server.stats().allocations, 0);

    let mut c = Client::udp("10.77.0.11:40001", "alice", "secret");
    let relayed = c.allocate(&mut h);
    let r = c.refresh(&mut h, 0);
    assert_eq!(decode_u32(r.get(attr::LIFETIME).unwrap()), Ok(0));
    assert_eq!(h.server.stats().allocations, 0);
    assert!(h.server.relayed_addresses(&c.tuple).is_none());
    // The port is free again and the 5-tuple may allocate anew.
    let _ = relayed;
    c.allocate(&mut h);
}

#[test]
fn another_user_on_the_same_five_tuple_is_441() {
    let mut h = Harness::new(config());
    let mut alice = Client::udp("10.77.0.11:40000", "alice", "secret");
    alice.allocate(&mut h);
    let mut bob = Client::udp("10.77.0.11:40000", "bob", "hunter2");
    assert_eq!(error_code(&bob.refresh(&mut h, 600)), Some(441));
    assert_eq!(error_code(&bob.permit(&mut h, addr(PEER))), Some(441));
}

#[test]
fn requests_without_an_allocation_are_437() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    assert_eq!(error_code(&c.refresh(&mut h, 600)), Some(437));
    assert_eq!(error_code(&c.permit(&mut h, addr(PEER))), Some(437));
}

#[test]
fn send_and_data_indications_follow_permissions() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    let peer = addr(PEER);
    assert!(
        to_peer(&c.send(&mut h, peer, b"early")).is_empty(),
        "no permission yet"
    );
    assert!(h.peer_sends(relayed, peer, b"early").is_empty());
    assert_eq!(h.server.stats().unpermitted, 2);

    assert_eq!(c.permit(&mut h, peer).class(), Class::Success);
    assert_eq!(
        to_peer(&c.send(&mut h, peer, b"hello")),
        [(relayed, peer, b"hello".to_vec())]
    );
    // The permission covers the peer's IP, any port (RFC 8656 section 9).
    let other_port = addr("10.77.0.21:9999");
    let data = only_response(&h.peer_sends(relayed, other_port, b"reply"));
    let msg = Message::decode(&data).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::DATA)
    );
    assert_eq!(
        decode_xor_address(
            msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
            &msg.transaction_id()
        ),
        Ok(other_port)
    );
    assert_eq!(msg.get(attr::DATA), Some(&b"reply"[..]));

    h.advance(Duration::from_secs(300));
    assert!(
        to_peer(&c.send(&mut h, peer, b"late")).is_empty(),
        "permission expired after 300 s"
    );
    assert!(h.peer_sends(relayed, peer, b"late").is_empty());
}

/// The data path drops peers without a permission before they spend any budget: it holds a
/// copy of the permissions, kept in step with the server's.
#[test]
fn the_data_path_learns_every_permission_and_its_end() {
    let mut h = Harness::new(config());
    let mut a = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed_a = a.allocate(&mut h);
    let mut b = Client::udp("10.77.0.12:40000", "bob", "hunter2");
    let relayed_b = b.allocate(&mut h);
    let peer = addr(PEER);
    a.permit(&mut h, peer);
    let granted = h.now;
    assert_eq!(
        h.permitted.get(&(relayed_a, peer.ip())),
        Some(&(granted + Duration::from_secs(300)))
    );
    // A refresh moves the expiry; the neighbour's relayed address is the host's own.
    h.advance(Duration::from_secs(100));
    a.permit(&mut h, peer);
    assert_eq!(
        h.permitted[&(relayed_a, peer.ip())],
        h.now + Duration::from_secs(300)
    );
    a.permit(&mut h, relayed_b);
    assert!(h.history.iter().any(|o| matches!(o,
        Output::Permit { relayed, peer, own: true, .. } if *relayed == relayed_a && *peer == relayed_b.ip())));
    // Expiry takes both back; so does the allocation's end.
    h.advance(Duration::from_secs(300));
    assert!(h.permitted.is_empty(), "{:?}", h.permitted);
    a.permit(&mut h, peer);
    a.refresh(&mut h, 0);
    assert!(h.permitted.is_empty(), "{:?}", h.permitted);
}

/// A channel to a neighbour's relayed address outlives the neighbour's allocation (RFC 8656
/// section 12), but once that address is released the port may be anyone's: the flow goes
/// and the channel carries nothing.
#[test]
fn a_channel_to_a_released_neighbour_carries_nothing() {
    let mut h = Harness::new(config());
    let mut a = Client::udp("10.77.0.11:40000", "alice", "secret");
    a.allocate(&mut h);
    let mut b = Client::udp("10.77.0.12:40000", "bob", "hunter2");
    let relayed_b = b.allocate(&mut h);
    assert_eq!(a.bind(&mut h, 0x4000, relayed_b).class(), Class::Success);
    let out = b.refresh(&mut h, 0);
    assert_eq!(out.class(), Class::Success);
    assert!(
        h.history
            .iter()
            .any(|o| matches!(o, Output::FlowDown(f) if f.peer == relayed_b)),
        "{:?}",
        h.history
    );
    let unpermitted = h.server.stats().unpermitted;
    let cd = ChannelData {
        channel: 0x4000,
        data: b"to whoever has the port now",
    }
    .encode(false);
    assert!(to_peer(&h.client_sends(a.tuple, &cd)).is_empty());
    assert_eq!(h.server.stats().unpermitted, unpermitted + 1);
}

/// Each permission and channel costs kernel map entries: an allocation holds at most the
/// configured number of each (508 beyond), all or none, and gets room back as they expire.
#[test]
fn permissions_and_channels_are_capped_per_allocation() {
    let mut cfg = config();
    (cfg.max_permissions, cfg.max_channels) = (3, 2);
    let mut h = Harness::new(cfg);
    let mut a = Client::udp("10.77.0.11:40000", "alice", "secret");
    a.allocate(&mut h);
    let peer = |i: u8| addr(&format!("10.77.0.{}:3480", 30 + i));
    assert_eq!(a.bind(&mut h, 0x4000, peer(0)).class(), Class::Success);
    assert_eq!(a.bind(&mut h, 0x4001, peer(1)).class(), Class::Success);
    assert_eq!(
        error_code(&a.bind(&mut h, 0x4002, peer(2))),
        Some(508),
        "third channel"
    );
    // Refreshing a channel is not a new one.
    assert_eq!(a.bind(&mut h, 0x4001, peer(1)).class(), Class::Success);
    assert_eq!(a.permit(&mut h, peer(2)).class(), Class::Success);
    assert_eq!(
        error_code(&a.permit(&mut h, peer(3))),
        Some(508),
        "fourth permission"
    );
    assert_eq!(
        a.permit(&mut h, peer(2)).class(),
        Class::Success,
        "a refresh"
    );
    assert_eq!(h.server.stats().over_cap, 2);
    // Expired, they make room again.
    a.refresh(&mut h, 3600);
    h.advance(Duration::from_secs(601));
    assert_eq!(a.permit(&mut h, peer(3)).class(), Class::Success);
    assert_eq!(a.bind(&mut h, 0x4002, peer(4)).class(), Class::Success);
}

/// Every request that moves an allocation's next expiry used to push a timer that was never
/// removed: a client refreshing a permission in a loop grew the heap without bound.
#[test]
fn timers_do_not_pile_up() {
    let mut h = Harness::new(config());
    let mut a = Client::udp("10.77.0.11:40000", "alice", "secret");
    a.allocate(&mut h);
    let peer = addr(PEER);
    for _ in 0..1000 {
        a.permit(&mut h, peer);
        h.advance(Duration::from_millis(100));
    }
    assert!(
        h.server.pending_timers() <= 2,
        "{} timers",
        h.server.pending_timers()
    );
    // And the one that is left still expires the permission.
    h.advance(Duration::from_secs(300));
    assert!(h.permitted.is_empty());
}

#[test]
fn channels_carry_data_both_ways_and_drive_the_fast_path() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    let peer = addr(PEER);
    let r = c.call(&mut h, Method::CHANNEL_BIND, |b| {
        b.add(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    // The success response comes after the flow is announced.
    let flow = ChannelFlow {
        client: c.tuple,
        relayed,
        channel: 0x4001,
        peer,
    };
    assert_eq!(Message::decode(&r).unwrap().class(), Class::Success);

    let cd = ChannelData {
        channel: 0x4001,
        data: b"rtp",
    }
    .encode(false);
    assert_eq!(
        to_peer(&h.client_sends(c.tuple, &cd)),
        [(relayed, peer, b"rtp".to_vec())]
    );
    let back = only_response(&h.peer_sends(relayed, peer, b"rtcp"));
    assert_eq!(
        ChannelData::decode(&back).unwrap(),
        ChannelData {
            channel: 0x4001,
            data: b"rtcp"
        }
    );

    // Unbound channel: dropped and counted.
    let stray = ChannelData {
        channel: 0x4002,
        data: b"x",
    }
    .encode(false);
    assert!(h.client_sends(c.tuple, &stray).is_empty());

    // The permission (300 s) lapses before the channel (600 s): the flow goes down, and
    // comes back when the permission is renewed.
    let out = h.advance(Duration::from_secs(300));
    assert!(out.contains(&Output::FlowDown(flow)), "{out:?}");
    assert!(to_peer(&h.client_sends(c.tuple, &cd)).is_empty());
    c.permit(&mut h, peer);
    assert_eq!(to_peer(&h.client_sends(c.tuple, &cd)).len(), 1);
    let out = h.advance(Duration::from_secs(300));
    assert!(
        out.contains(&Output::FlowDown(flow)),
        "channel expired at 600 s: {out:?}"
    );
}

#[test]
fn channel_bind_announces_the_flow_and_refuses_conflicts() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    let peer = addr(PEER);
    c.call(&mut h, Method::CHANNEL_BIND, |_| {}); // refresh the nonce
    let req = c.request(Method::CHANNEL_BIND, |b| {
        b.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    let out = h.client_sends(c.tuple, &req);
    // Until the permission's end (300 s), the first of channel, permission and allocation.
    let flow = ChannelFlow {
        client: c.tuple,
        relayed,
        channel: 0x4000,
        peer,
    };
    assert_eq!(
        out[0],
        Output::FlowUp(flow, h.now + Duration::from_secs(300))
    );
    // Re-binding the same pair refreshes it; anything else conflicting is 400.
    assert_eq!(c.bind(&mut h, 0x4000, peer).class(), Class::Success);
    assert_eq!(
        error_code(&c.bind(&mut h, 0x4000, addr("10.77.0.12:3480"))),
        Some(400)
    );
    assert_eq!(error_code(&c.bind(&mut h, 0x4003, peer)), Some(400));
    assert_eq!(
        error_code(&c.bind(&mut h, 0x3FFF, addr("10.77.0.12:3480"))),
        Some(400)
    );
    // After expiry the number stays reserved for its peer for 5 more minutes.
    assert_eq!(c.refresh(&mut h, 3600).class(), Class::Success);
    h.advance(Duration::from_secs(600));
    assert_eq!(
        error_code(&c.bind(&mut h, 0x4000, addr("10.77.0.12:3480"))),
        Some(400)
    );
    h.advance(Duration::from_secs(300));
    assert_eq!(
        c.bind(&mut h, 0x4000, addr("10.77.0.12:3480")).class(),
        Class::Success
    );
}

#[test]
fn refreshing_a_permission_or_the_allocation_moves_the_flows_expiry() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    let peer = addr(PEER);
    c.bind(&mut h, 0x4000, peer);
    let flow = ChannelFlow {
        client: c.tuple,
        relayed,
        channel: 0x4000,
        peer,
    };
    let announced = |h: &Harness| -> Vec<Instant> {
        h.history
            .iter()
            .filter_map(|o| match o {
                Output::FlowUp(f, e) if *f == flow => Some(*e),
                _ => None,
            })
            .collect()
    };
    let start = h.now;
    assert_eq!(announced(&h), [start + Duration::from_secs(300)]);
    h.advance(Duration::from_secs(200));
    c.permit(&mut h, peer);
    // The permission now ends at 500 s, the channel and the allocation at 600 s.
    assert_eq!(
        announced(&h).last(),
        Some(&(start + Duration::from_secs(500)))
    );
    h.advance(Duration::from_secs(200));
    c.bind(&mut h, 0x4000, peer);
    // Channel 1000 s, permission 700 s, allocation still 600 s: the allocation ends first.
    assert_eq!(
        announced(&h).last(),
        Some(&(start + Duration::from_secs(600)))
    );
    c.refresh(&mut h, 3600);
    assert_eq!(
        announced(&h).last(),
        Some(&(start + Duration::from_secs(700)))
    );
}

#[test]
fn stream_clients_get_padded_channel_data_and_no_fast_path() {
    let mut h = Harness::new(config());
    let mut c = Client::new(Transport::Tcp, "10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    c.call(&mut h, Method::CHANNEL_BIND, |_| {});
    let req = c.request(Method::CHANNEL_BIND, |b| {
        b.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
        b.add_xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    let out = h.client_sends(c.tuple, &req);
    assert!(
        !out.iter().any(|o| matches!(o, Output::FlowUp(..))),
        "{out:?}"
    );
    let back = only_response(&h.peer_sends(relayed, addr(PEER), b"12345"));
    assert_eq!(back.len(), 4 + 8, "5 bytes padded to 8");
}

#[test]
fn peer_policy_refuses_loopback_and_the_relay_but_allows_its_own_relayed_addresses() {
    let mut cfg = config();
    cfg.peer_policy = PeerPolicy::new(vec![], vec![], own_ips());
    let mut h = Harness::new(cfg);
    let mut a = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed_a = a.allocate(&mut h);
    let mut b = Client::udp("10.77.0.12:40000", "bob", "hunter2");
    let relayed_b = b.allocate(&mut h);
    for denied in ["127.0.0.1:5000", "[::1]:5000", LISTENER, "10.77.0.21:3480"] {
        let peer = addr(denied);
        let r = a.permit(&mut h, peer);
        let want = if peer.is_ipv6() { 443 } else { 403 };
        assert_eq!(error_code(&r), Some(want), "{denied}");
    }
    // Two clients of this relay reach each other through their relayed addresses, private
    // as they are.
    assert_eq!(a.permit(&mut h, relayed_b).class(), Class::Success);
    assert_eq!(b.permit(&mut h, relayed_a).class(), Class::Success);
    assert_eq!(
        to_peer(&a.send(&mut h, relayed_b, b"hi")),
        [(relayed_a, relayed_b, b"hi".to_vec())]
    );
}

/// A media room's endpoint on the relay host is a peer a client may reach, port-exact,
/// while it is open: a phone behind a firewall that passes only TURN reaches its room so.
#[test]
fn room_endpoints_are_reachable_while_they_are_open() {
    let mut cfg = config();
    cfg.peer_policy = PeerPolicy::new(vec![], vec![], own_ips());
    let mut h = Harness::new(cfg);
    let mut a = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = a.allocate(&mut h);
    let endpoint = addr("10.77.0.1:40002");
    assert_eq!(error_code(&a.permit(&mut h, endpoint)), Some(403));
    h.server.room_endpoint(h.now, endpoint, true);
    assert_eq!(a.permit(&mut h, endpoint).class(), Class::Success);
    assert_eq!(
        to_peer(&a.send(&mut h, endpoint, b"rtp")),
        [(relayed, endpoint, b"rtp".to_vec())]
    );
    // Port-exact: the permission for the host's IP opens no other port.
    assert!(to_peer(&a.send(&mut h, addr("10.77.0.1:40004"), b"rtp")).is_empty());
    assert!(h.history.iter().any(|o| matches!(o,
        Output::Permit { peer, own: true, .. } if *peer == endpoint.ip())));
    // A channel to it gets a fast-path flow, and loses it when the endpoint closes: the
    // port may be another room's next.
    assert_eq!(a.bind(&mut h, 0x4000, endpoint).class(), Class::Success);
    let flow_to_endpoint = |o: &Output| matches!(o, Output::FlowUp(f, _) if f.peer == endpoint);
    assert!(h.history.iter().any(flow_to_endpoint));
    h.history.clear();
    // Closed, it is the host's own port again.
    h.server.room_endpoint(h.now, endpoint, false);
    h.drain();
    assert!(
        h.history
            .iter()
            .any(|o| matches!(o, Output::FlowDown(f) if f.peer == endpoint))
    );
    assert!(to_peer(&a.send(&mut h, endpoint, b"rtp")).is_empty());
    assert_eq!(error_code(&a.permit(&mut h, endpoint)), Some(403));
}

#[test]
fn quotas() {
    let mut cfg = config();
    cfg.user_quota = Some(1);
    cfg.total_quota = Some(2);
    let mut h = Harness::new(cfg);
    Client::udp("10.77.0.11:1", "alice", "secret").allocate(&mut h);
    let mut again = Client::udp("10.77.0.11:2", "alice", "secret");
    let r = again.try_allocate(&mut h, |_| {});
    assert_eq!(error_code(&r), Some(486));
    Client::udp("10.77.0.12:1", "bob", "hunter2").allocate(&mut h);
    let user = format!("{}:carol", UNIX_START + 3600);
    let mut carol = Client::udp("10.77.0.13:1", &user, &rest_password(b"north", &user));
    let r = carol.try_allocate(&mut h, |_| {});
    assert_eq!(error_code(&r), Some(508));
}

#[test]
fn rest_credentials_allocate_until_they_expire() {
    let mut h = Harness::new(config());
    let user = format!("{}:carol", UNIX_START + 60);
    let mut c = Client::udp("10.77.0.13:1", &user, &rest_password(b"north", &user));
    c.allocate(&mut h);
    h.advance(Duration::from_secs(61));
    let r = c.refresh(&mut h, 600);
    assert_eq!(error_code(&r), Some(401), "expired REST credential");
}

#[test]
fn even_port_reservation_and_its_token() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let r = c.try_allocate(&mut h, |b| {
        b.add(attr::EVEN_PORT, &[0x80]);
    });
    let even = relayed(&r)[0];
    assert_eq!(even.port() % 2, 0);
    let token = r.get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    let mut c2 = Client::udp("10.77.0.11:40001", "alice", "secret");
    let r = c2.try_allocate(&mut h, |b| {
        b.add(attr::RESERVATION_TOKEN, &token);
    });
    let odd = SocketAddr::new(even.ip(), even.port() + 1);
    assert_eq!(relayed(&r), [odd]);
    // The held socket was handed over, not closed and bound again (a race with the data
    // path: EADDRINUSE, 508).
    assert!(!h.history.contains(&Output::Release { addr: odd }));
    assert!(h.open.contains(&odd) && !h.held.contains(&odd));
    // A token is good once.
    let mut c3 = Client::udp("10.77.0.11:40002", "alice", "secret");
    let r = c3.try_allocate(&mut h, |b| {
        b.add(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(error_code(&r), Some(508));
    // An unused reservation is released after 30 s.
    let mut c4 = Client::udp("10.77.0.11:40003", "alice", "secret");
    let r = c4.try_allocate(&mut h, |b| {
        b.add(attr::EVEN_PORT, &[0x80]);
    });
    let reserved = SocketAddr::new(relayed(&r)[0].ip(), relayed(&r)[0].port() + 1);
    assert!(
        h.advance(Duration::from_secs(30))
            .contains(&Output::Release { addr: reserved })
    );
}

#[test]
fn a_failed_bind_is_508_and_leaves_nothing_behind() {
    let mut h = Harness::new(config());
    h.fail_binds = true;
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let r = c.try_allocate(&mut h, |_| {});
    assert_eq!(error_code(&r), Some(508));
    h.fail_binds = false;
    c.allocate(&mut h);
}

/// Under load, Allocates arrive while earlier ones' sockets are still being bound: a port
/// being bound is not picked again (found by the benchmark: 508 after EADDRINUSE).
#[test]
fn ports_being_bound_are_not_picked_twice() {
    let mut cfg = config();
    (cfg.min_port, cfg.max_port) = (50000, 50000);
    let mut h = Harness::new(cfg);
    h.held_binds = Some(Vec::new());
    let allocate = |c: &mut Client, h: &mut Harness| {
        let req = c.request(Method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        h.client_sends(c.tuple, &req)
    };
    let mut a = Client::udp("10.77.0.11:1", "alice", "secret");
    let mut b = Client::udp("10.77.0.12:1", "bob", "hunter2");
    for c in [&mut a, &mut b] {
        let challenge = leak(response_in(&allocate(c, &mut h)));
        c.nonce = Some(String::from_utf8(challenge.get(attr::NONCE).unwrap().to_vec()).unwrap());
    }
    assert!(
        allocate(&mut a, &mut h).is_empty(),
        "alice waits for her socket"
    );
    let held = h.held_binds.replace(Vec::new()).unwrap();
    let [(id, addrs)] = &held[..] else {
        panic!("one Bind: {held:?}")
    };
    assert_eq!(addrs[0].port(), 50000);
    // The only port is being bound for alice: bob is refused, nothing is bound for him.
    let r = leak(response_in(&allocate(&mut b, &mut h)));
    assert_eq!(error_code(&r), Some(508));
    assert_eq!(h.held_binds.as_ref().unwrap().len(), 0);
    // Alice's bind fails: the port is free again, and bob gets it.
    h.server
        .relay_bound(h.now, *id, Err(std::io::Error::other("EADDRINUSE")));
    let r = leak(response_in(&h.drain()));
    assert_eq!(error_code(&r), Some(508));
    h.held_binds = None;
    assert_eq!(b.allocate(&mut h).port(), 50000);
}

#[test]
fn garbage_is_counted_and_harms_no_one() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    c.permit(&mut h, addr(PEER));
    let stranger = ClientTuple {
        transport: Transport::Udp,
        client: addr("10.77.0.99:1"),
        server: addr(LISTENER),
    };
    let mut bad_fingerprint = MessageBuilder::new(Class::Request, Method::BINDING, [5; 12]);
    bad_fingerprint.add_fingerprint();
    let mut bad_fingerprint = bad_fingerprint.build();
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 1;
    for junk in [
        &b""[..],
        b"\xff\xff",
        b"\x00\x01\x00",
        &[0x40, 0, 0, 200, 1],
        &bad_fingerprint,
        &[0x80; 64],
    ] {
        assert!(h.client_sends(stranger, junk).is_empty());
        assert!(h.client_sends(c.tuple, junk).is_empty());
    }
    assert!(h.server.stats().malformed >= 10);
    assert_eq!(
        to_peer(&c.send(&mut h, addr(PEER), b"still fine")),
        [(relayed, addr(PEER), b"still fine".to_vec())]
    );
}

mod properties {
    //! Random sequences of client operations and clock steps, with invariants that must hold
    //! whatever the sequence.

    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(usize),
        Refresh(usize, u32),
        Permit(usize, u8),
        Bind(usize, u16, u8),
        Send(usize, u8),
        PeerData(usize, u8),
        Close(usize),
        Advance(u16),
        /// Killed, and started again from the snapshot this many seconds later.
        Restart(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        let client = 0..4_usize;
        prop_oneof![
            client.clone().prop_map(Op::Allocate),
            (client.clone(), prop_oneof![Just(0_u32), 1..5000_u32])
                .prop_map(|(c, l)| Op::Refresh(c, l)),
            (client.clone(), 0..4_u8).prop_map(|(c, p)| Op::Permit(c, p)),
            (client.clone(), 0x3FFE..0x4003_u16, 0..4_u8).prop_map(|(c, n, p)| Op::Bind(c, n, p)),
            (client.clone(), 0..4_u8).prop_map(|(c, p)| Op::Send(c, p)),
            (client.clone(), 0..4_u8).prop_map(|(c, p)| Op::PeerData(c, p)),
            client.prop_map(Op::Close),
            (1..1000_u16).prop_map(Op::Advance),
            prop_oneof![Just(0_u16), 1..700_u16].prop_map(Op::Restart),
        ]
    }

    fn peer(p: u8) -> SocketAddr {
        format!("10.77.0.{}:3480", 20 + p).parse().unwrap()
    }

    /// The harness, the clients, and the relayed address of each client's allocation.
    struct Run {
        h: Harness,
        clients: Vec<Client>,
        relayed: Vec<Option<SocketAddr>>,
    }

    impl Run {
        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Allocate(c) => {
                    let msg = self.clients[c].try_allocate(&mut self.h, |_| {});
                    if msg.class() == Class::Success {
                        self.relayed[c] = relayed(&msg).first().copied();
                    }
                }
                Op::Refresh(c, l) => drop(self.clients[c].refresh(&mut self.h, l)),
                Op::Permit(c, p) => drop(self.clients[c].permit(&mut self.h, peer(p))),
                Op::Bind(c, n, p) => drop(self.clients[c].bind(&mut self.h, n, peer(p))),
                Op::Send(c, p) => drop(self.clients[c].send(&mut self.h, peer(p), b"x")),
                Op::PeerData(c, p) => {
                    if let Some(r) = self.relayed[c] {
                        self.h.peer_sends(r, peer(p), b"y");
                    }
                }
                Op::Close(c) => {
                    self.h
                        .server
                        .handle_client_closed(self.h.now, self.clients[c].tuple);
                    self.h.drain();
                }
                Op::Advance(s) => drop(self.h.advance(Duration::from_secs(u64::from(s)))),
                Op::Restart(down) => self.restart(down),
            }
        }
    }

    impl Run {
        fn restart(&mut self, down: u16) {
            // The old process's I/O layer goes with it: what it bound and announced is
            // checked now, and what the new one binds and announces from then on.
            for o in &self.h.history {
                if let Output::ToPeer { relayed, .. } = o {
                    assert!(
                        self.h.bound.contains(relayed),
                        "sent from {relayed}, never bound"
                    );
                }
            }
            self.h.history.clear();
            self.h.bound.clear();
            let before = self.h.restart(Duration::from_secs(u64::from(down)), 7);
            self.h.drain();
            if down == 0 {
                // Nothing ended meanwhile: the same state, but for stream clients.
                let mut want = before;
                want.allocations.retain(|a| !a.transport.is_stream());
                assert_eq!(self.h.server.snapshot(self.h.now), want);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn sockets_and_flows_are_always_given_back(ops in prop::collection::vec(op(), 1..40)) {
            let h = Harness::new(config());
            let clients = (0..4)
                .map(|i| Client::new(if i % 2 == 0 { Transport::Udp } else { Transport::Tcp }, &format!("10.77.0.11:{}", 40000 + i), "alice", "secret"))
                .collect();
            let mut run = Run { h, clients, relayed: vec![None; 4] };
            for op in &ops {
                run.apply(op);
            }
            // Past the longest lifetime and the 5-minute channel reservations, nothing is left.
            run.h.advance(Duration::from_secs(3600 + 600 + 300 + 1));
            let history = &run.h.history;
            // Data only ever leaves through an address the server had bound.
            for o in history {
                if let Output::ToPeer { relayed, .. } = o {
                    prop_assert!(run.h.bound.contains(relayed), "sent from {relayed}, never bound");
                }
            }
            prop_assert_eq!(run.h.server.stats().allocations, 0);
            prop_assert_eq!(run.h.server.poll_timeout().map(|_| ()), None, "no timers left");

            let mut up = HashMap::new();
            for o in history {
                match o {
                    // Announced again only when its expiry moved.
                    Output::FlowUp(f, e) => {
                        if let Some(before) = up.insert(*f, *e) {
                            prop_assert!(before != *e, "flow announced twice unchanged: {f:?}");
                        }
                    }
                    Output::FlowDown(f) => prop_assert!(up.remove(f).is_some(), "flow removed but never installed: {f:?}"),
                    _ => {}
                }
            }
            prop_assert!(up.is_empty(), "flows never removed: {up:?}");
            prop_assert!(run.h.permitted.is_empty(), "permissions never taken back: {:?}", run.h.permitted);
            let released: HashSet<SocketAddr> = history.iter().filter_map(|o| match o {
                Output::Release { addr } => Some(*addr),
                _ => None,
            }).collect();
            for b in &run.h.bound {
                prop_assert!(released.contains(b), "{b} bound but never released");
            }
        }
    }
}

/// A late timer (the clock jumps past a channel's expiry and its 5-minute reservation at
/// once) still takes the flow out of the fast path. Found by the property below.
#[test]
fn a_late_timer_still_removes_the_flow() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40002", "alice", "secret");
    let relayed = c.allocate(&mut h);
    c.refresh(&mut h, 1163);
    let peer = addr("10.77.0.20:3480");
    c.bind(&mut h, 0x4000, peer);
    let flow = ChannelFlow {
        client: c.tuple,
        relayed,
        channel: 0x4000,
        peer,
    };
    assert!(
        h.history
            .iter()
            .any(|o| matches!(o, Output::FlowUp(f, _) if *f == flow))
    );
    assert!(
        h.advance(Duration::from_secs(900))
            .contains(&Output::FlowDown(flow))
    );
}

/// A relay killed and started again from its snapshot serves its allocations as before,
/// once the clients have the new process's nonce.
#[test]
fn a_restarted_relay_goes_on_serving_its_allocations() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let allocated = c.call(&mut h, Method::ALLOCATE, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .add(attr::DONT_FRAGMENT, &[]);
    });
    let msg = Message::decode(&allocated).unwrap();
    let relayed = relayed(&msg)[0];
    let allocate_tid = msg.transaction_id();
    let peer = addr(PEER);
    assert_eq!(c.bind(&mut h, 0x4000, peer).class(), Class::Success);
    let bound_at = h.now;
    h.advance(Duration::from_secs(100));
    assert!(h.server.take_dirty());

    let snapshot = h.restart(Duration::from_secs(20), 7);
    assert_eq!(snapshot.allocations(), 1);
    // The relayed socket closed with the old process: bound again as it was, with DF.
    let Some(Output::Bind {
        id,
        addrs,
        max_bps,
        dont_fragment,
        ..
    }) = h.server.poll_output()
    else {
        panic!("no Bind for the restored allocation");
    };
    assert_eq!((addrs, max_bps, dont_fragment), (vec![relayed], None, true));
    assert_eq!(h.server.poll_output(), None, "flows wait for the socket");
    h.server.relay_bound(h.now, id, Ok(()));
    let flow = ChannelFlow {
        client: c.tuple,
        relayed,
        channel: 0x4000,
        peer,
    };
    // Until the permission's end, 300 s after the ChannelBind, as before the restart.
    assert_eq!(
        h.drain(),
        [Output::FlowUp(flow, bound_at + Duration::from_secs(300))]
    );
    assert!(!h.server.take_dirty(), "nothing changed, nothing to write");
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.server.relayed_addresses(&c.tuple), Some(&[relayed][..]));

    // The old process's nonce is stale here (another nonce key): 438, then a retry works.
    let req = c.request(Method::REFRESH, |_| {});
    let r = leak(only_response(&h.client_sends(c.tuple, &req)));
    assert_eq!(error_code(&r), Some(438));
    let r = c.refresh(&mut h, 3600);
    assert_eq!(
        (r.class(), decode_u32(r.get(attr::LIFETIME).unwrap())),
        (Class::Success, Ok(3600))
    );
    assert!(h.server.take_dirty());
    let other = addr("10.77.0.22:3480");
    assert_eq!(c.permit(&mut h, other).class(), Class::Success);
    // The restored channel is live: refreshed by its own pair, refused to another.
    assert_eq!(c.bind(&mut h, 0x4000, peer).class(), Class::Success);
    assert_eq!(error_code(&c.bind(&mut h, 0x4000, other)), Some(400));
    assert_eq!(
        h.history
            .iter()
            .rev()
            .find(|o| matches!(o, Output::FlowUp(..))),
        Some(&Output::FlowUp(flow, h.now + Duration::from_secs(300))),
        "the ChannelBind refreshed the flow"
    );

    let cd = ChannelData {
        channel: 0x4000,
        data: b"rtp",
    }
    .encode(false);
    assert_eq!(
        to_peer(&h.client_sends(c.tuple, &cd)),
        [(relayed, peer, b"rtp".to_vec())]
    );
    let back = only_response(&h.peer_sends(relayed, peer, b"rtcp"));
    assert_eq!(
        ChannelData::decode(&back).unwrap(),
        ChannelData {
            channel: 0x4000,
            data: b"rtcp"
        }
    );
    assert_eq!(
        to_peer(&c.send(&mut h, other, b"hi")),
        [(relayed, other, b"hi".to_vec())]
    );

    // The Allocate that made the allocation, sent again, still gets its answer.
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, allocate_tid);
    b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .add(attr::USERNAME, b"alice")
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, c.nonce.clone().unwrap().as_bytes())
        .add_message_integrity(&c.key());
    assert_eq!(
        only_response(&h.client_sends(c.tuple, &b.build())),
        allocated
    );
}

#[test]
fn what_ended_while_the_relay_was_down_is_not_restored() {
    let mut h = Harness::new(config());
    let mut short = Client::udp("10.77.0.11:40000", "alice", "secret");
    short.allocate(&mut h);
    let mut long = Client::udp("10.77.0.11:40001", "alice", "secret");
    let relayed_long = long.allocate(&mut h);
    long.refresh(&mut h, 3600);
    let peer = addr(PEER);
    long.bind(&mut h, 0x4000, peer);
    let mut stream = Client::new(Transport::Tcp, "10.77.0.11:40002", "bob", "hunter2");
    stream.allocate(&mut h);
    stream.refresh(&mut h, 3600);
    let mut reserving = Client::udp("10.77.0.11:40003", "alice", "secret");
    let r = reserving.try_allocate(&mut h, |b| {
        b.add(attr::EVEN_PORT, &[0x80]);
    });
    let relayed_reserving = relayed(&r)[0];
    let token = r.get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    reserving.refresh(&mut h, 3600);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.server.snapshot(h.now).allocations(), 4);

    // Down 700 s: the 600 s allocation, the permission (300 s), the channel (600 s) and the
    // reservation (30 s) ended meanwhile; the stream's connection ended with the process.
    h.bound.clear();
    h.restart(Duration::from_secs(700), 7);
    let out = h.drain();
    assert!(out.is_empty(), "no flow without its permission: {out:?}");
    h.bound.sort_unstable();
    assert_eq!(h.bound, [relayed_long, relayed_reserving]);
    assert_eq!(h.server.stats().allocations, 2);
    assert!(
        h.server.take_dirty(),
        "the file still holds what was dropped"
    );

    assert_eq!(error_code(&short.refresh(&mut h, 600)), Some(437));
    assert_eq!(error_code(&stream.refresh(&mut h, 600)), Some(437));
    assert!(to_peer(&long.send(&mut h, peer, b"x")).is_empty());
    // RFC 8656 section 12: the channel ended at 600 s, and until 900 s neither its number
    // nor its peer may be bound otherwise, restart or not.
    let other = addr("10.77.0.22:3480");
    assert_eq!(error_code(&long.bind(&mut h, 0x4000, other)), Some(400));
    assert_eq!(error_code(&long.bind(&mut h, 0x4001, peer)), Some(400));
    let mut late = Client::udp("10.77.0.11:40004", "alice", "secret");
    let r = late.try_allocate(&mut h, |b| {
        b.add(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(error_code(&r), Some(508), "the reservation lapsed");
    h.advance(Duration::from_secs(190));
    assert_eq!(long.bind(&mut h, 0x4000, other).class(), Class::Success);
}

#[test]
fn a_reservation_survives_a_restart() {
    let mut h = Harness::new(config());
    let reserve = |h: &mut Harness, client: &str| {
        let mut c = Client::udp(client, "alice", "secret");
        let r = c.try_allocate(h, |b| {
            b.add(attr::EVEN_PORT, &[0x80]);
        });
        let even = relayed(&r)[0];
        let token = r.get(attr::RESERVATION_TOKEN).unwrap().to_vec();
        (SocketAddr::new(even.ip(), even.port() + 1), token)
    };
    let (used, token) = reserve(&mut h, "10.77.0.11:40000");
    h.advance(Duration::from_secs(10));
    let (lapsing, _) = reserve(&mut h, "10.77.0.11:40001");
    h.bound.clear();
    h.restart(Duration::from_secs(5), 7);
    h.drain();
    assert!(h.bound.contains(&used) && h.bound.contains(&lapsing));

    let mut c = Client::udp("10.77.0.11:40002", "alice", "secret");
    let r = c.try_allocate(&mut h, |b| {
        b.add(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(relayed(&r), [used]);
    // Released 30 s after it was made, 25 s after the restart.
    assert!(
        !h.advance(Duration::from_secs(24))
            .contains(&Output::Release { addr: lapsing })
    );
    assert!(
        h.advance(Duration::from_secs(1))
            .contains(&Output::Release { addr: lapsing })
    );
}

#[test]
fn a_restored_allocation_whose_socket_cannot_be_bound_is_dropped() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let relayed = c.allocate(&mut h);
    c.bind(&mut h, 0x4000, addr(PEER));
    h.restart(Duration::from_secs(10), 7);
    assert!(!h.server.take_dirty());
    h.fail_binds = true;
    let out = h.drain();
    // Released like any removed allocation; its flows were never announced here.
    assert_eq!(out, [Output::Release { addr: relayed }]);
    assert_eq!(h.server.stats().allocations, 0);
    assert!(h.server.take_dirty());
    h.fail_binds = false;
    assert_eq!(error_code(&c.refresh(&mut h, 600)), Some(437));
    c.allocate(&mut h);
}

#[test]
fn dirty_tells_when_the_allocation_state_changed() {
    let mut h = Harness::new(config());
    let mut c = Client::udp("10.77.0.11:40000", "alice", "secret");
    let peer = addr(PEER);
    let dirty = |h: &mut Harness| h.server.take_dirty();
    assert!(!dirty(&mut h));
    let first = c.request(Method::ALLOCATE, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    h.client_sends(c.tuple, &first);
    assert!(!dirty(&mut h), "a 401 changes nothing");
    let relayed = c.allocate(&mut h);
    assert!(dirty(&mut h), "allocated");
    assert!(!dirty(&mut h), "taken");
    assert_eq!(error_code(&c.try_allocate(&mut h, |_| {})), Some(437));
    assert!(!dirty(&mut h), "refused");
    c.permit(&mut h, peer);
    assert!(dirty(&mut h), "permission");
    assert_eq!(
        error_code(&c.permit(&mut h, addr("127.0.0.1:9"))),
        Some(403)
    );
    assert!(!dirty(&mut h), "refused");
    c.bind(&mut h, 0x4000, peer);
    assert!(dirty(&mut h), "channel");
    c.send(&mut h, peer, b"x");
    h.peer_sends(relayed, peer, b"y");
    let cd = ChannelData {
        channel: 0x4000,
        data: b"z",
    }
    .encode(false);
    h.client_sends(c.tuple, &cd);
    assert!(!dirty(&mut h), "data relayed changes no state");
    c.refresh(&mut h, 600);
    assert!(dirty(&mut h), "refreshed");
    h.advance(Duration::from_secs(299));
    assert!(!dirty(&mut h));
    h.advance(Duration::from_secs(1));
    assert!(dirty(&mut h), "the permission expired");
    let mut reserving = Client::udp("10.77.0.11:40001", "alice", "secret");
    reserving.try_allocate(&mut h, |b| {
        b.add(attr::EVEN_PORT, &[0x80]);
    });
    assert!(dirty(&mut h));
    h.advance(Duration::from_secs(30));
    assert!(dirty(&mut h), "the reservation expired");
    c.refresh(&mut h, 0);
    assert!(dirty(&mut h), "deleted");
    h.server.handle_client_closed(h.now, c.tuple);
    assert!(!dirty(&mut h), "nothing to close");
    h.advance(Duration::from_secs(600));
    assert!(dirty(&mut h), "the other allocation expired");
}

/// A policy that lets alice allocate but not bob, and alice reach only 10.77.0.21.
fn with_policy(dir: &std::path::Path) -> (Config, crate::policy::Shared) {
    let rego = dir.join("p.rego");
    std::fs::write(
        &rego,
        r#"package relay
import rego.v1
allow if { input.action == "turn.allocate"; input.subject.name == "alice"; input.subject.transport == "udp" }
allow if { input.action != "turn.allocate"; input.object.peer.address == "10.77.0.21" }
reason := "only alice" if input.action == "turn.allocate"
reason := sprintf("not %s", [input.object.peer.address]) if input.action != "turn.allocate"
"#,
    )
    .unwrap();
    let policy = crate::policy::Policy::start(crate::policy::PolicyConfig {
        sources: crate::policy::Sources {
            rego: vec![rego],
            data: None,
        },
        audit: None,
        timeout: Duration::from_millis(50),
    })
    .unwrap()
    .shared();
    let mut config = config();
    config.policy = Some(policy.clone());
    (config, policy)
}

fn reason(msg: &Message<'_>) -> (u16, String) {
    let (code, reason) = decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
    (code, reason.to_owned())
}

#[test]
fn the_policy_decides_allocate_create_permission_and_channel_bind_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (config, policy) = with_policy(dir.path());
    let mut h = Harness::new(config);
    let mut bob = Client::udp("10.77.0.12:40000", "bob", "hunter2");
    let refused = bob.try_allocate(&mut h, |_| {});
    assert_eq!(reason(&refused), (403, "Forbidden: only alice".to_owned()));
    assert!(
        refused.verify_integrity(&bob.key()).is_ok(),
        "an authenticated refusal"
    );
    assert!(h.bound.is_empty(), "nothing was allocated for bob");

    let mut alice = Client::udp("10.77.0.11:40000", "alice", "secret");
    alice.allocate(&mut h);
    assert_eq!(
        error_code(&alice.permit(&mut h, addr("10.77.0.21:3480"))),
        None
    );
    assert_eq!(
        reason(&alice.permit(&mut h, addr("10.77.0.22:3480"))),
        (403, "Forbidden: not 10.77.0.22".to_owned())
    );
    assert_eq!(
        reason(&alice.bind(&mut h, 0x4000, addr("10.77.0.22:3480"))),
        (403, "Forbidden: not 10.77.0.22".to_owned())
    );
    assert_eq!(
        error_code(&alice.bind(&mut h, 0x4000, addr("10.77.0.21:3480"))),
        None
    );
    let counts = crate::policy::lock(&policy).counts();
    // Allocate: bob denied, alice allowed; CreatePermission 1/1; ChannelBind 1/1.
    assert_eq!(counts.decisions[..3], [[1, 1], [1, 1], [1, 1]]);
}
