//! STUN message header and attribute framing (RFC 8489 sections 5, 14).

use std::fmt;

/// RFC 8489 section 5: distinguishes STUN from other protocols on the same port.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// Attribute header: type and length.
const ATTR_HEADER_LEN: usize = 4;

pub type TransactionId = [u8; 12];

/// The message class (RFC 8489 section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A STUN method (12 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Self = Self(0x001);
    // TURN, RFC 8656 section 17.
    pub const ALLOCATE: Self = Self(0x003);
    pub const REFRESH: Self = Self(0x004);
    pub const SEND: Self = Self(0x006);
    pub const DATA: Self = Self(0x007);
    pub const CREATE_PERMISSION: Self = Self(0x008);
    pub const CHANNEL_BIND: Self = Self(0x009);
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::BINDING => "Binding",
            Self::ALLOCATE => "Allocate",
            Self::REFRESH => "Refresh",
            Self::SEND => "Send",
            Self::DATA => "Data",
            Self::CREATE_PERMISSION => "CreatePermission",
            Self::CHANNEL_BIND => "ChannelBind",
            Self(other) => return write!(f, "method {other:#05x}"),
        };
        f.write_str(name)
    }
}

/// The 14-bit message type interleaves class bits C1 C0 with the method bits M11..M0
/// (RFC 8489 section 5, figure 3).
const fn message_type(class: Class, method: Method) -> u16 {
    let m = method.0;
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

const fn split_type(t: u16) -> (Class, Method) {
    let class = match ((t >> 7) & 2) | ((t >> 4) & 1) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    (class, Method(method))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("the two most significant bits are not zero")]
    NotStun,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("message length is not a multiple of 4")]
    UnalignedLength,
    #[error("message length does not match the datagram")]
    LengthMismatch,
    #[error("an attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("an attribute follows FINGERPRINT")]
    AfterFingerprint,
}

/// One attribute: its type and where its value sits in the message.
#[derive(Clone, Copy, Debug)]
struct AttrEntry {
    typ: u16,
    /// Offset of the attribute header from the start of the message.
    offset: usize,
    len: usize,
}

/// A decoded STUN message borrowing the bytes it was decoded from.
#[derive(Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    class: Class,
    method: Method,
    transaction_id: TransactionId,
    attrs: Vec<AttrEntry>,
    /// Offsets of the integrity and fingerprint attributes, when present.
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

/// The length of the STUN message at the start of `bytes` (header plus attributes), when its
/// header is complete: how a stream transport frames messages (RFC 8656 section 7.3).
pub fn framed_len(bytes: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    Some(HEADER_LEN + usize::from(len))
}

impl<'a> Message<'a> {
    /// Decodes a whole message: `bytes` must be exactly one message (a UDP datagram, or one
    /// record cut from a stream with [`framed_len`]).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::TooShort);
        }
        if bytes[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        if u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadCookie);
        }
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if len % 4 != 0 {
            return Err(DecodeError::UnalignedLength);
        }
        if HEADER_LEN + len != bytes.len() {
            return Err(DecodeError::LengthMismatch);
        }
        let (class, method) = split_type(u16::from_be_bytes([bytes[0], bytes[1]]));
        let mut transaction_id = [0; 12];
        transaction_id.copy_from_slice(&bytes[8..20]);

        let mut msg = Self {
            bytes,
            class,
            method,
            transaction_id,
            attrs: Vec::new(),
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        let mut offset = HEADER_LEN;
        while offset < bytes.len() {
            if msg.fingerprint.is_some() {
                return Err(DecodeError::AfterFingerprint);
            }
            if offset + ATTR_HEADER_LEN > bytes.len() {
                return Err(DecodeError::TruncatedAttribute);
            }
            let typ = u16::from_be_bytes([bytes[offset], bytes[offset + 1]]);
            let alen = usize::from(u16::from_be_bytes([bytes[offset + 2], bytes[offset + 3]]));
            let end = offset + ATTR_HEADER_LEN + alen;
            if end > bytes.len() {
                return Err(DecodeError::TruncatedAttribute);
            }
            match typ {
                super::attr::MESSAGE_INTEGRITY if msg.integrity.is_none() => {
                    msg.integrity = Some(offset);
                }
                super::attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    msg.integrity_sha256 = Some(offset);
                }
                super::attr::FINGERPRINT => msg.fingerprint = Some(offset),
                // RFC 8489 section 14.5: attributes after MESSAGE-INTEGRITY are ignored, but
                // for MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.
                _ if msg.integrity.is_some() || msg.integrity_sha256.is_some() => {}
                _ => msg.attrs.push(AttrEntry {
                    typ,
                    offset,
                    len: alen,
                }),
            }
            // Values are padded to a multiple of 4 bytes (section 14).
            offset = end + (4 - alen % 4) % 4;
        }
        if offset != bytes.len() {
            return Err(DecodeError::TruncatedAttribute);
        }
        Ok(msg)
    }

    pub const fn class(&self) -> Class {
        self.class
    }

    pub const fn method(&self) -> Method {
        self.method
    }

    pub const fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The whole message as received.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The value of the first attribute of type `typ` (before any integrity attribute).
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs
            .iter()
            .find(|a| a.typ == typ)
            .map(|a| &self.bytes[a.offset + ATTR_HEADER_LEN..a.offset + ATTR_HEADER_LEN + a.len])
    }

    /// The values of every attribute of type `typ`, in order (some may repeat, such as
    /// XOR-PEER-ADDRESS in CreatePermission).
    pub fn all(&self, typ: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs
            .iter()
            .filter(move |a| a.typ == typ)
            .map(|a| &self.bytes[a.offset + ATTR_HEADER_LEN..a.offset + ATTR_HEADER_LEN + a.len])
    }

    /// Every attribute type present (before any integrity attribute), in order.
    pub fn attribute_types(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs.iter().map(|a| a.typ)
    }

    pub(super) const fn integrity_offset(&self) -> Option<usize> {
        self.integrity
    }

    pub(super) const fn integrity_sha256_offset(&self) -> Option<usize> {
        self.integrity_sha256
    }

    pub(super) const fn fingerprint_offset(&self) -> Option<usize> {
        self.fingerprint
    }

    /// The value of the attribute whose header starts at `offset`.
    pub(super) fn value_at(&self, offset: usize) -> &'a [u8] {
        let len = usize::from(u16::from_be_bytes([
            self.bytes[offset + 2],
            self.bytes[offset + 3],
        ]));
        &self.bytes[offset + ATTR_HEADER_LEN..offset + ATTR_HEADER_LEN + len]
    }
}

