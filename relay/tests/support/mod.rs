//! Helpers shared by the lab tests: the real `relay` binary run inside a lab namespace.
// Every test binary compiles this module and uses only part of it.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use xtask::lab::{Host, Lab};

/// How long a relay may take to load and attach before a test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET url` from `host`'s namespace: the status and the body, whatever the status.
pub(crate) fn http_get(lab: &Lab, host: Host, url: &str) -> (u16, String) {
    lab.in_netns(host, || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent.get(url).call().unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), body)
    })
    .unwrap()
}

/// The `relay` binary running in a lab namespace. Killed on drop if still running.
pub(crate) struct RunningRelay {
    child: Child,
    /// Lines the relay logs (stderr), as they come.
    pub(crate) log: mpsc::Receiver<String>,
    /// Every line logged so far.
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The thread reading the log; it ends when the relay closes stderr.
    reader: Option<std::thread::JoinHandle<()>>,
    /// The relay's `--state-dir`, its own.
    state: Option<TempDir>,
}

/// The relay's base configuration in the lab: the relay host's addresses of both families,
/// realm `lab`, the user `alice:wonderland`. Tests add the flags they are about.
const LAB_RELAY: &[&str] = &[
    "--listening-ip",
    "10.77.0.1",
    "--listening-ip",
    "fd77::1",
    "--relay-ip",
    "10.77.0.1",
    "--relay-ip",
    "fd77::1",
    "--realm",
    "lab",
    "--user",
    "alice:wonderland",
];

/// `relay run` with the lab's base configuration and `extra`.
pub(crate) fn lab_relay_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(LAB_RELAY);
    args.extend(extra);
    args
}

/// `relay run` with the lab's base configuration, XDP on eth0 relaying to the peer host,
/// its data plane pinned as `instance` and its state in `state_dir`.
pub(crate) fn pinned_relay_args<'a>(instance: &'a str, state_dir: &'a str) -> Vec<&'a str> {
    lab_relay_args(&[
        "--interface",
        "eth0",
        "--allowed-peer-ip",
        "10.77.0.21",
        "--instance",
        instance,
        "--state-dir",
        state_dir,
    ])
}

/// Sends `data` on `channel` of `client`'s allocation, as ChannelData.
pub(crate) fn send_on_channel(client: &relay::turn::client::Client, channel: u16, data: &[u8]) {
    let frame = relay::stun::ChannelData { channel, data }.encode(false);
    client.socket().send_to(&frame, client.server()).unwrap();
}

impl RunningRelay {
    /// `relay run` on the lab's relay host with the base configuration and `extra`, once it
    /// serves (its ready line comes after its signal handlers and start-up warnings).
    pub(crate) fn in_lab(lab: &Lab, extra: &[&str]) -> Self {
        Self::start(lab, Host::Relay, &lab_relay_args(extra), "TURN on")
    }

    /// Starts `relay <args>` in `host`'s namespace and waits for the log line that contains
    /// `ready` (an event, not a sleep).
    /// A `relay run` gets a state directory of its own (removed on drop), so that relays
    /// of tests running side by side never take up each other's allocations.
    pub(crate) fn start(lab: &Lab, host: Host, args: &[&str], ready: &str) -> Self {
        let command = lab.command(host, env!("CARGO_BIN_EXE_relay"));
        if args.first() != Some(&"run") {
            return Self::start_command(command, args, ready);
        }
        let dir = TempDir::new(&format!("{}-{}", lab.prefix(), host.name()));
        let mut with_state = args.to_vec();
        with_state.extend(["--state-dir", dir.0.to_str().unwrap()]);
        let mut relay = Self::start_command(command, &with_state, ready);
        relay.state = Some(dir);
        relay
    }

    /// As [`RunningRelay::start`], with a command prepared by the caller.
    pub(crate) fn start_command(
        mut command: std::process::Command,
        args: &[&str],
        ready: &str,
    ) -> Self {
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning relay");
        let (tx, log) = mpsc::channel();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let seen_by_reader = std::sync::Arc::clone(&seen);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("relay: {line}");
                seen_by_reader.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let relay = Self {
            child,
            log,
            seen,
            reader: Some(reader),
            state: None,
        };
        relay.wait_for_log(ready);
        relay
    }

