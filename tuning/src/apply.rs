//! `apply`, `verify` and `revert`: change the host to a plan all or nothing, persist it, check
//! it still holds, and put back exactly what was there.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    host::Host,
    journal::{Change, Held, Journal, Written, write_atomically},
    persist,
    plan::{Action, Plan, plan},
    profile::{Options, Profile},
    setting::Setting,
};

/// What `apply` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub plan: Plan,
    /// The settings changed by this run (none when the host already matched).
    pub changed: Vec<Change>,
    pub files: Vec<PathBuf>,
}

/// Applies `profile`: journal first, then each change read back, then the files. If the
/// kernel refuses a value (or reads back another), what this run changed is put back and the
/// journal is as it was.
pub fn apply(
    host: &Host,
    state_dir: &Path,
    profile: Profile,
    options: &Options,
) -> Result<Applied, Error> {
    host.require_privileged("relay tune apply")?;
    let plan = plan(host, profile, options)?;
    let previous = Journal::load(state_dir)?;
    if let Some(journal) = &previous {
        check_netns(host, journal, state_dir)?;
        if journal.profile != profile || &journal.options != options {
            return Err(Error::OtherProfileApplied {
                applied: journal.profile,
                interface: journal.options.interface.clone(),
            });
        }
    }
    let mut journal = previous
        .clone()
        .unwrap_or_else(|| Journal::new(profile, options.clone(), host.netns()));
    let changed = record(&mut journal, &plan);
    let files = persist::files(host, profile.name(), &journal.held)?;
    for file in &files {
        if !journal.files.iter().any(|w| w.path == file.path) {
            let before = read_file(&file.path)?;
            journal.files.push(Written {
                path: file.path.clone(),
                content: file.content.clone(),
                before,
            });
        }
    }
    journal.save(state_dir)?;

    let mut undo = Undo {
        host,
        state_dir,
        previous: previous.as_ref(),
        values: Vec::new(),
        files: Vec::new(),
    };
    set_values(&mut undo, &changed)?;
    // A file an earlier apply wrote that this one does not (the host changed since: a NIC
    // that now has a queue per CPU needs no RPS rule) is put back as it was before.
    let stale = journal
        .files
        .iter()
        .filter(|w| !files.iter().any(|f| f.path == w.path))
        .map(|w| (&w.path, w.before.as_deref()));
    let wanted = files
        .iter()
        .map(|f| (&f.path, Some(f.content.as_str())))
        .chain(stale);
    put_files(&mut undo, wanted)?;
    journal
        .files
        .retain(|w| files.iter().any(|f| f.path == w.path));
    for w in &mut journal.files {
        if let Some(file) = files.iter().find(|f| f.path == w.path) {
            w.content.clone_from(&file.content);
        }
    }
    journal.save(state_dir)?;
    Ok(Applied {
        plan,
        changed,
        files: files.into_iter().map(|f| f.path).collect(),
    })
}

/// Puts the plan into the journal: every value the profile holds, and each change with the
/// value before the first apply; returns this run's changes with the values they replace.
fn record(journal: &mut Journal, plan: &Plan) -> Vec<Change> {
    let old_held = std::mem::take(&mut journal.held);
    for step in &plan.steps {
        if matches!(step.action, Action::Keep | Action::Change) {
            journal.held.push(Held {
                setting: step.setting.clone(),
                value: step.proposed.clone(),
            });
        }
    }
    let mut changed = Vec::new();
    for step in plan.changes() {
        let Some(current) = &step.current else {
            continue;
        };
        changed.push(Change {
            setting: step.setting.clone(),
            before: current.clone(),
            after: step.proposed.clone(),
        });
        if let Some(change) = journal
            .changes
            .iter_mut()
            .find(|c| c.setting == step.setting)
        {
            change.after.clone_from(&step.proposed);
        } else {
            // A value an earlier apply found already right has drifted since: before that
            // apply it was the profile's value, and that is what revert restores.
            let before = old_held
                .iter()
                .find(|h| h.setting == step.setting)
                .map_or_else(|| current.clone(), |h| h.value.clone());
            journal.changes.push(Change {
                setting: step.setting.clone(),
                before,
                after: step.proposed.clone(),
            });
        }
    }
    changed
}

