//! The control API's real server on 127.0.0.1 in front of a fake room core: a task that
//! answers [`Call`]s from an in-memory map of rooms, with plausible counters. Enough rules
//! (names exist, names are unique, SSRC not 0) for the API's and the CLI's error paths.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use relay::{
    http::Token,
    room::api::{
        ApiError, Call, Counters, EndpointView, Request, Response, RoomSummary, RoomView,
        SubscriptionView, TrackView,
    },
};
use tokio::sync::{mpsc, oneshot};

pub(crate) const TOKEN: &str = "correct-horse-battery-staple";

/// The server and its core, on a runtime of their own; stopped on drop.
pub(crate) struct FakeApi {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    /// The server with the fake core answering.
    pub(crate) fn start() -> Self {
        Self::spawn(true)
    }

    /// The server whose core is gone (its end of the channel closed).
    pub(crate) fn without_core() -> Self {
        Self::spawn(false)
    }

    fn spawn(with_core: bool) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (calls, answers) = mpsc::channel::<Call>(16);
                if with_core {
                    tokio::spawn(fake_core(answers));
                } else {
                    drop(answers);
                }
                let config = relay::http::ApiConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    token: Token::new(TOKEN).unwrap(),
                };
                // The probes over counts nothing has written: not ready.
                let probes = relay::http::probes::router(relay::metrics::Live::new(None));
                let (addr, server) = relay::http::start(config, calls, probes, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
                ready_tx.send(addr).unwrap();
                server.await.unwrap().unwrap();
            });
        });
        let addr = ready_rx.recv().expect("the API server started");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A token file for the CLI, owner-only, in a directory of its own.
pub(crate) fn token_file(test: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("relay-api-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An HTTP answer: status, `WWW-Authenticate`, and the body as JSON (`Null` when empty).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) www_authenticate: Option<String>,
    pub(crate) json: serde_json::Value,
}

/// Sends `method path` with `body` and the `authorization` header if given.
pub(crate) fn send(
    api: &FakeApi,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.url()));
    if let Some(authorization) = authorization {
        builder = builder.header("Authorization", authorization);
    }
    let mut response = match body {
        Some(body) => agent.run(
            builder
                .header("Content-Type", "application/json")
                .body(body)
                .unwrap(),
        ),
        None => agent.run(builder.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = response.body_mut().read_to_string().unwrap();
    Answer {
        status: response.status().as_u16(),
        www_authenticate: response
            .headers()
            .get("WWW-Authenticate")
            .map(|v| v.to_str().unwrap().to_owned()),
        json: if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
        },
    }
}

/// [`send`] with the right token.
pub(crate) fn authorized(api: &FakeApi, method: &str, path: &str, body: Option<&str>) -> Answer {
    send(
        api,
        method,
        path,
        Some(&format!("Bearer {TOKEN}")),
        body.map(|b| b.as_bytes().to_vec()),
    )
}

async fn fake_core(mut calls: mpsc::Receiver<Call>) {
    let mut rooms = BTreeMap::new();
    while let Some((request, answer)) = calls.recv().await {
        let _ = answer.send(handle(&mut rooms, request));
    }
}

const RECEIVED: Counters = Counters {
    packets: 1200,
    bytes: 1_440_000,
    dropped: 3,
    last_packet_unix_ms: Some(1_764_633_600_000),
};

