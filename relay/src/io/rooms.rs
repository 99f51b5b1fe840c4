//! The room plane in the control task: drives the room core with the control API's calls,
//! the media the data path hands up and the time, and carries out its outputs (sockets,
//! routes for the data path and, with an XDP program attached, for the kernel, packets,
//! replies). The counters of the data path's and the kernel's routes are kept here for the
//! API's views and the core's idle timers.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed, mpsc::Sender},
    time::Instant,
};

use relay_common::room::RouteStats;
use tokio::sync::oneshot;

use super::{
    control::{Limits, State, bind_relay},
    datapath::Command,
    kernel::Kernel,
    media::{RoomCommand, RouteCounts},
};
use crate::{
    policers::RoutePolicers,
    room::{
        Destination, Output, Rooms, RouteCounters, Source,
        api::{ApiError, Call, Counters, Request, Response},
    },
};

/// A route as the data path holds it, and what it counted.
struct Live {
    to: Vec<Destination>,
    counts: Arc<RouteCounts>,
    /// What the kernel counted for the route, when last read.
    kernel: Counters,
    /// Packets (userspace's and the kernel's) when the idle timers last looked.
    seen: u64,
}

impl Live {
    /// Userspace's and the kernel's counts together.
    fn counted(&self) -> Counters {
        let mut c = snapshot(&self.counts);
        add(&mut c, self.kernel);
        c
    }
}

/// Reads the kernel's counters of every live route into it.
fn refresh(routes: &mut HashMap<(Source, u32), Live>, kernel: Option<&Kernel>) {
    let Some(kernel) = kernel else { return };
    for ((from, ssrc), live) in routes {
        live.kernel = kernel_counters(&kernel.room_route_stats(*from, *ssrc));
    }
}

/// What the replaced routes of a source and SSRC had counted: received, and sent to each
/// destination.
#[derive(Default)]
struct Totals {
    received: Counters,
    sent: HashMap<Destination, Counters>,
}

pub(crate) struct RoomPlane {
    pub(crate) core: Rooms,
    replies: HashMap<u64, oneshot::Sender<Result<Response, ApiError>>>,
    next_call: u64,
    routes: HashMap<(Source, u32), Live>,
    totals: HashMap<(Source, u32), Totals>,
    /// Policer slot of each tenant, by its index in the configuration.
    tenant_slots: Vec<u32>,
    /// Where the rooms are saved for a restarted relay.
    state: State,
    /// Policer slot of each room with a `max_bitrate_bps`.
    room_slots: HashMap<String, u32>,
    /// Policer slot of each endpoint with a `max_bitrate_bps`, by each of its ports.
    endpoint_slots: HashMap<SocketAddr, u32>,
    /// Calls creating a room with a bitrate limit (its name and slot), creating an
    /// endpoint with one (its slot), or deleting a room, until answered.
    creating: HashMap<u64, (String, u32)>,
    creating_endpoint: HashMap<u64, u32>,
    deleting: HashMap<u64, String>,
}

/// The views' counters: the routes' totals plus the live routes'.
struct Counted<'a>(
    &'a HashMap<(Source, u32), Live>,
    &'a HashMap<(Source, u32), Totals>,
);

fn snapshot(counts: &RouteCounts) -> Counters {
    Counters {
        packets: counts.packets.load(Relaxed),
        bytes: counts.bytes.load(Relaxed),
        dropped: counts.dropped.load(Relaxed),
        last_packet_unix_ms: unix_ms(counts.last_ns.load(Relaxed)),
    }
}

/// What the kernel counted for a route.
fn kernel_counters(k: &RouteStats) -> Counters {
    Counters {
        packets: k.packets,
        bytes: k.bytes,
        dropped: k.dropped,
        last_packet_unix_ms: unix_ms(k.last_seen_ns),
    }
}

/// A CLOCK_MONOTONIC stamp (0: never) as Unix milliseconds.
fn unix_ms(monotonic_ns: u64) -> Option<u64> {
    (monotonic_ns > 0).then(|| crate::clock::unix_ms_of_monotonic(monotonic_ns))
}

fn add(a: &mut Counters, b: Counters) {
    *a = a.plus(b);
}

impl RouteCounters for Counted<'_> {
    fn counters(&self, from: Source, ssrc: u32) -> (Counters, Vec<(Destination, Counters)>) {
        let mut received = Counters::default();
        let mut sent: HashMap<Destination, Counters> = HashMap::new();
        if let Some(t) = self.1.get(&(from, ssrc)) {
            add(&mut received, t.received);
            for (d, c) in &t.sent {
                add(sent.entry(*d).or_default(), *c);
            }
        }
        if let Some(live) = self.0.get(&(from, ssrc)) {
            let now = live.counted();
            add(&mut received, now);
            for d in &live.to {
                add(sent.entry(*d).or_default(), Counters { dropped: 0, ..now });
            }
        }
        (received, sent.into_iter().collect())
    }
}

