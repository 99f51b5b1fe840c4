//! The TURN server as a sans-IO state machine (RFC 8656 over RFC 8489).
//!
//! It never reads a clock or touches a socket: the I/O layer feeds it `(now, input)` through
//! `handle_*` and drains [`Server::poll_output`] until it returns `None`, then sleeps until
//! [`Server::poll_timeout`] and calls [`Server::handle_timeout`]. Relayed sockets are opened
//! by the I/O layer on request ([`Output::Bind`]) and the result is fed back with
//! [`Server::relay_bound`], so allocations are deterministic in tests.
//!
//! [`Server::snapshot`] and [`Server::restore`] carry the allocations over a restart of the
//! process; [`Server::take_dirty`] says when a new snapshot is worth writing.

use std::{
    borrow::Cow,
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use rand::{Rng as _, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::{
    allocation::{Allocation, BindConflict},
    auth::{Authenticated, Authenticator, Credentials, Refusal},
    authorize,
    policy::PeerPolicy,
    ports::PortPool,
    reflection::ReflectionLimit,
    snapshot::{SavedReservation, Snapshot, VERSION},
    tenant::{Tenant, tenant_of},
};
use crate::policy::Action;
use crate::stun::{
    ChannelData, Class, Kind, Message, MessageBuilder, Method, TransactionId,
    attr::{self, decode_channel_number, decode_family, decode_u32, decode_xor_address},
    channel_data::is_bindable,
    classify,
};

/// How a client reaches the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Stream transports frame ChannelData with padding (RFC 8656 section 12.5).
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// The 5-tuple that identifies an allocation (RFC 8656 section 2.2): the client's address,
/// the server address it reached, and the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl fmt::Display for ClientTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} -> {}", self.transport, self.client, self.server)
    }
}

/// The server's settings (see `config.rs` for how operators give them).
#[derive(Clone, Debug)]
pub struct Config {
    pub realm: String,
    pub software: String,
    pub credentials: Credentials,
    /// Addresses relayed sockets bind to: at most one per family.
    pub relay_ips: Vec<IpAddr>,
    /// The address to advertise for a relay IP (behind 1:1 NAT), as coturn's `--external-ip`.
    pub external_ips: HashMap<IpAddr, IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub peer_policy: PeerPolicy,
    /// Bits per second each allocation may relay; enforced by the data path.
    pub max_bps: Option<u64>,
    pub user_quota: Option<usize>,
    pub total_quota: Option<usize>,
    /// Live permissions (peer IPs) and channels one allocation may hold: beyond, 508. Each
    /// costs kernel map entries; without a cap two allocations could fill the flow table.
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Answers to requests without valid credentials (Binding, 401, 400, 420) over UDP,
    /// per second per source prefix, in bursts of five seconds' worth; beyond, withheld
    /// (see [`ReflectionLimit`]). 0: no limit.
    pub unauthenticated_rate: u32,
    /// Tenants, whose shared rate limits the data path enforces.
    pub tenants: Vec<Tenant>,
    /// The Rego policy that decides Allocate, CreatePermission and ChannelBind (none: the
    /// checks above alone).
    pub policy: Option<crate::policy::Shared>,
}

/// What the server asks the I/O layer to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `data` to the client over its 5-tuple.
    ToClient { tuple: ClientTuple, data: Vec<u8> },
    /// Send `data` from the relayed address `relayed` to `peer`.
    ToPeer {
        relayed: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Open UDP sockets on all of `addrs` and on `reserve` (all or none), then call
    /// [`Server::relay_bound`] with `id`. `addrs` relay; `reserve` is held aside, unused, for
    /// a later Bind of the same address (RESERVATION-TOKEN), which takes that socket over.
    /// `max_bps` is the allocation's budget, `tenant` the index in [`Config::tenants`] of the
    /// tenant whose budget it also spends; `dont_fragment` asks for DF.
    Bind {
        id: u64,
        addrs: Vec<SocketAddr>,
        reserve: Option<SocketAddr>,
        max_bps: Option<u64>,
        tenant: Option<usize>,
        dont_fragment: bool,
    },
    /// Close the socket of a relayed (or reserved) address.
    Release { addr: SocketAddr },
    /// A channel the fast path may forward, both ways, without asking the server, until
    /// the instant given (its channel, permission or allocation ends then, unless
    /// refreshed: a refresh announces the flow again with the new instant).
    FlowUp(ChannelFlow, Instant),
    /// A channel the fast path must stop forwarding.
    FlowDown(ChannelFlow),
    /// Datagrams from `peer` (an IP: permissions are by IP, RFC 8656 section 9) may reach
    /// the allocation of `relayed` until `expires`; the data path drops the others before
    /// they spend any budget. `own`: `peer` is the relay host's own address, so only its
    /// live relayed addresses pass (port-exact).
    Permit {
        relayed: SocketAddr,
        peer: IpAddr,
        expires: Instant,
        own: bool,
    },
    /// The permission of `peer` on `relayed` ended.
    Unpermit { relayed: SocketAddr, peer: IpAddr },
}

/// A channel binding of a UDP client whose peer is permitted: what the fast path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelFlow {
    pub client: ClientTuple,
    pub relayed: SocketAddr,
    pub channel: u16,
    pub peer: SocketAddr,
}

/// Counted drops and refusals, logged when the relay stops (and read by tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations: usize,
    /// Datagrams the server relayed itself, both ways: what neither the kernel nor the
    /// data path's flow table carried. On channels (ChannelData), and in Send and Data
    /// indications (a browser's first ICE checks, before its ChannelBind).
    pub relayed_on_channels: u64,
    pub relayed_in_indications: u64,
    /// Datagrams that were neither STUN nor ChannelData, or did not decode.
    pub malformed: u64,
    /// Data from a client with no allocation, or to/from a peer without permission.
    pub unpermitted: u64,
    /// Requests refused for credentials (401, 438, 441).
    pub unauthorized: u64,
    /// CreatePermission and ChannelBind refused (508) over the allocation's caps.
    pub over_cap: u64,
    /// Answers to unauthenticated requests over UDP not sent: over their source prefix's
    /// rate (Relay is not an amplifier).
    pub withheld: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} allocations; relayed {} datagrams on channels and {} in indications; dropped: \
             {} malformed, {} without allocation or permission; {} requests refused for \
             credentials, {} over an allocation's permission or channel cap; {} unauthenticated \
             answers withheld over their source prefix's rate",
            self.allocations,
            self.relayed_on_channels,
            self.relayed_in_indications,
            self.malformed,
            self.unpermitted,
            self.unauthorized,
            self.over_cap,
            self.withheld
        )
    }
}

