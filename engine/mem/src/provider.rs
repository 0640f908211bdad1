//! Where pages come from: [`PageProvider`].
//!
//! Implementations: a live process and a frozen process tree
//! (`pagehop_source::provider`), and an image directory
//! (`pagehop_wire::image::Image`). The page stream, post-copy's demand
//! server and `--verify` read through this interface, so none of them knows
//! whether the memory is a running process, a stopped one, or a file.
use crate::layout::Layout;
use crate::pages::RangeSet;
use crate::space::SpaceKey;

/// Why a provider could not give pages.
#[derive(Debug, thiserror::Error)]
pub enum ProvideError {
    /// The process (or tree member) behind `space` has exited.
    #[error("{space} is gone (pid {pid})")]
    Gone { space: SpaceKey, pid: i32 },
    /// The provider holds no such address space.
    #[error("{space} is not part of this migration")]
    UnknownSpace { space: SpaceKey },
    /// A run asked for does not fit the caller's buffer or the address space.
    #[error("bad read of {space}: {why}")]
    BadRead { space: SpaceKey, why: String },
    /// Anything else, with its cause.
    #[error("reading {what} of {space}")]
    Failed {
        space: SpaceKey,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Reads the pages of one or more address spaces.
pub trait PageProvider: Send + Sync {
    /// The page size of the memory it holds.
    fn page_size(&self) -> usize;

    /// The mappings of `space` now.
    fn layout(&self, space: SpaceKey) -> Result<Layout, ProvideError>;

    /// The pages of `layout` that hold state the destination needs: the
    /// resident pages of a process's writable mappings and every page of its
    /// writable file mappings, or every page an image holds.
    fn populated(&self, space: SpaceKey, layout: &Layout) -> Result<RangeSet, ProvideError>;

    /// Reads `runs` (start address, pages) of `space` into `buf`, back to
    /// back in run order. `present` is cleared and gets one entry per page:
    /// `false` for a page that could not be read (unmapped meanwhile, or not
    /// held), whose bytes in `buf` are left as they were. Deciding what such a
    /// page means is the caller's job.
    fn read(
        &self,
        space: SpaceKey,
        runs: &[(u64, usize)],
        buf: &mut [u8],
        present: &mut Vec<bool>,
    ) -> Result<(), ProvideError>;
}

/// Bytes that `runs` (start address, pages) take at `page_size`.
pub fn run_bytes(runs: &[(u64, usize)], page_size: usize) -> usize {
    runs.iter().map(|&(_, pages)| pages * page_size).sum()
}

/// Groups ascending page addresses into runs of contiguous pages.
pub fn runs_of(pages: &[u64], page_size: usize, runs: &mut Vec<(u64, usize)>) {
    runs.clear();
    for &p in pages {
        match runs.last_mut() {
            Some((start, count)) if *start + (*count * page_size) as u64 == p => *count += 1,
            _ => runs.push((p, 1)),
        }
    }
}
