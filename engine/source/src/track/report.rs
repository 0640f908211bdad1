//! What a tracking session reports: an [`IntervalReport`] per
//! [`Session::step`](super::Session::step), with its address-space
//! [`Event`]s and per-process figures, and a [`Summary`] at the end of the
//! run.
use std::collections::BTreeMap;

use pagehop_mem::pages::RangeSet;

/// An address-space or process event, as reported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub pid: i32,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Per-process figures of one interval.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcessReport {
    pub pid: i32,
    pub dirty_pages: u64,
    pub hot_pages: u64,
    pub resident_pages: u64,
    pub tracked_pages: u64,
    pub untracked_pages: u64,
}

/// One interval, as `--json` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IntervalReport {
    pub interval: u64,
    /// CLOCK_MONOTONIC when tracking of this interval was armed.
    pub t_start_ns: u64,
    /// CLOCK_MONOTONIC just before collection: every write finished by then is in this report.
    pub t_end_ns: u64,
    pub dirty_pages: u64,
    pub dirty_bytes_per_sec: f64,
    pub hot_pages: u64,
    pub resident_pages: u64,
    pub zapped_pages: u64,
    pub fault_events: u64,
    pub collect_us: u64,
    pub events: Vec<Event>,
    pub processes: Vec<ProcessReport>,
    /// Dirty ranges per pid (not printed; for `--dirty-log` and library users).
    #[serde(skip)]
    pub dirty: BTreeMap<i32, RangeSet>,
    /// Ranges whose contents changed without writes (new or moved mappings,
    /// zapped pages): a migration resends them whole (untouched pages go as
    /// zero holes).
    #[serde(skip)]
    pub changed: BTreeMap<i32, RangeSet>,
}

/// The end of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub backend: &'static str,
    pub pid: i32,
    pub intervals: u64,
    pub interval_ms: u64,
    pub wall_ms: u64,
    pub mean_dirty_bytes_per_sec: f64,
    pub max_dirty_bytes_per_sec: f64,
    pub mean_dirty_pages: f64,
    pub total_dirty_pages: u64,
    pub hot_pages: u64,
    pub resident_pages: u64,
    pub processes_tracked: usize,
    pub events: BTreeMap<&'static str, u64>,
    pub fault_events: u64,
    pub fault_events_dropped: u64,
    /// CPU time pagehop itself used (user + system) while tracking.
    pub cpu_ms: f64,
    pub cpu_ns_per_dirty_page: f64,
    /// The pages dirty in the most intervals (a write-heat ranking).
    pub hottest_pages: Vec<HotPage>,
    pub end_reason: String,
}

/// One entry of the write-heat ranking.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HotPage {
    pub pid: i32,
    /// Page address, hex.
    pub addr: String,
    pub dirty_intervals: u32,
}
