//! The UDP data path, whatever the backend: which socket is what, the userspace channel-flow
//! table, the rate limits (the same policers as the XDP program's), and what goes up to the
//! control task.
//!
//! Like the XDP program in front of it, it forwards ChannelData of installed flows and room
//! media of installed routes (`media.rs`) on its own and hands everything else to the TURN
//! server or the room core, which own the truth: a packet that misses a table is still
//! relayed, by them.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
};

use tokio::sync::mpsc::{Sender, error::TrySendError};

use super::media::{Media, RoomCommand};
use crate::{
    clock::monotonic_now_ns,
    policers::Policers,
    stun::{ChannelData, Kind, classify},
    turn::{ChannelFlow, ClientTuple, Transport},
};

pub(crate) type SocketId = usize;

/// From the control task to the data path.
#[derive(Debug)]
pub(crate) enum Command {
    SendToClient {
        listener: SocketAddr,
        client: SocketAddr,
        data: Vec<u8>,
    },
    SendToPeer {
        relayed: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// A relayed socket, spending the budgets of policer slots `[allocation, tenant]`.
    AddRelay {
        addr: SocketAddr,
        socket: UdpSocket,
        policers: [u32; 2],
    },
    RemoveRelay {
        addr: SocketAddr,
    },
    /// A channel to forward both ways until `expires_ns` (monotonic), as the kernel's entry
    /// for it: past that, its datagrams go to the server, which knows whether it lives on.
    FlowUp {
        flow: ChannelFlow,
        expires_ns: u64,
    },
    FlowDown(ChannelFlow),
    /// `peer` may send to `relayed` until `expires_ns` (monotonic); `own`: it is the relay
    /// host's own address, where only live relayed addresses pass (port-exact).
    Permit {
        relayed: SocketAddr,
        peer: IpAddr,
        expires_ns: u64,
        own: bool,
    },
    Unpermit {
        relayed: SocketAddr,
        peer: IpAddr,
    },
    /// The room plane's (see `media.rs`).
    Room(RoomCommand),
    Stop,
}

/// From the data path (and the stream listeners) to the control task.
#[derive(Debug)]
pub(crate) enum Event {
    Client {
        tuple: ClientTuple,
        data: Vec<u8>,
    },
    Peer {
        relayed: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    StreamOpen {
        tuple: ClientTuple,
        writer: Sender<Vec<u8>>,
    },
    StreamClosed {
        tuple: ClientTuple,
    },
    /// A datagram to a room endpoint's port that no route forwarded.
    Media {
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    },
}

/// What a backend does for the data path.
pub(crate) trait Io {
    /// Starts receiving on `socket`, known from now on as `id`.
    fn add(&mut self, id: SocketId, socket: UdpSocket);
    /// Stops receiving on `id` and closes it.
    fn remove(&mut self, id: SocketId);
    /// Queues `data` to `to` from socket `id` (sent at the end of the batch).
    fn send(&mut self, id: SocketId, to: SocketAddr, data: &[u8]);
}

#[derive(Clone, Copy, Debug)]
enum Role {
    Listener(SocketAddr),
    Relay(SocketAddr),
    Endpoint(SocketAddr),
}

struct Relay {
    id: SocketId,
    /// Policer slots `[allocation, tenant]` (0: none).
    policers: [u32; 2],
    /// The allocation's permissions: peer IP -> (expiry, monotonic ns; the host's own?).
    permissions: HashMap<IpAddr, (u64, bool)>,
}

impl Relay {
    /// Whether `bytes` relayed through this socket at `now_ns` fit its budgets.
    fn admits(&self, policers: &Policers, now_ns: u64, bytes: usize) -> bool {
        self.policers == [0, 0] || policers.admit(self.policers, now_ns, bytes as u64)
    }
}

/// Counters of the data path, logged when the relay stops (and read by tests).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    /// ChannelData forwarded by the flow table, each way.
    pub(crate) fast_to_peer: u64,
    pub(crate) fast_to_client: u64,
    /// Datagrams handed to the TURN server.
    pub(crate) up: u64,
    /// Relayed datagrams dropped over an allocation's `--max-bps` or its tenant's limit.
    pub(crate) over_limit: u64,
    /// Peer datagrams dropped without a permission (or from a port of the relay host's own
    /// that is not a relayed address), before they spent any budget or reached the server.
    pub(crate) unpermitted: u64,
    /// Datagrams dropped because the control task's queue was full.
    pub(crate) control_full: u64,
    /// Sends the kernel refused (a full socket buffer, an ICMP error); filled by the backend.
    pub(crate) send_errors: u64,
    /// Datagrams larger than a receive buffer, dropped; filled by either backend.
    pub(crate) truncated: u64,
    /// Room packets forwarded by the route table (each to all its subscribers).
    pub(crate) media_forwarded: u64,
}

pub(crate) struct Datapath {
    roles: Vec<Option<Role>>,
    free_ids: Vec<SocketId>,
    listeners: HashMap<SocketAddr, SocketId>,
    relays: HashMap<SocketAddr, Relay>,
    /// Channels by (listener, client, channel): (relayed, peer, expiry in monotonic ns).
    by_client: HashMap<(SocketAddr, SocketAddr, u16), (SocketAddr, SocketAddr, u64)>,
    /// Channels by (relayed, peer): (listener, client, channel, expiry in monotonic ns).
    by_peer: HashMap<(SocketAddr, SocketAddr), (SocketAddr, SocketAddr, u16, u64)>,
    media: Media,
    events: Sender<Event>,
    policers: Arc<Policers>,
    scratch: Vec<u8>,
    pub(crate) stats: Stats,
    /// Where [`Datapath::publish`] copies the counts, when metrics are served.
    pub(crate) live: Option<Arc<crate::metrics::Live>>,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} channel datagrams forwarded to peers and {} to clients by the flow table, {} handed \
             to the TURN server and the room core, {} room packets forwarded by the route table; \
             dropped: {} from peers without permission, {} over a rate limit, {} on a full \
             control queue, {} truncated; {} send errors",
            self.fast_to_peer,
            self.fast_to_client,
            self.up,
            self.media_forwarded,
            self.unpermitted,
            self.over_limit,
            self.control_full,
            self.truncated,
            self.send_errors
        )
    }
}

