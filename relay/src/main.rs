//! The `relay` command.

mod room_cli;
mod top_cli;
mod tune_cli;

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use relay::{
    config::Settings,
    dataplane::{Attachment, Dataplane, Pins, SysctlChange},
    preflight,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    version,
    about = "Relay: a TURN relay whose XDP program forwards media in the kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve STUN/TURN (UDP, TCP, TLS) until SIGINT/SIGTERM; with --interface, also attach
    /// the XDP program there (pinned: it keeps forwarding after the relay stops, and the
    /// next `relay run` of the same instance takes it over). Under systemd (`Type=notify`)
    /// it says READY=1 once it serves, pings the watchdog and says STOPPING=1.
    Run(Box<Settings>),
    /// Remove an instance's data plane (detaching XDP) and its saved allocation state, and
    /// put back the interface settings `relay run` changed (run it in the same network
    /// namespace as `relay run`).
    Down {
        #[arg(long, default_value = "default", value_name = "NAME")]
        instance: String,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Attach the XDP program to an interface and count what arrives there, per verdict,
    /// until SIGINT/SIGTERM; no TURN. A diagnostic, and what the lab runs on the veth peers
    /// of XDP_TX (a veth delivers XDP_TX'd frames only to a peer that runs XDP).
    Attach {
        #[arg(long, short = 'i', value_name = "IF")]
        interface: String,
        #[arg(long, value_enum, default_value_t = relay::dataplane::XdpModeChoice::Auto)]
        xdp_mode: relay::dataplane::XdpModeChoice,
    },
    /// Rooms, endpoints, tracks and subscriptions, through the control API of a running
    /// relay (`relay run --api-listen`).
    Room(room_cli::RoomArgs),
    /// The host's network settings for a media relay: check, plan, apply, verify and revert
    /// a profile (edge-4c8g, k3s-node, latency).
    Tune(tune_cli::TuneArgs),
    /// What an instance's data plane counted, read from its pins: works while the daemon
    /// is down or restarting (run it in the same network namespace and mounts as `relay
    /// run`).
    Stats {
        #[arg(long, default_value = "default", value_name = "NAME")]
        instance: String,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// A live view of an instance's data plane, read from its pins: verdict rates, the
    /// busiest channel flows and room tracks, tenants against their limits, drops by
    /// reason, and whether the daemon runs (the kernel forwards on without it). Run it in
    /// the same network namespace and mounts as `relay run`.
    Top(top_cli::TopArgs),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Room(args) => {
            if let Err(e) = room_cli::run(args) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Tune(args) => match tune_cli::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        Command::Run(settings) => run(*settings),
        Command::Attach {
            interface,
            xdp_mode,
        } => attach(&interface, xdp_mode),
        Command::Down {
            instance,
            state_dir,
        } => down(&instance, state_dir.as_deref()),
        Command::Stats { instance, json } => stats(&instance, json),
        Command::Top(args) => top_cli::run(&args),
    }
}

/// `relay stats`: the pinned data plane's verdict counters, whether a daemon runs or not.
fn stats(instance: &str, json: bool) -> anyhow::Result<()> {
    relay::config::check_instance(instance)?;
    let pins = Pins::new(instance);
    let Some(counters) = relay::dataplane::PinnedCounters::open(&pins)? else {
        return Err(top_cli::no_data_plane(instance, &pins));
    };
    let verdicts = counters.verdicts()?;
    let interfaces = pins.interfaces();
    if json {
        let by_verdict: serde_json::Map<String, serde_json::Value> = relay_common::Verdict::ALL
            .into_iter()
            .map(|v| {
                let c = verdicts.get(v);
                (
                    v.name().to_owned(),
                    serde_json::json!({ "packets": c.packets, "bytes": c.bytes }),
                )
            })
            .collect();
        let out = serde_json::json!({
            "instance": instance,
            "pinned": pins.dir(),
            "interfaces": interfaces,
            "verdicts": by_verdict,
        });
        println!("{out}");
    } else {
        println!(
            "data plane of instance {instance:?} pinned at {}, attached to {}:",
            pins.dir().display(),
            if interfaces.is_empty() {
                "no interface".to_owned()
            } else {
                interfaces.join(", ")
            }
        );
        print!("{verdicts}");
    }
    Ok(())
}

fn down(instance: &str, state_dir: Option<&Path>) -> anyhow::Result<()> {
    relay::config::check_instance(instance)?;
    let pins = Pins::new(instance);
    let interfaces = pins.interfaces();
    if pins
        .remove()
        .with_context(|| format!("removing {}", pins.dir().display()))?
    {
        println!(
            "removed the data plane pinned at {} (XDP detached from {})",
            pins.dir().display(),
            if interfaces.is_empty() {
                "nothing".to_owned()
            } else {
                interfaces.join(", ")
            }
        );
    } else {
        println!("no data plane pinned at {}", pins.dir().display());
    }
    let state = relay::config::state_file(state_dir, instance);
    for line in restore_host_changes(&HostChanges::file(&state))? {
        println!("{line}");
    }
    let rooms = relay::room::RoomsSnapshot::file(&state);
    for (file, what) in [(&state, "the allocation state"), (&rooms, "the rooms")] {
        match std::fs::remove_file(file) {
            Ok(()) => println!("removed {what} {}", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let run = settings.load()?.resolve(&local_addresses()?)?;
    match preflight::raise_open_file_limit() {
        Ok(limit) => log::debug!("open files: up to {limit}"),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
    // Held until the relay exits: how `relay top` tells that it runs.
    let _alive = relay::liveness::hold(&run.state_file).map_err(|e| {
        log::warn!(
            "cannot lock {}: {e} (`relay top` will say the daemon is down)",
            relay::liveness::lock_file(&run.state_file).display()
        );
    });
    let pins = Pins::new(&run.instance);
    let (instance, detach_on_exit) = (run.instance.clone(), run.detach_on_exit);
    let interfaces = run.interface.join(", ");
    let host_changes = HostChanges::file(&run.state_file);
    let dataplane = if run.interface.is_empty() {
        None
    } else {
        Some(pinned_dataplane(
            &pins,
            &run.interface,
            run.xdp_mode,
            &host_changes,
        )?)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let signal_name = runtime.block_on(async {
        let signal = shutdown_signal()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            let _ = tx.send(signal.await);
        };
        // SIGHUP and changed files reload the policy while the relay serves.
        let watch = (run.policy.clone())
            .map(|p| tokio::spawn(relay::policy::watch(p, Duration::from_secs(1))));
        let dataplane = relay::io::serve(run, dataplane, shutdown).await;
        if let Some(watch) = watch {
            watch.abort();
        }
        let dataplane = dataplane?;
        anyhow::Ok((rx.await.unwrap_or("shutdown"), dataplane))
    })?;
    let (signal_name, dataplane) = signal_name;

    if let Some(dataplane) = dataplane {
        let counters = dataplane.verdict_counters()?;
        drop(dataplane);
        if detach_on_exit {
            pins.remove()
                .with_context(|| format!("removing {}", pins.dir().display()))?;
            log::info!("{signal_name}: XDP detached from {interfaces}, its pins removed");
            for line in restore_host_changes(&host_changes)? {
                log::info!("{line}");
            }
        } else {
            log::info!(
                "{signal_name}: XDP stays on {interfaces} and keeps forwarding installed channels \
                 (pinned at {}; `relay down --instance {instance}` removes it)",
                pins.dir().display(),
            );
        }
        println!("XDP verdicts on {interfaces} since the data plane was created:\n{counters}");
    } else {
        log::info!("{signal_name}: stopped");
    }
    Ok(())
}

/// Loads (or adopts) the instance's pinned data plane and attaches it to every interface,
/// each also a way out for flows entering by another; records in `host_changes` the
/// settings it changes on them, for `relay down`.
fn pinned_dataplane(
    pins: &Pins,
    interfaces: &[String],
    mode: relay::dataplane::XdpModeChoice,
    host_changes: &Path,
) -> anyhow::Result<Dataplane> {
    if preflight::bpffs_is_private(preflight::check()?) {
        warn_private_pins(pins);
    }
    // No pins: no earlier run of this data plane, so a record left from before (say, a
    // reboot since) no longer describes the host and is replaced, not added to.
    let fresh = !pins.dir().exists();
    let (mut dataplane, adopted) = Dataplane::load_pinned(pins)?;
    let mut changes = Vec::new();
    if adopted {
        log::info!(
            "adopting the data plane pinned at {}: its flows keep forwarding",
            pins.dir().display()
        );
    }
    for interface in interfaces {
        if let Attachment::New(mode) = dataplane.attach_pinned(pins, interface, mode)? {
            log::info!("XDP attached to {interface} in {mode} mode");
        }
        // Room fan-out: the packets XDP marks for several subscribers are cloned in TC.
        // Without it such routes stay in userspace (slower, not lost).
        if let Err(e) = dataplane.attach_fanout_pinned(pins, interface) {
            log::warn!("{e}: room routes with several subscribers are forwarded in userspace");
        }
        dataplane.add_device(interface)?;
        let now = relay::dataplane::enable_forwarding(interface).with_context(|| {
            format!("enabling forwarding on {interface} for the fast path's next-hop lookup")
        })?;
        for change in &now {
            log::info!("fast path: {change}");
        }
        changes.extend(now);
        // After each interface: what is changed is recorded even if the next one fails.
        if let Err(e) = record_host_changes(host_changes, &changes, fresh) {
            log::warn!("{e:#}: `relay down` will not restore these settings");
        }
    }
    Ok(dataplane)
}

/// Warns that the data plane pinned on a bpffs of this process's own mount namespace will
/// not outlive it, and says how to run the relay so that it does.
fn warn_private_pins(pins: &Pins) {
    let netns = preflight::netns_name().unwrap_or_else(|| "NAME".to_owned());
    log::warn!(
        "bpffs at {bpffs} was mounted by this relay in a mount namespace of its own (as `ip \
         netns exec` gives it), not the host's: the data plane pinned at {dir} goes with that \
         namespace when the relay exits (XDP detached; no successor adopts it, `relay down` \
         finds nothing), so restarts will not be hitless here. Mount bpffs on the host (`mount \
         -t bpf bpf {bpffs}`) and start the relay in its network namespace with the host's \
         mounts: `nsenter --net=/run/netns/{netns} relay run ...` instead of `ip netns exec \
         {netns} relay run ...`",
        bpffs = preflight::BPFFS,
        dir = pins.dir().display(),
    );
}

/// The interface settings `relay run` changed for its fast path, kept for `relay down` to
/// put back. Kept in the state directory beside the instance's allocation state, where
/// `relay down` already looks; not with the pins, as bpffs holds BPF objects, not files.
/// Sysctls belong to a network namespace: `netns` (its inode) is where they were changed, so
/// that a `relay down` run in another namespace touches nothing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct HostChanges {
    netns: u64,
    changes: Vec<SysctlChange>,
}

impl HostChanges {
    /// The record of the instance whose allocation state is `state_file`.
    fn file(state_file: &Path) -> PathBuf {
        state_file.with_extension("host.json")
    }

    /// The record in `file`, if there is one.
    fn read(file: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    /// Writes the record to `file` atomically (a relay killed meanwhile leaves the old one).
    fn write(&self, file: &Path) -> anyhow::Result<()> {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut tmp = file.as_os_str().to_owned();
            tmp.push(".tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
            std::fs::rename(&tmp, file)
        };
        write().with_context(|| format!("recording the host settings in {}", file.display()))
    }
}

/// The network namespace of this process, by inode.
fn current_netns() -> std::io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

/// Adds `changes` to the record in `file`, keeping the value a setting had before the first
/// change (a restart changes nothing, and must not record the relay's own values as the
/// host's); `fresh`: start a new record instead.
fn record_host_changes(file: &Path, changes: &[SysctlChange], fresh: bool) -> anyhow::Result<()> {
    let netns = current_netns()?;
    let mut record = match HostChanges::read(file)? {
        Some(record) if !fresh && record.netns == netns => record,
        _ => HostChanges {
            netns,
            changes: Vec::new(),
        },
    };
    for change in changes {
        if !record.changes.iter().any(|c| c.key == change.key) {
            record.changes.push(change.clone());
        }
    }
    record.write(file)
}

/// Puts back the settings recorded in `file` and removes it; returns what it did, a line
/// each, or why it did nothing.
fn restore_host_changes(file: &Path) -> anyhow::Result<Vec<String>> {
    let Some(record) = HostChanges::read(file)? else {
        return Ok(vec![format!(
            "no interface settings to restore: none recorded ({} does not exist)",
            file.display()
        )]);
    };
    if record.netns != current_netns()? {
        return Ok(vec![format!(
            "interface settings not restored: `relay run` changed them in another network \
             namespace (net:[{}]); run `relay down` there (`nsenter --net=/run/netns/NAME \
             relay down ...`). Kept in {}",
            record.netns,
            file.display()
        )]);
    }
    let mut lines = relay::dataplane::restore_forwarding(&record.changes);
    if lines.is_empty() {
        lines.push("no interface settings to restore: run changed none".to_owned());
    }
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    Ok(lines)
}

fn attach(interface: &str, mode: relay::dataplane::XdpModeChoice) -> anyhow::Result<()> {
    preflight::check()?;
    let mut dataplane = Dataplane::load()?;
    let mode = dataplane.attach(interface, mode)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal_name = runtime.block_on(async {
        let signal = shutdown_signal()?;
        log::info!("counting on {interface} until SIGINT or SIGTERM");
        anyhow::Ok(signal.await)
    })?;
    let counters = dataplane.verdict_counters()?;
    drop(dataplane);
    log::info!("{signal_name}: XDP detached from {interface}");
    println!("XDP verdicts on {interface} ({mode} mode):\n{counters}");
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before the caller says it is ready) and
/// resolves to the name of the first signal that arrives. Call inside the runtime.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    })
}

/// The host's addresses: the default listening IPs.
fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().context("listing the host's addresses")? {
        let Some(addr) = ifaddr.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            ips.push(IpAddr::V6(v6.ip()));
        }
    }
    ips.sort_unstable();
    ips.dedup();
    Ok(ips)
}
