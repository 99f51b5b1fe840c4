//! The control API: HTTP/JSON over the room core's [`Request`]s and [`Response`]s, as
//! `relay/openapi.yaml` describes it. The server ([`serve`]) only translates: it checks the
//! bearer token, turns a method, path and body into a [`Request`], hands it to the control
//! task as a [`Call`] and writes back what the core answers. The client ([`Client`]) is
//! what `relay room` speaks. Both read one table of operations, [`Operation`].

mod client;
pub mod probes;
mod server;

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr, sync::Arc};

use axum::http::Method;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

pub use client::{Client, ClientError};
pub use server::{router, serve, start};

use crate::room::api::{ApiError, Request};

/// Where `relay run --api-listen` serves the API, and the token it requires.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token: Token,
}

/// The API's bearer token. Kept out of every `Debug` print; compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// `text` trimmed (a token file ends with a newline); `None` when nothing is left.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Self(text.into()))
    }

    /// Whether `presented` is this token. Both are hashed first, so that neither the time
    /// taken nor an early exit tells an attacker how much of a guess, or its length, was
    /// right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = Sha256::digest(self.0.as_bytes());
        let theirs = Sha256::digest(presented);
        ours.ct_eq(&theirs).into()
    }

    /// The token itself, for a client's `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Largest request body the server reads.
pub const MAX_BODY: usize = 64 * 1024;

/// One method on one path of the API: a kind of [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateRoom,
    ListRooms,
    GetRoom,
    CreateEndpoint,
    UpdateEndpoint,
    CreateTrack,
    Subscribe,
    Unsubscribe,
    DeleteTrack,
    DeleteEndpoint,
    DeleteRoom,
}

impl Operation {
    /// Every operation, in an order that a script can follow: what an operation needs is
    /// created before it and deleted after it.
    pub const ALL: [Self; 11] = [
        Self::CreateRoom,
        Self::ListRooms,
        Self::GetRoom,
        Self::CreateEndpoint,
        Self::UpdateEndpoint,
        Self::CreateTrack,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::DeleteTrack,
        Self::DeleteEndpoint,
        Self::DeleteRoom,
    ];

    pub fn method(self) -> Method {
        match self {
            Self::CreateRoom | Self::CreateEndpoint | Self::CreateTrack => Method::POST,
            Self::ListRooms | Self::GetRoom => Method::GET,
            Self::UpdateEndpoint => Method::PATCH,
            Self::Subscribe => Method::PUT,
            Self::Unsubscribe | Self::DeleteTrack | Self::DeleteEndpoint | Self::DeleteRoom => {
                Method::DELETE
            }
        }
    }

    /// The path, with `{room}`, `{endpoint}` and `{track}` segments in this order.
    pub const fn path(self) -> &'static str {
        match self {
            Self::CreateRoom | Self::ListRooms => "/v1/rooms",
            Self::GetRoom | Self::DeleteRoom => "/v1/rooms/{room}",
            Self::CreateEndpoint => "/v1/rooms/{room}/endpoints",
            Self::UpdateEndpoint | Self::DeleteEndpoint => "/v1/rooms/{room}/endpoints/{endpoint}",
            Self::CreateTrack => "/v1/rooms/{room}/tracks",
            Self::DeleteTrack => "/v1/rooms/{room}/tracks/{track}",
            Self::Subscribe | Self::Unsubscribe => {
                "/v1/rooms/{room}/endpoints/{endpoint}/subscriptions/{track}"
            }
        }
    }

    /// The status of a success: 201 for what is created, 204 (no body) for what is deleted.
    pub const fn status(self) -> u16 {
        match self {
            Self::CreateRoom | Self::CreateEndpoint | Self::CreateTrack => 201,
            Self::ListRooms | Self::GetRoom | Self::UpdateEndpoint | Self::Subscribe => 200,
            Self::Unsubscribe | Self::DeleteTrack | Self::DeleteEndpoint | Self::DeleteRoom => 204,
        }
    }

    /// The request that this operation's path parameters and body ask for.
    pub fn request(
        self,
        mut params: HashMap<String, String>,
        body: &[u8],
    ) -> Result<Request, ApiError> {
        let mut param = |name: &str| params.remove(name).unwrap_or_default();
        let room = param("room");
        Ok(match self {
            Self::CreateRoom => Request::CreateRoom(parse(body)?),
            Self::ListRooms => Request::ListRooms,
            Self::GetRoom => Request::GetRoom { room },
            Self::DeleteRoom => Request::DeleteRoom { room },
            Self::CreateEndpoint => Request::CreateEndpoint {
                room,
                spec: parse(body)?,
            },
            Self::UpdateEndpoint => Request::UpdateEndpoint {
                room,
                endpoint: param("endpoint"),
                patch: parse(body)?,
            },
            Self::DeleteEndpoint => Request::DeleteEndpoint {
                room,
                endpoint: param("endpoint"),
            },
            Self::CreateTrack => Request::CreateTrack {
                room,
                spec: parse(body)?,
            },
            Self::DeleteTrack => Request::DeleteTrack {
                room,
                track: param("track"),
            },
            Self::Subscribe => Request::Subscribe {
                room,
                endpoint: param("endpoint"),
                track: param("track"),
                spec: parse(body)?,
            },
            Self::Unsubscribe => Request::Unsubscribe {
                room,
                endpoint: param("endpoint"),
                track: param("track"),
            },
        })
    }

    /// The inverse of [`Operation::request`]: the operation, its path parameters in path
    /// order, and its JSON body.
    pub fn of(request: &Request) -> (Self, Vec<&str>, Option<serde_json::Value>) {
        match request {
            Request::CreateRoom(spec) => (Self::CreateRoom, vec![], Some(json(spec))),
            Request::ListRooms => (Self::ListRooms, vec![], None),
            Request::GetRoom { room } => (Self::GetRoom, vec![room], None),
            Request::DeleteRoom { room } => (Self::DeleteRoom, vec![room], None),
            Request::CreateEndpoint { room, spec } => {
                (Self::CreateEndpoint, vec![room], Some(json(spec)))
            }
            Request::UpdateEndpoint {
                room,
                endpoint,
                patch,
            } => (
                Self::UpdateEndpoint,
                vec![room, endpoint],
                Some(json(patch)),
            ),
            Request::DeleteEndpoint { room, endpoint } => {
                (Self::DeleteEndpoint, vec![room, endpoint], None)
            }
            Request::CreateTrack { room, spec } => {
                (Self::CreateTrack, vec![room], Some(json(spec)))
            }
            Request::DeleteTrack { room, track } => (Self::DeleteTrack, vec![room, track], None),
            Request::Subscribe {
                room,
                endpoint,
                track,
                spec,
            } => (
                Self::Subscribe,
                vec![room, endpoint, track],
                Some(json(spec)),
            ),
            Request::Unsubscribe {
                room,
                endpoint,
                track,
            } => (Self::Unsubscribe, vec![room, endpoint, track], None),
        }
    }

    /// The path with `params` in place of its `{...}` segments, each percent-encoded.
    pub fn fill(self, params: &[&str]) -> String {
        let mut params = params.iter();
        self.path()
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    encode_segment(params.next().copied().unwrap_or_default())
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// A request body as JSON.
fn json<T: serde::Serialize>(body: &T) -> serde_json::Value {
    serde_json::to_value(body).expect("request bodies are plain data")
}

/// A path segment: unreserved characters as they are, everything else (and a segment of
/// dots, which a URL parser would take for `.` or `..`) percent-encoded.
fn encode_segment(segment: &str) -> String {
    let all_dots = segment.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || (b == b'.' && !all_dots)
        {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").expect("a String takes any text");
        }
    }
    out
}

