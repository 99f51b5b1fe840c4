//! The whole harness through its real interface, small: every system in the lab forwards a
//! light load with nothing lost, client to peer, client to client (hairpin) and one camera
//! to a room's subscribers (fan-out), and the run's files are written. Needs root, coturn
//! and GStreamer (`cargo xtask setup`) and the relay binary (built here if missing).

use std::{path::PathBuf, process::Command, sync::Mutex, time::Duration};

use relay_bench::{
    generator::Media,
    report,
    runner::{self, Scenario},
    systems::System,
    trial::{Search, Timing},
};

/// One lab at a time: two loads on 2 CPUs would each lose packets to the other.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// The debug relay next to this test's own binary, built if it is not there yet.
fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let relay = dir.join("relay");
    if !relay.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "relay", "--bin", "relay"])
            .status()
            .unwrap();
        assert!(status.success(), "building relay");
    }
    relay
}

/// A light run of `scenario`, 20 streams at `rate` only, one short trial per measurement.
fn light_plan(prefix: &str, scenario: Scenario, rate: f64) -> runner::Plan {
    let mut plan = runner::Plan::new(true, relay_binary());
    prefix.clone_into(&mut plan.lab_prefix);
    plan.scenarios = vec![scenario];
    plan.allocations = 20;
    plan.media = Media::Audio;
    // One rate only: clean there, the search stops at its maximum.
    plan.search = Search {
        start_pps: rate,
        max_pps: rate,
        steps: 0,
    };
    let timing = Timing {
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
    };
    plan.search_timing = timing;
    plan.measure_timing = timing;
    plan.repeats = 1;
    plan.sweep = vec![1, 3];
    plan.sweep_systems = vec![System::RelayXdp];
    plan
}

/// Every report of `s` found `rate` clean, and its half-load run lost nothing, arrived
/// framed as expected with good checksums, with latency and CPU figures.
fn assert_clean(s: &runner::ScenarioRun, rate: f64) {
    assert_eq!(s.baseline.rate_pps, Some(rate), "{:#?}", s.baseline);
    for r in &s.systems {
        let name = r.system.name();
        assert_eq!(
            r.saturation.rate_pps,
            Some(rate),
            "{name}: {:#?}",
            r.saturation
        );
        let half = r.half_load.as_ref().expect(name);
        let t = &half.runs[0];
        assert_eq!(
            (t.lost, t.checksum_errors, t.misframed),
            (0, 0, 0),
            "{name}: {t:#?}"
        );
        assert!(t.sent > 0 && t.window_delivered > 0, "{name}: {t:#?}");
        let latency = half.latency_us.expect(name);
        assert!(
            latency.p50 > 0.0 && latency.p50 <= latency.p999,
            "{name}: {latency:?}"
        );
        assert!(half.cpu_ns_per_packet.is_some(), "{name}");
    }
}

/// The files of `run` written into a fresh directory, by name, with the JSON and the page
/// of each of `systems` named `<date>-<prefix><system>`; the directory.
fn written(run: &runner::Run, prefix: &str, systems: &[System]) -> (Vec<String>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("relay-bench-test-{prefix}{}", std::process::id()));
    let written = report::write(run, &dir).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for system in systems {
        for ext in ["json", "md"] {
            let want = format!("{}-{prefix}{}.{ext}", run.date, system.name());
            assert!(names.contains(&want), "{want} in {names:?}");
        }
    }
    (names, dir)
}

/// Relay's XDP program counted at least 99% of what was sent through it `forwarded`.
fn assert_forwarded_in_xdp(r: &runner::SystemReport) {
    let (forwarded, sent) = (r.xdp_forwarded.unwrap(), r.sent_through());
    assert!(
        forwarded * 100 >= sent * 99,
        "XDP forwarded {forwarded} of {sent} packets (want at least 99%)"
    );
}

/// A light run of `scenario` alone, in a lab of its own under `prefix`, checked clean.
fn light_run(prefix: &str, scenario: Scenario, rate: f64) -> runner::Run {
    let run = {
        let _one = ONE_LAB
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runner::run(light_plan(prefix, scenario, rate)).unwrap()
    };
    assert_eq!(run.scenarios.len(), 1);
    assert_clean(run.scenario(scenario).unwrap(), rate);
    run
}

