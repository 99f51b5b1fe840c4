//! Metrics and health probes of the `relay` binary in the lab, scraped over HTTP from
//! another host (`--metrics-listen`): `/readyz` once the relay serves, counters that move
//! as real traffic moves on the XDP path and on the userspace one, an exposition that
//! Prometheus's own `promtool check metrics` accepts, and every metric the shipped
//! dashboard and alert rules name in it. Needs root and promtool (`cargo
//! xtask setup` installs Debian's `prometheus` package).

mod monitoring_support;
mod support;

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use support::{RunningRelay, TempDir, channel_client, xdp_on_switch_port};
use xtask::lab::{Host, Lab};

const PROBES: &str = "10.77.0.1:9090";
const CHANNEL: u16 = 0x4000;
const PACKETS: u16 = 100;
/// A relay with XDP whose probes listen on `PROBES`, relaying to the peer host.
const WITH_XDP: &[&str] = &[
    "--interface",
    "eth0",
    "--allowed-peer-ip",
    "10.77.0.21",
    "--metrics-listen",
    PROBES,
];

/// `GET path` on the probes' listener from client A: status and body.
fn get(lab: &Lab, path: &str) -> (u16, String) {
    support::http_get(lab, Host::ClientA, &format!("http://{PROBES}{path}"))
}

/// The value of the sample `series` (name and labels, as exposed), if there is one.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

/// `promtool check metrics` over `exposition`: its exit status and what it said.
fn promtool(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (`cargo xtask setup` installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// A channel from client A to a socket on the peer host; `PACKETS` ChannelData messages
/// through it, all received.
fn stream_through_a_channel(lab: &Lab) {
    let (client, peer) = alice_to_the_peer(lab);
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0; 2048];
    for i in 0..PACKETS {
        send_on_channel(&client, i);
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &i.to_be_bytes(), "packet {i}");
    }
}

/// Alice's allocation on client A with `CHANNEL` bound to a socket on the peer host.
fn alice_to_the_peer(lab: &Lab) -> (relay::turn::client::Client, UdpSocket) {
    let peer = lab
        .in_netns(Host::Peer, || UdpSocket::bind("10.77.0.21:4000").unwrap())
        .unwrap();
    let to: SocketAddr = "10.77.0.21:4000".parse().unwrap();
    let client = channel_client(lab, Host::ClientA, ("alice", "wonderland"), CHANNEL, to);
    (client, peer)
}

/// ChannelData carrying `i` on `CHANNEL`.
fn send_on_channel(client: &relay::turn::client::Client, i: u16) {
    support::send_on_channel(client, CHANNEL, &i.to_be_bytes());
}

