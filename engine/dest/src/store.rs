//! The destination's page store: received memory, kept until switchover.
//!
//! One [`SpaceStore`] per address space of the source (one per process of a
//! tree), and in it one memfd-backed region per mapping (the layout the
//! source sent),
//! so memory is allocated only for pages that arrive, and each page is
//! copied once: from the receive buffer into the store. A page is absent
//! (never sent), zero (sent as a hole) or data.
//!
//! The store is a [`PageSink`] (the receiver threads put pages into it), and
//! at the switch it empties itself into the output sink ([`PageStore::drain_into`],
//! [`PageStore::drain_parallel`]).
use std::collections::BTreeMap;
use std::io;

use bitvec::vec::BitVec;

use memmap2::MmapMut;

pub use pagehop_mem::PageState;
use pagehop_mem::SpaceKey;
use pagehop_mem::pages::Range;
use pagehop_mem::sink::{self, DRAIN_BATCH, PageSink};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{space} is not stored here")]
    UnknownSpace { space: SpaceKey },
    #[error("page {addr:#x} of {space} is outside every mapping the source announced")]
    OutsideLayout { space: SpaceKey, addr: u64 },
    #[error("page {addr:#x}: got {len} bytes, pages are {page_size}")]
    PageSize {
        addr: u64,
        len: usize,
        page_size: usize,
    },
    #[error("creating the store for {range}")]
    Create {
        range: Range,
        #[source]
        source: io::Error,
    },
}

struct Region {
    range: Range,
    map: MmapMut,
    /// Bit per page: something was received.
    present: BitVec<u64>,
    /// Bit per page: what was received is a zero page.
    zero: BitVec<u64>,
}

impl Region {
    fn new(range: Range, page_size: usize) -> Result<Self, StoreError> {
        let create = |source| StoreError::Create { range, source };
        let map = pagehop_sys::memfd_mapping(c"pagehop-store", range.len()).map_err(create)?;
        let pages = (range.len() / page_size as u64) as usize;
        Ok(Self {
            range,
            map,
            present: BitVec::repeat(false, pages),
            zero: BitVec::repeat(false, pages),
        })
    }
}

/// The received pages of one address space.
pub struct SpaceStore {
    space: SpaceKey,
    page_size: usize,
    regions: BTreeMap<u64, Region>,
    data_pages: u64,
    zero_pages: u64,
}

impl SpaceStore {
    fn new(space: SpaceKey, page_size: usize) -> Self {
        Self {
            space,
            page_size,
            regions: BTreeMap::new(),
            data_pages: 0,
            zero_pages: 0,
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Follows a new layout: keeps what is received for ranges that still
    /// exist, drops the rest, adds regions for new ranges.
    fn follow_layout(&mut self, ranges: &[Range]) -> Result<(), StoreError> {
        let mut next = BTreeMap::new();
        for &range in ranges {
            let region = match self.regions.remove(&range.start) {
                Some(old) if old.range == range => old,
                _ => Region::new(range, self.page_size)?,
            };
            next.insert(range.start, region);
        }
        // Regions that changed shape lose their contents: the source resends
        // whatever lives there now (it treats a changed mapping as all dirty).
        self.regions = next;
        Ok(())
    }

    fn locate(&self, addr: u64) -> Result<(&Region, usize), StoreError> {
        let (_, region) = self
            .regions
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| r.range.contains(addr))
            .ok_or(StoreError::OutsideLayout {
                space: self.space,
                addr,
            })?;
        Ok((
            region,
            ((addr - region.range.start) / self.page_size as u64) as usize,
        ))
    }

    /// Stores a page (`None`: a zero page).
    fn insert(&mut self, addr: u64, page: Option<&[u8]>) -> Result<(), StoreError> {
        let page_size = self.page_size;
        let (start, index) = {
            let (region, index) = self.locate(addr)?;
            (region.range.start, index)
        };
        let region = self.regions.get_mut(&start).expect("located region");
        match page {
            Some(data) => {
                if data.len() != page_size {
                    return Err(StoreError::PageSize {
                        addr,
                        len: data.len(),
                        page_size,
                    });
                }
                region.map[index * page_size..(index + 1) * page_size].copy_from_slice(data);
                region.zero.set(index, false);
                self.data_pages += 1;
            }
            None => {
                region.zero.set(index, true);
                self.zero_pages += 1;
            }
        }
        region.present.set(index, true);
        Ok(())
    }

    pub fn get(&self, addr: u64) -> PageState<'_> {
        let Ok((region, index)) = self.locate(addr) else {
            return PageState::Absent;
        };
        if !region.present[index] {
            PageState::Absent
        } else if region.zero[index] {
            PageState::Zero
        } else {
            PageState::Data(&region.map[index * self.page_size..(index + 1) * self.page_size])
        }
    }

