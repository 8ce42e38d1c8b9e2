//! RTP packets (RFC 3550 §5.1): a zero-copy view over a received datagram
//! and writers that build outbound packets into a caller's buffer.
//!
//! [`RtpPacket::parse`] checks the version, the CSRC list, the header
//! extension and the padding against the datagram's length, in constant time
//! and without allocating; the getters then read fixed offsets. The RFC 8285
//! one- and two-byte extension elements are read lazily by
//! [`Extension::elements`]. [`is_rtcp`] tells RTCP from RTP on a multiplexed
//! port (RFC 5761 §4).
//!
//! Left out: SRTP, payload formats, header-extension semantics, sequence and
//! timestamp tracking (see `stats`), and any policy about which payload types
//! or sources are welcome. No sockets, no clock. `docs/rtp.md` records where
//! we are stricter than RFC 3550.

use std::error::Error;
use std::fmt;

use crate::units::{PayloadType, RtpTimestamp, Seq, Ssrc};

/// Length of the fixed RTP header, without CSRCs or extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// The only RTP version there is.
const VERSION: u8 = 0x02;
const PADDING_BIT: u8 = 0x20;
const EXTENSION_BIT: u8 = 0x10;
const CSRC_COUNT_MASK: u8 = 0x0F;
const MARKER_BIT: u8 = 0x80;
const PAYLOAD_TYPE_MASK: u8 = 0x7F;
/// At most 15 CSRCs fit the 4-bit count.
const MAX_CSRCS: usize = 0x0F;
/// Length of the extension header: 16-bit profile, 16-bit length in words.
const EXTENSION_HEADER_LEN: usize = 4;

/// "Defined by profile" value of the RFC 8285 one-byte element form.
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// "Defined by profile" value of the RFC 8285 two-byte element form; the low
/// four bits ("appbits") are the application's.
pub const TWO_BYTE_PROFILE: u16 = 0x1000;
const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
/// One-byte form: ID 15 ends the element list (RFC 8285 §4.2).
const ONE_BYTE_ID_STOP: u8 = 0x0F;

/// Second octets that are RTCP packet types on a multiplexed port: RTCP
/// types 192-223, which RTP would read as marker set and payload type 64-95
/// (RFC 5761 §4).
const RTCP_MUX_SECOND_OCTET: std::ops::RangeInclusive<u8> = 0xC0..=0xDF;

/// Whether a datagram on a port shared by RTP and RTCP is RTCP: its second
/// octet is in 192..=223 (RFC 5761 §4). Only the demultiplexing decision; the
/// RTCP parser checks the rest.
#[inline]
pub fn is_rtcp(buf: &[u8]) -> bool {
    matches!(buf, [_, second, ..] if RTCP_MUX_SECOND_OCTET.contains(second))
}

/// A received RTP packet, borrowed from the datagram it was parsed from.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |V=2|P|X|  CC   |M|     PT      |       sequence number         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                           timestamp                           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                             SSRC                              |
/// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
/// |                   CSRC list (CC x 32 bits)                    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |      profile (if X)           |     length in 32-bit words    |
/// |                    extension data (if X)                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                           payload ...                         |
/// |                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |  padding ...  | padding count |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// Invariant: `header_len() + payload().len() + padding_len()` is the
/// datagram's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    fixed: &'a [u8; FIXED_HEADER_LEN],
    csrcs: &'a [[u8; 4]],
    extension: Option<Extension<'a>>,
    payload: &'a [u8],
    header_len: usize,
    padding_len: u8,
}

impl<'a> RtpPacket<'a> {
    /// Parses and validates one RTP datagram. Constant time, no allocation.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let (fixed, rest) = buf
            .split_first_chunk::<FIXED_HEADER_LEN>()
            .ok_or(RtpError::TooShort)?;
        let first = fixed[0];
        if first >> 6 != VERSION {
            return Err(RtpError::BadVersion);
        }

        let csrc_len = usize::from(first & CSRC_COUNT_MASK) * 4;
        let (csrcs, rest) = rest
            .split_at_checked(csrc_len)
            .ok_or(RtpError::CsrcOverrun)?;
        let (csrcs, _) = csrcs.as_chunks::<4>();

