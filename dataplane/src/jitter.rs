//! The jitter buffer: decoded PCM16 in, fixed-size frames out on the media
//! clock.
//!
//! The dataplane decodes each RTP packet to PCM16 and hands the samples to
//! [`JitterBuffer::handle_packet`] with the packet's arrival time. The buffer
//! files them by RTP timestamp into a circular sample store, and
//! [`JitterBuffer::poll_frame`] plays out one frame of `frame_ms` (20 ms by
//! default) every `frame_ms` of the caller's clock, after an adaptive delay:
//! reordering within the delay is absorbed, gaps are concealed, the delay
//! follows the network's jitter between configured bounds, and timestamp
//! jumps, a new SSRC or a long underrun re-anchor the playout.
//!
//! It works at any clock rate whose frame is a whole number of samples that
//! fits [`MAX_FRAME_SAMPLES`] (8 and 16 kHz, ...) and with packets of any
//! duration, including odd sizes that straddle frames.
//!
//! No clock (times are passed in), no IO, no logging, no allocation after
//! [`JitterBuffer::new`], no panic for any input. The design, the
//! concealment, the adaptation rule and the memory cost are described in
//! `docs/jitter-buffer.md`.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::units::{ClockRate, Nanos, RtpTimestamp, Seq, Ssrc};

/// The largest frame the buffer plays: 20 ms at 16 kHz.
pub const MAX_FRAME_SAMPLES: usize = 320;

/// Concealment fades the repeated signal to silence over this long.
const CONCEAL_FADE_MS: u64 = 60;
/// After this long of playing nothing but concealment with nothing stored,
/// playout stops; the next packet re-anchors it ([`FrameFlags::RESYNC`]).
const IDLE_AFTER_MS: u32 = 2_000;
/// At most one delay adjustment (skip or insert) per this many frames.
const ADJUST_INTERVAL_FRAMES: u32 = 5;
/// How many frames an acceleration waits for a low-energy frame to skip
/// before it skips a loud one.
const ACCEL_PATIENCE_FRAMES: u32 = 25;
/// How many frames a deceleration waits for a low-energy frame to follow
/// before it inserts after a loud one.
const DECEL_PATIENCE_FRAMES: u32 = 5;
/// A frame whose mean absolute sample is at most this (about -42 dBFS) is
/// low-energy: skipping it or inserting after it is inaudible.
const LOW_ENERGY_MEAN_ABS: u64 = 256;
/// The playout delay is the largest of the per-bucket maxima of packet
/// earliness over this many buckets ...
const DELAY_BUCKETS: usize = 4;
/// ... of this long each (so a window of 6 to 8 s).
const DELAY_BUCKET_MS: u32 = 2_000;
/// The jitter peak decays by 1/2^this per frame played (time constant 128
/// frames: 2.56 s at 20 ms).
const JITTER_DECAY_SHIFT: u32 = 7;
/// A packet out of range without the marker bit re-anchors playout only
/// once this many consecutive-sequence packets were out of range ...
const RESYNC_CONFIRM_PACKETS: u32 = 3;
/// ... over at least this long (a burst of very late packets after a network
/// stall arrives within a few ms and must not re-anchor).
const RESYNC_CONFIRM_NS: u64 = 40_000_000;
/// Store capacity limit, in samples (65 s at 16 kHz): bounds memory and
/// keeps every offset far inside the 32-bit timestamp space.
const MAX_CAPACITY_SAMPLES: u64 = 1 << 20;

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: i64 = 1_000_000_000;
const EMPTY_BUCKET: i64 = i64::MIN;

/// One frame of played-out PCM16.
#[derive(Clone, Copy)]
pub struct Frame {
    /// The source the samples came from.
    pub ssrc: Ssrc,
    /// Frame counter: +1 for every frame played, across resyncs; restarts
    /// at 0 only on [`JitterBuffer::reset`].
    pub seq: u64,
    /// RTP timestamp of the first sample. Advances by exactly one frame per
    /// frame, except: a frame after an [`FrameFlags::INSERTED`] one repeats
    /// its `media_ts` (the inserted frame took no media time), a
    /// [`FrameFlags::SKIPPED`] frame is two frames after its predecessor,
    /// and a [`FrameFlags::RESYNC`] frame starts a new timeline.
    pub media_ts: RtpTimestamp,
    /// What is synthetic about this frame.
    pub flags: FrameFlags,
    /// Valid samples in `samples` (always the configured frame size).
    pub len: u16,
    /// The samples; only the first `len` are meaningful.
    pub samples: [i16; MAX_FRAME_SAMPLES],
}

impl Frame {
    /// The valid samples.
    #[inline]
    pub fn samples(&self) -> &[i16] {
        &self.samples[..usize::from(self.len).min(MAX_FRAME_SAMPLES)]
    }
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            ssrc: Ssrc(0),
            seq: 0,
            media_ts: RtpTimestamp(0),
            flags: FrameFlags::NONE,
            len: 0,
            samples: [0; MAX_FRAME_SAMPLES],
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("ssrc", &self.ssrc)
            .field("seq", &self.seq)
            .field("media_ts", &self.media_ts.0)
            .field("flags", &self.flags)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Bit flags on a [`Frame`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameFlags(u8);

impl FrameFlags {
    /// Received audio, all of it.
    pub const NONE: Self = Self(0);
    /// Every sample is synthesized (loss concealment, fading to silence).
    pub const CONCEALED: Self = Self(0x01);
    /// Some samples were received, the missing ones are concealed.
    pub const PARTIAL: Self = Self(0x02);
    /// First frame of a new timeline (new SSRC, timestamp jump, restart
    /// after a long underrun): `media_ts` is not continuous with the
    /// previous frame.
    pub const RESYNC: Self = Self(0x04);
    /// Inserted to grow the delay: synthesized (also [`Self::CONCEALED`]),
    /// takes no media time; the next frame carries the same `media_ts`.
    pub const INSERTED: Self = Self(0x08);
    /// One frame of media was dropped just before this one to shrink the
    /// delay: `media_ts` is two frames after the previous frame's.
    pub const SKIPPED: Self = Self(0x10);

    /// The raw bits, for the media socket.
    #[inline]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// From raw bits (unknown bits are kept).
    #[inline]
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// Whether every flag in `other` is set.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for FrameFlags {
    type Output = Self;
    #[inline]
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for FrameFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for FrameFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(FrameFlags, &str); 5] = [
            (FrameFlags::CONCEALED, "CONCEALED"),
            (FrameFlags::PARTIAL, "PARTIAL"),
            (FrameFlags::RESYNC, "RESYNC"),
            (FrameFlags::INSERTED, "INSERTED"),
            (FrameFlags::SKIPPED, "SKIPPED"),
        ];
        if self.is_empty() {
            return f.write_str("NONE");
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !0x1f;
        if unknown != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{unknown:#04x}")?;
        }
        Ok(())
    }
}

/// Jitter buffer configuration. All durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// The stream's RTP clock rate (the rate of the decoded samples).
    pub clock_rate: ClockRate,
    /// Duration of a played frame.
    pub frame_ms: u32,
    /// Lower bound of the adaptive target delay; the first frame plays this
    /// long (at least one frame) after the first packet arrived.
    pub min_delay_ms: u32,
    /// Upper bound of the adaptive target delay.
    pub max_delay_ms: u32,
    /// Size of the sample store: how far ahead of the playout point a
    /// packet may reach. At least `max_delay_ms + frame_ms`.
    pub capacity_ms: u32,
}

