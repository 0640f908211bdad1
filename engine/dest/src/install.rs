//! Puts pages into a process through its userfaultfd: `UFFDIO_COPY` for
//! pages with content, `UFFDIO_ZEROPAGE` for zero pages. Both wake the
//! threads that are blocked on the pages.
//!
//! The uffd normally comes from [`crate::handoff`]: the process created it,
//! registered its ranges in MISSING mode and sent it over. Addresses are in
//! that process's address space; page data is in ours.
//!
//! A page that is already present is never overwritten: the kernel refuses
//! with `EEXIST`, reported as [`InstallError::AlreadyPresent`] so that the
//! caller decides (a demand fault and a background push racing for the same
//! page is normal; a page installed twice by one pass is a bug).
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use pagehop_sys::uffd;

/// Retries of an `EAGAIN` that made no progress (the address space is
/// changing: a fork, mremap, munmap or madvise event is pending on the uffd)
/// before giving up with [`InstallError::Busy`].
const MAX_STALLS: u32 = 100;

/// Errors of installing pages.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("range {addr:#x}+{len:#x} is empty or not page-aligned (page size {page_size:#x})")]
    Unaligned {
        addr: u64,
        len: u64,
        page_size: usize,
    },
    #[error("page {addr:#x} is already present")]
    AlreadyPresent { addr: u64 },
    #[error("the process's address space is gone (it exited) while installing at {addr:#x}")]
    ProcessGone { addr: u64 },
    #[error(
        "the address space is changing at {addr:#x} (a fork/remap/unmap/remove event is pending on the uffd)"
    )]
    Busy { addr: u64 },
    #[error("UFFDIO_COPY of {len:#x} bytes to {addr:#x}")]
    Copy {
        addr: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("UFFDIO_ZEROPAGE of {len:#x} bytes at {addr:#x}")]
    Zero {
        addr: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
}

/// Pages installed, and the ioctls it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Installed {
    /// Pages filled with data (`UFFDIO_COPY`).
    pub copied_pages: u64,
    /// Pages mapped to the zero page (`UFFDIO_ZEROPAGE`).
    pub zero_pages: u64,
    /// Runs of contiguous pages, one `UFFDIO_COPY` each (plus retries of
    /// partial copies).
    pub copy_runs: u64,
    /// Runs of contiguous zero pages, one `UFFDIO_ZEROPAGE` each.
    pub zero_runs: u64,
}

impl Installed {
    /// All pages installed.
    pub fn pages(&self) -> u64 {
        self.copied_pages + self.zero_pages
    }
}

/// Which ioctl a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Copy,
    Zero,
}

/// Installs pages through one process's userfaultfd. The methods take
/// `&self`: several threads may install through the same uffd at once.
#[derive(Debug)]
pub struct Installer {
    uffd: OwnedFd,
    page_size: usize,
    copied_pages: AtomicU64,
    zero_pages: AtomicU64,
    copy_runs: AtomicU64,
    zero_runs: AtomicU64,
}

impl Installer {
    /// An installer for `uffd` with the system page size.
    pub fn new(uffd: OwnedFd) -> Self {
        Self::with_page_size(uffd, pagehop_sys::page_size())
    }

