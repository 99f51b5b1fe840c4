//! RTP and RTCP as a relay reads them (RFC 3550): the fixed headers that route a packet, and
//! in RTCP the feedback that asks a publisher for something. Payloads are never read, so
//! SRTP and SRTCP (RFC 3711), whose headers stay in clear, are read the same way.

/// What a datagram on a media port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    /// RTP: the stream it belongs to.
    Rtp {
        ssrc: u32,
        payload_type: u8,
        seq: u16,
    },
    /// RTCP (compound or not): the sender's SSRC, from the first packet's header.
    Rtcp { sender_ssrc: u32 },
}

/// Reads the header of an RTP or RTCP packet; `None` for anything else (STUN, garbage).
/// RTP and RTCP on one port are told apart by the second byte (RFC 5761 section 4): RTCP
/// packet types 192-223 fall where RTP's marker bit and payload types 64-95 would, which
/// RTP must not use when it shares a port with RTCP.
pub fn classify(data: &[u8]) -> Option<Packet> {
    if data.len() < 8 || data[0] >> 6 != 2 {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    if (192..=223).contains(&data[1]) {
        return Some(Packet::Rtcp {
            sender_ssrc: word(4),
        });
    }
    // Fixed header, then the CSRCs the CC field announces.
    let csrcs = usize::from(data[0] & 0x0f);
    if data.len() < 12 + 4 * csrcs {
        return None;
    }
    Some(Packet::Rtp {
        ssrc: word(8),
        payload_type: data[1] & 0x7f,
        seq: u16::from_be_bytes([data[2], data[3]]),
    })
}

/// RTCP packet types (RFC 3550 section 12.1, RFC 4585 section 6.1).
const SR: u8 = 200;
const RR: u8 = 201;
const RTPFB: u8 = 205;
const PSFB: u8 = 206;
/// Feedback message types: PLI (RFC 4585 section 6.3.1), FIR (RFC 5104 section 4.3.1).
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;

/// What a plain RTCP compound packet from a receiver is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feedback {
    /// Media SSRCs its report blocks and feedback messages refer to, in order, once each.
    pub about: Vec<u32>,
    /// SSRCs it asks a keyframe of (PLI, FIR).
    pub keyframe_requests: Vec<u32>,
    /// Whether it carries anything but keyframe requests and report blocks (a NACK, an
    /// application message): such a packet is never throttled.
    pub other_feedback: bool,
}

