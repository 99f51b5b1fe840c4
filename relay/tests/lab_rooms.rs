//! Media rooms in the lab, through the `relay` binary, driven by `relay room` over the
//! control API: GStreamer as the real endpoints (an SRTP VP8 camera and its classrooms),
//! and raw sockets where a test needs to see bytes and SSRCs. Needs root and GStreamer.

mod support;

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use nix::sys::signal::Signal;
use relay::stun::ChannelData;
use serde_json::Value;
use support::{RoomsRelay, channel_client, exit_figures, last_packet_is_recent};
use xtask::{
    gstreamer::{Codec, Layer, Publisher, Stream, Subscriber, Viewer, camera, camera_from},
    lab::{Host, Lab},
};

const SSRC: u32 = 0x1234;
const FRAMES: usize = 90;

/// The model case: one surgery camera, eight classrooms, every frame decoded in each.
#[test]
fn a_surgery_camera_reaches_eight_classrooms_and_every_frame_decodes() {
    let s = RoomsRelay::new("rm-surgery", &[]);
    let (decoded, room) = s.surgery(SSRC, 8, FRAMES, None);
    let (_, log) = s.relay.stop_logged(Signal::SIGTERM);
    let summary = format!(
        "decoded {decoded:?} of {FRAMES}\n{}\n{}",
        exit_figures(&log, "UDP data path at exit: "),
        exit_figures(&log, "rooms at exit: ")
    );
    eprintln!("{summary}");
    assert!(decoded.iter().all(|n| *n == FRAMES), "{summary}");
    // The camera was latched from its first packet; each classroom was sent what the
    // camera sent.
    let endpoints: HashMap<&str, &Value> = room["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(endpoints["cam"]["latched"], true);
    let received = room["tracks"][0]["received"]["packets"].as_u64().unwrap();
    assert!(
        last_packet_is_recent(&room["tracks"][0]["received"]),
        "{room}"
    );
    for sub in room["subscriptions"].as_array().unwrap() {
        assert_eq!(sub["sent"]["packets"].as_u64(), Some(received), "{sub}");
        assert!(last_packet_is_recent(&sub["sent"]), "{sub}");
    }
}

/// An RTP header, then bytes that stand for an SRTP payload and tag.
fn packet(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend(seq.to_be_bytes());
    p.extend([0, 0, 0, 1]);
    p.extend(ssrc.to_be_bytes());
    p.extend((0..40).map(|i: u8| i.wrapping_mul(37) ^ seq.to_be_bytes()[1]));
    p
}

/// Raw sockets on both ends: SRTP bytes arrive exactly as sent; audio-only and a
/// simulcast layer switch change which SSRCs a subscriber gets; a stranger sending to the
/// camera's port first takes nothing over.
#[test]
fn subscriptions_choose_ssrcs_and_bytes_pass_untouched() {
    let s = RoomsRelay::new("rm-raw", &[]);
    s.room(&["create", "class"]);
    let cam = s.room(&["endpoint", "add", "class", "cam"]);
    let cam_addr: SocketAddr = cam["local"].as_str().unwrap().parse().unwrap();
    s.room(&[
        "endpoint",
        "add",
        "class",
        "pupil",
        "--remote",
        "10.77.0.21:7000",
    ]);
    for (name, ssrc, kind, layer) in [
        ("mic", "17", "audio", None),
        ("board-high", "18", "video", Some("high")),
        ("board-low", "19", "video", Some("low")),
    ] {
        let mut args = vec![
            "track",
            "add",
            "class",
            name,
            "--endpoint",
            "cam",
            "--ssrc",
            ssrc,
            "--kind",
            kind,
        ];
        if let Some(layer) = layer {
            args.extend(["--source", "board", "--layer", layer]);
        }
        s.room(&args);
    }
    s.room(&["subscribe", "class", "pupil", "mic"]);
    s.room(&["subscribe", "class", "pupil", "board"]);

    let camera = s
        .lab
        .in_netns(Host::ClientA, || {
            UdpSocket::bind("10.77.0.11:5004").unwrap()
        })
        .unwrap();
    let stranger = s
        .lab
        .in_netns(Host::ClientB, || {
            UdpSocket::bind("10.77.0.12:5004").unwrap()
        })
        .unwrap();
    let pupil = s
        .lab
        .in_netns(Host::Peer, || UdpSocket::bind("10.77.0.21:7000").unwrap())
        .unwrap();
    pupil
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Sends one packet of each SSRC and returns the SSRCs the pupil got, checking the
    // bytes. The camera sends a marker packet last (SSRC 17, audio, always received) so
    // that the pupil knows when the round is over.
    let mut seq = 0_u16;
    let mut round = |from: &UdpSocket| -> Vec<u32> {
        for ssrc in [18, 19, 17] {
            seq += 1;
            from.send_to(&packet(ssrc, seq), cam_addr).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0; 2048];
        while let Ok(n) = pupil.recv(&mut buf) {
            let ssrc = u32::from_be_bytes(buf[8..12].try_into().unwrap());
            let sent_seq = u16::from_be_bytes([buf[2], buf[3]]);
            assert_eq!(&buf[..n], &packet(ssrc, sent_seq)[..], "bytes changed");
            got.push(ssrc);
            if ssrc == 17 {
                break;
            }
        }
        got
    };
    // The camera's first packet latches its port; a stranger sending the camera's SSRCs
    // afterwards reaches no one.
    assert_eq!(
        round(&camera),
        [18, 17],
        "the default layer (high) and audio"
    );
    assert_eq!(round(&stranger), Vec::<u32>::new());
    s.room(&["subscribe", "class", "pupil", "board", "--layer", "low"]);
    assert_eq!(
        round(&camera),
        [19, 17],
        "after the switch to the low layer"
    );
    s.room(&["endpoint", "set", "class", "pupil", "--audio-only", "true"]);
    assert_eq!(round(&camera), [17], "audio only");
    s.room(&["endpoint", "set", "class", "pupil", "--audio-only", "false"]);
    assert_eq!(round(&camera), [19, 17], "video back");
    let (_, log) = s.relay.stop_logged(Signal::SIGTERM);
    let rooms = exit_figures(&log, "rooms at exit: ");
    assert!(rooms.contains(" 3 from a foreign address"), "{rooms}");
}

/// A UDP socket bound to `addr` in `host`'s namespace, with room for a burst.
fn socket(lab: &Lab, host: Host, addr: &str) -> UdpSocket {
    lab.in_netns(host, || {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_recv_buffer_size(4 << 20).unwrap();
        s.bind(&addr.into()).unwrap();
        UdpSocket::from(s)
    })
    .unwrap()
}

/// kill -9 mid-stream: the next relay takes the room up from its state file (ports, the
/// camera's latched address, the subscription), and the camera's packets reach the
/// classroom again without a request; a stranger still reaches no one.
#[test]
fn a_killed_relay_takes_its_rooms_up_again() {
    let mut s = RoomsRelay::new("rm-restart", &[]);
    s.room(&["create", "ward"]);
    let cam = s.room(&["endpoint", "add", "ward", "cam"]);
    let cam_addr: SocketAddr = cam["local"].as_str().unwrap().parse().unwrap();
    s.room(&[
        "endpoint",
        "add",
        "ward",
        "tv",
        "--remote",
        "10.77.0.21:7000",
    ]);
    s.room(&[
        "track",
        "add",
        "ward",
        "video",
        "--endpoint",
        "cam",
        "--ssrc",
        "77",
        "--kind",
        "video",
    ]);
    s.room(&["subscribe", "ward", "tv", "video"]);
    let camera = socket(&s.lab, Host::ClientA, "10.77.0.11:5004");
    let stranger = socket(&s.lab, Host::ClientB, "10.77.0.12:5004");
    let tv = socket(&s.lab, Host::Peer, "10.77.0.21:7000");
    tv.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0; 2048];
    camera.send_to(&packet(77, 1), cam_addr).unwrap();
    assert_eq!(tv.recv(&mut buf).unwrap(), packet(77, 1).len());
    // The latch is saved within 100 ms of the change: wait until the file says so.
    let file = s.state_dir().join("default.rooms.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains("10.77.0.11:5004")) {
        assert!(std::time::Instant::now() < deadline, "rooms never saved");
        std::thread::sleep(Duration::from_millis(20));
    }

    s.restart();
    assert!(s.relay.logged("took up 1 saved rooms"));
    // The stranger first: the camera's port is still latched to the camera.
    stranger.send_to(&packet(77, 2), cam_addr).unwrap();
    camera.send_to(&packet(77, 3), cam_addr).unwrap();
    let n = tv.recv(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &packet(77, 3)[..],
        "the camera's packet, not the stranger's"
    );
    let room = s.room(&["show", "ward"]);
    assert_eq!(room["subscriptions"][0]["ssrc"], 77);
}

