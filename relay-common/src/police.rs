#![expect(
    clippy::inline_always,
    reason = "inlined into the XDP program in the kernel"
)]
//! Rate limits (a tenant's, an allocation's `--max-bps`) as one policer shared by the XDP
//! program and the userspace data path: the same memory (a `BPF_F_MMAPABLE` array the daemon
//! maps), the same arithmetic, so a tenant's budget is one budget whichever path a packet
//! takes.
//!
//! The arithmetic is the Generic Cell Rate Algorithm in its virtual-scheduling form (ITU-T
//! I.371): per limit, one "theoretical arrival time" (TAT), the instant by which the rate
//! will have paid for everything admitted so far. A packet conforms if paying for it too
//! ends no more than the burst ahead of now; it then pushes the TAT on by its cost (the time
//! the rate needs for it). That is exactly a token bucket of depth `burst` (in time at the
//! rate), but its state is one u64, so CPUs update it with a compare-and-swap, not a lock.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::atomic;

const NS_PER_SEC: u64 = 1_000_000_000;
/// Picoseconds per second, times 8 bits per byte: `PS_BYTE / bits_per_sec` is the time on
/// the wire of one byte, in picoseconds (enough precision up to 8 Tbit/s).
const PS_BYTE: u64 = 8_000_000_000_000;

/// How often a CPU retries a lost compare-and-swap before it counts the packet as over the
/// limit: only other CPUs spending the same budget at that instant make it lose.
const CAS_TRIES: usize = 4;

/// Entries of the policer array: tenants plus one per allocation with `--max-bps`.
pub const MAX_POLICERS: u32 = 32768;

/// A limit as configured: 0 in a rate means no limit on that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    pub packets_per_sec: u64,
    pub bits_per_sec: u64,
    /// How far above the rate a sender may burst, as time at the rate: `burst_ns` of
    /// traffic may arrive back to back after a quiet spell.
    pub burst_ns: u64,
}

/// One policer: an entry of the `POLICERS` map, and of the daemon's table without XDP.
/// Every field is an atomic because the kernel's CPUs and the daemon's thread share it.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Policer {
    /// TAT of the packet rate, CLOCK_MONOTONIC ns.
    packet_tat_ns: AtomicU64,
    /// TAT of the bit rate, CLOCK_MONOTONIC ns.
    bit_tat_ns: AtomicU64,
    /// Cost of one packet in ns (0: no packet limit).
    ns_per_packet: AtomicU64,
    /// Cost of one byte in picoseconds (0: no bit limit).
    ps_per_byte: AtomicU64,
    burst_ns: AtomicU64,
    /// Pads the entry to a cache line, so CPUs spending different budgets do not contend.
    pad: [u64; 3],
}

const _: () = assert!(size_of::<Policer>() == 64);

impl Policer {
    /// Sets the limit (the daemon, when a tenant or allocation gets this slot). The TATs
    /// start at 0: a full burst is available at once.
    pub fn configure(&self, limit: Limit) {
        let per = |unit: u64, rate: u64| unit.checked_div(rate).unwrap_or(0);
        self.ns_per_packet
            .store(per(NS_PER_SEC, limit.packets_per_sec), Relaxed);
        self.ps_per_byte
            .store(per(PS_BYTE, limit.bits_per_sec), Relaxed);
        self.burst_ns.store(limit.burst_ns, Relaxed);
        self.packet_tat_ns.store(0, Relaxed);
        self.bit_tat_ns.store(0, Relaxed);
    }

    /// The limit [`Policer::configure`] set, read back from the costs it keeps (a rate that
    /// does not divide a second evenly reads back rounded).
    pub fn limit(&self) -> Limit {
        let rate = |unit: u64, cost: &AtomicU64| unit.checked_div(cost.load(Relaxed)).unwrap_or(0);
        Limit {
            packets_per_sec: rate(NS_PER_SEC, &self.ns_per_packet),
            bits_per_sec: rate(PS_BYTE, &self.ps_per_byte),
            burst_ns: self.burst_ns.load(Relaxed),
        }
    }

    /// Admits a packet of `bytes` relayed bytes at `now_ns` (CLOCK_MONOTONIC) if both rates
    /// allow it, spending its cost; otherwise spends nothing.
    #[inline(always)]
    pub fn admit(&self, now_ns: u64, bytes: u64) -> bool {
        let burst = atomic::load(&self.burst_ns);
        let packet_cost = atomic::load(&self.ns_per_packet);
        if packet_cost != 0 && !conform(&self.packet_tat_ns, now_ns, packet_cost, burst) {
            return false;
        }
        let ps = atomic::load(&self.ps_per_byte);
        if ps != 0 && !conform(&self.bit_tat_ns, now_ns, bit_cost(bytes, ps), burst) {
            if packet_cost != 0 {
                // Give back the packet it will not send.
                atomic::fetch_sub(&self.packet_tat_ns, packet_cost);
            }
            return false;
        }
        true
    }

    /// Gives back what an admitted packet of `bytes` bytes spent: it was refused by another
    /// policer after this one let it through, and will not be sent.
    #[inline(always)]
    pub fn refund(&self, bytes: u64) {
        let packet_cost = atomic::load(&self.ns_per_packet);
        if packet_cost != 0 {
            atomic::fetch_sub(&self.packet_tat_ns, packet_cost);
        }
        let ps = atomic::load(&self.ps_per_byte);
        if ps != 0 {
            atomic::fetch_sub(&self.bit_tat_ns, bit_cost(bytes, ps));
        }
    }
}

