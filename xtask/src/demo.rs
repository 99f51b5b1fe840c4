//! `cargo xtask demo`: the relay's main job on an embedded default, in the lab, told in words
//! and numbers.
//!
//! The relay attaches its XDP program to the relay host's `eth0`. Client A sends a call's
//! worth of audio-sized UDP over IPv4 and IPv6 to a socket on the relay, client B knocks on a
//! TCP port and then injects broken frames (cut inside the IPv4 header; a UDP length that
//! overruns its packet) straight onto the wire. The relay's counters on exit say what the
//! kernel did with each.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::{
        signal::{Signal, kill},
        socket::{setsockopt, sockopt},
    },
    unistd::Pid,
};
use xtask::lab::{HOST_IF, Host, Lab};

/// The embedded default: 10 s of 20 ms audio frames (RTP header + 160 bytes of G.711) per
/// address family.
const DATAGRAMS: u32 = 500;
const PAYLOAD: usize = 172;
const PORT: u16 = 3478;
const BROKEN_FRAMES: u32 = 5;

pub(crate) fn run() -> anyhow::Result<()> {
    let relay = build_relay()?;
    println!("demo: building the lab (5 hosts on one bridge)");
    let lab = Lab::up("relay-demo")?;

    let mut child = lab
        .command(Host::Relay, relay.to_str().context("non-UTF-8 path")?)
        .args(["run", "--interface", HOST_IF])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting relay")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("  relay | {line}");
            let _ = tx.send(line);
        }
    });
    let attached = loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .context("relay did not attach within 30 s")?;
        if line.contains("XDP attached") {
            break line;
        }
    };
    let mode = if attached.contains("native") {
        "native (driver)"
    } else {
        "generic (skb)"
    };

    let started = Instant::now();
    let mut received = 0;
    for ip in [Host::Relay.ipv4().into(), Host::Relay.ipv6().into()] {
        received += audio(&lab, SocketAddr::new(ip, PORT))?;
    }
    let tcp_refused = lab.in_netns(Host::ClientB, || {
        TcpStream::connect_timeout(
            &SocketAddr::new(Host::Relay.ipv4().into(), 443),
            Duration::from_secs(2),
        )
        .is_err()
    })?;
    // A datagram sent after the broken frames on the same path arrives after XDP has judged
    // them: wait for it instead of guessing how long that takes.
    let marker_to = SocketAddr::new(Host::Relay.ipv4().into(), PORT + 1);
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

    kill(Pid::from_raw(child.id().cast_signed()), Signal::SIGINT)?;
    let mut table = String::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut table)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("relay exited with {status}");
    }
    report(&table, mode, elapsed, received, tcp_refused)
}

/// Prints the counters and what they mean; fails if the run did not go as it must.
fn report(
    table: &str,
    mode: &str,
    elapsed: Duration,
    received: u32,
    tcp_refused: bool,
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
    let (udp4, udp4_bytes) = count("udp4");
    let (udp6, udp6_bytes) = count("udp6");
    let (other, _) = count("other-ip");
    let (truncated, _) = count("truncated");
    let (malformed, _) = count("malformed");
    println!("What happened, in {} ms of traffic:", elapsed.as_millis());
    println!(
        "- The relay attached its XDP program to {HOST_IF} in {mode} mode and detached it on SIGINT."
    );
    println!(
        "- Client A sent {DATAGRAMS} audio-sized datagrams ({PAYLOAD} bytes of RTP each) over IPv4 and {DATAGRAMS} over IPv6."
    );
    println!(
        "  XDP classified {udp4} frames as IPv4/UDP ({udp4_bytes} bytes) and {udp6} as IPv6/UDP ({udp6_bytes} bytes) and passed them on"
    );
    println!(
        "  (client B's marker datagram is one of the IPv4 ones); a socket on the relay received {received} of {}.",
        2 * DATAGRAMS
    );
    println!(
        "- Client B's TCP connection to port 443 was {}: its SYN is among the {other} other-IP frames XDP passed.",
        if tcp_refused {
            "refused by the relay's stack"
        } else {
            "accepted (something listens on 443?)"
        }
    );
    println!(
        "- Client B injected {BROKEN_FRAMES} frames cut inside their IPv4 header and {BROKEN_FRAMES} whose UDP length overruns the packet:"
    );
    println!(
        "  XDP dropped {truncated} as truncated and {malformed} as malformed before the stack saw them."
    );
    if received != 2 * DATAGRAMS
        || truncated != u64::from(BROKEN_FRAMES)
        || malformed != u64::from(BROKEN_FRAMES)
    {
        bail!("the demo did not go as expected: see the counters above");
    }
    Ok(())
}

/// Client A sends the audio stream to `to`; returns how many datagrams the relay's socket got.
fn audio(lab: &Lab, to: SocketAddr) -> anyhow::Result<u32> {
    let receiver = lab.in_netns(Host::Relay, || UdpSocket::bind(to))??;
    setsockopt(&receiver, sockopt::RcvBufForce, &(4 << 20))?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    lab.in_netns(Host::ClientA, || -> anyhow::Result<()> {
        let sender = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        for seq in 0..DATAGRAMS {
            let mut rtp = [0_u8; PAYLOAD];
            rtp[0] = 0x80; // RTP version 2
            rtp[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            sender.send_to(&rtp, to)?;
        }
        Ok(())
    })??;
    let mut buf = [0_u8; 2048];
    let mut n = 0;
    while n < DATAGRAMS && receiver.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    Ok(n)
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
fn build_relay() -> anyhow::Result<PathBuf> {
    println!("demo: building relay and its XDP program");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "relay", "--bin", "relay"])
        .status()?;
    if !status.success() {
        bail!("building relay failed");
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    Ok(target.join("debug/relay"))
}
