//! The systems under test, started in the lab's relay host, and the TURN allocations or the
//! media room the generator sets up on them.
//!
//! Every TURN system listens on 10.77.0.1:3478 with the same static user, realm, peer range
//! and transports (UDP only). Client A runs the TURN clients and sends the media; the peer
//! host receives it, or in the hairpin scenario client B, through its own allocations. In
//! the fan-out scenario client A is a camera publishing into a room (or into GStreamer's
//! `udpsrc ! multiudpsink`) and every subscriber is a socket on the peer host.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use relay::{
    dataplane::{Bounce, Dataplane, XdpModeChoice},
    turn::client::Client,
};
use serde::Serialize;
use xtask::lab::{Background, Host, Lab};

use crate::{
    cpu::{self, Memory},
    generator::Media,
    wire::{CHANNEL, HAIRPIN_CHANNEL, Template},
};

pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench";
pub const REALM: &str = "bench.example";
pub const TURN_PORT: u16 = 3478;
/// Where the receiver listens: the peer's port, or the client's for the bounce.
pub const RECEIVER_PORT: u16 = 4000;
/// How long a system may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A system the same load runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Relay with its XDP fast path.
    RelayXdp,
    /// Relay `--no-xdp --io uring`.
    RelayUring,
    /// Relay `--no-xdp --io mmsg`.
    RelayMmsg,
    /// Debian's coturn (turnserver), configured like Relay.
    Coturn,
    /// A trivial XDP program on the relay host that swaps addresses and bounces every
    /// packet back: the most this lab path can forward.
    Ceiling,
    /// `gst-launch-1.0 udpsrc ! multiudpsink`: how RTP is fanned out without a media server
    /// (fan-out scenario only).
    Gstreamer,
}

impl System {
    pub const ALL: [Self; 6] = [
        Self::RelayXdp,
        Self::RelayUring,
        Self::RelayMmsg,
        Self::Coturn,
        Self::Ceiling,
        Self::Gstreamer,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::RelayXdp => "relay-xdp",
            Self::RelayUring => "relay-uring",
            Self::RelayMmsg => "relay-mmsg",
            Self::Coturn => "coturn",
            Self::Ceiling => "ceiling",
            Self::Gstreamer => "gstreamer",
        }
    }

    pub const fn title(self) -> &'static str {
        match self {
            Self::RelayXdp => "Relay, XDP",
            Self::RelayUring => "Relay --no-xdp, io_uring",
            Self::RelayMmsg => "Relay --no-xdp --io mmsg",
            Self::Coturn => "coturn 4.6 (turnserver)",
            Self::Ceiling => "ceiling: XDP swap-and-bounce",
            Self::Gstreamer => "GStreamer udpsrc ! multiudpsink",
        }
    }

    /// Whether the generator allocates on it.
    pub const fn speaks_turn(self) -> bool {
        !matches!(self, Self::Ceiling | Self::Gstreamer)
    }

    /// Whether it is Relay (and so has rooms).
    pub const fn is_relay(self) -> bool {
        matches!(self, Self::RelayXdp | Self::RelayUring | Self::RelayMmsg)
    }
}

fn relay_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Host::Relay.ipv4(), TURN_PORT)
}

pub fn peer_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Host::Peer.ipv4(), RECEIVER_PORT)
}

/// The fan-out publisher (a camera on client A): the room is told its address, so nothing
/// is latched and the kernel forwards from the first packet.
pub fn publisher_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Host::ClientA.ipv4(), 5004)
}

/// Subscriber `i` of the fan-out scenario, on the peer host.
pub fn subscriber_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Host::Peer.ipv4(), 6000 + i as u16)
}

/// Where GStreamer's `udpsrc` listens on the relay host.
const GSTREAMER_PORT: u16 = 5004;
/// Relay's control API, on the relay host's loopback.
const API: &str = "127.0.0.1:8080";
/// The fan-out room.
const ROOM: &str = "bench";

/// A running system; stopped when dropped.
pub struct Running {
    process: Option<Background>,
    /// The ceiling's program, attached while this lives.
    _bounce: Option<Bounce>,
    _state: Option<StateDir>,
}

impl Running {
    /// The system's process (none for the ceiling, which is no process).
    pub fn pid(&self) -> Option<u32> {
        Some(self.process.as_ref()?.0.id())
    }

    /// The system's memory (none for the ceiling, which is no process).
    pub fn memory(&self) -> Option<Memory> {
        let pid = self.process.as_ref()?.0.id();
        cpu::memory(pid).ok()
    }

