//! The shipped telemedicine policy deciding real TURN clients (coturn's turnutils_uclient,
//! in its default mode) in the lab: staff relay, a visitor is refused with 403 and the
//! policy's reason, every decision lands in the audit log, a changed data file reloads the
//! policy while the relay serves, and a broken policy (on file change or SIGHUP) leaves the
//! one in force. Needs root and coturn's client tools.

mod support;

use std::path::Path;

use nix::sys::signal::Signal;
use support::{RunningRelay, TempDir, http_get};
use xtask::{
    coturn::{self, Report, Session},
    lab::{Host, Lab},
};

const PROBES: &str = "10.77.0.1:9090";
const SESSION: Session = Session {
    messages: 20,
    clients: 1,
    length: 172,
    peer_port: 3480,
};

fn uclient(lab: &Lab, user: &str) -> Report {
    let flags = ["-u", user, "-W", "north", "-e", "10.77.0.21", "10.77.0.1"];
    coturn::uclient(lab, Host::ClientA, &SESSION, &flags).unwrap()
}

fn audit(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metric(lab: &Lab, series: &str) -> f64 {
    let (_, text) = http_get(lab, Host::ClientA, &format!("http://{PROBES}/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn the_telemedicine_policy_decides_turn_clients_and_reloads_while_serving() {
    let lab = Lab::up("lpol").unwrap();
    let dir = TempDir::new("lpol");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/policy");
    let (rego, data, log) = (
        dir.0.join("telemedicine.rego"),
        dir.0.join("telemedicine.json"),
        dir.0.join("audit.log"),
    );
    std::fs::copy(shipped.join("telemedicine.rego"), &rego).unwrap();
    std::fs::copy(shipped.join("telemedicine.json"), &data).unwrap();
    let (rego_arg, data_arg, log_arg) = (
        rego.display().to_string(),
        data.display().to_string(),
        log.display().to_string(),
    );
    let relay = RunningRelay::in_lab(
        &lab,
        &[
            "--use-auth-secret",
            "--static-auth-secret",
            "north",
            "--allowed-peer-ip",
            "10.77.0.0/24",
            "--policy",
            &rego_arg,
            "--policy-data",
            &data_arg,
            "--audit-log",
            &log_arg,
            "--metrics-listen",
            PROBES,
        ],
    );
    let _peer = coturn::start_peer(&lab, Host::Peer, &["10.77.0.21"], SESSION.peer_port).unwrap();

    // A doctor relays to an on-site peer; a visitor is refused at its Allocate, with why.
    let doctor = uclient(&lab, "dr-okafor");
    assert!(doctor.is_clean(&SESSION), "{}", doctor.tail());
    let visitor = uclient(&lab, "visitor");
    assert_eq!(visitor.received, 0, "{}", visitor.tail());
    assert!(
        visitor.output.contains("403") && visitor.output.contains("Forbidden"),
        "uclient should show the 403:\n{}",
        visitor.tail()
    );
    let lines = audit(&log);
    let allocate = |name: &str, decision: &str| {
        lines.iter().any(|l| {
            l["action"] == "turn.allocate"
                && l["subject"]["name"] == name
                && l["decision"] == decision
        })
    };
    assert!(allocate("dr-okafor", "allow") && allocate("visitor", "deny"));
    let refusal = lines.iter().find(|l| l["decision"] == "deny").unwrap();
    assert_eq!(
        refusal["reason"],
        "staff role or a consenting patient required"
    );
    assert_eq!(refusal["subject"]["address"], "10.77.0.11");
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "turn.channel_bind" && l["decision"] == "allow")
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("north"), "the REST secret in the audit log");
    assert!(
        metric(
            &lab,
            "relay_policy_decisions_total{action=\"turn.allocate\",decision=\"deny\"}"
        ) >= 1.0
    );

    // The site moves off the lab's range: the data file changes and the relay reloads it.
    let moved = std::fs::read_to_string(&data)
        .unwrap()
        .replace("\"10.0.0.0/8\", ", "");
    std::fs::write(&data, moved).unwrap();
    relay.wait_for_log("loaded, replacing");
    let off_site = uclient(&lab, "dr-okafor");
    assert_eq!(off_site.received, 0, "{}", off_site.tail());
    assert!(audit(&log).iter().any(|l| {
        l["decision"] == "deny" && l["reason"] == "media to 10.77.0.21 would leave the site"
    }));

    // A policy that does not compile is refused, on a file change and on SIGHUP: the one in
    // force decides on (the doctor is still refused off site, not let through, not failed).
    std::fs::write(&rego, "package relay\nallow if {").unwrap();
    relay.wait_for_log("policy not reloaded");
    relay.signal(Signal::SIGHUP);
    relay.wait_for_log("SIGHUP: reloading the policy");
    relay.wait_for_log("policy not reloaded");
    let still = uclient(&lab, "dr-okafor");
    assert_eq!(still.received, 0, "{}", still.tail());
    assert!(metric(&lab, "relay_policy_reloads_total{result=\"failed\"}") >= 2.0);
    assert!(metric(&lab, "relay_policy_errors_total") == 0.0);
}
