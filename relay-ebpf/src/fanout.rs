//! Room fan-out in TC ingress: XDP cannot clone, so it marks the packets of room routes with
//! several destinations (`relay_common::room::FANOUT_MARK` in the XDP metadata, after
//! spending the route's policers) and passes them up; here each destination gets a copy
//! rewritten for it (MACs, addresses, ports, TTL, checksums; the UDP payload untouched) by
//! `bpf_clone_redirect`, one `bpf_loop` iteration per destination (so 256 destinations cost
//! the verifier one iteration), and the original is dropped. Unmarked packets, and marked
//! ones whose route is gone, go on to the stack untouched.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{
        bpf_clone_redirect, bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use relay_common::{
    csum,
    flow::{FAMILY_IPV4, FAMILY_IPV6},
    parse::{Frame, UdpFrame},
    room::{self, FANOUT_MARK, RouteKey},
};

use crate::{
    forward::{FibLookup, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, ipv4_header, ipv6_header},
    maps,
};

/// `BPF_F_RECOMPUTE_CSUM` (UAPI): keep `skb->csum` right for a CHECKSUM_COMPLETE skb.
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

/// A socket buffer as the shared parser sees it, read with `bpf_skb_load_bytes` (headers
/// may lie outside the linear part).
struct SkbFrame(*mut __sk_buff);

impl Frame for SkbFrame {
    #[inline(always)]
    fn has(&self, len: usize) -> bool {
        // SAFETY: the context pointer the program was given.
        len <= unsafe { (*self.0).len } as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut out = [0_u8; N];
        // SAFETY: a helper call writing at most N bytes into `out`.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.0 as *const c_void,
                offset as u32,
                out.as_mut_ptr().cast(),
                N as u32,
            )
        };
        (rc == 0).then_some(out)
    }
}

/// The fan-out's working state (per CPU; too large for the stack), shared with the
/// `bpf_loop` callback.
#[repr(C)]
pub(crate) struct FanOut {
    fib: FibLookup,
    key: RouteKey,
    ip4: [u8; IPV4_HLEN],
    ip6: [u8; IPV6_HLEN],
    udp: [u8; UDP_HLEN],
    v4: u8,
    pad: [u8; 3],
    l3: u32,
    l4: u32,
    ingress: u32,
    slot: u32,
    /// Copies sent and missed (no next hop), and whether the packet was written to.
    sent: u32,
    missed: u32,
    written: u32,
}

/// `Some(TC_ACT_SHOT)` once the copies are sent; `None` leaves the packet to the stack.
#[inline(always)]
pub(crate) fn fanout(ctx: &TcContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer the program was given; `data_meta` is readable in TC.
    let meta = unsafe { (*skb).data_meta } as usize;
    let data = ctx.data();
    if meta + 4 > data {
        return None;
    }
    // SAFETY: `[meta, meta + 4)` lies inside the metadata (checked just above).
    if unsafe { core::ptr::read_unaligned(meta as *const u32) } != FANOUT_MARK {
        return None;
    }
    let frame = SkbFrame(skb);
    let f: UdpFrame = relay_common::parse::udp_frame(&frame).ok()?;
    // SAFETY: the per-CPU scratch entry is used by this program run alone.
    let s = unsafe { &mut *maps::fanout_scratch()? };
    let v4 = f.ip_version == 4;
    if v4 && f.l4 != f.l3 + IPV4_HLEN {
        return None;
    }
    s.key = RouteKey::default();
    if v4 {
        s.ip4 = frame.read(f.l3)?;
        s.key.remote[..4].copy_from_slice(&s.ip4[12..16]);
        s.key.local[..4].copy_from_slice(&s.ip4[16..20]);
        s.key.family = FAMILY_IPV4;
    } else {
        s.ip6 = frame.read(f.l3)?;
        s.key.remote.copy_from_slice(&s.ip6[8..24]);
        s.key.local.copy_from_slice(&s.ip6[24..40]);
        s.key.family = FAMILY_IPV6;
    }
    s.udp = frame.read(f.l4)?;
    let payload_len =
        usize::from(u16::from_be_bytes([s.udp[4], s.udp[5]])).checked_sub(UDP_HLEN)?;
    let (kind, ssrc) = room::classify_payload(&frame, f.l4 + UDP_HLEN, payload_len)?;
    s.key.remote_port = [s.udp[0], s.udp[1]];
    s.key.local_port = [s.udp[2], s.udp[3]];
    s.key.ssrc = ssrc;
    s.key.kind = kind;
    let route = maps::room_route(&s.key)?;
    if route.family != s.key.family || route.destinations == 0 {
        return None;
    }
    s.v4 = u8::from(v4);
    s.l3 = f.l3 as u32;
    s.l4 = f.l4 as u32;
    // SAFETY: as above.
    s.ingress = unsafe { (*skb).ingress_ifindex };
    s.slot = route.slot;
    s.sent = 0;
    s.missed = 0;
    s.written = 0;
    let n = route.destinations.min(room::MAX_ROUTE_DESTINATIONS);
    // The callback's context must be on the stack: it holds the skb pointer.
    let mut loop_ctx = LoopCtx { skb };
    // SAFETY: a helper call; `copy_one` is a valid callback and `loop_ctx` its context,
    // alive until the helper returns.
    unsafe {
        bpf_loop(
            n,
            copy_one as *mut c_void,
            core::ptr::from_mut(&mut loop_ctx).cast(),
            0,
        );
    }
    // SAFETY: as above; the callbacks are done with it.
    let s = unsafe { &mut *maps::fanout_scratch()? };
    if s.written == 0 {
        // Not a byte changed: the stack (and the daemon) get the original.
        return None;
    }
    // SAFETY: the context pointer the program was given.
    let len = u64::from(unsafe { (*skb).len });
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    maps::count_route(s.slot, len, u64::from(s.sent), now);
    if s.missed != 0 {
        maps::count_route_missed(s.slot, u64::from(s.missed));
    }
    Some(TC_ACT_SHOT as i32)
}