impl Datapath {
    pub(crate) fn new(events: Sender<Event>, policers: Arc<Policers>) -> Self {
        Self {
            roles: Vec::new(),
            free_ids: Vec::new(),
            listeners: HashMap::new(),
            relays: HashMap::new(),
            by_client: HashMap::new(),
            by_peer: HashMap::new(),
            media: Media::default(),
            events,
            policers,
            scratch: Vec::with_capacity(2048),
            stats: Stats::default(),
            live: None,
        }
    }

    /// Copies its counts where a metrics scrape reads them, with the backend's own
    /// `send_errors` and `truncated`: after each batch, a few stores.
    pub(crate) fn publish(&self, send_errors: u64, truncated: u64) {
        let Some(live) = &self.live else { return };
        let (s, l) = (&self.stats, &live.datapath);
        crate::metrics::store([
            (&l.channel_to_peer, s.fast_to_peer),
            (&l.channel_to_client, s.fast_to_client),
            (&l.room_forwarded, s.media_forwarded),
            (&l.handed_up, s.up),
            (&l.over_limit, s.over_limit),
            (&l.unpermitted, s.unpermitted),
            (&l.control_full, s.control_full),
            (&l.send_errors, send_errors),
            (&l.truncated, truncated),
        ]);
    }

    fn new_id(&mut self, role: Role) -> SocketId {
        if let Some(id) = self.free_ids.pop() {
            self.roles[id] = Some(role);
            id
        } else {
            self.roles.push(Some(role));
            self.roles.len() - 1
        }
    }

    pub(crate) fn add_listener(
        &mut self,
        io: &mut impl Io,
        socket: UdpSocket,
    ) -> std::io::Result<()> {
        let addr = socket.local_addr()?;
        let id = self.new_id(Role::Listener(addr));
        self.listeners.insert(addr, id);
        io.add(id, socket);
        Ok(())
    }

