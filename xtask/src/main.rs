//! `cargo xtask`: Relay's developer commands.
mod demo;
mod privilege;
mod setup;

use std::process::Command;

use anyhow::bail;
use clap::{Parser, Subcommand};
use privilege::Privilege;

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
    /// Run every test: unit, packet table (`BPF_PROG_TEST_RUN`) and lab tests. Builds as the
    /// invoking user and runs the test binaries as root (through `sudo -E` unless root).
    Test {
        /// Extra arguments for `cargo test` (after `--`: for the test binaries).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the relay in the lab on an embedded default and tell what happened. Builds as the
    /// invoking user and runs the lab as root (through `sudo -E` unless root).
    Demo {
        /// The relay binary, already built (how the demo hands itself over to sudo).
        #[arg(long, hide = true)]
        relay: Option<std::path::PathBuf>,
    },
    /// Benchmark Relay against coturn and the ceiling in the lab, client to peer and client
    /// to client through the relay (hairpin); print the comparison tables and write them to
    /// benches/results. The lab part runs as root (through `sudo -E`).
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
    /// Build Relay's OCI image, `relay:VERSION`, without a container daemon: the layout
    /// target/image/relay-oci and the archive target/image/relay-VERSION.oci.tar. With
    /// --edge, the edge box's bootable disk instead: target/image/relay-edge-VERSION.img.
    /// Reproducible: every time is SOURCE_DATE_EPOCH, else the commit's time.
    Image {
        /// Put this relay binary in the image instead of building it (release).
        #[arg(long, value_name = "FILE")]
        relay: Option<std::path::PathBuf>,
        /// The edge image: Debian 12, Relay and its units on a GPT disk that boots with
        /// UEFI (needs root and the Debian mirror).
        #[arg(long)]
        edge: bool,
        /// The Debian mirror the edge image is made from.
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
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

#[derive(Subcommand, Clone, Copy)]
enum LabAction {
    Up,
    Down,
    Status,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo { relay } => demo(relay),
        Cmd::Bench { quick, args } => bench(quick, &args),
        Cmd::Fuzz { seconds, target } => fuzz(seconds, target.as_deref()),
        Cmd::Lab { action, prefix } => lab(action, &prefix),
        Cmd::Image {
            relay,
            edge,
            mirror,
        } => image(relay, edge.then_some(mirror.as_str())),
    }
}

/// Builds the release relay unless given one, then the image from it: the OCI image, or
/// with a mirror the edge image.
fn image(relay: Option<std::path::PathBuf>, edge_mirror: Option<&str>) -> anyhow::Result<()> {
    let workspace = workspace();
    let relay = if let Some(relay) = relay {
        relay
    } else {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "relay", "--bin", "relay"])
            .current_dir(&workspace)
            .status()?;
        if !status.success() {
            bail!("building the relay failed");
        }
        target_dir().join("release/relay")
    };
    let epoch = xtask::image::source_date_epoch(&workspace)?;
    if let Some(mirror) = edge_mirror {
        let inputs = xtask::edge::Inputs {
            relay: &relay,
            appliance: &workspace.join("appliance"),
            epoch,
            mirror,
        };
        let built = xtask::edge::build(&inputs, &target_dir().join("image"))?;
        println!(
            "edge image ({digest})\n  disk:     {disk}\n  packages: {packages}\n  \
             flash:    dd if={disk} of=/dev/DISK bs=4M conv=fsync",
            digest = built.digest,
            disk = built.disk.display(),
            packages = built.packages.display(),
        );
        return Ok(());
    }
    let revision = xtask::image::revision(&workspace)?;
    let inputs = xtask::image::Inputs {
        relay: &relay,
        config: &workspace.join("appliance/relay.toml"),
        epoch,
        revision: &revision,
    };
    let built = xtask::image::build(&inputs, &target_dir().join("image"))?;
    let tag = xtask::image::TAG;
    println!(
        "image {name}:{tag} ({digest})\n  layout:  oci:{layout}:{tag}\n  archive: \
         oci-archive:{archive}:{tag}",
        name = xtask::image::NAME,
        digest = built.manifest_digest,
        layout = built.layout.display(),
        archive = built.archive.display(),
    );
    Ok(())
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

