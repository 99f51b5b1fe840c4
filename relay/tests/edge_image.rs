//! The edge image `cargo xtask image --edge` writes (xtask/src/edge.rs), with the relay under
//! test in it: built twice, the same disk bytes; then booted as an edge box would boot it,
//! in qemu with UEFI firmware (OVMF) on a disk a gigabyte bigger than the image, with a TURN
//! secret put on its EFI partition the way an operator provisions a box. coturn's
//! `turnutils_stunclient` gets a Binding response from the booted relay, through qemu's
//! user network on loopback; an Allocate with REST credentials from the provisioned secret
//! succeeds; the console shows the first boot's steps; after a clean power-off, the box's
//! journal shows the tune profile applied, the XDP program attached natively by Debian 12's
//! kernel and the root grown to the disk. Needs root, mmdebstrap and the Debian mirror,
//! qemu, OVMF, mtools (`cargo xtask setup`); about 6 minutes (two builds of Debian, an
//! emulated boot).

use std::{
    io::Read as _,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const RELAY: &str = env!("CARGO_BIN_EXE_relay");
const APPLIANCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../appliance");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Firmware, kernel, first boot and the relay's start: seconds with KVM, minutes without.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const SECRET: &str = "edge-box-provisioned-secret";

fn build(out: &Path) -> xtask::edge::Built {
    let inputs = xtask::edge::Inputs {
        relay: Path::new(RELAY),
        appliance: Path::new(APPLIANCE),
        epoch: xtask::image::source_date_epoch(Path::new(WORKSPACE)).unwrap(),
        mirror: "http://deb.debian.org/debian",
    };
    xtask::edge::build(&inputs, out).unwrap()
}

fn must(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (`cargo xtask setup` installs it)"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GPT partition types (UAPI Discoverable Partitions Specification).
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// The byte offset of the disk's partition of type `kind`, from its GPT (sfdisk).
fn partition_offset(disk: &Path, kind: &str) -> u64 {
    let table: serde_json::Value =
        serde_json::from_str(&must(Command::new("sfdisk").arg("--json").arg(disk))).unwrap();
    let partition = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == kind)
        .unwrap_or_else(|| panic!("no partition of type {kind}: {table}"));
    partition["start"].as_u64().unwrap() * 512
}

/// Puts `relay/turn-secret` on the disk's EFI partition, as an operator does after flashing.
fn provision(disk: &Path, dir: &Path) {
    let image = format!("{}@@{}", disk.display(), partition_offset(disk, ESP_TYPE));
    let secret = dir.join("turn-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    must(Command::new("mmd").args(["-i", &image, "::relay"]));
    must(
        Command::new("mcopy")
            .args(["-i", &image])
            .arg(&secret)
            .arg("::relay/turn-secret"),
    );
}

/// A free port on loopback for qemu to forward (UDP and TCP both free).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// qemu with OVMF booting `disk`; the guest's 3478 forwarded from `port` on loopback.
struct Vm {
    child: Child,
    console: PathBuf,
}

impl Vm {
    fn boot(disk: &Path, dir: &Path, port: u16) -> Self {
        let code = [
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_CODE.fd",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("OVMF firmware (package ovmf)");
        let vars = dir.join("vars.fd");
        std::fs::copy(code.replace("CODE", "VARS"), &vars).unwrap();
        let console = dir.join("console.log");
        // Emulated, not KVM: this machine's /dev/kvm is nested virtualization that fails in
        // OVMF's first instructions ("KVM internal error ... emulation failure"). About a
        // minute and a half to a relay that answers.
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35,accel=tcg",
                "-cpu",
                "max",
                "-m",
                "1024",
                "-smp",
                "2",
            ])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp").display()
            ))
            .args(["-display", "none", "-no-reboot", "-serial"])
            .arg(format!("file:{}", console.display()))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=udp:127.0.0.1:{port}-:3478,\
                 hostfwd=tcp:127.0.0.1:{port}-:3478"
            ))
            // No option ROM: the firmware boots from the disk, not the network.
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (package qemu-system-x86)");
        Self { child, console }
    }

    /// Presses the power button (ACPI, by QMP) and waits for the guest to power off, so that
    /// its journal is on the disk.
    fn power_off(&mut self, qmp: &Path) {
        use std::io::Write as _;
        let mut socket = std::os::unix::net::UnixStream::connect(qmp).unwrap();
        socket
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"system_powerdown\"}\n")
            .unwrap();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the guest did not power off:\n{}",
                tail(&self.console())
            );
            // The QMP socket says when the guest has shut down; reading it paces the loop.
            let mut buf = [0_u8; 512];
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let _ = socket.read(&mut buf);
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Fails the test with the console's end when qemu has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!(
                "qemu exited ({status}): {stderr}\n{}",
                tail(&self.console())
            );
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// coturn's STUN client against the forwarded port: the mapped address it printed.
fn stun_binding(port: u16) -> Option<String> {
    // It waits for an answer as long as there is none: at most 3 s a try.
    let out = Command::new("timeout")
        .args([
            "3",
            "turnutils_stunclient",
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("turnutils_stunclient (package coturn)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("UDP reflexive addr"))
        .map(str::to_owned)
}

#[test]
fn the_edge_image_is_reproducible_boots_and_answers_stun() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = build(one.path());
    let second = build(two.path());
    println!("edge image {} ({})", first.digest, first.disk.display());
    assert_eq!(first.digest, second.digest, "reproducible");
    drop(two);
    let packages = std::fs::read_to_string(&first.packages).unwrap();
    for (package, _) in xtask::edge::PACKAGES {
        assert!(
            packages
                .lines()
                .any(|l| l.split(' ').next() == Some(package)),
            "{package} is not in the image: {packages}"
        );
    }

    // The box's disk: bigger than the image, the operator's secret on the ESP.
    let disk = first.disk;
    let size = std::fs::metadata(&disk).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(size + (1 << 30))
        .unwrap();
    provision(&disk, one.path());

    let port = free_port();
    let mut vm = Vm::boot(&disk, one.path(), port);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mapped = loop {
        vm.assert_running();
        if let Some(mapped) = stun_binding(port) {
            break mapped;
        }
        assert!(
            Instant::now() < deadline,
            "no STUN answer from the booted image in {BOOT_TIMEOUT:?}:\n{}",
            tail(&vm.console())
        );
    };
    println!("booted: STUN {mapped}");

    // TURN with REST credentials made from the secret the first boot took from the ESP.
    let username = format!(
        "{}:edge-test",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    );
    let password = relay::stun::integrity::rest_password(SECRET.as_bytes(), &username);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let allocation = relay::turn::client::Client::allocate(socket, server, &username, &password)
        .unwrap_or_else(|e| {
            panic!(
                "Allocate with the provisioned secret: {e}\n{}",
                tail(&vm.console())
            )
        });
    println!("allocated {}", allocation.relayed());

    let console = vm.console();
    for line in [
        "relay first boot: turn-secret from the EFI partition",
        "relay first boot: media interface enp0s2",
    ] {
        assert!(
            console.contains(line),
            "console lacks {line:?}:\n{}",
            tail(&console)
        );
    }

    // After a clean power-off, the box's journal: the tune profile applied, XDP attached
    // natively by Debian 12's kernel (6.1: its verifier is older than this host's), and
    // the root grown into the extra gigabyte.
    vm.power_off(&one.path().join("qmp"));
    let (journal, root_bytes) = journal_of(&disk, one.path());
    for line in [
        "Finished relay-tune.service",
        "XDP attached to enp0s2 in native (driver) mode",
        "Started relay.service",
    ] {
        assert!(
            journal.contains(line),
            "the journal lacks {line:?}:\n{}",
            tail(&journal)
        );
    }
    // The image's root file system is its size less 129 MiB (GPT and ESP); grown, it has
    // most of the extra gigabyte.
    println!("root file system after the first boot: {root_bytes} bytes of a {size}-byte image");
    assert!(
        root_bytes > size + (1 << 29),
        "the root was not grown to the disk ({root_bytes} bytes):\n{}",
        tail(&journal)
    );
}

/// The journal of the powered-off box and the size of its root file system (the root
/// partition mounted read-only by offset).
fn journal_of(disk: &Path, dir: &Path) -> (String, u64) {
    let offset = partition_offset(disk, ROOT_X86_64_TYPE);
    let mnt = dir.join("root");
    std::fs::create_dir_all(&mnt).unwrap();
    must(
        Command::new("mount")
            .args(["-o", &format!("ro,loop,offset={offset}")])
            .arg(disk)
            .arg(&mnt),
    );
    let journal = Command::new("journalctl")
        .arg("-D")
        .arg(mnt.join("var/log/journal"))
        .args(["--no-pager", "-o", "short-monotonic"])
        .output();
    let df = must(Command::new("df").args(["-B1", "--output=size"]).arg(&mnt));
    must(Command::new("umount").arg(&mnt));
    let bytes = df
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    (
        String::from_utf8_lossy(&journal.expect("journalctl").stdout).into_owned(),
        bytes,
    )
}