    /// Runs one command; returns false on `Stop`.
    pub(crate) fn on_command(&mut self, io: &mut impl Io, command: Command) -> bool {
        match command {
            Command::SendToClient {
                listener,
                client,
                data,
            } => {
                if let Some(id) = self.listeners.get(&listener) {
                    io.send(*id, client, &data);
                }
            }
            Command::SendToPeer {
                relayed,
                peer,
                data,
            } => {
                if let Some(relay) = self.relays.get(&relayed) {
                    if relay.admits(&self.policers, monotonic_now_ns(), data.len()) {
                        io.send(relay.id, peer, &data);
                    } else {
                        self.stats.over_limit += 1;
                    }
                }
            }
            Command::AddRelay {
                addr,
                socket,
                policers,
            } => {
                let id = self.new_id(Role::Relay(addr));
                self.relays.insert(
                    addr,
                    Relay {
                        id,
                        policers,
                        permissions: HashMap::new(),
                    },
                );
                io.add(id, socket);
            }
            Command::RemoveRelay { addr } => {
                if let Some(relay) = self.relays.remove(&addr) {
                    io.remove(relay.id);
                    self.roles[relay.id] = None;
                    self.free_ids.push(relay.id);
                }
            }
            Command::FlowUp {
                flow: f,
                expires_ns,
            } => {
                self.by_client.insert(
                    (f.client.server, f.client.client, f.channel),
                    (f.relayed, f.peer, expires_ns),
                );
                self.by_peer.insert(
                    (f.relayed, f.peer),
                    (f.client.server, f.client.client, f.channel, expires_ns),
                );
            }
            Command::FlowDown(f) => {
                self.by_client
                    .remove(&(f.client.server, f.client.client, f.channel));
                self.by_peer.remove(&(f.relayed, f.peer));
            }
            Command::Permit {
                relayed,
                peer,
                expires_ns,
                own,
            } => {
                if let Some(relay) = self.relays.get_mut(&relayed) {
                    relay.permissions.insert(peer, (expires_ns, own));
                }
            }
            Command::Unpermit { relayed, peer } => {
                if let Some(relay) = self.relays.get_mut(&relayed) {
                    relay.permissions.remove(&peer);
                }
            }
            Command::Room(c) => self.on_room_command(io, c),
            Command::Stop => return false,
        }
        true
    }

    /// The room plane's commands (see `media.rs`).
    fn on_room_command(&mut self, io: &mut impl Io, command: RoomCommand) {
        match command {
            RoomCommand::AddEndpoint { addr, socket } => {
                let id = self.new_id(Role::Endpoint(addr));
                self.media.add_endpoint(addr, id);
                io.add(id, socket);
            }
            RoomCommand::RemoveEndpoint { addr } => {
                if let Some(id) = self.media.remove_endpoint(addr) {
                    io.remove(id);
                    self.roles[id] = None;
                    self.free_ids.push(id);
                }
            }
            RoomCommand::Route {
                from,
                ssrc,
                route,
                policers,
                counts,
            } => self.media.route(from, ssrc, route, policers, counts),
            RoomCommand::SendFromEndpoint {
                local,
                remote,
                data,
            } => {
                if let Some(id) = self.media.endpoint(local) {
                    io.send(id, remote, &data);
                }
            }
        }
    }

    /// A datagram received on socket `id` from `from`.
    pub(crate) fn on_datagram(
        &mut self,
        io: &mut impl Io,
        id: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) {
        match self.roles.get(id).copied().flatten() {
            Some(Role::Listener(listener)) => self.client_datagram(io, listener, from, data),
            Some(Role::Relay(relayed)) => self.peer_datagram(io, relayed, from, data),
            Some(Role::Endpoint(local)) => self.media_datagram(io, local, from, data),
            None => {}
        }
    }

