//! Permissions in the kernel (RFC 8656 section 9): a datagram to a relayed address the
//! daemon listed in `RELAYED` passes only from a peer it listed in `PERMISSIONS`, and from
//! the relay host's own address only if the sender is itself a relayed address. Everything
//! else goes to the stack as before: the daemon decides what it does not list.

use relay_common::{
    flow::{FAMILY_IPV4, FAMILY_IPV6},
    parse::{Frame as _, UdpFrame},
    permission::{PermissionKey, RelayedKey},
};

use crate::{maps, parse::XdpFrame};

/// Whether the datagram is addressed to a guarded relayed address by a sender without a
/// permission (to be dropped) at `now_ns`.
#[inline(always)]
pub(crate) fn unpermitted(frame: &XdpFrame<'_>, f: &UdpFrame, now_ns: u64) -> Option<bool> {
    let mut to = RelayedKey::default();
    let mut from = RelayedKey::default();
    if f.ip_version == 4 {
        let addrs: [u8; 8] = frame.read(f.l3 + 12)?;
        from.addr[..4].copy_from_slice(&addrs[..4]);
        to.addr[..4].copy_from_slice(&addrs[4..]);
        (from.family, to.family) = (FAMILY_IPV4, FAMILY_IPV4);
    } else {
        let addrs: [u8; 32] = frame.read(f.l3 + 8)?;
        from.addr.copy_from_slice(&addrs[..16]);
        to.addr.copy_from_slice(&addrs[16..]);
        (from.family, to.family) = (FAMILY_IPV6, FAMILY_IPV6);
    }
    let ports: [u8; 4] = frame.read(f.l4)?;
    from.port = [ports[0], ports[1]];
    to.port = [ports[2], ports[3]];
    if !maps::is_relayed(&to) {
        return Some(false);
    }
    let key = PermissionKey {
        relayed: to,
        peer: from.addr,
    };
    let permitted = maps::permission(&key)
        .is_some_and(|p| p.expires_ns > now_ns && (p.own == 0 || maps::is_relayed(&from)));
    Some(!permitted)
}
