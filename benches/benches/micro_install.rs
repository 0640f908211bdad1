//! userfaultfd install rate: pages per second put into missing pages with
//! `Installer::copy_batch` (one `UFFDIO_COPY` per batch of contiguous
//! pages), for batches of 1, 16 and 256 pages side by side, and 256-page
//! `UFFDIO_ZEROPAGE` runs for comparison.
//!
//! The target is an 8 MiB anonymous mapping of this process, registered in
//! MISSING mode on a userfaultfd made here; after each pass its pages are
//! dropped (`MADV_DONTNEED`, not timed) so they are missing again. The
//! guest memory behind them has been touched before, so this is the warm
//! rate: the first touch of fresh guest memory costs more (see the README).
//!
//! `cargo bench --bench micro_install` (needs userfaultfd: root, or
//! vm.unprivileged_userfaultfd=1).
use std::hint::black_box;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagehop::dest::install::Installer;
use pagehop::sys::uffd;

mod micro_common;
use micro_common::{Texture, config, pages};

/// Pages installed per pass (8 MiB).
const PASS_PAGES: usize = 2048;

/// An anonymous mapping registered in MISSING mode, and its installer.
struct Target {
    ptr: NonNull<u8>,
    len: usize,
    installer: Installer,
}

impl Target {
    fn new(pages: usize) -> Result<Self, String> {
        let ps = pagehop::sys::page_size();
        let len = pages * ps;
        // SAFETY: a fresh anonymous mapping without MAP_FIXED replaces nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the range is the mapping just made; keep it in 4 KiB pages.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        let ptr = NonNull::new(ptr.cast()).expect("non-null mapping");
        let fd = uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY)
            .or_else(|_| uffd::userfaultfd(libc::O_CLOEXEC))
            .map_err(|e| format!("userfaultfd: {e}"))?;
        uffd::api(fd.as_fd(), 0).map_err(|e| format!("UFFDIO_API: {e}"))?;
        uffd::register(
            fd.as_fd(),
            ptr.as_ptr() as u64,
            len as u64,
            uffd::UFFDIO_REGISTER_MODE_MISSING,
        )
        .map_err(|e| format!("UFFDIO_REGISTER: {e}"))?;
        Ok(Self {
            ptr,
            len,
            installer: Installer::new(fd),
        })
    }

    fn start(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Drops every page: all missing again.
    fn zap(&self) {
        // SAFETY: the range is our mapping; its contents are not needed.
        let ret = unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
        assert_eq!(ret, 0, "madvise(MADV_DONTNEED)");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers into it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn install(c: &mut Criterion) {
    let target = match Target::new(PASS_PAGES) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("micro_install skipped: {e}");
            return;
        }
    };
    let ps = target.installer.page_size();
    let src = pages(Texture::Random, PASS_PAGES);
    // One entry per page, slices of one buffer, so that copy_batch merges a
    // batch into one UFFDIO_COPY.
    let data: Vec<(u64, Option<&[u8]>)> = src
        .chunks_exact(ps)
        .enumerate()
        .map(|(i, page)| (target.start() + (i * ps) as u64, Some(page)))
        .collect();
    let zeros: Vec<(u64, Option<&[u8]>)> = data.iter().map(|&(a, _)| (a, None)).collect();

    let mut g = c.benchmark_group("uffd_install");
    g.throughput(Throughput::Elements(PASS_PAGES as u64));
    for (op, entries, batch) in [
        ("copy", &data, 1usize),
        ("copy", &data, 16),
        ("copy", &data, 256),
        ("zeropage", &zeros, 256),
    ] {
        g.bench_function(BenchmarkId::new(op, format!("batch-{batch}")), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for chunk in entries.chunks(batch) {
                        let got = target
                            .installer
                            .copy_batch(black_box(chunk))
                            .expect("install");
                        debug_assert_eq!(got.pages(), chunk.len() as u64);
                    }
                    timed += start.elapsed();
                    target.zap();
                }
                timed
            })
        });
    }
    g.finish();
    let total = target.installer.installed();
    eprintln!(
        "uffd_install: {} pages copied in {} ioctls, {} zero pages in {}",
        total.copied_pages, total.copy_runs, total.zero_pages, total.zero_runs
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = install
}
criterion_main!(benches);
