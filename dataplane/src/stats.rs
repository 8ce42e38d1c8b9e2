//! Per-stream receive statistics: RFC 3550 Appendix A.1 (sequence
//! validation), A.3 (expected, lost, fraction lost) and A.8 (interarrival
//! jitter).
//!
//! [`ReceiveStats`] is a plain struct fed one inbound packet at a time with
//! the arrival time the driver observed ([`ReceiveStats::handle_packet`]); it
//! classifies the packet ([`Verdict`]) and updates its counters. Reading is a
//! [`StatsSnapshot`] (cumulative) or an [`IntervalReport`] (since the last
//! one, for RTCP receiver reports).
//!
//! No clock, no IO; the transit histogram is allocated once in
//! [`ReceiveStats::new`] and the per-packet path allocates nothing, logs
//! nothing and never panics. Where we depart from or extend RFC 3550
//! (duplicates, late and stale packets, what resets on an SSRC change) is
//! written down in `docs/statistics.md`.

use hdrhistogram::Histogram;

use crate::units::{ClockRate, Nanos, RtpTimestamp, Seq, SeqNo, Ssrc};

/// RFC 3550 `RTP_SEQ_MOD`.
const RTP_SEQ_MOD: u32 = 0x1_0000;

/// How far behind the highest sequence number duplicates are detected, in
/// packets: the width of the bitmap of recently seen sequence numbers. It
/// covers every packet the default [`StatsConfig::max_misorder`] (100)
/// accepts as reordered.
pub const DUPLICATE_WINDOW: u16 = 128;

/// Highest value the transit histogram tracks, in microseconds (1 s).
/// Larger transit variations are recorded as this value.
pub const TRANSIT_HISTOGRAM_MAX_US: u64 = 1_000_000;

/// Significant figures of the transit histogram: 1 % resolution is plenty
/// for jitter percentiles, and keeps the histogram at about 7 KiB a stream
/// (3 figures and 10 s took 131 KiB, most of an endpoint's memory).
const TRANSIT_HISTOGRAM_SIGFIG: u8 = 2;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Tuning of [`ReceiveStats`]; [`StatsConfig::new`] gives the RFC 3550
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsConfig {
    /// The stream's RTP clock rate: jitter is kept in its units.
    pub clock_rate: ClockRate,
    /// RFC 3550 `MIN_SEQUENTIAL`: sequential packets needed before a new
    /// source is valid; the last of them is the first one accepted. 0 is
    /// treated as 1 (accept the first packet).
    pub probation: u16,
    /// RFC 3550 `MAX_DROPOUT`: the largest forward jump still taken as
    /// packet loss rather than a restart.
    pub max_dropout: u16,
    /// RFC 3550 `MAX_MISORDER`: packets less than this far behind the
    /// highest are accepted as reordered; further behind is a restart
    /// candidate.
    pub max_misorder: u16,
    /// A reordered packet more than this many packets behind the highest is
    /// also counted as late: too old for a shallow jitter buffer.
    pub late_threshold: u16,
}

impl StatsConfig {
    /// RFC 3550 A.1 `MIN_SEQUENTIAL`.
    pub const MIN_SEQUENTIAL: u16 = 2;
    /// RFC 3550 A.1 `MAX_DROPOUT`.
    pub const MAX_DROPOUT: u16 = 3000;
    /// RFC 3550 A.1 `MAX_MISORDER`.
    pub const MAX_MISORDER: u16 = 100;
    /// Default [`StatsConfig::late_threshold`]: two packets (40 ms at a
    /// 20 ms ptime).
    pub const LATE_THRESHOLD: u16 = 2;

    /// The RFC 3550 defaults for a stream at `clock_rate`.
    pub const fn new(clock_rate: ClockRate) -> Self {
        Self {
            clock_rate,
            probation: Self::MIN_SEQUENTIAL,
            max_dropout: Self::MAX_DROPOUT,
            max_misorder: Self::MAX_MISORDER,
            late_threshold: Self::LATE_THRESHOLD,
        }
    }
}

/// What [`ReceiveStats::handle_packet`] made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Valid and not seen before: counted as received. In order, or
    /// reordered (behind the highest) but still within `max_misorder`.
    Accepted {
        /// The packet's extended sequence number in the current sequence
        /// space.
        ext_seq: SeqNo,
    },
    /// The first valid packet of a new sequence space: the end of probation
    /// (a new stream or a new SSRC) or a confirmed restart. Counted as
    /// received; extended sequence numbers start over from here, so a
    /// jitter buffer keyed on them must re-anchor.
    Resync {
        /// The packet's extended sequence number (its 16-bit sequence
        /// number: cycles start at 0).
        ext_seq: SeqNo,
    },
    /// Already received (within [`DUPLICATE_WINDOW`] of the highest). Not
    /// counted as received.
    Duplicate,
    /// The source is not yet valid (RFC 3550 probation). Not counted as
    /// received.
    Probation,
    /// A jump of at least `max_dropout` forward or `max_misorder` back. The
    /// next packet in sequence after it confirms a restart (RFC 3550
    /// `bad_seq`); until then it is not counted as received.
    BadSequence,
    /// Behind the first packet of the current sequence space (a leftover from
    /// probation or from before a restart). Not counted as received.
    Stale,
}