    /// Whether any line logged so far contains `needle`.
    pub(crate) fn logged(&self, needle: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Every line logged so far.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub(crate) fn wait_for_log(&self, needle: &str) -> String {
        loop {
            match self.log.recv_timeout(START_TIMEOUT) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("relay never logged {needle:?}: {e}"),
            }
        }
    }

    /// The relay's process id (`ip netns exec`, `nsenter` and `setpriv` exec it: the child is
    /// the relay).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGHUP, say) to the relay, which goes on running.
    pub(crate) fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id().cast_signed()), signal).unwrap();
    }

    /// Kills the relay with SIGKILL (no clean-up of its own) and waits for it to be gone.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal`, waits for a clean exit and returns what the relay printed on stdout.
    pub(crate) fn stop(self, signal: Signal) -> String {
        self.stop_logged(signal).0
    }

    /// As [`RunningRelay::stop`], also returning every line the relay logged, to the last.
    pub(crate) fn stop_logged(mut self, signal: Signal) -> (String, Vec<String>) {
        // `ip netns exec` execs the relay, so the child's pid is the relay's.
        nix::sys::signal::kill(Pid::from_raw(self.child.id().cast_signed()), signal).unwrap();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "relay exited with {status} after {signal}; stdout:\n{stdout}"
        );
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (stdout, self.log_lines())
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On veth, a frame sent with XDP_TX is delivered only if the receiving end runs an XDP
/// program too (a fact of this kernel; real NICs need nothing): gives the switch's port
/// toward the relay one, a passing one, for as long as the returned value lives.
pub(crate) fn xdp_on_switch_port(lab: &Lab) -> relay::dataplane::Dataplane {
    lab.in_netns_named("sw", || {
        let mut dp = relay::dataplane::Dataplane::load().unwrap();
        dp.attach("relay", relay::dataplane::XdpModeChoice::Auto)
            .unwrap();
        dp
    })
    .unwrap()
}

/// A TURN client on `host` with an allocation on the lab relay (10.77.0.1:3478) and
/// `channel` bound to `peer`, its socket in `host`'s namespace.
pub(crate) fn channel_client(
    lab: &Lab,
    host: Host,
    (user, password): (&str, &str),
    channel: u16,
    peer: std::net::SocketAddr,
) -> relay::turn::client::Client {
    lab.in_netns(host, || {
        let socket = std::net::UdpSocket::bind((host.ipv4(), 0)).unwrap();
        let server = std::net::SocketAddr::from((Host::Relay.ipv4(), 3478));
        let mut c = relay::turn::client::Client::allocate(socket, server, user, password).unwrap();
        c.channel_bind(channel, peer).unwrap();
        c
    })
    .unwrap()
}

/// What the relay logged at exit after `prefix` ("UDP data path at exit: ", "TURN server
/// at exit: "): its counters.
pub(crate) fn exit_figures(log: &[String], prefix: &str) -> String {
    log.iter().find_map(|l| l.split_once(prefix)).map_or_else(
        || panic!("the relay logged no {prefix:?}"),
        |(_, f)| f.to_owned(),
    )
}

/// Packets and bytes of one verdict's row in the table the relay prints on exit.
pub(crate) fn verdict_row(stdout: &str, verdict: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(verdict))
        .unwrap_or_else(|| panic!("no {verdict} row in:\n{stdout}"));
    let fields: Vec<_> = line.split_whitespace().collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// The XDP attachment of `eth0` in `host`'s namespace as `ip link` shows it ("xdp",
