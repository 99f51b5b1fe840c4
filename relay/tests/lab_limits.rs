//! Rate limits in the lab, through the relay binary with XDP attached: a tenant flooding at
//! 10x its limit is held to it in the kernel while another tenant loses nothing, and
//! `--max-bps` holds on the kernel path. Clients are `relay::turn::client` over real
//! sockets in the lab's namespaces. Needs root.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use relay::{
    stun::{ChannelData, Class, MessageBuilder, Method},
    turn::client::Client,
};
use support::{
    RunningRelay, TempDir, channel_client, exit_figures, verdict_row, xdp_on_switch_port,
};
use xtask::lab::{Host, Lab};

const CHANNEL: u16 = 0x4001;
const PAYLOAD: usize = 160;
const SEND_FOR: Duration = Duration::from_secs(2);

/// A sink on the peer host: counts datagrams per sender (the payload's first byte).
struct Sink {
    socket: UdpSocket,
}

impl Sink {
    fn bind(lab: &Lab, port: u16) -> Self {
        let socket = lab
            .in_netns(Host::Peer, || {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                    .unwrap();
                // Native XDP on veth charges a page per datagram: room for a 2 s flood.
                s.set_recv_buffer_size(64 << 20).unwrap();
                s.bind(&SocketAddr::from(([10, 77, 0, 21], port)).into())
                    .unwrap();
                UdpSocket::from(s)
            })
            .unwrap();
        Self { socket }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Counts until `done` is set and nothing more arrives for 500 ms.
    fn count(&self, done: &AtomicBool) -> [u64; 2] {
        self.socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut counts = [0; 2];
        let mut buf = [0; 2048];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) if n == PAYLOAD && buf[0] < 2 => counts[usize::from(buf[0])] += 1,
                Err(_) if done.load(Ordering::Acquire) => return counts,
                Ok(_) | Err(_) => {}
            }
        }
    }
}

/// Sends ChannelData of `PAYLOAD` bytes tagged `tag` at `rate` per second for `SEND_FOR`;
/// returns how many were sent.
fn send_at(c: &Client, tag: u8, rate: u64) -> u64 {
    let mut payload = vec![0; PAYLOAD];
    payload[0] = tag;
    let frame = ChannelData {
        channel: CHANNEL,
        data: &payload,
    }
    .encode(false);
    pace(rate, || {
        c.socket().send_to(&frame, c.server()).unwrap();
    })
}

/// `tenant "NAME" at exit: N packets dropped over its limit (K by XDP, U in userspace)`.
fn tenant_drops(log: &[String], name: &str) -> (u64, u64) {
    let prefix = format!("tenant {name:?} at exit: ");
    let line = log
        .iter()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no {prefix:?} in {log:#?}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// The relay with XDP on its NIC and two tenants held to `limit_pps` each (burst 100 ms):
/// "north" (user alice) and "school" (user bob). The directory holds its config.
fn relay_with_tenants(lab: &Lab, name: &str, limit_pps: u64) -> (RunningRelay, TempDir) {
    let dir = TempDir::new(name);
    let config = dir.0.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[[tenant]]\nname = \"north\"\nusers = [\"alice\"]\npackets-per-second = {limit_pps}\nburst-ms = 100\n\n\
             [[tenant]]\nname = \"school\"\nusers = [\"bob\"]\npackets-per-second = {limit_pps}\nburst-ms = 100\n"
        ),
    )
    .unwrap();
    let relay = RunningRelay::in_lab(
        lab,
        &[
            "--config",
            config.to_str().unwrap(),
            "--user",
            "alice:wonderland",
            "--user",
            "bob:builder",
            "--interface",
            "eth0",
            "--allowed-peer-ip",
            "10.77.0.21",
        ],
    );
    (relay, dir)
}

