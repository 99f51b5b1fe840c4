//! The kernel's copy of what its fast path needs, when an XDP program is attached: the
//! channel flows (and the relay/relay hairpins between them), the relayed addresses and
//! their permissions, and the room routes (one destination: sent by XDP; several: cloned
//! by the TC program).
//!
//! What cannot be installed fails safe: a channel left out stays in userspace (slower, not
//! lost); a relayed address whose permission cannot be installed is no longer guarded in
//! the kernel (its datagrams go up, where the data path checks them).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use relay_common::{
    flow::MAX_FLOWS,
    room::{
        KIND_RTCP, KIND_RTP, MAX_ROOM_ROUTES, MAX_ROUTE_DESTINATIONS, RoomRoute, RouteKey,
        RouteStats,
    },
};

use crate::{
    dataplane::{Dataplane, KernelChannel},
    policers::RoutePolicers,
    room::{Destination, Route, Source},
    turn::ChannelFlow,
};

pub(crate) struct Kernel {
    pub(crate) dataplane: Dataplane,
    /// Installed channels, with their expiry (CLOCK_MONOTONIC ns).
    channels: HashMap<ChannelFlow, (KernelChannel, u64)>,
    /// Installed channels by `(relayed, peer)`: a channel's hairpin partner is the one at
    /// `(its peer, its relayed)`.
    by_path: HashMap<(SocketAddr, SocketAddr), ChannelFlow>,
    /// Free counter slots of `FLOW_STATS`.
    free: Vec<u32>,
    /// Relayed addresses in `RELAYED`, and those left out of it (fail safe).
    relayed: HashSet<SocketAddr>,
    unguarded: HashSet<SocketAddr>,
    permissions: HashSet<(SocketAddr, IpAddr)>,
    /// Channels that could not be installed (no counter slots or map entries left).
    pub(crate) not_installed: u64,
    /// Relayed addresses left unguarded because a permission could not be installed.
    pub(crate) permissions_failed: u64,
    /// Installed room routes by publisher and SSRC: their keys (RTP, RTCP) and slots.
    room_routes: HashMap<(Source, u32), Vec<(RouteKey, u32)>>,
    /// Free route slots, the longest free first: a slot is reused as late as possible, so a
    /// program run that still holds a removed route never reads its successor's
    /// destinations.
    free_slots: VecDeque<u32>,
    /// Slots of an adopted data plane's routes: not reused before [`Kernel::reconcile`]
    /// has removed or replaced those routes, so that none of them ever sends to a new
    /// route's destinations.
    adopted_slots: Vec<u32>,
    /// Room routes (RTP or RTCP of one SSRC) left to userspace: too many destinations,
    /// families that differ, no slot or map entry left.
    pub(crate) routes_not_installed: u64,
    /// The tenant (policer slot) of each installed room route.
    route_tenants: HashMap<(Source, u32), u32>,
    /// Packets and bytes the kernel forwarded for each tenant (policer slot) on channels and
    /// routes since removed: their counters go with their slots, the tenant's total stays.
    retired: HashMap<u32, u64>,
}

