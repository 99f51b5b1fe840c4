//! The data plane's match/action table: what identifies a packet of a flow (the key) and
//! what to do with it (the action), plus per-flow counters. Defined once here for the XDP
//! program and the daemon.
//!
//! A TURN channel is two flows: client -> peer (match the client's 5-tuple and channel,
//! strip the ChannelData header, send from the relayed address) and peer -> client (match
//! the peer and relayed address, add the header, send from the listener). When the peer is
//! another allocation's relayed address on this relay (two browsers of one relay: the most
//! common TURN case in WebRTC), the client's flow is a hairpin instead: its ChannelData goes
//! straight to the other client, on the other client's channel. Plain RTP flows (rewrite
//! only) and 1:N fan-out use the same table with other action kinds.

/// Address family codes used in keys and actions.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Entries of the flow table and of its counters: two flows per TURN channel, so room for
/// 32768 channels.
pub const MAX_FLOWS: u32 = 65536;

/// Matches a UDP packet arriving at the relay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    /// Destination address (the relay's), same layout.
    pub dst: [u8; 16],
    /// Source port, network byte order.
    pub src_port: [u8; 2],
    /// Destination port, network byte order.
    pub dst_port: [u8; 2],
    /// The ChannelData channel number (host order) the packet must carry, or 0 to match
    /// packets that are not ChannelData.
    pub channel: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, always zero (keys are compared bytewise by the kernel).
    pub pad: u8,
}

const _: () = assert!(size_of::<FlowKey>() == 40);

/// What the fast path does to a matched packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// Client -> peer: remove the 4-byte ChannelData header, rewrite addresses and ports.
    StripChannel = 1,
    /// Peer -> client: add a ChannelData header for `channel`, rewrite addresses and ports.
    AddChannel = 2,
    /// Rewrite addresses and ports only (plain RTP relaying; later issues).
    RewriteOnly = 3,
    /// Client -> client of another allocation of this relay (relay/relay): swap the
    /// ChannelData channel for the other client's, rewrite addresses and ports. Spends and
    /// counts on both allocations, as the two hops through userspace would.
    Hairpin = 4,
}

/// The action for a [`FlowKey`]: the new addresses, and the flow's bookkeeping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowAction {
    /// New source address (the relay's sending address), network byte order.
    pub src: [u8; 16],
    /// New destination address.
    pub dst: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// The channel to add (AddChannel), host order.
    pub channel: u16,
    /// An [`ActionKind`] as u8.
    pub kind: u8,
    /// Family of the new addresses: the same as the key's (no translation in the kernel).
    pub family: u8,
    /// Index of this flow's counters in the per-CPU `FLOW_STATS` array.
    pub stats_index: u32,
    /// Index in `POLICERS` of the tenant's limit the flow spends (0: none).
    pub tenant_policer: u32,
    /// Index in `POLICERS` of the allocation's own limit, `--max-bps` (0: none).
    pub allocation_policer: u32,
    /// Hairpin: the other allocation's to-client counters (`FLOW_STATS`); 0 otherwise.
    pub hairpin_stats_index: u32,
    /// CLOCK_MONOTONIC nanoseconds after which the permission behind the flow is gone: the
    /// program then leaves the packet to userspace.
    pub expires_ns: u64,
    /// Hairpin: the other allocation's tenant and own limits (`POLICERS`); 0 otherwise.
    pub hairpin_tenant_policer: u32,
    pub hairpin_allocation_policer: u32,
}

const _: () = assert!(size_of::<FlowAction>() == 72);

impl FlowAction {
    pub const fn kind(&self) -> Option<ActionKind> {
        match self.kind {
            1 => Some(ActionKind::StripChannel),
            2 => Some(ActionKind::AddChannel),
            3 => Some(ActionKind::RewriteOnly),
            4 => Some(ActionKind::Hairpin),
            _ => None,
        }
    }
}

/// Per-flow, per-CPU counters, read back by the daemon for usage accounting and metrics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    /// Bytes of the packets as they left (headers included).
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds of the last packet.
    pub last_seen_ns: u64,
}

const _: () = assert!(size_of::<FlowStats>() == 24);

impl FlowStats {
    /// Adds another CPU's counts; the latest `last_seen_ns` wins.
    #[must_use]
    pub const fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(o.packets),
            bytes: self.bytes.wrapping_add(o.bytes),
            last_seen_ns: if o.last_seen_ns > self.last_seen_ns {
                o.last_seen_ns
            } else {
                self.last_seen_ns
            },
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no implicit padding (size asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowAction {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
}
