//! The arena's invariant check: a sane header, and every data page holding
//! the content of its generation-table entry.
use super::arena::{Arena, Header, LAYOUT_VERSION, Layout, MAGIC, MAX_THREADS};
use super::page::{self, Fill};

/// The first thing found wrong in an arena.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    #[error("bad arena header at {addr:#x}: {field}")]
    Header { addr: usize, field: &'static str },
    #[error("data page {index} at {addr:#x} does not match generation {generation} (word {word})")]
    Page {
        addr: usize,
        index: u64,
        generation: u32,
        word: usize,
    },
}

impl InvariantViolation {
    /// Address of the bad page.
    pub fn addr(&self) -> usize {
        match *self {
            Self::Header { addr, .. } | Self::Page { addr, .. } => addr,
        }
    }
}

/// Checks `header` against the layout and fill the arena was mapped with;
/// names the first bad field.
pub fn check_header(header: &Header, layout: &Layout, fill: Fill) -> Result<(), &'static str> {
    let fields = [
        (header.magic == MAGIC, "magic"),
        (header.version == LAYOUT_VERSION, "version"),
        (header.page_size as usize == layout.page_size, "page_size"),
        (header.size == layout.size() as u64, "size"),
        (header.total_pages == layout.total_pages, "total_pages"),
        (header.table_pages == layout.table_pages, "table_pages"),
        (header.data_pages == layout.data_pages, "data_pages"),
        (header.threads as usize == layout.threads, "threads"),
        ((1..=MAX_THREADS).contains(&layout.threads), "threads"),
        ((1..=3).contains(&header.pattern), "pattern"),
        (header.fill == fill as u32, "fill"),
        (
            header.table_pages * layout.page_size as u64 >= header.data_pages * 4,
            "table_pages",
        ),
        (
            1 + header.table_pages + header.data_pages <= header.total_pages,
            "data_pages",
        ),
    ];
    if let Some(&(_, field)) = fields.iter().find(|(ok, _)| !ok) {
        return Err(field);
    }
    for (t, slot) in header.slots[..layout.threads].iter().enumerate() {
        let shard = layout.shard(t);
        if slot.pick_state().cursor >= shard.end - shard.start {
            return Err("slot cursor");
        }
        if !(0.0..1.0).contains(&slot.carry()) {
            return Err("slot carry");
        }
        if slot.in_flight().is_some_and(|page| !shard.contains(&page)) {
            return Err("slot in_flight");
        }
    }
    Ok(())
}