/// With XDP: ready, the kernel's `forwarded` count moves by what went through a channel,
/// the allocation is counted, and promtool accepts the exposition in both formats'
/// default (0.0.4).
#[test]
fn counters_move_with_traffic_in_the_kernel_and_promtool_accepts_them() {
    let lab = Lab::up("mt-xdp").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    // A policy that lets everything through: its families are in the exposition too.
    let dir = TempDir::new("mt-xdp");
    let policy = dir.0.join("allow.rego");
    std::fs::write(&policy, "package relay\nallow := true\n").unwrap();
    let mut args = WITH_XDP.to_vec();
    args.extend(["--policy", policy.to_str().unwrap()]);
    let relay = RunningRelay::in_lab(&lab, &args);
    assert_eq!(get(&lab, "/healthz").0, 200);
    assert_eq!(get(&lab, "/readyz"), (200, "ready\n".to_owned()));
    let forwarded = "relay_xdp_packets_total{verdict=\"forwarded\"}";
    let (_, before) = get(&lab, "/metrics");
    let was = value(&before, forwarded).expect("the kernel's verdicts are exposed");
    stream_through_a_channel(&lab);
    let (status, after) = get(&lab, "/metrics");
    assert_eq!(status, 200);
    let now = value(&after, forwarded).unwrap();
    eprintln!("forwarded in XDP: {was} before, {now} after {PACKETS} packets");
    assert!(now - was >= f64::from(PACKETS) * 0.99, "{after}");
    // Its allocation, permission and channel: counted at most 100 ms after they were made.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = get(&lab, "/metrics");
        let held = |what: &str| value(&text, &format!("relay_turn_{what}{{transport=\"udp\"}}"));
        let all = ["allocations", "permissions", "channels"].map(held);
        eprintln!("held: {all:?}");
        if all == [Some(1.0); 3] {
            assert_eq!(
                value(&text, "relay_turn_channels{transport=\"tcp\"}"),
                Some(0.0)
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
    }
    assert!(
        value(&after, "relay_user_handed_up_packets_total").unwrap() > 0.0,
        "the Allocate and ChannelBind went up to the server: {after}"
    );
    assert_eq!(value(&after, "relay_ready"), Some(1.0));
    // The client's Allocate: challenged (401), then granted; its ChannelBind granted.
    let responses = |method: &str, code: u16| {
        value(
            &after,
            &format!("relay_turn_responses_total{{method=\"{method}\",code=\"{code}\"}}"),
        )
    };
    assert!(responses("Allocate", 401).unwrap() >= 1.0, "{after}");
    assert_eq!(responses("Allocate", 200), Some(1.0), "{after}");
    assert!(responses("ChannelBind", 200).unwrap() >= 1.0, "{after}");
    assert_eq!(
        value(&after, "relay_turn_allocation_setup_seconds_count"),
        Some(1.0),
        "{after}"
    );
    // The channel's two flows, its relayed address and its permission are in the kernel.
    let entries = |map: &str| value(&after, &format!("relay_bpf_map_entries{{map=\"{map}\"}}"));
    assert!(entries("FLOWS").unwrap() >= 2.0, "{after}");
    assert!(entries("RELAYED").unwrap() >= 1.0, "{after}");
    assert!(entries("PERMISSIONS").unwrap() >= 1.0, "{after}");
    assert_eq!(
        value(&after, "relay_bpf_map_capacity{map=\"FLOWS\"}"),
        Some(65536.0)
    );
    let (ok, said) = promtool(&after);
    assert!(ok, "promtool check metrics: {said}\n{after}");
    // The shipped dashboard and alerts name only metrics this exposition has.
    let missing = monitoring_support::missing_from(&after);
    assert!(missing.is_empty(), "{missing:?}\n{after}");
    // The data plane lost under the running relay (its pins removed, as `relay down` from
    // another shell would): no longer ready, and /readyz says why.
    let removed = Command::new("nsenter")
        .args([
            "-t",
            &relay.pid().to_string(),
            "-m",
            "rm",
            "-r",
            "/sys/fs/bpf/relay/default",
        ])
        .status()
        .unwrap();
    assert!(removed.success());
    let (status, why) = get(&lab, "/readyz");
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("the data plane pinned at /sys/fs/bpf/relay/default is gone"),
        "{why}"
    );
    assert_eq!(value(&get(&lab, "/metrics").1, "relay_ready"), Some(0.0));
    drop(relay);
}

/// Without XDP the same stream is forwarded by the userspace data path's flow table, and
/// its count moves; there is no kernel family to show.
#[test]
fn counters_move_with_traffic_in_userspace() {
    let lab = Lab::up("mt-user").unwrap();
    let _relay = RunningRelay::in_lab(
        &lab,
        &[
            "--no-xdp",
            "--allowed-peer-ip",
            "10.77.0.21",
            "--metrics-listen",
            PROBES,
        ],
    );
    let series = "relay_user_forwarded_packets_total{kind=\"channel_to_peer\"}";
    stream_through_a_channel(&lab);
    let (_, after) = get(&lab, "/metrics");
    let forwarded = value(&after, series).unwrap();
    eprintln!("forwarded by the userspace flow table: {forwarded} of {PACKETS}");
    // The first packets may go through the server before the channel's flow is up.
    assert!(forwarded >= f64::from(PACKETS) * 0.9, "{after}");
    assert!(!after.contains("relay_xdp_"), "{after}");
    let (ok, said) = promtool(&after);
    assert!(ok, "promtool check metrics: {said}\n{after}");
}

