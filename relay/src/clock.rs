//! The kernel's CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which the
//! XDP program stamps flows and policers with, so the daemon must use it too.

use std::time::Instant;

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec
        .unsigned_abs()
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.unsigned_abs())
}

/// `at` on the kernel's CLOCK_MONOTONIC, in nanoseconds: the clock of `bpf_ktime_get_ns`
/// (Rust's `Instant` reads the same clock on Linux, but does not show its value).
pub fn monotonic_ns(at: Instant) -> u64 {
    let now_ns = monotonic_now_ns();
    let now = Instant::now();
    match at.checked_duration_since(now) {
        Some(ahead) => now_ns.saturating_add(ahead.as_nanos() as u64),
        None => now_ns.saturating_sub(now.duration_since(at).as_nanos() as u64),
    }
}

/// Unix time in milliseconds of `ns` on CLOCK_MONOTONIC (a time ahead reads as now): for
/// showing when something the kernel or the data path stamped happened.
pub fn unix_ms_of_monotonic(ns: u64) -> u64 {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    unix_ms.saturating_sub(monotonic_now_ns().saturating_sub(ns) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instants_map_onto_the_kernels_monotonic_clock() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec for the kernel to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        let kernel_now = ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs();
        let now = Instant::now();
        assert!(
            monotonic_ns(now).abs_diff(kernel_now) < 50_000_000,
            "within 50 ms of the kernel's clock"
        );
        let later = monotonic_ns(now + Duration::from_secs(300)) - monotonic_ns(now);
        assert!(later.abs_diff(300_000_000_000) < 1_000_000, "{later}");
        let earlier =
            monotonic_ns(now) - monotonic_ns(now.checked_sub(Duration::from_secs(1)).unwrap());
        assert!(earlier.abs_diff(1_000_000_000) < 1_000_000, "{earlier}");
    }

    #[test]
    fn monotonic_stamps_read_as_unix_time() {
        let unix_now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let two_seconds_ago = monotonic_now_ns() - 2_000_000_000;
        let at = unix_ms_of_monotonic(two_seconds_ago);
        assert!(
            (unix_now_ms - at).abs_diff(2_000) < 100,
            "{at} vs {unix_now_ms}"
        );
        let ahead = unix_ms_of_monotonic(monotonic_now_ns() + 5_000_000_000);
        assert!(
            ahead.abs_diff(unix_now_ms) < 100,
            "a stamp ahead reads as now"
        );
    }
}
