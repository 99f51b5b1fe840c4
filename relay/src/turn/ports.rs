//! Relayed transport addresses: which ports of each relay IP are in use (RFC 8656 section
//! 7.2 asks for ports chosen at random from the range, and EVEN-PORT for even ones).

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// A released port's socket is closed by the data path, asynchronously: the port rests this
/// long before it is picked again, so that a new allocation's bind does not meet the old
/// socket (EADDRINUSE, 508).
const QUARANTINE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    in_use: HashSet<SocketAddr>,
    /// Released ports still resting, oldest first; they stay in `in_use` until then.
    resting: VecDeque<(Instant, SocketAddr)>,
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> Self {
        Self {
            min,
            max,
            in_use: HashSet::new(),
            resting: VecDeque::new(),
        }
    }

    /// Picks a free port on `ip`: random first (unpredictable to off-path attackers), then
    /// a scan so that a nearly full range still finds the last free ports. `even` asks for
    /// an even port; `pair` also needs port + 1 free (EVEN-PORT with the R bit).
    pub fn pick(
        &mut self,
        ip: IpAddr,
        even: bool,
        pair: bool,
        now: Instant,
        rng: &mut impl rand::Rng,
    ) -> Option<u16> {
        while let Some((_, addr)) = self.resting.front().filter(|(until, _)| *until <= now) {
            self.in_use.remove(addr);
            self.resting.pop_front();
        }
        let fits = |pool: &Self, port: u16| {
            (!even || port.is_multiple_of(2))
                && !pool.in_use.contains(&SocketAddr::new(ip, port))
                && (!pair
                    || (port < pool.max && !pool.in_use.contains(&SocketAddr::new(ip, port + 1))))
        };
        for _ in 0..32 {
            let port = rng.random_range(self.min..=self.max);
            if fits(self, port) {
                return Some(port);
            }
        }
        let start = rng.random_range(self.min..=self.max);
        (start..=self.max)
            .chain(self.min..start)
            .find(|p| fits(self, *p))
    }

    pub fn take(&mut self, addr: SocketAddr) {
        self.in_use.insert(addr);
    }

    /// `addr`'s socket is being closed: free once it has rested.
    pub fn release(&mut self, addr: SocketAddr, now: Instant) {
        if self.in_use.contains(&addr) {
            self.resting.push_back((now + QUARANTINE, addr));
        }
    }

    /// `addr` was taken but its socket never opened (the bind failed): free now.
    pub fn free(&mut self, addr: SocketAddr) {
        self.in_use.remove(&addr);
        self.resting.retain(|(_, a)| *a != addr);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn picks_free_even_and_paired_ports_until_the_range_is_full() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let mut pool = PortPool::new(50000, 50009);
        let mut got = Vec::new();
        while let Some(p) = pool.pick(ip, false, false, now, &mut rng) {
            pool.take(SocketAddr::new(ip, p));
            got.push(p);
        }
        got.sort_unstable();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        pool.free(SocketAddr::new(ip, 50004));
        pool.free(SocketAddr::new(ip, 50005));
        assert_eq!(pool.pick(ip, true, true, now, &mut rng), Some(50004));
        pool.free(SocketAddr::new(ip, 50007));
        assert_eq!(pool.pick(ip, true, false, now, &mut rng), Some(50004));
        assert_eq!(
            pool.pick(ip, false, false, now, &mut rng)
                .map(|p| p == 50004 || p == 50005 || p == 50007),
            Some(true)
        );
    }

    /// A released port's old socket may still be open in the data path: it rests first.
    #[test]
    fn released_ports_rest_before_they_are_picked_again() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let mut pool = PortPool::new(50000, 50000);
        let port = pool.pick(ip, false, false, now, &mut rng).unwrap();
        pool.take(SocketAddr::new(ip, port));
        pool.release(SocketAddr::new(ip, port), now);
        assert_eq!(
            pool.pick(ip, false, false, now + QUARANTINE / 2, &mut rng),
            None
        );
        assert_eq!(
            pool.pick(ip, false, false, now + QUARANTINE, &mut rng),
            Some(port)
        );
    }
}
