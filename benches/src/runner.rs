//! One benchmark run: the lab, then for each system the saturation search, repeated
//! measurements at half the saturation rate with the generator's own cost measured on the
//! path without a relay at the same rate, memory, and for the relays an allocation sweep.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use serde::Serialize;
use xtask::lab::{Host, Lab};

use crate::{
    cpu::Memory,
    generator::{Media, Sender},
    receiver::{Percentiles, Receiver},
    systems::{self, RECEIVER_PORT, System},
    trial::{self, Path, Saturation, Search, Timing, Trial, median},
    wire::{HEADER_LEN, Template},
};

/// The lab `cargo xtask bench` builds.
pub const LAB_PREFIX: &str = "relay-bench";

/// What a run does.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
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
    pub sweep: Vec<SweepPoint>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub date: String,
    pub machine: crate::report::Machine,
    pub plan: Plan,
    /// The generator straight to the receiver, no relay: the harness's own limit.
    pub baseline: Saturation,
    pub systems: Vec<SystemReport>,
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

impl Bench {
    fn path<'a>(
        &'a self,
        system: Option<System>,
        templates: &'a [Template],
        media: Media,
    ) -> Path<'a> {
        let (receiver, receiver_host) = match system {
            Some(System::Ceiling) => (&self.at_client, Host::ClientA),
            _ => (&self.at_peer, Host::Peer),
        };
        Path {
            senders: &self.senders,
            receiver,
            lab: &self.lab,
            receiver_host,
            templates,
            media,
            // Relays deliver the bare payload; the baseline and the bounce deliver the
            // frame's UDP payload as sent.
            offset: if system.is_some_and(System::speaks_turn) {
                0
            } else {
                HEADER_LEN
            },
            watch: system.and(self.watch),
        }
    }

    fn trial(
        &mut self,
        path_of: (Option<System>, &[Template], Media),
        rate: f64,
        timing: Timing,
    ) -> anyhow::Result<Trial> {
        self.trials += 1;
        let n = self.trials;
        let path = self.path(path_of.0, path_of.1, path_of.2);
        let t = trial::run(&path, rate, timing, n)?;
        log_trial(path_of.0, &t);
        Ok(t)
    }

    fn search(
        &mut self,
        system: Option<System>,
        templates: &[Template],
        plan: &Plan,
    ) -> anyhow::Result<Saturation> {
        trial::saturation(plan.search, |rate| {
            self.trial((system, templates, plan.media), rate, plan.search_timing)
        })
    }

    /// `repeats` runs of `system` at `rate`, each followed by a run of the generator alone
    /// at the same rate (the system still up, idle): machine noise drifts, and the pairs
    /// that are subtracted ran seconds apart.
    fn half_load(
        &mut self,
        system: System,
        templates: &[Template],
        rate: f64,
        plan: &Plan,
        repeats: usize,
    ) -> anyhow::Result<Measured> {
        let baseline = systems::frames::baseline(templates.len(), plan.media);
        let (mut runs, mut baseline_runs) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            runs.push(self.trial(
                (Some(system), templates, plan.media),
                rate,
                plan.measure_timing,
            )?);
            baseline_runs.push(self.trial(
                (None, &baseline, plan.media),
                rate,
                plan.measure_timing,
            )?);
        }
        Ok(Measured::of(rate, runs, baseline_runs))
    }
}

fn log_trial(system: Option<System>, t: &Trial) {
    let p = t.latency_us;
    eprintln!(
        "  {:<12} offered {:>9.0} pps  sent {:>9.0} pps  delivered {:>9.0} pps  loss {:>7.4}%  P99 {:>8}  CPUs busy {:.2}{}{}",
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
    let baseline_frames = systems::frames::baseline(plan.allocations, plan.media);
    eprintln!(
        "bench: the generator alone, straight to the receiver ({} streams)",
        plan.allocations
    );
    let baseline = bench.search(None, &baseline_frames, &plan)?;
    let mut reports = Vec::new();
    for &system in &plan.systems {
        eprintln!(
            "bench: {} ({} allocations of {:?})",
            system.title(),
            plan.allocations,
            plan.media
        );
        reports.push(measure(&mut bench, system, &plan)?);
    }
    Ok(Run {
        date: crate::report::today(),
        machine: crate::report::Machine::read(),
        plan,
        baseline,
        systems: reports,
    })
}

/// Saturation, half load and memory of `system` with the plan's allocations, then its sweep.
fn measure(bench: &mut Bench, system: System, plan: &Plan) -> anyhow::Result<SystemReport> {
    let (saturation, half_load, memory) = {
        let running = systems::start(&bench.lab, system, &plan.relay)?;
        bench.watch = running.pid();
        let (_clients, frames) = frames_for(bench, system, plan.allocations, plan.media)?;
        let saturation = bench.search(Some(system), &frames, plan)?;
        let half_load = match saturation.rate_pps {
            Some(r) => Some(bench.half_load(system, &frames, r / 2.0, plan, plan.repeats)?),
            None => None,
        };
        (saturation, half_load, running.memory())
    };
    let mut sweep = Vec::new();
    if plan.sweep_systems.contains(&system) {
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
            let (_clients, frames) = frames_for(bench, system, n, plan.media)?;
            sweep.push(SweepPoint {
                allocations: n,
                measured: bench.half_load(system, &frames, rate, plan, 1)?,
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
        sweep,
    })
}

/// The allocations (if the system speaks TURN) and the frames of each stream.
fn frames_for(
    bench: &Bench,
    system: System,
    n: usize,
    media: Media,
) -> anyhow::Result<(Vec<relay::turn::client::Client>, Vec<Template>)> {
    if system.speaks_turn() {
        let clients = systems::allocate(&bench.lab, n)
            .with_context(|| format!("allocating {n} on {}", system.name()))?;
        let frames = systems::frames::turn(&clients, media)?;
        Ok((clients, frames))
    } else {
        Ok((Vec::new(), systems::frames::bounce(n, media)))
    }
}