/// Phones behind a firewall that passes only TURN reach a room through Relay's own TURN: a
/// live room endpoint is a peer their allocation may reach (port-exact). One publishes,
/// one subscribes (its endpoint latched from the RTCP it sends through its channel);
/// another port of the relay host stays out of reach.
#[test]
fn turn_clients_publish_and_subscribe_through_the_relays_own_turn() {
    let s = RoomsRelay::new("rm-turn", &[]);
    s.room(&["create", "ward"]);
    let local = |e: &Value| -> SocketAddr { e["local"].as_str().unwrap().parse().unwrap() };
    let phone_port = local(&s.room(&["endpoint", "add", "ward", "phone"]));
    let tv_port = local(&s.room(&["endpoint", "add", "ward", "tv"]));
    s.room(&[
        "track",
        "add",
        "ward",
        "voice",
        "--endpoint",
        "phone",
        "--ssrc",
        "88",
        "--kind",
        "audio",
    ]);
    s.room(&["subscribe", "ward", "tv", "voice"]);
    let creds = ("alice", "wonderland");
    let mut phone = channel_client(&s.lab, Host::ClientA, creds, 0x4000, phone_port);
    let tv = channel_client(&s.lab, Host::ClientB, creds, 0x4001, tv_port);
    // Not an endpoint: the relay host's other ports stay closed to TURN clients.
    let other = SocketAddr::new(phone_port.ip(), phone_port.port() ^ 1);
    assert!(phone.channel_bind(0x4002, other).is_err());

    // The TV's receiver report latches its endpoint to the TV's relayed address.
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 9];
    let frame = |channel, data: &[u8]| ChannelData { channel, data }.encode(false);
    tv.socket()
        .send_to(&frame(0x4001, &rr), tv.server())
        .unwrap();
    let wait_latched = std::time::Instant::now() + Duration::from_secs(5);
    while s.room(&["show", "ward"])["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "tv" && e["remote"].is_null())
    {
        assert!(
            std::time::Instant::now() < wait_latched,
            "the TV never latched"
        );
    }
    tv.socket()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0; 2048];
    // One packet at a time, each timed from the phone's send to the TV's receive (one
    // host, one clock): two TURN channels and the room's hop between them, in userspace.
    let mut took_us = Vec::new();
    for seq in 1..=200 {
        let media = packet(88, seq);
        let sent = std::time::Instant::now();
        phone
            .socket()
            .send_to(&frame(0x4000, &media), phone.server())
            .unwrap();
        let n = tv.socket().recv(&mut buf).unwrap();
        took_us.push(sent.elapsed().as_micros());
        let got = ChannelData::decode(&buf[..n]).unwrap();
        assert_eq!(
            (got.channel, got.data),
            (0x4001, &media[..]),
            "packet {seq}"
        );
    }
    took_us.sort_unstable();
    eprintln!(
        "phone -> TURN -> room -> TURN -> TV, 200 packets one at a time: P50 {} us, P99 {} us, \
         max {} us",
        took_us[99], took_us[197], took_us[199]
    );
}