/// RFC 8656 section 7.2: a reserved port is held this long for its RESERVATION-TOKEN.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// An Allocate waiting for its relayed sockets.
#[derive(Debug)]
struct PendingAllocate {
    tuple: ClientTuple,
    /// When its authenticated Allocate was taken (setup time runs from here).
    accepted: Instant,
    tid: TransactionId,
    auth: Authenticated,
    lifetime: Duration,
    relayed: Vec<SocketAddr>,
    /// Port reserved for a later allocation (EVEN-PORT with R), and its token.
    reserve: Option<(SocketAddr, u64)>,
    /// ADDRESS-ERROR-CODE for an additional family that could not be served.
    address_error: Option<u8>,
    fingerprint: bool,
    dont_fragment: bool,
    /// The reservation this allocation consumed.
    used_reservation: Option<u64>,
}

/// What a [`Output::Bind`] issued by [`Server::restore`] binds again: the allocation of that
/// id, or the reservation of that token.
#[derive(Clone, Copy, Debug)]
enum Restoring {
    Allocation(ClientTuple),
    Reservation(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation(u64),
    Reservation(u64),
}

pub struct Server {
    config: Config,
    auth: Authenticator,
    epoch: Instant,
    unix_ms_at_epoch: u64,
    rng: StdRng,
    allocations: HashMap<ClientTuple, Allocation>,
    /// Allocation ids for timers, and the relayed-address index.
    ids: HashMap<u64, ClientTuple>,
    id_of: HashMap<ClientTuple, u64>,
    by_relayed: HashMap<SocketAddr, ClientTuple>,
    /// Allocations with a channel to a relayed address of this relay (relay/relay), by
    /// that address: when it is released, their flows must go.
    channels_to: HashMap<SocketAddr, HashSet<ClientTuple>>,
    /// Ports of media rooms' endpoints on this host: peers a client may reach.
    room_endpoints: HashSet<SocketAddr>,
    per_user: HashMap<String, usize>,
    ports: PortPool,
    /// Per source prefix, how many unauthenticated answers may still go out.
    reflection: ReflectionLimit,
    reservations: HashMap<u64, (SocketAddr, Instant)>,
    pending: HashMap<u64, PendingAllocate>,
    /// What was answered, and how long allocations took to set up (metrics).
    answers: super::answers::Answers,
    setup_times: super::answers::SetupTimes,
    /// Restored allocations and reservations whose sockets are being bound again, by bind
    /// id: kept apart from `pending`, as there is no request to answer.
    restoring: HashMap<u64, Restoring>,
    /// Allocation state changed since the last [`Server::take_dirty`].
    dirty: bool,
    next_id: u64,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// The earliest allocation timer in `timers` per allocation id: a later one is not
    /// pushed (it would pile up, one per request), an earlier one supersedes it.
    armed: HashMap<u64, Instant>,
    outputs: VecDeque<Output>,
    stats: Stats,
}

impl Server {
    /// `epoch` and `unix_at_epoch` tie the monotonic clock the server is fed to Unix time
    /// (REST credentials carry Unix expiry times). `rng` draws what clients can observe or
    /// must not guess: relayed ports, transaction ids, the nonce key. In production it is
    /// seeded from the OS (`StdRng::from_os_rng`); tests seed it to replay a run.
    pub fn new(config: Config, epoch: Instant, unix_at_epoch: u64, mut rng: StdRng) -> Self {
        let auth = Authenticator::new(
            config.realm.clone(),
            config.credentials.clone(),
            config.nonce_lifetime.as_secs(),
            rng.random(),
        );
        Self {
            ports: PortPool::new(config.min_port, config.max_port),
            reflection: ReflectionLimit::new(config.unauthenticated_rate),
            config,
            auth,
            epoch,
            unix_ms_at_epoch: unix_at_epoch.saturating_mul(1000),
            rng,
            allocations: HashMap::new(),
            ids: HashMap::new(),
            id_of: HashMap::new(),
            by_relayed: HashMap::new(),
            channels_to: HashMap::new(),
            room_endpoints: HashSet::new(),
            per_user: HashMap::new(),
            reservations: HashMap::new(),
            pending: HashMap::new(),
            answers: super::answers::Answers::default(),
            setup_times: super::answers::SetupTimes::default(),
            restoring: HashMap::new(),
            dirty: false,
            next_id: 1,
            timers: BinaryHeap::new(),
            armed: HashMap::new(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.len(),
            ..self.stats
        }
    }

    /// Responses sent, by method and code.
    pub fn answers(&self) -> &super::answers::Answers {
        &self.answers
    }

    /// How long allocations took from their authenticated Allocate to success.
    pub fn setup_times(&self) -> &super::answers::SetupTimes {
        &self.setup_times
    }

    /// The relayed addresses of the allocation on `tuple`, if any.
    pub fn relayed_addresses(&self, tuple: &ClientTuple) -> Option<&[SocketAddr]> {
        self.allocations.get(tuple).map(|a| a.relayed.as_slice())
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_ms(now) / 1000
    }

    /// Unix time in milliseconds at `at`: how the snapshot keeps time across processes.
    fn unix_ms(&self, at: Instant) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if at >= self.epoch {
            self.unix_ms_at_epoch.saturating_add(ms(at - self.epoch))
        } else {
            self.unix_ms_at_epoch.saturating_sub(ms(self.epoch - at))
        }
    }

    /// Whether allocation state changed since the last call (allocations, permissions,
    /// channels or reservations made, refreshed, used, removed or expired; not data
    /// relayed): the caller writes a [`Snapshot`] when it did.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The allocations and reservations live at `now`, for [`Server::restore`].
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut allocations: Vec<_> = self
            .allocations
            .values()
            .filter(|a| a.expires > now)
            .map(|a| a.save(now, |at| self.unix_ms(at)))
            .collect();
        // Sorted, so that the same state gives the same file.
        allocations.sort_unstable_by_key(|a| (a.client, a.server, a.transport));
        let mut reservations: Vec<_> = self
            .reservations
            .iter()
            .filter(|(_, (_, expires))| *expires > now)
            .map(|(token, (addr, expires))| SavedReservation {
                addr: *addr,
                token: *token,
                expires_unix_ms: self.unix_ms(*expires),
            })
            .collect();
        reservations.sort_unstable_by_key(|r| r.addr);
        Snapshot {
            version: VERSION,
            taken_unix_ms: self.unix_ms(now),
            allocations,
            reservations,
        }
    }

