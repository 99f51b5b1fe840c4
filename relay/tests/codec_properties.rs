//! Property tests of the wire codecs: whatever is encoded decodes to the same thing, and no
//! input, however malformed, makes a decoder panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use relay::stun::{
    ChannelData, Class, Message, MessageBuilder, Method,
    attr::{decode_xor_address, encode_xor_address},
    channel_data::{CHANNEL_MAX, CHANNEL_MIN},
    integrity::IntegrityKind,
};

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error)
    ]
}

proptest! {
    #[test]
    fn messages_round_trip(
        class in class(),
        method in 0_u16..0x1000,
        tid in any::<[u8; 12]>(),
        attrs in prop::collection::vec((0_u16..0x7FFF, prop::collection::vec(any::<u8>(), 0..64)), 0..8),
        integrity in prop::option::of(prop_oneof![Just(IntegrityKind::Sha1), Just(IntegrityKind::Sha256)]),
        fingerprint in any::<bool>(),
    ) {
        // Attribute types that the decoder treats specially are left out of the random set.
        let attrs: Vec<_> = attrs.into_iter().filter(|(t, _)| ![0x0008, 0x001C].contains(t)).collect();
        let mut b = MessageBuilder::new(class, Method(method), tid);
        for (t, v) in &attrs {
            b.add(*t, v);
        }
        if let Some(kind) = integrity {
            b.add_integrity(kind, b"key");
        }
        if fingerprint {
            b.add_fingerprint();
        }
        let bytes = b.build();
        let msg = Message::decode(&bytes).unwrap();
        prop_assert_eq!(msg.class(), class);
        prop_assert_eq!(msg.method(), Method(method));
        prop_assert_eq!(msg.transaction_id(), tid);
        for (t, v) in &attrs {
            let first = attrs.iter().find(|(t2, _)| t2 == t).unwrap();
            prop_assert_eq!(msg.get(*t), Some(&first.1[..]));
            prop_assert!(msg.all(*t).any(|x| x == &v[..]));
        }
        prop_assert_eq!(msg.verify_fingerprint(), fingerprint.then_some(true));
        if let Some(kind) = integrity {
            prop_assert_eq!(msg.verify_integrity(b"key"), Ok(kind));
        }
    }

    #[test]
    fn xor_addresses_round_trip(addr in socket_addr(), tid in any::<[u8; 12]>()) {
        prop_assert_eq!(decode_xor_address(&encode_xor_address(addr, &tid), &tid), Ok(addr));
    }

    #[test]
    fn channel_data_round_trips(channel in CHANNEL_MIN..=CHANNEL_MAX, data in prop::collection::vec(any::<u8>(), 0..1500), pad in any::<bool>()) {
        let bytes = ChannelData { channel, data: &data }.encode(pad);
        prop_assert_eq!(ChannelData::decode(&bytes), Ok(ChannelData { channel, data: &data }));
        prop_assert_eq!(bytes.len().is_multiple_of(4) || !pad, true);
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(msg) = Message::decode(&bytes) {
            let _ = msg.verify_fingerprint();
            let _ = msg.verify_integrity(b"key");
            for t in msg.attribute_types().collect::<Vec<_>>() {
                let _ = msg.get(t);
            }
        }
        let _ = ChannelData::decode(&bytes);
    }

    #[test]
    fn stun_headers_with_random_bodies_never_panic(
        class in class(), tid in any::<[u8; 12]>(), body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        // A valid header and garbage attributes: the interesting part of the input space.
        let mut bytes = MessageBuilder::new(class, Method::ALLOCATE, tid).build();
        bytes[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        if let Ok(msg) = Message::decode(&bytes) {
            let _ = msg.verify_integrity(b"key");
            let _ = msg.verify_fingerprint();
        }
    }
}
