//! ChannelData messages (RFC 8656 section 12.4): a 4-byte header (channel number, length)
//! and the application data, padded to 4 bytes over stream transports.

/// Channel numbers a client may bind. RFC 8656 section 12 narrowed them to 0x4000-0x4FFF;
/// RFC 5766 clients, coturn and the XDP fast path use 0x4000-0x7FFF, and so does Relay.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;
const CHANNEL_DATA_MAX: u16 = CHANNEL_MAX;
pub const HEADER_LEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than a ChannelData header")]
    TooShort,
    #[error("channel number outside 0x4000-0x7FFF")]
    BadChannel,
    #[error("length field beyond the datagram")]
    BadLength,
}

/// Whether `channel` is one a client may bind.
pub const fn is_bindable(channel: u16) -> bool {
    channel >= CHANNEL_MIN && channel <= CHANNEL_MAX
}

impl<'a> ChannelData<'a> {
    /// Decodes a ChannelData message from a datagram. Bytes after the announced length are
    /// padding and ignored (over UDP padding is allowed but not required).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ChannelDataError> {
        let header: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .ok_or(ChannelDataError::TooShort)?
            .try_into()
            .expect("4 bytes");
        let channel = u16::from_be_bytes([header[0], header[1]]);
        if !(CHANNEL_MIN..=CHANNEL_DATA_MAX).contains(&channel) {
            return Err(ChannelDataError::BadChannel);
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let data = bytes
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(ChannelDataError::BadLength)?;
        Ok(Self { channel, data })
    }

    /// The encoded message; `pad` rounds it up to a multiple of 4 as stream transports need
    /// (RFC 8656 section 12.5).
    pub fn encode(&self, pad: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len() + 3);
        self.encode_into(pad, &mut out);
        out
    }

    pub fn encode_into(&self, pad: bool, out: &mut Vec<u8>) {
        let len = u16::try_from(self.data.len()).expect("ChannelData under 64 KiB");
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.data);
        if pad {
            out.resize(out.len() + (4 - self.data.len() % 4) % 4, 0);
        }
    }
}

/// The length of the ChannelData record at the start of a stream, padding included, once
/// its header is complete.
pub fn framed_len(bytes: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    Some(HEADER_LEN + len.div_ceil(4) * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_channel_and_length() {
        assert_eq!(
            ChannelData::decode(&[0x40, 0x00, 0, 2, 7, 8, 0, 0]),
            Ok(ChannelData {
                channel: 0x4000,
                data: &[7, 8]
            })
        );
        assert_eq!(
            ChannelData::decode(&[0x40, 0]),
            Err(ChannelDataError::TooShort)
        );
        assert_eq!(
            ChannelData::decode(&[0x80, 0, 0, 0]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            ChannelData::decode(&[0x40, 1, 0, 9, 1]),
            Err(ChannelDataError::BadLength)
        );
    }

    #[test]
    fn stream_encoding_pads_to_four_bytes() {
        let cd = ChannelData {
            channel: 0x4001,
            data: &[1, 2, 3, 4, 5],
        };
        assert_eq!(cd.encode(false).len(), 9);
        let padded = cd.encode(true);
        assert_eq!(padded.len(), 12);
        assert_eq!(framed_len(&padded), Some(12));
        assert!(
            is_bindable(0x4000)
                && is_bindable(0x7FFF)
                && !is_bindable(0x8000)
                && !is_bindable(0x3FFF)
        );
    }
}
