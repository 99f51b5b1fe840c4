//! Relay's I/O: the UDP data path on its own thread (io_uring, or recvmmsg/sendmmsg), TCP and
//! TLS on tokio, and the control task that drives the sans-IO TURN server between them.

mod control;
mod datapath;
mod kernel;
mod media;
mod mmsg;
mod notify;
mod rooms;
mod stream;
mod uring;
mod wake;

use std::{
    net::UdpSocket,
    path::Path,
    sync::{Arc, mpsc},
    time::{Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    config::{IoBackend, RunConfig},
    turn::{Server, Snapshot},
};

/// Control API requests waiting for the control task.
const API_QUEUE: usize = 64;

/// Datagrams and stream records waiting for the control task.
const EVENT_QUEUE: usize = 65_536;

/// The backend the data path ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Mmsg,
}

/// Serves TURN until `shutdown` resolves, installing channel flows in `dataplane`'s XDP
/// program when there is one, and hands the data plane back. Must run inside a tokio
/// runtime.
pub async fn serve(
    run: RunConfig,
    dataplane: Option<crate::dataplane::Dataplane>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Option<crate::dataplane::Dataplane>> {
    let mut listeners = Vec::new();
    for addr in &run.udp {
        let socket = bind_listener_after_predecessor(*addr, PREDECESSOR_GRACE)
            .await
            .with_context(|| format!("listening-port: cannot bind UDP {addr}"))?;
        listeners.push(socket);
    }
    // Bounded: under a flood the data path drops (and counts) what the control task cannot
    // take, and stream readers wait, instead of memory growing without limit.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let (commands_tx, commands_rx) = mpsc::channel();
    let wake = Arc::new(wake::Wake::new().context("eventfd")?);

    // With XDP, the kernel's policers, mapped: one budget per tenant whichever path a packet
    // takes.
    let policers = Arc::new(match &dataplane {
        Some(d) => d.policers()?,
        None => crate::policers::Policers::own(),
    });
    let mut limits = control::Limits::new(Arc::clone(&policers), run.turn.tenants.clone());
    let live = live(&run, dataplane.is_some(), &limits, &policers);
    let mut dp = datapath::Datapath::new(events_tx.clone(), policers);
    dp.live = Some(Arc::clone(&live));
    let backend = match run.io {
        IoBackend::Mmsg => Err(None),
        IoBackend::Uring | IoBackend::Auto => uring::Uring::new().map_err(Some),
    };
    let thread_wake = Arc::clone(&wake);
    let (backend_name, thread) = match backend {
        Ok(mut uring) => {
            for l in listeners {
                dp.add_listener(&mut uring, l)?;
            }
            log::info!("UDP data path: io_uring (multishot recvmsg, provided buffer ring)");
            let t = std::thread::Builder::new()
                .name("relay-udp".into())
                .spawn(move || uring.run(dp, &commands_rx, &thread_wake))?;
            (Backend::Uring, t)
        }
        Err(e) => {
            if let Some(e) = e {
                if run.io == IoBackend::Uring {
                    return Err(e).context("io: io_uring was asked for but is unavailable");
                }
                log::warn!(
                    "io_uring unavailable ({e}): UDP data path falls back to recvmmsg/sendmmsg"
                );
            }
            let mut mmsg = mmsg::Mmsg::new().context("epoll")?;
            for l in listeners {
                dp.add_listener(&mut mmsg, l)?;
            }
            if run.io == IoBackend::Mmsg {
                log::info!("UDP data path: recvmmsg/sendmmsg (as asked)");
            }
            let t = std::thread::Builder::new()
                .name("relay-udp".into())
                .spawn(move || mmsg.run(dp, &commands_rx, &thread_wake))?;
            (Backend::Mmsg, t)
        }
    };

    let streams = listen_streams(&run, &events_tx).await?;
    drop(events_tx);
    let (mut api, metrics) = start_http(&run, &live).await?;
    // Before the ready line: a restored relay says so first.
    let server = start_server(run.turn.clone(), &run.state_file)?;
    let ready = ready_line(&run, backend_name);

    let kernel = dataplane.map(kernel::Kernel::new);
    let rooms_file = crate::room::RoomsSnapshot::file(&run.state_file);
    let saved = control::State::new(run.state_file);
    let rooms = rooms::RoomPlane::new(
        start_rooms(run.rooms.clone(), &rooms_file),
        &mut limits,
        control::State::new(rooms_file),
    );
    let dataplane = control::Control::new(server, kernel, limits, saved, commands_tx, wake, rooms)
        .run(
            events_rx,
            api.as_mut().and_then(|a| a.calls.take()),
            shutdown,
            (&ready, &live, &mut notify::Notifier::from_env()),
        )
        .await;
    if let Some(api) = api {
        api.stop().await;
    }
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    let stats = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP data path thread panicked"))?;
    log::info!("UDP data path at exit: {stats}");
    log::info!("TCP/TLS streams at exit: {streams}");
    Ok(dataplane)
}

/// What metrics scrapes read; the kernel's counters from the pinned data plane.
fn live(
    run: &RunConfig,
    kernel: bool,
    limits: &control::Limits,
    policers: &Arc<crate::policers::Policers>,
) -> Arc<crate::metrics::Live> {
    Arc::new(crate::metrics::Live {
        pins: kernel.then(|| crate::dataplane::Pins::new(&run.instance)),
        tenants: (run.turn.tenants.iter().zip(limits.tenant_slots()))
            .map(|(t, slot)| (t.name.clone(), slot, t.limit))
            .collect(),
        policers: Some(Arc::clone(policers)),
        policy: run.policy.clone(),
        ..crate::metrics::Live::default()
    })
}

/// What the relay logs once it serves (tests and scripts wait for its start).
fn ready_line(run: &RunConfig, backend: Backend) -> String {
    format!(
        "TURN on UDP {:?}, TCP {:?}, TLS {:?}; relaying from {:?} ports {}-{}; realm {:?} ({:?} backend)",
        run.udp,
        run.tcp,
        run.tls,
        run.turn.relay_ips,
        run.turn.min_port,
        run.turn.max_port,
        run.turn.realm,
        backend
    )
}

/// The TCP and TLS listeners, each serving its connections on its own task; one set of
/// limits for all of them, so that the connection caps hold across them.
async fn listen_streams(
    run: &RunConfig,
    events_tx: &tokio::sync::mpsc::Sender<datapath::Event>,
) -> anyhow::Result<Arc<stream::Streams>> {
    let streams = stream::Streams::new(stream::StreamLimits::default());
    for addr in &run.tcp {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening-port: cannot bind TCP {addr}"))?;
        let streams = Arc::clone(&streams);
        tokio::spawn(stream::serve(l, None, events_tx.clone(), streams));
    }
    for addr in &run.tls {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("tls-listening-port: cannot bind TLS {addr}"))?;
        let (tls, streams) = (run.tls_config.clone(), Arc::clone(&streams));
        tokio::spawn(stream::serve(l, tls, events_tx.clone(), streams));
    }
    Ok(streams)
}

