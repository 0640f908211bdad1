//! `/proc/PID/pagemap`: the PAGEMAP_SCAN ioctl (Linux 6.7+) and the classic
//! 8-byte-per-page entries (used to probe for soft-dirty).
//!
//! Debian's headers here predate PAGEMAP_SCAN, so the structs are defined here.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// `struct page_region` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}
const _: () = assert!(size_of::<PageRegion>() == 24);

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}
const _: () = assert!(size_of::<PmScanArg>() == 96);

/// Page categories.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// Scan flags.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    // _IOC(_IOC_READ|_IOC_WRITE, type, nr, size) on x86_64.
    (3u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = iowr(b'f', 16, size_of::<PmScanArg>());
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);

/// One PAGEMAP_SCAN call. Returns the number of regions written into `out`
/// and the address where the walk stopped (`walk_end`): when it is below
/// `end` the output vector was full and the caller continues from there.
pub fn scan(
    pagemap: &File,
    start: u64,
    end: u64,
    flags: u64,
    category_mask: u64,
    return_mask: u64,
    out: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask,
        return_mask,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points to `out`, which
    // is writable for `vec_len` regions and outlives the call; the kernel
    // writes at most that many regions and updates `arg.walk_end`.
    let ret = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    let count = super::cvt(ret)?;
    Ok((count as usize, arg.walk_end))
}

/// Bit 55 of a pagemap entry: the page is soft-dirty.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Bit 63: the page is present.
pub const PM_PRESENT: u64 = 1 << 63;

/// Reads the classic pagemap entries for `count` pages starting at `addr`.
pub fn read_entries(
    pagemap: &File,
    addr: u64,
    count: usize,
    page_size: u64,
) -> io::Result<Vec<u64>> {
    let mut raw = vec![0u8; count * 8];
    pagemap.read_exact_at(&mut raw, addr / page_size * 8)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8-byte chunk")))
        .collect())
}