/// A JSON body, or a 400 naming the field serde stopped at.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // `.` is the whole body, `?` a key not read yet; unknown and missing fields are
        // reported at the object that lacks them.
        let path = path.trim_end_matches('?').trim_end_matches('.');
        let field = if path.is_empty() {
            named_field(&message).unwrap_or("body")
        } else {
            path
        }
        .to_owned();
        ApiError::bad(&field, message)
    })?;
    de.end().map_err(|e| ApiError::bad("body", e.to_string()))?;
    Ok(value)
}

/// The field serde names in "unknown field `x`" or "missing field `x`".
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split_once('`').map(|(field, _)| field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::api::{SubscriptionSpec, TrackSpec};

    #[test]
    fn tokens_match_only_themselves() {
        let token = Token::new("  s3cret\n").unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret "));
        assert!(!token.matches(b""));
        assert!(Token::new(" \n").is_none());
        assert_eq!(format!("{token:?}"), "***");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let field = |body: &str| parse::<TrackSpec>(body.as_bytes()).unwrap_err().field;
        let ok = r#"{"name":"t","endpoint":"e","ssrc":1,"kind":"audio"}"#;
        assert!(parse::<TrackSpec>(ok.as_bytes()).is_ok());
        for (body, expected) in [
            (
                r#"{"name":"t","endpoint":"e","ssrc":"x","kind":"audio"}"#,
                "ssrc",
            ),
            (
                r#"{"name":"t","endpoint":"e","ssrc":1,"kind":"smell"}"#,
                "kind",
            ),
            (r#"{"name":"t","endpoint":"e","ssrc":1}"#, "kind"),
            (
                r#"{"name":"t","endpoint":"e","ssrc":1,"kind":"audio","colour":1}"#,
                "colour",
            ),
            (r#"{"name":"t""#, "body"),
            (&format!("{ok} {{}}"), "body"),
            ("", "body"),
        ] {
            assert_eq!(field(body).as_deref(), Some(expected), "{body}");
        }
    }

    #[test]
    fn requests_go_to_their_operation_and_back() {
        let request = Request::Subscribe {
            room: "ward 7".to_owned(),
            endpoint: "..".to_owned(),
            track: "cam.high".to_owned(),
            spec: SubscriptionSpec::default(),
        };
        let (op, params, body) = Operation::of(&request);
        assert_eq!(
            op.fill(&params),
            "/v1/rooms/ward%207/endpoints/%2E%2E/subscriptions/cam.high"
        );
        let params = ["room", "endpoint", "track"]
            .into_iter()
            .zip(params)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let body = serde_json::to_vec(&body.unwrap()).unwrap();
        assert_eq!(op.request(params, &body).unwrap(), request);
    }
}
