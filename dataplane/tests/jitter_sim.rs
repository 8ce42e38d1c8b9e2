//! The jitter buffer driven by simulated networks, faster than real time.
//!
//! Every scenario is a list of packets with arrival times; the driver
//! delivers them and polls frames on the buffer's own schedule (or at
//! arbitrary times), exactly as the daemon's loop would. Input samples are a
//! pure function of (SSRC, RTP timestamp), so any frame of received audio
//! can be checked sample by sample.

use mediagw_dataplane::jitter::{
    Frame, FrameFlags, JitterBuffer, JitterConfig, JitterCounters, Push,
};
use mediagw_dataplane::units::{ClockRate, Nanos, RtpTimestamp, Seq, Ssrc};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SSRC: Ssrc = Ssrc(0x1e80_6360);

/// The input signal: a recognisable sample for every (source, timestamp).
fn sample(ssrc: Ssrc, ts: u32) -> i16 {
    (ts.wrapping_add(ssrc.0.rotate_left(7))
        .wrapping_mul(2_654_435_761)
        >> 17) as i16
}

#[derive(Debug, Clone)]
struct Pkt {
    arrival: Nanos,
    ssrc: Ssrc,
    seq: u16,
    ts: u32,
    marker: bool,
    len: usize,
}

impl Pkt {
    fn samples(&self) -> Vec<i16> {
        (0..self.len as u32)
            .map(|i| sample(self.ssrc, self.ts.wrapping_add(i)))
            .collect()
    }
}

/// A regular stream: `count` packets of `ptime_ms` from `(seq0, ts0)`, the
/// k-th arriving when its last sample was captured plus `delay_ms`.
fn stream(rate: u32, ptime_ms: u32, count: usize, seq0: u16, ts0: u32, delay_ms: u64) -> Vec<Pkt> {
    let n = (rate / 1000 * ptime_ms) as usize;
    (0..count)
        .map(|k| Pkt {
            arrival: Nanos::from_millis((k as u64 + 1) * u64::from(ptime_ms) + delay_ms),
            ssrc: SSRC,
            seq: seq0.wrapping_add(k as u16),
            ts: ts0.wrapping_add((k * n) as u32),
            marker: false,
            len: n,
        })
        .collect()
}

#[derive(Default)]
struct Run {
    frames: Vec<Frame>,
    pushes: Vec<(u16, Push)>,
    /// (target, current) after every frame.
    delays: Vec<(u32, u32)>,
}

/// Delivers `pkts` (sorted by arrival here) and polls every frame when it
/// is due, up to `until`.
fn run(jb: &mut JitterBuffer, mut pkts: Vec<Pkt>, until: Nanos) -> Run {
    pkts.sort_by_key(|p| p.arrival);
    let mut out = Run::default();
    let mut next = 0;
    loop {
        let t_pkt = pkts.get(next).map(|p| p.arrival);
        let t = match (t_pkt, jb.poll_timeout()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if t > until {
            break;
        }
        while let Some(p) = pkts.get(next).filter(|p| p.arrival <= t) {
            let push = jb.handle_packet(
                p.ssrc,
                Seq(p.seq),
                RtpTimestamp(p.ts),
                p.marker,
                &p.samples(),
                p.arrival,
            );
            out.pushes.push((p.seq, push));
            next += 1;
        }
        while let Some(f) = jb.poll_frame(t) {
            out.frames.push(*f);
            let c = jb.counters();
            out.delays.push((c.target_delay_ms, c.current_delay_ms));
        }
    }
    out
}

/// Every frame of received audio (no flag but RESYNC/SKIPPED) carries
/// exactly the input at its timestamp; PARTIAL frames carry it where
/// `received(ts)` says the sample arrived in time.
fn check_content(frames: &[Frame], received: impl Fn(u32) -> bool) {
    for f in frames {
        let synthetic = f.flags.contains(FrameFlags::CONCEALED);
        let partial = f.flags.contains(FrameFlags::PARTIAL);
        if synthetic {
            continue;
        }
        for (i, &s) in f.samples().iter().enumerate() {
            let ts = f.media_ts.0.wrapping_add(i as u32);
            if !partial || received(ts) {
                assert_eq!(
                    s,
                    sample(f.ssrc, ts),
                    "frame {} sample {i} ({:?})",
                    f.seq,
                    f.flags
                );
            }
        }
    }
}

/// Frame sequence +1, lengths, and media_ts steps as documented on
/// `Frame::media_ts`.
fn check_sequence(frames: &[Frame], frame_samples: u32) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq, i as u64, "frame seq");
        assert_eq!(usize::from(f.len), frame_samples as usize);
        assert_eq!(f.samples().len(), frame_samples as usize);
        if f.flags.contains(FrameFlags::INSERTED) {
            assert!(f.flags.contains(FrameFlags::CONCEALED));
        }
        assert!(
            !(f.flags.contains(FrameFlags::CONCEALED) && f.flags.contains(FrameFlags::PARTIAL))
        );
        assert!(!(f.flags.contains(FrameFlags::SKIPPED) && f.flags.contains(FrameFlags::INSERTED)));
        let Some(prev) = i.checked_sub(1).map(|j| frames[j]) else {
            continue;
        };
        if f.flags.contains(FrameFlags::RESYNC) {
            continue;
        }
        let step = if prev.flags.contains(FrameFlags::INSERTED) {
            0
        } else if f.flags.contains(FrameFlags::SKIPPED) {
            2 * frame_samples
        } else {
            frame_samples
        };
        assert_eq!(
            f.media_ts.0,
            prev.media_ts.0.wrapping_add(step),
            "media_ts step at frame {} ({:?} after {:?})",
            f.seq,
            f.flags,
            prev.flags
        );
    }
}