impl Kernel {
    pub(crate) fn new(dataplane: Dataplane) -> Self {
        let adopted_slots = dataplane.room_route_slots().unwrap_or_else(|e| {
            log::warn!("fast path: cannot list the adopted room routes: {e}");
            Vec::new()
        });
        let free_slots = (0..MAX_ROOM_ROUTES)
            .filter(|slot| !adopted_slots.contains(slot))
            .collect();
        Self {
            dataplane,
            channels: HashMap::new(),
            by_path: HashMap::new(),
            free: (0..MAX_FLOWS).rev().collect(),
            relayed: HashSet::new(),
            unguarded: HashSet::new(),
            permissions: HashSet::new(),
            not_installed: 0,
            permissions_failed: 0,
            room_routes: HashMap::new(),
            free_slots,
            adopted_slots,
            routes_not_installed: 0,
            route_tenants: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    /// Entries in use of the maps [`crate::metrics::MAPS`] names, in its order, as this
    /// daemon installed them (the policers' are the limits', filled in by the caller).
    pub(crate) fn entries(&self) -> [u64; crate::metrics::MAPS.len()] {
        let len = |n: usize| n as u64;
        [
            u64::from(MAX_FLOWS) - len(self.free.len()),
            len(self.relayed.len()),
            len(self.permissions.len()),
            u64::from(MAX_ROOM_ROUTES) - len(self.free_slots.len()),
            0,
        ]
    }

    /// Installs the room route of `ssrc` from `from` (RTP to `route.rtp`, the publisher's
    /// RTCP to `route.rtcp`), spending `policers`, or with `None`
    /// removes it. A route being replaced is removed first, so no packet is sent by both.
    /// What cannot be installed is left to userspace (counted).
    pub(crate) fn room_route(
        &mut self,
        from: Source,
        ssrc: u32,
        route: Option<&Route>,
        policers: RoutePolicers,
    ) {
        if let Some(old) = self.room_routes.remove(&(from, ssrc)) {
            let tenant = self.route_tenants.remove(&(from, ssrc)).unwrap_or(0);
            for (key, slot) in old {
                if let Ok(s) = self.dataplane.route_stats(slot) {
                    self.retire(tenant, s.packets);
                }
                if let Err(e) = self.dataplane.remove_room_route(&key) {
                    log::warn!(
                        "fast path: cannot remove the route of SSRC {ssrc} from {}: {e}",
                        from.remote
                    );
                }
                self.free_slots.push_back(slot);
            }
        }
        let Some(route) = route else { return };
        let mut installed = Vec::new();
        for (kind, to) in [(KIND_RTP, &route.rtp), (KIND_RTCP, &route.rtcp)] {
            if to.is_empty() {
                continue;
            }
            match self.install_route(from, ssrc, kind, to, policers) {
                Ok(entry) => installed.push(entry),
                Err(why) => {
                    if self.routes_not_installed.is_multiple_of(1000) {
                        log::warn!(
                            "fast path: the route of SSRC {ssrc} from {} stays in userspace \
                             ({why}); {} so far",
                            from.remote,
                            self.routes_not_installed + 1
                        );
                    }
                    self.routes_not_installed += 1;
                }
            }
        }
        if !installed.is_empty() {
            self.room_routes.insert((from, ssrc), installed);
            self.route_tenants.insert((from, ssrc), policers.tenant);
        }
    }

    fn install_route(
        &mut self,
        from: Source,
        ssrc: u32,
        kind: u8,
        to: &[Destination],
        policers: RoutePolicers,
    ) -> Result<(RouteKey, u32), String> {
        if to.len() > MAX_ROUTE_DESTINATIONS as usize {
            return Err(format!("more than {MAX_ROUTE_DESTINATIONS} destinations"));
        }
        if to.len() > 1 && !self.dataplane.fans_out() {
            return Err("several destinations and no TC fan-out program attached".to_owned());
        }
        let v4 = from.local.is_ipv4();
        if from.remote.is_ipv4() != v4
            || to
                .iter()
                .any(|d| d.local.is_ipv4() != v4 || d.remote.is_ipv4() != v4)
        {
            return Err("addresses of different families".to_owned());
        }
        let slot = self
            .free_slots
            .pop_front()
            .ok_or_else(|| "no route slot left".to_owned())?;
        let key = crate::dataplane::route_key(from, ssrc, kind);
        let result = (|| {
            self.dataplane.reset_route_stats(slot)?;
            for (i, d) in to.iter().enumerate() {
                let index = relay_common::room::destination_index(slot, i as u32)
                    .expect("slot and count checked");
                self.dataplane
                    .set_room_destination(index, &crate::dataplane::room_destination(d))?;
            }
            let value = RoomRoute {
                destinations: to.len() as u32,
                slot,
                room_policer: policers.room,
                tenant_policer: policers.tenant,
                family: key.family,
                pad: [0; 3],
                endpoint_policer: policers.endpoint,
            };
            self.dataplane.insert_room_route(&key, &value)
        })();
        match result {
            Ok(()) => Ok((key, slot)),
            Err(e) => {
                self.free_slots.push_back(slot);
                Err(e.to_string())
            }
        }
    }

    /// What the kernel counted for the route of `ssrc` from `from` (RTP and RTCP together).
    pub(crate) fn room_route_stats(&self, from: Source, ssrc: u32) -> RouteStats {
        self.room_routes
            .get(&(from, ssrc))
            .into_iter()
            .flatten()
            .filter_map(|(_, slot)| self.dataplane.route_stats(*slot).ok())
            .fold(RouteStats::default(), RouteStats::add)
    }

    /// Installs a channel spending the budgets of policer slots `[allocation, tenant]`, or
    /// moves its expiry (monotonic ns) when it is installed already; pairs it with its
    /// hairpin partner.
    pub(crate) fn up(&mut self, flow: ChannelFlow, expires_ns: u64, policers: [u32; 2]) {
        let channel = if let Some((channel, _)) = self.channels.get(&flow) {
            *channel
        } else {
            let Some(stats) = self.take_stats() else {
                return self.left_out(&flow, "no counter slots left");
            };
            KernelChannel {
                flow,
                stats,
                policers,
            }
        };
        let Some(entries) = channel.entries(expires_ns) else {
            // Not for the kernel (a stream client, families that differ).
            self.free.extend(channel.stats);
            return;
        };
        let new = !self.channels.contains_key(&flow);
        for (i, (key, action)) in entries.iter().enumerate() {
            if let Err(e) = self.dataplane.insert_flow(key, action) {
                if !new {
                    // An expiry update: the entries stay with their old expiry.
                    log::warn!(
                        "fast path: cannot refresh channel {:#06x}: {e}",
                        flow.channel
                    );
                    return;
                }
                // Half a channel in the kernel is worse than none: take back what went in.
                for (key, _) in &entries[..i] {
                    let _ = self.dataplane.remove_flow(key);
                }
                self.free.extend(channel.stats);
                return self.left_out(&flow, &e.to_string());
            }
        }
        self.channels.insert(flow, (channel, expires_ns));
        self.by_path.insert((flow.relayed, flow.peer), flow);
        self.pair(&flow);
    }

    /// When `flow`'s peer is another channel's relayed address and that channel's peer is
    /// `flow`'s (two clients of this relay talking: relay/relay), both clients' entries
    /// send straight to the other client, until the earlier of the two expiries.
    fn pair(&mut self, flow: &ChannelFlow) {
        let Some(partner) = self.by_path.get(&(flow.peer, flow.relayed)) else {
            return;
        };
        let (Some((a, a_expires)), Some((b, b_expires))) =
            (self.channels.get(flow), self.channels.get(partner))
        else {
            return;
        };
        let expires_ns = (*a_expires).min(*b_expires);
        for (from, to) in [(a, b), (b, a)] {
            if let Some((key, action)) = from.hairpin(to, expires_ns) {
                // On failure the plain entry stays: the hairpin goes through userspace.
                if let Err(e) = self.dataplane.insert_flow(&key, &action) {
                    log::warn!(
                        "fast path: cannot pair channel {:#06x} of {} with {}: {e}",
                        from.flow.channel,
                        from.flow.client,
                        to.flow.client
                    );
                }
            }
        }
    }

    pub(crate) fn down(&mut self, flow: &ChannelFlow) {
        let Some((channel, _)) = self.channels.remove(flow) else {
            return;
        };
        self.by_path.remove(&(flow.relayed, flow.peer));
        self.log_usage(&channel);
        if let Some(entries) = channel.entries(0) {
            for (key, _) in &entries {
                if let Err(e) = self.dataplane.remove_flow(key) {
                    log::warn!(
                        "fast path: cannot remove channel {:#06x} of {}: {e}",
                        flow.channel,
                        flow.client
                    );
                }
            }
        }
        for slot in channel.stats {
            if let Ok(s) = self.dataplane.flow_stats(slot) {
                self.retire(channel.policers[1], s.packets);
            }
        }
        self.free.extend(channel.stats);
        // The partner's client entry was a hairpin through this channel: plain again.
        if let Some((partner, expires_ns)) = self
            .by_path
            .get(&(flow.peer, flow.relayed))
            .and_then(|p| self.channels.get(p))
            .copied()
        {
            for (key, action) in partner.entries(expires_ns).into_iter().flatten() {
                if let Err(e) = self.dataplane.insert_flow(&key, &action) {
                    log::warn!(
                        "fast path: cannot unpair channel {:#06x}: {e}",
                        partner.flow.channel
                    );
                }
            }
        }
    }

    fn retire(&mut self, tenant: u32, packets: u64) {
        add_to_tenant(&mut self.retired, tenant, packets);
    }

    /// Packets the kernel forwarded for each tenant (by policer slot): what its installed
    /// channels and room routes counted, and what removed ones had. A walk of every
    /// installed entry's counters (a system call each): once a second at most.
    pub(crate) fn tenant_forwarded(&self) -> HashMap<u32, u64> {
        let mut sums = self.retired.clone();
        for (channel, _) in self.channels.values() {
            for slot in channel.stats {
                if let Ok(s) = self.dataplane.flow_stats(slot) {
                    add_to_tenant(&mut sums, channel.policers[1], s.packets);
                }
            }
        }
        for (route, entries) in &self.room_routes {
            let tenant = self.route_tenants.get(route).copied().unwrap_or(0);
            for (_, slot) in entries {
                if let Ok(s) = self.dataplane.route_stats(*slot) {
                    add_to_tenant(&mut sums, tenant, s.packets);
                }
            }
        }
        sums
    }

    /// Usage, as coturn logs it when a session ends: what the kernel relayed for the channel
    /// (what userspace relayed is in the data path's counters).
    fn log_usage(&self, channel: &KernelChannel) {
        let flow = &channel.flow;
        if let (Ok(to_peer), Ok(to_client)) = (
            self.dataplane.flow_stats(channel.stats[0]),
            self.dataplane.flow_stats(channel.stats[1]),
        ) {
            log::info!(
                "usage: channel {:#06x} of {} to {}: XDP relayed {} packets ({} bytes) to the peer, {} ({} bytes) to the client",
                flow.channel,
                flow.client,
                flow.peer,
                to_peer.packets,
                to_peer.bytes,
                to_client.packets,
                to_client.bytes
            );
        }
    }

    /// Two counter slots, zeroed: they may hold counts of an earlier flow, removed since or
    /// left by an adopted data plane.
    fn take_stats(&mut self) -> Option<[u32; 2]> {
        if self.free.len() < 2 {
            return None;
        }
        let stats = [self.free.pop()?, self.free.pop()?];
        for slot in stats {
            if let Err(e) = self.dataplane.reset_flow_stats(slot) {
                log::warn!("fast path: cannot reset counters {slot}: {e}");
            }
        }
        Some(stats)
    }

    /// Counts and logs (the first, then every 1000th) a channel left to userspace: slower,
    /// not lost.
    fn left_out(&mut self, flow: &ChannelFlow, why: &str) {
        if self.not_installed.is_multiple_of(1000) {
            log::warn!(
                "fast path: channel {:#06x} of {} stays in userspace ({why}); {} so far",
                flow.channel,
                flow.client,
                self.not_installed + 1
            );
        }
        self.not_installed += 1;
    }

    /// A relayed address whose peers' datagrams the program is to check.
    pub(crate) fn relay_up(&mut self, relayed: SocketAddr) {
        match self.dataplane.insert_relayed(relayed) {
            Ok(()) => {
                self.relayed.insert(relayed);
            }
            Err(e) => log::warn!("fast path: {relayed} checked in userspace only: {e}"),
        }
    }

    pub(crate) fn relay_down(&mut self, relayed: SocketAddr) {
        self.unguarded.remove(&relayed);
        if self.relayed.remove(&relayed) {
            if let Err(e) = self.dataplane.remove_relayed(relayed) {
                log::warn!("fast path: cannot remove relayed address {relayed}: {e}");
            }
        }
    }

    pub(crate) fn permit(&mut self, relayed: SocketAddr, peer: IpAddr, expires_ns: u64, own: bool) {
        if self.unguarded.contains(&relayed) {
            return;
        }
        match self
            .dataplane
            .insert_permission(relayed, peer, expires_ns, own)
        {
            Ok(()) => {
                self.permissions.insert((relayed, peer));
            }
            Err(e) => {
                // Fail safe: without this permission the program would drop a permitted
                // peer; unguarded, the address's datagrams go up to be checked there.
                log::warn!(
                    "fast path: cannot install a permission of {relayed} ({e}): its peers are \
                     checked in userspace"
                );
                self.permissions_failed += 1;
                self.unguarded.insert(relayed);
                if self.relayed.remove(&relayed) {
                    let _ = self.dataplane.remove_relayed(relayed);
                }
            }
        }
    }

    pub(crate) fn unpermit(&mut self, relayed: SocketAddr, peer: IpAddr) {
        if self.permissions.remove(&(relayed, peer)) {
            if let Err(e) = self.dataplane.remove_permission(relayed, peer) {
                log::warn!("fast path: cannot remove a permission of {relayed}: {e}");
            }
        }
    }

    /// Removes the entries of adopted maps that the daemon's state does not announce
    /// (what ended while no daemon ran): called once the restored allocations have
    /// announced theirs. Returns how many went.
    pub(crate) fn reconcile(&mut self) -> usize {
        let mut removed = self.reconcile_rooms();
        removed += self.reconcile_turn();
        removed
    }

    /// Room routes of an adopted data plane that the room core did not announce.
    fn reconcile_rooms(&mut self) -> usize {
        let wanted: HashSet<RouteKey> = self
            .room_routes
            .values()
            .flatten()
            .map(|(key, _)| *key)
            .collect();
        let mut removed = 0;
        match self.dataplane.room_route_keys() {
            Ok(keys) => {
                for key in keys.iter().filter(|k| !wanted.contains(k)) {
                    match self.dataplane.remove_room_route(key) {
                        Ok(()) => removed += 1,
                        Err(e) => log::warn!("fast path: cannot remove a stale room route: {e}"),
                    }
                }
            }
            Err(e) => log::warn!("fast path: cannot list the adopted room routes: {e}"),
        }
        // The adopted routes are gone or replaced (their keys now name new slots).
        self.free_slots.extend(self.adopted_slots.drain(..));
        removed
    }

    fn reconcile_turn(&mut self) -> usize {
        let wanted: HashSet<_> = self
            .channels
            .iter()
            .filter_map(|(_, (channel, _))| channel.entries(0))
            .flat_map(|entries| entries.map(|(key, _)| key))
            .collect();
        let mut removed = 0;
        match self.dataplane.flow_keys() {
            Ok(keys) => {
                for key in keys.iter().filter(|k| !wanted.contains(k)) {
                    match self.dataplane.remove_flow(key) {
                        Ok(()) => removed += 1,
                        Err(e) => log::warn!("fast path: cannot remove a stale flow: {e}"),
                    }
                }
            }
            Err(e) => log::warn!("fast path: cannot list the adopted flows: {e}"),
        }
        let (relayed, permissions) = match self.dataplane.relayed_and_permission_keys() {
            Ok(keys) => keys,
            Err(e) => {
                log::warn!("fast path: cannot list the adopted permissions: {e}");
                return removed;
            }
        };
        let wanted: HashSet<_> = self
            .relayed
            .iter()
            .map(|r| crate::dataplane::relayed_key(*r))
            .collect();
        for key in relayed.iter().filter(|k| !wanted.contains(k)) {
            if self.dataplane.remove_relayed_key(key).is_ok() {
                removed += 1;
            }
        }
        let wanted: HashSet<_> = self
            .permissions
            .iter()
            .map(|(r, p)| crate::dataplane::permission_key(*r, *p))
            .collect();
        for key in permissions.iter().filter(|k| !wanted.contains(k)) {
            if self.dataplane.remove_permission_key(key).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// The room routes' bookkeeping against a real data plane (loaded, not attached: needs
/// root, as the packet tests do).
/// Adds `packets` to tenant slot `tenant`'s sum (slot 0: no tenant, not summed).
fn add_to_tenant(sums: &mut HashMap<u32, u64>, tenant: u32, packets: u64) {
    if tenant != 0 {
        *sums.entry(tenant).or_default() += packets;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use relay_common::room::{MAX_ROOM_ROUTES, MAX_ROUTE_DESTINATIONS};

    use super::Kernel;
    use crate::{
        dataplane::Dataplane,
        policers::RoutePolicers,
        room::{Destination, Route, Source},
    };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const fn source(local: SocketAddr, remote: SocketAddr) -> Source {
        Source { local, remote }
    }

    fn destinations(n: u32) -> Vec<Destination> {
        (0..n)
            .map(|i| Destination {
                local: addr("10.0.0.1:40002"),
                remote: SocketAddr::new("10.0.0.9".parse().unwrap(), 10_000 + i as u16),
            })
            .collect()
    }

    /// A route with `media` RTP and `reports` RTCP destinations.
    fn route(media: u32, reports: u32) -> Route {
        Route {
            rtp: destinations(media),
            rtcp: destinations(reports),
        }
    }

    #[test]
    fn room_routes_are_replaced_removed_reconciled_and_left_up_when_they_do_not_fit() {
        let mut kernel = Kernel::new(Dataplane::load().unwrap());
        let from = source(addr("10.0.0.1:40000"), addr("10.0.0.7:5004"));
        let installed = |k: &Kernel| k.dataplane.room_route_keys().unwrap().len();

        // RTP and RTCP: two entries.
        kernel.room_route(from, 7, Some(&route(1, 1)), RoutePolicers::default());
        assert_eq!(installed(&kernel), 2);
        // A replacement removes what it replaces.
        kernel.room_route(from, 7, Some(&route(1, 0)), RoutePolicers::default());
        assert_eq!(installed(&kernel), 1);
        // No TC program attached: several destinations stay in userspace; so do more than
        // the kernel holds, and families that differ.
        kernel.room_route(from, 8, Some(&route(2, 0)), RoutePolicers::default());
        kernel.room_route(
            from,
            9,
            Some(&route(MAX_ROUTE_DESTINATIONS + 1, 0)),
            RoutePolicers::default(),
        );
        let v6 = Route {
            rtp: vec![Destination {
                local: addr("10.0.0.1:40002"),
                remote: addr("[fd00::9]:6000"),
            }],
            rtcp: Vec::new(),
        };
        kernel.room_route(from, 10, Some(&v6), RoutePolicers::default());
        assert_eq!(kernel.routes_not_installed, 3);
        assert_eq!(installed(&kernel), 1);

        // Slots run out before the map does: the rest stays in userspace, counted.
        for ssrc in 100..100 + MAX_ROOM_ROUTES {
            kernel.room_route(from, ssrc, Some(&route(1, 0)), RoutePolicers::default());
        }
        assert_eq!(installed(&kernel), MAX_ROOM_ROUTES as usize);
        assert_eq!(kernel.routes_not_installed, 4);
        // Removal frees the slot for the next route.
        kernel.room_route(from, 7, None, RoutePolicers::default());
        kernel.room_route(from, 11, Some(&route(1, 0)), RoutePolicers::default());
        assert_eq!(installed(&kernel), MAX_ROOM_ROUTES as usize);
        assert_eq!(kernel.routes_not_installed, 4);

        // An adopted data plane: its routes keep their slots until reconciled (a route
        // announced meanwhile takes a free one, never one an adopted route still sends
        // by), and those the core did not announce go then.
        for ssrc in 100..100 + MAX_ROOM_ROUTES - 10 {
            kernel.room_route(from, ssrc, None, RoutePolicers::default());
        }
        assert_eq!(installed(&kernel), 10);
        let mut successor = Kernel::new(kernel.dataplane);
        successor.room_route(from, 11, Some(&route(1, 0)), RoutePolicers::default());
        let mut slots = successor.dataplane.room_route_slots().unwrap();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 10, "a slot shared: {slots:?}");
        assert_eq!(successor.reconcile(), 9);
        assert_eq!(successor.free_slots.len(), MAX_ROOM_ROUTES as usize - 1);
        assert_eq!(installed(&successor), 1);
    }
}