impl RoomPlane {
    /// The plane of `core` (a restored one's rooms get their policer slots at once).
    pub(crate) fn new(core: Rooms, limits: &mut Limits, state: State) -> Self {
        let mut room_slots = HashMap::new();
        for (room, bps) in core.bitrate_limits() {
            match limits.bitrate_slot(bps) {
                Some(slot) => {
                    room_slots.insert(room.to_owned(), slot);
                }
                None => {
                    log::warn!("room {room:?}: no policer slot left: its bitrate is not limited");
                }
            }
        }
        let mut endpoint_slots = HashMap::new();
        for (ports, bps) in core.endpoint_bitrate_limits() {
            match limits.bitrate_slot(bps) {
                Some(slot) => endpoint_slots.extend(ports.into_iter().map(|p| (p, slot))),
                None => log::warn!(
                    "endpoint at {}: no policer slot left: its bitrate is not limited",
                    ports[0]
                ),
            }
        }
        let tenant_slots = limits.tenant_slots();
        Self {
            core,
            replies: HashMap::new(),
            next_call: 1,
            routes: HashMap::new(),
            totals: HashMap::new(),
            tenant_slots,
            state,
            room_slots,
            endpoint_slots,
            creating: HashMap::new(),
            creating_endpoint: HashMap::new(),
            deleting: HashMap::new(),
        }
    }

    /// When the rooms' changes are due to be written.
    pub(crate) const fn save_due(&self) -> Option<Instant> {
        self.state.due()
    }

    /// Writes the rooms if they changed and a write is due.
    pub(crate) fn save_if_due(&mut self, now: Instant) {
        if self.core.take_dirty() {
            self.state.changed(now);
        }
        let core = &self.core;
        self.state
            .save_if_due(now, |file| core.snapshot().write_atomic(file));
    }

    /// Writes the rooms now (the relay is stopping).
    pub(crate) fn save(&mut self) {
        let core = &self.core;
        self.state
            .save(Instant::now(), |file| core.snapshot().write_atomic(file));
    }

    /// A control API call. A room or an endpoint with a bitrate limit needs a policer slot
    /// first: without one it is refused (507) before the core hears of it.
    pub(crate) fn on_call(
        &mut self,
        now: Instant,
        (request, reply): Call,
        limits: &mut Limits,
        kernel: Option<&Kernel>,
    ) {
        refresh(&mut self.routes, kernel);
        let call = self.next_call;
        self.next_call += 1;
        let limit = match &request {
            Request::CreateRoom(spec) => spec.max_bitrate_bps,
            Request::CreateEndpoint { spec, .. } => spec.max_bitrate_bps,
            _ => None,
        };
        if let Some(bps) = limit.filter(|b| *b > 0) {
            let Some(slot) = limits.bitrate_slot(bps) else {
                let _ = reply.send(Err(ApiError::new(
                    507,
                    Some("max_bitrate_bps"),
                    "no policer slot left to enforce it",
                )));
                return;
            };
            match &request {
                Request::CreateRoom(spec) => {
                    self.creating.insert(call, (spec.name.clone(), slot));
                }
                _ => {
                    self.creating_endpoint.insert(call, slot);
                }
            }
        }
        if let Request::DeleteRoom { room } = &request {
            self.deleting.insert(call, room.clone());
        }
        self.replies.insert(call, reply);
        let counted = Counted(&self.routes, &self.totals);
        self.core.handle_call(now, call, request, &counted);
    }

