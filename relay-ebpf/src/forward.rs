//! The fast path: packets of installed flows are rewritten and sent on from here, without
//! waking userspace. Anything that does not match, fails a check, or cannot be routed is
//! left to the stack (XDP_PASS), where the daemon handles it: nothing is lost while a flow
//! is being installed or after it expired.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use relay_common::{
    Verdict, csum,
    flow::{ActionKind, FAMILY_IPV4, FAMILY_IPV6, FlowAction, FlowKey},
    parse::{Frame as _, UdpFrame},
    room::RouteKey,
};

use crate::{maps, parse::XdpFrame};

pub(crate) const UDP_HLEN: usize = 8;
pub(crate) const IPV4_HLEN: usize = 20;
pub(crate) const IPV6_HLEN: usize = 40;
const CHANNEL_DATA_HLEN: usize = 4;
/// TTL / hop limit of relayed packets: the relay sends them anew, as a socket would.
const TTL: u8 = 64;

/// An IPv4 header (no options) as the relay sends it on: from `src` to `dst` (their first
/// four bytes), TTL reset, header checksum recomputed. Channels, hairpins and room copies
/// (in XDP and in TC) all go out so.
#[inline(always)]
pub(crate) fn ipv4_header(
    mut ip: [u8; IPV4_HLEN],
    src: &[u8; 16],
    dst: &[u8; 16],
) -> [u8; IPV4_HLEN] {
    ip[8] = TTL;
    ip[10] = 0;
    ip[11] = 0;
    ip[12..16].copy_from_slice(&src[..4]);
    ip[16..20].copy_from_slice(&dst[..4]);
    let sum = csum::finish(csum::add(0, &ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// An IPv6 header as the relay sends it on: from `src` to `dst`, hop limit reset.
#[inline(always)]
pub(crate) fn ipv6_header(
    mut ip: [u8; IPV6_HLEN],
    src: &[u8; 16],
    dst: &[u8; 16],
) -> [u8; IPV6_HLEN] {
    ip[7] = TTL;
    ip[8..24].copy_from_slice(src);
    ip[24..40].copy_from_slice(dst);
    ip
}
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;

/// `struct bpf_fib_lookup` (UAPI), with its unions flattened to what is used here.
#[repr(C)]
pub(crate) struct FibLookup {
    pub(crate) family: u8,
    pub(crate) l4_protocol: u8,
    pub(crate) sport: [u8; 2],
    pub(crate) dport: [u8; 2],
    pub(crate) tot_len: u16,
    pub(crate) ifindex: u32,
    pub(crate) flowinfo: u32,
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
    pub(crate) vlan: u32,
    pub(crate) smac: [u8; 6],
    pub(crate) dmac: [u8; 6],
}

const _: () = assert!(size_of::<FibLookup>() == 64);

impl FibLookup {
    /// Looks up the next hop of a UDP packet from `from` to `to` (addresses and ports in
    /// the maps' layout) of `tot_len` IP bytes (0: no MTU check) arriving on `ifindex`:
    /// fills in the egress interface and MACs, or `None` when it cannot be resolved.
    ///
    /// # Safety
    ///
    /// `ctx` is the context (`xdp_md` or `__sk_buff`) the program was given.
    #[inline(always)]
    pub(crate) unsafe fn resolve(
        &mut self,
        ctx: *mut core::ffi::c_void,
        v4: bool,
        from: ([u8; 16], [u8; 2]),
        to: ([u8; 16], [u8; 2]),
        tot_len: u16,
        ifindex: u32,
    ) -> Option<()> {
        self.family = if v4 { AF_INET } else { AF_INET6 };
        self.l4_protocol = IPPROTO_UDP;
        (self.src, self.sport) = from;
        (self.dst, self.dport) = to;
        self.tot_len = tot_len;
        self.ifindex = ifindex;
        self.flowinfo = 0;
        self.vlan = 0;
        // SAFETY: `self` is a valid bpf_fib_lookup of the size passed; `ctx` as promised.
        let rc = unsafe {
            bpf_fib_lookup(
                ctx,
                core::ptr::from_mut(self).cast(),
                size_of::<Self>() as i32,
                0,
            )
        };
        (rc == 0).then_some(())
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The fast path's working state, too large for the 512-byte BPF stack: it lives in a
/// one-entry per-CPU map (`maps::scratch`).
#[repr(C)]
pub(crate) struct Scratch {
    key: FlowKey,
    pub(crate) fib: FibLookup,
    pub(crate) old: Old,
    /// A room route's key, and its destination as an action (`room`).
    pub(crate) route_key: RouteKey,
    pub(crate) target: FlowAction,
}

/// What the old packet said, read before the head moves.
#[repr(C)]
pub(crate) struct Old {
    /// Ethertype and VLAN tags: bytes 12..l3 of the frame (2, 6 or 10 of them).
    eth_tail: [u8; 10],
    ip4: [u8; IPV4_HLEN],
    ip6: [u8; IPV6_HLEN],
    pub(crate) udp: [u8; UDP_HLEN],
    cd: [u8; CHANNEL_DATA_HLEN],
    /// The IP source and destination addresses, IPv4 in the first 4 bytes.
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
}

/// Where a UDP datagram's headers are and what it carries, once read into [`Old`].
#[derive(Clone, Copy)]
pub(crate) struct Headers {
    pub(crate) v4: bool,
    l3: usize,
    pub(crate) l4: usize,
    pub(crate) payload_len: usize,
}

impl Headers {
    pub(crate) const fn family(self) -> u8 {
        if self.v4 { FAMILY_IPV4 } else { FAMILY_IPV6 }
    }
}

/// Reads the IP and UDP headers of a parsed UDP frame into `old`. `None` for IPv4 with
/// options (those stay with the stack) or a UDP length below its header.
#[inline(always)]
pub(crate) fn read_headers(frame: &XdpFrame, f: &UdpFrame, old: &mut Old) -> Option<Headers> {
    let v4 = f.ip_version == 4;
    // IPv4 options and IPv6 extension headers stay with the stack.
    if v4 && f.l4 != f.l3 + IPV4_HLEN {
        return None;
    }
    let l3 = f.l3;
    old.src = [0; 16];
    old.dst = [0; 16];
    if v4 {
        old.ip4 = frame.read(l3)?;
        old.src[..4].copy_from_slice(&old.ip4[12..16]);
        old.dst[..4].copy_from_slice(&old.ip4[16..20]);
    } else {
        old.ip6 = frame.read(l3)?;
        old.src.copy_from_slice(&old.ip6[8..24]);
        old.dst.copy_from_slice(&old.ip6[24..40]);
    }
    let l4 = if v4 { l3 + IPV4_HLEN } else { l3 + IPV6_HLEN };
    old.udp = frame.read(l4)?;
    let udp_len = usize::from(be16([old.udp[4], old.udp[5]]));
    let payload_len = udp_len.checked_sub(UDP_HLEN)?;
    Some(Headers {
        v4,
        l3,
        l4,
        payload_len,
    })
}

/// Tries the fast path for a parsed UDP frame: `Some((Forwarded, XDP_TX or XDP_REDIRECT))`
/// when the packet was rewritten and is to be sent, `Some((OverLimit, XDP_DROP))` when its
/// flow is over a rate limit, `None` to leave it to the stack.
#[inline(always)]
pub(crate) fn forward(ctx: &XdpContext, f: &UdpFrame) -> Option<(Verdict, u32)> {
    let frame = XdpFrame(ctx);
    // SAFETY: the per-CPU scratch entry is used by this program run alone.
    let scratch = unsafe { &mut *maps::scratch()? };
    let Scratch { key, fib, old, .. } = scratch;
    let h = read_headers(&frame, f, old)?;
    *key = FlowKey::default();
    key.src = old.src;
    key.dst = old.dst;
    key.family = h.family();
    key.src_port = [old.udp[0], old.udp[1]];
    key.dst_port = [old.udp[2], old.udp[3]];
    let payload_len = h.payload_len;

    // ChannelData from a client carries its channel in the first two bytes (RFC 8656
    // section 12.4); peers' packets are matched with channel 0.
    let mut channel = 0;
    if payload_len >= CHANNEL_DATA_HLEN {
        old.cd = frame.read(h.l4 + UDP_HLEN)?;
        let c = be16([old.cd[0], old.cd[1]]);
        if (0x4000..=0x7FFF).contains(&c) {
            channel = c;
        }
    }
    key.channel = channel;
    let action = match maps::flow(key) {
        Some(a) => a,
        None if channel != 0 => {
            key.channel = 0;
            maps::flow(key)?
        }
        None => return None,
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > action.expires_ns || action.family != key.family {
        return None;
    }
    let kind = action.kind()?;
    // The ChannelData length must account for the whole UDP payload: no padding, no
    // trailing bytes (those datagrams go to userspace, which forwards what it may).
    let strips = matches!(kind, ActionKind::StripChannel | ActionKind::Hairpin);
    let cd_len = usize::from(be16([old.cd[2], old.cd[3]]));
    if strips && (key.channel == 0 || cd_len + CHANNEL_DATA_HLEN != payload_len) {
        return None;
    }
    let out_payload = match kind {
        ActionKind::StripChannel => cd_len,
        ActionKind::AddChannel => payload_len + CHANNEL_DATA_HLEN,
        ActionKind::RewriteOnly | ActionKind::Hairpin => payload_len,
    };
    let new_udp_len = (UDP_HLEN + out_payload) as u16;

    // Next hop first: nothing is changed if it cannot be resolved.
    let egress = next_hop(ctx, fib, h, action, new_udp_len)?;

    // The limits count relayed bytes (the application data, without the ChannelData
    // header), as the userspace data path does, so both spend the same budget alike.
    let relayed = if strips { cd_len } else { payload_len } as u64;
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    if !maps::police(
        action.allocation_policer,
        action.tenant_policer,
        now,
        relayed,
        frame_len,
    ) {
        return Some((Verdict::OverLimit, xdp_action::XDP_DROP));
    }
    // A hairpin is two hops in one: it spends the other allocation's budgets too, or
    // neither's.
    if kind == ActionKind::Hairpin
        && !maps::police(
            action.hairpin_allocation_policer,
            action.hairpin_tenant_policer,
            now,
            relayed,
            frame_len,
        )
    {
        maps::refund(action.allocation_policer, action.tenant_policer, relayed);
        return Some((Verdict::OverLimit, xdp_action::XDP_DROP));
    }

    let sent_len = rewrite(ctx, h, old, fib, action, kind, new_udp_len, relayed)?;
    maps::count_flow(action.stats_index, sent_len, now);
    if kind == ActionKind::Hairpin {
        maps::count_flow(action.hairpin_stats_index, sent_len, now);
    }
    Some((Verdict::Forwarded, send(ctx, egress)))
}

/// Resolves the next hop of a packet rewritten per `action` (a UDP datagram of
/// `new_udp_len` bytes) into `fib`: the egress interface, or `None` when it cannot be
/// resolved or lies behind an interface the relay was not given.
#[inline(always)]
pub(crate) fn next_hop(
    ctx: &XdpContext,
    fib: &mut FibLookup,
    h: Headers,
    action: &FlowAction,
    new_udp_len: u16,
) -> Option<u32> {
    let ip_len = if h.v4 { IPV4_HLEN } else { IPV6_HLEN };
    let tot_len = (ip_len + usize::from(new_udp_len)) as u16;
    let ingress = ctx.ingress_ifindex() as u32;
    let from = (action.src, action.src_port);
    let to = (action.dst, action.dst_port);
    // SAFETY: the context the program was given.
    unsafe { fib.resolve(ctx.ctx.cast(), h.v4, from, to, tot_len, ingress) }?;
    // Another egress interface needs its devmap entry: without one the stack routes it.
    if fib.ifindex != ingress && !maps::is_device(fib.ifindex) {
        return None;
    }
    Some(fib.ifindex)
}

/// The XDP action that sends a rewritten packet out of `egress`.
#[inline(always)]
pub(crate) fn send(ctx: &XdpContext, egress: u32) -> u32 {
    if egress == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        maps::redirect(egress)
    }
}

/// Rewrites the packet whose headers are in `old` per `action` (of `kind`) for the next hop
/// in `fib`: MACs, addresses, ports, lengths, TTL, IPv4 header checksum (recomputed), UDP
/// checksum (updated per RFC 1624 for every word that changes), the ChannelData header
/// stripped, added or swapped. Returns the length of what leaves (from the IP header on,
/// plus the link-layer header).
#[expect(clippy::too_many_arguments, reason = "the steps of one rewrite")]
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &XdpContext,
    h: Headers,
    old: &mut Old,
    fib: &FibLookup,
    action: &FlowAction,
    kind: ActionKind,
    new_udp_len: u16,
    relayed: u64,
) -> Option<u64> {
    let frame = XdpFrame(ctx);
    let Headers { v4, l3, l4, .. } = h;
    let ip_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let tot_len = (ip_len + usize::from(new_udp_len)) as u16;
    let eth_tail_len = l3 - 12;
    match eth_tail_len {
        2 => old.eth_tail[..2].copy_from_slice(&frame.read::<2>(12)?),
        6 => old.eth_tail[..6].copy_from_slice(&frame.read::<6>(12)?),
        10 => old.eth_tail.copy_from_slice(&frame.read::<10>(12)?),
        _ => return None,
    }

    // The UDP checksum, updated for every word that changes (RFC 1624): pseudo-header
    // addresses and length, ports, length, and the ChannelData header removed or added.
    let old_csum = be16([old.udp[6], old.udp[7]]);
    let old_len = [old.udp[4], old.udp[5]];
    let new_len = new_udp_len.to_be_bytes();
    let mut delta = 0;
    if v4 {
        delta = csum::sub(
            delta,
            &[
                old.ip4[12],
                old.ip4[13],
                old.ip4[14],
                old.ip4[15],
                old.ip4[16],
                old.ip4[17],
                old.ip4[18],
                old.ip4[19],
            ],
        );
        delta = csum::add(
            delta,
            &[
                action.src[0],
                action.src[1],
                action.src[2],
                action.src[3],
                action.dst[0],
                action.dst[1],
                action.dst[2],
                action.dst[3],
            ],
        );
    } else {
        delta = csum::sub(delta, &old.src);
        delta = csum::sub(delta, &old.dst);
        delta = csum::add(delta, &action.src);
        delta = csum::add(delta, &action.dst);
    }
    // The length is in the pseudo-header and in the UDP header: twice each.
    delta = csum::sub(
        delta,
        &[
            old.udp[0], old.udp[1], old.udp[2], old.udp[3], old_len[0], old_len[1], old_len[0],
            old_len[1],
        ],
    );
    // The new UDP header, its checksum still zero (so adding it adds nothing for that
    // word), and the new length once more for the pseudo-header.
    let mut udp = [
        action.src_port[0],
        action.src_port[1],
        action.dst_port[0],
        action.dst_port[1],
        new_len[0],
        new_len[1],
        0,
        0,
    ];
    delta = csum::add(delta, &udp);
    delta = csum::add(delta, &new_len);
    let new_cd = [
        (action.channel >> 8) as u8,
        action.channel as u8,
        (relayed >> 8) as u8,
        relayed as u8,
    ];
    match kind {
        ActionKind::StripChannel => delta = csum::sub(delta, &old.cd),
        ActionKind::AddChannel => delta = csum::add(delta, &new_cd),
        ActionKind::Hairpin => {
            delta = csum::sub(delta, &old.cd);
            delta = csum::add(delta, &new_cd);
        }
        ActionKind::RewriteOnly => {}
    }
    let new_csum = if v4 && old_csum == 0 {
        0 // IPv4 UDP without a checksum stays without one (RFC 768).
    } else {
        match csum::update(old_csum, delta) {
            0 => 0xFFFF,
            c => c,
        }
    };

    // Move the head: 4 bytes less for a stripped header, 4 more for an added one.
    let shift: i32 = match kind {
        ActionKind::StripChannel => CHANNEL_DATA_HLEN as i32,
        ActionKind::AddChannel => -(CHANNEL_DATA_HLEN as i32),
        ActionKind::RewriteOnly | ActionKind::Hairpin => 0,
    };
    // SAFETY: a plain helper call; every packet pointer is re-derived afterwards.
    if shift != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, shift) } != 0 {
        return None;
    }

    // Write the new headers at the (new) start of the frame.
    frame.write(0, &fib.dmac)?;
    frame.write(6, &fib.smac)?;
    match eth_tail_len {
        2 => frame.write(12, &[old.eth_tail[0], old.eth_tail[1]])?,
        6 => frame.write(
            12,
            &[
                old.eth_tail[0],
                old.eth_tail[1],
                old.eth_tail[2],
                old.eth_tail[3],
                old.eth_tail[4],
                old.eth_tail[5],
            ],
        )?,
        _ => frame.write(12, &old.eth_tail)?,
    }
    if v4 {
        let mut ip = old.ip4;
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
        frame.write(l3, &ipv4_header(ip, &action.src, &action.dst))?;
    } else {
        let mut ip = old.ip6;
        ip[4..6].copy_from_slice(&new_udp_len.to_be_bytes());
        frame.write(l3, &ipv6_header(ip, &action.src, &action.dst))?;
    }
    udp[6..8].copy_from_slice(&new_csum.to_be_bytes());
    frame.write(l4, &udp)?;
    if matches!(kind, ActionKind::AddChannel | ActionKind::Hairpin) {
        frame.write(l4 + UDP_HLEN, &new_cd)?;
    }
    Some(u64::from(tot_len) + l3 as u64)
}
