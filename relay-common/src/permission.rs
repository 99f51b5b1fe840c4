//! Relayed addresses and their permissions, as the XDP program checks them (RFC 8656 section
//! 9): a datagram to a relayed address from a peer without a permission is dropped in the
//! kernel, before it spends any budget or wakes userspace. A permission is by IP; on the
//! relay host's own addresses it admits only live relayed addresses, port-exact (the class
//! of CVE-2020-26262).

/// Entries of `RELAYED`: relayed transport addresses the program guards.
pub const MAX_RELAYED: u32 = 32768;
/// Entries of `PERMISSIONS`.
pub const MAX_PERMISSIONS: u32 = 65536;

/// A relayed transport address: the destination of a peer's datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelayedKey {
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    /// `flow::FAMILY_IPV4` or `flow::FAMILY_IPV6`.
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
}

const _: () = assert!(size_of::<RelayedKey>() == 20);

/// A permission: a peer IP on one relayed address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PermissionKey {
    pub relayed: RelayedKey,
    /// The peer's address, same layout.
    pub peer: [u8; 16],
}

const _: () = assert!(size_of::<PermissionKey>() == 36);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permission {
    /// CLOCK_MONOTONIC nanoseconds when the permission ends.
    pub expires_ns: u64,
    /// 1: the peer IP is the relay host's own; only senders that are themselves in
    /// `RELAYED` (port-exact) are admitted.
    pub own: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 7],
}

const _: () = assert!(size_of::<Permission>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no implicit padding (sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::RelayedKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PermissionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Permission {}
}