fn concat(frames: &[Frame]) -> Vec<i16> {
    frames
        .iter()
        .flat_map(|f| f.samples().iter().copied())
        .collect()
}

fn config(rate: u32) -> JitterConfig {
    JitterConfig::new(ClockRate(rate))
}

// ---- exact playout ----

#[test]
fn in_order_any_ptime_any_rate_plays_the_input_exactly() {
    for rate in [8000u32, 16000] {
        for ptime in [10u32, 20, 30, 60] {
            let mut jb = JitterBuffer::new(config(rate)).unwrap();
            let count = (2400 / ptime) as usize; // 2.4 s
            let pkts = stream(rate, ptime, count, 100, 5_000, 3);
            let total = count * (rate / 1000 * ptime) as usize;
            let r = run(
                &mut jb,
                pkts,
                Nanos::from_millis(2_400 + 3 + ptime as u64 + 20),
            );
            let f = jb.frame_samples();
            let played = total / f;
            assert!(
                r.frames.len() >= played,
                "{rate} Hz {ptime} ms: {} frames",
                r.frames.len()
            );
            let head = &r.frames[..played];
            assert!(
                head.iter().all(|f| f.flags.is_empty()),
                "{rate} Hz {ptime} ms"
            );
            let want: Vec<i16> = (0..total as u32).map(|i| sample(SSRC, 5_000 + i)).collect();
            assert_eq!(concat(head), want, "{rate} Hz {ptime} ms");
            check_sequence(&r.frames, f as u32);
            let c = jb.counters();
            assert_eq!(
                (
                    c.late_dropped,
                    c.duplicates,
                    c.overflow_dropped,
                    c.inserted,
                    c.skipped,
                    c.resyncs
                ),
                (0, 0, 0, 0, 0, 0)
            );
            assert_eq!((c.target_delay_ms, c.current_delay_ms), (20, 20));
            assert!(r.pushes.iter().all(|&(_, p)| p == Push::Stored));
        }
    }
}

#[test]
fn first_frame_waits_for_the_delay() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let p = &stream(8000, 20, 1, 0, 0, 0)[0];
    jb.handle_packet(
        p.ssrc,
        Seq(p.seq),
        RtpTimestamp(p.ts),
        false,
        &p.samples(),
        p.arrival,
    );
    assert_eq!(jb.poll_timeout(), Some(Nanos::from_millis(40)));
}

// ---- impairments ----

#[test]
fn reorder_within_the_depth_is_absorbed_exactly() {
    let cfg = JitterConfig {
        min_delay_ms: 60,
        ..config(8000)
    };
    let mut jb = JitterBuffer::new(cfg).unwrap();
    let mut pkts = stream(8000, 20, 100, 0, 0, 5);
    // 11 before 10, and 30 after 31 and 32.
    pkts[10].arrival = pkts[11].arrival + std::time::Duration::from_millis(5);
    pkts[30].arrival = pkts[32].arrival + std::time::Duration::from_millis(1);
    let r = run(&mut jb, pkts, Nanos::from_millis(2_200));
    assert!(r.frames.len() >= 100);
    assert!(r.frames[..100].iter().all(|f| f.flags.is_empty()));
    let want: Vec<i16> = (0..100 * 160).map(|i| sample(SSRC, i)).collect();
    assert_eq!(concat(&r.frames[..100]), want);
    assert_eq!(jb.counters().late_dropped, 0);
}

