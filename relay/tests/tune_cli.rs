//! `relay tune` end to end through the binary: its output, exit codes and messages. The
//! settings themselves are tested in `tuning` (fake trees and a veth lab); here a veth in a
//! network namespace of its own (`tune-TEST-PID`, removed even when the test fails) is tuned
//! and put back the way an operator would, with `ip netns exec`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Output, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use serde_json::Value;

const RELAY: &str = env!("CARGO_BIN_EXE_relay");

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Namespace {
    /// A namespace `tune-TEST-PID` (one per test: they run in parallel) with the veth pair
    /// tv0/tv1, both up.
    fn with_veth(test: &str) -> Self {
        let name = format!("tune-{test}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ns = Self(name);
        Self::must(&["ip", "netns", "add", &ns.0]);
        Self::must(&[
            "ip", "-n", &ns.0, "link", "add", "tv0", "type", "veth", "peer", "name", "tv1",
        ]);
        for dev in ["tv0", "tv1"] {
            Self::must(&["ip", "-n", &ns.0, "link", "set", dev, "up"]);
        }
        ns
    }

    fn must(args: &[&str]) -> Output {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `relay tune ARGS` inside the namespace.
    fn tune(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, RELAY, "tune"])
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every step's current value from `plan --json`.
fn currents(plan: &Output) -> Vec<(String, Value)> {
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["setting"].to_string(), s["current"].clone()))
        .collect()
}

#[test]
fn apply_verify_revert_in_a_namespace() {
    let ns = Namespace::with_veth("cli");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let etc = dir.path().join("etc");
    let dirs = [
        "--state-dir",
        state.to_str().unwrap(),
        "--etc",
        etc.to_str().unwrap(),
    ];
    let with = |args: &[&'static str]| -> Vec<String> {
        args.iter()
            .map(|a| (*a).to_owned())
            .chain(dirs.iter().map(|a| (*a).to_owned()))
            .collect()
    };
    let tune = |args: &[&'static str]| {
        let args = with(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.tune(&args)
    };
    let plan = ["plan", "--profile", "edge-4c8g", "-i", "tv0", "--json"];
    let before = tune(&plan);
    assert!(before.status.success(), "{}", text(&before.stderr));
    let json: Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(json["profile"], "edge-4c8g");
    let gro = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["setting"]["kind"] == "gro")
        .unwrap();
    assert_eq!(
        (&gro["current"], &gro["action"]),
        (&"off".into(), &"change".into())
    );

    let apply = ["apply", "--profile", "edge-4c8g", "-i", "tv0"];
    let out = tune(&apply);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("profile edge-4c8g: changed\n"),
        "{stdout}"
    );
    assert!(stdout.contains("tv0 gro "), "{stdout}");
    assert!(stdout.contains("90-relay-tune.conf"), "{stdout}");
    let out = tune(&["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    // GRO turned off behind relay tune's back: verify exits 1 and names it.
    Namespace::must(&[
        "ip", "netns", "exec", &ns.0, "ethtool", "-K", "tv0", "gro", "off",
    ]);
    let out = tune(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let drift: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| l.ends_with("drift"))
        .map(str::to_owned)
        .collect();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].starts_with("tv0 gro "), "{drift:?}");
    // apply again repairs it, and changes nothing else.
    let out = tune(&apply);
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("tv0 ") || l.starts_with("net."))
            .count(),
        1,
        "{stdout}"
    );
    assert!(tune(&["verify"]).status.success());

    let out = tune(&["revert"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = tune(&plan);
    assert_eq!(currents(&after), currents(&before), "every value as it was");
    let out = tune(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: nothing applied: "),
        "{}",
        text(&out.stderr)
    );

    let out = tune(&["apply", "--profile", "edge-4c8g", "-i", "nope0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: no interface \"nope0\" in this network namespace (there are: lo, tv0, tv1)\n"
    );
    assert!(!state.join("tune/journal.json").exists());
}

#[test]
fn not_root_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (state, etc) = (dir.path().join("state"), dir.path().join("etc"));
    for args in [&["apply", "--profile", "k3s-node"][..], &["revert"][..]] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .args([RELAY, "tune"])
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .arg("--etc")
            .arg(&etc)
            .output()
            .expect("running setpriv (util-linux)");
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: relay tune {} changes kernel and NIC settings and needs root: run it as \
                 root (or with sudo)\n",
                args[0]
            )
        );
        assert!(!state.exists() && !etc.exists());
    }
}

