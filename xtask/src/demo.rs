//! `cargo xtask demo`: the relay's main job on an embedded default, in the lab, told in words
//! and numbers.
//!
//! Relay runs on the relay host with `demo.toml`: TURN on UDP and TCP, the XDP program on
//! its `eth0`. coturn's own client, turnutils_uclient, runs TURN sessions from client A to
//! turnutils_peer on the peer host, which echoes everything back: audio-sized packets over
//! UDP with channels, over TCP with Send indications (a firewall that passes only TCP), and
//! over IPv6. Then a room: a GStreamer camera on client A (SRTP VP8, as an operating
//! room's encoder would send it) reaches three GStreamer classrooms, set up with `relay
//! room` over the control API. Then client B writes frames onto the wire that no stack
//! would send. The relay's XDP counters on exit say what the kernel saw. Every TURN request
//! and every join, publish and subscription is decided by the shipped telemedicine Rego
//! policy with this site's data (`demo-policy.json`): a visitor's join is refused, and the
//! audit log has every decision.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use xtask::{
    coturn, gstreamer,
    lab::{Background, Host, Lab},
};

const CONFIG: &str = include_str!("demo.toml");
const POLICY: &str = include_str!("../../appliance/policy/telemedicine.rego");
const POLICY_DATA: &str = include_str!("demo-policy.json");
const PEER_PORT: u16 = 3480;
const CLIENTS: u32 = 2;
const PACKETS: u32 = 250;
const BROKEN_FRAMES: u32 = 5;
/// The room's camera: 3 s of video at 30 fps.
const FRAMES: usize = 90;
const CAMERA_SSRC: u32 = 0x5eed;
/// The control API, on the relay host's loopback.
const API: &str = "http://127.0.0.1:8080";

/// Each session: 2 clients x 250 packets of 172 bytes (RTP + 160 bytes of G.711), one
/// every 20 ms: 5 s of a call each way.
const SESSION: coturn::Session = coturn::Session {
    messages: PACKETS,
    clients: CLIENTS,
    length: 172,
    peer_port: PEER_PORT,
};

/// A TURN session, named, as turnutils_uclient reported it.
struct Session {
    name: &'static str,
    report: coturn::Report,
}