impl Verdict {
    /// The extended sequence number of an accepted packet.
    #[inline]
    pub const fn ext_seq(self) -> Option<SeqNo> {
        match self {
            Self::Accepted { ext_seq } | Self::Resync { ext_seq } => Some(ext_seq),
            Self::Duplicate | Self::Probation | Self::BadSequence | Self::Stale => None,
        }
    }

    /// Whether the packet counted as received and carries media to play.
    #[inline]
    pub const fn is_accepted(self) -> bool {
        self.ext_seq().is_some()
    }
}

/// All counters of a [`ReceiveStats`] at one moment.
///
/// Counters are cumulative for the endpoint across SSRC changes and restarts
/// unless their doc says "current source"; see `docs/statistics.md`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsSnapshot {
    /// Current source; `None` before the first packet.
    pub ssrc: Option<Ssrc>,
    /// Every packet handed to [`ReceiveStats::handle_packet`]:
    /// `received + duplicates + probation_dropped + bad_sequence + stale`.
    pub packets: u64,
    /// Packets accepted (RFC 3550 `received`, without duplicates).
    pub received: u64,
    /// RFC 3550 expected: `highest - base + 1`, summed over every sequence
    /// space this endpoint went through.
    pub expected: u64,
    /// `expected - received`. Negative only if duplicates escape detection
    /// (a `max_misorder` wider than [`DUPLICATE_WINDOW`]).
    pub lost: i64,
    /// Current source: RFC 3550 cumulative number of packets lost since the
    /// source was validated or last restarted, as an RTCP receiver report
    /// carries it (unclamped: RTCP clamps to 24 bits).
    pub source_lost: i64,
    /// Packets received twice (or more), recognised within
    /// [`DUPLICATE_WINDOW`].
    pub duplicates: u64,
    /// Accepted packets that arrived behind the highest sequence number.
    pub reordered: u64,
    /// Reordered packets more than `late_threshold` behind the highest.
    pub late: u64,
    /// Packets behind the start of the current sequence space
    /// ([`Verdict::Stale`]).
    pub stale: u64,
    /// Payload bytes of received packets.
    pub bytes: u64,
    /// Current source: interarrival jitter J in RTP timestamp units, as an
    /// RTCP receiver report carries it.
    pub jitter: u32,
    /// Current source: the same jitter in milliseconds (from the unrounded
    /// estimate).
    pub jitter_ms: f64,
    /// Current source: extended highest sequence number received (RFC 3550
    /// `cycles + max_seq`); `None` while on probation.
    pub ext_highest_seq: Option<SeqNo>,
    /// Current source: times the 16-bit sequence number wrapped.
    pub cycles: u32,
    /// Times a packet with a new SSRC replaced the current source.
    pub ssrc_changes: u64,
    /// Restarts confirmed after a [`Verdict::BadSequence`] (RFC 3550
    /// re-sync), SSRC unchanged.
    pub restarts: u64,
    /// Packets seen while the source was on probation.
    pub probation_dropped: u64,
    /// Packets classified [`Verdict::BadSequence`].
    pub bad_sequence: u64,
    /// Arrival of the first packet of any kind.
    pub first_arrival: Option<Nanos>,
    /// Arrival of the latest packet of any kind.
    pub last_arrival: Option<Nanos>,
}

/// Loss since the previous [`ReceiveStats::take_interval`] (RFC 3550 A.3),
/// over all sources of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalReport {
    /// Packets expected in the interval.
    pub expected: u64,
    /// Packets received in the interval.
    pub received: u64,
    /// `expected - received`; negative if late packets of an earlier
    /// interval arrived.
    pub lost: i64,
    /// RFC 3550 fraction lost: `lost * 256 / expected`, 0 if nothing was
    /// lost, at most 255.
    pub fraction_lost: u8,
}

/// RFC 3550 receive statistics of one endpoint's inbound stream.
///
/// Methods: [`ReceiveStats::handle_packet`] (input, per packet, in arrival
/// order), [`ReceiveStats::snapshot`] and
/// [`ReceiveStats::transit_histogram`] (getters), and
/// [`ReceiveStats::take_interval`] (once per RTCP report interval).
#[derive(Debug)]
pub struct ReceiveStats {
    cfg: StatsConfig,
    source: Option<Source>,
    /// Expected and received of sequence spaces left behind (restarts, SSRC
    /// changes).
    closed_expected: u64,
    closed_received: u64,
    /// A.3 `expected_prior` and `received_prior`, over the endpoint totals.
    expected_prior: u64,
    received_prior: u64,
    jitter: Jitter,
    counters: Counters,
    transit: Histogram<u32>,
}

/// Percentiles of a stream's per-packet transit variation, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitSummary {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest (saturates at [`TRANSIT_HISTOGRAM_MAX_US`]).
    pub max_us: u64,
}

impl ReceiveStats {
    /// Statistics for a stream described by `cfg`. Allocates the transit
    /// histogram; nothing else allocates afterwards.
    pub fn new(cfg: StatsConfig) -> Self {
        // Constant bounds: low 1 >= 1, high 10^6 >= 2 * low, 2 significant
        // figures <= 5. `new_with_bounds` only fails outside those.
        let transit =
            Histogram::new_with_bounds(1, TRANSIT_HISTOGRAM_MAX_US, TRANSIT_HISTOGRAM_SIGFIG)
                .expect("constant histogram bounds are valid");
        Self {
            cfg,
            source: None,
            closed_expected: 0,
            closed_received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: Jitter::default(),
            counters: Counters::default(),
            transit,
        }
    }

