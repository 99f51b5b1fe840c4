//! Attribute types and the codecs of their values (RFC 8489 section 14, RFC 8656 section 18).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::message::{MAGIC_COOKIE, Message, MessageBuilder, TransactionId};

// Comprehension-required range (0x0000-0x7FFF).
pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
pub const USERHASH: u16 = 0x001E;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const RESERVATION_TOKEN: u16 = 0x0022;
/// ICE (RFC 8445 section 16.1): agents send these in Binding requests.
pub const PRIORITY: u16 = 0x0024;
pub const USE_CANDIDATE: u16 = 0x0025;
// Comprehension-optional range (0x8000-0xFFFF).
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub const SOFTWARE: u16 = 0x8022;
pub const FINGERPRINT: u16 = 0x8028;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;

/// Comprehension-required attributes this server understands; any other one in a request
/// gets a 420 (RFC 8489 section 6.3.1).
const UNDERSTOOD: &[u16] = &[
    MAPPED_ADDRESS,
    USERNAME,
    MESSAGE_INTEGRITY,
    ERROR_CODE,
    UNKNOWN_ATTRIBUTES,
    CHANNEL_NUMBER,
    LIFETIME,
    XOR_PEER_ADDRESS,
    DATA,
    REALM,
    NONCE,
    XOR_RELAYED_ADDRESS,
    REQUESTED_ADDRESS_FAMILY,
    EVEN_PORT,
    REQUESTED_TRANSPORT,
    DONT_FRAGMENT,
    MESSAGE_INTEGRITY_SHA256,
    PASSWORD_ALGORITHM,
    USERHASH,
    XOR_MAPPED_ADDRESS,
    RESERVATION_TOKEN,
    PRIORITY,
    USE_CANDIDATE,
];

/// Comprehension-required attributes in `msg` that this server does not understand.
pub fn unknown_required(msg: &Message<'_>) -> Vec<u16> {
    msg.attribute_types()
        .filter(|t| *t < 0x8000 && !UNDERSTOOD.contains(t))
        .collect()
}

/// Address family codes (RFC 8489 section 14.1, RFC 8656 section 18.1).
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// IANA protocol number of UDP, the only REQUESTED-TRANSPORT this relay offers.
pub const TRANSPORT_UDP: u8 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("attribute has the wrong length")]
    Length,
    #[error("unknown address family")]
    Family,
    #[error("not UTF-8")]
    Utf8,
}

/// XOR-MAPPED-ADDRESS and its TURN siblings (RFC 8489 section 14.2): the port is XORed with
/// the cookie's top 16 bits, an IPv4 address with the cookie, an IPv6 address with the
/// cookie followed by the transaction id.
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, AttrError> {
    if value.len() < 4 {
        return Err(AttrError::Length);
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([value[2] ^ cookie[0], value[3] ^ cookie[1]]);
    let ip = match (value[1], value.len()) {
        (FAMILY_IPV4, 8) => {
            let mut a = [0; 4];
            for (i, b) in a.iter_mut().enumerate() {
                *b = value[4 + i] ^ cookie[i];
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        (FAMILY_IPV6, 20) => {
            let mut a = [0; 16];
            for (i, b) in a.iter_mut().enumerate() {
                let key = if i < 4 { cookie[i] } else { tid[i - 4] };
                *b = value[4 + i] ^ key;
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        (FAMILY_IPV4 | FAMILY_IPV6, _) => return Err(AttrError::Length),
        _ => return Err(AttrError::Family),
    };
    Ok(SocketAddr::new(ip, port))
}

pub fn encode_xor_address(addr: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port().to_be_bytes();
    let mut v = vec![0, 0, port[0] ^ cookie[0], port[1] ^ cookie[1]];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v[1] = FAMILY_IPV4;
            v.extend(ip.octets().iter().zip(cookie).map(|(b, k)| b ^ k));
        }
        IpAddr::V6(ip) => {
            v[1] = FAMILY_IPV6;
            let key = cookie.iter().chain(tid.iter());
            v.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
        }
    }
    v
}

/// ERROR-CODE (RFC 8489 section 14.8): class (hundreds) and number, then a reason phrase.
pub fn encode_error_code(code: u16, reason: &str) -> Vec<u8> {
    let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
    v.extend_from_slice(reason.as_bytes());
    v
}

pub fn decode_error_code(value: &[u8]) -> Result<(u16, &str), AttrError> {
    if value.len() < 4 {
        return Err(AttrError::Length);
    }
    let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
    let reason = std::str::from_utf8(&value[4..]).map_err(|_| AttrError::Utf8)?;
    Ok((code, reason))
}

pub fn decode_u32(value: &[u8]) -> Result<u32, AttrError> {
    Ok(u32::from_be_bytes(
        value.try_into().map_err(|_| AttrError::Length)?,
    ))
}

pub fn decode_str(value: &[u8]) -> Result<&str, AttrError> {
    std::str::from_utf8(value).map_err(|_| AttrError::Utf8)
}

/// CHANNEL-NUMBER (RFC 8656 section 18.1): the number, then two reserved bytes.
pub fn decode_channel_number(value: &[u8]) -> Result<u16, AttrError> {
    if value.len() != 4 {
        return Err(AttrError::Length);
    }
    Ok(u16::from_be_bytes([value[0], value[1]]))
}

/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY: the family, then three reserved bytes.
pub fn decode_family(value: &[u8]) -> Result<u8, AttrError> {
    match value {
        [f @ (FAMILY_IPV4 | FAMILY_IPV6), _, _, _] => Ok(*f),
        [_, _, _, _] => Err(AttrError::Family),
        _ => Err(AttrError::Length),
    }
}

/// Shorthands for building messages with typed attributes.
impl MessageBuilder {
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let value = encode_xor_address(addr, &self.transaction_id());
        self.add(typ, &value)
    }

    pub fn add_error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        self.add(ERROR_CODE, &encode_error_code(code, reason))
    }

    pub fn add_u32(&mut self, typ: u16, value: u32) -> &mut Self {
        self.add(typ, &value.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_round_trips() {
        let tid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        for addr in [
            "192.0.2.1:32853",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(
                decode_xor_address(&encode_xor_address(addr, &tid), &tid),
                Ok(addr)
            );
        }
        assert_eq!(
            decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &tid),
            Err(AttrError::Family)
        );
        assert_eq!(
            decode_xor_address(&[0, 1, 0, 0, 1, 2, 3], &tid),
            Err(AttrError::Length)
        );
    }

    #[test]
    fn error_code_splits_class_and_number() {
        let v = encode_error_code(438, "Stale Nonce");
        assert_eq!(&v[..4], &[0, 0, 4, 38]);
        assert_eq!(decode_error_code(&v), Ok((438, "Stale Nonce")));
    }
}