impl JitterConfig {
    /// The defaults at `clock_rate`: 20 ms frames, delay between 20 and
    /// 200 ms, a 280 ms store (the maximum delay, plus a 60 ms packet, plus
    /// a frame of margin).
    pub const fn new(clock_rate: ClockRate) -> Self {
        Self {
            clock_rate,
            frame_ms: 20,
            min_delay_ms: 20,
            max_delay_ms: 200,
            capacity_ms: 280,
        }
    }
}

/// Why a [`JitterConfig`] was refused. The caller misused the API: nothing
/// here comes from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JitterConfigError {
    /// The clock rate is zero.
    ZeroClockRate,
    /// The frame duration is zero.
    ZeroFrame,
    /// The frame is not a whole number of samples at this clock rate.
    FrameNotWholeSamples,
    /// The frame holds more than [`MAX_FRAME_SAMPLES`] samples.
    FrameTooLong,
    /// `min_delay_ms > max_delay_ms`.
    MinAboveMax,
    /// `capacity_ms < max_delay_ms + frame_ms`: the store could not hold
    /// the delay it is asked to keep.
    CapacityBelowMaxDelay,
    /// The store would exceed 2^20 samples.
    CapacityTooLarge,
}

impl fmt::Display for JitterConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroClockRate => "jitter buffer: clock rate is zero",
            Self::ZeroFrame => "jitter buffer: frame duration is zero",
            Self::FrameNotWholeSamples => {
                "jitter buffer: frame is not a whole number of samples at this clock rate"
            }
            Self::FrameTooLong => "jitter buffer: frame exceeds MAX_FRAME_SAMPLES",
            Self::MinAboveMax => "jitter buffer: min_delay_ms exceeds max_delay_ms",
            Self::CapacityBelowMaxDelay => {
                "jitter buffer: capacity_ms must be at least max_delay_ms + frame_ms"
            }
            Self::CapacityTooLarge => "jitter buffer: capacity exceeds 2^20 samples",
        })
    }
}

impl std::error::Error for JitterConfigError {}

/// What [`JitterBuffer::handle_packet`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Push {
    /// Stored (the first packet, or samples in range; parts before the
    /// playout point or beyond the store may have been trimmed and counted).
    Stored,
    /// Every sample in range was already stored: counted and ignored.
    Duplicate,
    /// Every sample is before the playout point: counted and dropped.
    Late,
    /// Every sample is beyond the store ahead of the playout point: counted
    /// and dropped.
    Overflow,
    /// The packet re-anchored playout (new SSRC, timestamp jump, first
    /// packet after a long underrun) and was stored; what was buffered is
    /// flushed and the next frame carries [`FrameFlags::RESYNC`].
    Resync,
    /// No samples: ignored.
    Empty,
}

/// A snapshot of the buffer's counters. Packet counters count packets,
/// frame counters count frames played.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterCounters {
    /// Packets stored (in full or in part), including resync packets.
    pub stored: u64,
    /// Frames played (returned by [`JitterBuffer::poll_frame`]).
    pub played: u64,
    /// Frames played that are entirely synthesized (includes `inserted`).
    pub concealed: u64,
    /// Frames played with some samples received and some concealed.
    pub partial: u64,
    /// Frames inserted to grow the delay.
    pub inserted: u64,
    /// Frames of media dropped unplayed to shrink the delay.
    pub skipped: u64,
    /// Packets dropped because all their samples were already played.
    pub late_dropped: u64,
    /// Packets stored without their head, which was already played.
    pub late_trimmed: u64,
    /// Packets dropped because they lie entirely beyond the store.
    pub overflow_dropped: u64,
    /// Packets stored without their tail, which lay beyond the store.
    pub overflow_trimmed: u64,
    /// Packets whose samples were all already stored.
    pub duplicates: u64,
    /// Playout re-anchors (not counting the very first packet).
    pub resyncs: u64,
    /// The current playout delay: how long before its playout time the
    /// earliest recent packet arrived, clamped to `[0, capacity_ms]`.
    pub current_delay_ms: u32,
    /// The delay the buffer is steering to, within `[min, max]`.
    pub target_delay_ms: u32,
    /// The jitter estimate: decaying peak of how much later than the
    /// earliest recent packet a packet arrived.
    pub jitter_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No packet since creation or reset.
    Fresh,
    /// Frames are due.
    Playing,
    /// Underrun for long: no frame due until the next packet.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adjust {
    None,
    Skip,
    Insert,
}

/// An adaptive jitter buffer for one stream.
///
/// Methods, in the order a driver uses them:
///
/// - input: [`handle_packet`](Self::handle_packet) for every decoded packet,
///   with its arrival time (the kernel receive timestamp);
/// - output: [`poll_frame`](Self::poll_frame) until it returns `None`, then
///   [`poll_timeout`](Self::poll_timeout) to arm the timer for the next frame;
/// - getters: [`counters`](Self::counters), [`config`](Self::config),
///   [`footprint_bytes`](Self::footprint_bytes);
/// - mutator: [`reset`](Self::reset) when the endpoint is reused.
pub struct JitterBuffer {
    cfg: JitterConfig,
    /// Samples per frame (F).
    frame_samples: usize,
    frame_ns: u64,
    /// Samples in the store (C), a multiple of F.
    cap: usize,
    min_ns: i64,
    max_ns: i64,
    cap_ns: i64,
    fade_samples: u64,
    idle_frames: u32,
    bucket_frames: u32,
    min_lag: usize,
    max_lag: usize,