    /// Stops the system. Relay is asked to (SIGTERM), and with XDP prints its program's
    /// verdict counters as it exits: the packets counted `forwarded` (sent on by the
    /// program itself) come back. The others are killed and give `None`.
    pub fn stop(mut self) -> anyhow::Result<Option<u64>> {
        let Some(mut process) = self.process.take() else {
            return Ok(None);
        };
        let Some(mut stdout) = process.0.stdout.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(process.0.id().cast_signed());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        let text = rx
            .recv_timeout(START_TIMEOUT)
            .with_context(|| format!("relay (pid {pid}) did not exit within {START_TIMEOUT:?}"))?;
        process.0.wait()?;
        Ok(verdict_packets(&text, relay_common::Verdict::Forwarded))
    }
}

/// The packets of `verdict` in the table Relay prints on exit (verdict, action, packets,
/// bytes), if it printed one.
fn verdict_packets(stdout: &str, verdict: relay_common::Verdict) -> Option<u64> {
    stdout.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != verdict.name() {
            return None;
        }
        fields.nth(1)?.parse().ok()
    })
}

/// Starts `system` on the relay host and returns once it serves.
pub fn start(lab: &Lab, system: System, relay: &Path) -> anyhow::Result<Running> {
    wait_port_free(lab)?;
    match system {
        System::Ceiling => {
            let bounce = lab.in_netns(Host::Relay, || {
                let mut bounce = Bounce::load()?;
                bounce.attach(xtask::lab::HOST_IF, XdpModeChoice::Auto)?;
                anyhow::Ok(bounce)
            })??;
            Ok(Running {
                process: None,
                _bounce: Some(bounce),
                _state: None,
            })
        }
        System::Coturn => {
            let ip = Host::Relay.ipv4().to_string();
            let peer = Host::Peer.ipv4().to_string();
            let user = format!("{USER}:{PASSWORD}");
            let mut command = lab.command(Host::Relay, "turnserver");
            command
                .args(["-n", "--listening-ip", &ip, "--relay-ip", &ip])
                .args(["--listening-port", &TURN_PORT.to_string()])
                .args(["--lt-cred-mech", "--user", &user, "--realm", REALM])
                .args(["--allowed-peer-ip", &peer])
                // Its own relayed addresses, the hairpin scenario's peers. coturn 4.6 denies
                // only loopback (`--allow-loopback-peers`) and 0.0.0.0 by default, so this
                // only says what the scenario needs, as Relay's /24 does.
                .args(["--allowed-peer-ip", &ip])
                .args(["--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay"])
                .args(["--no-cli", "--no-stdout-log", "--simple-log"])
                .args(["--log-file", "/dev/null", "--pidfile", "/dev/null"]);
            let process = Background(
                command
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting turnserver (`cargo xtask setup` installs coturn)")?,
            );
            lab.wait_udp_bound(Host::Relay, TURN_PORT)?;
            Ok(Running {
                process: Some(process),
                _bounce: None,
                _state: None,
            })
        }
        System::RelayXdp | System::RelayUring | System::RelayMmsg => {
            start_relay(lab, system, relay, None)
        }
        System::Gstreamer => bail!("{} speaks no TURN", system.title()),
    }
}

/// Starts Relay as `system` says, with its control API when `api_token` is given.
fn start_relay(
    lab: &Lab,
    system: System,
    relay: &Path,
    api_token: Option<&str>,
) -> anyhow::Result<Running> {
    let state = StateDir::new()?;
    let ip = Host::Relay.ipv4().to_string();
    let mut command = lab.command(Host::Relay, relay.to_str().context("non-UTF-8 path")?);
    command
        .args(["run", "--listening-ip", &ip, "--relay-ip", &ip])
        .args(["--listening-port", &TURN_PORT.to_string()])
        .args(["--user", &format!("{USER}:{PASSWORD}"), "--realm", REALM])
        .args(["--allowed-peer-ip", &format!("{}/24", Host::Peer.ipv4())])
        .args(["--no-tcp", "--no-tls", "--instance", "bench"])
        .arg("--state-dir")
        .arg(&state.0);
    if let Some(token) = api_token {
        let file = state.0.join("api-token");
        std::fs::write(&file, token)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        command
            .args(["--api-listen", API, "--api-token-file"])
            .arg(&file);
    }
    match system {
        System::RelayXdp => command.args(["--interface", xtask::lab::HOST_IF, "--detach-on-exit"]),
        System::RelayUring => command.args(["--no-xdp", "--io", "uring"]),
        _ => command.args(["--no-xdp", "--io", "mmsg"]),
    };
    let mut process = Background(
        command
            .env("RUST_LOG", "warn,relay::io=info")
            // Nothing but the verdict table on exit (see `Running::stop`).
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting relay")?,
    );
    wait_for_line(&mut process, "TURN on")?;
    Ok(Running {
        process: Some(process),
        _bounce: None,
        _state: Some(state),
    })
}