    /// The configuration this was built with.
    pub fn config(&self) -> &StatsConfig {
        &self.cfg
    }

    /// Account for one inbound RTP packet, in arrival order. `payload_len`
    /// is the RTP payload size in bytes; `arrival` the driver's receive
    /// time.
    pub fn handle_packet(
        &mut self,
        ssrc: Ssrc,
        seq: Seq,
        ts: RtpTimestamp,
        payload_len: usize,
        arrival: Nanos,
    ) -> Verdict {
        let c = &mut self.counters;
        c.packets += 1;
        c.first_arrival.get_or_insert(arrival);
        c.last_arrival = Some(arrival);

        if self.source.map(|s| s.ssrc) != Some(ssrc) {
            self.switch_source(ssrc, seq.0);
        }
        let probation = self.cfg.probation.max(1);
        let src = self
            .source
            .get_or_insert_with(|| Source::on_probation(ssrc, seq.0, probation));

        let verdict = match src.update(seq.0, &self.cfg) {
            SeqEvent::Probation => {
                self.counters.probation_dropped += 1;
                return Verdict::Probation;
            }
            SeqEvent::BadSequence => {
                self.counters.bad_sequence += 1;
                return Verdict::BadSequence;
            }
            SeqEvent::Stale => {
                self.counters.stale += 1;
                return Verdict::Stale;
            }
            SeqEvent::Duplicate => {
                self.counters.duplicates += 1;
                return Verdict::Duplicate;
            }
            SeqEvent::Validated { ext } => Verdict::Resync {
                ext_seq: SeqNo(ext),
            },
            SeqEvent::Restarted {
                ext,
                closed_expected,
                closed_received,
            } => {
                self.closed_expected = self.closed_expected.saturating_add(closed_expected);
                self.closed_received = self.closed_received.saturating_add(closed_received);
                self.counters.restarts += 1;
                // Same source, new timeline: keep J, but do not measure the
                // timestamp discontinuity as transit variation.
                self.jitter.prev = None;
                Verdict::Resync {
                    ext_seq: SeqNo(ext),
                }
            }
            SeqEvent::InOrder { ext } => Verdict::Accepted {
                ext_seq: SeqNo(ext),
            },
            SeqEvent::Reordered { ext, behind } => {
                self.counters.reordered += 1;
                if behind > u32::from(self.cfg.late_threshold) {
                    self.counters.late += 1;
                }
                Verdict::Accepted {
                    ext_seq: SeqNo(ext),
                }
            }
        };

        self.counters.bytes = self.counters.bytes.saturating_add(payload_len as u64);
        if let Some(d_us) = self.jitter.update(ts, arrival, self.cfg.clock_rate) {
            self.transit.saturating_record(d_us);
        }
        verdict
    }

    /// All counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.counters;
        let valid = self.source.filter(Source::is_valid);
        let expected = self.expected();
        let received = self.received();
        let q4 = self.jitter.q4;
        StatsSnapshot {
            ssrc: self.source.map(|s| s.ssrc),
            packets: c.packets,
            received,
            expected,
            lost: signed_diff(expected, received),
            source_lost: valid.map_or(0, |s| signed_diff(s.expected(), s.received)),
            duplicates: c.duplicates,
            reordered: c.reordered,
            late: c.late,
            stale: c.stale,
            bytes: c.bytes,
            jitter: u32::try_from(q4 >> 4).unwrap_or(u32::MAX),
            jitter_ms: ClockRate(self.cfg.clock_rate.0.max(1)).units_to_ms(q4 as f64 / 16.0),
            ext_highest_seq: valid.map(|s| SeqNo(s.highest())),
            cycles: valid.map_or(0, |s| s.cycles),
            ssrc_changes: c.ssrc_changes,
            restarts: c.restarts,
            probation_dropped: c.probation_dropped,
            bad_sequence: c.bad_sequence,
            first_arrival: c.first_arrival,
            last_arrival: c.last_arrival,
        }
    }

    /// Expected, received and fraction lost since the previous call (RFC
    /// 3550 A.3), for an RTCP receiver report. The first call covers
    /// everything since [`ReceiveStats::new`].
    pub fn take_interval(&mut self) -> IntervalReport {
        let expected = self.expected();
        let received = self.received();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = received;
        let lost_interval = signed_diff(expected_interval, received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            // lost_interval > 0 here, so the conversion is lossless. The RFC
            // would give 256 for a fully lost interval; the field has 8 bits.
            let lost = lost_interval.unsigned_abs();
            u8::try_from((u128::from(lost) << 8) / u128::from(expected_interval)).unwrap_or(u8::MAX)
        };
        IntervalReport {
            expected: expected_interval,
            received: received_interval,
            lost: lost_interval,
            fraction_lost,
        }
    }

    /// Per-packet |transit variation| (the |D| of RFC 3550 A.8) in
    /// microseconds, for every packet that updated the jitter estimate,
    /// cumulative for the endpoint. Saturates at
    /// [`TRANSIT_HISTOGRAM_MAX_US`].
    pub fn transit_histogram(&self) -> &Histogram<u32> {
        &self.transit
    }

    /// The transit histogram's percentiles; `None` before the second packet.
    /// Walks the histogram (about 1,800 buckets): for the control socket,
    /// not for every packet or every metrics sweep.
    pub fn transit_summary(&self) -> Option<TransitSummary> {
        let h = &self.transit;
        (!h.is_empty()).then(|| TransitSummary {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        })
    }

    /// Packets expected over all sequence spaces.
    fn expected(&self) -> u64 {
        let current = self
            .source
            .filter(Source::is_valid)
            .map_or(0, |s| s.expected());
        self.closed_expected.saturating_add(current)
    }

    /// Packets received over all sequence spaces.
    fn received(&self) -> u64 {
        let current = self
            .source
            .filter(Source::is_valid)
            .map_or(0, |s| s.received);
        self.closed_received.saturating_add(current)
    }

    /// A packet with another SSRC: close the current sequence space and put
    /// the new source on probation. Jitter is per source and starts over.
    fn switch_source(&mut self, ssrc: Ssrc, seq: u16) {
        if let Some(old) = self.source {
            self.counters.ssrc_changes += 1;
            if old.is_valid() {
                self.closed_expected = self.closed_expected.saturating_add(old.expected());
                self.closed_received = self.closed_received.saturating_add(old.received);
            }
        }
        self.jitter = Jitter::default();
        self.source = Some(Source::on_probation(ssrc, seq, self.cfg.probation.max(1)));
    }
}