        let (extension, rest) = if first & EXTENSION_BIT != 0 {
            let (ext_header, rest) = rest
                .split_first_chunk::<EXTENSION_HEADER_LEN>()
                .ok_or(RtpError::ExtensionHeaderTruncated)?;
            let profile = u16::from_be_bytes([ext_header[0], ext_header[1]]);
            let data_len = usize::from(u16::from_be_bytes([ext_header[2], ext_header[3]])) * 4;
            let (data, rest) = rest
                .split_at_checked(data_len)
                .ok_or(RtpError::ExtensionOverrun)?;
            (Some(Extension { profile, data }), rest)
        } else {
            (None, rest)
        };
        let header_len = buf.len() - rest.len();

        let (payload, padding_len) = if first & PADDING_BIT != 0 {
            // The count is the last octet and counts itself; it may not
            // reach back into the header.
            let &count = rest.last().ok_or(RtpError::PaddingOverrun)?;
            if count == 0 {
                return Err(RtpError::PaddingZero);
            }
            let payload_len = rest
                .len()
                .checked_sub(usize::from(count))
                .ok_or(RtpError::PaddingOverrun)?;
            let (payload, _) = rest
                .split_at_checked(payload_len)
                .ok_or(RtpError::PaddingOverrun)?;
            (payload, count)
        } else {
            (rest, 0)
        };

        Ok(Self {
            fixed,
            csrcs,
            extension,
            payload,
            header_len,
            padding_len,
        })
    }

    /// The marker bit (start of a talkspurt for audio).
    #[inline]
    pub fn marker(&self) -> bool {
        self.fixed[1] & MARKER_BIT != 0
    }

    #[inline]
    pub fn payload_type(&self) -> PayloadType {
        PayloadType(self.fixed[1] & PAYLOAD_TYPE_MASK)
    }

    #[inline]
    pub fn seq(&self) -> Seq {
        Seq(u16::from_be_bytes([self.fixed[2], self.fixed[3]]))
    }

    #[inline]
    pub fn timestamp(&self) -> RtpTimestamp {
        RtpTimestamp(u32::from_be_bytes([
            self.fixed[4],
            self.fixed[5],
            self.fixed[6],
            self.fixed[7],
        ]))
    }

    #[inline]
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(u32::from_be_bytes([
            self.fixed[8],
            self.fixed[9],
            self.fixed[10],
            self.fixed[11],
        ]))
    }

    /// The contributing sources, in packet order.
    #[inline]
    pub fn csrcs(&self) -> Ssrcs<'a> {
        Ssrcs(self.csrcs)
    }

    /// The header extension, if the X bit is set.
    #[inline]
    pub fn extension(&self) -> Option<Extension<'a>> {
        self.extension
    }

    /// The payload, without padding.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Padding octets after the payload, the count octet included; zero
    /// when the P bit is clear.
    #[inline]
    pub fn padding_len(&self) -> usize {
        usize::from(self.padding_len)
    }

    /// Octets before the payload: fixed header, CSRCs and extension.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The fixed-header fields, as [`write_rtp`] takes them.
    #[inline]
    pub fn header(&self) -> RtpHeader {
        RtpHeader {
            marker: self.marker(),
            payload_type: self.payload_type(),
            seq: self.seq(),
            timestamp: self.timestamp(),
            ssrc: self.ssrc(),
        }
    }
}

/// Every way a datagram can fail to be RTP, as counted by the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RtpError {
    /// Shorter than the 12-octet fixed header.
    TooShort,
    /// Version field is not 2.
    BadVersion,
    /// The CSRC count reaches past the end of the datagram.
    CsrcOverrun,
    /// X is set but the 4-octet extension header does not fit.
    ExtensionHeaderTruncated,
    /// The extension length reaches past the end of the datagram.
    ExtensionOverrun,
    /// P is set and the padding count is zero (it must count itself).
    PaddingZero,
    /// P is set and the padding count exceeds the octets after the header.
    PaddingOverrun,
    /// An RFC 8285 element reaches past the end of the extension. Reported
    /// by [`ExtensionElements`], never by [`RtpPacket::parse`].
    ExtensionElementOverrun,
}