/// Starts `system` for the fan-out scenario: Relay with a room whose camera is the
/// publisher and whose endpoints send its video track to every address of `subscribers`,
/// or GStreamer's pipeline sending to them all. Returns it and the address the publisher
/// sends to.
pub fn start_fanout(
    lab: &Lab,
    system: System,
    relay: &Path,
    subscribers: &[SocketAddrV4],
) -> anyhow::Result<(Running, SocketAddrV4)> {
    if system == System::Gstreamer {
        wait_port_free(lab)?;
        let clients: Vec<String> = subscribers.iter().map(ToString::to_string).collect();
        // As people write it, with Relay's socket buffers (4 MiB) for a fair start.
        let mut command = lab.command(Host::Relay, "gst-launch-1.0");
        command
            .args(["-q", "udpsrc", &format!("address={}", Host::Relay.ipv4())])
            .args([&format!("port={GSTREAMER_PORT}"), "buffer-size=4194304"])
            .args([
                "!",
                "multiudpsink",
                &format!("clients={}", clients.join(",")),
            ])
            .args(["buffer-size=4194304", "sync=false", "async=false"]);
        let process = Background(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("gst-launch-1.0 (`cargo xtask setup` installs GStreamer)")?,
        );
        lab.wait_udp_bound(Host::Relay, GSTREAMER_PORT)?;
        let running = Running {
            process: Some(process),
            _bounce: None,
            _state: None,
        };
        return Ok((
            running,
            SocketAddrV4::new(Host::Relay.ipv4(), GSTREAMER_PORT),
        ));
    }
    anyhow::ensure!(system.is_relay(), "{} has no rooms", system.title());
    wait_port_free(lab)?;
    let token = format!("bench-{}", std::process::id());
    let running = start_relay(lab, system, relay, Some(&token))?;
    let camera = lab.in_netns(Host::Relay, || room(&token, subscribers))??;
    Ok((running, camera))
}

/// The fan-out room, through the control API as `relay room` makes one: the camera, its
/// video track (the generator's stream 0) and one subscriber endpoint per address. Returns
/// the camera endpoint's address on the relay.
fn room(token: &str, subscribers: &[SocketAddrV4]) -> anyhow::Result<SocketAddrV4> {
    use relay::room::api::Request;
    use serde_json::{from_value, json};
    let token = relay::http::Token::new(token).context("an empty token")?;
    let api = relay::http::Client::new(&format!("http://{API}"), &token);
    let call = |request: Request| api.call(&request).with_context(|| format!("{request:?}"));
    let room = ROOM.to_owned();
    call(Request::CreateRoom(from_value(json!({ "name": ROOM }))?))?;
    // Endpoints that never send stay: no idle expiry while trials pause.
    let endpoint = |name: &str, remote: SocketAddrV4| {
        from_value(json!({ "name": name, "remote": remote, "idle_timeout_secs": 0 }))
    };
    let camera = call(Request::CreateEndpoint {
        room: room.clone(),
        spec: endpoint("camera", publisher_addr())?,
    })?
    .context("no endpoint in the answer")?;
    let ssrc = crate::wire::Probe {
        stream: 0,
        seq: 0,
        sent_ns: 0,
        trial: 0,
    }
    .ssrc();
    call(Request::CreateTrack {
        room: room.clone(),
        spec: from_value(json!({
            "name": "video", "endpoint": "camera", "ssrc": ssrc, "kind": "video"
        }))?,
    })?;
    for (i, addr) in subscribers.iter().enumerate() {
        let name = format!("class-{i}");
        call(Request::CreateEndpoint {
            room: room.clone(),
            spec: endpoint(&name, *addr)?,
        })?;
        call(Request::Subscribe {
            room: room.clone(),
            endpoint: name,
            track: "video".to_owned(),
            spec: from_value(json!({}))?,
        })?;
    }
    let local = camera["local"]
        .as_str()
        .context("no local address in the answer")?;
    Ok(local.parse()?)
}

