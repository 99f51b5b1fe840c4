//! Policy: OPA-compatible Rego that decides every TURN Allocate, CreatePermission and
//! ChannelBind, and every room join, publish and subscribe; evaluated in process (the
//! `regorus` crate's virtual machine), fail closed, with every decision in an audit log.
//! The input documents are in the README ("Policy").

mod audit;
mod engine;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

pub use audit::{Audit, AuditConfig, rotated};
pub use engine::{Compiled, LoadError, Sources, Verdict};
use regorus::rvm::RegoVM;

/// What is being decided: the `action` of the input document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    TurnAllocate,
    TurnCreatePermission,
    TurnChannelBind,
    RoomJoin,
    RoomPublish,
    RoomSubscribe,
}

impl Action {
    pub const ALL: [Self; 6] = [
        Self::TurnAllocate,
        Self::TurnCreatePermission,
        Self::TurnChannelBind,
        Self::RoomJoin,
        Self::RoomPublish,
        Self::RoomSubscribe,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::TurnAllocate => "turn.allocate",
            Self::TurnCreatePermission => "turn.create_permission",
            Self::TurnChannelBind => "turn.channel_bind",
            Self::RoomJoin => "room.join",
            Self::RoomPublish => "room.publish",
            Self::RoomSubscribe => "room.subscribe",
        }
    }
}

/// `relay run --policy ...`: the sources, the audit log and the time limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub sources: Sources,
    pub audit: Option<AuditConfig>,
    /// Longest an evaluation may run before it is cut off (and denies).
    pub timeout: Duration,
}

/// Decisions taken and reloads tried, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Per [`Action::ALL`] entry: allowed, denied.
    pub decisions: [[u64; 2]; 6],
    /// Evaluations that failed or ran out of time (denied, and counted in `decisions`).
    pub errors: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub audit_failures: u64,
}

/// The policy the control task decides with; shared by the TURN server and the rooms.
pub type Shared = Arc<Mutex<Policy>>;

pub struct Policy {
    config: PolicyConfig,
    revision: String,
    vm: RegoVM,
    stamps: Vec<Option<SystemTime>>,
    audit: Option<Audit>,
    counts: Counts,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("sources", &self.config.sources)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Why `relay run` did not start with its policy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy: {0}")]
    Load(#[from] LoadError),
    #[error("policy: {0}")]
    Machine(String),
    #[error("audit-log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What a request is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Why not (the policy's reasons), empty when allowed.
    pub reason: String,
}

impl Policy {
    /// Loads the policy (refusing to start on any error) and opens the audit log.
    pub fn start(config: PolicyConfig) -> Result<Self, StartError> {
        let stamps = config.sources.stamps();
        let compiled = Compiled::load(&config.sources)?;
        let vm = compiled
            .machine(config.timeout)
            .map_err(StartError::Machine)?;
        let audit = match &config.audit {
            None => None,
            Some(a) => Some(Audit::open(a.clone()).map_err(|source| StartError::Audit {
                path: a.file.clone(),
                source,
            })?),
        };
        log::info!(
            "policy {} loaded from {}",
            compiled.revision,
            describe(&config.sources)
        );
        Ok(Self {
            revision: compiled.revision,
            config,
            vm,
            stamps,
            audit,
            counts: Counts::default(),
        })
    }

    pub fn shared(self) -> Shared {
        Arc::new(Mutex::new(self))
    }

    /// The revision decisions are logged with.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    pub fn counts(&self) -> Counts {
        let mut counts = self.counts.clone();
        counts.audit_failures = self.audit.as_ref().map_or(0, |a| a.failed);
        counts
    }

    /// Decides `action` by `subject` on `object`, and writes the decision to the audit log.
    pub fn decide(
        &mut self,
        action: Action,
        subject: serde_json::Value,
        object: serde_json::Value,
    ) -> Decision {
        // Moved into the input document, which the audit log then takes whole.
        let mut input = serde_json::Value::Object(serde_json::Map::from_iter([
            ("action".to_owned(), action.name().into()),
            ("subject".to_owned(), subject),
            ("object".to_owned(), object),
        ]));
        let verdict = engine::evaluate(&mut self.vm, regorus::Value::from(input.clone()));
        let index = Action::ALL.iter().position(|a| *a == action).unwrap_or(0);
        self.counts.decisions[index][usize::from(!verdict.allow)] += 1;
        if verdict.error {
            self.counts.errors += 1;
            log::warn!(
                "policy {}: {} denied: {}",
                self.revision,
                action.name(),
                verdict.reason
            );
        }
        if let Some(audit) = &mut self.audit {
            let record = input.as_object_mut().expect("built as an object");
            record.insert("time".into(), jiff::Timestamp::now().to_string().into());
            record.insert(
                "decision".into(),
                if verdict.allow { "allow" } else { "deny" }.into(),
            );
            record.insert("reason".into(), verdict.reason.clone().into());
            record.insert("policy_revision".into(), self.revision.clone().into());
            audit.write(&input);
        }
        Decision {
            allow: verdict.allow,
            reason: if verdict.allow {
                String::new()
            } else {
                verdict.reason
            },
        }
    }
}

/// The policy behind `shared` (a decision that panicked left nothing half-done in it).
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Policy> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Loads the sources again, compiling outside the lock (decisions go on meanwhile): the
/// new policy replaces the old one whole, or, if it does not load, the old one stays in
/// force and the error is logged and counted.
pub fn reload(shared: &Shared) -> Result<String, LoadError> {
    let (sources, timeout) = {
        let p = lock(shared);
        (p.config.sources.clone(), p.config.timeout)
    };
    let stamps = sources.stamps();
    let loaded = Compiled::load(&sources).and_then(|c| {
        let vm = c.machine(timeout).map_err(LoadError::Compile)?;
        Ok((c.revision, vm))
    });
    let mut p = lock(shared);
    p.stamps = stamps;
    match loaded {
        Ok((revision, vm)) => {
            p.counts.reloads += 1;
            if revision != p.revision {
                log::info!("policy {revision} loaded, replacing {}", p.revision);
            }
            p.revision.clone_from(&revision);
            p.vm = vm;
            Ok(revision)
        }
        Err(e) => {
            p.counts.reload_failures += 1;
            log::error!("policy not reloaded, {} stays in force: {e}", p.revision);
            Err(e)
        }
    }
}

/// Reloads on SIGHUP, and whenever a source file changes (an editor's save, a Kubernetes
/// ConfigMap update): its modification time is looked at every `every`.
pub async fn watch(shared: Shared, every: Duration) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("policy: no SIGHUP reloads ({e}); file changes still reload it");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup = async {
            match &mut hangup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup => {
                log::info!("SIGHUP: reloading the policy");
                let _ = reload(&shared);
            }
            _ = tick.tick() => {
                let changed = {
                    let p = lock(&shared);
                    p.config.sources.stamps() != p.stamps
                };
                if changed {
                    let _ = reload(&shared);
                }
            }
        }
    }
}

/// An address as policies take it: `net.cidr_contains` wants the IP alone.
pub fn address(addr: std::net::SocketAddr) -> serde_json::Value {
    serde_json::json!({ "address": addr.ip().to_string(), "port": addr.port() })
}

fn describe(sources: &Sources) -> String {
    sources
        .rego
        .iter()
        .chain(&sources.data)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
