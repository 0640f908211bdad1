//! The arena: one fixed mapping that holds all of the workload's state, so
//! that a copy of it elsewhere can carry on (a later `--resume`).
//!
//! ```text
//! base                                                                base + size
//! +--------+----------------------------+---------+---------+-----+--------------+
//! | header | generation table           | shard 0 | shard 1 | ... | shard T-1    |
//! | 1 page | one u32 per data page,     |   data pages, split contiguously,      |
//! |        | padded to whole pages      |   one shard per writer thread          |
//! +--------+----------------------------+----------------------------------------+
//! ```
//!
//! The header holds the layout (versioned) and one cache-line slot per writer
//! thread with its generator state, sequential cursor, counters, rate carry
//! and the data page it is writing right now.
//! Data page `i` always holds [`page::fill_page`]`(i, table[i], fill)`, with
//! the arena's one [`Fill`] (recorded in the header), except the
//! one page each writer may be in the middle of. A copy taken while the
//! process is frozen at any instant (a migration) is made whole again by
//! [`Arena::finish_interrupted_writes`]: every page in flight is rewritten
//! from its table entry, and a partly done tick is simply done again (the
//! slot's generator state is only stored at the end of a tick).
//!
//! A writer may also *recycle* a page before writing it
//! ([`ShardWriter::recycle_first`]): throw its memory away (`munmap` and a
//! fresh `mmap` of that page, or `MADV_DONTNEED`) and then fill it as usual.
//! The content does not depend on what the page held before, so the
//! invariants are unaffected; the intent record is stored before the page is
//! thrown away, so a copy taken in between is made whole like any other
//! interrupted write. Resume mode uses it to make a restored process drop
//! parts of its userfaultfd-registered memory while pagehop serves it.
//!
//! This module has the mapping itself ([`Arena`]: creating, mapping empty
//! for a resume, reading the table and pages, finishing interrupted
//! writes); the rest is split by job:
//! - `layout`: where everything is: the [`Header`] with its [`ThreadSlot`]s,
//!   and the [`Layout`] of an arena of a given size.
//! - `writer`: the [`ShardWriter`] that writes (and recycles) the pages of
//!   one shard, tick by tick.
mod layout;
mod writer;

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::page::{self, Fill};
use super::pattern::{Pattern, Rng};
use super::sys;
use layout::MIN_PAGE_SIZE;

pub use layout::{Header, LAYOUT_VERSION, Layout, MAGIC, MAX_THREADS, ThreadSlot};
pub use writer::{RecycleError, ShardWriter, TickTimes};

/// Errors of creating an arena.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("page size {page_size} is not a power of two of at least {MIN_PAGE_SIZE}")]
    PageSize { page_size: usize },
    #[error("{threads} writer threads: must be between 1 and {MAX_THREADS}")]
    Threads { threads: usize },
    #[error("arena of {size} bytes is too small for {threads} shards of at least one page")]
    TooSmall { size: usize, threads: usize },
    #[error("arena address {addr:#x} is not page-aligned")]
    Unaligned { addr: usize },
    #[error(
        "arena address range {addr:#x}+{len:#x} is already (partly) mapped; pick another --arena-addr"
    )]
    AddressTaken { addr: usize, len: usize },
    #[error("mapping the arena at {addr:#x}+{len:#x}")]
    Map {
        addr: usize,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("disabling huge pages on the arena")]
    NoHugePages(#[source] io::Error),
}

/// The mapped arena. Dropping it unmaps it.
#[derive(Debug)]
pub struct Arena {
    pub(super) base: NonNull<u8>,
    pub(super) layout: Layout,
    /// What the data pages hold; the header records it.
    pub(super) fill: Fill,
    /// Whether dropping the arena unmaps it ([`Arena::keep_mapped`]).
    unmap_on_drop: bool,
}

// SAFETY: the arena owns its mapping. Shared state is accessed through atomics
// (header slots, generation table); data pages are only written through
// `ShardWriter`s, whose unsafe constructor requires exclusive use of a shard.
unsafe impl Send for Arena {}
// SAFETY: as for Send.
unsafe impl Sync for Arena {}

