//! What `relay tune` prints: aligned tables for a person (the JSON is the types themselves).

use std::fmt::Write as _;

use crate::{Applied, Finding, Plan, Reverted, Status, Verified, plan::Action};

/// A value as a cell: an empty list is shown, not left blank.
fn cell(value: &str) -> String {
    if value.is_empty() {
        "(none)".to_owned()
    } else {
        value.to_owned()
    }
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

pub fn findings(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            let status = match f.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Info => "info",
            };
            vec![
                f.item.clone(),
                f.value.clone(),
                status.to_owned(),
                f.reason.clone(),
            ]
        })
        .collect();
    table(&["ITEM", "VALUE", "STATUS", "REASON"], &rows)
}

pub fn plan(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = plan
        .steps
        .iter()
        .map(|s| {
            let action = match s.action {
                Action::Keep => "keep",
                Action::Change if s.resets_link => "change (link reset)",
                Action::Change => "change",
                Action::Absent => "absent here",
                Action::ReadOnly => "read-only here",
            };
            vec![
                s.setting.to_string(),
                s.current.as_deref().map_or_else(|| "-".to_owned(), cell),
                s.proposed.clone(),
                action.to_owned(),
                if s.reboot { "yes" } else { "no" }.to_owned(),
                s.reason.clone(),
            ]
        })
        .collect();
    let mut out = format!("profile {}\n", plan.profile);
    out.push_str(&table(
        &[
            "SETTING", "CURRENT", "PROPOSED", "ACTION", "REBOOT", "REASON",
        ],
        &rows,
    ));
    out
}

pub fn applied(applied: &Applied) -> String {
    let mut out = if applied.changed.is_empty() {
        format!("profile {}: nothing to change\n", applied.plan.profile)
    } else {
        let rows: Vec<Vec<String>> = applied
            .changed
            .iter()
            .map(|c| vec![c.setting.to_string(), cell(&c.before), cell(&c.after)])
            .collect();
        format!(
            "profile {}: changed\n{}",
            applied.plan.profile,
            table(&["SETTING", "BEFORE", "NOW"], &rows)
        )
    };
    for f in &applied.files {
        let _ = writeln!(out, "persisted in {}", f.display());
    }
    for step in &applied.plan.steps {
        let why = match step.action {
            Action::ReadOnly => {
                "read-only in this network namespace (host-wide): apply from the host's"
            }
            Action::Absent => "this kernel or network namespace has no such setting",
            Action::Keep | Action::Change => continue,
        };
        let _ = writeln!(out, "not applied: {} ({why})", step.setting);
    }
    out
}

pub fn verified(verified: &Verified) -> String {
    let rows: Vec<Vec<String>> = verified
        .checked
        .iter()
        .map(|c| {
            vec![
                c.what.clone(),
                cell(&c.expected),
                c.current
                    .as_deref()
                    .map_or_else(|| "absent".to_owned(), cell),
                if c.drifted { "drift" } else { "ok" }.to_owned(),
            ]
        })
        .collect();
    format!(
        "profile {}\n{}",
        verified.profile,
        table(&["SETTING", "EXPECTED", "CURRENT", "STATUS"], &rows)
    )
}

pub fn reverted(reverted: &Reverted) -> String {
    let mut out = format!("profile {} reverted\n", reverted.profile);
    for c in &reverted.restored {
        let _ = writeln!(
            out,
            "{} = {} (was {})",
            c.setting,
            cell(&c.before),
            cell(&c.after)
        );
    }
    for f in &reverted.files {
        let _ = writeln!(out, "restored {}", f.display());
    }
    out
}
