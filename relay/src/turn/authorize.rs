//! The TURN requests a policy decides (Allocate, CreatePermission, ChannelBind), as input
//! documents: who asks (`subject`), and for what (`object`). See README "Policy".

use serde_json::{Value, json};

use super::{
    ClientTuple, Transport,
    auth::Authenticated,
    tenant::{Tenant, rest_user, tenant_of},
};
use crate::policy::{Action, Shared};

impl Transport {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// The user behind a request: the username as sent, its user part (a REST username is
/// `EXPIRY:USER`), its tenant, and where the client is.
fn subject(tuple: ClientTuple, auth: &Authenticated, tenants: &[Tenant]) -> Value {
    let name = rest_user(&auth.username).unwrap_or(&auth.username);
    json!({
        "user": auth.username,
        "name": name,
        "tenant": tenant_of(tenants, &auth.username).map(|i| tenants[i].name.as_str()),
        "address": tuple.client.ip().to_string(),
        "port": tuple.client.port(),
        "transport": tuple.transport.name(),
    })
}

/// Asks `policy` (if there is one) whether the user of `tuple` may do `action` on `object`;
/// `Some(reason)` when it may not.
pub(super) fn denied(
    policy: Option<&Shared>,
    action: Action,
    (tuple, auth, tenants): (ClientTuple, &Authenticated, &[Tenant]),
    object: Value,
) -> Option<String> {
    let decision =
        crate::policy::lock(policy?).decide(action, subject(tuple, auth, tenants), object);
    (!decision.allow).then(|| phrase(&decision.reason))
}

/// A reason phrase fits in fewer than 128 characters (RFC 8489 section 14.8); the audit
/// log has the whole reason.
fn phrase(reason: &str) -> String {
    const MAX: usize = 100;
    match reason.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &reason[..end]),
        None => reason.to_owned(),
    }
}
