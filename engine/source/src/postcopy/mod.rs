//! Post-copy's source side. The source is frozen ([`crate::provider::FrozenTree`]);
//! the destination already runs.
//!
//! - [`demand`]: a thread that answers `PageRequest`s on the priority lane
//!   straight from the frozen memory, plus up to `--prefetch-pages` unsent
//!   pages after each request.
//! - [`push`]: the background push of every page not sent yet, most useful
//!   first: pages right after recent faults, then the working set, then the
//!   rest in address order.
//!
//! Both clear a page's bit in the shared [`Unsent`] set when they take it,
//! so nothing is pushed twice unless asked for again. Reconnecting after a
//! break is the driver's (`pagehop::send`): it resets the set to what the
//! destination still lacks and starts a new demand server.
pub mod demand;
pub mod push;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::collections::BTreeMap;

use pagehop_mem::SpaceKey;
use pagehop_mem::page_bits::SpaceBits;
use pagehop_mem::pages::RangeSet;

/// Most requested pages remembered for `--record-working-set`.
const MAX_RECORDED: usize = 1 << 20;

/// What the demand server and the push share: the pages not sent yet, the
/// demand server's counters, the pages asked for, and whether the priority
/// lane broke.
pub struct Unsent {
    bits: Mutex<SpaceBits>,
    page_size: u64,
    requests: AtomicU64,
    pages: AtomicU64,
    prefetched: AtomicU64,
    bytes_raw: AtomicU64,
    bytes_wire: AtomicU64,
    requested: Mutex<Vec<(SpaceKey, u64)>>,
    lane_broke: AtomicBool,
    /// Why the demand server could not read the source's memory (for good:
    /// a reconnect does not bring it back).
    unreadable: Mutex<Option<String>>,
    /// When the last request came (monotonic ns; 0: none yet).
    last_request_ns: AtomicU64,
}

/// What the demand server answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemandTotals {
    pub requests: u64,
    /// Pages sent on the priority lane (requested and prefetched).
    pub pages: u64,
    pub prefetched: u64,
    /// Page data (non-zero pages) and frame bytes on the priority lane.
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

impl Unsent {
    /// Every page of `pending` unsent.
    pub fn new(pending: &BTreeMap<SpaceKey, RangeSet>, page_size: u64) -> Self {
        Self {
            bits: Mutex::new(SpaceBits::filled(pending, page_size)),
            page_size,
            requests: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            bytes_raw: AtomicU64::new(0),
            bytes_wire: AtomicU64::new(0),
            requested: Mutex::new(Vec::new()),
            lane_broke: AtomicBool::new(false),
            unreadable: Mutex::new(None),
            last_request_ns: AtomicU64::new(0),
        }
    }

    /// After a reconnect: the pages of `pending` that the destination still
    /// lacks (`missing`) are unsent again, the others sent.
    pub fn reset(
        &self,
        pending: &BTreeMap<SpaceKey, RangeSet>,
        missing: &BTreeMap<SpaceKey, RangeSet>,
    ) {
        let mut bits = SpaceBits::filled(pending, self.page_size);
        let none = RangeSet::new();
        for (&space, ranges) in pending {
            let still = missing.get(&space).unwrap_or(&none);
            for page in ranges.difference(still).iter_pages(self.page_size) {
                bits.clear(space, page);
            }
        }
        *self.bits.lock().expect("lock") = bits;
        self.lane_broke.store(false, Ordering::SeqCst);
    }

    pub(crate) fn bits(&self) -> std::sync::MutexGuard<'_, SpaceBits> {
        self.bits.lock().expect("lock")
    }

    /// Why the source's memory could not be read for a demand answer, if it
    /// could not: post-copy cannot go on (never a zero page instead).
    pub fn unreadable(&self) -> Option<String> {
        self.unreadable.lock().expect("lock").clone()
    }

    pub(crate) fn set_unreadable(&self, why: String) {
        self.unreadable.lock().expect("lock").get_or_insert(why);
    }

    /// Whether the demand server's lane broke since the last [`Unsent::reset`].
    pub fn lane_broke(&self) -> bool {
        self.lane_broke.load(Ordering::SeqCst)
    }

    fn record_request(&self, space: SpaceKey, addr: u64, pages: u64) {
        self.last_request_ns
            .store(pagehop_sys::monotonic_ns(), Ordering::Relaxed);
        let mut recorded = self.requested.lock().expect("lock");
        if recorded.len() < MAX_RECORDED {
            recorded.extend((0..pages).map(|i| (space, addr + i * self.page_size)));
        }
    }

    fn record_answer(&self, pages: u64, prefetched: u64, bytes_raw: u64, bytes_wire: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.pages.fetch_add(pages, Ordering::Relaxed);
        self.prefetched.fetch_add(prefetched, Ordering::Relaxed);
        self.bytes_raw.fetch_add(bytes_raw, Ordering::Relaxed);
        self.bytes_wire.fetch_add(bytes_wire, Ordering::Relaxed);
    }

    /// How long since the last request (`None` before the first).
    pub fn since_last_request(&self) -> Option<std::time::Duration> {
        match self.last_request_ns.load(Ordering::Relaxed) {
            0 => None,
            at => Some(std::time::Duration::from_nanos(
                pagehop_sys::monotonic_ns().saturating_sub(at),
            )),
        }
    }

    /// The demand server's totals so far.
    pub fn totals(&self) -> DemandTotals {
        DemandTotals {
            requests: self.requests.load(Ordering::Relaxed),
            pages: self.pages.load(Ordering::Relaxed),
            prefetched: self.prefetched.load(Ordering::Relaxed),
            bytes_raw: self.bytes_raw.load(Ordering::Relaxed),
            bytes_wire: self.bytes_wire.load(Ordering::Relaxed),
        }
    }

    /// The pages asked for, in the order first asked (for the working set).
    pub fn take_requested(&self) -> Vec<(SpaceKey, u64)> {
        std::mem::take(&mut *self.requested.lock().expect("lock"))
    }
}
