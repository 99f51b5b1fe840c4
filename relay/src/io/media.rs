//! The data path's copy of the room core's routes: RTP and RTCP from a publisher's address
//! to the relay's port, by SSRC, to every subscriber, each from its own port, bytes
//! untouched (SRTP stays valid). What misses goes up to the core, which forwards it too,
//! so a route being installed loses nothing.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use super::datapath::{Io, SocketId};
use crate::{
    clock::monotonic_now_ns,
    policers::{Policers, RoutePolicers},
    room::{Route, Source},
    rtp::{self, Packet},
};

/// What one route carried, shared with the control task (for the API's views and the
/// core's idle timers) while the data path counts.
#[derive(Debug, Default)]
pub(crate) struct RouteCounts {
    pub(crate) packets: AtomicU64,
    pub(crate) bytes: AtomicU64,
    /// Dropped over the endpoint's, the room's or the tenant's rate limit.
    pub(crate) dropped: AtomicU64,
    /// CLOCK_MONOTONIC ns of the last packet forwarded (0: none yet).
    pub(crate) last_ns: AtomicU64,
}

/// From the control task's room plane to the data path.
#[derive(Debug)]
pub(crate) enum RoomCommand {
    /// A room endpoint's socket.
    AddEndpoint {
        addr: SocketAddr,
        socket: UdpSocket,
    },
    RemoveEndpoint {
        addr: SocketAddr,
    },
    /// A room route (see [`crate::room::Output::Route`]), spending `policers`, counted in
    /// `counts`.
    Route {
        from: Source,
        ssrc: u32,
        route: Option<Route>,
        policers: RoutePolicers,
        counts: Arc<RouteCounts>,
    },
    SendFromEndpoint {
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    },
}

struct Entry {
    rtp: Vec<(SocketId, SocketAddr)>,
    rtcp: Vec<(SocketId, SocketAddr)>,
    policers: RoutePolicers,
    counts: Arc<RouteCounts>,
}

#[derive(Default)]
pub(crate) struct Media {
    /// Endpoint ports: their socket ids.
    endpoints: HashMap<SocketAddr, SocketId>,
    /// (endpoint port, publisher's address) -> SSRC -> route.
    routes: HashMap<(SocketAddr, SocketAddr), HashMap<u32, Entry>>,
}

impl Media {
    pub(crate) fn add_endpoint(&mut self, addr: SocketAddr, id: SocketId) {
        self.endpoints.insert(addr, id);
    }

    pub(crate) fn remove_endpoint(&mut self, addr: SocketAddr) -> Option<SocketId> {
        self.routes.retain(|(local, _), _| *local != addr);
        self.endpoints.remove(&addr)
    }

    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Option<SocketId> {
        self.endpoints.get(&addr).copied()
    }

    /// Installs (or with `None` removes) the route of `ssrc` from `from`.
    pub(crate) fn route(
        &mut self,
        from: Source,
        ssrc: u32,
        route: Option<Route>,
        policers: RoutePolicers,
        counts: Arc<RouteCounts>,
    ) {
        let key = (from.local, from.remote);
        let Some(route) = route else {
            if let Some(by_ssrc) = self.routes.get_mut(&key) {
                by_ssrc.remove(&ssrc);
                if by_ssrc.is_empty() {
                    self.routes.remove(&key);
                }
            }
            return;
        };
        // Destinations whose port is gone are skipped: the core removes their routes next.
        let resolve = |to: &[crate::room::Destination]| {
            to.iter()
                .filter_map(|d| Some((*self.endpoints.get(&d.local)?, d.remote)))
                .collect()
        };
        let entry = Entry {
            rtp: resolve(&route.rtp),
            rtcp: resolve(&route.rtcp),
            policers,
            counts,
        };
        self.routes.entry(key).or_default().insert(ssrc, entry);
    }

    /// Forwards a datagram that arrived on endpoint port `local` from `remote` if a route
    /// has it; `false` sends it up. `Err(())`: dropped over a rate limit.
    pub(crate) fn forward(
        &self,
        io: &mut impl Io,
        policers: &Policers,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) -> Result<bool, ()> {
        let (ssrc, to_rtcp) = match rtp::classify(data) {
            Some(Packet::Rtp { ssrc, .. }) => (ssrc, false),
            Some(Packet::Rtcp { sender_ssrc }) => (sender_ssrc, true),
            None => return Ok(false),
        };
        let Some(entry) = self
            .routes
            .get(&(local, remote))
            .and_then(|by_ssrc| by_ssrc.get(&ssrc))
        else {
            return Ok(false);
        };
        let bytes = data.len() as u64;
        let now = monotonic_now_ns();
        if entry.policers.any() && !policers.admit_route(entry.policers, now, bytes) {
            entry.counts.dropped.fetch_add(1, Relaxed);
            return Err(());
        }
        let to = if to_rtcp { &entry.rtcp } else { &entry.rtp };
        for (id, remote) in to {
            io.send(*id, *remote, data);
        }
        entry.counts.packets.fetch_add(1, Relaxed);
        entry.counts.bytes.fetch_add(bytes, Relaxed);
        entry.counts.last_ns.store(now, Relaxed);
        Ok(true)
    }
}
