//! Address-space churn: short-lived anonymous mappings outside the arena.
//!
//! Each step maps a new region of 1–4 MiB where the kernel chooses, writes a
//! few of its pages, unmaps the oldest region once more than
//! [`MAX_REGIONS`] exist, and discards (`MADV_DONTNEED`) the first page of
//! one region. Churn state is process-local: it is not part of the arena.
use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;

use super::arena::TickTimes;
use super::pattern::Rng;
use super::sys;

/// Regions kept mapped between steps.
pub const MAX_REGIONS: usize = 4;
/// Pages written in each new region: its first page and others at random.
pub const PAGES_WRITTEN: usize = 4;

/// Errors of a churn step.
#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    #[error("mapping a churn region of {len} bytes")]
    Map {
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("disabling huge pages on churn region {addr:#x}")]
    NoHugePages {
        addr: usize,
        #[source]
        source: io::Error,
    },
    #[error("unmapping churn region {addr:#x}+{len:#x}")]
    Unmap {
        addr: usize,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("discarding page {addr:#x}")]
    Discard {
        addr: usize,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

/// The churn regions of the main thread.
#[derive(Debug)]
pub struct Churn {
    regions: VecDeque<Region>,
    rng: Rng,
    page_size: usize,
    steps: u64,
}

impl Churn {
    pub fn new(seed: u64, page_size: usize) -> Self {
        // Thread index past any writer's, so the stream differs from theirs.
        let rng = Rng::for_thread(seed, usize::MAX / 2);
        Self {
            regions: VecDeque::new(),
            rng,
            page_size,
            steps: 0,
        }
    }

    /// One churn step; `addrs` is replaced with the pages written, and the
    /// returned times bracket those writes.
    pub fn step(&mut self, addrs: &mut Vec<usize>) -> Result<TickTimes, ChurnError> {
        let len = (1 + self.rng.below(4) as usize) << 20;
        let ptr = sys::map_anywhere(len).map_err(|source| ChurnError::Map { len, source })?;
        self.regions.push_back(Region { ptr, len });
        let addr = ptr.as_ptr() as usize;
        sys::no_huge_pages(ptr, len).map_err(|source| ChurnError::NoHugePages { addr, source })?;

        let pages = (len / self.page_size) as u64;
        addrs.clear();
        addrs.push(0);
        while addrs.len() < PAGES_WRITTEN {
            let page = self.rng.below(pages) as usize;
            if !addrs.contains(&page) {
                addrs.push(page);
            }
        }
        for page in addrs.iter_mut() {
            *page = addr + *page * self.page_size;
        }
        self.steps += 1;
        let start_ns = pagehop_sys::monotonic_ns();
        for &page in addrs.iter() {
            // SAFETY: `page` is a page-aligned address inside the region just
            // mapped (read-write, owned by us, referenced by nothing else).
            unsafe { (page as *mut u64).write_volatile(self.steps) };
        }
        let end_ns = pagehop_sys::monotonic_ns();

        if self.regions.len() > MAX_REGIONS {
            let old = self
                .regions
                .pop_front()
                .expect("more than MAX_REGIONS regions");
            let addr = old.ptr.as_ptr() as usize;
            // SAFETY: the region is ours and nothing refers into it.
            unsafe { sys::unmap(old.ptr, old.len) }.map_err(|source| ChurnError::Unmap {
                addr,
                len: old.len,
                source,
            })?;
        }
        let victim = &self.regions[self.rng.below(self.regions.len() as u64) as usize];
        let addr = victim.ptr.as_ptr() as usize;
        // SAFETY: the region is ours; nothing relies on the content of its first page.
        unsafe { sys::discard(victim.ptr, self.page_size) }
            .map_err(|source| ChurnError::Discard { addr, source })?;
        Ok(TickTimes { start_ns, end_ns })
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        for region in self.regions.drain(..) {
            // SAFETY: the region is ours and nothing refers into it.
            let _ = unsafe { sys::unmap(region.ptr, region.len) };
        }
    }
}
