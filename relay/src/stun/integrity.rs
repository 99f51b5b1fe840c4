//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256, FINGERPRINT (RFC 8489 sections
//! 14.5-14.7) and the keys they use (section 9.2.2). MACs are compared in constant time.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::{
    attr::{FINGERPRINT, MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256},
    message::{HEADER_LEN, Message, MessageBuilder},
};

/// XORed into the CRC-32 so that FINGERPRINT differs from a CRC other protocols carry.
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const MI_SHA1_LEN: usize = 20;
const MI_SHA256_LEN: usize = 32;

/// The long-term credential key: MD5(username ":" realm ":" password) (section 9.2.2).
/// Passwords are used as given (no SASLprep / OpaqueString); the same holds for coturn.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> Vec<u8> {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().to_vec()
}

/// coturn's TURN REST API ("--use-auth-secret"): the password for `username` is
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error("no MESSAGE-INTEGRITY attribute")]
    Missing,
    #[error("MESSAGE-INTEGRITY-SHA256 has an invalid length")]
    BadLength,
    #[error("MESSAGE-INTEGRITY does not match")]
    Mismatch,
}

/// Which integrity attribute a message carried, so a response can use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityKind {
    Sha1,
    Sha256,
}

/// HMAC over the message up to `offset`, with the header length rewritten to end
/// `attr_len` bytes (header included) after `offset`, as the sender computed it.
fn mac_over<M: hmac::Mac + hmac::digest::KeyInit>(
    key: &[u8],
    bytes: &[u8],
    offset: usize,
    attr_len: usize,
) -> M {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    let len = u16::try_from(offset - HEADER_LEN + attr_len).unwrap_or(u16::MAX);
    mac.update(&bytes[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&bytes[4..offset]);
    mac
}

impl Message<'_> {
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        if self.integrity_sha256_offset().is_some() {
            Some(IntegrityKind::Sha256)
        } else if self.integrity_offset().is_some() {
            Some(IntegrityKind::Sha1)
        } else {
            None
        }
    }

    /// Checks the message's integrity with `key`. When both attributes are present only
    /// MESSAGE-INTEGRITY-SHA256 counts (section 14.6).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<IntegrityKind, IntegrityError> {
        if let Some(offset) = self.integrity_sha256_offset() {
            let got = self.value_at(offset);
            // Section 14.6: at least 16 bytes, a multiple of 4, at most 32.
            if got.len() < 16 || got.len() > MI_SHA256_LEN || !got.len().is_multiple_of(4) {
                return Err(IntegrityError::BadLength);
            }
            let want = mac_over::<Hmac<Sha256>>(key, self.bytes(), offset, 4 + got.len())
                .finalize()
                .into_bytes();
            return if bool::from(want[..got.len()].ct_eq(got)) {
                Ok(IntegrityKind::Sha256)
            } else {
                Err(IntegrityError::Mismatch)
            };
        }
        let offset = self.integrity_offset().ok_or(IntegrityError::Missing)?;
        let got = self.value_at(offset);
        if got.len() != MI_SHA1_LEN {
            return Err(IntegrityError::BadLength);
        }
        let want = mac_over::<Hmac<Sha1>>(key, self.bytes(), offset, 4 + MI_SHA1_LEN)
            .finalize()
            .into_bytes();
        if bool::from(want.as_slice().ct_eq(got)) {
            Ok(IntegrityKind::Sha1)
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// `None` when the message carries no FINGERPRINT, else whether it matches.
    pub fn verify_fingerprint(&self) -> Option<bool> {
        let offset = self.fingerprint_offset()?;
        let got = self.value_at(offset);
        let want = crc32fast::hash(&self.bytes()[..offset]) ^ FINGERPRINT_XOR;
        Some(got == want.to_be_bytes())
    }
}

