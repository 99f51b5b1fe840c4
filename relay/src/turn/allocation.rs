//! One allocation's state (RFC 8656 sections 2.2, 9, 12): its relayed addresses, lifetime,
//! permissions and channel bindings.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    server::{ChannelFlow, ClientTuple},
    snapshot::{SavedAllocation, SavedChannel, SavedCooldown, SavedPermission},
};
use crate::stun::TransactionId;

/// RFC 8656 section 9: permissions last 300 s.
pub(super) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 section 12: channel bindings last 600 s.
pub(super) const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 section 12: after a binding expires, neither its number nor its peer may be
/// bound differently for 5 minutes.
pub(super) const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

/// A channel number and its peer: one fast-path flow.
pub(super) type Flow = (u16, SocketAddr);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Channel {
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
}

/// A channel binding that expired, and until when it still blocks other bindings.
#[derive(Clone, Copy, Debug)]
struct Cooldown {
    number: u16,
    peer: SocketAddr,
    until: Instant,
}

/// Why a ChannelBind cannot be granted (answered 400, RFC 8656 section 11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BindConflict {
    NumberTaken,
    PeerTaken,
}

#[derive(Debug)]
pub(super) struct Allocation {
    pub(super) tuple: ClientTuple,
    pub(super) username: String,
    /// One relayed address per family (two for a dual allocation).
    pub(super) relayed: Vec<SocketAddr>,
    pub(super) expires: Instant,
    /// The Allocate that created it and the response sent, for retransmissions.
    pub(super) created_by: TransactionId,
    pub(super) success_response: Vec<u8>,
    /// Its relayed sockets were bound with DF; bound again so after a restart.
    pub(super) dont_fragment: bool,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    channel_by_peer: HashMap<SocketAddr, u16>,
    cooldowns: Vec<Cooldown>,
    /// Flows installed in the fast path, with their peer and the expiry announced: kept
    /// here, not looked up, so a flow can be removed after its channel and reservation are
    /// long gone.
    installed: HashMap<u16, (SocketAddr, Instant)>,
    /// The permissions as last announced to the data path, with their expiry.
    announced: HashMap<IpAddr, Instant>,
}

impl Allocation {
    pub(super) fn new(
        tuple: ClientTuple,
        username: String,
        relayed: Vec<SocketAddr>,
        expires: Instant,
        created_by: TransactionId,
        success_response: Vec<u8>,
        dont_fragment: bool,
    ) -> Self {
        Self {
            tuple,
            username,
            relayed,
            expires,
            created_by,
            success_response,
            dont_fragment,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            cooldowns: Vec::new(),
            installed: HashMap::new(),
            announced: HashMap::new(),
        }
    }

