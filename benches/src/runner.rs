//! One benchmark run: the lab, then per scenario the generator's own limit and for each
//! system the saturation search, repeated measurements at half the saturation rate with the
//! generator's own cost measured on the path without a relay at the same rate, memory, and
//! for the relays an allocation sweep (peer scenario only). The fan-out scenario runs once
//! per subscriber count.

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
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
    programs::{self, ProgramCost},
    receiver::{Framing, Keyed, Percentiles, Receiver},
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
    /// A media room: one camera on client A publishes video (bare RTP, 1,200-byte
    /// payloads) and every subscriber on the peer host receives a copy; rates count copies.
    Fanout,
}

impl Scenario {
    pub const ALL: [Self; 3] = [Self::Peer, Self::Hairpin, Self::Fanout];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Hairpin => "hairpin",
            Self::Fanout => "fanout",
        }
    }

    pub const fn title(self) -> &'static str {
        match self {
            Self::Peer => "client A → relay → peer",
            Self::Hairpin => "hairpin: client A → relay → client B (relay/relay)",
            Self::Fanout => "fan-out: camera → room → subscribers",
        }
    }

    /// Whether `system` has this path: the ceiling's bounce has no relay/relay counterpart,
    /// coturn and the ceiling have no rooms, GStreamer no TURN.
    pub const fn runs(self, system: System) -> bool {
        match self {
            Self::Peer => !matches!(system, System::Gstreamer),
            Self::Hairpin => !matches!(system, System::Ceiling | System::Gstreamer),
            Self::Fanout => !matches!(system, System::Coturn | System::Ceiling),
        }
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
    /// Subscriber counts of the fan-out scenario.
    pub subscribers: Vec<usize>,
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
                subscribers: vec![8, 64],
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
                subscribers: vec![1, 8, 64, 256],
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
    /// Relay with XDP in the fan-out scenario: its programs' own cost in one more trial at
    /// half load, and that trial.
    pub programs: Option<(ProgramCost, Trial)>,
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
    /// The fan-out scenario's subscribers.
    pub subscribers: Option<usize>,
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

    /// The fan-out runs, by subscriber count.
    pub fn fanouts(&self) -> impl Iterator<Item = &ScenarioRun> {
        self.scenarios
            .iter()
            .filter(|s| s.scenario == Scenario::Fanout)
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
    /// The switch port's passing XDP program, while attached (see [`Wire`]).
    switch_port: Option<relay::dataplane::Dataplane>,
    /// `netdev_max_backlog` as it was before [`Wire::Backlog`] raised it.
    backlog_was: Option<String>,
}

/// How the lab's switch takes what the relay sends. With the passing XDP program on its
/// port (needed for frames the relay sends with `XDP_TX`), veth hands every frame to that
/// port through a 256-entry ring drained by NAPI; copies made by the TC program all enter
/// it within one softirq, so at 256 subscribers the ring holds one packet's copies and the
/// next packet's overflow (counted as TX drops on the relay's interface). A NIC queues
/// them in its qdisc and TX ring instead. Fan-outs to several subscribers therefore run
/// with the port's program detached and the per-CPU backlog veth then uses raised, for
/// every system alike; the backlog limit is restored afterwards.
#[derive(Clone, Copy, Debug)]
enum Wire {
    /// The port's XDP program attached: what `XDP_TX` needs.
    Xdp,
    /// No program on the port; `net.core.netdev_max_backlog` raised.
    Backlog,
}

/// `net.core.netdev_max_backlog` (the host's: the sysctl is not per namespace).
const MAX_BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";
/// Room for a burst of copies: a frame of video to 256 subscribers.
const FANOUT_BACKLOG: u32 = 100_000;

/// One scenario's streams: the frames the generator sends through the system, the same
/// streams' frames straight to their receiver (the baseline), and where they arrive.
struct Streams {
    /// The allocations, held while the streams run.
    _clients: Vec<Client>,
    through: Vec<Template>,
    direct: Vec<Template>,
    /// The scenario's own sockets and their host (client B's allocations, a room's
    /// subscribers); `None`: the bench's own receivers.
    receiver: Option<(Receiver, Host)>,
    /// What precedes the probe where the system delivers it, and where the direct frames
    /// arrive.
    framing: Framing,
    direct_framing: Framing,
    /// Copies of each packet the system delivers, and how the receiver tells them apart.
    copies: usize,
    keyed: Keyed,
    media: Media,
    /// See [`Path::one_core`].
    one_core: bool,
}

impl Bench {
    fn set_wire(&mut self, wire: Wire) -> anyhow::Result<()> {
        match wire {
            Wire::Xdp => {
                if let Some(was) = self.backlog_was.take() {
                    std::fs::write(MAX_BACKLOG, was)?;
                }
                if self.switch_port.is_none() {
                    self.switch_port = Some(systems::switch_port(&self.lab)?);
                }
            }
            Wire::Backlog => {
                self.switch_port = None;
                if self.backlog_was.is_none() {
                    self.backlog_was = Some(std::fs::read_to_string(MAX_BACKLOG)?);
                    std::fs::write(MAX_BACKLOG, FANOUT_BACKLOG.to_string())?;
                }
            }
        }
        Ok(())
    }

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
        let one = |through, direct, clients, receiver, framing| Streams {
            _clients: clients,
            through,
            direct,
            receiver,
            framing,
            direct_framing: Framing::ChannelData(CHANNEL),
            copies: 1,
            keyed: Keyed::Stream,
            media,
            one_core: false,
        };
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
                Ok(one(
                    through,
                    frames::baseline(n, media),
                    clients,
                    None,
                    framing,
                ))
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
                Ok(one(
                    frames::turn(&a, media)?,
                    frames::direct(Host::ClientB, &ports, media),
                    a.into_iter().chain(b).collect(),
                    Some((at_b, Host::ClientB)),
                    Framing::ChannelData(HAIRPIN_CHANNEL),
                ))
            }
            Scenario::Fanout => anyhow::bail!("fan-out streams start with their system"),
        }
    }

    /// The fan-out scenario's `n` subscribers (sockets on the peer host) and the camera's
    /// stream to `camera` (a room's endpoint or GStreamer), or without one the generator
    /// sending every copy itself, one stream per subscriber.
    fn fanout_streams(&self, n: usize, camera: Option<SocketAddrV4>) -> anyhow::Result<Streams> {
        let addrs: Vec<SocketAddrV4> = (0..n).map(systems::subscriber_addr).collect();
        let sockets = self.lab.in_netns(Host::Peer, || {
            addrs
                .iter()
                .map(UdpSocket::bind)
                .collect::<std::io::Result<Vec<_>>>()
        })??;
        Ok(Streams {
            _clients: Vec::new(),
            through: camera.map_or_else(Vec::new, |c| frames::rtp(&[c], true)),
            direct: frames::rtp(&addrs, false),
            receiver: Some((Receiver::on(sockets)?, Host::Peer)),
            framing: Framing::Bare,
            direct_framing: Framing::Bare,
            copies: n,
            keyed: Keyed::Socket,
            // A camera: the scenario's media whatever the plan's.
            media: Media::Video,
            one_core: true,
        })
    }

    /// The path of `streams` through `system`, or straight to their receiver without one.
    fn path<'a>(&'a self, system: Option<System>, streams: &'a Streams) -> Path<'a> {
        let (receiver, receiver_host) = match (system, &streams.receiver) {
            (Some(System::Ceiling), _) => (&self.at_client, Host::ClientA),
            (_, Some((receiver, host))) => (receiver, *host),
            (_, None) => (&self.at_peer, Host::Peer),
        };
        let through = system.is_some();
        Path {
            senders: &self.senders,
            receiver,
            lab: &self.lab,
            receiver_host,
            templates: if through {
                &streams.through
            } else {
                &streams.direct
            },
            media: streams.media,
            // Straight to the receiver, the frame's UDP payload arrives as sent.
            framing: if through {
                streams.framing
            } else {
                streams.direct_framing
            },
            copies: if through { streams.copies } else { 1 },
            one_core: streams.one_core,
            keyed: if through {
                streams.keyed
            } else {
                Keyed::Stream
            },
            watch: system.and(self.watch),
        }
    }

    fn trial(
        &mut self,
        system: Option<System>,
        streams: &Streams,
        rate: f64,
        timing: Timing,
    ) -> anyhow::Result<Trial> {
        self.trials += 1;
        let n = self.trials;
        let path = self.path(system, streams);
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
            self.trial(system, streams, rate, plan.search_timing)
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
                runs.push(self.trial(system, streams, rate, plan.measure_timing)?);
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
        } else if t.path_behind {
            "  (path behind)"
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
    if t.late > 0 {
        eprintln!("               ({} arrived more than 100 ms late)", t.late);
    }
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
        switch_port: Some(switch_port),
        backlog_was: None,
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
        let counts: Vec<Option<usize>> = if scenario == Scenario::Fanout {
            plan.subscribers.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        for subscribers in counts {
            scenarios.push(run_scenario(
                &mut bench,
                (scenario, subscribers),
                &systems,
                skipped.clone(),
                &plan,
            )?);
        }
    }
    Ok(Run {
        date: crate::report::today(),
        machine: crate::report::Machine::read(),
        plan,
        scenarios,
    })
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(was) = self.backlog_was.take() {
            let _ = std::fs::write(MAX_BACKLOG, was);
        }
    }
}

