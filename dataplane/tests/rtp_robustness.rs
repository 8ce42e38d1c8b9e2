//! Property tests for the RTP and RTCP parsers and writers: arbitrary and
//! mutated datagrams never panic and always satisfy the parsers' invariants,
//! and what the writers build parses back to what went in.
//!
//! The fuzz targets in `dataplane/fuzz` check the same invariants; these run
//! in every `cargo test`, on stable.

use mediagw_dataplane::rtcp::{self, PT_BYE, PT_RR, PT_SR, ReportBlock, RtcpPacket};
use mediagw_dataplane::rtp::{
    self, ExtensionElement, ExtensionForm, RtpBuilder, RtpError, RtpHeader, RtpPacket,
};
use mediagw_dataplane::units::{PayloadType, RtpTimestamp, Seq, Ssrc};
use proptest::prelude::*;

/// Checks everything a successfully parsed RTP packet promises about `buf`,
/// and that the builder reproduces it.
fn check_rtp(buf: &[u8]) {
    let Ok(pkt) = RtpPacket::parse(buf) else {
        return;
    };
    assert_eq!(buf[0] >> 6, 2, "version");
    assert_eq!(
        pkt.header_len() + pkt.payload().len() + pkt.padding_len(),
        buf.len()
    );
    assert_eq!(buf[0] & 0x20 != 0, pkt.padding_len() > 0, "P bit");
    assert_eq!(buf[0] & 0x10 != 0, pkt.extension().is_some(), "X bit");
    assert_eq!(usize::from(buf[0] & 0x0F), pkt.csrcs().len(), "CC");
    assert_eq!(
        pkt.payload(),
        &buf[pkt.header_len()..pkt.header_len() + pkt.payload().len()]
    );
    if pkt.padding_len() > 0 {
        assert_eq!(usize::from(buf[buf.len() - 1]), pkt.padding_len());
    }
    let csrcs: Vec<Ssrc> = pkt.csrcs().collect();
    let mut expected_header = 12 + 4 * csrcs.len();
    if let Some(ext) = pkt.extension() {
        expected_header += 4 + ext.data().len();
        assert!(ext.data().len().is_multiple_of(4));
        check_elements(ext.form(), ext.elements());
    }
    assert_eq!(pkt.header_len(), expected_header);

    // Rebuild: identical except the padding octets before the count, which
    // the builder writes as zeros.
    let mut builder = RtpBuilder::new(pkt.header())
        .csrcs(&csrcs)
        .padding(u8::try_from(pkt.padding_len()).expect("padding count is one octet"));
    if let Some(ext) = pkt.extension() {
        builder = builder.extension(ext.profile(), ext.data());
    }
    let mut out = vec![0; buf.len()];
    let n = builder
        .write(pkt.payload(), &mut out)
        .expect("same size fits");
    assert_eq!(n, buf.len());
    let unpadded = buf.len() - pkt.padding_len();
    assert_eq!(out[..unpadded], buf[..unpadded]);
    assert_eq!(out.last(), buf.last());
}

fn check_elements(form: ExtensionForm, elements: Option<rtp::ExtensionElements<'_>>) {
    let Some(elements) = elements else {
        assert_eq!(form, ExtensionForm::Other);
        return;
    };
    let mut errors = 0;
    for element in elements {
        match element {
            Ok(ExtensionElement { id, data }) => {
                assert_eq!(errors, 0, "nothing after an error");
                assert_ne!(id, 0);
                if form == ExtensionForm::OneByte {
                    assert!((1..=14).contains(&id));
                    assert!((1..=16).contains(&data.len()));
                }
            }
            Err(e) => {
                assert_eq!(e, RtpError::ExtensionElementOverrun);
                errors += 1;
            }
        }
    }
    assert!(errors <= 1);
}

