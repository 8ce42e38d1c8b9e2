//! 16-bit linear PCM in network byte order (RTP L16, Asterisk `slin16`).

/// Decodes big-endian samples from `src` into `dst`; returns the samples
/// written, `min(src.len() / 2, dst.len())`. A trailing odd byte is ignored.
#[inline]
pub fn decode_be(src: &[u8], dst: &mut [i16]) -> usize {
    let n = (src.len() / 2).min(dst.len());
    for (pair, out) in src.chunks_exact(2).zip(dst[..n].iter_mut()) {
        *out = i16::from_be_bytes([pair[0], pair[1]]);
    }
    n
}

/// Encodes `src` into big-endian bytes in `dst`; returns the bytes written,
/// `2 * min(src.len(), dst.len() / 2)`.
#[inline]
pub fn encode_be(src: &[i16], dst: &mut [u8]) -> usize {
    let n = src.len().min(dst.len() / 2);
    for (sample, pair) in src[..n].iter().zip(dst.chunks_exact_mut(2)) {
        pair.copy_from_slice(&sample.to_be_bytes());
    }
    n * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(samples in proptest::collection::vec(any::<i16>(), 0..400)) {
            let mut bytes = vec![0u8; samples.len() * 2];
            prop_assert_eq!(encode_be(&samples, &mut bytes), samples.len() * 2);
            let mut back = vec![0i16; samples.len()];
            prop_assert_eq!(decode_be(&bytes, &mut back), samples.len());
            prop_assert_eq!(back, samples);
        }
    }

    #[test]
    fn short_buffers_bound_the_count() {
        let mut dst = [0i16; 1];
        assert_eq!(decode_be(&[0, 1, 0, 2, 9], &mut dst), 1);
        assert_eq!(dst, [1]);
        let mut out = [0u8; 3];
        assert_eq!(encode_be(&[1, 2], &mut out), 2);
    }
}