    // The store: sample at ring index i is valid iff bit i of `valid` is
    // set. Invariant: valid samples lie in [play_idx, play_idx + C) in ring
    // order, i.e. at timestamps [play_ts, play_ts + C).
    store: Box<[i16]>,
    valid: Box<[u64]>,
    stored_samples: usize,

    // Playout.
    state: State,
    ssrc: Ssrc,
    /// Timestamp of the next frame's first sample.
    play_ts: RtpTimestamp,
    /// Ring index of `play_ts`; a multiple of F.
    play_idx: usize,
    /// When the next frame is due, in ns.
    due: u64,
    next_seq: u64,
    pending_flags: FrameFlags,

    // Concealment.
    /// The last frame with received audio, when not still in `frame`.
    hist: Box<[i16]>,
    /// `frame` holds the last frame with received audio (copy it to
    /// `hist` before overwriting).
    hist_in_frame: bool,
    /// Pitch period of `hist`, once estimated.
    pitch: Option<usize>,
    /// Fully concealed frames in a row.
    conceal_run: u32,
    /// Fully concealed frames in a row with nothing stored.
    underrun_run: u32,
    last_low_energy: bool,

    // Resync detection for out-of-range packets.
    oor_count: u32,
    oor_first: u64,
    oor_seq: u16,

    // Adaptation, all in ns.
    buckets: [i64; DELAY_BUCKETS],
    bucket: usize,
    bucket_age: u32,
    current_ns: i64,
    jitter_ns: i64,
    since_adjust: u32,
    accel_wait: u32,
    decel_wait: u32,

    counters: JitterCounters,
    frame: Frame,
}

impl JitterBuffer {
    /// Validates `cfg` and allocates everything the buffer will ever use.
    pub fn new(cfg: JitterConfig) -> Result<Self, JitterConfigError> {
        let rate = u64::from(cfg.clock_rate.0);
        if rate == 0 {
            return Err(JitterConfigError::ZeroClockRate);
        }
        if cfg.frame_ms == 0 {
            return Err(JitterConfigError::ZeroFrame);
        }
        let frame_units = rate * u64::from(cfg.frame_ms);
        if !frame_units.is_multiple_of(1000) {
            return Err(JitterConfigError::FrameNotWholeSamples);
        }
        let frame_samples = frame_units / 1000;
        if frame_samples > MAX_FRAME_SAMPLES as u64 {
            return Err(JitterConfigError::FrameTooLong);
        }
        if cfg.min_delay_ms > cfg.max_delay_ms {
            return Err(JitterConfigError::MinAboveMax);
        }
        if u64::from(cfg.capacity_ms) < u64::from(cfg.max_delay_ms) + u64::from(cfg.frame_ms) {
            return Err(JitterConfigError::CapacityBelowMaxDelay);
        }
        let cap_samples = (rate * u64::from(cfg.capacity_ms))
            .div_ceil(1000)
            .div_ceil(frame_samples)
            * frame_samples;
        if cap_samples > MAX_CAPACITY_SAMPLES {
            return Err(JitterConfigError::CapacityTooLarge);
        }
        // Both bounded above (320 and 2^20): the casts are lossless.
        let frame_samples = frame_samples as usize;
        let cap = cap_samples as usize;

        let ms = |v: u32| i64::from(v) * NS_PER_MS as i64;
        let min_lag = (cfg.clock_rate.0 as usize * 25 / 10_000).max(1);
        let max_lag = (cfg.clock_rate.0 as usize * 15 / 1000).min(frame_samples * 3 / 4);
        let mut jb = Self {
            cfg,
            frame_samples,
            frame_ns: u64::from(cfg.frame_ms) * NS_PER_MS,
            cap,
            min_ns: ms(cfg.min_delay_ms),
            max_ns: ms(cfg.max_delay_ms),
            cap_ns: ms(cfg.capacity_ms),
            fade_samples: (rate * CONCEAL_FADE_MS / 1000).max(1),
            idle_frames: IDLE_AFTER_MS.div_ceil(cfg.frame_ms).max(1),
            bucket_frames: DELAY_BUCKET_MS.div_ceil(cfg.frame_ms).max(1),
            min_lag,
            max_lag,
            store: vec![0; cap].into_boxed_slice(),
            valid: vec![0; cap.div_ceil(64)].into_boxed_slice(),
            stored_samples: 0,
            state: State::Fresh,
            ssrc: Ssrc(0),
            play_ts: RtpTimestamp(0),
            play_idx: 0,
            due: 0,
            next_seq: 0,
            pending_flags: FrameFlags::NONE,
            hist: vec![0; frame_samples].into_boxed_slice(),
            hist_in_frame: false,
            pitch: None,
            conceal_run: 0,
            underrun_run: 0,
            last_low_energy: true,
            oor_count: 0,
            oor_first: 0,
            oor_seq: 0,
            buckets: [EMPTY_BUCKET; DELAY_BUCKETS],
            bucket: 0,
            bucket_age: 0,
            current_ns: 0,
            jitter_ns: 0,
            since_adjust: 0,
            accel_wait: 0,
            decel_wait: 0,
            counters: JitterCounters::default(),
            frame: Frame::default(),
        };
        jb.reset();
        Ok(jb)
    }

    /// The configuration the buffer was built with.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// Samples in every played frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Bytes this buffer occupies: the struct (with its output frame) plus
    /// the store, its validity bitmap and the concealment history.
    pub fn footprint_bytes(&self) -> usize {
        size_of::<Self>()
            + size_of_val::<[i16]>(&self.store)
            + size_of_val::<[u64]>(&self.valid)
            + size_of_val::<[i16]>(&self.hist)
    }

    /// A snapshot of the counters and the current and target delay.
    pub fn counters(&self) -> JitterCounters {
        let to_ms = |ns: i64| u32::try_from(ns / NS_PER_MS as i64).unwrap_or(u32::MAX);
        JitterCounters {
            current_delay_ms: to_ms(self.current_ns.clamp(0, self.cap_ns)),
            target_delay_ms: to_ms(self.target_ns()),
            jitter_ms: to_ms(self.jitter_ns.clamp(0, self.cap_ns)),
            ..self.counters
        }
    }