#[test]
fn gap_is_concealed_and_flagged() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 50, 0, 0, 5);
    pkts.remove(10);
    let r = run(&mut jb, pkts, Nanos::from_millis(1_000));
    assert_eq!(r.frames[10].flags, FrameFlags::CONCEALED);
    assert_eq!(r.frames[10].media_ts, RtpTimestamp(1600));
    assert!(
        r.frames[..45]
            .iter()
            .enumerate()
            .all(|(i, f)| i == 10 || f.flags.is_empty())
    );
    check_content(&r.frames, |_| true);
    check_sequence(&r.frames, 160);
    assert_eq!(r.frames.len(), 48);
    assert_eq!(jb.counters().concealed, 1);
}

#[test]
fn gap_in_30ms_packets_gives_partial_frames() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 30, 40, 0, 0, 5);
    let lost = pkts.remove(5); // samples 1200..1440: frames 7 (1120..1280) and 8 (1280..1440)
    let r = run(&mut jb, pkts, Nanos::from_millis(1_000));
    assert_eq!(r.frames[7].flags, FrameFlags::PARTIAL);
    assert_eq!(r.frames[8].flags, FrameFlags::CONCEALED);
    assert_eq!(r.frames[9].flags, FrameFlags::NONE);
    let in_lost = |ts: u32| ts >= lost.ts && ts < lost.ts + 240;
    check_content(&r.frames, |ts| !in_lost(ts));
    assert_eq!(
        &r.frames[7].samples()[..80],
        &(1120..1200).map(|t| sample(SSRC, t)).collect::<Vec<_>>()[..]
    );
    let c = jb.counters();
    assert_eq!(c.partial, 1);
}

#[test]
fn late_packet_is_dropped_and_counted() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 50, 0, 0, 5);
    pkts[10].arrival = pkts[10].arrival + std::time::Duration::from_millis(80);
    let r = run(&mut jb, pkts, Nanos::from_millis(1_000));
    assert!(r.pushes.contains(&(10, Push::Late)));
    assert_eq!(jb.counters().late_dropped, 1);
    assert_eq!(r.frames[10].flags, FrameFlags::CONCEALED);
    check_content(&r.frames, |_| true);
    check_sequence(&r.frames, 160);
    // The late arrival raised the target: the buffer grew by inserting.
    assert!(jb.counters().inserted >= 1);
}

#[test]
fn duplicate_is_counted_and_harmless() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 50, 0, 0, 5);
    let mut dup = pkts[10].clone();
    dup.arrival = dup.arrival + std::time::Duration::from_millis(3);
    pkts.push(dup);
    let r = run(&mut jb, pkts, Nanos::from_millis(1_200));
    assert!(r.pushes.contains(&(10, Push::Duplicate)));
    assert_eq!(jb.counters().duplicates, 1);
    let want: Vec<i16> = (0..49 * 160).map(|i| sample(SSRC, i)).collect();
    assert_eq!(concat(&r.frames[..49]), want);
}

#[test]
fn overflow_is_counted_and_memory_bounded() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let before = jb.footprint_bytes();
    // 2 s of audio arrives in one burst: 280 ms fit.
    let mut pkts = stream(8000, 20, 100, 0, 0, 0);
    for p in &mut pkts {
        p.arrival = Nanos::from_millis(1);
    }
    let r = run(&mut jb, pkts, Nanos::from_millis(5_000));
    let c = jb.counters();
    assert_eq!(c.overflow_dropped, 100 - 14);
    assert_eq!(c.resyncs, 0);
    assert_eq!(jb.footprint_bytes(), before);
    let want: Vec<i16> = (0..14 * 160).map(|i| sample(SSRC, i)).collect();
    assert_eq!(concat(&r.frames[..14]), want);
    // Then underrun, concealment, and playout stops after 2 s of it.
    assert!(
        r.frames[14..]
            .iter()
            .all(|f| f.flags.contains(FrameFlags::CONCEALED))
    );
    assert_eq!(jb.poll_timeout(), None);
}

