//! Fuzzes `rtcp::parse_compound`: no panic, every packet accounts for its
//! bytes and counts, an error ends the compound, and a plain receiver report
//! is re-encoded byte for byte by `write_receiver_report`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mediagw_dataplane::rtcp::{self, PT_BYE, PT_RR, PT_SR, ReportBlock, RtcpPacket};

fuzz_target!(|buf: &[u8]| {
    let mut compound = rtcp::parse_compound(buf);
    let mut before = compound.remaining();
    let mut items = 0;
    while let Some(item) = compound.next() {
        items += 1;
        assert!(items <= buf.len() / 4 + 1);
        let after = compound.remaining();
        let Ok(packet) = item else {
            assert!(after.is_empty(), "an error ends the compound");
            assert!(compound.next().is_none());
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
});
