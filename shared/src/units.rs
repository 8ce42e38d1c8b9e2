//! Units shared by both processes.

use std::fmt;

/// An RTP media clock rate in Hz (8000 for G.711, 16000 for slin16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockRate(pub u32);

impl ClockRate {
    /// Narrowband telephony: G.711 and slin.
    pub const NARROWBAND: Self = Self(8_000);
    /// Wideband: slin16, G.722's RTP clock notwithstanding.
    pub const WIDEBAND: Self = Self(16_000);

    /// Samples (RTP timestamp units) in `ms` milliseconds.
    #[inline]
    pub const fn samples_in_ms(self, ms: u32) -> u32 {
        self.0 / 1000 * ms
    }

    /// Nanoseconds per RTP timestamp unit, as a float (for jitter in ms).
    #[inline]
    pub fn units_to_ms(self, units: f64) -> f64 {
        units * 1000.0 / f64::from(self.0)
    }
}

impl fmt::Display for ClockRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}
