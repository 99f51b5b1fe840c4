//! The room core driven on a virtual clock: no sockets, no sleeping.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    Config, Destination, Output, Rooms, Route, Source,
    api::{
        ApiError, EndpointPatch, EndpointSpec, MediaKind, Request, Response, RoomSpec,
        SubscriptionSpec, TrackSpec,
    },
};

const RELAY: &str = "10.77.0.1";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> Config {
    Config {
        ip: RELAY.parse().unwrap(),
        min_port: 40000,
        max_port: 40999,
        keyframe_interval: Duration::from_secs(1),
        tenants: vec!["north".to_owned()],
        max_rooms: 10,
        policy: None,
    }
}

/// The core, a virtual clock, and a fast path that keeps the routes it is given.
struct Harness {
    rooms: Rooms,
    now: Instant,
    next_call: u64,
    fail_binds: bool,
    open: HashSet<SocketAddr>,
    routes: BTreeMap<(Source, u32), Route>,
    /// Packets the core sent, in order.
    sent: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Harness {
    fn new() -> Self {
        Self {
            rooms: Rooms::new(config(), rand::SeedableRng::seed_from_u64(7)),
            now: Instant::now(),
            next_call: 1,
            fail_binds: false,
            open: HashSet::new(),
            routes: BTreeMap::new(),
            sent: Vec::new(),
        }
    }

    /// Carries out the outputs; returns the replies.
    fn drain(&mut self) -> Vec<(u64, Result<Response, ApiError>)> {
        let mut replies = Vec::new();
        while let Some(o) = self.rooms.poll_output() {
            match o {
                Output::Bind { id, addrs } => {
                    let busy = addrs.iter().any(|a| self.open.contains(a));
                    let result = if self.fail_binds || busy {
                        Err(std::io::Error::other("EADDRINUSE"))
                    } else {
                        self.open.extend(addrs);
                        Ok(())
                    };
                    self.rooms.bound(self.now, id, result);
                }
                Output::Release { addr } => assert!(self.open.remove(&addr), "{addr} not open"),
                Output::Route {
                    from, ssrc, route, ..
                } => match route {
                    Some(r) => {
                        self.routes.insert((from, ssrc), r);
                    }
                    None => assert!(self.routes.remove(&(from, ssrc)).is_some()),
                },
                Output::Send {
                    local,
                    remote,
                    data,
                } => self.sent.push((local, remote, data)),
                Output::Reply { call, result } => replies.push((call, result)),
            }
        }
        replies
    }

    fn call(&mut self, request: Request) -> Result<Response, ApiError> {
        let call = self.next_call;
        self.next_call += 1;
        self.rooms.handle_call(self.now, call, request, &());
        let mut replies = self.drain();
        assert_eq!(replies.len(), 1, "{replies:?}");
        let (c, result) = replies.remove(0);
        assert_eq!(c, call);
        result
    }

    fn room(&mut self, name: &str) {
        self.call(Request::CreateRoom(RoomSpec {
            name: name.to_owned(),
            tenant: None,
            max_endpoints: None,
            max_bitrate_bps: None,
            attributes: serde_json::Map::new(),
        }))
        .unwrap();
    }

    fn endpoint(&mut self, room: &str, name: &str, remote: Option<&str>) -> SocketAddr {
        self.endpoint_with(room, spec(name, remote))
    }

    fn endpoint_with(&mut self, room: &str, spec: EndpointSpec) -> SocketAddr {
        match self.call(Request::CreateEndpoint {
            room: room.to_owned(),
            spec,
        }) {
            Ok(Response::Endpoint(e)) => e.local,
            other => panic!("{other:?}"),
        }
    }

    fn track(&mut self, room: &str, name: &str, endpoint: &str, ssrc: u32, kind: MediaKind) {
        self.call(Request::CreateTrack {
            room: room.to_owned(),
            spec: TrackSpec {
                name: name.to_owned(),
                endpoint: endpoint.to_owned(),
                ssrc,
                kind,
                source: None,
                layer: None,
            },
        })
        .unwrap();
    }

    fn subscribe(&mut self, room: &str, endpoint: &str, track: &str, layer: Option<&str>) {
        self.call(Request::Subscribe {
            room: room.to_owned(),
            endpoint: endpoint.to_owned(),
            track: track.to_owned(),
            spec: SubscriptionSpec {
                layer: layer.map(str::to_owned),
                paused: false,
            },
        })
        .unwrap();
    }

    fn media(&mut self, local: SocketAddr, remote: &str, data: &[u8]) {
        self.rooms.handle_media(self.now, local, addr(remote), data);
        assert!(self.drain().is_empty());
    }

    /// Where packets from `remote` to `local` with `ssrc` go (RTP).
    fn route(&self, local: SocketAddr, remote: &str, ssrc: u32) -> Vec<SocketAddr> {
        let from = Source {
            local,
            remote: addr(remote),
        };
        self.routes
            .get(&(from, ssrc))
            .map(|r| r.rtp.iter().map(|d| d.remote).collect())
            .unwrap_or_default()
    }
}

fn spec(name: &str, remote: Option<&str>) -> EndpointSpec {
    EndpointSpec {
        name: name.to_owned(),
        port: None,
        remote: remote.map(addr),
        rtcp_mux: true,
        relatch: false,
        idle_timeout_secs: 0,
        max_bitrate_bps: None,
        attributes: serde_json::Map::new(),
    }
}

fn rtp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 1];
    p.extend(ssrc.to_be_bytes());
    p.extend(b"media");
    p
}

