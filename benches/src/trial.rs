//! One trial (a load at one offered rate for a while) and the search for the saturation
//! point: the highest offered rate a path forwards with less than 0.1% loss.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;
use xtask::lab::{Host, Lab};

use crate::{
    cpu,
    generator::{Media, Schedule, Sender, Sent},
    receiver::{Framing, Keyed, Percentiles, Receiver, Tally},
    wire::Template,
};

/// Saturation: the highest rate with less loss than this (the 0.1%).
pub const MAX_LOSS: f64 = 0.001;
/// The generator kept its schedule if its last packet left no later than this share of the
/// trial behind time.
const MAX_LAG: f64 = 0.02;

/// Where a trial's load goes: frames from the sender, tallied by the receiver.
pub struct Path<'a> {
    /// One sending thread each, the streams shared out among them: on veth, whatever the
    /// path does with a packet runs in the sender's softirq, on the sender's CPU.
    pub senders: &'a [Sender],
    pub receiver: &'a Receiver,
    /// The receiver's host, whose namespace's error counters it reads.
    pub lab: &'a Lab,
    pub receiver_host: Host,
    pub templates: &'a [Template],
    pub media: Media,
    /// What is in front of the probe on arrival (a relay removes the ChannelData header on
    /// its way to a peer, and frames it anew on its way to a client).
    pub framing: Framing,
    /// Copies of each packet the path delivers: a room's subscribers, 1 elsewhere. Rates
    /// and counts of a trial are copies (packets sent times copies).
    pub copies: usize,
    /// Whether the receiver tells streams apart by probe or by socket (one per subscriber).
    pub keyed: Keyed,
    /// The senders on CPU 0 (where the system under test is pinned too), the receiver on
    /// CPU 1: the system gets one core, as one publisher's flow gets one NIC queue's CPU.
    pub one_core: bool,
    /// The process under test, whose own CPU time is measured too.
    pub watch: Option<u32>,
}

/// The senders' shares of `path`'s streams at `rate_pps` packets sent in all: contiguous,
/// each at its share of the rate; (first stream, its templates, schedule, packets).
fn shares<'a>(
    path: &Path<'a>,
    rate_pps: f64,
    timing: Timing,
) -> Vec<(usize, &'a [Template], Schedule, u64)> {
    let streams = path.templates.len();
    let share = streams.div_ceil(path.senders.len().clamp(1, streams.max(1)));
    path.templates
        .chunks(share.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            let rate = rate_pps * chunk.len() as f64 / streams as f64;
            let schedule = Schedule::new(path.media, chunk.len(), rate);
            let total = schedule.packets(timing.warmup + timing.duration);
            (i * share, chunk, schedule, total)
        })
        .collect()
}

/// How long trials last.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    /// Sent before the measurement window opens: latencies and CPU from then on only.
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one trial measured.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub offered_pps: f64,
    /// Copies each packet sent should arrive as (see [`Path::copies`]).
    pub copies: u64,
    /// Packets sent times copies: what should have arrived.
    pub sent: u64,
    /// Sent over the time the generator took to send it.
    pub sent_pps: f64,
    pub received: u64,
    /// Arrived too late to count (see [`crate::receiver::LATE`]): lost to a real-time
    /// receiver, and counted in `lost`.
    pub late: u64,
    pub lost: u64,
    pub loss: f64,
    pub reordered: u64,
    /// Received per second of the trial.
    pub delivered_pps: f64,
    /// One-way latency of what was sent in the window, microseconds.
    pub latency_us: Option<Percentiles>,
    /// The measurement window: seconds, machine CPU-seconds busy, packets delivered.
    pub window_secs: f64,
    pub busy_cpu_secs: f64,
    /// CPU-seconds of the process under test in the window (its threads' run time).
    pub process_cpu_secs: Option<f64>,
    pub window_delivered: u64,
    /// The receiver's socket overflowed: the receiving end, not the path, dropped these.
    pub receiver_drops: u64,
    pub checksum_errors: u64,
    /// Arrived without the framing expected (see [`Framing`]): not counted as received.
    pub misframed: u64,
    /// The generator could not keep its schedule: the offered rate was not offered.
    pub generator_limited: bool,
    /// The sender fell behind because of what the path does with its packets: on veth a
    /// relay's kernel work runs in the sender's softirq, and with one packet sent per
    /// `copies` delivered, the generator's own share is too small to be the limit. Such a
    /// trial failed: the path could not take the rate.
    pub path_behind: bool,
}

