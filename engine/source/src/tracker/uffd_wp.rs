//! The `ebpf` and `pagemap-scan` backends: both keep the process's writable
//! memory write-protected through a userfaultfd in async mode, and both
//! re-arm with PAGEMAP_SCAN (`PM_SCAN_WP_MATCHING`), which reports the pages
//! written since the last re-arm and protects them again in one atomic step.
//!
//! They differ in where they look:
//! - `pagemap-scan` scans every tracked page each interval (cost grows with
//!   the process's size);
//! - `ebpf` scans only the pages the eBPF fault programs saw written (cost
//!   grows with the dirty set), plus last interval's "pending" pages, unless
//!   they are so scattered that one full scan is cheaper (a cost model
//!   decides: every re-protecting call flushes the TLB).
//!
//! Why not re-arm the faulted pages with UFFDIO_WRITEPROTECT directly: the
//! tracepoint fires at fault entry, before the kernel un-protects the page.
//! If pagehop re-protected the page in between, the in-flight fault would
//! un-protect it afterwards and the next interval's writes would go unseen.
//! PAGEMAP_SCAN only re-protects pages that are already un-protected; a
//! faulted page that is still protected is carried as pending into the next
//! interval, reported dirty in both, and scanned again then.
use std::mem;

use super::{Backend, Collected, DirtyTracker, TrackerError};
use crate::pagemap::Pagemap;
use crate::wp::WpSession;
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::{Range, RangeSet};

/// Clean gaps up to this many pages are scanned rather than split into
/// separate PAGEMAP_SCAN calls: walking a clean page costs about 15 ns, a
/// call that re-protects pages several microseconds (it flushes the TLB).
const COALESCE_GAP_PAGES: u64 = 256;

/// Cost model for choosing between scanning the faulted ranges and one scan
/// of everything (measured here with `benches/tracking_overhead.rs`: a 1 GiB
/// full scan takes about 1.1 ms; a call that re-protects takes about 4 µs).
const SCAN_CALL_NS: u64 = 4_000;
const SCAN_PAGE_NS: u64 = 5;

fn scan_cost(ranges: &RangeSet, page_size: u64) -> u64 {
    ranges.ranges().len() as u64 * SCAN_CALL_NS + ranges.pages(page_size) * SCAN_PAGE_NS
}

/// What one collection scans, from the interval's write faults.
pub struct ScanPlan {
    /// The faulted pages, as ranges, within the registered ranges.
    pub faulted: RangeSet,
    /// The ranges to scan for written pages.
    pub candidates: RangeSet,
}

/// The ranges one collection scans: the faulted pages plus last interval's
/// `pending` ones, clipped to `registered`, with clean gaps of up to 256
/// pages merged; or all of `registered` when the cost
/// model says one scan of everything is cheaper. `faults` (page addresses)
/// is sorted in place.
pub fn plan_scan(
    faults: &mut [u64],
    pending: &RangeSet,
    registered: &RangeSet,
    page_size: u64,
) -> ScanPlan {
    let faulted = RangeSet::from_pages(faults, page_size).intersection(registered);
    let mut c = faulted.clone();
    c.union(pending);
    let c =
        RangeSet::from_ranges(c.coalesced(COALESCE_GAP_PAGES * page_size)).intersection(registered);
    let candidates = if scan_cost(&c, page_size) >= scan_cost(registered, page_size) {
        registered.clone()
    } else {
        c
    };
    ScanPlan {
        faulted,
        candidates,
    }
}

pub struct UffdWpTracker {
    backend: Backend,
    wp: WpSession,
    pagemap: Pagemap,
    page_size: u64,
    /// Page addresses from fault events since the last collection.
    faults: Vec<u64>,
    /// Faulted pages that were still protected at the last scan.
    pending: RangeSet,
    /// Set when events were lost: scan everything once.
    full_scan: bool,
    scratch: Vec<Range>,
}

impl UffdWpTracker {
    pub fn attach(pid: i32, backend: Backend) -> Result<Self, TrackerError> {
        debug_assert!(matches!(backend, Backend::Ebpf | Backend::PagemapScan));
        let pagemap = Pagemap::open(pid)?;
        let wp = WpSession::attach(pid)?;
        Ok(Self {
            backend,
            wp,
            pagemap,
            page_size: pagehop_sys::page_size() as u64,
            faults: Vec::new(),
            pending: RangeSet::new(),
            full_scan: false,
            scratch: Vec::new(),
        })
    }

    /// Resident pages of the untrackable writable ranges.
    fn untracked_resident(&mut self) -> Result<RangeSet, TrackerError> {
        Ok(self.pagemap.present_in(self.wp.unregistrable())?)
    }
}

impl DirtyTracker for UffdWpTracker {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn pid(&self) -> i32 {
        self.wp.pid()
    }

    fn sync_layout(
        &mut self,
        layout: &Layout,
        replaced: &[Range],
    ) -> Result<RangeSet, TrackerError> {
        for &range in replaced {
            self.wp.forget(range);
            self.pending.remove(range);
        }
        let outcome = self.wp.sync(layout)?;
        // Registered and protected first, then listed: a page touched before
        // the protection is resident now; one touched after is caught by the
        // written bit as well. Either way nothing falls between.
        Ok(self.pagemap.present_in(&outcome.added)?)
    }

    fn note_fault(&mut self, addr: u64) {
        self.faults.push(addr & !(self.page_size - 1));
    }

    fn note_lost_faults(&mut self) {
        self.full_scan = true;
    }

    fn collect(&mut self) -> Result<Collected, TrackerError> {
        let registered = self.wp.registered().clone();
        let full = self.backend == Backend::PagemapScan || mem::take(&mut self.full_scan);
        let ScanPlan {
            faulted,
            candidates,
        } = if full {
            ScanPlan {
                faulted: RangeSet::from_pages(&mut self.faults, self.page_size)
                    .intersection(&registered),
                candidates: registered.clone(),
            }
        } else {
            plan_scan(&mut self.faults, &self.pending, &registered, self.page_size)
        };
        self.faults.clear();
        self.scratch.clear();
        for &range in candidates.ranges() {
            self.pagemap.take_written(range, &mut self.scratch)?;
        }
        let written = RangeSet::from_ranges(mem::take(&mut self.scratch));
        self.pending = faulted.difference(&written);
        let mut dirty = written;
        dirty.union(&faulted);
        dirty.union(&self.untracked_resident()?);
        Ok(Collected {
            dirty,
            scanned_bytes: candidates.bytes(),
        })
    }

    fn tracked(&self) -> RangeSet {
        self.wp.registered().clone()
    }

    fn untracked(&self) -> RangeSet {
        self.wp.unregistrable().clone()
    }

    fn release(self: Box<Self>) -> Result<(), TrackerError> {
        Ok(self.wp.release()?)
    }
}