impl Arena {
    /// Maps a new arena at `addr` (`MAP_FIXED_NOREPLACE`), writes its header,
    /// zeroes the generation table and fills every data page with its
    /// generation-0 content (of `fill`), so that all pages are resident.
    pub fn create(
        addr: usize,
        layout: Layout,
        seed: u64,
        pattern: Pattern,
        fill: Fill,
    ) -> Result<Self, ArenaError> {
        let arena = Self::map_empty(addr, layout, fill)?;
        let (base, len) = (arena.base, layout.size());
        let header = Header {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            page_size: layout.page_size as u32,
            size: len as u64,
            total_pages: layout.total_pages,
            table_pages: layout.table_pages,
            data_pages: layout.data_pages,
            seed,
            threads: layout.threads as u32,
            pattern: pattern as u32,
            fill: fill as u32,
            _pad: 0,
            _reserved: [0; 7],
            slots: std::array::from_fn(|t| ThreadSlot::new(Rng::for_thread(seed, t).0)),
        };
        // SAFETY: the mapping is fresh, writable, page-aligned and at least
        // `size_of::<Header>()` (one page) long; nothing else refers to it yet.
        unsafe {
            base.cast::<Header>().as_ptr().write(header);
            let table = base.as_ptr().add(layout.table_offset());
            table.write_bytes(0, layout.table_pages as usize * layout.page_size);
        }
        for index in 0..layout.data_pages {
            // SAFETY: no writer exists yet, so this is the only reference to the page.
            page::fill_page(unsafe { arena.data_page_mut(index) }, index, 0, fill);
        }
        Ok(arena)
    }