enum SetFailure {
    Refused(io::Error),
    ReadBack(String),
}

/// Writes a value and reads it back: a driver may round a ring size, a kernel may clamp.
fn set(host: &Host, setting: &Setting, value: &str) -> Result<(), SetFailure> {
    setting.write(host, value).map_err(SetFailure::Refused)?;
    match setting.read(host).map_err(SetFailure::Refused)? {
        Some(now) if setting.same(&now, value) => Ok(()),
        now => Err(SetFailure::ReadBack(now.unwrap_or_default())),
    }
}

/// What this run of `apply` changed so far, to put back if a later step fails.
struct Undo<'a> {
    host: &'a Host,
    state_dir: &'a Path,
    /// The journal before this run (`None`: there was none).
    previous: Option<&'a Journal>,
    values: Vec<&'a Change>,
    /// Each file touched and its content before (`None`: it did not exist).
    files: Vec<(PathBuf, Option<String>)>,
}

impl Undo<'_> {
    /// Puts back the values and files and the journal as it was; the error says how many
    /// settings went back, or, if some could not, that the journal stays for `revert`.
    fn run(&self, error: impl FnOnce(usize) -> Error) -> Error {
        let mut stuck = Vec::new();
        for change in self.values.iter().rev() {
            if let Err(e) = change.setting.write(self.host, &change.before) {
                stuck.push(format!("{}: {e}", change.setting));
            }
        }
        for (path, before) in self.files.iter().rev() {
            if let Err(e) = put_file(path, before.as_deref()) {
                stuck.push(format!("{}: {e}", path.display()));
            }
        }
        let rolled_back = self.values.len().saturating_sub(stuck.len());
        if !stuck.is_empty() {
            return Error::RollbackIncomplete {
                cause: Box::new(error(rolled_back)),
                stuck,
            };
        }
        let restored = match self.previous {
            Some(journal) => journal.save(self.state_dir),
            None => Journal::remove(self.state_dir),
        };
        match restored {
            Ok(()) => error(rolled_back),
            Err(e) => Error::RollbackIncomplete {
                cause: Box::new(error(rolled_back)),
                stuck: vec![e.to_string()],
            },
        }
    }
}

/// Sets each value and reads it back; on the first failure puts everything back.
fn set_values<'a>(undo: &mut Undo<'a>, changed: &'a [Change]) -> Result<(), Error> {
    for change in changed {
        let Err(failure) = set(undo.host, &change.setting, &change.after) else {
            undo.values.push(change);
            continue;
        };
        let rolled_back = undo.values.len();
        // The failed one too: a driver that rounded the value has changed it.
        undo.values.push(change);
        let (setting, value) = (change.setting.to_string(), change.after.clone());
        return Err(undo.run(|_| match failure {
            SetFailure::Refused(source) => Error::Refused {
                setting,
                value,
                source,
                rolled_back,
            },
            SetFailure::ReadBack(actual) => Error::NotTaken {
                setting,
                value,
                actual,
                rolled_back,
            },
        }));
    }
    Ok(())
}

/// Gives each path its content (`None`: removed); on the first failure puts everything back.
fn put_files<'p>(
    undo: &mut Undo<'_>,
    wanted: impl Iterator<Item = (&'p PathBuf, Option<&'p str>)>,
) -> Result<(), Error> {
    for (path, content) in wanted {
        let result = read_file(path).and_then(|before| {
            undo.files.push((path.clone(), before));
            put_file(path, content)
                .map_err(|e| Error::io(&format!("writing {}", path.display()), e))
        });
        if let Err(e) = result {
            return Err(undo.run(|rolled_back| Error::Persist {
                path: path.clone(),
                source: Box::new(e),
                rolled_back,
            }));
        }
    }
    Ok(())
}

/// One value `verify` checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub what: String,
    pub expected: String,
    pub current: Option<String>,
    pub drifted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub profile: Profile,
    pub checked: Vec<Checked>,
}

impl Verified {
    pub fn drifted(&self) -> impl Iterator<Item = &Checked> {
        self.checked.iter().filter(|c| c.drifted)
    }
}

