//! The receiving half: a plain UDP socket where the peer (or, for the bounce, the client)
//! would be. It reads batches with `recvmmsg`, takes the kernel's receive time of each
//! datagram (`SO_TIMESTAMPNS`, the moment the stack took it, before this thread woke) and
//! tallies the probes.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde::Serialize;

use crate::{generator::setsockopt, wire::Probe};

const BATCH: usize = 64;
const BUF: usize = 2048;
/// Silence after the sender stopped that ends a trial: whatever a relay still had queued
/// has arrived by then, and what comes later counts as lost.
const QUIET: Duration = Duration::from_millis(100);

/// What arrived in a trial.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    trial: u32,
    /// Bytes before the probe: none where a relay took the ChannelData header off,
    /// [`HEADER_LEN`] where it arrives as sent.
    offset: usize,
    /// Per stream: one more than the highest sequence number seen, 0 before the first.
    next: Vec<u64>,
    /// Probes sent from this time (realtime ns) on count toward latency and the window.
    window: [u64; 2],
    pub received: u64,
    /// Arrived after a later packet of their stream (RFC 4737 section 3: reordered).
    pub reordered: u64,
    /// Sent inside the window and arrived.
    pub in_window: u64,
    /// Datagrams of other trials or not from the generator.
    pub foreign: u64,
    /// One-way latency of each probe sent inside the window, ns.
    latencies: Vec<u32>,
    /// The stack's receive errors while the trial ran: full socket buffer, bad checksums.
    pub rcvbuf_errors: u64,
    pub checksum_errors: u64,
}

impl Tally {
    pub fn new(trial: u32, offset: usize, streams: usize, window: [u64; 2], expected: u64) -> Self {
        Self {
            trial,
            offset,
            next: vec![0; streams],
            window,
            latencies: Vec::with_capacity(expected.min(1 << 25) as usize),
            ..Self::default()
        }
    }

    /// Takes one received payload (`offset` bytes, then the probe), received at `rx_ns` on
    /// the realtime clock.
    pub fn record(&mut self, payload: &[u8], rx_ns: u64) {
        let Some(probe) = payload.get(self.offset..).and_then(Probe::read) else {
            self.foreign += 1;
            return;
        };
        let Some(next) = self.next.get_mut(probe.stream as usize) else {
            self.foreign += 1;
            return;
        };
        if probe.trial != self.trial {
            self.foreign += 1;
            return;
        }
        self.received += 1;
        if probe.seq < *next {
            self.reordered += 1;
        } else {
            *next = probe.seq + 1;
        }
        if (self.window[0]..self.window[1]).contains(&probe.sent_ns) {
            self.in_window += 1;
            let latency = rx_ns.saturating_sub(probe.sent_ns);
            self.latencies.push(latency.min(u64::from(u32::MAX)) as u32);
        }
    }

    /// Latency percentiles of the probes sent inside the window.
    pub fn latency(&mut self) -> Option<Percentiles> {
        Percentiles::of(&mut self.latencies)
    }
}

/// One-way latency percentiles, microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `ns`, which it sorts; `None` when empty.
    pub fn of(ns: &mut [u32]) -> Option<Self> {
        if ns.is_empty() {
            return None;
        }
        ns.sort_unstable();
        let at = |q: f64| {
            let rank = (q * ns.len() as f64).ceil() as usize;
            f64::from(ns[rank.clamp(1, ns.len()) - 1]) / 1e3
        };
        Some(Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
        })
    }
}

/// A bound UDP socket that receives with kernel timestamps.
pub struct Receiver {
    socket: UdpSocket,
}

