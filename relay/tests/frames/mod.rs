//! What the packet-table tests (`xdp_packets`, `xdp_bounce`) share: the documentation
//! addresses their frames go between (RFC 5737, RFC 3849) and helpers that build or break
//! frames in precise ways.

pub(crate) const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub(crate) const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(crate) const SRC4: [u8; 4] = [192, 0, 2, 11];
pub(crate) const DST4: [u8; 4] = [192, 0, 2, 1];
pub(crate) const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
];
pub(crate) const DST6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
/// Ethernet (14) + IPv4 (20): where UDP starts in a plain IPv4 frame.
pub(crate) const V4_L4: usize = 34;

/// An ARP request from `SRC` for `DST4`.
pub(crate) fn arp() -> Vec<u8> {
    let mut f = Vec::from([0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&SRC4);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&DST4);
    f
}

/// `frame` with the bytes at `offset` replaced by `bytes`.
pub(crate) fn patched(mut frame: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    frame[offset..offset + bytes.len()].copy_from_slice(bytes);
    frame
}

/// The first `len` bytes of `frame`.
pub(crate) fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}
