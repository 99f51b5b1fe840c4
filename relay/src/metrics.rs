//! What a running relay shows Prometheus and Kubernetes: live counts that each plane keeps
//! (the UDP data path, the control task), the XDP program's verdicts read from its pinned
//! map at scrape time, the process's own figures, and whether the relay is ready.
//!
//! Encoded by the `prometheus-client` crate, in the Prometheus text format 0.0.4 by
//! default and in OpenMetrics when the scraper asks for it (`Accept`). Names follow
//! Prometheus's conventions: a `relay_` prefix, base units, `_total` on counters, and
//! labels from small fixed sets (no per-user or per-address label).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use relay_common::Verdict;

use crate::{
    dataplane::{PinnedCounters, Pins},
    policers::Policers,
    turn::answers::{SETUP_BUCKETS, SetupTimes},
};

/// The UDP data path's counts, published by its thread after each batch it handles (it
/// keeps plain counters of its own and copies them here: a few stores per batch).
#[derive(Debug, Default)]
pub struct DatapathCounts {
    pub channel_to_peer: AtomicU64,
    pub channel_to_client: AtomicU64,
    pub room_forwarded: AtomicU64,
    pub handed_up: AtomicU64,
    pub over_limit: AtomicU64,
    pub unpermitted: AtomicU64,
    pub control_full: AtomicU64,
    pub send_errors: AtomicU64,
    pub truncated: AtomicU64,
}

/// The kernel's tables whose fill is shown, with their sizes: a full one leaves flows,
/// permissions or routes to userspace (or unguarded), which costs performance and, for
/// permissions, the kernel's own check.
pub const MAPS: [(&str, u32); 5] = [
    ("FLOWS", relay_common::flow::MAX_FLOWS),
    ("RELAYED", relay_common::permission::MAX_RELAYED),
    ("PERMISSIONS", relay_common::permission::MAX_PERMISSIONS),
    ("ROOM_ROUTES", relay_common::room::MAX_ROOM_ROUTES),
    ("POLICERS", relay_common::police::MAX_POLICERS),
];
/// Where `POLICERS` is in [`MAPS`].
pub const MAP_POLICERS: usize = 4;

/// Stores each value in its counter: how the planes publish what they counted.
pub fn store<'a>(pairs: impl IntoIterator<Item = (&'a AtomicU64, u64)>) {
    for (to, value) in pairs {
        to.store(value, Relaxed);
    }
}

/// The control task's counts, set after each turn.
#[derive(Debug, Default)]
pub struct ControlCounts {
    /// Allocations, permissions and channels held, by transport (`turn::Server::held`).
    pub held: [[AtomicU64; 3]; 3],
    /// Packets the kernel forwarded per tenant policer slot, summed once a second.
    pub tenant_forwarded: Mutex<std::collections::HashMap<u32, u64>>,
    pub rooms: AtomicU64,
    pub room_endpoints: AtomicU64,
    pub room_subscriptions: AtomicU64,
    /// What the TURN server dropped or refused (`turn::Stats`).
    pub turn_malformed: AtomicU64,
    pub turn_unpermitted: AtomicU64,
    pub turn_unauthorized: AtomicU64,
    pub turn_over_cap: AtomicU64,
    pub turn_withheld: AtomicU64,
    /// What the room core dropped (`room::Stats`).
    pub room_malformed: AtomicU64,
    pub room_foreign: AtomicU64,
    pub room_unknown_ssrc: AtomicU64,
    /// Entries in use of each of [`MAPS`], with a data plane.
    pub map_entries: [AtomicU64; MAPS.len()],
    /// The TURN server's responses by method and code, and its allocation setup times.
    pub answers: Mutex<Vec<(String, u16, u64)>>,
    pub setup_times: Mutex<SetupTimes>,
}

impl ControlCounts {
    /// Takes the TURN server's answers and setup times.
    pub fn set_answers(&self, answers: &crate::turn::answers::Answers, setup: &SetupTimes) {
        if let Ok(mut a) = self.answers.lock() {
            a.clear();
            a.extend(answers.iter());
        }
        if let Ok(mut s) = self.setup_times.lock() {
            s.clone_from(setup);
        }
    }

