//! RTCP (RFC 3550 §6): a zero-copy reader for compound packets and a writer
//! for receiver reports.
//!
//! [`parse_compound`] walks the packets of one datagram. Sender reports,
//! receiver reports and BYE are decoded, with their report blocks and source
//! lists read lazily from the datagram; every other packet type (SDES, APP,
//! feedback, XR) comes back as [`RtcpPacket::Other`] with its raw body. Each
//! packet's version, length field, padding and counts are checked against
//! the bytes present. [`write_receiver_report`] builds the RR the dataplane
//! sends to Asterisk.
//!
//! Left out: SDES items, APP, feedback and XR decoding, SRTCP, the RFC 3550
//! A.2 compound-level checks (first packet SR or RR, padding only on the
//! last), and report timing (RFC 3550 §6.2). No sockets, no clock.

use std::error::Error;
use std::fmt;

use crate::rtp::{BufferTooSmall, Ssrcs};
use crate::units::{RtpTimestamp, Ssrc};

/// Sender report.
pub const PT_SR: u8 = 0xC8;
/// Receiver report.
pub const PT_RR: u8 = 0xC9;
/// Source description.
pub const PT_SDES: u8 = 0xCA;
/// Goodbye.
pub const PT_BYE: u8 = 0xCB;
/// Application-defined.
pub const PT_APP: u8 = 0xCC;

const VERSION: u8 = 0x02;
const PADDING_BIT: u8 = 0x20;
const COUNT_MASK: u8 = 0x1F;
/// Version, padding, count, packet type, length.
const HEADER_LEN: usize = 4;
/// SSRC of sender, NTP timestamp, RTP timestamp, packet and octet counts.
const SENDER_INFO_LEN: usize = 24;
const REPORT_BLOCK_LEN: usize = 24;
/// The 5-bit count field.
pub const MAX_REPORT_BLOCKS: usize = 0x1F;
/// The 24-bit signed range of the cumulative-lost field.
const CUMULATIVE_LOST_MAX: i32 = 0x7F_FFFF;
const CUMULATIVE_LOST_MIN: i32 = -0x80_0000;

/// The packets of a compound RTCP datagram, in order.
///
/// An empty datagram yields one `Err(RtcpError::TooShort)`. After any error
/// the iterator is exhausted: a broken packet may have a broken length, so
/// the packets after it cannot be found.
pub fn parse_compound(buf: &[u8]) -> RtcpCompound<'_> {
    RtcpCompound {
        rest: buf,
        started: false,
    }
}

/// Iterator returned by [`parse_compound`].
#[derive(Debug, Clone)]
pub struct RtcpCompound<'a> {
    rest: &'a [u8],
    started: bool,
}