/// Walks a compound to its end, checking each packet against its bytes.
fn check_rtcp(buf: &[u8]) {
    let mut compound = rtcp::parse_compound(buf);
    let mut before = compound.remaining();
    let mut items = 0;
    while let Some(item) = compound.next() {
        items += 1;
        assert!(
            items <= buf.len() / 4 + 1,
            "each packet consumes at least 4 octets"
        );
        let after = compound.remaining();
        let Ok(packet) = item else {
            assert!(after.is_empty(), "an error ends the compound");
            assert_eq!(compound.next(), None);
            return;
        };
        let raw = &before[..before.len() - after.len()];
        assert!(raw.len() >= 4 && raw.len().is_multiple_of(4));
        assert_eq!(raw[0] >> 6, 2, "version");
        assert_eq!(
            raw.len(),
            (usize::from(u16::from_be_bytes([raw[2], raw[3]])) + 1) * 4
        );
        let count = usize::from(raw[0] & 0x1F);
        let padded = raw[0] & 0x20 != 0;
        match packet {
            RtcpPacket::SenderReport {
                reports,
                profile_extension,
                ..
            } => {
                assert_eq!(raw[1], PT_SR);
                assert_eq!(reports.len(), count);
                assert_eq!(reports.count(), count);
                assert!(28 + 24 * count + profile_extension.len() <= raw.len());
            }
            RtcpPacket::ReceiverReport {
                ssrc,
                reports,
                profile_extension,
            } => {
                assert_eq!(raw[1], PT_RR);
                assert_eq!(reports.len(), count);
                let blocks: Vec<ReportBlock> = reports.collect();
                assert_eq!(blocks.len(), count);
                for b in &blocks {
                    assert!((-0x80_0000..=0x7F_FFFF).contains(&b.cumulative_lost));
                }
                if !padded && profile_extension.is_empty() {
                    let mut out = vec![0; raw.len()];
                    let n = rtcp::write_receiver_report(ssrc, &blocks, &mut out).expect("fits");
                    assert_eq!(&out[..n], raw, "RR re-encodes to its bytes");
                }
            }
            RtcpPacket::Bye { ssrcs, reason } => {
                assert_eq!(raw[1], PT_BYE);
                assert_eq!(ssrcs.len(), count);
                assert_eq!(ssrcs.count(), count);
                let reason_len = reason.map_or(0, |r| 1 + r.len());
                assert!(4 + 4 * count + reason_len <= raw.len());
            }
            RtcpPacket::Other {
                packet_type,
                count: c,
                body,
            } => {
                assert!(![PT_SR, PT_RR, PT_BYE].contains(&packet_type));
                assert_eq!(packet_type, raw[1]);
                assert_eq!(usize::from(c), count);
                assert_eq!(body, &raw[4..4 + body.len()]);
                assert_eq!(padded, body.len() < raw.len() - 4);
            }
        }
        before = after;
    }
    assert!(items > 0, "an empty datagram is an error, not nothing");
    assert!(compound.remaining().is_empty());
}

fn header_strategy() -> impl Strategy<Value = RtpHeader> {
    (
        any::<bool>(),
        0u8..0x80,
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(marker, pt, seq, ts, ssrc)| RtpHeader {
            marker,
            payload_type: PayloadType(pt),
            seq: Seq(seq),
            timestamp: RtpTimestamp(ts),
            ssrc: Ssrc(ssrc),
        })
}

/// Valid RTP datagrams with every optional part, for round trips and as
/// seeds for mutation.
fn packet_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        header_strategy(),
        prop::collection::vec(any::<u32>(), 0..=15),
        prop::option::of((
            prop_oneof![Just(0xBEDEu16), 0x1000u16..=0x100F, any::<u16>()],
            prop::collection::vec(any::<[u8; 4]>(), 0..8),
        )),
        prop::collection::vec(any::<u8>(), 0..400),
        any::<u8>(),
    )
        .prop_map(|(header, csrcs, ext, payload, padding)| {
            let csrcs: Vec<Ssrc> = csrcs.into_iter().map(Ssrc).collect();
            let ext_data: Vec<u8> = ext.iter().flat_map(|(_, words)| words.concat()).collect();
            let mut builder = RtpBuilder::new(header).csrcs(&csrcs).padding(padding);
            if let Some((profile, _)) = ext {
                builder = builder.extension(profile, &ext_data);
            }
            let mut out = vec![0; 2048];
            let n = builder.write(&payload, &mut out).expect("fits");
            out.truncate(n);
            out
        })
}

