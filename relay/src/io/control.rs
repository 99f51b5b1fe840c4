//! The control task: owns the TURN server, feeds it what the data path and the stream
//! connections hand up, fires its timers, and carries out its outputs.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, mpsc::Sender},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::Receiver as EventReceiver;

use super::{
    datapath::{Command, Event},
    kernel::Kernel,
    notify::Notifier,
    rooms::RoomPlane,
    wake::Wake,
};
use crate::{
    clock::monotonic_ns,
    dataplane::Dataplane,
    policers::{Policers, Slots},
    room::api::Call,
    turn::{ClientTuple, Output, Server, Transport, tenant::Tenant},
};
use relay_common::police::Limit;

/// The rate limits: which policer slots each relayed address spends.
pub(crate) struct Limits {
    pub(crate) policers: Arc<Policers>,
    slots: Slots,
    tenants: Vec<Tenant>,
    /// Relayed address -> `[allocation, tenant]` slots (0: none).
    by_relayed: HashMap<SocketAddr, [u32; 2]>,
    /// Relayed addresses per allocation slot, to free it with the last.
    users: HashMap<u32, usize>,
}

impl Limits {
    /// Configures every tenant's slot in `policers`.
    pub(crate) fn new(policers: Arc<Policers>, tenants: Vec<Tenant>) -> Self {
        let slots = Slots::new(tenants.len());
        for (i, t) in tenants.iter().enumerate() {
            policers.configure(slots.tenant(i), t.limit);
        }
        Self {
            policers,
            slots,
            tenants,
            by_relayed: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// Slots for a new allocation: its own `--max-bps` (burst: one second's worth, as
    /// coturn's) and its tenant's. `None` when the allocation has a `--max-bps` and no slot
    /// is left for it: a limit that cannot be enforced refuses the allocation (fails closed).
    fn assign(&mut self, max_bps: Option<u64>, tenant: Option<usize>) -> Option<[u32; 2]> {
        let tenant = tenant.map_or(0, |t| self.slots.tenant(t));
        let allocation = match max_bps {
            None => 0,
            Some(bps) => self.bitrate_slot(bps)?,
        };
        Some([allocation, tenant])
    }

    fn bound(&mut self, addr: SocketAddr, slots: [u32; 2]) {
        self.by_relayed.insert(addr, slots);
        if slots[0] != 0 {
            *self.users.entry(slots[0]).or_default() += 1;
        }
    }

    fn release_slot(&mut self, slot: u32) {
        if slot == 0 {
            return;
        }
        match self.users.get_mut(&slot) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.users.remove(&slot);
                self.slots.give_back(slot);
            }
        }
    }

    fn released(&mut self, addr: SocketAddr) {
        if let Some([allocation, _]) = self.by_relayed.remove(&addr) {
            self.release_slot(allocation);
        }
    }

    /// A slot limited to `bits_per_sec` (burst: one second's worth, as coturn's
    /// `--max-bps`), for an allocation's `--max-bps` or a media room's `max_bitrate_bps`;
    /// `None` when none is left (the request is then refused: a limit that cannot be
    /// enforced is not granted).
    pub(crate) fn bitrate_slot(&mut self, bits_per_sec: u64) -> Option<u32> {
        let slot = self.slots.take()?;
        self.policers.configure(
            slot,
            Limit {
                packets_per_sec: 0,
                bits_per_sec,
                burst_ns: 1_000_000_000,
            },
        );
        Some(slot)
    }

    /// Policer slots in use (tenants, allocations' and rooms' limits).
    pub(crate) fn slots_used(&self) -> u32 {
        self.slots.used()
    }

    pub(crate) fn release_bitrate_slot(&mut self, slot: u32) {
        self.slots.give_back(slot);
    }

    /// Each tenant's policer slot, by its index in the configuration.
    pub(crate) fn tenant_slots(&self) -> Vec<u32> {
        (0..self.tenants.len())
            .map(|i| self.slots.tenant(i))
            .collect()
    }

    fn of(&self, relayed: SocketAddr) -> [u32; 2] {
        self.by_relayed.get(&relayed).copied().unwrap_or_default()
    }

    /// One line per tenant: what its limit dropped, in the kernel and in userspace.
    fn report(&self, kernel: Option<&Dataplane>) {
        for (i, t) in self.tenants.iter().enumerate() {
            let slot = self.slots.tenant(i);
            let in_kernel = kernel
                .and_then(|d| d.policed(slot).ok())
                .map_or(0, |c| c.packets);
            log::info!(
                "tenant {:?} at exit: {} packets dropped over its limit ({in_kernel} by XDP, {} in userspace)",
                t.name,
                in_kernel + self.policers.dropped(slot),
                self.policers.dropped(slot),
            );
        }
    }
}