// ---- resync ----

#[test]
fn asterisk_marker_after_silence_is_a_gap_not_a_resync() {
    // As in transcripts/ami-inbound: timestamp steps of 160 and one of 880
    // with the marker bit, after ~110 ms without packets.
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 20, 30_598, 160, 5);
    let mut after = stream(
        8000,
        20,
        20,
        30_618,
        160 + 19 * 160 + 880,
        5 + 19 * 20 + 110,
    );
    after[0].marker = true;
    let gap_start = 160 + 20 * 160;
    let gap_end = after[0].ts;
    let end = after[19].ts + 160;
    pkts.extend(after);
    let r = run(&mut jb, pkts, Nanos::from_millis(1_000));
    assert!(r.pushes.iter().all(|&(_, p)| p == Push::Stored));
    assert_eq!(jb.counters().resyncs, 0);
    check_sequence(&r.frames, 160);
    check_content(&r.frames, |ts| {
        !(gap_start..gap_end).contains(&ts) && ts < end
    });
    let flags: Vec<FrameFlags> = r.frames[19..26].iter().map(|f| f.flags).collect();
    use FrameFlags as F;
    let c = F::CONCEALED;
    assert_eq!(flags, [F::NONE, c, c, c, c, F::PARTIAL, F::NONE]);
}

#[test]
fn marker_with_a_huge_jump_resyncs_at_once() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 10, 0, 0, 5);
    let mut after = stream(8000, 20, 10, 10, 3_000_000, 5 + 200);
    after[0].marker = true;
    pkts.extend(after);
    let r = run(&mut jb, pkts, Nanos::from_millis(800));
    assert!(r.pushes.contains(&(10, Push::Resync)));
    let i = r
        .frames
        .iter()
        .position(|f| f.flags.contains(FrameFlags::RESYNC))
        .unwrap();
    assert_eq!(r.frames[i].media_ts, RtpTimestamp(3_000_000));
    assert!(
        r.frames[..i]
            .iter()
            .all(|f| !f.flags.contains(FrameFlags::RESYNC))
    );
    check_sequence(&r.frames, 160);
    check_content(&r.frames, |_| true);
    assert_eq!(jb.counters().resyncs, 1);
}

#[test]
fn jump_without_marker_resyncs_after_confirmation() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 10, 0, 0, 5);
    pkts.extend(stream(8000, 20, 10, 10, 3_000_000, 5 + 200));
    let r = run(&mut jb, pkts, Nanos::from_millis(800));
    let verdicts: Vec<Push> = r.pushes[10..13].iter().map(|&(_, p)| p).collect();
    assert_eq!(verdicts, [Push::Overflow, Push::Overflow, Push::Resync]);
    let i = r
        .frames
        .iter()
        .position(|f| f.flags.contains(FrameFlags::RESYNC))
        .unwrap();
    assert_eq!(r.frames[i].media_ts, RtpTimestamp(3_000_000 + 2 * 160));
    check_sequence(&r.frames, 160);
    check_content(&r.frames, |_| true);
}

#[test]
fn backward_jump_resyncs_too() {
    let mut jb = JitterBuffer::new(config(16000)).unwrap();
    let mut pkts = stream(16000, 20, 30, 0, 5_000_000, 5);
    pkts.extend(stream(16000, 20, 30, 30, 1_000, 5 + 600));
    let r = run(&mut jb, pkts, Nanos::from_millis(1_500));
    assert_eq!(jb.counters().resyncs, 1);
    check_sequence(&r.frames, 320);
    check_content(&r.frames, |_| true);
}

#[test]
fn ssrc_change_flushes_and_resyncs() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 10, 0, 0, 5);
    let mut other = stream(8000, 20, 10, 777, 90_000, 5 + 200);
    for p in &mut other {
        p.ssrc = Ssrc(0xdead_beef);
    }
    pkts.extend(other);
    let r = run(&mut jb, pkts, Nanos::from_millis(800));
    assert!(r.pushes.contains(&(777, Push::Resync)));
    let i = r
        .frames
        .iter()
        .position(|f| f.flags.contains(FrameFlags::RESYNC))
        .unwrap();
    assert_eq!(r.frames[i].ssrc, Ssrc(0xdead_beef));
    assert_eq!(r.frames[i].media_ts, RtpTimestamp(90_000));
    assert!(r.frames[..i].iter().all(|f| f.ssrc == SSRC));
    assert!(r.frames[i..].iter().all(|f| f.ssrc == Ssrc(0xdead_beef)));
    check_sequence(&r.frames, 160);
    check_content(&r.frames, |_| true);
}