/// `a - b` as a signed count, without overflow panics.
fn signed_diff(a: u64, b: u64) -> i64 {
    (a as i64).wrapping_sub(b as i64)
}

/// Counters that only ever grow.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    packets: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    stale: u64,
    bytes: u64,
    ssrc_changes: u64,
    restarts: u64,
    probation_dropped: u64,
    bad_sequence: u64,
    first_arrival: Option<Nanos>,
    last_arrival: Option<Nanos>,
}

/// RFC 3550 A.1 per-source sequence state (`source` in the RFC), plus the
/// duplicate bitmap.
#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: Ssrc,
    /// Sequential packets still needed before the source is valid; 0 once
    /// valid.
    probation: u16,
    /// Highest sequence number seen; during probation, the latest one.
    max_seq: u16,
    /// Wraps of the sequence number since `base` (the RFC keeps this shifted
    /// left by 16).
    cycles: u32,
    /// Extended sequence number of the first packet of this sequence space.
    base: u64,
    /// The sequence number that would confirm a restart.
    bad_seq: Option<u16>,
    /// Packets received since `base`.
    received: u64,
    /// Bit `i` set: extended sequence number `highest() - i` was received.
    seen: u128,
}

/// What [`Source::update`] made of a sequence number.
#[derive(Debug, Clone, Copy)]
enum SeqEvent {
    Probation,
    Validated {
        ext: u64,
    },
    InOrder {
        ext: u64,
    },
    Reordered {
        ext: u64,
        behind: u32,
    },
    Duplicate,
    BadSequence,
    /// Restart confirmed; the state is already re-initialised and these are
    /// the counts of the sequence space it replaced.
    Restarted {
        ext: u64,
        closed_expected: u64,
        closed_received: u64,
    },
    Stale,
}

impl Source {
    /// A new source, before its first packet `seq` is applied (RFC 3550:
    /// `init_seq(s, seq); s->max_seq = seq - 1; s->probation =
    /// MIN_SEQUENTIAL`).
    fn on_probation(ssrc: Ssrc, seq: u16, probation: u16) -> Self {
        Self {
            ssrc,
            probation,
            max_seq: seq.wrapping_sub(1),
            cycles: 0,
            base: u64::from(seq),
            bad_seq: None,
            received: 0,
            seen: 0,
        }
    }

    fn is_valid(&self) -> bool {
        self.probation == 0
    }

    fn highest(&self) -> u64 {
        (u64::from(self.cycles) << 16) | u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        self.highest().saturating_sub(self.base).saturating_add(1)
    }

    /// RFC 3550 `init_seq` followed by counting `seq` as received.
    fn init_seq(&mut self, seq: u16) {
        self.probation = 0;
        self.base = u64::from(seq);
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 1;
        self.seen = 1;
    }

    /// RFC 3550 `update_seq`, with duplicate detection and stale packets.
    fn update(&mut self, seq: u16, cfg: &StatsConfig) -> SeqEvent {
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    return SeqEvent::Validated {
                        ext: u64::from(seq),
                    };
                }
            } else {
                // Never 0 here: that would mark the source valid without
                // init_seq.
                self.probation = cfg.probation.saturating_sub(1).max(1);
                self.max_seq = seq;
            }
            return SeqEvent::Probation;
        }

        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < cfg.max_dropout {
            // In order, with permissible gap (or the highest again).
            if udelta == 0 {
                return SeqEvent::Duplicate;
            }
            if seq < self.max_seq {
                self.cycles = self.cycles.saturating_add(1);
            }
            self.max_seq = seq;
            self.seen = self.seen.checked_shl(u32::from(udelta)).unwrap_or(0) | 1;
            self.received += 1;
            SeqEvent::InOrder {
                ext: self.highest(),
            }
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(cfg.max_misorder) {
            // A very large jump, forward or back.
            if self.bad_seq == Some(seq) {
                // Two sequential packets: the sender restarted without
                // telling us. Re-sync, as if this were the first packet.
                let closed_expected = self.expected();
                let closed_received = self.received;
                self.init_seq(seq);
                SeqEvent::Restarted {
                    ext: u64::from(seq),
                    closed_expected,
                    closed_received,
                }
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
                SeqEvent::BadSequence
            }
        } else {
            // Behind the highest by less than max_misorder: duplicate or
            // reordered.
            let behind = RTP_SEQ_MOD - u32::from(udelta);
            let highest = self.highest();
            if u64::from(behind) > highest - self.base {
                return SeqEvent::Stale;
            }
            if behind < u32::from(DUPLICATE_WINDOW) {
                let bit = 1u128 << behind;
                if self.seen & bit != 0 {
                    return SeqEvent::Duplicate;
                }
                self.seen |= bit;
            }
            self.received += 1;
            SeqEvent::Reordered {
                ext: highest - u64::from(behind),
                behind,
            }
        }
    }
}

