//! The telemedicine policy shipped in `appliance/policy/`, decided by Relay's policy engine:
//! a table of requests and what the policy says, the audit log they leave, and reloads
//! that fail (the old policy stays) or succeed.

use std::{path::PathBuf, time::Duration};

use relay::policy::{Action, AuditConfig, Policy, PolicyConfig, Shared, Sources, lock, reload};
use serde_json::{Value, json};

fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../appliance/policy")
        .join(file)
}

fn start(audit: Option<PathBuf>, sources: Sources) -> Shared {
    Policy::start(PolicyConfig {
        sources,
        audit: audit.map(|file| AuditConfig {
            file,
            max_bytes: 1 << 20,
            keep: 1,
        }),
        timeout: Duration::from_millis(50),
    })
    .unwrap()
    .shared()
}

fn telemedicine() -> Sources {
    Sources {
        rego: vec![example("telemedicine.rego")],
        data: Some(example("telemedicine.json")),
    }
}

fn turn_user(name: &str) -> Value {
    json!({ "user": format!("1900000000:{name}"), "name": name, "tenant": null,
            "address": "10.1.0.5", "port": 50000, "transport": "udp" })
}

fn endpoint(attributes: &Value) -> Value {
    json!({ "endpoint": "e", "attributes": attributes })
}

fn room(consent: bool) -> Value {
    json!({ "name": "ward-3", "tenant": null, "attributes": { "patient_consent": consent } })
}

fn peer(address: &str) -> Value {
    json!({ "peer": { "address": address, "port": 40000 }, "relayed": null, "channel": null })
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table: one row per case")]
fn the_telemedicine_policy_decides_as_written() {
    let policy = start(None, telemedicine());
    let staff = endpoint(&json!({ "role": "doctor" }));
    let cases: Vec<(Action, Value, Value, Result<(), &str>)> = vec![
        (
            Action::TurnAllocate,
            turn_user("dr-okafor"),
            json!({}),
            Ok(()),
        ),
        (Action::TurnAllocate, turn_user("bed-12"), json!({}), Ok(())),
        (
            Action::TurnAllocate,
            turn_user("bed-14"),
            json!({}),
            Err("staff role or a consenting patient required"),
        ),
        (
            Action::TurnAllocate,
            turn_user("visitor"),
            json!({}),
            Err("staff role or a consenting patient required"),
        ),
        (
            Action::TurnAllocate,
            turn_user("stranger"),
            json!({}),
            Err("staff role or a consenting patient required"),
        ),
        (
            Action::TurnCreatePermission,
            turn_user("dr-okafor"),
            peer("10.2.3.4"),
            Ok(()),
        ),
        (
            Action::TurnChannelBind,
            turn_user("nurse-lind"),
            peer("192.168.7.7"),
            Ok(()),
        ),
        (
            Action::TurnCreatePermission,
            turn_user("dr-okafor"),
            peer("8.8.8.8"),
            Err("media to 8.8.8.8 would leave the site"),
        ),
        (
            Action::TurnChannelBind,
            turn_user("dr-okafor"),
            peer("2001:db8::1"),
            Err("media to 2001:db8::1 would leave the site"),
        ),
        (
            Action::RoomJoin,
            staff.clone(),
            json!({ "room": room(true) }),
            Ok(()),
        ),
        (
            Action::RoomJoin,
            staff.clone(),
            json!({ "room": room(false) }),
            Err("patient consent required for this room"),
        ),
        (
            Action::RoomJoin,
            endpoint(&json!({ "role": "patient", "consent": true })),
            json!({ "room": room(true) }),
            Ok(()),
        ),
        (
            Action::RoomJoin,
            endpoint(&json!({})),
            json!({ "room": room(true) }),
            Err("staff role or a consenting patient required"),
        ),
        (
            Action::RoomPublish,
            staff.clone(),
            json!({ "room": room(true), "track": { "kind": "video" } }),
            Ok(()),
        ),
        (
            Action::RoomSubscribe,
            staff.clone(),
            json!({ "room": room(true), "destination": { "address": "10.9.9.9", "port": 5004 } }),
            Ok(()),
        ),
        (
            Action::RoomSubscribe,
            staff.clone(),
            json!({ "room": room(true), "destination": { "address": "203.0.113.9", "port": 5004 } }),
            Err("media to 203.0.113.9 would leave the site"),
        ),
        (
            Action::RoomSubscribe,
            staff,
            json!({ "room": room(true), "destination": null }),
            Err("a subscriber's address must be known (give the endpoint its remote)"),
        ),
        // Two reasons at once: both are given, sorted.
        (
            Action::RoomSubscribe,
            endpoint(&json!({ "role": "visitor" })),
            json!({ "room": room(false), "destination": { "address": "10.9.9.9", "port": 5004 } }),
            Err(
                "patient consent required for this room; staff role or a consenting patient required",
            ),
        ),
    ];
    for (action, subject, object, expected) in cases {
        let d = lock(&policy).decide(action, subject.clone(), object.clone());
        let got = if d.allow {
            Ok(())
        } else {
            Err(d.reason.as_str())
        };
        assert_eq!(got, expected, "{} by {subject} on {object}", action.name());
    }
    let counts = lock(&policy).counts();
    assert_eq!(counts.errors, 0);
    assert_eq!(counts.decisions.iter().map(|[a, d]| a + d).sum::<u64>(), 18);
}

#[test]
fn every_decision_is_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let policy = start(Some(log.clone()), telemedicine());
    lock(&policy).decide(Action::TurnAllocate, turn_user("dr-okafor"), json!({}));
    lock(&policy).decide(
        Action::TurnCreatePermission,
        turn_user("dr-okafor"),
        peer("8.8.4.4"),
    );
    let revision = lock(&policy).revision().to_owned();
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["action"], "turn.allocate");
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["subject"]["name"], "dr-okafor");
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["reason"], "media to 8.8.4.4 would leave the site");
    assert_eq!(lines[1]["object"]["peer"]["address"], "8.8.4.4");
    for line in &lines {
        assert_eq!(line["policy_revision"], revision.as_str());
        let time = line["time"].as_str().unwrap();
        assert!(time.starts_with("20") && time.ends_with('Z'), "{time}");
    }
}