/// The time `bytes` take at the rate, in ns; at least 1, so that a limit always advances.
#[inline(always)]
fn bit_cost(bytes: u64, ps_per_byte: u64) -> u64 {
    (bytes * ps_per_byte / 1000).max(1)
}

/// GCRA virtual scheduling on one TAT: the new TAT is `max(tat, now) + cost`, conforming if
/// it is at most `now + burst` (so a packet costing more than the burst never passes, as
/// with a token bucket that small).
#[inline(always)]
fn conform(tat: &AtomicU64, now: u64, cost: u64, burst: u64) -> bool {
    let mut old = atomic::load(tat);
    for _ in 0..CAS_TRIES {
        let new = old.max(now).saturating_add(cost);
        if new > now.saturating_add(burst) {
            return false;
        }
        match atomic::compare_exchange(tat, old, new) {
            Ok(_) => return true,
            Err(current) => old = current,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn policer(limit: Limit) -> Policer {
        let p = Policer::default();
        p.configure(limit);
        p
    }

    #[test]
    fn a_packet_rate_passes_the_burst_then_the_rate() {
        // 1000 pps (1 ms each), 10 ms of burst: 10 back to back, then one per ms.
        let p = policer(Limit {
            packets_per_sec: 1000,
            bits_per_sec: 0,
            burst_ns: 10 * MS,
        });
        let now = 1_000 * MS;
        let passed = (0..100).filter(|_| p.admit(now, 100)).count();
        assert_eq!(passed, 10);
        assert!(!p.admit(now + MS / 2, 100));
        // The TAT is 10 ms ahead of `now`; one more fits once that is 9 ms.
        assert!(p.admit(now + MS, 100));
        assert!(!p.admit(now + MS, 100));
    }

    #[test]
    fn long_run_bit_rate_is_exact() {
        // 1 Mbit/s in 1200-byte packets offered every 100 us for 10 s (96 Mbit/s offered).
        let p = policer(Limit {
            packets_per_sec: 0,
            bits_per_sec: 1_000_000,
            burst_ns: 100 * MS,
        });
        let passed = (0..100_000_u64)
            .filter(|i| p.admit(1 + i * 100_000, 1200))
            .count() as u64;
        let bits = passed * 9600;
        // 10 s at the rate, plus the burst (100 ms worth).
        let want = 10 * 1_000_000 + 100_000;
        assert!(bits.abs_diff(want) <= 2 * 9600, "{bits} vs {want}");
    }

    #[test]
    fn over_the_bit_rate_gives_back_the_packet_token() {
        // Packets are plentiful (1 per us), bits are not: the first 1000-byte packet fills
        // the bit limit's one-second burst, the next does not fit and must not spend a
        // packet slot.
        let p = policer(Limit {
            packets_per_sec: 1_000_000,
            bits_per_sec: 8000,
            burst_ns: 1_000 * MS,
        });
        assert!(p.admit(MS, 1000));
        let tat = p.packet_tat_ns.load(Relaxed);
        assert!(!p.admit(MS, 1000));
        assert_eq!(p.packet_tat_ns.load(Relaxed), tat);
    }

    #[test]
    fn a_refund_restores_the_budget() {
        // Room for exactly one 1000-byte packet in each limit.
        let p = policer(Limit {
            packets_per_sec: 1000,
            bits_per_sec: 8_000_000,
            burst_ns: MS,
        });
        assert!(p.admit(MS, 1000));
        p.refund(1000);
        assert!(
            p.admit(MS, 1000),
            "the refunded packet's slot is free again"
        );
        assert!(!p.admit(MS, 1000));
    }

    #[test]
    fn unset_limits_admit_everything_and_zero_rates_mean_none() {
        let p = Policer::default();
        assert!((0..1000).all(|i| p.admit(i, 65_535)));
        let q = policer(Limit {
            packets_per_sec: 0,
            bits_per_sec: 0,
            burst_ns: 5,
        });
        assert!(q.admit(0, 1));
    }

    #[test]
    fn a_limit_reads_back_as_configured() {
        for limit in [
            Limit {
                packets_per_sec: 1000,
                bits_per_sec: 2_000_000,
                burst_ns: 250 * MS,
            },
            Limit {
                packets_per_sec: 0,
                bits_per_sec: 8_000_000_000,
                burst_ns: 0,
            },
            Limit::default(),
        ] {
            assert_eq!(policer(limit).limit(), limit);
        }
    }

    #[test]
    fn survives_extreme_clocks_and_sizes() {
        let p = policer(Limit {
            packets_per_sec: 1,
            bits_per_sec: 1,
            burst_ns: u64::MAX,
        });
        assert!(p.admit(u64::MAX, 65_535));
        assert!(
            p.admit(0, 65_535),
            "a clock far behind the TAT within a huge burst"
        );
        let q = policer(Limit {
            packets_per_sec: u64::MAX,
            bits_per_sec: u64::MAX,
            burst_ns: 0,
        });
        assert!(q.admit(0, 1));
    }
}