    /// Takes the TURN server's and the room core's figures.
    pub fn set(&self, turn: &crate::turn::Stats, rooms: &crate::room::Stats, counts: [usize; 3]) {
        store([
            (&self.rooms, counts[0] as u64),
            (&self.room_endpoints, counts[1] as u64),
            (&self.room_subscriptions, counts[2] as u64),
            (&self.turn_malformed, turn.malformed),
            (&self.turn_unpermitted, turn.unpermitted),
            (&self.turn_unauthorized, turn.unauthorized),
            (&self.turn_over_cap, turn.over_cap),
            (&self.turn_withheld, turn.withheld),
            (&self.room_malformed, rooms.malformed),
            (&self.room_foreign, rooms.foreign),
            (&self.room_unknown_ssrc, rooms.unknown_ssrc),
        ]);
    }
}

/// Everything a scrape reads, shared by the planes that write it.
#[derive(Debug, Default)]
pub struct Live {
    pub datapath: DatapathCounts,
    pub control: ControlCounts,
    /// Set once the relay serves (its ready line), cleared when it starts to stop.
    pub ready: AtomicBool,
    /// Where the data plane is pinned, when the relay runs one.
    pub pins: Option<Pins>,
    /// The tenants of the configuration: name, policer slot, limit.
    pub tenants: Vec<(String, u32, relay_common::police::Limit)>,
    /// The policers userspace spends (the kernel's, mapped, with XDP), for what the data
    /// path refused per tenant.
    pub policers: Option<Arc<Policers>>,
    /// The policy, for its decisions, errors and reloads.
    pub policy: Option<crate::policy::Shared>,
}

impl Live {
    pub fn new(pins: Option<Pins>) -> Arc<Self> {
        Arc::new(Self {
            pins,
            ..Self::default()
        })
    }

    /// What `/readyz` and `relay_ready` say: the relay serves and, when it runs a data
    /// plane, that data plane is still pinned; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Relaxed) {
            return Err("not ready\n".to_owned());
        }
        match &self.pins {
            Some(pins) if !pins.intact() => Err(format!(
                "not ready: the data plane pinned at {} is gone\n",
                pins.dir().display()
            )),
            _ => Ok(()),
        }
    }
}

/// The scrape: a registry whose one collector reads [`Live`] when asked.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

/// The media types of the two formats.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    pub fn new(live: Arc<Live>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(LiveCollector(live)));
        Self { registry }
    }

    /// The exposition, in OpenMetrics if `accept` (an `Accept` header) asks for it, in the
    /// Prometheus text format otherwise; with its media type.
    pub fn encode(&self, accept: Option<&str>) -> (String, &'static str) {
        let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
        let mut out = String::new();
        // Writing into a String cannot fail; a collector's error would be a bug here.
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = encoded {
            log::warn!("metrics: encoding failed: {e}");
        }
        (
            out,
            if openmetrics {
                OPENMETRICS_TEXT
            } else {
                PROMETHEUS_TEXT
            },
        )
    }
}

#[derive(Debug)]
struct LiveCollector(Arc<Live>);

/// One metric family: `name` with `help`, one value per label set (at least one: its type
/// is the values').
fn family<M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut values = values.into_iter().peekable();
    let Some(metric_type) = values.peek().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    typed_family(encoder, (name, help, metric_type), values)
}

/// [`family`] of a given type, described even with no value (no tenant configured: the
/// family is there, empty).
fn typed_family<M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, metric_type): (&str, &str, MetricType),
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: &AtomicU64) -> ConstCounter<u64> {
    ConstCounter::new(v.load(Relaxed))
}

fn label(key: &'static str, value: &str) -> Vec<(&'static str, String)> {
    vec![(key, value.to_owned())]
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = &self.0;
        datapath(&mut encoder, &live.datapath)?;
        control(&mut encoder, &live.control)?;
        answers(&mut encoder, &live.control)?;
        family(
            &mut encoder,
            "relay_ready",
            "1 once the relay serves (what /readyz answers), 0 before and while it stops.",
            [(
                Vec::new(),
                ConstGauge::new(i64::from(live.readiness().is_ok())),
            )],
        )?;
        let pinned = live
            .pins
            .as_ref()
            .and_then(|p| PinnedCounters::open(p).ok().flatten());
        if let Some(pinned) = &pinned {
            xdp(&mut encoder, pinned)?;
            maps(&mut encoder, &live.control)?;
        }
        tenants(&mut encoder, live, pinned.as_ref())?;
        if let Some(policy) = &live.policy {
            let (counts, revision) = {
                let p = crate::policy::lock(policy);
                (p.counts(), p.revision().to_owned())
            };
            self::policy(&mut encoder, &counts, &revision)?;
        }
        process(&mut encoder)
    }
}

