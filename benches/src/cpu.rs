//! What a trial costs the machine: CPU time from `/proc/stat` (all CPUs, softirq included,
//! because XDP and the stack's receive path run there and not in any process) and a
//! process's memory from `/proc/<pid>`.

use std::io;

use serde::Serialize;

/// The realtime clock in nanoseconds: the clock the kernel stamps received datagrams with
/// (`SO_TIMESTAMPNS`), so send and receive times compare on one host clock.
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// The machine's CPU times at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    pub at_ns: u64,
    /// Clock ticks spent in user, nice, system, irq, softirq and steal time, all CPUs.
    pub busy: u64,
}

impl CpuTimes {
    /// Busy CPU-seconds from `self` to `later`.
    pub fn busy_secs(&self, later: &Self) -> f64 {
        later.busy.saturating_sub(self.busy) as f64 / ticks_per_sec()
    }

    pub fn secs(&self, later: &Self) -> f64 {
        later.at_ns.saturating_sub(self.at_ns) as f64 / 1e9
    }
}

pub fn sample() -> io::Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let busy = busy_ticks(&stat).ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    Ok(CpuTimes {
        at_ns: realtime_ns(),
        busy,
    })
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Busy ticks from the `cpu` line of `/proc/stat`: every field but idle and iowait (guest
/// time is already inside user time).
fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal
    Some(
        f.get(..8)?
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, v)| v)
            .sum(),
    )
}

/// A process's memory, as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// Kernel memory of the BPF maps the process holds (`memlock` of each map fd), KiB.
    pub bpf_maps_kib: u64,
}

pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut bpf = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if info.contains("map_type:") {
            bpf += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Memory {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        bpf_maps_kib: bpf / 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_everything_but_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 7 1 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n";
        assert_eq!(busy_ticks(stat), Some(100 + 5 + 50 + 3 + 7 + 1));
        assert_eq!(busy_ticks("intr 5\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let m = memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib);
        let a = sample().unwrap();
        let b = sample().unwrap();
        assert!(b.busy >= a.busy && b.at_ns >= a.at_ns);
    }
}