impl RtpError {
    /// Every variant, for registering metrics up front.
    pub const ALL: [Self; 8] = [
        Self::TooShort,
        Self::BadVersion,
        Self::CsrcOverrun,
        Self::ExtensionHeaderTruncated,
        Self::ExtensionOverrun,
        Self::PaddingZero,
        Self::PaddingOverrun,
        Self::ExtensionElementOverrun,
    ];

    /// A stable snake_case label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::BadVersion => "bad_version",
            Self::CsrcOverrun => "csrc_overrun",
            Self::ExtensionHeaderTruncated => "extension_header_truncated",
            Self::ExtensionOverrun => "extension_overrun",
            Self::PaddingZero => "padding_zero",
            Self::PaddingOverrun => "padding_overrun",
            Self::ExtensionElementOverrun => "extension_element_overrun",
        }
    }
}

impl fmt::Display for RtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooShort => "RTP datagram shorter than the 12-octet header",
            Self::BadVersion => "RTP version is not 2",
            Self::CsrcOverrun => "RTP CSRC list runs past the datagram",
            Self::ExtensionHeaderTruncated => "RTP extension header truncated",
            Self::ExtensionOverrun => "RTP header extension runs past the datagram",
            Self::PaddingZero => "RTP padding count is zero",
            Self::PaddingOverrun => "RTP padding count exceeds the payload",
            Self::ExtensionElementOverrun => "RTP extension element runs past the extension",
        })
    }
}

impl Error for RtpError {}

/// A list of 32-bit source identifiers on the wire: an RTP packet's CSRCs or
/// an RTCP BYE's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssrcs<'a>(pub(crate) &'a [[u8; 4]]);

impl Iterator for Ssrcs<'_> {
    type Item = Ssrc;

    #[inline]
    fn next(&mut self) -> Option<Ssrc> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(Ssrc(u32::from_be_bytes(*first)))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0.len(), Some(self.0.len()))
    }
}

impl ExactSizeIterator for Ssrcs<'_> {}

/// An RTP header extension (RFC 3550 §5.3.1): a 16-bit profile value and
/// data, whose length is a whole number of 32-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    profile: u16,
    data: &'a [u8],
}

/// How an extension's data is laid out, from its profile value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// RFC 8285 one-byte elements (profile 0xBEDE).
    OneByte,
    /// RFC 8285 two-byte elements (profile 0x100X); `app_bits` is the X.
    TwoByte { app_bits: u8 },
    /// Anything else: only the raw data is available.
    Other,
}

impl<'a> Extension<'a> {
    /// The "defined by profile" field.
    #[inline]
    pub fn profile(&self) -> u16 {
        self.profile
    }

    /// The extension data, after the 4-octet extension header.
    #[inline]
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn form(&self) -> ExtensionForm {
        if self.profile == ONE_BYTE_PROFILE {
            ExtensionForm::OneByte
        } else if self.profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE {
            ExtensionForm::TwoByte {
                app_bits: (self.profile & !TWO_BYTE_PROFILE_MASK) as u8,
            }
        } else {
            ExtensionForm::Other
        }
    }

    /// The RFC 8285 elements, or `None` if the profile is neither form.
    pub fn elements(&self) -> Option<ExtensionElements<'a>> {
        let two_byte = match self.form() {
            ExtensionForm::OneByte => false,
            ExtensionForm::TwoByte { .. } => true,
            ExtensionForm::Other => return None,
        };
        Some(ExtensionElements {
            rest: self.data,
            two_byte,
        })
    }
}

/// One RFC 8285 extension element: a local identifier and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionElement<'a> {
    /// 1..=14 in the one-byte form, 1..=255 in the two-byte form.
    pub id: u8,
    pub data: &'a [u8],
}

/// Iterator over RFC 8285 elements (§4.1.2, §4.2, §4.3).
///
/// Padding octets (0x00) between elements are skipped. In the one-byte form
/// an ID of 15, or an ID of 0 with a non-zero length, ends the list without
/// error, as the RFC says. An element whose data (or, in the two-byte form,
/// whose length octet) runs past the extension yields one
/// `Err(RtpError::ExtensionElementOverrun)`, after which the iterator is
/// exhausted; elements before it were yielded normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionElements<'a> {
    rest: &'a [u8],
    two_byte: bool,
}