/// One scenario (with its subscriber count, for the fan-out): the generator alone, then
/// each system.
fn run_scenario(
    bench: &mut Bench,
    (scenario, subscribers): (Scenario, Option<usize>),
    systems: &[System],
    skipped: Vec<System>,
    plan: &Plan,
) -> anyhow::Result<ScenarioRun> {
    bench.set_wire(if subscribers.is_some_and(|n| n > 1) {
        Wire::Backlog
    } else {
        Wire::Xdp
    })?;
    let (n, what) = match subscribers {
        Some(n) => (n, format!("{n} subscribers of one video camera")),
        None => (
            plan.allocations,
            format!("{} allocations of {:?}", plan.allocations, plan.media),
        ),
    };
    eprintln!(
        "bench [{}]: the generator alone, straight to the receiver ({what})",
        scenario.name(),
    );
    let direct = match subscribers {
        Some(n) => bench.fanout_streams(n, None)?,
        None => bench.streams(scenario, None, n, plan.media)?,
    };
    let baseline = bench.search(None, &direct, plan)?;
    drop(direct);
    let mut reports = Vec::new();
    for &system in systems {
        eprintln!("bench [{}]: {} ({what})", scenario.name(), system.title());
        reports.push(measure(bench, (scenario, subscribers), system, plan)?);
    }
    Ok(ScenarioRun {
        scenario,
        subscribers,
        baseline,
        systems: reports,
        skipped,
    })
}

