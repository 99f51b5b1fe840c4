//! check, plan, apply, verify and revert on fake `/proc`, `/sys` and `/etc` trees with a fake
//! ethtool. Host-wide sysctls (rmem_max, wmem_max, netdev_max_backlog, netdev_budget,
//! busy_read, busy_poll) are tested only here: a network namespace cannot change them.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::{
    Error, Host, Options, Profile, Status,
    ethtool::{Channels, Ethtool, Rings},
    plan::{Action, Plan, Step},
};

#[derive(Clone, Debug)]
struct Nic {
    driver: String,
    rings: Option<Rings>,
    channels: Option<Channels>,
    gro: bool,
}

/// ethtool over a map of NICs; refuses ring sizes above `refuse_rings_above`, like a driver.
#[derive(Clone, Default)]
struct FakeEthtool {
    nics: Arc<Mutex<BTreeMap<String, Nic>>>,
    refuse_rings_above: Arc<Mutex<Option<u32>>>,
    /// Takes any ring size but rounds it down to this, as some drivers do.
    clamp_rings_to: Arc<Mutex<Option<u32>>>,
}

impl FakeEthtool {
    fn nic(&self, interface: &str) -> io::Result<Nic> {
        self.nics
            .lock()
            .unwrap()
            .get(interface)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
    }

    fn update(&self, interface: &str, f: impl FnOnce(&mut Nic)) -> io::Result<()> {
        let mut nics = self.nics.lock().unwrap();
        let nic = nics
            .get_mut(interface)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        f(nic);
        Ok(())
    }
}

impl Ethtool for FakeEthtool {
    fn driver(&self, interface: &str) -> io::Result<Option<String>> {
        Ok(Some(self.nic(interface)?.driver))
    }
    fn rings(&self, interface: &str) -> io::Result<Option<Rings>> {
        Ok(self.nic(interface)?.rings)
    }
    fn set_rings(&self, interface: &str, rings: Rings) -> io::Result<()> {
        if self
            .refuse_rings_above
            .lock()
            .unwrap()
            .is_some_and(|max| rings.rx > max || rings.tx > max)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let clamp = self.clamp_rings_to.lock().unwrap().unwrap_or(u32::MAX);
        self.update(interface, |nic| {
            let r = nic.rings.as_mut().expect("rings");
            (r.rx, r.tx) = (rings.rx.min(clamp), rings.tx.min(clamp));
        })
    }
    fn channels(&self, interface: &str) -> io::Result<Option<Channels>> {
        Ok(self.nic(interface)?.channels)
    }
    fn set_channels(&self, interface: &str, channels: Channels) -> io::Result<()> {
        self.update(interface, |nic| {
            let c = nic.channels.as_mut().expect("channels");
            (c.rx, c.tx, c.combined) = (channels.rx, channels.tx, channels.combined);
        })
    }
    fn gro(&self, interface: &str) -> io::Result<bool> {
        Ok(self.nic(interface)?.gro)
    }
    fn set_gro(&self, interface: &str, on: bool) -> io::Result<()> {
        self.update(interface, |nic| nic.gro = on)
    }
}

/// A 4-CPU host with one `ixgbe`-like NIC `eth0`: 1 of 8 combined queues, rings 512 of
/// 4096, GRO off; the kernel's defaults for the sysctls.
struct Fake {
    dir: tempfile::TempDir,
    ethtool: FakeEthtool,
}

const SYSCTLS: &[(&str, &str)] = &[
    ("net/core/rmem_max", "212992"),
    ("net/core/wmem_max", "212992"),
    ("net/core/netdev_max_backlog", "1000"),
    ("net/core/netdev_budget", "300"),
    ("net/core/busy_read", "0"),
    ("net/core/busy_poll", "0"),
    ("net/ipv4/ip_local_reserved_ports", ""),
    ("net/ipv4/ip_local_port_range", "32768\t60999"),
    ("net/netfilter/nf_conntrack_count", "12"),
];

