//! The edge image: a bootable GPT disk for an x86-64 edge box, built from Debian packages.
//!
//! 1. `mmdebstrap` makes Debian 12 with systemd, the kernel and its initramfs, Relay, its
//!    units (`appliance/systemd`), the first-boot step and the network and tune defaults
//!    (`appliance/edge`), as a tarball: reproducible by mmdebstrap's own design
//!    (`SOURCE_DATE_EPOCH`, the same mirror state).
//! 2. The tarball, unpacked on a tmpfs (whose directory order is the creation order, not a
//!    hash of the host's file system), becomes the root file system: `mkfs.ext4 -d` with a
//!    fixed UUID and hash seed, then debugfs sets the two times mke2fs 1.47.0 copies from the
//!    unpacked files (ctime, atime) to `SOURCE_DATE_EPOCH`.
//! 3. The EFI system partition: systemd-boot as the removable-media loader, one loader entry,
//!    the kernel and initramfs (`mkfs.vfat --invariant`, mtools under `SOURCE_DATE_EPOCH`).
//! 4. `systemd-repart` lays both out on a GPT disk (`CopyBlocks=`), its UUIDs derived from a
//!    fixed seed.
//!
//! Same inputs (relay binary, `appliance/`, epoch, the mirror's packages), same disk bytes.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use crate::command::run;

/// The GPT partition UUIDs (`root=PARTUUID=` and fstab name them) and the file systems'
/// UUIDs. Fixed so that the disk is reproducible; every box flashed from it shares them,
/// as every box flashed from one image does.
const ESP_PARTUUID: &str = "8f0c3a52-5e1d-4c3b-9a57-52454c590001";
const ROOT_PARTUUID: &str = "8f0c3a52-5e1d-4c3b-9a57-52454c590002";
const ROOT_FS_UUID: &str = "8f0c3a52-5e1d-4c3b-9a57-52454c590003";
const ROOT_HASH_SEED: &str = "8f0c3a52-5e1d-4c3b-9a57-52454c590004";
const REPART_SEED: &str = "8f0c3a52-5e1d-4c3b-9a57-52454c590005";
/// The FAT volume id (hex, 8 digits).
const ESP_VOLUME_ID: &str = "52454c59";
/// The ESP holds systemd-boot, one kernel and its initramfs (about 40 MiB).
const ESP_MIB: u64 = 128;

/// Debian packages of the image beyond mmdebstrap's `apt` variant (Essential: yes), and why.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "linux-image-amd64",
        "the kernel (Debian 12's, as an edge box runs it)",
    ),
    (
        "initramfs-tools",
        "its initramfs: virtio, NVMe, SATA and ext4 to find the root",
    ),
    ("zstd", "the initramfs's compression"),
    ("systemd", "the service manager, networkd, journald"),
    ("systemd-sysv", "systemd as /sbin/init"),
    (
        "systemd-timesyncd",
        "the clock by NTP: TURN REST credentials expire by it",
    ),
    ("systemd-boot", "the EFI loader (copied to the ESP)"),
    (
        "udev",
        "device names and NIC setup (.link files of `relay tune`)",
    ),
    ("dbus", "hostnamectl, timedatectl, networkctl"),
    ("kmod", "modules for the NIC and the file systems"),
    ("iproute2", "ip, to look at the box's network"),
    (
        "passwd",
        "usermod: the root password the first boot may be given",
    ),
];

/// The Debian suite the image is made of.
pub const SUITE: &str = "bookworm";

/// What goes into the image.
pub struct Inputs<'a> {
    /// The relay binary (linked against Debian 12's glibc).
    pub relay: &'a Path,
    /// The repository's `appliance/` directory.
    pub appliance: &'a Path,
    /// Seconds since the epoch: every time in the image.
    pub epoch: u64,
    /// The Debian mirror (`http://deb.debian.org/debian`); its security suite is beside it.
    pub mirror: &'a str,
}

/// What was written.
pub struct Built {
    /// The raw GPT disk: `dd` it to the box's disk, or boot it in qemu.
    pub disk: PathBuf,
    /// `sha256:...` of the disk.
    pub digest: String,
    /// `PACKAGE VERSION` lines: what the image is made of.
    pub packages: PathBuf,
}

