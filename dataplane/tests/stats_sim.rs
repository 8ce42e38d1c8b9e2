//! Receive statistics driven by the seeded network simulation, faster than
//! real time: exact loss and duplicate accounting under impairment,
//! property tests of the RFC 3550 invariants, and netsim determinism.

use std::time::Duration;

use proptest::prelude::*;

use mediagw_dataplane::netsim::{
    Arrival, Delivery, GilbertElliott, Impairment, NetSim, RtpSender, SentPacket,
};
use mediagw_dataplane::stats::{ReceiveStats, StatsConfig, StatsSnapshot, Verdict};
use mediagw_dataplane::units::{ClockRate, Nanos, RtpTimestamp, Seq, Ssrc};

const PTIME: Duration = Duration::from_millis(20);
const SSRC: Ssrc = Ssrc(0x5eed_0001);

fn stats() -> ReceiveStats {
    ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND))
}

fn sender(first_seq: u16) -> RtpSender {
    RtpSender::new(SSRC, ClockRate::NARROWBAND, PTIME)
        .with_seq(Seq(first_seq))
        .with_timestamp(RtpTimestamp(u32::from(first_seq).wrapping_mul(7919)))
}

fn feed<'a>(s: &mut ReceiveStats, arrivals: impl IntoIterator<Item = &'a Arrival>) -> Vec<Verdict> {
    arrivals
        .into_iter()
        .map(|a| {
            let p = a.packet;
            s.handle_packet(p.ssrc, p.seq, p.ts, p.payload_len, a.arrival)
        })
        .collect()
}

fn on_time(packet: SentPacket, arrival: Nanos) -> Arrival {
    Arrival {
        packet,
        arrival,
        duplicate: false,
        reordered: false,
    }
}

/// `n` packets from `tx`: the first two and the last over a perfect path,
/// the rest over `imp`. The first two validate the source (probation), so
/// no impaired packet is lost to probation; the last arrives after
/// everything else, so every dropped packet lies below the highest
/// sequence number and RFC 3550 counts it. Returns the impaired part's
/// delivery and every arrival in order.
fn bracketed(seed: u64, imp: Impairment, mut tx: RtpSender, n: usize) -> (Delivery, Vec<Arrival>) {
    assert!(n >= 3);
    let head: Vec<SentPacket> = tx.by_ref().take(2).collect();
    let middle: Vec<SentPacket> = tx.by_ref().take(n - 3).collect();
    let tail = tx.next().expect("RtpSender is endless");
    let delivery = NetSim::new(seed, imp).run(middle);

    let mut arrivals: Vec<Arrival> = head
        .iter()
        .map(|&p| on_time(p, p.send_time + imp.latency))
        .collect();
    arrivals.extend(delivery.arrivals.iter().copied());
    let last = arrivals.last().map_or(Nanos(0), |a| a.arrival);
    let tail_at = (tail.send_time + imp.latency).max(last + Duration::from_millis(1));
    arrivals.push(on_time(tail, tail_at));
    (delivery, arrivals)
}

/// The counters every run must satisfy, whatever the input.
fn assert_consistent(snap: &StatsSnapshot) {
    assert_eq!(
        snap.packets,
        snap.received + snap.duplicates + snap.probation_dropped + snap.bad_sequence + snap.stale,
        "every packet is classified once: {snap:?}"
    );
    assert_eq!(snap.lost, snap.expected as i64 - snap.received as i64);
    assert!(snap.late <= snap.reordered);
}