impl<'a> ExtensionElements<'a> {
    fn overrun(&mut self) -> Option<Result<ExtensionElement<'a>, RtpError>> {
        self.rest = &[];
        Some(Err(RtpError::ExtensionElementOverrun))
    }
}

impl<'a> Iterator for ExtensionElements<'a> {
    type Item = Result<ExtensionElement<'a>, RtpError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&first, rest) = self.rest.split_first()?;
            if first == 0x00 {
                self.rest = rest;
                continue;
            }
            let (id, len, rest) = if self.two_byte {
                let Some((&len, rest)) = rest.split_first() else {
                    return self.overrun();
                };
                (first, usize::from(len), rest)
            } else {
                let id = first >> 4;
                if id == 0 || id == ONE_BYTE_ID_STOP {
                    self.rest = &[];
                    return None;
                }
                (id, usize::from(first & 0x0F) + 1, rest)
            };
            let Some((data, rest)) = rest.split_at_checked(len) else {
                return self.overrun();
            };
            self.rest = rest;
            return Some(Ok(ExtensionElement { id, data }));
        }
    }
}

/// The fixed-header fields of an outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    /// Only the low 7 bits are written.
    pub payload_type: PayloadType,
    pub seq: Seq,
    pub timestamp: RtpTimestamp,
    pub ssrc: Ssrc,
}

impl RtpHeader {
    fn write_fixed(&self, first: u8, out: &mut [u8; FIXED_HEADER_LEN]) {
        debug_assert!(
            self.payload_type.0 <= PAYLOAD_TYPE_MASK,
            "payload type {} does not fit 7 bits",
            self.payload_type.0
        );
        let marker = if self.marker { MARKER_BIT } else { 0 };
        out[0] = first;
        out[1] = marker | (self.payload_type.0 & PAYLOAD_TYPE_MASK);
        out[2..4].copy_from_slice(&self.seq.0.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
    }
}

/// `out` cannot hold the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall {
    pub needed: usize,
    pub available: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "output buffer too small: {} octets needed, {} available",
            self.needed, self.available
        )
    }
}

impl Error for BufferTooSmall {}

/// Writes a 12-octet header (no CSRCs, extension or padding) and `payload`
/// to the start of `out`; returns the packet's length.
#[inline]
pub fn write_rtp(
    header: &RtpHeader,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let needed = FIXED_HEADER_LEN + payload.len();
    let too_small = BufferTooSmall {
        needed,
        available: out.len(),
    };
    let packet = out.get_mut(..needed).ok_or(too_small)?;
    let (fixed, body) = packet
        .split_first_chunk_mut::<FIXED_HEADER_LEN>()
        .ok_or(too_small)?;
    header.write_fixed(VERSION << 6, fixed);
    body.copy_from_slice(payload);
    Ok(needed)
}

/// Builds packets with CSRCs, a header extension or padding; for the plain
/// case [`write_rtp`] is enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpBuilder<'a> {
    header: RtpHeader,
    csrcs: &'a [Ssrc],
    extension: Option<(u16, &'a [u8])>,
    padding: u8,
}

impl<'a> RtpBuilder<'a> {
    pub const fn new(header: RtpHeader) -> Self {
        Self {
            header,
            csrcs: &[],
            extension: None,
            padding: 0,
        }
    }

    /// At most 15.
    pub const fn csrcs(mut self, csrcs: &'a [Ssrc]) -> Self {
        self.csrcs = csrcs;
        self
    }

    /// `data` must be a whole number of 32-bit words, at most 0xFFFF of them.
    pub const fn extension(mut self, profile: u16, data: &'a [u8]) -> Self {
        self.extension = Some((profile, data));
        self
    }

    /// Total padding octets, the count octet included; 0 for none. The
    /// padding octets are zero.
    pub const fn padding(mut self, len: u8) -> Self {
        self.padding = len;
        self
    }

