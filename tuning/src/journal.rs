//! The journal: what `apply` changed and the values that were there before, kept in the state
//! directory so that `verify` knows what to expect and `revert` what to put back. It is
//! written before anything is changed, so a crash in between leaves enough to revert.

use std::{
    io,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    profile::{Options, Profile},
    setting::Setting,
};

const VERSION: u32 = 1;

/// A setting `apply` changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub setting: Setting,
    /// The value before the first `apply`: what `revert` writes back.
    pub before: String,
    pub after: String,
}

/// A value the profile holds the host to (changed or already right): what `verify` checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub setting: Setting,
    pub value: String,
}

/// A file `apply` wrote to persist the settings, and what was there before (`None`: nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub path: PathBuf,
    pub content: String,
    pub before: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub profile: Profile,
    pub options: Options,
    /// The network namespace (inode) the settings were changed in; `None` on a fake tree.
    pub netns: Option<u64>,
    pub changes: Vec<Change>,
    pub held: Vec<Held>,
    pub files: Vec<Written>,
}

impl Journal {
    pub fn new(profile: Profile, options: Options, netns: Option<u64>) -> Self {
        Self {
            version: VERSION,
            profile,
            options,
            netns,
            changes: Vec::new(),
            held: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The journal's file in a state directory: in a folder of its own, as the relay's
    /// instances own the `NAME.json` files there.
    pub fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("tune/journal.json")
    }

    /// The journal in `state_dir`, if there is one.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, Error> {
        let file = Self::file(state_dir);
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&format!("reading {}", file.display()), e)),
        };
        let journal: Self = serde_json::from_slice(&bytes).map_err(|e| Error::Journal {
            path: file.clone(),
            problem: e.to_string(),
        })?;
        if journal.version != VERSION {
            return Err(Error::Journal {
                path: file,
                problem: format!(
                    "version {} (this relay reads version {VERSION})",
                    journal.version
                ),
            });
        }
        Ok(Some(journal))
    }

    /// Writes the journal atomically (a crash leaves the old one or the new one), readable by
    /// root only like the relay's other state.
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        let file = Self::file(state_dir);
        let context = || format!("writing {}", file.display());
        let dir = file.parent().unwrap_or(state_dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(&context(), e))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Journal {
            path: file.clone(),
            problem: e.to_string(),
        })?;
        write_atomically(&file, &json, 0o600).map_err(|e| Error::io(&context(), e))
    }

    pub fn remove(state_dir: &Path) -> Result<(), Error> {
        let file = Self::file(state_dir);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&format!("removing {}", file.display()), e)),
        }
    }

    /// Where this journal's earliest value of `setting` is, if it changed it.
    pub fn change(&self, setting: &Setting) -> Option<&Change> {
        self.changes.iter().find(|c| &c.setting == setting)
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
