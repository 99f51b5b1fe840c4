//! One benchmark run: the lab, then per scenario the generator's own limit and for each
//! system the saturation search, repeated measurements at half the saturation rate with the
//! generator's own cost measured on the path without a relay at the same rate, memory, and
//! for the relays an allocation sweep (peer scenario only).

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use relay::turn::client::Client;
use serde::Serialize;
use xtask::lab::{Host, Lab};

use crate::{
    cpu::Memory,
    generator::{Media, Sender},
    receiver::{Framing, Percentiles, Receiver},
    systems::{self, RECEIVER_PORT, System, frames},
    trial::{self, Path, Saturation, Search, Timing, Trial, median},
    wire::{CHANNEL, HAIRPIN_CHANNEL, Template},
};

/// The lab `cargo xtask bench` builds.
pub const LAB_PREFIX: &str = "relay-bench";

/// Where the media goes through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Client A to a peer (10.77.0.21:4000) through its allocation's channel: ChannelData
    /// in, the bare payload out.
    Peer,
    /// Relay/relay, two browsers on one relay: client A's channel is bound to client B's
    /// relayed address and B's to A's, so A's ChannelData arrives at client B as
    /// ChannelData on B's channel.
    Hairpin,
}

impl Scenario {
    pub const ALL: [Self; 2] = [Self::Peer, Self::Hairpin];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Hairpin => "hairpin",
        }
    }

    pub const fn title(self) -> &'static str {
        match self {
            Self::Peer => "client A → relay → peer",
            Self::Hairpin => "hairpin: client A → relay → client B (relay/relay)",
        }
    }

    /// Whether `system` has this path: the ceiling's bounce has no relay/relay counterpart.
    pub const fn runs(self, system: System) -> bool {
        !matches!((self, system), (Self::Hairpin, System::Ceiling))
    }
}

/// What a run does.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub scenarios: Vec<Scenario>,
    pub systems: Vec<System>,
    pub allocations: usize,
    pub media: Media,
    pub search: Search,
    pub search_timing: Timing,
    pub measure_timing: Timing,
    /// Measurements at half load, of each system and of the baseline.
    pub repeats: usize,
    /// Allocation counts of the sweep, run on these systems.
    pub sweep: Vec<usize>,
    pub sweep_systems: Vec<System>,
    #[serde(skip)]
    pub relay: PathBuf,
    /// Name prefix of the lab's namespaces.
    #[serde(skip)]
    pub lab_prefix: String,
}

impl Plan {
    /// The default run (under 10 minutes) or `--quick` (under 2).
    pub fn new(quick: bool, relay: PathBuf) -> Self {
        let ms = Duration::from_millis;
        if quick {
            Self {
                scenarios: Scenario::ALL.to_vec(),
                systems: System::ALL.to_vec(),
                allocations: 100,
                media: Media::Audio,
                search: Search {
                    start_pps: 25_000.0,
                    max_pps: 3_200_000.0,
                    steps: 2,
                },
                search_timing: Timing {
                    warmup: ms(100),
                    duration: ms(400),
                },
                measure_timing: Timing {
                    warmup: ms(200),
                    duration: ms(1000),
                },
                repeats: 1,
                sweep: vec![1, 1000],
                sweep_systems: vec![System::RelayXdp],
                relay,
                lab_prefix: LAB_PREFIX.to_owned(),
            }
        } else {
            Self {
                scenarios: Scenario::ALL.to_vec(),
                systems: System::ALL.to_vec(),
                allocations: 1000,
                media: Media::Audio,
                search: Search {
                    start_pps: 25_000.0,
                    max_pps: 3_200_000.0,
                    steps: 4,
                },
                search_timing: Timing {
                    warmup: ms(200),
                    duration: ms(1200),
                },
                measure_timing: Timing {
                    warmup: ms(300),
                    duration: ms(2500),
                },
                repeats: 3,
                sweep: vec![1, 100, 1000, 10_000],
                sweep_systems: vec![System::RelayXdp],
                relay,
                lab_prefix: LAB_PREFIX.to_owned(),
            }
        }
    }
}

