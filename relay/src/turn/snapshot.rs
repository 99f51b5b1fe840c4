//! The TURN server's allocation state as a file, so that a restarted relay (after a crash or
//! `kill -9`) goes on serving the allocations its clients hold.
//!
//! Times are Unix milliseconds: an `Instant` means nothing to another process. The file is
//! JSON, written to a temporary file that is synced and renamed over the old one, so a crash
//! leaves either the previous snapshot or the new one, never half of one.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use super::server::Transport;
use crate::stun::TransactionId;

/// The format version this relay writes and reads.
pub(super) const VERSION: u32 = 1;

/// Every allocation and port reservation of a [`Server`](super::Server), as
/// [`Server::snapshot`](super::Server::snapshot) takes it and
/// [`Server::restore`](super::Server::restore) rebuilds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(deserialize_with = "supported_version")]
    pub(super) version: u32,
    /// When it was taken, for whoever reads the file.
    pub(super) taken_unix_ms: u64,
    pub(super) allocations: Vec<SavedAllocation>,
    pub(super) reservations: Vec<SavedReservation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedAllocation {
    pub(super) transport: Transport,
    pub(super) client: SocketAddr,
    pub(super) server: SocketAddr,
    pub(super) username: String,
    pub(super) relayed: Vec<SocketAddr>,
    pub(super) expires_unix_ms: u64,
    /// Whether its sockets were bound with DF (DONT-FRAGMENT, RFC 8656 section 7.2).
    pub(super) dont_fragment: bool,
    pub(super) permissions: Vec<SavedPermission>,
    pub(super) channels: Vec<SavedChannel>,
    pub(super) cooldowns: Vec<SavedCooldown>,
    /// The Allocate that made it and the answer it got: a retransmission of that Allocate
    /// after the restart still gets the same answer (RFC 8656 section 7.2).
    #[serde(with = "base64_bytes")]
    pub(super) created_by: TransactionId,
    #[serde(with = "base64_bytes")]
    pub(super) success_response: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedPermission {
    pub(super) peer: IpAddr,
    pub(super) expires_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedChannel {
    pub(super) number: u16,
    pub(super) peer: SocketAddr,
    pub(super) expires_unix_ms: u64,
}

/// A channel binding that expired and still blocks rebinding its number or peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedCooldown {
    pub(super) number: u16,
    pub(super) peer: SocketAddr,
    pub(super) until_unix_ms: u64,
}

/// A port held for a RESERVATION-TOKEN (EVEN-PORT with the R bit, RFC 8656 section 7.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedReservation {
    pub(super) addr: SocketAddr,
    pub(super) token: u64,
    pub(super) expires_unix_ms: u64,
}

/// Why a state file could not be loaded. The relay can still start, without the
/// allocations: the messages say which file and what to do with it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the state file {}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error(
        "the state file {} is not an allocation snapshot ({cause}): move it aside to keep it, \
         or delete it",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error(
        "the state file {} holds snapshot version {found} but this relay reads version \
         {VERSION}: another release of the relay wrote it; move it aside or delete it",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
}

impl Snapshot {
    /// The number of allocations it holds, for logs.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// Writes the snapshot to `path` so that a crash at any point leaves the old file or the
    /// new one: `path.tmp` (mode 0600: usernames and addresses of clients), fsync, rename,
    /// fsync of the directory.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(path, &json)
    }

    /// Reads a snapshot written by [`Snapshot::write_atomic`]; `None` when there is no file
    /// (a first start).
    pub fn read(path: &Path) -> Result<Option<Self>, SnapshotError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => {
                return Err(SnapshotError::Io {
                    path: path.to_owned(),
                    cause,
                });
            }
        };
        Self::from_json(&bytes).map(Some).map_err(|e| match e {
            ParseError::Corrupt(cause) => SnapshotError::Corrupt {
                path: path.to_owned(),
                cause,
            },
            ParseError::Version(found) => SnapshotError::Version {
                path: path.to_owned(),
                found,
            },
        })
    }

    /// Parses the version first, so that another version is reported as such rather than as
    /// whatever field of it this release does not understand.
    fn from_json(bytes: &[u8]) -> Result<Self, ParseError> {
        #[derive(Deserialize)]
        struct Header {
            version: u32,
        }
        let header: Header = serde_json::from_slice(bytes).map_err(ParseError::Corrupt)?;
        if header.version != VERSION {
            return Err(ParseError::Version(header.version));
        }
        serde_json::from_slice(bytes).map_err(ParseError::Corrupt)
    }
}

enum ParseError {
    Corrupt(serde_json::Error),
    Version(u32),
}

/// Refuses other versions however the snapshot is deserialized.
fn supported_version<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let version = u32::deserialize(d)?;
    if version == VERSION {
        Ok(version)
    } else {
        Err(D::Error::custom(format!(
            "snapshot version {version}, this relay reads version {VERSION}"
        )))
    }
}