/// Waits (at most 10 s) until the TURN port is free on the relay host: an io_uring
/// instance releases its sockets in the kernel's own time after its process is gone.
fn wait_port_free(lab: &Lab) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if lab
            .in_netns(Host::Relay, || UdpSocket::bind(relay_addr()))?
            .is_ok()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "UDP {} still in use 10 s after the last system stopped",
                relay_addr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the relay logs `needle`; its log keeps being read (and thrown away) after,
/// so that it never blocks on a full pipe.
fn wait_for_line(process: &mut Background, needle: &'static str) -> anyhow::Result<()> {
    let stderr = process.0.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = false;
        let mut tail = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("    relay | {line}");
            }
            if !seen {
                seen = line.contains(needle);
                tail.push(line);
                let _ = tx.send((seen, tail.join("\n")));
            }
        }
        let _ = tx.send((false, tail.join("\n")));
    });
    loop {
        match rx.recv_timeout(START_TIMEOUT) {
            Ok((true, _)) => return Ok(()),
            Ok((false, log)) if process.0.try_wait()?.is_some() => {
                bail!("relay exited before serving:\n{log}")
            }
            Ok(_) => {}
            Err(_) => bail!(
                "relay did not log {needle:?} within {START_TIMEOUT:?} (pid {})",
                process.0.id()
            ),
        }
    }
}

/// The relay's state directory for one run, removed afterwards.
struct StateDir(std::path::PathBuf);

