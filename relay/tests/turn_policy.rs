//! A client of the relay binary must not reach denied peers (loopback, the relay itself,
//! private ranges not opened by the operator), and garbage from anyone must not disturb
//! other clients. Needs root.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use relay::stun::{
    Class, Message, MessageBuilder, Method,
    attr::{self, decode_error_code, decode_xor_address},
    integrity::long_term_key,
};
use support::RunningRelay;
use xtask::lab::{Host, Lab};

const SERVER: &str = "10.77.0.1:3478";

/// A minimal TURN client over UDP, speaking with the relay's own codec.
struct TurnClient {
    socket: UdpSocket,
    nonce: Vec<u8>,
    next: u8,
}

impl TurnClient {
    fn new(lab: &Lab) -> Self {
        let socket = lab
            .in_netns(Host::ClientA, || UdpSocket::bind("10.77.0.11:0"))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket.connect(SERVER).unwrap();
        Self {
            socket,
            nonce: Vec::new(),
            next: 0,
        }
    }

    /// Sends a request (authenticated once a nonce is known) and returns the response;
    /// retries once on 401/438 with the nonce it carried.
    fn call(&mut self, method: Method, attrs: impl Fn(&mut MessageBuilder)) -> Vec<u8> {
        for _ in 0..2 {
            self.next += 1;
            let mut b = MessageBuilder::new(Class::Request, method, [self.next; 12]);
            attrs(&mut b);
            if !self.nonce.is_empty() {
                b.add(attr::USERNAME, b"alice")
                    .add(attr::REALM, b"lab")
                    .add(attr::NONCE, &self.nonce);
                b.add_message_integrity(&long_term_key("alice", "lab", "wonderland"));
            }
            self.socket.send(&b.build()).unwrap();
            let mut buf = [0; 1500];
            let n = self.socket.recv(&mut buf).expect("the relay answers");
            let response = buf[..n].to_vec();
            let msg = Message::decode(&response).unwrap();
            match error(&msg) {
                Some(401 | 438) if self.nonce.is_empty() || error(&msg) == Some(438) => {
                    self.nonce = msg.get(attr::NONCE).unwrap().to_vec();
                }
                _ => return response,
            }
        }
        panic!("{method} kept being refused");
    }

    fn allocate(&mut self, family: u8) -> SocketAddr {
        let r = self.call(Method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .add(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
        });
        let msg = Message::decode(&r).unwrap();
        assert_eq!(msg.class(), Class::Success, "{:?}", error(&msg));
        decode_xor_address(
            msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            &msg.transaction_id(),
        )
        .unwrap()
    }

    fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        let r = self.call(Method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        error(&Message::decode(&r).unwrap())
    }
}

fn error(msg: &Message<'_>) -> Option<u16> {
    msg.get(attr::ERROR_CODE)
        .map(|v| decode_error_code(v).unwrap().0)
}

#[test]
fn denied_peers_are_refused_403_by_default() {
    let lab = Lab::up("tp-deny").unwrap();
    let _relay = RunningRelay::in_lab(&lab, &[]);
    let mut client = TurnClient::new(&lab);
    client.allocate(attr::FAMILY_IPV4);
    for peer in [
        "127.0.0.1:5000",
        "10.77.0.21:3480",
        SERVER,
        "169.254.1.1:5000",
        "224.0.0.1:5000",
        "0.0.0.0:5000",
    ] {
        assert_eq!(client.permit(peer.parse().unwrap()), Some(403), "{peer}");
    }
    // A public peer is allowed.
    assert_eq!(client.permit("198.51.100.7:5000".parse().unwrap()), None);

    let mut v6 = TurnClient::new(&lab);
    v6.allocate(attr::FAMILY_IPV6);
    for peer in [
        "[::1]:5000",
        "[fd77::21]:3480",
        "[fe80::1]:5000",
        "[ff02::1]:5000",
        "[::ffff:127.0.0.1]:5000",
    ] {
        assert_eq!(v6.permit(peer.parse().unwrap()), Some(403), "{peer}");
    }
}

