//! The one way `relay tune` reaches the host: files under a root (`/proc`, `/sys`), an `/etc`
//! for the persisted settings, and ethtool. Tests point the roots at fake trees and give a
//! fake ethtool.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::{
    Error,
    ethtool::{Ethtool, Ioctl},
};

pub struct Host {
    /// Where `proc/` and `sys/` are: `/` on a real host.
    root: PathBuf,
    /// Where the persisted settings go: `/etc` on a real host.
    etc: PathBuf,
    ethtool: Box<dyn Ethtool>,
    /// Whether this process may change settings (root on a real host).
    privileged: bool,
}

impl Host {
    /// This host, as the calling process sees it (its network namespace, its mounts).
    pub fn system() -> Self {
        Self {
            root: PathBuf::from("/"),
            etc: PathBuf::from("/etc"),
            ethtool: Box::new(Ioctl),
            // SAFETY: geteuid() cannot fail and touches no memory.
            privileged: unsafe { libc::geteuid() } == 0,
        }
    }

    /// A host whose `/proc` and `/sys` are under `root`, `/etc` is `etc`, and NIC settings
    /// go through `ethtool`.
    pub fn new(
        root: impl Into<PathBuf>,
        etc: impl Into<PathBuf>,
        ethtool: Box<dyn Ethtool>,
        privileged: bool,
    ) -> Self {
        Self {
            root: root.into(),
            etc: etc.into(),
            ethtool,
            privileged,
        }
    }

    /// The same host with its persisted settings under `etc` instead.
    #[must_use]
    pub fn with_etc(mut self, etc: impl Into<PathBuf>) -> Self {
        self.etc = etc.into();
        self
    }

    pub fn etc(&self) -> &Path {
        &self.etc
    }

    pub fn ethtool(&self) -> &dyn Ethtool {
        self.ethtool.as_ref()
    }

    pub fn require_privileged(&self, what: &str) -> Result<(), Error> {
        if self.privileged {
            Ok(())
        } else {
            Err(Error::NotRoot(what.to_owned()))
        }
    }

    /// `rel` (like `proc/sys/net/core/rmem_max`) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A file's content without its trailing newline; `None` if it does not exist.
    pub fn read(&self, rel: &str) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.path(rel)) {
            Ok(s) => Ok(Some(s.trim_end_matches('\n').to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a value the way `sysctl -w` and `echo` do: with a newline, which the kernel
    /// needs to clear a list (an empty write leaves `ip_local_reserved_ports` as it was).
    pub fn write(&self, rel: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.path(rel), format!("{value}\n"))
    }

    /// Names in a directory, sorted; empty if it does not exist.
    pub fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.path(rel)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    /// A sysctl by its dotted name (`net.core.rmem_max`); `None` where this kernel or this
    /// network namespace has none (host-wide ones are absent inside a namespace).
    pub fn sysctl(&self, key: &str) -> io::Result<Option<String>> {
        self.read(&sysctl_path(key))
    }

    /// Whether the sysctl can be written here: a host-wide one seen from another network
    /// namespace is read-only (mode 0444), as are a few the kernel fixes at boot.
    pub fn sysctl_writable(&self, key: &str) -> io::Result<bool> {
        let mode = std::fs::metadata(self.path(&sysctl_path(key)))?.mode();
        Ok(mode & 0o222 != 0)
    }

    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.write(&sysctl_path(key), value)
    }

    /// The interfaces of this network namespace.
    pub fn interfaces(&self) -> io::Result<Vec<String>> {
        self.list("sys/class/net")
    }

    /// `Ok` if `interface` exists, else an error listing the ones that do.
    pub fn require_interface(&self, interface: &str) -> Result<(), Error> {
        let known = self
            .interfaces()
            .map_err(|e| Error::io("listing interfaces", e))?;
        if interface.contains('/') || !known.iter().any(|i| i == interface) {
            return Err(Error::UnknownInterface {
                interface: interface.to_owned(),
                known,
            });
        }
        Ok(())
    }

    /// The online CPUs, from `sys/devices/system/cpu/online` (`0-3,6`).
    pub fn online_cpus(&self) -> io::Result<Vec<u32>> {
        let list = self
            .read("sys/devices/system/cpu/online")?
            .unwrap_or_default();
        parse_cpu_list(&list).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sys/devices/system/cpu/online: {list:?} is not a CPU list"),
            )
        })
    }

    /// The inode of the network namespace `/proc/self/ns/net` is in; `None` on a fake tree.
    pub fn netns(&self) -> Option<u64> {
        std::fs::metadata(self.path("proc/self/ns/net"))
            .ok()
            .map(|m| m.ino())
    }
}

fn sysctl_path(key: &str) -> String {
    format!("proc/sys/{}", key.replace('.', "/"))
}

/// `0-3,6` → `[0, 1, 2, 3, 6]`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6\n"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
