//! Where an endpoint's resident memory goes: each part the daemon allocates
//! per endpoint, built 1,000 times in this process (same allocator as the
//! daemon, mimalloc) and measured as the growth of the resident set, idle
//! and after 100 packets each. Nothing is freed until the end, so no part
//! lands in memory an earlier one made resident.
//!
//! Leaves out: kernel memory (socket buffers are charged to the kernel, not
//! to the process, and only while datagrams wait in them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mediagw_dataplane::config::Config;
use mediagw_dataplane::endpoint::{Endpoint, EndpointShared, EndpointSpec, MAX_PACKET_SAMPLES};
use mediagw_dataplane::jitter::JitterBuffer;
use mediagw_dataplane::ring::frame_ring;
use mediagw_dataplane::rtp::{RtpHeader, write_rtp};
use mediagw_dataplane::stats::{ReceiveStats, StatsConfig};
use mediagw_dataplane::units::{ClockRate, Nanos, PayloadType, RtpTimestamp, Seq, Ssrc};
use mediagw_shared::codec::Codec;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::procfs;

/// Resident bytes of one part, per endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// What.
    pub part: String,
    /// Resident bytes per instance, built and idle.
    pub idle_bytes: f64,
    /// After 100 packets per endpoint (only for whole endpoints).
    pub streaming_bytes: Option<f64>,
}

const COUNT: usize = 1_000;

fn rss() -> f64 {
    procfs::rss_bytes(std::process::id()).unwrap_or(0) as f64
}

fn measure<T>(part: &str, make: impl Fn(usize) -> Result<T>) -> Result<(Part, Vec<T>)> {
    let before = rss();
    let v = (0..COUNT).map(&make).collect::<Result<Vec<T>>>()?;
    let after = rss();
    Ok((
        Part {
            part: part.to_owned(),
            idle_bytes: (after - before) / COUNT as f64,
            streaming_bytes: None,
        },
        v,
    ))
}

/// Measures every part, then whole endpoints idle and streaming.
pub fn measure_all() -> Result<Vec<Part>> {
    let cfg = Config::default();
    let jcfg = cfg.jitter_config(ClockRate::NARROWBAND, None, None);
    let mut out = Vec::new();
    let (mut p, mut eps) = measure("whole endpoint, as the daemon builds it", |i| {
        let (tap_tx, tap_rx) = frame_ring(cfg.endpoint.tap_ring_frames);
        let (play_tx, play_rx) = frame_ring(cfg.endpoint.play_ring_frames);
        let spec = EndpointSpec {
            codec: Codec::Pcmu,
            payload_type: PayloadType(0),
            ptime_ms: 20,
            jitter: jcfg,
            relatch_after: Duration::from_millis(cfg.endpoint.relatch_after_ms),
            silent_after: Duration::from_millis(cfg.endpoint.silent_after_ms),
            tx_ssrc: Ssrc(i as u32),
            tx_first_seq: i as u16,
        };
        let jb = JitterBuffer::new(jcfg).map_err(|e| BenchError::new(e.to_string()))?;
        let shared = Arc::new(EndpointShared::default());
        Ok((
            Endpoint::new(spec, shared, jb, tap_tx, play_rx),
            tap_rx,
            play_tx,
        ))
    })?;
    let before = rss();
    let src: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let mut scratch = Box::new([0i16; MAX_PACKET_SAMPLES]);
    let mut pkt = [0u8; 172];
    for k in 0..100u32 {
        for (i, (ep, _, _)) in eps.iter_mut().enumerate() {
            let h = RtpHeader {
                marker: false,
                payload_type: PayloadType(0),
                seq: Seq(k as u16),
                timestamp: RtpTimestamp(k * 160),
                ssrc: Ssrc(0x5000 + i as u32),
            };
            // 172 bytes hold a 12-byte header and 160 bytes of payload.
            let _ = write_rtp(&h, &[0x55; 160], &mut pkt);
            // Some jitter, so the transit histogram sees several values.
            let at = Nanos(
                1_000_000_000 + u64::from(k) * 20_000_000 + (u64::from(k) * 7919 % 3_000_000),
            );
            ep.handle_datagram(src, at, &pkt, &mut scratch);
            ep.handle_timeout(at);
        }
    }
    p.streaming_bytes = Some(p.idle_bytes + (rss() - before) / COUNT as f64);
    out.push(p);
    let (p, stats) = measure(
        "ReceiveStats (RFC 3550 counters + transit histogram)",
        |_| Ok(ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND))),
    )?;
    out.push(p);
    let (p, jbs) = measure("JitterBuffer (default bounds)", |_| {
        JitterBuffer::new(jcfg).map_err(|e| BenchError::new(e.to_string()))
    })?;
    out.push(p);
    let (p, taps) = measure(
        &format!("tap frame ring ({} frames)", cfg.endpoint.tap_ring_frames),
        |_| Ok(frame_ring(cfg.endpoint.tap_ring_frames)),
    )?;
    out.push(p);
    let (p, plays) = measure(
        &format!("play frame ring ({} frames)", cfg.endpoint.play_ring_frames),
        |_| Ok(frame_ring(cfg.endpoint.play_ring_frames)),
    )?;
    out.push(p);
    let (p, socks) = measure("bound UDP socket (process side only)", |_| {
        crate::ceiling::bind_sockets(1, 256 * 1024)
    })?;
    out.push(p);
    drop((eps, stats, jbs, taps, plays, socks));
    Ok(out)
}