    /// Back to the state after [`Self::new`]: nothing stored, no playout,
    /// counters and frame sequence at zero. Allocates nothing.
    pub fn reset(&mut self) {
        self.clear_store();
        self.state = State::Fresh;
        self.ssrc = Ssrc(0);
        self.play_ts = RtpTimestamp(0);
        self.play_idx = 0;
        self.due = 0;
        self.next_seq = 0;
        self.pending_flags = FrameFlags::NONE;
        self.clear_history();
        self.oor_count = 0;
        self.jitter_ns = 0;
        self.clear_delay_window();
        self.counters = JitterCounters::default();
        self.frame = Frame::default();
    }

    /// Takes one decoded packet: `samples` are PCM16 at the configured clock
    /// rate, the first at RTP timestamp `ts`; `arrival` is when the packet
    /// was received.
    ///
    /// The first packet anchors playout: its first sample plays in the
    /// first frame, due at `arrival` plus the target delay. Samples are
    /// placed by timestamp alone; `seq` and `marker` only decide whether a
    /// packet far outside the store re-anchors playout (marker: at once;
    /// otherwise after three consecutive sequence numbers out of range over
    /// at least 40 ms).
    pub fn handle_packet(
        &mut self,
        ssrc: Ssrc,
        seq: Seq,
        ts: RtpTimestamp,
        marker: bool,
        samples: &[i16],
        arrival: Nanos,
    ) -> Push {
        if samples.is_empty() {
            return Push::Empty;
        }
        match self.state {
            State::Fresh => {
                self.anchor(ssrc, ts, arrival, false);
                self.store_packet(0, samples);
                self.observe(0, arrival);
                return Push::Stored;
            }
            State::Idle => return self.resync(ssrc, ts, samples, arrival),
            State::Playing => {}
        }
        if ssrc != self.ssrc {
            return self.resync(ssrc, ts, samples, arrival);
        }

        let off = i64::from(ts.diff(self.play_ts));
        let len = i64::try_from(samples.len()).unwrap_or(i64::MAX);
        let end = off.saturating_add(len);
        let cap = self.cap as i64;
        let far_behind = end <= -cap;
        let ahead = off >= cap;
        if far_behind || ahead {
            if marker || self.confirm_out_of_range(seq, arrival) {
                return self.resync(ssrc, ts, samples, arrival);
            }
            if ahead {
                self.counters.overflow_dropped += 1;
                return Push::Overflow;
            }
            self.counters.late_dropped += 1;
            return Push::Late;
        }
        self.oor_count = 0;
        if end <= 0 {
            self.counters.late_dropped += 1;
            self.observe(off, arrival);
            return Push::Late;
        }
        let push = self.store_packet(off, samples);
        if push == Push::Stored {
            self.observe(off, arrival);
        }
        push
    }

