//! A deterministic, seeded network impairment model, for tests and
//! benchmarks (feature `netsim`).
//!
//! [`RtpSender`] produces the packets of an ideal RTP sender on its own
//! clock; [`NetSim`] carries them over a simulated path (latency, jitter,
//! random or Gilbert–Elliott burst loss, reordering, duplication, sender
//! clock drift) and returns a [`Delivery`]: every copy that arrives, sorted
//! by arrival time, and every packet that did not. The receive side is then
//! driven faster than real time by feeding the arrivals, with their
//! arrival times, to the statistics or the jitter buffer.
//!
//! Same seed, same impairment, same packets: same [`Delivery`]. Each packet
//! consumes a fixed number of random draws whatever happens to it, so
//! changing one impairment (say the loss rate) leaves the others' draws
//! for each packet unchanged.
//!
//! ```text
//!  RtpSender ──SentPacket──▶ drift ─▶ loss (Gilbert–Elliott) ─▶ latency + jitter (FIFO)
//!                                        │ dropped                 │
//!                                        ▼                         ├─ reorder: + extra delay
//!                                  Delivery.dropped                └─ duplicate: + copy
//!                                                                       ▼
//!                                                         Delivery.arrivals (by arrival)
//! ```

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::units::{ClockRate, Nanos, RtpTimestamp, Seq, Ssrc};

/// What the path does to packets.
///
/// Probabilities are per packet, in `[0, 1]` (values outside are clamped).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Queueing delay on top of `latency`, uniform in `[0, jitter]`. The path
    /// is FIFO: a packet never overtakes the one sent before it (it waits
    /// behind it instead), so jitter alone never reorders.
    pub jitter: Duration,
    /// Loss probability; in the Good state only, if `burst` is set.
    pub loss: f64,
    /// Bursty loss on a two-state Gilbert–Elliott channel.
    pub burst: Option<GilbertElliott>,
    /// Probability that a packet takes a detour of
    /// `reorder_delay × U[0.5, 1]` extra delay, landing behind later ones.
    /// The detour is outside the FIFO: later packets do not wait for it.
    pub reorder: f64,
    /// The longest detour of a reordered packet.
    pub reorder_delay: Duration,
    /// Probability that a delivered packet also arrives a second time,
    /// `jitter × U[0, 1]` after the first copy (never before it).
    pub duplicate: f64,
    /// Sender clock error in parts per million: positive, the sender's clock
    /// runs fast and its packets go out closer together in real time than
    /// their send times (and timestamps) say.
    pub clock_drift_ppm: f64,
}

impl Impairment {
    /// A perfect path: no delay, no loss.
    pub const NONE: Self = Self {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        burst: None,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        duplicate: 0.0,
        clock_drift_ppm: 0.0,
    };
}

impl Default for Impairment {
    fn default() -> Self {
        Self::NONE
    }
}

/// A two-state Markov loss channel (Gilbert–Elliott): in the Good state
/// packets are lost with [`Impairment::loss`], in the Bad state with
/// `loss_in_bad`. The state moves once per packet, before the loss draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability Good → Bad per packet.
    pub p_enter_bad: f64,
    /// Probability Bad → Good per packet (1 / mean stay in Bad).
    pub p_leave_bad: f64,
    /// Loss probability in the Bad state.
    pub loss_in_bad: f64,
}

impl GilbertElliott {
    /// A channel that loses every packet while Bad, in bursts of
    /// `mean_burst` packets on average, `mean_loss` of all packets in the
    /// long run (with no Good-state loss).
    ///
    /// Stationary P(Bad) = p / (p + r) with r = 1 / mean_burst; solving for
    /// P(Bad) = mean_loss gives p = r × mean_loss / (1 − mean_loss).
    pub fn with_mean_loss(mean_loss: f64, mean_burst: f64) -> Self {
        let r = 1.0 / mean_burst.max(1.0);
        let m = mean_loss.clamp(0.0, 0.99);
        Self {
            p_enter_bad: r * m / (1.0 - m),
            p_leave_bad: r,
            loss_in_bad: 1.0,
        }
    }

    /// Long-run share of packets lost by the Bad state (Good-state loss
    /// not included).
    pub fn mean_loss(&self) -> f64 {
        let (p, r) = (self.p_enter_bad, self.p_leave_bad);
        if p + r <= 0.0 {
            return 0.0;
        }
        p / (p + r) * self.loss_in_bad
    }
}

/// One packet as the sender emitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SentPacket {
    /// Position in the sender's output, from 0; unique per sender, and
    /// continuous across SSRC changes and restarts.
    pub index: u64,
    /// RTP header fields.
    pub ssrc: Ssrc,
    pub seq: Seq,
    pub ts: RtpTimestamp,
    /// On the sender's clock (see [`Impairment::clock_drift_ppm`]).
    pub send_time: Nanos,
    /// RTP payload bytes.
    pub payload_len: usize,
}

