//! Real RTP from the externalMedia channel: packet shape, steps and pacing
//! compared with the recorded packets, payloads equal to the deterministic
//! tone and to the double's own capture, the return path accounted, and
//! silence once the caller leaves.
#![allow(clippy::disallowed_methods)] // these tests measure real pacing on the clock

mod common;

use std::time::{Duration, Instant};

use common::*;
use mediagw_testkit::asterisk::{MediaFormat, ToneGenerator, parse_rtp};
use serde_json::Value;
use tokio::net::UdpSocket;

struct Recorded {
    pt: u8,
    payload_len: usize,
    packet_len: usize,
    ts_step: u32,
    first_ts: u32,
}

fn recorded(scenario: &str) -> Recorded {
    let summary: Value =
        serde_json::from_str(&fixture(&format!("{scenario}/rtp_summary.json"))).expect("summary");
    let first = &fixture_jsonl(&format!("{scenario}/rtp_first_packets.jsonl"))[0];
    // Every header field but seq, timestamp and SSRC is fixed.
    for (k, want) in [
        ("version", 2),
        ("padding", 0),
        ("extension", 0),
        ("csrc_count", 0),
        ("marker", 0),
        ("header_len", 12),
    ] {
        assert_eq!(first[k], want, "recorded {k}");
    }
    Recorded {
        pt: summary["payload_types"][0].as_u64().expect("pt") as u8,
        payload_len: summary["payload_lens"][0].as_u64().expect("len") as usize,
        packet_len: summary["packet_lens"][0].as_u64().expect("len") as usize,
        ts_step: summary["timestamp_step_set"]
            .as_array()
            .expect("steps")
            .iter()
            .filter_map(Value::as_u64)
            .min()
            .expect("step") as u32,
        first_ts: first["timestamp"].as_u64().expect("ts") as u32,
    }
}

async fn stream_like_recording(scenario: &str, format: &str, media_format: MediaFormat, hz: u32) {
    let want = recorded(scenario);
    let d = double().await;
    let ari = Ari::new(&d);
    let _events = Events::connect(&d, APP).await;
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let call = bridged_call(&d, &ari, format, sink.local_addr().expect("addr"), hz).await;

    let pkts = receive_n(&sink, 60, Duration::from_secs(10)).await;
    assert_eq!(pkts.len(), 60, "60 packets within 10 s");
    // The recordings saw the first packet 10-25 ms after both channels
    // joined; allow for this machine's scheduling.
    let first_delay = pkts[0].2.duration_since(call.before_add);
    assert!(
        first_delay < Duration::from_millis(200),
        "first packet after {first_delay:?}"
    );

    let tone = ToneGenerator::new(media_format, hz);
    let h0 = parse_rtp(&pkts[0].0).expect("rtp");
    for (k, (data, from, _)) in pkts.iter().enumerate() {
        let h = parse_rtp(data).expect("rtp");
        assert_eq!(*from, call.local, "sent from UNICASTRTP_LOCAL_ADDRESS:PORT");
        assert_eq!(data.len(), want.packet_len);
        assert_eq!(data.len() - h.header_len, want.payload_len);
        assert_eq!(
            (data[0], h.payload_type, h.marker, h.header_len),
            (0x80, want.pt, false, 12)
        );
        assert_eq!(h.ssrc, h0.ssrc);
        assert_eq!(h.seq, h0.seq.wrapping_add(k as u16), "sequence +1");
        assert_eq!(
            h.timestamp,
            want.first_ts + want.ts_step * k as u32,
            "timestamp +{}",
            want.ts_step
        );
        assert_eq!(
            &data[12..],
            tone.frame(k as u64),
            "payload {k} is the caller's tone"
        );
    }
    // Pacing: 20 ms on average (the recordings: mean 20.0 ms).
    let span = pkts[59].2.duration_since(pkts[0].2);
    let mean = span / 59;
    assert!(
        (Duration::from_millis(17)..=Duration::from_millis(23)).contains(&mean),
        "mean spacing {mean:?}"
    );

    let stats = d
        .rtp_stream(&mediagw_testkit::asterisk::ChannelId::new(
            call.media.as_str(),
        ))
        .expect("stream stats");
    assert_eq!(
        (stats.ssrc, stats.first_seq, stats.first_timestamp),
        (h0.ssrc, h0.seq, want.first_ts)
    );
    assert_eq!(stats.format, media_format);
    assert_eq!(stats.tone_hz, Some(hz));
    assert!(stats.sending);
    assert!(stats.packets_sent >= 60);
    assert_eq!(
        stats.bytes_sent,
        stats.packets_sent * want.packet_len as u64
    );
    assert_eq!(stats.local_addr, call.local);
    assert_eq!(stats.remote_addr, sink.local_addr().expect("addr"));
    let captured: Vec<u8> = pkts.iter().flat_map(|(d, ..)| d[12..].to_vec()).collect();
    assert_eq!(
        &stats.sent_payload[..captured.len()],
        &captured[..],
        "capture equals what arrived"
    );

    // The caller hangs up: the media channel leaves nothing to carry.
    d.hangup(
        &mediagw_testkit::asterisk::ChannelId::new(call.caller.as_str()),
        16,
    )
    .expect("hangup");
    let _in_flight = receive_for(&sink, Duration::from_millis(100)).await;
    let after = receive_for(&sink, Duration::from_millis(300)).await;
    assert!(
        after.is_empty(),
        "{} packets after the caller left",
        after.len()
    );
    let stats = d
        .rtp_stream(&mediagw_testkit::asterisk::ChannelId::new(
            call.media.as_str(),
        ))
        .expect("stats");
    assert!(!stats.sending);
}

