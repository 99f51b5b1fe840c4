//! The sending half of the load generator: paced media streams written straight onto the
//! client's interface with an `AF_PACKET` socket and `sendmmsg`, up to 64 frames a call.
//!
//! One socket sends for every stream, whatever its source port: the TURN allocations are set
//! up on ordinary UDP sockets (which stay open), and their media then costs the generator
//! one system call per batch instead of one per packet and socket. The stack's UDP send
//! path, which is not what is being measured, is skipped; the frames are the same.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    time::Duration,
};

use serde::Serialize;

use crate::{
    cpu::{self, CpuTimes},
    wire::{Probe, Template},
};

/// Frames per `sendmmsg`.
const BATCH: usize = 64;

/// The media a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    /// 172-byte payloads (RTP and 20 ms of 64 kbit/s audio), evenly paced.
    Audio,
    /// 1200-byte payloads in bursts of one frame each, 30 frames a second.
    Video,
}

impl Media {
    pub const fn payload_len(self) -> usize {
        match self {
            Self::Audio => 172,
            Self::Video => 1200,
        }
    }

    /// Packets sent back to back: one for audio, one video frame's worth at 30 frames a
    /// second for video.
    fn burst(self, stream_pps: f64) -> u64 {
        match self {
            Self::Audio => 1,
            Self::Video => ((stream_pps / 30.0).round() as u64).max(1),
        }
    }
}

/// When each packet is due. Streams take turns, evenly staggered: burst `b` belongs to
/// stream `b % streams` and is due `b / bursts_per_sec` after the start.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    streams: u64,
    burst: u64,
    bursts_per_sec: f64,
}

impl Schedule {
    pub fn new(media: Media, streams: usize, rate_pps: f64) -> Self {
        let streams = streams.max(1) as u64;
        let burst = media.burst(rate_pps / streams as f64);
        Self {
            streams,
            burst,
            bursts_per_sec: rate_pps / burst as f64,
        }
    }

    /// Packets in `duration`, whole bursts.
    pub fn packets(&self, duration: Duration) -> u64 {
        (duration.as_secs_f64() * self.bursts_per_sec).ceil() as u64 * self.burst
    }

    /// Packet `p`: its due time after the start, its stream and its sequence number there.
    fn packet(&self, p: u64) -> (u64, u32, u64) {
        let b = p / self.burst;
        let due_ns = (b as f64 * 1e9 / self.bursts_per_sec) as u64;
        let seq = (b / self.streams) * self.burst + p % self.burst;
        (due_ns, (b % self.streams) as u32, seq)
    }

    /// How many packets are due `elapsed_ns` after the start.
    fn due(&self, elapsed_ns: u64) -> u64 {
        ((elapsed_ns as f64 * self.bursts_per_sec / 1e9).floor() as u64 + 1) * self.burst
    }
}

/// What the sender did in a trial.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub packets: u64,
    /// Frames the kernel refused (`sendmmsg` errors): not on the wire, so not lost.
    pub refused: u64,
    /// How late the last burst started after it was due: the generator fell behind its
    /// schedule.
    pub lag_ns: u64,
    /// From the start to the last packet.
    pub span_ns: u64,
    /// Machine CPU times when the measurement window opened and closed, if asked for.
    pub window: [Option<CpuTimes>; 2],
}

/// An `AF_PACKET` socket on one interface.
pub struct Sender {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl Sender {
    /// Opens the socket on `interface` of the calling thread's network namespace.
    pub fn open(interface: &str) -> io::Result<Self> {
        let (fd, addr) = xtask::lab::packet_socket(interface, libc::ETH_P_IP as u16)?;
        // Straight to the driver: a veth has no queue worth going through.
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20)?;
        Ok(Self { fd, addr })
    }

