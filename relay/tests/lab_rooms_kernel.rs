//! Room routes in the kernel, in the lab: `relay run --interface eth0` with its control API,
//! a publisher on raw sockets sending two SSRCs, one to one subscriber (rewritten and sent
//! by XDP) and one to eight (marked by XDP, cloned per subscriber by the TC program). Every
//! packet must arrive, bytes exactly as sent (so UDP checksums were right: the receivers'
//! kernels check them), and at least 99% of them must have been forwarded in the kernel,
//! read from the verdict table the relay prints at exit. And the model case through the
//! kernel: a GStreamer SRTP VP8 camera to GStreamer classrooms, every frame decoded in
//! each, the copies made in TC. Needs root and GStreamer.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use nix::sys::socket::{setsockopt, sockopt};
use relay::top::view::DAEMON_DOWN;
use support::{
    RoomsRelay, TempDir, exit_figures, last_packet_is_recent, relay_top_once, verdict_row,
    xdp_on_switch_port,
};
use xtask::lab::{Host, Lab};

/// The tests of this file take turns: each loads the machine's two cores (up to 64
/// GStreamer decoders, floods), and side by side a GStreamer viewer once took over the 10 s
/// its start may take.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This test's turn (a test that failed in its turn does not stop the others).
fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const SOLO: u32 = 0x51;
const SHARED: u32 = 0x52;
const PACKETS: u16 = 500;
const FANOUT: u16 = 8;

/// An RTP header, then bytes that stand for an SRTP payload and tag.
fn packet(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend(seq.to_be_bytes());
    p.extend([0, 0, 0, 1]);
    p.extend(ssrc.to_be_bytes());
    p.extend((0..160).map(|i: u8| i.wrapping_mul(37) ^ seq.to_be_bytes()[1]));
    p
}

/// A receiver on `addr` in `host`'s namespace, with room for a burst (native XDP on veth
/// accounts a page per datagram).
fn receiver(lab: &Lab, host: Host, addr: &str) -> UdpSocket {
    let socket = lab
        .in_netns(host, || UdpSocket::bind(addr).unwrap())
        .unwrap();
    setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
}

/// Reads until the socket is quiet: the sequence numbers of `ssrc` received, each checked
/// byte for byte.
fn drain(socket: &UdpSocket, ssrc: u32) -> Vec<u16> {
    let mut got = Vec::new();
    let mut buf = [0; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        assert_eq!(&buf[..n], &packet(ssrc, seq)[..], "bytes changed");
        got.push(seq);
    }
    got
}

/// Room "ward": a camera (latched) publishing SSRC `SOLO` to one subscriber on client B
/// and `SHARED` to `FANOUT` on the peer host. Returns the camera's endpoint address and
/// the subscribers' sockets.
fn ward(s: &RoomsRelay, v6: bool) -> (SocketAddr, UdpSocket, Vec<UdpSocket>) {
    let at = |host: Host, port: u16| -> String {
        if v6 {
            format!("[{}]:{port}", host.ipv6())
        } else {
            format!("{}:{port}", host.ipv4())
        }
    };
    s.room(&["create", "ward"]);
    let cam = s.room(&["endpoint", "add", "ward", "cam"]);
    let cam_addr: SocketAddr = cam["local"].as_str().unwrap().parse().unwrap();
    for (name, ssrc) in [("solo", SOLO), ("shared", SHARED)] {
        s.room(&[
            "track",
            "add",
            "ward",
            name,
            "--endpoint",
            "cam",
            "--ssrc",
            &ssrc.to_string(),
            "--kind",
            "video",
        ]);
    }
    s.room(&[
        "endpoint",
        "add",
        "ward",
        "one",
        "--remote",
        &at(Host::ClientB, 7000),
    ]);
    s.room(&["subscribe", "ward", "one", "solo"]);
    let one = receiver(&s.lab, Host::ClientB, &at(Host::ClientB, 7000));
    let many = (0..FANOUT)
        .map(|i| {
            let port = 6000 + 2 * i;
            let name = format!("class-{i}");
            s.room(&[
                "endpoint",
                "add",
                "ward",
                &name,
                "--remote",
                &at(Host::Peer, port),
            ]);
            s.room(&["subscribe", "ward", &name, "shared"]);
            receiver(&s.lab, Host::Peer, &at(Host::Peer, port))
        })
        .collect();
    (cam_addr, one, many)
}

