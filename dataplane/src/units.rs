//! Newtypes for the units and identifiers of the media core.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

pub use mediagw_shared::units::ClockRate;

/// A point in time on the dataplane's monotonic clock, in nanoseconds since
/// an arbitrary epoch. The media core never reads a clock: drivers pass one
/// of these in (the kernel's receive timestamp for packets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    /// From milliseconds, for tests and simulations.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms * 1_000_000)
    }

    /// From microseconds, for tests and simulations.
    pub const fn from_micros(us: u64) -> Self {
        Self(us * 1_000)
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    #[inline]
    pub const fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Nanos {
    type Output = Self;
    #[inline]
    fn add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Nanos {
    type Output = Self;
    #[inline]
    fn sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

/// RTP synchronisation source identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// A 16-bit RTP sequence number as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seq(pub u16);

/// An extended sequence number: `cycles << 16 | seq` (RFC 3550 A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNo(pub u64);

/// A 32-bit RTP timestamp in media clock units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RtpTimestamp(pub u32);

impl RtpTimestamp {
    /// Signed distance `self - earlier` in clock units, modulo 2^32.
    #[inline]
    pub const fn diff(self, earlier: Self) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// `self + units`, modulo 2^32.
    #[inline]
    pub const fn add(self, units: u32) -> Self {
        Self(self.0.wrapping_add(units))
    }
}

/// An RTP payload type (7 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadType(pub u8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_diff_wraps() {
        assert_eq!(RtpTimestamp(5).diff(RtpTimestamp(u32::MAX - 4)), 10);
        assert_eq!(RtpTimestamp(u32::MAX - 4).diff(RtpTimestamp(5)), -10);
        assert_eq!(RtpTimestamp(u32::MAX).add(2), RtpTimestamp(1));
    }

    #[test]
    fn nanos_arithmetic_saturates() {
        let t = Nanos::from_millis(5);
        assert_eq!((t + Duration::from_millis(1)).0, 6_000_000);
        assert_eq!((t - Duration::from_secs(1)).0, 0);
        assert_eq!(Nanos(1).saturating_since(Nanos(9)), Duration::ZERO);
    }
}