/// Saturation, half load and memory of `system` in `scenario` with the plan's allocations
/// (or the fan-out's subscribers), then (peer scenario) its sweep.
fn measure(
    bench: &mut Bench,
    (scenario, subscribers): (Scenario, Option<usize>),
    system: System,
    plan: &Plan,
) -> anyhow::Result<SystemReport> {
    let (saturation, half_load, memory, xdp_forwarded, programs) = {
        let (running, streams) = if let Some(n) = subscribers {
            let addrs: Vec<_> = (0..n).map(systems::subscriber_addr).collect();
            let (running, camera) = systems::start_fanout(&bench.lab, system, &plan.relay, &addrs)?;
            if let Some(pid) = running.pid() {
                crate::cpu::pin_process(pid, 0)?;
            }
            (running, bench.fanout_streams(n, Some(camera))?)
        } else {
            let running = systems::start(&bench.lab, system, &plan.relay)?;
            let streams = bench.streams(scenario, Some(system), plan.allocations, plan.media)?;
            (running, streams)
        };
        bench.watch = running.pid();
        let saturation = bench.search(Some(system), &streams, plan)?;
        let half_load = match saturation.rate_pps {
            Some(r) => Some(bench.half_load(system, &streams, r / 2.0, plan, plan.repeats)?),
            None => None,
        };
        let programs = match (&half_load, system, subscribers) {
            (Some(h), System::RelayXdp, Some(_)) => Some(programs::measure(
                || bench.trial(Some(system), &streams, h.rate_pps, plan.measure_timing),
                |t: &Trial| t.received,
            )?)
            .map(|(trial, cost)| (cost, trial)),
            _ => None,
        };
        let memory = running.memory();
        (saturation, half_load, memory, running.stop()?, programs)
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
        programs,
    })
}
