//! Channel traffic of a real TURN client (coturn's turnutils_uclient) forwarded by the XDP
//! program, not by userspace: the relay binary in the lab with `--interface eth0`, read back
//! from the program's counters. Needs root.

mod support;

use std::process::Stdio;

use nix::sys::signal::Signal;
use relay::dataplane::{Dataplane, XdpModeChoice};
use support::{RunningRelay, verdict_row};
use xtask::lab::{Background, Host, Lab};

const PEER_PORT: u16 = 3480;
const MESSAGES: u32 = 200;
const CLIENTS: u32 = 4;

/// On veth, a frame sent with XDP_TX is delivered only if the receiving end runs an XDP
/// program too (a fact of this kernel; real NICs need nothing): give the switch's port
/// toward the relay one, a passing one, for as long as the returned value lives.
fn xdp_on_switch_port(lab: &Lab) -> Dataplane {
    lab.in_netns_named("sw", || {
        let mut dp = Dataplane::load().unwrap();
        dp.attach("relay", XdpModeChoice::Auto).unwrap();
        dp
    })
    .unwrap()
}

fn uclient(lab: &Lab, flags: &[&str]) -> (u32, u32, u32, String) {
    let out = lab
        .command(Host::ClientA, "turnutils_uclient")
        .args([
            "-n",
            &MESSAGES.to_string(),
            "-m",
            &CLIENTS.to_string(),
            "-l",
            "172",
            "-c",
            "-r",
            &PEER_PORT.to_string(),
        ])
        .args(["-u", "alice", "-w", "wonderland"])
        .args(flags)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let field = |key: &str| -> u32 {
        text.lines()
            .rev()
            .find_map(|l| {
                l[l.find(key)? + key.len()..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(u32::MAX)
    };
    (
        field("tot_send_msgs="),
        field("tot_recv_msgs="),
        field("Total lost packets "),
        text,
    )
}

#[test]
fn channel_traffic_is_forwarded_in_xdp_both_ways_over_ipv4_and_ipv6() {
    let lab = Lab::up("fp-uclient").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let relay = RunningRelay::start(
        &lab,
        Host::Relay,
        &[
            "run",
            "--interface",
            "eth0",
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
            "--allowed-peer-ip",
            "10.77.0.21",
            "--allowed-peer-ip",
            "fd77::21",
        ],
        "TURN on",
    );
    let _peer = Background(
        lab.command(Host::Peer, "turnutils_peer")
            .args([
                "-L",
                "10.77.0.21",
                "-L",
                "fd77::21",
                "-p",
                &PEER_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    lab.wait_udp_bound(Host::Peer, PEER_PORT).unwrap();

    let mut channel_packets = 0;
    for (name, flags) in [
        ("IPv4", &["-e", "10.77.0.21", "10.77.0.1"][..]),
        ("IPv6", &["-x", "-e", "fd77::21", "fd77::1"][..]),
    ] {
        let (sent, received, lost, text) = uclient(&lab, flags);
        let want = MESSAGES * CLIENTS;
        assert!(
            sent == want && received == want && lost == 0,
            "{name}: sent {sent} received {received} lost {lost}\n{text}"
        );
        // Each message crosses the relay twice: to the peer, and echoed back.
        channel_packets += 2 * u64::from(sent);
    }
    let stdout = relay.stop(Signal::SIGTERM);
    let (forwarded, _) = verdict_row(&stdout, "forwarded");
    eprintln!("{channel_packets} channel packets, {forwarded} forwarded by XDP\n{stdout}");
    assert!(
        forwarded * 100 >= channel_packets * 99,
        "XDP forwarded {forwarded} of {channel_packets} channel packets (want at least 99%)\n{stdout}"
    );
}

/// The kernel does not enforce `--max-bps` yet: with a limit set, channel traffic must stay
/// in userspace, where the limit holds, and the relay says so.
#[test]
fn with_max_bps_channels_stay_in_userspace() {
    let lab = Lab::up("fp-maxbps").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let relay = RunningRelay::start(
        &lab,
        Host::Relay,
        &[
            "run",
            "--interface",
            "eth0",
            "--listening-ip",
            "10.77.0.1",
            "--relay-ip",
            "10.77.0.1",
            "--realm",
            "lab",
            "--user",
            "alice:wonderland",
            "--allowed-peer-ip",
            "10.77.0.21",
            "--max-bps",
            "10000000",
        ],
        "TURN on",
    );
    assert!(
        relay.logged("channel traffic is relayed in userspace"),
        "{:?}",
        relay.log_lines()
    );
    let _peer = Background(
        lab.command(Host::Peer, "turnutils_peer")
            .args(["-L", "10.77.0.21", "-p", &PEER_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    lab.wait_udp_bound(Host::Peer, PEER_PORT).unwrap();
    let (sent, received, lost, text) = uclient(&lab, &["-e", "10.77.0.21", "10.77.0.1"]);
    assert!(
        sent == MESSAGES * CLIENTS && received == sent && lost == 0,
        "{text}"
    );
    let stdout = relay.stop(Signal::SIGTERM);
    assert_eq!(verdict_row(&stdout, "forwarded").0, 0, "{stdout}");
}
