//! Builds the XDP program (`relay-ebpf`) with nightly and bpf-linker and leaves the object in
//! `OUT_DIR`, where `dataplane.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for `cargo check`/clippy on a machine without the
//! eBPF toolchain); the daemon then refuses to load and says why.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("relay/ has no parent")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The shared types are part of the object too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("relay-common").display()
    );

    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("relay-xdp"), [])?;
        return aya_build::build_ebpf([], aya_build::Toolchain::Nightly);
    }
    check_toolchain()?;

    let ebpf_dir = workspace.join("relay-ebpf");
    let ebpf = aya_build::Package {
        name: "relay-ebpf",
        root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}

/// Turns the usual missing pieces into a message that says how to get them, instead of a
/// linker error several screens down.
fn check_toolchain() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        bail!(
            "bpf-linker is not on PATH (looked in $PATH and ~/.cargo/bin). \
             Run `cargo xtask setup` to build it against nightly's LLVM."
        );
    }
    let src = Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output();
    match src {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("rust-src") => Ok(()),
        Ok(_) => bail!(
            "the nightly toolchain or its rust-src component is missing. \
             Run `cargo xtask setup` (or `rustup component add rust-src --toolchain nightly`)."
        ),
        Err(e) => bail!("cannot run rustup to find the nightly toolchain: {e}"),
    }
}
