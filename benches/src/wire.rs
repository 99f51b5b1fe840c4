//! What the generator puts on the wire. Every payload starts with a probe: an RTP header
//! (RFC 3550 section 5.1; the SSRC names the stream) and the generator's own sequence
//! number, send time and trial, which the receiver reads back. Payloads travel as
//! ChannelData (RFC 8656 section 12.4) to a TURN relay, or with the same 4 bytes in front to
//! the bounce and baseline paths, so that every path carries frames of one size; to a media
//! room, and straight to its subscribers, they are bare RTP.
//!
//! Frames (Ethernet, IPv4, UDP) are built once per stream; each packet then patches the
//! probe and the UDP checksum, which it updates from the template's sum (RFC 1624) instead of
//! summing the whole payload again.

use std::net::SocketAddrV4;

/// Bytes of the probe at the start of every payload.
pub const PROBE_LEN: usize = 32;
/// ChannelData header, or the same 4 bytes in front of the payload on the other paths.
pub const HEADER_LEN: usize = relay::stun::channel_data::HEADER_LEN;
/// The channel every allocation binds to its peer.
pub const CHANNEL: u16 = 0x4000;
/// The channel client B's allocations bind to client A's relayed addresses in the hairpin
/// scenario: another number than A's, so that what arrives shows the relay framed it anew.
pub const HAIRPIN_CHANNEL: u16 = 0x4001;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Where the UDP payload starts in a frame.
const PAYLOAD_AT: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
/// RTP payload types: Opus-like audio and a dynamic video type.
const PT_AUDIO: u8 = 111;
const PT_VIDEO: u8 = 96;
/// Stream `i` is SSRC `SSRC_BASE + i`: a room refuses SSRC 0 (some stacks take it for
/// unset).
const SSRC_BASE: u32 = 0x0001_0000;

/// What the receiver reads from a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub stream: u32,
    pub seq: u64,
    pub sent_ns: u64,
    pub trial: u32,
}

impl Probe {
    /// Writes the probe into the first [`PROBE_LEN`] bytes of `out`.
    pub fn write(&self, video: bool, out: &mut [u8; PROBE_LEN]) {
        out[0] = 0x80; // RTP version 2, no padding, extension or CSRCs
        out[1] = if video { PT_VIDEO } else { PT_AUDIO };
        out[2..4].copy_from_slice(&(self.seq as u16).to_be_bytes());
        // RTP timestamp at 48 kHz for audio, 90 kHz for video: the sender's clock.
        let rate = if video { 90 } else { 48 };
        out[4..8].copy_from_slice(&((self.sent_ns / 1_000_000 * rate) as u32).to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc().to_be_bytes());
        out[12..20].copy_from_slice(&self.seq.to_be_bytes());
        out[20..28].copy_from_slice(&self.sent_ns.to_be_bytes());
        out[28..32].copy_from_slice(&self.trial.to_be_bytes());
    }

    /// The RTP SSRC of the probe's stream.
    pub const fn ssrc(&self) -> u32 {
        SSRC_BASE.wrapping_add(self.stream)
    }

    /// Reads a probe from a payload, or `None` if it is too short to hold one.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..PROBE_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            stream: u32_at(8).wrapping_sub(SSRC_BASE),
            seq: u64_at(12),
            sent_ns: u64_at(20),
            trial: u32_at(28),
        })
    }
}

/// One stream's frame, built once, patched per packet.
#[derive(Clone, Debug)]
pub struct Template {
    frame: Vec<u8>,
    /// The UDP checksum's sum over the template, probe bytes zero, not yet folded.
    sum: u64,
    video: bool,
    /// Where the probe starts in the frame.
    probe_at: usize,
}

impl Template {
    /// A frame from `src` to `dst` (MACs and addresses) whose UDP payload is a 4-byte header
    /// (ChannelData on `CHANNEL`) and `payload_len` bytes starting with the probe.
    pub fn new(
        macs: ([u8; 6], [u8; 6]),
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload_len: usize,
        video: bool,
    ) -> Self {
        Self::build(macs, src, dst, Some(CHANNEL), payload_len, video)
    }

    /// A frame whose UDP payload is bare RTP: `payload_len` bytes starting with the probe,
    /// as a camera sends to a media room.
    pub fn rtp(
        macs: ([u8; 6], [u8; 6]),
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload_len: usize,
        video: bool,
    ) -> Self {
        Self::build(macs, src, dst, None, payload_len, video)
    }

