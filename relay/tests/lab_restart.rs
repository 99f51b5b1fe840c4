//! Restart without interruption: the relay is killed (SIGKILL) while a client streams
//! channel data; XDP keeps forwarding with no daemon; the restarted relay adopts the pinned
//! data plane and the saved allocation, serves Refresh and ChannelBind for it, and not one
//! packet is lost, and `relay stats` reads the kernel's counts from the pins meanwhile. A
//! clean SIGTERM keeps the data plane; `relay down` removes it. Needs root.
//!
//! The relay runs under `nsenter --net` (not `ip netns exec`, whose private /sys would
//! give it a private bpffs): its pins are on the host's bpffs, as on an appliance.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use relay::dataplane::Pins;
use support::{
    RunningRelay, StopOnDrop, TempDir, channel_client, lab_relay_args, pinned_relay_args,
    relay_with_host_mounts, stream_channel, tc_ingress_programs, verdict_row, xdp_attachment,
    xdp_on_switch_port,
};
use xtask::lab::{Host, Lab};

const CHANNEL: u16 = 0x4002;
const RATE: u64 = 500;

/// What `relay stats --json` reads from the instance's pins: packets forwarded by XDP.
fn forwarded_by_stats(lab: &Lab, instance: &str) -> u64 {
    let out = relay_with_host_mounts(lab)
        .args(["stats", "--instance", instance, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let snapshot: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        snapshot["interfaces"],
        serde_json::json!(["eth0"]),
        "{snapshot}"
    );
    snapshot["verdicts"]["forwarded"]["packets"]
        .as_u64()
        .unwrap()
}

/// Runs `relay down` for the instance when dropped, so a failing test leaves no pins.
struct Down<'a> {
    lab: &'a Lab,
    instance: String,
    state: &'a TempDir,
}

impl Down<'_> {
    fn run(&self) -> String {
        let out = relay_with_host_mounts(self.lab)
            .args(["down", "--instance", &self.instance, "--state-dir"])
            .arg(&self.state.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Pins::new(&self.instance).remove();
    }
}

/// Counts distinct sequence numbers arriving on `sink` until `sending` is cleared and
/// nothing more arrives for 500 ms; `received` follows the count.
fn count_sequences(
    sink: &UdpSocket,
    sending: &AtomicBool,
    received: &AtomicU64,
) -> std::collections::BTreeSet<u64> {
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = [0; 64];
    loop {
        match sink.recv(&mut buf) {
            Ok(8) => {
                seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                received.store(seen.len() as u64, Ordering::Release);
            }
            Err(_) if !sending.load(Ordering::Acquire) => return seen,
            Ok(_) | Err(_) => {}
        }
    }
}

