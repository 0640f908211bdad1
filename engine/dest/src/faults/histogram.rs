//! A latency histogram: exact-to-0.1% percentiles from an HDR histogram,
//! plus log2 bucket counts for plots.
//!
//! Samples are recorded in nanoseconds into an [`hdrhistogram::Histogram`]
//! with 3 significant digits over 1 ns ..= [`MAX_NS`] (one hour), so a
//! percentile is the recorded value at that rank to within 0.1% (values
//! below 2048 ns are exact). Percentiles are reported in microseconds,
//! rounded to the nearest one, and lie between the exact minimum and maximum.
//! A sample above [`MAX_NS`] is recorded as [`MAX_NS`] in the HDR histogram
//! and counted in [`LatencyHistogram::clamped`]; the count, sum (so the mean),
//! minimum, maximum and log2 buckets use the exact value.
//!
//! The log2 buckets are from 1 µs to 1 s: bucket 0 holds everything below
//! 2 µs (also sub-microsecond values), bucket `k` (1..=19) holds
//! `[2^k, 2^(k+1))` µs, and the last bucket holds everything from 2^20 µs
//! (about 1.05 s) up. They are only for plotting the distribution; no
//! reported percentile comes from them.
use std::fmt;

use hdrhistogram::Histogram;
pub use pagehop_wire::stats::{Bucket, LatencySummary};
use serde::Serialize;

/// Number of log2 buckets: 20 steps from 1 µs to about 1 s, plus the overflow.
pub const BUCKETS: usize = 21;

/// Highest latency the HDR histogram tracks: one hour, in nanoseconds.
/// Larger samples are clamped to it for percentiles (and counted).
pub const MAX_NS: u64 = 3_600 * 1_000_000_000;

/// Significant decimal digits the HDR histogram keeps (0.1% precision).
const SIGFIG: u8 = 3;

/// Fault latencies, in nanoseconds as recorded, reported in microseconds.
#[derive(Clone, PartialEq)]
pub struct LatencyHistogram {
    /// All samples in ns, those above `MAX_NS` recorded as `MAX_NS`.
    hdr: Histogram<u64>,
    buckets: [u64; BUCKETS],
    count: u64,
    sum_ns: u64,
    /// Exact extremes; meaningless while `count` is 0.
    min_ns: u64,
    max_ns: u64,
    /// Samples above `MAX_NS`.
    clamped: u64,
}

// `Histogram`'s equality compares its settings and every count, which is an
// equivalence relation.
impl Eq for LatencyHistogram {}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyHistogram {
    // The HDR histogram's own `Debug` prints tens of thousands of counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count)
            .field("sum_ns", &self.sum_ns)
            .field("min_ns", &self.min_ns)
            .field("max_ns", &self.max_ns)
            .field("p50_ns", &self.quantile_ns(0.50))
            .field("p99_ns", &self.quantile_ns(0.99))
            .field("clamped", &self.clamped)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self {
            hdr: Histogram::new_with_bounds(1, MAX_NS, SIGFIG)
                .expect("1 ns ..= 1 h at 3 significant digits is a valid range"),
            buckets: [0; BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: 0,
            max_ns: 0,
            clamped: 0,
        }
    }