/// Where the allocation state is saved, for a restarted daemon to take up.
pub(crate) struct State {
    file: PathBuf,
    /// When the changes not yet written are due to be.
    due: Option<Instant>,
    last: Option<Instant>,
}

/// Changes are written at most this often: one write per change made a thousand
/// allocations arriving together cost a thousand snapshots of up to a thousand each.
const SAVE_EVERY: Duration = Duration::from_millis(100);
/// The shortest time between two counts of what the TURN server holds, for metrics.
const HELD_EVERY: Duration = Duration::from_millis(100);

impl State {
    pub(crate) fn new(file: PathBuf) -> Self {
        Self {
            file,
            due: None,
            last: None,
        }
    }

    /// The state changed at `now`: write it now, or with whatever else changes until
    /// [`SAVE_EVERY`] after the last write.
    pub(super) fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            self.due = Some(self.last.map_or(now, |l| (l + SAVE_EVERY).max(now)));
        }
    }

    pub(super) const fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Writes the state with `write` if a change is due by `now`.
    pub(super) fn save_if_due(
        &mut self,
        now: Instant,
        write: impl FnOnce(&Path) -> std::io::Result<()>,
    ) {
        if self.due.is_some_and(|d| d <= now) {
            self.save(now, write);
        }
    }

    /// Writes the state with `write` now.
    pub(super) fn save(&mut self, now: Instant, write: impl FnOnce(&Path) -> std::io::Result<()>) {
        // Synchronous: a few KiB per hundred allocations or rooms.
        if let Err(e) = write(&self.file) {
            log::warn!("cannot save the state to {}: {e}", self.file.display());
        }
        self.due = None;
        self.last = Some(now);
    }
}

pub(crate) struct Control {
    pub(crate) server: Server,
    kernel: Option<Kernel>,
    limits: Limits,
    state: State,
    commands: Sender<Command>,
    wake: Arc<Wake>,
    streams: HashMap<ClientTuple, tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Sockets of reserved ports (EVEN-PORT with R), held here until a RESERVATION-TOKEN
    /// allocation takes them over or the reservation lapses.
    held: HashMap<SocketAddr, UdpSocket>,
    /// Allocations refused (508) because no policer slot was left for their `--max-bps`.
    no_policer: u64,
    /// When the allocations, permissions and channels held were last counted for metrics,
    /// and when next: a walk over every allocation, so after a change but at most every
    /// `HELD_EVERY`, and once a second for expiries.
    held_at: Option<Instant>,
    held_due: Option<Instant>,
    /// When what the kernel forwarded per tenant was last summed (once a second).
    tenants_at: Option<Instant>,
    rooms: RoomPlane,
}

impl Control {
    pub(crate) fn new(
        server: Server,
        kernel: Option<Kernel>,
        limits: Limits,
        state: State,
        commands: Sender<Command>,
        wake: Arc<Wake>,
        rooms: RoomPlane,
    ) -> Self {
        Self {
            server,
            kernel,
            limits,
            state,
            commands,
            wake,
            streams: HashMap::new(),
            held: HashMap::new(),
            no_policer: 0,
            held_at: None,
            held_due: None,
            tenants_at: None,
            rooms,
        }
    }