    fn client_datagram(
        &mut self,
        io: &mut impl Io,
        listener: SocketAddr,
        client: SocketAddr,
        data: &[u8],
    ) {
        if let (Some(Kind::ChannelData), Ok(cd)) = (
            data.first().map(|b| classify(*b)),
            ChannelData::decode(data),
        ) {
            let now_ns = monotonic_now_ns();
            if let Some((relayed, peer, _)) = self
                .by_client
                .get(&(listener, client, cd.channel))
                .copied()
                .filter(|(_, _, expires_ns)| *expires_ns > now_ns)
            {
                if let Some(relay) = self.relays.get(&relayed) {
                    if relay.admits(&self.policers, now_ns, cd.data.len()) {
                        io.send(relay.id, peer, cd.data);
                        self.stats.fast_to_peer += 1;
                    } else {
                        self.stats.over_limit += 1;
                    }
                    return;
                }
            }
        }
        self.up(Event::Client {
            tuple: ClientTuple {
                transport: Transport::Udp,
                client,
                server: listener,
            },
            data: data.to_vec(),
        });
    }

    fn peer_datagram(
        &mut self,
        io: &mut impl Io,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        let Some(relay) = self.relays.get(&relayed) else {
            return;
        };
        // RFC 8656 section 9: only permitted peers reach the client. Checked first, so that
        // a stranger who learnt the relayed address spends no one's budget and no room in
        // the control queue.
        let now_ns = monotonic_now_ns();
        let permitted = match relay.permissions.get(&peer.ip()) {
            Some((expires_ns, own)) => {
                *expires_ns > now_ns
                    && (!own
                        || self.relays.contains_key(&peer)
                        || self.media.endpoint(peer).is_some())
            }
            None => false,
        };
        if !permitted {
            self.stats.unpermitted += 1;
            return;
        }
        // Both directions count against the budgets, as in coturn.
        if !relay.admits(&self.policers, now_ns, data.len()) {
            self.stats.over_limit += 1;
            return;
        }
        if let Some((listener, client, channel, _)) = self
            .by_peer
            .get(&(relayed, peer))
            .copied()
            .filter(|(.., expires_ns)| *expires_ns > now_ns)
        {
            if let Some(id) = self.listeners.get(&listener) {
                self.scratch.clear();
                ChannelData { channel, data }.encode_into(false, &mut self.scratch);
                io.send(*id, client, &self.scratch);
                self.stats.fast_to_client += 1;
                return;
            }
        }
        self.up(Event::Peer {
            relayed,
            peer,
            data: data.to_vec(),
        });
    }

    fn media_datagram(
        &mut self,
        io: &mut impl Io,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        match self.media.forward(io, &self.policers, local, remote, data) {
            Ok(true) => self.stats.media_forwarded += 1,
            Ok(false) => self.up(Event::Media {
                local,
                remote,
                data: data.to_vec(),
            }),
            Err(()) => self.stats.over_limit += 1,
        }
    }