/// RFC 3550 A.8 interarrival jitter of the current source.
#[derive(Debug, Clone, Copy, Default)]
struct Jitter {
    /// 16 × J: the RFC's integer estimator keeps J scaled by 16.
    q4: u64,
    /// The previous packet that updated the estimate.
    prev: Option<TransitRef>,
}

#[derive(Debug, Clone, Copy)]
struct TransitRef {
    arrival: Nanos,
    ts: RtpTimestamp,
}

impl Jitter {
    /// Update J with a newly received packet. Returns |D| in microseconds
    /// (ns precision, truncated), or `None` if the packet set the reference
    /// only: the first one, or the same timestamp as the previous one.
    fn update(&mut self, ts: RtpTimestamp, arrival: Nanos, clock_rate: ClockRate) -> Option<u64> {
        let Some(prev) = self.prev else {
            self.prev = Some(TransitRef { arrival, ts });
            return None;
        };
        if ts == prev.ts {
            // Several packets of one media instant (RFC 4733 events, a
            // video frame): only the first one measures transit.
            return None;
        }
        self.prev = Some(TransitRef { arrival, ts });
        let rate = u128::from(clock_rate.0.max(1));

        // D(i-1, i) = (R_i - R_{i-1}) - (S_i - S_{i-1}) in timestamp units,
        // the arrival clock R converted as the RFC does: whole units since a
        // fixed origin (u128: 2^64 ns * 2^32 Hz fits).
        let r = |t: Nanos| (u128::from(t.0) * rate / NANOS_PER_SEC) as i128;
        let ts_diff = i128::from(ts.diff(prev.ts));
        let d_units = r(arrival) - r(prev.arrival) - ts_diff;
        let d = u64::try_from(d_units.unsigned_abs())
            .unwrap_or(u64::MAX)
            .min(u64::from(u32::MAX));
        // The RFC's integer form: J += |D| - J / 16, rounded, on 16 × J.
        self.q4 = self.q4 + d - ((self.q4 + 8) >> 4);

        let d_ns = i128::from(arrival.0)
            - i128::from(prev.arrival.0)
            - ts_diff * NANOS_PER_SEC as i128 / rate as i128;
        Some(u64::try_from(d_ns.unsigned_abs() / 1_000).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: Ssrc = Ssrc(0x1234_5678);

    fn stats() -> ReceiveStats {
        ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND))
    }

    /// Packet `seq` of an ideal 20 ms G.711 stream whose seq 0 went out at
    /// t = 0 with timestamp 0, arriving on time.
    fn send(s: &mut ReceiveStats, seq: u16) -> Verdict {
        send_at(s, seq, u64::from(seq) * 20)
    }

    fn send_at(s: &mut ReceiveStats, seq: u16, arrival_ms: u64) -> Verdict {
        let ts = RtpTimestamp(u32::from(seq) * 160);
        s.handle_packet(SSRC, Seq(seq), ts, 160, Nanos::from_millis(arrival_ms))
    }

    fn accepted(ext: u64) -> Verdict {
        Verdict::Accepted {
            ext_seq: SeqNo(ext),
        }
    }

    #[test]
    fn probation_then_accepted() {
        let mut s = stats();
        assert_eq!(send(&mut s, 10), Verdict::Probation);
        assert_eq!(s.snapshot().ext_highest_seq, None);
        assert_eq!(send(&mut s, 11), Verdict::Resync { ext_seq: SeqNo(11) });
        assert_eq!(send(&mut s, 12), accepted(12));
        let snap = s.snapshot();
        assert_eq!(snap.probation_dropped, 1);
        assert_eq!((snap.received, snap.expected, snap.lost), (2, 2, 0));
        assert_eq!(snap.bytes, 320);
        assert_eq!(snap.ext_highest_seq, Some(SeqNo(12)));
    }

    #[test]
    fn probation_restarts_on_a_gap() {
        let mut s = stats();
        assert_eq!(send(&mut s, 10), Verdict::Probation);
        assert_eq!(send(&mut s, 12), Verdict::Probation);
        assert_eq!(send(&mut s, 13), Verdict::Resync { ext_seq: SeqNo(13) });
        assert_eq!(s.snapshot().probation_dropped, 2);
    }

