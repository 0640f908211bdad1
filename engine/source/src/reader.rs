//! Reads pages out of another process with `process_vm_readv`.
//!
//! [`PageReader::read`] takes a list of page runs `(start address, pages)` and
//! fills a caller buffer with their contents, back to back in run order. It
//! makes one `process_vm_readv` per [`IOV_MAX`] runs: the runs are the remote
//! iovecs, the buffer is the single local iovec. DESIGN.md's baselines say why:
//! 1 MiB per call reads at 4.5 GB/s, one 4 KiB page per call at 0.7 GB/s, so
//! callers should hand over as many pages per call as their buffer holds
//! (typically one registered send buffer, see `crate::uring`).
//!
//! Pages can vanish while we read them (the target unmaps memory concurrently).
//! The kernel then stops at the first page it cannot read and returns a short
//! count. The reader retries from that page once; if the retry reads nothing,
//! the call fails with [`ReadError::Unmapped`] naming that page. The caller
//! (the planner) re-checks the address-space model and drops or re-plans the
//! run. Pages before the failing one are already in the buffer, and
//! [`ReadError::Unmapped::read`] says how many bytes that is.
//!
//! [`pagehop_wire::batch::is_zero_page`] spots all-zero pages so they can be sent as a flag
//! instead of 4 KiB of zeroes.
//!
//! The raw syscall is `pagehop_sys::vm::process_vm_readv`.
use std::io;

/// Most remote iovecs one `process_vm_readv` accepts (`UIO_MAXIOV`).
pub use pagehop_sys::vm::IOV_MAX;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("buffer of {have} bytes cannot hold {need} bytes of pages")]
    BufferTooSmall { need: usize, have: usize },
    #[error("run at {addr:#x} of {pages} pages wraps the address space")]
    BadRun { addr: u64, pages: usize },
    #[error(
        "page {addr:#x} of pid {pid} is not mapped or not readable ({read} bytes read before it)"
    )]
    Unmapped { pid: i32, addr: u64, read: usize },
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error("not permitted to read the memory of pid {pid}")]
    Permission {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("process_vm_readv on pid {pid}")]
    Read {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// Reads pages of one process.
#[derive(Debug, Clone)]
pub struct PageReader {
    pid: i32,
    page_size: usize,
}

/// Position in the run list: run index and byte offset inside that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    run: usize,
    offset: usize,
}

impl PageReader {
    /// A reader for `pid` using the system page size.
    pub fn new(pid: i32) -> Self {
        Self::with_page_size(pid, pagehop_sys::page_size())
    }

