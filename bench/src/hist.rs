//! Latency recording: an HdrHistogram of nanoseconds with 3 significant
//! figures, and the percentile summary every report prints.
//!
//! Recording never fails and never allocates: values outside the tracked
//! range (1 ns to one hour) are clamped into it, so a stray multi-second
//! stall shows up as a huge `max` instead of an error in the middle of a
//! timed loop.

use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest value tracked: one hour in nanoseconds.
const MAX_TRACKED_NS: u64 = 3_600 * 1_000_000_000;

/// A histogram of latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

/// Percentiles of a [`LatencyHistogram`], in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Number of recorded values.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest value.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram tracking 1 ns ..= 1 h with 3 significant figures.
    pub fn new() -> Self {
        let inner = Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3)
            .expect("constant bounds 1..1h with 3 significant figures are valid");
        Self { inner }
    }

    /// Records one latency in nanoseconds (clamped to the tracked range).
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.inner.saturating_record(ns.max(1));
    }

    /// Records `count` occurrences of one latency in nanoseconds.
    #[inline]
    pub fn record_ns_n(&mut self, ns: u64, count: u64) {
        self.inner.saturating_record_n(ns.max(1), count);
    }

    /// Records the `count` latencies `lowest_ns + i × step_ns` (i in
    /// 0..count, each rounded to a nanosecond) in time linear in the
    /// buckets they span, not in `count`: a run of values that share a
    /// bucket is one `record_n`. For requests whose intended times are
    /// evenly spaced (a fixed schedule that was never sent).
    pub fn record_progression(&mut self, lowest_ns: f64, step_ns: f64, count: u64) {
        let mut i = 0;
        while i < count {
            // `as` saturates at u64::MAX; recording clamps what is out of range.
            let value = (lowest_ns + i as f64 * step_ns).round().max(1.0) as u64;
            // Values up to `top` share `value`'s bucket: value_j rounds to
            // at most `top` while lowest + j × step < top + 0.5.
            let top = self.inner.highest_equivalent(value);
            let end = if step_ns <= 0.0 || top == u64::MAX {
                count
            } else {
                let bound = ((top as f64 + 0.5 - lowest_ns) / step_ns).ceil();
                (bound.max(0.0) as u64).clamp(i + 1, count)
            };
            self.record_ns_n(value, end - i);
            i = end;
        }
    }

    /// Records one latency.
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every value of `other` to `self`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both histograms have identical, fixed bounds, so adding can't fail.
        self.inner
            .add(&other.inner)
            .expect("histograms with identical bounds always add");
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value at quantile `q` (0.0..=1.0), in nanoseconds; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.is_empty() {
            return 0;
        }
        self.inner.value_at_quantile(q)
    }

    /// Largest recorded value in nanoseconds; 0 when empty.
    pub fn max_ns(&self) -> u64 {
        self.inner.max()
    }

    /// The summary every report prints; all zero when empty.
    pub fn summary(&self) -> LatencySummary {
        self.summary_scaled(1.0)
    }

    /// Like [`summary`](Self::summary) with every value divided by
    /// `divisor`: for a histogram of batch durations, the per-item cost.
    /// Values are rounded to 0.1 ns (4 decimals of a µs).
    pub fn summary_scaled(&self, divisor: f64) -> LatencySummary {
        if self.is_empty() {
            return LatencySummary::default();
        }
        let round = |us: f64| (us * 1e4).round() / 1e4;
        let us = |ns: u64| round(ns as f64 / 1_000.0 / divisor);
        LatencySummary {
            samples: self.len(),
            p50_us: us(self.quantile_ns(0.50)),
            p90_us: us(self.quantile_ns(0.90)),
            p99_us: us(self.quantile_ns(0.99)),
            p999_us: us(self.quantile_ns(0.999)),
            p9999_us: us(self.quantile_ns(0.9999)),
            max_us: us(self.max_ns()),
            mean_us: round(self.inner.mean() / 1_000.0 / divisor),
        }
    }

    /// Writes the percentile spectrum in HdrHistogram's `.hgrm` text format
    /// (values in microseconds), as HdrHistogram's
    /// `outputPercentileDistribution` and wrk2's `hdr_percentiles_print`
    /// write it: `TotalCount` is cumulative (the last row holds every
    /// value), and the footer gives mean, deviation, max, total count and
    /// the bucket layout. The usual plotting tools read it.
    pub fn write_hgrm<W: Write>(&self, out: &mut W) -> io::Result<()> {
        writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )?;
        if !self.is_empty() {
            let mut cumulative = 0u64;
            for v in self.inner.iter_quantiles(5) {
                cumulative += v.count_since_last_iteration();
                let q = v.quantile_iterated_to();
                let inverse = if q < 1.0 {
                    format!("{:>14.2}", 1.0 / (1.0 - q))
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "{:>12.3} {:>14.12} {:>10} {}",
                    v.value_iterated_to() as f64 / 1_000.0,
                    q,
                    cumulative,
                    inverse
                )?;
            }
        }
        let s = self.summary();
        writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            s.mean_us,
            self.inner.stdev() / 1_000.0
        )?;
        writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            s.max_us, s.samples
        )?;
        writeln!(
            out,
            "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
            self.inner.buckets(),
            sub_buckets(self.inner.sigfig())
        )
    }
}

