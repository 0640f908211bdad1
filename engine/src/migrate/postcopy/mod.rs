//! Post-copy: the destination runs before all of its memory has arrived.
//!
//! ```text
//! SOURCE (frozen)                                   DESTINATION (running)
//! serve: push unsent pages ══ data lanes ═══════>  receivers ─> store ─> arrivals
//!        (after-fault hints, working set, rest)                            │
//! demand server <══ PageRequest ══ priority lane ══ fetch: fault loop ─────┤
//!               ══ Pages (asked + prefetch) ════>  receivers ─> store ─────┘
//! ```
//!
//! - [`serve`] (source): the demand server thread and the background push,
//!   and reconnecting after a break.
//! - [`fetch`] (destination): drives the [`crate::faults::FaultLoop`]:
//!   missing pages that arrived (or came with pre-copy) are installed from
//!   the store; the others are requested on the priority lane; everything
//!   else that arrives is installed in the background. A break stops the
//!   process (SIGSTOP) until the source reconnects.
//! - [`working_set`]: `--record-working-set` / `--prefetch-from` files.
//!
//! Which pages the destination must fetch is explicit: the source sends
//! them as `Pending` ranges before the post-copy `Switchover`. A page not in
//! that set is either in the store (sent in a pre-copy round and not written
//! since) or was never resident on the source (a zero page).
pub mod fetch;
pub mod serve;
pub mod working_set;

use crate::faults::LatencySummary;

/// What the destination measured during post-copy; it sends this to the
/// source as a `Stats` frame before its final `Done`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
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