/// A room's `max_bitrate_bps` holds its publishers to it (a policer of its own, burst one
/// second's worth), and an endpoint's its own media; drops are counted on the track; a room
/// beside them is untouched.
#[test]
fn bitrate_limits_of_a_room_and_of_an_endpoint_hold_and_the_room_beside_is_untouched() {
    const PACKETS: u16 = 100;
    let s = RoomsRelay::new("rm-limit", &[]);
    let mut receivers = Vec::new();
    // (room, its limit, the camera's limit, port)
    let rooms = [
        ("small", Some("80000"), None, 7000),
        ("big", None, None, 7002),
        ("capped-cam", None, Some("80000"), 7004),
    ];
    for (room, room_limit, cam_limit, port) in rooms {
        let mut args = vec!["create", room];
        args.extend(room_limit.iter().flat_map(|l| ["--max-bitrate", *l]));
        s.room(&args);
        let remote = format!("10.77.0.11:{port}");
        let mut args = vec!["endpoint", "add", room, "cam", "--remote", &remote];
        args.extend(cam_limit.iter().flat_map(|l| ["--max-bitrate", *l]));
        let cam = s.room(&args);
        let limit: Option<u64> = cam_limit.map(|l| l.parse().unwrap());
        assert_eq!(cam["max_bitrate_bps"].as_u64(), limit);
        let tv = format!("10.77.0.21:{port}");
        s.room(&["endpoint", "add", room, "tv", "--remote", &tv]);
        s.room(&[
            "track",
            "add",
            room,
            "video",
            "--endpoint",
            "cam",
            "--ssrc",
            "5",
            "--kind",
            "video",
        ]);
        s.room(&["subscribe", room, "tv", "video"]);
        let camera = socket(&s.lab, Host::ClientA, &format!("10.77.0.11:{port}"));
        let receiver = socket(&s.lab, Host::Peer, &tv);
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let cam: SocketAddr = cam["local"].as_str().unwrap().parse().unwrap();
        // 100 packets of 1,000 bytes at once: 800 kbit, ten times what a second of
        // an 80 kbit/s limit allows.
        for seq in 0..PACKETS {
            let mut p = packet(5, seq);
            p.resize(1000, 0);
            camera.send_to(&p, cam).unwrap();
        }
        receivers.push((room, receiver));
    }
    let mut buf = [0; 2048];
    let received: Vec<(&str, u16)> = receivers
        .iter()
        .map(|(room, r)| {
            let mut n = 0;
            while r.recv(&mut buf).is_ok() {
                n += 1;
            }
            (*room, n)
        })
        .collect();
    let dropped = |room| {
        s.room(&["show", room])["tracks"][0]["received"]["dropped"]
            .as_u64()
            .unwrap()
    };
    let dropped = [dropped("small"), dropped("capped-cam")];
    eprintln!("received {received:?}; the limited tracks dropped {dropped:?}");
    // A second's worth: 10 packets of 1,000 bytes at 80 kbit/s.
    for (i, at) in [(0, 0), (2, 1)] {
        assert!((9..=11).contains(&received[i].1), "{received:?}");
        assert_eq!(u64::from(received[i].1) + dropped[at], u64::from(PACKETS));
    }
    assert_eq!(received[1], ("big", PACKETS));
}