/// Builds `out/relay-edge-VERSION.img` (and `.packages` beside it), replacing what was there.
/// Needs root (mmdebstrap's root mode, a tmpfs mount), mmdebstrap, e2fsprogs, dosfstools,
/// mtools and systemd-repart.
pub fn build(inputs: &Inputs, out: &Path) -> anyhow::Result<Built> {
    std::fs::create_dir_all(out)?;
    // systemd-repart ignores a CopyBlocks= path with `..` in it (not "normalized").
    let out = &std::fs::canonicalize(out)?;
    let work = out.join("edge-work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let overlay = work.join("overlay");
    stage_overlay(inputs, &overlay)?;
    let tarball = work.join("rootfs.tar");
    let packages = out.join(format!("relay-edge-{}.packages", crate::image::TAG));
    mmdebstrap(inputs, &overlay, &tarball, &packages)?;

    let root = work.join("root");
    let mounted = Tmpfs::mount(&root)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&root))?;
    let esp = work.join("esp.img");
    esp_image(&root, &work.join("esp"), &esp, inputs.epoch)?;
    let root_img = work.join("root.img");
    root_image(&root, &root_img, inputs.epoch)?;

    let disk = out.join(format!("relay-edge-{}.img", crate::image::TAG));
    if disk.exists() {
        std::fs::remove_file(&disk)?;
    }
    gpt_disk(&work.join("repart.d"), &esp, &root_img, &disk)?;
    let digest = sha256_file(&disk)?;
    drop(mounted);
    // The tarball and the file systems are in the disk now: a gigabyte and a half less.
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(Built {
        disk,
        digest,
        packages,
    })
}

/// The files Relay adds to Debian, laid out as in the image.
fn stage_overlay(inputs: &Inputs, overlay: &Path) -> anyhow::Result<()> {
    let app = inputs.appliance;
    let files: &[(&Path, &str, u32)] = &[
        (inputs.relay, "usr/bin/relay", 0o755),
        (&app.join("relay.toml"), "etc/relay/relay.toml", 0o644),
        (&app.join("edge/tune.env"), "etc/relay/tune.env", 0o644),
        (
            &app.join("systemd/relay.service"),
            "usr/lib/systemd/system/relay.service",
            0o644,
        ),
        (
            &app.join("systemd/relay-tune.service"),
            "usr/lib/systemd/system/relay-tune.service",
            0o644,
        ),
        (
            &app.join("edge/relay-firstboot.service"),
            "usr/lib/systemd/system/relay-firstboot.service",
            0o644,
        ),
        (
            &app.join("edge/firstboot"),
            "usr/lib/relay/firstboot",
            0o755,
        ),
        (
            &app.join("edge/20-wired.network"),
            "etc/systemd/network/20-wired.network",
            0o644,
        ),
        (
            &app.join("edge/50-root.conf"),
            "usr/lib/repart.d/50-root.conf",
            0o644,
        ),
    ];
    for (from, to, mode) in files {
        copy(from, &overlay.join(to), *mode)?;
    }
    write(&overlay.join("etc/hostname"), b"relay\n", 0o644)?;
    // The root grows to the disk it is flashed to at first boot (systemd-repart grows the
    // partition, x-systemd.growfs the file system); the ESP is where the first boot finds
    // what the operator put there (appliance/edge/firstboot).
    let fstab = format!(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n\
         PARTUUID={ROOT_PARTUUID} / ext4 defaults,errors=remount-ro,x-systemd.growfs 0 1\n\
         PARTUUID={ESP_PARTUUID} /boot/efi vfat umask=0077,nofail 0 2\n"
    );
    write(&overlay.join("etc/fstab"), fstab.as_bytes(), 0o644)?;
    std::fs::create_dir_all(overlay.join("boot/efi"))?;
    Ok(())
}

