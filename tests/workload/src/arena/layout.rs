//! Where everything is in an arena: the versioned [`Header`] in page 0,
//! with one cache-line [`ThreadSlot`] per writer thread, and the [`Layout`]
//! that places the generation table and the shards of data pages in an
//! arena of a given size.
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ArenaError;
use crate::pattern::{PickState, Rng};

/// `PGHOPWKL`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PGHOPWKL");
/// Version of the arena layout; bump on any change to [`Header`] or the page map.
pub const LAYOUT_VERSION: u32 = 3;
/// Most writer threads the header has slots for.
pub const MAX_THREADS: usize = 62;
/// Smallest supported page size: the header must fit in one page.
pub(super) const MIN_PAGE_SIZE: usize = 4096;

/// Per-thread state in the header. Only its own writer thread stores to it.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ThreadSlot {
    /// splitmix64 state ([`Rng`]).
    pub rng: AtomicU64,
    /// Next shard-relative page of the sequential sweep.
    pub cursor: AtomicU64,
    /// Data pages written so far.
    pub pages_written: AtomicU64,
    /// Ticks in which the thread wrote.
    pub ticks: AtomicU64,
    /// Fractional page budget carried to the next tick (`f64` bits).
    pub carry: AtomicU64,
    /// 1 + the data page being written (recycling if any, content, then
    /// table entry), 0 when none.
    pub in_flight: AtomicU64,
    _reserved: [u64; 2],
}

const _: () = assert!(size_of::<ThreadSlot>() == 64);

impl ThreadSlot {
    pub(super) const fn new(rng: u64) -> Self {
        Self {
            rng: AtomicU64::new(rng),
            cursor: AtomicU64::new(0),
            pages_written: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            carry: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            _reserved: [0; 2],
        }
    }

    /// The thread's pattern state.
    pub fn pick_state(&self) -> PickState {
        PickState {
            rng: Rng(self.rng.load(Ordering::Relaxed)),
            cursor: self.cursor.load(Ordering::Relaxed),
        }
    }

    /// The fractional page budget carried over.
    pub fn carry(&self) -> f64 {
        f64::from_bits(self.carry.load(Ordering::Relaxed))
    }

    /// The data page whose write was under way, if any.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// Page 0 of the arena. The plain fields are written once, before the arena is shared.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub page_size: u32,
    /// Arena size in bytes.
    pub size: u64,
    pub total_pages: u64,
    pub table_pages: u64,
    pub data_pages: u64,
    pub seed: u64,
    pub threads: u32,
    /// [`Pattern`](crate::pattern::Pattern) as its `u32` value.
    pub pattern: u32,
    /// [`Fill`](crate::page::Fill) as its `u32` value (since version 3).
    pub fill: u32,
    pub(super) _pad: u32,
    pub(super) _reserved: [u64; 7],
    pub slots: [ThreadSlot; MAX_THREADS],
}

const _: () = assert!(size_of::<Header>() == MIN_PAGE_SIZE);

/// Where everything is in an arena of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub page_size: usize,
    pub total_pages: u64,
    pub table_pages: u64,
    pub data_pages: u64,
    pub threads: usize,
}

impl Layout {
    /// The layout of an arena of `size` bytes (rounded down to whole pages)
    /// shared by `threads` writer threads.
    pub fn new(size: usize, page_size: usize, threads: usize) -> Result<Self, ArenaError> {
        if !page_size.is_power_of_two() || page_size < MIN_PAGE_SIZE {
            return Err(ArenaError::PageSize { page_size });
        }
        if threads == 0 || threads > MAX_THREADS {
            return Err(ArenaError::Threads { threads });
        }
        let ps = page_size as u64;
        let total_pages = (size / page_size) as u64;
        // Largest D with 1 + ceil(4D / ps) + D <= total_pages.
        let mut data_pages = total_pages.saturating_sub(1) * ps / (ps + 4);
        while data_pages > 0 && 1 + Self::table_pages_for(data_pages, ps) + data_pages > total_pages
        {
            data_pages -= 1;
        }
        if data_pages < threads as u64 {
            return Err(ArenaError::TooSmall { size, threads });
        }
        Ok(Self {
            page_size,
            total_pages,
            table_pages: Self::table_pages_for(data_pages, ps),
            data_pages,
            threads,
        })
    }

    fn table_pages_for(data_pages: u64, page_size: u64) -> u64 {
        (data_pages * size_of::<u32>() as u64).div_ceil(page_size)
    }

    /// Arena size in bytes.
    pub fn size(&self) -> usize {
        self.total_pages as usize * self.page_size
    }

    /// Offset of the generation table.
    pub fn table_offset(&self) -> usize {
        self.page_size
    }

    /// Offset of data page 0.
    pub fn data_offset(&self) -> usize {
        (1 + self.table_pages as usize) * self.page_size
    }

    /// Data pages of shard `shard`: contiguous, sizes differing by at most one.
    pub fn shard(&self, shard: usize) -> Range<u64> {
        let (d, t) = (self.data_pages, self.threads as u64);
        shard as u64 * d / t..(shard as u64 + 1) * d / t
    }
}