/// Reads a compound RTCP packet's report blocks and feedback. `None` when the packets'
/// lengths do not add up to the datagram: SRTCP (its encrypted body is followed by an
/// index and a tag) or garbage, which a relay without the key can only pass on whole.
pub fn feedback(data: &[u8]) -> Option<Feedback> {
    let mut fb = Feedback::default();
    let mut rest = data;
    let note = |ssrc: u32, list: &mut Vec<u32>| {
        if !list.contains(&ssrc) {
            list.push(ssrc);
        }
    };
    while !rest.is_empty() {
        if rest.len() < 8 || rest[0] >> 6 != 2 {
            return None;
        }
        let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
        if len > rest.len() {
            return None;
        }
        let (packet, tail) = rest.split_at(len);
        rest = tail;
        let count = usize::from(packet[0] & 0x1f);
        let word = |at: usize| {
            packet
                .get(at..at + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        };
        match packet[1] {
            // Report blocks of 24 bytes after the sender's SSRC (and an SR's 20 bytes of
            // sender info).
            kind @ (SR | RR) => {
                let first = if kind == SR { 28 } else { 8 };
                for i in 0..count {
                    let ssrc = word(first + 24 * i)?;
                    note(ssrc, &mut fb.about);
                }
            }
            PSFB if count == usize::from(FMT_PLI) => {
                let ssrc = word(8)?;
                note(ssrc, &mut fb.about);
                note(ssrc, &mut fb.keyframe_requests);
            }
            // FIR names its targets in 8-byte FCI entries; the media SSRC field is unused.
            PSFB if count == usize::from(FMT_FIR) => {
                let mut at = 12;
                while let Some(ssrc) = word(at) {
                    note(ssrc, &mut fb.about);
                    note(ssrc, &mut fb.keyframe_requests);
                    at += 8;
                }
            }
            RTPFB | PSFB => {
                note(word(8)?, &mut fb.about);
                fb.other_feedback = true;
            }
            // SDES, BYE, APP, XR: nothing to route by.
            _ => {}
        }
    }
    Some(fb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, pt: u8, csrcs: u8) -> Vec<u8> {
        let mut p = vec![0x80 | csrcs, pt, 0x12, 0x34, 0, 0, 0, 1];
        p.extend(ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(0, 4 * usize::from(csrcs)));
        p.extend(b"payload");
        p
    }

    fn rtcp(pt: u8, count: u8, body: &[u8]) -> Vec<u8> {
        assert_eq!(body.len() % 4, 0);
        let words = u16::try_from(body.len() / 4).unwrap();
        let mut p = vec![0x80 | count, pt];
        p.extend(words.to_be_bytes());
        p.extend(body);
        p
    }

    fn rr(sender: u32, about: &[u32]) -> Vec<u8> {
        let mut body = sender.to_be_bytes().to_vec();
        for ssrc in about {
            body.extend(ssrc.to_be_bytes());
            body.extend([0; 20]);
        }
        rtcp(RR, u8::try_from(about.len()).unwrap(), &body)
    }

    fn pli(sender: u32, media: u32) -> Vec<u8> {
        let mut body = sender.to_be_bytes().to_vec();
        body.extend(media.to_be_bytes());
        rtcp(PSFB, FMT_PLI, &body)
    }

    #[test]
    fn rtp_and_rtcp_are_told_apart_by_payload_type() {
        assert_eq!(
            classify(&rtp(0xdead_beef, 96, 0)),
            Some(Packet::Rtp {
                ssrc: 0xdead_beef,
                payload_type: 96,
                seq: 0x1234
            })
        );
        // Marker bit set: still RTP.
        assert!(matches!(
            classify(&rtp(7, 0x80 | 0x6f, 0)),
            Some(Packet::Rtp {
                payload_type: 111,
                ..
            })
        ));
        assert_eq!(
            classify(&rr(42, &[7])),
            Some(Packet::Rtcp { sender_ssrc: 42 })
        );
        // CSRCs announced but missing; version 1; too short; STUN.
        let mut short = rtp(7, 96, 2);
        short.truncate(16);
        assert_eq!(classify(&short), None);
        assert_eq!(classify(&[0x40; 20]), None);
        assert_eq!(classify(&[0x80, 96, 0]), None);
        assert_eq!(classify(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42]), None);
    }

    #[test]
    fn feedback_names_what_it_is_about() {
        let mut compound = rr(1, &[10, 20]);
        compound.extend(pli(1, 20));
        assert_eq!(
            feedback(&compound),
            Some(Feedback {
                about: vec![10, 20],
                keyframe_requests: vec![20],
                other_feedback: false,
            })
        );
        // A NACK (RTPFB, FMT 1) is other feedback.
        let mut body = 1_u32.to_be_bytes().to_vec();
        body.extend(30_u32.to_be_bytes());
        body.extend([0, 5, 0, 0]);
        let nack = rtcp(RTPFB, 1, &body);
        let fb = feedback(&nack).unwrap();
        assert_eq!((fb.about, fb.other_feedback), (vec![30], true));
        // FIR: targets in the FCI.
        let mut body = 1_u32.to_be_bytes().to_vec();
        body.extend(0_u32.to_be_bytes());
        body.extend(40_u32.to_be_bytes());
        body.extend([3, 0, 0, 0]);
        let fir = rtcp(PSFB, FMT_FIR, &body);
        assert_eq!(feedback(&fir).unwrap().keyframe_requests, vec![40]);
    }

    #[test]
    fn srtcp_and_garbage_are_opaque() {
        // SRTCP: an RTCP header, then an encrypted body, the E flag and index, a 10-byte tag.
        let mut srtcp = rr(1, &[10]);
        srtcp.extend([0x80, 0, 0, 1]);
        srtcp.extend([0xaa; 10]);
        assert_eq!(feedback(&srtcp), None);
        assert_eq!(feedback(&[0x80, RR, 0, 9, 0, 0, 0, 1]), None);
        // A report count beyond the packet.
        let mut lying = rr(1, &[10]);
        lying[0] = 0x82;
        assert_eq!(feedback(&lying), None);
    }
}