/// An ideal constant-ptime RTP sender: an endless iterator of
/// [`SentPacket`]s, one every `ptime`. Take as many as needed; change the
/// SSRC or restart the sequence between takes.
///
/// ```
/// # use std::time::Duration;
/// # use mediagw_dataplane::netsim::RtpSender;
/// # use mediagw_dataplane::units::{ClockRate, Seq, Ssrc, RtpTimestamp};
/// let mut tx = RtpSender::new(Ssrc(1), ClockRate::NARROWBAND, Duration::from_millis(20))
///     .with_seq(Seq(65_530));
/// let mut packets: Vec<_> = tx.by_ref().take(10).collect();
/// tx.change_ssrc(Ssrc(2), Seq(100), RtpTimestamp(0));
/// packets.extend(tx.take(10));
/// assert_eq!(packets[6].seq, Seq(0));
/// assert_eq!(packets[10].index, 10);
/// ```
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: Ssrc,
    seq: Seq,
    ts: RtpTimestamp,
    ptime: Duration,
    start: Nanos,
    index: u64,
    samples: u32,
    payload_len: usize,
}

impl RtpSender {
    /// A sender starting at sequence number 0, timestamp 0, time 0, with a
    /// G.711-sized payload (one byte per sample).
    pub fn new(ssrc: Ssrc, clock_rate: ClockRate, ptime: Duration) -> Self {
        let samples = u128::from(clock_rate.0) * ptime.as_nanos() / 1_000_000_000;
        let samples = u32::try_from(samples).unwrap_or(u32::MAX);
        Self {
            ssrc,
            seq: Seq(0),
            ts: RtpTimestamp(0),
            ptime,
            start: Nanos(0),
            index: 0,
            samples,
            payload_len: samples as usize,
        }
    }

    /// The next packet's sequence number (start near 65535 to cross the
    /// wrap).
    pub fn with_seq(mut self, seq: Seq) -> Self {
        self.seq = seq;
        self
    }

    /// The next packet's timestamp.
    pub fn with_timestamp(mut self, ts: RtpTimestamp) -> Self {
        self.ts = ts;
        self
    }

    /// When the first packet goes out.
    pub fn starting_at(mut self, start: Nanos) -> Self {
        self.start = start;
        self
    }

    /// Payload bytes per packet.
    pub fn with_payload_len(mut self, payload_len: usize) -> Self {
        self.payload_len = payload_len;
        self
    }

    /// Timestamp units per packet.
    pub fn samples_per_packet(&self) -> u32 {
        self.samples
    }

    /// From the next packet on, a new source: new SSRC, sequence number and
    /// timestamp (what Asterisk does on a transfer or re-INVITE). Timing
    /// continues.
    pub fn change_ssrc(&mut self, ssrc: Ssrc, seq: Seq, ts: RtpTimestamp) {
        self.ssrc = ssrc;
        self.restart(seq, ts);
    }

    /// From the next packet on, the same SSRC continues at another sequence
    /// number and timestamp: a sender restart, to the receiver a sequence
    /// jump. Timing continues.
    pub fn restart(&mut self, seq: Seq, ts: RtpTimestamp) {
        self.seq = seq;
        self.ts = ts;
    }

    /// Skip `n` packets: sequence numbers, timestamps and send times move
    /// on as if they had been sent (and lost before the path).
    pub fn skip_packets(&mut self, n: u64) {
        let n16 = (n % 0x1_0000) as u16;
        self.seq = Seq(self.seq.0.wrapping_add(n16));
        let units = (n as u32).wrapping_mul(self.samples);
        self.ts = self.ts.add(units);
        self.index = self.index.saturating_add(n);
    }
}

impl Iterator for RtpSender {
    type Item = SentPacket;

    fn next(&mut self) -> Option<SentPacket> {
        let offset = self.ptime.as_nanos().saturating_mul(u128::from(self.index));
        let send_time = Nanos(
            self.start
                .0
                .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX)),
        );
        let packet = SentPacket {
            index: self.index,
            ssrc: self.ssrc,
            seq: self.seq,
            ts: self.ts,
            send_time,
            payload_len: self.payload_len,
        };
        self.index = self.index.saturating_add(1);
        self.seq = Seq(self.seq.0.wrapping_add(1));
        self.ts = self.ts.add(self.samples);
        Some(packet)
    }
}

/// One copy of a packet arriving at the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arrival {
    /// The packet as sent.
    pub packet: SentPacket,
    /// On the receiver's clock.
    pub arrival: Nanos,
    /// This is the extra copy of a duplicated packet (the original arrived
    /// no later).
    pub duplicate: bool,
    /// This copy took the reordering detour.
    pub reordered: bool,
}

