//! Any bytes into the STUN decoder and everything that reads a decoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::stun::{Message, attr};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let _ = msg.verify_fingerprint();
        let _ = msg.verify_integrity(b"key");
        let tid = msg.transaction_id();
        for t in msg.attribute_types().collect::<Vec<_>>() {
            for value in msg.all(t) {
                let _ = attr::decode_xor_address(value, &tid);
                let _ = attr::decode_error_code(value);
                let _ = attr::decode_u32(value);
                let _ = attr::decode_channel_number(value);
                let _ = attr::decode_family(value);
            }
        }
        let _ = attr::unknown_required(&msg);
    }
});
