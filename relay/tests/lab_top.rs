//! `relay top` in a real terminal: tmux runs it beside a relay with XDP while a client
//! streams through a channel; the test reads tmux's screen until it shows the kernel
//! forwarding and the channel's flow, stops the daemon and reads on until the screen says
//! the daemon is down while the kernel's counts still move, then presses `q` and checks
//! that the program left and gave the terminal back. Needs root and tmux (`cargo xtask
//! setup` installs it).
//!
//! The relay and `relay top` run under `nsenter --net` (not `ip netns exec`, whose private
//! /sys would give each a private bpffs): both see the pins on the host's bpffs.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Command, Output},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use relay::{dataplane::Pins, top::view::DAEMON_DOWN};
use support::{
    RunningRelay, StopOnDrop, TempDir, channel_client, lab_relay_args, relay_top_once,
    relay_with_host_mounts, stream_channel, xdp_on_switch_port,
};
use xtask::lab::{Host, Lab};

const CHANNEL: u16 = 0x4003;
/// ChannelData messages a second through the channel, all along.
const RATE: u64 = 200;

/// `relay` in the relay host's network namespace, with the host's mounts.
fn relay_in(lab: &Lab) -> String {
    format!(
        "nsenter --net=/run/netns/{} {}",
        lab.netns(Host::Relay),
        env!("CARGO_BIN_EXE_relay")
    )
}

/// A tmux server of the test's own (`-L`), killed on drop, with one 160x50 pane.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (`cargo xtask setup` installs it)");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        out
    }

    /// Runs `command` in a detached 160x50 pane that stays after the command exits, so
    /// that its exit status can be read.
    fn start(command: &str) -> Self {
        let tmux = Self {
            socket: format!("relay-top-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "50",
            "-s",
            "top",
            "sleep 600",
        ]);
        tmux.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        tmux.run(&["respawn-pane", "-k", "-t", "top", command]);
        tmux
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Polls the screen until `ok` holds for it; returns it.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "relay top never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status of the pane's command, once it has exited.
    fn exit_status(&self) -> Option<i32> {
        let out = self.run(&[
            "display-message",
            "-p",
            "-t",
            "top",
            "#{pane_dead} #{pane_dead_status}",
        ]);
        let said = String::from_utf8_lossy(&out.stdout);
        let (dead, status) = said.trim().split_once(' ')?;
        (dead == "1").then(|| status.parse().ok())?
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The words of a screen line, table borders left out.
fn cells(line: &str) -> Vec<&str> {
    line.split(|c: char| c == '│' || c.is_whitespace())
        .filter(|c| !c.is_empty())
        .collect()
}

/// The cells of the screen's first table row that has the cell `first`, from it on.
fn row<'a>(screen: &'a str, first: &str) -> Option<Vec<&'a str>> {
    screen.lines().find_map(|l| {
        let cells = cells(l);
        let at = cells.iter().position(|c| *c == first)?;
        Some(cells[at..].to_vec())
    })
}

/// The packets a second the kernel forwarded, as the verdicts table shows them, if > 0.
fn forwarding(screen: &str) -> bool {
    row(screen, "forwarded").is_some_and(|r| r.get(1).is_some_and(|pps| *pps != "0"))
}

/// The channel's flow toward `peer`, of tenant north, with a rate > 0.
fn flow_to(screen: &str, peer: SocketAddr) -> bool {
    let peer = peer.to_string();
    screen.lines().any(|l| {
        let cells = cells(l);
        // direction (2 words), from, to, channel, tenant, pkt/s
        let at = cells.windows(2).position(|w| w == ["to", "peer"]);
        at.is_some_and(|at| {
            cells.get(at + 3) == Some(&peer.as_str())
                && cells.get(at + 4) == Some(&format!("{CHANNEL:#06x}").as_str())
                && cells.get(at + 5) == Some(&"north")
                && cells.get(at + 6).is_some_and(|pps| *pps != "0")
        })
    })
}

/// The header's refresh count.
fn refreshes(screen: &str) -> u64 {
    screen
        .split("refresh ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refresh count:\n{screen}"))
}

/// Removes the instance's pins when dropped, so that a failing test leaves none.
struct Unpin(String);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = Pins::new(&self.0).remove();
    }
}