impl Fake {
    fn new() -> Self {
        let fake = Self {
            dir: tempfile::tempdir().unwrap(),
            ethtool: FakeEthtool::default(),
        };
        for (key, value) in SYSCTLS {
            fake.put(&format!("root/proc/sys/{key}"), value);
        }
        fake.put("root/sys/devices/system/cpu/online", "0-3");
        for cpu in 0..4 {
            fake.put(
                &format!("root/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "powersave",
            );
        }
        fake.put("root/sys/class/net/eth0/address", "02:00:00:00:00:01");
        fake.put("root/sys/class/net/eth0/queues/rx-0/rps_cpus", "0");
        fake.put("root/sys/class/net/eth0/queues/tx-0/xps_cpus", "1");
        fake.put("root/sys/class/net/eth0/device/msi_irqs/30", "msix");
        fake.put("root/sys/class/net/eth0/device/msi_irqs/31", "msix");
        fake.put("root/proc/irq/30/effective_affinity_list", "0");
        fake.put("root/proc/irq/31/effective_affinity_list", "0");
        fake.put(
            "root/proc/net/softnet_stat",
            "00001000 00000005 00000000\n00000100 00000000 00000000",
        );
        fake.put("root/proc/1/comm", "systemd");
        fake.put("root/sys/class/net/lo/address", "00:00:00:00:00:00");
        fake.put("etc/tuned/active_profile", "throughput-performance");
        fake.ethtool.nics.lock().unwrap().insert(
            "eth0".into(),
            Nic {
                driver: "ixgbe".into(),
                rings: Some(Rings {
                    rx: 512,
                    tx: 512,
                    rx_max: 4096,
                    tx_max: 4096,
                }),
                channels: Some(Channels {
                    combined: 1,
                    combined_max: 8,
                    ..Channels::default()
                }),
                gro: false,
            },
        );
        fake
    }

    fn put(&self, rel: &str, content: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{content}\n")).unwrap();
    }

    fn get(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel))
            .unwrap()
            .trim_end()
            .to_owned()
    }

    fn host(&self, privileged: bool) -> Host {
        Host::new(
            self.dir.path().join("root"),
            self.dir.path().join("etc"),
            Box::new(self.ethtool.clone()),
            privileged,
        )
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Every file under the tree and the NICs' settings: what must come back after revert.
    fn snapshot(&self) -> (BTreeMap<PathBuf, String>, String) {
        let mut files = BTreeMap::new();
        walk(self.dir.path(), &mut files);
        (files, format!("{:?}", self.ethtool.nics.lock().unwrap()))
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The step of `plan` that sets `name` (as `plan` prints it).
fn step<'a>(plan: &'a Plan, name: &str) -> &'a Step {
    plan.steps
        .iter()
        .find(|s| s.setting.to_string() == name)
        .unwrap_or_else(|| panic!("no {name} in {plan:#?}"))
}

fn eth0() -> Options {
    Options {
        interface: Some("eth0".into()),
        ..Options::default()
    }
}

