//! The media socket's binary framing, version 1. Never JSON.
//!
//! A Unix stream socket beside the control socket. Clients subscribe to an
//! endpoint's decoded audio and receive 20 ms PCM16 frames; they play audio
//! back into the call the same way. `docs/control-protocol.md` draws the
//! layout; in short, every message is a 12-byte header and a body, every
//! integer and every sample **little-endian** (both ends share one host; PCM16
//! little-endian is what WAV files and speech engines take as is):
//!
//! ```text
//! offset  size  field
//!      0     2  magic "MG" (0x4d 0x47)
//!      2     1  version (1)
//!      3     1  kind (0x01.. client to server, 0x81.. server to client)
//!      4     2  flags (per kind)
//!      6     2  reserved, 0 (ignored when read)
//!      8     4  body length in bytes, at most MAX_BODY_LEN
//!     12     -  body, starting with the endpoint id (u64)
//! ```
//!
//! Sans-IO and allocation-free on the hot path: [`MediaMessage::encode_into`]
//! writes into the caller's buffer; [`MediaDecoder`] is fed bytes and lends
//! messages whose [`Samples`] borrow its buffer.

use std::fmt;

use crate::ids::EndpointId;
use crate::units::ClockRate;

/// The first two bytes of every message: `"MG"`.
pub const MAGIC: [u8; 2] = *b"MG";
/// The framing version.
pub const VERSION: u8 = 1;
/// Header bytes before the body.
pub const HEADER_LEN: usize = 12;
/// The most samples in one `Play` or `Frame`: 20 ms at 48 kHz.
pub const MAX_SAMPLES: usize = 960;
/// The fixed part of a `Play` or `Frame` body, before the samples.
pub const AUDIO_FIXED_LEN: usize = 24;
/// The largest body a reader accepts.
pub const MAX_BODY_LEN: usize = AUDIO_FIXED_LEN + 2 * MAX_SAMPLES;
/// The largest message: a buffer this big holds any message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

/// The message kinds this version knows. Kinds below 0x80 go from client to
/// server, the others from server to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MediaKind {
    /// Client: send me this endpoint's audio.
    Subscribe = 0x01,
    /// Client: stop sending it.
    Unsubscribe = 0x02,
    /// Client: play this frame into the call.
    Play = 0x03,
    /// Server: a frame of the call's audio.
    Frame = 0x81,
    /// Server: a request succeeded.
    Ack = 0x82,
    /// Server: a request failed.
    Error = 0x83,
    /// Server: frames were dropped because this subscriber was slow.
    Dropped = 0x84,
}

/// A decoded (or to be encoded) message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMessage<'a> {
    /// Kind 0x01.
    Subscribe(Subscribe),
    /// Kind 0x02.
    Unsubscribe(Unsubscribe),
    /// Kind 0x03.
    Play(Play<'a>),
    /// Kind 0x81.
    Frame(Frame<'a>),
    /// Kind 0x82.
    Ack(Ack),
    /// Kind 0x83.
    Error(ErrorReply),
    /// Kind 0x84.
    Dropped(Dropped),
    /// A kind this version does not know, framed correctly: skip it (a
    /// server answers [`MediaErrorCode::UNKNOWN_KIND`]).
    Unknown(Unknown<'a>),
}

/// Subscribe to an endpoint's audio. Body: endpoint u64, format u8, 3 bytes
/// reserved (12 bytes). Answered with [`Ack`] or [`ErrorReply`]; frames
/// follow the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// The sample format wanted.
    pub format: MediaFormat,
}

/// Stop an endpoint's audio. Body: endpoint u64 (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The endpoint.
    pub endpoint: EndpointId,
}

/// A frame to play into the call. Body: endpoint u64, seq u64, reserved u32,
/// sample rate u32, samples i16 (24 + 2n bytes). Not acknowledged; refused
/// with [`ErrorReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Play<'a> {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// The client's frame counter, +1 per frame.
    pub seq: u64,
    /// Header flags.
    pub flags: PlayFlags,
    /// Must be the endpoint codec's rate (8000 or 16000).
    pub sample_rate: ClockRate,
    /// 20 ms of PCM16, mono.
    pub samples: Samples<'a>,
}

