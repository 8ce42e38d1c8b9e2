//! The frame ring: hands played-out [`Frame`]s from a worker thread to the
//! tap thread.
//!
//! One ring per stream, single producer (the worker that owns the stream's
//! jitter buffer), single consumer (the tap). Built on [`rtrb`]: lock-free,
//! wait-free push and pop, head and tail on separate cache lines, every slot
//! allocated once in [`frame_ring`] and never again.
//!
//! # Overflow policy: drop the newest
//!
//! When the tap falls behind and the ring is full, [`FrameProducer::push`]
//! refuses the new frame and counts it. It cannot do the other thing (evict
//! the oldest frame to make room): in an SPSC ring only the consumer may move
//! the head, and a producer that did so would race the consumer reading that
//! very slot. Dropping the newest keeps the ring wait-free and the frames the
//! consumer does see in order, without gaps other than at the tail; the tap
//! sees the loss as a jump in [`Frame::seq`] and in [`FrameProducer::overflows`].
//!
//! No clock, no logging, no allocation after creation; a push or pop is one
//! copy of a frame (~660 bytes) straight between the caller's frame and the
//! ring slot, plus one atomic store.

use std::fmt;
use std::slice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::jitter::Frame;

/// Creates a ring holding up to `capacity` frames.
///
/// Memory: `capacity * size_of::<Frame>()` (660 bytes a frame) plus two
/// cache-padded indices and the shared overflow counter, all allocated here.
/// A capacity of zero is allowed: every push then overflows.
pub fn frame_ring(capacity: usize) -> (FrameProducer, FrameConsumer) {
    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
    let overflows = Arc::new(AtomicU64::new(0));
    (
        FrameProducer {
            inner: producer,
            overflows: Arc::clone(&overflows),
        },
        FrameConsumer {
            inner: consumer,
            overflows,
        },
    )
}

/// The ring was full: the frame was dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("frame ring full: newest frame dropped")
    }
}

impl std::error::Error for Overflow {}

/// The worker's end of a frame ring.
pub struct FrameProducer {
    inner: rtrb::Producer<Frame>,
    overflows: Arc<AtomicU64>,
}

impl FrameProducer {
    /// Copies `frame` into the ring, or drops it and counts an overflow if
    /// the ring is full.
    #[inline]
    pub fn push(&mut self, frame: &Frame) -> Result<(), Overflow> {
        match self.inner.push_entire_slice(slice::from_ref(frame)) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.overflows.fetch_add(1, Ordering::Relaxed);
                Err(Overflow)
            }
        }
    }

    /// Frames dropped because the ring was full, since creation.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Frames in the ring (a lower bound: the consumer may be popping).
    pub fn len(&self) -> usize {
        self.capacity() - self.inner.slots()
    }

    /// Whether the ring holds no frame (racy in the same way as [`Self::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of frames the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.inner.buffer().capacity()
    }

    /// Whether the consumer has been dropped (the tap went away).
    pub fn is_abandoned(&self) -> bool {
        self.inner.is_abandoned()
    }
}

impl fmt::Debug for FrameProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameProducer")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("overflows", &self.overflows())
            .finish()
    }
}

/// The tap's end of a frame ring.
pub struct FrameConsumer {
    inner: rtrb::Consumer<Frame>,
    overflows: Arc<AtomicU64>,
}

impl FrameConsumer {
    /// The oldest frame, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<Frame> {
        self.inner.pop().ok()
    }

    /// Copies the oldest frame into `out` without an intermediate copy;
    /// `false` (and `out` untouched) if the ring is empty.
    #[inline]
    pub fn pop_into(&mut self, out: &mut Frame) -> bool {
        self.inner.pop_entire_slice(slice::from_mut(out)).is_ok()
    }

    /// Frames the producer dropped because the ring was full, since creation.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Frames ready to pop (a lower bound: the producer may be pushing).
    pub fn len(&self) -> usize {
        self.inner.slots()
    }

    /// Whether no frame is ready to pop.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The number of frames the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.inner.buffer().capacity()
    }

    /// Whether the producer has been dropped (the stream went away).
    pub fn is_abandoned(&self) -> bool {
        self.inner.is_abandoned()
    }
}