impl<'a> RtcpCompound<'a> {
    /// The bytes not yet parsed.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for RtcpCompound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() && self.started {
            return None;
        }
        self.started = true;
        match parse_packet(self.rest) {
            Ok((packet, rest)) => {
                self.rest = rest;
                Some(Ok(packet))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// One RTCP packet of a compound datagram.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |V=2|P|  count  |  packet type  |     length (words - 1)        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                      body (length x 32 bits)                  |
/// |                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |  padding ...  | padding count |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// SR (200): sender info, then `count` report blocks.
    SenderReport {
        ssrc: Ssrc,
        /// 64-bit NTP time: seconds since 1900 in the high 32 bits.
        ntp_timestamp: u64,
        rtp_timestamp: RtpTimestamp,
        packet_count: u32,
        octet_count: u32,
        reports: ReportBlocks<'a>,
        /// Profile-specific extension after the report blocks, usually empty.
        profile_extension: &'a [u8],
    },
    /// RR (201): reporter SSRC, then `count` report blocks.
    ReceiverReport {
        ssrc: Ssrc,
        reports: ReportBlocks<'a>,
        profile_extension: &'a [u8],
    },
    /// BYE (203): the sources leaving and an optional reason.
    Bye {
        ssrcs: Ssrcs<'a>,
        /// The reason text as sent (meant to be UTF-8, not checked).
        reason: Option<&'a [u8]>,
    },
    /// Any other packet type, body undecoded (padding stripped).
    Other {
        packet_type: u8,
        /// The 5-bit count field (the SDES chunk count, the APP subtype...).
        count: u8,
        body: &'a [u8],
    },
}

/// A reception report block (RFC 3550 §6.4.1).
///
/// ```text
/// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
/// |                 SSRC of the reported source                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | fraction lost |       cumulative lost (24-bit signed)         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           extended highest sequence number received           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                      interarrival jitter                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         last SR (LSR)                         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                   delay since last SR (DLSR)                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: Ssrc,
    /// Fixed point, loss fraction times 256.
    pub fraction_lost: u8,
    /// Expected minus received; negative with duplicates. 24 bits on the
    /// wire: the writer clamps to -0x800000..=0x7FFFFF.
    pub cumulative_lost: i32,
    /// Cycles in the high 16 bits, sequence number in the low 16.
    pub highest_seq: u32,
    /// In RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP timestamp ([`compact_ntp`]).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn read(b: &[u8; REPORT_BLOCK_LEN]) -> Self {
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // Shift the 24-bit field to the top, then arithmetic-shift back to
        // extend its sign.
        let cumulative_lost = (u32::from_be_bytes([b[5], b[6], b[7], 0]) as i32) >> 8;
        Self {
            ssrc: Ssrc(word(0)),
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: word(8),
            jitter: word(12),
            lsr: word(16),
            dlsr: word(20),
        }
    }

    fn write(&self, out: &mut [u8; REPORT_BLOCK_LEN]) {
        let lost = self
            .cumulative_lost
            .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX)
            .to_be_bytes();
        out[0..4].copy_from_slice(&self.ssrc.0.to_be_bytes());
        out[4] = self.fraction_lost;
        out[5..8].copy_from_slice(&lost[1..4]);
        out[8..12].copy_from_slice(&self.highest_seq.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.lsr.to_be_bytes());
        out[20..24].copy_from_slice(&self.dlsr.to_be_bytes());
    }
}

/// The middle 32 bits of a 64-bit NTP timestamp, as carried in LSR.
pub const fn compact_ntp(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// The report blocks of an SR or RR, decoded as they are iterated. Their
/// number was checked against the packet length when it was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBlocks<'a>(&'a [[u8; REPORT_BLOCK_LEN]]);

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    #[inline]
    fn next(&mut self) -> Option<ReportBlock> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(ReportBlock::read(first))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0.len(), Some(self.0.len()))
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}

/// Every way an RTCP datagram can be malformed, as counted by the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RtcpError {
    /// Empty datagram, or 1-3 octets left where a packet header should be.
    TooShort,
    /// Version field is not 2.
    BadVersion,
    /// The length field reaches past the end of the datagram.
    LengthOverrun,
    /// P is set and the padding count is zero (it must count itself).
    PaddingZero,
    /// P is set and the padding count exceeds the packet's body.
    PaddingOverrun,
    /// An SR or RR too short for its sender SSRC and sender info.
    BodyTooShort,
    /// The report count needs more report blocks than the packet holds.
    ReportCountOverrun,
    /// A BYE's source count needs more SSRCs than the packet holds.
    SourceCountOverrun,
    /// A BYE's reason length reaches past the end of the packet.
    ByeReasonOverrun,
}

impl RtcpError {
    /// Every variant, for registering metrics up front.
    pub const ALL: [Self; 9] = [
        Self::TooShort,
        Self::BadVersion,
        Self::LengthOverrun,
        Self::PaddingZero,
        Self::PaddingOverrun,
        Self::BodyTooShort,
        Self::ReportCountOverrun,
        Self::SourceCountOverrun,
        Self::ByeReasonOverrun,
    ];

