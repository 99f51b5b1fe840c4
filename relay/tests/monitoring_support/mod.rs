//! The monitoring that ships with Relay (`appliance/grafana/relay-dashboard.json`,
//! `appliance/prometheus/relay-alerts.yaml`) as the tests read it: every PromQL expression,
//! parsed, and the metric names they select.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::{collections::BTreeSet, path::PathBuf};

use promql_parser::{
    parser::Expr,
    util::{ExprVisitor, walk_expr},
};

pub(crate) fn appliance(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../appliance")
        .join(path)
}

pub(crate) fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(appliance("grafana/relay-dashboard.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every PromQL expression of the dashboard's panels (Grafana's variables replaced by
/// what they stand for) and of the alert rules, with where it is.
pub(crate) fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            out.push((format!("panel {}", panel["title"]), expr));
        }
    }
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(appliance("prometheus/relay-alerts.yaml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = ();

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        let selector = match expr {
            Expr::VectorSelector(v) => Some(v),
            Expr::MatrixSelector(m) => Some(&m.vs),
            _ => None,
        };
        if let Some(name) = selector.and_then(|s| s.name.clone()) {
            self.0.insert(name);
        }
        Ok(true)
    }
}

/// The metric names `expr` selects; panics naming `what` if it does not parse.
pub(crate) fn metric_names(what: &str, expr: &str) -> BTreeSet<String> {
    let parsed =
        promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {e}\n{expr}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    names.0
}

/// The series names an exposition (text format 0.0.4) declares: each family's, and a
/// histogram's `_bucket`, `_sum` and `_count`.
pub(crate) fn exposed(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for declared in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut words = declared.split_whitespace();
        let (Some(name), kind) = (words.next(), words.next()) else {
            continue;
        };
        if kind == Some("histogram") {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name.to_owned());
    }
    names
}

/// Names the monitoring selects that `exposition` lacks (Prometheus's own `up` aside).
pub(crate) fn missing_from(exposition: &str) -> Vec<(String, String)> {
    let exposed = exposed(exposition);
    expressions()
        .iter()
        .flat_map(|(what, expr)| {
            metric_names(what, expr)
                .into_iter()
                .map(move |n| (what.clone(), n))
        })
        .filter(|(_, name)| name != "up" && !exposed.contains(name))
        .collect()
}
