//! G.711 mu-law (PCMU) and A-law (PCMA) to and from 16-bit linear PCM,
//! bit-exact with the ITU-T G.191 reference (`g711.c`: `ulaw_expand`,
//! `ulaw_compress`, `alaw_expand`, `alaw_compress`).
//!
//! Slice functions for the hot path ([`decode_ulaw`], [`encode_ulaw`],
//! [`decode_alaw`], [`encode_alaw`]) and scalar ones for everything else.
//! Every direction is one lookup in a table that the compiler computes from
//! the G.191 algorithm (the `const fn`s at the bottom of this file); no table
//! is typed in by hand. No allocation, no panics, no state.
//!
//! `docs/g711.md` says how the tables are proven against ffmpeg and sox at
//! test time, why mu-law `0x7F` does not survive a round trip, and where
//! ffmpeg's encoder departs from G.711.

/// The mu-law code of linear 0 (positive zero), what silence encodes to.
pub const ULAW_SILENCE: u8 = 0xFF;

/// The A-law code of linear 0 (it decodes to +8, the smallest level).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Decodes mu-law `src` into `dst`; returns the samples written,
/// `min(src.len(), dst.len())`. Samples past that in `dst` are untouched.
#[inline]
pub fn decode_ulaw(src: &[u8], dst: &mut [i16]) -> usize {
    map_slice(src, dst, ulaw_to_linear)
}

/// Decodes A-law `src` into `dst`; returns the samples written,
/// `min(src.len(), dst.len())`. Samples past that in `dst` are untouched.
#[inline]
pub fn decode_alaw(src: &[u8], dst: &mut [i16]) -> usize {
    map_slice(src, dst, alaw_to_linear)
}

/// Encodes `src` to mu-law in `dst`; returns the bytes written,
/// `min(src.len(), dst.len())`. Bytes past that in `dst` are untouched.
#[inline]
pub fn encode_ulaw(src: &[i16], dst: &mut [u8]) -> usize {
    map_slice(src, dst, linear_to_ulaw)
}

/// Encodes `src` to A-law in `dst`; returns the bytes written,
/// `min(src.len(), dst.len())`. Bytes past that in `dst` are untouched.
#[inline]
pub fn encode_alaw(src: &[i16], dst: &mut [u8]) -> usize {
    map_slice(src, dst, linear_to_alaw)
}

/// The linear value of a mu-law code: -32124..=32124, 0 for both `0x7F` and
/// `0xFF`.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

/// The linear value of an A-law code: -32256..=32256, never 0.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// The mu-law code of a linear sample. Only the top 14 bits count; negative
/// samples take their magnitude in one's complement as G.191 does, so -1..=-4
/// encode as `0x7F` (negative zero).
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    // The top 14 bits as an unsigned index: 0..8192 for x >= 0, 8192.. below.
    LINEAR_TO_ULAW[usize::from(sample.cast_unsigned() >> 2)]
}

/// The A-law code of a linear sample. Only the top 12 bits count: A-law is a
/// 13-bit law (sign and 12 magnitude bits), and G.191 takes the magnitude of
/// a negative sample in one's complement, `!x >> 4`, which is `!(x >> 4)`.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    LINEAR_TO_ALAW[usize::from(sample.cast_unsigned() >> 4)]
}

/// Writes `f(src[i])` to `dst[i]` for the common prefix, eight at a time so
/// the compiler unrolls the loop without bounds checks.
#[inline(always)]
fn map_slice<S: Copy, D>(src: &[S], dst: &mut [D], f: impl Fn(S) -> D) -> usize {
    let n = src.len().min(dst.len());
    let (src_blocks, src_rest) = src[..n].as_chunks::<8>();
    let (dst_blocks, dst_rest) = dst[..n].as_chunks_mut::<8>();
    for (s, d) in src_blocks.iter().zip(dst_blocks) {
        for (out, &x) in d.iter_mut().zip(s) {
            *out = f(x);
        }
    }
    for (out, &x) in dst_rest.iter_mut().zip(src_rest) {
        *out = f(x);
    }
    n
}

