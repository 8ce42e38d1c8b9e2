//! Fuzzes `RtpPacket::parse`: no panic, and every accepted datagram keeps
//! the parser's promises and is rebuilt byte for byte by `RtpBuilder`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mediagw_dataplane::rtp::{self, ExtensionForm, RtpBuilder, RtpError, RtpPacket};
use mediagw_dataplane::units::Ssrc;

fuzz_target!(|buf: &[u8]| {
    let _ = rtp::is_rtcp(buf);
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

    let csrcs: Vec<Ssrc> = pkt.csrcs().collect();
    let mut expected_header = 12 + 4 * csrcs.len();
    if let Some(ext) = pkt.extension() {
        expected_header += 4 + ext.data().len();
        assert!(ext.data().len().is_multiple_of(4));
        match ext.elements() {
            None => assert_eq!(ext.form(), ExtensionForm::Other),
            Some(elements) => {
                let mut failed = false;
                for element in elements {
                    assert!(!failed, "nothing after an error");
                    match element {
                        Ok(e) => {
                            assert_ne!(e.id, 0);
                            if ext.form() == ExtensionForm::OneByte {
                                assert!(e.id < 15 && (1..=16).contains(&e.data.len()));
                            }
                        }
                        Err(e) => {
                            assert_eq!(e, RtpError::ExtensionElementOverrun);
                            failed = true;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(pkt.header_len(), expected_header);

    // Rebuild: identical except the padding octets before the count.
    let padding = u8::try_from(pkt.padding_len()).expect("padding count is one octet");
    let mut builder = RtpBuilder::new(pkt.header()).csrcs(&csrcs).padding(padding);
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
});
