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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
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
}
