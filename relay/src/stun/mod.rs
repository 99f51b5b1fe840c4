//! STUN (RFC 8489) and TURN (RFC 8656) wire formats: messages, attributes, integrity and
//! fingerprint, ChannelData. Pure functions over byte slices: no I/O, no clock.

pub mod attr;
pub mod channel_data;
pub mod integrity;
pub mod message;

pub use channel_data::ChannelData;
pub use message::{Class, DecodeError, Message, MessageBuilder, Method, TransactionId};

/// What the first byte of a datagram or stream record says it is (RFC 8656 section 12,
/// RFC 7983): STUN messages start with 0b00, ChannelData with 0b01 (channels 0x4000-0x7FFF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

pub fn classify(first_byte: u8) -> Kind {
    match first_byte >> 6 {
        0 => Kind::Stun,
        1 => Kind::ChannelData,
        _ => Kind::Other,
    }
}
