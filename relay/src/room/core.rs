//! The room core: rooms, endpoints, tracks and subscriptions as a sans-IO state machine.
//! It takes control requests, the media packets the fast paths hand up, and the time; it
//! answers with routes for the fast paths (who receives which SSRC), packets to send,
//! sockets to open and close, and replies. It never touches a socket or the clock.
//!
//! The fast paths (the data path, the kernel) forward by route: packets from a publisher's
//! address with a given SSRC (RTP, or RTCP from that sender) go to every subscriber that
//! wants it. They never rewrite the RTP header, which SRTP authenticates, so choosing a
//! simulcast layer or going audio-only is choosing which SSRCs a subscriber gets: a
//! receiver sees a layer switch as a change of SSRC.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use rand::rngs::StdRng;

use super::api::{
    ApiError, Attributes, Counters, EndpointPatch, EndpointSpec, EndpointView, MediaKind, Request,
    Response, RoomSpec, RoomSummary, RoomView, SubscriptionSpec, SubscriptionView, TrackSpec,
    TrackView,
};
use super::authorize;
use super::snapshot::{
    self, RoomsSnapshot, SavedEndpoint, SavedRoom, SavedSubscription, SavedTrack,
};
use crate::{
    policy::Action,
    rtp::{self, Packet},
    turn::ports::PortPool,
};

#[derive(Clone, Debug)]
pub struct Config {
    /// The address endpoints' ports bind to.
    pub ip: IpAddr,
    /// Port range of endpoints whose port is not given.
    pub min_port: u16,
    pub max_port: u16,
    /// Keyframe requests (PLI, FIR) reach a publisher at most this often per track: thirty
    /// subscribers that lose the same packet ask for one keyframe, not thirty.
    pub keyframe_interval: Duration,
    /// Names of the configured tenants: a room's `tenant` must be one of them.
    pub tenants: Vec<String>,
    pub max_rooms: usize,
    /// The Rego policy that decides joins, publishes and subscriptions (none: no such
    /// decisions).
    pub policy: Option<crate::policy::Shared>,
}

/// A publisher's address as the fast paths see its packets: the relay's port it sends to
/// and where it sends from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A subscriber's address: sent from the relay's `local` port to `remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Where one SSRC from one source goes: RTP to `rtp`, RTCP (the publisher's sender
/// reports) to `rtcp` (the same addresses for RFC 5761 muxed subscribers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub rtp: Vec<Destination>,
    pub rtcp: Vec<Destination>,
}

/// What the core asks of the I/O layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open UDP sockets on all of `addrs` (all or none), then call [`Rooms::bound`].
    Bind {
        id: u64,
        addrs: Vec<SocketAddr>,
    },
    Release {
        addr: SocketAddr,
    },
    /// From now on packets from `from` with `ssrc` go where `route` says, spending `room`'s
    /// and its tenant's budgets; `None` removes the route. Replaces the previous one.
    Route {
        from: Source,
        ssrc: u32,
        room: String,
        tenant: Option<usize>,
        route: Option<Route>,
    },
    /// Send `data` from the relay's `local` port to `remote`.
    Send {
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    },
    /// The answer to control call `call`.
    Reply {
        call: u64,
        result: Result<Response, ApiError>,
    },
}

/// Counted drops, logged when the relay stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets the core forwarded itself (first packets, before a route was installed).
    pub forwarded: u64,
    /// Not RTP or RTCP, or to a port no endpoint has.
    pub malformed: u64,
    /// From an address that is not the endpoint's (and may not re-latch).
    pub foreign: u64,
    /// RTP with an SSRC the endpoint does not publish.
    pub unknown_ssrc: u64,
    /// Keyframe requests held back: one per track per keyframe interval.
    pub keyframe_requests_throttled: u64,
    /// Endpoints removed after their idle timeout.
    pub expired: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets forwarded by the core; dropped: {} malformed, {} from a foreign address, \
             {} of an unknown SSRC, {} keyframe requests throttled; {} endpoints expired idle",
            self.forwarded,
            self.malformed,
            self.foreign,
            self.unknown_ssrc,
            self.keyframe_requests_throttled,
            self.expired
        )
    }
}

/// What the fast paths counted for a route, for the views.
pub trait RouteCounters {
    /// Packets from `from` with `ssrc`, and what went to each destination.
    fn counters(&self, from: Source, ssrc: u32) -> (Counters, Vec<(Destination, Counters)>);
}

/// No fast path: the core's own counts only.
impl RouteCounters for () {
    fn counters(&self, _from: Source, _ssrc: u32) -> (Counters, Vec<(Destination, Counters)>) {
        (Counters::default(), Vec::new())
    }
}

const DEFAULT_MAX_ENDPOINTS: u32 = 300;
/// Idle endpoints are looked for this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// RTCP a relay cannot read (SRTCP) from a subscriber reaches each publisher at most this
/// often: it may carry keyframe requests the throttle cannot see.
const OPAQUE_RTCP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Endpoint {
    local: SocketAddr,
    local_rtcp: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    remote_rtcp: Option<SocketAddr>,
    latched: bool,
    /// The SSRC of the packet that latched it: the only one that may re-latch it.
    latched_ssrc: Option<u32>,
    relatch: bool,
    audio_only: bool,
    idle_timeout: Duration,
    max_bitrate_bps: Option<u64>,
    attributes: Attributes,
    last_seen: Instant,
    /// Opaque RTCP sent on to each publisher, when last.
    opaque_rtcp_at: HashMap<String, Instant>,
}

/// Why a packet from an address was not taken.
enum Refusal {
    /// A publisher latches only from a packet of a track of its own.
    UnknownSsrc,
    /// Not the endpoint's address, and it may not move there.
    Foreign,
}