/// Compares the host with what the last `apply` set and persisted.
pub fn verify(host: &Host, state_dir: &Path) -> Result<Verified, Error> {
    let journal = Journal::load(state_dir)?.ok_or_else(|| nothing_applied(state_dir))?;
    check_netns(host, &journal, state_dir)?;
    let mut checked = Vec::new();
    for held in &journal.held {
        let current = held
            .setting
            .read(host)
            .map_err(|e| Error::io(&format!("reading {}", held.setting), e))?;
        let drifted = !current
            .as_deref()
            .is_some_and(|now| held.setting.same(now, &held.value));
        checked.push(Checked {
            what: held.setting.to_string(),
            expected: held.value.clone(),
            current,
            drifted,
        });
    }
    for file in &journal.files {
        let current = read_file(&file.path)?;
        checked.push(Checked {
            what: file.path.display().to_string(),
            expected: "as written by apply".to_owned(),
            drifted: current.as_deref() != Some(file.content.as_str()),
            current: Some(match current {
                None => "missing".to_owned(),
                Some(c) if c == file.content => "as written by apply".to_owned(),
                Some(_) => "edited since".to_owned(),
            }),
        });
    }
    Ok(Verified {
        profile: journal.profile,
        checked,
    })
}

/// What `revert` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reverted {
    pub profile: Profile,
    pub restored: Vec<Change>,
    pub files: Vec<PathBuf>,
}

/// Puts back every value the journal holds, last changed first, and the files as they were;
/// then removes the journal. What cannot be put back stays in the journal for another try.
pub fn revert(host: &Host, state_dir: &Path) -> Result<Reverted, Error> {
    host.require_privileged("relay tune revert")?;
    let mut journal = Journal::load(state_dir)?.ok_or_else(|| nothing_applied(state_dir))?;
    check_netns(host, &journal, state_dir)?;
    let mut stuck = Vec::new();
    let mut restored = Vec::new();
    let mut left = Vec::new();
    for change in journal.changes.iter().rev() {
        let now = change.setting.read(host).ok().flatten();
        if now.is_some_and(|now| change.setting.same(&now, &change.before)) {
            restored.push(change.clone());
            continue;
        }
        match set(host, &change.setting, &change.before) {
            Ok(()) => restored.push(change.clone()),
            Err(SetFailure::Refused(e)) => {
                stuck.push(format!("{} = {}: {e}", change.setting, change.before));
                left.push(change.clone());
            }
            Err(SetFailure::ReadBack(actual)) => {
                stuck.push(format!(
                    "{} = {}: reads back {actual:?}",
                    change.setting, change.before
                ));
                left.push(change.clone());
            }
        }
    }
    let mut files = Vec::new();
    let mut files_left = Vec::new();
    for file in &journal.files {
        match put_file(&file.path, file.before.as_deref()) {
            Ok(()) => files.push(file.path.clone()),
            Err(e) => {
                stuck.push(format!("{}: {e}", file.path.display()));
                files_left.push(file.clone());
            }
        }
    }
    if stuck.is_empty() {
        Journal::remove(state_dir)?;
        return Ok(Reverted {
            profile: journal.profile,
            restored,
            files,
        });
    }
    left.reverse();
    journal.changes = left;
    journal.files = files_left;
    journal.save(state_dir)?;
    Err(Error::RevertIncomplete { stuck })
}

fn check_netns(host: &Host, journal: &Journal, state_dir: &Path) -> Result<(), Error> {
    let here = host.netns();
    if journal.netns.is_some() && here.is_some() && journal.netns != here {
        return Err(Error::OtherNamespace {
            journal: Journal::file(state_dir),
            netns: journal.netns.unwrap_or_default(),
        });
    }
    Ok(())
}

fn nothing_applied(state_dir: &Path) -> Error {
    Error::NothingApplied(Journal::file(state_dir))
}

fn read_file(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&format!("reading {}", path.display()), e)),
    }
}

fn write_file(path: &Path, content: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_atomically(path, content.as_bytes(), 0o644)
}

/// Makes `path` hold `content`, or not exist.
fn put_file(path: &Path, content: Option<&str>) -> io::Result<()> {
    match content {
        Some(content) => write_file(path, content),
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}
