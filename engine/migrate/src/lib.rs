//! Live migration between hosts: `pagehop send` ([`source`]) and
//! `pagehop recv` ([`dest`]) over the wire protocol of [`crate::wire`].
//!
//! Connections: one control connection (layout, round ends and their
//! acknowledgements, switchover, verification) and `--streams` data
//! connections carrying only `Pages` frames, sent through io_uring
//! ([`stream`]). Every connection is authenticated ([`conn`]).
pub mod recv;
pub mod send;
pub mod serve;
pub mod working_set;

pub use pagehop_dest as dest;
pub use pagehop_mem as mem;
pub use pagehop_source as source;
pub use pagehop_sys as sys;
pub use pagehop_wire as wire;

use std::net::SocketAddr;

pub use pagehop_source::stream::{StreamError, ZeroCopy};
pub use pagehop_wire::conn::ConnError;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Target(#[from] pagehop_source::target::TargetError),
    #[error(transparent)]
    Track(#[from] pagehop_source::track::TrackError),
    #[error(transparent)]
    Layout(#[from] pagehop_mem::layout::LayoutError),
    #[error(transparent)]
    Pagemap(#[from] pagehop_source::pagemap::PagemapError),
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Conn(ConnError),
    #[error(transparent)]
    Stream(StreamError),
    #[error("freezing the source")]
    Freeze(#[from] pagehop_source::freeze::FreezeError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// One round, as the report lists it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub ms: f64,
    /// Pages the tracker saw written while this round was sent.
    pub dirty_pages_after: u64,
    pub dirty_bytes_per_sec: f64,
    pub bandwidth_bytes_per_sec: f64,
    /// Hybrid: write-hot pages left out of this round for post-copy.
    pub deferred_pages: u64,
}

/// The source's report of a migration (`pagehop send --json`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub total_ms: f64,
    pub setup_ms: f64,
    /// Source frozen → destination running.
    pub downtime_ms: f64,
    pub rounds: u32,
    pub pages_sent: u64,
    pub zero_pages: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub compression_ratio: f64,
    pub throughput_bytes_per_sec: f64,
    pub final_round_pages: u64,
    pub installed_pages: u64,
    pub switch_reason: String,
    pub verify: String,
    pub send_mode: &'static str,
    pub streams: usize,
    pub page_size: u64,
    /// CPU time pagehop itself used (user + system).
    pub engine_cpu_ms: f64,
    /// Post-copy: destination running → every page installed.
    pub postcopy_ms: f64,
    /// Post-copy: page requests answered, and the pages in them (asked for
    /// plus `prefetched_pages`).
    pub demand_requests: u64,
    pub demand_pages: u64,
    pub prefetched_pages: u64,
    /// Post-copy: page data and frame bytes of the answers on the priority
    /// lane (included in `bytes_raw` and `bytes_wire`).
    pub demand_bytes_raw: u64,
    pub demand_bytes_wire: u64,
    /// Post-copy: pages pushed in the background.
    pub background_pages: u64,
    /// Post-copy: page faults at the destination, fault-to-install latency
    /// of all of them, and request-to-install latency of remote ones.
    pub faults: u64,
    pub fault_latency_us: Option<pagehop_dest::faults::LatencySummary>,
    pub remote_fault_latency_us: Option<pagehop_dest::faults::LatencySummary>,
    /// Post-copy: time the destination's threads spent blocked on faults.
    pub blocked_ms: f64,
    pub reconnects: u32,
    pub per_round: Vec<RoundReport>,
}

/// Receives progress as the migration goes (a terminal display, or nothing).
pub trait Progress {
    fn round(&mut self, round: &RoundReport);
}

/// No progress display.
pub struct Quiet;

impl Progress for Quiet {
    fn round(&mut self, _: &RoundReport) {}
}

impl From<pagehop_dest::fetch::FetchError> for MigrateError {
    fn from(e: pagehop_dest::fetch::FetchError) -> Self {
        MigrateError::Protocol(pagehop_mem::error_chain(&e))
    }
}
