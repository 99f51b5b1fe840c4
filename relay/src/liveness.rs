//! Whether an instance's daemon runs, as `relay top` sees it from outside: a running `relay
//! run` holds a shared `flock` on `<state-dir>/<instance>.lock` for its whole life (shared:
//! a successor starting during a hitless restart takes it too). The kernel drops the lock
//! with the process, however it ends (SIGKILL included), so a lock left held is a daemon
//! alive, and no pid file can go stale.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// The lock file of the instance whose allocation state is `state_file`.
pub fn lock_file(state_file: &Path) -> PathBuf {
    state_file.with_extension("lock")
}

/// Held by a running daemon; dropping it releases the lock.
#[derive(Debug)]
pub struct Alive(#[expect(dead_code, reason = "held for its lock")] Flock<File>);

/// Takes the instance's lock (shared) for the daemon's life: waits only while a probe holds
/// it, a moment.
pub fn hold(state_file: &Path) -> io::Result<Alive> {
    let path = lock_file(state_file);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    Flock::lock(file, FlockArg::LockShared)
        .map(Alive)
        .map_err(|(_, e)| io::Error::from(e))
}

/// Whether a daemon holds the instance's lock now: an exclusive lock, tried without
/// waiting and released at once, fails only while one does.
pub fn running(state_file: &Path) -> io::Result<bool> {
    let file = match File::open(lock_file(state_file)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_a_running_daemon_and_two_may_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("sub").join("x.json");
        assert!(!running(&state).unwrap(), "no lock file: nothing runs");
        let first = hold(&state).unwrap();
        assert!(running(&state).unwrap());
        // A successor during a restart takes it beside its predecessor.
        let second = hold(&state).unwrap();
        drop(first);
        assert!(running(&state).unwrap());
        drop(second);
        assert!(!running(&state).unwrap());
        assert!(lock_file(&state).exists());
    }
}
