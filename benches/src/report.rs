//! What a run leaves behind: the comparison table of each scenario (printed and in
//! `<date>-summary.md`), per system `<date>-<system>.json` and `.md`, and
//! `<date>-delivered.svg`, delivered against offered rate per system; the hairpin scenario's
//! files are named `<date>-hairpin-...`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    receiver::Percentiles,
    runner::{Run, Scenario, ScenarioRun, SystemReport},
    systems::System,
    trial::{Saturation, Trial},
};

/// The machine a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|v| v.split(':').nth(1))
                .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |v| v.trim().to_owned()),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GiB, Linux {}",
            self.cpus, self.cpu_model, self.memory_gib, self.kernel
        )
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400).cast_signed());
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn report_of(s: &ScenarioRun, system: System) -> Option<&SystemReport> {
    s.systems.iter().find(|r| r.system == system)
}

/// The peer scenario's report of `system`.
fn peer_report(run: &Run, system: System) -> Option<&SystemReport> {
    report_of(run.scenario(Scenario::Peer)?, system)
}

/// What a scenario's files are called: the peer scenario's as before there were others.
fn file_prefix(s: &ScenarioRun) -> String {
    match (s.scenario, s.subscribers) {
        (Scenario::Peer, _) => String::new(),
        (scenario, None) => format!("{}-", scenario.name()),
        (scenario, Some(n)) => format!("{}-{n}-", scenario.name()),
    }
}

fn saturation_cell(s: &Saturation) -> String {
    match s.rate_pps {
        Some(r) if s.generator_limited => format!("≥ {} (generator limit)", pps(r)),
        Some(r) => pps(r),
        None => "none clean".to_owned(),
    }
}

fn pps(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} Mpps", r / 1e6)
    } else {
        format!("{:.1} kpps", r / 1e3)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".to_owned(),
    }
}

/// P50 / P90 / P99 / P99.9, µs.
fn latency_cell(p: Option<Percentiles>) -> String {
    p.map_or_else(
        || "-".to_owned(),
        |p| format!("{:.0} / {:.0} / {:.0} / {:.0}", p.p50, p.p90, p.p99, p.p999),
    )
}

/// The machine's CPU per packet less the generator's: a difference of two noisy figures,
/// which can come out at or below zero when the system's share is smaller than the noise.
fn cpu_cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v <= 0.0 => format!("{v:.0} (below noise)"),
        v => opt(v, 0),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn memory_cell(r: &SystemReport) -> String {
    r.memory.map_or_else(
        || "-".to_owned(),
        |m| {
            let mut s = format!("{:.1} MiB", m.rss_kib as f64 / 1024.0);
            if m.bpf_maps_kib > 0 {
                let _ = write!(s, " + {:.1} MiB maps", m.bpf_maps_kib as f64 / 1024.0);
            }
            s
        },
    )
}

/// A scenario's comparison table, Markdown.
pub fn table(run: &ScenarioRun) -> String {
    let coturn = report_of(run, System::Coturn);
    let ceiling = report_of(run, System::Ceiling);
    let coturn_rate = coturn.and_then(|c| c.saturation.rate_pps);
    let coturn_cpu = coturn.and_then(|c| c.half_load.as_ref()?.cpu_ns_per_packet);
    let ceiling_rate = ceiling.and_then(|c| c.saturation.rate_pps);
    let mut t = String::new();
    t.push_str(
        "| System | Saturation (< 0.1% loss) | × coturn | of ceiling | latency at 50%: P50 / P90 / P99 / P99.9 µs | added P99 µs | machine CPU ns / packet | × coturn | process CPU ns / packet | memory |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &run.systems {
        let rate = r.saturation.rate_pps;
        let half = r.half_load.as_ref();
        let cpu = half.and_then(|h| h.cpu_ns_per_packet);
        let of_ceiling = match (rate, ceiling_rate) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.title,
            saturation_cell(&r.saturation),
            ratio(rate, coturn_rate),
            of_ceiling,
            latency_cell(half.and_then(|h| h.latency_us)),
            opt(half.and_then(|h| h.added_p99_us), 0),
            cpu_cell(cpu),
            ratio(cpu.filter(|c| *c > 0.0), coturn_cpu),
            opt(half.and_then(|h| h.process_ns_per_packet), 0),
            memory_cell(r),
        );
    }
    let _ = writeln!(
        t,
        "| generator alone, no relay | {} | | | | | | | | |",
        saturation_cell(&run.baseline)
    );
    t
}