/// Half-load figures: medians over the repeats, against the baseline at the same rate.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub rate_pps: f64,
    pub delivered_pps: f64,
    pub loss: f64,
    pub latency_us: Option<Percentiles>,
    pub baseline_latency_us: Option<Percentiles>,
    /// P99 here minus the baseline's P99: what the system adds.
    pub added_p99_us: Option<f64>,
    pub busy_cpus: f64,
    pub baseline_busy_cpus: f64,
    /// (busy CPUs − baseline busy CPUs) / delivered packets per second.
    pub cpu_ns_per_packet: Option<f64>,
    /// The system's own process: its threads' run time / delivered packets.
    pub process_ns_per_packet: Option<f64>,
    pub runs: Vec<Trial>,
    pub baseline_runs: Vec<Trial>,
}

impl Measured {
    fn of(rate_pps: f64, runs: Vec<Trial>, baseline_runs: Vec<Trial>) -> Self {
        let med = |trials: &[Trial], f: &dyn Fn(&Trial) -> Option<f64>| {
            median(&mut trials.iter().filter_map(f).collect::<Vec<_>>())
        };
        let pct = |trials: &[Trial]| {
            Some(Percentiles {
                p50: med(trials, &|t| Some(t.latency_us?.p50))?,
                p90: med(trials, &|t| Some(t.latency_us?.p90))?,
                p99: med(trials, &|t| Some(t.latency_us?.p99))?,
                p999: med(trials, &|t| Some(t.latency_us?.p999))?,
            })
        };
        // Each run against the baseline run of the same index: they ran minutes apart at
        // most, at the same rate.
        let cpu_ns = median(
            &mut runs
                .iter()
                .zip(&baseline_runs)
                .filter(|(r, _)| r.window_pps() > 0.0)
                .map(|(r, b)| (r.busy_cpus() - b.busy_cpus()) / r.window_pps() * 1e9)
                .collect::<Vec<_>>(),
        );
        let latency_us = pct(&runs);
        let baseline_latency_us = pct(&baseline_runs);
        Self {
            rate_pps,
            delivered_pps: med(&runs, &|t| Some(t.window_pps())).unwrap_or(0.0),
            loss: med(&runs, &|t| Some(t.loss)).unwrap_or(1.0),
            added_p99_us: latency_us
                .zip(baseline_latency_us)
                .map(|(l, b)| l.p99 - b.p99),
            latency_us,
            baseline_latency_us,
            busy_cpus: med(&runs, &|t| Some(t.busy_cpus())).unwrap_or(0.0),
            baseline_busy_cpus: med(&baseline_runs, &|t| Some(t.busy_cpus())).unwrap_or(0.0),
            cpu_ns_per_packet: cpu_ns,
            process_ns_per_packet: med(&runs, &|t| {
                Some(t.process_cpu_secs? / t.window_delivered.max(1) as f64 * 1e9)
            }),
            runs,
            baseline_runs,
        }
    }
}

/// One point of the allocation sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub allocations: usize,
    pub measured: Measured,
}

/// Everything measured of one system.
#[derive(Clone, Debug, Serialize)]
pub struct SystemReport {
    pub system: System,
    pub title: &'static str,
    pub saturation: Saturation,
    pub half_load: Option<Measured>,
    pub memory: Option<Memory>,
    /// Relay with XDP: the packets its program counted `forwarded` (sent on in the kernel)
    /// over the saturation search and the half-load runs, from the table it prints on exit.
    pub xdp_forwarded: Option<u64>,
    pub sweep: Vec<SweepPoint>,
}