    /// When the next frame is due; `None` before the first packet and after
    /// a long underrun.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        match self.state {
            State::Playing => Some(Nanos(self.due)),
            State::Fresh | State::Idle => None,
        }
    }

    /// The next frame if it is due at `now`. Call until it returns `None`:
    /// a caller that polls late gets every frame it missed, in order.
    pub fn poll_frame(&mut self, now: Nanos) -> Option<&Frame> {
        if self.state != State::Playing || now.0 < self.due {
            return None;
        }
        let mut flags = self.pending_flags;
        self.pending_flags = FrameFlags::NONE;
        match self.plan_adjustment() {
            Adjust::None => flags |= self.play_next(),
            Adjust::Skip => {
                self.discard_next();
                flags |= FrameFlags::SKIPPED | self.play_next();
            }
            Adjust::Insert => {
                self.conceal_frame();
                flags |= FrameFlags::INSERTED | FrameFlags::CONCEALED;
            }
        }
        self.finish_frame(flags);
        Some(&self.frame)
    }

    // ---- input ----

    /// Re-anchors playout on this packet and stores it.
    fn resync(&mut self, ssrc: Ssrc, ts: RtpTimestamp, samples: &[i16], arrival: Nanos) -> Push {
        self.anchor(ssrc, ts, arrival, true);
        self.store_packet(0, samples);
        self.observe(0, arrival);
        Push::Resync
    }

    fn anchor(&mut self, ssrc: Ssrc, ts: RtpTimestamp, arrival: Nanos, resync: bool) {
        self.clear_store();
        self.clear_history();
        self.clear_delay_window();
        self.state = State::Playing;
        self.ssrc = ssrc;
        self.play_ts = ts;
        self.play_idx = 0;
        // The target is within [min, max], non-negative.
        self.due = arrival.0.saturating_add(self.target_ns() as u64);
        self.oor_count = 0;
        if resync {
            self.pending_flags = FrameFlags::RESYNC;
            self.counters.resyncs += 1;
        }
    }

    /// Counts an out-of-range packet; true once enough consecutive ones,
    /// spread over enough time, say the timeline really moved.
    fn confirm_out_of_range(&mut self, seq: Seq, arrival: Nanos) -> bool {
        if self.oor_count > 0 && seq.0 == self.oor_seq.wrapping_add(1) {
            self.oor_count = self.oor_count.saturating_add(1);
        } else {
            self.oor_count = 1;
            self.oor_first = arrival.0;
        }
        self.oor_seq = seq.0;
        self.oor_count >= RESYNC_CONFIRM_PACKETS
            && arrival.0.saturating_sub(self.oor_first) >= RESYNC_CONFIRM_NS
    }

    /// Stores the in-range part of a packet whose first sample is `off`
    /// samples after the playout point. Requires `off < C` and
    /// `off + len > 0`.
    fn store_packet(&mut self, off: i64, samples: &[i16]) -> Push {
        let cap = self.cap as i64;
        let len = i64::try_from(samples.len()).unwrap_or(i64::MAX);
        let end = off.saturating_add(len);
        let lo = off.max(0);
        let hi = end.min(cap);
        if lo >= hi {
            // Unreachable given the callers' checks; never panic regardless.
            return Push::Late;
        }
        if off < 0 {
            self.counters.late_trimmed += 1;
        }
        if end > cap {
            self.counters.overflow_trimmed += 1;
        }
        // 0 <= lo - off <= hi - off <= len, and lo < C: casts are lossless.
        let src = &samples[(lo - off) as usize..(hi - off) as usize];
        let start = (self.play_idx + lo as usize) % self.cap;
        let first = (self.cap - start).min(src.len());
        let (a, b) = src.split_at(first);
        let present = count_bits(&self.valid, start, a.len()) + count_bits(&self.valid, 0, b.len());
        if present == src.len() {
            self.counters.duplicates += 1;
            return Push::Duplicate;
        }
        if present == 0 {
            self.store[start..start + a.len()].copy_from_slice(a);
            self.store[..b.len()].copy_from_slice(b);
            set_bits(&mut self.valid, start, a.len());
            set_bits(&mut self.valid, 0, b.len());
        } else {
            // Overlaps what we have: fill only the holes, first copy wins.
            for (i, &s) in src.iter().enumerate() {
                let idx = (start + i) % self.cap;
                if !bit(&self.valid, idx) {
                    self.store[idx] = s;
                    self.valid[idx / 64] |= 1 << (idx % 64);
                }
            }
        }
        self.stored_samples += src.len() - present;
        self.counters.stored += 1;
        Push::Stored
    }

    /// Feeds the delay estimator with a packet whose first sample is `off`
    /// samples from the playout point.
    fn observe(&mut self, off: i64, arrival: Nanos) {
        // |off| < 2^31 and NS_PER_S < 2^30: no overflow.
        let off_ns = off * NS_PER_S / i64::from(self.cfg.clock_rate.0);
        // Earliness: how long before its playout time the first sample came.
        let e = i128::from(self.due) + i128::from(off_ns) - i128::from(arrival.0);
        let e = e.clamp(i128::from(i64::MIN / 4), i128::from(i64::MAX / 4)) as i64;
        let b = &mut self.buckets[self.bucket];
        *b = (*b).max(e);
        self.refresh_current();
        let r = self.current_ns.saturating_sub(e).max(0);
        self.jitter_ns = self.jitter_ns.max(r);
    }

    // ---- output ----

    fn plan_adjustment(&mut self) -> Adjust {
        if self.since_adjust < ADJUST_INTERVAL_FRAMES {
            return Adjust::None;
        }
        let target = self.target_ns();
        let f = self.frame_ns as i64;
        let adjust = if self.current_ns >= target + f {
            self.decel_wait = 0;
            if self.next_is_low_energy() || self.accel_wait >= ACCEL_PATIENCE_FRAMES {
                Adjust::Skip
            } else {
                self.accel_wait += 1;
                Adjust::None
            }
        } else if self.current_ns < target - f / 2 {
            self.accel_wait = 0;
            if self.last_low_energy || self.decel_wait >= DECEL_PATIENCE_FRAMES {
                Adjust::Insert
            } else {
                self.decel_wait += 1;
                Adjust::None
            }
        } else {
            self.accel_wait = 0;
            self.decel_wait = 0;
            Adjust::None
        };
        match adjust {
            Adjust::None => {}
            Adjust::Skip => self.shift_delay(-f),
            Adjust::Insert => self.shift_delay(f),
        }
        adjust
    }

    /// A skip plays everything one frame earlier, an insert one frame later.
    fn shift_delay(&mut self, by: i64) {
        for b in &mut self.buckets {
            if *b != EMPTY_BUCKET {
                *b = b.saturating_add(by);
            }
        }
        self.current_ns = self.current_ns.saturating_add(by);
        self.since_adjust = 0;
        self.accel_wait = 0;
        self.decel_wait = 0;
    }

    /// Whether the frame at the playout point is missing or quiet.
    fn next_is_low_energy(&self) -> bool {
        let f = self.frame_samples;
        let sum: u64 = (self.play_idx..self.play_idx + f)
            .filter(|&i| bit(&self.valid, i))
            .map(|i| u64::from(self.store[i].unsigned_abs()))
            .sum();
        sum <= LOW_ENERGY_MEAN_ABS * f as u64
    }

    /// Drops the frame at the playout point unplayed.
    fn discard_next(&mut self) {
        let f = self.frame_samples;
        let present = count_bits(&self.valid, self.play_idx, f);
        clear_bits(&mut self.valid, self.play_idx, f);
        self.stored_samples = self.stored_samples.saturating_sub(present);
        self.advance_playout();
        self.counters.skipped += 1;
    }

    /// Writes the frame at the playout point into `self.frame`, concealing
    /// what is missing, and advances the playout point. Returns the flags.
    fn play_next(&mut self) -> FrameFlags {
        let f = self.frame_samples;
        let idx = self.play_idx;
        let present = count_bits(&self.valid, idx, f);
        self.frame.media_ts = self.play_ts;
        let flags = if present == f {
            self.frame.samples[..f].copy_from_slice(&self.store[idx..idx + f]);
            self.hist_in_frame = true;
            self.pitch = None;
            self.conceal_run = 0;
            FrameFlags::NONE
        } else if present == 0 {
            self.conceal_frame();
            FrameFlags::CONCEALED
        } else {
            self.prepare_history();
            let period = self.period();
            conceal(
                &self.hist,
                period,
                0,
                self.fade_samples,
                &mut self.frame.samples[..f],
            );
            for (i, out) in self.frame.samples[..f].iter_mut().enumerate() {
                if bit(&self.valid, idx + i) {
                    *out = self.store[idx + i];
                }
            }
            self.hist_in_frame = true;
            self.pitch = None;
            self.conceal_run = 0;
            FrameFlags::PARTIAL
        };
        clear_bits(&mut self.valid, idx, f);
        self.stored_samples = self.stored_samples.saturating_sub(present);
        self.advance_playout();
        flags
    }

    /// Writes a fully concealed frame into `self.frame` (the playout point
    /// does not move).
    fn conceal_frame(&mut self) {
        let f = self.frame_samples;
        self.prepare_history();
        let period = self.period();
        let start = u64::from(self.conceal_run) * f as u64;
        conceal(
            &self.hist,
            period,
            start,
            self.fade_samples,
            &mut self.frame.samples[..f],
        );
        self.frame.media_ts = self.play_ts;
        self.conceal_run = self.conceal_run.saturating_add(1);
    }

    fn advance_playout(&mut self) {
        self.play_ts = self.play_ts.add(self.frame_samples as u32);
        self.play_idx = (self.play_idx + self.frame_samples) % self.cap;
    }

    /// Stamps the frame in `self.frame`, counts it, moves the clock on.
    fn finish_frame(&mut self, flags: FrameFlags) {
        let f = self.frame_samples;
        self.frame.ssrc = self.ssrc;
        self.frame.seq = self.next_seq;
        self.next_seq += 1;
        self.frame.flags = flags;
        self.frame.len = f as u16;
        self.due = self.due.saturating_add(self.frame_ns);

        let concealed = flags.contains(FrameFlags::CONCEALED);
        let energy: u64 = self.frame.samples[..f]
            .iter()
            .map(|s| u64::from(s.unsigned_abs()))
            .sum();
        self.last_low_energy = concealed || energy <= LOW_ENERGY_MEAN_ABS * f as u64;

        self.counters.played += 1;
        if concealed {
            self.counters.concealed += 1;
        }
        if flags.contains(FrameFlags::PARTIAL) {
            self.counters.partial += 1;
        }
        if flags.contains(FrameFlags::INSERTED) {
            self.counters.inserted += 1;
        }

        // The estimator's clock is the frame clock.
        self.since_adjust = self.since_adjust.saturating_add(1);
        self.jitter_ns = (self.jitter_ns - (self.jitter_ns >> JITTER_DECAY_SHIFT) - 1).max(0);
        self.bucket_age += 1;
        if self.bucket_age >= self.bucket_frames {
            self.bucket_age = 0;
            self.bucket = (self.bucket + 1) % DELAY_BUCKETS;
            self.buckets[self.bucket] = EMPTY_BUCKET;
            self.refresh_current();
        }

        if concealed && self.stored_samples == 0 {
            self.underrun_run = self.underrun_run.saturating_add(1);
            if self.underrun_run >= self.idle_frames {
                self.state = State::Idle;
            }
        } else {
            self.underrun_run = 0;
        }
    }

    // ---- concealment ----

    /// Makes sure `hist` holds the last frame with received audio.
    fn prepare_history(&mut self) {
        if self.hist_in_frame {
            self.hist
                .copy_from_slice(&self.frame.samples[..self.frame_samples]);
            self.hist_in_frame = false;
            self.pitch = None;
        }
    }

    fn period(&mut self) -> usize {
        match self.pitch {
            Some(p) => p,
            None => {
                let p = pitch_period(&self.hist, self.min_lag, self.max_lag);
                self.pitch = Some(p);
                p
            }
        }
    }

    fn clear_history(&mut self) {
        self.hist.fill(0);
        self.hist_in_frame = false;
        self.pitch = None;
        self.conceal_run = 0;
        self.underrun_run = 0;
        self.last_low_energy = true;
    }

    // ---- store and estimator helpers ----

    fn clear_store(&mut self) {
        self.valid.fill(0);
        self.stored_samples = 0;
    }

    fn clear_delay_window(&mut self) {
        self.buckets = [EMPTY_BUCKET; DELAY_BUCKETS];
        self.bucket = 0;
        self.bucket_age = 0;
        self.current_ns = self.target_ns();
        self.since_adjust = 0;
        self.accel_wait = 0;
        self.decel_wait = 0;
    }

    /// The current delay is the largest earliness in the window; with an
    /// empty window the last value holds.
    fn refresh_current(&mut self) {
        let max = self.buckets.iter().copied().max().unwrap_or(EMPTY_BUCKET);
        if max != EMPTY_BUCKET {
            self.current_ns = max;
        }
    }

    /// target = clamp(jitter + frame, min, max).
    fn target_ns(&self) -> i64 {
        self.jitter_ns
            .saturating_add(self.frame_ns as i64)
            .clamp(self.min_ns, self.max_ns)
    }
}

