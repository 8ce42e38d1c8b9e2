//! G.711 (being written)
pub fn decode_ulaw(_s: &[u8], _d: &mut [i16]) -> usize { 0 }
pub fn decode_alaw(_s: &[u8], _d: &mut [i16]) -> usize { 0 }
pub fn encode_ulaw(_s: &[i16], _d: &mut [u8]) -> usize { 0 }
pub fn encode_alaw(_s: &[i16], _d: &mut [u8]) -> usize { 0 }