/// With the daemon up and the channel streaming: `--once` prints the screen as text; with
/// no terminal and no `--once`, a clear error and nothing drawn into the pipe.
fn without_a_terminal(lab: &Lab, instance: &str, state_dir: &str) {
    // One screen as text, for a look without a terminal.
    let text = relay_top_once(lab, instance, state_dir);
    assert!(
        text.contains("daemon up") && forwarding(&text) && text.contains("0x4003"),
        "{text}"
    );
    // Without --once and without a terminal: said, not drawn into a pipe.
    let piped = relay_with_host_mounts(lab)
        .args(["top", "--instance", instance])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(1), "{piped:?}");
    assert!(piped.stdout.is_empty(), "{piped:?}");
    assert!(
        String::from_utf8_lossy(&piped.stderr).contains("its output is not one"),
        "{piped:?}"
    );
}

#[test]
fn top_shows_the_kernel_forwarding_with_and_without_the_daemon() {
    let lab = Lab::up("tp").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let state = TempDir::new("tp");
    let instance = format!("tp-{}", std::process::id());
    let _unpin = Unpin(instance.clone());
    let state_dir = state.0.to_str().unwrap();
    // Alice's tenant, far above what she sends: shown with its name, limit and load.
    let config = state.0.join("relay.toml");
    std::fs::write(
        &config,
        "[[tenant]]\nname = \"north\"\nusers = [\"alice\"]\npackets-per-second = 10000\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let args = lab_relay_args(&[
        "--config",
        config,
        "--interface",
        "eth0",
        "--allowed-peer-ip",
        "10.77.0.21",
        "--instance",
        &instance,
        "--state-dir",
        state_dir,
    ]);
    let relay = RunningRelay::start_command(relay_with_host_mounts(&lab), &args, "TURN on");

    let sink = lab
        .in_netns(Host::Peer, || UdpSocket::bind("10.77.0.21:4000").unwrap())
        .unwrap();
    let peer = sink.local_addr().unwrap();
    let client = channel_client(&lab, Host::ClientA, ("alice", "wonderland"), CHANNEL, peer);
    let sending = AtomicBool::new(true);
    std::thread::scope(|s| {
        let (socket, server) = (client.socket().try_clone().unwrap(), client.server());
        let sending = &sending;
        s.spawn(move || stream_channel(&socket, server, (CHANNEL, RATE), sending));
        let _stop = StopOnDrop(sending);

        let tmux = Tmux::start(&format!(
            "{} top --instance {instance} --state-dir {state_dir} --config {config} \
             --interval 250",
            relay_in(&lab)
        ));
        let up = tmux.wait_for("the daemon up, the kernel forwarding the channel", |s| {
            s.contains("daemon up") && forwarding(s) && flow_to(s, peer)
        });
        eprintln!("with the daemon:\n{up}");
        assert!(up.contains("XDP on eth0"), "{up}");
        // The tenant: its limit as the kernel's policer holds it, and a load under it.
        let north = up
            .lines()
            .map(cells)
            .find(|c| c.first() == Some(&"north"))
            .unwrap();
        assert_eq!(north[..3], ["north", "10.0k", "-"], "{up}");
        assert_ne!(north[3], "0", "{up}");
        without_a_terminal(&lab, &instance, state_dir);

        // A clean stop leaves the data plane pinned and forwarding; the next refreshes
        // that begin after it say the daemon is down and still count.
        relay.stop(Signal::SIGTERM);
        let stopped = refreshes(&tmux.screen());
        let down = tmux.wait_for("the daemon down, the kernel still forwarding", |s| {
            refreshes(s) >= stopped + 2
                && s.contains(DAEMON_DOWN)
                && forwarding(s)
                && flow_to(s, peer)
        });
        eprintln!("without the daemon:\n{down}");
        assert!(!down.contains("daemon up"), "{down}");

        tmux.run(&["send-keys", "-t", "top", "q"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = tmux.exit_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "q did not end relay top:\n{}",
                tmux.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status, 0, "{}", tmux.screen());
        // Out of the alternate screen: the view is gone from the terminal.
        let after = tmux.screen();
        assert!(!after.contains("relay top"), "{after}");
    });
}

/// With nothing pinned for the instance: a clear error, no terminal touched.
#[test]
fn top_without_a_data_plane_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["top", "--instance", "tp-nothing-pinned-here", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no data plane pinned at /sys/fs/bpf/relay/tp-nothing-pinned-here"),
        "{said}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