    /// A server that goes on with the allocations and reservations of `snapshot`, as
    /// [`Server::new`] with `now` as its epoch and `unix_ms_now` (Unix milliseconds) as the
    /// Unix time then. What expired meanwhile is dropped, and so are allocations of stream
    /// clients, whose connections ended with the old process.
    ///
    /// The relayed sockets closed with the old process: [`Server::poll_output`] asks for each
    /// allocation's (and reservation's) with an [`Output::Bind`], and once
    /// [`Server::relay_bound`] confirms an allocation's, announces its channels to the fast
    /// path again ([`Output::FlowUp`]). An allocation whose sockets cannot be bound again is
    /// removed. Clients hold nonces of the old process: they are answered 438 and retry.
    pub fn restore(
        config: Config,
        snapshot: &Snapshot,
        now: Instant,
        unix_ms_now: u64,
        rng: StdRng,
    ) -> Self {
        let mut server = Self::new(config, now, unix_ms_now / 1000, rng);
        server.unix_ms_at_epoch = unix_ms_now;
        let max_lifetime = server.config.max_lifetime;
        for saved in &snapshot.allocations {
            if let Some(alloc) = Allocation::restore(saved, now, unix_ms_now, max_lifetime) {
                server.adopt(alloc);
            }
        }
        for r in &snapshot.reservations {
            server.adopt_reservation(r, now, unix_ms_now);
        }
        for (tuple, alloc) in &server.allocations {
            for peer in alloc.channel_peers() {
                if server.by_relayed.contains_key(&peer) {
                    server.channels_to.entry(peer).or_default().insert(*tuple);
                }
            }
        }
        let dropped = snapshot.allocations.len() + snapshot.reservations.len()
            - server.allocations.len()
            - server.reservations.len();
        log::info!(
            "restored {} allocations and {} reservations; dropped {dropped} (ended while the \
             relay was down, or of stream clients)",
            server.allocations.len(),
            server.reservations.len()
        );
        // The file still holds what was dropped.
        server.dirty = dropped > 0;
        server
    }

    /// Takes over a restored allocation under a new id: indexes, quota count, timer, and a
    /// Bind for its sockets. Stream clients' allocations are dropped: their connections
    /// ended with the old process (RFC 8656 section 7.3.1 ties them to the connection).
    fn adopt(&mut self, alloc: Allocation) {
        let tuple = alloc.tuple;
        if tuple.transport.is_stream() {
            return;
        }
        if self.allocations.contains_key(&tuple)
            || alloc
                .relayed
                .iter()
                .any(|r| self.by_relayed.contains_key(r))
        {
            log::warn!("allocation {tuple}: saved twice or sharing a relayed address; dropped");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for r in &alloc.relayed {
            self.ports.take(*r);
            self.by_relayed.insert(*r, tuple);
        }
        *self.per_user.entry(alloc.username.clone()).or_default() += 1;
        self.ids.insert(id, tuple);
        self.id_of.insert(tuple, id);
        self.arm(id, alloc.next_expiry());
        self.outputs.push_back(Output::Bind {
            id,
            addrs: alloc.relayed.clone(),
            reserve: None,
            max_bps: self.config.max_bps,
            // The tenant as configured now: a restart may move users between tenants.
            tenant: tenant_of(&self.config.tenants, &alloc.username),
            dont_fragment: alloc.dont_fragment,
        });
        self.restoring.insert(id, Restoring::Allocation(tuple));
        log::info!(
            "allocation {id}: {tuple} user {:?} relayed {:?} restored",
            alloc.username,
            alloc.relayed
        );
        self.allocations.insert(tuple, alloc);
    }

    /// Holds a saved reservation's port again, unless it lapsed meanwhile.
    fn adopt_reservation(&mut self, saved: &SavedReservation, now: Instant, unix_ms_now: u64) {
        let SavedReservation {
            addr,
            token,
            expires_unix_ms,
        } = *saved;
        if expires_unix_ms <= unix_ms_now {
            return;
        }
        if self.by_relayed.contains_key(&addr)
            || self.reservations.contains_key(&token)
            || self.reservations.values().any(|(a, _)| *a == addr)
        {
            log::warn!("reservation of {addr}: saved twice or in use; dropped");
            return;
        }
        let left = Duration::from_millis(expires_unix_ms - unix_ms_now);
        let expires = now + left.min(RESERVATION_LIFETIME);
        self.ports.take(addr);
        self.reservations.insert(token, (addr, expires));
        self.timers
            .push(Reverse((expires, Timer::Reservation(token))));
        let id = self.next_id;
        self.next_id += 1;
        self.outputs.push_back(Output::Bind {
            id,
            addrs: Vec::new(),
            reserve: Some(addr),
            max_bps: None,
            tenant: None,
            dont_fragment: false,
        });
        self.restoring.insert(id, Restoring::Reservation(token));
    }

    /// [`Server::relay_bound`] for a bind that [`Server::restore`] asked for.
    fn rebound(&mut self, now: Instant, id: u64, what: Restoring, result: std::io::Result<()>) {
        match (what, result) {
            (Restoring::Allocation(tuple), Ok(())) => self.sync_flows(tuple, now),
            (Restoring::Allocation(tuple), Err(e)) => {
                if let Some(alloc) = self.allocations.get(&tuple) {
                    log::warn!(
                        "allocation {id}: {tuple} dropped: binding {:?} again failed: {e}",
                        alloc.relayed
                    );
                    self.remove_allocation(tuple, now);
                }
            }
            (Restoring::Reservation(_), Ok(())) => {}
            (Restoring::Reservation(token), Err(e)) => {
                if let Some((addr, _)) = self.reservations.remove(&token) {
                    log::warn!("reservation of {addr} dropped: binding it again failed: {e}");
                    self.ports.free(addr);
                    self.dirty = true;
                }
            }
        }
    }

    /// A datagram or stream record from a client.
    pub fn handle_client(&mut self, now: Instant, tuple: ClientTuple, data: &[u8]) {
        match data.first().map(|b| classify(*b)) {
            Some(Kind::Stun) => match Message::decode(data) {
                Ok(msg) if msg.verify_fingerprint() != Some(false) => {
                    self.handle_stun(now, tuple, &msg);
                }
                _ => self.stats.malformed += 1,
            },
            Some(Kind::ChannelData) => match ChannelData::decode(data) {
                Ok(cd) => self.channel_data_from_client(now, tuple, cd),
                Err(_) => self.stats.malformed += 1,
            },
            _ => self.stats.malformed += 1,
        }
    }

    /// A datagram a peer sent to the relayed address `relayed`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        let Some(alloc) = self
            .by_relayed
            .get(&relayed)
            .and_then(|t| self.allocations.get(t))
        else {
            self.stats.unpermitted += 1;
            return;
        };
        // RFC 8656 section 10.3: only permitted peers reach the client.
        if !alloc.has_permission(peer.ip(), now) || alloc.expires <= now || !self.reachable(peer) {
            self.stats.unpermitted += 1;
            return;
        }
        let tuple = alloc.tuple;
        let out = if let Some(channel) = alloc.channel_to(peer, now) {
            self.stats.relayed_on_channels += 1;
            ChannelData { channel, data }.encode(tuple.transport.is_stream())
        } else {
            self.stats.relayed_in_indications += 1;
            let mut b = MessageBuilder::new(Class::Indication, Method::DATA, self.rng.random());
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                .add(attr::DATA, data);
            b.build()
        };
        self.outputs
            .push_back(Output::ToClient { tuple, data: out });
    }