    /// A stable snake_case label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::BadVersion => "bad_version",
            Self::LengthOverrun => "length_overrun",
            Self::PaddingZero => "padding_zero",
            Self::PaddingOverrun => "padding_overrun",
            Self::BodyTooShort => "body_too_short",
            Self::ReportCountOverrun => "report_count_overrun",
            Self::SourceCountOverrun => "source_count_overrun",
            Self::ByeReasonOverrun => "bye_reason_overrun",
        }
    }
}

impl fmt::Display for RtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooShort => "RTCP datagram too short for a packet header",
            Self::BadVersion => "RTCP version is not 2",
            Self::LengthOverrun => "RTCP length field runs past the datagram",
            Self::PaddingZero => "RTCP padding count is zero",
            Self::PaddingOverrun => "RTCP padding count exceeds the packet body",
            Self::BodyTooShort => "RTCP report too short for its fixed fields",
            Self::ReportCountOverrun => "RTCP report count runs past the packet",
            Self::SourceCountOverrun => "RTCP BYE source count runs past the packet",
            Self::ByeReasonOverrun => "RTCP BYE reason runs past the packet",
        })
    }
}

impl Error for RtcpError {}

/// Parses the packet at the start of `buf`; returns it and the bytes after.
fn parse_packet(buf: &[u8]) -> Result<(RtcpPacket<'_>, &[u8]), RtcpError> {
    let (header, rest) = buf
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(RtcpError::TooShort)?;
    if header[0] >> 6 != VERSION {
        return Err(RtcpError::BadVersion);
    }
    let count = header[0] & COUNT_MASK;
    let packet_type = header[1];
    let body_len = usize::from(u16::from_be_bytes([header[2], header[3]])) * 4;
    let (body, rest) = rest
        .split_at_checked(body_len)
        .ok_or(RtcpError::LengthOverrun)?;

    let body = if header[0] & PADDING_BIT != 0 {
        let &pad = body.last().ok_or(RtcpError::PaddingOverrun)?;
        if pad == 0 {
            return Err(RtcpError::PaddingZero);
        }
        let len = body
            .len()
            .checked_sub(usize::from(pad))
            .ok_or(RtcpError::PaddingOverrun)?;
        body.get(..len).ok_or(RtcpError::PaddingOverrun)?
    } else {
        body
    };

    let packet = match packet_type {
        PT_SR => {
            let (info, blocks) = body
                .split_first_chunk::<SENDER_INFO_LEN>()
                .ok_or(RtcpError::BodyTooShort)?;
            let word =
                |i: usize| u32::from_be_bytes([info[i], info[i + 1], info[i + 2], info[i + 3]]);
            let (reports, profile_extension) = report_blocks(count, blocks)?;
            RtcpPacket::SenderReport {
                ssrc: Ssrc(word(0)),
                ntp_timestamp: u64::from(word(4)) << 32 | u64::from(word(8)),
                rtp_timestamp: RtpTimestamp(word(12)),
                packet_count: word(16),
                octet_count: word(20),
                reports,
                profile_extension,
            }
        }
        PT_RR => {
            let (ssrc, blocks) = body
                .split_first_chunk::<4>()
                .ok_or(RtcpError::BodyTooShort)?;
            let (reports, profile_extension) = report_blocks(count, blocks)?;
            RtcpPacket::ReceiverReport {
                ssrc: Ssrc(u32::from_be_bytes(*ssrc)),
                reports,
                profile_extension,
            }
        }
        PT_BYE => {
            let (ssrcs, after) = body
                .split_at_checked(usize::from(count) * 4)
                .ok_or(RtcpError::SourceCountOverrun)?;
            let reason = match after.split_first() {
                None => None,
                Some((&len, text)) => Some(
                    text.get(..usize::from(len))
                        .ok_or(RtcpError::ByeReasonOverrun)?,
                ),
            };
            RtcpPacket::Bye {
                ssrcs: Ssrcs(ssrcs.as_chunks::<4>().0),
                reason,
            }
        }
        _ => RtcpPacket::Other {
            packet_type,
            count,
            body,
        },
    };
    Ok((packet, rest))
}