/// `from`'s bytes at `to` with `mode`, parents made.
fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Debian with Relay in it, as a tarball; the package list beside it.
fn mmdebstrap(
    inputs: &Inputs,
    overlay: &Path,
    tarball: &Path,
    packages: &Path,
) -> anyhow::Result<()> {
    let overlay = shell_quoted(overlay)?;
    let packages_out = shell_quoted(packages)?;
    let include = PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",");
    let mirror = inputs.mirror.trim_end_matches('/');
    let security = mirror.strip_suffix("/debian").map_or_else(
        || format!("{mirror}-security"),
        |base| format!("{base}/debian-security"),
    );
    let hooks = [
        format!("cp -a {overlay}/. \"$1/\""),
        // Relay, its tune profile and first boot at boot; DHCP on wired NICs; NTP.
        "chroot \"$1\" systemctl enable relay-firstboot.service relay-tune.service \
         relay.service systemd-networkd.service systemd-timesyncd.service"
            .to_owned(),
        // relay-firstboot does the box's first boot: systemd-firstboot would stop at the
        // console to ask for a locale and a root password, with nobody there.
        "chroot \"$1\" systemctl mask systemd-firstboot.service".to_owned(),
        format!(
            "chroot \"$1\" dpkg-query -W -f '${{Package}} ${{Version}}\\n' | sort > {packages_out}"
        ),
    ];
    let mut command = Command::new("mmdebstrap");
    command
        .env("SOURCE_DATE_EPOCH", inputs.epoch.to_string())
        .args(["--mode=root", "--variant=apt", "--format=tar"])
        .arg(format!("--include={include}"))
        // Manuals and translations: nobody reads them on the box. Licences stay.
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        ]);
    for hook in &hooks {
        command.arg(format!("--customize-hook={hook}"));
    }
    command
        .arg(SUITE)
        .arg(tarball)
        .arg(format!("deb {mirror} {SUITE} main"))
        .arg(format!("deb {mirror} {SUITE}-updates main"))
        .arg(format!("deb {security} {SUITE}-security main"));
    run(&mut command).context("mmdebstrap (package mmdebstrap; it needs the Debian mirror)")
}

/// `'path'` for a shell, refusing a path with a quote in it.
fn shell_quoted(path: &Path) -> anyhow::Result<String> {
    let text = path.to_string_lossy();
    if text.contains('\'') {
        bail!("{text}: a path with a single quote cannot be handed to mmdebstrap's hooks");
    }
    Ok(format!("'{text}'"))
}

/// A tmpfs mounted for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755,size=4g", "relay-edge"])
            .arg(at))
        .context("mounting a tmpfs for the root file system (needs root)")?;
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The EFI system partition: systemd-boot, its entry, the kernel and initramfs.
fn esp_image(root: &Path, staging: &Path, image: &Path, epoch: u64) -> anyhow::Result<()> {
    let kernel = only_one(&root.join("boot"), "vmlinuz-")?;
    let initrd = only_one(&root.join("boot"), "initrd.img-")?;
    for (from, to) in [
        (
            &root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
            "EFI/BOOT/BOOTX64.EFI",
        ),
        (&kernel, "EFI/relay/vmlinuz"),
        (&initrd, "EFI/relay/initrd.img"),
    ] {
        copy(from, &staging.join(to), 0o644)?;
    }
    write(
        &staging.join("loader/loader.conf"),
        b"default relay.conf\ntimeout 0\n",
        0o644,
    )?;
    // The console on the screen and on the first serial port (headless boxes, qemu).
    let entry = format!(
        "title Relay edge\nlinux /EFI/relay/vmlinuz\ninitrd /EFI/relay/initrd.img\n\
         options root=PARTUUID={ROOT_PARTUUID} rw console=tty0 console=ttyS0,115200\n"
    );
    write(
        &staging.join("loader/entries/relay.conf"),
        entry.as_bytes(),
        0o644,
    )?;

    run(Command::new("mkfs.vfat")
        .args([
            "-C",
            "--invariant",
            "-F",
            "32",
            "-n",
            "ESP",
            "-i",
            ESP_VOLUME_ID,
        ])
        .arg(image)
        .arg((ESP_MIB * 1024).to_string()))
    .context("mkfs.vfat (package dosfstools)")?;
    // mtools takes its times from SOURCE_DATE_EPOCH; directories before their files.
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    walk(staging, staging, &mut dirs, &mut files)?;
    for dir in dirs {
        run(Command::new("mmd")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(image)
            .arg(format!("::{dir}")))
        .context("mmd (package mtools)")?;
    }
    for file in files {
        run(Command::new("mcopy")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(image)
            .arg(staging.join(&file))
            .arg(format!("::{file}")))?;
    }
    Ok(())
}

