//! Dirty-page tracking backends behind one trait, one tracker per process.
//!
//! | backend        | how writes are seen                                   | needs                         |
//! |----------------|-------------------------------------------------------|-------------------------------|
//! | `ebpf`         | fault events from the eBPF tracepoint programs tell   | eBPF, userfaultfd WP_ASYNC,   |
//! |                | which pages to re-arm; PAGEMAP_SCAN re-arms them      | PAGEMAP_SCAN (Linux 6.7+)     |
//! | `pagemap-scan` | PAGEMAP_SCAN with WP matching over every tracked page | userfaultfd WP_ASYNC, 6.7+    |
//! | `soft-dirty`   | soft-dirty bits in /proc/PID/pagemap, cleared via     | CONFIG_MEM_SOFT_DIRTY         |
//! |                | /proc/PID/clear_refs                                  |                               |
//! | `none`         | every resident writable page counts as dirty          | nothing                       |
//!
//! Every backend reports, per interval, a superset of the pages written in
//! it (zero false negatives): writable mappings that cannot be tracked
//! precisely (private file mappings such as a binary's `.data`) count as
//! dirty whenever they are resident.
mod none;
mod soft_dirty;
mod uffd_wp;

use crate::pagemap::PagemapError;
use crate::wp::WpError;
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::{Range, RangeSet};

pub use none::NoneTracker;
pub use soft_dirty::{SoftDirtyTracker, kernel_has_soft_dirty};
pub use uffd_wp::{ScanPlan, UffdWpTracker, plan_scan};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// eBPF write-fault events guide an atomic PAGEMAP_SCAN re-arm (default).
    Ebpf,
    /// PAGEMAP_SCAN with write-protect matching over all tracked memory.
    PagemapScan,
    /// The kernel's soft-dirty bits (only where CONFIG_MEM_SOFT_DIRTY is on).
    SoftDirty,
    /// No tracking: every resident page is dirty in every interval.
    None,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::PagemapScan => "pagemap-scan",
            Backend::SoftDirty => "soft-dirty",
            Backend::None => "none",
        }
    }

    /// Whether the backend consumes the eBPF write-fault stream.
    pub fn uses_fault_events(self) -> bool {
        self == Backend::Ebpf
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Wp(#[from] WpError),
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    #[error(
        "the soft-dirty backend needs CONFIG_MEM_SOFT_DIRTY, which this kernel ({kernel}) does not have; use --backend ebpf or pagemap-scan"
    )]
    NoSoftDirty { kernel: String },
    #[error("writing /proc/{pid}/clear_refs")]
    ClearRefs {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// What one collection found.
#[derive(Debug, Default)]
pub struct Collected {
    /// Pages written since the previous collection (a superset).
    pub dirty: RangeSet,
    /// Bytes of address space the backend had to inspect to find them.
    pub scanned_bytes: u64,
}

/// One process's dirty-page tracker.
pub trait DirtyTracker: Send {
    fn backend(&self) -> Backend;

    fn pid(&self) -> i32;

    /// Brings tracking in line with `layout`. `replaced` are ranges whose
    /// mappings were created, moved or unmapped since the last sync. Returns
    /// the pages that became tracked and were already resident: they count
    /// as dirty once, since their writes happened before tracking covered them.
    fn sync_layout(
        &mut self,
        layout: &Layout,
        replaced: &[Range],
    ) -> Result<RangeSet, TrackerError>;

    /// A write fault at `addr` reported by the eBPF programs.
    fn note_fault(&mut self, _addr: u64) {}

    /// Fault events were lost (ring buffer full): the next collection must not
    /// rely on them.
    fn note_lost_faults(&mut self) {}

    /// Pages written since the previous call; tracking of them is re-armed.
    fn collect(&mut self) -> Result<Collected, TrackerError>;

    /// Ranges tracked page by page.
    fn tracked(&self) -> RangeSet;

    /// Writable ranges that cannot be tracked and count as dirty when resident.
    fn untracked(&self) -> RangeSet;

    /// Stops tracking and leaves the process as it was.
    fn release(self: Box<Self>) -> Result<(), TrackerError>;
}

/// Starts tracking `pid` with `backend`; `layout` is its current address space.
pub fn open(
    backend: Backend,
    pid: i32,
    layout: &Layout,
) -> Result<(Box<dyn DirtyTracker>, RangeSet), TrackerError> {
    let mut tracker: Box<dyn DirtyTracker> = match backend {
        Backend::Ebpf | Backend::PagemapScan => Box::new(UffdWpTracker::attach(pid, backend)?),
        Backend::SoftDirty => Box::new(SoftDirtyTracker::open(pid)?),
        Backend::None => Box::new(NoneTracker::open(pid)?),
    };
    let initial = tracker.sync_layout(layout, &[])?;
    Ok((tracker, initial))
}