/// A frame of the call's audio. Body: endpoint u64, seq u64, media_ts u32,
/// sample rate u32, samples i16 (24 + 2n bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// The endpoint's frame counter, +1 per frame played out (a gap means
    /// frames were dropped for this subscriber, see [`Dropped`]).
    pub seq: u64,
    /// The RTP timestamp of the frame's first sample.
    pub media_ts: u32,
    /// Header flags.
    pub flags: FrameFlags,
    /// The samples' rate.
    pub sample_rate: ClockRate,
    /// PCM16, mono; 20 ms unless [`FrameFlags::PARTIAL`].
    pub samples: Samples<'a>,
}

/// A request succeeded. Body: endpoint u64, request kind u8, 3 bytes
/// reserved (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The endpoint of the request.
    pub endpoint: EndpointId,
    /// The kind byte of the request acknowledged.
    pub request: u8,
}

/// A request failed. Body: endpoint u64, request kind u8, reserved u8, code
/// u16 (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReply {
    /// The endpoint of the request (0 when it could not be read).
    pub endpoint: EndpointId,
    /// The kind byte of the request refused.
    pub request: u8,
    /// Why.
    pub code: MediaErrorCode,
}

/// Frames dropped for a slow subscriber since the last `Dropped`. Body:
/// endpoint u64, count u64 (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Frames dropped.
    pub count: u64,
}

/// A message of a kind this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unknown<'a> {
    /// Its kind byte.
    pub kind: u8,
    /// Its header flags.
    pub flags: u16,
    /// Its body.
    pub body: &'a [u8],
}

/// A subscription's sample format. Unknown values are kept so that a server
/// can refuse them with [`MediaErrorCode::UNSUPPORTED_FORMAT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaFormat(pub u8);

/// Flags of a [`Frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameFlags(pub u16);

/// Flags of a [`Play`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PlayFlags(pub u16);

/// Why a request was refused. Unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaErrorCode(pub u16);

/// PCM16 samples: borrowed `i16`s when encoding, borrowed little-endian
/// bytes when decoded. Compares by value.
#[derive(Clone, Copy)]
pub struct Samples<'a>(SamplesRepr<'a>);

#[derive(Clone, Copy)]
enum SamplesRepr<'a> {
    Pcm(&'a [i16]),
    Le(&'a [u8]),
}

/// Iterator over [`Samples`].
#[derive(Debug, Clone)]
pub struct SamplesIter<'a> {
    samples: Samples<'a>,
    next: usize,
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// `out` is shorter than the message.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// More than [`MAX_SAMPLES`] samples, or an unknown kind's body over
    /// [`MAX_BODY_LEN`].
    TooLarge {
        /// The body length it would have.
        len: usize,
    },
}

/// Why bytes could not be decoded.
///
/// `BadMagic`, `UnsupportedVersion` and `Oversize` mean the stream is out of
/// step: the decoder then drops bytes until the next `"MG"` + version 1 with
/// a plausible length and goes on. `Truncated` and `OddSampleBytes` concern
/// one well-framed message, which is skipped. Servers close the connection
/// on the first of the former; the resync is for tools and tolerant readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first two bytes are not `"MG"`.
    BadMagic {
        /// What they were.
        found: [u8; 2],
    },
    /// A version other than [`VERSION`].
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// A body length over [`MAX_BODY_LEN`].
    Oversize {
        /// The length field.
        len: u32,
    },
    /// A body shorter than its kind's fixed part.
    Truncated {
        /// The kind.
        kind: MediaKind,
        /// The body length.
        len: usize,
        /// The fixed part's length.
        need: usize,
    },
    /// A `Play` or `Frame` whose samples are an odd number of bytes.
    OddSampleBytes {
        /// The kind.
        kind: MediaKind,
        /// The body length.
        len: usize,
    },
}

/// Splits a byte stream into [`MediaMessage`]s, sans-IO.
///
/// [`push`](Self::push) what the socket read, then call
/// [`next_message`](Self::next_message) until `None`. Holds at most one
/// partial message ([`MAX_MESSAGE_LEN`]) plus one read when drained after
/// every push. Never panics, whatever the bytes.
#[derive(Debug, Clone, Default)]
pub struct MediaDecoder {
    buf: Vec<u8>,
    start: usize,
    resyncing: bool,
    skipped: u64,
}

// ---------------------------------------------------------------------------
// Implementations
// ---------------------------------------------------------------------------