/// Bytes as base64 text: a STUN message as a JSON array of numbers is four times longer.
mod base64_bytes {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        bytes: &impl AsRef<[u8]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<Vec<u8>>>(
        d: D,
    ) -> Result<T, D::Error> {
        let bytes = STANDARD
            .decode(String::deserialize(d)?)
            .map_err(D::Error::custom)?;
        let len = bytes.len();
        T::try_from(bytes).map_err(|_| D::Error::custom(format!("unexpected length {len}")))
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never half
/// of one: a temporary file, synced, renamed over it, the directory synced; mode 0600 (the
/// state names users and addresses).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // `mode` applies only to a new file: one left by a crash keeps whatever it had.
    file.set_permissions(Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    // The rename is durable once the directory is.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            version: VERSION,
            taken_unix_ms: 1_800_000_000_123,
            allocations: vec![SavedAllocation {
                transport: Transport::Udp,
                client: "10.77.0.11:40000".parse().unwrap(),
                server: "10.77.0.1:3478".parse().unwrap(),
                username: "alice".to_owned(),
                relayed: vec![
                    "10.77.0.1:50002".parse().unwrap(),
                    "[fd77::1]:50003".parse().unwrap(),
                ],
                expires_unix_ms: 1_800_000_600_123,
                dont_fragment: true,
                permissions: vec![SavedPermission {
                    peer: "10.77.0.21".parse().unwrap(),
                    expires_unix_ms: 1_800_000_300_000,
                }],
                channels: vec![SavedChannel {
                    number: 0x4000,
                    peer: "10.77.0.21:3480".parse().unwrap(),
                    expires_unix_ms: 1_800_000_600_000,
                }],
                cooldowns: vec![SavedCooldown {
                    number: 0x4001,
                    peer: "10.77.0.22:3480".parse().unwrap(),
                    until_unix_ms: 1_800_000_100_000,
                }],
                created_by: [7; 12],
                success_response: vec![1, 3, 0, 0, 0x21, 0x12, 0xA4, 0x42],
            }],
            reservations: vec![SavedReservation {
                addr: "10.77.0.1:50005".parse().unwrap(),
                token: u64::MAX - 1,
                expires_unix_ms: 1_800_000_030_000,
            }],
        }
    }

    /// A fresh directory under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("relay-snapshot-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = scratch("roundtrip");
        let path = dir.join("state.json");
        assert!(
            Snapshot::read(&path).unwrap().is_none(),
            "no file: a first start"
        );
        // A leftover temporary file from a crash, readable by all, is replaced.
        fs::write(dir.join("state.json.tmp"), b"half").unwrap();
        fs::set_permissions(dir.join("state.json.tmp"), Permissions::from_mode(0o644)).unwrap();
        let s = snapshot();
        s.write_atomic(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), Some(s.clone()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.join("state.json.tmp").exists());
        // Writing again replaces the file.
        let mut later = s;
        later.allocations.clear();
        later.write_atomic(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), Some(later));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bytes_are_base64_and_times_unix_ms() {
        let json = serde_json::to_string(&snapshot()).unwrap();
        assert!(
            json.starts_with(r#"{"version":1,"taken_unix_ms":1800000000123,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""created_by":"BwcHBwcHBwcHBwcH""#),
            "{json}"
        );
        assert!(json.contains(r#""transport":"udp""#), "{json}");
    }

    #[test]
    fn corrupt_files_and_other_versions_are_named_errors() {
        let dir = scratch("errors");
        let path = dir.join("state.json");
        let good = serde_json::to_string(&snapshot()).unwrap();
        let cases = [
            ("", "not an allocation snapshot"),
            ("{\"version\":1", "not an allocation snapshot"),
            (&good[..good.len() / 2], "not an allocation snapshot"),
            ("[1, 2]", "not an allocation snapshot"),
            (
                &good.replace("BwcHBwcHBwcHBwcH", "BwcH"),
                "not an allocation snapshot",
            ),
            (
                r#"{"version":2,"whatever":"changed"}"#,
                "holds snapshot version 2 but this relay reads version 1",
            ),
            (
                &good.replace("\"version\":1", "\"version\":0"),
                "holds snapshot version 0",
            ),
        ];
        for (content, want) in cases {
            fs::write(&path, content).unwrap();
            let e = Snapshot::read(&path).unwrap_err();
            let message = e.to_string();
            assert!(message.contains(want), "{content:?}: {message}");
            assert!(
                message.contains(&path.display().to_string()),
                "names the file: {message}"
            );
        }
        // Invalid UTF-8 is corrupt, not an I/O error.
        fs::write(&path, b"\xff\xfe").unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Corrupt { .. })
        ));
        // Reading a directory is an I/O error, named too.
        let e = Snapshot::read(&dir).unwrap_err();
        assert!(matches!(e, SnapshotError::Io { .. }), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn other_versions_are_refused_by_plain_deserialization_too() {
        let json = serde_json::to_string(&snapshot())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        let e = serde_json::from_str::<Snapshot>(&json).unwrap_err();
        assert!(e.to_string().contains("snapshot version 2"), "{e}");
    }
}
