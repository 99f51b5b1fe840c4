//! Channel traffic of a real TURN client (coturn's turnutils_uclient) forwarded by the XDP
//! program, not by userspace: the relay binary in the lab with `--interface eth0`, read back
//! from the program's counters. Needs root.

mod support;

use nix::sys::signal::Signal;
use support::{RunningRelay, exit_figures, verdict_row, xdp_on_switch_port};
use xtask::{
    coturn::{self, Report, Session},
    lab::{Host, Lab},
};

const PEER_PORT: u16 = 3480;
const MESSAGES: u32 = 200;
const CLIENTS: u32 = 4;

const SESSION: Session = Session {
    messages: MESSAGES,
    clients: CLIENTS,
    length: 172,
    peer_port: PEER_PORT,
};

fn uclient(lab: &Lab, flags: &[&str]) -> Report {
    // -c: one allocation per client, so that every message is a channel packet counted here.
    let mut all = vec!["-c", "-u", "alice", "-w", "wonderland"];
    all.extend(flags);
    coturn::uclient(lab, Host::ClientA, &SESSION, &all).unwrap()
}

#[test]
fn channel_traffic_is_forwarded_in_xdp_both_ways_over_ipv4_and_ipv6() {
    let lab = Lab::up("fp-uclient").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let relay = RunningRelay::in_lab(
        &lab,
        &[
            "--interface",
            "eth0",
            "--allowed-peer-ip",
            "10.77.0.21",
            "--allowed-peer-ip",
            "fd77::21",
        ],
    );
    let _peer =
        coturn::start_peer(&lab, Host::Peer, &["10.77.0.21", "fd77::21"], PEER_PORT).unwrap();

    let mut channel_packets = 0;
    for (name, flags) in [
        ("IPv4", &["-e", "10.77.0.21", "10.77.0.1"][..]),
        ("IPv6", &["-x", "-e", "fd77::21", "fd77::1"][..]),
    ] {
        let report = uclient(&lab, flags);
        assert!(report.is_clean(&SESSION), "{name}: {}", report.tail());
        // Each message crosses the relay twice: to the peer, and echoed back.
        channel_packets += 2 * u64::from(report.sent);
    }
    let stdout = relay.stop(Signal::SIGTERM);
    let (forwarded, _) = verdict_row(&stdout, "forwarded");
    eprintln!("{channel_packets} channel packets, {forwarded} forwarded by XDP\n{stdout}");
    assert!(
        forwarded * 100 >= channel_packets * 99,
        "XDP forwarded {forwarded} of {channel_packets} channel packets (want at least 99%)\n{stdout}"
    );
}

/// Two clients of one relay talking through their relayed addresses (uclient -y: the
/// relay/relay case of two browsers sharing a TURN server): each one's channel peer is the
/// other's relayed address, and the XDP program hands ChannelData from one client to the
/// other in one pass (a hairpin) instead of leaving both hops to userspace.
#[test]
fn client_to_client_channels_are_forwarded_in_xdp_as_a_hairpin() {
    let lab = Lab::up("fp-hairpin").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    // The default peer policy: a client reaches another's relayed address, nothing else.
    let relay = RunningRelay::in_lab(&lab, &["--interface", "eth0"]);
    let report = uclient(&lab, &["-y", "10.77.0.1"]);
    assert!(report.is_clean(&SESSION), "{}", report.tail());
    let (stdout, log) = relay.stop_logged(Signal::SIGTERM);
    let (forwarded, _) = verdict_row(&stdout, "forwarded");
    let exit = exit_figures(&log, "UDP data path at exit: ");
    // Each message crosses the relay once, client to client; uclient counts both ways.
    let channel_packets = u64::from(report.sent);
    eprintln!("{channel_packets} channel packets, {forwarded} forwarded by XDP\n{exit}\n{stdout}");
    assert!(
        forwarded * 100 >= channel_packets * 99,
        "XDP forwarded {forwarded} of {channel_packets} client-to-client packets (want at least \
         99%)\n{exit}\n{stdout}"
    );
}