/// Runs each fuzz target for `seconds`, from its committed seeds (`relay/fuzz/seeds`) and
/// what earlier runs found (`relay/fuzz/corpus`, not committed); reports executions per
/// target; any crash fails.
fn fuzz(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let relay = workspace().join("relay");
    for target in FUZZ_TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == **t))
    {
        println!("fuzz: {target} for {seconds} s");
        let corpus = relay.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut run = Command::new("cargo");
        run.args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .current_dir(&relay)
            // The fuzz build needs no XDP object.
            .env("AYA_BUILD_SKIP", "1")
            .stderr(std::process::Stdio::piped());
        let seeds = relay.join("fuzz/seeds").join(target);
        if seeds.is_dir() {
            run.arg(&seeds);
        }
        let mut child = run
            .args(["--", &format!("-max_total_time={seconds}")])
            .spawn()?;
        // libFuzzer talks on stderr: keep the end for a failure, the last line for the
        // figures ("Done 123456 runs in 15 second(s)").
        let mut tail = std::collections::VecDeque::new();
        for line in
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().expect("piped")))
        {
            tail.push_back(line?);
            if tail.len() > 60 {
                tail.pop_front();
            }
        }
        if !child.wait()?.success() {
            for line in &tail {
                eprintln!("{line}");
            }
            bail!("fuzz target {target} failed: see relay/fuzz/artifacts/{target}");
        }
        match tail.iter().rev().find_map(|l| executions(l)) {
            Some((runs, secs)) => println!(
                "fuzz: {target}: {runs} executions in {secs} s ({} per second), no crash",
                runs / secs.max(1)
            ),
            None => println!("fuzz: {target}: no crash (libFuzzer printed no run count)"),
        }
    }
    Ok(())
}

/// `Done 123456 runs in 15 second(s)` -> (123456, 15).
fn executions(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("Done ")?;
    let (runs, rest) = rest.split_once(" runs in ")?;
    let secs = rest.split_whitespace().next()?;
    Some((runs.parse().ok()?, secs.parse().ok()?))
}

/// The default members only: `relay-ebpf` builds for the BPF target, inside relay's build.
fn test(args: &[String]) -> anyhow::Result<()> {
    let privilege =
        Privilege::get("running the tests (they load XDP programs and create namespaces)")?;
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["test", "--no-fail-fast"]);
    if let Some(runner) = privilege.cargo_runner() {
        cargo.args(["--config", runner]);
    }
    let status = cargo.args(args).status()?;
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
    let privilege = Privilege::get(
        "running the benchmark (it builds a network-namespace lab and loads XDP programs)",
    )?;
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
    let mut run = privilege.command(target.join("relay-bench"));
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

/// Builds the relay as this user, then runs the demo as root.
fn demo(relay: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let privilege =
        Privilege::get("running the demo (it builds a network-namespace lab and loads XDP)")?;
    let relay = match relay {
        Some(relay) => relay,
        None => demo::build_relay()?,
    };
    match privilege {
        Privilege::Root => demo::run(&relay),
        Privilege::Sudo => {
            let mut demo = privilege.command(std::env::current_exe()?);
            demo.arg("demo").arg("--relay").arg(&relay);
            if !demo.status()?.success() {
                bail!("the demo failed");
            }
            Ok(())
        }
    }
}

fn lab(action: LabAction, prefix: &str) -> anyhow::Result<()> {
    let privilege = Privilege::get("managing the lab (it creates network namespaces)")?;
    if privilege == Privilege::Sudo {
        let verb = match action {
            LabAction::Up => "up",
            LabAction::Down => "down",
            LabAction::Status => "status",
        };
        let mut lab = privilege.command(std::env::current_exe()?);
        lab.args(["lab", "--prefix", prefix, verb]);
        if !lab.status()?.success() {
            bail!("lab {verb} failed");
        }
        return Ok(());
    }
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
