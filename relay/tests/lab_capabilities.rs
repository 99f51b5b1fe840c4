//! relay.service's capabilities, checked by running the relay with exactly the
//! `CapabilityBoundingSet=` of appliance/systemd/relay.service, as systemd starts a root
//! service (`setpriv --bounding-set`: root keeps only those), on the host's bpffs
//! (`nsenter --net`, as lab_restart): XDP and TC attach, the data plane is pinned, a
//! channel is forwarded by XDP, a second relay adopts the pins. Each capability of the set
//! is needed: without any one of them the relay refuses to start. Needs root.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use relay::dataplane::Pins;
use support::{
    RunningRelay, TempDir, channel_client, pinned_relay_args, send_on_channel, verdict_row,
    xdp_on_switch_port,
};
use xtask::lab::{Host, Lab};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../appliance/systemd/relay.service"
);
const CHANNEL: u16 = 0x4005;
const PACKETS: u16 = 100;

/// The unit's capabilities, as `CAP_BPF`, ... (one `CapabilityBoundingSet=` line).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .collect();
    assert_eq!(lines.len(), 1, "one CapabilityBoundingSet= line: {lines:?}");
    lines[0].split_whitespace().map(str::to_owned).collect()
}

/// Capability numbers (linux/capability.h) of the ones relay.service may name.
fn number(cap: &str) -> u32 {
    match cap {
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("{other}: add its number here"),
    }
}

/// The relay in the lab's relay namespace with the host's mounts, root holding `caps` only.
fn command(lab: &Lab, caps: &[String]) -> Command {
    let mut bounding = String::from("-all");
    for cap in caps {
        bounding.push_str(",+");
        bounding.push_str(&cap.trim_start_matches("CAP_").to_lowercase());
    }
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", lab.netns(Host::Relay)))
        .arg("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg(env!("CARGO_BIN_EXE_relay"));
    c
}

/// The effective capabilities of process `pid`.
fn effective(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Removes the instance's pins, even when the test fails.
struct Unpin(String);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = Pins::new(&self.0).remove();
    }
}

/// 100 packets from client A through a channel to the peer host, each received.
fn stream_through_a_channel(lab: &Lab) {
    let peer = lab
        .in_netns(Host::Peer, || UdpSocket::bind("10.77.0.21:4005").unwrap())
        .unwrap();
    let to: SocketAddr = "10.77.0.21:4005".parse().unwrap();
    let client = channel_client(lab, Host::ClientA, ("alice", "wonderland"), CHANNEL, to);
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0; 64];
    for i in 0..PACKETS {
        let data = i.to_be_bytes();
        send_on_channel(&client, CHANNEL, &data);
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &data, "packet {i}");
    }
}

#[test]
fn the_units_capabilities_suffice_for_xdp_pins_and_adoption_and_each_is_needed() {
    let caps = unit_capabilities();
    eprintln!("relay.service: CapabilityBoundingSet={}", caps.join(" "));
    let lab = Lab::up("caps").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let state = TempDir::new("caps");
    let instance = format!("caps-{}", std::process::id());
    let _unpin = Unpin(instance.clone());
    let args = pinned_relay_args(&instance, state.0.to_str().unwrap());

    let relay = RunningRelay::start_command(command(&lab, &caps), &args, "TURN on");
    let mask = caps.iter().fold(0_u64, |m, c| m | 1 << number(c));
    assert_eq!(
        effective(relay.pid()),
        mask,
        "the relay runs with exactly the unit's capabilities"
    );
    assert!(
        relay.logged("XDP attached to eth0"),
        "{:#?}",
        relay.log_lines()
    );
    assert!(relay.logged("TC ingress program attached to eth0"));
    assert_eq!(Pins::new(&instance).interfaces(), ["eth0"]);
    stream_through_a_channel(&lab);
    let stdout = relay.stop(Signal::SIGTERM);
    let (forwarded, _) = verdict_row(&stdout, "forwarded");
    assert!(forwarded >= u64::from(PACKETS) * 99 / 100, "{stdout}");

    // What a restart under systemd does: the next relay takes the pins over.
    let next = RunningRelay::start_command(command(&lab, &caps), &args, "TURN on");
    assert!(
        next.logged("adopting the data plane pinned"),
        "{:#?}",
        next.log_lines()
    );
    next.stop(Signal::SIGTERM);
    assert!(
        Pins::new(&instance).remove().unwrap(),
        "pinned after SIGTERM"
    );

    // Each one is needed: without it the relay stops at start with an error.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut child = command(&lab, &fewer)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the relay still runs without {missing}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        eprintln!(
            "without {missing}: {}",
            stderr
                .lines()
                .find(|l| l.starts_with("Error"))
                .unwrap_or("")
        );
        assert!(!status.success(), "without {missing}: {status}\n{stderr}");
        assert!(stderr.contains("Error: "), "without {missing}: {stderr}");
        let _ = Pins::new(&instance).remove();
    }
}