#[test]
fn a_tenant_flooding_at_ten_times_its_limit_costs_another_tenant_nothing() {
    const LIMIT_PPS: u64 = 1000;
    let lab = Lab::up("lim-tenant").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let (relay, _dir) = relay_with_tenants(&lab, "lim-tenant", LIMIT_PPS);
    let sink = Sink::bind(&lab, 4000);
    let flooder = channel_client(
        &lab,
        Host::ClientA,
        ("alice", "wonderland"),
        CHANNEL,
        sink.addr(),
    );
    let quiet = channel_client(
        &lab,
        Host::ClientB,
        ("bob", "builder"),
        CHANNEL,
        sink.addr(),
    );

    let done = AtomicBool::new(false);
    let (sent, received) = std::thread::scope(|s| {
        let counting = s.spawn(|| sink.count(&done));
        let flood = s.spawn(|| send_at(&flooder, 0, 10 * LIMIT_PPS));
        let steady = s.spawn(|| send_at(&quiet, 1, LIMIT_PPS / 2));
        let sent = [flood.join().unwrap(), steady.join().unwrap()];
        done.store(true, Ordering::Release);
        (sent, counting.join().unwrap())
    });
    let (stdout, log) = relay.stop_logged(Signal::SIGTERM);
    let (north_dropped, north_in_xdp) = tenant_drops(&log, "north");
    let (school_dropped, _) = tenant_drops(&log, "school");
    let summary = format!(
        "sent {sent:?}, received {received:?}; north dropped {north_dropped} ({north_in_xdp} by XDP), school {school_dropped}\n{stdout}"
    );
    eprintln!("{summary}");

    assert_eq!(
        received[1], sent[1],
        "the quiet tenant lost packets: {summary}"
    );
    assert_eq!(school_dropped, 0, "{summary}");
    // The flooder gets its rate for the 2 s plus its 100 ms burst, give or take pacing.
    let allowed = LIMIT_PPS * SEND_FOR.as_millis() as u64 / 1000 + LIMIT_PPS / 10;
    assert!(
        received[0] <= allowed * 11 / 10 && received[0] >= allowed * 8 / 10,
        "the flooder got {} through, its limit allows about {allowed}: {summary}",
        received[0]
    );
    // Every flood packet was either delivered or dropped by the limit, and the kernel did
    // the dropping.
    assert!(
        received[0] + north_dropped >= sent[0] * 99 / 100,
        "{summary}"
    );
    assert!(north_in_xdp * 100 >= north_dropped * 99, "{summary}");
    assert!(
        verdict_row(&stdout, "over-limit").0 >= north_in_xdp,
        "{summary}"
    );
}

/// `--max-bps` is enforced by the XDP program on the kernel path, both directions sharing
/// the allocation's budget, as in userspace.
#[test]
fn max_bps_holds_on_the_kernel_path() {
    // 160-byte payloads at 2000 pps offer 2.56 Mbit/s against 800 kbit/s.
    const MAX_BPS: u64 = 800_000;
    let lab = Lab::up("lim-maxbps").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let relay = RunningRelay::in_lab(
        &lab,
        &[
            "--interface",
            "eth0",
            "--allowed-peer-ip",
            "10.77.0.21",
            "--max-bps",
            &MAX_BPS.to_string(),
        ],
    );
    let sink = Sink::bind(&lab, 4000);
    let mut c = channel_client(
        &lab,
        Host::ClientA,
        ("alice", "wonderland"),
        CHANNEL,
        sink.addr(),
    );
    let done = AtomicBool::new(false);
    let (sent, received) = std::thread::scope(|s| {
        let counting = s.spawn(|| sink.count(&done));
        let sent = send_at(&c, 0, 2000);
        done.store(true, Ordering::Release);
        (sent, counting.join().unwrap()[0])
    });
    // Deleting the allocation removes the channel's flows: the relay logs their usage.
    c.refresh(0).unwrap();
    let usage = relay.wait_for_log("usage: channel");
    let stdout = relay.stop(Signal::SIGTERM);
    let (over, _) = verdict_row(&stdout, "over-limit");
    let (forwarded, _) = verdict_row(&stdout, "forwarded");
    let summary = format!("sent {sent}, received {received}\n{stdout}");
    eprintln!("{summary}");
    // 2 s at the rate plus the one-second burst, in 1280-bit payloads.
    let allowed = MAX_BPS * 3 / (PAYLOAD as u64 * 8);
    assert!(
        received <= allowed * 11 / 10 && received >= allowed * 8 / 10,
        "{received} through, the limit allows about {allowed}: {summary}"
    );
    assert!(over >= (sent - received) * 99 / 100, "{summary}");
    assert!(forwarded * 100 >= received * 99, "{summary}");
    // The one flow's counters, read back from the kernel, are what XDP forwarded.
    assert!(
        usage.contains(&format!("XDP relayed {forwarded} packets")),
        "{usage}\n{summary}"
    );
}