/// The acceptance scenario: 10,000 packets of 20 ms G.711 over a path with
/// 5% Gilbert–Elliott burst loss (mean burst 4), 30 ms jitter, 1%
/// reordering, 0.5% duplication and a sender clock 100 ppm fast.
#[test]
fn ten_thousand_packets_over_a_bad_path() {
    const N: usize = 10_000;
    let imp = Impairment {
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(30),
        loss: 0.0,
        burst: Some(GilbertElliott::with_mean_loss(0.05, 4.0)),
        reorder: 0.01,
        reorder_delay: Duration::from_millis(60),
        duplicate: 0.005,
        clock_drift_ppm: 100.0,
    };
    let (delivery, arrivals) = bracketed(0x00c0_ffee, imp, sender(65_000), N);
    let loss_rate = delivery.dropped.len() as f64 / N as f64;
    assert!(
        (0.03..0.07).contains(&loss_rate),
        "simulated loss {loss_rate}"
    );
    assert!(delivery.duplicates() > 0 && delivery.reordered() > 0);

    let mut s = stats();
    let mut jitter_ms = Vec::with_capacity(arrivals.len());
    for a in &arrivals[..arrivals.len() - 1] {
        let p = a.packet;
        s.handle_packet(p.ssrc, p.seq, p.ts, p.payload_len, a.arrival);
        jitter_ms.push(s.snapshot().jitter_ms);
    }
    // The final J before the (perfect-path) tail packet perturbs it.
    let final_jitter_ms = s.snapshot().jitter_ms;
    feed(&mut s, &arrivals[arrivals.len() - 1..]);
    let snap = s.snapshot();
    assert_consistent(&snap);

    // Exact accounting: every dropped packet is lost, every copy a
    // duplicate, nothing else.
    assert_eq!(snap.lost, delivery.dropped.len() as i64);
    assert_eq!(snap.duplicates, delivery.duplicates() as u64);
    assert_eq!(snap.expected, N as u64 - 1, "all but the probation packet");
    assert_eq!(snap.received + delivery.dropped.len() as u64, N as u64 - 1);
    assert_eq!(
        (snap.probation_dropped, snap.bad_sequence, snap.stale),
        (1, 0, 0)
    );
    assert_eq!(snap.cycles, 1, "started at 65000: wrapped once");
    assert!(snap.reordered > 0 && snap.late > 0 && snap.late <= snap.reordered);
    // Every received packet but the first updated J (no repeated timestamps).
    assert_eq!(s.transit_histogram().len(), snap.received - 1);

    // Jitter band. Each packet waits U[0, 30 ms] (the FIFO hold matters
    // little at a 20 ms spacing), so for two packets the difference of two
    // independent U[0, a] delays gives E|D| = a/3 = 10 ms, and the RFC's
    // estimator (an EWMA of |D| with gain 1/16) tracks that mean. The 1%
    // reorder detours (30-60 ms, felt by the detoured packet and its
    // successor) add about 0.4 ms; the 100 ppm drift changes D by 0.016
    // units per packet, nothing. A Python model of this path gives a mean
    // J over the run of 10.4 ms (sd 0.16 ms over 300 seeds) and a final J
    // of 10.5 ms with sd 2 ms (extremes 6.1 and 18.4 ms).
    let second_half = &jitter_ms[jitter_ms.len() / 2..];
    let mean = second_half.iter().sum::<f64>() / second_half.len() as f64;
    assert!((9.5..11.5).contains(&mean), "mean jitter {mean} ms");
    assert!(
        (5.0..20.0).contains(&final_jitter_ms),
        "final jitter {final_jitter_ms} ms"
    );
    assert!(
        (f64::from(snap.jitter) - snap.jitter_ms * 8.0).abs() < 1.0,
        "units are 1/8 ms at 8 kHz"
    );

    // A.3 fraction lost over the whole run, 8-bit fixed point.
    let r = s.take_interval();
    assert_eq!(r.lost, snap.lost);
    let fraction = f64::from(r.fraction_lost) / 256.0;
    assert!(
        (fraction - loss_rate).abs() < 1.0 / 256.0 + 1e-9,
        "{fraction} vs {loss_rate}"
    );
}

#[test]
fn ssrc_change_and_restart_mid_stream() {
    let mut tx = sender(100);
    let mut sent: Vec<SentPacket> = tx.by_ref().take(500).collect();
    tx.change_ssrc(Ssrc(0x0bad_cafe), Seq(40_000), RtpTimestamp(1));
    sent.extend(tx.by_ref().take(500));
    tx.restart(Seq(10), RtpTimestamp(99));
    sent.extend(tx.by_ref().take(500));
    let dropped = [100, 101, 700, 1200];
    let arrivals: Vec<Arrival> = sent
        .iter()
        .filter(|p| !dropped.contains(&p.index))
        .map(|&p| on_time(p, p.send_time + Duration::from_millis(30)))
        .collect();

    let mut s = stats();
    let verdicts = feed(&mut s, &arrivals);
    let snap = s.snapshot();
    assert_consistent(&snap);
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Resync { .. }))
            .count(),
        3
    );
    assert_eq!((snap.ssrc_changes, snap.restarts), (1, 1));
    // Probation: the first packet of each SSRC; the restart's first packet
    // waits as a bad sequence until the next confirms it.
    assert_eq!((snap.probation_dropped, snap.bad_sequence), (2, 1));
    assert_eq!(snap.expected, 3 * 499);
    assert_eq!(snap.lost, dropped.len() as i64);
    assert_eq!(snap.source_lost, 1, "only the drop after the restart");
    assert_eq!(snap.ext_highest_seq.map(|e| e.0), Some(10 + 499));
    assert_eq!(snap.ssrc, Some(Ssrc(0x0bad_cafe)));
}