    /// The I/O layer's answer to [`Output::Bind`].
    pub fn relay_bound(&mut self, now: Instant, id: u64, result: Result<(), std::io::Error>) {
        if let Some(what) = self.restoring.remove(&id) {
            return self.rebound(now, id, what, result);
        }
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let mut b = MessageBuilder::new(Class::Success, Method::ALLOCATE, p.tid);
        if let Err(e) = result {
            log::warn!(
                "allocation for {} failed: binding {:?}: {e}",
                p.tuple,
                p.relayed
            );
            // A reserved port handed over stays reserved: its socket is still held.
            if p.used_reservation.is_none() {
                for addr in p.relayed.iter().chain(p.reserve.as_ref().map(|(a, _)| a)) {
                    self.ports.free(*addr);
                }
            }
            let mut error = MessageBuilder::new(Class::Error, Method::ALLOCATE, p.tid);
            error.add_error_code(508, "Insufficient Capacity");
            self.respond(p.tuple, error, Some(&p.auth), p.fingerprint);
            return;
        }
        if let Some(token) = p.used_reservation {
            self.reservations.remove(&token);
        }
        for relayed in &p.relayed {
            let advertised = self
                .config
                .external_ips
                .get(&relayed.ip())
                .map_or(*relayed, |ip| SocketAddr::new(*ip, relayed.port()));
            b.add_xor_address(attr::XOR_RELAYED_ADDRESS, advertised);
        }
        if let Some(family) = p.address_error {
            // RFC 8656 section 7.2: ADDRESS-ERROR-CODE names the family that failed.
            let mut v = vec![family, 0, 4, 40];
            v.extend_from_slice(b"Address Family not Supported");
            b.add(attr::ADDRESS_ERROR_CODE, &v);
        }
        b.add_u32(attr::LIFETIME, p.lifetime.as_secs() as u32);
        if let Some((reserved, token)) = p.reserve {
            self.reservations
                .insert(token, (reserved, now + RESERVATION_LIFETIME));
            self.timers.push(Reverse((
                now + RESERVATION_LIFETIME,
                Timer::Reservation(token),
            )));
            b.add(attr::RESERVATION_TOKEN, &token.to_be_bytes());
        }
        b.add_xor_address(attr::XOR_MAPPED_ADDRESS, p.tuple.client);
        let response = self.finish(b, Some(&p.auth), p.fingerprint);
        self.answers.count(&response);
        self.setup_times
            .observe(now.saturating_duration_since(p.accepted));

        let id = self.next_id;
        self.next_id += 1;
        let expires = now + p.lifetime;
        for relayed in &p.relayed {
            self.by_relayed.insert(*relayed, p.tuple);
        }
        *self.per_user.entry(p.auth.username.clone()).or_default() += 1;
        log::info!(
            "allocation {id}: {} user {:?} relayed {:?} for {} s",
            p.tuple,
            p.auth.username,
            p.relayed,
            p.lifetime.as_secs()
        );
        let alloc = Allocation::new(
            p.tuple,
            p.auth.username,
            p.relayed,
            expires,
            p.tid,
            response.clone(),
            p.dont_fragment,
        );
        self.allocations.insert(p.tuple, alloc);
        self.dirty = true;
        self.ids.insert(id, p.tuple);
        self.id_of.insert(p.tuple, id);
        self.arm(id, expires);
        self.outputs.push_back(Output::ToClient {
            tuple: p.tuple,
            data: response,
        });
    }

    /// A stream client's connection closed: its allocation goes with it (RFC 8656 section
    /// 7.3.1 ties an allocation to its connection).
    pub fn handle_client_closed(&mut self, now: Instant, tuple: ClientTuple) {
        if self.allocations.contains_key(&tuple) {
            log::info!("allocation {tuple}: connection closed");
            self.remove_allocation(tuple, now);
        }
    }