#[test]
fn check_reports_every_item_as_json() {
    let out = Command::new(RELAY)
        .args(["tune", "check", "--json", "-i", "lo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let findings: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(
                ["ok", "warn", "info"].contains(&f["status"].as_str().unwrap()),
                "{f}"
            );
            assert!(!f["reason"].as_str().unwrap().is_empty(), "{f}");
            f["item"].as_str().unwrap()
        })
        .collect();
    for item in [
        "xdp",
        "channels",
        "rings",
        "irq-affinity",
        "irqbalance",
        "rps",
        "xps",
        "gro",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.core.netdev_max_backlog",
        "net.core.netdev_budget",
        "net.core.busy_read",
        "net.core.busy_poll",
        "net.ipv4.ip_local_reserved_ports",
        "conntrack",
        "cpu-governor",
        "tuned",
    ] {
        assert!(items.contains(&item), "{item} missing from {items:?}");
    }
}

#[test]
fn the_relays_configuration_gives_interface_ports_and_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let state = dir.path().join("relay-state");
    std::fs::write(
        &config,
        format!(
            "interface = \"lo\"\nmedia-min-port = 30000\nmedia-max-port = 30999\n\
             max-port = 60000\nlistening-port = 3479\nstate-dir = {:?}\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let tune = |args: &[&str]| {
        Command::new(RELAY)
            .args(["tune", "--config", config.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = tune(&["plan", "--profile", "edge-4c8g", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["options"],
        serde_json::json!({
            "interface": "lo",
            "media_ports": {"first": 30000, "last": 30999},
            "relay_ports": {"first": 49152, "last": 60000},
            "listening_port": 3479,
        })
    );
    // A flag wins over the file.
    let out = tune(&[
        "plan",
        "--profile",
        "k3s-node",
        "--json",
        "--media-ports",
        "31000-31999",
    ]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["options"]["media_ports"]["first"], 31000);
    let out = tune(&["verify"]);
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: nothing applied: {}/tune/journal.json does not exist (wrong --state-dir?)\n",
            state.display()
        )
    );

    std::fs::write(&config, "interface = [\"lo\", \"eth9\"]\n").unwrap();
    let out = tune(&["check"]);
    assert_eq!(
        text(&out.stderr),
        "error: the relay's configuration names several interfaces (lo, eth9): tune one at a \
         time with --interface\n"
    );
    std::fs::write(&config, "lisening-port = 1\n").unwrap();
    let out = tune(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: config: "),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("unknown field `lisening-port`"),
        "{}",
        text(&out.stderr)
    );
}

/// `relay attach` running in the namespace; killed and waited for when dropped.
struct Attached(Child);

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_value_the_kernel_refuses_leaves_nothing_applied() {
    let ns = Namespace::with_veth("refused");
    // An XDP program on tv1: veth then refuses more tx queues on tv0 than tv1 has rx queues
    // (one), so the profile's channel change fails half way through the plan.
    let mut attach = Attached(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, RELAY, "attach", "-i", "tv1"])
            .args(["--xdp-mode", "native"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = attach.0.stderr.take().unwrap();
    let mut log = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("counting on tv1") {
            break;
        }
    }
    assert!(log.contains("counting on tv1"), "relay attach: {log}");

    let dir = tempfile::tempdir().unwrap();
    let (state, etc) = (dir.path().join("state"), dir.path().join("etc"));
    let dirs = [
        "--state-dir",
        state.to_str().unwrap(),
        "--etc",
        etc.to_str().unwrap(),
    ];
    let plan = |ns: &Namespace| {
        let mut args = vec!["plan", "--profile", "edge-4c8g", "-i", "tv0", "--json"];
        args.extend(dirs);
        ns.tune(&args)
    };
    let before = plan(&ns);
    let mut args = vec!["apply", "--profile", "edge-4c8g", "-i", "tv0"];
    args.extend(dirs);
    let out = ns.tune(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: the kernel refused tv0 channels tx = ")
            && stderr.ends_with(
                ": Invalid argument (os error 22); nothing is applied (the 2 setting(s) \
                 changed before it were put back)\n"
            ),
        "{stderr}"
    );
    assert_eq!(
        currents(&plan(&ns)),
        currents(&before),
        "every value as it was"
    );
    assert!(!state.join("tune/journal.json").exists());
    assert!(!etc.exists(), "no file persisted");

    kill(Pid::from_raw(attach.0.id().cast_signed()), Signal::SIGINT).unwrap();
    assert!(attach.0.wait().unwrap().success());
}