/// The room core, with the rooms a previous run saved in `file` when there are any (their
/// ports are bound again and their routes announced on the first turn of the control
/// task). A file that cannot be read is moved aside, not fatal: the relay starts with no
/// rooms.
fn start_rooms(config: crate::room::Config, file: &Path) -> crate::room::Rooms {
    let rng = rand::SeedableRng::from_os_rng();
    match crate::room::RoomsSnapshot::read(file) {
        Ok(Some(snapshot)) => crate::room::Rooms::restore(config, &snapshot, Instant::now(), rng),
        Ok(None) => crate::room::Rooms::new(config, rng),
        Err(e) => {
            let aside = file.with_extension("rooms.json.unreadable");
            log::warn!(
                "rooms: cannot take up {e}; starting without rooms (the file is kept as {})",
                aside.display()
            );
            let _ = std::fs::rename(file, &aside);
            crate::room::Rooms::new(config, rng)
        }
    }
}

/// The control API's server and the requests it hands the control task.
struct Api {
    calls: Option<tokio::sync::mpsc::Receiver<crate::room::api::Call>>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start(config: crate::http::ApiConfig, probes: axum::Router) -> anyhow::Result<Self> {
        let (calls_tx, calls) = tokio::sync::mpsc::channel(API_QUEUE);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (_, server) = crate::http::start(config, calls_tx, probes, stopped).await?;
        Ok(Self {
            calls: Some(calls),
            stop,
            server,
        })
    }