fn datapath(encoder: &mut DescriptorEncoder, d: &DatapathCounts) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        "relay_user_forwarded_packets",
        "Datagrams the userspace data path forwarded by its tables, by what they were.",
        [
            (
                label("kind", "channel_to_peer"),
                counter(&d.channel_to_peer),
            ),
            (
                label("kind", "channel_to_client"),
                counter(&d.channel_to_client),
            ),
            (label("kind", "room"), counter(&d.room_forwarded)),
        ],
    )?;
    family(
        encoder,
        "relay_user_handed_up_packets",
        "Datagrams the userspace data path handed to the TURN server or the room core.",
        [(Vec::new(), counter(&d.handed_up))],
    )?;
    family(
        encoder,
        "relay_user_dropped_packets",
        "Datagrams the userspace data path dropped, by reason.",
        [
            (label("reason", "over_limit"), counter(&d.over_limit)),
            (label("reason", "unpermitted"), counter(&d.unpermitted)),
            (
                label("reason", "control_queue_full"),
                counter(&d.control_full),
            ),
            (label("reason", "send_error"), counter(&d.send_errors)),
            (label("reason", "truncated"), counter(&d.truncated)),
        ],
    )
}

/// The TURN server's responses by method and code, and how long allocations took.
fn answers(encoder: &mut DescriptorEncoder, c: &ControlCounts) -> Result<(), std::fmt::Error> {
    let answers = c.answers.lock().map(|a| a.clone()).unwrap_or_default();
    typed_family(
        encoder,
        (
            "relay_turn_responses",
            "Responses the TURN server sent, by method and code (200: success).",
            MetricType::Counter,
        ),
        answers.into_iter().map(|(method, code, n)| {
            (
                vec![("method", method), ("code", code.to_string())],
                ConstCounter::new(n),
            )
        }),
    )?;
    let setup = c.setup_times.lock().map(|s| s.clone()).unwrap_or_default();
    typed_family(
        encoder,
        (
            "relay_turn_allocation_setup_seconds",
            "From an authenticated Allocate to its success response (relayed sockets bound).",
            MetricType::Histogram,
        ),
        [(Vec::new(), Setup(setup))],
    )
}

/// A histogram of [`SetupTimes`], as the text formats write one.
#[derive(Debug)]
struct Setup(SetupTimes);

impl prometheus_client::encoding::EncodeMetric for Setup {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative (the encoder sums them); the last is +Inf.
        let buckets: Vec<(f64, u64)> = SETUP_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.0.buckets)
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum_secs,
            self.0.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn control(encoder: &mut DescriptorEncoder, c: &ControlCounts) -> Result<(), std::fmt::Error> {
    for (i, (name, help)) in [
        (
            "relay_turn_allocations",
            "TURN allocations held, by the client's transport.",
        ),
        (
            "relay_turn_permissions",
            "Live permissions (peer IPs) of all allocations, by transport.",
        ),
        (
            "relay_turn_channels",
            "Live channels of all allocations, by transport.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let by_transport = ["udp", "tcp", "tls"].iter().zip(&c.held).map(|(t, row)| {
            let n = i64::try_from(row[i].load(Relaxed)).unwrap_or(i64::MAX);
            (label("transport", t), ConstGauge::new(n))
        });
        family(encoder, name, help, by_transport)?;
    }
    for (name, help, value) in [
        ("relay_rooms", "Media rooms.", &c.rooms),
        (
            "relay_room_endpoints",
            "Endpoints of all rooms.",
            &c.room_endpoints,
        ),
        (
            "relay_room_subscriptions",
            "Subscriptions of all rooms.",
            &c.room_subscriptions,
        ),
    ] {
        let gauge = ConstGauge::new(i64::try_from(value.load(Relaxed)).unwrap_or(i64::MAX));
        family(encoder, name, help, [(Vec::new(), gauge)])?;
    }
    family(
        encoder,
        "relay_turn_dropped_packets",
        "Datagrams the TURN server dropped, by reason.",
        [
            (label("reason", "malformed"), counter(&c.turn_malformed)),
            (label("reason", "unpermitted"), counter(&c.turn_unpermitted)),
        ],
    )?;
    family(
        encoder,
        "relay_turn_refused_requests",
        "Requests the TURN server refused, by reason (credentials: 401, 438, 441; over_cap: 508 over an allocation's permission or channel cap).",
        [
            (
                label("reason", "credentials"),
                counter(&c.turn_unauthorized),
            ),
            (label("reason", "over_cap"), counter(&c.turn_over_cap)),
        ],
    )?;
    family(
        encoder,
        "relay_turn_withheld_answers",
        "Answers to unauthenticated requests not sent, over their source prefix's rate.",
        [(Vec::new(), counter(&c.turn_withheld))],
    )?;
    family(
        encoder,
        "relay_room_dropped_packets",
        "Packets the room core dropped, by reason.",
        [
            (label("reason", "malformed"), counter(&c.room_malformed)),
            (label("reason", "foreign"), counter(&c.room_foreign)),
            (
                label("reason", "unknown_ssrc"),
                counter(&c.room_unknown_ssrc),
            ),
        ],
    )
}

