//! Latency figures: an hdrhistogram summary for the receivers that run in
//! the harness, and the same summary computed from a Prometheus histogram
//! (bucket counts of two scrapes) for the daemon.
//!
//! Every latency here is measured from the kernel's receive timestamp of a
//! datagram (SO_TIMESTAMPNS) to the moment the receiver had finished the
//! batch that held it, on CLOCK_MONOTONIC.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of one latency distribution, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Observations.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest seen (for bucketed sources: the upper bound of the highest
    /// non-empty bucket).
    pub max_us: f64,
    /// How finely the figures resolve: 0.1% of the value for hdrhistogram,
    /// the bucket width for a Prometheus histogram (see PERFORMANCE.md).
    pub source: &'static str,
}

/// A new latency histogram, 1 ns to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 <= 1, 60e9 >= 2, sigfig 3 <= 5.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// The percentiles of a histogram of nanoseconds.
pub fn summarize(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency {
            source: "hdrhistogram",
            ..Latency::default()
        };
    }
    let us = |v: u64| v as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        source: "hdrhistogram",
    }
}

/// Percentiles from cumulative Prometheus buckets `(upper bound in seconds,
/// cumulative count)`, `+Inf` last as `f64::INFINITY`, linearly interpolated
/// inside a bucket (the Prometheus `histogram_quantile` rule).
pub fn from_buckets(buckets: &[(f64, u64)]) -> Latency {
    let total = buckets.last().map_or(0, |b| b.1);
    if total == 0 {
        return Latency {
            source: "prometheus buckets",
            ..Latency::default()
        };
    }
    let quantile = |q: f64| -> f64 {
        let rank = q * total as f64;
        let mut prev = (0.0f64, 0u64);
        for &(le, cum) in buckets {
            if cum as f64 >= rank {
                if le.is_infinite() {
                    // Above the last finite bound: all we know is "more".
                    return prev.0 * 1e6;
                }
                let in_bucket = (cum - prev.1) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return (prev.0 + (le - prev.0) * frac) * 1e6;
            }
            prev = (le, cum);
        }
        prev.0 * 1e6
    };
    let max = buckets
        .iter()
        .scan(0u64, |last, &(le, cum)| {
            let grew = cum > *last;
            *last = cum;
            Some((le, grew))
        })
        .filter(|(_, grew)| *grew)
        .map(|(le, _)| le)
        .last()
        .unwrap_or(0.0);
    Latency {
        count: total,
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: max * 1e6,
        source: "prometheus buckets",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdr_percentiles() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = summarize(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 2.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn bucket_percentiles_interpolate() {
        // 100 observations: 50 in (0, 10 µs], 49 in (10, 20 µs], 1 in
        // (20 µs, 1 ms].
        let b = [(10e-6, 50), (20e-6, 99), (1e-3, 100), (f64::INFINITY, 100)];
        let l = from_buckets(&b);
        assert_eq!(l.count, 100);
        assert!((l.p50_us - 10.0).abs() < 1e-9, "{l:?}");
        assert!((l.p99_us - 20.0).abs() < 1e-9, "{l:?}");
        assert!(l.p999_us > 20.0 && l.p999_us < 1000.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1e-9, "{l:?}");
        assert_eq!(from_buckets(&[(f64::INFINITY, 0)]).count, 0);
    }
}
