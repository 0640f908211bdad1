//! Where the receiver threads report pages that arrive during post-copy.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crossbeam::channel::{Receiver, Sender};
use pagehop_mem::SpaceKey;
use pagehop_mem::page_bits::SpaceBits;

/// Pages of one space that arrived together.
pub(super) type Arrived = (SpaceKey, Vec<u64>);

/// Where the receiver threads report post-copy pages.
pub struct Arrivals {
    /// Pages still on the source.
    pub(super) outstanding: Mutex<SpaceBits>,
    pub(super) demand: (Sender<Arrived>, Receiver<Arrived>),
    pub(super) bulk: (Sender<Arrived>, Receiver<Arrived>),
    pub(super) waker: crate::faults::Waker,
    /// A connection of the current epoch broke.
    pub(super) lost: AtomicBool,
    pub(super) epoch: AtomicU32,
    pub(super) demand_pages: AtomicU64,
    pub(super) bulk_pages: AtomicU64,
}

impl Arrivals {
    /// Received pages of `space` (already in the store). `priority`: they
    /// came on the priority lane.
    pub fn arrived(&self, space: SpaceKey, priority: bool, pages: Vec<u64>) {
        let (counter, tx) = if priority {
            (&self.demand_pages, &self.demand.0)
        } else {
            (&self.bulk_pages, &self.bulk.0)
        };
        counter.fetch_add(pages.len() as u64, Ordering::Relaxed);
        // Queued before they stop being outstanding: "nothing outstanding and
        // nothing queued" then means everything was queued.
        let _ = tx.send((space, pages.clone()));
        {
            let mut outstanding = self.outstanding.lock().expect("lock");
            for &p in &pages {
                outstanding.clear(space, p);
            }
        }
        let _ = self.waker.wake();
    }

    /// A receiving connection of `epoch` ended or delivered bad data.
    pub fn stream_ended(&self, epoch: u32) {
        let missing = self.outstanding.lock().expect("lock").count();
        if missing > 0 && epoch >= self.epoch.load(Ordering::SeqCst) {
            self.lost.store(true, Ordering::SeqCst);
            let _ = self.waker.wake();
        }
    }
}
