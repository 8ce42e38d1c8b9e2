//! 200 concurrent calls set up and torn down as the gateway does it, with
//! every stream's RTP flowing at once through the one pacer, nothing lost,
//! and the double's own cost reported.
#![allow(clippy::disallowed_methods)] // measures real time

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mediagw_testkit::asterisk::parse_rtp;
use tokio::net::UdpSocket;

const CALLS: usize = 200;

/// A receiving socket with room for a burst of 10 000 packets per second
/// (the kernel caps the size at net.core.rmem_max).
fn big_sink() -> UdpSocket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    UdpSocket::from_std(s.into()).expect("tokio socket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls() {
    let d = Arc::new(double().await);
    let ari = Arc::new(Ari::new(&d));
    let mut events = Events::connect(&d, APP).await;
    let sink = big_sink();
    let sink_addr = sink.local_addr().expect("addr");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let (d, ari) = (d.clone(), ari.clone());
        tasks.push(tokio::spawn(async move {
            bridged_call(&d, &ari, "ulaw", sink_addr, 300 + i as u32).await
        }));
    }
    let mut calls = Vec::new();
    for t in tasks {
        calls.push(t.await.expect("setup task"));
    }
    let setup = started.elapsed();
    assert!(
        d.wait_for(SOON, |d| d.rtp_streams_sending() == CALLS).await,
        "all streams sending"
    );

    // One second of every stream at once.
    let _warmup = receive_for(&sink, Duration::from_millis(100)).await;
    let window = receive_for(&sink, Duration::from_secs(1)).await;
    let mut per_source: HashMap<std::net::SocketAddr, Vec<u16>> = HashMap::new();
    for (data, from, _) in &window {
        per_source
            .entry(*from)
            .or_default()
            .push(parse_rtp(data).expect("rtp").seq);
    }
    assert_eq!(per_source.len(), CALLS, "every stream heard");
    let mut missing = 0;
    for (src, seqs) in &per_source {
        assert!(seqs.len() >= 40, "{src}: {} packets in 1 s", seqs.len());
        for w in seqs.windows(2) {
            let step = w[1].wrapping_sub(w[0]);
            assert!(
                (1..100).contains(&step),
                "{src}: sequence goes {} -> {}",
                w[0],
                w[1]
            );
            missing += usize::from(step - 1);
        }
    }
    // Gaps here are datagrams the kernel dropped at the test's socket, not
    // packets the double skipped (its sequence never skips).
    assert!(
        missing * 50 <= window.len(),
        "{missing} of {} packets missing",
        window.len()
    );

    // Tear everything down concurrently.
    let mut tasks = Vec::new();
    for c in &calls {
        let ari = ari.clone();
        let (caller, media, bridge) = (c.caller.clone(), c.media.clone(), c.bridge.clone());
        tasks.push(tokio::spawn(async move {
            assert_eq!(
                ari.call("DELETE", &format!("/channels/{caller}"), &[])
                    .await
                    .0,
                204
            );
            assert_eq!(
                ari.call("DELETE", &format!("/channels/{media}"), &[])
                    .await
                    .0,
                204
            );
            assert_eq!(
                ari.call("DELETE", &format!("/bridges/{bridge}"), &[])
                    .await
                    .0,
                204
            );
        }));
    }
    for t in tasks {
        t.await.expect("teardown task");
    }
    assert!(d.channels().is_empty() && d.bridges().is_empty());
    assert!(d.wait_for(SOON, |d| d.rtp_streams_sending() == 0).await);

    // Not one event lost: each call's two channels started and ended Stasis,
    // each bridge was destroyed.
    let all = events.drain(Duration::from_millis(500)).await;
    let count = |t: &str| {
        all.iter()
            .filter(|e| e.contains(&format!("\"type\":\"{t}\"")))
            .count()
    };
    assert_eq!(count("StasisStart"), CALLS * 2);
    assert_eq!(count("StasisEnd"), CALLS * 2);
    assert_eq!(count("ChannelEnteredBridge"), CALLS * 2);
    assert_eq!(count("BridgeDestroyed"), CALLS);

    let s = d.stats();
    let per_packet = s.pacer_busy / s.rtp_packets.max(1) as u32;
    let per_request = s.rest_busy / s.rest_requests.max(1) as u32;
    eprintln!(
        "{CALLS} calls set up in {setup:?}; double: {} REST requests at {per_request:?} each, \
         {} RTP packets at {per_packet:?} each over {} pacer ticks",
        s.rest_requests, s.rtp_packets, s.pacer_ticks
    );
    // Generous bounds for an unoptimised build on a shared machine; the point
    // is that the double's share is small and measured.
    assert!(
        per_packet < Duration::from_micros(200),
        "pacer {per_packet:?} per packet"
    );
    assert!(
        per_request < Duration::from_millis(20),
        "REST {per_request:?} per request"
    );
}