/// An RTCP packet of type `pt` and count `count` from `sender` with `body` words.
fn rtcp(pt: u8, count: u8, sender: u32, body: &[u32]) -> Vec<u8> {
    let mut p = vec![0x80 | count, pt];
    p.extend(u16::try_from(body.len() + 1).unwrap().to_be_bytes());
    p.extend(sender.to_be_bytes());
    for w in body {
        p.extend(w.to_be_bytes());
    }
    p
}

fn pli(sender: u32, media: u32) -> Vec<u8> {
    rtcp(206, 1, sender, &[media])
}

const CAM: u32 = 0x1111;
const MIC: u32 = 0x2222;

/// A room with a camera (video and audio) given its address, and two classrooms.
fn surgery(h: &mut Harness) -> (SocketAddr, SocketAddr, SocketAddr) {
    h.room("surgery");
    let cam = h.endpoint("surgery", "cam", Some("10.77.0.11:5004"));
    let a = h.endpoint("surgery", "class-a", Some("10.77.0.21:6000"));
    let b = h.endpoint("surgery", "class-b", Some("10.77.0.12:6000"));
    h.track("surgery", "video", "cam", CAM, MediaKind::Video);
    h.track("surgery", "audio", "cam", MIC, MediaKind::Audio);
    for class in ["class-a", "class-b"] {
        h.subscribe("surgery", class, "video", None);
        h.subscribe("surgery", class, "audio", None);
    }
    (cam, a, b)
}

