//! One bit per page over a fixed set of ranges: post-copy's "not sent yet"
//! (source) and "not arrived yet" (destination) sets. Constant-time lookups
//! and updates, a forward scan for the next set page, and conversion back to
//! ranges for the wire. [`SpaceBits`] keeps one set per address space.
use bitvec::vec::BitVec;

use std::collections::BTreeMap;

use crate::pages::{Range, RangeSet};
use crate::space::SpaceKey;

#[derive(Debug, Clone, Default)]
pub struct PageBits {
    /// The covered ranges in address order, each with the index of its first bit.
    ranges: Vec<(Range, usize)>,
    bits: BitVec<u64>,
    page_size: u64,
    set: u64,
}

impl PageBits {
    /// Bits for every page of `ranges`, all set.
    pub fn filled(ranges: &RangeSet, page_size: u64) -> Self {
        let mut next = 0usize;
        let ranges: Vec<(Range, usize)> = ranges
            .ranges()
            .iter()
            .map(|r| {
                let first = next;
                next += (r.len() / page_size) as usize;
                (*r, first)
            })
            .collect();
        Self {
            ranges,
            bits: BitVec::repeat(true, next),
            page_size,
            set: next as u64,
        }
    }

    fn index(&self, addr: u64) -> Option<usize> {
        let at = self.ranges.partition_point(|(r, _)| r.end <= addr);
        let (range, first) = self.ranges.get(at)?;
        range
            .contains(addr)
            .then(|| first + ((addr - range.start) / self.page_size) as usize)
    }

    /// Whether `addr`'s page is covered and set.
    pub fn get(&self, addr: u64) -> bool {
        self.index(addr).is_some_and(|i| self.bits[i])
    }

    /// Clears `addr`'s page; returns whether it was set.
    pub fn clear(&mut self, addr: u64) -> bool {
        let Some(i) = self.index(addr) else {
            return false;
        };
        let was = self.bits.replace(i, false);
        self.set -= was as u64;
        was
    }

    /// Sets `addr`'s page if covered; returns whether it was clear.
    pub fn set(&mut self, addr: u64) -> bool {
        let Some(i) = self.index(addr) else {
            return false;
        };
        let was = self.bits.replace(i, true);
        self.set += (!was) as u64;
        !was
    }

    /// Pages set.
    pub fn count(&self) -> u64 {
        self.set
    }

    /// The first set page at or after `addr`, if any.
    pub fn next_set(&self, addr: u64) -> Option<u64> {
        let mut at = self.ranges.partition_point(|(r, _)| r.end <= addr);
        while let Some(&(range, first)) = self.ranges.get(at) {
            let from = addr.max(range.start);
            let pages = (range.len() / self.page_size) as usize;
            let i = first + ((from - range.start) / self.page_size) as usize;
            let end = first + pages;
            if i < end
                && let Some(k) = self.bits[i..end].first_one()
            {
                return Some(range.start + (i + k - first) as u64 * self.page_size);
            }
            at += 1;
        }
        None
    }

    /// The set pages as ranges.
    pub fn to_ranges(&self) -> RangeSet {
        let mut out = Vec::new();
        let mut at = 0u64;
        while let Some(start) = self.next_set(at) {
            let mut end = start + self.page_size;
            while self.get(end) {
                end += self.page_size;
            }
            out.push(Range::new(start, end));
            at = end;
        }
        RangeSet::from_ranges(out)
    }
}

/// [`PageBits`] for several address spaces: post-copy's sets over a
/// process tree.
#[derive(Debug, Clone, Default)]
pub struct SpaceBits {
    spaces: BTreeMap<SpaceKey, PageBits>,
}

impl SpaceBits {
    /// Bits for every page of each space's ranges, all set.
    pub fn filled(ranges: &BTreeMap<SpaceKey, RangeSet>, page_size: u64) -> Self {
        Self {
            spaces: ranges
                .iter()
                .map(|(&space, r)| (space, PageBits::filled(r, page_size)))
                .collect(),
        }
    }

    /// Whether page `addr` of `space` is covered and set.
    pub fn get(&self, space: SpaceKey, addr: u64) -> bool {
        self.spaces.get(&space).is_some_and(|b| b.get(addr))
    }