    pub(crate) fn on_media(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        self.core.handle_media(now, local, remote, data);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// The core's timers, after telling it which endpoints the data path kept busy.
    pub(crate) fn handle_timeout(&mut self, now: Instant, kernel: Option<&Kernel>) {
        refresh(&mut self.routes, kernel);
        for ((from, _), live) in &mut self.routes {
            let packets = live.counted().packets;
            if packets != live.seen {
                live.seen = packets;
                self.core.touch(now, from.local);
                for d in &live.to {
                    self.core.touch(now, d.local);
                }
            }
        }
        self.core.handle_timeout(now);
    }

    /// Carries out the core's outputs; returns how many commands went to the data path.
    /// `endpoint` hears of every endpoint port opened (`true`) or closed, for the TURN
    /// server, whose clients may reach them.
    pub(crate) fn carry_out(
        &mut self,
        commands: &Sender<Command>,
        limits: &mut Limits,
        mut kernel: Option<&mut Kernel>,
        endpoint: &mut dyn FnMut(SocketAddr, bool),
    ) -> usize {
        let mut sent = 0;
        while let Some(output) = self.core.poll_output() {
            let command = match output {
                Output::Bind { id, addrs } => {
                    let now = Instant::now();
                    let sockets = addrs.iter().map(|a| bind_relay(*a, false));
                    match sockets.collect::<std::io::Result<Vec<_>>>() {
                        Ok(sockets) => {
                            for (addr, socket) in addrs.into_iter().zip(sockets) {
                                endpoint(addr, true);
                                let _ = commands
                                    .send(Command::Room(RoomCommand::AddEndpoint { addr, socket }));
                                sent += 1;
                            }
                            self.core.bound(now, id, Ok(()));
                        }
                        Err(e) => self.core.bound(now, id, Err(e)),
                    }
                    continue;
                }
                Output::Release { addr } => {
                    endpoint(addr, false);
                    if let Some(slot) = self.endpoint_slots.remove(&addr) {
                        // An endpoint's RTP and RTCP ports share its slot.
                        if !self.endpoint_slots.values().any(|s| *s == slot) {
                            limits.release_bitrate_slot(slot);
                        }
                    }
                    self.totals.retain(|(from, _), _| from.local != addr);
                    RoomCommand::RemoveEndpoint { addr }
                }
                Output::Route {
                    from,
                    ssrc,
                    room,
                    tenant,
                    route,
                } => {
                    self.retire(from, ssrc, kernel.as_deref());
                    let counts = Arc::new(RouteCounts::default());
                    if let Some(r) = &route {
                        self.routes.insert(
                            (from, ssrc),
                            Live {
                                to: r.rtp.clone(),
                                counts: Arc::clone(&counts),
                                kernel: Counters::default(),
                                seen: 0,
                            },
                        );
                    }
                    let tenant = tenant.and_then(|t| self.tenant_slots.get(t).copied());
                    let policers = RoutePolicers {
                        endpoint: self.endpoint_slots.get(&from.local).copied().unwrap_or(0),
                        room: self.room_slots.get(&room).copied().unwrap_or(0),
                        tenant: tenant.unwrap_or(0),
                    };
                    // The kernel's entry goes (or is replaced) before the data path's: a
                    // packet the kernel no longer has goes up, where the data path or the
                    // core forwards it.
                    if let Some(kernel) = kernel.as_deref_mut() {
                        kernel.room_route(from, ssrc, route.as_ref(), policers);
                    }
                    RoomCommand::Route {
                        from,
                        ssrc,
                        route,
                        policers,
                        counts,
                    }
                }
                Output::Send {
                    local,
                    remote,
                    data,
                } => RoomCommand::SendFromEndpoint {
                    local,
                    remote,
                    data,
                },
                Output::Reply { call, result } => {
                    self.settle_slots(call, &result, limits);
                    if let Some(reply) = self.replies.remove(&call) {
                        // The HTTP side may have given up (a timeout): nothing to do.
                        let _ = reply.send(result);
                    }
                    continue;
                }
            };
            let _ = commands.send(Command::Room(command));
            sent += 1;
        }
        sent
    }

    /// The policer slots taken for call `call` (a room or an endpoint with a limit) become
    /// theirs if it succeeded and go back if not; a deleted room's goes back.
    fn settle_slots(
        &mut self,
        call: u64,
        result: &Result<Response, ApiError>,
        limits: &mut Limits,
    ) {
        if let Some(slot) = self.creating_endpoint.remove(&call) {
            match result {
                Ok(Response::Endpoint(view)) => self.endpoint_slots.extend(
                    std::iter::once(view.local)
                        .chain(view.local_rtcp)
                        .map(|p| (p, slot)),
                ),
                _ => limits.release_bitrate_slot(slot),
            }
        }
        if let Some((room, slot)) = self.creating.remove(&call) {
            if result.is_ok() {
                self.room_slots.insert(room, slot);
            } else {
                limits.release_bitrate_slot(slot);
            }
        }
        if let Some(room) = self.deleting.remove(&call) {
            if let Some(slot) = self.room_slots.remove(&room).filter(|_| result.is_ok()) {
                limits.release_bitrate_slot(slot);
            }
        }
    }

    /// Folds what a route being replaced counted (in userspace and in the kernel) into the
    /// totals.
    fn retire(&mut self, from: Source, ssrc: u32, kernel: Option<&Kernel>) {
        let Some(mut live) = self.routes.remove(&(from, ssrc)) else {
            return;
        };
        if let Some(kernel) = kernel {
            live.kernel = kernel_counters(&kernel.room_route_stats(from, ssrc));
        }
        let counted = live.counted();
        let totals = self.totals.entry((from, ssrc)).or_default();
        add(&mut totals.received, counted);
        for d in live.to {
            add(
                totals.sent.entry(d).or_default(),
                Counters {
                    dropped: 0,
                    ..counted
                },
            );
        }
    }
}