    #[test]
    fn probation_of_one_accepts_the_first_packet() {
        for probation in [0, 1] {
            let cfg = StatsConfig {
                probation,
                ..StatsConfig::new(ClockRate::NARROWBAND)
            };
            let mut s = ReceiveStats::new(cfg);
            assert_eq!(send(&mut s, 7), Verdict::Resync { ext_seq: SeqNo(7) });
            assert_eq!(send(&mut s, 8), accepted(8));
        }
    }

    #[test]
    fn sequence_wrap_extends_without_loss() {
        let mut s = stats();
        let mut verdicts = Vec::new();
        for i in 0..10u16 {
            verdicts.push(send_at(&mut s, 65530u16.wrapping_add(i), u64::from(i) * 20));
        }
        assert_eq!(verdicts[0], Verdict::Probation);
        assert_eq!(
            verdicts[1],
            Verdict::Resync {
                ext_seq: SeqNo(65531)
            }
        );
        // 65532.. 65535, then 0 is 65536: continuous.
        for (i, v) in verdicts.iter().enumerate().skip(2) {
            assert_eq!(*v, accepted(65530 + i as u64), "packet {i}");
        }
        let snap = s.snapshot();
        assert_eq!(snap.cycles, 1);
        assert_eq!(snap.ext_highest_seq, Some(SeqNo(65536 + 3)));
        assert_eq!((snap.received, snap.expected, snap.lost), (9, 9, 0));
        assert_eq!(snap.reordered, 0);
    }

    #[test]
    fn reordered_across_the_wrap() {
        let mut s = stats();
        for seq in [65533, 65534, 0, 65535, 1] {
            send(&mut s, seq);
        }
        let snap = s.snapshot();
        assert_eq!(snap.ext_highest_seq, Some(SeqNo(65537)));
        assert_eq!((snap.reordered, snap.late, snap.lost), (1, 0, 0));
    }

    #[test]
    fn duplicates_are_not_received() {
        let mut s = stats();
        for seq in 0..5 {
            send(&mut s, seq);
        }
        assert_eq!(
            send(&mut s, 4),
            Verdict::Duplicate,
            "duplicate of the highest"
        );
        assert_eq!(
            send(&mut s, 2),
            Verdict::Duplicate,
            "duplicate behind the highest"
        );
        assert_eq!(send(&mut s, 6), accepted(6));
        assert_eq!(send(&mut s, 5), accepted(5));
        assert_eq!(
            send(&mut s, 5),
            Verdict::Duplicate,
            "duplicate of a reordered one"
        );
        let snap = s.snapshot();
        assert_eq!(snap.duplicates, 3);
        assert_eq!((snap.received, snap.expected, snap.lost), (6, 6, 0));
        assert_eq!(snap.packets, 10);
        assert_eq!(snap.bytes, 6 * 160);
    }

    #[test]
    fn duplicates_detected_across_the_whole_window() {
        let mut s = stats();
        for seq in 0..=130 {
            send(&mut s, seq);
        }
        // 130 is highest: 31 is 99 behind, the oldest max_misorder accepts.
        assert_eq!(send(&mut s, 31), Verdict::Duplicate);
        // 100 behind is no longer misordered: a restart candidate.
        assert_eq!(send(&mut s, 30), Verdict::BadSequence);
    }

    #[test]
    fn reordered_and_late() {
        let mut s = stats();
        for seq in [0, 1, 2, 4, 3, 5, 6, 7, 8, 9, 10] {
            send(&mut s, seq);
        }
        // 3 arrived one behind 4: reordered, in time.
        assert_eq!(send(&mut s, 12), accepted(12));
        assert_eq!(send(&mut s, 13), accepted(13));
        assert_eq!(send(&mut s, 14), accepted(14));
        // 11 is 3 behind 14: more than late_threshold (2).
        assert_eq!(send(&mut s, 11), accepted(11));
        let snap = s.snapshot();
        assert_eq!((snap.reordered, snap.late), (2, 1));
        assert_eq!((snap.received, snap.expected, snap.lost), (14, 14, 0));
    }

    #[test]
    fn loss_is_expected_minus_received_until_the_gap_fills() {
        let mut s = stats();
        for seq in [0, 1, 2, 5, 6] {
            send(&mut s, seq);
        }
        assert_eq!(s.snapshot().lost, 2);
        send(&mut s, 3);
        assert_eq!(s.snapshot().lost, 1);
        assert_eq!(s.snapshot().source_lost, 1);
    }

    #[test]
    fn restart_after_large_jump() {
        let mut s = stats();
        for seq in 0..10 {
            send(&mut s, seq);
        }
        // A jump beyond MAX_DROPOUT: held until the next packet confirms.
        assert_eq!(send_at(&mut s, 20_000, 200), Verdict::BadSequence);
        assert_eq!(s.snapshot().ext_highest_seq, Some(SeqNo(9)));
        assert_eq!(
            send_at(&mut s, 20_001, 220),
            Verdict::Resync {
                ext_seq: SeqNo(20_001)
            }
        );
        assert_eq!(send_at(&mut s, 20_002, 240), accepted(20_002));
        let snap = s.snapshot();
        assert_eq!(snap.restarts, 1);
        assert_eq!(snap.bad_sequence, 1);
        assert_eq!(snap.ssrc_changes, 0);
        // 1..=9 from the first sequence space, 20001..=20002 from the second.
        assert_eq!((snap.received, snap.expected, snap.lost), (11, 11, 0));
        assert_eq!(snap.ext_highest_seq, Some(SeqNo(20_002)));
        // Old packets now are far behind the new base: restart candidates.
        assert_eq!(send(&mut s, 9), Verdict::BadSequence);
    }