/// `[f(0), f(1), ..]` of the given length, evaluated at compile time (a
/// `const fn` cannot call through a function pointer, hence a macro).
macro_rules! const_table {
    ($len:expr, |$i:ident| $value:expr) => {{
        let mut table = [0; $len];
        let mut $i = 0;
        while $i < $len {
            table[$i] = $value;
            $i += 1;
        }
        table
    }};
}

/// Decoded value by code.
static ULAW_TO_LINEAR: [i16; 256] = const_table!(256, |i| ulaw_expand(i as u8));

/// Decoded value by code.
static ALAW_TO_LINEAR: [i16; 256] = const_table!(256, |i| alaw_expand(i as u8));

/// Code by `sample >> 2` read as unsigned 14 bits (16 KiB).
static LINEAR_TO_ULAW: [u8; 1 << 14] =
    const_table!(1 << 14, |i| ulaw_compress(((i as u16) << 2).cast_signed()));

/// Code by `sample >> 4` read as unsigned 12 bits (4 KiB).
static LINEAR_TO_ALAW: [u8; 1 << 12] =
    const_table!(1 << 12, |i| alaw_compress(((i as u16) << 4).cast_signed()));

/// G.191 `ulaw_expand`. Its output is "14 bits left-justified", that is on
/// the 16-bit scale already: ±32124 at the ends, 0 for both zero codes.
const fn ulaw_expand(code: u8) -> i16 {
    // Codes go on the wire inverted; the sign bit is set for positive values.
    let inverted = !code;
    let exponent = (inverted >> 4) & 0x07;
    let mantissa = (inverted & 0x0F) as i16;
    // One quantisation step of this segment (segment = exponent + 1).
    let step: i16 = 4 << (exponent + 1);
    // The segment's leading one, the mantissa, half a step to land in the
    // middle of the interval, minus the bias of 33 (in 14-bit units).
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    if code & 0x80 == 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// G.191 `alaw_expand`: 13 bits left-justified, ±8..=±32256.
const fn alaw_expand(code: u8) -> i16 {
    // Even bits go on the wire toggled; the sign bit is set for positive.
    let toggled = (code ^ 0x55) & 0x7F;
    let exponent = toggled >> 4;
    let mut mantissa = (toggled & 0x0F) as i16;
    if exponent > 0 {
        mantissa += 0x10; // the segment's leading one
    }
    mantissa = (mantissa << 4) + 0x08; // plus half a quantisation step
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    if code & 0x80 == 0 {
        -mantissa
    } else {
        mantissa
    }
}

/// G.191 `ulaw_compress`: truncates within the segment, so every input maps
/// to the level whose G.711 decision interval contains it.
const fn ulaw_compress(sample: i16) -> u8 {
    // One's complement for negative samples: -1 and 0 both have magnitude 0
    // and the quantiser is symmetric about -1/2.
    let magnitude = if sample < 0 { !sample } else { sample }.cast_unsigned();
    // 14-bit magnitude plus the bias 33, limited to 13 bits.
    let biased = if (magnitude >> 2) + 33 > 0x1FFF {
        0x1FFF
    } else {
        (magnitude >> 2) + 33
    };
    // Segment 1 for 33..=63 (leading one at bit 5) up to 8 for 4096..=8191.
    let segment = 16 - biased.leading_zeros() as u16 - 5;
    let high = 8 - segment;
    let low = 0x0F - ((biased >> segment) & 0x0F);
    let code = ((high << 4) | low) as u8;
    if sample >= 0 { code | 0x80 } else { code }
}

/// G.191 `alaw_compress`: 12-bit magnitude, truncated within the segment.
const fn alaw_compress(sample: i16) -> u8 {
    // One's complement for negative samples, as for mu-law.
    let magnitude = if sample < 0 { !sample } else { sample }.cast_unsigned();
    let mut code = magnitude >> 4; // 0..=2047
    if code > 0x0F {
        // Exponent 1 for 16..=31 (leading one at bit 4) up to 7 for 1024..;
        // the leading one itself is implied.
        let exponent = 16 - code.leading_zeros() as u16 - 4;
        code = (exponent << 4) | ((code >> (exponent - 1)) & 0x0F);
    }
    if sample >= 0 {
        code |= 0x80;
    }
    (code ^ 0x55) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every i16, in order.
    fn all_samples() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    /// The quantisation step (16-bit scale) of the segment a code is in.
    fn ulaw_step(code: u8) -> i32 {
        8 << ((!code >> 4) & 0x07)
    }

    fn alaw_step(code: u8) -> i32 {
        16 << (((code ^ 0x55) >> 4) & 0x07).saturating_sub(1)
    }

    #[test]
    fn end_and_zero_codes_decode_to_g711_values() {
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(ULAW_SILENCE), 0);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(ALAW_SILENCE), 8);
        assert_eq!(linear_to_ulaw(0), ULAW_SILENCE);
        assert_eq!(linear_to_alaw(0), ALAW_SILENCE);
    }

    #[test]
    fn every_code_round_trips_except_ulaw_negative_zero() {
        for code in 0..=u8::MAX {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            if code == 0x7F {
                assert_eq!(back, ULAW_SILENCE, "mu-law negative zero");
            } else {
                assert_eq!(back, code, "mu-law {code:#04x}");
            }
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn decode_increases_in_code_order() {
        // mu-law: 0x00 (most negative) up to 0x7F (-0), then 0xFF (+0) down
        // to 0x80 (most positive). Only the two zeros tie.
        let ulaw: Vec<u8> = (0x00..=0x7F).chain((0x80..=0xFF).rev()).collect();
        for pair in ulaw.windows(2) {
            let (lo, hi) = (ulaw_to_linear(pair[0]), ulaw_to_linear(pair[1]));
            if pair == [0x7F, 0xFF] {
                assert_eq!((lo, hi), (0, 0));
            } else {
                assert!(lo < hi, "mu-law {pair:02x?}: {lo} !< {hi}");
            }
        }
        // A-law: sign bit, then a magnitude index, with the even bits
        // toggled.
        let alaw: Vec<u8> = (0x00..=0x7F)
            .rev()
            .chain(0x80..=0xFF)
            .map(|i| i ^ 0x55)
            .collect();
        for pair in alaw.windows(2) {
            let (lo, hi) = (alaw_to_linear(pair[0]), alaw_to_linear(pair[1]));
            assert!(lo < hi, "A-law {pair:02x?}: {lo} !< {hi}");
        }
    }

    /// G.711's decision rule: a non-negative sample encodes to the level
    /// whose interval [level - step/2, level + step/2) holds it (the zero
    /// code's interval is [0, 4), the top code's runs to i16::MAX). At a
    /// segment boundary the interval is not the midpoint between neighbours.
    #[test]
    fn encode_picks_the_g711_decision_interval() {
        for x in 0..=i16::MAX {
            let x32 = i32::from(x);

            let code = linear_to_ulaw(x);
            let level = i32::from(ulaw_to_linear(code));
            let half = ulaw_step(code) / 2;
            let lower = if code == ULAW_SILENCE {
                0
            } else {
                level - half
            };
            let upper = if code == 0x80 { 1 << 15 } else { level + half };
            assert!(
                (lower..upper).contains(&x32),
                "mu-law {x} -> {code:#04x} ({level})"
            );

            let code = linear_to_alaw(x);
            let level = i32::from(alaw_to_linear(code));
            let half = alaw_step(code) / 2;
            let upper = if code == 0xAA { 1 << 15 } else { level + half };
            assert!(
                (level - half..upper).contains(&x32),
                "A-law {x} -> {code:#04x} ({level})"
            );
        }
    }

    /// Negative samples mirror the one's complement (`!x == -x - 1`).
    #[test]
    fn encode_is_symmetric_in_ones_complement() {
        for x in all_samples() {
            assert_eq!(linear_to_ulaw(x), linear_to_ulaw(!x) ^ 0x80, "mu-law {x}");
            assert_eq!(linear_to_alaw(x), linear_to_alaw(!x) ^ 0x80, "A-law {x}");
        }
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(-4), 0x7F);
        assert_eq!(linear_to_ulaw(-5), 0x7E);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    /// The tables are indexed right: they agree with the algorithm they were
    /// built from for every sample, not only the ones the build visited.
    #[test]
    fn encode_tables_match_the_g191_algorithm_everywhere() {
        let samples: Vec<i16> = all_samples().collect();
        let mut ulaw = vec![0u8; samples.len()];
        let mut alaw = vec![0u8; samples.len()];
        assert_eq!(encode_ulaw(&samples, &mut ulaw), samples.len());
        assert_eq!(encode_alaw(&samples, &mut alaw), samples.len());
        for ((&x, &u), &a) in samples.iter().zip(&ulaw).zip(&alaw) {
            assert_eq!(u, ulaw_compress(x), "mu-law {x}");
            assert_eq!(a, alaw_compress(x), "A-law {x}");
        }
    }

    #[test]
    fn slices_of_every_small_length_match_the_scalars() {
        let codes: Vec<u8> = (0..=u8::MAX).rev().collect();
        for len in 0..=codes.len().min(41) {
            let src = &codes[..len];
            let mut out = vec![7i16; len + 3];
            assert_eq!(decode_ulaw(src, &mut out), len);
            assert!(
                out[..len]
                    .iter()
                    .zip(src)
                    .all(|(&s, &c)| s == ulaw_to_linear(c))
            );
            assert_eq!(out[len..], [7, 7, 7], "past the count is untouched");
            assert_eq!(decode_alaw(src, &mut out), len);
            assert!(
                out[..len]
                    .iter()
                    .zip(src)
                    .all(|(&s, &c)| s == alaw_to_linear(c))
            );

            let samples = &out[..len];
            let mut bytes = vec![0x42u8; len + 1];
            assert_eq!(encode_ulaw(samples, &mut bytes), len);
            assert!(
                bytes[..len]
                    .iter()
                    .zip(samples)
                    .all(|(&c, &s)| c == linear_to_ulaw(s))
            );
            assert_eq!(encode_alaw(samples, &mut bytes), len);
            assert_eq!(bytes[..len], *src, "A-law round trip");
            assert_eq!(bytes[len], 0x42);
        }
    }

    #[test]
    fn short_dst_bounds_the_count() {
        let mut three = [0i16; 3];
        assert_eq!(decode_ulaw(&[0x00, 0x80, 0xFF, 0x7F, 0x01], &mut three), 3);
        assert_eq!(three, [-32124, 32124, 0]);
        assert_eq!(decode_alaw(&[0xD5], &mut three), 1);
        assert_eq!(three, [8, 32124, 0]);
        let mut two = [0u8; 2];
        assert_eq!(encode_ulaw(&[0, 1, 2, 3, 4], &mut two), 2);
        assert_eq!(encode_alaw(&[-1; 9], &mut two), 2);
        assert_eq!(two, [0x55, 0x55]);
        assert_eq!(encode_ulaw(&[], &mut two), 0);
        assert_eq!(decode_alaw(&[1, 2], &mut []), 0);
    }

    proptest! {
        #[test]
        fn bytes_survive_decode_then_encode(codes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut linear = vec![0i16; codes.len()];
            let mut back = vec![0u8; codes.len()];

            prop_assert_eq!(decode_ulaw(&codes, &mut linear), codes.len());
            prop_assert_eq!(encode_ulaw(&linear, &mut back), codes.len());
            let expected: Vec<u8> =
                codes.iter().map(|&c| if c == 0x7F { ULAW_SILENCE } else { c }).collect();
            prop_assert_eq!(&back, &expected);

            prop_assert_eq!(decode_alaw(&codes, &mut linear), codes.len());
            prop_assert_eq!(encode_alaw(&linear, &mut back), codes.len());
            prop_assert_eq!(&back, &codes);
        }

        #[test]
        fn encoding_is_idempotent(samples in proptest::collection::vec(any::<i16>(), 0..500)) {
            for &x in &samples {
                let u = linear_to_ulaw(x);
                let a = linear_to_alaw(x);
                // -0 decodes to 0, which is +0: the only code that moves.
                let u_again = linear_to_ulaw(ulaw_to_linear(u));
                prop_assert_eq!(u_again, if u == 0x7F { ULAW_SILENCE } else { u });
                prop_assert_eq!(linear_to_alaw(alaw_to_linear(a)), a);
            }
        }
    }
}