/// The one file in `dir` whose name starts with `prefix`.
fn only_one(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            found.push(entry.path());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{}: expected one {prefix}* in it, found {found:?}",
            dir.display()
        ),
    }
}

/// Directories and files under `dir`, relative to `base`, sorted, parents first.
fn walk(
    base: &Path,
    dir: &Path,
    dirs: &mut Vec<String>,
    files: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let relative = path.strip_prefix(base)?.to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            dirs.push(relative);
            walk(base, &path, dirs, files)?;
        } else {
            files.push(relative);
        }
    }
    Ok(())
}

/// The root file system: ext4 of the unpacked tree, room to spare, every time the epoch.
fn root_image(root: &Path, image: &Path, epoch: u64) -> anyhow::Result<()> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    walk(root, root, &mut dirs, &mut files)?;
    // The tree, a third more for ext4's metadata and the journal, and 256 MiB free for
    // logs and state until the first boot grows it to the disk.
    let used_mib = du_mib(root)?;
    let size_mib = used_mib + used_mib / 3 + 256;
    let fake_time = epoch.to_string();
    run(Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .args(["-q", "-L", "relay-root", "-U", ROOT_FS_UUID])
        .arg(format!("-Eroot_owner=0:0,hash_seed={ROOT_HASH_SEED}"))
        .arg("-d")
        .arg(root)
        .arg(image)
        .arg(format!("{size_mib}M")))
    .context("mkfs.ext4 (package e2fsprogs)")?;
    // mke2fs 1.47.0 copies each file's ctime and atime (the unpacking's time) into its
    // inode; set them to the epoch as its mtime already is.
    let stamp = jiff::Timestamp::from_second(i64::try_from(epoch)?)?
        .strftime("%Y%m%d%H%M%S")
        .to_string();
    let mut script = String::new();
    let inside = dirs.iter().chain(&files).map(|p| format!("/{p}"));
    for path in std::iter::once("/".to_owned()).chain(inside) {
        if path.contains('"') || path.contains('\n') {
            bail!("{path:?}: debugfs cannot name this path");
        }
        for field in ["ctime", "atime"] {
            writeln!(script, "sif \"{path}\" {field} {stamp}")?;
        }
    }
    let script_file = image.with_extension("debugfs");
    std::fs::write(&script_file, script)?;
    let out = Command::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .arg("-w")
        .arg("-f")
        .arg(&script_file)
        .arg(image)
        .output()
        .context("debugfs (package e2fsprogs)")?;
    // debugfs echoes each command on stderr and says what failed after it.
    let failed: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if !out.status.success() || !failed.is_empty() {
        bail!("debugfs on {}: {}", image.display(), failed.join("; "));
    }
    run(Command::new("e2fsck").arg("-fn").arg(image)).context("checking the root file system")
}

/// What `dir` holds, in MiB (du's count of blocks).
fn du_mib(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").args(["-s", "-m"]).arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sm {}", dir.display()))
}

/// The GPT disk of the two partitions, by systemd-repart.
fn gpt_disk(definitions: &Path, esp: &Path, root: &Path, disk: &Path) -> anyhow::Result<()> {
    // systemd-repart 252 sizes a partition by its definition, not by what CopyBlocks=
    // copies into it: each is exactly its file system's size.
    for (file, kind, label, uuid, image) in [
        ("10-esp.conf", "esp", "ESP", ESP_PARTUUID, esp),
        (
            "20-root.conf",
            "root-x86-64",
            "relay-root",
            ROOT_PARTUUID,
            root,
        ),
    ] {
        let size = std::fs::metadata(image)?.len();
        let conf = format!(
            "[Partition]\nType={kind}\nLabel={label}\nUUID={uuid}\nCopyBlocks={}\n\
             SizeMinBytes={size}\nSizeMaxBytes={size}\n",
            image.display()
        );
        write(&definitions.join(file), conf.as_bytes(), 0o644)?;
    }
    run(Command::new("systemd-repart")
        .args(["--dry-run=no", "--empty=create", "--size=auto"])
        .arg(format!("--seed={REPART_SEED}"))
        .arg(format!("--definitions={}", definitions.display()))
        .arg(disk))
    .context("systemd-repart (package systemd)")
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
}