fn report_block_strategy() -> impl Strategy<Value = ReportBlock> {
    (
        any::<u32>(),
        any::<u8>(),
        -0x80_0000i32..=0x7F_FFFF,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(ssrc, fraction_lost, cumulative_lost, highest_seq, jitter, lsr, dlsr)| ReportBlock {
                ssrc: Ssrc(ssrc),
                fraction_lost,
                cumulative_lost,
                highest_seq,
                jitter,
                lsr,
                dlsr,
            },
        )
}

/// Valid compound datagrams: receiver reports from the writer and BYEs.
fn compound_strategy() -> impl Strategy<Value = Vec<u8>> {
    let rr = (
        any::<u32>(),
        prop::collection::vec(report_block_strategy(), 0..=31),
    )
        .prop_map(|(ssrc, blocks)| {
            let mut out = vec![0; 8 + 24 * blocks.len()];
            rtcp::write_receiver_report(Ssrc(ssrc), &blocks, &mut out).expect("fits");
            out
        });
    let bye = (
        prop::collection::vec(any::<u32>(), 0..=31),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(ssrcs, reason)| {
            let mut out = vec![0x80 | ssrcs.len() as u8, PT_BYE, 0, 0];
            for s in &ssrcs {
                out.extend_from_slice(&s.to_be_bytes());
            }
            if !reason.is_empty() {
                out.push(reason.len() as u8);
                out.extend_from_slice(&reason);
                out.resize(out.len().next_multiple_of(4), 0);
            }
            let words = (out.len() / 4 - 1) as u16;
            out[2..4].copy_from_slice(&words.to_be_bytes());
            out
        });
    prop::collection::vec(prop_oneof![rr, bye], 1..5).prop_map(|packets| packets.concat())
}