/// Anyone who learns a relayed address (it is in every ICE candidate) can send to it. Without
/// a permission, a stranger's flood at 10x the tenant's limit spends none of its budget: the
/// permitted peer's media reaches the client whole.
#[test]
fn a_strangers_flood_at_a_relayed_address_costs_the_tenant_nothing() {
    const LIMIT_PPS: u64 = 1000;
    let lab = Lab::up("lim-stranger").unwrap();
    let _switch = xdp_on_switch_port(&lab);
    let (relay, _dir) = relay_with_tenants(&lab, "lim-stranger", LIMIT_PPS);
    let peer = Sink::bind(&lab, 4000);
    let client = channel_client(
        &lab,
        Host::ClientA,
        ("alice", "wonderland"),
        CHANNEL,
        peer.addr(),
    );
    let relayed = client.relayed();
    let stranger = lab
        .in_netns(Host::ClientB, || UdpSocket::bind("10.77.0.12:0"))
        .unwrap()
        .unwrap();
    client
        .socket()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let done = AtomicBool::new(false);
    let (media_sent, flood_sent, media_received) = std::thread::scope(|s| {
        // The client counts the peer's media: ChannelData of PAYLOAD bytes.
        let counting = s.spawn(|| {
            let mut buf = [0; 2048];
            let mut n = 0_u64;
            loop {
                match client.socket().recv(&mut buf) {
                    Ok(len) if len == 4 + PAYLOAD => n += 1,
                    Err(_) if done.load(Ordering::Acquire) => return n,
                    Ok(_) | Err(_) => {}
                }
            }
        });
        let flood = s.spawn(|| {
            pace(LIMIT_PPS * 10, || {
                let _ = stranger.send_to(&[0xee; PAYLOAD], relayed);
            })
        });
        let media = pace(LIMIT_PPS / 2, || {
            peer.socket.send_to(&[1; PAYLOAD], relayed).unwrap();
        });
        let flood = flood.join().unwrap();
        done.store(true, Ordering::Release);
        (media, flood, counting.join().unwrap())
    });
    let (stdout, log) = relay.stop_logged(Signal::SIGTERM);
    let (north_dropped, _) = tenant_drops(&log, "north");
    let exit = exit_figures(&log, "UDP data path at exit: ");
    let summary = format!(
        "media sent {media_sent}, received {media_received}; flood sent {flood_sent}; north \
         dropped {north_dropped}\n{exit}\n{stdout}"
    );
    eprintln!("{summary}");
    assert_eq!(
        media_received, media_sent,
        "the media lost packets: {summary}"
    );
    assert_eq!(
        north_dropped, 0,
        "the stranger spent the tenant's budget: {summary}"
    );
}

/// Relay is not an amplifier: a flood of unauthenticated Binding requests (as a spoofer
/// would send in a victim's name) gets a burst of answers, then only the rate's, per source
/// prefix; the other requests are withheld and counted. A user on the same address keeps
/// being answered.
#[test]
fn unauthenticated_answers_to_one_prefix_are_limited() {
    const RATE: u64 = 10;
    const FLOOD: u64 = 300;
    let lab = Lab::up("lim-reflect").unwrap();
    let relay = RunningRelay::in_lab(&lab, &["--unauthenticated-rate", &RATE.to_string()]);
    let server = SocketAddr::from((Host::Relay.ipv4(), 3478));
    let (mut user, flood) = lab
        .in_netns(Host::ClientA, || {
            let user = UdpSocket::bind("10.77.0.11:0").unwrap();
            let user = Client::allocate(user, server, "alice", "wonderland").unwrap();
            (user, UdpSocket::bind("10.77.0.11:0").unwrap())
        })
        .unwrap();

    let start = Instant::now();
    let binding = MessageBuilder::new(Class::Request, Method::BINDING, [7; 12]).build();
    for _ in 0..FLOOD {
        flood.send_to(&binding, server).unwrap();
    }
    // The user's Refresh is authenticated, so it is answered, and after every request the
    // flood sent before it: its answer means the flood's answers have all been sent.
    user.refresh(600).unwrap();
    let elapsed = start.elapsed();
    flood.set_nonblocking(true).unwrap();
    let (mut answers, mut answered_bytes) = (0, 0);
    let mut buf = [0; 2048];
    while let Ok(n) = flood.recv(&mut buf) {
        answers += 1;
        answered_bytes += n;
    }
    let (_, log) = relay.stop_logged(Signal::SIGTERM);
    let exit = exit_figures(&log, "TURN server at exit: ");
    let withheld: u64 = exit
        .split_once(" unauthenticated answers withheld")
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no withheld figure in {exit:?}"));
    let summary = format!(
        "{FLOOD} Binding requests of {} bytes: {answers} answered ({answered_bytes} bytes) \
         in {elapsed:?}, {withheld} withheld",
        binding.len()
    );
    eprintln!("{summary}");
    // The burst is five seconds at the rate, less the user's 401 from the same /24.
    let most = 5 * RATE + RATE * elapsed.as_millis() as u64 / 1000 + 1;
    assert!(
        (5 * RATE - 1..=most).contains(&answers),
        "{summary}; expected at most {most}"
    );
    assert_eq!(answers + withheld, FLOOD, "{summary}");
}

/// Calls `send` `rate` times per second for `SEND_FOR`, paced in 1 ms steps; returns how
/// many times.
fn pace(rate: u64, mut send: impl FnMut()) -> u64 {
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < SEND_FOR {
        let due = rate * start.elapsed().as_micros() as u64 / 1_000_000 + 1;
        while calls < due {
            send();
            calls += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    calls
}
