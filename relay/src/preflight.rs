//! Checks of the host before the data plane is loaded, so that a missing privilege or
//! filesystem is reported by name with the way to fix it, not as a bare `EPERM`; and the
//! open-file limit, raised for the relay and the load generator alike.

use std::path::Path;

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
        "relay must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN) to load XDP \
         programs: run it with sudo, or as the systemd unit or DaemonSet that grants them"
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