impl Endpoint {
    /// Whether a packet with `ssrc` from `remote` to `local` (this endpoint's RTP or RTCP
    /// port) comes from the endpoint, learning or moving its address as symmetric RTP
    /// does; `Ok(true)` when the address changed. `unknown_ssrc`: the endpoint publishes
    /// tracks, none with this SSRC.
    fn admit(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        ssrc: u32,
        unknown_ssrc: bool,
    ) -> Result<bool, Refusal> {
        let on_rtcp_port = self.local_rtcp == Some(local);
        let known = if on_rtcp_port {
            self.remote_rtcp
        } else {
            self.remote
        };
        match known {
            Some(r) if r == remote => Ok(false),
            // The RTCP port latches from the RTP address's host only.
            None if on_rtcp_port => {
                if self.remote.is_some_and(|r| r.ip() != remote.ip()) {
                    return Err(Refusal::Foreign);
                }
                self.remote_rtcp = Some(remote);
                Ok(true)
            }
            None if unknown_ssrc => Err(Refusal::UnknownSsrc),
            None => {
                self.remote = Some(remote);
                self.latched = true;
                self.latched_ssrc = Some(ssrc);
                Ok(true)
            }
            // Re-latching: only with the flag, only for the SSRC it latched with.
            Some(_) if self.latched && self.relatch && self.latched_ssrc == Some(ssrc) => {
                if on_rtcp_port {
                    self.remote_rtcp = Some(remote);
                } else {
                    self.remote = Some(remote);
                    if self.local_rtcp.is_some() {
                        self.remote_rtcp = None;
                    }
                }
                Ok(true)
            }
            Some(_) => Err(Refusal::Foreign),
        }
    }

    fn rtp_destination(&self) -> Option<Destination> {
        Some(Destination {
            local: self.local,
            remote: self.remote?,
        })
    }

    fn rtcp_destination(&self) -> Option<Destination> {
        match self.local_rtcp {
            None => self.rtp_destination(),
            Some(local) => Some(Destination {
                local,
                remote: self.remote_rtcp?,
            }),
        }
    }

    fn sources(&self) -> Vec<Source> {
        let media = self.remote.map(|remote| Source {
            local: self.local,
            remote,
        });
        let control = self
            .local_rtcp
            .zip(self.remote_rtcp)
            .map(|(local, remote)| Source { local, remote });
        media.into_iter().chain(control).collect()
    }
}

#[derive(Debug)]
struct Track {
    endpoint: String,
    ssrc: u32,
    kind: MediaKind,
    source: Option<String>,
    layer: Option<String>,
    /// Declaration order: a simulcast source's default layer is its first.
    order: u64,
    keyframe_requested: Option<Instant>,
    received: Counters,
}

#[derive(Debug, Default)]
struct Subscription {
    layer: Option<String>,
    paused: bool,
    /// What the core forwarded itself (the fast paths count the rest).
    sent: Counters,
}

#[derive(Debug)]
struct Room {
    tenant: Option<String>,
    attributes: Attributes,
    max_endpoints: u32,
    max_bitrate_bps: Option<u64>,
    endpoints: BTreeMap<String, Endpoint>,
    tracks: BTreeMap<String, Track>,
    /// (subscribing endpoint, track or simulcast source) -> subscription.
    subscriptions: BTreeMap<(String, String), Subscription>,
    /// The routes announced for this room.
    routes: BTreeMap<(Source, u32), Route>,
}

/// An endpoint waiting for its sockets.
#[derive(Debug)]
struct PendingEndpoint {
    call: u64,
    room: String,
    spec: EndpointSpec,
    local: SocketAddr,
    local_rtcp: Option<SocketAddr>,
}

pub struct Rooms {
    config: Config,
    rng: StdRng,
    ports: PortPool,
    named: BTreeMap<String, Room>,
    /// Every endpoint's local addresses (RTP and RTCP) -> (room, endpoint).
    by_local: HashMap<SocketAddr, (String, String)>,
    pending: HashMap<u64, PendingEndpoint>,
    /// Endpoints of a restored room waiting for their sockets: (room, endpoint).
    restoring: HashMap<u64, (String, String)>,
    /// Whether anything worth saving changed since [`Rooms::take_dirty`].
    dirty: bool,
    next_id: u64,
    next_order: u64,
    next_sweep: Option<Instant>,
    outputs: VecDeque<Output>,
    stats: Stats,
}

fn valid_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!("{name:?}: 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'"),
        ))
    }
}

