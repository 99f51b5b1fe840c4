//! The room requests a policy decides (join, publish, subscribe), as input documents: the
//! endpoint that asks (`subject`) and the room, track and destination (`object`). See
//! README "Policy".

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::api::{ApiError, Attributes};
use crate::policy::{Action, Shared};

pub(super) fn endpoint(name: &str, attributes: &Attributes) -> Value {
    json!({ "endpoint": name, "attributes": attributes })
}

pub(super) fn room(name: &str, tenant: Option<&str>, attributes: &Attributes) -> Value {
    json!({ "name": name, "tenant": tenant, "attributes": attributes })
}

/// Where media would go: null while an endpoint waits to latch its address.
pub(super) fn destination(remote: Option<SocketAddr>) -> Value {
    remote.map_or(Value::Null, crate::policy::address)
}

/// Asks `policy` (if there is one): a refusal is a 403 whose message is the policy's reason.
pub(super) fn check(
    policy: Option<&Shared>,
    action: Action,
    subject: Value,
    object: Value,
) -> Result<(), ApiError> {
    let Some(policy) = policy else {
        return Ok(());
    };
    let decision = crate::policy::lock(policy).decide(action, subject, object);
    if decision.allow {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            None,
            format!("denied by policy: {}", decision.reason),
        ))
    }
}
