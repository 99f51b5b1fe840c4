//! `relay tune`: checks a host for what matters to a media relay, and plans, applies,
//! verifies and reverts the settings of a profile, persisted the system's way.
//!
//! Everything reaches the host through [`Host`] (a root for `/proc` and `/sys`, an `/etc`,
//! and ethtool), so the tests run on fake trees.

pub mod apply;
pub mod check;
pub mod ethtool;
pub mod host;
pub mod journal;
pub mod persist;
pub mod plan;
pub mod profile;
pub mod report;
pub mod setting;
#[cfg(test)]
mod tests;

use std::{io, path::PathBuf};

pub use apply::{Applied, Reverted, Verified, apply, revert, verify};
pub use check::{Finding, Status, check};
pub use host::Host;
pub use plan::{Plan, plan};
pub use profile::{Options, Ports, Profile};

/// Why `relay tune` could not do what it was asked; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} changes kernel and NIC settings and needs root: run it as root (or with sudo)")]
    NotRoot(String),
    #[error("no interface {interface:?} in this network namespace (there are: {})", known.join(", "))]
    UnknownInterface {
        interface: String,
        known: Vec<String>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel refused {setting} = {value}: {source}; nothing is applied (the \
         {rolled_back} setting(s) changed before it were put back)"
    )]
    Refused {
        setting: String,
        value: String,
        #[source]
        source: io::Error,
        rolled_back: usize,
    },
    #[error(
        "{setting} = {value} was accepted but reads back {actual:?} (the driver or kernel \
         rounded or clamped it); nothing is applied (the {rolled_back} setting(s) changed \
         before it were put back)"
    )]
    NotTaken {
        setting: String,
        value: String,
        actual: String,
        rolled_back: usize,
    },
    #[error(
        "cannot persist the settings: {source}; nothing is applied (the {rolled_back} \
         setting(s) changed were put back)"
    )]
    Persist {
        path: PathBuf,
        #[source]
        source: Box<Error>,
        rolled_back: usize,
    },
    #[error(
        "{cause}; but these could not be put back: {}. They are kept in the journal: run \
         `relay tune revert`", stuck.join("; ")
    )]
    RollbackIncomplete {
        cause: Box<Error>,
        stuck: Vec<String>,
    },
    #[error(
        "profile {applied} is applied here{}: `relay tune revert` it first, then apply \
         another profile or other options",
        interface.as_ref().map(|i| format!(" (interface {i})")).unwrap_or_default()
    )]
    OtherProfileApplied {
        applied: Profile,
        interface: Option<String>,
    },
    #[error("nothing applied: {} does not exist (wrong --state-dir?)", .0.display())]
    NothingApplied(PathBuf),
    #[error(
        "{} was written in another network namespace (net:[{netns}]): run this there \
         (`nsenter --net=/run/netns/NAME relay tune ...`)", journal.display()
    )]
    OtherNamespace { journal: PathBuf, netns: u64 },
    #[error("{}: {problem}", path.display())]
    Journal { path: PathBuf, problem: String },
    #[error(
        "revert could not put everything back: {}. What is left stays in the journal: fix \
         the cause and run `relay tune revert` again", stuck.join("; ")
    )]
    RevertIncomplete { stuck: Vec<String> },
}

impl Error {
    pub(crate) fn io(context: &str, source: io::Error) -> Self {
        Self::Io {
            context: context.to_owned(),
            source,
        }
    }
}