    /// Expires allocations, permissions, channels and reservations due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Reservation(token) => {
                    if let Some((addr, expires)) = self.reservations.get(&token).copied() {
                        if expires <= now {
                            self.reservations.remove(&token);
                            self.dirty = true;
                            self.ports.release(addr, now);
                            self.outputs.push_back(Output::Release { addr });
                        }
                    }
                }
                Timer::Allocation(id) => {
                    // Superseded by an earlier one, which re-armed after it fired.
                    if self.armed.get(&id) != Some(&at) {
                        continue;
                    }
                    self.armed.remove(&id);
                    let Some(tuple) = self.ids.get(&id).copied() else {
                        continue;
                    };
                    let Some(alloc) = self.allocations.get_mut(&tuple) else {
                        continue;
                    };
                    if alloc.expires <= now {
                        log::info!("allocation {id}: {tuple} expired");
                        self.remove_allocation(tuple, now);
                        continue;
                    }
                    if alloc.expire(now) {
                        self.dirty = true;
                    }
                    self.sync_flows(tuple, now);
                    self.rearm(tuple);
                }
            }
        }
    }

    fn remove_allocation(&mut self, tuple: ClientTuple, now: Instant) {
        let Some(alloc) = self.allocations.remove(&tuple) else {
            return;
        };
        self.dirty = true;
        // Stream clients never had flows announced (see `sync_flows`).
        let flows = if tuple.transport == Transport::Udp {
            alloc.installed_flows()
        } else {
            Vec::new()
        };
        for (channel, peer) in flows {
            if let Some(flow) = alloc.channel_flow(channel, peer) {
                self.outputs.push_back(Output::FlowDown(flow));
            }
        }
        for peer in alloc.announced_permissions() {
            if let Some(relayed) = alloc.relayed_for(SocketAddr::new(peer, 0)) {
                self.outputs.push_back(Output::Unpermit { relayed, peer });
            }
        }
        let mut dependents = Vec::new();
        for relayed in &alloc.relayed {
            self.by_relayed.remove(relayed);
            self.ports.release(*relayed, now);
            self.outputs.push_back(Output::Release { addr: *relayed });
            dependents.extend(self.channels_to.remove(relayed).into_iter().flatten());
        }
        if let Some(n) = self.per_user.get_mut(&alloc.username) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&alloc.username);
            }
        }
        if let Some(id) = self.id_of.remove(&tuple) {
            self.ids.remove(&id);
            self.restoring.remove(&id);
            self.armed.remove(&id);
        }
        for dependent in dependents {
            self.sync_flows(dependent, now);
        }
    }

    /// Emits the fast-path changes of the allocation on `tuple` (UDP clients only: the fast
    /// path does not serve streams).
    fn sync_flows(&mut self, tuple: ClientTuple, now: Instant) {
        // A restored allocation's flows wait for its sockets: see `rebound`.
        if self
            .id_of
            .get(&tuple)
            .is_some_and(|id| self.restoring.contains_key(id))
        {
            return;
        }
        let Some(alloc) = self.allocations.get_mut(&tuple) else {
            return;
        };
        // A channel to a relayed address of this relay that has since been released stays
        // bound (RFC 8656 section 12), but carries nothing: the port may be anyone's now.
        let live = LivePorts {
            by_relayed: &self.by_relayed,
            room_endpoints: &self.room_endpoints,
        };
        let config = &self.config;
        let (up, down) = alloc.sync_flows(now, |peer| reachable(config, &live, peer));
        // Peers reach every allocation over UDP: its permissions go to the data path
        // whatever the client's transport.
        let (permitted, unpermitted) = alloc.sync_permissions(now);
        for (peer, expires) in permitted {
            if let Some(relayed) = alloc.relayed_for(SocketAddr::new(peer, 0)) {
                let own = self.config.peer_policy.is_own(peer);
                self.outputs.push_back(Output::Permit {
                    relayed,
                    peer,
                    expires,
                    own,
                });
            }
        }
        for peer in unpermitted {
            if let Some(relayed) = alloc.relayed_for(SocketAddr::new(peer, 0)) {
                self.outputs.push_back(Output::Unpermit { relayed, peer });
            }
        }
        if tuple.transport != Transport::Udp {
            return;
        }
        // Downs first: a channel number bound again to another peer keeps its client-side
        // key, which the old flow's removal must not take from the new one.
        for (channel, peer) in down {
            if let Some(flow) = alloc.channel_flow(channel, peer) {
                self.outputs.push_back(Output::FlowDown(flow));
            }
        }
        for ((channel, peer), expires) in up {
            if let Some(flow) = alloc.channel_flow(channel, peer) {
                self.outputs.push_back(Output::FlowUp(flow, expires));
            }
        }
    }

    /// Re-arms the allocation's timer for its next expiry.
    fn rearm(&mut self, tuple: ClientTuple) {
        if let (Some(id), Some(alloc)) = (self.id_of.get(&tuple), self.allocations.get(&tuple)) {
            self.arm(*id, alloc.next_expiry());
        }
    }

    /// Makes sure allocation `id`'s timer fires by `at`: one timer per allocation pending,
    /// however many requests move its next expiry.
    fn arm(&mut self, id: u64, at: Instant) {
        if self.armed.get(&id).is_some_and(|armed| *armed <= at) {
            return;
        }
        self.armed.insert(id, at);
        self.timers.push(Reverse((at, Timer::Allocation(id))));
    }

    /// Timers pending, stale ones included (tests: they must not pile up).
    #[cfg(test)]
    pub(super) fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    fn channel_data_from_client(&mut self, now: Instant, tuple: ClientTuple, cd: ChannelData<'_>) {
        let target = self
            .allocations
            .get(&tuple)
            .filter(|a| a.expires > now)
            .and_then(|a| {
                let channel = a.channel(cd.channel, now)?;
                a.has_permission(channel.peer.ip(), now).then_some(())?;
                self.reachable(channel.peer).then_some(())?;
                Some((a.relayed_for(channel.peer)?, channel.peer))
            });
        match target {
            Some((relayed, peer)) => {
                self.stats.relayed_on_channels += 1;
                self.outputs.push_back(Output::ToPeer {
                    relayed,
                    peer,
                    data: cd.data.to_vec(),
                });
            }
            None => self.stats.unpermitted += 1,
        }
    }

    fn handle_stun(&mut self, now: Instant, tuple: ClientTuple, msg: &Message<'_>) {
        match msg.class() {
            Class::Request => {}
            Class::Indication => {
                if msg.method() == Method::SEND {
                    self.send_indication(now, tuple, msg);
                }
                // Binding indications are keepalives (RFC 8489 section 6.3.2): nothing to do.
                return;
            }
            // A server sends no requests, so it expects no responses.
            Class::Success | Class::Error => {
                self.stats.malformed += 1;
                return;
            }
        }
        let fingerprint = msg.verify_fingerprint().is_some();
        let unknown = attr::unknown_required(msg);
        if !unknown.is_empty() {
            // RFC 8489 section 6.3.1.1: 420 and the list of what was not understood.
            let mut b = MessageBuilder::new(Class::Error, msg.method(), msg.transaction_id());
            b.add_error_code(420, "Unknown Attribute");
            let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            b.add(attr::UNKNOWN_ATTRIBUTES, &list);
            self.answer_unauthenticated(now, tuple, b, fingerprint);
            return;
        }
        if msg.method() == Method::BINDING {
            let mut b = MessageBuilder::new(Class::Success, Method::BINDING, msg.transaction_id());
            b.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            self.answer_unauthenticated(now, tuple, b, fingerprint);
            return;
        }
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&msg.method())
        {
            self.unauthenticated_error(now, tuple, msg, 400, "Bad Request");
            return;
        }
        let auth = match self.auth.check(msg, self.unix(now)) {
            Ok(auth) => auth,
            Err(refusal) => {
                self.refuse(now, tuple, msg, refusal);
                return;
            }
        };
        if msg.method() == Method::ALLOCATE {
            self.allocate(now, tuple, msg, &auth);
            return;
        }
        // RFC 8656 sections 7.3, 9.2, 11.2: the other requests need an allocation on this
        // 5-tuple, made by the same user.
        let Some(alloc) = self.allocations.get(&tuple).filter(|a| a.expires > now) else {
            self.error(tuple, msg, 437, "Allocation Mismatch", &auth);
            return;
        };
        if alloc.username != auth.username {
            self.stats.unauthorized += 1;
            self.error(tuple, msg, 441, "Wrong Credentials", &auth);
            return;
        }
        match msg.method() {
            Method::REFRESH => self.refresh(now, tuple, msg, &auth),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, &auth),
            _ => self.channel_bind(now, tuple, msg, &auth),
        }
    }

    fn refuse(&mut self, now: Instant, tuple: ClientTuple, msg: &Message<'_>, refusal: Refusal) {
        let (code, reason) = match refusal {
            Refusal::BadRequest => {
                return self.unauthenticated_error(now, tuple, msg, 400, "Bad Request");
            }
            Refusal::Unauthorized => (401, "Unauthorized"),
            Refusal::StaleNonce => (438, "Stale Nonce"),
        };
        // The first, unauthenticated request of every client gets a 401: only count the
        // ones that tried credentials.
        if msg.integrity_kind().is_some() {
            self.stats.unauthorized += 1;
        }
        let mut b = MessageBuilder::new(Class::Error, msg.method(), msg.transaction_id());
        b.add_error_code(code, reason)
            .add(attr::REALM, self.auth.realm().as_bytes())
            .add(attr::NONCE, self.auth.nonce(self.unix(now)).as_bytes());
        self.answer_unauthenticated(now, tuple, b, msg.verify_fingerprint().is_some());
    }

    fn unauthenticated_error(
        &mut self,
        now: Instant,
        tuple: ClientTuple,
        msg: &Message<'_>,
        code: u16,
        reason: &str,
    ) {
        let mut b = MessageBuilder::new(Class::Error, msg.method(), msg.transaction_id());
        b.add_error_code(code, reason);
        self.answer_unauthenticated(now, tuple, b, msg.verify_fingerprint().is_some());
    }

    /// An answer to a request without valid credentials: over UDP, where the source address
    /// may be a victim's, only within its source prefix's rate (see [`ReflectionLimit`]).
    fn answer_unauthenticated(
        &mut self,
        now: Instant,
        tuple: ClientTuple,
        b: MessageBuilder,
        fingerprint: bool,
    ) {
        if tuple.transport == Transport::Udp && !self.reflection.admit(tuple.client.ip(), now) {
            self.stats.withheld += 1;
            return;
        }
        self.respond(tuple, b, None, fingerprint);
    }

    fn error(
        &mut self,
        tuple: ClientTuple,
        msg: &Message<'_>,
        code: u16,
        reason: &str,
        auth: &Authenticated,
    ) {
        let mut b = MessageBuilder::new(Class::Error, msg.method(), msg.transaction_id());
        b.add_error_code(code, reason);
        self.respond(tuple, b, Some(auth), msg.verify_fingerprint().is_some());
    }

    /// Adds SOFTWARE, integrity (when the request was authenticated) and FINGERPRINT (when
    /// the request carried one), and returns the bytes.
    fn finish(
        &self,
        mut b: MessageBuilder,
        auth: Option<&Authenticated>,
        fingerprint: bool,
    ) -> Vec<u8> {
        b.add(attr::SOFTWARE, self.config.software.as_bytes());
        if let Some(auth) = auth {
            b.add_integrity(auth.kind, &auth.key);
        }
        if fingerprint {
            b.add_fingerprint();
        }
        b.build()
    }

    fn respond(
        &mut self,
        tuple: ClientTuple,
        b: MessageBuilder,
        auth: Option<&Authenticated>,
        fingerprint: bool,
    ) {
        let data = self.finish(b, auth, fingerprint);
        self.answers.count(&data);
        self.outputs.push_back(Output::ToClient { tuple, data });
    }

    /// The relay IP of `family` (`attr::FAMILY_IPV4` or `FAMILY_IPV6`).
    fn relay_ip(&self, family: u8) -> Option<IpAddr> {
        self.config
            .relay_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == (family == attr::FAMILY_IPV4))
    }

    /// RFC 8656 section 7.2.
    #[expect(clippy::too_many_lines, reason = "the RFC's checks in the RFC's order")]
    fn allocate(
        &mut self,
        now: Instant,
        tuple: ClientTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) {
        let fingerprint = msg.verify_fingerprint().is_some();
        if let Some(existing) = self.allocations.get(&tuple) {
            if existing.created_by == msg.transaction_id() && existing.expires > now {
                // A retransmission of the Allocate that made it: same answer.
                let data = existing.success_response.clone();
                self.outputs.push_back(Output::ToClient { tuple, data });
            } else {
                self.error(tuple, msg, 437, "Allocation Mismatch", auth);
            }
            return;
        }
        if self.pending.values().any(|p| p.tuple == tuple) {
            return; // Still binding: the retransmission is answered when it completes.
        }
        match msg.get(attr::REQUESTED_TRANSPORT) {
            None => return self.error(tuple, msg, 400, "Bad Request", auth),
            Some([attr::TRANSPORT_UDP, ..]) => {}
            Some(_) => {
                return self.error(tuple, msg, 442, "Unsupported Transport Protocol", auth);
            }
        }
        let token = msg.get(attr::RESERVATION_TOKEN);
        let even_port = msg.get(attr::EVEN_PORT);
        let requested_family = msg.get(attr::REQUESTED_ADDRESS_FAMILY).map(decode_family);
        let additional_family = msg.get(attr::ADDITIONAL_ADDRESS_FAMILY).map(decode_family);
        // Combinations the RFC forbids, and families that do not parse.
        if (token.is_some()
            && (even_port.is_some() || requested_family.is_some() || additional_family.is_some()))
            || (requested_family.is_some() && additional_family.is_some())
            || matches!(additional_family, Some(Ok(attr::FAMILY_IPV4)))
            || matches!(even_port, Some(v) if v.len() != 1)
        {
            return self.error(tuple, msg, 400, "Bad Request", auth);
        }
        let family = match requested_family {
            None => attr::FAMILY_IPV4,
            Some(Ok(f)) => f,
            Some(Err(_)) => {
                return self.error(tuple, msg, 440, "Address Family not Supported", auth);
            }
        };
        let object = serde_json::json!({
            "requested_transport": "udp",
            "family": if family == attr::FAMILY_IPV4 { "ipv4" } else { "ipv6" },
        });
        if let Some(reason) = self.denied(Action::TurnAllocate, tuple, auth, object) {
            return self.error(tuple, msg, 403, &format!("Forbidden: {reason}"), auth);
        }
        if let Some(quota) = self.config.user_quota {
            if self.per_user.get(&auth.username).copied().unwrap_or(0) >= quota {
                return self.error(tuple, msg, 486, "Allocation Quota Reached", auth);
            }
        }
        if let Some(quota) = self.config.total_quota {
            if self.allocations.len() + self.pending.len() >= quota {
                return self.error(tuple, msg, 508, "Insufficient Capacity", auth);
            }
        }
        let lifetime = self.lifetime(msg);
        let mut relayed = Vec::new();
        let mut reserve = None;
        let mut address_error = None;
        let mut used_reservation = None;
        if let Some(token) = token {
            let token = token.try_into().map(u64::from_be_bytes).ok();
            match token.and_then(|t| self.reservations.get(&t).map(|(a, _)| (t, *a))) {
                Some((t, addr)) => {
                    // The reserved port's socket is already open and held: the Bind hands
                    // it over (closing it first would race the bind, EADDRINUSE).
                    relayed.push(addr);
                    used_reservation = Some(t);
                }
                None => return self.error(tuple, msg, 508, "Insufficient Capacity", auth),
            }
        } else {
            let Some(ip) = self.relay_ip(family) else {
                return self.error(tuple, msg, 440, "Address Family not Supported", auth);
            };
            let (even, pair) = match even_port {
                Some([flags]) => (true, flags & 0x80 != 0),
                _ => (false, false),
            };
            let Some(port) = self.ports.pick(ip, even, pair, now, &mut self.rng) else {
                return self.error(tuple, msg, 508, "Insufficient Capacity", auth);
            };
            relayed.push(SocketAddr::new(ip, port));
            if pair {
                reserve = Some((SocketAddr::new(ip, port + 1), self.rng.random()));
            }
            if let Some(Ok(extra)) = additional_family {
                match self.relay_ip(extra).and_then(|ip| {
                    self.ports
                        .pick(ip, false, false, now, &mut self.rng)
                        .map(|p| SocketAddr::new(ip, p))
                }) {
                    Some(addr) => relayed.push(addr),
                    None => address_error = Some(extra),
                }
            }
        }
        // The ports are taken now, not once bound: another Allocate arriving while these
        // sockets are being bound must not pick them too (its bind would fail, EADDRINUSE).
        for addr in relayed.iter().chain(reserve.as_ref().map(|(a, _)| a)) {
            self.ports.take(*addr);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.outputs.push_back(Output::Bind {
            id,
            addrs: relayed.clone(),
            reserve: reserve.map(|(a, _)| a),
            max_bps: self.config.max_bps,
            tenant: tenant_of(&self.config.tenants, &auth.username),
            dont_fragment: msg.get(attr::DONT_FRAGMENT).is_some(),
        });
        self.pending.insert(
            id,
            PendingAllocate {
                tuple,
                accepted: now,
                tid: msg.transaction_id(),
                auth: auth.clone(),
                lifetime,
                relayed,
                reserve,
                address_error,
                fingerprint,
                dont_fragment: msg.get(attr::DONT_FRAGMENT).is_some(),
                used_reservation,
            },
        );
    }

    /// RFC 8656 section 7.2 (and 7.3 for Refresh): the requested lifetime capped at the
    /// maximum; below the default, the default.
    fn lifetime(&self, msg: &Message<'_>) -> Duration {
        let requested = msg
            .get(attr::LIFETIME)
            .and_then(|v| decode_u32(v).ok())
            .map(|s| Duration::from_secs(u64::from(s)));
        requested
            .unwrap_or(self.config.default_lifetime)
            .clamp(self.config.default_lifetime, self.config.max_lifetime)
    }

    /// RFC 8656 section 7.3.
    fn refresh(
        &mut self,
        now: Instant,
        tuple: ClientTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) {
        let requested = msg.get(attr::LIFETIME).and_then(|v| decode_u32(v).ok());
        let mut b = MessageBuilder::new(Class::Success, Method::REFRESH, msg.transaction_id());
        if requested == Some(0) {
            log::info!("allocation {tuple}: deleted by Refresh");
            self.remove_allocation(tuple, now);
            b.add_u32(attr::LIFETIME, 0);
        } else {
            let lifetime = self.lifetime(msg);
            if let Some(alloc) = self.allocations.get_mut(&tuple) {
                alloc.expires = now + lifetime;
            }
            self.dirty = true;
            // The flows end with the allocation: their expiry moved with it.
            self.sync_flows(tuple, now);
            self.rearm(tuple);
            b.add_u32(attr::LIFETIME, lifetime.as_secs() as u32);
        }
        self.respond(tuple, b, Some(auth), msg.verify_fingerprint().is_some());
    }

    /// Peers named by `XOR-PEER-ADDRESS` that this allocation may reach, or the error to
    /// answer with (400 none or bad, 443 family, 403 forbidden).
    fn permitted_peers(
        &self,
        tuple: ClientTuple,
        msg: &Message<'_>,
        (action, auth, channel): (Action, &Authenticated, Option<u16>),
    ) -> Result<Vec<SocketAddr>, (u16, Cow<'static, str>)> {
        let alloc = &self.allocations[&tuple];
        let mut peers = Vec::new();
        for value in msg.all(attr::XOR_PEER_ADDRESS) {
            let peer = decode_xor_address(value, &msg.transaction_id())
                .map_err(|_| (400, "Bad Request".into()))?;
            if alloc.relayed_for(peer).is_none() {
                return Err((443, "Peer Address Family Mismatch".into()));
            }
            if !self
                .config
                .peer_policy
                .permits(peer, self.is_own_relayed(peer))
            {
                return Err((403, "Forbidden".into()));
            }
            peers.push(peer);
        }
        if peers.is_empty() {
            return Err((400, "Bad Request".into()));
        }
        // The policy last: what it sees is a request the relay would otherwise carry out.
        for peer in &peers {
            let object = serde_json::json!({
                "peer": crate::policy::address(*peer),
                "relayed": alloc.relayed_for(*peer).map(crate::policy::address),
                "channel": channel,
            });
            if let Some(reason) = self.denied(action, tuple, auth, object) {
                return Err((403, format!("Forbidden: {reason}").into()));
            }
        }
        Ok(peers)
    }

    /// The policy's refusal of `action` by the user of `tuple` on `object`, if it refuses.
    fn denied(
        &self,
        action: Action,
        tuple: ClientTuple,
        auth: &Authenticated,
        object: serde_json::Value,
    ) -> Option<String> {
        authorize::denied(
            self.config.policy.as_ref(),
            action,
            (tuple, auth, &self.config.tenants),
            object,
        )
    }

    fn live_ports(&self) -> LivePorts<'_> {
        LivePorts {
            by_relayed: &self.by_relayed,
            room_endpoints: &self.room_endpoints,
        }
    }

    fn is_own_relayed(&self, peer: SocketAddr) -> bool {
        is_own_relayed(&self.config, &self.live_ports(), peer)
    }

    fn reachable(&self, peer: SocketAddr) -> bool {
        reachable(&self.config, &self.live_ports(), peer)
    }

    /// A media room's endpoint port opened (`live`) or closed: while open, clients may
    /// reach it as a peer (port-exact), as they may a relayed address. Channels to it get
    /// their fast-path flows when it opens (a channel restored before its room) and lose
    /// them when it closes: the port may be another room's next.
    pub fn room_endpoint(&mut self, now: Instant, addr: SocketAddr, live: bool) {
        let dependents: Vec<ClientTuple> = if live {
            self.room_endpoints.insert(addr);
            let bound: Vec<ClientTuple> = self
                .allocations
                .iter()
                .filter(|(_, a)| a.channel_peers().any(|p| p == addr))
                .map(|(t, _)| *t)
                .collect();
            self.channels_to
                .entry(addr)
                .or_default()
                .extend(bound.iter().copied());
            bound
        } else {
            self.room_endpoints.remove(&addr);
            self.channels_to
                .remove(&addr)
                .into_iter()
                .flatten()
                .collect()
        };
        for tuple in dependents {
            self.sync_flows(tuple, now);
        }
    }

    /// RFC 8656 section 9.2: all permissions or none.
    fn create_permission(
        &mut self,
        now: Instant,
        tuple: ClientTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) {
        let peers =
            match self.permitted_peers(tuple, msg, (Action::TurnCreatePermission, auth, None)) {
                Ok(p) => p,
                Err((code, reason)) => return self.error(tuple, msg, code, &reason, auth),
            };
        let alloc = self
            .allocations
            .get_mut(&tuple)
            .expect("checked by the caller");
        // All or none (section 9.2), and within the allocation's cap.
        let new = peers
            .iter()
            .filter(|p| !alloc.has_permission(p.ip(), now))
            .map(SocketAddr::ip)
            .collect::<HashSet<_>>()
            .len();
        if alloc.permissions_live(now) + new > self.config.max_permissions {
            self.stats.over_cap += 1;
            return self.error(tuple, msg, 508, "Insufficient Capacity", auth);
        }
        for peer in peers {
            alloc.permit(peer.ip(), now);
        }
        self.dirty = true;
        self.sync_flows(tuple, now);
        self.rearm(tuple);
        let b = MessageBuilder::new(
            Class::Success,
            Method::CREATE_PERMISSION,
            msg.transaction_id(),
        );
        self.respond(tuple, b, Some(auth), msg.verify_fingerprint().is_some());
    }

    /// RFC 8656 section 11.2.
    fn channel_bind(
        &mut self,
        now: Instant,
        tuple: ClientTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) {
        let number = match msg.get(attr::CHANNEL_NUMBER).map(decode_channel_number) {
            Some(Ok(n)) if is_bindable(n) => n,
            _ => return self.error(tuple, msg, 400, "Bad Request", auth),
        };
        let peer =
            match self.permitted_peers(tuple, msg, (Action::TurnChannelBind, auth, Some(number))) {
                Ok(p) if p.len() == 1 => p[0],
                Ok(_) => return self.error(tuple, msg, 400, "Bad Request", auth),
                Err((code, reason)) => return self.error(tuple, msg, code, &reason, auth),
            };
        let alloc = self
            .allocations
            .get_mut(&tuple)
            .expect("checked by the caller");
        if let Err(conflict) = alloc.can_bind(number, peer, now) {
            let reason = match conflict {
                BindConflict::NumberTaken => "Bad Request: channel bound to another peer",
                BindConflict::PeerTaken => "Bad Request: peer bound to another channel",
            };
            return self.error(tuple, msg, 400, reason, auth);
        }
        let over = (alloc.channel(number, now).is_none()
            && alloc.channels_live(now) >= self.config.max_channels)
            || (!alloc.has_permission(peer.ip(), now)
                && alloc.permissions_live(now) >= self.config.max_permissions);
        if over {
            self.stats.over_cap += 1;
            return self.error(tuple, msg, 508, "Insufficient Capacity", auth);
        }
        alloc.bind(number, peer, now);
        alloc.permit(peer.ip(), now);
        if self.by_relayed.contains_key(&peer) || self.room_endpoints.contains(&peer) {
            self.channels_to.entry(peer).or_default().insert(tuple);
        }
        self.dirty = true;
        self.sync_flows(tuple, now);
        self.rearm(tuple);
        let b = MessageBuilder::new(Class::Success, Method::CHANNEL_BIND, msg.transaction_id());
        self.respond(tuple, b, Some(auth), msg.verify_fingerprint().is_some());
    }

    /// RFC 8656 section 10.2: relayed if the peer is permitted, silently dropped otherwise.
    fn send_indication(&mut self, now: Instant, tuple: ClientTuple, msg: &Message<'_>) {
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| decode_xor_address(v, &msg.transaction_id()).ok());
        let (Some(peer), Some(data)) = (peer, msg.get(attr::DATA)) else {
            self.stats.malformed += 1;
            return;
        };
        let relayed = self
            .allocations
            .get(&tuple)
            .filter(|a| a.expires > now && a.has_permission(peer.ip(), now))
            .filter(|_| self.reachable(peer))
            .and_then(|a| a.relayed_for(peer));
        match relayed {
            Some(relayed) => {
                self.stats.relayed_in_indications += 1;
                self.outputs.push_back(Output::ToPeer {
                    relayed,
                    peer,
                    data: data.to_vec(),
                });
            }
            None => self.stats.unpermitted += 1,
        }
    }
}