impl Rooms {
    pub fn new(config: Config, rng: StdRng) -> Self {
        Self {
            ports: PortPool::new(config.min_port, config.max_port),
            config,
            rng,
            named: BTreeMap::new(),
            by_local: HashMap::new(),
            pending: HashMap::new(),
            restoring: HashMap::new(),
            dirty: false,
            next_id: 1,
            next_order: 0,
            next_sweep: None,
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    pub const fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether `local` is a port of a live endpoint (the TURN server may then let clients
    /// reach it: rooms through TURN).
    pub fn is_endpoint(&self, local: SocketAddr) -> bool {
        self.by_local.contains_key(&local)
    }

    /// A control request, answered now or, when sockets must be opened first, after
    /// [`Rooms::bound`] (always through [`Output::Reply`]).
    pub fn handle_call(
        &mut self,
        now: Instant,
        call: u64,
        request: Request,
        counters: &dyn RouteCounters,
    ) {
        let mutates = !matches!(request, Request::ListRooms | Request::GetRoom { .. });
        let result = match request {
            Request::CreateRoom(spec) => self.create_room(spec, counters),
            Request::ListRooms => Ok(Response::Rooms(self.list())),
            Request::GetRoom { room } => self
                .named
                .get(&room)
                .map(|r| Response::Room(Box::new(view(&room, r, counters))))
                .ok_or_else(|| ApiError::not_found("room", "room", &room)),
            Request::DeleteRoom { room } => self.delete_room(now, &room),
            Request::CreateEndpoint { room, spec } => {
                match self.create_endpoint(now, call, room, spec) {
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            }
            Request::UpdateEndpoint {
                room,
                endpoint,
                patch,
            } => self.update_endpoint(&room, &endpoint, &patch),
            Request::DeleteEndpoint { room, endpoint } => {
                self.delete_endpoint(now, &room, &endpoint)
            }
            Request::CreateTrack { room, spec } => self.create_track(&room, spec, counters),
            Request::DeleteTrack { room, track } => self.delete_track(&room, &track),
            Request::Subscribe {
                room,
                endpoint,
                track,
                spec,
            } => self.subscribe(&room, &endpoint, &track, spec, counters),
            Request::Unsubscribe {
                room,
                endpoint,
                track,
            } => self.unsubscribe(&room, &endpoint, &track),
        };
        self.dirty |= result.is_ok() && mutates;
        self.outputs.push_back(Output::Reply { call, result });
    }

    fn room(&self, room: &str) -> Result<&Room, ApiError> {
        self.named
            .get(room)
            .ok_or_else(|| ApiError::not_found("room", "room", room))
    }

    fn room_mut(&mut self, room: &str) -> Result<&mut Room, ApiError> {
        self.named
            .get_mut(room)
            .ok_or_else(|| ApiError::not_found("room", "room", room))
    }

    fn list(&self) -> Vec<RoomSummary> {
        self.named
            .iter()
            .map(|(name, r)| RoomSummary {
                name: name.clone(),
                tenant: r.tenant.clone(),
                endpoints: r.endpoints.len(),
                tracks: r.tracks.len(),
                subscriptions: r.subscriptions.len(),
            })
            .collect()
    }

    fn create_room(
        &mut self,
        spec: RoomSpec,
        counters: &dyn RouteCounters,
    ) -> Result<Response, ApiError> {
        valid_name("name", &spec.name)?;
        if self.named.contains_key(&spec.name) {
            return Err(ApiError::conflict(
                "name",
                format!("a room named {:?} exists", spec.name),
            ));
        }
        if self.named.len() >= self.config.max_rooms {
            return Err(ApiError::new(
                507,
                Some("name"),
                format!(
                    "the relay holds its maximum of {} rooms",
                    self.config.max_rooms
                ),
            ));
        }
        if let Some(tenant) = &spec.tenant {
            if !self.config.tenants.contains(tenant) {
                return Err(ApiError::bad(
                    "tenant",
                    format!("no tenant named {tenant:?} in the configuration"),
                ));
            }
        }
        if spec.max_endpoints == Some(0) {
            return Err(ApiError::bad("max_endpoints", "must be at least 1"));
        }
        if spec.max_bitrate_bps == Some(0) {
            return Err(ApiError::bad("max_bitrate_bps", "must be at least 1"));
        }
        let room = Room {
            tenant: spec.tenant,
            attributes: spec.attributes,
            max_endpoints: spec.max_endpoints.unwrap_or(DEFAULT_MAX_ENDPOINTS),
            max_bitrate_bps: spec.max_bitrate_bps,
            endpoints: BTreeMap::new(),
            tracks: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            routes: BTreeMap::new(),
        };
        let view = view(&spec.name, &room, counters);
        self.named.insert(spec.name, room);
        Ok(Response::Room(Box::new(view)))
    }

    fn delete_room(&mut self, now: Instant, name: &str) -> Result<Response, ApiError> {
        let endpoints: Vec<String> = self.room_mut(name)?.endpoints.keys().cloned().collect();
        for endpoint in endpoints {
            self.delete_endpoint(now, name, &endpoint)?;
        }
        self.named.remove(name);
        Ok(Response::Deleted)
    }

    /// Checks the request, takes its ports and asks for their sockets; the reply comes with
    /// [`Rooms::bound`].
    fn create_endpoint(
        &mut self,
        now: Instant,
        call: u64,
        room_name: String,
        spec: EndpointSpec,
    ) -> Result<(), ApiError> {
        valid_name("name", &spec.name)?;
        let pending_here = self.pending.values().filter(|p| p.room == room_name);
        let pending_names: Vec<&str> = pending_here.map(|p| p.spec.name.as_str()).collect();
        let room = self
            .named
            .get(&room_name)
            .ok_or_else(|| ApiError::not_found("room", "room", &room_name))?;
        if room.endpoints.contains_key(&spec.name) || pending_names.contains(&spec.name.as_str()) {
            return Err(ApiError::conflict(
                "name",
                format!("an endpoint named {:?} exists", spec.name),
            ));
        }
        if room.endpoints.len() + pending_names.len() >= room.max_endpoints as usize {
            return Err(ApiError::new(
                409,
                Some("name"),
                format!(
                    "room {room_name:?} holds its maximum of {} endpoints",
                    room.max_endpoints
                ),
            ));
        }
        if spec.max_bitrate_bps == Some(0) {
            return Err(ApiError::bad("max_bitrate_bps", "must be at least 1"));
        }
        if let Some(remote) = spec.remote {
            if remote.port() == 0 || remote.ip().is_unspecified() {
                return Err(ApiError::bad(
                    "remote",
                    format!("{remote}: not a destination"),
                ));
            }
            if !spec.rtcp_mux && remote.port() == u16::MAX {
                return Err(ApiError::bad("remote", "RTCP would need port 65536"));
            }
        }
        authorize::check(
            self.config.policy.as_ref(),
            Action::RoomJoin,
            authorize::endpoint(&spec.name, &spec.attributes),
            serde_json::json!({
                "room": authorize::room(&room_name, room.tenant.as_deref(), &room.attributes),
                "remote": authorize::destination(spec.remote),
            }),
        )?;
        let ip = self.config.ip;
        let port = match spec.port {
            Some(port) => {
                let taken = |p: u16| self.by_local.contains_key(&SocketAddr::new(ip, p));
                if port == 0 || (!spec.rtcp_mux && port == u16::MAX) {
                    return Err(ApiError::bad("port", format!("{port}: not usable")));
                }
                if taken(port) || (!spec.rtcp_mux && taken(port + 1)) {
                    return Err(ApiError::conflict("port", format!("{port} is taken")));
                }
                port
            }
            None => self
                .ports
                .pick(ip, !spec.rtcp_mux, !spec.rtcp_mux, now, &mut self.rng)
                .ok_or_else(|| {
                    ApiError::new(507, Some("port"), "no free port in the media port range")
                })?,
        };
        let local = SocketAddr::new(ip, port);
        let local_rtcp = (!spec.rtcp_mux).then(|| SocketAddr::new(ip, port + 1));
        let addrs: Vec<SocketAddr> = std::iter::once(local).chain(local_rtcp).collect();
        for a in &addrs {
            self.ports.take(*a);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            PendingEndpoint {
                call,
                room: room_name,
                spec,
                local,
                local_rtcp,
            },
        );
        self.outputs.push_back(Output::Bind { id, addrs });
        Ok(())
    }

    /// The sockets of [`Output::Bind`] `id` are open (or could not be).
    pub fn bound(&mut self, now: Instant, id: u64, result: std::io::Result<()>) {
        if let Some((room, name)) = self.restoring.remove(&id) {
            if let Err(e) = result {
                log::warn!(
                    "room {room:?}: endpoint {name:?} dropped: its port cannot be bound again: {e}"
                );
                let addrs: Vec<SocketAddr> = self
                    .by_local
                    .iter()
                    .filter(|(_, (r, e))| *r == room && *e == name)
                    .map(|(a, _)| *a)
                    .collect();
                let _ = self.delete_endpoint(now, &room, &name);
                // Its sockets never opened: nothing to close, the ports free at once.
                self.outputs
                    .retain(|o| !matches!(o, Output::Release { addr } if addrs.contains(addr)));
                for addr in addrs {
                    self.ports.free(addr);
                }
                self.dirty = true;
            }
            return;
        }
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        self.dirty = true;
        let addrs: Vec<SocketAddr> = std::iter::once(p.local).chain(p.local_rtcp).collect();
        let result = match (result, self.named.get_mut(&p.room)) {
            (Err(e), _) => {
                for a in &addrs {
                    self.ports.free(*a);
                }
                let status = if p.spec.port.is_some() { 409 } else { 503 };
                Err(ApiError::new(
                    status,
                    Some("port"),
                    format!("cannot bind {}: {e}", p.local),
                ))
            }
            // The room went while the sockets opened.
            (Ok(()), None) => {
                for a in addrs {
                    self.ports.release(a, now);
                    self.outputs.push_back(Output::Release { addr: a });
                }
                Err(ApiError::not_found("room", "room", &p.room))
            }
            (Ok(()), Some(room)) => {
                let remote_rtcp = p
                    .spec
                    .remote
                    .filter(|_| !p.spec.rtcp_mux)
                    .map(|r| SocketAddr::new(r.ip(), r.port() + 1));
                let endpoint = Endpoint {
                    local: p.local,
                    local_rtcp: p.local_rtcp,
                    remote: p.spec.remote,
                    remote_rtcp,
                    latched: false,
                    latched_ssrc: None,
                    relatch: p.spec.relatch,
                    audio_only: false,
                    idle_timeout: Duration::from_secs(u64::from(p.spec.idle_timeout_secs)),
                    max_bitrate_bps: p.spec.max_bitrate_bps,
                    attributes: p.spec.attributes.clone(),
                    last_seen: now,
                    opaque_rtcp_at: HashMap::new(),
                };
                let view = endpoint_view(&p.spec.name, &endpoint);
                for a in addrs {
                    self.by_local
                        .insert(a, (p.room.clone(), p.spec.name.clone()));
                }
                room.endpoints.insert(p.spec.name, endpoint);
                if p.spec.idle_timeout_secs > 0 && self.next_sweep.is_none() {
                    self.next_sweep = Some(now + SWEEP_EVERY);
                }
                self.sync_routes(&p.room);
                Ok(Response::Endpoint(view))
            }
        };
        self.outputs.push_back(Output::Reply {
            call: p.call,
            result,
        });
    }

    fn update_endpoint(
        &mut self,
        room_name: &str,
        name: &str,
        patch: &EndpointPatch,
    ) -> Result<Response, ApiError> {
        let room = self.room_mut(room_name)?;
        let endpoint = room
            .endpoints
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found("endpoint", "endpoint", name))?;
        if let Some(audio_only) = patch.audio_only {
            endpoint.audio_only = audio_only;
        }
        let view = endpoint_view(name, endpoint);
        self.sync_routes(room_name);
        Ok(Response::Endpoint(view))
    }

    fn delete_endpoint(
        &mut self,
        now: Instant,
        room_name: &str,
        name: &str,
    ) -> Result<Response, ApiError> {
        let room = self.room_mut(room_name)?;
        let endpoint = room
            .endpoints
            .remove(name)
            .ok_or_else(|| ApiError::not_found("endpoint", "endpoint", name))?;
        // Its tracks, its subscriptions, and subscriptions to tracks of its that are left
        // with nothing to receive.
        room.tracks.retain(|_, t| t.endpoint != name);
        let tracks = &room.tracks;
        room.subscriptions.retain(|(subscriber, key), _| {
            subscriber != name
                && (tracks.contains_key(key)
                    || tracks.values().any(|t| t.source.as_deref() == Some(key)))
        });
        self.sync_routes(room_name);
        for addr in std::iter::once(endpoint.local).chain(endpoint.local_rtcp) {
            self.by_local.remove(&addr);
            self.ports.release(addr, now);
            self.outputs.push_back(Output::Release { addr });
        }
        Ok(Response::Deleted)
    }

    fn create_track(
        &mut self,
        room_name: &str,
        spec: TrackSpec,
        counters: &dyn RouteCounters,
    ) -> Result<Response, ApiError> {
        valid_name("name", &spec.name)?;
        let order = self.next_order;
        let room = self.room(room_name)?;
        if room.tracks.contains_key(&spec.name) {
            return Err(ApiError::conflict(
                "name",
                format!("a track named {:?} exists", spec.name),
            ));
        }
        if !room.endpoints.contains_key(&spec.endpoint) {
            return Err(ApiError::not_found("endpoint", "endpoint", &spec.endpoint));
        }
        if spec.ssrc == 0 {
            return Err(ApiError::bad("ssrc", "0 is not a usable SSRC"));
        }
        if let Some((name, _)) = room
            .tracks
            .iter()
            .find(|(_, t)| t.endpoint == spec.endpoint && t.ssrc == spec.ssrc)
        {
            return Err(ApiError::conflict(
                "ssrc",
                format!(
                    "endpoint {:?} publishes SSRC {} as {name:?}",
                    spec.endpoint, spec.ssrc
                ),
            ));
        }
        match (&spec.source, &spec.layer) {
            (None, None) => {}
            (Some(source), Some(layer)) => {
                valid_name("source", source)?;
                valid_name("layer", layer)?;
                if room.tracks.contains_key(source) {
                    return Err(ApiError::conflict(
                        "source",
                        format!("{source:?} is a track's name"),
                    ));
                }
                let layers = room
                    .tracks
                    .values()
                    .filter(|t| t.source.as_ref() == Some(source));
                for t in layers {
                    if t.layer.as_ref() == Some(layer) {
                        return Err(ApiError::conflict(
                            "layer",
                            format!("source {source:?} has a layer {layer:?}"),
                        ));
                    }
                    if t.endpoint != spec.endpoint || t.kind != spec.kind {
                        return Err(ApiError::bad(
                            "source",
                            "a source's layers come from one endpoint and are of one kind",
                        ));
                    }
                }
            }
            (Some(_), None) => {
                return Err(ApiError::bad("layer", "a source's track needs a layer"));
            }
            (None, Some(_)) => return Err(ApiError::bad("source", "a layer needs its source")),
        }
        if room
            .tracks
            .values()
            .any(|t| t.source.as_deref() == Some(&spec.name))
        {
            return Err(ApiError::conflict(
                "name",
                format!("{:?} is a simulcast source's name", spec.name),
            ));
        }
        self.authorize_publish(room_name, &spec)?;
        self.next_order += 1;
        let room = self.room_mut(room_name)?;
        room.tracks.insert(
            spec.name.clone(),
            Track {
                endpoint: spec.endpoint,
                ssrc: spec.ssrc,
                kind: spec.kind,
                source: spec.source,
                layer: spec.layer,
                order,
                keyframe_requested: None,
                received: Counters::default(),
            },
        );
        self.sync_routes(room_name);
        let room = &self.named[room_name];
        Ok(Response::Track(track_view(
            &spec.name,
            &room.tracks[&spec.name],
            room,
            counters,
        )))
    }

    fn delete_track(&mut self, room_name: &str, name: &str) -> Result<Response, ApiError> {
        let room = self.room_mut(room_name)?;
        let track = room
            .tracks
            .remove(name)
            .ok_or_else(|| ApiError::not_found("track", "track", name))?;
        let tracks = &room.tracks;
        let source_left = |s: &str| tracks.values().any(|t| t.source.as_deref() == Some(s));
        room.subscriptions.retain(|(_, key), sub| {
            if key == name {
                return false;
            }
            if track.source.as_deref() == Some(key.as_str()) {
                // Subscribed to the layer that went: back to the default, or gone with
                // the source's last layer.
                if sub.layer == track.layer {
                    sub.layer = None;
                }
                return source_left(key);
            }
            true
        });
        self.sync_routes(room_name);
        Ok(Response::Deleted)
    }

    fn subscribe(
        &mut self,
        room_name: &str,
        endpoint: &str,
        key: &str,
        spec: SubscriptionSpec,
        counters: &dyn RouteCounters,
    ) -> Result<Response, ApiError> {
        let room = self.room_mut(room_name)?;
        if !room.endpoints.contains_key(endpoint) {
            return Err(ApiError::not_found("endpoint", "endpoint", endpoint));
        }
        let is_source = room
            .tracks
            .values()
            .any(|t| t.source.as_deref() == Some(key));
        match room.tracks.get(key) {
            Some(t) if t.endpoint == endpoint => {
                return Err(ApiError::bad(
                    "track",
                    "an endpoint does not receive its own track",
                ));
            }
            Some(_) if spec.layer.is_some() => {
                return Err(ApiError::bad(
                    "layer",
                    format!("{key:?} is a track, not a simulcast source"),
                ));
            }
            Some(_) => {}
            None if !is_source => return Err(ApiError::not_found("track", "track or source", key)),
            None => {
                let layers = room
                    .tracks
                    .values()
                    .filter(|t| t.source.as_deref() == Some(key));
                if layers.clone().any(|t| t.endpoint == endpoint) {
                    return Err(ApiError::bad(
                        "track",
                        "an endpoint does not receive its own track",
                    ));
                }
                if let Some(layer) = &spec.layer {
                    if !layers.clone().any(|t| t.layer.as_ref() == Some(layer)) {
                        return Err(ApiError::not_found("layer", "layer", layer));
                    }
                }
            }
        }
        self.authorize_subscription(room_name, endpoint, key)?;
        let room = self.room_mut(room_name)?;
        let sub = room
            .subscriptions
            .entry((endpoint.to_owned(), key.to_owned()))
            .or_default();
        sub.layer = spec.layer;
        sub.paused = spec.paused;
        self.sync_routes(room_name);
        let room = &self.named[room_name];
        Ok(Response::Subscription(subscription_view(
            room,
            endpoint,
            key,
            &room.subscriptions[&(endpoint.to_owned(), key.to_owned())],
            counters,
        )))
    }

    /// The policy's say on a track (checked) being published.
    fn authorize_publish(&self, room_name: &str, spec: &TrackSpec) -> Result<(), ApiError> {
        let room = &self.named[room_name];
        authorize::check(
            self.config.policy.as_ref(),
            Action::RoomPublish,
            authorize::endpoint(&spec.endpoint, &room.endpoints[&spec.endpoint].attributes),
            serde_json::json!({
                "room": authorize::room(room_name, room.tenant.as_deref(), &room.attributes),
                "track": {
                    "name": spec.name, "kind": spec.kind, "ssrc": spec.ssrc,
                    "source": spec.source, "layer": spec.layer,
                },
            }),
        )
    }

    /// The policy's say on `endpoint` receiving `key` (a track or a simulcast source, checked
    /// to exist): who publishes it, and where its media would go.
    fn authorize_subscription(
        &self,
        room_name: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<(), ApiError> {
        let room = &self.named[room_name];
        let track = (room.tracks.get(key))
            .or_else(|| {
                room.tracks
                    .values()
                    .find(|t| t.source.as_deref() == Some(key))
            })
            .expect("checked by the caller");
        let subscriber = &room.endpoints[endpoint];
        let publisher = &room.endpoints[&track.endpoint];
        authorize::check(
            self.config.policy.as_ref(),
            Action::RoomSubscribe,
            authorize::endpoint(endpoint, &subscriber.attributes),
            serde_json::json!({
                "room": authorize::room(room_name, room.tenant.as_deref(), &room.attributes),
                "track": { "name": key, "kind": track.kind },
                "publisher": authorize::endpoint(&track.endpoint, &publisher.attributes),
                "destination": authorize::destination(subscriber.remote),
            }),
        )
    }

    fn unsubscribe(
        &mut self,
        room_name: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<Response, ApiError> {
        let room = self.room_mut(room_name)?;
        room.subscriptions
            .remove(&(endpoint.to_owned(), key.to_owned()))
            .ok_or_else(|| {
                ApiError::not_found("track", "subscription to", &format!("{endpoint}/{key}"))
            })?;
        self.sync_routes(room_name);
        Ok(Response::Deleted)
    }

    /// Announces the routes of `room_name` that changed.
    fn sync_routes(&mut self, room_name: &str) {
        let Some(room) = self.named.get_mut(room_name) else {
            return;
        };
        let wanted = wanted_routes(room);
        let tenant = room
            .tenant
            .as_ref()
            .and_then(|t| self.config.tenants.iter().position(|n| n == t));
        let gone: Vec<(Source, u32)> = room
            .routes
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for (from, ssrc) in gone {
            room.routes.remove(&(from, ssrc));
            self.outputs.push_back(Output::Route {
                from,
                ssrc,
                room: room_name.to_owned(),
                tenant,
                route: None,
            });
        }
        for ((from, ssrc), route) in wanted {
            if room.routes.get(&(from, ssrc)) != Some(&route) {
                room.routes.insert((from, ssrc), route.clone());
                self.outputs.push_back(Output::Route {
                    from,
                    ssrc,
                    room: room_name.to_owned(),
                    tenant,
                    route: Some(route),
                });
            }
        }
    }

    /// A packet from `remote` to the endpoint port `local` that no fast path forwarded.
    pub fn handle_media(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let (Some(packet), Some((room_name, name))) =
            (rtp::classify(data), self.by_local.get(&local).cloned())
        else {
            self.stats.malformed += 1;
            return;
        };
        let room = self
            .named
            .get_mut(&room_name)
            .expect("by_local names live rooms");
        let ssrc = match packet {
            Packet::Rtp { ssrc, .. } => ssrc,
            Packet::Rtcp { sender_ssrc } => sender_ssrc,
        };
        let track = room
            .tracks
            .iter()
            .find(|(_, t)| t.endpoint == name && t.ssrc == ssrc)
            .map(|(n, _)| n.clone());
        let publisher = room.tracks.values().any(|t| t.endpoint == name);
        let endpoint = room
            .endpoints
            .get_mut(&name)
            .expect("by_local names live endpoints");
        let relatched = match endpoint.admit(local, remote, ssrc, publisher && track.is_none()) {
            Ok(relatched) => relatched,
            Err(Refusal::UnknownSsrc) => {
                self.stats.unknown_ssrc += 1;
                return;
            }
            Err(Refusal::Foreign) => {
                self.stats.foreign += 1;
                return;
            }
        };
        let room = self.named.get_mut(&room_name).expect("checked above");
        room.endpoints
            .get_mut(&name)
            .expect("checked above")
            .last_seen = now;
        if relatched {
            self.dirty = true;
            log::info!("room {room_name:?}: endpoint {name:?} latched to {remote}");
            self.sync_routes(&room_name);
        }
        let room = self.named.get_mut(&room_name).expect("checked above");
        match (packet, track) {
            // The publisher's media or its sender reports: to the track's subscribers.
            (_, Some(track)) => {
                // Received, whether or not anyone receives it now (no subscriber, all
                // audio-only, another layer chosen): the track shows what its publisher
                // sends.
                let bytes = data.len() as u64;
                let t = room.tracks.get_mut(&track).expect("found above");
                t.received.packets += 1;
                t.received.bytes += bytes;
                let source = t.source.clone();
                let from = Source { local, remote };
                let Some(route) = room.routes.get(&(from, ssrc)) else {
                    return;
                };
                let rtcp = matches!(packet, Packet::Rtcp { .. });
                let to = if rtcp { &route.rtcp } else { &route.rtp };
                for d in to {
                    self.outputs.push_back(Output::Send {
                        local: d.local,
                        remote: d.remote,
                        data: data.to_vec(),
                    });
                    // Counted on the subscription, by the track's name or its source's.
                    let Some((_, subscriber)) = self.by_local.get(&d.local) else {
                        continue;
                    };
                    let by_track = (subscriber.clone(), track.clone());
                    let key = if room.subscriptions.contains_key(&by_track) {
                        Some(by_track)
                    } else {
                        source.clone().map(|s| (subscriber.clone(), s))
                    };
                    if let Some(sub) = key.and_then(|k| room.subscriptions.get_mut(&k)) {
                        sub.sent.packets += 1;
                        sub.sent.bytes += bytes;
                    }
                }
                self.stats.forwarded += to.len() as u64;
            }
            (Packet::Rtp { .. }, None) => self.stats.unknown_ssrc += 1,
            // A subscriber's receiver reports and feedback: to the publishers concerned.
            (Packet::Rtcp { .. }, None) => self.feedback(now, &room_name, &name, data),
        }
    }

    /// RTCP from a subscriber: to the publisher of each track it is about, keyframe
    /// requests throttled per track. SRTCP cannot be read: it goes to the publishers of
    /// what the subscriber receives, at most every [`OPAQUE_RTCP_INTERVAL`].
    fn feedback(&mut self, now: Instant, room_name: &str, subscriber: &str, data: &[u8]) {
        let interval = self.config.keyframe_interval;
        let room = self.named.get_mut(room_name).expect("caller checked");
        let mut publishers: Vec<String> = Vec::new();
        if let Some(fb) = rtp::feedback(data) {
            let mut throttled = false;
            for ssrc in &fb.about {
                let Some(track) = room.tracks.values_mut().find(|t| t.ssrc == *ssrc) else {
                    continue;
                };
                if fb.keyframe_requests.contains(ssrc) {
                    if track
                        .keyframe_requested
                        .is_some_and(|at| now < at + interval)
                    {
                        throttled = true;
                        continue;
                    }
                    track.keyframe_requested = Some(now);
                }
                if !publishers.contains(&track.endpoint) {
                    publishers.push(track.endpoint.clone());
                }
            }
            if throttled && publishers.is_empty() && !fb.other_feedback {
                self.stats.keyframe_requests_throttled += 1;
                return;
            }
        } else {
            let keys = room.subscriptions.keys().filter(|(s, _)| s == subscriber);
            for (_, key) in keys {
                let tracks = room
                    .tracks
                    .iter()
                    .filter(|(n, t)| *n == key || t.source.as_ref() == Some(key));
                for (_, t) in tracks {
                    if !publishers.contains(&t.endpoint) {
                        publishers.push(t.endpoint.clone());
                    }
                }
            }
            let at = &mut room
                .endpoints
                .get_mut(subscriber)
                .expect("caller checked")
                .opaque_rtcp_at;
            publishers.retain(|p| {
                let due = at.get(p).is_none_or(|t| now >= *t + OPAQUE_RTCP_INTERVAL);
                if due {
                    at.insert(p.clone(), now);
                }
                due
            });
        }
        for p in publishers {
            if let Some(d) = room.endpoints.get(&p).and_then(Endpoint::rtcp_destination) {
                self.outputs.push_back(Output::Send {
                    local: d.local,
                    remote: d.remote,
                    data: data.to_vec(),
                });
            }
        }
    }

    /// The fast path forwarded packets from or to the endpoint port `local` (it keeps the
    /// endpoint from expiring).
    pub fn touch(&mut self, now: Instant, local: SocketAddr) {
        if let Some((room, name)) = self.by_local.get(&local) {
            if let Some(e) = self
                .named
                .get_mut(room)
                .and_then(|r| r.endpoints.get_mut(name))
            {
                e.last_seen = now;
            }
        }
    }

    /// Removes endpoints idle past their timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|at| now < at) {
            return;
        }
        let idle: Vec<(String, String)> = self
            .named
            .iter()
            .flat_map(|(room, r)| {
                r.endpoints
                    .iter()
                    .filter(|(_, e)| {
                        e.idle_timeout > Duration::ZERO && now >= e.last_seen + e.idle_timeout
                    })
                    .map(|(name, _)| (room.clone(), name.clone()))
            })
            .collect();
        for (room, name) in idle {
            log::info!("room {room:?}: endpoint {name:?} removed, idle");
            self.stats.expired += 1;
            self.dirty = true;
            let _ = self.delete_endpoint(now, &room, &name);
        }
        let any = self
            .named
            .values()
            .flat_map(|r| r.endpoints.values())
            .any(|e| e.idle_timeout > Duration::ZERO);
        self.next_sweep = any.then_some(now + SWEEP_EVERY);
    }

    /// Every route announced, for a fast path that starts (or restarts) empty.
    pub fn routes(&self) -> impl Iterator<Item = (&str, Source, u32, &Route)> {
        self.named.iter().flat_map(|(name, r)| {
            r.routes
                .iter()
                .map(move |((from, ssrc), route)| (name.as_str(), *from, *ssrc, route))
        })
    }

    /// Whether the rooms changed since the last call (and should be saved).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Everything a restarted relay needs to take the rooms up.
    pub fn snapshot(&self) -> RoomsSnapshot {
        let rooms = self
            .named
            .iter()
            .map(|(name, r)| SavedRoom {
                name: name.clone(),
                tenant: r.tenant.clone(),
                max_endpoints: r.max_endpoints,
                max_bitrate_bps: r.max_bitrate_bps,
                attributes: r.attributes.clone(),
                endpoints: r
                    .endpoints
                    .iter()
                    .map(|(name, e)| SavedEndpoint {
                        name: name.clone(),
                        local: e.local,
                        local_rtcp: e.local_rtcp,
                        remote: e.remote,
                        remote_rtcp: e.remote_rtcp,
                        latched: e.latched,
                        latched_ssrc: e.latched_ssrc,
                        relatch: e.relatch,
                        audio_only: e.audio_only,
                        idle_timeout_secs: e.idle_timeout.as_secs(),
                        max_bitrate_bps: e.max_bitrate_bps,
                        attributes: e.attributes.clone(),
                    })
                    .collect(),
                tracks: r
                    .tracks
                    .iter()
                    .map(|(name, t)| SavedTrack {
                        name: name.clone(),
                        endpoint: t.endpoint.clone(),
                        ssrc: t.ssrc,
                        kind: t.kind,
                        source: t.source.clone(),
                        layer: t.layer.clone(),
                        order: t.order,
                    })
                    .collect(),
                subscriptions: r
                    .subscriptions
                    .iter()
                    .map(|((endpoint, track), sub)| SavedSubscription {
                        endpoint: endpoint.clone(),
                        track: track.clone(),
                        layer: sub.layer.clone(),
                        paused: sub.paused,
                    })
                    .collect(),
            })
            .collect();
        RoomsSnapshot {
            version: snapshot::VERSION,
            rooms,
        }
    }

    /// The rooms of `snapshot`, taken up at `now`: their endpoints' ports are asked for
    /// again ([`Output::Bind`]; one that cannot be bound is dropped with a log line) and
    /// their routes announced, so media flows again without a request.
    pub fn restore(config: Config, snapshot: &RoomsSnapshot, now: Instant, rng: StdRng) -> Self {
        let mut rooms = Self::new(config, rng);
        for saved in &snapshot.rooms {
            let mut room = Room {
                tenant: saved.tenant.clone(),
                attributes: saved.attributes.clone(),
                max_endpoints: saved.max_endpoints,
                max_bitrate_bps: saved.max_bitrate_bps,
                endpoints: BTreeMap::new(),
                tracks: BTreeMap::new(),
                subscriptions: BTreeMap::new(),
                routes: BTreeMap::new(),
            };
            for e in &saved.endpoints {
                let addrs: Vec<SocketAddr> = std::iter::once(e.local).chain(e.local_rtcp).collect();
                for a in &addrs {
                    rooms.ports.take(*a);
                    rooms
                        .by_local
                        .insert(*a, (saved.name.clone(), e.name.clone()));
                }
                let id = rooms.next_id;
                rooms.next_id += 1;
                rooms
                    .restoring
                    .insert(id, (saved.name.clone(), e.name.clone()));
                rooms.outputs.push_back(Output::Bind { id, addrs });
                room.endpoints.insert(
                    e.name.clone(),
                    Endpoint {
                        local: e.local,
                        local_rtcp: e.local_rtcp,
                        remote: e.remote,
                        remote_rtcp: e.remote_rtcp,
                        latched: e.latched,
                        latched_ssrc: e.latched_ssrc,
                        relatch: e.relatch,
                        audio_only: e.audio_only,
                        idle_timeout: Duration::from_secs(e.idle_timeout_secs),
                        max_bitrate_bps: e.max_bitrate_bps,
                        attributes: e.attributes.clone(),
                        last_seen: now,
                        opaque_rtcp_at: HashMap::new(),
                    },
                );
                if e.idle_timeout_secs > 0 {
                    rooms.next_sweep = Some(now + SWEEP_EVERY);
                }
            }
            for t in &saved.tracks {
                rooms.next_order = rooms.next_order.max(t.order + 1);
                room.tracks.insert(
                    t.name.clone(),
                    Track {
                        endpoint: t.endpoint.clone(),
                        ssrc: t.ssrc,
                        kind: t.kind,
                        source: t.source.clone(),
                        layer: t.layer.clone(),
                        order: t.order,
                        keyframe_requested: None,
                        received: Counters::default(),
                    },
                );
            }
            for sub in &saved.subscriptions {
                room.subscriptions.insert(
                    (sub.endpoint.clone(), sub.track.clone()),
                    Subscription {
                        layer: sub.layer.clone(),
                        paused: sub.paused,
                        sent: Counters::default(),
                    },
                );
            }
            rooms.named.insert(saved.name.clone(), room);
            rooms.sync_routes(&saved.name);
        }
        if !snapshot.rooms.is_empty() {
            log::info!("rooms: took up {} saved rooms", snapshot.rooms.len());
        }
        rooms
    }

    /// How many rooms, endpoints and subscriptions there are.
    pub fn counts(&self) -> [usize; 3] {
        self.named
            .values()
            .fold([self.named.len(), 0, 0], |[r, e, s], room| {
                [r, e + room.endpoints.len(), s + room.subscriptions.len()]
            })
    }

    /// Endpoints with a `max_bitrate_bps`: their ports (RTP, and RTCP when apart), and
    /// that limit, for their policers.
    pub fn endpoint_bitrate_limits(&self) -> impl Iterator<Item = (Vec<SocketAddr>, u64)> {
        self.named
            .values()
            .flat_map(|r| r.endpoints.values())
            .filter_map(|e| {
                let addrs = std::iter::once(e.local).chain(e.local_rtcp).collect();
                Some((addrs, e.max_bitrate_bps?))
            })
    }

    /// Rooms with a `max_bitrate_bps`, and that limit, for their policers.
    pub fn bitrate_limits(&self) -> impl Iterator<Item = (&str, u64)> {
        self.named
            .iter()
            .filter_map(|(name, r)| Some((name.as_str(), r.max_bitrate_bps?)))
    }
}

/// Which SSRC of track-or-source `key` subscription `sub` receives now, if any.
fn selected<'a>(room: &'a Room, key: &str, sub: &Subscription) -> Option<(&'a str, &'a Track)> {
    if let Some((name, t)) = room.tracks.get_key_value(key) {
        return Some((name.as_str(), t));
    }
    let mut layers: Vec<(&String, &Track)> = room
        .tracks
        .iter()
        .filter(|(_, t)| t.source.as_deref() == Some(key))
        .collect();
    layers.sort_by_key(|(_, t)| t.order);
    let chosen = match &sub.layer {
        Some(layer) => layers
            .into_iter()
            .find(|(_, t)| t.layer.as_ref() == Some(layer)),
        None => layers.into_iter().next(),
    };
    chosen.map(|(n, t)| (n.as_str(), t))
}

/// Whether subscriber `s` receives `track` under subscription `sub` (given an address).
fn receives(s: &Endpoint, sub: &Subscription, track: &Track) -> bool {
    !sub.paused && (!s.audio_only || track.kind == MediaKind::Audio)
}

/// The routes the room's state asks for.
fn wanted_routes(room: &Room) -> BTreeMap<(Source, u32), Route> {
    let mut routes: BTreeMap<(Source, u32), Route> = BTreeMap::new();
    for ((subscriber, key), sub) in &room.subscriptions {
        let Some(s) = room.endpoints.get(subscriber) else {
            continue;
        };
        let Some((_, track)) = selected(room, key, sub) else {
            continue;
        };
        if !receives(s, sub, track) {
            continue;
        }
        let (Some(rtp), Some(publisher)) =
            (s.rtp_destination(), room.endpoints.get(&track.endpoint))
        else {
            continue;
        };
        for from in publisher.sources() {
            let route = routes.entry((from, track.ssrc)).or_default();
            route.rtp.push(rtp);
            route.rtcp.extend(s.rtcp_destination());
        }
    }
    routes
}

fn endpoint_view(name: &str, e: &Endpoint) -> EndpointView {
    EndpointView {
        name: name.to_owned(),
        local: e.local,
        local_rtcp: e.local_rtcp,
        remote: e.remote,
        latched: e.latched,
        rtcp_mux: e.local_rtcp.is_none(),
        relatch: e.relatch,
        audio_only: e.audio_only,
        idle_timeout_secs: u32::try_from(e.idle_timeout.as_secs()).unwrap_or(u32::MAX),
        max_bitrate_bps: e.max_bitrate_bps,
        attributes: e.attributes.clone(),
    }
}

fn track_view(name: &str, t: &Track, room: &Room, counters: &dyn RouteCounters) -> TrackView {
    let publisher = &room.endpoints[&t.endpoint];
    let received = publisher
        .sources()
        .into_iter()
        .map(|from| counters.counters(from, t.ssrc).0)
        .fold(t.received, Counters::plus);
    TrackView {
        name: name.to_owned(),
        endpoint: t.endpoint.clone(),
        ssrc: t.ssrc,
        kind: t.kind,
        source: t.source.clone(),
        layer: t.layer.clone(),
        received,
    }
}

fn subscription_view(
    room: &Room,
    endpoint: &str,
    key: &str,
    sub: &Subscription,
    counters: &dyn RouteCounters,
) -> SubscriptionView {
    let s = &room.endpoints[endpoint];
    let live = selected(room, key, sub).filter(|(_, t)| receives(s, sub, t) && s.remote.is_some());
    // What this subscriber was sent of every track it may have received under this key.
    let mine = [s.rtp_destination(), s.rtcp_destination()];
    let sent = room
        .tracks
        .iter()
        .filter(|(n, t)| n.as_str() == key || t.source.as_deref() == Some(key))
        .flat_map(|(_, t)| {
            room.endpoints[&t.endpoint]
                .sources()
                .into_iter()
                .map(|from| counters.counters(from, t.ssrc).1)
        })
        .flatten()
        .filter(|(d, _)| mine.contains(&Some(*d)))
        .map(|(_, c)| c)
        .fold(sub.sent, Counters::plus);
    SubscriptionView {
        endpoint: endpoint.to_owned(),
        track: key.to_owned(),
        layer: live
            .and_then(|(_, t)| t.layer.clone())
            .or_else(|| sub.layer.clone()),
        paused: sub.paused,
        ssrc: live.map(|(_, t)| t.ssrc),
        sent,
    }
}

fn view(name: &str, room: &Room, counters: &dyn RouteCounters) -> RoomView {
    RoomView {
        name: name.to_owned(),
        tenant: room.tenant.clone(),
        max_endpoints: room.max_endpoints,
        max_bitrate_bps: room.max_bitrate_bps,
        attributes: room.attributes.clone(),
        endpoints: room
            .endpoints
            .iter()
            .map(|(n, e)| endpoint_view(n, e))
            .collect(),
        tracks: room
            .tracks
            .iter()
            .map(|(n, t)| track_view(n, t, room, counters))
            .collect(),
        subscriptions: room
            .subscriptions
            .iter()
            .map(|((e, k), s)| subscription_view(room, e, k, s, counters))
            .collect(),
    }
}