#[test]
fn a_killed_relay_interrupts_nothing_and_its_successor_adopts_the_data_plane() {
    let lab = Lab::up("rs-kill").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let state = TempDir::new("rs-kill");
    let instance = format!("rs-kill-{}", std::process::id());
    let down = Down {
        lab: &lab,
        instance: instance.clone(),
        state: &state,
    };
    let state_dir = state.0.to_str().unwrap().to_owned();
    let args = pinned_relay_args(&instance, &state_dir);
    let first = RunningRelay::start_command(relay_with_host_mounts(&lab), &args, "TURN on");

    // The peer: a sink that counts distinct sequence numbers.
    let sink = lab
        .in_netns(Host::Peer, || UdpSocket::bind("10.77.0.21:4000").unwrap())
        .unwrap();
    let peer: SocketAddr = sink.local_addr().unwrap();
    let mut client = channel_client(&lab, Host::ClientA, ("alice", "wonderland"), CHANNEL, peer);
    let sending = AtomicBool::new(true);
    let received = AtomicU64::new(0);
    let (sent, seen) = std::thread::scope(|s| {
        let counter = s.spawn(|| count_sequences(&sink, &sending, &received));
        let (socket, server) = (client.socket().try_clone().unwrap(), client.server());
        let sending = &sending;
        let sender = s.spawn(move || stream_channel(&socket, server, (CHANNEL, RATE), sending));
        // Whatever happens below, the sender and the counter stop.
        let _stop = StopOnDrop(sending);
        let wait_for = |n: u64, what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while received.load(Ordering::Acquire) < n {
                assert!(Instant::now() < deadline, "{what}: stuck at {n}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };

        // Streaming through the first relay; then it dies without a word.
        wait_for(RATE / 2, "before the kill");
        let mut first = first;
        first.kill();
        // With no daemon at all, the kernel goes on forwarding, and `relay stats` reads
        // what it counts from the pins.
        let before = forwarded_by_stats(&lab, &instance);
        let at_kill = received.load(Ordering::Acquire);
        wait_for(at_kill + RATE / 2, "while no relay runs");
        let after = forwarded_by_stats(&lab, &instance);
        // All but the few in flight when `before` was read went through XDP since.
        assert!(
            after >= before + RATE / 2 - 10,
            "relay stats with no daemon: {before} then {after} forwarded"
        );

        let second = RunningRelay::start_command(relay_with_host_mounts(&lab), &args, "TURN on");
        assert!(
            second.logged("restoring 1 allocations"),
            "{:?}",
            second.log_lines()
        );
        assert!(
            second.logged("adopting the data plane"),
            "{:?}",
            second.log_lines()
        );
        // Its room fan-out program took the pinned TC link over: one program there, not two.
        assert_eq!(tc_ingress_programs(&lab, Host::Relay), ["relay_fanout"]);
        // The successor serves the allocation: Refresh, and the channel's refresh.
        client.refresh(600).unwrap();
        client.channel_bind(CHANNEL, peer).unwrap();
        let at_restart = received.load(Ordering::Acquire);
        wait_for(at_restart + RATE / 2, "after the restart");

        sending.store(false, Ordering::Release);
        let sent = sender.join().unwrap();
        let seen = counter.join().unwrap();
        // SIGTERM: the data plane stays attached.
        let stdout = second.stop(Signal::SIGTERM);
        eprintln!("{stdout}");
        let (forwarded, _) = verdict_row(&stdout, "forwarded");
        assert!(
            forwarded * 100 >= sent * 99,
            "XDP forwarded {forwarded} of {sent} (want at least 99%)"
        );
        (sent, seen)
    });
    let lost: Vec<u64> = (0..sent).filter(|s| !seen.contains(s)).collect();
    assert!(lost.is_empty(), "{} of {sent} lost: {lost:?}", lost.len());

    assert!(
        xdp_attachment(&lab, Host::Relay).is_some(),
        "SIGTERM must leave XDP attached"
    );
    let said = down.run();
    assert!(said.contains("XDP detached from eth0"), "{said}");
    assert_eq!(
        xdp_attachment(&lab, Host::Relay),
        None,
        "relay down detaches"
    );
    assert!(
        tc_ingress_programs(&lab, Host::Relay).is_empty(),
        "relay down detaches the TC program too"
    );
    assert!(!Pins::new(&instance).dir().exists());
    assert!(!state.0.join(format!("{instance}.json")).exists());
}

/// What the relay warns when its pins cannot outlive it.
const PRIVATE_BPFFS: &str = "restarts will not be hitless";

#[test]
fn a_relay_that_pins_on_a_bpffs_of_its_own_mount_namespace_says_so() {
    let lab = Lab::up("rs-mntns").unwrap();
    // `ip netns exec` gives the relay a fresh /sys without bpffs: it mounts its own there.
    let private = RunningRelay::in_lab(&lab, &["--interface", "eth0"]);
    assert!(
        private.logged(PRIVATE_BPFFS),
        "no warning about private pins: {:?}",
        private.log_lines()
    );
    let lines = private.log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("mount -t bpf bpf /sys/fs/bpf") && l.contains("nsenter --net=")),
        "the warning says how to fix it: {lines:?}"
    );
    private.stop(Signal::SIGTERM);
    // As warned: its pins, and the XDP link with them, died with its mount namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attachment(&lab, Host::Relay).is_some() {
        assert!(Instant::now() < deadline, "XDP still attached");
        std::thread::sleep(Duration::from_millis(20));
    }

    // With the host's mounts (`nsenter --net`), the pins outlive the relay: no warning.
    let state = TempDir::new("rs-mntns");
    let instance = format!("rs-mntns-{}", std::process::id());
    let down = Down {
        lab: &lab,
        instance: instance.clone(),
        state: &state,
    };
    let args = lab_relay_args(&[
        "--interface",
        "eth0",
        "--instance",
        &instance,
        "--state-dir",
        state.0.to_str().unwrap(),
    ]);
    let shared = RunningRelay::start_command(relay_with_host_mounts(&lab), &args, "TURN on");
    assert!(
        !shared.logged(PRIVATE_BPFFS),
        "a warning with the host's mounts: {:?}",
        shared.log_lines()
    );
    shared.stop(Signal::SIGTERM);
    assert!(Pins::new(&instance).dir().exists(), "pinned on the host");
    down.run();
}

/// `relay stats` for an instance with nothing pinned says so and fails.
#[test]
fn stats_without_a_data_plane_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["stats", "--instance", "rs-nothing-pinned-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no data plane pinned at"), "{err}");
}