/// What `bpf_loop` hands each iteration.
#[repr(C)]
struct LoopCtx {
    skb: *mut __sk_buff,
}

/// One destination: resolve its next hop, rewrite the headers for it, send a clone.
/// Returns 0 (go on) as `bpf_loop` wants.
#[inline(never)]
extern "C" fn copy_one(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the `LoopCtx` given to it.
    let skb = unsafe { (*ctx.cast::<LoopCtx>()).skb };
    if copy(index as u32, skb).is_none() {
        if let Some(s) = maps::fanout_scratch() {
            // SAFETY: as in `copy`.
            unsafe { (*s).missed += 1 };
        }
    }
    0
}

#[inline(always)]
fn copy(index: u32, skb: *mut __sk_buff) -> Option<()> {
    // SAFETY: the per-CPU scratch entry, used by this program run alone.
    let s = unsafe { &mut *maps::fanout_scratch()? };
    let d = maps::room_destination(room::destination_index(s.slot, index)?)?;
    let v4 = s.v4 != 0;
    let fib = &mut s.fib;
    let (from, to) = ((d.src, d.src_port), (d.dst, d.dst_port));
    // SAFETY: `skb` is the context the program was given.
    unsafe { fib.resolve(skb.cast(), v4, from, to, 0, s.ingress) }?;
    // The UDP checksum (RFC 1624): addresses (IPv4's 12 trailing zero bytes add nothing)
    // and ports change; lengths and payload do not.
    let (old_src, old_dst): ([u8; 16], [u8; 16]) = (s.key.remote, s.key.local);
    let old_csum = u16::from_be_bytes([s.udp[6], s.udp[7]]);
    let mut delta = csum::sub(0, &old_src);
    delta = csum::sub(delta, &old_dst);
    delta = csum::sub(delta, &[s.udp[0], s.udp[1], s.udp[2], s.udp[3]]);
    delta = csum::add(delta, &d.src);
    delta = csum::add(delta, &d.dst);
    delta = csum::add(
        delta,
        &[d.src_port[0], d.src_port[1], d.dst_port[0], d.dst_port[1]],
    );
    let new_csum = if v4 && old_csum == 0 {
        0 // IPv4 UDP without a checksum stays without one (RFC 768).
    } else {
        match csum::update(old_csum, delta) {
            0 => 0xFFFF,
            c => c,
        }
    };
    let mut udp = s.udp;
    udp[..2].copy_from_slice(&d.src_port);
    udp[2..4].copy_from_slice(&d.dst_port);
    udp[6..8].copy_from_slice(&new_csum.to_be_bytes());
    let mut macs = [0_u8; 12];
    macs[..6].copy_from_slice(&fib.dmac);
    macs[6..].copy_from_slice(&fib.smac);
    let egress = fib.ifindex;
    s.written = 1;
    store(skb, 0, &macs)?;
    if v4 {
        store(skb, s.l3, &ipv4_header(s.ip4, &d.src, &d.dst))?;
    } else {
        store(skb, s.l3, &ipv6_header(s.ip6, &d.src, &d.dst))?;
    }
    store(skb, s.l4, &udp)?;
    // SAFETY: a plain helper call on the context.
    if unsafe { bpf_clone_redirect(skb, egress, 0) } != 0 {
        return None;
    }
    s.sent += 1;
    Some(())
}

#[inline(always)]
fn store<const N: usize>(skb: *mut __sk_buff, offset: u32, bytes: &[u8; N]) -> Option<()> {
    // SAFETY: a helper call reading N bytes from `bytes`.
    let rc = unsafe {
        bpf_skb_store_bytes(
            skb.cast(),
            offset,
            bytes.as_ptr().cast(),
            N as u32,
            BPF_F_RECOMPUTE_CSUM,
        )
    };
    (rc == 0).then_some(())
}

/// What the program returns for a packet it leaves alone.
pub(crate) const PASS: i32 = TC_ACT_OK as i32;