impl MediaKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Play,
        Self::Frame,
        Self::Ack,
        Self::Error,
        Self::Dropped,
    ];

    /// The kind for a kind byte, if this version knows it.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == byte)
    }

    /// Whether clients send it (kinds below 0x80).
    pub fn from_client(self) -> bool {
        (self as u8) < 0x80
    }

    /// The fixed length of its body (`Play` and `Frame` add samples).
    pub fn fixed_len(self) -> usize {
        match self {
            Self::Unsubscribe => 8,
            Self::Subscribe | Self::Ack | Self::Error => 12,
            Self::Dropped => 16,
            Self::Play | Self::Frame => AUDIO_FIXED_LEN,
        }
    }
}

impl<'a> MediaMessage<'a> {
    /// The kind byte.
    pub fn kind_byte(&self) -> u8 {
        match self {
            Self::Subscribe(_) => MediaKind::Subscribe as u8,
            Self::Unsubscribe(_) => MediaKind::Unsubscribe as u8,
            Self::Play(_) => MediaKind::Play as u8,
            Self::Frame(_) => MediaKind::Frame as u8,
            Self::Ack(_) => MediaKind::Ack as u8,
            Self::Error(_) => MediaKind::Error as u8,
            Self::Dropped(_) => MediaKind::Dropped as u8,
            Self::Unknown(u) => u.kind,
        }
    }

    /// The endpoint it concerns; `None` for [`MediaMessage::Unknown`].
    pub fn endpoint(&self) -> Option<EndpointId> {
        match self {
            Self::Subscribe(m) => Some(m.endpoint),
            Self::Unsubscribe(m) => Some(m.endpoint),
            Self::Play(m) => Some(m.endpoint),
            Self::Frame(m) => Some(m.endpoint),
            Self::Ack(m) => Some(m.endpoint),
            Self::Error(m) => Some(m.endpoint),
            Self::Dropped(m) => Some(m.endpoint),
            Self::Unknown(_) => None,
        }
    }

    /// The bytes [`encode_into`](Self::encode_into) writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Writes the message at the start of `out`, returning its length.
    /// Allocates nothing.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let body_len = self.body_len();
        if body_len > MAX_BODY_LEN {
            return Err(EncodeError::TooLarge { len: body_len });
        }
        let need = HEADER_LEN + body_len;
        let Some(out) = out.get_mut(..need) else {
            return Err(EncodeError::BufferTooSmall {
                need,
                have: out.len(),
            });
        };
        let flags = match self {
            Self::Play(m) => m.flags.0,
            Self::Frame(m) => m.flags.0,
            Self::Unknown(m) => m.flags,
            _ => 0,
        };
        let (header, body) = out.split_at_mut(HEADER_LEN);
        header[0..2].copy_from_slice(&MAGIC);
        header[2] = VERSION;
        header[3] = self.kind_byte();
        header[4..6].copy_from_slice(&flags.to_le_bytes());
        header[6..8].fill(0);
        // body_len <= MAX_BODY_LEN, checked above.
        header[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());