    fn build(
        macs: ([u8; 6], [u8; 6]),
        src: SocketAddrV4,
        dst: SocketAddrV4,
        channel: Option<u16>,
        payload_len: usize,
        video: bool,
    ) -> Self {
        assert!(
            payload_len >= PROBE_LEN,
            "a payload holds at least the probe"
        );
        let header_len = if channel.is_some() { HEADER_LEN } else { 0 };
        let udp_len = UDP_LEN + header_len + payload_len;
        let ip_len = IPV4_LEN + udp_len;
        let mut f = Vec::with_capacity(ETH_LEN + ip_len);
        f.extend_from_slice(&macs.1);
        f.extend_from_slice(&macs.0);
        f.extend_from_slice(&[0x08, 0x00]);
        // IPv4: no options, DF, TTL 64, UDP; the ID stays 0 as DF allows (RFC 6864).
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&(ip_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src.ip().octets());
        f.extend_from_slice(&dst.ip().octets());
        let ip_sum = fold(sum16(&f[ETH_LEN..ETH_LEN + IPV4_LEN]));
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&(!ip_sum).to_be_bytes());
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        if let Some(channel) = channel {
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        f.resize(ETH_LEN + ip_len, 0);
        // Pseudo-header (RFC 768): addresses, protocol, UDP length; then header and payload.
        let mut sum = sum16(&f[ETH_LEN + 12..ETH_LEN + 20]) + 17 + udp_len as u64;
        sum += sum16(&f[ETH_LEN + IPV4_LEN..]);
        Self {
            frame: f,
            sum,
            video,
            probe_at: PAYLOAD_AT + header_len,
        }
    }

    /// The frame with `probe` written into it and the UDP checksum set, in `out`.
    pub fn fill(&self, probe: &Probe, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.frame);
        let at = self.probe_at;
        let bytes: &mut [u8; PROBE_LEN] = (&mut out[at..at + PROBE_LEN])
            .try_into()
            .expect("probe-sized");
        probe.write(self.video, bytes);
        // The probe starts at an even offset from the UDP header, so its 16-bit words are the
        // checksum's words: add them to the template's sum.
        let csum = !fold(self.sum + sum16(bytes));
        // RFC 768: a computed zero is sent as all ones.
        let csum = if csum == 0 { 0xffff } else { csum };
        out[ETH_LEN + IPV4_LEN + 6..PAYLOAD_AT].copy_from_slice(&csum.to_be_bytes());
    }
}

/// The one's complement sum of `bytes` as 16-bit big-endian words, not yet folded.
fn sum16(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn probe_round_trips() {
        let probe = Probe {
            stream: 7,
            seq: 1 << 40,
            sent_ns: 1_700_000_000_123_456_789,
            trial: 3,
        };
        let mut bytes = [0; PROBE_LEN];
        probe.write(false, &mut bytes);
        assert_eq!(bytes[0] >> 6, 2, "RTP version 2");
        assert_eq!(Probe::read(&bytes), Some(probe));
        assert_eq!(Probe::read(&bytes[..PROBE_LEN - 1]), None);
    }

    /// The UDP payload of `frame` (Ethernet, IPv4, UDP), both checksums verified as a
    /// receiver verifies them (etherparse is independent of the code above).
    fn checked_udp_payload(frame: &[u8]) -> Vec<u8> {
        let packet = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(udp))) =
            (&packet.net, &packet.transport)
        else {
            panic!("not UDP over IPv4")
        };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        let udp_header = udp.to_header();
        let want = udp_header
            .calc_checksum_ipv4(&header, udp.payload())
            .unwrap();
        assert_eq!(udp_header.checksum, want, "UDP checksum");
        udp.payload().to_vec()
    }

    /// The frame parses as what it claims, and both checksums verify.
    #[test]
    fn frames_carry_channel_data_with_valid_checksums() {
        let template = Template::new(
            ([2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 0, 1]),
            addr("10.77.0.11:40000"),
            addr("10.77.0.1:3478"),
            172,
            false,
        );
        let mut frame = Vec::new();
        for seq in [0, 1, 0xffff_ffff_ffff] {
            let probe = Probe {
                stream: 5,
                seq,
                sent_ns: 123_456_789 + seq,
                trial: 9,
            };
            template.fill(&probe, &mut frame);
            assert_eq!(frame.len(), 14 + 20 + 8 + 4 + 172);
            let payload = checked_udp_payload(&frame);
            let data = relay::stun::channel_data::ChannelData::decode(&payload).unwrap();
            assert_eq!(data.channel, CHANNEL);
            assert_eq!(data.data.len(), 172);
            assert_eq!(Probe::read(data.data), Some(probe));
        }
    }

    /// A room's frame: bare RTP whose SSRC names the stream, checksums valid.
    #[test]
    fn rtp_frames_carry_the_probe_bare() {
        let template = Template::rtp(
            ([2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 0, 1]),
            addr("10.77.0.11:5004"),
            addr("10.77.0.1:40000"),
            1200,
            true,
        );
        let probe = Probe {
            stream: 0,
            seq: 3,
            sent_ns: 1_000_000_000,
            trial: 2,
        };
        let mut frame = Vec::new();
        template.fill(&probe, &mut frame);
        assert_eq!(frame.len(), 14 + 20 + 8 + 1200);
        let rtp = checked_udp_payload(&frame);
        assert_eq!((rtp[0], rtp[1]), (0x80, 96), "RTP version 2, video");
        assert_eq!(rtp[8..12], probe.ssrc().to_be_bytes());
        assert_ne!(probe.ssrc(), 0, "a room refuses SSRC 0");
        assert_eq!(Probe::read(&rtp), Some(probe));
    }
}
