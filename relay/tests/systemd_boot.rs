//! `systemctl start relay` for real: this host's Debian booted under systemd-nspawn
//! (systemd 252 as PID 1) on an overlay of / (nothing written to the host), with the relay
//! under test at /usr/bin/relay, the shipped units and default configuration installed as
//! the README says (plus `interface = "host0"`, the container's veth, and an instance of
//! its own), and a watchdog of 3 s in a drop-in to see it act. A oneshot unit in the
//! container (systemd_boot/check.sh) drives relay.service: ready when `systemctl start`
//! returns, exactly the unit's capabilities, XDP attached and pinned on the host's bpffs,
//! adopted across `systemctl restart`, restarted after SIGKILL and after the watchdog
//! caught a stopped process, pins kept by `systemctl stop`; then relay-tune.service.
//! Needs root, systemd-container and overlayfs (`cargo xtask setup`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use relay::dataplane::Pins;

const RELAY: &str = env!("CARGO_BIN_EXE_relay");
const APPLIANCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../appliance");
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd_boot/check.sh");
/// Boot, the checks (two watchdog periods among them) and power-off.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// / under an overlay whose upper layer is a tmpfs, unmounted (and the instance's pins
/// removed) on drop.
struct Root {
    dir: tempfile::TempDir,
    instance: String,
}

impl Root {
    fn new(instance: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (t, root) = (dir.path().join("t"), dir.path().join("root"));
        std::fs::create_dir_all(&t).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        must(&["mount", "-t", "tmpfs", "tmpfs", t.to_str().unwrap()]);
        for sub in ["upper", "work"] {
            std::fs::create_dir_all(t.join(sub)).unwrap();
        }
        let options = format!(
            "lowerdir=/,upperdir={0}/upper,workdir={0}/work",
            t.display()
        );
        must(&[
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            &options,
            root.to_str().unwrap(),
        ]);
        Self {
            dir,
            instance: instance.to_owned(),
        }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir
            .path()
            .join("root")
            .join(inside.trim_start_matches('/'))
    }

    fn install(&self, from: &Path, to: &str, mode: u32) {
        let to = self.path(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }

    fn write(&self, to: &str, text: &str, mode: u32) {
        let to = self.path(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, text).unwrap();
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.dir.path().join("root"))
            .status();
        let _ = Command::new("umount")
            .arg(self.dir.path().join("t"))
            .status();
        let _ = Pins::new(&self.instance).remove();
    }
}

/// Relay installed as the README's "As a systemd service" says, and the check unit.
fn install(root: &Root, instance: &str) {
    root.install(Path::new(RELAY), "/usr/bin/relay", 0o755);
    let config = std::fs::read_to_string(format!("{APPLIANCE}/relay.toml")).unwrap();
    root.write(
        "/etc/relay/relay.toml",
        &format!("{config}\ninterface = \"host0\"\ninstance = \"{instance}\"\n"),
        0o644,
    );
    root.write("/etc/relay/turn-secret", "boot-test-secret\n", 0o600);
    root.write(
        "/etc/relay/tune.env",
        "RELAY_TUNE_PROFILE=k3s-node\n",
        0o644,
    );
    for unit in ["relay.service", "relay-tune.service"] {
        let from = PathBuf::from(format!("{APPLIANCE}/systemd/{unit}"));
        root.install(&from, &format!("/etc/systemd/system/{unit}"), 0o644);
    }
    root.write(
        "/etc/systemd/system/relay.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=3s\n",
        0o644,
    );
    root.install(Path::new(CHECK), "/usr/local/sbin/relay-check", 0o755);
    root.write(
        "/etc/systemd/system/relay-check.service",
        &format!(
            "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\n\
             Environment=RELAY_INSTANCE={instance}\nExecStart=/usr/local/sbin/relay-check\n"
        ),
        0o644,
    );
    std::os::unix::fs::symlink(
        "/etc/systemd/system/relay-check.service",
        root.path("/etc/systemd/system/multi-user.target.wants/relay-check.service"),
    )
    .unwrap();
    let _ = std::fs::remove_file(root.path("/var/log/relay-check.log"));
}

/// Boots the container until the check powers it off.
fn boot(root: &Root, machine: &str) {
    let mut nspawn = Command::new("systemd-nspawn")
        // No host systemd or D-Bus to register with; the container's own PID 1 does all.
        .args(["--keep-unit", "--register=no", "--quiet", "--network-veth"])
        .arg(format!("--machine={machine}"))
        .arg("--directory")
        .arg(root.path("/"))
        // The host's bpffs, as on a real host; CAP_BPF and CAP_PERFMON for the container.
        .args([
            "--bind=/sys/fs/bpf",
            "--capability=CAP_BPF,CAP_PERFMON",
            "--boot",
        ])
        // nspawn's own seccomp filter refuses bpf(2): the unit's filter is the one to test.
        .env("SYSTEMD_SECCOMP", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("systemd-nspawn: {e} (`cargo xtask setup`: systemd-container)"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while nspawn.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = nspawn.kill();
            let _ = nspawn.wait();
            panic!("the container did not power off within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn relay_service_under_systemd_serves_restarts_and_keeps_its_pins() {
    let id = std::process::id();
    let instance = format!("boot-{id}");
    let root = Root::new(&instance);
    install(&root, &instance);
    boot(&root, &format!("rl{id}"));

    let log = std::fs::read_to_string(root.path("/var/log/relay-check.log"))
        .expect("the check wrote no log: the container did not reach multi-user.target");
    eprintln!("{log}");
    let seen: HashMap<&str, &str> = log
        .lines()
        .take_while(|l| *l != "== journal")
        .filter_map(|l| l.split_once('='))
        .collect();
    let expect = |key: &str, value: &str| {
        assert_eq!(
            seen.get(key).copied(),
            Some(value),
            "{key}; the check's log above"
        );
    };
    expect("start", "0");
    expect("readyz", "HTTP/1.0 200 OK");
    assert!(
        seen["status"].starts_with("TURN on UDP"),
        "{}",
        seen["status"]
    );
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39), nothing else.
    expect("capeff", "000000c000001000");
    expect("nonewprivs", "1");
    expect("seccomp", "2");
    assert!(seen["pins"].contains("link-host0"), "{}", seen["pins"]);
    expect("xdp", "xdp");
    expect("restart", "0");
    expect("adopted", "1");
    expect("after_kill", "1 active");
    expect("after_stop", "2 active");
    expect("watchdog_timeouts", "1");
    expect("stop", "0 success");
    expect("pinned_after_stop", "1");
    expect("down", "0");
    expect("tune", "0 success");
}
