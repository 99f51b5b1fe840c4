//! `relay tune ...`: the host's network settings for a media relay, through the `tuning`
//! crate. Prints tables, or the same facts as JSON with `--json`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tuning::{Host, Options, Ports, Profile};

#[derive(Args)]
pub(crate) struct TuneArgs {
    /// Where `apply` keeps the values it replaced (in `tune/journal.json`), for `verify` and
    /// `revert`: the relay's state directory.
    #[arg(long, global = true, value_name = "DIR", default_value = relay::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where the persisted settings go (`sysctl.d/`, `systemd/network/`, `udev/rules.d/`),
    /// and where a tuned profile is looked for.
    #[arg(long, global = true, value_name = "DIR", default_value = "/etc")]
    etc: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TuneCommand,
}

/// What the profiles need to know of the relay; the defaults are `relay run`'s.
#[derive(Args)]
struct RelayArgs {
    /// The NIC media arrives on; without it only sysctls are checked and tuned.
    #[arg(long, short = 'i', value_name = "IF")]
    interface: Option<String>,
    /// The room endpoints' ports (`--media-min-port`-`--media-max-port`) [default:
    /// 40000-44999].
    #[arg(long, value_name = "FIRST-LAST")]
    media_ports: Option<Ports>,
    /// The relayed ports (`--min-port`-`--max-port`) [default: 49152-65535].
    #[arg(long, value_name = "FIRST-LAST")]
    relay_ports: Option<Ports>,
    /// The STUN/TURN port (`--listening-port`) [default: 3478].
    #[arg(long, value_name = "PORT")]
    listening_port: Option<u16>,
}

impl RelayArgs {
    /// The options, `relay run`'s defaults (kept in `tuning::Options`) where none is given.
    fn options(self) -> Options {
        let defaults = Options::default();
        Options {
            interface: self.interface,
            media_ports: self.media_ports.unwrap_or(defaults.media_ports),
            relay_ports: self.relay_ports.unwrap_or(defaults.relay_ports),
            listening_port: self.listening_port.unwrap_or(defaults.listening_port),
        }
    }
}

#[derive(Subcommand)]
enum TuneCommand {
    /// Report what matters for a media relay on this host: the NIC's XDP support, queues,
    /// rings, IRQs, RPS/XPS, GRO, socket buffers, backlog, busy polling, conntrack, the CPU
    /// governor, tuned. Changes nothing.
    Check(RelayArgs),
    /// Show what `apply --profile P` would change: current and proposed values, why, and
    /// whether it needs a reboot.
    Plan {
        /// edge-4c8g (an edge box running Relay), k3s-node (Relay among pods; the NIC left
        /// to the CNI) or latency (edge-4c8g with busy polling)
        #[arg(long, value_name = "PROFILE")]
        profile: Profile,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Set a profile's values, all or nothing, and persist them (sysctl.d, a systemd .link
    /// file, a udev rule). Idempotent.
    Apply {
        /// edge-4c8g (an edge box running Relay), k3s-node (Relay among pods; the NIC left
        /// to the CNI) or latency (edge-4c8g with busy polling)
        #[arg(long, value_name = "PROFILE")]
        profile: Profile,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Compare the host with what `apply` set and persisted; exits 1 on drift.
    Verify,
    /// Put back every value `apply` changed and remove (or restore) the files it wrote.
    Revert,
}

/// Runs the command; `Ok(false)`: it ran but found drift (exit status 1).
pub(crate) fn run(args: TuneArgs) -> Result<bool, tuning::Error> {
    let host = Host::system().with_etc(&args.etc);
    let state = &args.state_dir;
    let json = args.json;
    match args.command {
        TuneCommand::Check(relay) => {
            let findings = tuning::check(&host, &relay.options())?;
            show(json, &tuning::report::findings(&findings), &findings);
        }
        TuneCommand::Plan { profile, relay } => {
            let plan = tuning::plan(&host, profile, &relay.options())?;
            show(json, &tuning::report::plan(&plan), &plan);
        }
        TuneCommand::Apply { profile, relay } => {
            let applied = tuning::apply(&host, state, profile, &relay.options())?;
            show(json, &tuning::report::applied(&applied), &applied);
        }
        TuneCommand::Verify => {
            let verified = tuning::verify(&host, state)?;
            show(json, &tuning::report::verified(&verified), &verified);
            return Ok(verified.drifted().next().is_none());
        }
        TuneCommand::Revert => {
            let reverted = tuning::revert(&host, state)?;
            show(json, &tuning::report::reverted(&reverted), &reverted);
        }
    }
    Ok(true)
}

/// Prints a report as a table, or as JSON with `--json`.
fn show(json: bool, table: &str, report: &impl serde::Serialize) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        );
    } else {
        print!("{table}");
    }
}