#[test]
fn check_reports_each_item_with_its_status() {
    let fake = Fake::new();
    let findings = crate::check(&fake.host(false), &eth0()).unwrap();
    let status = |item: &str| {
        findings
            .iter()
            .find(|f| f.item == item)
            .unwrap_or_else(|| panic!("no {item} in {findings:#?}"))
            .status
    };
    assert_eq!(status("xdp"), Status::Ok);
    assert_eq!(status("channels"), Status::Warn);
    assert_eq!(status("rings"), Status::Warn);
    assert_eq!(
        status("irq-affinity"),
        Status::Warn,
        "both vectors on CPU 0, no irqbalance"
    );
    assert_eq!(status("rps"), Status::Warn);
    assert_eq!(status("net.core.rmem_max"), Status::Warn);
    assert_eq!(
        status("net.core.netdev_max_backlog"),
        Status::Warn,
        "5 drops in softnet_stat"
    );
    assert_eq!(status("net.ipv4.ip_local_reserved_ports"), Status::Warn);
    assert_eq!(status("conntrack"), Status::Warn);
    assert_eq!(status("cpu-governor"), Status::Warn);
    assert_eq!(status("tuned"), Status::Warn);
    let conntrack = findings.iter().find(|f| f.item == "conntrack").unwrap();
    assert!(
        conntrack
            .reason
            .contains("3478, 40000-44999, 49152-65535 } notrack")
    );

    // A driver without native XDP, irqbalance running, the host tuned.
    fake.ethtool
        .nics
        .lock()
        .unwrap()
        .get_mut("eth0")
        .unwrap()
        .driver = "r8169".into();
    fake.put("root/proc/77/comm", "irqbalance");
    fake.put("root/proc/sys/net/core/rmem_max", "4194304");
    std::fs::remove_file(fake.dir.path().join("etc/tuned/active_profile")).unwrap();
    let findings = crate::check(&fake.host(false), &eth0()).unwrap();
    let find = |item: &str| findings.iter().find(|f| f.item == item).unwrap();
    assert_eq!(find("xdp").status, Status::Warn);
    assert!(
        find("xdp").reason.contains("generic mode"),
        "{:?}",
        find("xdp")
    );
    assert_eq!(find("irqbalance").value, "running");
    assert_eq!(find("irq-affinity").status, Status::Info);
    assert_eq!(find("net.core.rmem_max").status, Status::Ok);
    assert_eq!(find("tuned").status, Status::Ok);
}

#[test]
fn check_of_an_unknown_interface_names_the_known_ones() {
    let fake = Fake::new();
    let options = Options {
        interface: Some("eth9".into()),
        ..Options::default()
    };
    let e = crate::check(&fake.host(false), &options).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no interface \"eth9\" in this network namespace (there are: eth0, lo)"
    );
}

#[test]
fn plans_of_the_three_profiles() {
    let fake = Fake::new();
    let host = fake.host(false);
    let edge = crate::plan(&host, Profile::Edge4c8g, &eth0()).unwrap();
    let changes: Vec<(String, String)> = edge
        .changes()
        .map(|s| (s.setting.to_string(), s.proposed.clone()))
        .collect();
    let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect()
    };
    assert_eq!(
        changes,
        expect(&[
            ("net.core.rmem_max", "4194304"),
            ("net.core.wmem_max", "4194304"),
            ("net.core.netdev_max_backlog", "5000"),
            (
                "net.ipv4.ip_local_reserved_ports",
                "40000-44999,49152-65535"
            ),
            ("net.core.netdev_budget", "600"),
            ("eth0 ring rx", "4096"),
            ("eth0 ring tx", "4096"),
            ("eth0 channels combined", "4"),
            ("eth0 gro", "on"),
        ])
    );
    assert!(edge.steps.iter().all(|s| !s.reboot));
    assert!(edge.changes().filter(|s| s.resets_link).count() == 3);

    let k3s = crate::plan(&host, Profile::K3sNode, &eth0()).unwrap();
    assert!(k3s.steps.iter().all(|s| s.setting.interface().is_none()));
    assert!(
        !k3s.steps
            .iter()
            .any(|s| s.setting.to_string() == "net.core.netdev_budget")
    );

    let latency = crate::plan(&host, Profile::Latency, &eth0()).unwrap();
    for key in ["net.core.busy_read", "net.core.busy_poll"] {
        let busy = step(&latency, key);
        assert_eq!(
            (busy.proposed.as_str(), busy.action),
            ("50", Action::Change)
        );
    }

    // A single-queue NIC: RPS over all four CPUs instead of more queues.
    fake.ethtool
        .update("eth0", |nic| nic.channels = None)
        .unwrap();
    let edge = crate::plan(&host, Profile::Edge4c8g, &eth0()).unwrap();
    let rps = step(&edge, "eth0 rx-0 rps_cpus");
    assert_eq!(
        (rps.current.as_deref(), rps.proposed.as_str()),
        (Some("0"), "f")
    );
}

