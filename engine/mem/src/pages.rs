//! Page sets and address ranges.
//!
//! A dirty set arrives as page addresses (from eBPF fault events) or as
//! regions (from PAGEMAP_SCAN); consumers want sorted, merged, half-open
//! ranges. [`RangeSet`] is the canonical form: sorted, disjoint, non-adjacent.

/// A half-open address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end, "range {start:#x}..{end:#x} is inverted");
        Self { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn intersect(&self, other: &Range) -> Option<Range> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(Range { start, end })
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}", self.start, self.end)
    }
}

/// Sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from page addresses (any order, duplicates allowed).
    pub fn from_pages(pages: &mut [u64], page_size: u64) -> Self {
        pages.sort_unstable();
        let mut ranges: Vec<Range> = Vec::new();
        for &page in pages.iter() {
            let page = page & !(page_size - 1);
            match ranges.last_mut() {
                Some(last) if page <= last.end => last.end = last.end.max(page + page_size),
                _ => ranges.push(Range::new(page, page + page_size)),
            }
        }
        Self { ranges }
    }

    /// Builds a set from ranges in any order, overlapping or not.
    pub fn from_ranges(mut input: Vec<Range>) -> Self {
        input.retain(|r| !r.is_empty());
        input.sort_unstable();
        let mut ranges: Vec<Range> = Vec::with_capacity(input.len());
        for r in input {
            match ranges.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => ranges.push(r),
            }
        }
        Self { ranges }
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(Range::len).sum()
    }

    pub fn pages(&self, page_size: u64) -> u64 {
        self.bytes() / page_size
    }

    pub fn contains(&self, addr: u64) -> bool {
        let idx = self.ranges.partition_point(|r| r.end <= addr);
        self.ranges.get(idx).is_some_and(|r| r.contains(addr))
    }

    /// Adds a range, merging with neighbours.
    pub fn insert(&mut self, range: Range) {
        if range.is_empty() {
            return;
        }
        // First range that ends at or after range.start (may touch it).
        let lo = self.ranges.partition_point(|r| r.end < range.start);
        // First range that starts after range.end (cannot touch it).
        let hi = self.ranges.partition_point(|r| r.start <= range.end);
        let mut merged = range;
        if lo < hi {
            merged.start = merged.start.min(self.ranges[lo].start);
            merged.end = merged.end.max(self.ranges[hi - 1].end);
        }
        self.ranges.splice(lo..hi, std::iter::once(merged));
    }

    /// Removes a range, splitting ranges that straddle its ends.
    pub fn remove(&mut self, range: Range) {
        if range.is_empty() {
            return;
        }
        let lo = self.ranges.partition_point(|r| r.end <= range.start);
        let hi = self.ranges.partition_point(|r| r.start < range.end);
        if lo >= hi {
            return;
        }
        let mut keep = Vec::with_capacity(2);
        let first = self.ranges[lo];
        let last = self.ranges[hi - 1];
        if first.start < range.start {
            keep.push(Range::new(first.start, range.start));
        }
        if last.end > range.end {
            keep.push(Range::new(range.end, last.end));
        }
        self.ranges.splice(lo..hi, keep);
    }

    /// Adds every range of `other` (linear merge; `insert` per range would
    /// be quadratic for large, fragmented sets).
    pub fn union(&mut self, other: &RangeSet) {
        if other.ranges.is_empty() {
            return;
        }
        let mut merged: Vec<Range> = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let (mut a, mut b) = (
            self.ranges.iter().peekable(),
            other.ranges.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.start <= y.start => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let r = *next.expect("peeked");
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
    }

    /// The parts of `self` inside `other`.
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            if let Some(r) = a.intersect(&b) {
                out.push(r);
            }
            if a.end < b.end {
                i += 1;
            } else {
                j += 1;
            }
        }
        RangeSet { ranges: out }
    }

    /// The parts of `self` not in `other` (linear sweep).
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut j = 0;
        for &r in &self.ranges {
            let mut start = r.start;
            // Skip the ranges of `other` that end before this one starts.
            while j < other.ranges.len() && other.ranges[j].end <= start {
                j += 1;
            }
            let mut k = j;
            while k < other.ranges.len() && other.ranges[k].start < r.end {
                let cut = other.ranges[k];
                if cut.start > start {
                    out.push(Range::new(start, cut.start));
                }
                start = start.max(cut.end);
                k += 1;
            }
            if start < r.end {
                out.push(Range::new(start, r.end));
            }
        }
        RangeSet { ranges: out }
    }

    /// Ranges grown to swallow gaps of at most `max_gap` bytes; for batching
    /// kernel calls where covering a few clean pages is cheaper than a call.
    pub fn coalesced(&self, max_gap: u64) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::with_capacity(self.ranges.len());
        for r in &self.ranges {
            match out.last_mut() {
                Some(last) if r.start - last.end <= max_gap => last.end = r.end,
                _ => out.push(*r),
            }
        }
        out
    }

    /// Every page address in the set.
    pub fn iter_pages(&self, page_size: u64) -> impl Iterator<Item = u64> + '_ {
        self.ranges
            .iter()
            .flat_map(move |r| (r.start..r.end).step_by(page_size as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const PS: u64 = 4096;

    /// Tiny deterministic generator for the randomized checks.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn naive(set: &BTreeSet<u64>) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for &p in set {
            match out.last_mut() {
                Some(last) if last.end == p => last.end = p + PS,
                _ => out.push(Range::new(p, p + PS)),
            }
        }
        out
    }

    fn pages_of(set: &RangeSet) -> BTreeSet<u64> {
        set.iter_pages(PS).collect()
    }

    #[test]
    fn from_pages_matches_naive_reference() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let n = (xorshift(&mut seed) % 300) as usize;
            let mut pages: Vec<u64> = (0..n).map(|_| (xorshift(&mut seed) % 512) * PS).collect();
            let reference: BTreeSet<u64> = pages.iter().copied().collect();
            let set = RangeSet::from_pages(&mut pages, PS);
            assert_eq!(set.ranges(), naive(&reference).as_slice(), "round {round}");
        }
    }

    #[test]
    fn insert_remove_match_naive_reference() {
        let mut seed = 12345;
        for round in 0..200 {
            let mut set = RangeSet::new();
            let mut reference = BTreeSet::new();
            for _ in 0..40 {
                let a = xorshift(&mut seed) % 256;
                let len = xorshift(&mut seed) % 16;
                let r = Range::new(a * PS, (a + len) * PS);
                if xorshift(&mut seed).is_multiple_of(3) {
                    set.remove(r);
                    for p in a..a + len {
                        reference.remove(&(p * PS));
                    }
                } else {
                    set.insert(r);
                    reference.extend((a..a + len).map(|p| p * PS));
                }
                assert_eq!(set.ranges(), naive(&reference).as_slice(), "round {round}");
            }
        }
    }

    #[test]
    fn intersection_and_difference_match_sets() {
        let mut seed = 777;
        for _ in 0..100 {
            let mut a: Vec<u64> = (0..50).map(|_| (xorshift(&mut seed) % 200) * PS).collect();
            let mut b: Vec<u64> = (0..50).map(|_| (xorshift(&mut seed) % 200) * PS).collect();
            let (sa, sb) = (
                RangeSet::from_pages(&mut a, PS),
                RangeSet::from_pages(&mut b, PS),
            );
            let (pa, pb) = (pages_of(&sa), pages_of(&sb));
            let inter: BTreeSet<u64> = pa.intersection(&pb).copied().collect();
            let diff: BTreeSet<u64> = pa.difference(&pb).copied().collect();
            assert_eq!(pages_of(&sa.intersection(&sb)), inter);
            assert_eq!(pages_of(&sa.difference(&sb)), diff);
            let mut su = sa.clone();
            su.union(&sb);
            let union: BTreeSet<u64> = pa.union(&pb).copied().collect();
            assert_eq!(su.ranges(), naive(&union).as_slice());
            assert!(
                sa.difference(&sb)
                    .ranges()
                    .windows(2)
                    .all(|w| w[0].end < w[1].start)
            );
            assert!(
                sa.intersection(&sb)
                    .ranges()
                    .windows(2)
                    .all(|w| w[0].end < w[1].start)
            );
        }
    }

    #[test]
    fn contains_and_coalesce() {
        let set = RangeSet::from_ranges(vec![Range::new(0, PS), Range::new(3 * PS, 4 * PS)]);
        assert!(set.contains(0) && set.contains(3 * PS + 5));
        assert!(!set.contains(PS) && !set.contains(4 * PS));
        assert_eq!(set.coalesced(2 * PS), vec![Range::new(0, 4 * PS)]);
        assert_eq!(set.coalesced(PS).len(), 2);
    }
}
