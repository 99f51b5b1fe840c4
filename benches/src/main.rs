//! `relay-bench`: the same TURN media load against Relay (XDP, io_uring, mmsg), coturn and
//! the ceiling in the lab, client to peer and client to client through the relay (hairpin),
//! and one camera fanned out to a room's subscribers by Relay and by GStreamer, with the
//! comparison tables printed and written to files.
//! `cargo xtask bench` builds Relay and runs this.

use std::path::PathBuf;

use clap::Parser;
use relay_bench::{
    generator::Media,
    report,
    runner::{self, Scenario},
    systems::System,
};

#[derive(Parser)]
#[command(
    about = "Benchmark Relay against coturn, GStreamer and the ceiling in the lab (needs root)"
)]
struct Cli {
    /// The short run (under 2 minutes): fewer allocations, shorter trials, no repeats.
    #[arg(long)]
    quick: bool,
    /// The relay binary (a release build).
    #[arg(long, default_value = "target/release/relay")]
    relay: PathBuf,
    /// Only these systems (repeatable) [default: all; the ceiling has no hairpin].
    #[arg(long, value_enum)]
    system: Vec<System>,
    /// Only these scenarios (repeatable) [default: all].
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Concurrent allocations, one media stream each.
    #[arg(long)]
    allocations: Option<usize>,
    #[arg(long, value_enum)]
    media: Option<Media>,
    /// Runs at 50% load per system, for the medians.
    #[arg(long)]
    repeats: Option<usize>,
    /// Allocation counts of the sweep (repeatable; none to skip it).
    #[arg(long)]
    sweep: Vec<usize>,
    /// Subscriber counts of the fan-out scenario (repeatable) [default: 1, 8, 64, 256;
    /// quick: 8, 64].
    #[arg(long)]
    subscribers: Vec<usize>,
    /// Where the results go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark builds a network-namespace lab and loads XDP programs: run it as root"
    );
    anyhow::ensure!(
        cli.relay.exists(),
        "no relay binary at {} (cargo build --release -p relay)",
        cli.relay.display()
    );
    let mut plan = runner::Plan::new(cli.quick, cli.relay);
    if !cli.system.is_empty() {
        plan.systems = cli.system;
        plan.sweep_systems.retain(|s| plan.systems.contains(s));
    }
    if !cli.scenario.is_empty() {
        plan.scenarios = cli.scenario;
    }
    if let Some(n) = cli.allocations {
        plan.allocations = n;
    }
    if let Some(m) = cli.media {
        plan.media = m;
    }
    if let Some(r) = cli.repeats {
        plan.repeats = r.max(1);
    }
    if !cli.sweep.is_empty() {
        plan.sweep = cli.sweep.into_iter().filter(|n| *n > 0).collect();
    }
    if !cli.subscribers.is_empty() {
        plan.subscribers = cli.subscribers.into_iter().filter(|n| *n > 0).collect();
    }
    let started = std::time::Instant::now();
    let run = runner::run(plan)?;
    println!("\n{}", report::summary(&run));
    for path in report::write(&run, &cli.out)? {
        println!("wrote {}", path.display());
    }
    println!("in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