/// The allocation sweep, Markdown.
pub fn sweep_table(run: &Run) -> String {
    let mut t = String::from(
        "| System | allocations | rate | machine CPU ns / packet | process CPU ns / packet | P50 µs | P99 µs | loss |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in run.scenarios.iter().flat_map(|s| &s.systems) {
        for p in &r.sweep {
            let m = &p.measured;
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {:.3}% |",
                r.title,
                p.allocations,
                pps(m.rate_pps),
                cpu_cell(m.cpu_ns_per_packet),
                opt(m.process_ns_per_packet, 0),
                opt(m.latency_us.map(|l| l.p50), 0),
                opt(m.latency_us.map(|l| l.p99), 0),
                m.loss * 100.0,
            );
        }
    }
    t
}

/// The goals, each against what this run measured.
pub fn goals(run: &Run) -> String {
    let sat = |s: System| peer_report(run, s).and_then(|r| r.saturation.rate_pps);
    let half = |s: System| peer_report(run, s).and_then(|r| r.half_load.as_ref());
    let xdp = System::RelayXdp;
    let mut g = String::new();
    if let (Some(x), Some(c)) = (sat(xdp), sat(System::Coturn)) {
        let _ = writeln!(g, "- XDP saturation {:.1}× coturn's (goal ≥ 10×)", x / c);
    }
    if let (Some(x), Some(c)) = (sat(xdp), sat(System::Ceiling)) {
        let _ = writeln!(
            g,
            "- XDP saturation {:.0}% of the ceiling (goal ≥ 70%)",
            100.0 * x / c
        );
    }
    if let (Some(x), Some(c)) = (
        half(xdp).and_then(|h| h.cpu_ns_per_packet),
        half(System::Coturn).and_then(|h| h.cpu_ns_per_packet),
    ) {
        let _ = writeln!(
            g,
            "- XDP CPU per packet {x:.0} ns, {:.2} of coturn's {c:.0} ns (goal ≤ 0.10)",
            x / c
        );
    }
    if let (Some(x), Some(c)) = (
        half(xdp).and_then(|h| h.process_ns_per_packet),
        half(System::Coturn).and_then(|h| h.process_ns_per_packet),
    ) {
        let _ = writeln!(
            g,
            "- Relay's own process per packet with XDP {x:.0} ns, coturn's {c:.0} ns: XDP's work is softirq time, in the machine figure"
        );
    }
    if let Some(a) = half(xdp).and_then(|h| h.added_p99_us) {
        let _ = writeln!(g, "- XDP adds {a:.1} µs to P99 at 50% load (goal ≤ 50 µs)");
    }
    if let Some(r) = peer_report(run, xdp).filter(|r| !r.sweep.is_empty()) {
        let costs: Vec<String> = r
            .sweep
            .iter()
            .map(|p| {
                format!(
                    "{}: {} ns",
                    p.allocations,
                    opt(p.measured.cpu_ns_per_packet, 0)
                )
            })
            .collect();
        let _ = writeln!(
            g,
            "- XDP CPU per packet by allocations (goal: flat): {}",
            costs.join(", ")
        );
    }
    g
}