    /// Clears page `addr` of `space`; returns whether it was set.
    pub fn clear(&mut self, space: SpaceKey, addr: u64) -> bool {
        self.spaces.get_mut(&space).is_some_and(|b| b.clear(addr))
    }

    /// Pages set, in all spaces.
    pub fn count(&self) -> u64 {
        self.spaces.values().map(PageBits::count).sum()
    }

    /// The first set page of `space` at or after `addr`.
    pub fn next_set(&self, space: SpaceKey, addr: u64) -> Option<u64> {
        self.spaces.get(&space)?.next_set(addr)
    }

    /// The spaces covered, in order.
    pub fn spaces(&self) -> impl Iterator<Item = SpaceKey> + '_ {
        self.spaces.keys().copied()
    }

    /// The set pages of each space as ranges (spaces with none left out).
    pub fn to_ranges(&self) -> BTreeMap<SpaceKey, RangeSet> {
        self.spaces
            .iter()
            .map(|(&space, b)| (space, b.to_ranges()))
            .filter(|(_, r)| !r.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 4096;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        RangeSet::from_ranges(ranges.iter().map(|&(a, b)| Range::new(a, b)).collect())
    }

    #[test]
    fn set_clear_count_and_scan() {
        // 70 pages then 3: the first range spans a word boundary.
        let ranges = set(&[(0x10000, 0x10000 + 70 * PS), (0x900000, 0x900000 + 3 * PS)]);
        let mut bits = PageBits::filled(&ranges, PS);
        assert_eq!(bits.count(), 73);
        assert!(bits.get(0x10000) && bits.get(0x900000 + 2 * PS));
        assert!(!bits.get(0x10000 - PS) && !bits.get(0x900000 + 3 * PS));
        assert!(bits.clear(0x10000));
        assert!(!bits.clear(0x10000));
        assert!(!bits.clear(0x5000), "outside every range");
        assert_eq!(bits.count(), 72);
        assert_eq!(bits.next_set(0), Some(0x10000 + PS));
        for i in 1..70 {
            bits.clear(0x10000 + i * PS);
        }
        assert_eq!(bits.next_set(0), Some(0x900000));
        assert_eq!(bits.next_set(0x900000 + PS), Some(0x900000 + PS));
        assert!(bits.set(0x10000 + 65 * PS));
        assert!(!bits.set(0x10000 + 65 * PS));
        assert_eq!(bits.next_set(0), Some(0x10000 + 65 * PS));
        assert_eq!(
            bits.to_ranges(),
            set(&[
                (0x10000 + 65 * PS, 0x10000 + 66 * PS),
                (0x900000, 0x900000 + 3 * PS)
            ])
        );
        for a in [
            0x10000 + 65 * PS,
            0x900000,
            0x900000 + PS,
            0x900000 + 2 * PS,
        ] {
            bits.clear(a);
        }
        assert_eq!(bits.count(), 0);
        assert_eq!(bits.next_set(0), None);
        assert!(bits.to_ranges().is_empty());
    }

    #[test]
    fn empty_set() {
        let bits = PageBits::filled(&RangeSet::new(), PS);
        assert_eq!(bits.count(), 0);
        assert!(!bits.get(0));
        assert_eq!(bits.next_set(0), None);
    }

    #[test]
    fn space_bits_keep_spaces_apart() {
        let ranges: BTreeMap<SpaceKey, RangeSet> = [
            (SpaceKey(1), set(&[(0x1000, 0x3000)])),
            (SpaceKey(2), set(&[(0x1000, 0x2000)])),
        ]
        .into();
        let mut bits = SpaceBits::filled(&ranges, 0x1000);
        assert_eq!(bits.count(), 3);
        assert!(bits.clear(SpaceKey(1), 0x1000));
        assert!(
            bits.get(SpaceKey(2), 0x1000),
            "the other space keeps its page"
        );
        assert!(!bits.clear(SpaceKey(3), 0x1000));
        assert_eq!(bits.next_set(SpaceKey(1), 0), Some(0x2000));
        assert_eq!(bits.to_ranges().len(), 2);
        assert!(bits.clear(SpaceKey(2), 0x1000));
        assert_eq!(
            bits.to_ranges().keys().copied().collect::<Vec<_>>(),
            vec![SpaceKey(1)]
        );
    }
}