#[test]
fn subscriptions_become_routes_and_first_packets_are_forwarded_by_the_core() {
    let mut h = Harness::new();
    let (cam, a, b) = surgery(&mut h);
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", CAM),
        [addr("10.77.0.21:6000"), addr("10.77.0.12:6000")]
    );
    assert_eq!(h.routes.len(), 2);
    let route = &h.routes[&(
        Source {
            local: cam,
            remote: addr("10.77.0.11:5004"),
        },
        MIC,
    )];
    assert_eq!(
        route.rtp,
        [
            Destination {
                local: a,
                remote: addr("10.77.0.21:6000")
            },
            Destination {
                local: b,
                remote: addr("10.77.0.12:6000")
            }
        ]
    );
    // A packet the fast path has not forwarded yet: the core sends it to both, from
    // each subscriber's own port, bytes untouched.
    h.media(cam, "10.77.0.11:5004", &rtp(CAM));
    assert_eq!(
        h.sent,
        [
            (a, addr("10.77.0.21:6000"), rtp(CAM)),
            (b, addr("10.77.0.12:6000"), rtp(CAM))
        ]
    );
    assert_eq!(h.rooms.stats().forwarded, 2);
    // An SSRC the camera does not publish, and a stranger's packet, go nowhere.
    h.media(cam, "10.77.0.11:5004", &rtp(0x9999));
    h.media(cam, "10.77.0.99:5004", &rtp(CAM));
    h.media(cam, "10.77.0.11:5004", b"not rtp");
    assert_eq!(h.sent.len(), 2);
    let stats = h.rooms.stats();
    assert_eq!(
        (stats.unknown_ssrc, stats.foreign, stats.malformed),
        (1, 1, 1)
    );
    // Unsubscribing, pausing and deleting take the routes away.
    h.call(Request::Unsubscribe {
        room: "surgery".into(),
        endpoint: "class-b".into(),
        track: "video".into(),
    })
    .unwrap();
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", CAM),
        [addr("10.77.0.21:6000")]
    );
    h.call(Request::Subscribe {
        room: "surgery".into(),
        endpoint: "class-a".into(),
        track: "video".into(),
        spec: SubscriptionSpec {
            layer: None,
            paused: true,
        },
    })
    .unwrap();
    assert!(h.route(cam, "10.77.0.11:5004", CAM).is_empty());
    h.call(Request::DeleteRoom {
        room: "surgery".into(),
    })
    .unwrap();
    assert!(h.routes.is_empty() && h.open.is_empty());
}

#[test]
fn a_publisher_latches_from_its_first_packet_of_its_own_ssrc_only() {
    let mut h = Harness::new();
    h.room("ward");
    let phone = h.endpoint("ward", "phone", None);
    let cart = h.endpoint("ward", "cart", Some("10.77.0.21:7000"));
    h.track("ward", "voice", "phone", MIC, MediaKind::Audio);
    h.subscribe("ward", "cart", "voice", None);
    assert!(
        h.routes.is_empty(),
        "no route before the phone's address is known"
    );
    // Whoever sends first with another SSRC does not take the endpoint.
    h.media(phone, "203.0.113.66:4000", &rtp(0x6666));
    assert_eq!(h.rooms.stats().unknown_ssrc, 1);
    // The phone behind NAT: its first packet latches it and is forwarded.
    h.media(phone, "198.51.100.7:31000", &rtp(MIC));
    assert_eq!(
        h.route(phone, "198.51.100.7:31000", MIC),
        [addr("10.77.0.21:7000")]
    );
    assert_eq!(h.sent, [(cart, addr("10.77.0.21:7000"), rtp(MIC))]);
    // Once latched, another address with the same SSRC is refused: no re-latching
    // without the flag.
    h.media(phone, "203.0.113.66:4000", &rtp(MIC));
    assert_eq!(h.rooms.stats().foreign, 1);
    assert_eq!(h.sent.len(), 1);
}

#[test]
fn relatching_needs_the_flag_and_the_ssrc_it_latched_with() {
    let mut h = Harness::new();
    h.room("ward");
    let mut s = spec("phone", None);
    s.relatch = true;
    let phone = h.endpoint_with("ward", s);
    h.endpoint("ward", "cart", Some("10.77.0.21:7000"));
    h.track("ward", "voice", "phone", MIC, MediaKind::Audio);
    h.track("ward", "video", "phone", CAM, MediaKind::Video);
    h.subscribe("ward", "cart", "voice", None);
    h.media(phone, "198.51.100.7:31000", &rtp(MIC));
    // The NAT mapping changed: the same SSRC from a new port moves the endpoint.
    h.media(phone, "198.51.100.7:31002", &rtp(MIC));
    assert_eq!(
        h.route(phone, "198.51.100.7:31002", MIC),
        [addr("10.77.0.21:7000")]
    );
    assert!(h.route(phone, "198.51.100.7:31000", MIC).is_empty());
    // Another of its SSRCs from elsewhere does not.
    h.media(phone, "203.0.113.66:4000", &rtp(CAM));
    assert_eq!(h.rooms.stats().foreign, 1);
    assert_eq!(
        h.route(phone, "198.51.100.7:31002", MIC),
        [addr("10.77.0.21:7000")]
    );
}

