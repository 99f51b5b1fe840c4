//! What the control API asks of the room core and what it answers: plain serde types, the
//! JSON bodies of the HTTP API (`relay/openapi.yaml`, served by `crate::http`) and the
//! `relay room` command's output.
//! The HTTP layer only translates; every rule lives in the core.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What the scheduling system says of a room or an endpoint (patient consent, role, site),
/// for the policy to decide with (README "Policy"); Relay itself does nothing else with it.
pub type Attributes = serde_json::Map<String, serde_json::Value>;

/// `POST /v1/rooms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSpec {
    /// 1-64 characters of `[A-Za-z0-9_.-]`: it appears in paths.
    pub name: String,
    /// A tenant of the configuration (`[[tenant]]`), whose rate limit the room's media spends.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Endpoints the room may hold (default 300).
    #[serde(default)]
    pub max_endpoints: Option<u32>,
    /// Bits per second the room's publishers may send in all, on top of the tenant's limit.
    #[serde(default)]
    pub max_bitrate_bps: Option<u64>,
    /// What the policy sees of the room (`input.object.room.attributes`).
    #[serde(default)]
    pub attributes: Attributes,
}

/// `POST /v1/rooms/{room}/endpoints`: a port (or an RTP/RTCP pair of ports) on the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    /// The relay's port for RTP (RTCP on the next one unless `rtcp_mux`); default: one
    /// picked from the media port range.
    #[serde(default)]
    pub port: Option<u16>,
    /// Where the endpoint's media goes (and whence it must come). Without it, the first
    /// packet that arrives latches it (symmetric RTP).
    #[serde(default)]
    pub remote: Option<SocketAddr>,
    /// RTP and RTCP on one port (RFC 5761); otherwise RTCP on `port + 1`, and to
    /// `remote`'s port + 1.
    #[serde(default = "yes")]
    pub rtcp_mux: bool,
    /// A latched endpoint may move to a new address, if that address sends the SSRC it
    /// latched with (a phone whose NAT mapping changed). Off: nobody can take a stream
    /// over by sending first.
    #[serde(default)]
    pub relatch: bool,
    /// Seconds without a packet after which the endpoint is removed (0: never).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u32,
    /// Bits per second this endpoint may publish (all its tracks together), on top of its
    /// room's and its tenant's limits.
    #[serde(default)]
    pub max_bitrate_bps: Option<u64>,
    /// What the policy sees of the endpoint (`input.subject.attributes`).
    #[serde(default)]
    pub attributes: Attributes,
}

const fn yes() -> bool {
    true
}

const fn default_idle() -> u32 {
    300
}

/// `PATCH /v1/rooms/{room}/endpoints/{endpoint}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    /// Pauses every video subscription of this endpoint at once (a weak link), or resumes
    /// them.
    #[serde(default)]
    pub audio_only: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// `POST /v1/rooms/{room}/tracks`: a stream an endpoint publishes, by SSRC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackSpec {
    pub name: String,
    /// The publishing endpoint.
    pub endpoint: String,
    /// 1-4294967295 (0 is refused: some stacks treat it as unset).
    pub ssrc: u32,
    pub kind: MediaKind,
    /// Simulcast: tracks with the same `source` are layers of one camera, told apart by
    /// `layer` ("high", "low", ...). Subscribe to the source, choose a layer.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub layer: Option<String>,
}

/// `PUT /v1/rooms/{room}/endpoints/{endpoint}/subscriptions/{track}`: the endpoint receives
/// the track (or a simulcast source's chosen layer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// For a simulcast source: which layer (default: the first declared).
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default)]
    pub paused: bool,
}

/// Everything the control API can ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    CreateRoom(RoomSpec),
    ListRooms,
    GetRoom {
        room: String,
    },
    DeleteRoom {
        room: String,
    },
    CreateEndpoint {
        room: String,
        spec: EndpointSpec,
    },
    UpdateEndpoint {
        room: String,
        endpoint: String,
        patch: EndpointPatch,
    },
    DeleteEndpoint {
        room: String,
        endpoint: String,
    },
    CreateTrack {
        room: String,
        spec: TrackSpec,
    },
    DeleteTrack {
        room: String,
        track: String,
    },
    /// Creates or changes (PUT).
    Subscribe {
        room: String,
        endpoint: String,
        track: String,
        spec: SubscriptionSpec,
    },
    Unsubscribe {
        room: String,
        endpoint: String,
        track: String,
    },
}

/// Counters of one direction of media, as the data path and the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Dropped over a rate limit.
    pub dropped: u64,
    /// When the route table (the kernel's or the data path's) last forwarded a packet
    /// counted here: Unix time in milliseconds; none before the first. A stream that
    /// stopped shows here while its counts stand still.
    #[serde(default)]
    pub last_packet_unix_ms: Option<u64>,
}

impl Counters {
    /// Both counted together: the sums, and the later last packet.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
            dropped: self.dropped + other.dropped,
            last_packet_unix_ms: self.last_packet_unix_ms.max(other.last_packet_unix_ms),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent flags of the API's JSON, not a state machine"
)]
pub struct EndpointView {
    pub name: String,
    /// The relay's address for this endpoint's RTP (and RTCP when muxed).
    pub local: SocketAddr,
    pub local_rtcp: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Whether `remote` was learnt from the first packet rather than given.
    pub latched: bool,
    pub rtcp_mux: bool,
    pub relatch: bool,
    pub audio_only: bool,
    pub idle_timeout_secs: u32,
    pub max_bitrate_bps: Option<u64>,
    pub attributes: Attributes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackView {
    pub name: String,
    pub endpoint: String,
    pub ssrc: u32,
    pub kind: MediaKind,
    pub source: Option<String>,
    pub layer: Option<String>,
    /// What arrived from the publisher.
    pub received: Counters,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub endpoint: String,
    /// The track or simulcast source subscribed to.
    pub track: String,
    pub layer: Option<String>,
    pub paused: bool,
    /// The SSRC the subscriber receives now (none while paused, audio-only for video, or
    /// without a remote address).
    pub ssrc: Option<u32>,
    pub sent: Counters,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub name: String,
    pub tenant: Option<String>,
    pub max_endpoints: u32,
    pub max_bitrate_bps: Option<u64>,
    pub attributes: Attributes,
    pub endpoints: Vec<EndpointView>,
    pub tracks: Vec<TrackView>,
    pub subscriptions: Vec<SubscriptionView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub name: String,
    pub tenant: Option<String>,
    pub endpoints: usize,
    pub tracks: usize,
    pub subscriptions: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Room(Box<RoomView>),
    Rooms(Vec<RoomSummary>),
    Endpoint(EndpointView),
    Track(TrackView),
    Subscription(SubscriptionView),
    /// DELETE: nothing to say (204).
    Deleted,
}

/// A refused request: the HTTP status, the field at fault, and why. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{status} {}: {message}", field.as_deref().unwrap_or("-"))]
pub struct ApiError {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    pub fn not_found(field: &str, what: &str, name: &str) -> Self {
        Self::new(404, Some(field), format!("no {what} named {name:?}"))
    }

    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        Self::new(400, Some(field), message)
    }

    pub fn conflict(field: &str, message: impl Into<String>) -> Self {
        Self::new(409, Some(field), message)
    }
}

/// A request on its way from the HTTP layer to the control task, with where to answer.
pub type Call = (
    Request,
    tokio::sync::oneshot::Sender<Result<Response, ApiError>>,
);
