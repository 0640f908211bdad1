//! The `none` backend: no tracking at all, every resident writable page is
//! dirty in every interval. The baseline that shows what tracking saves.
use super::{Backend, Collected, DirtyTracker, TrackerError};
use crate::pagemap::Pagemap;
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::{Range, RangeSet};

pub struct NoneTracker {
    pid: i32,
    pagemap: Pagemap,
    writable: RangeSet,
}

impl NoneTracker {
    pub fn open(pid: i32) -> Result<Self, TrackerError> {
        Ok(Self {
            pid,
            pagemap: Pagemap::open(pid)?,
            writable: RangeSet::new(),
        })
    }
}

impl DirtyTracker for NoneTracker {
    fn backend(&self) -> Backend {
        Backend::None
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn sync_layout(
        &mut self,
        layout: &Layout,
        _replaced: &[Range],
    ) -> Result<RangeSet, TrackerError> {
        self.writable = layout.writable_ranges();
        Ok(RangeSet::new())
    }

    fn collect(&mut self) -> Result<Collected, TrackerError> {
        let dirty = self.pagemap.present_in(&self.writable)?;
        Ok(Collected {
            dirty,
            scanned_bytes: self.writable.bytes(),
        })
    }

    fn tracked(&self) -> RangeSet {
        RangeSet::new()
    }

    fn untracked(&self) -> RangeSet {
        self.writable.clone()
    }

    fn release(self: Box<Self>) -> Result<(), TrackerError> {
        Ok(())
    }
}
