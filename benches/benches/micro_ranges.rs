//! Page sets to ranges, side by side, for the same 16384 pages (64 MiB)
//! inside a 1 GiB span laid out three ways (sequential, clusters of 16,
//! random):
//!
//! - `from_pages`: page addresses, unsorted as fault events deliver them,
//!   to a `RangeSet` (the eBPF backend's faulted set);
//! - `from_ranges`: PAGEMAP_SCAN's region list to a `RangeSet`;
//! - `page_bits`: post-copy's page bitmap back to ranges (`PageBits::to_ranges`);
//! - `pagemap_scan`: the real thing on this process's own memory:
//!   `Pagemap::present_in` (PAGEMAP_SCAN ioctls, Linux 6.7+, then
//!   `from_ranges`) over the 1 GiB mapping with those pages resident.
//!
//! Throughput is in pages of the set (elements). `cargo bench --bench
//! micro_ranges` (no root needed).
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagehop::mem::page_bits::PageBits;
use pagehop::mem::pages::{Range, RangeSet};
use pagehop::source::pagemap::Pagemap;

mod micro_common;
use micro_common::{PAGE, config};

const PS: u64 = PAGE as u64;
/// Pages in the set.
const SET_PAGES: u64 = 16384;
/// Pages in the span the set lies in (1 GiB).
const SPAN_PAGES: u64 = 262_144;

#[derive(Clone, Copy)]
enum Pattern {
    Sequential,
    Clustered,
    Random,
}

impl Pattern {
    const ALL: [Pattern; 3] = [Pattern::Sequential, Pattern::Clustered, Pattern::Random];

    fn name(self) -> &'static str {
        match self {
            Pattern::Sequential => "sequential",
            Pattern::Clustered => "clusters-of-16",
            Pattern::Random => "random",
        }
    }

    /// Page indices in the span, in the order a fault stream would report
    /// them (shuffled, but for sequential).
    fn indices(self) -> Vec<u64> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut v: Vec<u64> = match self {
            Pattern::Sequential => return (0..SET_PAGES).collect(),
            Pattern::Clustered => {
                let gap = SPAN_PAGES / (SET_PAGES / 16);
                (0..SET_PAGES).map(|i| (i / 16) * gap + i % 16).collect()
            }
            Pattern::Random => {
                let mut seen = vec![false; SPAN_PAGES as usize];
                let mut v = Vec::with_capacity(SET_PAGES as usize);
                while v.len() < SET_PAGES as usize {
                    let i = next() % SPAN_PAGES;
                    if !std::mem::replace(&mut seen[i as usize], true) {
                        v.push(i);
                    }
                }
                v
            }
        };
        // Fisher-Yates: events do not arrive sorted.
        for i in (1..v.len()).rev() {
            v.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        v
    }
}

/// An anonymous mapping of the span, without huge pages, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
}

impl Mapping {
    fn new() -> Self {
        let len = (SPAN_PAGES * PS) as usize;
        // SAFETY: a fresh anonymous mapping without MAP_FIXED replaces nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        // SAFETY: the range is the mapping just made. Huge pages would make
        // a whole 2 MiB resident on one touch.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        Self { ptr: ptr.cast() }
    }

    fn start(&self) -> u64 {
        self.ptr as u64
    }

    /// Writes one byte to each of the pages `indices`.
    fn touch(&self, indices: &[u64]) {
        for &i in indices {
            // SAFETY: i < SPAN_PAGES, so the byte is inside the mapping.
            unsafe { self.ptr.add((i * PS) as usize).write_volatile(1) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers into it any more.
        unsafe { libc::munmap(self.ptr.cast(), (SPAN_PAGES * PS) as usize) };
    }
}

fn to_ranges(c: &mut Criterion) {
    let mut g = c.benchmark_group("bitmap_to_ranges");
    g.throughput(Throughput::Elements(SET_PAGES));
    let base = 0x6000_0000_0000u64;
    let pagemap = Pagemap::open(std::process::id() as i32);
    if let Err(e) = &pagemap {
        eprintln!("pagemap_scan skipped: {e}");
    }
    let mut pagemap = pagemap.ok();
    for pattern in Pattern::ALL {
        let indices = pattern.indices();
        let addrs: Vec<u64> = indices.iter().map(|i| base + i * PS).collect();
        let expected = RangeSet::from_pages(&mut addrs.clone(), PS);

        g.bench_function(BenchmarkId::new("from_pages", pattern.name()), |b| {
            b.iter_batched_ref(
                || addrs.clone(),
                |pages| RangeSet::from_pages(black_box(pages), PS),
                BatchSize::SmallInput,
            )
        });

        // PAGEMAP_SCAN reports maximal regions, in address order.
        let regions: Vec<Range> = expected.ranges().to_vec();
        g.bench_function(BenchmarkId::new("from_ranges", pattern.name()), |b| {
            b.iter_batched(
                || regions.clone(),
                |r| RangeSet::from_ranges(black_box(r)),
                BatchSize::SmallInput,
            )
        });

        let span = RangeSet::from_ranges(vec![Range::new(base, base + SPAN_PAGES * PS)]);
        let mut bits = PageBits::filled(&span, PS);
        for a in (base..base + SPAN_PAGES * PS).step_by(PAGE) {
            if !expected.contains(a) {
                bits.clear(a);
            }
        }
        assert_eq!(bits.to_ranges(), expected);
        g.bench_function(BenchmarkId::new("page_bits", pattern.name()), |b| {
            b.iter(|| black_box(&bits).to_ranges())
        });

        if let Some(pagemap) = pagemap.as_mut() {
            let mapping = Mapping::new();
            mapping.touch(&indices);
            let whole = RangeSet::from_ranges(vec![Range::new(
                mapping.start(),
                mapping.start() + SPAN_PAGES * PS,
            )]);
            let present = pagemap.present_in(&whole).expect("PAGEMAP_SCAN");
            assert_eq!(present.pages(PS), SET_PAGES, "{}", pattern.name());
            g.bench_function(BenchmarkId::new("pagemap_scan", pattern.name()), |b| {
                b.iter(|| pagemap.present_in(black_box(&whole)).expect("scan"))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = to_ranges
}
criterion_main!(benches);
