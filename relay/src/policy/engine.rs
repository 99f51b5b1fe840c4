//! A Rego policy compiled for regorus' virtual machine (RVM): loaded from files, checked
//! whole at load (syntax, unknown builtins, the `relay` package), and evaluated with a time
//! limit.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use regorus::{
    Engine, Value,
    languages::rego::compiler::Compiler,
    rvm::{Program, RegoVM},
    utils::limits::ExecutionTimerConfig,
};
use sha2::{Digest as _, Sha256};

/// The rule every decision evaluates: the policy's `data.relay.allow` and its reasons,
/// with defaults so that a policy silent on a request denies it.
const ENTRY: &str = "data.relay_decision.decision";
const ENTRY_MODULE: &str = r#"
package relay_decision
import rego.v1

default allow := false
allow if data.relay.allow == true

# `reason` may be a string or a set (or array) of strings: both are common Rego style.
default reasons := []
reasons := [data.relay.reason] if is_string(data.relay.reason)
reasons := sort([r | some r in data.relay.reason]) if not is_string(data.relay.reason)

decision := {"allow": allow, "reasons": reasons}
"#;

/// Why a policy was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Rego { path: PathBuf, message: String },
    #[error("{path}: not a JSON object: {message}")]
    Data { path: PathBuf, message: String },
    #[error("the policy does not compile: {0}")]
    Compile(String),
    #[error("no policy file defines package relay (with its allow rule)")]
    NoRelayPackage,
}

/// Where a policy comes from: Rego files, and optionally a JSON document for `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub rego: Vec<PathBuf>,
    pub data: Option<PathBuf>,
}

