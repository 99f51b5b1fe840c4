//! A real browser's WebRTC call through one Relay. Headless Chromium on client A runs one page
//! with two RTCPeerConnections, both with `iceTransportPolicy: "relay"` and the lab relay as
//! their TURN server: each one's only candidate is its relayed address, so each one's peer is
//! the other's relayed address on the same relay. That is the most common TURN case in WebRTC:
//! two browsers that cannot reach each other directly both fall back on the same TURN server,
//! which then relays from one of its own allocations to another (a hairpin).
//!
//! The test shows that a browser's own TURN client (allocation, permissions, channels, ICE
//! over them) carries audio and video both ways through Relay with XDP on its NIC, and prints
//! which share of the channel datagrams the XDP program forwarded. Needs root and `chromium`
//! (`cargo xtask setup` installs it).

mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde::Deserialize;
use support::{RunningRelay, TempDir, exit_figures, verdict_row, xdp_on_switch_port};
use xtask::lab::{Background, Host, Lab};

/// The page: it makes the call, lets media flow for 5 s and logs its report to the console.
const PAGE: &str = include_str!("browser/call.html");

/// How long Chromium may take to start, connect, run the 5 s call and report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Chromium without a display, a GPU, a sandbox (it runs as root) or any service that would
/// try to reach beyond the lab; console messages on stderr, where the page's report is read.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    // Without it the page's AudioContext stays suspended (no user gesture) and no audio is sent.
    "--autoplay-policy=no-user-gesture-required",
    "--enable-logging=stderr",
];

/// One peer connection's figures, as the page reports them.
#[derive(Debug, Deserialize)]
struct Side {
    name: String,
    /// Candidate types of the selected pair: its own, and its peer's.
    local: String,
    remote: String,
    audio: Media,
    video: Media,
}

/// One kind's RTP counters; a stream that never existed counts zero.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Media {
    packets_sent: u64,
    bytes_sent: u64,
    packets_received: u64,
    bytes_received: u64,
}

#[test]
fn chromium_calls_itself_through_one_relay_relayed_address_to_relayed_address() {
    let lab = Lab::up("br-call").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let relay = RunningRelay::in_lab(&lab, &["--interface", "eth0"]);
    let started = Instant::now();
    let sides = call(&lab);
    eprintln!(
        "Chromium started, called and reported in {:.1?}",
        started.elapsed()
    );
    let (stdout, log) = relay.stop_logged(Signal::SIGTERM);

    for side in &sides {
        eprintln!("{}", describe(side));
    }
    let exit_line = exit_figures(&log, "UDP data path at exit: ");
    eprintln!("relay stdout:\n{stdout}\nrelay log: {exit_line}");
    let (kernel, total) = kernel_share(&stdout, &log);
    #[allow(
        clippy::cast_precision_loss,
        reason = "a percentage to print; counts are far below 2^52"
    )]
    let percent = 100.0 * kernel as f64 / total.max(1) as f64;
    eprintln!("XDP forwarded {kernel} of {total} channel datagrams ({percent:.1}%)");

    assert_eq!(sides.len(), 2, "the page reported {sides:?}");
    for side in &sides {
        assert_eq!(
            (side.local.as_str(), side.remote.as_str()),
            ("relay", "relay"),
            "side {}: selected pair is not relay/relay",
            side.name
        );
        assert!(
            side.audio.packets_received > 100 && side.video.packets_received > 100,
            "side {}: too little media arrived: {}",
            side.name,
            describe(side)
        );
    }
    // Relay/relay media runs in the kernel (issue 10): the XDP program hands each client's
    // ChannelData to the other client in one pass.
    assert!(
        kernel * 100 >= total * 99,
        "XDP forwarded {kernel} of {total} relayed datagrams ({percent:.1}%), want at least 99%"
    );
}

/// Runs the page in headless Chromium on client A and returns its report, one entry per
/// peer connection. Chromium is killed on return (or on a panic).
fn call(lab: &Lab) -> Vec<Side> {
    let dir = TempDir::new("chromium");
    let page = dir.0.join("call.html");
    std::fs::write(&page, PAGE).unwrap();
    let mut command = lab.command(Host::ClientA, "chromium");
    command
        .args(CHROMIUM_FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            dir.0.join("profile").display()
        ))
        .arg(format!("file://{}", page.display()))
        // Chromium keeps its singleton socket under TMPDIR, and killed it never removes it.
        .env("TMPDIR", &dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Declared after `dir`, so dropped (killed) before the profile is removed.
    let mut chromium = Background(
        command
            .spawn()
            .expect("spawning chromium (`cargo xtask setup` installs it)"),
    );
    let console = console_of(chromium.0.stderr.take().unwrap());
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let message = console
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("no report from the page within {REPORT_TIMEOUT:?}: {e}"));
        if let Some(json) = message.strip_prefix("REPORT ") {
            return serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("the page's report {json}: {e}"));
        }
        assert!(
            !message.starts_with("REPORT-ERROR"),
            "the call failed: {message}"
        );
    }
}

/// The page's console messages, read from Chromium's stderr by a thread that also echoes
/// them (the rest of Chromium's log, mostly D-Bus complaints, is left out). The channel
/// closes when Chromium does.
fn console_of(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(message) = console_message(&line) {
                eprintln!("page: {message}");
                let _ = tx.send(message.to_owned());
            }
        }
    });
    rx
}

/// The message of a console line as Chromium logs it:
/// `[pid:tid:time:INFO:CONSOLE:92] "MESSAGE", source: file:///.../call.html (92)`.
fn console_message(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(":CONSOLE")?;
    let (_, quoted) = rest.split_once("] \"")?;
    Some(quoted.rsplit_once("\", source: ")?.0)
}

/// One side's figures, in one line.
fn describe(side: &Side) -> String {
    let Side {
        name,
        local,
        remote,
        audio,
        video,
    } = side;
    format!(
        "side {name}: selected pair {local}/{remote}; audio sent {} packets ({} B), \
         received {} ({} B); video sent {} packets ({} B), received {} ({} B)",
        audio.packets_sent,
        audio.bytes_sent,
        audio.packets_received,
        audio.bytes_received,
        video.packets_sent,
        video.bytes_sent,
        video.packets_received,
        video.bytes_received
    )
}

/// The channel datagrams the XDP program forwarded, and all the relay relayed on channels:
/// those plus the ones relayed in userspace, by the data path's flow table (to peers and to
/// clients) or by the TURN server itself. (Chromium's first ICE checks go in Send
/// indications, before its ChannelBind: not media, and not counted here.) Read from the verdict table the relay prints on exit (`stdout`) and
/// the figures it logs then (`log`). A hairpin relayed in userspace counts twice (two hops),
/// in XDP once: the share errs low.
fn kernel_share(stdout: &str, log: &[String]) -> (u64, u64) {
    let (forwarded, _) = verdict_row(stdout, "forwarded");
    // Relayed in userspace: by the data path's flow table, and by the TURN server itself.
    let data_path = exit_figures(log, "UDP data path at exit: ");
    let server = exit_figures(log, "TURN server at exit: ");
    let userspace = count_before(&data_path, " channel datagrams forwarded to peers")
        + count_before(&data_path, " to clients by the flow table")
        + count_before(&server, " datagrams on channels");
    (forwarded, forwarded + userspace)
}

/// The number written just before `label` in `text` ("... and 9817 to clients ...").
fn count_before(text: &str, label: &str) -> u64 {
    text.split_once(label)
        .and_then(|(before, _)| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {label:?} in {text:?}"))
}