/// Runs the demo with `relay`, built. Needs root.
pub(crate) fn run(relay: &std::path::Path) -> anyhow::Result<()> {
    println!("demo: building the lab (5 hosts on one bridge)");
    let lab = Lab::up("relay-demo")?;
    // The config and the relay's state live in a directory of the demo's own.
    let dir = std::env::temp_dir().join(format!("relay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("relay.toml");
    let (policy, data) = (dir.join("telemedicine.rego"), dir.join("site.json"));
    std::fs::write(&policy, POLICY)?;
    std::fs::write(&data, POLICY_DATA)?;
    // TOML basic strings, quoted as JSON quotes them.
    let quoted = |p: &std::path::Path| serde_json::Value::from(p.display().to_string());
    std::fs::write(
        &config,
        format!(
            "{CONFIG}# The shipped telemedicine policy decides every TURN request and room join, \
             publish and subscription,\n# with this site's data; every decision goes to the audit log.\n\
             policy = [{}]\npolicy-data = {}\naudit-log = {}\n",
            quoted(&policy),
            quoted(&data),
            quoted(&dir.join("audit.log"))
        ),
    )?;
    // It holds passwords: its owner's only; so does the control API's token.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let token = dir.join("api-token");
    std::fs::write(&token, format!("demo-{}\n", std::process::id()))?;
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let result = demo(&lab, relay, &config);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo(lab: &Lab, relay: &std::path::Path, config: &std::path::Path) -> anyhow::Result<()> {
    // A veth delivers a frame sent with XDP_TX only to a peer that runs XDP too (real NICs
    // need nothing): the switch's port toward the relay gets the counting program.
    let mut switch_port = Background(
        lab.command_in("sw", relay.to_str().context("non-UTF-8 path")?)
            .args(["attach", "--interface", "relay"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("attaching XDP to the switch port")?,
    );
    let switch_log = follow(&mut switch_port.0, "switch")?;
    while !switch_log
        .recv_timeout(Duration::from_secs(30))
        .context("switch port XDP did not attach")?
        .contains("counting on")
    {}

    println!(
        "demo: starting relay with the embedded default:\n{}",
        indent(&std::fs::read_to_string(config)?)
    );
    let mut child = Background(
        lab.command(Host::Relay, relay.to_str().context("non-UTF-8 path")?)
            .args(["run", "--api-listen", "127.0.0.1:8080", "--api-token-file"])
            .arg(config.with_file_name("api-token"))
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(config.parent().context("config in a directory")?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting relay")?,
    );
    let log = follow(&mut child.0, "relay")?;
    let mut mode = String::new();
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .context("relay did not start within 30 s")?;
        if let Some(m) = line
            .split(" in ")
            .nth(1)
            .filter(|_| line.contains("XDP attached"))
        {
            m.trim_end_matches(" mode").clone_into(&mut mode);
        }
        if line.contains("TURN on") {
            break;
        }
    }
    let peer = coturn::start_peer(lab, Host::Peer, &["10.77.0.21", "fd77::21"], PEER_PORT)?;

    let started = Instant::now();
    let sessions = sessions(lab)?;
    drop(peer);
    let room = room(lab, relay, &config.with_file_name("api-token"))?;

    // A datagram sent after the broken frames on the same path arrives after XDP has judged
    // them: wait for it instead of guessing how long that takes.
    let marker_to = SocketAddr::new(Host::Relay.ipv4().into(), 3479);
    let marker = lab.in_netns(Host::Relay, || UdpSocket::bind(marker_to))??;
    marker.set_read_timeout(Some(Duration::from_secs(5)))?;
    lab.send_frames(Host::ClientB, &broken_frames())?;
    lab.in_netns(Host::ClientB, || {
        UdpSocket::bind("0.0.0.0:0")?.send_to(b"marker", marker_to)
    })??;
    marker
        .recv_from(&mut [0; 16])
        .context("the marker datagram never arrived")?;
    let elapsed = started.elapsed();
    // What Prometheus would scrape, from the API's listener (no token for the probes).
    let metrics = scrape(lab, "/metrics")?;

    kill(Pid::from_raw(child.0.id().cast_signed()), Signal::SIGINT)?;
    let mut table = String::new();
    child
        .0
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut table)?;
    let status = child.0.wait()?;
    if !status.success() {
        bail!("relay exited with {status}");
    }
    let audit = std::fs::read_to_string(config.with_file_name("audit.log"))?;
    report(&sessions, &room, (&table, &metrics, &audit), &mode, elapsed)
}

/// `GET path` on the relay's control API listener (in the relay host's loopback): the
/// response, headers and body.
fn scrape(lab: &Lab, path: &str) -> anyhow::Result<String> {
    lab.in_netns(Host::Relay, || -> anyhow::Result<String> {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:8080")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })?
}

/// What the room's classrooms decoded, and the room as `relay room show` printed it.
struct Room {
    decoded: Vec<(&'static str, usize)>,
    shown: String,
    /// What `relay room` said when the policy refused a visitor's join.
    refused: String,
}

/// A room through the control API: a camera on client A, three classrooms (two on the
/// peer host, one on client B), each a GStreamer pipeline.
/// `relay room` on the relay host, through the control API.
struct RoomCli<'a> {
    lab: &'a Lab,
    relay: &'a str,
    token: &'a str,
}

impl RoomCli<'_> {
    fn run(&self, args: &[&str], json: bool) -> anyhow::Result<std::process::Output> {
        println!("demo: relay room {}", args.join(" "));
        let mut command = self.lab.command(Host::Relay, self.relay);
        command.args(["room", "--api", API, "--token-file", self.token]);
        if json {
            command.arg("--json");
        }
        Ok(command.args(args).output()?)
    }

    /// Its output, or an error with what it said.
    fn ok(&self, args: &[&str], json: bool) -> anyhow::Result<String> {
        let out = self.run(args, json)?;
        if !out.status.success() {
            bail!(
                "relay room {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// A visitor trying to join the surgery: what `relay room` said when the policy refused.
fn visitor_refused(cli: &RoomCli) -> anyhow::Result<String> {
    let visitor = cli.run(
        &[
            "endpoint",
            "add",
            "surgery",
            "visitor",
            "--remote",
            "10.77.0.12:6004",
            "--attribute",
            "role=visitor",
        ],
        false,
    )?;
    if visitor.status.success() {
        bail!("the policy let a visitor join the surgery");
    }
    Ok(String::from_utf8_lossy(&visitor.stderr).trim().to_owned())
}

fn room(lab: &Lab, relay: &std::path::Path, token: &std::path::Path) -> anyhow::Result<Room> {
    let relay = relay.to_str().context("non-UTF-8 path")?;
    let token = token.to_str().context("non-UTF-8 path")?;
    let cli = |args: &[&str], json: bool| RoomCli { lab, relay, token }.ok(args, json);
    // What the policy decides with: the patient's consent, each endpoint's role.
    cli(
        &["create", "surgery", "--attribute", "patient_consent=true"],
        false,
    )?;
    let cam = cli(
        &[
            "endpoint",
            "add",
            "surgery",
            "cam",
            "--attribute",
            "role=surgeon",
        ],
        true,
    )?;
    // The endpoint's address on the relay, from the API's JSON.
    let cam: serde_json::Value = serde_json::from_str(&cam)?;
    let cam_port = cam["local"]
        .as_str()
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .map(|addr| addr.port())
        .context("no local address for the camera")?;
    let ssrc = CAMERA_SSRC.to_string();
    cli(
        &[
            "track",
            "add",
            "surgery",
            "video",
            "--endpoint",
            "cam",
            "--ssrc",
            &ssrc,
            "--kind",
            "video",
        ],
        false,
    )?;
    let classrooms = [
        ("class-1", Host::Peer, 6000),
        ("class-2", Host::Peer, 6002),
        ("class-3", Host::ClientB, 6000),
    ];
    let mut viewers = Vec::new();
    for (name, host, port) in classrooms {
        let remote = format!("{}:{port}", host.ipv4());
        cli(
            &[
                "endpoint",
                "add",
                "surgery",
                name,
                "--remote",
                &remote,
                "--attribute",
                "role=doctor",
            ],
            false,
        )?;
        cli(&["subscribe", "surgery", name, "video"], false)?;
        viewers.push((
            name,
            gstreamer::Viewer::start(lab, host, port, CAMERA_SSRC)?,
        ));
    }
    println!("demo: the camera on client A sends {FRAMES} frames of SRTP VP8 to port {cam_port}");
    gstreamer::camera(
        lab,
        Host::ClientA,
        Host::Relay.ipv4().into(),
        cam_port,
        CAMERA_SSRC,
        FRAMES,
    )?;
    let decoded = viewers
        .iter()
        .map(|(name, viewer)| (*name, viewer.decoded(FRAMES)))
        .collect();
    let shown = cli(&["show", "surgery"], false)?;
    let refused = visitor_refused(&RoomCli { lab, relay, token })?;
    Ok(Room {
        decoded,
        shown,
        refused,
    })
}

/// The demo's TURN sessions, one after the other.
fn sessions(lab: &Lab) -> anyhow::Result<[Session; 3]> {
    Ok([
        session(
            lab,
            "UDP, channels, static user",
            &[
                "-u",
                "classroom",
                "-w",
                "chalkboard",
                "-e",
                "10.77.0.21",
                "10.77.0.1",
            ],
        )?,
        session(
            lab,
            "TCP, Send indications, REST credentials",
            &[
                "-t",
                "-s",
                "-W",
                "demo-secret",
                "-u",
                "cart7",
                "-e",
                "10.77.0.21",
                "10.77.0.1",
            ],
        )?,
        session(
            lab,
            "IPv6, channels, static user",
            &[
                "-x",
                "-u",
                "classroom",
                "-w",
                "chalkboard",
                "-e",
                "fd77::21",
                "fd77::1",
            ],
        )?,
    ])
}

/// Runs turnutils_uclient from client A with `flags`.
fn session(lab: &Lab, name: &'static str, flags: &[&str]) -> anyhow::Result<Session> {
    println!("demo: TURN session over {name}");
    Ok(Session {
        name,
        // -c: no RTCP allocations, so every packet counted is one of the call's.
        report: coturn::uclient(lab, Host::ClientA, &SESSION, &[&["-c"], flags].concat())?,
    })
}

/// Prints what happened; fails if anything went other than it must.
#[expect(
    clippy::cast_precision_loss,
    reason = "packet counts far below 2^52, for a percentage"
)]
fn report(
    sessions: &[Session],
    room: &Room,
    (table, metrics, audit): (&str, &str, &str),
    mode: &str,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let count = |verdict: &str| -> (u64, u64) {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(verdict))
            .and_then(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
            })
            .unwrap_or_default()
    };
    println!("\n{table}");
    println!("What happened, in {:.1} s:", elapsed.as_secs_f64());
    let want = CLIENTS * PACKETS;
    let mut ok = true;
    for s in sessions {
        println!(
            "- {}: turnutils_uclient sent {} packets through Relay to turnutils_peer, which echoed them; {} came back, {} lost, average round trip {:.2} ms (uclient counts whole ms).",
            s.name,
            s.report.sent,
            s.report.received,
            s.report.lost,
            s.report.rtt_ms.unwrap_or(f64::NAN)
        );
        ok &= s.report.is_clean(&SESSION);
    }
    println!(
        "- Room \"surgery\": a GStreamer camera on client A sent {FRAMES} frames of SRTP VP8 to its port on Relay (latched from its first packet); Relay handed every packet, bytes untouched, to the three classrooms that subscribe, each a GStreamer pipeline decoding with the room's key, which Relay never held:"
    );
    for (name, decoded) in &room.decoded {
        println!("  {name} decoded {decoded} of {FRAMES} frames;");
        ok &= *decoded == FRAMES;
    }
    println!("  `relay room show surgery` said:\n{}", indent(&room.shown));
    let (udp4, udp4_bytes) = count("udp4");
    let (udp6, udp6_bytes) = count("udp6");
    let (other, _) = count("other-ip");
    let (truncated, _) = count("truncated");
    let (malformed, _) = count("malformed");
    let (forwarded, forwarded_bytes) = count("forwarded");
    let (fanned_out, _) = count("fan-out");
    // The two channel sessions' media, both ways: what the fast path should carry.
    let channel_packets = 2 * 2 * u64::from(want);
    println!("- The relay's XDP program on eth0 ({mode} mode) saw every frame first:");
    println!(
        "  {forwarded} packets ({forwarded_bytes} bytes) of the two channel sessions it rewrote and sent back out itself (XDP_TX), without waking the relay: {:.1}% of their {channel_packets} media packets;",
        100.0 * forwarded as f64 / channel_packets as f64
    );
    println!(
        "  {udp4} IPv4/UDP ({udp4_bytes} bytes) and {udp6} IPv6/UDP ({udp6_bytes} bytes) went up to the relay: STUN/TURN signalling, the TCP session's peer side, and the room camera's first packets (before its endpoint latched);"
    );
    println!(
        "  {fanned_out} packets of the room's camera it marked for the TC program on the same NIC, which sent each to the three classrooms as a rewritten clone;"
    );
    println!("  {other} other IP frames (the TCP session, neighbour discovery) passed.");
    println!(
        "- Client B wrote {BROKEN_FRAMES} frames cut inside their IPv4 header and {BROKEN_FRAMES} whose UDP length overruns the packet onto the wire:"
    );
    println!(
        "  XDP dropped {truncated} as truncated and {malformed} as malformed before the stack saw them."
    );
    ok &= report_policy(room, audit);
    println!("- What Prometheus would scrape from GET /metrics (a few of its series):");
    let shown = [
        "relay_ready ",
        "relay_xdp_packets_total{verdict=\"forwarded\"}",
        "relay_xdp_packets_total{verdict=\"fan-out\"}",
        "relay_turn_responses_total{method=\"Allocate\"",
        "relay_turn_allocation_setup_seconds_count",
        "relay_rooms ",
        "relay_room_subscriptions ",
        "relay_bpf_map_entries{map=\"ROOM_ROUTES\"}",
        "relay_policy_decisions_total{action=\"room.join\"",
    ];
    for line in metrics
        .lines()
        .filter(|l| shown.iter().any(|s| l.starts_with(s)))
    {
        println!("  {line}");
    }
    ok &= metrics.lines().any(|l| l == "relay_ready 1");
    ok &= forwarded * 100 >= channel_packets * 99 && fanned_out > 0;
    ok &= truncated == u64::from(BROKEN_FRAMES)
        && malformed == u64::from(BROKEN_FRAMES)
        && udp4 > 0
        && udp6 > 0;
    if !ok {
        bail!("the demo did not go as it must: see the figures above");
    }
    Ok(())
}

/// What the policy decided, from the audit log; whether it refused the visitor alone.
fn report_policy(room: &Room, audit: &str) -> bool {
    let decisions: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let denied: Vec<&serde_json::Value> = decisions
        .iter()
        .filter(|d| d["decision"] == "deny")
        .collect();
    println!(
        "- The telemedicine policy decided {} requests (TURN allocations, permissions and channels; the room's join, publish and subscriptions) and allowed {}; it refused the visitor's join:\n  {}\n  and the audit log says:\n  {}",
        decisions.len(),
        decisions.len() - denied.len(),
        room.refused,
        denied.first().map(ToString::to_string).unwrap_or_default()
    );
    denied.len() == 1 && room.refused.contains("staff role or a consenting patient")
}

/// Prints a child's log as it comes, labelled, and hands each line on.
fn follow(child: &mut Child, label: &'static str) -> anyhow::Result<mpsc::Receiver<String>> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("  {label:>6} | {line}");
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Client B's broken frames: cut inside the IPv4 header, and a UDP length of 1000 in a
/// 24-byte datagram.
fn broken_frames() -> Vec<Vec<u8>> {
    let mut header = Vec::new();
    header.extend_from_slice(&Host::Relay.mac());
    header.extend_from_slice(&Host::ClientB.mac());
    header.extend_from_slice(&[0x08, 0x00]);
    let mut ipv4_udp = vec![0x45, 0, 0, 28 + 16, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ipv4_udp.extend_from_slice(&Host::ClientB.ipv4().octets());
    ipv4_udp.extend_from_slice(&Host::Relay.ipv4().octets());
    ipv4_udp.extend_from_slice(&[0x9c, 0x40, 0x0d, 0x96, 0x03, 0xe8, 0, 0]);
    ipv4_udp.extend_from_slice(&[0; 16]);
    let truncated = [&header[..], &ipv4_udp[..10]].concat();
    let malformed = [&header[..], &ipv4_udp[..]].concat();
    std::iter::repeat_n(truncated, BROKEN_FRAMES as usize)
        .chain(std::iter::repeat_n(malformed, BROKEN_FRAMES as usize))
        .collect()
}

/// Builds the relay (the XDP program included) and returns the binary's path.
pub(crate) fn build_relay() -> anyhow::Result<PathBuf> {
    println!("demo: building relay and its XDP program");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "relay", "--bin", "relay"])
        .status()?;
    if !status.success() {
        bail!("building relay failed");
    }
    Ok(crate::target_dir().join("debug/relay"))
}
