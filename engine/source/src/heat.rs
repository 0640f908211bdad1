//! Write heat: for every page a process has dirtied, how many consecutive
//! intervals it has been dirty (its streak) and in how many intervals in all.
//!
//! Pages are kept in one vector sorted by address and merged with each
//! interval's (sorted) dirty set in a single linear pass: no hashing, no
//! per-page allocation, sequential memory.
use pagehop_mem::pages::RangeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageHeat {
    page: u64,
    streak: u32,
    total: u32,
}

#[derive(Debug, Default)]
pub struct WriteHeat {
    pages: Vec<PageHeat>,
    next: Vec<PageHeat>,
}

impl WriteHeat {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one interval's dirty pages; returns how many pages have now been
    /// dirty in at least `hot_after` consecutive intervals.
    pub fn record(&mut self, dirty: &RangeSet, page_size: u64, hot_after: u32) -> u64 {
        self.next.clear();
        let mut old = self.pages.iter().peekable();
        let mut hot = 0;
        for page in dirty.iter_pages(page_size) {
            while let Some(h) = old.next_if(|h| h.page < page) {
                self.next.push(PageHeat { streak: 0, ..*h });
            }
            let entry = match old.next_if(|h| h.page == page) {
                Some(h) => PageHeat {
                    page,
                    streak: h.streak + 1,
                    total: h.total + 1,
                },
                None => PageHeat {
                    page,
                    streak: 1,
                    total: 1,
                },
            };
            if entry.streak >= hot_after {
                hot += 1;
            }
            self.next.push(entry);
        }
        self.next.extend(old.map(|h| PageHeat { streak: 0, ..*h }));
        std::mem::swap(&mut self.pages, &mut self.next);
        hot
    }

    /// Pages dirty in at least `min_streak` consecutive intervals up to the last one.
    pub fn hot(&self, min_streak: u32, page_size: u64) -> RangeSet {
        let mut pages: Vec<u64> = self
            .pages
            .iter()
            .filter(|h| h.streak >= min_streak.max(1))
            .map(|h| h.page)
            .collect();
        RangeSet::from_pages(&mut pages, page_size)
    }

    /// The `n` pages dirty in the most intervals, hottest first: (page, intervals).
    pub fn hottest(&self, n: usize) -> Vec<(u64, u32)> {
        let mut all: Vec<(u64, u32)> = self.pages.iter().map(|h| (h.page, h.total)).collect();
        let n = n.min(all.len());
        if n == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(n - 1, |a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }

    /// Current streak of `page` (0 if clean last interval or never dirty).
    pub fn streak(&self, page: u64) -> u32 {
        self.pages
            .binary_search_by_key(&page, |h| h.page)
            .map_or(0, |i| self.pages[i].streak)
    }

    /// Intervals `page` has been dirty in.
    pub fn total(&self, page: u64) -> u32 {
        self.pages
            .binary_search_by_key(&page, |h| h.page)
            .map_or(0, |i| self.pages[i].total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehop_mem::pages::Range;

    const PS: u64 = 4096;

    #[test]
    fn streaks_and_totals() {
        let mut heat = WriteHeat::new();
        let a = RangeSet::from_ranges(vec![Range::new(0, 2 * PS)]);
        let b = RangeSet::from_ranges(vec![Range::new(PS, 3 * PS)]);
        assert_eq!(heat.record(&a, PS, 2), 0);
        assert_eq!(heat.record(&b, PS, 2), 1); // page 1 dirty twice in a row
        assert_eq!(heat.record(&a, PS, 2), 1); // page 1 again; page 0 restarts
        assert_eq!((heat.streak(PS), heat.total(PS)), (3, 3));
        assert_eq!((heat.streak(0), heat.total(0)), (1, 2));
        assert_eq!((heat.streak(2 * PS), heat.total(2 * PS)), (0, 1));
        assert_eq!(heat.hottest(2), vec![(PS, 3), (0, 2)]);
        assert_eq!(heat.hottest(10).len(), 3);
    }

    #[test]
    fn matches_a_naive_map() {
        use std::collections::HashMap;
        let mut heat = WriteHeat::new();
        let mut naive: HashMap<u64, (u32, u32)> = HashMap::new();
        let mut seed = 99u64;
        for _ in 0..50 {
            let mut pages: Vec<u64> = (0..40)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 58) * PS
                })
                .collect();
            let dirty = RangeSet::from_pages(&mut pages, PS);
            heat.record(&dirty, PS, 3);
            let dirty_pages: std::collections::HashSet<u64> = dirty.iter_pages(PS).collect();
            for (p, v) in naive.iter_mut() {
                if !dirty_pages.contains(p) {
                    v.0 = 0;
                }
            }
            for &p in &dirty_pages {
                let e = naive.entry(p).or_default();
                *e = (e.0 + 1, e.1 + 1);
            }
            for (&p, &(streak, total)) in &naive {
                assert_eq!((heat.streak(p), heat.total(p)), (streak, total));
            }
        }
    }
}