impl fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("cfg", &self.cfg)
            .field("state", &self.state)
            .field("ssrc", &self.ssrc)
            .field("play_ts", &self.play_ts.0)
            .field("due", &self.due)
            .field("stored_samples", &self.stored_samples)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

/// Fills `out` with the periodic continuation of the last `period` samples
/// of `hist`, starting `start` samples into the gap, faded linearly from
/// full level at the gap's start to silence `fade` samples later.
fn conceal(hist: &[i16], period: usize, start: u64, fade: u64, out: &mut [i16]) {
    let period = period.clamp(1, hist.len().max(1));
    let base = hist.len().saturating_sub(period);
    for (i, o) in out.iter_mut().enumerate() {
        let pos = start + i as u64;
        if pos >= fade {
            *o = 0;
            continue;
        }
        // Q15 gain in (0, 1]; fade < 2^32 so the shift cannot overflow.
        let gain = (((fade - pos) << 15) / fade) as i32;
        let x = hist
            .get(base + (pos % period as u64) as usize)
            .copied()
            .unwrap_or(0);
        *o = ((i32::from(x) * gain) >> 15) as i16;
    }
}

/// The lag in `[min_lag, max_lag]` with the highest normalized
/// autocorrelation of `hist`; `max_lag` when nothing correlates (silence),
/// the whole history when the range is empty.
fn pitch_period(hist: &[i16], min_lag: usize, max_lag: usize) -> usize {
    let n = hist.len();
    if n == 0 || max_lag < min_lag || max_lag >= n {
        return n.max(1);
    }
    // Every other sample at wideband: half the work, same answer.
    let step = if n > 200 { 2 } else { 1 };
    let mut best = max_lag;
    let mut best_score = f64::MIN;
    for lag in min_lag..=max_lag {
        let (mut xy, mut xx, mut yy) = (0i64, 0i64, 0i64);
        for k in (lag..n).step_by(step) {
            let a = i64::from(hist[k]);
            let b = i64::from(hist[k - lag]);
            xy += a * b;
            xx += a * a;
            yy += b * b;
        }
        if xx == 0 || yy == 0 {
            continue;
        }
        let score = xy as f64 / ((xx as f64) * (yy as f64)).sqrt();
        if score > best_score {
            best_score = score;
            best = lag;
        }
    }
    best
}

#[inline]
fn bit(words: &[u64], i: usize) -> bool {
    words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Calls `op(word, mask)` for each word covering bits `[start, start + len)`.
#[inline]
fn for_each_word(start: usize, len: usize, mut op: impl FnMut(usize, u64)) {
    let end = start + len;
    let mut i = start;
    while i < end {
        let shift = i % 64;
        let n = (64 - shift).min(end - i);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << shift
        };
        op(i / 64, mask);
        i += n;
    }
}

