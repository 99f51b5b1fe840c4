//! `relay top`'s figures: a [`Snapshot`] of what the kernel counted, read from an
//! instance's pinned tables (no daemon needed), and the [`View`] of two snapshots: rates
//! per verdict, the busiest channels' flows and room routes, tenants against their limits,
//! drops by reason. Drawing them is [`view`]'s part.

pub mod view;

use std::{net::SocketAddr, time::Instant};

use relay_common::{
    Counters, Verdict,
    flow::{ActionKind, FlowAction, FlowKey, FlowStats},
    police::Limit,
    room::{KIND_RTCP, RoomRoute, RouteKey, RouteStats},
};

use crate::dataplane::{DataplaneError, PinnedTables, VerdictCounters, socket_addr};

/// What the kernel's tables held at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub verdicts: VerdictCounters,
    pub flows: Vec<(FlowKey, FlowAction, FlowStats)>,
    pub routes: Vec<(RouteKey, RoomRoute, RouteStats)>,
    pub tenants: Vec<Tenant>,
}

/// A tenant's policer: its slot, its name when the configuration was given, the limit the
/// kernel enforces, and what it refused there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub slot: u32,
    pub name: Option<String>,
    pub limit: Limit,
    pub policed: Counters,
}

impl Snapshot {
    /// Reads `tables` now. `names`: the configuration's tenants in order (their policer
    /// slots as the daemon gives them, `Slots::tenant`); tenants the flows and routes
    /// spend are shown even unnamed.
    pub fn read(tables: &PinnedTables, names: &[String]) -> Result<Self, DataplaneError> {
        let verdicts = tables.counters.verdicts()?;
        let flows = tables.flows()?;
        let routes = tables.routes()?;
        let policer_slots = crate::policers::Slots::new(names.len());
        let name = |slot| {
            (0..names.len())
                .find(|i| policer_slots.tenant(*i) == slot)
                .map(|i| names[i].clone())
        };
        let mut slots: Vec<u32> = (0..names.len())
            .map(|i| policer_slots.tenant(i))
            .chain(flows.iter().map(|(_, a, _)| a.tenant_policer))
            .chain(routes.iter().map(|(_, r, _)| r.tenant_policer))
            .filter(|s| *s != 0)
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let tenants = slots
            .into_iter()
            .map(|slot| {
                Ok(Tenant {
                    slot,
                    name: name(slot),
                    limit: tables.limit(slot).unwrap_or_default(),
                    policed: tables.counters.policed(slot)?,
                })
            })
            .collect::<Result<_, DataplaneError>>()?;
        Ok(Self {
            at: Instant::now(),
            verdicts,
            flows,
            routes,
            tenants,
        })
    }
}

/// Packets and bytes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub packets: f64,
    pub bytes: f64,
}

impl Rate {
    fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }
}

/// A verdict's rate and its count since the data plane was created.
#[derive(Clone, Debug, PartialEq)]
pub struct VerdictRow {
    pub verdict: Verdict,
    pub rate: Rate,
    pub total: Counters,
}

/// One of a channel's two flows (or a hairpin, or plain RTP).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRow {
    pub kind: Option<ActionKind>,
    /// Where its packets come from and where they go.
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// The ChannelData channel it matches or adds (0: none).
    pub channel: u16,
    pub tenant: u32,
    pub rate: Rate,
    pub total: u64,
}

/// A room route: a publisher's SSRC at an endpoint, to its subscribers.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRow {
    pub publisher: SocketAddr,
    pub endpoint: SocketAddr,
    pub ssrc: u32,
    pub rtcp: bool,
    pub subscribers: u32,
    pub tenant: u32,
    pub rate: Rate,
    /// Copies sent per second (the rate times the subscribers, less what was missed).
    pub copies: f64,
    pub total: u64,
}

/// A tenant with what its flows and routes carry now, against its limit.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantRow {
    pub tenant: Tenant,
    pub rate: Rate,
    /// Packets its policer refused per second in the kernel.
    pub policed: f64,
}