    /// Maps an arena at `addr` (`MAP_FIXED_NOREPLACE`, no huge pages) without
    /// touching any of its pages, for a resume: the content is the source's
    /// and arrives later, through a userfaultfd registered on the range.
    /// Until it has, reading a page blocks in its page fault (or, with no
    /// userfaultfd, reads zeros: [`Arena::check_invariants`] reports that).
    /// `fill` is what the data pages are expected to hold (the header's
    /// must match it).
    pub fn map_empty(addr: usize, layout: Layout, fill: Fill) -> Result<Self, ArenaError> {
        let len = layout.size();
        if !addr.is_multiple_of(layout.page_size) {
            return Err(ArenaError::Unaligned { addr });
        }
        let base = sys::map_fixed_noreplace(addr, len).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => ArenaError::AddressTaken { addr, len },
            _ => ArenaError::Map { addr, len, source },
        })?;
        let arena = Self {
            base,
            layout,
            fill,
            unmap_on_drop: true,
        };
        sys::no_huge_pages(base, len).map_err(ArenaError::NoHugePages)?;
        Ok(arena)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Leaves the mapping in place when the arena is dropped; the process's
    /// exit removes it. For a resumed arena, whose userfaultfd pagehop holds:
    /// with `UFFD_FEATURE_EVENT_UNMAP` negotiated, `munmap` of a registered
    /// range blocks until the monitor has read the unmap event, so unmapping
    /// would hang the end of the run whenever pagehop has stopped reading
    /// (the exit itself sends no events).
    pub fn keep_mapped(&mut self) {
        self.unmap_on_drop = false;
    }

    /// What the data pages hold.
    pub fn fill(&self) -> Fill {
        self.fill
    }

    /// First address of the arena.
    pub fn start(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// End of the arena (exclusive).
    pub fn end(&self) -> usize {
        self.start() + self.layout.size()
    }

    pub fn header(&self) -> &Header {
        // SAFETY: page 0 holds a Header, written in `create` or installed
        // from the source's arena on resume (every bit pattern is a valid
        // Header: integers and atomics only); its plain fields are never
        // written again and its slots are atomics.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// The generation table, one entry per data page.
    pub fn table(&self) -> &[AtomicU32] {
        // SAFETY: the table is mapped, initialised (zeroed in `create`, or the
        // source's on resume), 4-byte aligned (page-aligned start) and
        // `data_pages` entries long; AtomicU32 has the layout of u32 and every
        // access to it is atomic.
        unsafe {
            let ptr = self
                .base
                .as_ptr()
                .add(self.layout.table_offset())
                .cast::<AtomicU32>();
            std::slice::from_raw_parts(ptr, self.layout.data_pages as usize)
        }
    }

    /// Generation of data page `index`.
    pub fn generation(&self, index: u64) -> u32 {
        self.table()[index as usize].load(Ordering::Relaxed)
    }

    /// Completes the page writes that were under way when this arena's
    /// content was copied out of a frozen process: each page recorded in
    /// flight in a thread slot is rewritten from its generation-table entry
    /// (the content of a write interrupted before its table entry is stored
    /// is rolled back; after, rolled forward). Returns how many pages it
    /// rewrote, or the first slot whose record lies outside its shard.
    ///
    /// Must not run while a `ShardWriter` of this arena is alive.
    pub fn finish_interrupted_writes(&self) -> Result<usize, usize> {
        let mut rewritten = 0;
        for (t, slot) in self.header().slots[..self.layout.threads]
            .iter()
            .enumerate()
        {
            let Some(index) = slot.in_flight() else {
                continue;
            };
            if !self.layout.shard(t).contains(&index) {
                return Err(t);
            }
            // SAFETY: by this method's contract no writer is alive, so this is
            // the only reference to the page.
            page::fill_page(
                unsafe { self.data_page_mut(index) },
                index,
                self.generation(index),
                self.fill,
            );
            slot.in_flight.store(0, Ordering::Relaxed);
            rewritten += 1;
        }
        Ok(rewritten)
    }

    /// Data pages written so far by all writer threads.
    pub fn pages_written(&self) -> u64 {
        let slots = &self.header().slots[..self.layout.threads];
        slots
            .iter()
            .map(|s| s.pages_written.load(Ordering::Relaxed))
            .sum()
    }

    /// Address of data page `index`.
    pub fn data_page_addr(&self, index: u64) -> usize {
        self.start() + self.layout.data_offset() + index as usize * self.layout.page_size
    }

    /// Address of the generation-table page holding the entry of data page `index`.
    pub fn table_page_addr(&self, index: u64) -> usize {
        let entry = self.start() + self.layout.table_offset() + index as usize * size_of::<u32>();
        entry & !(self.layout.page_size - 1)
    }

    /// Data page `index` as words.
    ///
    /// # Safety
    /// No `ShardWriter` for the page's shard may be alive.
    pub(super) unsafe fn data_page(&self, index: u64) -> &[u64] {
        debug_assert!(index < self.layout.data_pages);
        // SAFETY: the page is mapped, initialised and page-aligned; the caller
        // guarantees nobody writes it meanwhile.
        unsafe {
            let ptr = self.data_page_addr(index) as *const u64;
            std::slice::from_raw_parts(ptr, self.layout.page_size / size_of::<u64>())
        }
    }

    /// Data page `index` as writable words.
    ///
    /// # Safety
    /// The caller must be the only one accessing the page while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn data_page_mut(&self, index: u64) -> &mut [u64] {
        debug_assert!(index < self.layout.data_pages);
        // SAFETY: the page is mapped, initialised or about to be (u64 has no
        // invalid bit patterns) and page-aligned; the caller guarantees
        // exclusive access.
        unsafe {
            let ptr = self.data_page_addr(index) as *mut u64;
            std::slice::from_raw_parts_mut(ptr, self.layout.page_size / size_of::<u64>())
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if !self.unmap_on_drop {
            return;
        }
        // SAFETY: the mapping is ours, and every reference into it borrows `self`.
        let _ = unsafe { sys::unmap(self.base, self.layout.size()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test-only arena address; each test uses its own slot.
    fn test_addr(slot: usize) -> usize {
        0x6100_0000_0000 + slot * 0x1000_0000
    }

    #[test]
    fn layout_fits_and_shards_cover_the_data() {
        for (size, threads) in [(1 << 20, 1), (1 << 20, 3), (64 << 20, 7), (16 << 20, 62)] {
            let l = Layout::new(size, 4096, threads).expect("layout");
            assert_eq!(l.size(), size);
            assert!(1 + l.table_pages + l.data_pages <= l.total_pages);
            // Not wasteful: one more data page would not fit.
            let d = l.data_pages + 1;
            assert!(1 + (d * 4).div_ceil(4096) + d > l.total_pages);
            assert!(l.table_pages * 4096 >= l.data_pages * 4);
            let mut next = 0;
            for t in 0..threads {
                let shard = l.shard(t);
                assert_eq!(shard.start, next);
                assert!(shard.end > shard.start);
                next = shard.end;
            }
            assert_eq!(next, l.data_pages);
        }
        assert!(matches!(
            Layout::new(8192, 4096, 1),
            Err(ArenaError::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::new(1 << 20, 4096, 0),
            Err(ArenaError::Threads { .. })
        ));
        assert!(matches!(
            Layout::new(1 << 20, 4096, 63),
            Err(ArenaError::Threads { .. })
        ));
        assert!(matches!(
            Layout::new(1 << 20, 1000, 1),
            Err(ArenaError::PageSize { .. })
        ));
    }

    #[test]
    fn writes_bump_generations_and_report_every_page() {
        let ps = pagehop_sys::page_size();
        let layout = Layout::new(1 << 20, ps, 2).expect("layout");
        let arena =
            Arena::create(test_addr(0), layout, 9, Pattern::Seq, Fill::Random).expect("create");
        assert_eq!(arena.start(), test_addr(0));
        assert_eq!(arena.end() - arena.start(), 1 << 20);
        arena.check_invariants().expect("fresh arena");

        let shard = layout.shard(1);
        let mut addrs = Vec::new();
        {
            // SAFETY: the only writer of shard 1; no check runs while it lives.
            let mut writer = unsafe { arena.shard_writer(1) };
            let mut state = writer.slot().pick_state();
            state.cursor = 3;
            let times = writer
                .write_tick(&[0, 2, 1], state, 0.25, Some(&mut addrs))
                .expect("write");
            writer.write_tick(&[2], state, 0.5, None).expect("write");
            assert!(times.start_ns <= times.end_ns);
        }

        let data: Vec<usize> = [0, 2, 1]
            .iter()
            .map(|&p| arena.data_page_addr(shard.start + p))
            .collect();
        assert_eq!(addrs[..3], data[..]);
        assert_eq!(addrs[3], arena.table_page_addr(shard.start));
        assert_eq!(addrs[4..], [arena.start()]);
        assert_eq!(arena.generation(shard.start), 1);
        assert_eq!(arena.generation(shard.start + 2), 2);
        assert_eq!(arena.generation(0), 0);
        assert_eq!(arena.pages_written(), 4);
        let slot = &arena.header().slots[1];
        assert_eq!((slot.pick_state().cursor, slot.carry()), (3, 0.5));
        assert_eq!(slot.ticks.load(Ordering::Relaxed), 2);
        assert_eq!(slot.in_flight(), None, "no write left in flight");
        arena.check_invariants().expect("after writes");
    }

    #[test]
    fn interrupted_writes_are_finished_from_the_table() {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 2).expect("layout");
        let arena = Arena::create(
            test_addr(2),
            layout,
            3,
            Pattern::Uniform,
            Fill::Compressible,
        )
        .expect("create");
        let shard = layout.shard(1);
        let (rolled_back, rolled_forward) = (shard.start + 1, shard.start + 2);
        // A write stopped half-way before its table entry was stored: the
        // page is half new content, the table still says generation 0.
        // SAFETY: no writer exists; the pages are ours alone.
        let page = unsafe { arena.data_page_mut(rolled_back) };
        let mut next = vec![0u64; page.len()];
        page::fill_page(&mut next, rolled_back, 1, Fill::Compressible);
        page[..10].copy_from_slice(&next[..10]);
        arena.header().slots[1]
            .in_flight
            .store(rolled_back + 1, Ordering::Relaxed);
        assert!(arena.check_invariants().is_err(), "half-written page");
        assert_eq!(arena.finish_interrupted_writes(), Ok(1));
        arena.check_invariants().expect("rolled back");
        assert_eq!(arena.header().slots[1].in_flight(), None);

        // Stopped after the table entry: the page is completed.
        // SAFETY: as above.
        let page = unsafe { arena.data_page_mut(rolled_forward) };
        page::fill_page(&mut page[..5], rolled_forward, 1, Fill::Compressible);
        arena.table()[rolled_forward as usize].store(1, Ordering::Relaxed);
        arena.header().slots[1]
            .in_flight
            .store(rolled_forward + 1, Ordering::Relaxed);
        assert_eq!(arena.finish_interrupted_writes(), Ok(1));
        arena.check_invariants().expect("rolled forward");
        assert_eq!(arena.generation(rolled_forward), 1);

        // A record outside the writer's own shard is corruption.
        arena.header().slots[0]
            .in_flight
            .store(shard.start + 1, Ordering::Relaxed);
        assert_eq!(arena.finish_interrupted_writes(), Err(0));
        let bad = arena.check_invariants().expect_err("bad record");
        assert!(
            matches!(
                bad,
                crate::InvariantViolation::Header {
                    field: "slot in_flight",
                    ..
                }
            ),
            "{bad}"
        );
    }

    #[test]
    fn recycled_pages_are_rewritten_whole() {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 2).expect("layout");
        let arena =
            Arena::create(test_addr(3), layout, 4, Pattern::Uniform, Fill::Random).expect("create");
        let shard = layout.shard(1);
        {
            // SAFETY: the only writer of shard 1; no check runs while it lives.
            let mut writer = unsafe { arena.shard_writer(1) };
            writer.recycle_first(5);
            let state = writer.slot().pick_state();
            // Five recycles, alternately remap and discard (page 1 twice),
            // then two plain writes.
            writer
                .write_tick(&[0, 1, 2], state, 0.0, None)
                .expect("tick");
            assert_eq!(writer.recycled(), 3);
            writer
                .write_tick(&[1, 3, 4, 5], state, 0.0, None)
                .expect("tick");
            writer.write_tick(&[0], state, 0.0, None).expect("tick");
            assert_eq!(writer.recycled(), 5);
            assert_eq!(writer.slot().in_flight(), None);
        }
        arena
            .check_invariants()
            .expect("recycled pages hold their content");
        let generations: Vec<u32> = (0..6).map(|p| arena.generation(shard.start + p)).collect();
        assert_eq!(generations, [2, 2, 1, 1, 1, 1]);
        assert_eq!(arena.pages_written(), 8);
        // Another shard's writer does not recycle unless asked.
        {
            // SAFETY: the only writer of shard 0; no check runs while it lives.
            let mut writer = unsafe { arena.shard_writer(0) };
            let state = writer.slot().pick_state();
            writer.write_tick(&[0, 1], state, 0.0, None).expect("tick");
            assert_eq!(writer.recycled(), 0);
        }
        arena.check_invariants().expect("after plain writes");
    }

    #[test]
    fn a_kept_arena_stays_mapped() {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 1).expect("layout");
        let mut arena =
            Arena::create(test_addr(4), layout, 1, Pattern::Uniform, Fill::Random).expect("create");
        arena.keep_mapped();
        let (start, len) = (arena.start(), layout.size());
        drop(arena);
        // Still mapped: mapping it again is refused. Then clean up.
        let err = sys::map_fixed_noreplace(start, len).expect_err("still mapped");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        let base = NonNull::new(start as *mut u8).expect("not null");
        // SAFETY: the kept arena's mapping; nothing refers to it any more.
        unsafe { sys::unmap(base, len) }.expect("unmap");
    }

    #[test]
    fn refuses_a_taken_address() {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 1).expect("layout");
        let _arena =
            Arena::create(test_addr(1), layout, 1, Pattern::Uniform, Fill::Random).expect("create");
        let err = Arena::create(test_addr(1), layout, 1, Pattern::Uniform, Fill::Random)
            .expect_err("taken");
        assert!(matches!(err, ArenaError::AddressTaken { .. }), "{err}");
    }
}
