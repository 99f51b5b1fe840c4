//! `relay tune ...`: the host's network settings for a media relay, through the `tuning`
//! crate. Prints tables, or the same facts as JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};
use relay::config::Settings;
use tuning::{Host, Options, Ports, Profile};

#[derive(Args)]
pub(crate) struct TuneArgs {
    /// The relay's configuration (`relay run --config`): its interface, ports and state
    /// directory are taken from it where no flag gives them.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where `apply` keeps the values it replaced (in `tune/journal.json`), for `verify` and
    /// `revert`: the relay's state directory [default: /var/lib/relay].
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
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

/// What the profiles need to know of the relay: flags, else the relay's configuration, else
/// `relay run`'s defaults.
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
    /// The options from the flags, else from `relay` (the relay's configuration), else
    /// `relay run`'s defaults (kept in `tuning::Options`).
    fn options(self, relay: &Settings) -> anyhow::Result<Options> {
        let defaults = Options::default();
        let ports = |first: Option<u16>, last: Option<u16>, default: Ports| Ports {
            first: first.unwrap_or(default.first),
            last: last.unwrap_or(default.last),
        };
        let interface = match (self.interface, relay.interface.as_slice()) {
            (Some(flag), _) => Some(flag),
            (None, []) => None,
            (None, [one]) => Some(one.clone()),
            (None, several) => bail!(
                "the relay's configuration names several interfaces ({}): tune one at a time \
                 with --interface",
                several.join(", ")
            ),
        };
        Ok(Options {
            interface,
            media_ports: self.media_ports.unwrap_or(ports(
                relay.media_min_port,
                relay.media_max_port,
                defaults.media_ports,
            )),
            relay_ports: self.relay_ports.unwrap_or(ports(
                relay.min_port,
                relay.max_port,
                defaults.relay_ports,
            )),
            listening_port: self
                .listening_port
                .or(relay.listening_port)
                .unwrap_or(defaults.listening_port),
        })
    }
}

/// The relay's configuration in `file`, or nothing set without one.
fn relay_settings(file: Option<&Path>) -> anyhow::Result<Settings> {
    let settings = Settings {
        config: file.map(Path::to_path_buf),
        ..Settings::default()
    };
    Ok(settings.load()?)
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
pub(crate) fn run(args: TuneArgs) -> anyhow::Result<bool> {
    let relay = relay_settings(args.config.as_deref())?;
    let host = Host::system().with_etc(&args.etc);
    let state = args
        .state_dir
        .or(relay.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(relay::config::DEFAULT_STATE_DIR));
    let state = &state;
    let json = args.json;
    match args.command {
        TuneCommand::Check(relay_args) => {
            let findings = tuning::check(&host, &relay_args.options(&relay)?)?;
            show(json, &tuning::report::findings(&findings), &findings);
        }
        TuneCommand::Plan {
            profile,
            relay: relay_args,
        } => {
            let plan = tuning::plan(&host, profile, &relay_args.options(&relay)?)?;
            show(json, &tuning::report::plan(&plan), &plan);
        }
        TuneCommand::Apply {
            profile,
            relay: relay_args,
        } => {
            let applied = tuning::apply(&host, state, profile, &relay_args.options(&relay)?)?;
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