    /// The layout ranges.
    pub fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
        self.regions.values().map(|r| r.range)
    }

    /// Every received page in address order: (address, None for zero or the data).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> + '_ {
        let ps = self.page_size;
        self.regions.values().flat_map(move |r| {
            r.present.iter_ones().map(move |i| {
                let addr = r.range.start + (i * ps) as u64;
                let data = (!r.zero[i]).then(|| &r.map[i * ps..(i + 1) * ps]);
                (addr, data)
            })
        })
    }

    /// Pages received as data and as zero pages (counting repeats).
    pub fn received(&self) -> (u64, u64) {
        (self.data_pages, self.zero_pages)
    }
}

/// The received pages of every address space.
pub struct PageStore {
    page_size: usize,
    spaces: BTreeMap<SpaceKey, SpaceStore>,
}

impl PageStore {
    pub fn new(page_size: usize) -> Self {
        Self {
            page_size,
            spaces: BTreeMap::new(),
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The store of one address space, if the source announced it.
    pub fn space(&self, space: SpaceKey) -> Option<&SpaceStore> {
        self.spaces.get(&space)
    }

    /// The address spaces the source announced.
    pub fn spaces(&self) -> impl Iterator<Item = SpaceKey> + '_ {
        self.spaces.keys().copied()
    }

    /// What the store holds for a page.
    pub fn get(&self, space: SpaceKey, addr: u64) -> PageState<'_> {
        self.spaces
            .get(&space)
            .map_or(PageState::Absent, |s| s.get(addr))
    }

    /// Pages received as data and as zero pages, in all spaces (counting repeats).
    pub fn received(&self) -> (u64, u64) {
        self.spaces.values().fold((0, 0), |(d, z), s| {
            let (sd, sz) = s.received();
            (d + sd, z + sz)
        })
    }

    /// Hands every stored page to `sink`, space by space, in address order.
    pub fn drain_into<S: PageSink + ?Sized>(&self, sink: &mut S) -> Result<(), S::Error> {
        for (&space, store) in &self.spaces {
            sink::drain(space, store.iter(), sink)?;
        }
        Ok(())
    }

    /// Hands every stored page of `space` to one of `sinks`, a
    /// [`DRAIN_BATCH`] of pages to each in turn, with one thread per sink
    /// (installing into a fresh process touches each page for the first
    /// time: it pays to use every core). The sinks' `finish` is the caller's.
    pub fn drain_parallel<S: PageSink + Send>(
        &self,
        space: SpaceKey,
        sinks: &mut [S],
    ) -> Result<(), S::Error> {
        let Some(store) = self.spaces.get(&space) else {
            return Ok(());
        };
        let lanes = sinks.len();
        let results: Vec<Result<(), S::Error>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sinks
                .iter_mut()
                .enumerate()
                .map(|(lane, sink)| {
                    scope.spawn(move || {
                        let mut batch = Vec::with_capacity(DRAIN_BATCH);
                        let mut number = 0usize;
                        let mut flush = |batch: &mut Vec<(u64, Option<&[u8]>)>| {
                            let mine = number % lanes == lane;
                            number += 1;
                            let result = if mine && !batch.is_empty() {
                                sink.put(space, batch)
                            } else {
                                Ok(())
                            };
                            batch.clear();
                            result
                        };
                        for page in store.iter() {
                            batch.push(page);
                            if batch.len() == DRAIN_BATCH {
                                flush(&mut batch)?;
                            }
                        }
                        flush(&mut batch)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("drain thread"))
                .collect()
        });
        results.into_iter().collect()
    }
}

impl PageSink for PageStore {
    type Error = StoreError;

    /// Follows a new layout of `space` (creating it); an empty layout means
    /// the process is gone and drops what was received for it.
    fn set_layout(&mut self, space: SpaceKey, ranges: &[Range]) -> Result<(), StoreError> {
        if ranges.is_empty() {
            self.spaces.remove(&space);
            return Ok(());
        }
        let page_size = self.page_size;
        self.spaces
            .entry(space)
            .or_insert_with(|| SpaceStore::new(space, page_size))
            .follow_layout(ranges)
    }

    fn put(&mut self, space: SpaceKey, pages: &[(u64, Option<&[u8]>)]) -> Result<(), StoreError> {
        let store = match self.spaces.get_mut(&space) {
            Some(store) => store,
            None => {
                return match pages.first() {
                    Some(&(addr, _)) => Err(StoreError::OutsideLayout { space, addr }),
                    None => Ok(()),
                };
            }
        };
        for &(addr, page) in pages {
            store.insert(addr, page)?;
        }
        Ok(())
    }