impl Sources {
    /// Every file with its modification time: a reload is due when one changes.
    pub fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.rego
            .iter()
            .chain(&self.data)
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// A policy ready to decide: its program and the revision its decisions are logged with.
pub struct Compiled {
    program: Arc<Program>,
    data: Value,
    /// `sha256:` and the first 12 hex digits of the hash of every source, in order.
    pub revision: String,
}

impl Compiled {
    /// Reads, parses and compiles every file of `sources`: all or nothing.
    pub fn load(sources: &Sources) -> Result<Self, LoadError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(false);
        let mut hash = Sha256::new();
        let mut has_relay = false;
        for path in &sources.rego {
            let text = read(path)?;
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update(text.as_bytes());
            let package = engine
                .add_policy(path.display().to_string(), text)
                .map_err(|e| LoadError::Rego {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            has_relay |= package == "data.relay";
        }
        if !has_relay {
            return Err(LoadError::NoRelayPackage);
        }
        let data = match &sources.data {
            None => Value::new_object(),
            Some(path) => {
                let text = read(path)?;
                hash.update(text.as_bytes());
                let data = Value::from_json_str(&text).map_err(|e| LoadError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                if data.as_object().is_err() {
                    return Err(LoadError::Data {
                        path: path.clone(),
                        message: "the top level must be an object".to_owned(),
                    });
                }
                data
            }
        };
        engine
            .add_data(data.clone())
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        engine
            .add_policy("relay_decision.rego".to_owned(), ENTRY_MODULE.to_owned())
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        // Compiling for the VM resolves every function call: a misspelt or unknown builtin
        // is refused here, not at the first request that reaches it.
        let compiled = engine
            .compile_with_entrypoint(&ENTRY.into())
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let program = Compiler::compile_from_policy(&compiled, &[ENTRY])
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let digest = hash.finalize();
        let revision = digest[..6]
            .iter()
            .fold(String::from("sha256:"), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            });
        Ok(Self {
            program,
            data,
            revision,
        })
    }

    /// A virtual machine running this policy, each evaluation cut off after `limit`.
    pub fn machine(&self, limit: Duration) -> Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
        vm.set_execution_timer_config(Some(ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::MIN,
        }));
        Ok(vm)
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What one evaluation said: allowed or not, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    pub reason: String,
    /// The evaluation failed or ran out of time: denied, whatever the policy meant.
    pub error: bool,
}

/// Evaluates the decision for `input` on `vm`. Fails closed: an error, a timeout or a result
/// of the wrong shape is a deny.
pub(super) fn evaluate(vm: &mut RegoVM, input: Value) -> Verdict {
    vm.set_input(input);
    let failed = |reason: String| Verdict {
        allow: false,
        reason,
        error: true,
    };
    let decision = match vm.execute() {
        Ok(v) => v,
        Err(e) => {
            let message = e.to_string();
            let first = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return failed(format!("policy error: {}", first.trim()));
        }
    };
    let allow = decision["allow"].as_bool().copied();
    let reasons: Option<Vec<String>> = decision["reasons"].as_array().ok().map(|a| {
        a.iter()
            .map(|r| {
                r.as_string()
                    .map_or_else(|_| r.to_string(), ToString::to_string)
            })
            .collect()
    });
    match (allow, reasons) {
        (Ok(allow), Some(reasons)) => Verdict {
            allow,
            reason: if reasons.is_empty() && !allow {
                "denied by policy".to_owned()
            } else {
                reasons.join("; ")
            },
            error: false,
        },
        _ => failed(format!(
            "policy error: the decision {decision} has no boolean allow"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path, rego: &str, data: Option<&str>) -> Sources {
        std::fs::write(dir.join("p.rego"), rego).unwrap();
        if let Some(data) = data {
            std::fs::write(dir.join("d.json"), data).unwrap();
        }
        Sources {
            rego: vec![dir.join("p.rego")],
            data: data.map(|_| dir.join("d.json")),
        }
    }

    fn decide(compiled: &Compiled, input: &str) -> Verdict {
        let mut vm = compiled.machine(Duration::from_millis(50)).unwrap();
        evaluate(&mut vm, Value::from_json_str(input).unwrap())
    }

    #[test]
    fn allow_and_reasons_as_a_string_or_a_set() {
        let dir = tempfile::tempdir().unwrap();
        let set = "package relay\nimport rego.v1\nallow if input.ok\n\
                   reason contains \"b\" if not input.ok\nreason contains \"a\" if not input.ok\n";
        let c = Compiled::load(&sources(dir.path(), set, None)).unwrap();
        assert_eq!(
            decide(&c, r#"{"ok": true}"#),
            Verdict {
                allow: true,
                reason: String::new(),
                error: false
            }
        );
        assert_eq!(decide(&c, r#"{"ok": false}"#).reason, "a; b");
        let string =
            "package relay\nimport rego.v1\nallow if input.ok\nreason := \"no\" if not input.ok\n";
        let c = Compiled::load(&sources(dir.path(), string, None)).unwrap();
        let v = decide(&c, "{}");
        assert!(!v.allow && !v.error);
        assert_eq!(v.reason, "no");
    }

    #[test]
    fn a_policy_silent_on_a_request_denies_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = Compiled::load(&sources(
            dir.path(),
            "package relay\nimport rego.v1\nallow if input.x == 1\n",
            None,
        ))
        .unwrap();
        let v = decide(&c, r#"{"x": 2}"#);
        assert!(!v.allow && !v.error);
        assert_eq!(v.reason, "denied by policy");
    }

    #[test]
    fn data_is_visible_and_changes_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let rego = "package relay\nimport rego.v1\nallow if input.user in data.staff\n";
        let a = Compiled::load(&sources(dir.path(), rego, Some(r#"{"staff": ["ann"]}"#))).unwrap();
        assert!(decide(&a, r#"{"user": "ann"}"#).allow);
        assert!(!decide(&a, r#"{"user": "bob"}"#).allow);
        let b = Compiled::load(&sources(dir.path(), rego, Some(r#"{"staff": ["bob"]}"#))).unwrap();
        assert_ne!(a.revision, b.revision);
        assert!(a.revision.starts_with("sha256:") && a.revision.len() == 19);
    }

    #[test]
    fn bad_policies_are_refused_at_load_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let syntax = Compiled::load(&sources(dir.path(), "package relay\nallow if {", None));
        assert!(
            matches!(syntax, Err(LoadError::Rego { .. })),
            "{:?}",
            syntax.err()
        );
        let unknown = Compiled::load(&sources(
            dir.path(),
            "package relay\nimport rego.v1\nallow if { input.x == 1; net.no_such_thing(input.y) }\n",
            None,
        ))
        .err()
        .unwrap();
        assert!(
            unknown.to_string().contains("net.no_such_thing"),
            "{unknown}"
        );
        let other = Compiled::load(&sources(dir.path(), "package other\nallow := true\n", None));
        assert!(matches!(other, Err(LoadError::NoRelayPackage)));
        let data = Compiled::load(&sources(
            dir.path(),
            "package relay\nallow := true\n",
            Some("[1]"),
        ));
        assert!(matches!(data, Err(LoadError::Data { .. })));
        let missing = Compiled::load(&Sources {
            rego: vec![dir.path().join("absent.rego")],
            data: None,
        });
        assert!(matches!(missing, Err(LoadError::Read { .. })));
    }

    #[test]
    fn a_policy_that_runs_too_long_or_fails_denies() {
        let dir = tempfile::tempdir().unwrap();
        let slow = "package relay\nimport rego.v1\n\
                    allow if count([x | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000); x == y]) > 0\n";
        let c = Compiled::load(&sources(dir.path(), slow, None)).unwrap();
        let mut vm = c.machine(Duration::from_millis(5)).unwrap();
        let v = evaluate(&mut vm, Value::new_object());
        assert!(!v.allow && v.error, "{v:?}");
        assert!(v.reason.contains("time limit"), "{}", v.reason);
    }
}
