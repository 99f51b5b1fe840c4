//! The program's maps. Keys and values are defined in `relay-common`.

use crate::{fanout::FanOut, forward::Scratch};
use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use relay_common::{
    Counters, Verdict,
    flow::{FlowAction, FlowKey, FlowStats, MAX_FLOWS},
    permission::{MAX_PERMISSIONS, MAX_RELAYED, Permission, PermissionKey, RelayedKey},
    police::{MAX_POLICERS, Policer},
    room::{
        MAX_ROOM_ROUTES, MAX_ROUTE_DESTINATIONS, RoomDestination, RoomRoute, RouteKey, RouteStats,
    },
};

/// Packets and bytes per verdict, per CPU; the daemon sums the CPUs.
#[map]
static VERDICTS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Flows the daemon installed: match -> action.
#[map]
static FLOWS: HashMap<FlowKey, FlowAction> = HashMap::with_max_entries(MAX_FLOWS, 0);

/// Counters of each flow, per CPU, indexed by `FlowAction::stats_index`.
#[map]
static FLOW_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(MAX_FLOWS, 0);

/// Rate limits: tenants' and allocations' policers, indexed by `FlowAction::tenant_policer`
/// and `allocation_policer` (0 is never configured). Memory-mappable: the daemon's userspace
/// data path spends the same budgets through its mapping of this array.
#[map]
static POLICERS: Array<Policer> = Array::with_max_entries(MAX_POLICERS, BPF_F_MMAPABLE);

/// Packets and bytes each policer dropped in the kernel, per CPU.
#[map]
static POLICED: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_POLICERS, 0);

/// Relayed addresses whose permissions the program checks (value unused).
#[map]
static RELAYED: HashMap<RelayedKey, u32> = HashMap::with_max_entries(MAX_RELAYED, 0);

/// Permissions of the relayed addresses in `RELAYED`.
#[map]
static PERMISSIONS: HashMap<PermissionKey, Permission> =
    HashMap::with_max_entries(MAX_PERMISSIONS, 0);

/// Interfaces a flow may leave by when it is not the one it came in on, keyed by ifindex.
#[map]
static DEVICES: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Room routes the daemon installed: publisher and SSRC -> destinations.
#[map]
static ROOM_ROUTES: HashMap<RouteKey, RoomRoute> = HashMap::with_max_entries(MAX_ROOM_ROUTES, 0);

/// Every route's destinations: route slot `s`'s are entries `s * MAX_ROUTE_DESTINATIONS`
/// onwards.
#[map]
static ROOM_DESTINATIONS: Array<RoomDestination> =
    Array::with_max_entries(MAX_ROOM_ROUTES * MAX_ROUTE_DESTINATIONS, 0);

/// Counters of each room route, per CPU, indexed by its slot.
#[map]
static ROUTE_STATS: PerCpuArray<RouteStats> = PerCpuArray::with_max_entries(MAX_ROOM_ROUTES, 0);

/// The fast path's working state, one per CPU.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The TC fan-out's working state, one per CPU.
#[map]
static FANOUT_SCRATCH: PerCpuArray<FanOut> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's fan-out scratch entry.
#[inline(always)]
pub(crate) fn fanout_scratch() -> Option<*mut FanOut> {
    FANOUT_SCRATCH.get_ptr_mut(0)
}

/// This CPU's scratch entry.
#[inline(always)]
pub(crate) fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// `BPF_F_MMAPABLE` (UAPI): the array can be mapped into the daemon's memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Adds one frame of `bytes` bytes to `verdict`'s counters on this CPU.
#[inline(always)]
pub(crate) fn count(verdict: Verdict, bytes: u64) {
    if let Some(counters) = VERDICTS.get_ptr_mut(verdict.index()) {
        // SAFETY: the pointer comes from a successful map lookup and per-CPU values are only
        // written by this CPU while the program runs, so the access is exclusive.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}

/// The action installed for `key`. Map values stay valid for the whole program run (RCU),
/// even if the daemon replaces or deletes the entry meanwhile.
#[inline(always)]
pub(crate) fn flow(key: &FlowKey) -> Option<&'static FlowAction> {
    // SAFETY: see above; the program only reads the value.
    unsafe { FLOWS.get(key) }
}

/// Whether the daemon listed `addr` as a relayed address.
#[inline(always)]
pub(crate) fn is_relayed(addr: &RelayedKey) -> bool {
    // SAFETY: the value is not read.
    unsafe { RELAYED.get(addr) }.is_some()
}

/// The permission for `key`, if the daemon installed one.
#[inline(always)]
pub(crate) fn permission(key: &PermissionKey) -> Option<&'static Permission> {
    // SAFETY: as in `flow`: valid for the program run, only read.
    unsafe { PERMISSIONS.get(key) }
}