/// The endpoint's address on the relay, from `relay room endpoint add`'s answer.
fn local(endpoint: &Value) -> SocketAddr {
    endpoint["local"].as_str().unwrap().parse().unwrap()
}

/// `relay room track add ROOM NAME --endpoint cam`, of simulcast source `board` when a
/// layer is given.
fn add_track(s: &RoomsRelay, room: &str, name: &str, ssrc: u32, kind: &str, layer: Option<&str>) {
    let ssrc = ssrc.to_string();
    let mut args = vec![
        "track",
        "add",
        room,
        name,
        "--endpoint",
        "cam",
        "--ssrc",
        &ssrc,
        "--kind",
        kind,
    ];
    if let Some(layer) = layer {
        args.extend(["--source", "board", "--layer", layer]);
    }
    s.room(&args);
}

/// The packets `relay room show` counts as received on track `name`.
fn received(room: &Value, name: &str) -> u64 {
    let tracks = room["tracks"].as_array().unwrap();
    let track = tracks.iter().find(|t| t["name"] == name).unwrap();
    track["received"]["packets"].as_u64().unwrap()
}

/// The packets `relay room show` counts as sent under the subscription to `track` (one
/// subscriber in these tests).
fn sent(room: &Value, track: &str) -> u64 {
    let subscriptions = room["subscriptions"].as_array().unwrap();
    let sub = subscriptions.iter().find(|s| s["track"] == track).unwrap();
    sub["sent"]["packets"].as_u64().unwrap()
}