#[test]
fn a_host_wide_sysctl_read_only_here_is_not_applied() {
    let fake = Fake::new();
    let path = fake.dir.path().join("root/proc/sys/net/core/rmem_max");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let plan = crate::plan(&fake.host(true), Profile::K3sNode, &Options::default()).unwrap();
    assert_eq!(step(&plan, "net.core.rmem_max").action, Action::ReadOnly);
    std::fs::remove_file(fake.dir.path().join("root/proc/sys/net/core/busy_read")).unwrap();
    let plan = crate::plan(&fake.host(true), Profile::Latency, &Options::default()).unwrap();
    assert_eq!(step(&plan, "net.core.busy_read").action, Action::Absent);
    crate::apply(
        &fake.host(true),
        &fake.state(),
        Profile::Latency,
        &Options::default(),
    )
    .unwrap();
    assert_eq!(fake.get("root/proc/sys/net/core/rmem_max"), "212992");
}

#[test]
fn apply_verify_revert_puts_back_every_value_and_file() {
    let fake = Fake::new();
    let host = fake.host(true);
    // A file of the operator's where apply writes: revert must bring it back as it was.
    fake.put("etc/sysctl.d/90-relay-tune.conf", "# mine");
    fake.ethtool
        .update("eth0", |nic| nic.channels = None)
        .unwrap();
    let before = fake.snapshot();

    let applied = crate::apply(&host, &fake.state(), Profile::Latency, &eth0()).unwrap();
    assert_eq!(applied.changed.len(), 11, "{applied:#?}");
    assert_eq!(fake.get("root/proc/sys/net/core/rmem_max"), "4194304");
    assert_eq!(
        fake.get("root/proc/sys/net/ipv4/ip_local_reserved_ports"),
        "40000-44999,49152-65535"
    );
    assert_eq!(
        fake.get("root/sys/class/net/eth0/queues/rx-0/rps_cpus"),
        "f"
    );
    let nic = fake.ethtool.nic("eth0").unwrap();
    assert_eq!((nic.rings.unwrap().rx, nic.gro), (4096, true));
    assert_eq!(
        fake.get("etc/sysctl.d/90-relay-tune.conf"),
        "# Written by `relay tune apply --profile latency`.\n\
         # `relay tune revert` removes this file and puts the values back.\n\
         net.core.rmem_max = 4194304\n\
         net.core.wmem_max = 4194304\n\
         net.core.netdev_max_backlog = 5000\n\
         net.ipv4.ip_local_reserved_ports = 40000-44999,49152-65535\n\
         net.core.netdev_budget = 600\n\
         net.core.busy_read = 50\n\
         net.core.busy_poll = 50"
    );
    let link = fake.get("etc/systemd/network/90-relay-tune-eth0.link");
    assert!(
        link.contains("[Match]\nMACAddress=02:00:00:00:00:01\n"),
        "{link}"
    );
    assert!(
        link.contains("NamePolicy=keep kernel database onboard slot path\n"),
        "{link}"
    );
    assert!(
        link.ends_with("RxBufferSize=4096\nTxBufferSize=4096\nGenericReceiveOffload=true"),
        "{link}"
    );
    assert!(fake.get("etc/udev/rules.d/90-relay-tune.rules").ends_with(
        "ACTION==\"add\", SUBSYSTEM==\"net\", ATTR{address}==\"02:00:00:00:00:01\", \
             ATTR{queues/rx-0/rps_cpus}=\"f\""
    ));
    let journal = std::fs::metadata(fake.state().join("tune/journal.json")).unwrap();
    assert_eq!(journal.permissions().mode() & 0o777, 0o600);

    let verified = crate::verify(&host, &fake.state()).unwrap();
    assert_eq!(verified.drifted().count(), 0, "{verified:#?}");
    assert_eq!(verified.checked.len(), 14, "11 values and 3 files");

    // Something else changes a value and edits a file: verify says so.
    fake.put("root/proc/sys/net/core/netdev_budget", "300");
    fake.put("etc/udev/rules.d/90-relay-tune.rules", "# edited");
    let verified = crate::verify(&host, &fake.state()).unwrap();
    let drifted: Vec<&str> = verified.drifted().map(|c| c.what.as_str()).collect();
    assert_eq!(drifted.len(), 2, "{drifted:?}");
    assert_eq!(drifted[0], "net.core.netdev_budget");
    assert!(drifted[1].ends_with("etc/udev/rules.d/90-relay-tune.rules"));

    let reverted = crate::revert(&host, &fake.state()).unwrap();
    assert_eq!(reverted.restored.len(), 11);
    assert_eq!(
        fake.snapshot(),
        before,
        "every file and NIC setting as it was"
    );
    assert!(matches!(
        crate::verify(&host, &fake.state()),
        Err(Error::NothingApplied(_))
    ));
}