#[expect(
    clippy::too_many_lines,
    reason = "one arm per request, as the core has"
)]
fn handle(rooms: &mut BTreeMap<String, RoomView>, request: Request) -> Result<Response, ApiError> {
    Ok(match request {
        Request::CreateRoom(spec) => {
            if rooms.contains_key(&spec.name) {
                return Err(ApiError::conflict("name", "a room of that name exists"));
            }
            let view = RoomView {
                name: spec.name.clone(),
                tenant: spec.tenant,
                max_endpoints: spec.max_endpoints.unwrap_or(300),
                max_bitrate_bps: spec.max_bitrate_bps,
                endpoints: vec![],
                tracks: vec![],
                subscriptions: vec![],
                attributes: serde_json::Map::new(),
            };
            rooms.insert(spec.name, view.clone());
            Response::Room(Box::new(view))
        }
        Request::ListRooms => Response::Rooms(
            rooms
                .values()
                .map(|r| RoomSummary {
                    name: r.name.clone(),
                    tenant: r.tenant.clone(),
                    endpoints: r.endpoints.len(),
                    tracks: r.tracks.len(),
                    subscriptions: r.subscriptions.len(),
                })
                .collect(),
        ),
        Request::GetRoom { room: name } => Response::Room(Box::new(room(rooms, &name)?.clone())),
        Request::DeleteRoom { room: name } => {
            rooms
                .remove(&name)
                .ok_or_else(|| ApiError::not_found("room", "room", &name))?;
            Response::Deleted
        }
        Request::CreateEndpoint { room: name, spec } => {
            let room = room(rooms, &name)?;
            if room.endpoints.iter().any(|e| e.name == spec.name) {
                return Err(ApiError::conflict(
                    "name",
                    "an endpoint of that name exists",
                ));
            }
            let port = spec
                .port
                .unwrap_or(40_000 + 2 * room.endpoints.len() as u16);
            let view = EndpointView {
                name: spec.name,
                local: SocketAddr::from(([192, 0, 2, 1], port)),
                local_rtcp: (!spec.rtcp_mux).then(|| SocketAddr::from(([192, 0, 2, 1], port + 1))),
                remote: spec.remote,
                latched: false,
                rtcp_mux: spec.rtcp_mux,
                relatch: spec.relatch,
                audio_only: false,
                idle_timeout_secs: spec.idle_timeout_secs,
                max_bitrate_bps: spec.max_bitrate_bps,
                attributes: serde_json::Map::new(),
            };
            room.endpoints.push(view.clone());
            Response::Endpoint(view)
        }
        Request::UpdateEndpoint {
            room: name,
            endpoint,
            patch,
        } => {
            let room = room(rooms, &name)?;
            let view = endpoint_mut(room, &endpoint)?;
            if let Some(audio_only) = patch.audio_only {
                view.audio_only = audio_only;
            }
            Response::Endpoint(view.clone())
        }
        Request::DeleteEndpoint {
            room: name,
            endpoint,
        } => {
            let room = room(rooms, &name)?;
            endpoint_mut(room, &endpoint)?;
            room.endpoints.retain(|e| e.name != endpoint);
            room.tracks.retain(|t| t.endpoint != endpoint);
            room.subscriptions.retain(|s| s.endpoint != endpoint);
            Response::Deleted
        }
        Request::CreateTrack { room: name, spec } => {
            let room = room(rooms, &name)?;
            endpoint_mut(room, &spec.endpoint)?;
            if spec.ssrc == 0 {
                return Err(ApiError::bad("ssrc", "0 is not an SSRC"));
            }
            let view = TrackView {
                name: spec.name,
                endpoint: spec.endpoint,
                ssrc: spec.ssrc,
                kind: spec.kind,
                source: spec.source,
                layer: spec.layer,
                received: RECEIVED,
            };
            room.tracks.push(view.clone());
            Response::Track(view)
        }
        Request::DeleteTrack { room: name, track } => {
            let room = room(rooms, &name)?;
            track_of(room, &track)?;
            room.tracks.retain(|t| t.name != track);
            room.subscriptions.retain(|s| s.track != track);
            Response::Deleted
        }
        Request::Subscribe {
            room: name,
            endpoint,
            track,
            spec,
        } => {
            let room = room(rooms, &name)?;
            endpoint_mut(room, &endpoint)?;
            let ssrc = track_of(room, &track)?.ssrc;
            let view = SubscriptionView {
                endpoint: endpoint.clone(),
                track: track.clone(),
                layer: spec.layer,
                paused: spec.paused,
                ssrc: (!spec.paused).then_some(ssrc),
                sent: Counters {
                    dropped: 0,
                    ..RECEIVED
                },
            };
            room.subscriptions
                .retain(|s| (&s.endpoint, &s.track) != (&endpoint, &track));
            room.subscriptions.push(view.clone());
            Response::Subscription(view)
        }
        Request::Unsubscribe {
            room: name,
            endpoint,
            track,
        } => {
            let room = room(rooms, &name)?;
            let before = room.subscriptions.len();
            room.subscriptions
                .retain(|s| (&s.endpoint, &s.track) != (&endpoint, &track));
            if room.subscriptions.len() == before {
                return Err(ApiError::not_found("track", "subscription to", &track));
            }
            Response::Deleted
        }
    })
}

fn room<'a>(
    rooms: &'a mut BTreeMap<String, RoomView>,
    name: &str,
) -> Result<&'a mut RoomView, ApiError> {
    rooms
        .get_mut(name)
        .ok_or_else(|| ApiError::not_found("room", "room", name))
}

fn endpoint_mut<'a>(room: &'a mut RoomView, name: &str) -> Result<&'a mut EndpointView, ApiError> {
    room.endpoints
        .iter_mut()
        .find(|e| e.name == name)
        .ok_or_else(|| ApiError::not_found("endpoint", "endpoint", name))
}

fn track_of<'a>(room: &'a RoomView, name: &str) -> Result<&'a TrackView, ApiError> {
    room.tracks
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::not_found("track", "track", name))
}