#[test]
fn netsim_is_deterministic() {
    let imp = Impairment {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(30),
        loss: 0.02,
        burst: Some(GilbertElliott::with_mean_loss(0.05, 3.0)),
        reorder: 0.02,
        reorder_delay: Duration::from_millis(50),
        duplicate: 0.01,
        clock_drift_ppm: -50.0,
    };
    let run = |seed| NetSim::new(seed, imp).run(sender(0).take(2000));
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
    assert!(!a.dropped.is_empty() && a.duplicates() > 0);

    // A path run in two calls is the same path run in one (up to the
    // per-call sort).
    let mut sim = NetSim::new(42, imp);
    let packets: Vec<_> = sender(0).take(2000).collect();
    let first = sim.run(packets[..1000].iter().copied());
    let second = sim.run(packets[1000..].iter().copied());
    let mut joined: Vec<Arrival> = first.arrivals.into_iter().chain(second.arrivals).collect();
    joined.sort_by_key(|x| x.arrival);
    assert_eq!(joined, a.arrivals);
    assert_eq!([first.dropped, second.dropped].concat(), a.dropped);
}

/// RFC 3550 A.1 by reference for in-order delivery: the source validates on
/// the first delivered packet whose predecessor was delivered just before
/// it; from there, expected is up to the last delivered packet.
fn reference_counts(delivered: &[bool]) -> (u64, u64, u64) {
    let base = (1..delivered.len()).find(|&i| delivered[i] && delivered[i - 1]);
    let Some(base) = base else {
        return (0, 0, delivered.iter().filter(|&&d| d).count() as u64);
    };
    let last = delivered.iter().rposition(|&d| d).unwrap_or(base);
    let received = delivered[base..=last].iter().filter(|&&d| d).count() as u64;
    let on_probation = delivered[..base].iter().filter(|&&d| d).count() as u64;
    ((last - base + 1) as u64, received, on_probation)
}

fn drop_pattern() -> impl Strategy<Value = Vec<bool>> {
    (0.0f64..0.9).prop_flat_map(|p| prop::collection::vec(prop::bool::weighted(p), 3..2000))
}