#[test]
fn apply_twice_changes_nothing_the_second_time() {
    let fake = Fake::new();
    let host = fake.host(true);
    let before = fake.snapshot();
    crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    let once = fake.snapshot();
    let again = crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    assert!(again.changed.is_empty());
    assert_eq!(
        fake.snapshot(),
        once,
        "the host, the files and the journal unchanged"
    );

    // A value found right by the first apply that drifts: the second apply repairs it, and
    // revert puts back what the first apply found (the profile's value), not the drift.
    fake.put("root/proc/sys/net/core/netdev_budget", "100");
    let repaired = crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    assert_eq!(repaired.changed.len(), 1);
    assert_eq!(fake.get("root/proc/sys/net/core/netdev_budget"), "600");
    crate::revert(&host, &fake.state()).unwrap();
    assert_eq!(fake.snapshot(), before);

    let e = {
        crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
        crate::apply(&host, &fake.state(), Profile::Latency, &eth0()).unwrap_err()
    };
    assert_eq!(
        e.to_string(),
        "profile edge-4c8g is applied here (interface eth0): `relay tune revert` it first, \
         then apply another profile or other options"
    );
}

#[test]
fn a_value_the_nic_refuses_leaves_nothing_applied() {
    let fake = Fake::new();
    let host = fake.host(true);
    *fake.ethtool.refuse_rings_above.lock().unwrap() = Some(2048);
    let before = fake.snapshot();
    let e = crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the kernel refused eth0 ring rx = 4096: Invalid argument (os error 22); nothing is \
         applied (the 5 setting(s) changed before it were put back)"
    );
    assert_eq!(
        fake.snapshot(),
        before,
        "sysctls back, no journal, no files"
    );
}

#[test]
fn a_value_read_back_otherwise_leaves_nothing_applied() {
    let fake = Fake::new();
    let host = fake.host(true);
    *fake.ethtool.clamp_rings_to.lock().unwrap() = Some(2048);
    let before = fake.snapshot();
    let e = crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "eth0 ring rx = 4096 was accepted but reads back \"2048\" (the driver or kernel \
         rounded or clamped it); nothing is applied (the 5 setting(s) changed before it were \
         put back)"
    );
    assert_eq!(fake.snapshot(), before, "the ring too is back at 512");
}