    /// The store keeps what it took; finishing only counts it.
    fn finish(&mut self) -> Result<u64, StoreError> {
        Ok(self.spaces.values().map(|s| s.iter().count() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;

    const ROOT: SpaceKey = SpaceKey::ROOT;

    #[test]
    fn put_get_and_layout_changes() {
        let mut store = PageStore::new(PS);
        let a = Range::new(0x10000, 0x10000 + 4 * PS as u64);
        let b = Range::new(0x40000, 0x40000 + 2 * PS as u64);
        store.set_layout(ROOT, &[a, b]).expect("layout");
        let page = vec![7u8; PS];
        store
            .put(ROOT, &[(0x11000, Some(&page)), (0x40000, None)])
            .expect("put");
        assert_eq!(store.get(ROOT, 0x11000), PageState::Data(&page));
        assert_eq!(store.get(ROOT, 0x40000), PageState::Zero);
        assert_eq!(store.get(ROOT, 0x10000), PageState::Absent);
        assert!(matches!(
            store.put(ROOT, &[(0x30000, None)]),
            Err(StoreError::OutsideLayout { .. })
        ));
        assert!(matches!(
            store.put(ROOT, &[(0x10000, Some(&page[..10]))]),
            Err(StoreError::PageSize { .. })
        ));
        let pages: Vec<u64> = store
            .space(ROOT)
            .expect("root")
            .iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(pages, vec![0x11000, 0x40000]);
        // b vanishes, a stays with its contents.
        store.set_layout(ROOT, &[a]).expect("layout");
        assert_eq!(store.get(ROOT, 0x11000), PageState::Data(&page));
        assert_eq!(store.get(ROOT, 0x40000), PageState::Absent);
        // A zero page replaces data.
        store.put(ROOT, &[(0x11000, None)]).expect("zero");
        assert_eq!(store.get(ROOT, 0x11000), PageState::Zero);
    }

    #[test]
    fn spaces_are_stored_apart() {
        let mut store = PageStore::new(PS);
        let r = Range::new(0x10000, 0x10000 + 2 * PS as u64);
        let (one, two) = (SpaceKey(1), SpaceKey(2));
        store.set_layout(one, &[r]).expect("layout");
        store.set_layout(two, &[r]).expect("layout");
        let (p1, p2) = (vec![1u8; PS], vec![2u8; PS]);
        store.put(one, &[(0x10000, Some(&p1))]).expect("put");
        store.put(two, &[(0x10000, Some(&p2))]).expect("put");
        assert_eq!(store.get(one, 0x10000), PageState::Data(&p1));
        assert_eq!(store.get(two, 0x10000), PageState::Data(&p2));
        assert_eq!(store.spaces().collect::<Vec<_>>(), vec![one, two]);
        assert_eq!(store.received(), (2, 0));
        // A space nobody announced takes no pages.
        assert!(matches!(
            store.put(SpaceKey(3), &[(0x10000, None)]),
            Err(StoreError::OutsideLayout { .. })
        ));
        // An empty layout: the process is gone.
        store.set_layout(one, &[]).expect("gone");
        assert_eq!(store.get(one, 0x10000), PageState::Absent);
        assert_eq!(store.spaces().collect::<Vec<_>>(), vec![two]);
    }

    /// A sink that remembers what it was given.
    #[derive(Default)]
    struct Recorder {
        pages: Vec<(u64, Option<Vec<u8>>)>,
        finished: bool,
    }

    impl PageSink for Recorder {
        type Error = StoreError;

        fn set_layout(&mut self, _: SpaceKey, _: &[Range]) -> Result<(), StoreError> {
            Ok(())
        }

        fn put(&mut self, _: SpaceKey, pages: &[(u64, Option<&[u8]>)]) -> Result<(), StoreError> {
            assert!(pages.len() <= DRAIN_BATCH);
            assert!(pages.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
            self.pages
                .extend(pages.iter().map(|&(a, p)| (a, p.map(<[u8]>::to_vec))));
            Ok(())
        }

        fn finish(&mut self) -> Result<u64, StoreError> {
            self.finished = true;
            Ok(self.pages.len() as u64)
        }
    }

    #[test]
    fn drains_every_page_once_over_parallel_sinks() {
        let mut store = PageStore::new(PS);
        let range = Range::new(0x100_0000, 0x100_0000 + 2000 * PS as u64);
        store.set_layout(SpaceKey::ROOT, &[range]).expect("layout");
        let pages: Vec<(u64, Option<Vec<u8>>)> = (0..2000u64)
            .filter(|i| i % 3 != 0)
            .map(|i| {
                let addr = range.start + i * PS as u64;
                (addr, (i % 5 != 0).then(|| vec![(i % 251) as u8; PS]))
            })
            .collect();
        let borrowed: Vec<(u64, Option<&[u8]>)> =
            pages.iter().map(|(a, p)| (*a, p.as_deref())).collect();
        store.put(SpaceKey::ROOT, &borrowed).expect("put");
        let mut sinks: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
        store
            .drain_parallel(SpaceKey::ROOT, &mut sinks)
            .expect("drain");
        let mut got: Vec<(u64, Option<Vec<u8>>)> = sinks
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.pages))
            .collect();
        got.sort_by_key(|(a, _)| *a);
        assert_eq!(got, pages, "every stored page, once, with its content");
        let mut one = Recorder::default();
        store.drain_into(&mut one).expect("drain");
        assert_eq!(one.pages, pages);
        assert_eq!(store.finish().expect("finish"), pages.len() as u64);
        assert!(matches!(
            store.put(SpaceKey(1), &borrowed[..1]),
            Err(StoreError::OutsideLayout { .. })
        ));
    }
}
