//! The codecs mediagw carries between Asterisk and consumers.
//!
//! Asterisk's `externalMedia` sends `ulaw` (PT 0), `alaw` (PT 8) or `slin16`
//! (16-bit linear, big-endian, 16 kHz; Asterisk uses dynamic PT 118, see
//! `../shared/asterisk/transcripts/ami-inbound-slin16`).

use std::fmt;
use std::str::FromStr;

use crate::units::ClockRate;
use crate::{g711, l16};

/// An audio codec on an RTP stream.
///
/// In JSON (the control protocol) it is `"PCMU"`, `"PCMA"` or `"slin16"`;
/// deserializing also accepts the [`FromStr`] aliases (`ulaw`, `alaw`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    /// G.711 mu-law, 8 kHz, static payload type 0.
    #[serde(
        rename = "PCMU",
        alias = "pcmu",
        alias = "ulaw",
        alias = "mulaw",
        alias = "g711u"
    )]
    Pcmu,
    /// G.711 A-law, 8 kHz, static payload type 8.
    #[serde(rename = "PCMA", alias = "pcma", alias = "alaw", alias = "g711a")]
    Pcma,
    /// 16-bit linear PCM, big-endian (network order), 16 kHz.
    #[serde(
        rename = "slin16",
        alias = "SLIN16",
        alias = "l16",
        alias = "L16",
        alias = "l16/16000",
        alias = "L16/16000"
    )]
    Slin16,
}

impl Codec {
    /// Every codec, for iteration in tests and listings.
    pub const ALL: [Self; 3] = [Self::Pcmu, Self::Pcma, Self::Slin16];

    /// The payload type Asterisk uses for this codec by default.
    pub const fn default_payload_type(self) -> u8 {
        match self {
            Self::Pcmu => 0,
            Self::Pcma => 8,
            Self::Slin16 => 118,
        }
    }

    /// The RTP clock rate.
    pub const fn clock_rate(self) -> ClockRate {
        match self {
            Self::Pcmu | Self::Pcma => ClockRate::NARROWBAND,
            Self::Slin16 => ClockRate::WIDEBAND,
        }
    }

    /// Bytes of payload per sample.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Self::Pcmu | Self::Pcma => 1,
            Self::Slin16 => 2,
        }
    }

    /// The name Asterisk uses in `externalMedia`'s `format` parameter.
    pub const fn asterisk_format(self) -> &'static str {
        match self {
            Self::Pcmu => "ulaw",
            Self::Pcma => "alaw",
            Self::Slin16 => "slin16",
        }
    }

    /// Decodes `payload` into `out`, returning the samples written:
    /// `min(payload.len() / bytes_per_sample, out.len())`.
    #[inline]
    pub fn decode(self, payload: &[u8], out: &mut [i16]) -> usize {
        match self {
            Self::Pcmu => g711::decode_ulaw(payload, out),
            Self::Pcma => g711::decode_alaw(payload, out),
            Self::Slin16 => l16::decode_be(payload, out),
        }
    }

    /// Encodes `samples` into `out`, returning the bytes written.
    #[inline]
    pub fn encode(self, samples: &[i16], out: &mut [u8]) -> usize {
        match self {
            Self::Pcmu => g711::encode_ulaw(samples, out),
            Self::Pcma => g711::encode_alaw(samples, out),
            Self::Slin16 => l16::encode_be(samples, out),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::Slin16 => "slin16",
        })
    }
}

/// A codec name that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCodec(pub String);

impl fmt::Display for UnknownCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown codec {:?} (expected PCMU, PCMA or slin16)",
            self.0
        )
    }
}

impl std::error::Error for UnknownCodec {}

impl FromStr for Codec {
    type Err = UnknownCodec;

    /// Accepts the SDP names (PCMU, PCMA) and Asterisk's (ulaw, alaw, slin16),
    /// in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pcmu" | "ulaw" | "mulaw" | "g711u" => Ok(Self::Pcmu),
            "pcma" | "alaw" | "g711a" => Ok(Self::Pcma),
            "slin16" | "l16" | "l16/16000" => Ok(Self::Slin16),
            _ => Err(UnknownCodec(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Codec::ALL {
            assert_eq!(c.asterisk_format().parse::<Codec>(), Ok(c));
            assert_eq!(c.to_string().parse::<Codec>(), Ok(c));
        }
        assert!("opus".parse::<Codec>().is_err());
    }

    #[test]
    fn slin16_is_big_endian_at_16k() {
        let mut out = [0i16; 2];
        assert_eq!(Codec::Slin16.decode(&[0x12, 0x34, 0xff, 0xfe], &mut out), 2);
        assert_eq!(out, [0x1234, -2]);
        assert_eq!(Codec::Slin16.clock_rate(), ClockRate(16_000));
        let mut bytes = [0u8; 4];
        assert_eq!(Codec::Slin16.encode(&out, &mut bytes), 4);
        assert_eq!(bytes, [0x12, 0x34, 0xff, 0xfe]);
    }
}