/// Whether `peer` is a live relayed address of this relay, as relayed or as advertised (an
/// external IP).
fn is_own_relayed(config: &Config, live: &LivePorts<'_>, peer: SocketAddr) -> bool {
    live.contains(peer)
        || config.external_ips.iter().any(|(relay, ext)| {
            *ext == peer.ip() && live.contains(SocketAddr::new(*relay, peer.port()))
        })
}

/// The relay host's ports a client may reach: live relayed addresses, and the endpoints of
/// media rooms (a phone behind a firewall that passes only TURN reaches its room that way).
struct LivePorts<'a> {
    by_relayed: &'a HashMap<SocketAddr, ClientTuple>,
    room_endpoints: &'a HashSet<SocketAddr>,
}

impl LivePorts<'_> {
    fn contains(&self, addr: SocketAddr) -> bool {
        self.by_relayed.contains_key(&addr) || self.room_endpoints.contains(&addr)
    }
}

/// Permissions are by IP (RFC 8656 section 9): on the relay host's own addresses that would
/// open every port of the host, so there a peer must be a live relayed address, port-exact,
/// on every datagram both ways.
fn reachable(config: &Config, live: &LivePorts<'_>, peer: SocketAddr) -> bool {
    !config.peer_policy.is_own(peer.ip()) || is_own_relayed(config, live, peer)
}