#[test]
fn every_system_forwards_a_light_load_and_the_run_is_written() {
    let run = light_run("rb-lab", Scenario::Peer, 2_000.0);
    let peer = run.scenario(Scenario::Peer).unwrap();
    assert_eq!(peer.skipped, [System::Gstreamer]);
    assert_eq!(peer.systems.len(), System::ALL.len() - 1);
    for r in &peer.systems {
        let name = r.system.name();
        // Every system but the ceiling is a process whose memory is read; Relay with XDP
        // also holds its maps.
        match r.system {
            System::Ceiling => assert!(r.memory.is_none()),
            System::RelayXdp => assert!(r.memory.unwrap().bpf_maps_kib > 0, "{:?}", r.memory),
            _ => assert!(r.memory.unwrap().rss_kib > 0, "{name}"),
        }
    }
    let xdp = &peer.systems[0];
    assert_eq!(xdp.system, System::RelayXdp);
    assert_forwarded_in_xdp(xdp);
    let swept: Vec<usize> = xdp.sweep.iter().map(|p| p.allocations).collect();
    assert_eq!(swept, [1, 3]);
    assert!(xdp.sweep.iter().all(|p| p.measured.runs[0].lost == 0));

    let ran: Vec<System> = peer.systems.iter().map(|r| r.system).collect();
    let (_, dir) = written(&run, "", &ran);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{}-coturn.json", run.date))).unwrap(),
    )
    .unwrap();
    assert_eq!(json["system"], "coturn");
    let svg = std::fs::read_to_string(dir.join(format!("{}-delivered.svg", run.date))).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("coturn"));
    let summary = report::summary(&run);
    for system in System::ALL {
        assert!(summary.contains(system.title()), "{summary}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The hairpin scenario (relay/relay): client A's channel is bound to client B's relayed
/// address and B's to A's; a few kpps of A's ChannelData arrive at B on B's channel with
/// nothing lost through every TURN system, and Relay's XDP program forwards nearly all of
/// it in one pass. The ceiling has no such path and is skipped.
#[test]
fn hairpin_streams_arrive_at_client_b_on_its_channel() {
    let run = light_run("rb-hairpin", Scenario::Hairpin, 4_000.0);
    let hairpin = run.scenario(Scenario::Hairpin).unwrap();
    assert_eq!(hairpin.skipped, [System::Ceiling, System::Gstreamer]);
    let systems: Vec<System> = hairpin.systems.iter().map(|r| r.system).collect();
    assert_eq!(
        systems,
        [
            System::RelayXdp,
            System::RelayUring,
            System::RelayMmsg,
            System::Coturn
        ]
    );
    for r in &hairpin.systems {
        assert!(r.sweep.is_empty(), "no sweep in the hairpin scenario");
        match r.system {
            System::RelayXdp => assert_forwarded_in_xdp(r),
            _ => assert_eq!(r.xdp_forwarded, None, "{}", r.system.name()),
        }
    }

    let (names, dir) = written(&run, "hairpin-", &systems);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{}-hairpin-relay-xdp.json", run.date))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&json["system"], &json["scenario"]),
        (&"relay-xdp".into(), &"hairpin".into())
    );
    assert!(names.contains(&format!("{}-hairpin-delivered.svg", run.date)));
    let summary = report::summary(&run);
    assert!(summary.contains("## Hairpin"), "{summary}");
    assert!(summary.contains("skipped"), "{summary}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fan-out scenario (a media room): one camera's RTP reaches one and eight subscribers
/// through Relay in the kernel (XDP alone for one, XDP and TC for eight), through Relay's
/// userspace and through GStreamer, nothing lost; the kernel's own accounting times Relay's
/// programs, the TC program running for the eight.
#[test]
fn a_camera_reaches_every_subscriber_through_each_fan_out() {
    let rate = 4_000.0;
    let run = {
        let _one = ONE_LAB
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut plan = light_plan("rb-fanout", Scenario::Fanout, rate);
        plan.systems = vec![System::RelayXdp, System::RelayUring, System::Gstreamer];
        plan.subscribers = vec![1, 8];
        runner::run(plan).unwrap()
    };
    let fanouts: Vec<&runner::ScenarioRun> = run.fanouts().collect();
    assert_eq!(fanouts.len(), 2);
    for f in &fanouts {
        let n = f.subscribers.unwrap();
        assert_clean(f, rate);
        let systems: Vec<System> = f.systems.iter().map(|r| r.system).collect();
        assert_eq!(
            systems,
            [System::RelayXdp, System::RelayUring, System::Gstreamer]
        );
        for r in &f.systems {
            let t = &r.half_load.as_ref().unwrap().runs[0];
            assert_eq!(t.copies, n as u64, "{}", r.system.name());
        }
        let (cost, _) = f.systems[0].programs.as_ref().unwrap();
        assert!(cost.xdp_runs > 0 && cost.ns_per_copy.is_some(), "{cost:?}");
        // One subscriber: XDP sends the copy itself; several: the TC program clones each
        // packet XDP marked.
        if n == 1 {
            assert!(cost.tc_runs * 10 < cost.xdp_runs, "{cost:?}");
        } else {
            assert!(cost.tc_runs * 10 >= cost.xdp_runs * 9, "{cost:?}");
        }
        assert!(f.systems[1..].iter().all(|r| r.programs.is_none()));
    }
    let systems = [System::RelayXdp, System::RelayUring, System::Gstreamer];
    let (names, dir) = written(&run, "fanout-8-", &systems);
    assert!(names.contains(&format!("{}-fanout-1-relay-xdp.json", run.date)));
    let summary = report::summary(&run);
    assert!(summary.contains("## Fan-out"), "{summary}");
    assert!(summary.contains("| 8 | GStreamer"), "{summary}");
    std::fs::remove_dir_all(&dir).unwrap();
}