/// Overwrites, truncates or extends a valid datagram, so the parsers see
/// almost-valid input that reaches past the first checks.
fn mutate(mut buf: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(pos, byte) in edits {
        if buf.is_empty() {
            break;
        }
        let i = pos % buf.len();
        buf[i] = byte;
    }
    if let Some(cut) = cut {
        let len = cut % (buf.len() + 8);
        buf.resize(len, 0);
    }
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn write_rtp_round_trips(header in header_strategy(), payload in prop::collection::vec(any::<u8>(), 0..1500)) {
        let mut out = vec![0; 12 + payload.len()];
        let n = rtp::write_rtp(&header, &payload, &mut out).expect("sized to fit");
        prop_assert_eq!(n, out.len());
        let pkt = RtpPacket::parse(&out).expect("own output parses");
        prop_assert_eq!(pkt.header(), header);
        prop_assert_eq!(pkt.payload(), &payload[..]);
        prop_assert_eq!(pkt.header_len(), 12);
        prop_assert_eq!(pkt.padding_len(), 0);
        prop_assert_eq!(pkt.csrcs().len(), 0);
        prop_assert!(pkt.extension().is_none());
        prop_assert!(!rtp::is_rtcp(&out) || (header.marker && (64..=95).contains(&header.payload_type.0)));
    }

    #[test]
    fn write_rtp_refuses_short_buffers(header in header_strategy(), payload in prop::collection::vec(any::<u8>(), 0..200), short in 1usize..20) {
        let mut out = vec![0; (12 + payload.len()).saturating_sub(short)];
        let err = rtp::write_rtp(&header, &payload, &mut out).expect_err("too small");
        prop_assert_eq!(err.needed, 12 + payload.len());
    }

    #[test]
    fn built_packets_round_trip(buf in packet_strategy()) {
        prop_assert!(RtpPacket::parse(&buf).is_ok());
        check_rtp(&buf);
    }

    #[test]
    fn random_bytes_never_break_rtp(buf in prop::collection::vec(any::<u8>(), 0..1500)) {
        check_rtp(&buf);
        let _ = rtp::is_rtcp(&buf);
    }

    #[test]
    fn version_2_random_bytes_never_break_rtp(mut buf in prop::collection::vec(any::<u8>(), 12..200)) {
        // Random bytes are mostly not version 2; force it to reach the rest.
        buf[0] = 0x80 | (buf[0] & 0x3F);
        check_rtp(&buf);
    }

    #[test]
    fn mutated_packets_never_break_rtp(
        buf in packet_strategy(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        check_rtp(&mutate(buf, &edits, cut));
    }

    #[test]
    fn random_bytes_never_break_rtcp(buf in prop::collection::vec(any::<u8>(), 0..1500)) {
        check_rtcp(&buf);
    }

    #[test]
    fn typed_random_bytes_never_break_rtcp(
        mut buf in prop::collection::vec(any::<u8>(), 4..300),
        packet_type in 0xC8u8..=0xCC,
    ) {
        // Random bytes are mostly not version 2; make the first packet a
        // known type so the SR, RR and BYE decoders see garbage bodies.
        buf[0] = 0x80 | (buf[0] & 0x3F);
        buf[1] = packet_type;
        check_rtcp(&buf);
    }

    #[test]
    fn built_compounds_round_trip(buf in compound_strategy()) {
        prop_assert!(rtcp::parse_compound(&buf).all(|p| p.is_ok()));
        check_rtcp(&buf);
    }

    #[test]
    fn mutated_compounds_never_break_rtcp(
        buf in compound_strategy(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        check_rtcp(&mutate(buf, &edits, cut));
    }

    #[test]
    fn receiver_report_round_trips(ssrc in any::<u32>(), blocks in prop::collection::vec(report_block_strategy(), 0..=31)) {
        let mut out = vec![0; 1500];
        let n = rtcp::write_receiver_report(Ssrc(ssrc), &blocks, &mut out).expect("fits");
        prop_assert_eq!(n, 8 + 24 * blocks.len());
        prop_assert!(rtp::is_rtcp(&out[..n]));
        let mut packets = rtcp::parse_compound(&out[..n]);
        let Some(Ok(RtcpPacket::ReceiverReport { ssrc: got, reports, profile_extension })) = packets.next() else {
            panic!("not an RR");
        };
        prop_assert_eq!(got, Ssrc(ssrc));
        prop_assert_eq!(reports.collect::<Vec<_>>(), blocks);
        prop_assert!(profile_extension.is_empty());
        prop_assert!(packets.next().is_none());
    }
}

#[test]
fn every_rtp_error_is_reachable_from_bytes() {
    // One datagram per variant, through the public API only.
    let cases: [(&[u8], RtpError); 7] = [
        (&[0x80, 0x00], RtpError::TooShort),
        (&[0x40; 12], RtpError::BadVersion),
        (
            &[0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            RtpError::CsrcOverrun,
        ),
        (
            &[0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE],
            RtpError::ExtensionHeaderTruncated,
        ),
        (
            &[0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0, 1],
            RtpError::ExtensionOverrun,
        ),
        (
            &[0xA0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            RtpError::PaddingZero,
        ),
        (
            &[0xA0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            RtpError::PaddingOverrun,
        ),
    ];
    for (buf, expected) in cases {
        assert_eq!(RtpPacket::parse(buf), Err(expected), "{buf:02x?}");
    }
    let buf = [
        0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0, 1, 0x1F, 0, 0, 0,
    ];
    let pkt = RtpPacket::parse(&buf).expect("header is fine");
    let elements: Vec<_> = pkt
        .extension()
        .and_then(|e| e.elements())
        .expect("one-byte")
        .collect();
    assert_eq!(elements, [Err(RtpError::ExtensionElementOverrun)]);
}