#[tokio::test]
async fn ulaw_stream_like_recording() {
    stream_like_recording("ami-inbound", "ulaw", MediaFormat::Ulaw, 440).await;
}

#[tokio::test]
async fn slin16_stream_like_recording() {
    stream_like_recording("ami-inbound-slin16", "slin16", MediaFormat::Slin16, 1000).await;
}

#[tokio::test]
async fn alaw_payload_type_8() {
    let d = double().await;
    let ari = Ari::new(&d);
    let _events = Events::connect(&d, APP).await;
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let _call = bridged_call(&d, &ari, "alaw", sink.local_addr().expect("addr"), 300).await;
    let pkts = receive_n(&sink, 3, Duration::from_secs(5)).await;
    assert_eq!(pkts.len(), 3);
    let tone = ToneGenerator::new(MediaFormat::Alaw, 300);
    for (k, (data, ..)) in pkts.iter().enumerate() {
        assert_eq!(parse_rtp(data).expect("rtp").payload_type, 8);
        assert_eq!(&data[12..], tone.frame(k as u64));
    }
}

#[tokio::test]
async fn audio_sent_back_is_accounted() {
    let d = double().await;
    let ari = Ari::new(&d);
    let _events = Events::connect(&d, APP).await;
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let call = bridged_call(&d, &ari, "ulaw", sink.local_addr().expect("addr"), 440).await;
    let media = mediagw_testkit::asterisk::ChannelId::new(call.media.as_str());

    // What a dataplane sends back: 25 paced packets, one lost on purpose,
    // and a datagram that is not RTP.
    let started = Instant::now();
    let mut pkt = [0u8; 172];
    pkt[0] = 0x80;
    pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    for k in 0u16..26 {
        if k == 10 {
            continue;
        }
        pkt[2..4].copy_from_slice(&(500 + k).to_be_bytes());
        pkt[4..8].copy_from_slice(&(u32::from(k) * 160).to_be_bytes());
        pkt[12..].fill(k as u8);
        sink.send_to(&pkt, call.local).await.expect("send");
        tokio::time::sleep_until((started + Duration::from_millis(20) * u32::from(k + 1)).into())
            .await;
    }
    sink.send_to(b"not rtp", call.local).await.expect("send");
    assert!(
        d.wait_for(SOON, |d| d
            .rtp_stream(&media)
            .is_some_and(|s| s.received.packets == 26))
            .await
    );
    let rx = d.rtp_stream(&media).expect("stats").received;
    assert_eq!((rx.valid_rtp, rx.invalid), (25, 1));
    assert_eq!(rx.ssrcs, [0x1234_5678]);
    assert_eq!(rx.payload_types, [0]);
    assert_eq!(
        (rx.first_seq, rx.last_seq, rx.seq_gaps, rx.out_of_order),
        (Some(500), Some(525), 1, 0)
    );
    assert_eq!(rx.sources, [sink.local_addr().expect("addr")]);
    let mean = rx.interarrival_mean().expect("mean");
    assert!(
        (Duration::from_millis(10)..=Duration::from_millis(45)).contains(&mean),
        "mean {mean:?}"
    );
    assert_eq!(rx.arrival_offsets.len(), 25);
    assert_eq!(&rx.payload[..160], &[0u8; 160][..]);
    assert_eq!(&rx.payload[160..320], &[1u8; 160][..]);
}

#[tokio::test]
async fn rtp_ports_from_the_configured_range() {
    let cfg = mediagw_testkit::asterisk::DoubleConfig {
        rtp_ports: Some(31000..=31999),
        ..Default::default()
    };
    let d = double_with(cfg).await;
    let ari = Ari::new(&d);
    let _events = Events::connect(&d, APP).await;
    for _ in 0..3 {
        let (s, v) = ari
            .json(
                "POST",
                "/channels/externalMedia",
                &[
                    ("app", APP),
                    ("external_host", "127.0.0.1:9"),
                    ("format", "ulaw"),
                ],
            )
            .await;
        assert_eq!(s, 200);
        let port: u16 = v["channelvars"]["UNICASTRTP_LOCAL_PORT"]
            .as_str()
            .expect("port")
            .parse()
            .expect("number");
        assert!(
            (31000..=31999).contains(&port) && port.is_multiple_of(2),
            "port {port}"
        );
    }
}

#[tokio::test]
async fn a_hung_up_channel_frees_its_rtp_port() {
    // Two even ports: the third channel only gets one if a hangup freed it.
    let cfg = mediagw_testkit::asterisk::DoubleConfig {
        rtp_ports: Some(31100..=31103),
        ..Default::default()
    };
    let d = double_with(cfg).await;
    let ari = Ari::new(&d);
    let _events = Events::connect(&d, APP).await;
    for round in 0..5 {
        let (s, v) = ari
            .json(
                "POST",
                "/channels/externalMedia",
                &[
                    ("app", APP),
                    ("external_host", "127.0.0.1:9"),
                    ("format", "ulaw"),
                ],
            )
            .await;
        assert_eq!(s, 200, "round {round}: {v}");
        let id = v["id"].as_str().expect("id").to_owned();
        let (s, _) = ari.call("DELETE", &format!("/channels/{id}"), &[]).await;
        assert_eq!(s, 204);
        // The accounting stays readable after the channel is gone.
        assert!(
            d.rtp_stream(&mediagw_testkit::asterisk::ChannelId::new(id.as_str()))
                .is_some()
        );
        // The socket closes when its receive task has ended.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