    /// Stops the server once the control task has: requests still in flight get 503.
    async fn stop(self) {
        let _ = self.stop.send(());
        if let Ok(Err(e)) = self.server.await {
            log::warn!("control API: {e}");
        }
    }
}

/// The control API and the probes, up before the ready line (`/readyz` says 503 until
/// then); they stop after the control task.
async fn start_http(
    run: &RunConfig,
    live: &Arc<crate::metrics::Live>,
) -> anyhow::Result<(Option<Api>, Option<Probes>)> {
    let probes = crate::http::probes::router(Arc::clone(live));
    let api = match run.api.clone() {
        Some(config) => Some(Api::start(config, probes).await?),
        None => None,
    };
    let metrics = match run.metrics_listen {
        Some(listen) => Some(Probes::start(listen, Arc::clone(live)).await?),
        None => None,
    };
    Ok((api, metrics))
}

/// The metrics and health listener of `--metrics-listen`.
struct Probes {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Probes {
    async fn start(
        listen: std::net::SocketAddr,
        live: Arc<crate::metrics::Live>,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (_, server) = crate::http::probes::start(listen, live, stopped).await?;
        Ok(Self { stop, server })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        if let Ok(Err(e)) = self.server.await {
            log::warn!("metrics listener: {e}");
        }
    }
}

/// The TURN server, with the allocations a previous run saved in `state_file` when there
/// are any (their sockets are bound again and their flows announced on the first turn of
/// the control task). A state file that cannot be read is moved aside, not fatal: the relay
/// starts empty and clients allocate again.
fn start_server(config: crate::turn::Config, state_file: &Path) -> anyhow::Result<Server> {
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("state-dir: cannot create {}", dir.display()))?;
    }
    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // Ports, transaction ids and the nonce key from the OS's CSPRNG: a 256-bit seed, not a
    // guessable 64-bit one.
    let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    match Snapshot::read(state_file) {
        Ok(Some(snapshot)) => {
            log::info!(
                "restoring {} allocations from {}",
                snapshot.allocations(),
                state_file.display()
            );
            let unix_ms = u64::try_from(unix.as_millis()).unwrap_or(u64::MAX);
            return Ok(Server::restore(config, &snapshot, now, unix_ms, rng));
        }
        Ok(None) => {}
        Err(e) => {
            let aside = state_file.with_extension("unreadable");
            log::warn!("{e}; starting without it (moved to {})", aside.display());
            let _ = std::fs::rename(state_file, aside);
        }
    }
    Ok(Server::new(config, now, unix.as_secs(), rng))
}

/// A `msghdr` for one datagram: its address and one buffer, no control data. Both UDP
/// backends build their receive and send headers with it.
fn msghdr(name: *mut libc::c_void, namelen: u32, iov: *mut libc::iovec) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr (no control data, no flags).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = name;
    hdr.msg_namelen = namelen;
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    hdr
}

/// How long a relay waits at start for its listening port to be let go.
const PREDECESSOR_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// [`bind_listener`], waiting up to `grace` ([`PREDECESSOR_GRACE`]) while the port is in use: a
/// predecessor killed a moment ago (`kill -9`, a crash, systemd restarting it) still holds
/// its sockets until the kernel has torn down its io_uring instance, after its process is
/// gone. They go all at once, so the listener free means the relayed and room ports it
/// takes up next are free too.
async fn bind_listener_after_predecessor(
    addr: std::net::SocketAddr,
    grace: std::time::Duration,
) -> std::io::Result<UdpSocket> {
    let deadline = Instant::now() + grace;
    let mut said = false;
    loop {
        match bind_listener(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !std::mem::replace(&mut said, true) {
                    log::info!(
                        "UDP {addr} is in use: waiting up to {grace:?} for a predecessor's \
                         sockets to be released"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Bursts of media from many clients land on one socket.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, time::Duration};

    use super::bind_listener_after_predecessor;

    /// A port still held when the relay starts is waited for until it is let go, and
    /// refused as before once the grace has passed.
    #[tokio::test]
    async fn a_listener_waits_for_its_predecessors_port() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let refused = bind_listener_after_predecessor(addr, Duration::from_millis(100)).await;
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse,
            "still held after the grace"
        );
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
        });
        let bound = bind_listener_after_predecessor(addr, Duration::from_secs(5)).await;
        assert_eq!(bound.unwrap().local_addr().unwrap(), addr);
        release.await.unwrap();
    }
}