/// "xdpgeneric", ...), or `None`.
pub(crate) fn xdp_attachment(lab: &Lab, host: Host) -> Option<String> {
    let out = lab
        .command(host, "ip")
        .args(["-o", "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .map(str::to_owned)
}

/// The programs on `eth0`'s TC ingress (tcx) in `host`'s namespace, by name.
pub(crate) fn tc_ingress_programs(lab: &Lab, host: Host) -> Vec<String> {
    lab.in_netns(host, || {
        let (_, programs) =
            aya::programs::SchedClassifier::query_tcx("eth0", aya::programs::TcAttachType::Ingress)
                .unwrap();
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    })
    .unwrap()
}

/// The relay binary in the relay host's network namespace, with the host's mounts
/// (`nsenter --net`, not `ip netns exec`, whose private /sys would give it a private
/// bpffs): what it pins outlives it, and other commands run so see the same pins.
pub(crate) fn relay_with_host_mounts(lab: &Lab) -> std::process::Command {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", lab.netns(Host::Relay)))
        .arg(env!("CARGO_BIN_EXE_relay"));
    c
}

/// One screen of `relay top --once` (rates over 200 ms) for the instance, next to a relay
/// run with the host's mounts; the command must succeed.
pub(crate) fn relay_top_once(lab: &Lab, instance: &str, state_dir: &str) -> String {
    let out = relay_with_host_mounts(lab)
        .args(["top", "--once", "--interval", "200", "--instance", instance])
        .args(["--state-dir", state_dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends ChannelData on `channel`, carrying sequence numbers (8 bytes), at `rate` a second
/// until `sending` is cleared; returns how many were sent.
pub(crate) fn stream_channel(
    socket: &std::net::UdpSocket,
    server: std::net::SocketAddr,
    (channel, rate): (u16, u64),
    sending: &std::sync::atomic::AtomicBool,
) -> u64 {
    let start = std::time::Instant::now();
    let mut seq = 0_u64;
    while sending.load(std::sync::atomic::Ordering::Acquire) {
        let due = rate * start.elapsed().as_micros() as u64 / 1_000_000;
        while seq < due {
            let frame = relay::stun::ChannelData {
                channel,
                data: &seq.to_be_bytes(),
            }
            .encode(false);
            socket.send_to(&frame, server).unwrap();
            seq += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    seq
}

/// Clears the flag when dropped: a stream stops whatever way the test ends.
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("relay-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The relay with its control API on 10.77.0.1:8080 (and `extra` arguments), and the
/// token file `relay room` reads.
pub(crate) struct RoomsRelay {
    pub(crate) lab: Lab,
    pub(crate) relay: RunningRelay,
    /// The token file and the relay's state directory: they outlive a restart.
    dir: TempDir,
    /// The relay's arguments, and whether it runs with the host's mounts.
    args: Vec<String>,
    host_mounts: bool,
}

impl RoomsRelay {
    pub(crate) fn new(prefix: &str, extra: &[&str]) -> Self {
        Self::start(prefix, &lab_relay_args(&[]), extra)
    }

    /// As [`RoomsRelay::new`], with the relay's IPv6 address its only `--relay-ip`: room
    /// endpoints are IPv6.
    pub(crate) fn ipv6(prefix: &str, extra: &[&str]) -> Self {
        let base = [
            "run",
            "--listening-ip",
            "10.77.0.1",
            "--listening-ip",
            "fd77::1",
            "--relay-ip",
            "fd77::1",
            "--realm",
            "lab",
            "--user",
            "alice:wonderland",
        ];
        Self::start(prefix, &base, extra)
    }

    /// As [`RoomsRelay::new`], entered into the relay host's network namespace only
    /// (`nsenter --net`), keeping the host's mounts: the data plane it pins (give it
    /// `--instance` and `--state-dir` in `extra`) outlives it, as in `lab_restart`.
    pub(crate) fn with_host_mounts(prefix: &str, extra: &[&str]) -> Self {
        Self::start_in(prefix, &lab_relay_args(&[]), extra, true)
    }

    fn start(prefix: &str, base: &[&str], extra: &[&str]) -> Self {
        Self::start_in(prefix, base, extra, false)
    }

    fn start_in(prefix: &str, base: &[&str], extra: &[&str], host_mounts: bool) -> Self {
        let lab = Lab::up(prefix).unwrap();
        let dir = TempDir::new(&format!("{prefix}-state"));
        let file = dir.0.join("token");
        std::fs::write(&file, "lab-token-0123456789\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut args: Vec<String> = base.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--api-listen", "10.77.0.1:8080", "--api-token-file"].map(str::to_owned));
        args.push(file.to_str().unwrap().to_owned());
        if !extra.contains(&"--state-dir") {
            args.extend(["--state-dir".to_owned(), dir.0.to_str().unwrap().to_owned()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let relay = Self::spawn(&lab, &args, host_mounts);
        Self {
            lab,
            relay,
            dir,
            args,
            host_mounts,
        }
    }

    fn spawn(lab: &Lab, args: &[String], host_mounts: bool) -> RunningRelay {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let command = if host_mounts {
            relay_with_host_mounts(lab)
        } else {
            lab.command(Host::Relay, env!("CARGO_BIN_EXE_relay"))
        };
        RunningRelay::start_command(command, &args, "TURN on")
    }

    /// Kills the relay (SIGKILL) and starts the next one with the same settings and state.
    pub(crate) fn restart(&mut self) {
        self.relay.kill();
        self.relay = Self::spawn(&self.lab, &self.args, self.host_mounts);
    }

    /// Starts the relay again with the same arguments, the running one having been killed
    /// or stopped; returns the one it replaces.
    pub(crate) fn start_again(&mut self) -> RunningRelay {
        let next = Self::spawn(&self.lab, &self.args, self.host_mounts);
        std::mem::replace(&mut self.relay, next)
    }

    /// The relay's state directory.
    pub(crate) fn state_dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// `relay room --json ARGS` from client A; its JSON answer.
    pub(crate) fn room(&self, args: &[&str]) -> serde_json::Value {
        let token = self.dir.0.join("token");
        let out = self
            .lab
            .command(Host::ClientA, env!("CARGO_BIN_EXE_relay"))
            .args([
                "room",
                "--api",
                "http://10.77.0.1:8080",
                "--token-file",
                token.to_str().unwrap(),
                "--json",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "relay room {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl RoomsRelay {
    /// The model case: room "surgery" with a GStreamer SRTP VP8 camera (SSRC `ssrc`, on
    /// client A) and `classrooms` GStreamer viewers subscribed (on the peer host, ports
    /// 6000, 6002, ...); the camera sends `frames` frames, from port `camera_port` when
    /// given (the endpoint's remote then given too), else from any (the endpoint latched
    /// from its first packet). Returns the frames each classroom decoded and the room as
    /// `relay room show` gives it.
    pub(crate) fn surgery(
        &self,
        ssrc: u32,
        classrooms: u16,
        frames: usize,
        camera_port: Option<u16>,
    ) -> (Vec<usize>, serde_json::Value) {
        use xtask::gstreamer::{Viewer, camera_from};
        self.room(&["create", "surgery"]);
        let remote = camera_port.map(|p| format!("10.77.0.11:{p}"));
        let mut add = vec!["endpoint", "add", "surgery", "cam"];
        if let Some(remote) = &remote {
            add.extend(["--remote", remote.as_str()]);
        }
        let cam = self.room(&add);
        let ssrc_arg = ssrc.to_string();
        self.room(&[
            "track",
            "add",
            "surgery",
            "video",
            "--endpoint",
            "cam",
            "--ssrc",
            &ssrc_arg,
            "--kind",
            "video",
        ]);
        let viewers: Vec<Viewer> = (0..classrooms)
            .map(|i| {
                let port = 6000 + 2 * i;
                let name = format!("class-{i}");
                let remote = format!("10.77.0.21:{port}");
                self.room(&["endpoint", "add", "surgery", &name, "--remote", &remote]);
                self.room(&["subscribe", "surgery", &name, "video"]);
                Viewer::start(&self.lab, Host::Peer, port, ssrc).unwrap()
            })
            .collect();
        let cam_port = cam["local"]
            .as_str()
            .unwrap()
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .port();
        camera_from(
            &self.lab,
            Host::ClientA,
            camera_port.unwrap_or(0),
            Host::Relay.ipv4().into(),
            cam_port,
            ssrc,
            frames,
        )
        .unwrap();
        let decoded = viewers.iter().map(|v| v.decoded(frames)).collect();
        (decoded, self.room(&["show", "surgery"]))
    }
}

/// Whether the API's `counters` say a packet was forwarded within the last 30 seconds
/// (`last_packet_unix_ms`).
pub(crate) fn last_packet_is_recent(counters: &serde_json::Value) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    counters["last_packet_unix_ms"]
        .as_u64()
        .is_some_and(|at| at <= now_ms + 1_000 && now_ms - at < 30_000)
}