/// Each tenant's limit, and the packets its policer refused, in the kernel and in
/// userspace (tenant names come from the configuration: a small, fixed label set).
fn tenants(
    encoder: &mut DescriptorEncoder,
    live: &Live,
    pinned: Option<&PinnedCounters>,
) -> Result<(), std::fmt::Error> {
    let refused = live.tenants.iter().flat_map(|(name, slot, _)| {
        let kernel = pinned
            .and_then(|p| p.policed(*slot).ok())
            .map(|c| (tenant_path(name, "xdp"), ConstCounter::new(c.packets)));
        let user = live.policers.as_ref().map(|p| {
            (
                tenant_path(name, "user"),
                ConstCounter::new(p.dropped(*slot)),
            )
        });
        kernel.into_iter().chain(user)
    });
    let forwarded_xdp = live
        .control
        .tenant_forwarded
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    let forwarded = live.tenants.iter().flat_map(|(name, slot, _)| {
        let kernel = pinned.map(|_| {
            let n = forwarded_xdp.get(slot).copied().unwrap_or(0);
            (tenant_path(name, "xdp"), ConstCounter::new(n))
        });
        let user = (live.policers.as_ref()).map(|p| {
            (
                tenant_path(name, "user"),
                ConstCounter::new(p.passed(*slot)),
            )
        });
        kernel.into_iter().chain(user)
    });
    typed_family(
        encoder,
        (
            "relay_tenant_forwarded_packets",
            "Packets of a tenant's channels and rooms forwarded within its limit, by where (xdp: summed each second; user).",
            MetricType::Counter,
        ),
        forwarded,
    )?;
    typed_family(
        encoder,
        (
            "relay_tenant_policed_packets",
            "Packets over a tenant's limit, dropped, by tenant and by where (xdp, user).",
            MetricType::Counter,
        ),
        refused,
    )?;
    let limit = |f: fn(&relay_common::police::Limit) -> u64| {
        live.tenants.iter().map(move |(name, _, l)| {
            (
                label("tenant", name),
                ConstGauge::new(i64::try_from(f(l)).unwrap_or(i64::MAX)),
            )
        })
    };
    typed_family(
        encoder,
        (
            "relay_tenant_limit_packets_per_second",
            "A tenant's packet rate limit (0: none).",
            MetricType::Gauge,
        ),
        limit(|l| l.packets_per_sec),
    )?;
    typed_family(
        encoder,
        (
            "relay_tenant_limit_bits_per_second",
            "A tenant's bit rate limit (0: none).",
            MetricType::Gauge,
        ),
        limit(|l| l.bits_per_sec),
    )
}

fn tenant_path(tenant: &str, path: &str) -> Vec<(&'static str, String)> {
    vec![("tenant", tenant.to_owned()), ("path", path.to_owned())]
}