    /// Records one latency of `ns` nanoseconds. Never fails: a value above
    /// `MAX_NS` (one hour) is clamped for percentiles and counted in [`Self::clamped`].
    pub fn record(&mut self, ns: u64) {
        if ns > MAX_NS {
            self.clamped += 1;
        }
        // In range after the clamp, so this records exactly that value.
        self.hdr.saturating_record(ns.min(MAX_NS));
        self.buckets[bucket_of(ns)] += 1;
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds all samples of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.count == 0 {
            return;
        }
        // Both have the same fixed range, so every value of `other` fits.
        self.hdr
            .add(&other.hdr)
            .expect("histograms with the same range always add");
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.min_ns = if self.count == 0 {
            other.min_ns
        } else {
            self.min_ns.min(other.min_ns)
        };
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.clamped += other.clamped;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Samples above `MAX_NS` (one hour), counted as one hour in the percentiles.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The raw log2 bucket counts (see the module docs for the bounds).
    pub fn bucket_counts(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// Sum of all samples in milliseconds (time spent waiting, summed over waiters).
    pub fn total_ms(&self) -> f64 {
        self.sum_ns as f64 / 1e6
    }

    /// The exact maximum in microseconds, rounded up. 0 when empty.
    pub fn max_us(&self) -> u64 {
        self.max_ns.div_ceil(1000)
    }

    /// The exact minimum in microseconds, rounded down. 0 when empty.
    pub fn min_us(&self) -> u64 {
        self.min_ns / 1000
    }

    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64 / 1000.0
        }
    }

    /// The `q`-quantile (0.0..=1.0, clamped; NaN counts as 0) in nanoseconds:
    /// the sample at rank `ceil(q * count)` (at least 1) to within 0.1%,
    /// between the exact minimum and maximum; a clamped sample reads as
    /// `MAX_NS` (one hour). 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The HDR value is the highest (or for q = 0 the lowest) value of
        // the sample's sub-bucket; the exact extremes bound it. Clamped
        // samples read as exactly MAX_NS.
        self.hdr
            .value_at_quantile(q)
            .clamp(self.min_ns.min(MAX_NS), self.max_ns.min(MAX_NS))
    }

    /// The `q`-quantile in microseconds, rounded to the nearest one; see
    /// [`Self::quantile_ns`]. 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        round_us(self.quantile_ns(q))
    }

    pub fn p50_us(&self) -> u64 {
        self.quantile_us(0.50)
    }

    pub fn p90_us(&self) -> u64 {
        self.quantile_us(0.90)
    }

    pub fn p99_us(&self) -> u64 {
        self.quantile_us(0.99)
    }

    pub fn p999_us(&self) -> u64 {
        self.quantile_us(0.999)
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            mean_us: self.mean_us(),
            min_us: self.min_us(),
            p50_us: self.p50_us(),
            p90_us: self.p90_us(),
            p99_us: self.p99_us(),
            p999_us: self.p999_us(),
            max_us: self.max_us(),
            clamped: self.clamped,
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &count)| Bucket {
                    lt_us: bucket_bound_us(i),
                    count,
                })
                .collect(),
        }
    }
}

impl Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(serializer)
    }
}

/// `ns` in microseconds, rounded half up.
fn round_us(ns: u64) -> u64 {
    ns / 1000 + u64::from(ns % 1000 >= 500)
}

/// The log2 bucket of a latency of `ns` nanoseconds.
fn bucket_of(ns: u64) -> usize {
    let us = ns / 1000;
    if us < 2 {
        0
    } else {
        (us.ilog2() as usize).min(BUCKETS - 1)
    }
}