    /// Sends `total` packets of `templates` (streams `first_stream..`) on `schedule` from
    /// `start_ns` (realtime clock). With `sample` (`window`, `watch`) it also takes the
    /// machine's CPU times (and `watch`'s, the process under test) when the clock passes
    /// each end of `window`: one sender of a trial does, the others need not.
    #[expect(clippy::too_many_arguments, reason = "one trial's parameters, named")]
    pub fn run(
        &self,
        templates: &[Template],
        first_stream: u32,
        schedule: &Schedule,
        total: u64,
        trial: u32,
        start_ns: u64,
        sample: Option<([u64; 2], Option<u32>)>,
    ) -> io::Result<Sent> {
        let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
        let mut sent = Sent::default();
        let mut p = 0;
        while p < total {
            let now = cpu::realtime_ns();
            if let Some((window, watch)) = sample {
                for (i, at) in window.iter().enumerate() {
                    if sent.window[i].is_none() && now >= *at {
                        sent.window[i] = Some(cpu::sample(watch)?);
                    }
                }
            }
            let due = schedule.due(now.saturating_sub(start_ns)).min(total);
            if now < start_ns || due <= p {
                let (next, _, _) = schedule.packet(p);
                let wait = (start_ns + next).saturating_sub(now);
                std::thread::sleep(Duration::from_nanos(wait.min(1_000_000)));
                continue;
            }
            let n = ((due - p) as usize).min(BATCH);
            // Behind schedule: how late the last burst started after it was due. A frame of
            // video is due at once and takes what it takes to send (on veth, with what the
            // path does with it); falling behind shows in the next frame's start.
            let last_start = (p + n as u64 - 1) / schedule.burst * schedule.burst;
            if last_start >= p {
                let (due_ns, _, _) = schedule.packet(last_start);
                sent.lag_ns = now.saturating_sub(start_ns + due_ns);
            }
            for (i, frame) in frames.iter_mut().enumerate().take(n) {
                let (_, stream, seq) = schedule.packet(p + i as u64);
                let probe = Probe {
                    stream: first_stream + stream,
                    seq,
                    sent_ns: cpu::realtime_ns(),
                    trial,
                };
                templates[stream as usize].fill(&probe, frame);
            }
            let (ok, refused) = self.send(&frames[..n]);
            sent.packets += ok;
            sent.refused += refused;
            p += n as u64;
            sent.span_ns = cpu::realtime_ns().saturating_sub(start_ns);
        }
        // A short trial may end before its window closes on the clock: close it now.
        if let Some((_, watch)) = sample {
            for slot in &mut sent.window {
                if slot.is_none() {
                    *slot = Some(cpu::sample(watch)?);
                }
            }
        }
        Ok(sent)
    }

    /// Sends `frames` with as few `sendmmsg` calls as the kernel allows; returns how many
    /// went out and how many it refused.
    fn send(&self, frames: &[Vec<u8>]) -> (u64, u64) {
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&raw const self.addr).cast_mut().cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let (mut ok, mut refused) = (0, 0);
        let mut at = 0;
        while at < msgs.len() {
            // SAFETY: the headers point at `iovs`, `frames` and `self.addr`, which outlive
            // the call; the count is the slice's.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[at..].as_mut_ptr(),
                    (msgs.len() - at) as u32,
                    0,
                )
            };
            if n < 0 {
                // The frame at `at` was refused; go on with the next.
                refused += 1;
                at += 1;
            } else {
                ok += n as u64;
                at += n as usize;
            }
        }
        (ok, refused)
    }
}

pub(crate) fn setsockopt(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_streams_take_turns_evenly() {
        let s = Schedule::new(Media::Audio, 4, 1000.0);
        assert_eq!(s.packets(Duration::from_secs(1)), 1000);
        // 1 ms apart, streams 0..4 in turn, each stream's sequence counting up by one.
        assert_eq!(s.packet(0), (0, 0, 0));
        assert_eq!(s.packet(1), (1_000_000, 1, 0));
        assert_eq!(s.packet(4), (4_000_000, 0, 1));
        assert_eq!(s.packet(7), (7_000_000, 3, 1));
        assert_eq!(s.due(0), 1);
        assert_eq!(s.due(2_500_000), 3);
    }

    #[test]
    fn video_sends_a_frame_at_a_time() {
        // 2 streams at 300 pps each: 30 frames a second of 10 packets.
        let s = Schedule::new(Media::Video, 2, 600.0);
        assert_eq!(s.burst, 10);
        let (due0, stream0, _) = s.packet(0);
        let (due9, stream9, seq9) = s.packet(9);
        assert_eq!((due0, stream0), (due9, stream9), "one frame leaves at once");
        assert_eq!(seq9, 9);
        let (next_due, next_stream, next_seq) = s.packet(10);
        assert_eq!(
            (next_stream, next_seq),
            (1, 0),
            "then the next stream's frame"
        );
        assert!(next_due > due9);
        // Stream 0's second frame continues its sequence.
        assert_eq!(s.packet(20).1, 0);
        assert_eq!(s.packet(20).2, 10);
        assert_eq!(s.due(0), 10, "the whole first frame is due at once");
    }
}