/// The result of [`NetSim::run`]: exactly which packets arrived (how many
/// times, when) and which did not.
///
/// Every packet handed in is either in `dropped` or in `arrivals` with
/// `duplicate == false`, once; a packet has at most one copy with
/// `duplicate == true`, and only if it was not dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Every copy that arrived, sorted by arrival time (ties: send order,
    /// original before copy).
    pub arrivals: Vec<Arrival>,
    /// Packets that never arrived, in send order.
    pub dropped: Vec<SentPacket>,
}

impl Delivery {
    /// Extra copies delivered.
    pub fn duplicates(&self) -> usize {
        self.arrivals.iter().filter(|a| a.duplicate).count()
    }

    /// Packets that took the reordering detour. (Whether one actually lands
    /// behind a later packet depends on the ones around it.)
    pub fn reordered(&self) -> usize {
        self.arrivals.iter().filter(|a| a.reordered).count()
    }
}

/// The seeded path. Consecutive [`NetSim::run`] calls continue the same
/// path: the Gilbert–Elliott state, the FIFO queue and the drift origin
/// carry over (arrivals are sorted within each call).
#[derive(Debug, Clone)]
pub struct NetSim {
    rng: SmallRng,
    impairment: Impairment,
    /// Gilbert–Elliott state.
    bad: bool,
    /// When the last packet through the FIFO arrives.
    queue_tail: Nanos,
    /// The first send time seen: drift stretches time from here.
    drift_origin: Option<Nanos>,
}

impl NetSim {
    /// A path with `impairment`, its randomness seeded from `seed`.
    pub fn new(seed: u64, impairment: Impairment) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            impairment,
            bad: false,
            queue_tail: Nanos(0),
            drift_origin: None,
        }
    }

    /// What this path does to packets.
    pub fn impairment(&self) -> &Impairment {
        &self.impairment
    }

    /// Carry `packets` (in send order) over the path.
    pub fn run(&mut self, packets: impl IntoIterator<Item = SentPacket>) -> Delivery {
        let imp = self.impairment;
        let mut delivery = Delivery::default();
        for packet in packets {
            // Fixed draws per packet, used or not: see the module doc.
            let [
                u_state,
                u_loss,
                u_jitter,
                u_reorder,
                u_detour,
                u_dup,
                u_dup_delay,
            ] = std::array::from_fn(|_| self.rng.random::<f64>());

            let send = self.real_send_time(packet.send_time);
            let loss = match imp.burst {
                Some(ge) => {
                    self.bad = if self.bad {
                        u_state >= ge.p_leave_bad
                    } else {
                        u_state < ge.p_enter_bad
                    };
                    if self.bad { ge.loss_in_bad } else { imp.loss }
                }
                None => imp.loss,
            };
            if u_loss < loss {
                delivery.dropped.push(packet);
                continue;
            }

            let queued = send + imp.latency + scale(imp.jitter, u_jitter);
            self.queue_tail = self.queue_tail.max(queued);
            let reordered = u_reorder < imp.reorder;
            let arrival = if reordered {
                self.queue_tail + scale(imp.reorder_delay, 0.5 + 0.5 * u_detour)
            } else {
                self.queue_tail
            };
            delivery.arrivals.push(Arrival {
                packet,
                arrival,
                duplicate: false,
                reordered,
            });
            if u_dup < imp.duplicate {
                delivery.arrivals.push(Arrival {
                    packet,
                    arrival: arrival + scale(imp.jitter, u_dup_delay),
                    duplicate: true,
                    reordered: false,
                });
            }
        }
        // Stable: ties keep send order, and each original precedes its copy.
        delivery.arrivals.sort_by_key(|a| a.arrival);
        delivery
    }

    /// `send_time` on the real clock, given the sender's drift.
    fn real_send_time(&mut self, send_time: Nanos) -> Nanos {
        let origin = *self.drift_origin.get_or_insert(send_time);
        let factor = 1.0 + self.impairment.clock_drift_ppm * 1e-6;
        if self.impairment.clock_drift_ppm == 0.0 || factor <= 0.0 || !factor.is_finite() {
            return send_time;
        }
        let elapsed = send_time.0 as f64 - origin.0 as f64;
        // `as` saturates: no panic for any input.
        Nanos((origin.0 as f64 + elapsed / factor) as u64)
    }
}