/// How full the kernel's tables are: entries in use, and how many they hold.
fn maps(encoder: &mut DescriptorEncoder, c: &ControlCounts) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        "relay_bpf_map_entries",
        "Entries in use in the XDP program's tables, as the daemon installed them.",
        MAPS.iter().zip(&c.map_entries).map(|((name, _), used)| {
            let used = i64::try_from(used.load(Relaxed)).unwrap_or(i64::MAX);
            (label("map", name), ConstGauge::new(used))
        }),
    )?;
    family(
        encoder,
        "relay_bpf_map_capacity",
        "Entries the XDP program's tables hold.",
        MAPS.iter()
            .map(|(name, max)| (label("map", name), ConstGauge::new(i64::from(*max)))),
    )
}

/// The XDP program's verdicts, read from its pinned map.
fn xdp(encoder: &mut DescriptorEncoder, pinned: &PinnedCounters) -> Result<(), std::fmt::Error> {
    let Ok(verdicts) = pinned.verdicts() else {
        return Ok(());
    };
    let verdicts = &verdicts;
    let by_verdict = |f: fn(relay_common::Counters) -> u64| {
        Verdict::ALL.into_iter().map(move |v| {
            (
                label("verdict", v.name()),
                ConstCounter::new(f(verdicts.get(v))),
            )
        })
    };
    family(
        encoder,
        "relay_xdp_packets",
        "Packets the XDP program saw, by its verdict (forwarded, fan-out, pass, drop reasons).",
        by_verdict(|c| c.packets),
    )?;
    family(
        encoder,
        "relay_xdp_bytes",
        "Bytes of the packets the XDP program saw, by its verdict.",
        by_verdict(|c| c.bytes),
    )
}

/// The process's CPU time and resident memory (the names every Prometheus client uses).
fn policy(
    encoder: &mut DescriptorEncoder,
    c: &crate::policy::Counts,
    revision: &str,
) -> Result<(), std::fmt::Error> {
    use crate::policy::Action;
    family(
        encoder,
        "relay_policy_decisions",
        "Policy decisions, by action and decision (errors and timeouts are denies).",
        Action::ALL
            .iter()
            .zip(c.decisions)
            .flat_map(|(action, [allowed, denied])| {
                [("allow", allowed), ("deny", denied)].map(|(decision, n)| {
                    (
                        vec![
                            ("action", action.name().to_owned()),
                            ("decision", decision.to_owned()),
                        ],
                        ConstCounter::new(n),
                    )
                })
            }),
    )?;
    family(
        encoder,
        "relay_policy_errors",
        "Policy evaluations that failed or ran out of time, each denied (fail closed).",
        [(Vec::new(), ConstCounter::new(c.errors))],
    )?;
    family(
        encoder,
        "relay_policy_reloads",
        "Policy reloads (SIGHUP, a changed file), by result; a failed one keeps the old policy.",
        [("ok", c.reloads), ("failed", c.reload_failures)]
            .map(|(result, n)| (label("result", result), ConstCounter::new(n))),
    )?;
    family(
        encoder,
        "relay_policy_audit_write_errors",
        "Decisions the audit log could not record (a full or read-only disk).",
        [(Vec::new(), ConstCounter::new(c.audit_failures))],
    )?;
    family(
        encoder,
        "relay_policy_info",
        "1, labelled with the revision (hash of the sources) of the policy in force.",
        [(label("revision", revision), ConstGauge::new(1))],
    )
}