impl Arena {
    /// Verifies the header and that every data page matches its generation
    /// entry; reports the first bad page.
    ///
    /// Must not run while a `ShardWriter` of this arena is alive (see
    /// [`Arena::shard_writer`]).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_header_invariants()?;
        self.check_pages(0..self.layout().data_pages)
    }

    /// [`Arena::check_invariants`] with the data pages split into `threads`
    /// contiguous shares (at most one per page), each checked by its own
    /// thread, so that pages not yet present fault in concurrently. Reports
    /// what the sequential check would: a bad header, else the lowest bad
    /// page. A share whose thread cannot be spawned is checked on the
    /// calling thread.
    ///
    /// Must not run while a `ShardWriter` of this arena is alive.
    pub fn check_invariants_parallel(&self, threads: usize) -> Result<(), InvariantViolation> {
        self.check_header_invariants()?;
        let data_pages = self.layout().data_pages;
        let shares = (threads as u64).clamp(1, data_pages.max(1));
        if shares == 1 {
            return self.check_pages(0..data_pages);
        }
        let share = |s: u64| s * data_pages / shares..(s + 1) * data_pages / shares;
        std::thread::scope(|scope| {
            let checks: Vec<_> = (0..shares)
                .map(|s| {
                    let pages = share(s);
                    std::thread::Builder::new()
                        .name(format!("check-{s}"))
                        .spawn_scoped(scope, move || self.check_pages(pages))
                        .map_err(|_| s)
                })
                .collect();
            // In share order, so the first failure is the lowest bad page.
            let mut first_bad = Ok(());
            for check in checks {
                let result = match check {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(s) => self.check_pages(share(s)),
                };
                if first_bad.is_ok() {
                    first_bad = result;
                }
            }
            first_bad
        })
    }

    /// The header check of [`Arena::check_invariants`] alone.
    pub fn check_header_invariants(&self) -> Result<(), InvariantViolation> {
        check_header(self.header(), self.layout(), self.fill()).map_err(|field| {
            InvariantViolation::Header {
                addr: self.start(),
                field,
            }
        })
    }

    /// Checks the data pages `pages` against their generation entries;
    /// reports the first bad one.
    fn check_pages(&self, pages: std::ops::Range<u64>) -> Result<(), InvariantViolation> {
        for index in pages {
            let generation = self.generation(index);
            // SAFETY: by the contract of the public checks no writer is alive.
            let data = unsafe { self.data_page(index) };
            if let Some(word) = page::first_bad_word(data, index, generation, self.fill()) {
                return Err(InvariantViolation::Page {
                    addr: self.data_page_addr(index),
                    index,
                    generation,
                    word,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pattern;

    fn arena(addr: usize) -> Arena {
        arena_with(addr, Fill::Random)
    }

    fn arena_with(addr: usize, fill: Fill) -> Arena {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 2).expect("layout");
        Arena::create(addr, layout, 5, Pattern::Uniform, fill).expect("create")
    }

    #[test]
    fn finds_a_corrupted_data_page() {
        let arena = arena(0x6200_0000_0000);
        arena.check_invariants().expect("fresh arena");
        let addr = arena.data_page_addr(17);
        // SAFETY: the byte is inside a data page of the arena and no writer exists.
        unsafe { ((addr + 100) as *mut u8).write_volatile(0x5a ^ *((addr + 100) as *const u8)) };
        let bad = arena.check_invariants().expect_err("corrupted");
        assert_eq!(bad.addr(), addr);
        assert!(matches!(
            bad,
            InvariantViolation::Page {
                index: 17,
                generation: 0,
                word: 12,
                ..
            }
        ));
    }

    #[test]
    fn the_parallel_check_finds_a_bad_page_in_any_share() {
        let arena = arena(0x6240_0000_0000);
        let data_pages = arena.layout().data_pages;
        for threads in [0, 1, 2, 3, 7, 64, usize::MAX] {
            arena
                .check_invariants_parallel(threads)
                .expect("fresh arena");
        }
        let corrupt = |index: u64| {
            let addr = arena.data_page_addr(index) + 8;
            // SAFETY: the word is inside a data page of the arena and no writer exists.
            unsafe { (addr as *mut u64).write_volatile(!*(addr as *const u64)) };
        };
        for threads in [2, 3, 7] {
            let shares = threads as u64;
            for s in 0..shares {
                let (start, end) = (s * data_pages / shares, (s + 1) * data_pages / shares);
                for index in [start, (start + end) / 2, end - 1] {
                    corrupt(index);
                    let bad = arena
                        .check_invariants_parallel(threads)
                        .expect_err("corrupted");
                    assert_eq!(bad, arena.check_invariants().expect_err("corrupted"));
                    assert!(
                        matches!(bad, InvariantViolation::Page { index: i, word: 1, .. } if i == index),
                        "{threads} threads, share {s}: {bad}"
                    );
                    corrupt(index);
                }
            }
        }
        arena.check_invariants_parallel(3).expect("restored");

        // Several bad pages: the lowest is reported, wherever its share is.
        let (second, third) = (data_pages / 3 + 1, data_pages - 2);
        corrupt(third);
        corrupt(second);
        corrupt(3);
        let bad = arena.check_invariants_parallel(4).expect_err("corrupted");
        assert_eq!(bad.addr(), arena.data_page_addr(3));
        corrupt(3);
        let bad = arena.check_invariants_parallel(4).expect_err("corrupted");
        assert_eq!(bad.addr(), arena.data_page_addr(second));

        // A bad header comes first, as in the sequential check.
        // SAFETY: the header is ours and no writer exists; the magic is a plain u64.
        unsafe { (arena.start() as *mut u64).write_volatile(0) };
        let bad = arena.check_invariants_parallel(4).expect_err("bad magic");
        assert!(
            matches!(bad, InvariantViolation::Header { field: "magic", .. }),
            "{bad}"
        );
    }

    #[test]
    fn finds_a_stale_generation() {
        let arena = arena(0x6210_0000_0000);
        arena.table()[3].store(1, std::sync::atomic::Ordering::Relaxed);
        let bad = arena.check_invariants().expect_err("stale");
        assert_eq!(bad.addr(), arena.data_page_addr(3));
    }

    #[test]
    fn finds_a_bad_header() {
        let arena = arena(0x6220_0000_0000);
        // SAFETY: the header is ours and no writer exists; the magic is a plain u64.
        unsafe { (arena.start() as *mut u64).write_volatile(0) };
        let bad = arena.check_invariants().expect_err("bad magic");
        assert_eq!(
            bad,
            InvariantViolation::Header {
                addr: arena.start(),
                field: "magic"
            }
        );
    }

    #[test]
    fn checks_compressible_pages_and_the_fill() {
        let arena = arena_with(0x6230_0000_0000, Fill::Compressible);
        arena.check_invariants().expect("fresh arena");
        // A byte in the repeated part of a compressible page.
        let addr = arena.data_page_addr(4);
        // SAFETY: the byte is inside a data page of the arena and no writer exists.
        unsafe { ((addr + 3000) as *mut u8).write_volatile(0x5a ^ *((addr + 3000) as *const u8)) };
        let bad = arena.check_invariants().expect_err("corrupted");
        assert!(
            matches!(
                bad,
                InvariantViolation::Page {
                    index: 4,
                    word: 375,
                    ..
                }
            ),
            "{bad}"
        );
        let fill = (arena.start() + std::mem::offset_of!(Header, fill)) as *mut u32;
        // SAFETY: the fill is a plain u32 of our own header; no writer exists.
        unsafe { fill.write_volatile(Fill::Random as u32) };
        let bad = arena.check_invariants().expect_err("wrong fill");
        assert_eq!(
            bad,
            InvariantViolation::Header {
                addr: arena.start(),
                field: "fill"
            }
        );
    }
}
