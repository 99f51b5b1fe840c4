//! The audit log: one JSON line per decision, allow and deny, appended to a file that is
//! rotated by size (`audit.log`, `audit.log.1` ... `audit.log.N`, the oldest dropped).
//! It holds what the policy saw (no passwords, keys or tokens ever reach a policy input).

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Where the audit log goes and how much of it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub file: PathBuf,
    /// A file grows to this size before it is rotated.
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub keep: u32,
}

pub struct Audit {
    config: AuditConfig,
    file: File,
    size: u64,
    /// Lines that could not be written (a full disk): counted, and logged once per run of
    /// failures.
    pub failed: u64,
    failing: bool,
}

impl Audit {
    /// Opens (appending) the audit log, readable by its owner only.
    pub fn open(config: AuditConfig) -> std::io::Result<Self> {
        let file = open(&config.file)?;
        let size = file.metadata()?.len();
        Ok(Self {
            config,
            file,
            size,
            failed: 0,
            failing: false,
        })
    }

    /// Appends `record` as one line (one write: lines of concurrent writers never mix).
    pub fn write(&mut self, record: &serde_json::Value) {
        let mut line = record.to_string();
        line.push('\n');
        if self.size > 0 && self.size + line.len() as u64 > self.config.max_bytes {
            if let Err(e) = self.rotate() {
                self.fail(&e);
            }
        }
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => {
                self.size += line.len() as u64;
                self.failing = false;
            }
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        self.failed += 1;
        if !self.failing {
            log::error!(
                "audit log {}: {e}: decisions go unrecorded until it can be written again",
                self.config.file.display()
            );
            self.failing = true;
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |n: u32| rotated(&self.config.file, n);
        if self.config.keep == 0 {
            std::fs::remove_file(&self.config.file)?;
        } else {
            for n in (1..self.config.keep).rev() {
                match std::fs::rename(name(n), name(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.config.file, name(1))?;
        }
        self.file = open(&self.config.file)?;
        self.size = 0;
        Ok(())
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `audit.log.N`.
pub fn rotated(file: &Path, n: u32) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_files_rotate_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.log");
        let mut audit = Audit::open(AuditConfig {
            file: file.clone(),
            max_bytes: 100,
            keep: 2,
        })
        .unwrap();
        for i in 0..10 {
            audit.write(&serde_json::json!({ "n": i, "pad": "x".repeat(30) }));
        }
        assert_eq!(audit.failed, 0);
        let read = |p: &Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        // Two lines (44 bytes each) fit in 100 bytes: 8,9 live, 6,7 and 4,5 rotated.
        assert_eq!(read(&file), [8, 9]);
        assert_eq!(read(&rotated(&file, 1)), [6, 7]);
        assert_eq!(read(&rotated(&file, 2)), [4, 5]);
        assert!(!rotated(&file, 3).exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "only its owner reads the audit log");
    }

    #[test]
    fn a_reopened_log_appends() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            file: dir.path().join("a.log"),
            max_bytes: 1 << 20,
            keep: 1,
        };
        Audit::open(config.clone())
            .unwrap()
            .write(&serde_json::json!(1));
        Audit::open(config.clone())
            .unwrap()
            .write(&serde_json::json!(2));
        assert_eq!(std::fs::read_to_string(&config.file).unwrap(), "1\n2\n");
    }
}