#[test]
fn audio_only_pauses_every_video_subscription_at_once_and_back() {
    let mut h = Harness::new();
    let (cam, ..) = surgery(&mut h);
    let patch = |audio_only| Request::UpdateEndpoint {
        room: "surgery".into(),
        endpoint: "class-b".into(),
        patch: EndpointPatch {
            audio_only: Some(audio_only),
        },
    };
    h.call(patch(true)).unwrap();
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", CAM),
        [addr("10.77.0.21:6000")]
    );
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", MIC),
        [addr("10.77.0.21:6000"), addr("10.77.0.12:6000")]
    );
    let Ok(Response::Room(view)) = h.call(Request::GetRoom {
        room: "surgery".into(),
    }) else {
        panic!()
    };
    let video_b = view
        .subscriptions
        .iter()
        .find(|s| s.endpoint == "class-b" && s.track == "video")
        .unwrap();
    assert_eq!(video_b.ssrc, None, "audio-only: no video SSRC");
    h.call(patch(false)).unwrap();
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", CAM),
        [addr("10.77.0.21:6000"), addr("10.77.0.12:6000")]
    );
}

#[test]
fn a_track_counts_what_its_publisher_sends_while_nobody_receives_it() {
    let mut h = Harness::new();
    let (cam, ..) = surgery(&mut h);
    for class in ["class-a", "class-b"] {
        h.call(Request::UpdateEndpoint {
            room: "surgery".into(),
            endpoint: class.into(),
            patch: EndpointPatch {
                audio_only: Some(true),
            },
        })
        .unwrap();
    }
    assert!(h.route(cam, "10.77.0.11:5004", CAM).is_empty());
    h.media(cam, "10.77.0.11:5004", &rtp(CAM));
    assert!(h.sent.is_empty());
    let Ok(Response::Room(view)) = h.call(Request::GetRoom {
        room: "surgery".into(),
    }) else {
        panic!()
    };
    let video = view.tracks.iter().find(|t| t.name == "video").unwrap();
    assert_eq!(video.received.packets, 1, "{video:?}");
    assert_eq!(video.received.bytes, rtp(CAM).len() as u64);
    assert!(view.subscriptions.iter().all(|s| s.sent.packets == 0));
}

#[test]
fn a_simulcast_subscriber_gets_one_layer_and_switching_changes_its_ssrc() {
    let mut h = Harness::new();
    h.room("class");
    let cam = h.endpoint("class", "cam", Some("10.77.0.11:5004"));
    h.endpoint("class", "pupil", Some("10.77.0.21:6000"));
    for (layer, ssrc) in [("high", 0xa1), ("low", 0xa2)] {
        h.call(Request::CreateTrack {
            room: "class".into(),
            spec: TrackSpec {
                name: format!("cam-{layer}"),
                endpoint: "cam".into(),
                ssrc,
                kind: MediaKind::Video,
                source: Some("board".into()),
                layer: Some(layer.into()),
            },
        })
        .unwrap();
    }
    // The source's first declared layer by default.
    h.subscribe("class", "pupil", "board", None);
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", 0xa1),
        [addr("10.77.0.21:6000")]
    );
    assert!(h.route(cam, "10.77.0.11:5004", 0xa2).is_empty());
    h.subscribe("class", "pupil", "board", Some("low"));
    assert!(h.route(cam, "10.77.0.11:5004", 0xa1).is_empty());
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", 0xa2),
        [addr("10.77.0.21:6000")]
    );
    let err = h
        .call(Request::Subscribe {
            room: "class".into(),
            endpoint: "pupil".into(),
            track: "board".into(),
            spec: SubscriptionSpec {
                layer: Some("medium".into()),
                paused: false,
            },
        })
        .unwrap_err();
    assert_eq!((err.status, err.field.as_deref()), (404, Some("layer")));
    // The chosen layer goes: back to the default.
    h.call(Request::DeleteTrack {
        room: "class".into(),
        track: "cam-low".into(),
    })
    .unwrap();
    assert_eq!(
        h.route(cam, "10.77.0.11:5004", 0xa1),
        [addr("10.77.0.21:6000")]
    );
}

