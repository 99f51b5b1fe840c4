//! Any bytes into the ChannelData decoder; what decodes must re-encode to a prefix of the
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::stun::{ChannelData, channel_data};

fuzz_target!(|data: &[u8]| {
    if let Ok(cd) = ChannelData::decode(data) {
        let again = cd.encode(false);
        assert_eq!(&data[..again.len()], &again[..]);
    }
    let _ = channel_data::framed_len(data);
});