/// Counts a forwarded packet of `bytes` bytes for the flow's counters on this CPU.
#[inline(always)]
pub(crate) fn count_flow(index: u32, bytes: u64, now_ns: u64) {
    if let Some(stats) = FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: as in `count`: a per-CPU value, written only by this CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            (*stats).last_seen_ns = now_ns;
        }
    }
}

/// Whether the daemon listed interface `ifindex` in `DEVICES` (it attached the program
/// there too): only then may a flow leave by it.
#[inline(always)]
pub(crate) fn is_device(ifindex: u32) -> bool {
    DEVICES.get_ifindex(ifindex).is_some()
}

/// Redirects to interface `ifindex` through `DEVICES` (checked with `is_device` before the
/// packet was rewritten; should the entry go meanwhile, the packet is dropped, not passed
/// up half rewritten).
#[inline(always)]
pub(crate) fn redirect(ifindex: u32) -> u32 {
    DEVICES
        .redirect(ifindex, u64::from(xdp_action::XDP_DROP))
        .unwrap_or(xdp_action::XDP_DROP)
}

/// Whether a packet of `bytes` relayed bytes (a frame of `frame` bytes) fits the budgets
/// of policers `allocation` and `tenant` (0: none) at `now_ns`. A packet refused by either
/// spends neither, and is counted against the policer that refused it.
#[inline(always)]
pub(crate) fn police(allocation: u32, tenant: u32, now_ns: u64, bytes: u64, frame: u64) -> bool {
    let allocation = policer(allocation);
    if let Some((index, p)) = allocation {
        if !p.admit(now_ns, bytes) {
            count_policed(index, frame);
            return false;
        }
    }
    if let Some((index, p)) = policer(tenant) {
        if !p.admit(now_ns, bytes) {
            if let Some((_, a)) = allocation {
                a.refund(bytes);
            }
            count_policed(index, frame);
            return false;
        }
    }
    true
}

/// Gives back what [`police`] spent of `allocation` and `tenant` for a packet of `bytes`
/// relayed bytes that another pair of policers then refused.
#[inline(always)]
pub(crate) fn refund(allocation: u32, tenant: u32, bytes: u64) {
    for index in [allocation, tenant] {
        if let Some((_, p)) = policer(index) {
            p.refund(bytes);
        }
    }
}

#[inline(always)]
fn policer(index: u32) -> Option<(u32, &'static Policer)> {
    if index == 0 {
        return None;
    }
    POLICERS.get(index).map(|p| (index, p))
}

#[inline(always)]
fn count_policed(index: u32, frame: u64) {
    if let Some(c) = POLICED.get_ptr_mut(index) {
        // SAFETY: as in `count`: a per-CPU value, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += frame;
        }
    }
}

/// The room route installed for `key`; valid for the program run, as in `flow`.
#[inline(always)]
pub(crate) fn room_route(key: &RouteKey) -> Option<&'static RoomRoute> {
    // SAFETY: as in `flow`: valid for the program run, only read.
    unsafe { ROOM_ROUTES.get(key) }
}

/// Destination `index` of `ROOM_DESTINATIONS` (see `relay_common::room::destination_index`).
#[inline(always)]
pub(crate) fn room_destination(index: u32) -> Option<&'static RoomDestination> {
    ROOM_DESTINATIONS.get(index)
}

/// Counts a packet of `bytes` bytes forwarded by route `slot` in `copies` copies, and the
/// copies that could not be sent.
#[inline(always)]
pub(crate) fn count_route(slot: u32, bytes: u64, copies: u64, now_ns: u64) {
    if let Some(stats) = ROUTE_STATS.get_ptr_mut(slot) {
        // SAFETY: as in `count`: a per-CPU value, written only by this CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            (*stats).copies += copies;
            (*stats).last_seen_ns = now_ns;
        }
    }
}

/// Counts copies of route `slot` that could not be sent.
#[inline(always)]
pub(crate) fn count_route_missed(slot: u32, missed: u64) {
    if let Some(stats) = ROUTE_STATS.get_ptr_mut(slot) {
        // SAFETY: as in `count`: a per-CPU value, written only by this CPU.
        unsafe { (*stats).missed += missed };
    }
}

/// Counts a packet of route `slot` dropped over a limit.
#[inline(always)]
pub(crate) fn count_route_dropped(slot: u32) {
    if let Some(stats) = ROUTE_STATS.get_ptr_mut(slot) {
        // SAFETY: as in `count`: a per-CPU value, written only by this CPU.
        unsafe { (*stats).dropped += 1 };
    }
}
