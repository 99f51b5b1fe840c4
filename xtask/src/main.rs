//! `cargo xtask`: Relay's developer commands.
mod demo;
mod setup;

use std::process::Command;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Relay's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (nightly rust-src, `bpf-linker`, Debian packages).
    Setup,
    /// Run every test: unit, packet table (`BPF_PROG_TEST_RUN`) and lab tests. Needs root.
    Test {
        /// Extra arguments for `cargo test` (after `--`: for the test binaries).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the relay in the lab on an embedded default and tell what happened. Needs root.
    Demo,
    /// Benchmark Relay against coturn and the ceiling in the lab; print the comparison table
    /// and write it to benches/results. Needs root.
    Bench {
        /// The short run (under 2 minutes), without the micro-benchmarks.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for relay-bench (see `relay-bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the fuzz targets in relay/fuzz (cargo fuzz, nightly) for a while each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (stun_message, channel_data, turn_server).
        target: Option<String>,
    },
    /// Build and manage the network-namespace lab.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Name prefix of the lab's namespaces.
        #[arg(long, default_value = xtask::lab::DEFAULT_PREFIX, global = true)]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum LabAction {
    Up,
    Down,
    Status,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo::run(),
        Cmd::Bench { quick, args } => bench(quick, &args),
        Cmd::Fuzz { seconds, target } => fuzz(seconds, target.as_deref()),
        Cmd::Lab { action, prefix } => lab(&action, &prefix),
    }
}

/// The workspace's root.
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, or the workspace's `target`.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), std::path::PathBuf::from)
}

/// How long `cargo xtask test` fuzzes each target: long enough to find shallow crashes.
const FUZZ_SMOKE_SECONDS: u64 = 15;
const FUZZ_TARGETS: [&str; 3] = ["stun_message", "channel_data", "turn_server"];

/// Runs each fuzz target for `seconds`; any crash fails.
fn fuzz(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let relay = workspace().join("relay");
    for target in FUZZ_TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == **t))
    {
        println!("fuzz: {target} for {seconds} s");
        let status = Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(&relay)
            // The fuzz build needs no XDP object.
            .env("AYA_BUILD_SKIP", "1")
            .status()?;
        if !status.success() {
            bail!("fuzz target {target} failed: see relay/fuzz/artifacts/{target}");
        }
    }
    Ok(())
}

/// The default members only: `relay-ebpf` builds for the BPF target, inside relay's build.
fn test(args: &[String]) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the packet and lab tests load XDP programs and create namespaces: run as root");
    }
    let status = Command::new(env!("CARGO"))
        .args(["test", "--no-fail-fast"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("tests failed");
    }
    // A filtered run (arguments given) is someone iterating on one test: no fuzzing then.
    if args.is_empty() {
        fuzz(FUZZ_SMOKE_SECONDS, None)?;
    }
    Ok(())
}

/// Builds Relay and the load generator optimised, runs the scenarios, then (unless quick)
/// the criterion micro-benchmarks, briefly.
fn bench(quick: bool, args: &[String]) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the benchmark builds a network-namespace lab and loads XDP programs: run as root");
    }
    let workspace = workspace();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "relay", "--bin", "relay"])
        .args(["-p", "relay-bench", "--bin", "relay-bench"])
        .current_dir(&workspace)
        .status()?;
    if !status.success() {
        bail!("building relay and relay-bench failed");
    }
    let target = target_dir().join("release");
    let mut run = Command::new(target.join("relay-bench"));
    run.arg("--relay")
        .arg(target.join("relay"))
        .arg("--out")
        .arg(workspace.join("benches/results"))
        .args(args);
    if quick {
        run.arg("--quick");
    }
    if !run.status()?.success() {
        bail!("the benchmark failed");
    }
    if !quick {
        let status = Command::new(env!("CARGO"))
            .args(["bench", "-p", "relay-bench", "--bench", "micro", "--"])
            .args(["--warm-up-time", "0.5", "--measurement-time", "1"])
            .current_dir(&workspace)
            .status()?;
        if !status.success() {
            bail!("the micro-benchmarks failed");
        }
    }
    Ok(())
}

fn lab(action: &LabAction, prefix: &str) -> anyhow::Result<()> {
    match action {
        LabAction::Up => {
            let lab = xtask::lab::Lab::up(prefix)?;
            // Keep it up after this process exits.
            std::mem::forget(lab);
            println!("lab {prefix} is up");
        }
        LabAction::Down => {
            xtask::lab::down(prefix)?;
            println!("lab {prefix} is down");
        }
        LabAction::Status => {
            for (ns, up) in xtask::lab::status(prefix)? {
                println!("{ns:<24} {}", if up { "up" } else { "absent" });
            }
        }
    }
    Ok(())
}