#[test]
fn one_subscriber_in_xdp_and_eight_in_tc_with_nothing_lost() {
    let _turn = turn();
    fanout(
        RoomsRelay::new("rk-fanout", &["--interface", "eth0"]),
        false,
    );
}

#[test]
fn one_subscriber_in_xdp_and_eight_in_tc_with_nothing_lost_over_ipv6() {
    let _turn = turn();
    fanout(
        RoomsRelay::ipv6("rk-fanout6", &["--interface", "eth0"]),
        true,
    );
}

/// The same in generic (skb) mode, where the XDP metadata reaches TC by another path.
#[test]
fn one_subscriber_in_xdp_and_eight_in_tc_with_nothing_lost_in_generic_mode() {
    let _turn = turn();
    fanout(
        RoomsRelay::new(
            "rk-generic",
            &["--interface", "eth0", "--xdp-mode", "generic"],
        ),
        false,
    );
}

fn fanout(s: RoomsRelay, v6: bool) {
    let _switch = xdp_on_switch_port(&s.lab);
    let (cam_addr, one, many) = ward(&s, v6);
    let camera = s
        .lab
        .in_netns(Host::ClientA, || {
            if v6 {
                UdpSocket::bind((Host::ClientA.ipv6(), 5004)).unwrap()
            } else {
                UdpSocket::bind((Host::ClientA.ipv4(), 5004)).unwrap()
            }
        })
        .unwrap();
    // The first packet latches the camera (through the core); its routes then go to the
    // kernel.
    camera.send_to(&packet(SOLO, 0), cam_addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for seq in 1..=PACKETS {
        camera.send_to(&packet(SOLO, seq), cam_addr).unwrap();
        camera.send_to(&packet(SHARED, seq), cam_addr).unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut solo = drain(&one, SOLO);
    let shared: Vec<Vec<u16>> = many.iter().map(|s| drain(s, SHARED)).collect();
    let view = s.room(&["show", "ward"]);
    let (stdout, log) = s.relay.stop_logged(nix::sys::signal::Signal::SIGTERM);
    let (forwarded, _) = verdict_row(&stdout, "forwarded");
    let (fanned, _) = verdict_row(&stdout, "fan-out");
    let summary = format!(
        "solo: {} of {}; shared: {:?} of {PACKETS}; XDP forwarded {forwarded}, passed {fanned} \
         to TC\n{}\n{}\n{stdout}",
        solo.len(),
        PACKETS + 1,
        shared.iter().map(Vec::len).collect::<Vec<_>>(),
        exit_figures(&log, "UDP data path at exit: "),
        exit_figures(&log, "rooms at exit: "),
    );
    eprintln!("{summary}");
    let want: Vec<u16> = (0..=PACKETS).collect();
    solo.sort_unstable();
    assert_eq!(solo, want, "{summary}");
    for got in &shared {
        let mut got = got.clone();
        got.sort_unstable();
        assert_eq!(got, want[1..], "{summary}");
    }
    let packets = u64::from(PACKETS);
    assert!(forwarded * 100 >= packets * 99, "{summary}");
    assert!(fanned * 100 >= packets * 99, "{summary}");
    // The API's counters include what the kernel forwarded.
    let received: u64 = view["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["received"]["packets"].as_u64().unwrap())
        .sum();
    assert!(received > 2 * packets, "{view}");
    // And when the kernel last forwarded one.
    for t in view["tracks"].as_array().unwrap() {
        assert!(last_packet_is_recent(&t["received"]), "{view}");
    }
}

/// The surgery camera of `lab_rooms` (its address given), its copies made in TC: every
/// classroom decodes every frame, every packet of the camera cloned in the kernel.
#[test]
fn a_surgery_camera_reaches_64_classrooms_through_tc_and_every_frame_decodes() {
    const SSRC: u32 = 0x1234;
    const FRAMES: usize = 90;
    const CLASSROOMS: u16 = 64;
    let _turn = turn();
    let s = RoomsRelay::new("rk-surgery", &["--interface", "eth0"]);
    let (decoded, room) = s.surgery(SSRC, CLASSROOMS, FRAMES, Some(5010));
    let (stdout, log) = s.relay.stop_logged(nix::sys::signal::Signal::SIGTERM);
    let (fanned, _) = verdict_row(&stdout, "fan-out");
    let received = room["tracks"][0]["received"]["packets"].as_u64().unwrap();
    let summary = format!(
        "decoded {decoded:?} of {FRAMES}; {received} camera packets, {fanned} cloned in TC\n{}\n{}\n{stdout}",
        exit_figures(&log, "UDP data path at exit: "),
        exit_figures(&log, "rooms at exit: ")
    );
    eprintln!("{summary}");
    assert!(decoded.iter().all(|n| *n == FRAMES), "{summary}");
    // The camera's address was given, so its route was in the kernel before its first
    // packet: every packet cloned in TC. (A latched camera's first packets go through the
    // core, and the kernel's copies of the next can overtake them: a viewer without a
    // jitter buffer may then lose the first keyframe.)
    assert_eq!(fanned, received, "{summary}");
}

/// Track "video" of SSRC `ssrc` on endpoint "cam" of `room`, and a classroom endpoint on the
/// peer host for each of `ports` subscribed to it: their receivers.
fn video_to_classrooms(s: &RoomsRelay, room: &str, ssrc: u32, ports: &[u16]) -> Vec<UdpSocket> {
    let ssrc = ssrc.to_string();
    s.room(&[
        "track",
        "add",
        room,
        "video",
        "--endpoint",
        "cam",
        "--ssrc",
        &ssrc,
        "--kind",
        "video",
    ]);
    ports
        .iter()
        .map(|port| {
            let name = format!("class-{port}");
            let remote = format!("10.77.0.21:{port}");
            s.room(&["endpoint", "add", room, &name, "--remote", &remote]);
            s.room(&["subscribe", room, &name, "video"]);
            receiver(&s.lab, Host::Peer, &remote)
        })
        .collect()
}

/// A publisher flooding at several times its tenant's limit: its room's route spends the
/// tenant's policer in XDP (once per packet, before the TC copies), so the excess is
/// dropped in the kernel (`over-limit`) and what passes is what the limit allows; a room
/// of no tenant, fed by the same host at the same time, loses nothing.
#[test]
fn a_publisher_flooding_over_its_tenants_limit_is_held_in_the_kernel_and_another_room_is_untouched()
{
    const LIMIT_PPS: usize = 1000;
    const FLOOD: u16 = 3000;
    let _turn = turn();
    let config = TempDir::new("rk-tenant");
    let file = config.0.join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "[[tenant]]\nname = \"north\"\nusers = [\"alice\"]\npackets-per-second = \
             {LIMIT_PPS}\nburst-ms = 100\n"
        ),
    )
    .unwrap();
    let s = RoomsRelay::new(
        "rk-tenant",
        &["--interface", "eth0", "--config", file.to_str().unwrap()],
    );
    let _switch = xdp_on_switch_port(&s.lab);
    // "ward" (tenant north): a camera to two classrooms, cloned in TC. "calm" (no
    // tenant): a camera to one classroom, sent by XDP.
    let mut endpoints = Vec::new();
    for (room, tenant, cam_port, ssrc, to) in [
        ("ward", Some("north"), 5004, SOLO, &[7000_u16, 7002][..]),
        ("calm", None, 5006, SHARED, &[7100][..]),
    ] {
        let mut create = vec!["create", room];
        create.extend(tenant.map(|t| ["--tenant", t]).into_iter().flatten());
        s.room(&create);
        let remote = format!("10.77.0.11:{cam_port}");
        let cam = s.room(&["endpoint", "add", room, "cam", "--remote", &remote]);
        let receivers = video_to_classrooms(&s, room, ssrc, to);
        let addr: SocketAddr = cam["local"].as_str().unwrap().parse().unwrap();
        let camera = s
            .lab
            .in_netns(Host::ClientA, || UdpSocket::bind(remote.as_str()).unwrap())
            .unwrap();
        endpoints.push((camera, addr, receivers));
    }
    let [(flooder, ward, ward_rx), (calm_cam, calm, calm_rx)] = &endpoints[..] else {
        unreachable!()
    };
    let start = std::time::Instant::now();
    for seq in 1..=FLOOD {
        flooder.send_to(&packet(SOLO, seq), ward).unwrap();
        if seq % 10 == 0 {
            calm_cam.send_to(&packet(SHARED, seq / 10), calm).unwrap();
        }
    }
    let elapsed_ms = start.elapsed().as_millis() as usize;
    let ward_got: Vec<usize> = ward_rx.iter().map(|r| drain(r, SOLO).len()).collect();
    let calm_got = drain(&calm_rx[0], SHARED).len();
    let (stdout, log) = s.relay.stop_logged(nix::sys::signal::Signal::SIGTERM);
    let (over, _) = verdict_row(&stdout, "over-limit");
    // The burst (100 ms worth) and what the rate refills while the flood lasts.
    let allowed = LIMIT_PPS * (100 + elapsed_ms) / 1000;
    let summary = format!(
        "flood of {FLOOD} in {elapsed_ms} ms (the limit allows about {allowed}): the ward's \
         classrooms got {ward_got:?}, {over} dropped over the limit in the kernel; calm got \
         {calm_got} of {}\n{}\n{stdout}",
        FLOOD / 10,
        exit_figures(&log, "UDP data path at exit: "),
    );
    eprintln!("{summary}");
    assert_eq!(calm_got, usize::from(FLOOD / 10), "{summary}");
    assert_eq!(ward_got[0], ward_got[1], "{summary}");
    assert!(ward_got[0] <= allowed + 20, "{summary}");
    assert!(ward_got[0] >= 100, "{summary}");
    assert_eq!(
        ward_got[0] as u64 + over,
        u64::from(FLOOD),
        "every packet either cloned or dropped in the kernel: {summary}"
    );
}

/// A camera's own `max_bitrate_bps` holds in the kernel: XDP spends the endpoint's
/// policer once per packet, before TC makes its copies, drops the excess `over-limit`, and
/// the API counts those drops on the track.
#[test]
fn an_endpoints_bitrate_limit_holds_in_the_kernel() {
    const SENT: u16 = 200;
    let _turn = turn();
    let s = RoomsRelay::new("rk-capped", &["--interface", "eth0"]);
    let _switch = xdp_on_switch_port(&s.lab);
    s.room(&["create", "studio"]);
    // Ten of these packets a second (the burst is one second's worth).
    let bps = (10 * 8 * packet(SOLO, 0).len()).to_string();
    let remote = "10.77.0.11:5008";
    let cam = s.room(&[
        "endpoint",
        "add",
        "studio",
        "cam",
        "--remote",
        remote,
        "--max-bitrate",
        &bps,
    ]);
    let receivers = video_to_classrooms(&s, "studio", SOLO, &[7200, 7202]);
    let addr: SocketAddr = cam["local"].as_str().unwrap().parse().unwrap();
    let camera = s
        .lab
        .in_netns(Host::ClientA, || UdpSocket::bind(remote).unwrap())
        .unwrap();
    for seq in 1..=SENT {
        camera.send_to(&packet(SOLO, seq), addr).unwrap();
    }
    let got: Vec<usize> = receivers.iter().map(|r| drain(r, SOLO).len()).collect();
    let dropped = s.room(&["show", "studio"])["tracks"][0]["received"]["dropped"]
        .as_u64()
        .unwrap();
    let (stdout, _) = s.relay.stop_logged(nix::sys::signal::Signal::SIGTERM);
    let (over, _) = verdict_row(&stdout, "over-limit");
    let summary = format!(
        "{SENT} sent at once: the classrooms got {got:?}, {over} dropped over the limit in \
         the kernel, {dropped} counted on the track\n{stdout}"
    );
    eprintln!("{summary}");
    assert_eq!(got[0], got[1], "{summary}");
    assert!((10..=12).contains(&got[0]), "{summary}");
    assert_eq!(got[0] as u64 + over, u64::from(SENT), "{summary}");
    assert_eq!(dropped, over, "{summary}");
}

/// Removes an instance's pins when dropped, so a failing test leaves none.
struct RemovePins(String);

impl Drop for RemovePins {
    fn drop(&mut self) {
        let _ = relay::dataplane::Pins::new(&self.0).remove();
    }
}

/// What `relay top --once` shows of the ward's two routes with the daemon killed: the
/// camera's tracks by SSRC, their subscribers (1 and `FANOUT`), the packets forwarded in
/// the kernel (SOLO's 400 after the latching one, all 401 of SHARED), and that no daemon
/// runs.
fn routes_in_top(s: &RoomsRelay, instance: &str, state_dir: &str) {
    let screen = relay_top_once(&s.lab, instance, state_dir);
    assert!(screen.contains(DAEMON_DOWN), "{screen}");
    // Each track's RTP and RTCP (by its sender SSRC).
    assert!(screen.contains("ROOM_ROUTES 4/1024"), "{screen}");
    for (ssrc, subscribers, packets) in [(SOLO, 1, "400"), (SHARED, FANOUT, "401")] {
        let track = format!("{ssrc:08x} rtp");
        let Some((before, after)) = screen.lines().find_map(|l| l.split_once(&track)) else {
            panic!("no route of {track}:\n{screen}")
        };
        assert!(before.contains("10.77.0.11:5004"), "{screen}");
        // subscribers, tenant, pkt/s, bit/s, copies/s, packets
        let row: Vec<&str> = after.split(['│', ' ']).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            row[..2],
            [subscribers.to_string().as_str(), "-"],
            "{screen}"
        );
        assert_eq!(row[5], packets, "{screen}");
    }
}

