//! The [`ShardWriter`]: the one writer of a shard's data pages and header
//! slot. A tick writes the picked pages in the order that keeps a frozen
//! copy repairable (intent record, optional recycle, content, table entry)
//! and then stores the thread's pattern state.
use std::io;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{Ordering, compiler_fence};

use super::{Arena, ThreadSlot};
use crate::page;
use crate::pattern::PickState;
use crate::sys;

/// A page recycle ([`ShardWriter::recycle_first`]) that failed; the page's
/// write stays recorded in flight in its writer's slot.
#[derive(Debug, thiserror::Error)]
#[error("recycling data page {index} at {addr:#x} ({how})")]
pub struct RecycleError {
    pub index: u64,
    pub addr: usize,
    /// `"munmap and mmap"` or `"MADV_DONTNEED"`.
    pub how: &'static str,
    #[source]
    pub source: io::Error,
}

/// When a tick's writes happened: `start_ns` just before the first write,
/// `end_ns` just after the last (CLOCK_MONOTONIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickTimes {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Exclusive writer of one shard's data pages and header slot.
#[derive(Debug)]
pub struct ShardWriter<'a> {
    arena: &'a Arena,
    shard: usize,
    pages: Range<u64>,
    /// Page writes left that recycle their page first.
    recycle_left: u64,
    /// Pages recycled so far; even counts remap, odd ones discard.
    recycled: u64,
}

// SAFETY: the writer only refers to its own shard's pages (exclusive by the
// constructor's contract) and to atomics; moving it to another thread is fine.
unsafe impl Send for ShardWriter<'_> {}

impl Arena {
    /// The writer of shard `shard`, which owns its data pages and its header slot.
    ///
    /// # Safety
    /// While the writer lives, no other writer of the same shard may exist in
    /// this process and [`Arena::check_invariants`] must not be called.
    /// (In a forked child the parent's writer threads are gone, so the child
    /// may create new writers.)
    pub unsafe fn shard_writer(&self, shard: usize) -> ShardWriter<'_> {
        assert!(shard < self.layout.threads, "shard {shard} out of range");
        ShardWriter {
            arena: self,
            shard,
            pages: self.layout.shard(shard),
            recycle_left: 0,
            recycled: 0,
        }
    }
}

impl ShardWriter<'_> {
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Number of data pages in the shard.
    pub fn pages(&self) -> u64 {
        self.pages.end - self.pages.start
    }

    pub fn slot(&self) -> &ThreadSlot {
        &self.arena.header().slots[self.shard]
    }

    /// Makes the next `pages` page writes of [`ShardWriter::write_tick`]
    /// recycle their page before filling it, alternately by `munmap` and a
    /// fresh `mmap` of the page at the same address (first) and by
    /// `MADV_DONTNEED`. Each remap may add a mapping (VMA) to the process.
    pub fn recycle_first(&mut self, pages: u64) {
        self.recycle_left = pages;
    }

    /// Pages recycled so far.
    pub fn recycled(&self) -> u64 {
        self.recycled
    }

    /// Throws away the memory of data page `index` (see
    /// [`ShardWriter::recycle_first`]); it reads as zeros afterwards, or
    /// whatever the userfaultfd monitor of a registered page puts there.
    fn recycle(&mut self, index: u64) -> Result<(), RecycleError> {
        let addr = self.arena.data_page_addr(index);
        let ptr = NonNull::new(addr as *mut u8).expect("the arena does not start at address 0");
        let len = self.arena.layout.page_size;
        let (how, done) = if self.recycled.is_multiple_of(2) {
            // SAFETY: the page is in this writer's shard, which it owns
            // exclusively (`shard_writer`'s contract), and no reference into
            // it is alive: page slices only live during one `fill_page`, and
            // no check or `finish_interrupted_writes` runs while a writer lives.
            ("munmap and mmap", unsafe { sys::remap_fresh(ptr, len) })
        } else {
            // SAFETY: as above; the page's old content is not needed, the
            // caller rewrites all of it.
            ("MADV_DONTNEED", unsafe { sys::discard(ptr, len) })
        };
        done.map_err(|source| RecycleError {
            index,
            addr,
            how,
            source,
        })?;
        self.recycle_left -= 1;
        self.recycled += 1;
        Ok(())
    }

    /// Writes the shard-relative data pages `picks` (bumping their generation),
    /// then stores the thread's new `state` and `carry` in its header slot.
    ///
    /// If `addrs` is given, it is extended with the address of every page
    /// written: the data pages, the generation-table pages and the header page.
    ///
    /// Fails only if recycling a page fails; the rest of the tick is then
    /// not done and that page stays recorded in flight.
    pub fn write_tick(
        &mut self,
        picks: &[u64],
        state: PickState,
        carry: f64,
        addrs: Option<&mut Vec<usize>>,
    ) -> Result<TickTimes, RecycleError> {
        let arena = self.arena;
        let table = arena.table();
        let slot = &arena.header().slots[self.shard];
        let start_ns = pagehop_sys::monotonic_ns();
        for &pick in picks {
            let index = self.pages.start + pick;
            assert!(
                index < self.pages.end,
                "page {pick} outside shard {}",
                self.shard
            );
            let generation = table[index as usize]
                .load(Ordering::Relaxed)
                .wrapping_add(1);
            // The intent record comes before any byte of the page, in program
            // order, which is what a copy of a frozen process sees.
            slot.in_flight.store(index + 1, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
            if self.recycle_left > 0 {
                self.recycle(index)?;
            }
            // SAFETY: the page is in this writer's shard, which it owns exclusively.
            page::fill_page(
                unsafe { arena.data_page_mut(index) },
                index,
                generation,
                arena.fill,
            );
            table[index as usize].store(generation, Ordering::Release);
            slot.in_flight.store(0, Ordering::Release);
        }
        slot.rng.store(state.rng.0, Ordering::Relaxed);
        slot.cursor.store(state.cursor, Ordering::Relaxed);
        slot.carry.store(carry.to_bits(), Ordering::Relaxed);
        slot.ticks.fetch_add(1, Ordering::Relaxed);
        slot.pages_written
            .fetch_add(picks.len() as u64, Ordering::Relaxed);
        let end_ns = pagehop_sys::monotonic_ns();

        if let Some(addrs) = addrs {
            addrs.extend(
                picks
                    .iter()
                    .map(|&p| self.arena.data_page_addr(self.pages.start + p)),
            );
            let mut tables: Vec<usize> = picks
                .iter()
                .map(|&p| self.arena.table_page_addr(self.pages.start + p))
                .collect();
            tables.sort_unstable();
            tables.dedup();
            addrs.extend(tables);
            addrs.push(self.arena.start());
        }
        Ok(TickTimes { start_ns, end_ns })
    }
}
