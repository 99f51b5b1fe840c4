//! The benchmark's ceiling (`cargo xtask bench`): the cheapest forwarder that parses with the
//! relay's own parser. Every clean UDP datagram is sent back out of the interface it came in
//! on with its MACs, IP addresses and UDP ports swapped; nothing is looked up, counted or
//! checked beyond what parsing needs, so what it forwards bounds what the relay's fast path
//! can reach on the same path. Not used by the relay itself.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use relay_common::parse::{Frame as _, udp_frame};

use crate::parse::XdpFrame;

/// `XDP_TX` for a clean UDP datagram (Ethernet, optional VLAN tags, IPv4 or IPv6, UDP; as
/// `relay_common::parse::udp_frame` accepts it) with its source and destination swapped at
/// every layer; `XDP_PASS`, the frame untouched, for everything else.
///
/// No checksum changes: the IPv4 header checksum and the UDP checksum (whose pseudo-header
/// holds the addresses) are one's complement sums of 16-bit words; addresses and ports are
/// whole words of the summed data, and swapping them only reorders the sum's terms.
#[inline(always)]
pub(crate) fn bounce(ctx: &XdpContext) -> u32 {
    match swap(&XdpFrame(ctx)) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

/// Swaps the frame's addresses; `None` (the frame untouched) when it is not clean UDP.
#[inline(always)]
fn swap(frame: &XdpFrame) -> Option<()> {
    let udp = udp_frame(frame).ok()?;
    // The parser saw the headers whole, and every write goes exactly where a read has just
    // succeeded: no write fails, the frame is either swapped whole or left as it came.
    let macs: [u8; 12] = frame.read(0)?;
    let ports: [u8; 4] = frame.read(udp.l4)?;
    if udp.ip_version == 4 {
        // Source and destination address: bytes 12..20 of the header, options or not.
        let addrs: [u8; 8] = frame.read(udp.l3 + 12)?;
        frame.write(udp.l3 + 12, &swapped::<8, 4>(&addrs))?;
    } else {
        // Source and destination address: bytes 8..40 of the fixed header.
        let addrs: [u8; 32] = frame.read(udp.l3 + 8)?;
        frame.write(udp.l3 + 8, &swapped::<32, 16>(&addrs))?;
    }
    frame.write(0, &swapped::<12, 6>(&macs))?;
    frame.write(udp.l4, &swapped::<4, 2>(&ports))
}

/// `bytes` with its two halves (`H` bytes each) exchanged.
#[inline(always)]
fn swapped<const N: usize, const H: usize>(bytes: &[u8; N]) -> [u8; N] {
    const { assert!(2 * H == N) };
    let mut out = [0; N];
    out[..H].copy_from_slice(&bytes[H..]);
    out[H..].copy_from_slice(&bytes[..H]);
    out
}