    /// An installer for `uffd` whose pages are `page_size` bytes (a power of two).
    pub fn with_page_size(uffd: OwnedFd, page_size: usize) -> Self {
        assert!(page_size.is_power_of_two(), "page size {page_size}");
        Self {
            uffd,
            page_size,
            copied_pages: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
            copy_runs: AtomicU64::new(0),
            zero_runs: AtomicU64::new(0),
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The userfaultfd, e.g. to read its fault messages.
    pub fn uffd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }

    /// Gives the userfaultfd back.
    pub fn into_uffd(self) -> OwnedFd {
        self.uffd
    }

    /// Everything installed so far by this installer.
    pub fn installed(&self) -> Installed {
        Installed {
            copied_pages: self.copied_pages.load(Ordering::Relaxed),
            zero_pages: self.zero_pages.load(Ordering::Relaxed),
            copy_runs: self.copy_runs.load(Ordering::Relaxed),
            zero_runs: self.zero_runs.load(Ordering::Relaxed),
        }
    }

    /// Fills the missing pages at `addr` (one or more contiguous pages) with
    /// `data` and wakes their waiters. Partial copies are continued; on
    /// [`InstallError::AlreadyPresent`] the pages before `addr` of the error
    /// are installed, the rest are not.
    pub fn copy(&self, addr: u64, data: &[u8]) -> Result<(), InstallError> {
        let len = data.len() as u64;
        self.check(addr, len)?;
        self.run(Op::Copy, addr, len, |dst, done, left| {
            let src = &data[done as usize..(done + left) as usize];
            uffd::copy(self.uffd.as_fd(), dst, src, 0)
        })
    }

    /// Maps the zero page at the missing pages of `[addr, addr + len)` and
    /// wakes their waiters.
    pub fn zero(&self, addr: u64, len: u64) -> Result<(), InstallError> {
        self.check(addr, len)?;
        self.run(Op::Zero, addr, len, |dst, _, left| {
            uffd::zeropage(self.uffd.as_fd(), dst, left, 0)
        })
    }

    /// Installs a batch of pages, in order: `(addr, Some(data))` copies
    /// `data` (one or more whole pages) to `addr`, `(addr, None)` maps one
    /// zero page there.
    ///
    /// Entries whose addresses follow each other are merged: data pages into
    /// one `UFFDIO_COPY` when their slices also follow each other in memory
    /// (slices of one receive buffer), zero pages into one `UFFDIO_ZEROPAGE`.
    /// Stops at the first error; the pages of earlier runs stay installed.
    pub fn copy_batch(&self, pages: &[(u64, Option<&[u8]>)]) -> Result<Installed, InstallError> {
        let ps = self.page_size as u64;
        let mut stats = Installed::default();
        let mut i = 0;
        while i < pages.len() {
            let (addr, data) = pages[i];
            let mut j = i + 1;
            match data {
                None => {
                    let mut end = addr + ps;
                    while let Some(&(next, None)) = pages.get(j) {
                        if next != end {
                            break;
                        }
                        end += ps;
                        j += 1;
                    }
                    self.zero(addr, end - addr)?;
                    stats.zero_pages += (end - addr) / ps;
                    stats.zero_runs += 1;
                }
                Some(first) => {
                    self.check(addr, first.len() as u64)?;
                    let mut len = first.len();
                    while let Some(&(next, Some(more))) = pages.get(j) {
                        let follows = next == addr + len as u64
                            && more.as_ptr() == first.as_ptr().wrapping_add(len);
                        if !follows {
                            break;
                        }
                        self.check(next, more.len() as u64)?;
                        len += more.len();
                        j += 1;
                    }
                    if j == i + 1 {
                        self.copy(addr, first)?;
                    } else {
                        self.copy_run(addr, &pages[i..j], len)?;
                    }
                    stats.copied_pages += len as u64 / ps;
                    stats.copy_runs += 1;
                }
            }
            i = j;
        }
        Ok(stats)
    }

    /// One `UFFDIO_COPY` for `run`, whose slices lie back to back in memory
    /// (`len` bytes from the first one's start) and whose addresses follow
    /// each other from `addr`.
    fn copy_run(
        &self,
        addr: u64,
        run: &[(u64, Option<&[u8]>)],
        len: usize,
    ) -> Result<(), InstallError> {
        let start = run[0].1.expect("a run of data pages").as_ptr();
        self.run(Op::Copy, addr, len as u64, |dst, done, left| {
            // SAFETY: bytes `done..done + left` of the run are inside the
            // slices of `run` (they lie back to back from `start` and add up
            // to `len` bytes), which are borrowed for this whole call; the
            // kernel only reads them.
            unsafe {
                pagehop_sys::uffd::copy_raw(self.uffd.as_fd(), dst, start.add(done as usize), left)
            }
        })
    }

    /// Checks that `[addr, addr + len)` is a non-empty run of whole pages.
    fn check(&self, addr: u64, len: u64) -> Result<(), InstallError> {
        let mask = self.page_size as u64 - 1;
        if len == 0 || addr & mask != 0 || len & mask != 0 || addr.checked_add(len).is_none() {
            return Err(InstallError::Unaligned {
                addr,
                len,
                page_size: self.page_size,
            });
        }
        Ok(())
    }

    /// Drives one COPY or ZEROPAGE over `[addr, addr + len)` to completion:
    /// `call(dst, done, left)` handles `left` bytes from `dst` (`done` bytes
    /// in) and returns the bytes it handled.
    fn run(
        &self,
        op: Op,
        addr: u64,
        len: u64,
        mut call: impl FnMut(u64, u64, u64) -> io::Result<u64>,
    ) -> Result<(), InstallError> {
        let mut done = 0;
        let mut stalls = 0;
        let result = loop {
            if done >= len {
                break Ok(());
            }
            let dst = addr + done;
            match call(dst, done, len - done) {
                Ok(n) => {
                    done += n;
                    stalls = 0;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EEXIST) => break Err(InstallError::AlreadyPresent { addr: dst }),
                    Some(libc::ESRCH) => break Err(InstallError::ProcessGone { addr: dst }),
                    Some(libc::EAGAIN | libc::EINTR) if stalls < MAX_STALLS => {
                        stalls += 1;
                        std::thread::yield_now();
                    }
                    Some(libc::EAGAIN) => break Err(InstallError::Busy { addr: dst }),
                    _ => {
                        let left = len - done;
                        break Err(match op {
                            Op::Copy => InstallError::Copy {
                                addr: dst,
                                len: left,
                                source: e,
                            },
                            Op::Zero => InstallError::Zero {
                                addr: dst,
                                len: left,
                                source: e,
                            },
                        });
                    }
                },
            }
        };
        let pages = done / self.page_size as u64;
        if pages == 0 {
            return result;
        }
        match op {
            Op::Copy => {
                self.copied_pages.fetch_add(pages, Ordering::Relaxed);
                self.copy_runs.fetch_add(1, Ordering::Relaxed);
            }
            Op::Zero => {
                self.zero_pages.fetch_add(pages, Ordering::Relaxed);
                self.zero_runs.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::ptr::NonNull;

    use super::*;

    /// An anonymous mapping of this process registered in MISSING mode with a
    /// fresh uffd; unmapped on drop.
    struct Region {
        ptr: NonNull<u8>,
        len: usize,
    }

    impl Region {
        fn start(&self) -> u64 {
            self.ptr.as_ptr() as u64
        }

        /// Byte `i` of the region (faults it in if missing).
        fn byte(&self, i: usize) -> u8 {
            assert!(i < self.len);
            // SAFETY: `i` is inside the mapping, which lives as long as `self`.
            unsafe { self.ptr.as_ptr().add(i).read_volatile() }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: the mapping is ours and nothing refers into it any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }

    /// A region of `pages` pages and an installer for it, or `None` when
    /// userfaultfd is not available to this process.
    fn setup(pages: usize) -> (Region, Installer) {
        let ps = pagehop_sys::page_size();
        let len = pages * ps;
        // SAFETY: anonymous mapping without MAP_FIXED; it replaces nothing.
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
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        let region = Region {
            ptr: NonNull::new(ptr.cast()).expect("non-null mapping"),
            len,
        };
        // User-mode-only userfaultfds need no privilege (Linux 5.11+).
        let fd = uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY)
            .or_else(|_| uffd::userfaultfd(libc::O_CLOEXEC))
            .expect("userfaultfd (Linux 5.11+ allows a user-mode-only one without privilege)");
        uffd::api(fd.as_fd(), 0).expect("UFFDIO_API");
        uffd::register(
            fd.as_fd(),
            region.start(),
            len as u64,
            uffd::UFFDIO_REGISTER_MODE_MISSING,
        )
        .expect("register");
        (region, Installer::new(fd))
    }

    fn page_of(byte: u8, ps: usize) -> Vec<u8> {
        vec![byte; ps]
    }

    #[test]
    fn copies_zeroes_and_refuses_present_pages() {
        let (region, inst) = setup(6);
        let ps = inst.page_size();
        let data = [page_of(1, ps), page_of(2, ps)].concat();
        inst.copy(region.start(), &data).expect("copy two pages");
        inst.zero(region.start() + 2 * ps as u64, ps as u64)
            .expect("zero");
        assert_eq!(
            (region.byte(0), region.byte(ps), region.byte(2 * ps)),
            (1, 2, 0)
        );

        let err = inst
            .copy(region.start() + ps as u64, &page_of(9, ps))
            .expect_err("present");
        assert!(
            matches!(err, InstallError::AlreadyPresent { addr } if addr == region.start() + ps as u64),
            "{err}"
        );
        let err = inst.zero(region.start(), ps as u64).expect_err("present");
        assert!(matches!(err, InstallError::AlreadyPresent { .. }), "{err}");
        assert_eq!(region.byte(ps), 2, "a present page is never overwritten");

        // A copy over [missing, present]: the missing page is installed, the
        // error names the present one.
        let (third, fourth) = (
            region.start() + 3 * ps as u64,
            region.start() + 4 * ps as u64,
        );
        inst.zero(fourth, ps as u64).expect("zero the fourth page");
        let err = inst
            .copy(third, &[page_of(7, ps), page_of(8, ps)].concat())
            .expect_err("second page present");
        assert!(
            matches!(err, InstallError::AlreadyPresent { addr } if addr == fourth),
            "{err}"
        );
        assert_eq!((region.byte(3 * ps), region.byte(4 * ps)), (7, 0));
        let last = region.start() + 5 * ps as u64;

        let err = inst
            .copy(region.start() + 1, &page_of(1, ps))
            .expect_err("unaligned");
        assert!(matches!(err, InstallError::Unaligned { .. }), "{err}");
        let err = inst.copy(last, &data[..ps - 1]).expect_err("partial page");
        assert!(matches!(err, InstallError::Unaligned { .. }), "{err}");
        let err = inst.zero(last, 0).expect_err("empty");
        assert!(matches!(err, InstallError::Unaligned { .. }), "{err}");

        let installed = inst.installed();
        assert_eq!((installed.copied_pages, installed.zero_pages), (3, 2));
    }

    #[test]
    fn batches_merge_contiguous_runs() {
        let (region, inst) = setup(16);
        let ps = inst.page_size();
        let at = |page: usize| region.start() + (page * ps) as u64;
        // One receive buffer holding pages 0..3 and 5..7 back to back.
        let buf: Vec<u8> = (0..6u8).flat_map(|i| page_of(10 + i, ps)).collect();
        let p = |i: usize| &buf[i * ps..(i + 1) * ps];
        let other = page_of(99, ps);
        let batch: Vec<(u64, Option<&[u8]>)> = vec![
            (at(0), Some(p(0))),
            (at(1), Some(p(1))),
            (at(2), Some(p(2))), // run 1: pages 0-2, one copy
            (at(3), None),
            (at(4), None), // zero run: pages 3-4
            (at(5), Some(p(3))),
            (at(6), Some(p(4))),            // run 2: pages 5-6
            (at(7), Some(&other)),          // address follows, source does not: run 3
            (at(8), Some(p(5))),            // run 4
            (at(10), None),                 // zero run 2 (gap at 9)
            (at(12), Some(&buf[..2 * ps])), // a two-page entry: run 5
        ];
        let stats = inst.copy_batch(&batch).expect("batch");
        assert_eq!(
            stats,
            Installed {
                copied_pages: 9,
                zero_pages: 3,
                copy_runs: 5,
                zero_runs: 2,
            }
        );
        let expect = [
            (0, 10),
            (1, 11),
            (2, 12),
            (3, 0),
            (4, 0),
            (5, 13),
            (6, 14),
            (7, 99),
            (8, 15),
            (10, 0),
            (12, 10),
            (13, 11),
        ];
        for (page, byte) in expect {
            assert_eq!(region.byte(page * ps + ps / 2), byte, "page {page}");
        }
        assert_eq!(inst.installed(), stats);

        // A batch that hits a present page stops there with its address.
        let err = inst
            .copy_batch(&[(at(9), None), (at(10), None)])
            .expect_err("page 10 present");
        assert!(
            matches!(err, InstallError::AlreadyPresent { addr } if addr == at(10)),
            "{err}"
        );
        assert_eq!(region.byte(9 * ps), 0);
    }
}
