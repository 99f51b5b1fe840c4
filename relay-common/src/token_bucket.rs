#![expect(
    clippy::inline_always,
    reason = "inlined into the XDP program in the kernel"
)]
//! Token-bucket arithmetic shared by the userspace data path and (later) the XDP program:
//! integer only, no overflow, no division by a value that can be zero.

/// A bucket's state: tokens left and when it was last refilled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens available now (bits for a bit-rate limit, packets for a packet-rate limit).
    pub tokens: u64,
    /// Monotonic time of the last refill, nanoseconds.
    pub last_ns: u64,
}

const _: () = assert!(size_of::<TokenBucket>() == 16);

const NS_PER_SEC: u64 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket.
    pub const fn full(burst: u64, now_ns: u64) -> Self {
        Self {
            tokens: burst,
            last_ns: now_ns,
        }
    }

    /// Refills at `rate` tokens per second up to `burst`, then takes `cost` tokens if there
    /// are enough. Returns whether the cost was paid (the packet may go).
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, cost: u64, rate: u64, burst: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        // A zero rate never refills.
        if let Some(fill_ns) = burst.saturating_mul(NS_PER_SEC).checked_div(rate) {
            // Past the time that fills the bucket from empty, it is full: this bound also
            // keeps `elapsed * rate` below `burst * 1e9`, far from overflow for any real burst.
            if elapsed >= fill_ns {
                self.tokens = burst;
                self.last_ns = now_ns;
            } else {
                let added = elapsed * rate / NS_PER_SEC;
                if added > 0 {
                    self.tokens = (self.tokens + added).min(burst);
                    // Keep the remainder: advance only by the time the added tokens cost.
                    self.last_ns += added * NS_PER_SEC / rate;
                }
            }
        }
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_burst_then_the_rate() {
        // 8000 bit/s, burst 8000 bits: 1000-byte packets.
        let mut b = TokenBucket::full(8000, 0);
        assert!(b.take(0, 8000, 8000, 8000));
        assert!(!b.take(0, 8000, 8000, 8000));
        assert!(!b.take(NS_PER_SEC / 2, 8000, 8000, 8000), "half refilled");
        assert!(
            b.take(NS_PER_SEC, 8000, 8000, 8000),
            "refilled after a second"
        );
    }

    #[test]
    fn long_run_rate_is_exact_with_small_steps() {
        // 1 Mbit/s in 1200-byte packets offered every 100 us for 10 s (96 Mbit/s offered).
        let (rate, burst, cost) = (1_000_000, 100_000, 9600);
        let mut b = TokenBucket::full(burst, 0);
        let passed = (0..100_000_u64)
            .filter(|i| b.take(i * 100_000, cost, rate, burst))
            .count() as u64;
        let bits = passed * cost;
        // 10 s at the rate, plus the initial burst, within one packet.
        assert!(bits.abs_diff(10 * rate + burst) <= cost, "{bits}");
    }

    #[test]
    fn survives_clock_jumps_and_zero_rates() {
        let mut b = TokenBucket::full(10, 1000);
        assert!(
            b.take(0, 1, 5, 10),
            "time going backwards does not underflow"
        );
        assert!(b.take(u64::MAX, 10, u64::MAX, 10));
        let mut z = TokenBucket::full(3, 0);
        assert!(z.take(u64::MAX, 3, 0, 3));
        assert!(!z.take(u64::MAX, 1, 0, 3), "a zero rate never refills");
    }
}