/// kill -9 mid-stream: with no daemon at all the kernel goes on forwarding the rooms'
/// media, nothing lost (the pins are on the host's bpffs, as in `lab_restart`); the
/// successor adopts the data plane, takes the room up from its state file and installs
/// the same routes again, and the media goes on, nothing lost either.
#[test]
fn with_no_daemon_the_kernel_goes_on_forwarding_room_media() {
    let _turn = turn();
    let state = TempDir::new("rk-kill");
    let instance = format!("rk-kill-{}", std::process::id());
    let _pins = RemovePins(instance.clone());
    let state_dir = state.0.to_str().unwrap().to_owned();
    let mut s = RoomsRelay::with_host_mounts(
        "rk-kill",
        &[
            "--interface",
            "eth0",
            "--instance",
            &instance,
            "--state-dir",
            &state_dir,
        ],
    );
    let _switch = xdp_on_switch_port(&s.lab);
    let (cam_addr, one, many) = ward(&s, false);
    let camera = s
        .lab
        .in_netns(Host::ClientA, || {
            UdpSocket::bind("10.77.0.11:5004").unwrap()
        })
        .unwrap();
    let send = |seqs: std::ops::RangeInclusive<u16>| {
        for seq in seqs {
            camera.send_to(&packet(SOLO, seq), cam_addr).unwrap();
            camera.send_to(&packet(SHARED, seq), cam_addr).unwrap();
            std::thread::sleep(Duration::from_micros(500));
        }
    };
    // SOLO's packet 0 latches the camera, through the core; SHARED's follows once the
    // routes are in the kernel (sent together, it raced their installation: it went through
    // the core or the kernel by a few microseconds).
    camera.send_to(&packet(SOLO, 0), cam_addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    camera.send_to(&packet(SHARED, 0), cam_addr).unwrap();
    send(1..=200);
    s.relay.kill();
    send(201..=400);
    let mut solo = drain(&one, SOLO);
    solo.sort_unstable();
    assert_eq!(solo, (0..=400).collect::<Vec<u16>>());
    for socket in &many {
        let mut got = drain(socket, SHARED);
        got.sort_unstable();
        assert_eq!(got, (0..=400).collect::<Vec<u16>>());
    }
    routes_in_top(&s, &instance, &state_dir);
    // The successor adopts the data plane and takes the room up (saved within 100 ms of
    // the latch, long before the kill): its routes replace the adopted ones, none is stale.
    drop(s.start_again());
    assert!(s.relay.logged("took up 1 saved rooms"));
    send(401..=600);
    let solo = drain(&one, SOLO);
    assert_eq!(solo.len(), 200, "after the restart");
    for socket in &many {
        assert_eq!(drain(socket, SHARED).len(), 200, "after the restart");
    }
    let stdout = s.relay.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(!stdout.is_empty());
}
