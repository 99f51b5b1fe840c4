//! Relay is not an amplifier. Over UDP a STUN server answers requests whose source address
//! nobody has checked, and some answers are larger than the request: a 20-byte Allocate
//! without credentials gets a 401 of about 100 bytes, a 20-byte Binding request a success
//! of about 50 (RFC 8489 section 16.1.2 and RFC 8656 section 21.1 name the risk). So the
//! answers that need no credentials (Binding, 401 and 438, 400, 420) are limited per source
//! prefix, a /24 for IPv4 and a /64 for IPv6, the smallest blocks a victim's network is
//! likely to hold. Answers to authenticated requests are never limited: sending one takes
//! a user's key. Streams (TCP, TLS) are not limited here: their handshake proves the
//! source.
//!
//! Each prefix gets a token bucket in its GCRA form (as the data path's policers): one
//! instant per prefix, the "theoretical arrival time" by which the rate has paid for what
//! was answered. The table is bounded; when it is full of busy prefixes, new prefixes share
//! one bucket, so a spoofed flood over many prefixes is limited too (it fails closed).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// Prefixes the table tracks at most (about 3 MiB).
const MAX_PREFIXES: usize = 65_536;

/// How often a full table is swept of prefixes whose bucket has refilled: at most once a
/// second, so that a flood of new prefixes cannot make every answer a sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How many answers a prefix may get back to back, in seconds at the rate.
const BURST_SECONDS: u32 = 5;

/// The limit on unauthenticated answers over UDP, per source prefix.
#[derive(Debug)]
pub(super) struct ReflectionLimit {
    /// Time the rate needs for one answer (`None`: no limit).
    cost: Option<Duration>,
    /// How far ahead of now a bucket's arrival time may run: the burst.
    tolerance: Duration,
    /// Per prefix: the instant by which the rate has paid for its answers so far.
    tats: HashMap<IpAddr, Instant>,
    /// The bucket new prefixes share while the table is full.
    overflow: Option<Instant>,
    next_sweep: Option<Instant>,
    capacity: usize,
}

impl ReflectionLimit {
    /// `per_second` answers to each prefix, bursts of [`BURST_SECONDS`] of them; 0: none.
    pub(super) fn new(per_second: u32) -> Self {
        Self::with_capacity(per_second, MAX_PREFIXES)
    }

    fn with_capacity(per_second: u32, capacity: usize) -> Self {
        let cost = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        Self {
            cost,
            tolerance: Duration::from_secs(u64::from(BURST_SECONDS)),
            tats: HashMap::new(),
            overflow: None,
            next_sweep: None,
            capacity,
        }
    }

    /// Whether an unauthenticated answer may go to `ip` at `now`; spends its cost if so.
    pub(super) fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(cost) = self.cost else {
            return true;
        };
        let prefix = prefix(ip);
        let known = self.tats.contains_key(&prefix);
        if !known && self.tats.len() >= self.capacity {
            self.sweep(now);
        }
        let tat = if known || self.tats.len() < self.capacity {
            self.tats.entry(prefix).or_insert(now)
        } else {
            self.overflow.get_or_insert(now)
        };
        let next = (*tat).max(now) + cost;
        if next.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        *tat = next;
        true
    }

    /// Forgets prefixes whose bucket is full again: they are as good as new.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        self.tats.retain(|_, tat| *tat > now);
    }
}

/// The source prefix an answer is limited by: IPv4 /24, IPv6 /64 (IPv4-mapped IPv6 as
/// IPv4).
fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & !0xff)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_prefix_gets_its_burst_then_the_rate() {
        let now = Instant::now();
        let mut limit = ReflectionLimit::new(10);
        // A burst of 5 s at 10 per second, from anywhere in the /24.
        let burst = (0..100)
            .filter(|i| limit.admit(ip(&format!("192.0.2.{i}")), now))
            .count();
        assert_eq!(burst, 50);
        // Another /24 has its own bucket.
        assert!(limit.admit(ip("192.0.3.1"), now));
        // A tenth of a second later, one more.
        let later = now + Duration::from_millis(100);
        assert!(limit.admit(ip("192.0.2.7"), later));
        assert!(!limit.admit(ip("192.0.2.7"), later));
    }

    #[test]
    fn ipv6_is_limited_by_its_64() {
        let now = Instant::now();
        let mut limit = ReflectionLimit::new(1);
        let admitted = (0..20)
            .filter(|i| limit.admit(ip(&format!("2001:db8:0:1:{i}::1")), now))
            .count();
        assert_eq!(admitted, 5);
        assert!(limit.admit(ip("2001:db8:0:2::1"), now));
        // IPv4-mapped addresses share their IPv4 /24's bucket.
        assert!(limit.admit(ip("198.51.100.1"), now));
        let mapped = (0..10)
            .filter(|_| limit.admit(ip("::ffff:198.51.100.200"), now))
            .count();
        assert_eq!(mapped, 4);
    }

    #[test]
    fn a_full_table_shares_one_bucket_and_forgets_the_quiet() {
        let now = Instant::now();
        let mut limit = ReflectionLimit::with_capacity(1, 4);
        for i in 0..4 {
            assert!(limit.admit(ip(&format!("10.0.{i}.1")), now));
        }
        // New prefixes share the overflow bucket: a flood over many prefixes gets one
        // prefix's worth of answers.
        let spread = (10..100)
            .filter(|i| limit.admit(ip(&format!("10.0.{i}.1")), now))
            .count();
        assert_eq!(spread, 5);
        // Once the early prefixes' buckets refill they are forgotten, and a new prefix gets
        // a bucket of its own again.
        let later = now + Duration::from_secs(2);
        assert!(limit.admit(ip("10.1.0.1"), later));
        assert_eq!(limit.tats.len(), 1);
    }

    #[test]
    fn zero_means_no_limit() {
        let now = Instant::now();
        let mut limit = ReflectionLimit::new(0);
        assert!((0..10_000).all(|_| limit.admit(ip("192.0.2.1"), now)));
    }
}
