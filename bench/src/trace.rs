//! A fixed synthetic trace through a per-packet core, for instruction
//! counts: the same packets, in the same order, with the same arrival times,
//! every run, so `valgrind --tool=callgrind` counts the same instructions on
//! any machine, busy or idle (see [`crate::cgrind`]).
//!
//! The trace is `streams` G.711 streams, 20 ms apart each, phases spread
//! evenly, 172-byte datagrams. Variants:
//!
//! - `generate`: only builds the datagrams (the trace's own cost, subtracted
//!   from the others);
//! - `ceiling`: checks the RTP version and counts sequence numbers;
//! - `mediagw`: the daemon's per-packet core, [`Endpoint::handle_datagram`]
//!   (parse, latch, statistics, decode, jitter buffer) and, when the
//!   endpoint's timer is due, [`Endpoint::handle_timeout`] (play-out onto
//!   the tapped frame ring), with the ring drained as the tap would;
//! - `naive`: parse, statistics, decode into a fresh `Vec`, pushed into a
//!   `Mutex<VecDeque>`, drained every 20 ms.
//!
//! Leaves out: the kernel and the engine (syscalls are outside callgrind's
//! view; the capacity runs measure them).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mediagw_dataplane::config::Config;
use mediagw_dataplane::endpoint::{Endpoint, EndpointShared, EndpointSpec, MAX_PACKET_SAMPLES};
use mediagw_dataplane::jitter::{Frame, JitterBuffer};
use mediagw_dataplane::ring::{FrameConsumer, frame_ring};
use mediagw_dataplane::rtp::{RtpHeader, RtpPacket, write_rtp};
use mediagw_dataplane::stats::{ReceiveStats, StatsConfig};
use mediagw_dataplane::units::{ClockRate, Nanos, PayloadType, RtpTimestamp, Seq, Ssrc};
use mediagw_shared::codec::Codec;
use mediagw_shared::g711;

use crate::error::{BenchError, Result};

/// Which per-packet core runs over the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Building the datagrams only.
    Generate,
    /// Version check and sequence counting.
    Ceiling,
    /// The daemon's endpoint core.
    Mediagw,
    /// The same, frames copied onto the tap ring.
    MediagwTapped,
    /// The same, 5% of packets lost (concealed).
    MediagwLoss,
    /// The naive tokio receiver's per-packet work, without tokio.
    Naive,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Self; 6] = [
        Self::Generate,
        Self::Ceiling,
        Self::Mediagw,
        Self::MediagwTapped,
        Self::MediagwLoss,
        Self::Naive,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Ceiling => "ceiling",
            Self::Mediagw => "mediagw",
            Self::MediagwTapped => "mediagw-tapped",
            Self::MediagwLoss => "mediagw-loss",
            Self::Naive => "naive",
        }
    }

    /// Parses [`Variant::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

const PTIME_NS: u64 = 20_000_000;

/// The trace's datagrams: one prepared buffer per stream, updated in place.
struct Trace {
    streams: usize,
    bufs: Vec<[u8; 172]>,
    seq: Vec<u16>,
    ts: Vec<u32>,
}

impl Trace {
    fn new(streams: usize) -> Self {
        let mut payload = [0u8; 160];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = g711::linear_to_ulaw(((i as f32 * 0.35).sin() * 8000.0) as i16);
        }
        let mut bufs = vec![[0u8; 172]; streams];
        for (i, b) in bufs.iter_mut().enumerate() {
            let h = RtpHeader {
                marker: false,
                payload_type: PayloadType(0),
                seq: Seq(0),
                timestamp: RtpTimestamp(0),
                ssrc: Ssrc(0x1000 + i as u32),
            };
            // 172 bytes always fit a 12-byte header and 160 bytes.
            let _ = write_rtp(&h, &payload, b);
        }
        Self {
            streams,
            bufs,
            seq: (0..streams).map(|i| (i * 7919) as u16).collect(),
            ts: (0..streams)
                .map(|i| (i as u32).wrapping_mul(104_729))
                .collect(),
        }
    }

    /// Packet `p` of the trace: (stream, arrival, datagram).
    #[inline]
    fn next(&mut self, p: u64) -> (usize, Nanos, &[u8; 172]) {
        let s = (p % self.streams as u64) as usize;
        let k = p / self.streams as u64;
        let at = Nanos(1_000_000_000 + k * PTIME_NS + s as u64 * PTIME_NS / self.streams as u64);
        let b = &mut self.bufs[s];
        b[2..4].copy_from_slice(&self.seq[s].to_be_bytes());
        b[4..8].copy_from_slice(&self.ts[s].to_be_bytes());
        self.seq[s] = self.seq[s].wrapping_add(1);
        self.ts[s] = self.ts[s].wrapping_add(160);
        (s, at, b)
    }
}

