//! The systemd notify protocol through its real interface: `relay run` with the shipped
//! default configuration (appliance/relay.toml), `$NOTIFY_SOCKET` pointing at a unix
//! datagram socket this test owns (as systemd's would under `Type=notify`) and
//! `$WATCHDOG_USEC` set (as `WatchdogSec=` does). READY=1 comes first, once the listener
//! answers and `/readyz` says 200; WATCHDOG=1 follows within every watchdog period;
//! STOPPING=1 on SIGTERM, and the relay exits cleanly.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use relay::stun::{Class, Message, MessageBuilder, Method};

const RELAY: &str = env!("CARGO_BIN_EXE_relay");
/// What systemd would put in `$WATCHDOG_USEC` for `WatchdogSec=1s`.
const WATCHDOG: Duration = Duration::from_secs(1);
/// Longest wait for any message.
const WAIT: Duration = Duration::from_secs(20);

/// The relay, killed if the test fails before it stops it.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on now (of `kind`'s protocol).
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// The next datagram on the notify socket, as text; fails if `relay` exits first.
fn next_message(socket: &UnixDatagram, deadline: Instant, relay: &mut Relay) -> String {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return String::from_utf8(buf[..n].to_vec()).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("notify socket: {e}"),
        }
        if let Some(status) = relay.0.try_wait().unwrap() {
            panic!("the relay exited ({status}) before the next notify message");
        }
        assert!(Instant::now() < deadline, "no notify message in time");
    }
}

/// Whether a STUN Binding request to `port` gets a success answer.
fn binding_answered(port: u16) -> bool {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let request = MessageBuilder::new(Class::Request, Method::BINDING, [7; 12]).build();
    client.send_to(&request, ("127.0.0.1", port)).unwrap();
    let mut buf = [0; 1500];
    client
        .recv(&mut buf)
        .is_ok_and(|n| Message::decode(&buf[..n]).is_ok_and(|m| m.class() == Class::Success))
}

/// The status line of `GET path` on the probes' listener.
fn http_status(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

fn start(dir: &Path, socket: &Path, stun: u16, probes: u16) -> Relay {
    let secret = dir.join("turn-secret");
    std::fs::write(&secret, "notify-test-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../appliance/relay.toml");
    let child = Command::new(RELAY)
        .args(["run", "--config", config, "--static-auth-secret-file"])
        .arg(&secret)
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--no-tcp", "--listening-port"])
        .arg(stun.to_string())
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{probes}"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning relay");
    Relay(child)
}

#[test]
fn ready_when_serving_watchdog_pings_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (stun, probes) = (free_port(true), free_port(false));
    let mut relay = start(dir.path(), &socket_path, stun, probes);

    let first = next_message(&socket, Instant::now() + WAIT, &mut relay);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "the first message is READY=1: {first:?}"
    );
    assert!(
        first.lines().any(|l| l.starts_with("STATUS=TURN on UDP")),
        "with the ready line as status: {first:?}"
    );
    // Said once it serves: its listener answers and /readyz says so already.
    assert!(
        binding_answered(stun),
        "READY=1 before the listener answers"
    );
    assert_eq!(http_status(probes, "/readyz"), "HTTP/1.1 200 OK");

    // Pings, each within a watchdog period of the one before (else systemd kills it).
    let mut last = Instant::now();
    for ping in 0..4 {
        let message = next_message(&socket, last + WATCHDOG, &mut relay);
        assert_eq!(message, "WATCHDOG=1\n", "ping {ping}");
        last = Instant::now();
    }

    let pid = Pid::from_raw(i32::try_from(relay.0.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let message = next_message(&socket, deadline, &mut relay);
        if message == "STOPPING=1\n" {
            break;
        }
        assert_eq!(message, "WATCHDOG=1\n", "only pings before STOPPING=1");
    }
    let status = relay.0.wait().unwrap();
    assert!(status.success(), "relay exited with {status}");
}