/// What each scenario's XDP program forwarded itself, and which systems it skipped.
fn notes(s: &ScenarioRun) -> String {
    let mut n = String::new();
    for r in &s.systems {
        if let Some(forwarded) = r.xdp_forwarded {
            let sent = r.sent_through();
            let _ = writeln!(
                n,
                "- {}: its XDP program counted {forwarded} packets `forwarded` of the {sent} sent through it ({:.1}%; above saturation some never reach it).",
                r.title,
                100.0 * forwarded as f64 / sent.max(1) as f64
            );
        }
    }
    for system in &s.skipped {
        let _ = writeln!(
            n,
            "- {}: skipped, it has no {} path.",
            system.title(),
            s.scenario.name()
        );
    }
    n
}

/// The whole run's summary, Markdown.
pub fn summary(run: &Run) -> String {
    let mut s = format!(
        "# Benchmark {}\n\nMachine: {}. {} allocations, {:?} media ({} byte payloads), {} repeat(s) at 50% load.\n",
        run.date,
        run.machine.describe(),
        run.plan.allocations,
        run.plan.media,
        run.plan.media.payload_len(),
        run.plan.repeats,
    );
    for scenario in &run.scenarios {
        match scenario.scenario {
            Scenario::Peer => {
                let _ = write!(
                    s,
                    "\n{}\n{}\n{}{}",
                    table(scenario),
                    sweep_table(run),
                    goals(run),
                    notes(scenario)
                );
            }
            Scenario::Hairpin => {
                let _ = write!(
                    s,
                    "\n## {}\n\nEach stream is two allocations, from client A and from client B, bound to each other's relayed address; A's ChannelData arrives at B as ChannelData on B's channel. The generator alone sends straight to B's sockets.\n\n{}\n{}",
                    capitalised(scenario.scenario.title()),
                    table(scenario),
                    notes(scenario)
                );
            }
            // One section for every subscriber count, below.
            Scenario::Fanout => {}
        }
    }
    if run.fanouts().next().is_some() {
        let _ = write!(
            s,
            "\n## {}\n\nOne camera on client A publishes VP8-sized RTP (1,200-byte payloads, a frame's packets back to back at 30 frames a second) to a room; each subscriber is a socket on the peer host. Rates and CPU figures count copies delivered. The generator alone sends every copy itself, one stream per subscriber.\n\n{}\n{}",
            capitalised(Scenario::Fanout.title()),
            fanout_table(run),
            fanout_goals(run)
        );
    }
    s
}

/// Machine CPU per copy delivered, all of it (generator, relay, receivers): the systems
/// are compared at the same load, where the generator's and the receivers' share is the
/// same.
fn gross_ns_per_copy(h: &crate::runner::Measured) -> Option<f64> {
    (h.delivered_pps > 0.0).then(|| h.busy_cpus / h.delivered_pps * 1e9)
}

/// The fan-out runs, one row per subscriber count and system, Markdown.
pub fn fanout_table(run: &Run) -> String {
    let mut t = String::from(
        "| subscribers | System | saturation, copies/s (< 0.1% loss) | × Relay userspace | × GStreamer | at 50%: latency P50 / P99 µs (generator alone) | machine CPU ns / copy (generator alone) | process CPU ns / copy | eBPF programs ns / copy |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in run.fanouts() {
        let n = f.subscribers.unwrap_or(0);
        let rate = |system| report_of(f, system).and_then(|r| r.saturation.rate_pps);
        for r in &f.systems {
            let half = r.half_load.as_ref();
            let p50_p99 = |p: Option<Percentiles>| {
                p.map_or_else(
                    || "-".to_owned(),
                    |p| format!("{:.0} / {:.0}", p.p50, p.p99),
                )
            };
            let alone_cpu = half.and_then(|h| {
                (h.delivered_pps > 0.0).then(|| h.baseline_busy_cpus / h.delivered_pps * 1e9)
            });
            let _ = writeln!(
                t,
                "| {n} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} |",
                r.title,
                saturation_cell(&r.saturation),
                ratio(r.saturation.rate_pps, rate(System::RelayUring)),
                ratio(r.saturation.rate_pps, rate(System::Gstreamer)),
                p50_p99(half.and_then(|h| h.latency_us)),
                p50_p99(half.and_then(|h| h.baseline_latency_us)),
                opt(half.and_then(gross_ns_per_copy), 0),
                opt(alone_cpu, 0),
                opt(half.and_then(|h| h.process_ns_per_packet), 0),
                opt(r.programs.as_ref().and_then(|p| p.0.ns_per_copy), 0),
            );
        }
        let _ = writeln!(
            t,
            "| {n} | generator alone, every copy itself | {} | | | | | | |",
            saturation_cell(&f.baseline)
        );
    }
    t
}