    /// Runs until `shutdown` resolves or every event sender is gone; `calls` are the
    /// control API's requests (none without the API). Logs `ready` once what a previous
    /// run saved is served again, and says so in `live` (readiness, counts) for metrics.
    pub(crate) async fn run(
        mut self,
        mut events: EventReceiver<Event>,
        mut calls: Option<tokio::sync::mpsc::Receiver<Call>>,
        shutdown: impl Future<Output = ()>,
        (ready, live, notifier): (&str, &crate::metrics::Live, &mut Notifier),
    ) -> Option<Dataplane> {
        tokio::pin!(shutdown);
        // A restored server asks first for its sockets and announces its flows: then the
        // kernel's table holds exactly what the state says.
        self.carry_out();
        if let Some(kernel) = &mut self.kernel {
            let stale = kernel.reconcile();
            if stale > 0 {
                log::info!(
                    "fast path: removed {stale} kernel entries the restored state does not \
                     announce: flows, relayed addresses and permissions that ended while no \
                     daemon ran, room routes (rooms are not kept across a restart yet)"
                );
            }
        }
        // Serving: restored allocations and rooms have their sockets again.
        self.publish(live);
        // Ready before the line says so: whoever waits for the line finds /readyz 200.
        live.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        notifier.ready(ready, Instant::now());
        log::info!("{ready}");
        // Counts that move without events (expiries, the kernel's per-tenant sums) are
        // published at least once a second.
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.server.poll_timeout();
            let rooms_deadline = self.rooms.poll_timeout();
            let ping = notifier.due();
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.on_event(event);
                    // Take what else is waiting before the outputs go out.
                    while let Ok(event) = events.try_recv() {
                        self.on_event(event);
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.server.handle_timeout(Instant::now());
                }
                () = sleep_until(rooms_deadline), if rooms_deadline.is_some() => {
                    self.rooms.handle_timeout(Instant::now(), self.kernel.as_ref());
                }
                call = recv(&mut calls), if calls.is_some() => match call {
                    Some(call) => {
                        let (limits, kernel) = (&mut self.limits, self.kernel.as_ref());
                        self.rooms.on_call(Instant::now(), call, limits, kernel);
                    }
                    // The API server is gone: serve on without it.
                    None => calls = None,
                },
                () = sleep_until(self.state.due()), if self.state.due().is_some() => {}
                () = sleep_until(self.held_due), if self.held_due.is_some() => {}
                _ = second.tick() => {}
                () = sleep_until(self.rooms.save_due()), if self.rooms.save_due().is_some() => {}
                // Wakes an idle loop to ping; a busy one pings below.
                () = sleep_until(ping), if ping.is_some() => {}
                () = &mut shutdown => break,
            }
            self.carry_out();
            self.publish(live);
            notifier.ping_if_due(Instant::now());
        }
        live.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        notifier.stopping();
        // The state as it is when the daemon stops, for the next one.
        let now = Instant::now();
        self.state
            .save(now, |file| self.server.snapshot(now).write_atomic(file));
        self.rooms.save();
        let _ = self.commands.send(Command::Stop);
        self.wake.wake();
        log::info!("TURN server at exit: {}", self.server.stats());
        log::info!("rooms at exit: {}", self.rooms.core.stats());
        log::info!(
            "limits at exit: {} allocations refused for want of a policer slot; {} channels \
             left to userspace, the kernel's flow table full; {} relayed addresses left \
             unguarded in the kernel, its permission table full; {} room routes left to \
             userspace",
            self.no_policer,
            self.kernel.as_ref().map_or(0, |k| k.not_installed),
            self.kernel.as_ref().map_or(0, |k| k.permissions_failed),
            self.kernel.as_ref().map_or(0, |k| k.routes_not_installed)
        );
        self.limits
            .report(self.kernel.as_ref().map(|k| &k.dataplane));
        // The data plane goes back to the caller, its flows still installed.
        self.kernel.map(|k| k.dataplane)
    }

    /// The TURN server's and the rooms' figures, and how full the kernel's tables are,
    /// for metrics.
    fn publish(&mut self, live: &crate::metrics::Live) {
        let now = Instant::now();
        let due = self.held_due.is_some_and(|d| now >= d);
        if due
            || self
                .held_at
                .is_none_or(|at| now >= at + Duration::from_secs(1))
        {
            crate::metrics::store(
                (live.control.held.iter().flatten())
                    .zip(self.server.held(now).into_iter().flatten()),
            );
            self.held_at = Some(now);
            self.held_due = None;
        }
        if let Some(kernel) = &self.kernel {
            if !live.tenants.is_empty()
                && self
                    .tenants_at
                    .is_none_or(|at| now >= at + Duration::from_secs(1))
            {
                let sums = kernel.tenant_forwarded();
                if let Ok(mut forwarded) = live.control.tenant_forwarded.lock() {
                    *forwarded = sums;
                }
                self.tenants_at = Some(now);
            }
        }
        let core = &self.rooms.core;
        live.control
            .set(&self.server.stats(), &core.stats(), core.counts());
        live.control
            .set_answers(self.server.answers(), self.server.setup_times());
        if let Some(kernel) = &self.kernel {
            let mut used = kernel.entries();
            used[crate::metrics::MAP_POLICERS] = u64::from(self.limits.slots_used());
            crate::metrics::store(live.control.map_entries.iter().zip(used));
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Client { tuple, data } => self.server.handle_client(now, tuple, &data),
            Event::Peer {
                relayed,
                peer,
                data,
            } => self.server.handle_peer(now, relayed, peer, &data),
            Event::StreamOpen { tuple, writer } => {
                self.streams.insert(tuple, writer);
            }
            Event::StreamClosed { tuple } => {
                self.streams.remove(&tuple);
                self.server.handle_client_closed(now, tuple);
            }
            Event::Media {
                local,
                remote,
                data,
            } => self.rooms.on_media(now, local, remote, &data),
        }
    }

    /// Carries out what the TURN server and the room core asked for.
    fn carry_out(&mut self) {
        let mut commands = self.carry_out_turn();
        let server = &mut self.server;
        let mut endpoints_changed = false;
        commands += self.rooms.carry_out(
            &self.commands,
            &mut self.limits,
            self.kernel.as_mut(),
            &mut |addr, live| {
                server.room_endpoint(Instant::now(), addr, live);
                endpoints_changed = true;
            },
        );
        // Endpoints opened or closed: the TURN server has flows to announce or withdraw.
        if endpoints_changed {
            commands += self.carry_out_turn();
        }
        if commands > 0 {
            self.wake.wake();
        }
        self.save_if_due(Instant::now());
    }

    /// Drains the TURN server's outputs into commands for the data path and stream writers;
    /// returns how many commands went to the data path.
    fn carry_out_turn(&mut self) -> usize {
        let mut commands = 0;
        while let Some(output) = self.server.poll_output() {
            let command = match output {
                Output::ToClient { tuple, data } if tuple.transport == Transport::Udp => {
                    Command::SendToClient {
                        listener: tuple.server,
                        client: tuple.client,
                        data,
                    }
                }
                Output::ToClient { tuple, data } => {
                    if let Some(writer) = self.streams.get(&tuple) {
                        // A client that does not read its stream loses messages, not the relay.
                        if writer.try_send(data).is_err() {
                            log::debug!("{tuple}: stream writer full, message dropped");
                        }
                    }
                    continue;
                }
                Output::ToPeer {
                    relayed,
                    peer,
                    data,
                } => Command::SendToPeer {
                    relayed,
                    peer,
                    data,
                },
                Output::Bind {
                    id,
                    addrs,
                    reserve,
                    max_bps,
                    tenant,
                    dont_fragment,
                } => {
                    commands += self.bind(id, &addrs, reserve, max_bps, tenant, dont_fragment);
                    continue;
                }
                Output::Release { addr } => {
                    if self.held.remove(&addr).is_some() {
                        continue;
                    }
                    self.limits.released(addr);
                    if let Some(kernel) = &mut self.kernel {
                        kernel.relay_down(addr);
                    }
                    Command::RemoveRelay { addr }
                }
                // Both the kernel and the userspace data path get the flow: a packet the
                // kernel passes up (no route yet, a padded datagram) is still fast in
                // userspace.
                Output::FlowUp(flow, expires) => {
                    let expires_ns = monotonic_ns(expires);
                    if let Some(kernel) = &mut self.kernel {
                        kernel.up(flow, expires_ns, self.limits.of(flow.relayed));
                    }
                    Command::FlowUp { flow, expires_ns }
                }
                Output::Permit {
                    relayed,
                    peer,
                    expires,
                    own,
                } => {
                    let expires_ns = monotonic_ns(expires);
                    if let Some(kernel) = &mut self.kernel {
                        kernel.permit(relayed, peer, expires_ns, own);
                    }
                    Command::Permit {
                        relayed,
                        peer,
                        expires_ns,
                        own,
                    }
                }
                Output::Unpermit { relayed, peer } => {
                    if let Some(kernel) = &mut self.kernel {
                        kernel.unpermit(relayed, peer);
                    }
                    Command::Unpermit { relayed, peer }
                }
                Output::FlowDown(flow) => {
                    if let Some(kernel) = &mut self.kernel {
                        kernel.down(&flow);
                    }
                    Command::FlowDown(flow)
                }
            };
            let _ = self.commands.send(command);
            commands += 1;
        }
        commands
    }

    /// Writes what changed of the allocations and the rooms, when a write is due.
    fn save_if_due(&mut self, now: Instant) {
        if self.server.take_dirty() {
            self.state.changed(now);
            let earliest = self.held_at.map_or(now, |at| at + HELD_EVERY);
            self.held_due.get_or_insert(earliest.max(now));
        }
        let server = &self.server;
        self.state
            .save_if_due(now, |file| server.snapshot(now).write_atomic(file));
        self.rooms.save_if_due(now);
    }
}

