//! The dirty-event drain: the userspace side that turns the eBPF programs'
//! write-fault events into a dirty set, per event, side by side:
//!
//! - `ring`: the real thing (root only): pagehop's probes are loaded and
//!   track this process; before each pass (not timed) it writes to 16384
//!   pages of a shared memfd mapping whose page table entries were just
//!   dropped, in shuffled order, so each write is a fault the tracepoint
//!   program puts in the 4 MiB ring; the pass drains the ring with
//!   `Probes::drain_faults` and hands each event to its process's fault
//!   list, as `track::Tracker::step` does;
//! - `synthetic`: the same hand-off over the same events from a `Vec`: the
//!   difference to `ring` is the ring buffer's own cost;
//! - `to_dirty_set`: what `UffdWpTracker::collect` does with the fault list
//!   before its PAGEMAP_SCAN calls (`tracker::plan_scan`, the tracker's own
//!   code; the tracker itself needs a traced process): page addresses to ranges, clipped to the registered
//!   ranges, merged with last interval's pending pages, clean gaps of up to
//!   256 pages coalesced, and the cost model's choice against a full scan;
//!   for 16384 faults at random pages of a 1 GiB heap.
//!
//! Throughput is in events. `cargo bench --bench micro_drain` (the `ring`
//! case needs root: eBPF).
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagehop::mem::pages::{Range, RangeSet};
use pagehop::source::bpf::Probes;
use pagehop::source::tracker::plan_scan;
use pagehop_common::FaultEvent;

mod micro_common;
use micro_common::{PAGE, config};

const PS: u64 = PAGE as u64;
/// Fault events per pass.
const EVENTS: usize = 16384;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut x = seed;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, (xorshift(&mut x) % (i as u64 + 1)) as usize);
    }
    v
}

/// Per-process fault lists keyed by tgid, as the tracker keeps them (a
/// couple of other tracked processes make the lookup realistic).
fn procs(own: u32) -> BTreeMap<i32, Vec<u64>> {
    [own as i32, own as i32 + 1, own as i32 + 2]
        .into_iter()
        .map(|pid| (pid, Vec::with_capacity(EVENTS * 2)))
        .collect()
}

/// `Tracker::step`'s hand-off, with `UffdWpTracker::note_fault` inlined.
#[inline(always)]
fn note(procs: &mut BTreeMap<i32, Vec<u64>>, f: FaultEvent) {
    if let Some(faults) = procs.get_mut(&(f.tgid as i32)) {
        faults.push(f.addr & !(PS - 1));
    }
}

/// A shared memfd mapping of `EVENTS` pages, populated: dropping its page
/// table entries and writing again makes cheap (minor) write faults.
struct Pages {
    ptr: *mut u8,
    len: usize,
    _file: std::fs::File,
}

impl Pages {
    fn new() -> Self {
        let len = EVENTS * PAGE;
        let file = pagehop::sys::memfd(c"micro-drain", len as u64).expect("memfd");
        // SAFETY: a fresh shared mapping of our memfd without MAP_FIXED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        let pages = Self {
            ptr: ptr.cast(),
            len,
            _file: file,
        };
        pages.fault_all(&(0..EVENTS).collect::<Vec<_>>());
        pages
    }

    /// Drops the page table entries, then writes to the pages in `order`:
    /// one write fault each.
    fn fault_all(&self, order: &[usize]) {
        // SAFETY: our mapping; the memfd keeps the contents.
        let ret = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_DONTNEED) };
        assert_eq!(ret, 0, "madvise");
        for &i in order {
            // SAFETY: i < EVENTS, inside the mapping.
            unsafe { self.ptr.add(i * PAGE).write_volatile(i as u8) };
        }
    }

    fn start(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers into it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn drain(c: &mut Criterion) {
    let own = std::process::id();
    let mut g = c.benchmark_group("dirty_drain");
    g.throughput(Throughput::Elements(EVENTS as u64));
    let pages = Pages::new();
    let order = shuffled(EVENTS, 0x2545_f491_4f6c_dd1d);

    // The events a pass produces, for the synthetic case.
    let mut events: Vec<FaultEvent> = order
        .iter()
        .map(|&i| FaultEvent {
            tgid: own,
            flags: 0,
            addr: pages.start() + (i * PAGE) as u64 + 8,
        })
        .collect();

    match Probes::load(true).and_then(|mut p| p.track(own).map(|()| p)) {
        Err(e) => eprintln!(
            "dirty_drain/ring skipped: {}",
            pagehop::mem::error_chain(&e)
        ),
        Ok(mut probes) => {
            let mut procs = procs(own);
            probes.drain_faults(|_| {});
            pages.fault_all(&order);
            let mut seen = Vec::new();
            probes.drain_faults(|f| seen.push(f));
            let ours = seen
                .iter()
                .filter(|f| {
                    f.addr >= pages.start() && f.addr < pages.start() + (EVENTS * PAGE) as u64
                })
                .count();
            eprintln!(
                "dirty_drain/ring: one pass queued {} events, {} of them the pass's writes",
                seen.len(),
                ours
            );
            assert!(
                ours >= EVENTS * 99 / 100,
                "the probes missed the pass's faults"
            );
            events = seen;
            let mut drained = 0usize;
            let mut passes = 0usize;
            g.bench_function(BenchmarkId::new("ring", EVENTS), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        pages.fault_all(&order);
                        for v in procs.values_mut() {
                            v.clear();
                        }
                        let start = Instant::now();
                        drained += probes.drain_faults(|f| note(&mut procs, f));
                        timed += start.elapsed();
                        passes += 1;
                    }
                    timed
                })
            });
            eprintln!(
                "dirty_drain/ring: {:.0} events per pass, {} dropped by the probes",
                drained as f64 / passes.max(1) as f64,
                probes.stats().faults_dropped
            );
        }
    }

    let mut procs = procs(own);
    g.bench_function(BenchmarkId::new("synthetic", EVENTS), |b| {
        b.iter(|| {
            for v in procs.values_mut() {
                v.clear();
            }
            for &f in black_box(&events) {
                note(&mut procs, f);
            }
        })
    });

    // to_dirty_set: random pages of a 1 GiB heap among a few mappings.
    let heap = 0x5555_0000_0000u64;
    let registered = RangeSet::from_ranges(vec![
        Range::new(0x5554_0000_0000, 0x5554_0010_0000),
        Range::new(heap, heap + (1 << 30)),
        Range::new(0x7f00_0000_0000, 0x7f00_0400_0000),
    ]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let faults: Vec<u64> = (0..EVENTS)
        .map(|_| heap + (xorshift(&mut x) % ((1 << 30) / PS)) * PS)
        .collect();
    let mut pending_pages: Vec<u64> = faults[..64].to_vec();
    let pending = RangeSet::from_pages(&mut pending_pages, PS);
    g.bench_function(BenchmarkId::new("to_dirty_set", EVENTS), |b| {
        b.iter_batched_ref(
            || faults.clone(),
            |faults| plan_scan(faults, &pending, &registered, PS),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = drain
}
criterion_main!(benches);