impl SystemReport {
    /// Packets the generator sent through the system in the saturation search and the
    /// half-load runs (not the baseline's, which bypass it).
    pub fn sent_through(&self) -> u64 {
        let half = self.half_load.iter().flat_map(|h| &h.runs);
        self.saturation
            .trials
            .iter()
            .chain(half)
            .map(|t| t.sent)
            .sum()
    }
}

/// Everything measured in one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioRun {
    pub scenario: Scenario,
    /// The generator straight to the scenario's receiver, no relay: the harness's own limit.
    pub baseline: Saturation,
    pub systems: Vec<SystemReport>,
    /// Systems of the plan without this scenario's path.
    pub skipped: Vec<System>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub date: String,
    pub machine: crate::report::Machine,
    pub plan: Plan,
    pub scenarios: Vec<ScenarioRun>,
}

impl Run {
    pub fn scenario(&self, scenario: Scenario) -> Option<&ScenarioRun> {
        self.scenarios.iter().find(|s| s.scenario == scenario)
    }
}

/// The lab and the generator's two ends, kept for the whole run.
struct Bench {
    lab: Lab,
    senders: Vec<Sender>,
    at_peer: Receiver,
    at_client: Receiver,
    trials: u32,
    /// The process of the system under test, while one runs.
    watch: Option<u32>,
    _switch_port: relay::dataplane::Dataplane,
}

/// One scenario's streams: the frames the generator sends through the system, the same
/// streams' frames straight to their receiver (the baseline), and where they arrive.
struct Streams {
    /// The allocations, held while the streams run.
    _clients: Vec<Client>,
    through: Vec<Template>,
    direct: Vec<Template>,
    /// Client B's sockets, one per stream, where hairpin streams arrive; `None`: the
    /// bench's own receivers.
    at_b: Option<Receiver>,
    /// What precedes the probe where the system delivers it.
    framing: Framing,
}

impl Bench {
    /// `n` streams of `scenario` through `system` (allocated on it if it speaks TURN), or
    /// with no system only their direct frames (and receivers).
    fn streams(
        &self,
        scenario: Scenario,
        system: Option<System>,
        n: usize,
        media: Media,
    ) -> anyhow::Result<Streams> {
        let allocating = || format!("allocating {n} on {}", system.map_or("-", System::name));
        match scenario {
            Scenario::Peer => {
                let (clients, through, framing) = match system {
                    Some(s) if s.speaks_turn() => {
                        let clients = systems::allocate(&self.lab, n).with_context(allocating)?;
                        let through = frames::turn(&clients, media)?;
                        (clients, through, Framing::Bare)
                    }
                    // The bounce returns the frame's UDP payload as sent.
                    Some(_) => (
                        Vec::new(),
                        frames::bounce(n, media),
                        Framing::ChannelData(CHANNEL),
                    ),
                    None => (Vec::new(), Vec::new(), Framing::ChannelData(CHANNEL)),
                };
                Ok(Streams {
                    _clients: clients,
                    through,
                    direct: frames::baseline(n, media),
                    at_b: None,
                    framing,
                })
            }
            Scenario::Hairpin => {
                let (a, b, sockets) = if system.is_some() {
                    let (a, b) = systems::allocate_pairs(&self.lab, n).with_context(allocating)?;
                    let sockets = b
                        .iter()
                        .map(|c| c.socket().try_clone())
                        .collect::<std::io::Result<Vec<_>>>()?;
                    (a, b, sockets)
                } else {
                    let sockets = self.lab.in_netns(Host::ClientB, || {
                        (0..n)
                            .map(|_| UdpSocket::bind((Host::ClientB.ipv4(), 0)))
                            .collect::<std::io::Result<Vec<_>>>()
                    })??;
                    (Vec::new(), Vec::new(), sockets)
                };
                let at_b = Receiver::on(sockets)?;
                let ports: Vec<u16> = at_b.local_addrs()?.iter().map(SocketAddr::port).collect();
                Ok(Streams {
                    through: frames::turn(&a, media)?,
                    direct: frames::direct(Host::ClientB, &ports, media),
                    _clients: a.into_iter().chain(b).collect(),
                    at_b: Some(at_b),
                    framing: Framing::ChannelData(HAIRPIN_CHANNEL),
                })
            }
        }
    }