#[expect(
    clippy::cast_precision_loss,
    reason = "CPU clock ticks: far below 2^52"
)]
fn process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Ok(());
    };
    // After the command's closing parenthesis: state is field 3; utime 14, stime 15, rss 24.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Ok(());
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf with valid names only reads configuration.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let (Some(utime), Some(stime), Some(rss)) = (field(14), field(15), field(24)) {
        let cpu = (utime + stime) as f64 / ticks.max(1) as f64;
        family(
            encoder,
            "process_cpu_seconds",
            "User and system CPU time the process spent.",
            [(Vec::new(), ConstCounter::new(cpu))],
        )?;
        family(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory of the process.",
            [(
                Vec::new(),
                ConstGauge::new(
                    i64::try_from(rss * page.max(1).unsigned_abs()).unwrap_or(i64::MAX),
                ),
            )],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn both_formats_carry_the_live_counts() {
        let live = Live::new(None);
        live.datapath.channel_to_peer.store(7, Relaxed);
        live.datapath.unpermitted.store(3, Relaxed);
        live.control.rooms.store(2, Relaxed);
        live.ready.store(true, Relaxed);
        let metrics = Metrics::new(Arc::clone(&live));
        let (text, media) = metrics.encode(None);
        assert_eq!(media, PROMETHEUS_TEXT);
        let l = lines(&text);
        assert!(
            l.contains(&"# TYPE relay_user_forwarded_packets_total counter"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_user_forwarded_packets_total{kind=\"channel_to_peer\"} 7"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_user_dropped_packets_total{reason=\"unpermitted\"} 3"),
            "{text}"
        );
        assert!(l.contains(&"relay_rooms 2"), "{text}");
        assert!(l.contains(&"relay_ready 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // No tenant configured: the family is described, empty.
        assert!(
            l.contains(&"# TYPE relay_tenant_policed_packets_total counter"),
            "{text}"
        );
        assert!(
            !text.contains("relay_tenant_policed_packets_total{"),
            "{text}"
        );
        let (om, media) = metrics.encode(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        ));
        assert_eq!(media, OPENMETRICS_TEXT);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            lines(&om).contains(&"# TYPE relay_user_forwarded_packets counter"),
            "{om}"
        );
        // Counts move as the planes write them.
        live.datapath.channel_to_peer.store(8, Relaxed);
        assert!(
            metrics
                .encode(None)
                .0
                .contains("{kind=\"channel_to_peer\"} 8")
        );
    }

    #[test]
    fn tenants_show_their_limits_and_what_userspace_forwarded_and_refused() {
        let policers = Arc::new(Policers::own());
        let limit = relay_common::police::Limit {
            packets_per_sec: 1000,
            bits_per_sec: 0,
            burst_ns: 1_000_000,
        };
        policers.configure(1, limit);
        // One packet fits the 1 ms burst; the second is refused and counted.
        assert!(policers.admit([0, 1], 10_000_000, 100));
        assert!(!policers.admit([0, 1], 10_000_000, 100));
        let live = Arc::new(Live {
            tenants: vec![("north".to_owned(), 1, limit)],
            policers: Some(policers),
            ..Live::default()
        });
        let (text, _) = Metrics::new(live).encode(None);
        let l = lines(&text);
        assert!(
            l.contains(&"relay_tenant_policed_packets_total{tenant=\"north\",path=\"user\"} 1"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_tenant_forwarded_packets_total{tenant=\"north\",path=\"user\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("path=\"xdp\""),
            "no kernel, no xdp path: {text}"
        );
        assert!(
            l.contains(&"relay_tenant_limit_packets_per_second{tenant=\"north\"} 1000"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_tenant_limit_bits_per_second{tenant=\"north\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn responses_and_setup_times_are_exposed() {
        let live = Live::new(None);
        let mut answers = crate::turn::answers::Answers::default();
        let tid = [1; 12];
        let ok = crate::stun::MessageBuilder::new(
            crate::stun::Class::Success,
            crate::stun::Method::ALLOCATE,
            tid,
        )
        .build();
        answers.count(&ok);
        let mut setup = SetupTimes::default();
        setup.observe(std::time::Duration::from_millis(3));
        live.control.set_answers(&answers, &setup);
        let (text, _) = Metrics::new(live).encode(None);
        let l = lines(&text);
        assert!(
            l.contains(&"relay_turn_responses_total{method=\"Allocate\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(
            l.contains(&"# TYPE relay_turn_allocation_setup_seconds histogram"),
            "{text}"
        );
        // Cumulative buckets: nothing up to 2.5 ms, the one setup from 5 ms on.
        assert!(
            l.contains(&"relay_turn_allocation_setup_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_turn_allocation_setup_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_turn_allocation_setup_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(
            l.contains(&"relay_turn_allocation_setup_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn without_a_pinned_data_plane_there_are_no_xdp_families() {
        let metrics = Metrics::new(Live::new(Some(Pins::new("no-such-instance-here"))));
        let (text, _) = metrics.encode(None);
        assert!(!text.contains("relay_xdp_"), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
