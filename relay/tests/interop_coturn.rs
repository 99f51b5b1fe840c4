//! Relay against coturn's own clients (Debian package coturn): turnutils_stunclient, and
//! turnutils_uclient over UDP, TCP and TLS, with channels and with Send indications, with
//! static users and REST credentials, relaying to turnutils_peer in the peer namespace.
//! Needs root.

mod support;

use support::{RunningRelay, TempDir, lab_relay_args};
use xtask::{
    coturn::{self, Report, Session},
    lab::{Background, Host, Lab},
};

const PEER_PORT: u16 = 3480;
const MESSAGES: u32 = 50;
const CLIENTS: u32 = 2;
/// Audio-sized: an RTP header and 160 bytes of G.711.
const LENGTH: u32 = 172;

/// What every relay of this suite has besides the lab's base configuration: REST
/// credentials, and the lab's private range opened for turnutils_peer.
const INTEROP: &[&str] = &[
    "--use-auth-secret",
    "--static-auth-secret",
    "north",
    "--allowed-peer-ip",
    "10.77.0.0/24",
    "--allowed-peer-ip",
    "fd77::/64",
];

struct Setup {
    lab: Lab,
    relay: Option<RunningRelay>,
    _peer: Background,
    _certs: TempDir,
}

/// A lab with Relay (UDP, TCP, TLS on 5349 and 443) and turnutils_peer on IPv4 and IPv6.
fn setup(name: &str, extra: &[&str]) -> Setup {
    let lab = Lab::up(name).unwrap();
    let certs = TempDir::new(name);
    let key = rcgen::generate_simple_self_signed(vec!["relay.lab".to_owned()]).unwrap();
    let (cert_path, key_path) = (certs.0.join("cert.pem"), certs.0.join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.key_pair.serialize_pem()).unwrap();
    // A key its group or others may read is refused.
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (cert, pkey) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let mut args = INTEROP.to_vec();
    args.extend([
        "--cert",
        &cert,
        "--pkey",
        &pkey,
        "--alt-tls-listening-port",
        "443",
    ]);
    args.extend(extra);
    let relay = RunningRelay::in_lab(&lab, &args);
    let peer =
        coturn::start_peer(&lab, Host::Peer, &["10.77.0.21", "fd77::21"], PEER_PORT).unwrap();
    Setup {
        lab,
        relay: Some(relay),
        _peer: peer,
        _certs: certs,
    }
}

const SESSION: Session = Session {
    messages: MESSAGES,
    clients: CLIENTS,
    length: LENGTH,
    peer_port: PEER_PORT,
};

fn uclient(lab: &Lab, flags: &[&str]) -> Report {
    coturn::uclient(lab, Host::ClientA, &SESSION, flags).unwrap()
}

/// Every message out and back, nothing lost.
fn assert_clean(report: &Report, what: &str) {
    assert!(
        report.is_clean(&SESSION),
        "{what}: sent {} received {} lost {} (want {} each way, 0 lost)\n{}",
        report.sent,
        report.received,
        report.lost,
        MESSAGES * CLIENTS,
        report.tail()
    );
}

/// The credential flags: a static user, or REST (uclient derives the password from -W).
const STATIC: &[&str] = &["-u", "alice", "-w", "wonderland"];
const REST: &[&str] = &["-u", "uclient", "-W", "north"];

fn run_matrix(setup: &Setup, transport: &[&str], name: &str) {
    for (creds, creds_name) in [(STATIC, "static user"), (REST, "REST credentials")] {
        for (mode, mode_name) in [
            (
                &[][..],
                "channels, RTP and RTCP allocations (uclient's default)",
            ),
            (&["-c"][..], "channels, no RTCP allocations"),
            (
                &["-s"][..],
                "Send/Data indications, RTP and RTCP allocations",
            ),
        ] {
            let mut flags: Vec<&str> = transport.to_vec();
            flags.extend(creds);
            flags.extend(mode);
            flags.extend(["-e", "10.77.0.21", "10.77.0.1"]);
            assert_clean(
                &uclient(&setup.lab, &flags),
                &format!("{name}, {creds_name}, {mode_name}"),
            );
        }
    }
}

#[test]
fn uclient_over_udp() {
    let s = setup("ic-udp", &[]);
    run_matrix(&s, &[], "UDP");
}

#[test]
fn uclient_over_tcp() {
    let s = setup("ic-tcp", &[]);
    run_matrix(&s, &["-t"], "TCP");
}

#[test]
fn uclient_over_tls_on_5349_and_443() {
    let s = setup("ic-tls", &[]);
    run_matrix(&s, &["-t", "-S"], "TLS");
    let mut flags = vec!["-t", "-S", "-p", "443"];
    flags.extend(REST);
    flags.extend(["-e", "10.77.0.21", "10.77.0.1"]);
    assert_clean(&uclient(&s.lab, &flags), "TLS on 443");
}

#[test]
fn uclient_ipv6_and_dual_allocations() {
    let s = setup("ic-v6", &[]);
    let mut v6 = vec!["-x", "-e", "fd77::21"];
    v6.extend(STATIC);
    v6.push("10.77.0.1");
    assert_clean(&uclient(&s.lab, &v6), "IPv6 relayed address");
    let mut dual = vec!["-Z", "-e", "10.77.0.21"];
    dual.extend(STATIC);
    dual.push("10.77.0.1");
    assert_clean(&uclient(&s.lab, &dual), "dual allocation");
    let mut over_v6 = vec!["-e", "fd77::21", "-x"];
    over_v6.extend(STATIC);
    over_v6.push("fd77::1");
    assert_clean(&uclient(&s.lab, &over_v6), "client over IPv6");
}

