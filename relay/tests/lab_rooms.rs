//! Media rooms in the lab, through the `relay` binary, driven by `relay room` over the
//! control API: GStreamer as the real endpoints (an SRTP VP8 camera and its classrooms),
//! and raw sockets where a test needs to see bytes and SSRCs. Needs root and GStreamer.

mod support;

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{RoomsRelay, exit_figures};
use xtask::lab::Host;

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
    for sub in room["subscriptions"].as_array().unwrap() {
        assert_eq!(sub["sent"]["packets"].as_u64(), Some(received), "{sub}");
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