    fn up(&mut self, event: Event) {
        // A full queue means the control task is behind (a flood): drop and count rather
        // than grow without bound. Closed only at shutdown.
        match self.events.try_send(event) {
            Ok(()) => self.stats.up += 1,
            Err(TrySendError::Full(_)) => self.stats.control_full += 1,
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        io::media::RouteCounts,
        room::{Route, Source},
    };

    /// Records what the data path asks of its backend.
    #[derive(Default)]
    struct FakeIo {
        added: Vec<SocketId>,
        sent: Vec<(SocketId, SocketAddr, Vec<u8>)>,
    }

    impl Io for FakeIo {
        fn add(&mut self, id: SocketId, _socket: UdpSocket) {
            self.added.push(id);
        }

        fn remove(&mut self, _id: SocketId) {}

        fn send(&mut self, id: SocketId, to: SocketAddr, data: &[u8]) {
            self.sent.push((id, to, data.to_vec()));
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A real socket to hand over (the fake backend never reads it).
    fn udp() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// A data path with one listener (id 0) and one relayed socket (id 1) for `flow`,
    /// limited to `max_bps` when given.
    fn setup(
        max_bps: Option<u64>,
        queue: usize,
    ) -> (
        Datapath,
        FakeIo,
        tokio::sync::mpsc::Receiver<Event>,
        ChannelFlow,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(queue);
        let policers = Arc::new(Policers::own());
        let slot = max_bps.map_or(0, |bps| {
            policers.configure(
                1,
                relay_common::police::Limit {
                    packets_per_sec: 0,
                    bits_per_sec: bps,
                    burst_ns: 1_000_000_000,
                },
            );
            1
        });
        let mut dp = Datapath::new(tx, policers);
        let mut io = FakeIo::default();
        let listener = udp();
        let listen_addr = listener.local_addr().unwrap();
        dp.add_listener(&mut io, listener).unwrap();
        let relayed = addr("127.0.0.1:50000");
        dp.on_command(
            &mut io,
            Command::AddRelay {
                addr: relayed,
                socket: udp(),
                policers: [slot, 0],
            },
        );
        let flow = ChannelFlow {
            client: ClientTuple {
                transport: Transport::Udp,
                client: addr("192.0.2.11:4000"),
                server: listen_addr,
            },
            relayed,
            channel: 0x4000,
            peer: addr("198.51.100.21:3480"),
        };
        permit(&mut dp, &mut io, relayed, flow.peer.ip(), false);
        (dp, io, rx, flow)
    }

    /// Room media: a route sends RTP to every subscriber from its own port and the
    /// publisher's sender reports to their RTCP addresses, bytes untouched; other SSRCs,
    /// other senders and packets over the tenant's limit do not pass.
    #[test]
    fn room_routes_fan_out_by_ssrc() {
        let (mut dp, mut io, mut rx, _) = setup(None, 16);
        let [cam, a, b] = ["127.0.0.1:41000", "127.0.0.1:41002", "127.0.0.1:41004"].map(addr);
        for local in [cam, a, b] {
            dp.on_command(
                &mut io,
                Command::Room(RoomCommand::AddEndpoint {
                    addr: local,
                    socket: udp(),
                }),
            );
        }
        let (cam_id, a_id, b_id) = (2, 3, 4);
        assert_eq!(io.added, [0, 1, cam_id, a_id, b_id]);
        let from = Source {
            local: cam,
            remote: addr("10.0.0.1:5004"),
        };
        let dest = |local, remote: &str| crate::room::Destination {
            local,
            remote: addr(remote),
        };
        let counts = Arc::new(RouteCounts::default());
        dp.on_command(
            &mut io,
            Command::Room(RoomCommand::Route {
                from,
                ssrc: 0x1111,
                route: Some(Route {
                    rtp: vec![dest(a, "10.0.0.2:6000"), dest(b, "10.0.0.3:6000")],
                    rtcp: vec![dest(a, "10.0.0.2:6001"), dest(b, "10.0.0.3:6000")],
                }),
                policers: crate::policers::RoutePolicers::default(),
                counts: Arc::clone(&counts),
            }),
        );
        let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0x11, 0x11];
        rtp.extend(b"srtp payload and tag");
        dp.on_datagram(&mut io, cam_id, from.remote, &rtp);
        assert_eq!(
            io.sent,
            [
                (a_id, addr("10.0.0.2:6000"), rtp.clone()),
                (b_id, addr("10.0.0.3:6000"), rtp.clone())
            ]
        );
        let sr = [0x80, 200, 0, 1, 0, 0, 0x11, 0x11];
        dp.on_datagram(&mut io, cam_id, from.remote, &sr);
        assert_eq!(
            io.sent[2..],
            [
                (a_id, addr("10.0.0.2:6001"), sr.to_vec()),
                (b_id, addr("10.0.0.3:6000"), sr.to_vec())
            ]
        );
        assert_eq!(counts.packets.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(dp.stats.media_forwarded, 2);
        // Another SSRC, or the same from another address: up to the room core.
        let mut other = rtp.clone();
        other[11] = 0x12;
        dp.on_datagram(&mut io, cam_id, from.remote, &other);
        dp.on_datagram(&mut io, cam_id, addr("10.0.0.9:5004"), &rtp);
        assert!(matches!(rx.try_recv(), Ok(Event::Media { .. })));
        assert!(matches!(rx.try_recv(), Ok(Event::Media { .. })));
        assert_eq!(io.sent.len(), 4);
        // Removing the route sends the packets up again.
        dp.on_command(
            &mut io,
            Command::Room(RoomCommand::Route {
                from,
                ssrc: 0x1111,
                route: None,
                policers: crate::policers::RoutePolicers::default(),
                counts,
            }),
        );
        dp.on_datagram(&mut io, cam_id, from.remote, &rtp);
        assert!(matches!(rx.try_recv(), Ok(Event::Media { .. })));
        assert_eq!(io.sent.len(), 4);
    }

    /// `flow` installed for the next minute.
    fn up(flow: ChannelFlow) -> Command {
        Command::FlowUp {
            flow,
            expires_ns: monotonic_now_ns() + 60_000_000_000,
        }
    }

    /// The kernel's entries carry an expiry, and so do the data path's: a channel whose
    /// FlowDown has not arrived yet (or was lost) stops being fast when its time is up, and
    /// its datagrams go to the server, which knows whether it lives on.
    #[test]
    fn an_expired_flow_is_not_forwarded() {
        let (mut dp, mut io, mut rx, flow) = setup(None, 16);
        dp.on_command(
            &mut io,
            Command::FlowUp {
                flow,
                expires_ns: monotonic_now_ns() - 1,
            },
        );
        let cd = ChannelData {
            channel: 0x4000,
            data: b"rtp",
        }
        .encode(false);
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        assert!(matches!(rx.try_recv(), Ok(Event::Client { .. })));
        dp.on_datagram(&mut io, 1, flow.peer, b"rtcp");
        assert!(matches!(rx.try_recv(), Ok(Event::Peer { .. })));
        assert!(io.sent.is_empty());
        assert_eq!((dp.stats.fast_to_peer, dp.stats.fast_to_client), (0, 0));
        // Announced again with a later expiry (a refresh), it is fast again.
        dp.on_command(&mut io, up(flow));
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        dp.on_datagram(&mut io, 1, flow.peer, b"rtcp");
        assert_eq!((dp.stats.fast_to_peer, dp.stats.fast_to_client), (1, 1));
    }

    /// A permission for `peer` on `relayed` for the next minute.
    fn permit(dp: &mut Datapath, io: &mut FakeIo, relayed: SocketAddr, peer: IpAddr, own: bool) {
        dp.on_command(
            io,
            Command::Permit {
                relayed,
                peer,
                expires_ns: monotonic_now_ns() + 60_000_000_000,
                own,
            },
        );
    }

    #[test]
    fn installed_flows_are_forwarded_both_ways_without_the_server() {
        let (mut dp, mut io, mut rx, flow) = setup(None, 16);
        let cd = ChannelData {
            channel: 0x4000,
            data: b"rtp",
        }
        .encode(false);
        // Before the flow is installed, ChannelData goes up to the server.
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        assert!(matches!(rx.try_recv(), Ok(Event::Client { .. })));
        dp.on_command(&mut io, up(flow));
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        assert_eq!(io.sent.last(), Some(&(1, flow.peer, b"rtp".to_vec())));
        dp.on_datagram(&mut io, 1, flow.peer, b"rtcp");
        let back = ChannelData {
            channel: 0x4000,
            data: b"rtcp",
        }
        .encode(false);
        assert_eq!(io.sent.last(), Some(&(0, flow.client.client, back)));
        assert_eq!((dp.stats.fast_to_peer, dp.stats.fast_to_client), (1, 1));
        // Another permitted peer of the same allocation is not in the table: up it goes.
        permit(
            &mut dp,
            &mut io,
            flow.relayed,
            "198.51.100.22".parse().unwrap(),
            false,
        );
        dp.on_datagram(&mut io, 1, addr("198.51.100.22:3480"), b"x");
        assert!(matches!(rx.try_recv(), Ok(Event::Peer { .. })));
        dp.on_command(&mut io, Command::FlowDown(flow));
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        assert!(matches!(rx.try_recv(), Ok(Event::Client { .. })));
    }

    #[test]
    fn max_bps_drops_and_counts_in_both_directions() {
        // 8000 bit/s, a one-second burst: one 1000-byte payload, then nothing.
        let (mut dp, mut io, _rx, flow) = setup(Some(8000), 16);
        dp.on_command(&mut io, up(flow));
        let cd = ChannelData {
            channel: 0x4000,
            data: &[0; 1000],
        }
        .encode(false);
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        dp.on_datagram(&mut io, 0, flow.client.client, &cd);
        dp.on_datagram(&mut io, 1, flow.peer, &[0; 10]);
        dp.on_command(
            &mut io,
            Command::SendToPeer {
                relayed: flow.relayed,
                peer: flow.peer,
                data: vec![0; 10],
            },
        );
        assert_eq!(io.sent.len(), 1);
        assert_eq!(dp.stats.over_limit, 3);
    }

    #[test]
    fn a_full_control_queue_drops_and_counts_instead_of_growing() {
        let (mut dp, mut io, mut rx, flow) = setup(None, 2);
        for _ in 0..5 {
            dp.on_datagram(&mut io, 0, flow.client.client, b"\x00\x01\x00\x00garbage");
        }
        assert_eq!((dp.stats.up, dp.stats.control_full), (2, 3));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }

    /// Anyone who learns a relayed address (it is in every ICE candidate) can send to it:
    /// without a permission their datagrams spend neither the allocation's budget nor room
    /// in the control queue.
    #[test]
    fn a_strangers_flood_spends_no_budget_and_no_queue() {
        // 8000 bit/s, a one-second burst: room for one 1000-byte payload.
        let (mut dp, mut io, mut rx, flow) = setup(Some(8000), 2);
        dp.on_command(&mut io, up(flow));
        for i in 0..100 {
            dp.on_datagram(&mut io, 1, addr("203.0.113.9:4000"), &[i; 1000]);
        }
        assert_eq!(dp.stats.unpermitted, 100);
        assert_eq!((dp.stats.up, dp.stats.over_limit), (0, 0));
        assert!(rx.try_recv().is_err());
        // The permitted peer's media still has its whole budget.
        dp.on_datagram(&mut io, 1, flow.peer, &[7; 1000]);
        assert_eq!(dp.stats.fast_to_client, 1);
        // A permission that has expired lets nothing through either.
        dp.on_command(
            &mut io,
            Command::Permit {
                relayed: flow.relayed,
                peer: "203.0.113.9".parse().unwrap(),
                expires_ns: monotonic_now_ns() - 1,
                own: false,
            },
        );
        dp.on_datagram(&mut io, 1, addr("203.0.113.9:4000"), b"late");
        assert_eq!(dp.stats.unpermitted, 101);
    }

    /// A permission for the relay host's own address admits its relayed addresses only,
    /// port-exact: not the listener, not a service on another port.
    #[test]
    fn on_the_hosts_own_address_only_relayed_ports_pass() {
        let (mut dp, mut io, mut rx, flow) = setup(None, 16);
        let own = flow.relayed.ip();
        permit(&mut dp, &mut io, flow.relayed, own, true);
        dp.on_command(
            &mut io,
            Command::AddRelay {
                addr: addr("127.0.0.1:50002"),
                socket: udp(),
                policers: [0, 0],
            },
        );
        dp.on_datagram(&mut io, 1, addr("127.0.0.1:50002"), b"neighbour");
        assert!(matches!(rx.try_recv(), Ok(Event::Peer { .. })));
        for port in [7, 3478, 50004] {
            dp.on_datagram(&mut io, 1, SocketAddr::new(own, port), b"service");
        }
        assert_eq!(dp.stats.unpermitted, 3);
        assert!(rx.try_recv().is_err());
        dp.on_command(
            &mut io,
            Command::Unpermit {
                relayed: flow.relayed,
                peer: own,
            },
        );
        dp.on_datagram(&mut io, 1, addr("127.0.0.1:50002"), b"neighbour");
        assert_eq!(dp.stats.unpermitted, 4);
    }
}