#[test]
fn without_root_apply_and_revert_change_nothing() {
    let fake = Fake::new();
    let before = fake.snapshot();
    let e = crate::apply(&fake.host(false), &fake.state(), Profile::Edge4c8g, &eth0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "relay tune apply changes kernel and NIC settings and needs root: run it as root (or \
         with sudo)"
    );
    crate::apply(&fake.host(true), &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    let applied = fake.snapshot();
    assert!(matches!(
        crate::revert(&fake.host(false), &fake.state()),
        Err(Error::NotRoot(_))
    ));
    assert_eq!(fake.snapshot(), applied);
    crate::revert(&fake.host(true), &fake.state()).unwrap();
    assert_eq!(fake.snapshot(), before);
}

#[test]
fn a_file_that_cannot_be_written_leaves_nothing_applied() {
    let fake = Fake::new();
    let host = fake.host(true);
    // A folder where the udev rule's temporary file goes: the last file cannot be written
    // (as root, permissions would not stop it; a read-only /etc would).
    std::fs::create_dir_all(
        fake.dir
            .path()
            .join("etc/udev/rules.d/90-relay-tune.rules.tmp"),
    )
    .unwrap();
    fake.ethtool
        .update("eth0", |nic| nic.channels = None)
        .unwrap();
    let before = fake.snapshot();
    let e = crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap_err();
    let message = e.to_string();
    assert!(
        message.starts_with("cannot persist the settings: writing ")
            && message.ends_with(
                "etc/udev/rules.d/90-relay-tune.rules: Is a directory (os error 21); nothing \
                 is applied (the 9 setting(s) changed were put back)"
            ),
        "{message}"
    );
    assert_eq!(
        fake.snapshot(),
        before,
        "values back, sysctl.d and .link removed"
    );
}

#[test]
fn a_revert_the_nic_refuses_keeps_what_is_left_for_another_try() {
    let fake = Fake::new();
    let host = fake.host(true);
    let before = fake.snapshot();
    crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    *fake.ethtool.refuse_rings_above.lock().unwrap() = Some(100);
    let e = crate::revert(&host, &fake.state()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "revert could not put everything back: eth0 ring tx = 512: Invalid argument (os error \
         22); eth0 ring rx = 512: Invalid argument (os error 22). What is left stays in the \
         journal: fix the cause and run `relay tune revert` again"
    );
    let journal = crate::journal::Journal::load(&fake.state())
        .unwrap()
        .unwrap();
    let left: Vec<String> = journal
        .changes
        .iter()
        .map(|c| c.setting.to_string())
        .collect();
    assert_eq!(left, ["eth0 ring rx", "eth0 ring tx"]);
    assert!(journal.files.is_empty(), "the files are restored already");
    *fake.ethtool.refuse_rings_above.lock().unwrap() = None;
    crate::revert(&host, &fake.state()).unwrap();
    assert_eq!(fake.snapshot(), before);
}

#[test]
fn a_file_apply_no_longer_needs_is_put_back() {
    let fake = Fake::new();
    let host = fake.host(true);
    fake.ethtool
        .update("eth0", |nic| nic.channels = None)
        .unwrap();
    let before = fake.snapshot();
    crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    let rules = fake.dir.path().join("etc/udev/rules.d/90-relay-tune.rules");
    assert!(rules.exists());
    // A driver update gives the NIC queues: a queue per CPU, so no RPS and no udev rule.
    fake.ethtool
        .update("eth0", |nic| {
            nic.channels = Some(Channels {
                combined: 1,
                combined_max: 8,
                ..Channels::default()
            });
        })
        .unwrap();
    let again = crate::apply(&host, &fake.state(), Profile::Edge4c8g, &eth0()).unwrap();
    let changed: Vec<String> = again
        .changed
        .iter()
        .map(|c| c.setting.to_string())
        .collect();
    assert_eq!(changed, ["eth0 channels combined"]);
    assert!(!rules.exists(), "the rule is gone");
    assert_eq!(
        crate::verify(&host, &fake.state())
            .unwrap()
            .drifted()
            .count(),
        0
    );
    crate::revert(&host, &fake.state()).unwrap();
    assert_eq!(
        fake.snapshot().0,
        before.0,
        "every file as it was, the RPS mask included"
    );
}
