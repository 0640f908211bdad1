//! Page state queries on another process through /proc/PID/pagemap.
//!
//! [`Pagemap::take_written`] is the atomic "which pages were written since I
//! last protected them, and protect them again" primitive (PAGEMAP_SCAN with
//! WP matching); [`Pagemap::present`] lists resident pages.
use std::fs::File;
use std::io;

use pagehop_mem::pages::{Range, RangeSet};
use pagehop_sys::pagemap::{self as raw, PageRegion};

#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    #[error("opening /proc/{pid}/pagemap")]
    Open {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("PAGEMAP_SCAN over {range} of pid {pid} (needs Linux 6.7+)")]
    Scan {
        pid: i32,
        range: Range,
        #[source]
        source: io::Error,
    },
}

/// Regions returned per PAGEMAP_SCAN call.
const SCAN_BATCH: usize = 512;

pub struct Pagemap {
    pid: i32,
    file: File,
    buf: Vec<PageRegion>,
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self, PagemapError> {
        let file = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|source| PagemapError::Open { pid, source })?;
        Ok(Self {
            pid,
            file,
            buf: vec![PageRegion::default(); SCAN_BATCH],
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs PAGEMAP_SCAN over `range` until the walk is complete, appending
    /// the regions whose categories intersect `wanted`.
    fn scan(
        &mut self,
        range: Range,
        flags: u64,
        category_mask: u64,
        wanted: u64,
        out: &mut Vec<Range>,
    ) -> Result<(), PagemapError> {
        let mut start = range.start;
        while start < range.end {
            let (n, walk_end) = raw::scan(
                &self.file,
                start,
                range.end,
                flags,
                category_mask,
                wanted,
                &mut self.buf,
            )
            .map_err(|source| PagemapError::Scan {
                pid: self.pid,
                range,
                source,
            })?;
            out.extend(
                self.buf[..n]
                    .iter()
                    .filter(|r| r.categories & wanted != 0)
                    .map(|r| Range::new(r.start, r.end)),
            );
            if walk_end <= start {
                break; // no progress: nothing more to report
            }
            start = walk_end;
        }
        Ok(())
    }

    /// Pages in `range` written since they were last write-protected; they are
    /// write-protected again in the same call, so no write can fall between.
    /// `range` must lie inside ranges registered for async write-protection.
    pub fn take_written(&mut self, range: Range, out: &mut Vec<Range>) -> Result<(), PagemapError> {
        self.scan(
            range,
            raw::PM_SCAN_WP_MATCHING | raw::PM_SCAN_CHECK_WPASYNC,
            raw::PAGE_IS_WRITTEN,
            raw::PAGE_IS_WRITTEN,
            out,
        )
    }

    /// Present pages in `range`. Swapped-out pages are not included: PAGEMAP_SCAN
    /// reports the uffd-wp markers of never-populated pages as swap entries too,
    /// so the two cannot be told apart here.
    pub fn present(&mut self, range: Range, out: &mut Vec<Range>) -> Result<(), PagemapError> {
        self.scan(range, 0, raw::PAGE_IS_PRESENT, raw::PAGE_IS_PRESENT, out)
    }

    /// Present pages in all of `ranges`.
    pub fn present_in(&mut self, ranges: &RangeSet) -> Result<RangeSet, PagemapError> {
        let mut out = Vec::new();
        for r in ranges.ranges() {
            self.present(*r, &mut out)?;
        }
        Ok(RangeSet::from_ranges(out))
    }
}
