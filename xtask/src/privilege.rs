//! Root for what needs it, and nothing else.
//!
//! The README's commands are plain `cargo xtask ...`: cargo and rustup belong to the user who
//! types them, so building runs as that user. Loading XDP programs, creating namespaces and
//! installing packages need root: already root, they run as they are; otherwise through
//! `sudo -E` (aya's convention for its test runner), and with neither, a clear error.

use std::process::Command;

use anyhow::bail;

/// How this process reaches root.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Privilege {
    Root,
    Sudo,
}

impl Privilege {
    /// `what` needs root; says how to get it when there is no way.
    pub(crate) fn get(what: &str) -> anyhow::Result<Self> {
        if nix::unistd::Uid::effective().is_root() {
            return Ok(Self::Root);
        }
        let sudo = Command::new("sudo")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !sudo {
            bail!(
                "{what} needs root, and this user is not root and has no sudo: \
                 run it as root, or install sudo and allow this user to use it"
            );
        }
        Ok(Self::Sudo)
    }

    /// `program` run as root.
    pub(crate) fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Self::Root => Command::new(program),
            Self::Sudo => {
                let mut command = Command::new("sudo");
                // -E: the lab and the tests read RUST_LOG, CARGO_TARGET_DIR and the like.
                command.arg("-E").arg(program);
                command
            }
        }
    }

    /// `cargo` arguments that run the test binaries as root: a target runner, as aya does.
    pub(crate) fn cargo_runner(self) -> Option<&'static str> {
        match self {
            Self::Root => None,
            Self::Sudo => Some("target.'cfg(all())'.runner=['sudo', '-E']"),
        }
    }
}