/// Why the kernel dropped packets, per second and in all.
#[derive(Clone, Debug, PartialEq)]
pub struct DropRow {
    pub reason: &'static str,
    pub rate: f64,
    pub total: u64,
}

/// What `relay top` shows: the rates between two snapshots (all zero from the first one
/// alone) and the busiest flows and routes first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Seconds between the snapshots; `None` from a single one.
    pub seconds: Option<f64>,
    pub verdicts: Vec<VerdictRow>,
    /// What the kernel forwarded itself (one-to-one and fan-out) over all the UDP it saw,
    /// per second; `None` when it saw none.
    pub kernel_share: Option<f64>,
    pub flows: Vec<FlowRow>,
    pub routes: Vec<RouteRow>,
    /// Entries in the flow and the route table.
    pub flow_entries: usize,
    pub route_entries: usize,
    pub tenants: Vec<TenantRow>,
    pub drops: Vec<DropRow>,
}

/// How far a counter moved: a counter lower than before was reset (its slot reused by a
/// new flow or route), so all of it is new.
fn moved(now: u64, before: u64) -> u64 {
    now.checked_sub(before).unwrap_or(now)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counter deltas: far below 2^52 per refresh"
)]
fn per_second(delta: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        delta as f64 / seconds
    } else {
        0.0
    }
}

/// The rate of (`packets`, `bytes`) counters now and before (none before: zero).
fn rate(now: (u64, u64), before: Option<(u64, u64)>, seconds: Option<f64>) -> Rate {
    match (before, seconds) {
        (Some((p, b)), Some(s)) => Rate {
            packets: per_second(moved(now.0, p), s),
            bytes: per_second(moved(now.1, b), s),
        },
        _ => Rate::default(),
    }
}

/// The view of `now` against `before` (the previous refresh), with the `top` busiest flows
/// and routes.
pub fn compare(before: Option<&Snapshot>, now: &Snapshot, top: usize) -> View {
    let seconds = before.map(|b| now.at.duration_since(b.at).as_secs_f64());
    let verdicts: Vec<VerdictRow> = Verdict::ALL
        .into_iter()
        .map(|v| {
            let total = now.verdicts.get(v);
            let was = before.map(|b| {
                let c = b.verdicts.get(v);
                (c.packets, c.bytes)
            });
            VerdictRow {
                verdict: v,
                rate: rate((total.packets, total.bytes), was, seconds),
                total,
            }
        })
        .collect();
    let pps = |vs: &[Verdict]| -> f64 {
        verdicts
            .iter()
            .filter(|r| vs.contains(&r.verdict))
            .map(|r| r.rate.packets)
            .sum()
    };
    let kernel = pps(&[Verdict::Forwarded, Verdict::FanOut]);
    let up = pps(&[Verdict::Udp4, Verdict::Udp6]);
    let kernel_share = (kernel + up > 0.0).then(|| kernel / (kernel + up));

    let mut flows = flow_rows(before, now, seconds);
    let mut routes = route_rows(before, now, seconds);
    let tenants = tenant_rows(before, now, seconds, &flows, &routes);
    let drops = drop_rows(&verdicts, before, now, seconds);
    let busiest = |a: &Rate, b: &Rate| b.packets.total_cmp(&a.packets);
    flows.sort_by(|a, b| busiest(&a.rate, &b.rate).then(b.total.cmp(&a.total)));
    routes.sort_by(|a, b| busiest(&a.rate, &b.rate).then(b.total.cmp(&a.total)));
    let (flow_entries, route_entries) = (flows.len(), routes.len());
    flows.truncate(top);
    routes.truncate(top);
    View {
        seconds,
        verdicts,
        kernel_share,
        flows,
        routes,
        flow_entries,
        route_entries,
        tenants,
        drops,
    }
}