/// The fan-out issue's goals, each against what this run measured.
pub fn fanout_goals(run: &Run) -> String {
    let mut g = String::new();
    for f in run.fanouts() {
        let n = f.subscribers.unwrap_or(0);
        let rate = |system| report_of(f, system).and_then(|r| r.saturation.rate_pps);
        if let (Some(x), Some(u)) = (rate(System::RelayXdp), rate(System::RelayUring)) {
            let _ = write!(
                g,
                "- {n} subscribers: kernel fan-out {:.1}× Relay's userspace (goal ≥ 5×)",
                x / u
            );
            if let Some(gst) = rate(System::Gstreamer) {
                let _ = write!(g, ", {:.1}× GStreamer's (goal ≥ 10×)", x / gst);
            }
            g.push('\n');
        }
    }
    let costs: Vec<String> = run
        .fanouts()
        .filter_map(|f| {
            let h = report_of(f, System::RelayXdp)?.half_load.as_ref()?;
            Some(format!(
                "{}: {} ns",
                f.subscribers.unwrap_or(0),
                opt(gross_ns_per_copy(h), 0)
            ))
        })
        .collect();
    if !costs.is_empty() {
        let _ = writeln!(
            g,
            "- Kernel fan-out, machine CPU per copy by subscribers (goal: flat from 8 to 256): {}",
            costs.join(", ")
        );
    }
    g
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}

/// One system's page, Markdown: its trials, then its half-load runs.
fn system_page(run: &Run, scenario: &ScenarioRun, r: &SystemReport) -> String {
    let subscribers = scenario.subscribers.map_or_else(String::new, |n| {
        format!(", {n} subscribers (rates count copies)")
    });
    let mut s = format!(
        "# {} — {}{subscribers} — {}\n\nMachine: {}.\n\nSaturation: {}.\n\n",
        r.title,
        scenario.scenario.title(),
        run.date,
        run.machine.describe(),
        saturation_cell(&r.saturation)
    );
    s.push_str(&trials_table(&r.saturation.trials));
    if let Some(h) = &r.half_load {
        let _ = write!(
            s,
            "\nAt 50% ({}): latency P50 / P90 / P99 / P99.9 {} µs (baseline {} µs), busy CPUs {:.2} (baseline {:.2}), CPU per packet {} ns.\n\n",
            pps(h.rate_pps),
            latency_cell(h.latency_us),
            latency_cell(h.baseline_latency_us),
            h.busy_cpus,
            h.baseline_busy_cpus,
            opt(h.cpu_ns_per_packet, 0)
        );
        s.push_str(&trials_table(&h.runs));
    }
    s
}

fn trials_table(trials: &[Trial]) -> String {
    let mut t = String::from(
        "| offered pps | sent pps | delivered pps | loss | reordered | P50 µs | P99 µs | P99.9 µs | busy CPUs | note |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for x in trials {
        let note = match (x.generator_limited, x.receiver_drops) {
            (true, _) => "generator behind".to_owned(),
            (false, _) if x.path_behind => "path behind (sender's softirq)".to_owned(),
            (false, _) if x.late > 0 => format!("{} over 100 ms late", x.late),
            (false, d) if d > 0 => format!("receiver dropped {d}"),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "| {:.0} | {:.0} | {:.0} | {:.4}% | {} | {} | {} | {} | {:.2} | {} |",
            x.offered_pps,
            x.sent_pps,
            x.delivered_pps,
            x.loss * 100.0,
            x.reordered,
            opt(x.latency_us.map(|l| l.p50), 0),
            opt(x.latency_us.map(|l| l.p99), 0),
            opt(x.latency_us.map(|l| l.p999), 0),
            x.busy_cpus(),
            note
        );
    }
    t
}

