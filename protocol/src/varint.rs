//! LEB128 variable-length integers (unsigned) and zigzag for signed values.
//!
//! Decoding is defensive: it reads through a cursor that never indexes out of bounds and
//! rejects encodings longer than the type allows, so a hostile batch yields an error,
//! never a panic.

/// Largest number of bytes a u64 takes.
pub const U64_LEN_MAX: usize = 10;

/// Appends `value` as LEB128.
#[inline]
pub fn put_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `value` takes as LEB128.
#[inline]
pub fn len_u64(value: u64) -> usize {
    // 1 + floor(bits_used - 1) / 7, with 0 taking one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads a LEB128 u64 from the front of `buf`; returns the value and the bytes consumed,
/// or `None` when `buf` ends early or the encoding overflows 64 bits.
#[inline(always)]
pub fn get_u64(buf: &[u8]) -> Option<(u64, usize)> {
    // Most varints in a batch (deltas, counts, short lengths) are below 128: one byte.
    // Record and value lengths of 128 B to 16 KiB take two: read without the loop too
    // (a 200 B–1 KiB record has two of them).
    match *buf {
        [b, ..] if b < 0x80 => return Some((u64::from(b), 1)),
        [b, c, ..] if c < 0x80 => return Some((u64::from(b & 0x7f) | u64::from(c) << 7, 2)),
        _ => {}
    }
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(U64_LEN_MAX).enumerate() {
        let low = u64::from(byte & 0x7f);
        if i == U64_LEN_MAX - 1 && byte > 1 {
            return None;
        }
        value |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The general loop alone, as a reference.
    fn get_u64_by_loop(buf: &[u8]) -> Option<(u64, usize)> {
        let mut value: u64 = 0;
        for (i, &byte) in buf.iter().take(U64_LEN_MAX).enumerate() {
            if i == U64_LEN_MAX - 1 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((value, i + 1));
            }
        }
        None
    }

    proptest! {
        #[test]
        fn round_trips(v in any::<u64>()) {
            let mut out = Vec::new();
            put_u64(&mut out, v);
            prop_assert_eq!(out.len(), len_u64(v));
            prop_assert_eq!(get_u64(&out), Some((v, out.len())));
        }

        #[test]
        fn the_short_paths_read_what_the_loop_reads(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            // Any input, canonical or not: the one- and two-byte paths agree with the
            // general loop.
            prop_assert_eq!(get_u64(&bytes), get_u64_by_loop(&bytes));
        }

        #[test]
        fn zigzag_round_trips(v in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = get_u64(&bytes);
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        assert_eq!(get_u64(&[0x80, 0x80]), None);
        assert_eq!(get_u64(&[0xff; 11]), None);
        let mut max = Vec::new();
        put_u64(&mut max, u64::MAX);
        assert_eq!(max.len(), 10);
        let mut overflow = max.clone();
        overflow[9] = 0x02;
        assert_eq!(get_u64(&overflow), None);
    }
}
