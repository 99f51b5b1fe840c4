//! The `relay` command.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use relay::{
    dataplane::{Dataplane, XdpModeChoice},
    preflight,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    version,
    about = "Relay: a media relay that forwards in the kernel with XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: load the XDP program onto an interface and serve until SIGINT/SIGTERM.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Network interface to attach the XDP program to.
    #[arg(long, short = 'i', value_name = "IF")]
    interface: String,
    /// XDP attach mode: auto tries native (driver) mode and falls back to generic (skb).
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    xdp_mode: XdpModeChoice,
    /// Log the XDP counters every this many seconds (0: only on exit).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    stats_interval: u64,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(args) => run(&args),
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    preflight::check()?;
    let mut dataplane = Dataplane::load()?;
    let mode = dataplane.attach(&args.interface, args.xdp_mode)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal_name = runtime.block_on(async {
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut ticker = (args.stats_interval > 0)
            .then(|| tokio::time::interval(Duration::from_secs(args.stats_interval)));
        loop {
            tokio::select! {
                _ = sigterm.recv() => break anyhow::Ok("SIGTERM"),
                _ = sigint.recv() => break anyhow::Ok("SIGINT"),
                () = async { ticker.as_mut().unwrap().tick().await; }, if ticker.is_some() => {
                    let total = dataplane.verdict_counters()?.total();
                    log::info!("XDP so far: {} packets, {} bytes", total.packets, total.bytes);
                }
            }
        }
    })?;

    let counters = dataplane.verdict_counters()?;
    drop(dataplane);
    log::info!("{signal_name}: XDP detached from {}", args.interface);
    println!(
        "XDP verdicts on {} ({mode} mode):\n{counters}",
        args.interface
    );
    Ok(())
}
