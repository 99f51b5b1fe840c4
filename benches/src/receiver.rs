//! The receiving half: plain UDP sockets where the peer (or, for the bounce, the client)
//! would be, or, in the hairpin scenario, client B's allocation sockets. It reads batches
//! with `recvmmsg`, takes the kernel's receive time of each datagram (`SO_TIMESTAMPNS`, the
//! moment the stack took it, before this thread woke) and tallies the probes.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use relay::stun::channel_data::ChannelData;
use serde::Serialize;

use crate::{
    generator::setsockopt,
    wire::{HEADER_LEN, Probe},
};

const BATCH: usize = 64;
const BUF: usize = 2048;
/// A copy that arrives later than this after it was sent is counted late, not received:
/// a real-time receiver's jitter buffer has played out by then (ITU-T G.114 allows 150 ms
/// mouth to ear for the whole call), and a relay that buffers seconds to lose nothing is
/// not keeping up.
pub const LATE: Duration = Duration::from_millis(100);
/// Silence after the sender stopped that ends a trial: whatever a relay still had queued
/// has arrived by then, and what comes later counts as lost.
const QUIET: Duration = Duration::from_millis(100);

/// What is in front of the probe in a received datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// Nothing: a relay took the ChannelData header off (data from a relayed address to a
    /// peer).
    #[default]
    Bare,
    /// A ChannelData header on this channel whose length is the rest of the datagram, but
    /// for up to 3 bytes of padding: what a relay sends its client (the hairpin scenario),
    /// and the frame's own header where no relay is in the path.
    ChannelData(u16),
}

impl Framing {
    /// The payload behind the framing, or `None` where the datagram is not framed so.
    pub fn strip(self, datagram: &[u8]) -> Option<&[u8]> {
        match self {
            Self::Bare => Some(datagram),
            Self::ChannelData(channel) => {
                let message = ChannelData::decode(datagram).ok()?;
                let padding = datagram.len() - HEADER_LEN - message.data.len();
                (message.channel == channel && padding < 4).then_some(message.data)
            }
        }
    }
}

/// What tells a tally's streams apart, each with its own sequence numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keyed {
    /// The probe's stream (its SSRC): one stream per allocation.
    #[default]
    Stream,
    /// The socket it arrived on: every subscriber of a room receives the same stream.
    Socket,
}

/// What arrived in a trial.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    trial: u32,
    /// What precedes the probe.
    framing: Framing,
    keyed: Keyed,
    /// Per stream (or socket): one more than the highest sequence number seen, 0 before the
    /// first.
    next: Vec<u64>,
    /// Probes sent from this time (realtime ns) on count toward latency and the window.
    window: [u64; 2],
    pub received: u64,
    /// Arrived after a later packet of their stream (RFC 4737 section 3: reordered).
    pub reordered: u64,
    /// Sent inside the window and arrived.
    pub in_window: u64,
    /// Arrived more than [`LATE`] after they were sent: not counted as received.
    pub late: u64,
    /// Datagrams of other trials or not from the generator.
    pub foreign: u64,
    /// Datagrams without the framing expected (another channel, a length that is not the
    /// datagram's): not counted as received.
    pub misframed: u64,
    /// One-way latency of each probe sent inside the window, ns.
    latencies: Vec<u32>,
    /// The stack's receive errors while the trial ran: full socket buffer, bad checksums.
    pub rcvbuf_errors: u64,
    pub checksum_errors: u64,
}

impl Tally {
    pub fn new(
        trial: u32,
        (framing, keyed): (Framing, Keyed),
        streams: usize,
        window: [u64; 2],
        expected: u64,
    ) -> Self {
        Self {
            trial,
            framing,
            keyed,
            next: vec![0; streams],
            window,
            latencies: Vec::with_capacity(expected.min(1 << 25) as usize),
            ..Self::default()
        }
    }

