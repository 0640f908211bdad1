//! A latency histogram with log2 buckets from 1 µs to 1 s.
//!
//! Bucket 0 holds everything below 2 µs (also sub-microsecond values),
//! bucket `k` (1..=19) holds `[2^k, 2^(k+1))` µs, and the last bucket holds
//! everything from 2^20 µs (about 1.05 s) up. Percentiles are the upper
//! bound of the bucket that holds the rank, capped at the exact maximum, so
//! they over-estimate by less than a factor of two.
pub use pagehop_wire::stats::{Bucket, LatencySummary};
use serde::Serialize;

/// Number of buckets: 20 log2 steps from 1 µs to about 1 s, plus the overflow.
pub const BUCKETS: usize = 21;

/// Fault latencies, in nanoseconds as recorded, reported in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.buckets[bucket_of(ns)] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds all samples of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The raw bucket counts (see the module docs for the bounds).
    pub fn bucket_counts(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// Sum of all samples in milliseconds (time spent waiting, summed over waiters).
    pub fn total_ms(&self) -> f64 {
        self.sum_ns as f64 / 1e6
    }

    pub fn max_us(&self) -> u64 {
        self.max_ns.div_ceil(1000)
    }

    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64 / 1000.0
        }
    }

    /// The `q`-quantile (0.0..=1.0) in microseconds: the upper bound of the
    /// bucket holding that rank, at most the maximum. 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_bound_us(i).unwrap_or(u64::MAX).min(self.max_us());
            }
        }
        self.max_us()
    }

    pub fn p50_us(&self) -> u64 {
        self.quantile_us(0.50)
    }

    pub fn p99_us(&self) -> u64 {
        self.quantile_us(0.99)
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            mean_us: self.mean_us(),
            p50_us: self.p50_us(),
            p99_us: self.p99_us(),
            max_us: self.max_us(),
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

/// The bucket of a latency of `ns` nanoseconds.
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
    fn percentiles_and_summary() {
        let mut h = LatencyHistogram::new();
        assert_eq!((h.p50_us(), h.p99_us(), h.max_us()), (0, 0, 0));
        // 98 samples at 100 µs, 2 at 5 ms.
        for _ in 0..98 {
            h.record(100_000);
        }
        h.record(5_000_000);
        h.record(5_000_000);
        assert_eq!(h.count(), 100);
        assert_eq!(h.p50_us(), 128, "100 µs lies in [64, 128)");
        assert_eq!(h.p99_us(), 5_000, "capped at the maximum");
        assert_eq!(h.max_us(), 5_000);
        assert!((h.mean_us() - 198.0).abs() < 1e-9, "{}", h.mean_us());

        let mut other = LatencyHistogram::new();
        other.record(2_000_000_000);
        h.merge(&other);
        assert_eq!(h.count(), 101);
        assert_eq!(h.bucket_counts()[BUCKETS - 1], 1);

        let json = serde_json::to_value(&h).expect("serialize");
        assert_eq!(json["count"], 101);
        assert_eq!(json["p50_us"], 128);
        assert_eq!(json["max_us"], 2_000_000);
        let buckets = json["buckets"].as_array().expect("buckets");
        assert_eq!(buckets.len(), BUCKETS);
        assert_eq!(buckets[6]["lt_us"], 128);
        assert_eq!(buckets[6]["count"], 98);
        assert!(buckets[BUCKETS - 1]["lt_us"].is_null());
    }
}