impl Control {
    /// Carries out an [`Output::Bind`]: the policer slots first (a `--max-bps` that cannot
    /// be enforced refuses the allocation, 508), then the sockets, handed to the data path.
    /// Returns how many commands went to it.
    fn bind(
        &mut self,
        id: u64,
        addrs: &[SocketAddr],
        reserve: Option<SocketAddr>,
        max_bps: Option<u64>,
        tenant: Option<usize>,
        dont_fragment: bool,
    ) -> usize {
        let now = Instant::now();
        let Some(policers) = self.limits.assign(max_bps, tenant) else {
            self.no_policer += 1;
            log::warn!("allocation refused (508): no policer slot left for its --max-bps");
            let full = std::io::Error::other("no policer slot left for --max-bps");
            self.server.relay_bound(now, id, Err(full));
            return 0;
        };
        match self.open(addrs, reserve, dont_fragment) {
            Ok(sockets) => {
                for (addr, socket) in addrs.iter().zip(sockets) {
                    self.limits.bound(*addr, policers);
                    if let Some(kernel) = &mut self.kernel {
                        kernel.relay_up(*addr);
                    }
                    let _ = self.commands.send(Command::AddRelay {
                        addr: *addr,
                        socket,
                        policers,
                    });
                }
                self.server.relay_bound(now, id, Ok(()));
                addrs.len()
            }
            Err(e) => {
                self.limits.release_slot(policers[0]);
                self.server.relay_bound(now, id, Err(e));
                0
            }
        }
    }