    /// The path of `streams` through `system`, or straight to their receiver without one.
    fn path<'a>(&'a self, system: Option<System>, streams: &'a Streams, media: Media) -> Path<'a> {
        let (receiver, receiver_host) = match (system, &streams.at_b) {
            (Some(System::Ceiling), _) => (&self.at_client, Host::ClientA),
            (_, Some(at_b)) => (at_b, Host::ClientB),
            (_, None) => (&self.at_peer, Host::Peer),
        };
        Path {
            senders: &self.senders,
            receiver,
            lab: &self.lab,
            receiver_host,
            templates: if system.is_some() {
                &streams.through
            } else {
                &streams.direct
            },
            media,
            // Straight to the receiver, the frame's UDP payload arrives as sent.
            framing: if system.is_some() {
                streams.framing
            } else {
                Framing::ChannelData(CHANNEL)
            },
            watch: system.and(self.watch),
        }
    }

    fn trial(
        &mut self,
        system: Option<System>,
        streams: &Streams,
        media: Media,
        rate: f64,
        timing: Timing,
    ) -> anyhow::Result<Trial> {
        self.trials += 1;
        let n = self.trials;
        let path = self.path(system, streams, media);
        let t = trial::run(&path, rate, timing, n)?;
        log_trial(system, &t);
        Ok(t)
    }

    fn search(
        &mut self,
        system: Option<System>,
        streams: &Streams,
        plan: &Plan,
    ) -> anyhow::Result<Saturation> {
        trial::saturation(plan.search, |rate| {
            self.trial(system, streams, plan.media, rate, plan.search_timing)
        })
    }

    /// `repeats` runs of `system` at `rate`, each followed by a run of the generator alone
    /// at the same rate (the system still up, idle): machine noise drifts, and the pairs
    /// that are subtracted ran seconds apart.
    fn half_load(
        &mut self,
        system: System,
        streams: &Streams,
        rate: f64,
        plan: &Plan,
        repeats: usize,
    ) -> anyhow::Result<Measured> {
        let (mut runs, mut baseline_runs) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            for (runs, system) in [(&mut runs, Some(system)), (&mut baseline_runs, None)] {
                runs.push(self.trial(system, streams, plan.media, rate, plan.measure_timing)?);
            }
        }
        Ok(Measured::of(rate, runs, baseline_runs))
    }
}

fn log_trial(system: Option<System>, t: &Trial) {
    let p = t.latency_us;
    eprintln!(
        "  {:<12} offered {:>9.0} pps  sent {:>9.0} pps  delivered {:>9.0} pps  loss {:>7.4}%  P99 {:>8}  CPUs busy {:.2}{}{}{}",
        system.map_or("baseline", System::name),
        t.offered_pps,
        t.sent_pps,
        t.delivered_pps,
        t.loss * 100.0,
        p.map_or_else(|| "-".to_owned(), |p| format!("{:.0} µs", p.p99)),
        t.busy_cpus(),
        if t.generator_limited {
            "  (generator behind)"
        } else {
            ""
        },
        if t.receiver_drops > 0 {
            format!("  (receiver dropped {})", t.receiver_drops)
        } else {
            String::new()
        },
        if t.misframed > 0 {
            format!("  ({} misframed)", t.misframed)
        } else {
            String::new()
        },
    );
}