    /// Takes one received datagram (the framing, then the probe), received at `rx_ns` on the
    /// realtime clock by the receiver's socket `socket`.
    pub fn record(&mut self, datagram: &[u8], rx_ns: u64, socket: usize) {
        let Some(payload) = self.framing.strip(datagram) else {
            self.misframed += 1;
            return;
        };
        let Some(probe) = Probe::read(payload) else {
            self.foreign += 1;
            return;
        };
        let key = match self.keyed {
            Keyed::Stream => probe.stream as usize,
            Keyed::Socket => socket,
        };
        let Some(next) = self.next.get_mut(key) else {
            self.foreign += 1;
            return;
        };
        if probe.trial != self.trial {
            self.foreign += 1;
            return;
        }
        let latency = rx_ns.saturating_sub(probe.sent_ns);
        if latency > LATE.as_nanos() as u64 {
            self.late += 1;
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

/// Bound UDP sockets that receive with kernel timestamps: one where every stream arrives,
/// or one per stream (client B's allocations), watched together with epoll.
pub struct Receiver {
    sockets: Vec<UdpSocket>,
    /// With more than one socket, the epoll instance that watches them (each registered
    /// with its index).
    epoll: Option<OwnedFd>,
}

impl Receiver {
    /// Binds `addr` in the calling thread's network namespace.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::on(vec![UdpSocket::bind(addr)?])
    }

    /// Receives on `sockets` (bound already, in any namespace), each with a receive buffer
    /// large enough for a burst of tens of milliseconds at full rate.
    pub fn on(sockets: Vec<UdpSocket>) -> io::Result<Self> {
        for socket in &sockets {
            let fd = socket.as_fd().try_clone_to_owned()?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
            socket.set_read_timeout(Some(QUIET))?;
        }
        let epoll = if sockets.len() > 1 {
            Some(epoll_of(&sockets)?)
        } else {
            None
        };
        Ok(Self { sockets, epoll })
    }

    /// How many sockets it receives on.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Where the streams arrive: one address, or one per stream.
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.sockets.iter().map(UdpSocket::local_addr).collect()
    }

    /// Receives into `tally` until `stop` is set and then nothing arrives for [`QUIET`].
    /// Call it from a thread in the sockets' namespace: it reads that namespace's UDP
    /// error counters before and after.
    pub fn run(&self, tally: &mut Tally, stop: &AtomicBool) -> io::Result<()> {
        let before = udp_errors()?;
        let mut batch = Batch::new();
        match &self.epoll {
            None => self.run_one(&mut batch, tally, stop)?,
            Some(epoll) => self.run_many(epoll.as_raw_fd(), &mut batch, tally, stop)?,
        }
        let after = udp_errors()?;
        tally.rcvbuf_errors = after.0.saturating_sub(before.0);
        tally.checksum_errors = after.1.saturating_sub(before.1);
        Ok(())
    }

    /// One socket: blocking batches, each ended by its first datagram or the read timeout.
    fn run_one(&self, batch: &mut Batch, tally: &mut Tally, stop: &AtomicBool) -> io::Result<()> {
        let fd = self.sockets[0].as_raw_fd();
        loop {
            match batch.receive((fd, 0), libc::MSG_WAITFORONE, tally) {
                Ok(_) => {}
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        if stop.load(Ordering::Acquire) =>
                    {
                        return Ok(());
                    }
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                },
            }
        }
    }