/// `d × u` for `u` in [0, 1], saturating.
fn scale(d: Duration, u: f64) -> Duration {
    Duration::from_nanos((d.as_nanos() as f64 * u.clamp(0.0, 1.0)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTIME: Duration = Duration::from_millis(20);

    fn sender() -> RtpSender {
        RtpSender::new(Ssrc(7), ClockRate::NARROWBAND, PTIME)
    }

    #[test]
    fn sender_wraps_and_paces() {
        let p: Vec<_> = sender()
            .with_seq(Seq(65_534))
            .with_timestamp(RtpTimestamp(u32::MAX - 100))
            .starting_at(Nanos::from_millis(5))
            .take(3)
            .collect();
        assert_eq!(
            p.iter().map(|p| p.seq.0).collect::<Vec<_>>(),
            [65_534, 65_535, 0]
        );
        assert_eq!(p[2].ts, RtpTimestamp(219));
        assert_eq!(p[2].send_time, Nanos::from_millis(45));
        assert_eq!(p[2].payload_len, 160);
    }

    #[test]
    fn sender_restart_and_skip() {
        let mut tx = sender();
        tx.by_ref().take(2).for_each(drop);
        tx.restart(Seq(9000), RtpTimestamp(1));
        tx.skip_packets(3);
        let p = tx
            .next()
            .unwrap_or_else(|| unreachable!("endless iterator"));
        assert_eq!((p.index, p.seq, p.ts), (5, Seq(9003), RtpTimestamp(481)));
        assert_eq!(p.send_time, Nanos::from_millis(100));
    }

    #[test]
    fn perfect_path_delivers_everything_on_time() {
        let imp = Impairment {
            latency: Duration::from_millis(30),
            ..Impairment::NONE
        };
        let d = NetSim::new(1, imp).run(sender().take(50));
        assert!(d.dropped.is_empty());
        assert_eq!(d.arrivals.len(), 50);
        for a in &d.arrivals {
            assert_eq!(a.arrival, a.packet.send_time + Duration::from_millis(30));
        }
    }

    #[test]
    fn jitter_alone_keeps_order() {
        let imp = Impairment {
            jitter: Duration::from_millis(60),
            ..Impairment::NONE
        };
        let d = NetSim::new(3, imp).run(sender().take(1000));
        assert!(
            d.arrivals
                .windows(2)
                .all(|w| w[0].packet.index < w[1].packet.index)
        );
        // Some packets did wait behind their predecessor.
        assert!(d.arrivals.windows(2).any(|w| w[0].arrival == w[1].arrival));
    }

    #[test]
    fn accounting_is_exact() {
        let imp = Impairment {
            jitter: Duration::from_millis(30),
            loss: 0.1,
            reorder: 0.05,
            reorder_delay: Duration::from_millis(80),
            duplicate: 0.05,
            ..Impairment::NONE
        };
        let d = NetSim::new(9, imp).run(sender().take(5000));
        let mut copies = vec![(0u32, 0u32); 5000];
        for a in &d.arrivals {
            let c = &mut copies[a.packet.index as usize];
            if a.duplicate { c.1 += 1 } else { c.0 += 1 }
        }
        for p in &d.dropped {
            assert_eq!(copies[p.index as usize], (0, 0));
        }
        let delivered = copies.iter().filter(|c| c.0 == 1).count();
        assert_eq!(delivered + d.dropped.len(), 5000);
        assert!(copies.iter().all(|&(orig, dup)| orig <= 1 && dup <= orig));
        assert!(d.arrivals.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        assert!(d.duplicates() > 0 && d.reordered() > 0);
    }

    #[test]
    fn burst_loss_matches_its_mean() {
        let ge = GilbertElliott::with_mean_loss(0.05, 4.0);
        assert!((ge.mean_loss() - 0.05).abs() < 1e-12);
        let imp = Impairment {
            burst: Some(ge),
            ..Impairment::NONE
        };
        let d = NetSim::new(11, imp).run(sender().take(100_000));
        let rate = d.dropped.len() as f64 / 100_000.0;
        assert!((0.04..0.06).contains(&rate), "loss rate {rate}");
        // Bursty: consecutive losses far more common than with random loss.
        let pairs = d
            .dropped
            .windows(2)
            .filter(|w| w[1].index == w[0].index + 1)
            .count();
        assert!(pairs as f64 > 0.5 * d.dropped.len() as f64, "{pairs} pairs");
    }

    #[test]
    fn drift_compresses_real_time() {
        let imp = Impairment {
            clock_drift_ppm: 100.0,
            ..Impairment::NONE
        };
        let d = NetSim::new(1, imp).run(sender().starting_at(Nanos::from_millis(1)).take(10_001));
        // 10,000 packets of 20 ms on the sender's clock: 200 s; 100 ppm
        // fast, that is 200 s / 1.0001 in real time, ~20 ms less.
        let span = d.arrivals[10_000].arrival.0 - d.arrivals[0].arrival.0;
        assert!(span.abs_diff((200e9 / 1.0001) as u64) <= 1, "span {span}");
    }
}