#[test]
fn a_reload_that_fails_keeps_the_policy_in_force_and_a_good_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let rego = dir.path().join("p.rego");
    std::fs::write(
        &rego,
        "package relay\nimport rego.v1\nallow if input.subject.name == \"ann\"\n",
    )
    .unwrap();
    let policy = start(
        None,
        Sources {
            rego: vec![rego.clone()],
            data: None,
        },
    );
    let ann = || lock(&policy).decide(Action::TurnAllocate, json!({ "name": "ann" }), json!({}));
    let bob = || lock(&policy).decide(Action::TurnAllocate, json!({ "name": "bob" }), json!({}));
    let first = lock(&policy).revision().to_owned();
    assert!(ann().allow && !bob().allow);

    // Does not parse; then an unknown builtin: refused, the old policy decides on.
    for broken in [
        "package relay\nallow if {",
        "package relay\nimport rego.v1\nallow if time.no_such_builtin(1)\n",
    ] {
        std::fs::write(&rego, broken).unwrap();
        let err = reload(&policy).unwrap_err();
        assert!(
            err.to_string().contains("p.rego") || err.to_string().contains("no_such_builtin"),
            "{err}"
        );
        assert_eq!(lock(&policy).revision(), first);
        assert!(ann().allow && !bob().allow);
    }
    std::fs::write(
        &rego,
        "package relay\nimport rego.v1\nallow if input.subject.name == \"bob\"\n",
    )
    .unwrap();
    let second = reload(&policy).unwrap();
    assert_ne!(second, first);
    assert!(!ann().allow && bob().allow);
    let counts = lock(&policy).counts();
    assert_eq!((counts.reloads, counts.reload_failures), (1, 2));
}