/// Builds a STUN message attribute by attribute; the header length is kept up to date so
/// that integrity and fingerprint can be appended at any point.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    transaction_id: TransactionId,
}

impl MessageBuilder {
    pub fn new(class: Class, method: Method, transaction_id: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        Self {
            buf,
            transaction_id,
        }
    }

    pub const fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// Appends an attribute, padding its value to 4 bytes with zeros.
    pub fn add(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).expect("attribute value under 64 KiB");
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .resize(self.buf.len() + (4 - value.len() % 4) % 4, 0);
        self.set_length(self.buf.len() - HEADER_LEN);
        self
    }

    /// The message so far, with the header length set to `body_len` (integrity covers a
    /// header whose length already counts the integrity attribute).
    pub(super) fn bytes_with_length(&mut self, body_len: usize) -> &[u8] {
        self.set_length(body_len);
        &self.buf
    }

    fn set_length(&mut self, body_len: usize) {
        let len = u16::try_from(body_len).expect("STUN message under 64 KiB");
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub(super) fn body_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_interleaves_class_and_method() {
        // RFC 8489 section 5: a Binding request is 0x0001, a Binding success 0x0101, an
        // Allocate error 0x0113.
        assert_eq!(message_type(Class::Request, Method::BINDING), 0x0001);
        assert_eq!(message_type(Class::Success, Method::BINDING), 0x0101);
        assert_eq!(message_type(Class::Error, Method::ALLOCATE), 0x0113);
        assert_eq!(message_type(Class::Indication, Method::DATA), 0x0017);
        for t in 0..0x4000_u16 {
            let (c, m) = split_type(t);
            assert_eq!(message_type(c, m), t);
        }
    }

    #[test]
    fn rejects_what_is_not_one_whole_message() {
        let mut b = MessageBuilder::new(Class::Request, Method::BINDING, [7; 12]);
        b.add(0x8022, b"abc");
        let bytes = b.build();
        assert!(Message::decode(&bytes).is_ok());
        assert_eq!(
            Message::decode(&bytes[..19]).unwrap_err(),
            DecodeError::TooShort
        );
        assert_eq!(
            Message::decode(&bytes[..bytes.len() - 4]).unwrap_err(),
            DecodeError::LengthMismatch
        );
        let mut cookie = bytes.clone();
        cookie[4] ^= 1;
        assert_eq!(
            Message::decode(&cookie).unwrap_err(),
            DecodeError::BadCookie
        );
        let mut top = bytes.clone();
        top[0] |= 0x40;
        assert_eq!(Message::decode(&top).unwrap_err(), DecodeError::NotStun);
        let mut attr = bytes;
        attr[HEADER_LEN + 3] = 40;
        assert_eq!(
            Message::decode(&attr).unwrap_err(),
            DecodeError::TruncatedAttribute
        );
    }
}