#[test]
fn send_to_a_denied_peer_never_arrives() {
    let lab = Lab::up("tp-send").unwrap();
    let _relay = RunningRelay::in_lab(&lab, &[]);
    // Something listening on the relay host's loopback: the target an attacker would want.
    let victim = lab
        .in_netns(Host::Relay, || UdpSocket::bind("127.0.0.1:5000"))
        .unwrap()
        .unwrap();
    victim
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut client = TurnClient::new(&lab);
    client.allocate(attr::FAMILY_IPV4);
    assert_eq!(client.permit("127.0.0.1:5000".parse().unwrap()), Some(403));
    let mut send = MessageBuilder::new(Class::Indication, Method::SEND, [99; 12]);
    send.add_xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:5000".parse().unwrap())
        .add(attr::DATA, b"attack");
    client.socket.send(&send.build()).unwrap();
    // A Binding round trip after the Send proves the relay has processed it.
    let r = client.call(Method::BINDING, |_| {});
    assert_eq!(Message::decode(&r).unwrap().class(), Class::Success);
    assert!(
        victim.recv(&mut [0; 64]).is_err(),
        "data reached the relay's loopback"
    );
}

/// CVE-2020-26262's class: a peer on the relay's own address is reachable only where it is a
/// live relayed address, port-exact, whatever ranges the operator opened. Permissions are by
/// IP (RFC 8656 section 9), so the permission a client gets for its neighbour's relayed
/// address must not open the relay host's other ports to its Send indications.
#[test]
fn the_relays_own_ports_are_reachable_only_where_they_relay() {
    let lab = Lab::up("tp-own").unwrap();
    // The operator opens the lab's range, which holds the relay's own address.
    let _relay = RunningRelay::in_lab(&lab, &["--allowed-peer-ip", "10.77.0.0/24"]);
    // A service on the relay host's address: an echo, as found in the wild.
    let echo = lab
        .in_netns(Host::Relay, || UdpSocket::bind("10.77.0.1:7777"))
        .unwrap()
        .unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut a = TurnClient::new(&lab);
    let relayed_a = a.allocate(attr::FAMILY_IPV4);
    let mut b = TurnClient::new(&lab);
    let relayed_b = b.allocate(attr::FAMILY_IPV4);
    // The neighbours' relayed addresses are peers (how two browsers of one relay meet)...
    assert_eq!(a.permit(relayed_b), None);
    assert_eq!(b.permit(relayed_a), None);
    // ... the relay's other ports are not, not even with the range opened.
    for port in [7777, 3478] {
        let own = SocketAddr::from(([10, 77, 0, 1], port));
        assert_eq!(a.permit(own), Some(403), "{own}");
        let r = a.call(Method::CHANNEL_BIND, |m| {
            m.add(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
            m.add_xor_address(attr::XOR_PEER_ADDRESS, own);
        });
        assert_eq!(error(&Message::decode(&r).unwrap()), Some(403), "{own}");
        // The permission for relayed_b's IP is the relay's IP: Send must still refuse.
        let mut binding = MessageBuilder::new(Class::Request, Method::BINDING, [7; 12]);
        binding.add(attr::SOFTWARE, b"probe");
        let mut send = MessageBuilder::new(Class::Indication, Method::SEND, [port as u8; 12]);
        send.add_xor_address(attr::XOR_PEER_ADDRESS, own)
            .add(attr::DATA, &binding.build());
        a.socket.send(&send.build()).unwrap();
    }
    // The Send to the neighbour arrives, as a Data indication.
    let mut send = MessageBuilder::new(Class::Indication, Method::SEND, [42; 12]);
    send.add_xor_address(attr::XOR_PEER_ADDRESS, relayed_b)
        .add(attr::DATA, b"hello, neighbour");
    a.socket.send(&send.build()).unwrap();
    let mut buf = [0; 1500];
    let n = b
        .socket
        .recv(&mut buf)
        .expect("the neighbour's data arrives");
    let data = Message::decode(&buf[..n]).unwrap();
    assert_eq!(data.method(), Method::DATA);
    assert_eq!(data.get(attr::DATA), Some(&b"hello, neighbour"[..]));
    assert!(
        echo.recv(&mut [0; 64]).is_err(),
        "data reached 10.77.0.1:7777"
    );
    // Nothing came back to A: neither the echo nor the listener's Binding answer.
    a.socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let got = a.socket.recv(&mut buf);
    assert!(got.is_err(), "A got {:?}", got.map(|n| buf[..n].to_vec()));
}

#[test]
fn operators_open_ranges_with_allowed_peer_ip() {
    let lab = Lab::up("tp-allow").unwrap();
    let _relay = RunningRelay::in_lab(
        &lab,
        &[
            "--allowed-peer-ip",
            "10.77.0.21",
            "--denied-peer-ip",
            "198.51.100.0/24",
        ],
    );
    let mut client = TurnClient::new(&lab);
    client.allocate(attr::FAMILY_IPV4);
    assert_eq!(client.permit("10.77.0.21:3480".parse().unwrap()), None);
    assert_eq!(client.permit("10.77.0.22:3480".parse().unwrap()), Some(403));
    assert_eq!(
        client.permit("198.51.100.7:5000".parse().unwrap()),
        Some(403)
    );
}

#[test]
fn garbage_from_anyone_disturbs_no_one() {
    let lab = Lab::up("tp-garbage").unwrap();
    let relay = RunningRelay::in_lab(&lab, &[]);
    let mut client = TurnClient::new(&lab);
    let relayed = client.allocate(attr::FAMILY_IPV4);
    lab.in_netns(Host::ClientB, || {
        let flood = UdpSocket::bind("10.77.0.12:0").unwrap();
        let mut junk = vec![0_u8; 1200];
        for i in 0..5000_u32 {
            junk[..4].copy_from_slice(&i.to_be_bytes());
            // STUN-looking, ChannelData-looking and neither, to the listener and the relayed port.
            junk[0] = [0x00, 0x40, 0xFF][(i % 3) as usize];
            let to = if i % 2 == 0 {
                SERVER.parse().unwrap()
            } else {
                relayed
            };
            let _ = flood.send_to(&junk[..(i as usize % 1200).max(1)], to);
        }
    })
    .unwrap();
    // The legitimate client is still served, and its allocation is intact.
    let r = client.call(Method::REFRESH, |b| {
        b.add_u32(attr::LIFETIME, 600);
    });
    assert_eq!(Message::decode(&r).unwrap().class(), Class::Success);
    // The drops were counted, and the relay says so when it stops.
    let (_, log) = relay.stop_logged(nix::sys::signal::Signal::SIGTERM);
    let exit = log
        .iter()
        .find(|l| l.contains("TURN server at exit"))
        .expect("no exit counts");
    let malformed: u64 = exit
        .split("dropped: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no malformed count in {exit:?}"));
    assert!(malformed >= 1000, "{exit}");
    assert!(
        log.iter().any(|l| l.contains("UDP data path at exit")),
        "{log:?}"
    );
}

