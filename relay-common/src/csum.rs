#![expect(
    clippy::inline_always,
    reason = "inlined into the XDP program in the kernel"
)]
//! Internet checksum arithmetic (RFC 1071) and its incremental update (RFC 1624), shared by
//! the XDP program and the host, where it is tested against full recomputation.

/// Adds the 16-bit big-endian words of `bytes` (even length) to a 32-bit running sum.
#[inline(always)]
pub fn add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Subtracts the words of `bytes` from a running sum: adds their one's complements.
#[inline(always)]
pub fn sub<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Folds the carries of a running sum into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}

/// The checksum (complemented folded sum) of a running sum started at zero.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// RFC 1624 eqn. 3: a checksum field is updated as HC' = ~(~HC + ~m + m'). `delta` is the
/// running sum of ~m (via [`sub`]) and m' (via [`add`]) for every word that changed.
#[inline(always)]
pub const fn update(old: u16, delta: u32) -> u16 {
    !fold((!old) as u32 + delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 over a whole buffer, the slow and obvious way.
    fn full(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in bytes.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from(chunk[0]) << 8
            };
            sum += u32::from(word);
        }
        finish(sum)
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3: 0x0001 f203 f4f5 f6f7 sums to 0xddf2 (before complement).
        assert_eq!(
            fold(add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])),
            0xddf2
        );
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let mut data = [0_u8; 64];
        let mut seed = 0x1234_5678_u32;
        for round in 0..1000 {
            for b in &mut data {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            let old = full(&data);
            // Replace an 8-byte aligned window, as an address rewrite does.
            let at = (round % 7) * 8;
            let before: [u8; 8] = data[at..at + 8].try_into().unwrap();
            let after: [u8; 8] = (seed ^ 0xA5A5_5A5A)
                .to_be_bytes()
                .repeat(2)
                .try_into()
                .unwrap();
            data[at..at + 8].copy_from_slice(&after);
            let delta = add(sub(0, &before), &after);
            let got = update(old, delta);
            // One's complement has two zeros: compare as the sums they stand for.
            assert!(
                got == full(&data)
                    || (got == 0xFFFF && full(&data) == 0)
                    || (got == 0 && full(&data) == 0xFFFF),
                "round {round}"
            );
        }
    }
}