    /// Writes the packet to the start of `out`; returns its length.
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpWriteError> {
        if self.csrcs.len() > MAX_CSRCS {
            return Err(RtpWriteError::TooManyCsrcs);
        }
        let extension_len = match self.extension {
            None => 0,
            Some((_, data)) if !data.len().is_multiple_of(4) => {
                return Err(RtpWriteError::ExtensionUnaligned);
            }
            Some((_, data)) if data.len() / 4 > usize::from(u16::MAX) => {
                return Err(RtpWriteError::ExtensionTooLong);
            }
            Some((_, data)) => EXTENSION_HEADER_LEN + data.len(),
        };
        let padding = usize::from(self.padding);
        let needed =
            FIXED_HEADER_LEN + self.csrcs.len() * 4 + extension_len + payload.len() + padding;
        let too_small = RtpWriteError::BufferTooSmall(BufferTooSmall {
            needed,
            available: out.len(),
        });
        let packet = out.get_mut(..needed).ok_or(too_small)?;

        let mut first = VERSION << 6 | self.csrcs.len() as u8;
        if self.extension.is_some() {
            first |= EXTENSION_BIT;
        }
        if padding != 0 {
            first |= PADDING_BIT;
        }
        let (fixed, mut rest) = packet
            .split_first_chunk_mut::<FIXED_HEADER_LEN>()
            .ok_or(too_small)?;
        self.header.write_fixed(first, fixed);
        for csrc in self.csrcs {
            rest = put(rest, &csrc.0.to_be_bytes());
        }
        if let Some((profile, data)) = self.extension {
            rest = put(rest, &profile.to_be_bytes());
            // Checked above: fits 16 bits.
            rest = put(rest, &((data.len() / 4) as u16).to_be_bytes());
            rest = put(rest, data);
        }
        rest = put(rest, payload);
        if let Some((count, zeros)) = rest.split_last_mut() {
            zeros.fill(0);
            *count = self.padding;
        }
        Ok(needed)
    }
}

/// Copies `src` to the front of `dst` and returns the rest of `dst`. `dst`
/// was sized for everything written, so it is long enough.
fn put<'b>(dst: &'b mut [u8], src: &[u8]) -> &'b mut [u8] {
    let (head, rest) = dst.split_at_mut(src.len());
    head.copy_from_slice(src);
    rest
}

/// Why [`RtpBuilder::write`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpWriteError {
    BufferTooSmall(BufferTooSmall),
    /// More than 15 CSRCs.
    TooManyCsrcs,
    /// Extension data is not a whole number of 32-bit words.
    ExtensionUnaligned,
    /// Extension data longer than 0xFFFF words.
    ExtensionTooLong,
}

impl fmt::Display for RtpWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall(e) => e.fmt(f),
            Self::TooManyCsrcs => f.write_str("more than 15 CSRCs"),
            Self::ExtensionUnaligned => f.write_str("extension data is not a multiple of 4 octets"),
            Self::ExtensionTooLong => f.write_str("extension data longer than 0xFFFF words"),
        }
    }
}