impl Trial {
    /// Forwarded with less than [`MAX_LOSS`] loss.
    pub fn clean(&self) -> bool {
        self.sent > 0 && self.loss < MAX_LOSS && !self.path_behind
    }

    /// Busy CPUs (CPU-seconds per second) over the window.
    pub fn busy_cpus(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.busy_cpu_secs / self.window_secs
        } else {
            0.0
        }
    }

    /// Packets delivered per second of the window.
    pub fn window_pps(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.window_delivered as f64 / self.window_secs
        } else {
            0.0
        }
    }
}

/// Runs one trial of `path` at `rate_pps` (copies delivered: the generator sends
/// `rate_pps / copies`), numbered `trial` so that stragglers of other trials are told apart.
pub fn run(path: &Path<'_>, rate_pps: f64, timing: Timing, trial: u32) -> anyhow::Result<Trial> {
    let streams = path.templates.len();
    let copies = path.copies.max(1);
    let parts = shares(path, rate_pps / copies as f64, timing);
    let total = parts.iter().map(|p| p.3).sum::<u64>() * copies as u64;
    path.receiver.drain()?;
    // A few ms ahead, so that the receiver is waiting before the first packet.
    let start = cpu::realtime_ns() + 5_000_000;
    let window = [
        start + timing.warmup.as_nanos() as u64,
        start + (timing.warmup + timing.duration).as_nanos() as u64,
    ];
    let keys = match path.keyed {
        Keyed::Stream => streams,
        Keyed::Socket => path.receiver.sockets(),
    };
    let mut tally = Tally::new(trial, (path.framing, path.keyed), keys, window, total);
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|scope| {
        let receiving = scope.spawn(|| {
            if path.one_core {
                cpu::pin_thread(1)?;
            }
            path.lab
                .in_netns(path.receiver_host, || path.receiver.run(&mut tally, &stop))?
                .context("receiving")
        });
        let sending: Vec<_> = parts
            .iter()
            .zip(path.senders)
            .map(|((first, chunk, schedule, total), sender)| {
                scope.spawn(move || {
                    if path.one_core {
                        cpu::pin_thread(0)?;
                    }
                    sender.run(
                        chunk,
                        *first as u32,
                        schedule,
                        *total,
                        trial,
                        start,
                        // The sender of the first share samples the window for all.
                        (*first == 0).then_some((window, path.watch)),
                    )
                })
            })
            .collect();
        let mut sent = Sent::default();
        let mut result = Ok(());
        for (i, s) in sending.into_iter().enumerate() {
            match s.join().map_err(|_| anyhow::anyhow!("sender panicked"))? {
                Ok(s) => {
                    sent.packets += s.packets;
                    sent.refused += s.refused;
                    sent.lag_ns = sent.lag_ns.max(s.lag_ns);
                    sent.span_ns = sent.span_ns.max(s.span_ns);
                    if i == 0 {
                        sent.window = s.window;
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        stop.store(true, Ordering::Release);
        receiving
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        result.context("sending").map(|()| sent)
    })?;
    let [Some(open), Some(close)] = sent.window else {
        unreachable!("the sender samples both ends of the window")
    };
    let expected = sent.packets * copies as u64;
    let lost = expected.saturating_sub(tally.received);
    let secs = (timing.warmup + timing.duration).as_secs_f64();
    let behind = sent.lag_ns as f64 > MAX_LAG * secs * 1e9;
    Ok(Trial {
        offered_pps: rate_pps,
        copies: copies as u64,
        sent: expected,
        sent_pps: expected as f64 / (sent.span_ns.max(1) as f64 / 1e9),
        received: tally.received,
        late: tally.late,
        lost,
        loss: lost as f64 / expected.max(1) as f64,
        reordered: tally.reordered,
        // Over the planned time, or the time the generator took when it fell behind.
        delivered_pps: tally.received as f64 / secs.max(sent.span_ns as f64 / 1e9),
        latency_us: tally.latency(),
        window_secs: open.secs(&close),
        busy_cpu_secs: open.busy_secs(&close),
        process_cpu_secs: open.process_secs(&close),
        window_delivered: tally.in_window,
        receiver_drops: tally.rcvbuf_errors,
        checksum_errors: tally.checksum_errors,
        misframed: tally.misframed,
        generator_limited: behind && copies == 1,
        path_behind: behind && copies > 1,
    })
}

/// How the saturation search goes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Search {
    /// First rate tried.
    pub start_pps: f64,
    /// Never offered more.
    pub max_pps: f64,
    /// Bisection steps once a clean and a lossy rate bracket the point.
    pub steps: u32,
}

/// The search's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Saturation {
    /// The highest rate found clean, if any.
    pub rate_pps: Option<f64>,
    /// The generator, not the path, was the limit: it could not offer more than this clean.
    pub generator_limited: bool,
    pub trials: Vec<Trial>,
}

/// Doubles the rate from `start_pps` until a trial loses 0.1% or more (or the generator
/// falls behind), then bisects between the last clean and the first failing rate.
pub fn saturation(
    search: Search,
    mut trial: impl FnMut(f64) -> anyhow::Result<Trial>,
) -> anyhow::Result<Saturation> {
    let mut trials = Vec::new();
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut generator_limited = false;
    let mut rate = search.start_pps;
    loop {
        let t = trial(rate)?;
        let (clean, limited) = (t.clean(), t.generator_limited);
        trials.push(t);
        if limited {
            generator_limited = true;
            bad = Some(rate);
            break;
        }
        if !clean {
            bad = Some(rate);
            break;
        }
        good = Some(rate);
        if rate >= search.max_pps {
            break;
        }
        rate = (rate * 2.0).min(search.max_pps);
    }
    if let Some(mut hi) = bad {
        let mut lo = good.unwrap_or(0.0);
        for _ in 0..search.steps {
            let mid = f64::midpoint(lo, hi);
            let t = trial(mid)?;
            if t.clean() && !t.generator_limited {
                lo = mid;
                good = Some(mid);
            } else {
                hi = mid;
            }
            trials.push(t);
        }
    }
    // The generator limited the search only if it was still the limit at the end: a path
    // that also lost packets below that rate is itself the limit.
    generator_limited &= trials
        .iter()
        .filter(|t| !t.generator_limited)
        .all(Trial::clean);
    Ok(Saturation {
        rate_pps: good,
        generator_limited,
        trials,
    })
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that forwards everything up to `capacity` pps and loses the excess.
    fn fake(capacity: f64, generator_max: f64) -> impl FnMut(f64) -> anyhow::Result<Trial> {
        move |rate| {
            let sent = rate as u64;
            let received = rate.min(capacity) as u64;
            let lost = sent - received;
            Ok(Trial {
                offered_pps: rate,
                copies: 1,
                sent,
                sent_pps: rate,
                received,
                late: 0,
                lost,
                loss: lost as f64 / sent as f64,
                reordered: 0,
                delivered_pps: received as f64,
                latency_us: None,
                window_secs: 1.0,
                busy_cpu_secs: 0.0,
                process_cpu_secs: None,
                window_delivered: received,
                receiver_drops: 0,
                checksum_errors: 0,
                misframed: 0,
                generator_limited: rate > generator_max,
                path_behind: false,
            })
        }
    }

    const SEARCH: Search = Search {
        start_pps: 10_000.0,
        max_pps: 10_000_000.0,
        steps: 6,
    };

    #[test]
    fn brackets_and_bisects_to_the_capacity() {
        let s = saturation(SEARCH, fake(100_000.0, f64::INFINITY)).unwrap();
        let rate = s.rate_pps.unwrap();
        // Doubling: 10k..80k clean, 160k lossy; six halvings of the 80k gap: within 1.25k.
        assert!((98_750.0..=100_000.0).contains(&rate), "{rate}");
        assert!(!s.generator_limited);
        assert_eq!(s.trials.len(), 5 + 6);
    }

    #[test]
    fn says_when_the_generator_was_the_limit() {
        let s = saturation(SEARCH, fake(f64::INFINITY, 50_000.0)).unwrap();
        assert!(s.generator_limited);
        assert!(s.rate_pps.unwrap() <= 50_000.0);
    }

    #[test]
    fn a_lossy_path_below_the_generator_limit_is_the_limit() {
        let s = saturation(SEARCH, fake(30_000.0, 50_000.0)).unwrap();
        assert!(!s.generator_limited);
        assert!(s.rate_pps.unwrap() <= 30_000.0);
    }

    #[test]
    fn searches_below_the_first_rate() {
        let s = saturation(SEARCH, fake(1_000.0, f64::INFINITY)).unwrap();
        let rate = s.rate_pps.unwrap();
        assert!((500.0..=1_000.0).contains(&rate), "{rate}");
        let none = saturation(SEARCH, fake(10.0, f64::INFINITY)).unwrap();
        assert_eq!(none.rate_pps, None, "nothing clean within the steps");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