    /// The relayed address that talks to peers of `peer`'s family.
    pub(super) fn relayed_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.relayed
            .iter()
            .copied()
            .find(|r| r.is_ipv4() == peer.is_ipv4())
    }

    /// The fast-path flow of `channel` to `peer`: this allocation's client and the relayed
    /// address of the peer's family.
    pub(super) fn channel_flow(&self, channel: u16, peer: SocketAddr) -> Option<ChannelFlow> {
        let relayed = self.relayed_for(peer)?;
        Some(ChannelFlow {
            client: self.tuple,
            relayed,
            channel,
            peer,
        })
    }

    pub(super) fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions.get(&peer).is_some_and(|e| *e > now)
    }

    /// Installs or refreshes the permission for `peer`; returns its expiry.
    /// Permissions not yet expired (expired ones may wait for the next timer).
    pub(super) fn permissions_live(&self, now: Instant) -> usize {
        self.permissions.values().filter(|e| **e > now).count()
    }

    pub(super) fn channels_live(&self, now: Instant) -> usize {
        self.channels.values().filter(|c| c.expires > now).count()
    }

    pub(super) fn permit(&mut self, peer: IpAddr, now: Instant) -> Instant {
        let expires = now + PERMISSION_LIFETIME;
        self.permissions.insert(peer, expires);
        expires
    }

    pub(super) fn channel(&self, number: u16, now: Instant) -> Option<Channel> {
        self.channels
            .get(&number)
            .copied()
            .filter(|c| c.expires > now)
    }

    pub(super) fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let number = *self.channel_by_peer.get(&peer)?;
        self.channel(number, now).map(|_| number)
    }

    /// Checks that `number` may be bound (or re-bound) to `peer`.
    pub(super) fn can_bind(
        &self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), BindConflict> {
        if let Some(c) = self.channel(number, now) {
            if c.peer != peer {
                return Err(BindConflict::NumberTaken);
            }
        }
        if self.channel_to(peer, now).is_some_and(|n| n != number) {
            return Err(BindConflict::PeerTaken);
        }
        for c in self.cooldowns.iter().filter(|c| c.until > now) {
            if c.number == number && c.peer != peer {
                return Err(BindConflict::NumberTaken);
            }
            if c.peer == peer && c.number != number {
                return Err(BindConflict::PeerTaken);
            }
        }
        Ok(())
    }

    /// Binds or refreshes `number` to `peer`; returns its expiry.
    pub(super) fn bind(&mut self, number: u16, peer: SocketAddr, now: Instant) -> Instant {
        let expires = now + CHANNEL_LIFETIME;
        self.bind_until(number, peer, expires);
        expires
    }

    fn bind_until(&mut self, number: u16, peer: SocketAddr, expires: Instant) {
        self.channels.insert(number, Channel { peer, expires });
        self.channel_by_peer.insert(peer, number);
    }

    /// Drops permissions and channels that expired by `now`; returns whether any did.
    pub(super) fn expire(&mut self, now: Instant) -> bool {
        let before = (
            self.permissions.len(),
            self.channels.len(),
            self.cooldowns.len(),
        );
        self.permissions.retain(|_, e| *e > now);
        let expired: Vec<(u16, Channel)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires <= now)
            .map(|(n, c)| (*n, *c))
            .collect();
        for (number, c) in expired {
            self.channels.remove(&number);
            self.channel_by_peer.remove(&c.peer);
            self.cooldowns.push(Cooldown {
                number,
                peer: c.peer,
                until: c.expires + CHANNEL_COOLDOWN,
            });
        }
        self.cooldowns.retain(|c| c.until > now);
        before
            != (
                self.permissions.len(),
                self.channels.len(),
                self.cooldowns.len(),
            )
    }

    /// The earliest instant at which something of this allocation expires.
    pub(super) fn next_expiry(&self) -> Instant {
        self.permissions
            .values()
            .chain(self.channels.values().map(|c| &c.expires))
            .chain(self.cooldowns.iter().map(|c| &c.until))
            .copied()
            .fold(self.expires, Instant::min)
    }

    /// Channels that may use the fast path now (bound, their peer permitted and
    /// `reachable`: see `server::reachable`), each with
    /// the instant its channel, permission or allocation ends, compared with what is
    /// installed: returns the flows to install or whose expiry moved, and the flows to
    /// remove, and records the new set.
    pub(super) fn sync_flows(
        &mut self,
        now: Instant,
        reachable: impl Fn(SocketAddr) -> bool,
    ) -> (Vec<(Flow, Instant)>, Vec<Flow>) {
        // Compared in place: no map is built per request.
        let live = |number: &u16| {
            let c = self.channels.get(number)?;
            let permission = *self.permissions.get(&c.peer.ip())?;
            (c.expires > now && permission > now && reachable(c.peer))
                .then(|| (c.peer, c.expires.min(permission).min(self.expires)))
        };
        let up: Vec<(Flow, Instant)> = self
            .channels
            .keys()
            .filter_map(|n| live(n).map(|v| (*n, v)))
            .filter(|(n, v)| self.installed.get(n) != Some(v))
            .map(|(n, (peer, expires))| ((n, peer), expires))
            .collect();
        let down: Vec<Flow> = self
            .installed
            .iter()
            .filter(|(n, (p, _))| live(n).map(|(lp, _)| lp) != Some(*p))
            .map(|(n, (p, _))| (*n, *p))
            .collect();
        for (n, _) in &down {
            self.installed.remove(n);
        }
        for ((n, peer), expires) in &up {
            self.installed.insert(*n, (*peer, *expires));
        }
        (up, down)
    }

    /// What the data path must learn of the permissions since the last call: permissions
    /// new or refreshed (with their expiry), and permissions gone. The data path drops a
    /// peer's datagram without one before it spends any budget (RFC 8656 section 9).
    pub(super) fn sync_permissions(
        &mut self,
        now: Instant,
    ) -> (Vec<(IpAddr, Instant)>, Vec<IpAddr>) {
        let up: Vec<_> = self
            .permissions
            .iter()
            .filter(|(ip, e)| **e > now && self.announced.get(ip) != Some(e))
            .map(|(ip, e)| (*ip, *e))
            .collect();
        let down: Vec<_> = self
            .announced
            .keys()
            .filter(|ip| self.permissions.get(ip).is_none_or(|e| *e <= now))
            .copied()
            .collect();
        for ip in &down {
            self.announced.remove(ip);
        }
        self.announced.extend(up.iter().copied());
        (up, down)
    }

    /// The peers of the channels bound, live or not.
    pub(super) fn channel_peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.channels.values().map(|c| c.peer)
    }

    /// The permissions the data path holds, to take back when the allocation ends.
    pub(super) fn announced_permissions(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.announced.keys().copied()
    }

    pub(super) fn installed_flows(&self) -> Vec<Flow> {
        self.installed.iter().map(|(n, (p, _))| (*n, *p)).collect()
    }

    /// What is live at `now`, with times as Unix milliseconds (`unix_ms`).
    pub(super) fn save(&self, now: Instant, unix_ms: impl Fn(Instant) -> u64) -> SavedAllocation {
        let mut permissions: Vec<SavedPermission> = self
            .permissions
            .iter()
            .filter(|(_, e)| **e > now)
            .map(|(peer, e)| SavedPermission {
                peer: *peer,
                expires_unix_ms: unix_ms(*e),
            })
            .collect();
        permissions.sort_unstable_by_key(|p| p.peer);
        let mut channels: Vec<SavedChannel> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires > now)
            .map(|(number, c)| SavedChannel {
                number: *number,
                peer: c.peer,
                expires_unix_ms: unix_ms(c.expires),
            })
            .collect();
        channels.sort_unstable_by_key(|c| c.number);
        // Channels that expired since the last timer are cooldowns already.
        let mut cooldowns: Vec<SavedCooldown> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires <= now && c.expires + CHANNEL_COOLDOWN > now)
            .map(|(number, c)| (*number, c.peer, c.expires + CHANNEL_COOLDOWN))
            .chain(
                self.cooldowns
                    .iter()
                    .filter(|c| c.until > now)
                    .map(|c| (c.number, c.peer, c.until)),
            )
            .map(|(number, peer, until)| SavedCooldown {
                number,
                peer,
                until_unix_ms: unix_ms(until),
            })
            .collect();
        cooldowns.sort_unstable_by_key(|c| (c.number, c.peer));
        SavedAllocation {
            transport: self.tuple.transport,
            client: self.tuple.client,
            server: self.tuple.server,
            username: self.username.clone(),
            relayed: self.relayed.clone(),
            expires_unix_ms: unix_ms(self.expires),
            dont_fragment: self.dont_fragment,
            permissions,
            channels,
            cooldowns,
            created_by: self.created_by,
            success_response: self.success_response.clone(),
        }
    }

    /// Rebuilds a saved allocation at `now` (Unix time `unix_ms_now`), without what expired
    /// meanwhile; `None` when the allocation itself did. `max_lifetime` caps its lifetime,
    /// as the RFC's lifetimes cap the rest: a wall clock stepped back since the snapshot
    /// must not make anything outlive what a client could have asked for.
    pub(super) fn restore(
        saved: &SavedAllocation,
        now: Instant,
        unix_ms_now: u64,
        max_lifetime: Duration,
    ) -> Option<Self> {
        // Only times after `unix_ms_now` are converted: an `Instant` before this process
        // (or this boot) may not exist.
        let at = |unix_ms: u64, cap: Duration| {
            (unix_ms > unix_ms_now).then(|| {
                now.checked_add(Duration::from_millis(unix_ms - unix_ms_now))
                    .map_or(now + cap, |t| t.min(now + cap))
            })
        };
        let expires = at(saved.expires_unix_ms, max_lifetime)?;
        let tuple = ClientTuple {
            transport: saved.transport,
            client: saved.client,
            server: saved.server,
        };
        let mut alloc = Self::new(
            tuple,
            saved.username.clone(),
            saved.relayed.clone(),
            expires,
            saved.created_by,
            saved.success_response.clone(),
            saved.dont_fragment,
        );
        for p in &saved.permissions {
            if let Some(e) = at(p.expires_unix_ms, PERMISSION_LIFETIME) {
                alloc.permissions.insert(p.peer, e);
            }
        }
        for c in &saved.cooldowns {
            if let Some(until) = at(c.until_unix_ms, CHANNEL_LIFETIME + CHANNEL_COOLDOWN) {
                alloc.cooldowns.push(Cooldown {
                    number: c.number,
                    peer: c.peer,
                    until,
                });
            }
        }
        for c in &saved.channels {
            if let Some(expires) = at(c.expires_unix_ms, CHANNEL_LIFETIME) {
                alloc.bind_until(c.number, c.peer, expires);
            } else if let Some(until) = at(
                c.expires_unix_ms
                    .saturating_add(CHANNEL_COOLDOWN.as_millis() as u64),
                CHANNEL_COOLDOWN,
            ) {
                // RFC 8656 section 12: it expired while the relay was down, and still blocks
                // its number and peer for 5 minutes after.
                alloc.cooldowns.push(Cooldown {
                    number: c.number,
                    peer: c.peer,
                    until,
                });
            }
        }
        Some(alloc)
    }
}