    /// Opens the sockets of an [`Output::Bind`], all or none: `addrs` to relay (a held
    /// reservation's socket is taken over, not bound again), `reserve` to hold.
    fn open(
        &mut self,
        addrs: &[SocketAddr],
        reserve: Option<SocketAddr>,
        dont_fragment: bool,
    ) -> std::io::Result<Vec<UdpSocket>> {
        let mut fresh = addrs
            .iter()
            .filter(|a| !self.held.contains_key(a))
            .map(|a| Ok((*a, bind_relay(*a, dont_fragment)?)))
            .collect::<std::io::Result<HashMap<_, _>>>()?;
        let reserved = reserve.map(|r| bind_relay(r, false)).transpose()?;
        if dont_fragment {
            for (addr, socket) in addrs.iter().filter_map(|a| Some((a, self.held.get(a)?))) {
                set_dont_fragment(&socket2::SockRef::from(socket), *addr)?;
            }
        }
        let sockets = addrs
            .iter()
            .filter_map(|a| fresh.remove(a).or_else(|| self.held.remove(a)))
            .collect();
        if let (Some(addr), Some(socket)) = (reserve, reserved) {
            self.held.insert(addr, socket);
        }
        Ok(sockets)
    }
}

async fn recv<T>(receiver: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

pub(super) fn bind_relay(addr: SocketAddr, dont_fragment: bool) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if dont_fragment {
        set_dont_fragment(&socket, addr)?;
    }
    // A video keyframe is a burst of dozens of datagrams on one socket: the default buffer
    // (208 KiB, each datagram charged its skb's truesize, about twice its length) overflows
    // at about 90 of 1,000 bytes. As much as the host allows (net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// RFC 8656 section 7.2: DONT-FRAGMENT asks for DF on the relayed packets.
fn set_dont_fragment(socket: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    if addr.is_ipv4() {
        set_int(
            socket,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    } else {
        set_int(socket, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    }
}

fn set_int(socket: &Socket, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: passes a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policers::SLOTS;

    /// A `--max-bps` that cannot be enforced refuses the allocation; with the slot given
    /// back, the next one gets it.
    #[test]
    fn without_a_policer_slot_an_allocation_with_max_bps_is_refused() {
        let mut limits = Limits::new(Arc::new(Policers::own()), Vec::new());
        let taken: Vec<_> = (1..SLOTS)
            .map(|_| limits.assign(Some(64_000), None).expect("slots left"))
            .collect();
        assert_eq!(limits.assign(Some(64_000), None), None);
        // Without a limit of its own, an allocation needs no slot.
        assert_eq!(limits.assign(None, None), Some([0, 0]));
        limits.release_slot(taken[7][0]);
        assert_eq!(limits.assign(Some(64_000), None), Some(taken[7]));
    }
}