#[test]
fn keyframe_requests_reach_the_publisher_once_per_interval() {
    let mut h = Harness::new();
    let (cam, a, b) = surgery(&mut h);
    h.media(a, "10.77.0.21:6000", &pli(0xaa, CAM));
    assert_eq!(h.sent, [(cam, addr("10.77.0.11:5004"), pli(0xaa, CAM))]);
    // The second classroom lost the same packet: its request is held back.
    h.media(b, "10.77.0.12:6000", &pli(0xbb, CAM));
    assert_eq!(h.sent.len(), 1);
    assert_eq!(h.rooms.stats().keyframe_requests_throttled, 1);
    // A receiver report is never held back.
    let rr = rtcp(201, 1, 0xbb, &[CAM, 0, 0, 0, 0, 0]);
    h.media(b, "10.77.0.12:6000", &rr);
    assert_eq!(h.sent.len(), 2);
    h.now += Duration::from_secs(1);
    h.media(b, "10.77.0.12:6000", &pli(0xbb, CAM));
    assert_eq!(h.sent.len(), 3);
    // SRTCP cannot be read: it goes to the publisher of what the subscriber receives, at
    // most every 100 ms.
    let mut srtcp = rr.clone();
    srtcp.extend([0x80, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0]);
    h.media(a, "10.77.0.21:6000", &srtcp);
    h.media(a, "10.77.0.21:6000", &srtcp);
    assert_eq!(h.sent.len(), 4);
    assert_eq!(h.sent[3].1, addr("10.77.0.11:5004"));
}