fn report_blocks(count: u8, buf: &[u8]) -> Result<(ReportBlocks<'_>, &[u8]), RtcpError> {
    let (blocks, extension) = buf
        .split_at_checked(usize::from(count) * REPORT_BLOCK_LEN)
        .ok_or(RtcpError::ReportCountOverrun)?;
    Ok((
        ReportBlocks(blocks.as_chunks::<REPORT_BLOCK_LEN>().0),
        extension,
    ))
}

/// Why [`write_receiver_report`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpWriteError {
    BufferTooSmall(BufferTooSmall),
    /// More than 31 report blocks (the count field has 5 bits).
    TooManyReportBlocks,
}

impl fmt::Display for RtcpWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall(e) => e.fmt(f),
            Self::TooManyReportBlocks => f.write_str("more than 31 RTCP report blocks"),
        }
    }
}

impl Error for RtcpWriteError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::BufferTooSmall(e) => Some(e),
            Self::TooManyReportBlocks => None,
        }
    }
}

/// Writes a receiver report from `ssrc` with `blocks` (at most 31) to the
/// start of `out`; returns its length, `8 + 24 * blocks.len()`. Cumulative
/// loss outside the 24-bit range is clamped (RFC 3550 §6.4.1).
pub fn write_receiver_report(
    ssrc: Ssrc,
    blocks: &[ReportBlock],
    out: &mut [u8],
) -> Result<usize, RtcpWriteError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(RtcpWriteError::TooManyReportBlocks);
    }
    let needed = HEADER_LEN + 4 + blocks.len() * REPORT_BLOCK_LEN;
    let too_small = RtcpWriteError::BufferTooSmall(BufferTooSmall {
        needed,
        available: out.len(),
    });
    let packet = out.get_mut(..needed).ok_or(too_small)?;
    let (head, rest) = packet.split_first_chunk_mut::<8>().ok_or(too_small)?;
    // At most 31 blocks: both casts fit.
    let length_words = (needed / 4 - 1) as u16;
    head[0] = VERSION << 6 | blocks.len() as u8;
    head[1] = PT_RR;
    head[2..4].copy_from_slice(&length_words.to_be_bytes());
    head[4..8].copy_from_slice(&ssrc.0.to_be_bytes());
    let (slots, _) = rest.as_chunks_mut::<REPORT_BLOCK_LEN>();
    for (block, slot) in blocks.iter().zip(slots) {
        block.write(slot);
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u32) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(0x1000 + n),
            fraction_lost: n as u8,
            cumulative_lost: n as i32 * 100,
            highest_seq: 0x0001_0000 + n,
            jitter: 20 + n,
            lsr: 0xAABB_CCDD,
            dlsr: 0x0001_8000,
        }
    }

    fn put_block(out: &mut Vec<u8>, b: &ReportBlock) {
        let mut raw = [0u8; REPORT_BLOCK_LEN];
        b.write(&mut raw);
        out.extend_from_slice(&raw);
    }

    /// A packet with the given first octet and type around `body`, the
    /// length field computed from the body (which must be whole words).
    fn packet(first: u8, packet_type: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len().is_multiple_of(4));
        let words = u16::try_from(body.len() / 4).expect("test body fits");
        let mut out = vec![first, packet_type];
        out.extend_from_slice(&words.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn sender_report(blocks: &[ReportBlock]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1e80_6360u32.to_be_bytes());
        body.extend_from_slice(&0xE9A1_B2C3_8000_0000u64.to_be_bytes());
        body.extend_from_slice(&160u32.to_be_bytes());
        body.extend_from_slice(&50u32.to_be_bytes());
        body.extend_from_slice(&8000u32.to_be_bytes());
        for b in blocks {
            put_block(&mut body, b);
        }
        packet(0x80 | blocks.len() as u8, PT_SR, &body)
    }

    fn sdes() -> Vec<u8> {
        // One chunk: SSRC, CNAME "ast", END, padded to a word.
        let body = [
            0x1e, 0x80, 0x63, 0x60, 0x01, 0x03, b'a', b's', b't', 0x00, 0x00, 0x00,
        ];
        packet(0x81, PT_SDES, &body)
    }

    fn bye(ssrcs: &[u32], reason: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for s in ssrcs {
            body.extend_from_slice(&s.to_be_bytes());
        }
        if !reason.is_empty() {
            body.push(reason.len() as u8);
            body.extend_from_slice(reason);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        packet(0x80 | ssrcs.len() as u8, PT_BYE, &body)
    }

    fn only(buf: &[u8]) -> Result<RtcpPacket<'_>, RtcpError> {
        let mut packets = parse_compound(buf);
        let first = packets.next().expect("one item");
        assert_eq!(packets.next(), None);
        first
    }

    #[test]
    fn sender_report_with_two_blocks() {
        let buf = sender_report(&[block(1), block(2)]);
        assert_eq!(buf.len(), 28 + 48);
        let RtcpPacket::SenderReport {
            ssrc,
            ntp_timestamp,
            rtp_timestamp,
            packet_count,
            octet_count,
            reports,
            profile_extension,
        } = only(&buf).expect("valid")
        else {
            panic!("not an SR");
        };
        assert_eq!(ssrc, Ssrc(0x1e80_6360));
        assert_eq!(ntp_timestamp, 0xE9A1_B2C3_8000_0000);
        assert_eq!(compact_ntp(ntp_timestamp), 0xB2C3_8000);
        assert_eq!(rtp_timestamp, RtpTimestamp(160));
        assert_eq!(packet_count, 50);
        assert_eq!(octet_count, 8000);
        assert_eq!(reports.len(), 2);
        assert!(reports.eq([block(1), block(2)]));
        assert_eq!(profile_extension, b"");
    }

    #[test]
    fn receiver_report() {
        let mut body = 0x0d82_a056u32.to_be_bytes().to_vec();
        put_block(&mut body, &block(7));
        let buf = packet(0x81, PT_RR, &body);
        assert_eq!(
            only(&buf),
            Ok(RtcpPacket::ReceiverReport {
                ssrc: Ssrc(0x0d82_a056),
                reports: ReportBlocks(&[{
                    let mut raw = [0; 24];
                    block(7).write(&mut raw);
                    raw
                }]),
                profile_extension: b"",
            })
        );
    }

    #[test]
    fn report_keeps_profile_extension() {
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"ext!");
        let buf = packet(0x80, PT_RR, &body);
        let Ok(RtcpPacket::ReceiverReport {
            reports,
            profile_extension,
            ..
        }) = only(&buf)
        else {
            panic!("not an RR");
        };
        assert_eq!(reports.len(), 0);
        assert_eq!(profile_extension, b"ext!");
    }

    #[test]
    fn bye_with_reason() {
        let buf = bye(&[0x1e80_6360, 5], b"hangup");
        let Ok(RtcpPacket::Bye { ssrcs, reason }) = only(&buf) else {
            panic!("not a BYE");
        };
        assert!(ssrcs.eq([Ssrc(0x1e80_6360), Ssrc(5)]));
        assert_eq!(reason, Some(&b"hangup"[..]));
    }

    #[test]
    fn bye_without_reason() {
        let buf = bye(&[9], b"");
        let Ok(RtcpPacket::Bye { ssrcs, reason }) = only(&buf) else {
            panic!("not a BYE");
        };
        assert!(ssrcs.eq([Ssrc(9)]));
        assert_eq!(reason, None);
    }

    #[test]
    fn compound_sr_sdes_bye() {
        let mut buf = sender_report(&[block(1)]);
        buf.extend_from_slice(&sdes());
        buf.extend_from_slice(&bye(&[0x1e80_6360], b"bye"));
        let packets: Vec<_> = parse_compound(&buf)
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(packets.len(), 3);
        assert!(
            matches!(&packets[0], RtcpPacket::SenderReport { reports, .. } if reports.len() == 1)
        );
        let RtcpPacket::Other {
            packet_type,
            count,
            body,
        } = &packets[1]
        else {
            panic!("SDES is not decoded");
        };
        assert_eq!((*packet_type, *count, body.len()), (PT_SDES, 1, 12));
        assert!(matches!(
            &packets[2],
            RtcpPacket::Bye {
                reason: Some(b"bye"),
                ..
            }
        ));
    }

    #[test]
    fn padding_is_stripped() {
        // An APP packet body of 4 octets, then 4 octets of padding.
        let buf = packet(0xA0, PT_APP, b"nameP\0\0\x04");
        assert_eq!(
            only(&buf),
            Ok(RtcpPacket::Other {
                packet_type: PT_APP,
                count: 0,
                body: b"name",
            })
        );
    }

    #[test]
    fn negative_cumulative_lost_is_sign_extended() {
        let mut body = 1u32.to_be_bytes().to_vec();
        // SSRC, fraction 0, cumulative lost 0xFFFFFE = -2, then zeros.
        body.extend_from_slice(&[0, 0, 0, 2, 0x00, 0xFF, 0xFF, 0xFE]);
        body.extend_from_slice(&[0; 16]);
        let buf = packet(0x81, PT_RR, &body);
        let Ok(RtcpPacket::ReceiverReport { mut reports, .. }) = only(&buf) else {
            panic!("not an RR");
        };
        let b = reports.next().expect("one block");
        assert_eq!(b.cumulative_lost, -2);
        assert_eq!(b.fraction_lost, 0);

        let mut raw = [0u8; 24];
        raw[5..8].copy_from_slice(&[0x80, 0x00, 0x00]);
        assert_eq!(ReportBlock::read(&raw).cumulative_lost, -0x80_0000);
        raw[5..8].copy_from_slice(&[0x7F, 0xFF, 0xFF]);
        assert_eq!(ReportBlock::read(&raw).cumulative_lost, 0x7F_FFFF);
    }

    #[test]
    fn receiver_report_writer_round_trips() {
        let mut blocks = vec![block(1), block(2), block(3)];
        blocks[1].cumulative_lost = -3;
        let mut out = [0u8; 128];
        let n = write_receiver_report(Ssrc(42), &blocks, &mut out).expect("fits");
        assert_eq!(n, 8 + 3 * 24);
        let Ok(RtcpPacket::ReceiverReport {
            ssrc,
            reports,
            profile_extension,
        }) = only(&out[..n])
        else {
            panic!("not an RR");
        };
        assert_eq!(ssrc, Ssrc(42));
        assert!(reports.eq(blocks.iter().copied()));
        assert_eq!(profile_extension, b"");

        let n = write_receiver_report(Ssrc(42), &[], &mut out).expect("fits");
        assert_eq!(out[..n], [0x80, 0xC9, 0x00, 0x01, 0, 0, 0, 42]);
    }

    #[test]
    fn receiver_report_writer_clamps_cumulative_lost() {
        let mut b = block(0);
        let mut out = [0u8; 32];
        for (lost, wire) in [(i32::MAX, 0x7F_FFFF), (i32::MIN, -0x80_0000)] {
            b.cumulative_lost = lost;
            let n = write_receiver_report(Ssrc(1), &[b], &mut out).expect("fits");
            let Ok(RtcpPacket::ReceiverReport { mut reports, .. }) = only(&out[..n]) else {
                panic!("not an RR");
            };
            assert_eq!(reports.next().map(|r| r.cumulative_lost), Some(wire));
        }
    }

    #[test]
    fn receiver_report_writer_refuses() {
        let mut out = [0u8; 31];
        assert_eq!(
            write_receiver_report(Ssrc(1), &[block(1)], &mut out),
            Err(RtcpWriteError::BufferTooSmall(BufferTooSmall {
                needed: 32,
                available: 31
            }))
        );
        let mut out = [0u8; 1024];
        assert_eq!(
            write_receiver_report(Ssrc(1), &[block(1); 32], &mut out),
            Err(RtcpWriteError::TooManyReportBlocks)
        );
        assert_eq!(
            write_receiver_report(Ssrc(1), &[block(1); 31], &mut out),
            Ok(8 + 31 * 24)
        );
    }

    #[test]
    fn error_too_short() {
        assert_eq!(only(&[]), Err(RtcpError::TooShort));
        // A good RR then three stray octets.
        let mut buf = write_rr_bytes();
        buf.extend_from_slice(&[0x80, 0xC9, 0x00]);
        let items: Vec<_> = parse_compound(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(items[1], Err(RtcpError::TooShort));
    }

    fn write_rr_bytes() -> Vec<u8> {
        let mut out = [0u8; 8];
        let n = write_receiver_report(Ssrc(1), &[], &mut out).expect("fits");
        out[..n].to_vec()
    }

    #[test]
    fn error_bad_version() {
        let mut buf = write_rr_bytes();
        buf[0] = 0x40;
        assert_eq!(only(&buf), Err(RtcpError::BadVersion));
    }

    #[test]
    fn error_length_overrun() {
        let mut buf = write_rr_bytes();
        buf[3] = 2;
        assert_eq!(only(&buf), Err(RtcpError::LengthOverrun));
    }

    #[test]
    fn error_padding_zero() {
        let buf = packet(0xA0, PT_APP, b"name\0\0\0\0");
        assert_eq!(only(&buf), Err(RtcpError::PaddingZero));
    }

    #[test]
    fn error_padding_overrun() {
        let buf = packet(0xA0, PT_APP, b"name\0\0\0\x09");
        assert_eq!(only(&buf), Err(RtcpError::PaddingOverrun));
        // P set on a header-only packet: the count octet would be in the
        // header.
        let buf = packet(0xA0, PT_APP, b"");
        assert_eq!(only(&buf), Err(RtcpError::PaddingOverrun));
    }

    #[test]
    fn error_body_too_short() {
        let buf = packet(0x80, PT_SR, &[0; 20]);
        assert_eq!(only(&buf), Err(RtcpError::BodyTooShort));
        let buf = packet(0x80, PT_RR, &[]);
        assert_eq!(only(&buf), Err(RtcpError::BodyTooShort));
    }

    #[test]
    fn error_report_count_overrun() {
        let mut buf = sender_report(&[block(1)]);
        buf[0] = 0x82;
        assert_eq!(only(&buf), Err(RtcpError::ReportCountOverrun));
        let mut buf = write_rr_bytes();
        buf[0] = 0x81;
        assert_eq!(only(&buf), Err(RtcpError::ReportCountOverrun));
    }

    #[test]
    fn error_source_count_overrun() {
        let mut buf = bye(&[1, 2], b"");
        buf[0] = 0x83;
        assert_eq!(only(&buf), Err(RtcpError::SourceCountOverrun));
    }

    #[test]
    fn error_bye_reason_overrun() {
        let mut buf = bye(&[1], b"abc");
        // Reason length 3 -> 4 with only 3 octets left in the packet.
        buf[8] = 4;
        assert_eq!(only(&buf), Err(RtcpError::ByeReasonOverrun));
    }

    #[test]
    fn error_stops_the_compound() {
        let mut buf = packet(0x80, PT_RR, &[]);
        buf.extend_from_slice(&write_rr_bytes());
        let items: Vec<_> = parse_compound(&buf).collect();
        assert_eq!(items, [Err(RtcpError::BodyTooShort)]);
    }

    #[test]
    fn error_labels_are_unique_snake_case() {
        let mut labels: Vec<_> = RtcpError::ALL.iter().map(|e| e.as_str()).collect();
        assert!(
            labels
                .iter()
                .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RtcpError::ALL.len());
    }
}
