//! What a TCP client may hold on the relay binary, with its production limits (the unit
//! tests in `relay/src/io/stream.rs` shorten them): a record announced over 8 KiB closes
//! the connection, a connection that sends nothing is closed after 10 s, and one address
//! gets 1,000 connections and no more while another is still served. Needs root.

mod support;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use relay::stun::{Class, Message, MessageBuilder, Method};
use support::RunningRelay;
use xtask::lab::{Host, Lab};

/// How long a test waits for what should happen at once: without the limit under test it
/// fails after this instead of hanging.
const WAIT: Duration = Duration::from_secs(5);

fn relay_tcp() -> SocketAddr {
    SocketAddr::from((Host::Relay.ipv4(), 3478))
}

/// `n` TCP connections from `host` to the relay.
fn connect(lab: &Lab, host: Host, n: usize) -> Vec<TcpStream> {
    lab.in_netns(host, || {
        (0..n)
            .map(|_| TcpStream::connect(relay_tcp()).unwrap())
            .collect()
    })
    .unwrap()
}

/// Whether the relay closes `stream` within `within` (EOF, or a reset when it closed with
/// bytes unread); what it sends before is read and dropped.
fn closed_by_relay(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Whether a Binding request on `stream` is answered with a success.
fn binding_answered(stream: &mut TcpStream) -> bool {
    let request = MessageBuilder::new(Class::Request, Method::BINDING, [9; 12]).build();
    stream.write_all(&request).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut header = [0; 20];
    if stream.read_exact(&mut header).is_err() {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut response = header.to_vec();
    response.resize(20 + len, 0);
    stream.read_exact(&mut response[20..]).is_ok()
        && Message::decode(&response).is_ok_and(|m| m.class() == Class::Success)
}

#[test]
fn a_record_announced_over_8_kib_closes_the_connection() {
    let lab = Lab::up("st-size").unwrap();
    let _relay = RunningRelay::in_lab(&lab, &[]);
    let [mut client] = <[_; 1]>::try_from(connect(&lab, Host::ClientA, 1)).unwrap();
    // A STUN header announcing 65,532 bytes, and nothing more.
    let mut header = MessageBuilder::new(Class::Request, Method::BINDING, [1; 12]).build();
    header[2..4].copy_from_slice(&0xFFFC_u16.to_be_bytes());
    client.write_all(&header).unwrap();
    assert!(
        closed_by_relay(&mut client, WAIT),
        "the relay kept a connection announcing a 64 KiB record"
    );
    let [mut next] = <[_; 1]>::try_from(connect(&lab, Host::ClientA, 1)).unwrap();
    assert!(binding_answered(&mut next), "the relay stopped serving TCP");
}

#[test]
fn a_connection_that_sends_nothing_is_closed_after_10_s() {
    let lab = Lab::up("st-quiet").unwrap();
    let _relay = RunningRelay::in_lab(&lab, &[]);
    let opened = Instant::now();
    let [mut client] = <[_; 1]>::try_from(connect(&lab, Host::ClientA, 1)).unwrap();
    assert!(
        closed_by_relay(&mut client, Duration::from_secs(20)),
        "a silent connection was kept 20 s"
    );
    let after = opened.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&after),
        "closed after {after:?}, not about 10 s"
    );
}

#[test]
fn one_address_gets_1000_connections_and_another_is_still_served() {
    // The test holds over a thousand sockets: more than the usual soft limit of 1024.
    relay::preflight::raise_open_file_limit().unwrap();
    let lab = Lab::up("st-cap").unwrap();
    let relay = RunningRelay::in_lab(&lab, &[]);
    let mut held = connect(&lab, Host::ClientA, 1000);
    // The relay takes connections up in the order they came: the last of the thousand is
    // served, so all were.
    assert!(binding_answered(held.last_mut().unwrap()));
    let [mut over] = <[_; 1]>::try_from(connect(&lab, Host::ClientA, 1)).unwrap();
    assert!(
        closed_by_relay(&mut over, WAIT),
        "a 1001st connection from one address was kept"
    );
    relay.wait_for_log("TCP/TLS connection from 10.77.0.11");
    let [mut other] = <[_; 1]>::try_from(connect(&lab, Host::ClientB, 1)).unwrap();
    assert!(binding_answered(&mut other), "another address was refused");
}