/// A GStreamer publisher of opus audio and VP8 video (two SSRCs, one SRTP key, one socket)
/// and a GStreamer subscriber decoding both from one port; set audio-only mid-stream, the
/// subscriber goes on decoding audio and decodes no video, and set back, video decodes
/// again from the camera's next keyframe. Every audio packet the relay sent was decoded.
#[test]
fn an_audio_only_subscriber_decodes_audio_throughout_and_video_again_after() {
    const MIC: u32 = 17;
    const BOARD: u32 = 18;
    let s = RoomsRelay::new("rm-audio", &[]);
    s.room(&["create", "lesson"]);
    let cam = local(&s.room(&["endpoint", "add", "lesson", "cam"]));
    let remote = "10.77.0.21:6000";
    s.room(&["endpoint", "add", "lesson", "pupil", "--remote", remote]);
    add_track(&s, "lesson", "mic", MIC, "audio", None);
    add_track(&s, "lesson", "board", BOARD, "video", None);
    s.room(&["subscribe", "lesson", "pupil", "mic"]);
    s.room(&["subscribe", "lesson", "pupil", "board"]);
    let streams = [
        Stream {
            name: "audio",
            ssrc: MIC,
            codec: Codec::Opus,
        },
        Stream {
            name: "video",
            ssrc: BOARD,
            codec: Codec::Vp8,
        },
    ];
    let pupil = Subscriber::start(&s.lab, Host::Peer, 6000, &streams).unwrap();
    let layer = Layer {
        ssrc: BOARD,
        width: 320,
        height: 240,
        kbps: 300,
    };
    let camera = Publisher::start(&s.lab, Host::ClientA, 0, cam, Some(MIC), &[layer]).unwrap();
    // Audio packets are 20 ms: waiting for a number of them is waiting for media time.
    let audio_for = |packets: usize| {
        let want = pupil.count("audio") + packets;
        assert!(pupil.wait_for("audio", want) >= want, "audio stopped");
    };
    assert!(pupil.wait_for("video", 15) >= 15, "no video at first");
    audio_for(1);

    s.room(&["endpoint", "set", "lesson", "pupil", "--audio-only", "true"]);
    // What was on its way when the relay stopped the video decodes within 200 ms.
    audio_for(10);
    let paused = pupil.count("video");
    audio_for(50);
    assert_eq!(
        pupil.count("video"),
        paused,
        "video decoded while audio-only"
    );

    s.room(&[
        "endpoint",
        "set",
        "lesson",
        "pupil",
        "--audio-only",
        "false",
    ]);
    let want = paused + 15;
    assert!(
        pupil.wait_for("video", want) >= want,
        "video never came back"
    );
    audio_for(1);
    drop(camera);

    // Every audio packet the relay sent was decoded (once the last ones are through), and
    // it sent the pupil every audio packet the camera's track received; it held video
    // back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let room = loop {
        let room = s.room(&["show", "lesson"]);
        let sent = sent(&room, "mic");
        if pupil.count("audio") as u64 == sent {
            break room;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sent {sent} audio packets, {} decoded",
            pupil.count("audio")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let summary = format!(
        "decoded {} audio frames (the relay sent {} of the camera's {} audio packets) and {} \
         video frames (it sent {} of {} video packets)",
        pupil.count("audio"),
        sent(&room, "mic"),
        received(&room, "mic"),
        pupil.count("video"),
        sent(&room, "board"),
        received(&room, "board"),
    );
    eprintln!("{summary}");
    assert_eq!(
        sent(&room, "mic"),
        received(&room, "mic"),
        "{summary}\n{room}"
    );
    assert!(
        sent(&room, "board") < received(&room, "board"),
        "{summary}\n{room}"
    );
}

/// A GStreamer publisher sending one picture as two simulcast layers (320x240 and 160x120,
/// each its own vp8enc and SSRC, one socket), a GStreamer subscriber that decodes whatever
/// SSRC it is sent: the default layer (high) first, then, switched with `relay room
/// subscribe --layer low` mid-stream, the low layer from its next keyframe and nothing more
/// of the high one. Each decoded frame's size tells its resolution.
#[test]
fn a_subscriber_switched_to_the_low_layer_decodes_it_instead_of_the_high() {
    const HIGH: u32 = 18;
    const LOW: u32 = 19;
    let s = RoomsRelay::new("rm-layers", &[]);
    s.room(&["create", "class"]);
    let cam = local(&s.room(&["endpoint", "add", "class", "cam"]));
    let remote = "10.77.0.21:6000";
    s.room(&["endpoint", "add", "class", "pupil", "--remote", remote]);
    add_track(&s, "class", "board-high", HIGH, "video", Some("high"));
    add_track(&s, "class", "board-low", LOW, "video", Some("low"));
    s.room(&["subscribe", "class", "pupil", "board"]);
    let streams = [("high", HIGH), ("low", LOW)].map(|(name, ssrc)| Stream {
        name,
        ssrc,
        codec: Codec::Vp8,
    });
    let pupil = Subscriber::start(&s.lab, Host::Peer, 6000, &streams).unwrap();
    let layers =
        [(HIGH, 320, 240, 500), (LOW, 160, 120, 150)].map(|(ssrc, width, height, kbps)| Layer {
            ssrc,
            width,
            height,
            kbps,
        });
    let camera = Publisher::start(&s.lab, Host::ClientA, 0, cam, None, &layers).unwrap();
    assert!(pupil.wait_for("high", 15) >= 15, "no high layer at first");
    assert_eq!(pupil.count("low"), 0, "the low layer before the switch");

    let sub = s.room(&["subscribe", "class", "pupil", "board", "--layer", "low"]);
    assert_eq!(sub["ssrc"], LOW, "{sub}");
    // The low layer decodes from its next keyframe (within a second); by its fifth frame
    // the last high frames sent before the switch are through.
    assert!(pupil.wait_for("low", 5) >= 5, "the low layer never decoded");
    let high = pupil.count("high");
    assert!(pupil.wait_for("low", 20) >= 20, "the low layer stopped");
    assert_eq!(pupil.count("high"), high, "the high layer after the switch");
    drop(camera);
    // I420: 1.5 bytes a pixel.
    let (high, low) = (pupil.frames("high"), pupil.frames("low"));
    eprintln!("decoded {} high and {} low frames", high.len(), low.len());
    assert!(high.iter().all(|b| *b == 320 * 240 * 3 / 2), "{high:?}");
    assert!(low.iter().all(|b| *b == 160 * 120 * 3 / 2), "{low:?}");
}

/// Client A's home router: what it sends to `to` leaves with the router's public address
/// and port `public` (an address of client A's, so that answers come back to it and are
/// translated back, as a router's WAN side does). Its datagrams to `to` are counted on
/// their way out (`nft_packets(.., "home", "sent")`), before translation.
fn home_router(lab: &Lab, to: SocketAddr, public: SocketAddr) {
    let ip = public.ip();
    lab.command(Host::ClientA, "ip")
        .args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"])
        .status()
        .unwrap();
    let (relay, port) = (to.ip(), to.port());
    lab.nft(
        Host::ClientA,
        &format!(
            "table ip home {{
                counter sent {{}}
                chain out {{
                    type filter hook output priority filter; policy accept;
                    ip daddr {relay} udp dport {port} counter name sent
                }}
                chain nat {{
                    type nat hook postrouting priority srcnat; policy accept;
                    ip daddr {relay} udp dport {port} snat to {public}
                }}
            }}"
        ),
    )
    .unwrap();
}

