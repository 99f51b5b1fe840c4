//! The whole harness through its real interface, small: every system in the lab forwards a
//! light load with nothing lost, and the run's files are written. Needs root, coturn
//! (`cargo xtask setup`) and the relay binary (built here if missing).

use std::{path::PathBuf, process::Command, time::Duration};

use relay_bench::{
    generator::Media,
    report, runner,
    systems::System,
    trial::{Search, Timing},
};

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

#[test]
fn every_system_forwards_a_light_load_and_the_run_is_written() {
    let rate = 2_000.0;
    let mut plan = runner::Plan::new(true, relay_binary());
    plan.lab_prefix = "rb-lab".to_owned();
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

    let run = runner::run(plan).unwrap();

    assert_eq!(run.systems.len(), System::ALL.len());
    assert_eq!(run.baseline.rate_pps, Some(rate), "{:#?}", run.baseline);
    for r in &run.systems {
        let name = r.system.name();
        assert_eq!(
            r.saturation.rate_pps,
            Some(rate),
            "{name}: {:#?}",
            r.saturation
        );
        let half = r.half_load.as_ref().expect(name);
        let t = &half.runs[0];
        assert_eq!((t.lost, t.checksum_errors), (0, 0), "{name}: {t:#?}");
        assert!(t.sent > 0 && t.window_delivered > 0, "{name}: {t:#?}");
        let latency = half.latency_us.expect(name);
        assert!(
            latency.p50 > 0.0 && latency.p50 <= latency.p999,
            "{name}: {latency:?}"
        );
        assert!(half.cpu_ns_per_packet.is_some(), "{name}");
        // Every system but the ceiling is a process whose memory is read; Relay with XDP
        // also holds its maps.
        match r.system {
            System::Ceiling => assert!(r.memory.is_none()),
            System::RelayXdp => assert!(r.memory.unwrap().bpf_maps_kib > 0, "{:?}", r.memory),
            _ => assert!(r.memory.unwrap().rss_kib > 0, "{name}"),
        }
    }
    let xdp = &run.systems[0];
    assert_eq!(xdp.system, System::RelayXdp);
    let swept: Vec<usize> = xdp.sweep.iter().map(|p| p.allocations).collect();
    assert_eq!(swept, [1, 3]);
    assert!(xdp.sweep.iter().all(|p| p.measured.runs[0].lost == 0));

    let dir = std::env::temp_dir().join(format!("relay-bench-test-{}", std::process::id()));
    let written = report::write(&run, &dir).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for system in System::ALL {
        for ext in ["json", "md"] {
            let want = format!("{}-{}.{ext}", run.date, system.name());
            assert!(names.contains(&want), "{want} in {names:?}");
        }
    }
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
