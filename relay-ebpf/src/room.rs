//! Room routes in XDP: RTP and RTCP arriving at a room endpoint from a publisher, by SSRC
//! (`relay_common::room`). One destination: rewritten (addresses, ports, checksums; the UDP
//! payload untouched, so SRTP stays valid) and sent here, as a channel is. Several: policed
//! here, marked in the XDP metadata and passed to the TC program (`fanout`), which clones.
//! Anything that fails a check goes up, where the daemon forwards it.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use relay_common::{
    Verdict,
    flow::{ActionKind, FlowAction},
    parse::UdpFrame,
    room::{self, FANOUT_MARK, RoomRoute, RouteKey},
};

use crate::{
    forward::{self, Scratch},
    maps,
    parse::XdpFrame,
};

const UDP_HLEN: usize = 8;

/// `Some((Forwarded, XDP_TX or redirect))`: sent to the route's one destination;
/// `Some((FanOut, XDP_PASS))`: marked for the TC program; `Some((OverLimit, XDP_DROP))`;
/// `None`: not a room route's packet, or a check failed (the stack gets it unchanged).
#[inline(always)]
pub(crate) fn route(ctx: &XdpContext, f: &UdpFrame) -> Option<(Verdict, u32)> {
    let frame = XdpFrame(ctx);
    // SAFETY: the per-CPU scratch entry is used by this program run alone.
    let scratch = unsafe { &mut *maps::scratch()? };
    let Scratch {
        fib,
        old,
        route_key: key,
        target,
        ..
    } = scratch;
    let h = forward::read_headers(&frame, f, old)?;
    let (kind, ssrc) = room::classify_payload(&frame, h.l4 + UDP_HLEN, h.payload_len)?;
    *key = RouteKey {
        local: old.dst,
        remote: old.src,
        local_port: [old.udp[2], old.udp[3]],
        remote_port: [old.udp[0], old.udp[1]],
        ssrc,
        family: h.family(),
        kind,
        pad: [0; 2],
    };
    let route = maps::room_route(key)?;
    if route.family != key.family || route.destinations == 0 {
        return None;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    // The limits count the UDP payload, as the userspace data path does.
    let bytes = h.payload_len as u64;

    if route.destinations > 1 {
        // Mark first: a driver without metadata support leaves the packet to userspace,
        // which polices it.
        // SAFETY: a plain helper call; packet pointers are re-derived afterwards.
        if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
            return None;
        }
        let meta = ctx.metadata();
        if meta + 4 > ctx.data() {
            return None;
        }
        // SAFETY: `[meta, meta + 4)` lies inside the metadata (checked just above).
        unsafe { core::ptr::write_unaligned(meta as *mut u32, FANOUT_MARK) };
        if !police(route, now, bytes, frame_len) {
            return Some((Verdict::OverLimit, xdp_action::XDP_DROP));
        }
        return Some((Verdict::FanOut, xdp_action::XDP_PASS));
    }

    let destination = maps::room_destination(room::destination_index(route.slot, 0)?)?;
    *target = FlowAction {
        src: destination.src,
        dst: destination.dst,
        src_port: destination.src_port,
        dst_port: destination.dst_port,
        channel: 0,
        kind: ActionKind::RewriteOnly as u8,
        family: route.family,
        stats_index: 0,
        tenant_policer: route.tenant_policer,
        allocation_policer: route.room_policer,
        hairpin_stats_index: 0,
        expires_ns: u64::MAX,
        hairpin_tenant_policer: 0,
        hairpin_allocation_policer: 0,
    };
    let udp_len = (UDP_HLEN + h.payload_len) as u16;
    let egress = forward::next_hop(ctx, fib, h, target, udp_len)?;
    if !police(route, now, bytes, frame_len) {
        return Some((Verdict::OverLimit, xdp_action::XDP_DROP));
    }
    forward::rewrite(
        ctx,
        h,
        old,
        fib,
        target,
        ActionKind::RewriteOnly,
        udp_len,
        bytes,
    )?;
    maps::count_route(route.slot, frame_len, 1, now);
    Some((Verdict::Forwarded, forward::send(ctx, egress)))
}

/// Spends the route's endpoint, room and tenant budgets for a packet of `bytes` (UDP
/// payload) in a frame of `frame_len`: all or none (what one spent is given back when a
/// later one refuses); a refusal is counted on the policer and on the route.
#[inline(always)]
fn police(route: &RoomRoute, now: u64, bytes: u64, frame_len: u64) -> bool {
    if maps::police(route.endpoint_policer, 0, now, bytes, frame_len) {
        if maps::police(
            route.room_policer,
            route.tenant_policer,
            now,
            bytes,
            frame_len,
        ) {
            return true;
        }
        maps::refund(route.endpoint_policer, 0, bytes);
    }
    maps::count_route_dropped(route.slot);
    false
}
