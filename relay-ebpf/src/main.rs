//! Relay's XDP program. The entry point stays thin; parsing and maps live in their modules.
#![no_std]
#![no_main]

mod maps;
mod parse;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Classifies every frame, counts it under its verdict, and passes or drops it.
#[xdp]
fn relay_xdp(ctx: XdpContext) -> u32 {
    let verdict = match relay_common::parse::udp_frame(&parse::XdpFrame(&ctx)) {
        Ok(frame) => frame.verdict(),
        Err(verdict) => verdict,
    };
    maps::count(verdict, (ctx.data_end() - ctx.data()) as u64);
    verdict.xdp_action()
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