    /// Many sockets: a batch from each that epoll says is readable (level-triggered: one
    /// with more queued is reported again).
    fn run_many(
        &self,
        epoll: RawFd,
        batch: &mut Batch,
        tally: &mut Tally,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: `events` outlives the call and its length is passed.
            let n = unsafe {
                libc::epoll_wait(
                    epoll,
                    events.as_mut_ptr(),
                    i32::try_from(events.len()).unwrap_or(i32::MAX),
                    QUIET.as_millis() as i32,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 && stop.load(Ordering::Acquire) {
                return Ok(());
            }
            for event in &events[..n as usize] {
                let socket = event.u64 as usize;
                let fd = self.sockets[socket].as_raw_fd();
                match batch.receive((fd, socket), libc::MSG_DONTWAIT, tally) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Throws away whatever is queued (late packets of an earlier trial).
    pub fn drain(&self) -> io::Result<()> {
        let mut buf = [0; BUF];
        for socket in &self.sockets {
            socket.set_nonblocking(true)?;
            while socket.recv(&mut buf).is_ok() {}
            socket.set_nonblocking(false)?;
        }
        Ok(())
    }
}

/// An epoll instance watching `sockets` for input, each registered with its index.
fn epoll_of(sockets: &[UdpSocket]) -> io::Result<OwnedFd> {
    // SAFETY: plain epoll_create1(2); the result is checked and owned below.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    for (i, socket) in sockets.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: both descriptors are open; `event` outlives the call.
        let r = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &raw mut event,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(epoll)
}

/// Buffers for one `recvmmsg`: datagrams and room for one `SCM_TIMESTAMPNS` each.
struct Batch {
    bufs: Vec<[u8; BUF]>,
    controls: Vec<[u64; 8]>,
}

impl Batch {
    fn new() -> Self {
        Self {
            bufs: vec![[0; BUF]; BATCH],
            controls: vec![[0; 8]; BATCH],
        }
    }

    /// One `recvmmsg` on `fd` (the receiver's socket `socket`) with `flags`, its datagrams
    /// into `tally`; how many.
    fn receive(
        &mut self,
        (fd, socket): (RawFd, usize),
        flags: i32,
        tally: &mut Tally,
    ) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: BUF,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.controls.iter_mut())
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
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (m, buf) in msgs.iter().zip(&self.bufs).take(n as usize) {
            let rx_ns = timestamp(&m.msg_hdr).unwrap_or_else(crate::cpu::realtime_ns);
            tally.record(&buf[..m.msg_len as usize], rx_ns, socket);
        }
        Ok(n as usize)
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
    use crate::wire::{CHANNEL, HAIRPIN_CHANNEL, PROBE_LEN};

    /// ChannelData on `channel` carrying the probe and `extra` more bytes.
    fn framed(channel: u16, probe: Probe, extra: usize) -> Vec<u8> {
        let mut data = vec![0; PROBE_LEN + extra];
        let bytes: &mut [u8; PROBE_LEN] = (&mut data[..PROBE_LEN]).try_into().unwrap();
        probe.write(false, bytes);
        ChannelData {
            channel,
            data: &data,
        }
        .encode(false)
    }

    fn payload(stream: u32, seq: u64, sent_ns: u64, trial: u32) -> Vec<u8> {
        let probe = Probe {
            stream,
            seq,
            sent_ns,
            trial,
        };
        framed(CHANNEL, probe, 0)
    }

    #[test]
    fn counts_reordering_latency_and_strangers() {
        let mut t = Tally::new(
            1,
            (Framing::ChannelData(CHANNEL), Keyed::Stream),
            2,
            [1_000, 10_000],
            16,
        );
        t.record(&payload(0, 0, 500, 1), 600, 0); // before the window: counted, no latency
        t.record(&payload(0, 2, 2_000, 1), 2_100, 0);
        t.record(&payload(0, 1, 1_500, 1), 2_200, 0); // overtaken by seq 2
        t.record(&payload(1, 0, 3_000, 1), 3_050, 0);
        t.record(&payload(1, 0, 3_000, 2), 3_050, 0); // another trial
        t.record(&payload(5, 0, 3_000, 1), 3_050, 0); // no such stream
        t.record(b"hello", 3_050, 0);
        // Without the header, the probe is not where this tally looks.
        t.record(&payload(0, 3, 3_000, 1)[HEADER_LEN..], 3_050, 0);
        assert_eq!(
            (t.received, t.reordered, t.in_window, t.foreign, t.misframed),
            (4, 1, 3, 2, 2)
        );
        let p = t.latency().unwrap();
        // Latencies 50, 100, 700 ns.
        assert!((p.p50 - 0.1).abs() < 1e-9, "{p:?}");
        assert!((p.p999 - 0.7).abs() < 1e-9, "{p:?}");
    }

    /// A room's subscribers all receive stream 0: each socket keeps its own sequence, so
    /// copies interleaved across sockets are not reordering, and a socket beyond the tally's
    /// is foreign.
    #[test]
    fn a_tally_keyed_by_socket_follows_each_subscriber() {
        let mut t = Tally::new(2, (Framing::Bare, Keyed::Socket), 3, [0, 10_000], 16);
        for seq in 0..4 {
            for socket in 0..3 {
                t.record(&payload(0, seq, 1_000, 2)[HEADER_LEN..], 1_200, socket);
            }
        }
        t.record(&payload(0, 1, 1_000, 2)[HEADER_LEN..], 1_200, 1); // late, on socket 1
        t.record(&payload(0, 9, 1_000, 2)[HEADER_LEN..], 1_200, 3);
        // Arriving 100 ms and 1 ns after it was sent: late, not received.
        let late = 1_000 + LATE.as_nanos() as u64 + 1;
        t.record(&payload(0, 5, 1_000, 2)[HEADER_LEN..], late, 0);
        assert_eq!((t.received, t.reordered, t.foreign, t.late), (13, 1, 1, 1));
    }

    #[test]
    fn strips_channel_data_on_its_channel_only() {
        let probe = Probe {
            stream: 3,
            seq: 7,
            sent_ns: 1_000,
            trial: 1,
        };
        let framing = Framing::ChannelData(HAIRPIN_CHANNEL);
        let datagram = framed(HAIRPIN_CHANNEL, probe, 140);
        let payload = framing.strip(&datagram).unwrap();
        assert_eq!(payload.len(), PROBE_LEN + 140);
        assert_eq!(Probe::read(payload), Some(probe));
        // Up to 3 bytes of padding after the announced length (allowed over UDP).
        let mut padded = framed(HAIRPIN_CHANNEL, probe, 1);
        padded.extend_from_slice(&[0; 3]);
        assert_eq!(framing.strip(&padded).map(<[u8]>::len), Some(PROBE_LEN + 1));
        // The client's own channel: the relay did not frame it for B.
        assert_eq!(framing.strip(&framed(CHANNEL, probe, 0)), None);
        // A length beyond the datagram, or one that leaves 4 or more bytes unaccounted.
        let mut long = datagram.clone();
        long[3] += 1;
        assert_eq!(framing.strip(&long), None);
        let mut short = datagram.clone();
        short[3] -= 4;
        assert_eq!(framing.strip(&short), None);
        // Shorter than the header, and the bare payload without one.
        assert_eq!(framing.strip(&datagram[..3]), None);
        assert_eq!(framing.strip(&datagram[HEADER_LEN..]), None);
        // Bare: the datagram is the payload.
        assert_eq!(Framing::Bare.strip(&datagram), Some(&datagram[..]));
    }

    /// The hairpin receiver: ChannelData on B's channel is counted; A's frames reflected
    /// unchanged (the wrong channel) are not.
    #[test]
    fn a_hairpin_tally_counts_only_frames_on_bs_channel() {
        let mut t = Tally::new(
            4,
            (Framing::ChannelData(HAIRPIN_CHANNEL), Keyed::Stream),
            2,
            [0, 10_000],
            4,
        );
        for (channel, stream) in [(HAIRPIN_CHANNEL, 0), (HAIRPIN_CHANNEL, 1), (CHANNEL, 1)] {
            let probe = Probe {
                stream,
                seq: 0,
                sent_ns: 1_000,
                trial: 4,
            };
            t.record(&framed(channel, probe, 140), 1_500, 0);
        }
        assert_eq!((t.received, t.in_window, t.misframed), (2, 2, 1));
        let p = t.latency().unwrap();
        assert!((p.p50 - 0.5).abs() < 1e-9, "{p:?}");
    }

    /// One socket per stream, as client B's allocations: every socket's datagrams are
    /// tallied, whichever arrives first, and a trial ends once they stop.
    #[test]
    fn receives_on_many_sockets() {
        let sockets: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let receiver = Receiver::on(sockets).unwrap();
        let addrs = receiver.local_addrs().unwrap();
        assert_eq!(addrs.len(), 3);
        let from = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Sent now: a probe from long ago would be late.
        let now = crate::cpu::realtime_ns();
        for seq in 0..4 {
            for (stream, addr) in addrs.iter().enumerate().rev() {
                let probe = Probe {
                    stream: stream as u32,
                    seq,
                    sent_ns: now,
                    trial: 9,
                };
                from.send_to(&framed(HAIRPIN_CHANNEL, probe, 8), addr)
                    .unwrap();
            }
        }
        let mut t = Tally::new(
            9,
            (Framing::ChannelData(HAIRPIN_CHANNEL), Keyed::Stream),
            3,
            [0, 2],
            12,
        );
        receiver.run(&mut t, &AtomicBool::new(true)).unwrap();
        assert_eq!((t.received, t.reordered, t.misframed), (12, 0, 0));
        receiver.drain().unwrap();
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
