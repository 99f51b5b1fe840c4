//! What an operator sees when the host is not ready: a message naming what is missing.

use std::process::Command;

#[test]
fn not_root_is_refused_with_a_clear_message() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_relay"))
        .args(["run", "--user", "a:b", "--interface", "lo"])
        .output()
        .expect("running setpriv (util-linux)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("relay must run as root"), "{stderr}");
}

#[test]
fn missing_bpffs_is_mounted() {
    // A private mount namespace where /sys/fs/bpf is an empty tmpfs: bpffs is "missing".
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /sys/fs/bpf && exec {} run --user a:b --interface nosuch0",
            env!("CARGO_BIN_EXE_relay")
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mounted bpffs at /sys/fs/bpf"), "{stderr}");
    // It got past the preflight to the interface lookup.
    assert!(
        stderr.contains("no interface named \"nosuch0\""),
        "{stderr}"
    );
}