impl fmt::Debug for FrameConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameConsumer")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("overflows", &self.overflows())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::jitter::FrameFlags;
    use crate::units::{RtpTimestamp, Ssrc};

    fn frame(seq: u64) -> Frame {
        let mut f = Frame {
            ssrc: Ssrc(7),
            seq,
            media_ts: RtpTimestamp(u32::try_from(seq % 1_000_000).unwrap_or(0) * 160),
            flags: FrameFlags::NONE,
            len: 160,
            ..Frame::default()
        };
        // Tag a few samples with the sequence so a torn copy would show.
        let tag = (seq % 30_000) as i16;
        f.samples[0] = tag;
        f.samples[159] = tag;
        f.samples[319] = -tag;
        f
    }

    #[test]
    fn push_pop_in_order() {
        let (mut p, mut c) = frame_ring(4);
        assert!(c.is_empty());
        for s in 0..3 {
            p.push(&frame(s)).unwrap();
        }
        assert_eq!(p.len(), 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c.pop().map(|f| f.seq), Some(0));
        let mut out = Frame::default();
        assert!(c.pop_into(&mut out));
        assert_eq!(out.seq, 1);
        assert_eq!(out.samples[159], 1);
        assert_eq!(c.pop().map(|f| f.seq), Some(2));
        assert!(c.pop().is_none());
        assert!(!c.pop_into(&mut out));
        assert_eq!(out.seq, 1, "pop_into leaves `out` alone when empty");
        assert_eq!(p.overflows(), 0);
    }

    #[test]
    fn overflow_drops_newest_and_counts_exactly() {
        let (mut p, mut c) = frame_ring(3);
        for s in 0..3 {
            assert_eq!(p.push(&frame(s)), Ok(()));
        }
        for s in 3..8 {
            assert_eq!(p.push(&frame(s)), Err(Overflow));
        }
        assert_eq!(p.overflows(), 5);
        assert_eq!(c.overflows(), 5);
        // The oldest survive, in order.
        let seqs: Vec<u64> = std::iter::from_fn(|| c.pop().map(|f| f.seq)).collect();
        assert_eq!(seqs, [0, 1, 2]);
        // Room again: pushes succeed and the count stays.
        assert_eq!(p.push(&frame(8)), Ok(()));
        assert_eq!(c.pop().map(|f| f.seq), Some(8));
        assert_eq!(c.overflows(), 5);
    }

    #[test]
    fn zero_capacity_always_overflows() {
        let (mut p, mut c) = frame_ring(0);
        assert_eq!(p.push(&frame(0)), Err(Overflow));
        assert!(c.pop().is_none());
        assert_eq!(c.overflows(), 1);
    }

    #[test]
    fn abandonment_is_visible() {
        let (p, c) = frame_ring(1);
        assert!(!p.is_abandoned());
        drop(c);
        assert!(p.is_abandoned());
    }

    #[test]
    fn across_threads_every_frame_arrives_in_order() {
        const N: u64 = 100_000;
        let (mut p, mut c) = frame_ring(8);
        let producer = thread::spawn(move || {
            for s in 0..N {
                let f = frame(s);
                // Back-pressure by retrying: this test checks ordering and
                // integrity, not the drop policy.
                while p.push(&f).is_err() {
                    thread::yield_now();
                }
            }
            p.overflows()
        });
        let mut next = 0;
        let mut out = Frame::default();
        while next < N {
            if c.pop_into(&mut out) {
                assert_eq!(out.seq, next);
                let tag = (next % 30_000) as i16;
                assert_eq!(
                    (out.samples[0], out.samples[159], out.samples[319]),
                    (tag, tag, -tag)
                );
                next += 1;
            } else {
                thread::yield_now();
            }
        }
        let failed_pushes = producer.join().unwrap();
        // Every refused push was counted; none of them lost a frame because
        // the producer retried.
        assert_eq!(failed_pushes, c.overflows());
        assert!(c.pop().is_none());
    }

    #[test]
    fn across_threads_overflow_count_is_exact() {
        // The consumer is idle until the producer is done: exactly
        // `pushes - capacity` overflow, and the first `capacity` arrive.
        let (mut p, mut c) = frame_ring(16);
        let producer = thread::spawn(move || {
            let mut refused = 0u64;
            for s in 0..1000 {
                if p.push(&frame(s)).is_err() {
                    refused += 1;
                }
            }
            refused
        });
        let refused = producer.join().unwrap();
        assert_eq!(refused, 1000 - 16);
        assert_eq!(c.overflows(), refused);
        let seqs: Vec<u64> = std::iter::from_fn(|| c.pop().map(|f| f.seq)).collect();
        assert_eq!(seqs, (0..16).collect::<Vec<_>>());
    }
}