/// A tenant's limit and what XDP refused over it, by tenant: a client of tenant "north"
/// (100 packets a second, 100 ms burst) sends 300 at once through its channel.
#[test]
fn a_tenants_refusals_in_the_kernel_are_counted_by_tenant() {
    let lab = Lab::up("mt-tenant").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let dir = TempDir::new("mt-tenant");
    let config = dir.0.join("relay.toml");
    std::fs::write(
        &config,
        "[[tenant]]\nname = \"north\"\nusers = [\"alice\"]\npackets-per-second = 100\nburst-ms = 100\n",
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(WITH_XDP);
    let _relay = RunningRelay::in_lab(&lab, &args);
    let (client, _peer) = alice_to_the_peer(&lab);
    for i in 0..300_u16 {
        send_on_channel(&client, i);
    }
    let (_, text) = get(&lab, "/metrics");
    let refused = value(
        &text,
        "relay_tenant_policed_packets_total{tenant=\"north\",path=\"xdp\"}",
    )
    .expect("the tenant's kernel refusals are exposed");
    let over = value(&text, "relay_xdp_packets_total{verdict=\"over-limit\"}").unwrap();
    eprintln!("300 sent at once: {refused} refused over north's limit in XDP");
    // The burst lets about 10 through; the rest is refused, in the kernel.
    assert!(refused >= 250.0, "{text}");
    assert!(
        (refused - over).abs() < f64::EPSILON,
        "the verdict counts them too: {text}"
    );
    assert_eq!(
        value(
            &text,
            "relay_tenant_limit_packets_per_second{tenant=\"north\"}"
        ),
        Some(100.0)
    );
    // Every one of the 300 is counted for north: forwarded within its limit or refused, in
    // the kernel or in userspace (the kernel's forwarded sums are taken once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = get(&lab, "/metrics");
        let count = |family: &str, path: &str| {
            value(
                &text,
                &format!("relay_tenant_{family}_packets_total{{tenant=\"north\",path=\"{path}\"}}"),
            )
            .unwrap_or_else(|| panic!("no {family} {path} for north: {text}"))
        };
        let forwarded = [count("forwarded", "xdp"), count("forwarded", "user")];
        let total =
            forwarded[0] + forwarded[1] + count("policed", "xdp") + count("policed", "user");
        if (total - 300.0).abs() < f64::EPSILON {
            eprintln!("north: forwarded {forwarded:?} (xdp, user), the rest refused");
            assert!(forwarded[0] >= 1.0, "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{total} of 300 counted: {text}"
        );
    }
}

/// Prometheus scraping while the relay stops (a rollout, `systemctl restart`): each scrape
/// gets a whole exposition or a refused connection, never a half-written body or a hang,
/// and the relay still exits cleanly.
#[test]
fn a_scrape_during_shutdown_gets_a_whole_answer_or_none_and_the_relay_exits_cleanly() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
    let lab = Lab::up("mt-stop").unwrap();
    let relay = RunningRelay::in_lab(&lab, &["--metrics-listen", PROBES]);
    let (stopping, whole, refused) = (AtomicBool::new(false), AtomicU32::new(0), AtomicU32::new(0));
    std::thread::scope(|scope| {
        let scraper = scope.spawn(|| {
            lab.in_netns(Host::ClientA, || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                // Until the relay is gone: a refused connection after it began to stop.
                loop {
                    match agent.get(format!("http://{PROBES}/metrics")).call() {
                        Ok(mut response) => {
                            let body = response.body_mut().read_to_string().unwrap();
                            assert_eq!(response.status().as_u16(), 200, "{body}");
                            assert!(body.contains("relay_ready ") && body.ends_with('\n'));
                            assert!(body.contains("process_resident_memory_bytes"), "cut short");
                            whole.fetch_add(1, Relaxed);
                        }
                        // A kept-alive connection the stopping server closed may fail
                        // otherwise first; the relay gone, the next one is refused.
                        Err(ureq::Error::Io(e)) if stopping.load(Relaxed) => {
                            refused.fetch_add(1, Relaxed);
                            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                return;
                            }
                        }
                        Err(e) => panic!("scrape failed while serving: {e}"),
                    }
                }
            })
            .unwrap();
        });
        // Scrapes are flowing before the stop.
        while whole.load(Relaxed) < 5 {
            assert!(!scraper.is_finished(), "the scraper stopped early");
            std::thread::yield_now();
        }
        stopping.store(true, Relaxed);
        relay.stop(nix::sys::signal::Signal::SIGTERM);
        scraper.join().unwrap();
    });
    eprintln!(
        "{} whole scrapes, then {} refused",
        whole.load(Relaxed),
        refused.load(Relaxed)
    );
    assert!(refused.load(Relaxed) >= 1);
}
