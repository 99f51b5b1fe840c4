//! The `relay` command.

use std::net::IpAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use relay::{
    config::Settings,
    dataplane::{Attachment, Dataplane, Pins},
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
    /// next `relay run` of the same instance takes it over).
    Run(Box<Settings>),
    /// Remove an instance's data plane (detaching XDP) and its saved allocation state.
    Down {
        #[arg(long, default_value = "default", value_name = "NAME")]
        instance: String,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<std::path::PathBuf>,
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
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(settings) => run(*settings),
        Command::Attach {
            interface,
            xdp_mode,
        } => attach(&interface, xdp_mode),
        Command::Down {
            instance,
            state_dir,
        } => down(&instance, state_dir.as_deref()),
    }
}

fn down(instance: &str, state_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
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
    match std::fs::remove_file(&state) {
        Ok(()) => println!("removed the allocation state {}", state.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", state.display())),
    }
    Ok(())
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let run = settings.load()?.resolve(&local_addresses()?)?;
    match preflight::raise_open_file_limit() {
        Ok(limit) => log::debug!("open files: up to {limit}"),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
    let pins = Pins::new(&run.instance);
    let (instance, detach_on_exit) = (run.instance.clone(), run.detach_on_exit);
    let interfaces = run.interface.join(", ");
    let dataplane = if run.interface.is_empty() {
        None
    } else {
        Some(pinned_dataplane(&pins, &run.interface, run.xdp_mode)?)
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
        let dataplane = relay::io::serve(run, dataplane, shutdown).await?;
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
/// each also a way out for flows entering by another.
fn pinned_dataplane(
    pins: &Pins,
    interfaces: &[String],
    mode: relay::dataplane::XdpModeChoice,
) -> anyhow::Result<Dataplane> {
    preflight::check()?;
    let (mut dataplane, adopted) = Dataplane::load_pinned(pins)?;
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
        dataplane.add_device(interface)?;
        let changes = relay::dataplane::enable_forwarding(interface).with_context(|| {
            format!("enabling forwarding on {interface} for the fast path's next-hop lookup")
        })?;
        for change in changes {
            log::info!("fast path: {change}");
        }
    }
    Ok(dataplane)
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