        let mut w = Writer { out: body, at: 0 };
        match self {
            Self::Subscribe(m) => {
                w.u64(m.endpoint.0);
                w.bytes(&[m.format.0, 0, 0, 0]);
            }
            Self::Unsubscribe(m) => w.u64(m.endpoint.0),
            Self::Play(m) => {
                w.u64(m.endpoint.0);
                w.u64(m.seq);
                w.u32(0);
                w.u32(m.sample_rate.0);
                w.samples(m.samples);
            }
            Self::Frame(m) => {
                w.u64(m.endpoint.0);
                w.u64(m.seq);
                w.u32(m.media_ts);
                w.u32(m.sample_rate.0);
                w.samples(m.samples);
            }
            Self::Ack(m) => {
                w.u64(m.endpoint.0);
                w.bytes(&[m.request, 0, 0, 0]);
            }
            Self::Error(m) => {
                w.u64(m.endpoint.0);
                w.bytes(&[m.request, 0]);
                w.bytes(&m.code.0.to_le_bytes());
            }
            Self::Dropped(m) => {
                w.u64(m.endpoint.0);
                w.u64(m.count);
            }
            Self::Unknown(m) => w.bytes(m.body),
        }
        Ok(need)
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Play(Play { samples, .. }) | Self::Frame(Frame { samples, .. }) => {
                AUDIO_FIXED_LEN + 2 * samples.len()
            }
            Self::Unknown(m) => m.body.len(),
            Self::Subscribe(_) => MediaKind::Subscribe.fixed_len(),
            Self::Unsubscribe(_) => MediaKind::Unsubscribe.fixed_len(),
            Self::Ack(_) => MediaKind::Ack.fixed_len(),
            Self::Error(_) => MediaKind::Error.fixed_len(),
            Self::Dropped(_) => MediaKind::Dropped.fixed_len(),
        }
    }

    /// Decodes a well-framed body.
    fn decode_body(kind_byte: u8, flags: u16, body: &'a [u8]) -> Result<Self, DecodeError> {
        let Some(kind) = MediaKind::from_byte(kind_byte) else {
            return Ok(Self::Unknown(Unknown {
                kind: kind_byte,
                flags,
                body,
            }));
        };
        let need = kind.fixed_len();
        if body.len() < need {
            return Err(DecodeError::Truncated {
                kind,
                len: body.len(),
                need,
            });
        }
        let mut r = Reader { body, at: 0 };
        let endpoint = EndpointId(r.u64());
        Ok(match kind {
            MediaKind::Subscribe => Self::Subscribe(Subscribe {
                endpoint,
                format: MediaFormat(r.u8()),
            }),
            MediaKind::Unsubscribe => Self::Unsubscribe(Unsubscribe { endpoint }),
            MediaKind::Play | MediaKind::Frame => {
                let seq = r.u64();
                let media_ts = r.u32();
                let sample_rate = ClockRate(r.u32());
                let Some(samples) = Samples::from_le_bytes(&body[AUDIO_FIXED_LEN..]) else {
                    return Err(DecodeError::OddSampleBytes {
                        kind,
                        len: body.len(),
                    });
                };
                if kind == MediaKind::Play {
                    Self::Play(Play {
                        endpoint,
                        seq,
                        flags: PlayFlags(flags),
                        sample_rate,
                        samples,
                    })
                } else {
                    Self::Frame(Frame {
                        endpoint,
                        seq,
                        media_ts,
                        flags: FrameFlags(flags),
                        sample_rate,
                        samples,
                    })
                }
            }
            MediaKind::Ack => Self::Ack(Ack {
                endpoint,
                request: r.u8(),
            }),
            MediaKind::Error => {
                let request = r.u8();
                let _reserved = r.u8();
                Self::Error(ErrorReply {
                    endpoint,
                    request,
                    code: MediaErrorCode(r.u16()),
                })
            }
            MediaKind::Dropped => Self::Dropped(Dropped {
                endpoint,
                count: r.u64(),
            }),
        })
    }
}

macro_rules! into_message {
    ($($ty:ident $(<$l:lifetime>)?),*) => {
        $(
            impl<'a> From<$ty $(<$l>)?> for MediaMessage<'a> {
                fn from(m: $ty $(<$l>)?) -> Self {
                    Self::$ty(m)
                }
            }
        )*
    };
}

into_message!(
    Subscribe,
    Unsubscribe,
    Play<'a>,
    Frame<'a>,
    Ack,
    Dropped,
    Unknown<'a>
);

impl From<ErrorReply> for MediaMessage<'_> {
    fn from(m: ErrorReply) -> Self {
        Self::Error(m)
    }
}

impl MediaFormat {
    /// 16-bit signed linear PCM, little-endian, mono, at the endpoint
    /// codec's rate (8 kHz for G.711, 16 kHz for slin16).
    pub const PCM16: Self = Self(1);
}