impl Receiver {
    /// Binds `addr` in the calling thread's network namespace, with a receive buffer large
    /// enough for a burst of tens of milliseconds at full rate.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        let fd = socket.as_fd().try_clone_to_owned()?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        socket.set_read_timeout(Some(QUIET))?;
        Ok(Self { socket })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives into `tally` until `stop` is set and then nothing arrives for [`QUIET`].
    /// Call it from a thread in the socket's namespace: it reads that namespace's UDP
    /// error counters before and after.
    pub fn run(&self, tally: &mut Tally, stop: &AtomicBool) -> io::Result<()> {
        let before = udp_errors()?;
        let mut bufs = vec![[0u8; BUF]; BATCH];
        // Room for one SCM_TIMESTAMPNS control message per datagram.
        let mut controls = vec![[0u64; 8]; BATCH];
        loop {
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: BUF,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .zip(controls.iter_mut())
                .map(|(iov, control)| {
                    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m.msg_hdr.msg_control = control.as_mut_ptr().cast();
                    m.msg_hdr.msg_controllen = size_of_val(control);
                    m
                })
                .collect();
            // SAFETY: every header points at buffers that outlive the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        if stop.load(Ordering::Acquire) =>
                    {
                        break;
                    }
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            for (m, buf) in msgs.iter().zip(&bufs).take(n as usize) {
                let rx_ns = timestamp(&m.msg_hdr).unwrap_or_else(crate::cpu::realtime_ns);
                tally.record(&buf[..m.msg_len as usize], rx_ns);
            }
        }
        let after = udp_errors()?;
        tally.rcvbuf_errors = after.0.saturating_sub(before.0);
        tally.checksum_errors = after.1.saturating_sub(before.1);
        Ok(())
    }

    /// Throws away whatever is queued (late packets of an earlier trial).
    pub fn drain(&self) -> io::Result<()> {
        self.socket.set_nonblocking(true)?;
        let mut buf = [0; BUF];
        while self.socket.recv(&mut buf).is_ok() {}
        self.socket.set_nonblocking(false)
    }
}

/// The kernel's receive time from a `SCM_TIMESTAMPNS` control message.
fn timestamp(hdr: &libc::msghdr) -> Option<u64> {
    // SAFETY: `hdr` was filled by recvmmsg; the CMSG macros stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(
                    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned(),
                );
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// `RcvbufErrors` and `InCsumErrors` of this thread's network namespace.
fn udp_errors() -> io::Result<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    Ok(udp_counters(&snmp, ["RcvbufErrors", "InCsumErrors"]))
}

fn udp_counters(snmp: &str, names: [&str; 2]) -> (u64, u64) {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(keys), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let get = |name: &str| {
        keys.split_whitespace()
            .zip(values.split_whitespace())
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (get(names[0]), get(names[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HEADER_LEN, PROBE_LEN};

    fn payload(stream: u32, seq: u64, sent_ns: u64, trial: u32) -> Vec<u8> {
        let mut p = vec![0; HEADER_LEN + PROBE_LEN];
        let probe: &mut [u8; PROBE_LEN] = (&mut p[HEADER_LEN..]).try_into().unwrap();
        Probe {
            stream,
            seq,
            sent_ns,
            trial,
        }
        .write(false, probe);
        p
    }

    #[test]
    fn counts_reordering_latency_and_strangers() {
        let mut t = Tally::new(1, HEADER_LEN, 2, [1_000, 10_000], 16);
        t.record(&payload(0, 0, 500, 1), 600); // before the window: counted, no latency
        t.record(&payload(0, 2, 2_000, 1), 2_100);
        t.record(&payload(0, 1, 1_500, 1), 2_200); // overtaken by seq 2
        t.record(&payload(1, 0, 3_000, 1), 3_050);
        t.record(&payload(1, 0, 3_000, 2), 3_050); // another trial
        t.record(&payload(5, 0, 3_000, 1), 3_050); // no such stream
        t.record(b"hello", 3_050);
        // Without the header, the probe is not where this tally looks.
        t.record(&payload(0, 3, 3_000, 1)[HEADER_LEN..], 3_050);
        assert_eq!(
            (t.received, t.reordered, t.in_window, t.foreign),
            (4, 1, 3, 4)
        );
        let p = t.latency().unwrap();
        // Latencies 50, 100, 700 ns.
        assert!((p.p50 - 0.1).abs() < 1e-9, "{p:?}");
        assert!((p.p999 - 0.7).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut ns: Vec<u32> = (1..=1000).rev().map(|v| v * 1000).collect();
        let p = Percentiles::of(&mut ns).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (500.0, 900.0, 990.0, 999.0));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn reads_udp_counters() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                    Udp: 10 0 3 5 2 0 1\n";
        assert_eq!(udp_counters(snmp, ["RcvbufErrors", "InCsumErrors"]), (2, 1));
    }
}
