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

/// The machine's CPU times at one moment, and those of the process under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    pub at_ns: u64,
    /// Clock ticks all CPUs were idle (idle and iowait). The kernel keeps idle time exactly
    /// on tickless CPUs, where user, system and softirq time are sampled once a tick: busy
    /// time is the wall time of every CPU less this.
    pub idle: u64,
    /// Nanoseconds the process's threads have run (scheduler statistics: exact, where
    /// `/proc/stat` counts ticks), if a process is watched.
    pub process_ns: Option<u64>,
}

impl CpuTimes {
    /// Busy CPU-seconds from `self` to `later`: every CPU's wall time, less idle time.
    pub fn busy_secs(&self, later: &Self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64 / ticks_per_sec();
        (self.secs(later) * cpus - idle).max(0.0)
    }

    /// CPU-seconds the watched process ran from `self` to `later`.
    pub fn process_secs(&self, later: &Self) -> Option<f64> {
        Some(later.process_ns?.saturating_sub(self.process_ns?) as f64 / 1e9)
    }

    pub fn secs(&self, later: &Self) -> f64 {
        later.at_ns.saturating_sub(self.at_ns) as f64 / 1e9
    }
}

/// The machine's times now, and `process`'s if given.
pub fn sample(process: Option<u32>) -> io::Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let idle = idle_ticks(&stat).ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    Ok(CpuTimes {
        at_ns: realtime_ns(),
        idle,
        process_ns: process.map(run_ns).transpose()?,
    })
}

/// How long `pid`'s threads have run, ns: the first field of each thread's schedstat.
fn run_ns(pid: u32) -> io::Result<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        // A thread that exits in between is simply not counted.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            sum += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(sum)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Idle and iowait ticks from the `cpu` line of `/proc/stat` (fields 4 and 5: user nice
/// system idle iowait ...).
fn idle_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(5)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(f.get(3)? + f.get(4)?)
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

/// Keeps the calling thread on `cpu`.
pub fn pin_thread(cpu: usize) -> io::Result<()> {
    pin(0, cpu)
}

/// Keeps every thread of process `pid` on `cpu` (threads it starts later inherit that).
pub fn pin_process(pid: u32, cpu: usize) -> io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            pin(tid, cpu)?;
        }
    }
    Ok(())
}

fn pin(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for cpu < 1024.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 7 1 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n";
        assert_eq!(idle_ticks(stat), Some(1000 + 20));
        assert_eq!(idle_ticks("intr 5\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let m = memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib);
        let me = Some(std::process::id());
        let a = sample(me).unwrap();
        // Burn a little CPU so that this process's run time must grow.
        let mut x = 0u64;
        for i in 0..1_000_000 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        let b = sample(me).unwrap();
        assert!(b.idle >= a.idle && b.at_ns >= a.at_ns);
        assert!(a.process_secs(&b).unwrap() > 0.0);
        assert_eq!(sample(None).unwrap().process_ns, None);
    }
}