/// Exclusive upper bound of bucket `i` in microseconds; `None` for the last.
fn bucket_bound_us(i: usize) -> Option<u64> {
    (i < BUCKETS - 1).then(|| 1u64 << (i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a small deterministic generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Log-uniform over 0 ..= 2^bits - 1, so every magnitude is exercised.
        fn log_uniform(&mut self, bits: u32) -> u64 {
            let magnitude = self.next() % u64::from(bits + 1);
            if magnitude == 0 {
                0
            } else {
                self.next() >> (64 - magnitude)
            }
        }
    }

    /// The sample at rank `ceil(q * n)` (at least 1) of the sorted samples.
    fn reference(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    const QUANTILES: [f64; 12] = [
        0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0,
    ];

    /// Checks every quantile of `h` against the naive reference over `samples`.
    fn check_against_reference(h: &LatencyHistogram, samples: &[u64]) {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        assert_eq!(h.count(), sorted.len() as u64);
        for q in QUANTILES {
            let want = reference(&sorted, q);
            let got = h.quantile_ns(q);
            // At least the sample, above it by less than 0.1% (the
            // sub-bucket width is at most value / 1024).
            assert!(
                got >= want && got - want <= want / 1000,
                "q {q}: {got} ns, the sample is {want} ns"
            );
            // Rounded to µs: within 0.1% plus the rounding.
            let want_us = want as f64 / 1000.0;
            let got_us = h.quantile_us(q);
            assert!(
                (got_us as f64 - want_us).abs() <= want_us / 1000.0 + 0.5,
                "q {q}: {got_us} µs, the sample is {want_us} µs"
            );
        }
        assert_eq!(h.quantile_ns(0.0), sorted[0], "q 0 is the exact minimum");
        assert_eq!(
            h.quantile_ns(1.0),
            sorted[sorted.len() - 1],
            "q 1 is the exact maximum"
        );
        assert_eq!(h.min_us(), sorted[0] / 1000);
        assert_eq!(h.max_us(), sorted[sorted.len() - 1].div_ceil(1000));
        let sum: u64 = sorted.iter().sum();
        let mean_us = sum as f64 / sorted.len() as f64 / 1000.0;
        assert!((h.mean_us() - mean_us).abs() <= mean_us * 1e-12);
        assert!((h.total_ms() - sum as f64 / 1e6).abs() <= sum as f64 * 1e-15);
        assert_eq!(h.bucket_counts().iter().sum::<u64>(), h.count());
    }

    fn histogram_of(samples: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for &ns in samples {
            h.record(ns);
        }
        h
    }

    #[test]
    fn buckets_are_log2_microseconds() {
        let cases = [
            (0, 0),
            (999, 0),
            (1_999, 0),
            (2_000, 1),
            (3_999, 1),
            (4_000, 2),
            (600_000, 9),            // 600 µs: [512, 1024)
            (1_048_575_999, 19),     // just below 2^20 µs
            (1_048_576_000, 20),     // 2^20 µs
            (3_600_000_000_000, 20), // an hour
            (u64::MAX, 20),
        ];
        for (ns, bucket) in cases {
            assert_eq!(bucket_of(ns), bucket, "{ns} ns");
        }
        for ns in [1_500u64, 2_000, 70_000, 900_000_000] {
            let b = bucket_of(ns);
            assert!(
                bucket_bound_us(b).is_none_or(|lt| ns < lt * 1000),
                "{ns} ns below the bound of its bucket {b}"
            );
        }
    }

    #[test]
    fn percentiles_match_sorted_reference() {
        let mut rng = Rng(0x5eed);
        // Log-uniform from 0 ns to about 17 min, several sizes (odd ones too).
        for n in [1usize, 2, 3, 10, 999, 10_000, 100_000] {
            let samples: Vec<u64> = (0..n).map(|_| rng.log_uniform(40)).collect();
            check_against_reference(&histogram_of(&samples), &samples);
        }
        // Uniform over a narrow band (many samples per sub-bucket), and
        // fault-like latencies: mostly tens of µs with a ms tail.
        let band: Vec<u64> = (0..50_000).map(|_| 100_000 + rng.next() % 5_000).collect();
        check_against_reference(&histogram_of(&band), &band);
        let faults: Vec<u64> = (0..50_000)
            .map(|_| match rng.next() % 100 {
                0 => 1_000_000 + rng.next() % 50_000_000,
                _ => 5_000 + rng.next() % 60_000,
            })
            .collect();
        check_against_reference(&histogram_of(&faults), &faults);
    }

    #[test]
    fn known_distribution_and_summary() {
        let mut h = LatencyHistogram::new();
        // 98 samples at 100 µs, 2 at 5 ms.
        for _ in 0..98 {
            h.record(100_000);
        }
        h.record(5_000_000);
        h.record(5_000_000);
        assert_eq!(h.count(), 100);
        assert_eq!(h.p50_us(), 100, "the sample itself, not a bucket bound");
        assert_eq!(h.p90_us(), 100);
        assert_eq!(h.quantile_us(0.98), 100);
        assert_eq!(h.p99_us(), 5_000);
        assert_eq!(h.p999_us(), 5_000);
        assert_eq!((h.min_us(), h.max_us()), (100, 5_000));
        assert!((h.mean_us() - 198.0).abs() < 1e-9, "{}", h.mean_us());

        let json = serde_json::to_value(&h).expect("serialize");
        assert_eq!(json["count"], 100);
        assert_eq!(json["p50_us"], 100);
        assert_eq!(json["p90_us"], 100);
        assert_eq!(json["p99_us"], 5_000);
        assert_eq!(json["p999_us"], 5_000);
        assert_eq!(json["min_us"], 100);
        assert_eq!(json["max_us"], 5_000);
        assert_eq!(json["clamped"], 0);
        assert!(json["mean_us"].is_f64());
        let buckets = json["buckets"].as_array().expect("buckets");
        assert_eq!(buckets.len(), BUCKETS);
        assert_eq!(buckets[6]["lt_us"], 128);
        assert_eq!(buckets[6]["count"], 98, "100 µs lies in [64, 128)");
        assert_eq!(buckets[12]["count"], 2, "5 ms lies in [4096, 8192)");
        assert!(buckets[BUCKETS - 1]["lt_us"].is_null());
        let back: LatencySummary = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, h.summary());
    }

    #[test]
    fn merge_equals_recording_everything() {
        let mut rng = Rng(42);
        let a: Vec<u64> = (0..20_000).map(|_| rng.log_uniform(36)).collect();
        let b: Vec<u64> = (0..7_000).map(|_| rng.log_uniform(30)).collect();
        let mut merged = histogram_of(&a);
        merged.merge(&histogram_of(&b));
        let all: Vec<u64> = a.iter().chain(&b).copied().collect();
        let direct = histogram_of(&all);
        assert_eq!(merged, direct);
        assert_eq!(merged.summary(), direct.summary());
        check_against_reference(&merged, &all);

        // Empty on either side changes nothing.
        let before = merged.clone();
        merged.merge(&LatencyHistogram::new());
        assert_eq!(merged, before);
        let mut empty = LatencyHistogram::new();
        empty.merge(&before);
        assert_eq!(empty, before);
        assert_eq!(
            empty.min_us(),
            before.min_us(),
            "min taken from the other side"
        );

        // Merging a histogram with a smaller minimum lowers it.
        let mut low = histogram_of(&[5]);
        low.merge(&histogram_of(&[7_000]));
        assert_eq!((low.quantile_ns(0.0), low.quantile_ns(1.0)), (5, 7_000));
        assert_ne!(low, histogram_of(&[5]));
    }

    #[test]
    fn empty_is_all_zeros() {
        let h = LatencyHistogram::new();
        assert_eq!(h, LatencyHistogram::default());
        assert_eq!(h.count(), 0);
        for q in QUANTILES.into_iter().chain([-1.0, 2.0, f64::NAN]) {
            assert_eq!((h.quantile_ns(q), h.quantile_us(q)), (0, 0), "q {q}");
        }
        assert_eq!(
            (h.p50_us(), h.p90_us(), h.p99_us(), h.p999_us()),
            (0, 0, 0, 0)
        );
        assert_eq!((h.min_us(), h.max_us(), h.clamped()), (0, 0, 0));
        assert_eq!((h.mean_us(), h.total_ms()), (0.0, 0.0));
        assert!(h.bucket_counts().iter().all(|&n| n == 0));
        let s = h.summary();
        assert_eq!(
            (
                s.count, s.min_us, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.clamped
            ),
            (0, 0, 0, 0, 0, 0, 0, 0)
        );
        assert_eq!(s.mean_us, 0.0);
        assert_eq!(s.buckets.len(), BUCKETS);
        assert!(s.buckets.iter().all(|b| b.count == 0));
        let json = serde_json::to_value(&h).expect("serialize");
        assert_eq!(json["p99_us"], 0);
        // Debug must not dump the HDR counters.
        assert!(format!("{h:?}").len() < 300);
    }

    #[test]
    fn sub_microsecond_values() {
        let samples = [0, 1, 2, 499, 500, 999, 1_000, 1_499, 1_500];
        let h = histogram_of(&samples);
        check_against_reference(&h, &samples);
        // Below 2048 ns every value is exact.
        for (i, &ns) in samples.iter().enumerate() {
            let q = (i + 1) as f64 / samples.len() as f64;
            assert_eq!(h.quantile_ns(q), ns, "q {q}");
        }
        assert_eq!(h.quantile_us(0.0), 0);
        assert_eq!(h.quantile_us(4.0 / 9.0), 0, "499 ns rounds down");
        assert_eq!(h.quantile_us(5.0 / 9.0), 1, "500 ns rounds up");
        assert_eq!(h.quantile_us(8.0 / 9.0), 1, "1499 ns");
        assert_eq!(h.quantile_us(1.0), 2, "1500 ns");
        assert_eq!((h.min_us(), h.max_us()), (0, 2));
        assert_eq!(h.bucket_counts()[0], samples.len() as u64);
        assert_eq!(h.clamped(), 0);
    }

    #[test]
    fn huge_values_are_clamped_and_counted() {
        let mut h = LatencyHistogram::new();
        h.record(10_000);
        h.record(MAX_NS);
        h.record(MAX_NS + 1);
        h.record(2 * MAX_NS);
        h.record(u64::MAX);
        assert_eq!(h.count(), 5);
        assert_eq!(h.clamped(), 3, "MAX_NS itself is in range");
        assert_eq!(
            h.max_us(),
            u64::MAX.div_ceil(1000),
            "the maximum stays exact"
        );
        assert_eq!(h.quantile_us(0.2), 10);
        // Ranks at clamped samples read as the bound, below their maximum.
        assert_eq!(h.quantile_ns(0.4), MAX_NS);
        assert_eq!(h.quantile_ns(1.0), MAX_NS);
        assert_eq!(h.p99_us(), MAX_NS / 1000);
        assert_eq!(h.bucket_counts()[BUCKETS - 1], 4);
        assert_eq!(h.bucket_counts().iter().sum::<u64>(), h.count());
        assert_eq!(h.total_ms(), u64::MAX as f64 / 1e6, "the sum saturates");
        let s = h.summary();
        assert_eq!(
            (s.clamped, s.p999_us, s.max_us),
            (3, MAX_NS / 1000, h.max_us())
        );

        let mut merged = LatencyHistogram::new();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.clamped(), 6);
        assert_eq!(merged.count(), 10);

        // In range up to one hour: exact to 0.1%.
        let hour = histogram_of(&[MAX_NS - 1, 59 * 60 * 1_000_000_000]);
        check_against_reference(&hour, &[MAX_NS - 1, 59 * 60 * 1_000_000_000]);
        assert_eq!(hour.clamped(), 0);
    }

    #[test]
    fn bucket_counts_sum_to_count() {
        let mut rng = Rng(7);
        let mut h = LatencyHistogram::new();
        for i in 0..30_000u64 {
            h.record(rng.log_uniform(44));
            if i % 1_000 == 0 {
                assert_eq!(h.bucket_counts().iter().sum::<u64>(), h.count());
            }
        }
        let other = h.clone();
        h.merge(&other);
        assert_eq!(h.count(), 60_000);
        assert_eq!(h.bucket_counts().iter().sum::<u64>(), h.count());
        assert_eq!(
            h.summary().buckets.iter().map(|b| b.count).sum::<u64>(),
            h.count()
        );
    }
}
