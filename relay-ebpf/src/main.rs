//! Relay's XDP program. The entry points stay thin; parsing and maps live in their modules.
#![no_std]
#![no_main]

mod bounce;
mod fanout;
mod forward;
mod maps;
mod parse;
mod permission;
mod room;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use relay_common::Verdict;

/// Forwards the packets of installed flows; drops peers' datagrams without a permission;
/// classifies and counts everything, and passes or drops what is not forwarded.
#[xdp]
fn relay_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let verdict = match relay_common::parse::udp_frame(&parse::XdpFrame(&ctx)) {
        Ok(frame) => {
            if let Some((verdict, action)) = forward::forward(&ctx, &frame) {
                maps::count(verdict, len);
                return action;
            }
            if let Some((verdict, action)) = room::route(&ctx, &frame) {
                maps::count(verdict, len);
                return action;
            }
            // SAFETY: a plain helper call.
            let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
            if permission::unpermitted(&parse::XdpFrame(&ctx), &frame, now) == Some(true) {
                Verdict::Unpermitted
            } else {
                frame.verdict()
            }
        }
        Err(verdict) => verdict,
    };
    maps::count(verdict, len);
    verdict.xdp_action()
}

/// TC ingress, beside `relay_xdp` on the same interfaces: sends a copy of each room packet
/// that XDP marked for fan-out to every destination of its route, then drops it; passes
/// everything else.
#[classifier]
fn relay_fanout(ctx: TcContext) -> i32 {
    fanout::fanout(&ctx).unwrap_or(fanout::PASS)
}

/// The benchmark's ceiling (`cargo xtask bench`), not attached by the relay: bounces clean
/// UDP back where it came from (`XDP_TX`), with no maps, and passes everything else.
#[xdp]
fn relay_bounce(ctx: XdpContext) -> u32 {
    bounce::bounce(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic, so this is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

/// The kernel only lets GPL-compatible programs call some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