impl MessageBuilder {
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let body_len = self.body_len() + 4 + MI_SHA1_LEN;
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(self.bytes_with_length(body_len));
        let tag = mac.finalize().into_bytes();
        self.add(MESSAGE_INTEGRITY, &tag)
    }

    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let body_len = self.body_len() + 4 + MI_SHA256_LEN;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(self.bytes_with_length(body_len));
        let tag = mac.finalize().into_bytes();
        self.add(MESSAGE_INTEGRITY_SHA256, &tag)
    }

    /// Adds the integrity attribute of `kind` keyed with `key`.
    pub fn add_integrity(&mut self, kind: IntegrityKind, key: &[u8]) -> &mut Self {
        match kind {
            IntegrityKind::Sha1 => self.add_message_integrity(key),
            IntegrityKind::Sha256 => self.add_message_integrity_sha256(key),
        }
    }

    /// FINGERPRINT must be the last attribute.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        let body_len = self.body_len() + 8;
        let crc = crc32fast::hash(self.bytes_with_length(body_len)) ^ FINGERPRINT_XOR;
        self.add(FINGERPRINT, &crc.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::stun::{
        Class, Method,
        attr::{self, decode_xor_address},
    };

    // RFC 5769 section 2.1: sample request, short-term credentials.
    const SAMPLE_REQUEST: &[u8] = b"\x00\x01\x00\x58\x21\x12\xa4\x42\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae\
        \x80\x22\x00\x10STUN test client\
        \x00\x24\x00\x04\x6e\x00\x01\xff\
        \x80\x29\x00\x08\x93\x2f\xf9\xb1\x51\x26\x3b\x36\
        \x00\x06\x00\x09\x65\x76\x74\x6a\x3a\x68\x36\x76\x59\x20\x20\x20\
        \x00\x08\x00\x14\x9a\xea\xa7\x0c\xbf\xd8\xcb\x56\x78\x1e\xf2\xb5\xb2\xd3\xf2\x49\xc1\xb5\x71\xa2\
        \x80\x28\x00\x04\xe5\x7a\x3b\xcf";
    const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

    // RFC 5769 section 2.2: sample IPv4 response.
    const SAMPLE_IPV4_RESPONSE: &[u8] = b"\x01\x01\x00\x3c\x21\x12\xa4\x42\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae\
        \x80\x22\x00\x0b\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20\
        \x00\x20\x00\x08\x00\x01\xa1\x47\xe1\x12\xa6\x43\
        \x00\x08\x00\x14\x2b\x91\xf5\x99\xfd\x9e\x90\xc3\x8c\x74\x89\xf9\x2a\xf9\xba\x53\xf0\x6b\xe7\xd7\
        \x80\x28\x00\x04\xc0\x7d\x4c\x96";

    // RFC 5769 section 2.3: sample IPv6 response.
    const SAMPLE_IPV6_RESPONSE: &[u8] = b"\x01\x01\x00\x48\x21\x12\xa4\x42\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae\
        \x80\x22\x00\x0b\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20\
        \x00\x20\x00\x14\x00\x02\xa1\x47\x01\x13\xa9\xfa\xa5\xd3\xf1\x79\xbc\x25\xf4\xb5\xbe\xd2\xb9\xd9\
        \x00\x08\x00\x14\xa3\x82\x95\x4e\x4b\xe6\x7b\xf1\x17\x84\xc9\x7c\x82\x92\xc2\x75\xbf\xe3\xed\x41\
        \x80\x28\x00\x04\xc8\xfb\x0b\x4c";

    // RFC 5769 section 2.4: sample request with long-term credentials. The password is
    // "TheMatrIX" once SASLprep has been applied to the RFC's "The<U+00AD>M<U+00AA>tr<U+2168>".
    const SAMPLE_LONG_TERM_REQUEST: &[u8] = b"\x00\x01\x00\x60\x21\x12\xa4\x42\x78\xad\x34\x33\xc6\xad\x72\xc0\x29\xda\x41\x2e\
        \x00\x06\x00\x12\xe3\x83\x9e\xe3\x83\x88\xe3\x83\xaa\xe3\x83\x83\xe3\x82\xaf\xe3\x82\xb9\x00\x00\
        \x00\x15\x00\x1c\x66\x2f\x2f\x34\x39\x39\x6b\x39\x35\x34\x64\x36\x4f\x4c\x33\x34\x6f\x4c\x39\x46\x53\x54\x76\x79\x36\x34\x73\x41\
        \x00\x14\x00\x0b\x65\x78\x61\x6d\x70\x6c\x65\x2e\x6f\x72\x67\x00\
        \x00\x08\x00\x14\xf6\x70\x24\x65\x6d\xd6\x4a\x3e\x02\xb8\xe0\x71\x2e\x85\xc9\xa2\x8c\xa8\x96\x66";

    #[test]
    fn rfc5769_sample_request() {
        let msg = Message::decode(SAMPLE_REQUEST).unwrap();
        assert_eq!(
            (msg.class(), msg.method()),
            (Class::Request, Method::BINDING)
        );
        assert_eq!(msg.verify_fingerprint(), Some(true));
        assert_eq!(
            msg.verify_integrity(SHORT_TERM_PASSWORD.as_bytes()),
            Ok(IntegrityKind::Sha1)
        );
        assert_eq!(msg.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        assert_eq!(msg.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert_eq!(
            msg.verify_integrity(b"wrong"),
            Err(IntegrityError::Mismatch)
        );
        let mut corrupt = SAMPLE_REQUEST.to_vec();
        corrupt[27] = 23;
        assert_eq!(
            Message::decode(&corrupt).unwrap().verify_fingerprint(),
            Some(false)
        );
    }

    #[test]
    fn rfc5769_sample_responses() {
        for (bytes, addr) in [
            (SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853"),
            (
                SAMPLE_IPV6_RESPONSE,
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let msg = Message::decode(bytes).unwrap();
            assert_eq!(
                (msg.class(), msg.method()),
                (Class::Success, Method::BINDING)
            );
            assert_eq!(msg.verify_fingerprint(), Some(true));
            assert_eq!(
                msg.verify_integrity(SHORT_TERM_PASSWORD.as_bytes()),
                Ok(IntegrityKind::Sha1)
            );
            let mapped = decode_xor_address(
                msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
                &msg.transaction_id(),
            );
            assert_eq!(mapped, Ok(addr.parse::<SocketAddr>().unwrap()));
        }
    }

    #[test]
    fn rfc5769_long_term_request_verifies_and_re_encodes_byte_for_byte() {
        let msg = Message::decode(SAMPLE_LONG_TERM_REQUEST).unwrap();
        let username = std::str::from_utf8(msg.get(attr::USERNAME).unwrap()).unwrap();
        let key = long_term_key(username, "example.org", "TheMatrIX");
        assert_eq!(msg.verify_integrity(&key), Ok(IntegrityKind::Sha1));

        let mut b = MessageBuilder::new(Class::Request, Method::BINDING, msg.transaction_id());
        b.add(attr::USERNAME, username.as_bytes())
            .add(attr::NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
            .add(attr::REALM, b"example.org")
            .add_message_integrity(&key);
        assert_eq!(b.build(), SAMPLE_LONG_TERM_REQUEST);
    }

    #[test]
    fn built_messages_verify_with_both_integrity_kinds_and_fingerprint() {
        for kind in [IntegrityKind::Sha1, IntegrityKind::Sha256] {
            let mut b = MessageBuilder::new(Class::Success, Method::ALLOCATE, [9; 12]);
            b.add_u32(attr::LIFETIME, 600)
                .add_integrity(kind, b"key")
                .add_fingerprint();
            let bytes = b.build();
            let msg = Message::decode(&bytes).unwrap();
            assert_eq!(msg.verify_integrity(b"key"), Ok(kind));
            assert_eq!(
                msg.verify_integrity(b"other"),
                Err(IntegrityError::Mismatch)
            );
            assert_eq!(msg.verify_fingerprint(), Some(true));
        }
    }

    #[test]
    fn rest_password_known_answer() {
        // Computed with Python's hmac/hashlib/base64, an independent implementation.
        assert_eq!(
            rest_password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }
}
