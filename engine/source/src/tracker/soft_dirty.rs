//! The `soft-dirty` backend, for kernels built with CONFIG_MEM_SOFT_DIRTY
//! (this is what CRIU's pre-dump uses). Each collection reads bit 55 of the
//! pagemap entries of the writable mappings, then clears all soft-dirty bits
//! by writing `4` to /proc/PID/clear_refs.
//!
//! Writes that land between the read and the clear are lost: the backend is
//! exact only for a stopped process. The uffd-based backends have no such gap.
use std::fs::OpenOptions;
use std::io::Write;

use super::{Backend, Collected, DirtyTracker, TrackerError};
use crate::pagemap::Pagemap;
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_sys::pagemap::{PM_SOFT_DIRTY, read_entries};

/// Whether this kernel maintains soft-dirty bits: a page pagehop writes
/// itself must show up as soft-dirty in its own pagemap.
pub fn kernel_has_soft_dirty() -> bool {
    let page_size = pagehop_sys::page_size();
    let mut probe = vec![0u8; page_size * 2];
    // The vector holds at least one whole page; write it so that it is present.
    let addr = (probe.as_ptr() as usize).next_multiple_of(page_size);
    let offset = addr - probe.as_ptr() as usize;
    probe[offset] = 1;
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return false;
    };
    let entry = read_entries(&pagemap, addr as u64, 1, page_size as u64)
        .ok()
        .and_then(|e| e.first().copied());
    std::hint::black_box(&probe);
    entry.is_some_and(|e| e & PM_SOFT_DIRTY != 0)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub struct SoftDirtyTracker {
    pid: i32,
    pagemap: Pagemap,
    page_size: u64,
    writable: RangeSet,
}

impl SoftDirtyTracker {
    pub fn open(pid: i32) -> Result<Self, TrackerError> {
        if !kernel_has_soft_dirty() {
            return Err(TrackerError::NoSoftDirty {
                kernel: kernel_release(),
            });
        }
        let tracker = Self {
            pid,
            pagemap: Pagemap::open(pid)?,
            page_size: pagehop_sys::page_size() as u64,
            writable: RangeSet::new(),
        };
        tracker.clear()?;
        Ok(tracker)
    }

    fn clear(&self) -> Result<(), TrackerError> {
        let write = || -> std::io::Result<()> {
            OpenOptions::new()
                .write(true)
                .open(format!("/proc/{}/clear_refs", self.pid))?
                .write_all(b"4")
        };
        write().map_err(|source| TrackerError::ClearRefs {
            pid: self.pid,
            source,
        })
    }
}

impl DirtyTracker for SoftDirtyTracker {
    fn backend(&self) -> Backend {
        Backend::SoftDirty
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn sync_layout(
        &mut self,
        layout: &Layout,
        _replaced: &[Range],
    ) -> Result<RangeSet, TrackerError> {
        // New mappings start soft-dirty (VM_SOFTDIRTY): nothing to arm.
        self.writable = layout.writable_ranges();
        Ok(RangeSet::new())
    }

    fn collect(&mut self) -> Result<Collected, TrackerError> {
        let mut pages = Vec::new();
        for range in self.writable.ranges() {
            let count = (range.len() / self.page_size) as usize;
            let entries = read_entries(self.pagemap.file(), range.start, count, self.page_size)
                .map_err(|source| crate::pagemap::PagemapError::Scan {
                    pid: self.pid,
                    range: *range,
                    source,
                })?;
            pages.extend(
                entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| **e & PM_SOFT_DIRTY != 0)
                    .map(|(i, _)| range.start + i as u64 * self.page_size),
            );
        }
        self.clear()?;
        Ok(Collected {
            dirty: RangeSet::from_pages(&mut pages, self.page_size),
            scanned_bytes: self.writable.bytes(),
        })
    }

    fn tracked(&self) -> RangeSet {
        self.writable.clone()
    }

    fn untracked(&self) -> RangeSet {
        RangeSet::new()
    }

    fn release(self: Box<Self>) -> Result<(), TrackerError> {
        Ok(())
    }
}