/// Runs `packets` packets of a `streams`-stream trace through `variant`;
/// returns a checksum of what it produced (so nothing is optimised away,
/// and a run can be checked).
pub fn run(variant: Variant, streams: usize, packets: u64) -> Result<u64> {
    if streams == 0 {
        return Err(BenchError::new("a trace needs at least one stream"));
    }
    let mut trace = Trace::new(streams);
    let mut sum = 0u64;
    match variant {
        Variant::Generate => {
            for p in 0..packets {
                let (s, at, b) = trace.next(p);
                sum = sum.wrapping_add(u64::from(b[3]) + s as u64 + at.0);
            }
        }
        Variant::Ceiling => {
            let mut last = vec![None::<u16>; streams];
            let (mut count, mut gaps) = (0u64, 0u64);
            for p in 0..packets {
                let (s, _, b) = trace.next(p);
                count += 1;
                if b[0] >> 6 != 2 {
                    continue;
                }
                let seq = u16::from_be_bytes([b[2], b[3]]);
                if last[s].is_some_and(|l| l.wrapping_add(1) != seq) {
                    gaps += 1;
                }
                last[s] = Some(seq);
            }
            sum = count + gaps;
        }
        Variant::Mediagw => sum = run_mediagw(&mut trace, packets, false, false)?,
        Variant::MediagwTapped => sum = run_mediagw(&mut trace, packets, true, false)?,
        Variant::MediagwLoss => sum = run_mediagw(&mut trace, packets, false, true)?,
        Variant::Naive => {
            let mut stats: Vec<ReceiveStats> = (0..streams)
                .map(|_| ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND)))
                .collect();
            let queues: Vec<Mutex<VecDeque<Vec<i16>>>> =
                (0..streams).map(|_| Mutex::new(VecDeque::new())).collect();
            for p in 0..packets {
                let (s, at, b) = trace.next(p);
                let Ok(pkt) = RtpPacket::parse(b) else {
                    continue;
                };
                stats[s].handle_packet(pkt.ssrc(), pkt.seq(), pkt.timestamp(), 160, at);
                let mut pcm = vec![0i16; pkt.payload().len()];
                let n = Codec::Pcmu.decode(pkt.payload(), &mut pcm);
                pcm.truncate(n);
                if let Ok(mut q) = queues[s].lock() {
                    q.push_back(pcm);
                }
                // The consumer, every 20 ms of trace time.
                if s == streams - 1 {
                    for q in &queues {
                        if let Ok(mut q) = q.lock() {
                            while let Some(f) = q.pop_front() {
                                sum = sum.wrapping_add(f[0] as u64);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(sum)
}

fn run_mediagw(trace: &mut Trace, packets: u64, tapped: bool, lossy: bool) -> Result<u64> {
    let cfg = Config::default();
    let jcfg = cfg.jitter_config(ClockRate::NARROWBAND, None, None);
    let src: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let mut eps: Vec<(Endpoint, FrameConsumer)> = Vec::with_capacity(trace.streams);
    for i in 0..trace.streams {
        let shared = Arc::new(EndpointShared::default());
        shared.tapped.store(tapped, Ordering::Relaxed);
        let (tap_tx, tap_rx) = frame_ring(cfg.endpoint.tap_ring_frames);
        let (_play_tx, play_rx) = frame_ring(cfg.endpoint.play_ring_frames);
        let spec = EndpointSpec {
            codec: Codec::Pcmu,
            payload_type: PayloadType(0),
            ptime_ms: 20,
            jitter: jcfg,
            relatch_after: Duration::from_millis(cfg.endpoint.relatch_after_ms),
            silent_after: Duration::from_millis(cfg.endpoint.silent_after_ms),
            tx_ssrc: Ssrc(0xabc0_0000 + i as u32),
            tx_first_seq: i as u16,
        };
        let jb = JitterBuffer::new(jcfg).map_err(|e| BenchError::new(e.to_string()))?;
        eps.push((Endpoint::new(spec, shared, jb, tap_tx, play_rx), tap_rx));
    }
    let mut scratch = Box::new([0i16; MAX_PACKET_SAMPLES]);
    let mut frame = Frame::default();
    let mut sum = 0u64;
    let streams = trace.streams as u64;
    for p in 0..packets {
        let (s, at, b) = trace.next(p);
        let (ep, tap) = &mut eps[s];
        // Lost: the 20th packet of each stream in every 20 (not the first).
        let lost = lossy && p / streams % 20 == 19;
        if !lost {
            std::hint::black_box(ep.handle_datagram(src, at, b, &mut scratch));
        }
        if ep.poll_timeout().is_some_and(|due| due <= at) {
            ep.handle_timeout(at);
        }
        while tap.pop_into(&mut frame) {
            sum += 1;
            std::hint::black_box(&frame);
        }
    }
    // The checksum of this variant: frames played onto the rings (tapped),
    // frames concealed (lossy), frames played (otherwise).
    if lossy {
        sum = eps
            .iter_mut()
            .map(|(e, _)| e.snapshot().jitter.concealed)
            .sum();
    } else if !tapped {
        sum = eps
            .iter_mut()
            .map(|(e, _)| e.snapshot().jitter.played)
            .sum();
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_runs_and_the_core_plays_frames() {
        for v in Variant::ALL {
            run(v, 8, 2_000).unwrap();
        }
        // 8 streams x 250 packets, 20 ms apart: after the initial playout
        // delay every packet's frame is played, so all but the last few
        // frames of each stream reached the rings.
        for v in [Variant::Mediagw, Variant::MediagwTapped] {
            let frames = run(v, 8, 2_000).unwrap();
            assert!((8 * 240..=8 * 250).contains(&frames), "{v:?}: {frames}");
        }
        // Deterministic.
        assert_eq!(
            run(Variant::Mediagw, 8, 2_000).unwrap(),
            run(Variant::Mediagw, 8, 2_000).unwrap()
        );
        assert_eq!(run(Variant::Ceiling, 4, 1_000).unwrap(), 1_000);
        // 8 streams x 250 packets, one in 20 lost: about 12 concealed each.
        let concealed = run(Variant::MediagwLoss, 8, 2_000).unwrap();
        assert!((8 * 10..=8 * 14).contains(&concealed), "{concealed}");
    }
}