impl StateDir {
    fn new() -> anyhow::Result<Self> {
        // One per start: a relay never takes up a predecessor's allocations.
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("relay-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Allocations on the relay host from client A, each with `CHANNEL` bound to the peer's
/// receiver, set up by a few threads in parallel. The clients hold the sockets (and so the
/// 5-tuples) the media is sent from.
pub fn allocate(lab: &Lab, n: usize) -> anyhow::Result<Vec<Client>> {
    let peer = SocketAddr::V4(peer_addr());
    in_parallel(allocate_on(lab, Host::ClientA, n)?, |i, mut client| {
        client
            .channel_bind(CHANNEL, peer)
            .with_context(|| format!("channel bind {i}"))?;
        Ok(client)
    })
}

/// Pairs of allocations for the hairpin scenario (relay/relay, two browsers on one relay):
/// one from client A and one from client B, each bound to the other's relayed address, A's
/// on `CHANNEL` and B's on `HAIRPIN_CHANNEL` (ChannelBind installs the permission too). A's
/// clients send; B's sockets are where the relay delivers.
pub fn allocate_pairs(lab: &Lab, n: usize) -> anyhow::Result<(Vec<Client>, Vec<Client>)> {
    let a = allocate_on(lab, Host::ClientA, n)?;
    let b = allocate_on(lab, Host::ClientB, n)?;
    let pairs = in_parallel(a.into_iter().zip(b).collect(), |i, (mut a, mut b)| {
        a.channel_bind(CHANNEL, b.relayed())
            .with_context(|| format!("channel bind {i} from client A"))?;
        b.channel_bind(HAIRPIN_CHANNEL, a.relayed())
            .with_context(|| format!("channel bind {i} from client B"))?;
        Ok((a, b))
    })?;
    Ok(pairs.into_iter().unzip())
}

/// `n` allocations from sockets of their own on `host`.
fn allocate_on(lab: &Lab, host: Host, n: usize) -> anyhow::Result<Vec<Client>> {
    let sockets = lab.in_netns(host, || {
        (0..n)
            .map(|_| UdpSocket::bind((host.ipv4(), 0)))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let server = SocketAddr::V4(relay_addr());
    in_parallel(sockets, |i, socket| {
        Client::allocate(socket, server, USER, PASSWORD)
            .with_context(|| format!("allocation {i} from {host}"))
    })
}

/// `f` on each item with its index, by a few threads (contiguous shares); the results in
/// the items' order.
fn in_parallel<T: Send, U: Send>(
    items: Vec<T>,
    f: impl Fn(usize, T) -> anyhow::Result<U> + Sync,
) -> anyhow::Result<Vec<U>> {
    const THREADS: usize = 8;
    let chunk = items.len().div_ceil(THREADS).max(1);
    let mut items: Vec<(usize, T)> = items.into_iter().enumerate().collect();
    let f = &f;
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        while !items.is_empty() {
            let mine: Vec<_> = items.drain(..chunk.min(items.len())).collect();
            workers.push(scope.spawn(move || {
                mine.into_iter()
                    .map(|(i, item)| f(i, item))
                    .collect::<anyhow::Result<Vec<_>>>()
            }));
        }
        let mut out = Vec::new();
        for w in workers {
            out.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("allocating thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// The frames of each path: what a stream's packets look like on client A's wire.
pub mod frames {
    use super::{Client, Host, Media, RECEIVER_PORT, SocketAddr, SocketAddrV4, Template};
    use super::{bail, relay_addr};

    /// ChannelData from each client's socket to the relay.
    pub fn turn(clients: &[Client], media: Media) -> anyhow::Result<Vec<Template>> {
        clients
            .iter()
            .map(|c| {
                let SocketAddr::V4(src) = c.socket().local_addr()? else {
                    bail!("an IPv4 client socket has an IPv6 address")
                };
                Ok(Template::new(
                    (Host::ClientA.mac(), Host::Relay.mac()),
                    src,
                    relay_addr(),
                    media.payload_len(),
                    media == Media::Video,
                ))
            })
            .collect()
    }

    /// Straight from client A to `to`'s receiver, whose ports are `ports` (one per stream),
    /// one source port per stream: the path with no relay in it.
    pub fn direct(to: Host, ports: &[u16], media: Media) -> Vec<Template> {
        ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                Template::new(
                    (Host::ClientA.mac(), to.mac()),
                    SocketAddrV4::new(Host::ClientA.ipv4(), 20_000 + (i % 40_000) as u16),
                    SocketAddrV4::new(to.ipv4(), *port),
                    media.payload_len(),
                    media == Media::Video,
                )
            })
            .collect()
    }

    /// Bare RTP from client A: the publisher to `to` (a room's camera endpoint, or
    /// GStreamer), or without a system, straight to each of `subscribers`, one stream each.
    pub fn rtp(to: &[SocketAddrV4], from_publisher: bool) -> Vec<Template> {
        to.iter()
            .enumerate()
            .map(|(i, dst)| {
                let (src, mac) = if from_publisher {
                    (super::publisher_addr(), Host::Relay.mac())
                } else {
                    let port = 20_000 + (i % 40_000) as u16;
                    (
                        SocketAddrV4::new(Host::ClientA.ipv4(), port),
                        Host::Peer.mac(),
                    )
                };
                Template::rtp(
                    (Host::ClientA.mac(), mac),
                    src,
                    *dst,
                    Media::Video.payload_len(),
                    true,
                )
            })
            .collect()
    }

    /// [`direct`] to the peer's one receiver, the baseline of the peer scenario.
    pub fn baseline(streams: usize, media: Media) -> Vec<Template> {
        direct(Host::Peer, &vec![RECEIVER_PORT; streams], media)
    }

    /// To the relay host, one destination port per stream (as relayed addresses would
    /// be), from client A's receiver, where the bounce sends them back.
    pub fn bounce(streams: usize, media: Media) -> Vec<Template> {
        (0..streams)
            .map(|i| {
                Template::new(
                    (Host::ClientA.mac(), Host::Relay.mac()),
                    SocketAddrV4::new(Host::ClientA.ipv4(), RECEIVER_PORT),
                    SocketAddrV4::new(Host::Relay.ipv4(), 49_152 + (i % 16_384) as u16),
                    media.payload_len(),
                    media == Media::Video,
                )
            })
            .collect()
    }
}

/// The passing XDP program the switch's port toward the relay needs so that frames sent
/// back out with XDP_TX (by Relay or the bounce) are delivered on veth.
pub fn switch_port(lab: &Lab) -> anyhow::Result<Dataplane> {
    lab.in_netns_named("sw", || {
        let mut dp = Dataplane::load()?;
        dp.attach("relay", XdpModeChoice::Auto)?;
        anyhow::Ok(dp)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `relay run` prints on SIGINT/SIGTERM with XDP (relay's `VerdictCounters`).
    #[test]
    fn reads_the_forwarded_row_of_relays_exit_table() {
        let stdout = "XDP verdicts on eth0 since the data plane was created:\n\
                      verdict     action      packets          bytes\n\
                      udp4          pass           17           2210\n\
                      forwarded       tx        40000        8480000\n";
        assert_eq!(
            verdict_packets(stdout, relay_common::Verdict::Forwarded),
            Some(40_000)
        );
        assert_eq!(
            verdict_packets(stdout, relay_common::Verdict::Udp4),
            Some(17)
        );
        assert_eq!(verdict_packets("", relay_common::Verdict::Forwarded), None);
    }
}