/// Sub-buckets per bucket of a histogram keeping `sigfig` significant
/// digits: the smallest power of two that holds `2 × 10^sigfig` (2048
/// for 3), as HdrHistogram lays them out. The crate does not expose it.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error allowed by 3 significant figures.
    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 1e-3 + 1e-9
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = LatencyHistogram::new();
        // 1..=10_000 µs, once each.
        for us in 1..=10_000u64 {
            h.record_ns(us * 1_000);
        }
        let s = h.summary();
        assert_eq!(s.samples, 10_000);
        assert!(close(s.p50_us, 5_000.0), "{s:?}");
        assert!(close(s.p90_us, 9_000.0), "{s:?}");
        assert!(close(s.p99_us, 9_900.0), "{s:?}");
        assert!(close(s.p999_us, 9_990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
        assert!(close(s.mean_us, 5_000.5), "{s:?}");
    }

    #[test]
    fn percentiles_of_a_two_point_distribution() {
        let mut h = LatencyHistogram::new();
        h.record_ns_n(1_000, 990);
        h.record_ns_n(50_000, 10);
        let s = h.summary();
        assert!(close(s.p50_us, 1.0) && close(s.p90_us, 1.0), "{s:?}");
        assert!(close(s.p99_us, 1.0), "{s:?}");
        assert!(close(s.p999_us, 50.0) && close(s.max_us, 50.0), "{s:?}");
    }

    #[test]
    fn empty_and_out_of_range_values() {
        let mut h = LatencyHistogram::new();
        assert!(h.is_empty());
        assert_eq!(h.summary(), LatencySummary::default());
        h.record_ns(0); // clamped up to 1 ns
        h.record_ns(u64::MAX); // clamped down to one hour
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.len(), 3);
        assert_eq!(h.quantile_ns(0.0), 1);
        assert!(h.max_ns() >= MAX_TRACKED_NS && h.max_ns() < MAX_TRACKED_NS * 2);
    }

    #[test]
    fn merge_and_scaled_summary() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30));
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert!(close(a.summary().max_us, 30.0));
        // A batch of 10 items taking 30 µs costs 3 µs per item.
        assert!(close(a.summary_scaled(10.0).max_us, 3.0));
        // Rounded to 0.1 ns.
        let mut b = LatencyHistogram::new();
        b.record_ns(151);
        assert_eq!(b.summary_scaled(4096.0).max_us, 0.0);
        assert_eq!(b.summary_scaled(4.0).max_us, 0.0378);
    }

    #[test]
    fn hgrm_output_has_the_spectrum_and_totals() {
        let mut h = LatencyHistogram::new();
        for ns in [1_000, 2_000, 3_000, 4_000] {
            h.record_ns(ns);
        }
        let mut out = Vec::new();
        h.write_hgrm(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value"), "{text}");
        assert!(text.contains("Total count    =            4"), "{text}");
        // The spectrum ends at the largest value (to 3 significant figures).
        let last = text
            .lines()
            .rfind(|l| l.contains(" 1.000000000000 "))
            .unwrap();
        let value: f64 = last.split_whitespace().next().unwrap().parse().unwrap();
        assert!((value - 4.0).abs() < 0.005, "{text}");
    }

    #[test]
    fn a_progression_is_recorded_as_one_value_at_a_time_would_be() {
        for (lowest, step, count) in [
            (0.0, 1.0, 10_000u64),
            (1_000.0, 333.3, 50_000),
            (5.0e6, 1.0e3, 200_000),
            (42.0, 0.0, 17),
            (1.0, 7.0e9, 1_000), // past the tracked hour: clamped
        ] {
            let mut bulk = LatencyHistogram::new();
            bulk.record_progression(lowest, step, count);
            let mut one_by_one = LatencyHistogram::new();
            for i in 0..count {
                one_by_one.record_ns((lowest + i as f64 * step).round().max(0.0) as u64);
            }
            assert_eq!(bulk.len(), count);
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let (a, b) = (bulk.quantile_ns(q), one_by_one.quantile_ns(q));
                assert!(
                    a.abs_diff(b) <= b / 500 + 1,
                    "{lowest} {step} {count} q{q}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn hgrm_total_count_is_cumulative_and_the_footer_is_complete() {
        let mut h = LatencyHistogram::new();
        for us in 1..=1_000u64 {
            h.record_ns_n(us * 1_000, us % 7 + 1);
        }
        let mut out = Vec::new();
        h.write_hgrm(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let counts: Vec<u64> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(counts.len() > 20, "{text}");
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{text}");
        assert_eq!(*counts.last().unwrap(), h.len(), "{text}");
        let footer: Vec<&str> = text.lines().filter(|l| l.starts_with("#[")).collect();
        assert_eq!(footer.len(), 3, "{text}");
        assert!(footer[2].starts_with("#[Buckets = "), "{text}");
        assert!(
            footer[2].ends_with("SubBuckets     =         2048]"),
            "{text}"
        );
        assert_eq!(sub_buckets(3), 2048);
        assert_eq!(sub_buckets(2), 256);
    }
}