/// Runs `plan` in a fresh lab.
pub fn run(plan: Plan) -> anyhow::Result<Run> {
    // Ten thousand allocations are ten thousand client sockets.
    relay::preflight::raise_open_file_limit().context("raising the open file limit")?;
    // Timers wake the sender when its next packet is due, not up to 50 µs later.
    // SAFETY: prctl with PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let lab = Lab::up(&plan.lab_prefix)?;
    let switch_port = systems::switch_port(&lab)?;
    // One sender per CPU.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let senders = (0..cpus)
        .map(|_| anyhow::Ok(lab.in_netns(Host::ClientA, || Sender::open(xtask::lab::HOST_IF))??))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let at_peer = lab.in_netns(Host::Peer, || Receiver::bind(systems::peer_addr().into()))??;
    let at_client = lab.in_netns(Host::ClientA, || {
        Receiver::bind((Host::ClientA.ipv4(), RECEIVER_PORT).into())
    })??;
    let mut bench = Bench {
        lab,
        senders,
        at_peer,
        at_client,
        trials: 0,
        watch: None,
        _switch_port: switch_port,
    };
    let mut scenarios = Vec::new();
    for &scenario in &plan.scenarios {
        let (systems, skipped): (Vec<System>, Vec<System>) =
            plan.systems.iter().partition(|s| scenario.runs(**s));
        for s in &skipped {
            eprintln!(
                "bench [{}]: {} skipped: it has no such path",
                scenario.name(),
                s.title()
            );
        }
        if systems.is_empty() {
            continue;
        }
        eprintln!(
            "bench [{}]: the generator alone, straight to the receiver ({} streams)",
            scenario.name(),
            plan.allocations
        );
        let direct = bench.streams(scenario, None, plan.allocations, plan.media)?;
        let baseline = bench.search(None, &direct, &plan)?;
        drop(direct);
        let mut reports = Vec::new();
        for system in systems {
            eprintln!(
                "bench [{}]: {} ({} allocations of {:?})",
                scenario.name(),
                system.title(),
                plan.allocations,
                plan.media
            );
            reports.push(measure(&mut bench, scenario, system, &plan)?);
        }
        scenarios.push(ScenarioRun {
            scenario,
            baseline,
            systems: reports,
            skipped,
        });
    }
    Ok(Run {
        date: crate::report::today(),
        machine: crate::report::Machine::read(),
        plan,
        scenarios,
    })
}

/// Saturation, half load and memory of `system` in `scenario` with the plan's allocations,
/// then (peer scenario) its sweep.
fn measure(
    bench: &mut Bench,
    scenario: Scenario,
    system: System,
    plan: &Plan,
) -> anyhow::Result<SystemReport> {
    let (saturation, half_load, memory, xdp_forwarded) = {
        let running = systems::start(&bench.lab, system, &plan.relay)?;
        bench.watch = running.pid();
        let streams = bench.streams(scenario, Some(system), plan.allocations, plan.media)?;
        let saturation = bench.search(Some(system), &streams, plan)?;
        let half_load = match saturation.rate_pps {
            Some(r) => Some(bench.half_load(system, &streams, r / 2.0, plan, plan.repeats)?),
            None => None,
        };
        let memory = running.memory();
        (saturation, half_load, memory, running.stop()?)
    };
    let mut sweep = Vec::new();
    if scenario == Scenario::Peer && plan.sweep_systems.contains(&system) {
        let rate = half_load
            .as_ref()
            .map_or(plan.search.start_pps, |h| h.rate_pps);
        for &n in &plan.sweep {
            eprintln!(
                "bench: {} with {n} allocations at {rate:.0} pps",
                system.title()
            );
            let running = systems::start(&bench.lab, system, &plan.relay)?;
            bench.watch = running.pid();
            let streams = bench.streams(scenario, Some(system), n, plan.media)?;
            sweep.push(SweepPoint {
                allocations: n,
                measured: bench.half_load(system, &streams, rate, plan, 1)?,
            });
        }
    }
    bench.watch = None;
    Ok(SystemReport {
        system,
        title: system.title(),
        saturation,
        half_load,
        memory,
        xdp_forwarded,
        sweep,
    })
}
