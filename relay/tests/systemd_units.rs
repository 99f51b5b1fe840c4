//! The shipped systemd units (appliance/systemd/) as systemd itself reads them:
//! `systemd-analyze verify` (syntax, dependencies, ExecStart= resolving to the relay binary
//! built here in place of /usr/bin/relay) and `systemd-analyze security`, whose exposure
//! score must not grow. Needs systemd-analyze (`cargo xtask setup` installs `systemd`).

use std::{path::Path, process::Command};

const RELAY: &str = env!("CARGO_BIN_EXE_relay");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../appliance/systemd");

/// The exposure scores (0 safest, 10 unprotected) of the units as shipped, on systemd 252
/// (Debian 12): relay.service is left with what it needs (root with 4 capabilities, the
/// host's network, AF_INET/AF_NETLINK sockets, bpf(2), /proc/sys/net writes), relay-tune
/// with its sysctl, sysfs and /etc writes. Any setting loosened raises the score and
/// fails here; a tighter one may lower these.
const MAX_EXPOSURE: [(&str, f64); 2] = [("relay.service", 2.2), ("relay-tune.service", 2.3)];

/// The units in a fresh directory, with `/usr/bin/relay` replaced by the relay built for
/// these tests so that ExecStart= resolves.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(UNITS).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("/usr/bin/relay "),
            "{} runs /usr/bin/relay",
            path.display()
        );
        let name = path.file_name().unwrap();
        std::fs::write(
            dir.path().join(name),
            text.replace("/usr/bin/relay ", &format!("{RELAY} ")),
        )
        .unwrap();
    }
    dir
}

fn systemd_analyze(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e} (install it with `cargo xtask setup`: package systemd)")
        })
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = units();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| format!("./{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    assert!(names.len() >= 2, "{names:?}");
    let mut args = vec!["verify", "--man=no"];
    args.extend(names.iter().map(String::as_str));
    let out = systemd_analyze(&args, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown keys and bad values are warnings with exit 0: none may name our units.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(&n[2..])))
        .collect();
    assert!(ours.is_empty(), "warnings about the units: {ours:#?}");
}

#[test]
fn the_units_exposure_scores_stay_low() {
    let dir = units();
    for (unit, max) in MAX_EXPOSURE {
        let out = systemd_analyze(
            &[
                "security",
                "--offline=yes",
                "--no-pager",
                &format!("./{unit}"),
            ],
            dir.path(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "systemd-analyze security {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no overall exposure level in: {stdout}"));
        let score: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score in {line:?}"));
        println!("{unit}: exposure {score} (at most {max})");
        assert!(
            score <= max,
            "{unit}: exposure {score} above {max}; what it now allows:\n{}",
            stdout
                .lines()
                .filter(|l| l.starts_with('✗'))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