impl Error for RtpWriteError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::BufferTooSmall(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first packet Asterisk 22 sent for ulaw externalMedia (recorded on
    /// loopback): PT 0, seq 30598, ts 160, SSRC 0x1e806360, 160 octets.
    const ASTERISK_PCMU: &str = "80007786000000a01e806360\
        ffbbada7a3a3a6acbaea3d2e272323262c385dbfaea8a4a3a6abb7d7412f282423252a35\
        4fc5b0a9a4a3a5aab3cc483229242324293249ccb3aaa5a3a4a9b0c54f352a252324282f\
        42d6b6aba5a3a4a8afbf5c382c262323272e3de8baaca6a3a3a7adbc7b3b2d272323262c\
        3a6bbdaea7a3a3a6acb8de3e2e282423252b3757c1afa8a4a3a5abb5d04430292423252a\
        334cc8b2a9a4a3a4a9b2c94b332a2523";

    /// The header of the first slin16 packet (PT 118, seq 40161, ts 320,
    /// SSRC 0x0d82a056); its 640-octet payload began with silence.
    const ASTERISK_SLIN16_HEADER: &str = "80769ce1000001400d82a056";

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).expect("ascii hex");
                u8::from_str_radix(text, 16).expect("hex digit pair")
            })
            .collect()
    }

    fn header() -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: PayloadType(0),
            seq: Seq(1),
            timestamp: RtpTimestamp(160),
            ssrc: Ssrc(0x1234_5678),
        }
    }

    fn build(builder: RtpBuilder<'_>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; 2048];
        let n = builder.write(payload, &mut out).expect("fits");
        out.truncate(n);
        out
    }

    #[test]
    fn parses_asterisk_pcmu() {
        let buf = hex(ASTERISK_PCMU);
        assert_eq!(buf.len(), 172);
        let pkt = RtpPacket::parse(&buf).expect("valid");
        assert!(!pkt.marker());
        assert_eq!(pkt.payload_type(), PayloadType(0));
        assert_eq!(pkt.seq(), Seq(30598));
        assert_eq!(pkt.timestamp(), RtpTimestamp(160));
        assert_eq!(pkt.ssrc(), Ssrc(0x1e80_6360));
        assert_eq!(pkt.csrcs().count(), 0);
        assert_eq!(pkt.extension(), None);
        assert_eq!(pkt.header_len(), 12);
        assert_eq!(pkt.padding_len(), 0);
        assert_eq!(pkt.payload().len(), 160);
        assert_eq!(pkt.payload()[..4], [0xff, 0xbb, 0xad, 0xa7]);
    }

    #[test]
    fn parses_asterisk_slin16() {
        let mut buf = hex(ASTERISK_SLIN16_HEADER);
        buf.resize(12 + 640, 0);
        let pkt = RtpPacket::parse(&buf).expect("valid");
        assert_eq!(pkt.payload_type(), PayloadType(118));
        assert_eq!(pkt.seq(), Seq(40161));
        assert_eq!(pkt.timestamp(), RtpTimestamp(320));
        assert_eq!(pkt.ssrc(), Ssrc(0x0d82_a056));
        assert_eq!(pkt.payload().len(), 640);
    }

    #[test]
    fn marker_and_payload_type_share_an_octet() {
        let buf = hex("80e0 0001 00000000 00000000");
        let pkt = RtpPacket::parse(&buf).expect("valid");
        assert!(pkt.marker());
        assert_eq!(pkt.payload_type(), PayloadType(0x60));
    }

    #[test]
    fn csrc_list() {
        let csrcs = [Ssrc(1), Ssrc(0xdead_beef), Ssrc(u32::MAX)];
        let buf = build(RtpBuilder::new(header()).csrcs(&csrcs), b"abc");
        let pkt = RtpPacket::parse(&buf).expect("valid");
        assert_eq!(pkt.csrcs().len(), 3);
        assert!(pkt.csrcs().eq(csrcs));
        assert_eq!(pkt.header_len(), 12 + 12);
        assert_eq!(pkt.payload(), b"abc");
    }

    #[test]
    fn padding_is_stripped() {
        let buf = build(RtpBuilder::new(header()).padding(4), b"voice");
        assert_eq!(buf.len(), 12 + 5 + 4);
        let pkt = RtpPacket::parse(&buf).expect("valid");
        assert_eq!(pkt.payload(), b"voice");
        assert_eq!(pkt.padding_len(), 4);
    }

    #[test]
    fn padding_may_take_the_whole_body() {
        let buf = hex("a000 0001 00000000 00000000 00000004");
        let pkt = RtpPacket::parse(&buf).expect("valid");
        assert_eq!(pkt.payload(), b"");
        assert_eq!(pkt.padding_len(), 4);
    }

    #[test]
    fn one_byte_extension_with_padding_between_elements() {
        // id 1 len 1 "ab", two padding octets, id 3 len 3 (four octets),
        // then padding to the word boundary.
        let data = hex("1161620000 3377787980 0000");
        let buf = build(
            RtpBuilder::new(header()).extension(ONE_BYTE_PROFILE, &data),
            b"p",
        );
        let pkt = RtpPacket::parse(&buf).expect("valid");
        let ext = pkt.extension().expect("X set");
        assert_eq!(ext.profile(), 0xBEDE);
        assert_eq!(ext.form(), ExtensionForm::OneByte);
        assert_eq!(ext.data(), &data[..]);
        let elements: Vec<_> = ext.elements().expect("RFC 8285").collect();
        assert_eq!(
            elements,
            [
                Ok(ExtensionElement { id: 1, data: b"ab" }),
                Ok(ExtensionElement {
                    id: 3,
                    data: &[0x77, 0x78, 0x79, 0x80]
                }),
            ]
        );
        assert_eq!(pkt.header_len(), 12 + 4 + 12);
        assert_eq!(pkt.payload(), b"p");
    }

    #[test]
    fn one_byte_id_15_stops_the_list() {
        let data = hex("10aa f0 bb");
        let ext = Extension {
            profile: ONE_BYTE_PROFILE,
            data: &data,
        };
        let ids: Vec<_> = ext
            .elements()
            .expect("RFC 8285")
            .map(|e| e.map(|e| e.id))
            .collect();
        assert_eq!(ids, [Ok(1)]);
    }

    #[test]
    fn one_byte_id_0_with_length_stops_the_list() {
        let data = hex("10aa 05 20bb");
        let ext = Extension {
            profile: ONE_BYTE_PROFILE,
            data: &data,
        };
        assert_eq!(ext.elements().expect("RFC 8285").count(), 1);
    }

    #[test]
    fn two_byte_extension_with_padding_between_elements() {
        // id 5 len 0, padding, id 200 len 3 "xyz", padding.
        let data = hex("0500 00 c803 78797a 00000000");
        let buf = build(RtpBuilder::new(header()).extension(0x1003, &data), b"");
        let pkt = RtpPacket::parse(&buf).expect("valid");
        let ext = pkt.extension().expect("X set");
        assert_eq!(ext.form(), ExtensionForm::TwoByte { app_bits: 3 });
        let elements: Vec<_> = ext.elements().expect("RFC 8285").collect();
        assert_eq!(
            elements,
            [
                Ok(ExtensionElement { id: 5, data: b"" }),
                Ok(ExtensionElement {
                    id: 200,
                    data: b"xyz"
                }),
            ]
        );
    }

    #[test]
    fn other_extension_profile_is_raw() {
        let data = [1, 2, 3, 4];
        let buf = build(RtpBuilder::new(header()).extension(0xABAC, &data), b"x");
        let ext = RtpPacket::parse(&buf)
            .expect("valid")
            .extension()
            .expect("X set");
        assert_eq!(ext.form(), ExtensionForm::Other);
        assert_eq!(ext.elements(), None);
        assert_eq!(ext.data(), &data);
    }

    #[test]
    fn empty_extension() {
        let buf = hex("9000 0001 00000000 00000000 beef0000 ff");
        let pkt = RtpPacket::parse(&buf).expect("valid");
        let ext = pkt.extension().expect("X set");
        assert_eq!(ext.data(), b"");
        assert_eq!(pkt.payload(), [0xff]);
    }

    #[test]
    fn error_too_short() {
        assert_eq!(RtpPacket::parse(&[]), Err(RtpError::TooShort));
        assert_eq!(
            RtpPacket::parse(&hex("8000 0001 00000000 000000")),
            Err(RtpError::TooShort)
        );
    }

    #[test]
    fn error_bad_version() {
        let mut buf = hex(ASTERISK_PCMU);
        for version in [0x00, 0x40, 0xc0] {
            buf[0] = version;
            assert_eq!(RtpPacket::parse(&buf), Err(RtpError::BadVersion));
        }
    }

    #[test]
    fn error_csrc_overrun() {
        let buf = hex("8200 0001 00000000 00000000 00000001 000000");
        assert_eq!(RtpPacket::parse(&buf), Err(RtpError::CsrcOverrun));
    }

    #[test]
    fn error_extension_header_truncated() {
        let buf = hex("9000 0001 00000000 00000000 bede00");
        assert_eq!(
            RtpPacket::parse(&buf),
            Err(RtpError::ExtensionHeaderTruncated)
        );
    }

    #[test]
    fn error_extension_overrun() {
        let buf = hex("9000 0001 00000000 00000000 bede0002 10aa0000 000000");
        assert_eq!(RtpPacket::parse(&buf), Err(RtpError::ExtensionOverrun));
    }

    #[test]
    fn error_padding_zero() {
        let buf = hex("a000 0001 00000000 00000000 aabb00");
        assert_eq!(RtpPacket::parse(&buf), Err(RtpError::PaddingZero));
    }

    #[test]
    fn error_padding_overrun() {
        let buf = hex("a000 0001 00000000 00000000 aabb04");
        assert_eq!(RtpPacket::parse(&buf), Err(RtpError::PaddingOverrun));
        // No octet after the header to hold the count: the SSRC's last
        // octet is not padding.
        let buf = hex("a000 0001 00000000 00000001");
        assert_eq!(RtpPacket::parse(&buf), Err(RtpError::PaddingOverrun));
    }

    #[test]
    fn error_extension_element_overrun() {
        // One-byte: id 1 says 4 octets, 3 remain.
        let data = hex("13aabbcc");
        let ext = Extension {
            profile: ONE_BYTE_PROFILE,
            data: &data,
        };
        let items: Vec<_> = ext.elements().expect("RFC 8285").collect();
        assert_eq!(items, [Err(RtpError::ExtensionElementOverrun)]);

        // Two-byte: a good element, then an ID with no length octet.
        let data = hex("0101aa07");
        let ext = Extension {
            profile: 0x1000,
            data: &data,
        };
        let items: Vec<_> = ext.elements().expect("RFC 8285").collect();
        assert_eq!(
            items,
            [
                Ok(ExtensionElement {
                    id: 1,
                    data: &[0xaa]
                }),
                Err(RtpError::ExtensionElementOverrun),
            ]
        );
    }

    #[test]
    fn error_labels_are_unique_snake_case() {
        let mut labels: Vec<_> = RtpError::ALL.iter().map(|e| e.as_str()).collect();
        assert!(
            labels
                .iter()
                .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RtpError::ALL.len());
    }

    #[test]
    fn rtcp_demux_follows_rfc_5761() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x81, 0xC0, 0, 1]));
        assert!(is_rtcp(&[0x80, 0xDF]));
        assert!(!is_rtcp(&[0x80, 0xBF]));
        assert!(!is_rtcp(&[0x80, 0xE0]));
        // PT 72 without the marker is RTP's business, not RTCP.
        assert!(!is_rtcp(&[0x80, 72]));
        assert!(!is_rtcp(&hex(ASTERISK_PCMU)));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }

    #[test]
    fn write_rtp_round_trips() {
        let header = RtpHeader {
            marker: true,
            payload_type: PayloadType(118),
            seq: Seq(u16::MAX),
            timestamp: RtpTimestamp(u32::MAX),
            ssrc: Ssrc(7),
        };
        let mut out = [0u8; 32];
        let n = write_rtp(&header, b"hello", &mut out).expect("fits");
        assert_eq!(n, 17);
        let pkt = RtpPacket::parse(&out[..n]).expect("valid");
        assert_eq!(pkt.header(), header);
        assert_eq!(pkt.payload(), b"hello");
    }

    #[test]
    fn writers_refuse_small_buffers() {
        let mut out = [0u8; 16];
        assert_eq!(
            write_rtp(&header(), b"hello", &mut out),
            Err(BufferTooSmall {
                needed: 17,
                available: 16
            })
        );
        assert_eq!(
            RtpBuilder::new(header()).padding(1).write(b"abc", &mut out),
            Ok(16)
        );
        assert_eq!(
            RtpBuilder::new(header()).padding(2).write(b"abc", &mut out),
            Err(RtpWriteError::BufferTooSmall(BufferTooSmall {
                needed: 17,
                available: 16
            }))
        );
    }

    #[test]
    fn builder_refuses_bad_input() {
        let mut out = [0u8; 256];
        let csrcs = [Ssrc(0); 16];
        assert_eq!(
            RtpBuilder::new(header()).csrcs(&csrcs).write(b"", &mut out),
            Err(RtpWriteError::TooManyCsrcs)
        );
        assert_eq!(
            RtpBuilder::new(header())
                .extension(ONE_BYTE_PROFILE, &[0x10, 0xaa])
                .write(b"", &mut out),
            Err(RtpWriteError::ExtensionUnaligned)
        );
    }
}
