//! `apply`, `verify` and `revert` against a real kernel: veth pairs in a network namespace of
//! their own (`tune-PID`), removed with the namespace even when the test fails. Needs root.
//!
//! What a namespace can change is tested here: a per-namespace sysctl
//! (`net.ipv4.ip_local_reserved_ports`) and the veth's own settings (channels, GRO, RPS).
//! Host-wide sysctls (`net.core.rmem_max`, `wmem_max`, `netdev_max_backlog`,
//! `netdev_budget`, `busy_read`, `busy_poll`) are read-only or absent inside a namespace: here
//! it is checked only that the plan says so and apply leaves them alone; applying and
//! reverting them is tested on the fake tree (`src/tests.rs`). Rings too: veth has none.
//!
//! The test re-runs itself inside the namespace with `ip netns exec`, which also mounts a
//! `/sys` of that namespace, so the process sees the veths as an operator's `relay tune`
//! would.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use tuning::{Host, Options, Profile, plan::Action, setting::Setting};

const INNER: &str = "TUNING_LAB_INNER";

struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        let name = format!("tune-{}", std::process::id());
        // A namespace left by a killed earlier run of this pid: start clean.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        Self(name)
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The veths go with it.
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn apply_verify_revert_on_veths_in_a_namespace() {
    if std::env::var_os(INNER).is_some() {
        inside();
        return;
    }
    // SAFETY: geteuid() cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates a network namespace: run it as root"
    );
    let ns = Namespace::new();
    // tv0: as many queues as CPUs available, one in use. tq0: a single queue (RPS's case).
    ns.ip(&["link", "add", "tv0", "type", "veth", "peer", "name", "tv1"]);
    ns.ip(&[
        "link",
        "add",
        "tq0",
        "numrxqueues",
        "1",
        "numtxqueues",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        "tq1",
    ]);
    for dev in ["tv0", "tv1", "tq0", "tq1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "apply_verify_revert_on_veths_in_a_namespace",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .stdin(Stdio::null())
        .status()
        .expect("running the test inside the namespace");
    assert!(status.success(), "inside the namespace: {status}");
}

/// Runs in the namespace.
fn inside() {
    let dir = tempfile::tempdir().unwrap();
    let cpus = Host::system().online_cpus().unwrap().len();
    assert!(
        cpus >= 2,
        "veth's queues follow the CPUs: this test needs 2 or more"
    );

    let changed = round(dir.path(), "tv0");
    let names: Vec<String> = changed.iter().map(ToString::to_string).collect();
    assert!(names.contains(&"tv0 channels rx".to_owned()), "{names:?}");
    assert!(names.contains(&"tv0 channels tx".to_owned()), "{names:?}");
    assert!(names.contains(&"tv0 gro".to_owned()), "{names:?}");

    let changed = round(dir.path(), "tq0");
    let names: Vec<String> = changed.iter().map(ToString::to_string).collect();
    assert!(names.contains(&"tq0 rx-0 rps_cpus".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains("channels")),
        "one queue is all tq0 has: {names:?}"
    );

    // An interface that is not there: a clear message, nothing written.
    let host = Host::system().with_etc(dir.path().join("etc-none"));
    let options = Options {
        interface: Some("tv9".into()),
        ..Options::default()
    };
    let state = dir.path().join("state-none");
    let e = tuning::apply(&host, &state, Profile::Edge4c8g, &options).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("no interface \"tv9\" in this network namespace (there are: "),
        "{e}"
    );
    assert!(!state.exists() && !dir.path().join("etc-none").exists());
}

/// Applies edge-4c8g for `interface`, checks, verifies, applies again, drifts one value, and
/// reverts; every setting of the plan must be back. Returns the settings apply changed.
fn round(dir: &Path, interface: &str) -> Vec<Setting> {
    let etc = dir.join(format!("etc-{interface}"));
    let state = dir.join(format!("state-{interface}"));
    let host = Host::system().with_etc(&etc);
    let options = Options {
        interface: Some(interface.to_owned()),
        ..Options::default()
    };
    let plan = tuning::plan(&host, Profile::Edge4c8g, &options).unwrap();
    print!("{}", tuning::report::plan(&plan));
    for step in &plan.steps {
        let name = step.setting.to_string();
        match name.as_str() {
            // Host-wide: visible but read-only, or absent, in a namespace.
            "net.core.rmem_max" | "net.core.wmem_max" => assert!(
                matches!(step.action, Action::Keep | Action::ReadOnly),
                "{step:?}"
            ),
            "net.core.netdev_max_backlog" | "net.core.netdev_budget" => {
                assert_eq!(step.action, Action::Absent, "{step:?}");
            }
            _ => {}
        }
    }
    let before: Vec<(Setting, Option<String>)> = plan
        .steps
        .iter()
        .map(|s| (s.setting.clone(), s.setting.read(&host).unwrap()))
        .collect();

    let applied = tuning::apply(&host, &state, Profile::Edge4c8g, &options).unwrap();
    print!("{}", tuning::report::applied(&applied));
    assert!(!applied.changed.is_empty());
    for change in &applied.changed {
        let now = change.setting.read(&host).unwrap().unwrap();
        assert!(
            change.setting.same(&now, &change.after),
            "{change:?}: {now}"
        );
    }
    assert_eq!(
        Setting::sysctl("net.ipv4.ip_local_reserved_ports")
            .read(&host)
            .unwrap()
            .as_deref(),
        Some("40000-44999,49152-65535")
    );
    let sysctl_d = std::fs::read_to_string(etc.join("sysctl.d/90-relay-tune.conf")).unwrap();
    assert!(sysctl_d.contains("net.ipv4.ip_local_reserved_ports = 40000-44999,49152-65535\n"));
    let mac = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).unwrap();
    let link = std::fs::read_to_string(
        etc.join(format!("systemd/network/90-relay-tune-{interface}.link")),
    )
    .unwrap();
    assert!(
        link.contains(&format!("MACAddress={}", mac.trim())),
        "{link}"
    );
    assert!(link.contains("GenericReceiveOffload=true"), "{link}");

    let verified = tuning::verify(&host, &state).unwrap();
    assert_eq!(verified.drifted().count(), 0, "{verified:#?}");
    let again = tuning::apply(&host, &state, Profile::Edge4c8g, &options).unwrap();
    assert!(again.changed.is_empty(), "{again:#?}");

    // Someone turns GRO off again: verify sees it.
    let gro = Setting::Gro {
        interface: interface.to_owned(),
    };
    gro.write(&host, "off").unwrap();
    let verified = tuning::verify(&host, &state).unwrap();
    let drifted: Vec<&str> = verified.drifted().map(|c| c.what.as_str()).collect();
    assert_eq!(drifted, [format!("{interface} gro").as_str()]);

    let reverted = tuning::revert(&host, &state).unwrap();
    print!("{}", tuning::report::reverted(&reverted));
    for (setting, value) in &before {
        let now = setting.read(&host).unwrap();
        match (value, &now) {
            (Some(a), Some(b)) => assert!(setting.same(a, b), "{setting}: {a} before, {b} now"),
            _ => assert_eq!(value, &now, "{setting}"),
        }
    }
    // The files are gone and nothing else was left in /etc or the state directory.
    assert_eq!(files_under(&etc), Vec::<String>::new());
    assert_eq!(files_under(&state), Vec::<String>::new());
    applied.changed.into_iter().map(|c| c.setting).collect()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}