/// `--max-bps` holds an allocation to its budget: what reaches the peer never exceeds the
/// burst (one second's worth) plus the rate times the time taken.
#[test]
#[expect(clippy::cast_precision_loss, reason = "bit counts far below 2^52")]
fn max_bps_limits_each_allocation() {
    const BPS: u64 = 400_000;
    let lab = Lab::up("tp-bps").unwrap();
    let _relay = RunningRelay::in_lab(
        &lab,
        &["--max-bps", "400000", "--allowed-peer-ip", "10.77.0.21"],
    );
    let peer = lab
        .in_netns(Host::Peer, || UdpSocket::bind("10.77.0.21:3480"))
        .unwrap()
        .unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut client = TurnClient::new(&lab);
    client.allocate(attr::FAMILY_IPV4);
    let r = client.call(Method::CHANNEL_BIND, |b| {
        b.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
        b.add_xor_address(attr::XOR_PEER_ADDRESS, "10.77.0.21:3480".parse().unwrap());
    });
    assert_eq!(Message::decode(&r).unwrap().class(), Class::Success);

    // 2000 x 1000-byte payloads as fast as the client can: 16 Mbit, 40x the budget.
    let started = std::time::Instant::now();
    let cd = relay::stun::ChannelData {
        channel: 0x4000,
        data: &[7; 1000],
    }
    .encode(false);
    for _ in 0..2000 {
        client.socket.send(&cd).unwrap();
    }
    let mut bits = 0;
    let mut buf = [0; 2048];
    while let Ok(n) = peer.recv(&mut buf) {
        bits += n as u64 * 8;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ceiling = BPS as f64 * (1.0 + elapsed) + 8000.0;
    assert!(bits > 0, "nothing was relayed");
    assert!(
        (bits as f64) <= ceiling,
        "{bits} bits in {elapsed:.2} s, ceiling {ceiling:.0}"
    );
    assert!(bits < 16_000_000 / 4, "{bits} bits: the limit did not hold");
}