const COLOURS: [&str; 6] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#666666",
];

/// Delivered against offered rate in a scenario, one line per system and one for the
/// generator alone.
pub fn svg(run: &ScenarioRun) -> String {
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = run
        .systems
        .iter()
        .map(|r| (r.title, points(&r.saturation.trials)))
        .collect();
    series.push(("generator alone", points(&run.baseline.trials)));
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, y)| x.max(*y)))
        .fold(1.0, f64::max);
    // Canvas and margins, pixels.
    let (width, height, left, bottom, top, right) = (760.0, 460.0, 70.0, 50.0, 20.0, 230.0);
    let px = |v: f64| left + v / max * (width - left - right);
    let py = |v: f64| height - bottom - v / max * (height - bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Axes, ticks and the line where delivered equals offered.
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"{b}\" x2=\"{l}\" y2=\"{t}\" stroke=\"black\"/>",
        l = px(0.0),
        b = py(0.0),
        r = px(max),
        t = py(max)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4 4\"/>",
        px(0.0),
        py(0.0),
        px(max),
        py(max)
    );
    let step = nice_step(max / 5.0);
    let mut v = 0.0;
    while v <= max * 1.0001 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
            px(v),
            py(0.0) + 16.0,
            v / 1e3,
            px(0.0) - 6.0,
            py(v) + 4.0,
            v / 1e3
        );
        v += step;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">offered (kpps)</text>\n<text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">delivered (kpps)</text>",
        f64::midpoint(px(0.0), px(max)),
        height - 10.0,
        f64::midpoint(py(0.0), py(max)),
        f64::midpoint(py(0.0), py(max))
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        for (a, b) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                px(*a),
                py(*b)
            );
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            width - right + 20.0,
            ly - 4.0,
            width - right + 40.0,
            ly,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A search's trials as (offered, delivered), by offered rate.
fn points(trials: &[Trial]) -> Vec<(f64, f64)> {
    let mut p: Vec<_> = trials
        .iter()
        .map(|t| (t.offered_pps, t.delivered_pps))
        .collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes every file of `run` into `dir`; returns their paths.
pub fn write(run: &Run, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    #[derive(Serialize)]
    struct SystemFile<'a> {
        date: &'a str,
        machine: &'a Machine,
        plan: &'a crate::runner::Plan,
        scenario: Scenario,
        baseline: &'a Saturation,
        #[serde(flatten)]
        report: &'a SystemReport,
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: String, text: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    for s in &run.scenarios {
        let prefix = format!("{}-{}", run.date, file_prefix(s));
        for r in &s.systems {
            let file = SystemFile {
                date: &run.date,
                machine: &run.machine,
                plan: &run.plan,
                scenario: s.scenario,
                baseline: &s.baseline,
                report: r,
            };
            put(
                format!("{prefix}{}.json", r.system.name()),
                serde_json::to_string_pretty(&file)? + "\n",
            )?;
            put(
                format!("{prefix}{}.md", r.system.name()),
                system_page(run, s, r),
            )?;
        }
        put(format!("{prefix}delivered.svg"), svg(s))?;
    }
    put(format!("{}-summary.md", run.date), summary(run))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalises() {
        assert_eq!(capitalised("hairpin: a"), "Hairpin: a");
        assert_eq!(capitalised(""), "");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }

    #[test]
    fn steps_are_round() {
        for (raw, step) in [(180_000.0, 200_000.0), (42.0, 50.0), (100.0, 100.0)] {
            assert!((nice_step(raw) - step).abs() < 1e-9, "{raw}");
        }
    }
}
