//! Latency percentiles and rates as the benchmarks report them: milliseconds from an HDR histogram of
//! microseconds ([`LatencyHistogram`]).
//!
//! Why it exists: `bench actors` and `bench http` both report mean, p50, p90, p99 and max of
//! what they timed; one type keeps the two reports' numbers computed the same way.

use crate::metrics::LatencyHistogram;

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds, in milliseconds (all 0 when empty).
    pub fn of(h: &LatencyHistogram) -> Self {
        let s = h.summary();
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean: h.mean_us() / 1000.0,
            p50: ms(s.p50),
            p90: ms(s.p90),
            p99: ms(s.p99),
            max: ms(s.max),
        }
    }
}

/// `count / wall_s`, or 0 when no time passed (a run that did nothing).
pub fn per_sec(count: u64, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        count as f64 / wall_s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_of_a_histogram_of_microseconds() {
        let mut h = LatencyHistogram::new();
        // Below 2,048 µs the histogram keeps every value exactly.
        for us in [100, 200, 300, 400] {
            h.record(us);
        }
        let l = Latency::of(&h);
        assert_eq!(
            (l.mean, l.p50, l.p90, l.p99, l.max),
            (0.25, 0.2, 0.4, 0.4, 0.4)
        );
        assert_eq!(Latency::of(&LatencyHistogram::new()), Latency::default());
    }
}
