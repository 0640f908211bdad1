//! The destination's post-copy measurements, as it sends them to the source
//! in a `Stats` frame (JSON) before its final `Done`.
use serde::{Deserialize, Serialize};

/// One bucket as reported: values below `lt_us` (the previous bucket's
/// bound and up). The overflow bucket has `lt_us: None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Exclusive upper bound in microseconds; `None` for the overflow bucket.
    pub lt_us: Option<u64>,
    /// Samples in the bucket.
    pub count: u64,
}

/// What a report prints as `fault_latency_us`.
///
/// Percentiles are the sample at that rank to within 0.1% (an HDR histogram
/// with 3 significant digits), in microseconds rounded to the nearest one.
/// Fields added after the first version default to 0 when absent, so older
/// JSON still reads (its percentiles were log2 bucket upper bounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    /// Exact mean.
    pub mean_us: f64,
    /// Exact minimum, rounded down.
    #[serde(default)]
    pub min_us: u64,
    pub p50_us: u64,
    #[serde(default)]
    pub p90_us: u64,
    pub p99_us: u64,
    #[serde(default)]
    pub p999_us: u64,
    /// Exact maximum, rounded up.
    pub max_us: u64,
    /// Samples above the histogram's range (one hour); percentiles count
    /// them at that bound, `max_us` and `mean_us` at their value.
    #[serde(default)]
    pub clamped: u64,
    /// Log2 buckets for plotting: below 2 µs, then `[2^k, 2^(k+1))` µs up
    /// to 2^20 µs, then the overflow.
    pub buckets: Vec<Bucket>,
}

/// What the destination measured during post-copy; it sends this to the
/// source as a `Stats` frame before its final `Done`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DestStats {
    /// Page-fault messages read from the userfaultfd(s).
    pub faults: u64,
    /// `PageRequest`s sent to the source.
    pub remote_requests: u64,
    /// Pages that arrived on the priority lane (asked for and prefetched).
    pub demand_pages: u64,
    /// Pages that arrived on the data lanes after the switch.
    pub background_pages: u64,
    /// Pages installed from the pre-copy store.
    pub local_pages: u64,
    /// Pages installed during post-copy, by any path.
    pub installed_pages: u64,
    /// Fault to install, every fault that blocked a thread.
    pub fault_latency_us: Option<LatencySummary>,
    /// Request sent to page installed, for pages fetched from the source.
    pub remote_fault_latency_us: Option<LatencySummary>,
    /// Time threads spent blocked on faults, summed over threads.
    pub blocked_ms: f64,
    /// Process running → every page installed.
    pub postcopy_ms: f64,
    pub forks: u64,
    pub remaps: u64,
    pub removes: u64,
    pub unmaps: u64,
    pub reconnects: u32,
    /// Time the process was held stopped while the source was away.
    pub stopped_ms: f64,
    /// Per source address space (a process of a CRIU tree: its pid in the
    /// tree's namespace), counted with the children it forked here.
    #[serde(default)]
    pub per_space: Vec<SpaceFaults>,
}

/// One address space's share of [`DestStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceFaults {
    pub space: u32,
    /// Page-fault messages read.
    pub faults: u64,
    /// Pages its faults asked for (from the store or the source).
    pub requested_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_reads_json_without_the_added_fields() {
        let old = r#"{"count": 10, "mean_us": 50.0, "p50_us": 32, "p99_us": 256, "max_us": 300,
            "buckets": [{"lt_us": 2, "count": 1}, {"lt_us": 4, "count": 6}, {"lt_us": null, "count": 3}]}"#;
        let s: LatencySummary = serde_json::from_str(old).expect("old summary");
        assert_eq!((s.count, s.p50_us, s.p99_us, s.max_us), (10, 32, 256, 300));
        assert_eq!((s.min_us, s.p90_us, s.p999_us, s.clamped), (0, 0, 0, 0));
        assert_eq!(
            s.buckets[2],
            Bucket {
                lt_us: None,
                count: 3
            }
        );

        let json = serde_json::to_value(&s).expect("serialize");
        for field in [
            "count", "p50_us", "p99_us", "max_us", "min_us", "p90_us", "p999_us", "clamped",
        ] {
            assert!(json[field].is_u64(), "{field}: {json}");
        }
        assert!(json["mean_us"].is_f64());
        assert_eq!(
            serde_json::from_value::<LatencySummary>(json).expect("round trip"),
            s
        );

        // As a `Stats` frame from an older destination carries it.
        let mut frame = serde_json::to_value(DestStats::default()).expect("stats");
        frame["fault_latency_us"] = serde_json::from_str(old).expect("json");
        let stats: DestStats = serde_json::from_value(frame).expect("stats");
        assert_eq!(stats.fault_latency_us, Some(s));
    }
}