    #[test]
    fn lone_jump_is_not_a_restart() {
        let mut s = stats();
        for seq in 0..10 {
            send(&mut s, seq);
        }
        assert_eq!(send(&mut s, 40_000), Verdict::BadSequence);
        assert_eq!(send(&mut s, 10), accepted(10));
        assert_eq!(send(&mut s, 40_002), Verdict::BadSequence);
        assert_eq!(send(&mut s, 11), accepted(11));
        let snap = s.snapshot();
        assert_eq!((snap.restarts, snap.bad_sequence), (0, 2));
        assert_eq!((snap.received, snap.expected, snap.lost), (11, 11, 0));
    }

    #[test]
    fn backward_jump_beyond_misorder_restarts() {
        let mut s = stats();
        for seq in 1000..1010 {
            send(&mut s, seq);
        }
        assert_eq!(send(&mut s, 500), Verdict::BadSequence);
        assert_eq!(
            send(&mut s, 501),
            Verdict::Resync {
                ext_seq: SeqNo(501)
            }
        );
        assert_eq!(s.snapshot().restarts, 1);
    }

    #[test]
    fn ssrc_change_restarts_probation() {
        let mut s = stats();
        for seq in 0..10 {
            send(&mut s, seq);
        }
        // Jitter builds up on the old source.
        send_at(&mut s, 10, 230);
        assert!(s.snapshot().jitter > 0);

        let other = Ssrc(0xdead_beef);
        let send_other = |s: &mut ReceiveStats, seq: u16, ms: u64| {
            s.handle_packet(
                other,
                Seq(seq),
                RtpTimestamp(u32::from(seq) * 160),
                160,
                Nanos::from_millis(ms),
            )
        };
        assert_eq!(send_other(&mut s, 5000, 240), Verdict::Probation);
        let snap = s.snapshot();
        assert_eq!(snap.ssrc, Some(other));
        assert_eq!(snap.ssrc_changes, 1);
        assert_eq!(snap.ext_highest_seq, None);
        assert_eq!(snap.jitter, 0);
        assert_eq!((snap.received, snap.expected, snap.lost), (10, 10, 0));

        assert_eq!(
            send_other(&mut s, 5001, 260),
            Verdict::Resync {
                ext_seq: SeqNo(5001)
            }
        );
        assert_eq!(send_other(&mut s, 5003, 300), accepted(5003));
        let snap = s.snapshot();
        assert_eq!((snap.received, snap.expected, snap.lost), (12, 13, 1));
        assert_eq!(snap.source_lost, 1);
        assert_eq!(snap.ext_highest_seq, Some(SeqNo(5003)));
        assert_eq!(snap.probation_dropped, 2);
        assert_eq!(snap.first_arrival, Some(Nanos(0)));
        assert_eq!(snap.last_arrival, Some(Nanos::from_millis(300)));
    }

    #[test]
    fn packets_before_the_base_are_stale() {
        let mut s = stats();
        // 1 breaks probation, 2 and 3 validate (base 3), then 0 and 1 arrive.
        for seq in [1, 0, 2, 3, 4] {
            send(&mut s, seq);
        }
        assert_eq!(s.snapshot().ext_highest_seq, Some(SeqNo(4)));
        assert_eq!(send(&mut s, 2), Verdict::Stale);
        let snap = s.snapshot();
        assert_eq!((snap.stale, snap.received, snap.lost), (1, 2, 0));
    }