fn count_bits(words: &[u64], start: usize, len: usize) -> usize {
    let mut n = 0;
    for_each_word(start, len, |w, mask| {
        n += words.get(w).map_or(0, |v| (v & mask).count_ones() as usize);
    });
    n
}

fn set_bits(words: &mut [u64], start: usize, len: usize) {
    for_each_word(start, len, |w, mask| {
        if let Some(v) = words.get_mut(w) {
            *v |= mask;
        }
    });
}

fn clear_bits(words: &mut [u64], start: usize, len: usize) {
    for_each_word(start, len, |w, mask| {
        if let Some(v) = words.get_mut(w) {
            *v &= !mask;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: Ssrc = Ssrc(0x1e80_6360);

    fn jb(rate: u32) -> JitterBuffer {
        JitterBuffer::new(JitterConfig::new(ClockRate(rate))).unwrap()
    }

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    /// A recognisable, non-periodic sample for stream position `n`.
    fn sample(n: u32) -> i16 {
        (n.wrapping_mul(2_654_435_761) >> 17) as i16
    }

    fn packet(start: u32, len: usize) -> Vec<i16> {
        (0..len as u32).map(|i| sample(start + i)).collect()
    }

    fn drain(jb: &mut JitterBuffer, now: Nanos, out: &mut Vec<Frame>) {
        while let Some(f) = jb.poll_frame(now) {
            out.push(*f);
        }
    }

    #[test]
    fn config_validation() {
        let ok = JitterConfig::new(ClockRate(8000));
        assert!(JitterBuffer::new(ok).is_ok());
        assert!(JitterBuffer::new(JitterConfig::new(ClockRate(16000))).is_ok());
        let bad = |c: JitterConfig| JitterBuffer::new(c).err();
        assert_eq!(
            bad(JitterConfig {
                clock_rate: ClockRate(0),
                ..ok
            }),
            Some(JitterConfigError::ZeroClockRate)
        );
        assert_eq!(
            bad(JitterConfig { frame_ms: 0, ..ok }),
            Some(JitterConfigError::ZeroFrame)
        );
        assert_eq!(
            bad(JitterConfig {
                clock_rate: ClockRate(44_100),
                frame_ms: 1,
                ..ok
            }),
            Some(JitterConfigError::FrameNotWholeSamples)
        );
        assert_eq!(
            bad(JitterConfig {
                clock_rate: ClockRate(48_000),
                ..ok
            }),
            Some(JitterConfigError::FrameTooLong)
        );
        assert_eq!(
            bad(JitterConfig {
                min_delay_ms: 300,
                ..ok
            }),
            Some(JitterConfigError::MinAboveMax)
        );
        assert_eq!(
            bad(JitterConfig {
                capacity_ms: 210,
                ..ok
            }),
            Some(JitterConfigError::CapacityBelowMaxDelay)
        );
        assert_eq!(
            bad(JitterConfig {
                capacity_ms: 200_000,
                ..ok
            }),
            Some(JitterConfigError::CapacityTooLarge)
        );
    }

    #[test]
    fn nothing_due_before_the_first_packet() {
        let mut jb = jb(8000);
        assert_eq!(jb.poll_timeout(), None);
        assert!(jb.poll_frame(Nanos(u64::MAX)).is_none());
        assert_eq!(
            jb.handle_packet(SSRC, Seq(1), RtpTimestamp(0), false, &[], ms(0)),
            Push::Empty
        );
        assert_eq!(jb.poll_timeout(), None);
    }

    #[test]
    fn first_frame_due_after_min_delay() {
        let mut jb = jb(8000);
        let p = packet(0, 160);
        assert_eq!(
            jb.handle_packet(SSRC, Seq(1), RtpTimestamp(1000), false, &p, ms(5)),
            Push::Stored
        );
        assert_eq!(jb.poll_timeout(), Some(ms(25)));
        assert!(jb.poll_frame(Nanos(ms(25).0 - 1)).is_none());
        let f = *jb.poll_frame(ms(25)).unwrap();
        assert_eq!(f.seq, 0);
        assert_eq!(f.media_ts, RtpTimestamp(1000));
        assert_eq!(f.flags, FrameFlags::NONE);
        assert_eq!(f.samples(), &p[..]);
        assert_eq!(jb.poll_timeout(), Some(ms(45)));
    }

    #[test]
    fn odd_sized_packets_reassemble_exactly() {
        // 7, 13, 160, 1, ... samples: frames still carry the input exactly.
        let mut jb = jb(8000);
        let sizes = [7usize, 13, 160, 1, 299, 40, 120, 3, 157];
        let mut pos = 0u32;
        for (i, &n) in sizes.iter().enumerate() {
            let p = packet(pos, n);
            let push = jb.handle_packet(
                SSRC,
                Seq(i as u16),
                RtpTimestamp(pos),
                false,
                &p,
                ms(i as u64),
            );
            assert_eq!(push, Push::Stored);
            pos += n as u32;
        }
        let mut out = Vec::new();
        drain(&mut jb, ms(20 + 20 * 4), &mut out);
        let got: Vec<i16> = out.iter().flat_map(|f| f.samples().to_vec()).collect();
        let want = packet(0, 800);
        assert_eq!(got.len(), 800);
        assert!(got == want, "samples differ");
        assert!(out.iter().all(|f| f.flags.is_empty()));
    }

    #[test]
    fn partial_frame_is_flagged_and_keeps_what_arrived() {
        let mut jb = jb(8000);
        jb.handle_packet(SSRC, Seq(0), RtpTimestamp(0), false, &packet(0, 160), ms(0));
        // Second frame: only its second half arrives.
        jb.handle_packet(
            SSRC,
            Seq(2),
            RtpTimestamp(240),
            false,
            &packet(240, 80),
            ms(1),
        );
        let mut out = Vec::new();
        drain(&mut jb, ms(40), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].flags, FrameFlags::PARTIAL);
        assert_eq!(&out[1].samples()[80..], &packet(240, 80)[..]);
        assert_eq!(jb.counters().partial, 1);
    }

    #[test]
    fn concealment_fades_to_silence() {
        let mut jb = jb(8000);
        // A 200 Hz tone: period 40 samples.
        let tone: Vec<i16> = (0..160)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * f64::from(i) / 40.0).sin()) as i16)
            .collect();
        jb.handle_packet(SSRC, Seq(0), RtpTimestamp(0), false, &tone, ms(0));
        // Keep something stored far ahead so the buffer does not go idle.
        jb.handle_packet(
            SSRC,
            Seq(9),
            RtpTimestamp(1600),
            false,
            &packet(0, 160),
            ms(0),
        );
        let mut out = Vec::new();
        drain(&mut jb, ms(20 + 20 * 4), &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].flags, FrameFlags::NONE);
        let level = |f: &Frame| {
            f.samples()
                .iter()
                .map(|s| i64::from(s.unsigned_abs()))
                .sum::<i64>()
        };
        for f in &out[1..] {
            assert_eq!(f.flags, FrameFlags::CONCEALED);
        }
        // Pitch-synchronous: the first concealed samples continue the tone.
        let c = &out[1].samples();
        for i in 0..8 {
            assert!(
                (i32::from(c[i]) - i32::from(tone[120 + i])).abs() < 400,
                "{i}"
            );
        }
        assert!(level(&out[1]) > level(&out[2]));
        assert!(level(&out[2]) > level(&out[3]));
        assert_eq!(level(&out[4]), 0, "silence after 60 ms");
    }

    #[test]
    fn pitch_period_finds_the_tone() {
        let tone: Vec<i16> = (0..160)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * f64::from(i) / 57.0).sin()) as i16)
            .collect();
        assert_eq!(pitch_period(&tone, 20, 120), 57);
        assert_eq!(pitch_period(&[0; 160], 20, 120), 120);
        assert_eq!(pitch_period(&[1; 10], 20, 120), 10);
    }

    #[test]
    fn bit_ranges() {
        let mut w = [0u64; 4];
        set_bits(&mut w, 60, 70);
        assert_eq!(count_bits(&w, 0, 256), 70);
        assert_eq!(count_bits(&w, 60, 4), 4);
        assert_eq!(count_bits(&w, 64, 64), 64);
        assert!(bit(&w, 129) && !bit(&w, 130) && !bit(&w, 59));
        clear_bits(&mut w, 64, 64);
        assert_eq!(count_bits(&w, 0, 256), 6);
        assert_eq!(count_bits(&w, 0, 0), 0);
    }

    #[test]
    fn late_duplicate_overflow() {
        let mut jb = jb(8000);
        let mut out = Vec::new();
        jb.handle_packet(SSRC, Seq(0), RtpTimestamp(0), false, &packet(0, 160), ms(0));
        assert_eq!(
            jb.handle_packet(SSRC, Seq(0), RtpTimestamp(0), false, &packet(0, 160), ms(1)),
            Push::Duplicate
        );
        drain(&mut jb, ms(20), &mut out);
        assert_eq!(
            jb.handle_packet(
                SSRC,
                Seq(0),
                RtpTimestamp(0),
                false,
                &packet(0, 160),
                ms(21)
            ),
            Push::Late
        );
        // 280 ms store at 8 kHz: 2240 samples from the playout point (160).
        assert_eq!(
            jb.handle_packet(
                SSRC,
                Seq(20),
                RtpTimestamp(2400),
                false,
                &packet(0, 160),
                ms(22)
            ),
            Push::Overflow
        );
        assert_eq!(
            jb.handle_packet(
                SSRC,
                Seq(14),
                RtpTimestamp(2320),
                false,
                &packet(0, 160),
                ms(22)
            ),
            Push::Stored
        );
        let c = jb.counters();
        assert_eq!(
            (
                c.duplicates,
                c.late_dropped,
                c.overflow_dropped,
                c.overflow_trimmed
            ),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn absurd_input_does_not_panic() {
        let mut jb = jb(16000);
        let huge = vec![1i16; 100_000];
        let ts = [0u32, u32::MAX, 1 << 31, (1 << 31) - 1, 7, u32::MAX - 3];
        let times = [0u64, u64::MAX, 1, u64::MAX / 2, 3];
        let mut n = 0u16;
        for &t in &ts {
            for &a in &times {
                for s in [&huge[..], &huge[..1], &huge[..321], &[][..]] {
                    n = n.wrapping_add(1);
                    jb.handle_packet(
                        Ssrc(u32::from(n % 3)),
                        Seq(n),
                        RtpTimestamp(t),
                        n.is_multiple_of(2),
                        s,
                        Nanos(a),
                    );
                    let mut guard = 0;
                    while jb.poll_frame(Nanos(a)).is_some() {
                        guard += 1;
                        assert!(guard < 10_000, "poll_frame must run dry");
                    }
                }
            }
        }
        let c = jb.counters();
        assert!(c.current_delay_ms <= 280);
        assert!((20..=200).contains(&c.target_delay_ms));
    }

    #[test]
    fn reset_restarts_from_scratch() {
        let mut jb = jb(8000);
        jb.handle_packet(SSRC, Seq(0), RtpTimestamp(0), false, &packet(0, 160), ms(0));
        assert!(jb.poll_frame(ms(20)).is_some());
        jb.reset();
        assert_eq!(jb.poll_timeout(), None);
        assert_eq!(
            jb.counters(),
            JitterCounters {
                target_delay_ms: 20,
                current_delay_ms: 20,
                ..Default::default()
            }
        );
        jb.handle_packet(
            SSRC,
            Seq(5),
            RtpTimestamp(9),
            false,
            &packet(0, 160),
            ms(100),
        );
        let f = jb.poll_frame(ms(120)).unwrap();
        assert_eq!(
            (f.seq, f.media_ts, f.flags),
            (0, RtpTimestamp(9), FrameFlags::NONE)
        );
    }

    #[test]
    fn footprint_of_the_defaults() {
        // The numbers quoted in docs/jitter-buffer.md.
        let nb = jb(8000);
        let wb = jb(16000);
        assert_eq!(nb.cap, 2240);
        assert_eq!(wb.cap, 4480);
        assert!(nb.footprint_bytes() <= 6400, "{}", nb.footprint_bytes());
        assert!(wb.footprint_bytes() <= 11_520, "{}", wb.footprint_bytes());
    }

    #[test]
    fn flags_debug() {
        assert_eq!(format!("{:?}", FrameFlags::NONE), "NONE");
        assert_eq!(
            format!("{:?}", FrameFlags::CONCEALED | FrameFlags::INSERTED),
            "CONCEALED | INSERTED"
        );
        assert!(FrameFlags::from_bits(0x05).contains(FrameFlags::RESYNC));
    }
}
