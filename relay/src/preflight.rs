//! Checks of the host before the data plane is loaded, so that a missing privilege or
//! filesystem is reported by name with the way to fix it, not as a bare `EPERM`; and the
//! open-file limit, raised for the relay and the load generator alike.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::Uid,
};

/// Where bpffs is expected; pinned maps and programs live below it.
pub const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "relay must run as root to load XDP programs (root with CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON is enough): run it with sudo, or as the systemd unit or DaemonSet that \
         grants them"
    )]
    NotRoot,
    #[error(
        "bpffs is not mounted at {BPFFS} and mounting it failed ({0}): \
         run `mount -t bpf bpf {BPFFS}` or add it to /etc/fstab"
    )]
    NoBpffs(nix::Error),
}

/// Requires root and a mounted bpffs; mounts bpffs when it is missing and we may.
/// Returns whether it had to mount bpffs.
pub fn check() -> Result<bool, PreflightError> {
    if !Uid::effective().is_root() {
        return Err(PreflightError::NotRoot);
    }
    ensure_bpffs(Path::new(BPFFS))
}

fn ensure_bpffs(path: &Path) -> Result<bool, PreflightError> {
    if statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(false);
    }
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(PreflightError::NoBpffs)?;
    log::info!("mounted bpffs at {}", path.display());
    Ok(true)
}

/// Whether pins made below bpffs die with this process: it had to mount bpffs itself
/// (`mounted_here`, from [`check`]) in a mount namespace other than the host's, as `ip netns
/// exec` gives it (a fresh /sys). No later process sees that bpffs, so no successor adopts
/// the data plane and the XDP link goes when the namespace does. Unknown (no namespace to
/// compare with can be read) counts as not private: no warning without evidence.
pub fn bpffs_is_private(mounted_here: bool) -> bool {
    mounted_here
        && match (mount_namespace("self"), host_mount_namespace()) {
            (Some(own), Some(host)) => own != host,
            _ => false,
        }
}

/// The mount namespace of `/proc/<pid>` as (device, inode) of its nsfs file.
fn mount_namespace(pid: &str) -> Option<(u64, u64)> {
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
    Some((ns.dev(), ns.ino()))
}

/// The host's mount namespace: PID 1's; where PID 1's cannot be read (an init that is not
/// dumpable, as in some sandboxes), that of the outermost ancestor of this process that can.
fn host_mount_namespace() -> Option<(u64, u64)> {
    if let Some(ns) = mount_namespace("1") {
        return Some(ns);
    }
    let mut outermost = None;
    let mut pid = std::os::unix::process::parent_id();
    while pid > 1 {
        outermost = mount_namespace(&pid.to_string()).or(outermost);
        let Some(parent) = parent_of(pid) else { break };
        pid = parent;
    }
    outermost
}

/// The parent of process `pid`, from `/proc/<pid>/status`.
fn parent_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The name `ip netns` knows this process's network namespace by (`/run/netns/<name>`), for
/// messages that show a command to run in it.
pub fn netns_name() -> Option<String> {
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir("/run/netns").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let ns = std::fs::metadata(entry.path()).ok()?;
        (ns.dev() == own.dev() && ns.ino() == own.ino())
            .then(|| entry.file_name().into_string().ok())?
    })
}

/// Raises the soft limit of open files to the hard limit and returns it. Every allocation
/// holds a relayed socket, and the usual soft limit of 1024 would cap a relay near a
/// thousand of them (coturn raises it too).
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to read into, then to pass.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0
        }
    };
    if raised {
        Ok(limit.rlim_cur)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