impl FrameFlags {
    /// The jitter buffer had no packet for this frame: the samples are
    /// concealment (comfort noise or repetition), not the caller's audio.
    pub const CONCEALED: Self = Self(0x0001);
    /// Fewer samples than 20 ms (the last frame of a stream).
    pub const PARTIAL: Self = Self(0x0002);
    /// A discontinuity before this frame: the media timestamp jumped (SSRC
    /// change, re-latch, buffer reset). Reset any state that tracks time.
    pub const RESYNC: Self = Self(0x0004);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl PlayFlags {
    /// The first frame of a talkspurt: the RTP marker bit is set.
    pub const MARKER: Self = Self(0x0001);
    /// Drop audio queued before this frame (barge-in) and play this now.
    pub const FLUSH: Self = Self(0x0002);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for FrameFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOr for PlayFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl MediaErrorCode {
    /// No such endpoint.
    pub const UNKNOWN_ENDPOINT: Self = Self(1);
    /// A [`MediaFormat`] the server does not produce.
    pub const UNSUPPORTED_FORMAT: Self = Self(2);
    /// A `Play` at a rate other than the endpoint codec's.
    pub const SAMPLE_RATE_MISMATCH: Self = Self(3);
    /// A kind the server does not know, or one only servers send.
    pub const UNKNOWN_KIND: Self = Self(4);
    /// `Unsubscribe` without a subscription.
    pub const NOT_SUBSCRIBED: Self = Self(5);
    /// The endpoint has as many subscribers as it allows.
    pub const TOO_MANY_SUBSCRIBERS: Self = Self(6);
    /// A malformed message (truncated body, odd sample bytes).
    pub const MALFORMED: Self = Self(7);
    /// Something failed inside the dataplane.
    pub const INTERNAL: Self = Self(0xffff);

    /// The snake_case name, `None` for a code this version does not know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::UNKNOWN_ENDPOINT => "unknown_endpoint",
            Self::UNSUPPORTED_FORMAT => "unsupported_format",
            Self::SAMPLE_RATE_MISMATCH => "sample_rate_mismatch",
            Self::UNKNOWN_KIND => "unknown_kind",
            Self::NOT_SUBSCRIBED => "not_subscribed",
            Self::TOO_MANY_SUBSCRIBERS => "too_many_subscribers",
            Self::MALFORMED => "malformed",
            Self::INTERNAL => "internal",
            _ => return None,
        })
    }
}

impl fmt::Display for MediaErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "error {}", self.0),
        }
    }
}

impl<'a> Samples<'a> {
    /// Samples to encode.
    pub fn new(pcm: &'a [i16]) -> Self {
        Self(SamplesRepr::Pcm(pcm))
    }

