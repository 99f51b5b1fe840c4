//! `relay down` undoes what `relay run --interface` changed on the host: the interface's
//! forwarding (IPv4, IPv6) and accept_ra go back to what they were, also after a restart
//! (which changes nothing and must not forget the first values). Needs root.
//!
//! The relay runs under `nsenter --net` (not `ip netns exec`, whose private /sys would give
//! it a private bpffs), so that `relay down` finds its pins, as on an appliance.

mod support;

use std::process::Command;

use nix::sys::signal::Signal;
use relay::dataplane::Pins;
use support::{RunningRelay, TempDir, lab_relay_args};
use xtask::lab::{Host, Lab};

const IPV4_FORWARDING: &str = "/proc/sys/net/ipv4/conf/eth0/forwarding";
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/eth0/forwarding";
const ACCEPT_RA: &str = "/proc/sys/net/ipv6/conf/eth0/accept_ra";

/// The relay binary in the relay host's network namespace, sharing the host's mounts.
fn relay_command(lab: &Lab) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", lab.netns(Host::Relay)))
        .arg(env!("CARGO_BIN_EXE_relay"));
    c
}

/// The relay host's `[IPv4 forwarding, IPv6 forwarding, accept_ra]` of eth0.
fn settings(lab: &Lab) -> [String; 3] {
    lab.in_netns(Host::Relay, || {
        [IPV4_FORWARDING, IPV6_FORWARDING, ACCEPT_RA]
            .map(|path| std::fs::read_to_string(path).unwrap().trim().to_owned())
    })
    .unwrap()
}

/// Removes the instance's pins when dropped, so a failing test leaves none on the host.
struct Unpin(String);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = Pins::new(&self.0).remove();
    }
}

#[test]
fn down_restores_forwarding_and_accept_ra_as_they_were_before_run() {
    let lab = Lab::up("dn-sysctl").unwrap();
    // A host that neither forwards nor has been touched by a relay; it takes RAs.
    lab.in_netns(Host::Relay, || {
        for (path, value) in [
            (IPV4_FORWARDING, "0"),
            (IPV6_FORWARDING, "0"),
            (ACCEPT_RA, "1"),
        ] {
            std::fs::write(path, value).unwrap();
        }
    })
    .unwrap();
    let state = TempDir::new("dn-sysctl");
    let instance = format!("dn-sysctl-{}", std::process::id());
    let _unpin = Unpin(instance.clone());
    let args = lab_relay_args(&[
        "--interface",
        "eth0",
        "--instance",
        &instance,
        "--state-dir",
        state.0.to_str().unwrap(),
    ]);

    let first = RunningRelay::start_command(relay_command(&lab), &args, "TURN on");
    assert_eq!(settings(&lab), ["1", "1", "2"], "run turns forwarding on");
    first.stop(Signal::SIGTERM);
    // A restart adopts the pinned data plane and changes nothing more.
    let second = RunningRelay::start_command(relay_command(&lab), &args, "TURN on");
    second.stop(Signal::SIGTERM);
    assert_eq!(
        settings(&lab),
        ["1", "1", "2"],
        "XDP stays, and forwarding with it"
    );

    let out = relay_command(&lab)
        .args(["down", "--instance", &instance, "--state-dir"])
        .arg(&state.0)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(settings(&lab), ["0", "0", "1"], "relay down said:\n{said}");
    for restored in [
        "net/ipv4/conf/eth0/forwarding 1 -> 0",
        "net/ipv6/conf/eth0/forwarding 1 -> 0",
        "net/ipv6/conf/eth0/accept_ra 2 -> 1",
    ] {
        assert!(said.contains(restored), "no {restored:?} in:\n{said}");
    }
}