proptest! {
    /// Random drops, no reordering: lost is exactly the number dropped.
    #[test]
    fn lost_equals_dropped(first_seq in any::<u16>(), mut drops in drop_pattern()) {
        let n = drops.len();
        // Head and tail delivered: see `bracketed`.
        drops[0] = false;
        drops[1] = false;
        drops[n - 1] = false;
        let mut s = stats();
        for p in sender(first_seq).take(n).filter(|p| !drops[p.index as usize]) {
            s.handle_packet(p.ssrc, p.seq, p.ts, p.payload_len, p.send_time);
        }
        let snap = s.snapshot();
        assert_consistent(&snap);
        let dropped = drops.iter().filter(|&&d| d).count() as i64;
        prop_assert_eq!(snap.lost, dropped);
        prop_assert_eq!(snap.expected as i64, snap.received as i64 + snap.lost);
        prop_assert_eq!(snap.expected, n as u64 - 1);
        prop_assert_eq!(snap.reordered + snap.duplicates, 0);
        let r = s.take_interval();
        prop_assert_eq!((r.expected, r.received, r.lost), (snap.expected, snap.received, snap.lost));
    }

    /// Any drop pattern, including at the start and the end: the counters
    /// are what RFC 3550 A.1/A.3 give.
    #[test]
    fn counts_match_rfc_reference(first_seq in any::<u16>(), drops in drop_pattern()) {
        let mut s = stats();
        for p in sender(first_seq).take(drops.len()).filter(|p| !drops[p.index as usize]) {
            s.handle_packet(p.ssrc, p.seq, p.ts, p.payload_len, p.send_time);
        }
        let snap = s.snapshot();
        assert_consistent(&snap);
        let delivered: Vec<bool> = drops.iter().map(|d| !d).collect();
        let (expected, received, on_probation) = reference_counts(&delivered);
        prop_assert_eq!((snap.expected, snap.received), (expected, received));
        prop_assert_eq!(snap.probation_dropped, on_probation);
        prop_assert!(snap.lost >= 0);
    }

    /// Loss, jitter, duplication, no reordering: duplicates counted are
    /// the copies injected, and lost is still exactly what was dropped.
    #[test]
    fn duplicates_equal_injected(
        seed in any::<u64>(),
        first_seq in any::<u16>(),
        n in 3usize..3000,
        loss in 0.0f64..0.3,
        duplicate in 0.0f64..0.3,
        jitter_ms in 0u64..100,
    ) {
        let imp = Impairment {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            duplicate,
            ..Impairment::NONE
        };
        let (delivery, arrivals) = bracketed(seed, imp, sender(first_seq), n);
        let mut s = stats();
        feed(&mut s, &arrivals);
        let snap = s.snapshot();
        assert_consistent(&snap);
        prop_assert_eq!(snap.duplicates, delivery.duplicates() as u64);
        prop_assert_eq!(snap.lost, delivery.dropped.len() as i64);
        prop_assert_eq!(snap.expected, n as u64 - 1);
    }

    /// Reordering within MAX_MISORDER: once every packet has arrived, RFC
    /// 3550's lost (expected - received) is exactly the number dropped,
    /// and duplicates are still exact.
    #[test]
    fn lost_exact_with_reordering(
        seed in any::<u64>(),
        first_seq in any::<u16>(),
        n in 3usize..3000,
        loss in 0.0f64..0.2,
        burst in prop::option::of((0.01f64..0.2, 1.0f64..10.0)),
        reorder in 0.0f64..0.3,
        // Up to 1 s, 50 packets: within MAX_MISORDER (100).
        reorder_delay_ms in 0u64..1000,
        duplicate in 0.0f64..0.1,
        jitter_ms in 0u64..100,
        drift in -500.0f64..500.0,
    ) {
        let imp = Impairment {
            latency: Duration::from_millis(25),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            burst: burst.map(|(mean, len)| GilbertElliott::with_mean_loss(mean, len)),
            reorder,
            reorder_delay: Duration::from_millis(reorder_delay_ms),
            duplicate,
            clock_drift_ppm: drift,
        };
        let (delivery, arrivals) = bracketed(seed, imp, sender(first_seq), n);
        let mut s = stats();
        let verdicts = feed(&mut s, &arrivals);
        let snap = s.snapshot();
        assert_consistent(&snap);
        prop_assert_eq!(snap.lost, delivery.dropped.len() as i64);
        prop_assert_eq!(snap.expected, n as u64 - 1);
        prop_assert_eq!(snap.duplicates, delivery.duplicates() as u64);
        prop_assert_eq!(snap.bad_sequence + snap.stale, 0);
        prop_assert_eq!(verdicts.iter().filter(|v| matches!(v, Verdict::Resync { .. })).count(), 1);
    }

    /// Arbitrary packets (a few SSRCs, any sequence numbers, timestamps and
    /// arrival times): no panic, every packet classified once, and with the
    /// RFC defaults loss never goes negative (duplicates are caught by the
    /// window, which covers MAX_MISORDER).
    #[test]
    fn arbitrary_input_is_consistent(
        packets in prop::collection::vec((0u32..3, any::<u16>(), any::<u32>(), 0usize..2000, any::<u64>()), 0..400),
        near in prop::collection::vec((0u32..2, 0u16..300, 0u32..10_000, 0u64..1_000_000_000), 0..400),
    ) {
        let mut s = stats();
        // Wild values, then a stream-like walk that exercises reordering.
        for (ssrc, seq, ts, len, at) in packets {
            s.handle_packet(Ssrc(ssrc), Seq(seq), RtpTimestamp(ts), len, Nanos(at));
        }
        for (ssrc, seq, ts, at) in near {
            s.handle_packet(Ssrc(ssrc), Seq(seq), RtpTimestamp(ts), 160, Nanos(at));
        }
        let snap = s.snapshot();
        assert_consistent(&snap);
        prop_assert!(snap.lost >= 0 && snap.source_lost >= 0);
        prop_assert!(snap.jitter_ms.is_finite());
    }
}