/// Counts, in `host`'s namespace, the UDP datagrams it sends (counter `out`) or receives
/// (counter `in-PORT` for each of `ports`), as its kernel sees them.
fn count_udp(lab: &Lab, host: Host, ports: &[u16]) {
    let (mut counters, mut rules) = (String::new(), String::new());
    for p in ports {
        writeln!(counters, "counter in-{p} {{}}").unwrap();
        writeln!(rules, "udp dport {p} counter name in-{p}").unwrap();
    }
    lab.nft(
        host,
        &format!(
            "table ip count {{
                counter out {{}}
                {counters}
                chain out {{
                    type filter hook output priority filter; policy accept;
                    meta l4proto udp counter name out
                }}
                chain in {{
                    type filter hook input priority filter; policy accept;
                    {rules}
                }}
            }}"
        ),
    )
    .unwrap();
}

/// A GStreamer camera behind a home router's NAT (nftables in client A: source address and
/// port rewritten) publishes to an endpoint created without a remote: the relay latches the
/// translated address, and both GStreamer viewers decode every frame. A second sender from
/// another address with the same SSRC afterwards reaches no one: the viewers' host receives
/// exactly what the camera sent, and the relay counts each of the stranger's packets foreign.
#[test]
fn a_camera_behind_nat_is_latched_at_its_translated_address() {
    let s = RoomsRelay::new("rm-nat", &[]);
    s.room(&["create", "ward"]);
    let cam = local(&s.room(&["endpoint", "add", "ward", "cam"]));
    add_track(&s, "ward", "video", SSRC, "video", None);
    let tvs = [6000, 6002];
    for port in tvs {
        let (name, remote) = (format!("tv-{port}"), format!("10.77.0.21:{port}"));
        s.room(&["endpoint", "add", "ward", &name, "--remote", &remote]);
        s.room(&["subscribe", "ward", &name, "video"]);
    }
    let public: SocketAddr = "10.77.0.111:40000".parse().unwrap();
    home_router(&s.lab, cam, public);
    count_udp(&s.lab, Host::Peer, &tvs);
    count_udp(&s.lab, Host::ClientB, &[]);
    let viewers: Vec<Viewer> = tvs
        .iter()
        .map(|p| Viewer::start(&s.lab, Host::Peer, *p, SSRC).unwrap())
        .collect();
    let relay = Host::Relay.ipv4().into();
    camera_from(&s.lab, Host::ClientA, 5004, relay, cam.port(), SSRC, FRAMES).unwrap();
    for v in &viewers {
        assert_eq!(v.decoded(FRAMES), FRAMES);
    }
    let room = s.room(&["show", "ward"]);
    let endpoint = &room["endpoints"][0];
    assert_eq!(endpoint["name"], "cam", "{room}");
    assert_eq!(endpoint["remote"], public.to_string(), "{room}");
    assert_eq!(endpoint["latched"], true, "{room}");

    camera(&s.lab, Host::ClientB, relay, cam.port(), SSRC, 30).unwrap();
    // A packet from the camera after the stranger's: once it is through, so is anything of
    // the stranger's that the relay would have forwarded.
    let marker = socket(&s.lab, Host::ClientA, "10.77.0.11:5004");
    marker.send_to(&packet(SSRC, 1), cam).unwrap();
    let sent = s.lab.nft_packets(Host::ClientA, "home", "sent").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let received = loop {
        let received: Vec<u64> = tvs
            .iter()
            .map(|p| {
                s.lab
                    .nft_packets(Host::Peer, "count", &format!("in-{p}"))
                    .unwrap()
            })
            .collect();
        if received.iter().all(|r| *r >= sent) || std::time::Instant::now() > deadline {
            break received;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stranger = s.lab.nft_packets(Host::ClientB, "count", "out").unwrap();
    let (_, log) = s.relay.stop_logged(Signal::SIGTERM);
    let rooms = exit_figures(&log, "rooms at exit: ");
    eprintln!(
        "camera sent {sent}, each viewer received {received:?}, the stranger sent {stranger}; {rooms}"
    );
    assert_eq!(received, [sent, sent]);
    assert!(
        rooms.contains(&format!(" {stranger} from a foreign address")),
        "{rooms}"
    );
}