fn flow_rows(before: Option<&Snapshot>, now: &Snapshot, seconds: Option<f64>) -> Vec<FlowRow> {
    // A flow is the same one if its key still points at the same counters.
    let was: std::collections::HashMap<(FlowKey, u32), (u64, u64)> = before
        .map(|b| {
            b.flows
                .iter()
                .map(|(k, a, s)| ((*k, a.stats_index), (s.packets, s.bytes)))
                .collect()
        })
        .unwrap_or_default();
    now.flows
        .iter()
        .map(|(key, action, stats)| {
            let kind = action.kind();
            let earlier = if before.is_some() {
                Some(
                    was.get(&(*key, action.stats_index))
                        .copied()
                        .unwrap_or_default(),
                )
            } else {
                None
            };
            FlowRow {
                kind,
                from: socket_addr(key.family, key.src, key.src_port),
                to: socket_addr(action.family, action.dst, action.dst_port),
                channel: if kind == Some(ActionKind::AddChannel) {
                    action.channel
                } else {
                    key.channel
                },
                tenant: action.tenant_policer,
                rate: rate((stats.packets, stats.bytes), earlier, seconds),
                total: stats.packets,
            }
        })
        .collect()
}

fn route_rows(before: Option<&Snapshot>, now: &Snapshot, seconds: Option<f64>) -> Vec<RouteRow> {
    let was: std::collections::HashMap<(RouteKey, u32), RouteStats> = before
        .map(|b| {
            b.routes
                .iter()
                .map(|(k, r, s)| ((*k, r.slot), *s))
                .collect()
        })
        .unwrap_or_default();
    now.routes
        .iter()
        .map(|(key, route, stats)| {
            let earlier = before.map(|_| was.get(&(*key, route.slot)).copied().unwrap_or_default());
            let r = rate(
                (stats.packets, stats.bytes),
                earlier.map(|e| (e.packets, e.bytes)),
                seconds,
            );
            let copies = match (earlier, seconds) {
                (Some(e), Some(s)) => per_second(moved(stats.copies, e.copies), s),
                _ => 0.0,
            };
            RouteRow {
                publisher: socket_addr(key.family, key.remote, key.remote_port),
                endpoint: socket_addr(key.family, key.local, key.local_port),
                ssrc: u32::from_be_bytes(key.ssrc),
                rtcp: key.kind == KIND_RTCP,
                subscribers: route.destinations,
                tenant: route.tenant_policer,
                rate: r,
                copies,
                total: stats.packets,
            }
        })
        .collect()
}

fn tenant_rows(
    before: Option<&Snapshot>,
    now: &Snapshot,
    seconds: Option<f64>,
    flows: &[FlowRow],
    routes: &[RouteRow],
) -> Vec<TenantRow> {
    now.tenants
        .iter()
        .map(|t| {
            let carried = flows
                .iter()
                .filter(|f| f.tenant == t.slot)
                .map(|f| f.rate)
                .chain(routes.iter().filter(|r| r.tenant == t.slot).map(|r| r.rate))
                .fold(Rate::default(), Rate::add);
            let was = before.map(|b| {
                b.tenants
                    .iter()
                    .find(|o| o.slot == t.slot)
                    .map_or(0, |o| o.policed.packets)
            });
            let policed = match (was, seconds) {
                (Some(w), Some(s)) => per_second(moved(t.policed.packets, w), s),
                _ => 0.0,
            };
            TenantRow {
                tenant: t.clone(),
                rate: carried,
                policed,
            }
        })
        .collect()
}

/// The drop verdicts, and the fan-out copies the TC program could not send.
fn drop_rows(
    verdicts: &[VerdictRow],
    before: Option<&Snapshot>,
    now: &Snapshot,
    seconds: Option<f64>,
) -> Vec<DropRow> {
    let mut rows: Vec<DropRow> = verdicts
        .iter()
        .filter(|r| !r.verdict.passes())
        .map(|r| DropRow {
            reason: r.verdict.name(),
            rate: r.rate.packets,
            total: r.total.packets,
        })
        .collect();
    let missed = |s: &Snapshot| s.routes.iter().map(|(_, _, st)| st.missed).sum::<u64>();
    let total = missed(now);
    rows.push(DropRow {
        reason: "fan-out-missed",
        rate: match (before, seconds) {
            (Some(b), Some(s)) => per_second(moved(total, missed(b)), s),
            _ => 0.0,
        },
        total,
    });
    rows
}

#[cfg(test)]
mod tests;
