//! The relay attached to a real veth in the namespace lab, counting real UDP sent from
//! another host. Needs root.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use nix::sys::{
    signal::Signal,
    socket::{setsockopt, sockopt},
};
use support::{RunningRelay, lab_relay_args, verdict_row, xdp_attachment};
use xtask::lab::{Host, Lab};

const DATAGRAMS: usize = 200;
const PAYLOAD: usize = 172;
/// A port of a test socket on the relay host (TURN has 3478).
const PORT: u16 = 5004;

/// Sends `DATAGRAMS` datagrams from client-a to `to` and waits until a socket in the relay's
/// namespace has received every one of them (UDP over a lossless veth: none may be missing).
fn send_and_receive(lab: &Lab, to: SocketAddr) {
    let receiver = lab
        .in_netns(Host::Relay, || UdpSocket::bind(to))
        .unwrap()
        .expect("binding the receiver in the relay namespace");
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // All datagrams queue before the first read; with XDP on a veth each one is accounted a
    // page, which overflows the default buffer (UdpRcvbufErrors).
    setsockopt(&receiver, sockopt::RcvBufForce, &(4 << 20)).unwrap();
    lab.in_netns(Host::ClientA, || {
        let sender = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        for i in 0..DATAGRAMS {
            let mut payload = [0_u8; PAYLOAD];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            sender.send_to(&payload, to).unwrap();
        }
    })
    .unwrap();
    let mut buf = [0_u8; 2048];
    for _ in 0..DATAGRAMS {
        let (n, _) = receiver.recv_from(&mut buf).unwrap_or_else(|e| {
            let ip = lab
                .command(Host::Relay, "nstat")
                .arg("-az")
                .output()
                .unwrap();
            panic!(
                "a datagram to {to} went missing ({e}); relay's stack counters:\n{}",
                String::from_utf8_lossy(&ip.stdout)
            )
        });
        assert_eq!(n, PAYLOAD);
    }
}

#[test]
fn native_xdp_counts_real_udp_and_detaches_on_sigint_when_asked() {
    let lab = Lab::up("rt-count").unwrap();
    let relay = RunningRelay::in_lab(
        &lab,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            "native",
            "--detach-on-exit",
        ],
    );
    assert!(
        relay.logged("XDP attached to eth0 in native (driver) mode"),
        "{:?}",
        relay.log_lines()
    );
    assert_eq!(xdp_attachment(&lab, Host::Relay).as_deref(), Some("xdp"));

    send_and_receive(&lab, SocketAddr::new(Host::Relay.ipv4().into(), PORT));
    send_and_receive(&lab, SocketAddr::new(Host::Relay.ipv6().into(), PORT));

    let stdout = relay.stop(Signal::SIGINT);
    // Ethernet 14 + IPv4 20 / IPv6 40 + UDP 8 + payload.
    assert_eq!(
        verdict_row(&stdout, "udp4"),
        (
            DATAGRAMS as u64,
            (DATAGRAMS * (14 + 20 + 8 + PAYLOAD)) as u64
        )
    );
    assert_eq!(
        verdict_row(&stdout, "udp6"),
        (
            DATAGRAMS as u64,
            (DATAGRAMS * (14 + 40 + 8 + PAYLOAD)) as u64
        )
    );
    assert_eq!(verdict_row(&stdout, "truncated").0, 0);
    assert_eq!(verdict_row(&stdout, "malformed").0, 0);
    assert_eq!(
        xdp_attachment(&lab, Host::Relay),
        None,
        "XDP still attached after SIGINT"
    );
}

#[test]
fn generic_mode_on_request_and_detach_on_sigterm_when_asked() {
    let lab = Lab::up("rt-generic").unwrap();
    let relay = RunningRelay::in_lab(
        &lab,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            "generic",
            "--detach-on-exit",
        ],
    );
    assert!(
        relay.logged("XDP attached to eth0 in generic (skb) mode"),
        "{:?}",
        relay.log_lines()
    );
    assert_eq!(
        xdp_attachment(&lab, Host::Relay).as_deref(),
        Some("xdpgeneric")
    );
    send_and_receive(&lab, SocketAddr::new(Host::Relay.ipv4().into(), PORT));
    let stdout = relay.stop(Signal::SIGTERM);
    assert_eq!(verdict_row(&stdout, "udp4").0, DATAGRAMS as u64);
    assert_eq!(
        xdp_attachment(&lab, Host::Relay),
        None,
        "XDP still attached after SIGTERM"
    );
}

#[test]
fn unknown_interface_is_a_clear_error() {
    let lab = Lab::up("rt-noif").unwrap();
    let out = lab
        .command(Host::Relay, env!("CARGO_BIN_EXE_relay"))
        .args(lab_relay_args(&["--interface", "nosuch0"]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no interface named \"nosuch0\""),
        "{stderr}"
    );
}

/// Frames no stack would send, written onto the wire by client B: XDP must drop and count
/// them, and traffic around them must not suffer.
#[test]
fn broken_frames_from_the_wire_are_dropped_and_counted() {
    let lab = Lab::up("rt-broken").unwrap();
    let relay = RunningRelay::in_lab(&lab, &["--interface", "eth0"]);
    let mut ipv4_udp = vec![0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ipv4_udp.extend_from_slice(&Host::ClientB.ipv4().octets());
    ipv4_udp.extend_from_slice(&Host::Relay.ipv4().octets());
    // UDP length 1000 in a 24-byte datagram.
    ipv4_udp.extend_from_slice(&[0x9c, 0x40, 0x0d, 0x96, 0x03, 0xe8, 0, 0]);
    ipv4_udp.extend_from_slice(&[0; 16]);
    let eth = [
        &Host::Relay.mac()[..],
        &Host::ClientB.mac()[..],
        &[0x08, 0x00],
    ]
    .concat();
    let truncated = [&eth[..], &ipv4_udp[..10]].concat();
    let malformed = [&eth[..], &ipv4_udp[..]].concat();
    lab.send_frames(
        Host::ClientB,
        &[truncated.clone(), malformed.clone(), truncated],
    )
    .unwrap();
    // Sent after the broken frames on the same path, so they have all been judged when it
    // arrives.
    send_and_receive(&lab, SocketAddr::new(Host::Relay.ipv4().into(), PORT));
    let stdout = relay.stop(Signal::SIGTERM);
    assert_eq!(verdict_row(&stdout, "truncated"), (2, 2 * 24));
    assert_eq!(verdict_row(&stdout, "malformed"), (1, 14 + 44));
    assert_eq!(verdict_row(&stdout, "udp4").0, DATAGRAMS as u64);
}