    /// Samples as little-endian byte pairs; `None` for an odd length.
    pub fn from_le_bytes(bytes: &'a [u8]) -> Option<Self> {
        bytes
            .len()
            .is_multiple_of(2)
            .then_some(Self(SamplesRepr::Le(bytes)))
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        match self.0 {
            SamplesRepr::Pcm(s) => s.len(),
            SamplesRepr::Le(b) => b.len() / 2,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i`.
    pub fn get(&self, i: usize) -> Option<i16> {
        match self.0 {
            SamplesRepr::Pcm(s) => s.get(i).copied(),
            SamplesRepr::Le(b) => {
                let pair = b.get(2 * i..2 * i + 2)?;
                Some(i16::from_le_bytes([pair[0], pair[1]]))
            }
        }
    }

    /// The samples in order.
    pub fn iter(&self) -> SamplesIter<'a> {
        SamplesIter {
            samples: *self,
            next: 0,
        }
    }

    /// Copies `min(self.len(), out.len())` samples into `out`, returning how
    /// many.
    pub fn copy_to(&self, out: &mut [i16]) -> usize {
        let n = self.len().min(out.len());
        match self.0 {
            SamplesRepr::Pcm(s) => out[..n].copy_from_slice(&s[..n]),
            SamplesRepr::Le(b) => {
                for (o, pair) in out[..n].iter_mut().zip(b.chunks_exact(2)) {
                    *o = i16::from_le_bytes([pair[0], pair[1]]);
                }
            }
        }
        n
    }

    /// The samples in a new vector.
    pub fn to_vec(&self) -> Vec<i16> {
        self.iter().collect()
    }

    /// The raw little-endian bytes, when decoded (to forward them as is).
    pub fn as_le_bytes(&self) -> Option<&'a [u8]> {
        match self.0 {
            SamplesRepr::Pcm(_) => None,
            SamplesRepr::Le(b) => Some(b),
        }
    }

    fn write_le(&self, out: &mut [u8]) {
        match self.0 {
            SamplesRepr::Pcm(s) => {
                for (pair, v) in out.chunks_exact_mut(2).zip(s) {
                    pair.copy_from_slice(&v.to_le_bytes());
                }
            }
            SamplesRepr::Le(b) => out[..b.len()].copy_from_slice(b),
        }
    }
}

impl<'a> From<&'a [i16]> for Samples<'a> {
    fn from(pcm: &'a [i16]) -> Self {
        Self::new(pcm)
    }
}

impl PartialEq for Samples<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Samples<'_> {}

impl fmt::Debug for Samples<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Samples({} samples)", self.len())
    }
}

impl Iterator for SamplesIter<'_> {
    type Item = i16;

    fn next(&mut self) -> Option<i16> {
        let v = self.samples.get(self.next)?;
        self.next += 1;
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.samples.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for SamplesIter<'_> {}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { need, have } => {
                write!(f, "buffer too small: {need} bytes needed, {have} given")
            }
            Self::TooLarge { len } => {
                write!(
                    f,
                    "body of {len} bytes exceeds the maximum of {MAX_BODY_LEN}"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

impl DecodeError {
    /// Whether the stream lost its framing (the decoder resyncs; a server
    /// closes the connection).
    pub fn is_framing(&self) -> bool {
        matches!(
            self,
            Self::BadMagic { .. } | Self::UnsupportedVersion { .. } | Self::Oversize { .. }
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { found } => write!(f, "bad magic {found:02x?}, expected \"MG\""),
            Self::UnsupportedVersion { version } => {
                write!(
                    f,
                    "unsupported media framing version {version}, expected {VERSION}"
                )
            }
            Self::Oversize { len } => {
                write!(f, "body length {len} exceeds the maximum of {MAX_BODY_LEN}")
            }
            Self::Truncated { kind, len, need } => {
                write!(f, "{kind:?} body of {len} bytes, at least {need} needed")
            }
            Self::OddSampleBytes { kind, len } => {
                write!(f, "{kind:?} body of {len} bytes: samples are not whole")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl MediaDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held, not yet decoded. At end of stream, non-zero means the
    /// last message was cut short.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes dropped while resyncing after framing errors, in total.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// The next message, an error, or `None` when more bytes are needed.
    ///
    /// After a framing error ([`DecodeError::is_framing`]) the decoder skips
    /// to the next plausible header; candidates that fail are skipped
    /// silently, so a run of garbage yields one error.
    pub fn next_message(&mut self) -> Option<Result<MediaMessage<'_>, DecodeError>> {
        if self.resyncing && !self.resync() {
            return None;
        }
        let avail = &self.buf[self.start..];
        if avail.len() < 3 {
            if avail.len() == 2 && avail[..2] != MAGIC {
                return Some(Err(self.lose_step(DecodeError::BadMagic {
                    found: [avail[0], avail[1]],
                })));
            }
            return None;
        }
        if avail[..2] != MAGIC {
            return Some(Err(self.lose_step(DecodeError::BadMagic {
                found: [avail[0], avail[1]],
            })));
        }
        if avail[2] != VERSION {
            return Some(Err(
                self.lose_step(DecodeError::UnsupportedVersion { version: avail[2] })
            ));
        }
        if avail.len() < HEADER_LEN {
            return None;
        }
        let kind = avail[3];
        let flags = u16::from_le_bytes([avail[4], avail[5]]);
        let len = u32::from_le_bytes([avail[8], avail[9], avail[10], avail[11]]);
        let body_len = len as usize;
        if body_len > MAX_BODY_LEN {
            return Some(Err(self.lose_step(DecodeError::Oversize { len })));
        }
        if avail.len() < HEADER_LEN + body_len {
            return None;
        }
        let body = self.start + HEADER_LEN..self.start + HEADER_LEN + body_len;
        self.start = body.end;
        Some(MediaMessage::decode_body(kind, flags, &self.buf[body]))
    }

    fn lose_step(&mut self, error: DecodeError) -> DecodeError {
        self.resyncing = true;
        error
    }

    /// Drops bytes up to the next plausible header. Returns whether one is
    /// at `start`; `false` means more bytes are needed.
    fn resync(&mut self) -> bool {
        const SYNC: [u8; 3] = [MAGIC[0], MAGIC[1], VERSION];
        loop {
            let avail = &self.buf[self.start..];
            let Some(at) = avail.windows(SYNC.len()).position(|w| w == SYNC) else {
                // Keep a tail that may be the start of a header.
                let keep = if avail.ends_with(&SYNC[..2]) {
                    2
                } else if avail.ends_with(&SYNC[..1]) {
                    1
                } else {
                    0
                };
                self.skip(avail.len() - keep);
                return false;
            };
            self.skip(at);
            let avail = &self.buf[self.start..];
            if avail.len() < HEADER_LEN {
                return false;
            }
            let len = u32::from_le_bytes([avail[8], avail[9], avail[10], avail[11]]);
            if len as usize <= MAX_BODY_LEN {
                self.resyncing = false;
                return true;
            }
            self.skip(1);
        }
    }

    fn skip(&mut self, n: usize) {
        self.start += n;
        self.skipped += n as u64;
    }
}

/// Writes little-endian fields into a buffer sized by `body_len`.
struct Writer<'o> {
    out: &'o mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn samples(&mut self, s: Samples<'_>) {
        let n = 2 * s.len();
        s.write_le(&mut self.out[self.at..self.at + n]);
        self.at += n;
    }
}

/// Reads little-endian fields from a body already checked to be at least its
/// kind's fixed length.
struct Reader<'b> {
    body: &'b [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0; N];
        // Callers read no further than the kind's fixed length, which the
        // body was checked to have; a short body would read zeros, not panic.
        if let Some(b) = self.body.get(self.at..self.at + N) {
            a.copy_from_slice(b);
        }
        self.at += N;
        a
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCM: [i16; 4] = [1, -2, 0x1234, i16::MIN];

    fn encode(m: MediaMessage<'_>) -> Vec<u8> {
        let mut out = vec![0; MAX_MESSAGE_LEN];
        let n = m.encode_into(&mut out).unwrap();
        assert_eq!(n, m.encoded_len());
        out.truncate(n);
        out
    }

    fn frame(samples: &[i16]) -> MediaMessage<'_> {
        MediaMessage::Frame(Frame {
            endpoint: EndpointId(0x1a2b),
            seq: 7,
            media_ts: 0x0001_2345,
            flags: FrameFlags::CONCEALED,
            sample_rate: ClockRate(8000),
            samples: Samples::new(samples),
        })
    }

    #[test]
    fn layout_is_little_endian() {
        let sub = Subscribe {
            endpoint: EndpointId(0x1a2b),
            format: MediaFormat::PCM16,
        };
        assert_eq!(
            encode(sub.into()),
            [
                0x4d, 0x47, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00,
                0x00, // header
                0x2b, 0x1a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
                0x00, // body
            ]
        );
        let bytes = encode(frame(&PCM));
        assert_eq!(
            &bytes[..12],
            [
                0x4d, 0x47, 0x01, 0x81, 0x01, 0x00, 0x00, 0x00, 0x20, 0, 0, 0
            ]
        );
        assert_eq!(&bytes[28..32], [0x45, 0x23, 0x01, 0x00]);
        assert_eq!(&bytes[32..36], 8000u32.to_le_bytes());
        assert_eq!(
            &bytes[36..],
            [0x01, 0x00, 0xfe, 0xff, 0x34, 0x12, 0x00, 0x80]
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let e = EndpointId(u64::MAX - 1);
        let messages: [MediaMessage<'_>; 8] = [
            Subscribe {
                endpoint: e,
                format: MediaFormat(9),
            }
            .into(),
            Unsubscribe { endpoint: e }.into(),
            Play {
                endpoint: e,
                seq: 3,
                flags: PlayFlags::MARKER | PlayFlags::FLUSH,
                sample_rate: ClockRate(16_000),
                samples: Samples::new(&PCM),
            }
            .into(),
            frame(&PCM),
            Ack {
                endpoint: e,
                request: 0x01,
            }
            .into(),
            ErrorReply {
                endpoint: e,
                request: 0x03,
                code: MediaErrorCode::SAMPLE_RATE_MISMATCH,
            }
            .into(),
            Dropped {
                endpoint: e,
                count: 12,
            }
            .into(),
            Unknown {
                kind: 0x42,
                flags: 0xbeef,
                body: b"future",
            }
            .into(),
        ];
        for m in messages {
            let bytes = encode(m);
            let mut d = MediaDecoder::new();
            d.push(&bytes);
            assert_eq!(d.next_message(), Some(Ok(m)));
            assert_eq!(d.next_message(), None);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn encode_checks_sizes() {
        let mut small = [0; 20];
        assert_eq!(
            frame(&PCM).encode_into(&mut small),
            Err(EncodeError::BufferTooSmall { need: 44, have: 20 })
        );
        let big = [0; MAX_SAMPLES + 1];
        let mut out = [0; MAX_MESSAGE_LEN + 2];
        assert!(matches!(
            frame(&big).encode_into(&mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        let max = [0; MAX_SAMPLES];
        assert_eq!(frame(&max).encode_into(&mut out), Ok(MAX_MESSAGE_LEN));
    }

    #[test]
    fn split_reads_at_every_boundary() {
        let mut stream = encode(frame(&PCM));
        stream.extend(encode(
            Dropped {
                endpoint: EndpointId(1),
                count: 2,
            }
            .into(),
        ));
        for cut in 0..=stream.len() {
            let mut d = MediaDecoder::new();
            let mut kinds = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part);
                while let Some(m) = d.next_message() {
                    kinds.push(m.unwrap().kind_byte());
                }
            }
            assert_eq!(kinds, [0x81, 0x84], "cut at {cut}");
        }
    }

    #[test]
    fn garbage_yields_one_error_then_resyncs() {
        let mut stream = b"garbage, MG\x02 and MG\x01 too".to_vec();
        stream.extend(encode(frame(&PCM)));
        let mut d = MediaDecoder::new();
        d.push(&stream);
        assert_eq!(
            d.next_message(),
            Some(Err(DecodeError::BadMagic { found: *b"ga" }))
        );
        assert_eq!(d.next_message(), Some(Ok(frame(&PCM))));
        assert_eq!(d.next_message(), None);
        assert_eq!(d.skipped_bytes(), 24);
    }

    #[test]
    fn oversize_and_version_are_framing_errors() {
        let mut oversize = encode(frame(&PCM));
        oversize[8..12].copy_from_slice(&(MAX_BODY_LEN as u32 + 1).to_le_bytes());
        let mut d = MediaDecoder::new();
        d.push(&oversize);
        let e = d.next_message().unwrap().unwrap_err();
        assert_eq!(
            e,
            DecodeError::Oversize {
                len: MAX_BODY_LEN as u32 + 1
            }
        );
        assert!(e.is_framing());
        assert_eq!(d.next_message(), None);

        let mut v2 = encode(frame(&PCM));
        v2[2] = 2;
        let mut d = MediaDecoder::new();
        d.push(&v2);
        d.push(&encode(frame(&PCM)));
        assert_eq!(
            d.next_message(),
            Some(Err(DecodeError::UnsupportedVersion { version: 2 }))
        );
        assert_eq!(d.next_message(), Some(Ok(frame(&PCM))));
    }

    #[test]
    fn bad_bodies_skip_one_message() {
        let mut short = encode(
            Dropped {
                endpoint: EndpointId(1),
                count: 2,
            }
            .into(),
        );
        short[8] = 12;
        short.truncate(HEADER_LEN + 12);
        let mut odd = encode(frame(&PCM));
        odd[8] -= 1;
        odd.pop();
        let mut d = MediaDecoder::new();
        d.push(&short);
        d.push(&odd);
        d.push(&encode(
            Unsubscribe {
                endpoint: EndpointId(5),
            }
            .into(),
        ));
        assert_eq!(
            d.next_message(),
            Some(Err(DecodeError::Truncated {
                kind: MediaKind::Dropped,
                len: 12,
                need: 16
            }))
        );
        let e = d.next_message().unwrap().unwrap_err();
        assert_eq!(
            e,
            DecodeError::OddSampleBytes {
                kind: MediaKind::Frame,
                len: 31
            }
        );
        assert!(!e.is_framing());
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.endpoint(), Some(EndpointId(5)));
        assert_eq!(d.skipped_bytes(), 0);
    }

    #[test]
    fn samples_copy_and_compare() {
        let bytes = [0x01, 0x00, 0xfe, 0xff];
        let decoded = Samples::from_le_bytes(&bytes).unwrap();
        assert_eq!(decoded, Samples::new(&[1, -2]));
        assert_ne!(decoded, Samples::new(&[1]));
        let mut out = [0; 1];
        assert_eq!(decoded.copy_to(&mut out), 1);
        assert_eq!(out, [1]);
        assert_eq!(decoded.to_vec(), [1, -2]);
        assert_eq!(decoded.as_le_bytes(), Some(&bytes[..]));
        assert!(Samples::from_le_bytes(&bytes[..3]).is_none());
    }
}