    #[test]
    fn interval_fraction_lost() {
        let mut s = stats();
        // 0 is probation; 1..=20 expected, 4 of them lost.
        for seq in (0..=20).filter(|seq| ![3, 7, 8, 15].contains(seq)) {
            send(&mut s, seq);
        }
        let r = s.take_interval();
        assert_eq!((r.expected, r.received, r.lost), (20, 16, 4));
        assert_eq!(u32::from(r.fraction_lost), (4 << 8) / 20);
        assert_eq!(r.fraction_lost, 51);

        for seq in 21..=30 {
            send(&mut s, seq);
        }
        let r = s.take_interval();
        assert_eq!(
            (r.expected, r.received, r.lost, r.fraction_lost),
            (10, 10, 0, 0)
        );
        let r = s.take_interval();
        assert_eq!(
            (r.expected, r.received, r.lost, r.fraction_lost),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn interval_with_late_arrivals_is_negative_but_fraction_zero() {
        let mut s = stats();
        for seq in [0, 1, 2, 4] {
            send(&mut s, seq);
        }
        assert_eq!(s.take_interval().lost, 1);
        send(&mut s, 3);
        let r = s.take_interval();
        assert_eq!(
            (r.expected, r.received, r.lost, r.fraction_lost),
            (0, 1, -1, 0)
        );
    }

    /// RFC 3550 A.8 by hand, G.711 at 8000 Hz, 20 ms packets (160 units).
    ///
    /// R is the arrival in timestamp units: ms * 8. D = (R_i - R_{i-1}) -
    /// (S_i - S_{i-1}). The integer estimator keeps j = 16 × J:
    /// `j += |D| - ((j + 8) >> 4)`, and reports `J = j >> 4`.
    ///
    /// | pkt | arrival ms | R   | S   | D                  | j                          |
    /// |-----|------------|-----|-----|--------------------|----------------------------|
    /// | 0   | 0          | 0   | 0   | -                  | 0                          |
    /// | 1   | 30         | 240 | 160 | 240-160 = 80       | 0 + 80 - (8>>4=0) = 80     |
    /// | 2   | 40         | 320 | 320 | 80-160 = -80       | 80 + 80 - (88>>4=5) = 155  |
    /// | 3   | 65         | 520 | 480 | 200-160 = 40       | 155 + 40 - (163>>4=10) = 185 |
    /// | 4   | 80         | 640 | 640 | 120-160 = -40      | 185 + 40 - (193>>4=12) = 213 |
    /// | 5   | 100.56     | 804 | 800 | 164-160 = 4        | 213 + 4 - (221>>4=13) = 204  |
    ///
    /// (100.56 ms is 804.48 units, truncated to 804 as the RFC's integer
    /// arrival clock does.) J = 204 >> 4 = 12 units; in ms 204 / 16 / 8 =
    /// 1.59375. The float form gives 12.77 units: the integer rounding.
    #[test]
    fn jitter_matches_rfc3550_by_hand() {
        let cfg = StatsConfig {
            probation: 1,
            ..StatsConfig::new(ClockRate::NARROWBAND)
        };
        let mut s = ReceiveStats::new(cfg);
        let arrivals_us = [0, 30_000, 40_000, 65_000, 80_000, 100_560];
        let mut j = Vec::new();
        for (seq, us) in arrivals_us.into_iter().enumerate() {
            let seq = seq as u16;
            let ts = RtpTimestamp(u32::from(seq) * 160);
            assert!(
                s.handle_packet(SSRC, Seq(seq), ts, 160, Nanos::from_micros(us))
                    .is_accepted()
            );
            j.push(s.jitter.q4);
        }
        assert_eq!(j, [0, 80, 155, 185, 213, 204]);
        let snap = s.snapshot();
        assert_eq!(snap.jitter, 12);
        assert_eq!(snap.jitter_ms, 1.59375);
        // |D| in µs at ns precision: 10, 10, 5, 5, 0.56 ms.
        let h = s.transit_histogram();
        assert_eq!(h.len(), 5);
        assert_eq!(h.min(), 560);
        assert_eq!(h.count_at(10_000), 2);
    }

    #[test]
    fn jitter_skips_repeated_timestamps_and_duplicates() {
        let mut s = stats();
        for seq in 0..5 {
            send(&mut s, seq);
        }
        assert_eq!(s.snapshot().jitter, 0);
        // Same timestamp as 4, late: an RFC 4733 style repeat.
        let v = s.handle_packet(
            SSRC,
            Seq(5),
            RtpTimestamp(4 * 160),
            4,
            Nanos::from_millis(150),
        );
        assert_eq!(v, accepted(5));
        assert_eq!(send(&mut s, 4), Verdict::Duplicate);
        assert_eq!(s.snapshot().jitter, 0);
        assert_eq!(s.transit_histogram().len(), 3);
    }

    #[test]
    fn restart_does_not_measure_the_timestamp_jump() {
        let mut s = stats();
        for seq in 0..10 {
            send(&mut s, seq);
        }
        let ts = RtpTimestamp(3_000_000);
        assert_eq!(
            s.handle_packet(SSRC, Seq(30_000), ts, 160, Nanos::from_millis(200)),
            Verdict::BadSequence
        );
        let v = s.handle_packet(SSRC, Seq(30_001), ts.add(160), 160, Nanos::from_millis(220));
        assert!(v.is_accepted());
        let v = s.handle_packet(SSRC, Seq(30_002), ts.add(320), 160, Nanos::from_millis(240));
        assert!(v.is_accepted());
        assert_eq!(s.snapshot().jitter, 0);
    }

    #[test]
    fn transit_histogram_saturates() {
        let mut s = stats();
        send_at(&mut s, 0, 0);
        send_at(&mut s, 1, 20);
        send_at(&mut s, 2, 100_000);
        let h = s.transit_histogram();
        assert_eq!(h.len(), 1);
        assert!(h.max() >= TRANSIT_HISTOGRAM_MAX_US);
        assert!(s.snapshot().jitter > 0);
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let cfg = StatsConfig {
            clock_rate: ClockRate(0),
            probation: u16::MAX,
            max_dropout: 0,
            max_misorder: u16::MAX,
            late_threshold: 0,
        };
        let mut odd = ReceiveStats::new(cfg);
        let mut s = stats();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (ssrc, seq, ts) = (
                Ssrc((x >> 60) as u32),
                Seq(x as u16),
                RtpTimestamp((x >> 16) as u32),
            );
            for st in [&mut odd, &mut s] {
                st.handle_packet(ssrc, seq, ts, usize::MAX, Nanos(x.rotate_left(7)));
            }
        }
        for st in [&mut odd, &mut s] {
            let snap = st.snapshot();
            assert_eq!(
                snap.packets,
                snap.received
                    + snap.duplicates
                    + snap.probation_dropped
                    + snap.bad_sequence
                    + snap.stale
            );
            let r = st.take_interval();
            assert!(r.lost <= r.expected as i64);
        }
        // Tens of thousands of units of jitter at most, never an overflow.
        assert!(s.snapshot().jitter_ms.is_finite());
    }
}
