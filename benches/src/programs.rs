//! What Relay's eBPF programs cost, from the kernel's own accounting: with
//! `BPF_ENABLE_STATS` held, the kernel times every run of every program and counts them
//! (`run_time_ns`, `run_cnt`, as `bpftool prog` shows). `BPF_PROG_TEST_RUN` cannot time the
//! fan-out: it gives the TC program no XDP metadata, so no mark, so no copies. This times
//! the real runs in the lab instead, in a trial of its own (the accounting costs two clock
//! reads per run, which the other trials should not pay).

use std::collections::HashMap;

use serde::Serialize;

/// The XDP program's and the TC program's names as the kernel keeps them.
const XDP: &str = "relay_xdp";
const TC: &str = "relay_fanout";

/// Each program's run time and count at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    id: u32,
    run_ns: u64,
    runs: u64,
}

/// The newest loaded program of each of Relay's names: the relay under test loaded its
/// programs after the bench loaded its own (the switch port's), so its ids are higher.
fn sample() -> anyhow::Result<HashMap<&'static str, Sample>> {
    let mut newest: HashMap<&'static str, Sample> = HashMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info?;
        let Some(name) = [XDP, TC]
            .into_iter()
            .find(|n| info.name_as_str() == Some(*n))
        else {
            continue;
        };
        let s = Sample {
            id: info.id(),
            run_ns: info.run_time().as_nanos() as u64,
            runs: info.run_count(),
        };
        if newest.get(name).is_none_or(|o| o.id < s.id) {
            newest.insert(name, s);
        }
    }
    Ok(newest)
}

/// Per run and per copy, over one trial.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProgramCost {
    pub xdp_runs: u64,
    /// Mean ns per run of the XDP program (every packet arriving on the interface).
    pub xdp_ns_per_run: Option<f64>,
    pub tc_runs: u64,
    /// Mean ns per run of the TC program: each marked packet, all its copies.
    pub tc_ns_per_run: Option<f64>,
    /// Both programs' time over the copies delivered: the kernel's own cost per copy.
    pub ns_per_copy: Option<f64>,
}

/// Runs `trial` with the kernel's accounting on and returns its result and what the
/// relay's programs cost over it, `copies(result)` being the copies it delivered.
pub fn measure<T>(
    trial: impl FnOnce() -> anyhow::Result<T>,
    copies: impl FnOnce(&T) -> u64,
) -> anyhow::Result<(T, ProgramCost)> {
    let _enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let before = sample()?;
    let result = trial()?;
    let after = sample()?;
    let delta = |name: &str| {
        let (Some(a), b) = (after.get(name), before.get(name)) else {
            return (0, 0);
        };
        // A program loaded during the trial started from zero.
        let b = b.filter(|b| b.id == a.id).copied().unwrap_or_default();
        (
            a.run_ns.saturating_sub(b.run_ns),
            a.runs.saturating_sub(b.runs),
        )
    };
    let per = |ns: u64, n: u64| (n > 0).then(|| ns as f64 / n as f64);
    let (xdp_ns, xdp_runs) = delta(XDP);
    let (tc_ns, tc_runs) = delta(TC);
    let delivered = copies(&result);
    Ok((
        result,
        ProgramCost {
            xdp_runs,
            xdp_ns_per_run: per(xdp_ns, xdp_runs),
            tc_runs,
            tc_ns_per_run: per(tc_ns, tc_runs),
            ns_per_copy: per(xdp_ns + tc_ns, delivered),
        },
    ))
}