#[test]
fn rtcp_on_its_own_port_latches_and_routes_separately() {
    let mut h = Harness::new();
    h.room("r");
    let mut s = spec("cam", None);
    s.rtcp_mux = false;
    let cam = h.endpoint_with("r", s);
    assert_eq!(cam.port() % 2, 0, "RTP on an even port, RTCP on the next");
    let cam_rtcp = SocketAddr::new(cam.ip(), cam.port() + 1);
    let mut s = spec("tv", Some("10.77.0.21:6000"));
    s.rtcp_mux = false;
    let tv = h.endpoint_with("r", s);
    let tv_rtcp = SocketAddr::new(tv.ip(), tv.port() + 1);
    h.track("r", "video", "cam", CAM, MediaKind::Video);
    h.subscribe("r", "tv", "video", None);
    h.media(cam, "10.77.0.11:5004", &rtp(CAM));
    // RTCP from another host does not latch the RTCP port; from the camera's it does.
    let sr = rtcp(200, 0, CAM, &[0; 5]);
    h.media(cam_rtcp, "10.77.0.99:5005", &sr);
    assert_eq!(h.rooms.stats().foreign, 1);
    h.media(cam_rtcp, "10.77.0.11:5005", &sr);
    let route = &h.routes[&(
        Source {
            local: cam_rtcp,
            remote: addr("10.77.0.11:5005"),
        },
        CAM,
    )];
    // The sender report goes to the subscriber's RTCP port, at the remote's port + 1.
    assert_eq!(
        route.rtcp,
        [Destination {
            local: tv_rtcp,
            remote: addr("10.77.0.21:6001")
        }]
    );
    assert_eq!(h.sent.last().unwrap().1, addr("10.77.0.21:6001"));
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of bad requests")]
fn bad_requests_name_the_field_and_change_nothing() {
    let mut h = Harness::new();
    surgery(&mut h);
    let before = h.call(Request::GetRoom {
        room: "surgery".into(),
    });
    let routes = h.routes.clone();
    let mut taken = spec("x", None);
    taken.port = Some(h.open.iter().next().unwrap().port());
    let cases: Vec<(Request, u16, &str)> = vec![
        (
            Request::GetRoom {
                room: "nope".into(),
            },
            404,
            "room",
        ),
        (
            Request::CreateRoom(RoomSpec {
                name: "a/b".into(),
                tenant: None,
                max_endpoints: None,
                max_bitrate_bps: None,
                attributes: serde_json::Map::new(),
            }),
            400,
            "name",
        ),
        (
            Request::CreateRoom(RoomSpec {
                name: "surgery".into(),
                tenant: None,
                max_endpoints: None,
                max_bitrate_bps: None,
                attributes: serde_json::Map::new(),
            }),
            409,
            "name",
        ),
        (
            Request::CreateRoom(RoomSpec {
                name: "b".into(),
                tenant: Some("south".into()),
                max_endpoints: None,
                max_bitrate_bps: None,
                attributes: serde_json::Map::new(),
            }),
            400,
            "tenant",
        ),
        (
            Request::CreateEndpoint {
                room: "surgery".into(),
                spec: taken,
            },
            409,
            "port",
        ),
        (
            Request::CreateEndpoint {
                room: "surgery".into(),
                spec: spec("cam", None),
            },
            409,
            "name",
        ),
        (
            Request::CreateEndpoint {
                room: "surgery".into(),
                spec: spec("y", Some("0.0.0.0:5000")),
            },
            400,
            "remote",
        ),
        (
            Request::CreateEndpoint {
                room: "surgery".into(),
                spec: EndpointSpec {
                    max_bitrate_bps: Some(0),
                    ..spec("z", None)
                },
            },
            400,
            "max_bitrate_bps",
        ),
        (
            Request::CreateTrack {
                room: "surgery".into(),
                spec: TrackSpec {
                    name: "t".into(),
                    endpoint: "cam".into(),
                    ssrc: 0,
                    kind: MediaKind::Video,
                    source: None,
                    layer: None,
                },
            },
            400,
            "ssrc",
        ),
        (
            Request::CreateTrack {
                room: "surgery".into(),
                spec: TrackSpec {
                    name: "t".into(),
                    endpoint: "cam".into(),
                    ssrc: CAM,
                    kind: MediaKind::Video,
                    source: None,
                    layer: None,
                },
            },
            409,
            "ssrc",
        ),
        (
            Request::CreateTrack {
                room: "surgery".into(),
                spec: TrackSpec {
                    name: "t".into(),
                    endpoint: "ghost".into(),
                    ssrc: 5,
                    kind: MediaKind::Video,
                    source: None,
                    layer: None,
                },
            },
            404,
            "endpoint",
        ),
        (
            Request::Subscribe {
                room: "surgery".into(),
                endpoint: "cam".into(),
                track: "video".into(),
                spec: SubscriptionSpec::default(),
            },
            400,
            "track",
        ),
        (
            Request::Subscribe {
                room: "surgery".into(),
                endpoint: "class-a".into(),
                track: "ghost".into(),
                spec: SubscriptionSpec::default(),
            },
            404,
            "track",
        ),
        (
            Request::DeleteEndpoint {
                room: "surgery".into(),
                endpoint: "ghost".into(),
            },
            404,
            "endpoint",
        ),
    ];
    for (request, status, field) in cases {
        let err = h.call(request.clone()).unwrap_err();
        assert_eq!(
            (err.status, err.field.as_deref()),
            (status, Some(field)),
            "{request:?}: {err}"
        );
    }
    assert_eq!(
        h.call(Request::GetRoom {
            room: "surgery".into()
        }),
        before
    );
    assert_eq!(h.routes, routes);
    // A port that cannot be bound leaves nothing behind either.
    h.fail_binds = true;
    let err = h
        .call(Request::CreateEndpoint {
            room: "surgery".into(),
            spec: spec("z", None),
        })
        .unwrap_err();
    assert_eq!((err.status, err.field.as_deref()), (503, Some("port")));
    assert_eq!(
        h.call(Request::GetRoom {
            room: "surgery".into()
        }),
        before
    );
}

#[test]
fn a_room_holds_at_most_its_endpoints() {
    let mut h = Harness::new();
    h.call(Request::CreateRoom(RoomSpec {
        name: "small".into(),
        tenant: Some("north".into()),
        max_endpoints: Some(2),
        max_bitrate_bps: None,
        attributes: serde_json::Map::new(),
    }))
    .unwrap();
    h.endpoint("small", "a", None);
    h.endpoint("small", "b", None);
    let err = h
        .call(Request::CreateEndpoint {
            room: "small".into(),
            spec: spec("c", None),
        })
        .unwrap_err();
    assert_eq!((err.status, err.field.as_deref()), (409, Some("name")));
}

#[test]
fn idle_endpoints_expire_and_take_their_routes_with_them() {
    let mut h = Harness::new();
    h.room("r");
    let mut s = spec("cam", Some("10.77.0.11:5004"));
    s.idle_timeout_secs = 30;
    let cam = h.endpoint_with("r", s);
    h.endpoint("r", "tv", Some("10.77.0.21:6000"));
    h.track("r", "video", "cam", CAM, MediaKind::Video);
    h.subscribe("r", "tv", "video", None);
    // The fast path reports it busy for a while.
    for _ in 0..40 {
        h.now += Duration::from_secs(1);
        h.rooms.touch(h.now, cam);
        h.rooms.handle_timeout(h.now);
        h.drain();
    }
    assert_eq!(h.routes.len(), 1);
    for _ in 0..31 {
        h.now += Duration::from_secs(1);
        h.rooms.handle_timeout(h.now);
        h.drain();
    }
    assert!(h.routes.is_empty());
    assert!(!h.open.contains(&cam));
    assert_eq!(h.rooms.stats().expired, 1);
    let Ok(Response::Room(view)) = h.call(Request::GetRoom { room: "r".into() }) else {
        panic!()
    };
    assert_eq!(view.endpoints.len(), 1);
    assert!(view.tracks.is_empty() && view.subscriptions.is_empty());
}

/// A restarted relay takes the rooms up from their snapshot: the same ports bound again,
/// latched addresses kept (so a stranger still takes nothing over), the same routes,
/// without a request; a port that cannot be bound again drops its endpoint alone.
#[test]
fn rooms_are_taken_up_after_a_restart() {
    let mut h = Harness::new();
    let (cam, a, _) = surgery(&mut h);
    h.room("ward");
    let phone = h.endpoint_with(
        "ward",
        EndpointSpec {
            max_bitrate_bps: Some(64_000),
            ..spec("phone", None)
        },
    );
    h.endpoint("ward", "cart", Some("10.77.0.21:7000"));
    h.track("ward", "voice", "phone", MIC, MediaKind::Audio);
    h.subscribe("ward", "cart", "voice", None);
    h.media(phone, "198.51.100.7:31000", &rtp(MIC));
    assert!(h.rooms.take_dirty());
    let views = |h: &mut Harness| {
        ["surgery", "ward"].map(|room| {
            let Ok(Response::Room(mut view)) = h.call(Request::GetRoom { room: room.into() })
            else {
                panic!()
            };
            for t in &mut view.tracks {
                t.received = super::api::Counters::default();
            }
            for s in &mut view.subscriptions {
                s.sent = super::api::Counters::default();
            }
            view
        })
    };
    let before = views(&mut h);
    let routes = h.routes.clone();
    let json = serde_json::to_string(&h.rooms.snapshot()).unwrap();

    // The process is gone with its sockets; a new one starts from the file.
    let snapshot: super::RoomsSnapshot = serde_json::from_str(&json).unwrap();
    h.open.clear();
    h.routes.clear();
    h.open.insert(a); // something else took class-a's port meanwhile
    h.rooms = Rooms::restore(
        config(),
        &snapshot,
        h.now,
        rand::SeedableRng::seed_from_u64(8),
    );
    assert!(h.drain().is_empty());
    assert!(h.open.contains(&cam) && h.open.contains(&phone));
    // The phone's own limit comes back with it, for its policer.
    let limits: Vec<_> = h.rooms.endpoint_bitrate_limits().collect();
    assert_eq!(limits, [(vec![phone], 64_000)]);
    let after = views(&mut h);
    assert_eq!(after[1], before[1]);
    let mut expected = before[0].clone();
    expected.endpoints.retain(|e| e.name != "class-a");
    expected.subscriptions.retain(|s| s.endpoint != "class-a");
    assert_eq!(after[0], expected);
    let mut expected_routes = routes;
    for route in expected_routes.values_mut() {
        route.rtp.retain(|d| d.local != a);
        route.rtcp.retain(|d| d.local != a);
    }
    assert_eq!(h.routes, expected_routes);
    // The phone stays latched: the stranger is still a stranger.
    h.media(phone, "203.0.113.66:4000", &rtp(MIC));
    assert_eq!(h.rooms.stats().foreign, 1);
}

/// The telemedicine policy shipped in `appliance/policy/`, deciding the room core's calls.
fn telemedicine() -> crate::policy::Shared {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/policy");
    crate::policy::Policy::start(crate::policy::PolicyConfig {
        sources: crate::policy::Sources {
            rego: vec![dir.join("telemedicine.rego")],
            data: Some(dir.join("telemedicine.json")),
        },
        audit: None,
        timeout: Duration::from_millis(50),
    })
    .unwrap()
    .shared()
}

fn attributes(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match json {
        serde_json::Value::Object(map) => map,
        other => panic!("{other} is not an object"),
    }
}

fn refused(result: Result<Response, ApiError>) -> String {
    match result {
        Err(e) if e.status == 403 => e.message,
        other => panic!("not refused by policy: {other:?}"),
    }
}

#[test]
fn the_policy_decides_joins_publishes_and_subscriptions_and_a_refusal_creates_nothing() {
    let mut h = Harness::new();
    h.rooms = Rooms::new(
        Config {
            policy: Some(telemedicine()),
            ..config()
        },
        rand::SeedableRng::seed_from_u64(7),
    );
    for (name, consent) in [("theatre", true), ("corridor", false)] {
        h.call(Request::CreateRoom(RoomSpec {
            name: name.to_owned(),
            tenant: None,
            max_endpoints: None,
            max_bitrate_bps: None,
            attributes: attributes(serde_json::json!({ "patient_consent": consent })),
        }))
        .unwrap();
    }
    let member = |name: &str, remote: &str, role: &str| EndpointSpec {
        attributes: attributes(serde_json::json!({ "role": role })),
        ..spec(name, Some(remote))
    };
    let camera = h.endpoint_with("theatre", member("camera", "10.77.0.31:5004", "surgeon"));
    h.endpoint_with("theatre", member("class-3", "10.77.0.41:5004", "doctor"));
    h.endpoint_with("theatre", member("home", "203.0.113.5:5004", "doctor"));
    let open = h.open.clone();
    let join = |spec: EndpointSpec, room: &str| Request::CreateEndpoint {
        room: room.to_owned(),
        spec,
    };
    assert_eq!(
        refused(h.call(join(
            member("visitor", "10.77.0.51:5004", "visitor"),
            "theatre"
        ))),
        "denied by policy: staff role or a consenting patient required"
    );
    assert_eq!(
        refused(h.call(join(
            member("camera-2", "10.77.0.32:5004", "surgeon"),
            "corridor"
        ))),
        "denied by policy: patient consent required for this room"
    );
    assert_eq!(h.open, open, "a refused join took no port");

    h.track("theatre", "cam", "camera", 0x1111, MediaKind::Video);
    h.subscribe("theatre", "class-3", "cam", None);
    let subscribe = |endpoint: &str| Request::Subscribe {
        room: "theatre".to_owned(),
        endpoint: endpoint.to_owned(),
        track: "cam".to_owned(),
        spec: SubscriptionSpec {
            layer: None,
            paused: false,
        },
    };
    assert_eq!(
        refused(h.call(subscribe("home"))),
        "denied by policy: media to 203.0.113.5 would leave the site"
    );
    let Ok(Response::Room(view)) = h.call(Request::GetRoom {
        room: "theatre".to_owned(),
    }) else {
        panic!()
    };
    assert_eq!(view.endpoints.len(), 3);
    assert_eq!(view.endpoints[0].attributes["role"], "surgeon");
    assert_eq!(view.attributes["patient_consent"], true);
    let subscribers: Vec<&str> = view
        .subscriptions
        .iter()
        .map(|s| s.endpoint.as_str())
        .collect();
    assert_eq!(
        subscribers,
        ["class-3"],
        "the refused subscription was not made"
    );
    assert_eq!(
        h.route(camera, "10.77.0.31:5004", 0x1111),
        [addr("10.77.0.41:5004")]
    );
}
