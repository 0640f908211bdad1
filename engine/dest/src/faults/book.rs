//! Per-address-space bookkeeping of the fault loop, without any descriptor:
//! which pages are present, which ranges are served locally with zero pages,
//! and which ranges were moved by mremap (so their source addresses differ
//! from their addresses in the process).
use std::collections::{BTreeMap, BTreeSet};

use pagehop_mem::pages::{Range, RangeSet};

/// The state of one address space (the restored process or a fork child).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Book {
    /// Pages (process addresses) known to be installed.
    present: BTreeSet<u64>,
    /// Ranges whose source data is obsolete (zapped by madvise, unmapped, the
    /// old place of an mremap): their faults get zero pages, and deliveries
    /// from the source are not installed there.
    local: RangeSet,
    /// Moved ranges: process start -> (process end, source start). Addresses
    /// outside every entry are their own source addresses.
    moved: BTreeMap<u64, (u64, u64)>,
}

impl Book {
    pub(super) fn is_present(&self, addr: u64) -> bool {
        self.present.contains(&addr)
    }

    pub(super) fn set_present(&mut self, addr: u64) {
        self.present.insert(addr);
    }

    pub(super) fn present_pages(&self) -> usize {
        self.present.len()
    }

    pub(super) fn is_local(&self, addr: u64) -> bool {
        self.local.contains(addr)
    }

    /// The source address of process address `addr`.
    pub(super) fn source_of(&self, addr: u64) -> u64 {
        match self.moved.range(..=addr).next_back() {
            Some((&start, &(end, source))) if addr < end => source + (addr - start),
            _ => addr,
        }
    }

    /// Where source page `source` lives in this process, if anywhere: not
    /// when its range moved away and something else is at its old address.
    pub(super) fn place_of(&self, source: u64) -> Option<u64> {
        for (&start, &(end, from)) in &self.moved {
            if from <= source && source < from + (end - start) {
                return Some(start + (source - from));
            }
        }
        (self.source_of(source) == source && !self.is_local(source)).then_some(source)
    }

    /// `madvise(MADV_DONTNEED/REMOVE)`: the range reads as zeroes from now on.
    pub(super) fn remove(&mut self, range: Range) {
        self.drop_present(range);
        self.local.insert(range);
    }

    /// `munmap`: the range is gone. Should it be mapped and registered
    /// again, it is a new mapping, so it is served locally too.
    pub(super) fn unmap(&mut self, range: Range) {
        self.drop_present(range);
        self.clear_moved(range);
        self.local.insert(range);
    }

    /// `mremap` of `len` bytes from `from` to `to`: the pages, local ranges
    /// and source addresses move along; the old place reads as new memory.
    pub(super) fn remap(&mut self, from: u64, to: u64, len: u64) {
        let (old, new) = (Range::new(from, from + len), Range::new(to, to + len));
        let shift = |addr: u64| addr - from + to;
        // Source pieces of the old range, before anything is cleared.
        let mut pieces = Vec::new();
        let mut at = from;
        while at < old.end {
            let (end, source) = match self.moved.range(..=at).next_back() {
                Some((&start, &(end, source))) if at < end => {
                    (end.min(old.end), source + (at - start))
                }
                _ => {
                    let next = self
                        .moved
                        .range(at..)
                        .next()
                        .map_or(old.end, |(&s, _)| s.min(old.end));
                    (next, at)
                }
            };
            pieces.push((shift(at), shift(end), source));
            at = end;
        }
        let present: Vec<u64> = self.present.range(old.start..old.end).copied().collect();
        let local = self.local.intersection(&RangeSet::from_ranges(vec![old]));

        self.drop_present(new);
        self.clear_moved(new);
        self.local.remove(new);
        self.unmap(old);

        self.present.extend(present.into_iter().map(shift));
        for r in local.ranges() {
            self.local.insert(Range::new(shift(r.start), shift(r.end)));
        }
        for (start, end, source) in pieces {
            if start != source {
                self.moved.insert(start, (end, source));
            }
        }
    }

    fn drop_present(&mut self, range: Range) {
        let gone: Vec<u64> = self
            .present
            .range(range.start..range.end)
            .copied()
            .collect();
        for page in gone {
            self.present.remove(&page);
        }
    }

    /// Removes `range` from the moved entries, splitting entries at its ends.
    fn clear_moved(&mut self, range: Range) {
        let overlapping: Vec<(u64, (u64, u64))> = self
            .moved
            .range(..range.end)
            .filter(|(_, (end, _))| *end > range.start)
            .map(|(&s, &v)| (s, v))
            .collect();
        for (start, (end, source)) in overlapping {
            self.moved.remove(&start);
            if start < range.start {
                self.moved.insert(start, (range.start, source));
            }
            if end > range.end {
                self.moved
                    .insert(range.end, (end, source + (range.end - start)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 0x1000;

    #[test]
    fn remove_and_unmap_make_ranges_local() {
        let mut b = Book::default();
        for i in 0..8 {
            b.set_present(i * P);
        }
        b.remove(Range::new(2 * P, 4 * P));
        assert!(!b.is_present(2 * P) && !b.is_present(3 * P) && b.is_present(4 * P));
        assert!(b.is_local(3 * P) && !b.is_local(4 * P));
        assert_eq!(b.place_of(3 * P), None, "zapped pages take no source data");
        assert_eq!(b.place_of(5 * P), Some(5 * P));
        b.unmap(Range::new(6 * P, 8 * P));
        assert_eq!(b.present_pages(), 4);
        assert!(b.is_local(7 * P));
    }

    #[test]
    fn remap_moves_pages_and_source_addresses() {
        let mut b = Book::default();
        b.set_present(0x10 * P);
        b.remove(Range::new(0x11 * P, 0x12 * P));
        // Move 4 pages from 0x10 to 0x40.
        b.remap(0x10 * P, 0x40 * P, 4 * P);
        assert!(b.is_present(0x40 * P) && !b.is_present(0x10 * P));
        assert!(b.is_local(0x41 * P), "a zapped page stays zapped");
        assert!(b.is_local(0x10 * P), "the old place is new memory");
        assert_eq!(b.source_of(0x42 * P), 0x12 * P);
        assert_eq!(b.source_of(0x44 * P), 0x44 * P);
        assert_eq!(b.place_of(0x13 * P), Some(0x43 * P));
        assert_eq!(b.place_of(0x43 * P), None, "0x43 holds source page 0x13");
        assert_eq!(b.place_of(0x50 * P), Some(0x50 * P), "untouched identity");

        // Move the middle of the moved range again: pieces compose.
        b.remap(0x42 * P, 0x80 * P, P);
        assert_eq!(b.source_of(0x80 * P), 0x12 * P);
        assert_eq!(b.source_of(0x43 * P), 0x13 * P);
        assert_eq!(b.source_of(0x40 * P), 0x10 * P);
        assert_eq!(b.place_of(0x12 * P), Some(0x80 * P));
        assert_eq!(b.place_of(0x42 * P), None, "0x42 was vacated");

        // Moving back home leaves no entry behind.
        b.remap(0x80 * P, 0x12 * P, P);
        assert_eq!(b.source_of(0x12 * P), 0x12 * P);
        assert_eq!(b.place_of(0x12 * P), Some(0x12 * P));
        assert!(!b.is_local(0x12 * P));
    }
}