#[test]
fn long_silence_stops_playout_and_the_next_packet_restarts_it() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut pkts = stream(8000, 20, 10, 0, 0, 5);
    // 5 s later, timestamps continuing as if nothing happened.
    pkts.extend(stream(8000, 20, 10, 10, 1600, 5 + 5_000));
    let r = run(&mut jb, pkts, Nanos::from_millis(6_000));
    assert_eq!(jb.counters().resyncs, 1);
    let i = r
        .frames
        .iter()
        .position(|f| f.flags.contains(FrameFlags::RESYNC))
        .unwrap();
    // Ten frames of audio, then 2 s of concealment, then the restart.
    assert_eq!(i, 10 + 100);
    assert_eq!(r.frames[i].media_ts, RtpTimestamp(1600));
    check_sequence(&r.frames, 160);
    check_content(&r.frames, |_| true);
}

#[test]
fn sequence_and_timestamp_wrap() {
    for rate in [8000u32, 16000] {
        let mut jb = JitterBuffer::new(config(rate)).unwrap();
        let n = rate / 50;
        let pkts = stream(rate, 20, 60, u16::MAX - 20, u32::MAX - 25 * n + 7, 5);
        let r = run(&mut jb, pkts, Nanos::from_millis(1_400));
        assert!(r.frames.len() >= 60);
        assert!(r.frames[..60].iter().all(|f| f.flags.is_empty()));
        check_sequence(&r.frames, n);
        check_content(&r.frames, |_| true);
        assert_eq!(jb.counters().resyncs, 0);
    }
}

// ---- adaptation ----

#[test]
fn target_follows_jitter_up_and_back_down() {
    let mut jb = JitterBuffer::new(config(8000)).unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    // 10 s of up to 150 ms of jitter, then 30 s of a clean network.
    let mut pkts = stream(8000, 20, 2000, 0, 0, 10);
    for p in &mut pkts[..500] {
        p.arrival = p.arrival + std::time::Duration::from_millis(rng.random_range(0..=150));
    }
    let r = run(&mut jb, pkts, Nanos::from_millis(40_000));
    let (min, max) = (20, 200);
    assert!(r.delays.iter().all(|&(t, _)| (min..=max).contains(&t)));
    assert!(r.delays.iter().all(|&(_, c)| c <= 280));
    // During the jitter the target rose close to the peak + a frame, and
    // the delay followed it.
    let noisy = &r.delays[250..500];
    let peak = noisy.iter().map(|&(t, _)| t).max().unwrap();
    assert!((150..=max).contains(&peak), "peak target {peak}");
    let (t, c) = r.delays[495];
    assert!(c + 10 >= t, "delay {c} behind target {t}");
    // Once calm, both decay back to the minimum.
    let (t, c) = *r.delays.last().unwrap();
    assert_eq!(t, min);
    assert!((10..40).contains(&c), "settled delay {c}");
    let cnt = jb.counters();
    assert!(cnt.inserted > 0 && cnt.skipped > 0, "{cnt:?}");
    check_sequence(&r.frames, 160);
    check_content(&r.frames, |_| true);
}

// ---- properties ----

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    rate: u32,
    ptime_ms: u32,
    odd_sizes: bool,
    loss: f64,
    dup: f64,
    jitter_ms: u64,
    drift_ppm: i64,
    jumps: bool,
    count: usize,
    poll_max_ms: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        prop_oneof![Just(8000u32), Just(16000)],
        prop_oneof![Just(10u32), Just(20), Just(30), Just(60)],
        any::<bool>(),
        0.0..0.3f64,
        0.0..0.2f64,
        0u64..250,
        -1000i64..1000,
        any::<bool>(),
        20usize..300,
        0u64..80,
    )
        .prop_map(
            |(
                seed,
                rate,
                ptime_ms,
                odd_sizes,
                loss,
                dup,
                jitter_ms,
                drift_ppm,
                jumps,
                count,
                poll_max_ms,
            )| Scenario {
                seed,
                rate,
                ptime_ms,
                odd_sizes,
                loss,
                dup,
                jitter_ms,
                drift_ppm,
                jumps,
                count,
                poll_max_ms,
            },
        )
}

