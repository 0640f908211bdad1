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
        check_header(self.header(), self.layout(), self.fill()).map_err(|field| {
            InvariantViolation::Header {
                addr: self.start(),
                field,
            }
        })?;
        for index in 0..self.layout().data_pages {
            let generation = self.generation(index);
            // SAFETY: by this method's contract no writer is alive.
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
    use crate::workload::Pattern;

    fn arena(addr: usize) -> Arena {
        arena_with(addr, Fill::Random)
    }

    fn arena_with(addr: usize, fill: Fill) -> Arena {
        let layout = Layout::new(1 << 20, crate::sys::page_size(), 2).expect("layout");
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