    /// A reader that counts runs in pages of `page_size` bytes.
    pub fn with_page_size(pid: i32, page_size: usize) -> Self {
        assert!(page_size.is_power_of_two(), "page size {page_size}");
        Self { pid, page_size }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes that `runs` occupy in the buffer.
    pub fn bytes_for(&self, runs: &[(u64, usize)]) -> usize {
        runs.iter().map(|&(_, pages)| pages * self.page_size).sum()
    }

    /// Reads `runs` (start address, page count) into `buf`, back to back in
    /// run order, and returns the number of bytes written (all pages of all
    /// runs). `buf` may be longer than needed; the tail is left untouched.
    pub fn read(&self, runs: &[(u64, usize)], buf: &mut [u8]) -> Result<usize, ReadError> {
        for &(addr, pages) in runs {
            let len = (pages as u64).checked_mul(self.page_size as u64);
            if len.and_then(|len| addr.checked_add(len)).is_none() {
                return Err(ReadError::BadRun { addr, pages });
            }
        }
        let need = self.bytes_for(runs);
        if buf.len() < need {
            return Err(ReadError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }

        let mut done = 0;
        let mut cursor = Cursor { run: 0, offset: 0 };
        let mut short = false;
        let mut remote = Vec::with_capacity(runs.len().min(IOV_MAX));
        while done < need {
            cursor = self.skip_empty(runs, cursor);
            remote.clear();
            let mut batch = 0;
            let mut at = cursor;
            while at.run < runs.len() && remote.len() < IOV_MAX {
                let (addr, pages) = runs[at.run];
                let len = pages * self.page_size - at.offset;
                if len > 0 {
                    remote.push(pagehop_sys::vm::RemoteIov {
                        addr: addr + at.offset as u64,
                        len,
                    });
                    batch += len;
                }
                at = Cursor {
                    run: at.run + 1,
                    offset: 0,
                };
            }

            let n = match pagehop_sys::vm::process_vm_readv(
                self.pid,
                &mut buf[done..done + batch],
                &remote,
            ) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ESRCH) => return Err(ReadError::Gone { pid: self.pid }),
                    Some(libc::EPERM) => {
                        return Err(ReadError::Permission {
                            pid: self.pid,
                            source: e,
                        });
                    }
                    // Nothing at all was readable: the first remote page is gone.
                    Some(libc::EFAULT) => 0,
                    _ => {
                        return Err(ReadError::Read {
                            pid: self.pid,
                            source: e,
                        });
                    }
                },
            };
            done += n;
            cursor = self.advance(runs, cursor, n);
            // A short read stops at a page the kernel could not read (or at
            // its per-call cap). The next call starts at that page and is the
            // retry; if it reads nothing either, the page is gone.
            let retry_failed = n == 0 && short;
            short = n < batch;
            if retry_failed {
                let (addr, _) = runs[cursor.run];
                let page = (cursor.offset / self.page_size * self.page_size) as u64;
                return Err(ReadError::Unmapped {
                    pid: self.pid,
                    addr: addr + page,
                    read: done,
                });
            }
        }
        Ok(need)
    }

    /// Moves past runs with no bytes left at `cursor`.
    fn skip_empty(&self, runs: &[(u64, usize)], mut cursor: Cursor) -> Cursor {
        while cursor.run < runs.len() && cursor.offset == runs[cursor.run].1 * self.page_size {
            cursor = Cursor {
                run: cursor.run + 1,
                offset: 0,
            };
        }
        cursor
    }

    /// The cursor `n` bytes after `cursor`.
    fn advance(&self, runs: &[(u64, usize)], mut cursor: Cursor, mut n: usize) -> Cursor {
        while n > 0 {
            let left = runs[cursor.run].1 * self.page_size - cursor.offset;
            if n < left {
                cursor.offset += n;
                return cursor;
            }
            n -= left;
            cursor = Cursor {
                run: cursor.run + 1,
                offset: 0,
            };
        }
        self.skip_empty(runs, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_reader() -> PageReader {
        PageReader::new(std::process::id() as i32)
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A page-aligned anonymous mapping of `pages` pages.
    fn mapping(pages: usize, seed: u64) -> memmap2::MmapMut {
        let ps = pagehop_sys::page_size();
        let mut map = memmap2::MmapMut::map_anon(pages * ps).expect("mmap");
        map.copy_from_slice(&pattern(pages * ps, seed));
        map
    }

    #[test]
    fn reads_runs_in_order() {
        let r = own_reader();
        let ps = r.page_size();
        let map = mapping(8, 7);
        let base = map.as_ptr() as u64;
        let runs = [
            (base + 5 * ps as u64, 2),
            (base, 1),
            (base + 2 * ps as u64, 3),
        ];
        let mut buf = vec![0u8; 7 * ps];
        let n = r.read(&runs, &mut buf).expect("read");
        assert_eq!(n, 6 * ps);
        assert_eq!(&buf[..2 * ps], &map[5 * ps..7 * ps]);
        assert_eq!(&buf[2 * ps..3 * ps], &map[..ps]);
        assert_eq!(&buf[3 * ps..6 * ps], &map[2 * ps..5 * ps]);
        assert!(buf[6 * ps..].iter().all(|&b| b == 0), "tail untouched");
    }

    #[test]
    fn more_runs_than_iov_max() {
        let r = own_reader();
        let ps = r.page_size();
        let pages = IOV_MAX + 300;
        let map = mapping(pages, 11);
        let base = map.as_ptr() as u64;
        // One run per page, in reverse order: no two runs merge.
        let runs: Vec<(u64, usize)> = (0..pages)
            .rev()
            .map(|i| (base + (i * ps) as u64, 1))
            .collect();
        let mut buf = vec![0u8; pages * ps];
        assert_eq!(r.read(&runs, &mut buf).expect("read"), pages * ps);
        for (k, i) in (0..pages).rev().enumerate() {
            assert_eq!(
                &buf[k * ps..(k + 1) * ps],
                &map[i * ps..(i + 1) * ps],
                "page {i}"
            );
        }
    }

    #[test]
    fn empty_runs_and_zero_pages() {
        let r = own_reader();
        let ps = r.page_size();
        let map = mapping(2, 3);
        let base = map.as_ptr() as u64;
        let mut buf = vec![0u8; 2 * ps];
        assert_eq!(r.read(&[], &mut buf).expect("read"), 0);
        let runs = [(base, 0), (base + ps as u64, 1), (base, 0)];
        assert_eq!(r.read(&runs, &mut buf).expect("read"), ps);
        assert_eq!(&buf[..ps], &map[ps..]);
    }

    #[test]
    fn buffer_too_small() {
        let r = own_reader();
        let map = mapping(2, 5);
        let mut buf = vec![0u8; r.page_size()];
        let err = r
            .read(&[(map.as_ptr() as u64, 2)], &mut buf)
            .expect_err("too small");
        assert!(matches!(err, ReadError::BufferTooSmall { .. }), "{err}");
    }

    #[test]
    fn unreadable_page_is_named() {
        let r = own_reader();
        let ps = r.page_size();
        let map = mapping(4, 9);
        let base = map.as_ptr() as u64;
        // SAFETY: the range is the third page of `map`, which we own; nothing
        // in this test touches that page through `map` afterwards (the reads
        // below go through process_vm_readv, which checks permissions).
        let ret = unsafe {
            libc::mprotect(
                map.as_ptr().add(2 * ps) as *mut libc::c_void,
                ps,
                libc::PROT_NONE,
            )
        };
        assert_eq!(ret, 0, "mprotect: {}", std::io::Error::last_os_error());

        // Fails part way through a run: the first two pages arrive.
        let mut buf = vec![0u8; 4 * ps];
        let err = r.read(&[(base, 4)], &mut buf).expect_err("unreadable");
        match err {
            ReadError::Unmapped { addr, read, .. } => {
                assert_eq!(addr, base + 2 * ps as u64);
                assert_eq!(read, 2 * ps);
                assert_eq!(&buf[..2 * ps], &map[..2 * ps]);
            }
            other => panic!("unexpected error {other}"),
        }

        // Fails at the start of a later run.
        let runs = [(base + 3 * ps as u64, 1), (base + 2 * ps as u64, 1)];
        match r.read(&runs, &mut buf).expect_err("unreadable") {
            ReadError::Unmapped { addr, read, .. } => {
                assert_eq!(addr, base + 2 * ps as u64);
                assert_eq!(read, ps);
            }
            other => panic!("unexpected error {other}"),
        }

        // Fails at the very first page (the kernel returns EFAULT).
        match r
            .read(&[(base + 2 * ps as u64, 2)], &mut buf)
            .expect_err("unreadable")
        {
            ReadError::Unmapped { addr, read, .. } => {
                assert_eq!(addr, base + 2 * ps as u64);
                assert_eq!(read, 0);
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn gone_process() {
        // Pid numbers are bounded by pid_max (at most 2^22).
        let r = PageReader::new(i32::MAX);
        let mut buf = vec![0u8; r.page_size()];
        let err = r.read(&[(0x10000, 1)], &mut buf).expect_err("no such pid");
        assert!(matches!(err, ReadError::Gone { .. }), "{err}");
    }
}
