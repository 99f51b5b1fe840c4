//! The rooms as a file, so that a restarted relay (after a crash, `kill -9` or an upgrade)
//! takes them up: the same ports, the latched addresses, the subscriptions. Written
//! atomically, as the TURN server's allocation state is.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::api::MediaKind;

/// The format version this relay writes and reads.
pub(super) const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsSnapshot {
    pub(super) version: u32,
    pub(super) rooms: Vec<SavedRoom>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedRoom {
    pub(super) name: String,
    pub(super) tenant: Option<String>,
    pub(super) max_endpoints: u32,
    pub(super) max_bitrate_bps: Option<u64>,
    #[serde(default)]
    pub(super) attributes: super::api::Attributes,
    pub(super) endpoints: Vec<SavedEndpoint>,
    pub(super) tracks: Vec<SavedTrack>,
    pub(super) subscriptions: Vec<SavedSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedEndpoint {
    pub(super) name: String,
    pub(super) local: SocketAddr,
    pub(super) local_rtcp: Option<SocketAddr>,
    pub(super) remote: Option<SocketAddr>,
    pub(super) remote_rtcp: Option<SocketAddr>,
    pub(super) latched: bool,
    pub(super) latched_ssrc: Option<u32>,
    pub(super) relatch: bool,
    pub(super) audio_only: bool,
    pub(super) idle_timeout_secs: u64,
    /// Absent from files written before endpoints had limits.
    #[serde(default)]
    pub(super) max_bitrate_bps: Option<u64>,
    #[serde(default)]
    pub(super) attributes: super::api::Attributes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedTrack {
    pub(super) name: String,
    pub(super) endpoint: String,
    pub(super) ssrc: u32,
    pub(super) kind: MediaKind,
    pub(super) source: Option<String>,
    pub(super) layer: Option<String>,
    pub(super) order: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedSubscription {
    pub(super) endpoint: String,
    pub(super) track: String,
    pub(super) layer: Option<String>,
    pub(super) paused: bool,
}

impl RoomsSnapshot {
    /// Writes the snapshot to `path` atomically (mode 0600).
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::turn::write_atomic(path, &json)
    }

    /// Reads a snapshot written by [`RoomsSnapshot::write_atomic`]; `Ok(None)` without a
    /// file. A file that does not parse, or of another version, is an error naming it.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let snapshot: Self = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: corrupt: {e}", path.display()))?;
        if snapshot.version != VERSION {
            return Err(format!(
                "{}: version {} (this relay reads {VERSION})",
                path.display(),
                snapshot.version
            ));
        }
        Ok(Some(snapshot))
    }

    /// Where the rooms of the relay whose allocation state is `state_file` are kept.
    pub fn file(state_file: &Path) -> PathBuf {
        state_file.with_extension("rooms.json")
    }
}
