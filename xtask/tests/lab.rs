//! The lab guard: builds hosts that talk, and leaves nothing behind. Needs root.

use std::{net::UdpSocket, panic};

use xtask::lab::{self, Host, Lab};

fn all_absent(prefix: &str) -> bool {
    lab::status(prefix).unwrap().iter().all(|(_, up)| !up)
}

#[test]
fn every_host_reaches_every_other_over_ipv4_and_ipv6() {
    let lab = Lab::up("xt-reach").unwrap();
    for to in Host::ALL {
        let sockets = lab
            .in_netns(to, || {
                [to.ipv4().to_string(), format!("[{}]", to.ipv6())]
                    .map(|a| UdpSocket::bind(format!("{a}:5000")).unwrap())
            })
            .unwrap();
        for from in Host::ALL.into_iter().filter(|h| *h != to) {
            lab.in_netns(from, || {
                for (sock, dst) in sockets
                    .iter()
                    .zip([to.ipv4().to_string(), format!("[{}]", to.ipv6())])
                {
                    let any = if dst.starts_with('[') {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    };
                    UdpSocket::bind(any)
                        .unwrap()
                        .send_to(from.name().as_bytes(), format!("{dst}:5000"))
                        .unwrap();
                    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .unwrap();
                    let mut buf = [0; 32];
                    let (n, src) = sock.recv_from(&mut buf).unwrap();
                    assert_eq!(&buf[..n], from.name().as_bytes());
                    let want: std::net::IpAddr = if dst.starts_with('[') {
                        from.ipv6().into()
                    } else {
                        from.ipv4().into()
                    };
                    assert_eq!(src.ip(), want, "{from} -> {to}");
                }
            })
            .unwrap();
        }
    }
}

#[test]
fn up_twice_rebuilds_and_drop_removes_everything() {
    let first = Lab::up("xt-twice").unwrap();
    // A second `up` under the same prefix (a rerun after a crash) starts from clean.
    std::mem::forget(first);
    let second = Lab::up("xt-twice").unwrap();
    assert!(lab::status("xt-twice").unwrap().iter().all(|(_, up)| *up));
    drop(second);
    assert!(all_absent("xt-twice"));
}

#[test]
fn a_panicking_test_still_removes_its_lab() {
    let result = panic::catch_unwind(|| {
        let _lab = Lab::up("xt-panic").unwrap();
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    assert!(all_absent("xt-panic"));
}

#[test]
fn addresses_and_macs_are_the_documented_ones() {
    assert_eq!(Host::ClientA.ipv4().to_string(), "10.77.0.11");
    assert_eq!(Host::ClientA.ipv6().to_string(), "fd77::11");
    assert_eq!(Host::Peer.ipv6().to_string(), "fd77::21");
    assert_eq!(Host::Relay.mac(), [0x02, 0x52, 0x4c, 0, 0, 0x01]);
    assert_eq!(Host::ClientB.mac(), [0x02, 0x52, 0x4c, 0, 0, 0x12]);
}
