//! Micro-benchmarks of the media core, one 20 ms G.711 packet at a time.
//!
//! Each group has a baseline measured in the same run, since this machine is
//! shared and noisy and only ratios travel:
//! - `baseline/copy_172`: copying the 172-byte datagram once (the least any
//!   per-packet code does);
//! - `decode/*_branchy`: G.711 decoded by the reference algorithm (shift and
//!   branch per sample) instead of our table.
//!
//! Run: `cargo bench -p mediagw-bench --bench media_core`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mediagw_dataplane::jitter::{Frame, JitterBuffer, JitterConfig};
use mediagw_dataplane::ring::frame_ring;
use mediagw_dataplane::rtp::{RtpHeader, RtpPacket, write_rtp};
use mediagw_dataplane::stats::{ReceiveStats, StatsConfig};
use mediagw_dataplane::units::{ClockRate, Nanos, PayloadType, RtpTimestamp, Seq, Ssrc};
use mediagw_shared::codec::Codec;
use mediagw_shared::g711;

const PTIME: Duration = Duration::from_millis(20);

/// A stream of 20 ms PCMU packets as Asterisk sends them.
struct Stream {
    seq: u16,
    ts: u32,
    at: Nanos,
    payload: [u8; 160],
}

impl Stream {
    fn new() -> Self {
        let mut payload = [0u8; 160];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = g711::linear_to_ulaw(((i as f32 * 0.35).sin() * 8000.0) as i16);
        }
        Self {
            seq: 30598,
            ts: 160,
            at: Nanos::from_millis(1),
            payload,
        }
    }

    fn next(&mut self, out: &mut [u8; 172]) -> Nanos {
        let h = RtpHeader {
            marker: false,
            payload_type: PayloadType(0),
            seq: Seq(self.seq),
            timestamp: RtpTimestamp(self.ts),
            ssrc: Ssrc(0x1e80_6360),
        };
        write_rtp(&h, &self.payload, out).expect("172 bytes fit");
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        let at = self.at;
        self.at = self.at + PTIME;
        at
    }
}

fn jitter_config() -> JitterConfig {
    JitterConfig {
        clock_rate: ClockRate::NARROWBAND,
        frame_ms: 20,
        min_delay_ms: 20,
        max_delay_ms: 200,
        capacity_ms: 400,
    }
}

/// G.711 mu-law decode by the reference algorithm, branch per sample.
fn ulaw_branchy(code: u8) -> i16 {
    let u = !code;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

fn bench_parse(c: &mut Criterion) {
    let mut s = Stream::new();
    let mut pkt = [0u8; 172];
    s.next(&mut pkt);
    let mut g = c.benchmark_group("per_packet");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/copy_172", |b| {
        let mut dst = [0u8; 172];
        b.iter(|| {
            dst.copy_from_slice(black_box(&pkt));
            black_box(&dst);
        })
    });
    g.bench_function("rtp_parse", |b| {
        b.iter(|| {
            let p = RtpPacket::parse(black_box(&pkt)).expect("valid");
            black_box((p.seq(), p.timestamp(), p.ssrc(), p.payload().len()))
        })
    });
    g.bench_function("stats_update", |b| {
        let mut st = ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND));
        let mut seq = 0u16;
        let mut at = Nanos(0);
        b.iter(|| {
            seq = seq.wrapping_add(1);
            at = at + PTIME;
            black_box(st.handle_packet(
                Ssrc(1),
                Seq(seq),
                RtpTimestamp(u32::from(seq) * 160),
                160,
                at,
            ))
        })
    });
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let s = Stream::new();
    let mut out = [0i16; 160];
    let mut g = c.benchmark_group("decode_160");
    g.throughput(Throughput::Elements(160));
    g.bench_function("ulaw_table", |b| {
        b.iter(|| black_box(g711::decode_ulaw(black_box(&s.payload), &mut out)))
    });
    g.bench_function("alaw_table", |b| {
        b.iter(|| black_box(g711::decode_alaw(black_box(&s.payload), &mut out)))
    });
    g.bench_function("ulaw_branchy", |b| {
        b.iter(|| {
            for (o, &c) in out.iter_mut().zip(black_box(&s.payload)) {
                *o = ulaw_branchy(c);
            }
            black_box(&out);
        })
    });
    let wide = [0x12u8; 640];
    let mut out16 = [0i16; 320];
    g.throughput(Throughput::Elements(320));
    g.bench_function("slin16_320", |b| {
        b.iter(|| black_box(Codec::Slin16.decode(black_box(&wide), &mut out16)))
    });
    g.finish();
}

fn bench_jitter_and_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_packet");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jitter_push_pull", |b| {
        let mut jb = JitterBuffer::new(jitter_config()).expect("valid");
        let samples = [100i16; 160];
        let mut seq = 0u16;
        let mut at = Nanos::from_millis(1);
        b.iter(|| {
            seq = seq.wrapping_add(1);
            at = at + PTIME;
            jb.handle_packet(
                Ssrc(7),
                Seq(seq),
                RtpTimestamp(u32::from(seq) * 160),
                false,
                black_box(&samples),
                at,
            );
            while let Some(f) = jb.poll_frame(at) {
                black_box(f.len);
            }
        })
    });
    g.bench_function("ring_push_pop", |b| {
        let (mut tx, mut rx) = frame_ring(16);
        let frame = Frame::default();
        let mut out = Frame::default();
        b.iter(|| {
            tx.push(black_box(&frame)).expect("room");
            black_box(rx.pop_into(&mut out));
        })
    });
    g.finish();
}

/// The whole receive path of one packet: parse, statistics, decode, jitter
/// buffer in, due frames out, frames onto the ring (drained as the tap would).
fn bench_pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_packet");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pipeline", |b| {
        let mut s = Stream::new();
        let mut st = ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND));
        let mut jb = JitterBuffer::new(jitter_config()).expect("valid");
        let (mut tx, mut rx) = frame_ring(16);
        let mut pcm = [0i16; 1500];
        let mut drained = Frame::default();
        let src: SocketAddr = ([127, 0, 0, 1], 10028).into();
        b.iter_batched_ref(
            || {
                let mut pkt = [0u8; 172];
                let at = s.next(&mut pkt);
                (pkt, at)
            },
            |(pkt, at)| {
                let p = RtpPacket::parse(black_box(&pkt[..])).expect("valid");
                black_box(src);
                st.handle_packet(p.ssrc(), p.seq(), p.timestamp(), p.payload().len(), *at);
                let n = Codec::Pcmu.decode(p.payload(), &mut pcm);
                jb.handle_packet(p.ssrc(), p.seq(), p.timestamp(), p.marker(), &pcm[..n], *at);
                while let Some(f) = jb.poll_frame(*at) {
                    let _ = tx.push(f);
                }
                while rx.pop_into(&mut drained) {}
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench_parse, bench_decode, bench_jitter_and_ring, bench_pipeline
}
criterion_main!(benches);