/// Packets for a scenario, sorted by arrival.
fn impaired(s: &Scenario) -> Vec<Pkt> {
    let mut rng = SmallRng::seed_from_u64(s.seed);
    let mut pkts = Vec::new();
    let (mut ssrc, mut seq, mut ts) = (SSRC, rng.random::<u16>(), rng.random::<u32>());
    let mut send_ns = 0f64;
    for _ in 0..s.count {
        let len = if s.odd_sizes {
            rng.random_range(1..=(s.rate / 1000 * 70) as usize)
        } else {
            (s.rate / 1000 * s.ptime_ms) as usize
        };
        let mut marker = false;
        if s.jumps && rng.random_bool(0.02) {
            match rng.random_range(0..3) {
                0 => ts = ts.wrapping_add(rng.random()),
                1 => ssrc = Ssrc(rng.random()),
                _ => {
                    ts = ts.wrapping_add(rng.random_range(0..20_000));
                    marker = true;
                }
            }
        }
        send_ns += len as f64 * 1e9 / f64::from(s.rate) * (1.0 + s.drift_ppm as f64 * 1e-6);
        let base = send_ns as u64 + 5_000_000;
        if !rng.random_bool(s.loss) {
            let jitter = rng.random_range(0..=s.jitter_ms * 1_000_000);
            let p = Pkt {
                arrival: Nanos(base + jitter),
                ssrc,
                seq,
                ts,
                marker,
                len,
            };
            if rng.random_bool(s.dup) {
                let mut d = p.clone();
                d.arrival = Nanos(d.arrival.0 + rng.random_range(0..60_000_000));
                pkts.push(d);
            }
            pkts.push(p);
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(len as u32);
    }
    pkts.sort_by_key(|p| p.arrival);
    pkts
}

fn check_counters(c: &JitterCounters, frames: usize, cfg: &JitterConfig) {
    assert_eq!(c.played, frames as u64);
    assert!(c.concealed + c.partial <= c.played);
    assert!(c.inserted <= c.concealed);
    assert!(c.current_delay_ms <= cfg.capacity_ms);
    assert!((cfg.min_delay_ms..=cfg.max_delay_ms).contains(&c.target_delay_ms));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// For any seeded schedule (loss, reorder, duplicates, jitter, drift,
    /// jumps, new sources, odd sizes) polled at arbitrary times: frames come
    /// out once, in order, whole, with the right samples, and the counters
    /// agree with what came out.
    #[test]
    fn never_twice_never_out_of_order(s in scenario()) {
        let cfg = config(s.rate);
        let mut jb = JitterBuffer::new(cfg).unwrap();
        let footprint = jb.footprint_bytes();
        let pkts = impaired(&s);
        let mut rng = SmallRng::seed_from_u64(s.seed ^ 0x5eed);
        let end = pkts.last().map_or(0, |p| p.arrival.0) + 3_000_000_000;
        let mut frames: Vec<Frame> = Vec::new();
        let mut now = 0u64;
        let mut next = 0;
        while now < end {
            now += rng.random_range(0..=s.poll_max_ms * 1_000_000);
            while let Some(p) = pkts.get(next).filter(|p| p.arrival.0 <= now) {
                jb.handle_packet(p.ssrc, Seq(p.seq), RtpTimestamp(p.ts), p.marker, &p.samples(), p.arrival);
                next += 1;
            }
            let mut burst = 0;
            while let Some(f) = jb.poll_frame(Nanos(now)) {
                frames.push(*f);
                burst += 1;
                prop_assert!(burst <= 1 + s.poll_max_ms as usize / 20 + 1);
            }
            if let Some(due) = jb.poll_timeout() {
                prop_assert!(due.0 > now, "poll_frame left a due frame behind");
            }
            check_counters(&jb.counters(), frames.len(), &cfg);
            if s.poll_max_ms == 0 {
                now += 1_000_000;
            }
        }
        check_sequence(&frames, jb.frame_samples() as u32);
        check_content(&frames, |_| false);
        prop_assert_eq!(jb.footprint_bytes(), footprint);
    }
}
