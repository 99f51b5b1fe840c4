//! The dashboard and the alert rules that ship with Relay, checked as their tools check
//! them: every PromQL expression parses, panel ids are unique, `promtool check rules`
//! accepts the rules and `promtool test rules` passes their unit tests (an alert fires on
//! a series that should fire it, and not on one below its threshold). That every metric
//! they name is in the relay's real exposition is checked in `lab_metrics`. Needs promtool
//! (`cargo xtask setup` installs Debian's `prometheus` package).

mod monitoring_support;

use std::{collections::BTreeSet, process::Command};

use monitoring_support::{appliance, dashboard, expressions, metric_names};

fn promtool(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (`cargo xtask setup` installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_check_and_their_unit_tests_pass() {
    let dir = appliance("prometheus");
    promtool(&["check", "rules", "relay-alerts.yaml"], &dir);
    promtool(&["test", "rules", "relay-alerts.test.yaml"], &dir);
}

#[test]
fn the_dashboard_parses_and_names_relay_metrics_only() {
    let dashboard = dashboard();
    let ids: Vec<u64> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids repeat: {ids:?}");
    let expressions = expressions();
    assert!(expressions.len() > 10, "{expressions:?}");
    for (what, expr) in &expressions {
        let names = metric_names(what, expr);
        assert!(!names.is_empty(), "{what} selects no metric: {expr}");
        for name in names {
            assert!(
                name == "up" || name.starts_with("relay_") || name.starts_with("process_"),
                "{what}: {name} is not one of Relay's"
            );
        }
    }
    // A broken expression is caught, not skipped.
    let bad = std::panic::catch_unwind(|| metric_names("bad", "sum(rate(relay_ready[5m])"));
    assert!(bad.is_err());
}
