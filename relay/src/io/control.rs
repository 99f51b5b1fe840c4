//! The control task: owns the TURN server, feeds it what the data path and the stream
//! connections hand up, fires its timers, and carries out its outputs.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{Arc, mpsc::Sender},
    time::Instant,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::Receiver as EventReceiver;

use super::{
    datapath::{Command, Event},
    wake::Wake,
};
use crate::{
    dataplane::{Dataplane, channel_entries},
    turn::{ChannelFlow, ClientTuple, Output, Server, Transport},
};

/// The kernel's copy of the channel flows, when an XDP program is attached.
pub(crate) struct KernelFlows {
    pub(crate) dataplane: Dataplane,
    /// False when flows must stay in userspace (`--max-bps` is enforced only there).
    enabled: bool,
    installed: HashMap<ChannelFlow, [u32; 2]>,
    free: Vec<u32>,
}

impl KernelFlows {
    /// Counter slots of the program's `FLOW_STATS` array.
    const SLOTS: u32 = 65536;

    pub(crate) fn new(dataplane: Dataplane, enabled: bool) -> Self {
        Self {
            dataplane,
            enabled,
            installed: HashMap::new(),
            free: (0..Self::SLOTS).rev().collect(),
        }
    }

    /// Installs a flow, or updates its expiry when it is installed already.
    fn up(&mut self, flow: ChannelFlow, expires: Instant) {
        if !self.enabled {
            return;
        }
        let stats = match self.installed.get(&flow) {
            Some(stats) => *stats,
            None if self.free.len() >= 2 => {
                [self.free.pop().unwrap_or(0), self.free.pop().unwrap_or(0)]
            }
            None => return,
        };
        let Some(entries) = channel_entries(&flow, stats, monotonic_ns(expires)) else {
            self.free.extend(stats);
            return;
        };
        for (key, action) in &entries {
            if let Err(e) = self.dataplane.insert_flow(key, action) {
                // Userspace still forwards the channel: slower, not lost.
                log::warn!(
                    "fast path: cannot install channel {:#06x} of {}: {e}",
                    flow.channel,
                    flow.client
                );
            }
        }
        self.installed.insert(flow, stats);
    }

    fn down(&mut self, flow: &ChannelFlow) {
        let Some(stats) = self.installed.remove(flow) else {
            return;
        };
        if let Some(entries) = channel_entries(flow, stats, 0) {
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
        self.free.extend(stats);
    }
}

pub(crate) struct Control {
    pub(crate) server: Server,
    kernel: Option<KernelFlows>,
    commands: Sender<Command>,
    wake: Arc<Wake>,
    streams: HashMap<ClientTuple, tokio::sync::mpsc::Sender<Vec<u8>>>,
}

impl Control {
    pub(crate) fn new(
        server: Server,
        kernel: Option<KernelFlows>,
        commands: Sender<Command>,
        wake: Arc<Wake>,
    ) -> Self {
        Self {
            server,
            kernel,
            commands,
            wake,
            streams: HashMap::new(),
        }
    }

    /// Runs until `shutdown` resolves or every event sender is gone.
    pub(crate) async fn run(
        mut self,
        mut events: EventReceiver<Event>,
        shutdown: impl Future<Output = ()>,
    ) -> Option<Dataplane> {
        tokio::pin!(shutdown);
        loop {
            let deadline = self.server.poll_timeout();
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
                () = &mut shutdown => break,
            }
            self.carry_out();
        }
        let _ = self.commands.send(Command::Stop);
        self.wake.wake();
        log::info!("TURN server at exit: {}", self.server.stats());
        // The data plane goes back to the caller, its flows still installed.
        self.kernel.map(|k| k.dataplane)
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
        }
    }

    /// Drains the server's outputs into commands for the data path and stream writers.
    fn carry_out(&mut self) {
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
                    max_bps,
                    dont_fragment,
                } => {
                    let now = Instant::now();
                    match bind_all(&addrs, dont_fragment) {
                        Ok(sockets) => {
                            for (addr, socket) in addrs.into_iter().zip(sockets) {
                                let _ = self.commands.send(Command::AddRelay {
                                    addr,
                                    socket,
                                    max_bps,
                                });
                                commands += 1;
                            }
                            self.server.relay_bound(now, id, Ok(()));
                        }
                        Err(e) => self.server.relay_bound(now, id, Err(e)),
                    }
                    continue;
                }
                Output::Release { addr } => Command::RemoveRelay { addr },
                // Both the kernel and the userspace data path get the flow: a packet the
                // kernel passes up (no route yet, a padded datagram) is still fast in
                // userspace.
                Output::FlowUp(flow, expires) => {
                    if let Some(kernel) = &mut self.kernel {
                        kernel.up(flow, expires);
                    }
                    Command::FlowUp(flow)
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
        if commands > 0 {
            self.wake.wake();
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// Binds UDP sockets on all of `addrs`, or none.
fn bind_all(addrs: &[SocketAddr], dont_fragment: bool) -> std::io::Result<Vec<UdpSocket>> {
    addrs
        .iter()
        .map(|a| bind_relay(*a, dont_fragment))
        .collect()
}

fn bind_relay(addr: SocketAddr, dont_fragment: bool) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if dont_fragment {
        // RFC 8656 section 7.2: DONT-FRAGMENT asks for DF on the relayed packets.
        if addr.is_ipv4() {
            set_int(
                &socket,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            )?;
        } else {
            set_int(&socket, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
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

/// `at` on the kernel's CLOCK_MONOTONIC, in nanoseconds: the clock of `bpf_ktime_get_ns`
/// (Rust's `Instant` reads the same clock on Linux, but does not show its value).
fn monotonic_ns(at: Instant) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let now = Instant::now();
    let now_ns = ts
        .tv_sec
        .unsigned_abs()
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.unsigned_abs());
    match at.checked_duration_since(now) {
        Some(ahead) => now_ns.saturating_add(ahead.as_nanos() as u64),
        None => now_ns.saturating_sub(now.duration_since(at).as_nanos() as u64),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instants_map_onto_the_kernels_monotonic_clock() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec for the kernel to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        let kernel_now = ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs();
        let now = Instant::now();
        assert!(
            monotonic_ns(now).abs_diff(kernel_now) < 50_000_000,
            "within 50 ms of the kernel's clock"
        );
        let later = monotonic_ns(now + Duration::from_secs(300)) - monotonic_ns(now);
        assert!(later.abs_diff(300_000_000_000) < 1_000_000, "{later}");
        let earlier =
            monotonic_ns(now) - monotonic_ns(now.checked_sub(Duration::from_secs(1)).unwrap());
        assert!(earlier.abs_diff(1_000_000_000) < 1_000_000, "{earlier}");
    }
}