#[test]
fn wrong_password_and_expired_rest_credentials_are_refused() {
    let s = setup("ic-auth", &[]);
    let report = uclient(
        &s.lab,
        &[
            "-u",
            "alice",
            "-w",
            "guess",
            "-e",
            "10.77.0.21",
            "10.77.0.1",
        ],
    );
    assert_eq!(report.received, 0, "{}", report.output);
    // A REST username whose expiry passed: uclient -W builds "<expiry>:<user>" itself, so
    // compute one by hand that expired an hour ago.
    let expired = format!(
        "{}:late",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600
    );
    let password = relay::stun::integrity::rest_password(b"north", &expired);
    let report = uclient(
        &s.lab,
        &[
            "-u",
            &expired,
            "-w",
            &password,
            "-e",
            "10.77.0.21",
            "10.77.0.1",
        ],
    );
    assert_eq!(report.received, 0, "{}", report.output);
    let log = s.relay.as_ref().unwrap().log_lines();
    assert!(
        log.iter()
            .all(|l| !l.contains("wonderland") && !l.contains("guess")),
        "passwords in the log"
    );
}

#[test]
fn stunclient_gets_its_reflexive_address() {
    let s = setup("ic-stun", &[]);
    let out = s
        .lab
        .command(Host::ClientA, "turnutils_stunclient")
        .arg("10.77.0.1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("UDP reflexive addr: 10.77.0.11:"), "{text}");
}

#[test]
fn both_udp_backends_relay_cleanly() {
    for (backend, line) in [
        ("uring", "UDP data path: io_uring"),
        ("mmsg", "UDP data path: recvmmsg/sendmmsg"),
    ] {
        let s = setup(&format!("ic-{backend}"), &["--io", backend]);
        assert!(
            s.relay.as_ref().unwrap().logged(line),
            "--io {backend}: no {line:?} in the log"
        );
        let mut flags = vec!["-e", "10.77.0.21"];
        flags.extend(STATIC);
        flags.push("10.77.0.1");
        assert_clean(&uclient(&s.lab, &flags), backend);
        let mut flags = vec!["-t", "-e", "10.77.0.21"];
        flags.extend(REST);
        flags.push("10.77.0.1");
        assert_clean(&uclient(&s.lab, &flags), backend);
    }
}

/// A seccomp filter that answers io_uring_setup with EPERM, as container runtimes' default
/// profiles do.
fn deny_io_uring() -> std::io::Result<()> {
    const RET_ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [
        // Load the syscall number (offset 0 of struct seccomp_data).
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: RET_ERRNO_EPERM,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with valid arguments; `program` outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const program,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn without_io_uring_the_relay_falls_back_to_mmsg_and_says_so() {
    use std::os::unix::process::CommandExt as _;
    let lab = Lab::up("ic-seccomp").unwrap();
    let peer = coturn::start_peer(&lab, Host::Peer, &["10.77.0.21"], PEER_PORT).unwrap();
    let mut command = lab.command(Host::Relay, env!("CARGO_BIN_EXE_relay"));
    // SAFETY: deny_io_uring only makes async-signal-safe prctl calls.
    unsafe { command.pre_exec(deny_io_uring) };
    let relay = RunningRelay::start_command(command, &lab_relay_args(INTEROP), "TURN on");
    assert!(
        relay.logged("io_uring unavailable"),
        "{:?}",
        relay.log_lines()
    );
    assert!(
        relay.logged("falls back to recvmmsg/sendmmsg"),
        "{:?}",
        relay.log_lines()
    );
    let mut flags = vec!["-e", "10.77.0.21"];
    flags.extend(STATIC);
    flags.push("10.77.0.1");
    assert_clean(&uclient(&lab, &flags), "fallback");
    drop((peer, relay));

    // Forcing io_uring where it is unavailable is an error, not a silent fallback.
    let mut command = lab.command(Host::Relay, env!("CARGO_BIN_EXE_relay"));
    // SAFETY: as above.
    unsafe { command.pre_exec(deny_io_uring) };
    let mut args = INTEROP.to_vec();
    args.extend(["--io", "uring"]);
    let out = command.args(lab_relay_args(&args)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("io_uring was asked for but is unavailable"),
        "{stderr}"
    );
}

/// Two clients of one relay reach each other through their relayed addresses (uclient -y),
/// with the default peer policy and a private relay address: how two browsers that share a
/// TURN server talk, out of the box.
#[test]
fn client_to_client_through_one_relay_needs_no_configuration() {
    let lab = Lab::up("ic-c2c").unwrap();
    // The lab's base configuration only: no peer range opened.
    let _relay = RunningRelay::in_lab(&lab, &[]);
    for transport in [&[][..], &["-t"][..]] {
        for mode in [&[][..], &["-c"][..], &["-s"][..]] {
            let mut flags = vec!["-y"];
            flags.extend(transport);
            flags.extend(mode);
            flags.extend(STATIC);
            flags.push("10.77.0.1");
            assert_clean(
                &uclient(&lab, &flags),
                &format!("client to client {flags:?}"),
            );
        }
    }
}
