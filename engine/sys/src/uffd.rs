//! userfaultfd(2): the `#[repr(C)]` ioctl structs, ioctl numbers, feature and
//! mode bits, and safe wrappers.
//!
//! Every ioctl here acts on the address space (mm) the userfaultfd was created
//! for, not on the caller's: a uffd taken out of another process with
//! `pidfd_getfd` registers, write-protects and unregisters ranges of *that*
//! process. Addresses passed to these wrappers are therefore addresses in the
//! uffd's mm; only the `src` buffer of [`copy`] is in the caller's memory.
//!
//! Debian's `linux/userfaultfd.h` predates some of these bits
//! (`UFFD_FEATURE_WP_UNPOPULATED`, `UFFD_FEATURE_WP_ASYNC`, ...), so all
//! values are defined here and the ioctl numbers are checked at compile time
//! against the values the header's macros produce.
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// API version handshake value for [`UffdioApi::api`].
pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: only handle faults taken in user mode. Needed by
/// unprivileged callers when `vm.unprivileged_userfaultfd` is 0.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

// Features negotiated with UFFDIO_API (`uffdio_api.features`).
/// Write-protect faults are reported (enables `UFFDIO_REGISTER_MODE_WP`).
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// Report `fork(2)` of the tracked process; the child's uffd arrives in the message.
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// Report `mremap(2)` of registered ranges.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// Report `madvise(MADV_DONTNEED/REMOVE)` of registered ranges.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Missing-page tracking on hugetlbfs.
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
/// Missing-page tracking on shmem.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Report `munmap(2)` of registered ranges.
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Deliver SIGBUS instead of queueing fault messages.
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// Page-fault messages carry the faulting thread's id.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// Minor-fault tracking on hugetlbfs.
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
/// Minor-fault tracking on shmem.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// Fault addresses are not rounded down to the page.
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// Write-protect mode on hugetlbfs and shmem.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// Registering in WP mode also protects pages that are not populated yet.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFDIO_POISON` is available.
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
/// Write-protect faults are resolved by the kernel itself (no messages); the
/// written state is read back with PAGEMAP_SCAN.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFDIO_MOVE` is available.
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

// Register modes (`uffdio_register.mode`).
/// Track faults on missing pages.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// Track writes to write-protected pages.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// Track minor faults (page in the page cache, not mapped).
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;

/// `uffdio_copy.mode`: do not wake the faulting threads.
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
/// `uffdio_copy.mode`: map the copied pages write-protected.
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
/// `uffdio_zeropage.mode`: do not wake the faulting threads.
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
/// `uffdio_writeprotect.mode`: protect (set) rather than unprotect (clear).
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `uffdio_writeprotect.mode`: do not wake threads blocked on the range.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

// Message event codes (`uffd_msg.event`).
/// A page fault in a registered range.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// The tracked process forked.
pub const UFFD_EVENT_FORK: u8 = 0x13;
/// A registered range was moved with mremap.
pub const UFFD_EVENT_REMAP: u8 = 0x14;
/// A registered range was zapped with madvise.
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// A registered range was unmapped.
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// `uffd_msg.arg.pagefault.flags`: the fault was a write.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `uffd_msg.arg.pagefault.flags`: the fault hit a write-protected page.
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// `uffd_msg.arg.pagefault.flags`: the fault was a minor fault.
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// `struct uffdio_api`: the handshake; `features` in, available `features`
/// and `ioctls` out.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioApi {
    /// Must be [`UFFD_API`].
    pub api: u64,
    /// In: features to enable. Out: all features the kernel supports.
    pub features: u64,
    /// Out: bit `n` set when ioctl number `n` (`_UFFDIO_*`) is available.
    pub ioctls: u64,
}

/// `struct uffdio_range`: a page-aligned range in the uffd's address space.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioRange {
    /// Start address (page aligned).
    pub start: u64,
    /// Length in bytes (page aligned).
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioRegister {
    /// The range to register.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*` bits.
    pub mode: u64,
    /// Out: the range ioctls available on this range.
    pub ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioWriteprotect {
    /// The range to (un)protect.
    pub range: UffdioRange,
    /// `UFFDIO_WRITEPROTECT_MODE_*` bits.
    pub mode: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioCopy {
    /// Destination in the uffd's address space.
    pub dst: u64,
    /// Source in the caller's address space.
    pub src: u64,
    /// Length in bytes.
    pub len: u64,
    /// `UFFDIO_COPY_MODE_*` bits.
    pub mode: u64,
    /// Out: bytes copied, or a negative errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioZeropage {
    /// The range to fill with zero pages.
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*` bits.
    pub mode: u64,
    /// Out: bytes zeroed, or a negative errno.
    pub zeropage: i64,
}

/// `struct uffdio_continue` (only its size is used here, for `UFFDIO_CONTINUE`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdioContinue {
    /// The range to map.
    pub range: UffdioRange,
    /// `UFFDIO_CONTINUE_MODE_*` bits.
    pub mode: u64,
    /// Out: bytes mapped, or a negative errno.
    pub mapped: i64,
}

/// `struct uffd_msg`, as read(2) from a userfaultfd: 32 bytes.
///
/// ```text
/// offset  0: u8  event      (UFFD_EVENT_*)
/// offset  1: u8  reserved1
/// offset  2: u16 reserved2
/// offset  4: u32 reserved3
/// offset  8: arg: union of
///            pagefault { u64 flags; u64 address; u32 ptid; }
///            fork      { u32 ufd; }
///            remap     { u64 from; u64 to; u64 len; }
///            remove    { u64 start; u64 end; }      (also unmap)
/// ```
///
/// The kernel struct is `packed`, but every field is naturally aligned, so
/// the layout equals this `repr(C)` one. The union is kept as three `u64`
/// words and decoded by [`UffdMsg::event`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    /// Reserved.
    pub reserved1: u8,
    /// Reserved.
    pub reserved2: u16,
    /// Reserved.
    pub reserved3: u32,
    /// The event's argument union, as little-endian words.
    pub arg: [u64; 3],
}

/// A decoded [`UffdMsg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdEvent {
    /// A fault in a registered range.
    Pagefault {
        /// `UFFD_PAGEFAULT_FLAG_*`.
        flags: u64,
        /// Faulting address (page aligned unless `EXACT_ADDRESS`).
        address: u64,
        /// Faulting thread id, with `UFFD_FEATURE_THREAD_ID`.
        ptid: u32,
    },
    /// The process forked; `ufd` is a new uffd for the child, installed in the
    /// reader's file table.
    Fork {
        /// The child's uffd, in the reader's file table.
        ufd: u32,
    },
    /// A registered range moved.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// Pages were zapped with madvise.
    Remove {
        /// Start of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// A range was unmapped.
    Unmap {
        /// Start of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// An event code this module does not know.
    Unknown {
        /// The raw event code.
        event: u8,
    },
}

impl UffdMsg {
    /// Builds a message from the 32 bytes read(2) returned.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[8 + 8 * i..16 + 8 * i]);
            u64::from_le_bytes(w)
        };
        Self {
            event: bytes[0],
            reserved1: bytes[1],
            reserved2: u16::from_le_bytes([bytes[2], bytes[3]]),
            reserved3: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            arg: [word(0), word(1), word(2)],
        }
    }

    /// Decodes the event and its argument.
    pub fn event(&self) -> UffdEvent {
        let [a0, a1, a2] = self.arg;
        match self.event {
            UFFD_EVENT_PAGEFAULT => UffdEvent::Pagefault {
                flags: a0,
                address: a1,
                ptid: a2 as u32,
            },
            UFFD_EVENT_FORK => UffdEvent::Fork { ufd: a0 as u32 },
            UFFD_EVENT_REMAP => UffdEvent::Remap {
                from: a0,
                to: a1,
                len: a2,
            },
            UFFD_EVENT_REMOVE => UffdEvent::Remove { start: a0, end: a1 },
            UFFD_EVENT_UNMAP => UffdEvent::Unmap { start: a0, end: a1 },
            event => UffdEvent::Unknown { event },
        }
    }
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(size_of::<UffdioContinue>() == 32);
const _: () = assert!(size_of::<UffdMsg>() == 32);

// ioctl number encoding (asm-generic/ioctl.h): dir:2 | size:14 | type:8 | nr:8.
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

const fn ior<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ, ty, nr, size_of::<T>())
}

const fn iowr<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size_of::<T>())
}

/// The ioctl type byte of userfaultfd.
const UFFDIO: u32 = 0xAA;

/// `_UFFDIO_REGISTER`: ioctl number, also its bit in `UffdioApi::ioctls`.
pub const UFFDIO_REGISTER_NR: u32 = 0x00;
/// `_UFFDIO_UNREGISTER`.
pub const UFFDIO_UNREGISTER_NR: u32 = 0x01;
/// `_UFFDIO_WAKE`.
pub const UFFDIO_WAKE_NR: u32 = 0x02;
/// `_UFFDIO_COPY`.
pub const UFFDIO_COPY_NR: u32 = 0x03;
/// `_UFFDIO_ZEROPAGE`.
pub const UFFDIO_ZEROPAGE_NR: u32 = 0x04;
/// `_UFFDIO_WRITEPROTECT`.
pub const UFFDIO_WRITEPROTECT_NR: u32 = 0x06;
/// `_UFFDIO_CONTINUE`.
pub const UFFDIO_CONTINUE_NR: u32 = 0x07;
/// `_UFFDIO_API`.
pub const UFFDIO_API_NR: u32 = 0x3F;

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u32 = iowr::<UffdioApi>(UFFDIO, UFFDIO_API_NR);
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u32 = iowr::<UffdioRegister>(UFFDIO, UFFDIO_REGISTER_NR);
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u32 = ior::<UffdioRange>(UFFDIO, UFFDIO_UNREGISTER_NR);
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
pub const UFFDIO_WAKE: u32 = ior::<UffdioRange>(UFFDIO, UFFDIO_WAKE_NR);
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY: u32 = iowr::<UffdioCopy>(UFFDIO, UFFDIO_COPY_NR);
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
pub const UFFDIO_ZEROPAGE: u32 = iowr::<UffdioZeropage>(UFFDIO, UFFDIO_ZEROPAGE_NR);
/// `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u32 = iowr::<UffdioWriteprotect>(UFFDIO, UFFDIO_WRITEPROTECT_NR);
/// `_IOWR(0xAA, 0x07, struct uffdio_continue)`.
pub const UFFDIO_CONTINUE: u32 = iowr::<UffdioContinue>(UFFDIO, UFFDIO_CONTINUE_NR);

// Values printed by a C program built against linux/userfaultfd.h on this machine.
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_AA01);
const _: () = assert!(UFFDIO_WAKE == 0x8010_AA02);
const _: () = assert!(UFFDIO_COPY == 0xC028_AA03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xC020_AA04);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);
const _: () = assert!(UFFDIO_CONTINUE == 0xC020_AA07);

/// Creates a userfaultfd for the *calling* process (`flags`: `O_CLOEXEC`,
/// `O_NONBLOCK`, [`UFFD_USER_MODE_ONLY`]). A uffd for another process can only
/// be made inside it; see `inject::take_userfaultfd`.
pub fn userfaultfd(flags: i32) -> io::Result<OwnedFd> {
    // rustix names CLOEXEC and NONBLOCK; its flags type keeps other bits
    // (UFFD_USER_MODE_ONLY) as given.
    let flags = rustix::mm::UserfaultfdFlags::from_bits_retain(flags as u32);
    // SAFETY: the call takes only a flags word and returns a fresh descriptor.
    // rustix marks it unsafe because that descriptor can later intercept
    // faults in our own memory; the ioctl wrappers below only resolve faults
    // by filling *missing* pages (EEXIST for present ones) or by toggling
    // write protection, never by changing content that is mapped.
    Ok(unsafe { rustix::mm::userfaultfd(flags) }?)
}

/// Runs one uffd ioctl whose argument is `arg`.
///
/// # Safety
/// `request` must be a uffd ioctl whose argument struct is `T`.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor for the duration of the call; `arg`
    // is a valid, exclusively borrowed `T` and the caller guarantees that
    // `request` reads and writes exactly a `T`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg as *mut T) };
    super::cvt(ret).map(drop)
}

/// `UFFDIO_API`: enables `features` and returns what the kernel reported:
/// `features` is the set of *available* features, `ioctls` the available
/// ioctls. Fails with `EINVAL` when a requested feature is unsupported or the
/// handshake was already done on this uffd.
pub fn api(fd: BorrowedFd<'_>, features: u64) -> io::Result<UffdioApi> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
    unsafe { ioctl(fd, UFFDIO_API, &mut arg) }?;
    Ok(arg)
}

/// `UFFDIO_REGISTER`: registers `[start, start + len)` of the uffd's address
/// space with `mode` (`UFFDIO_REGISTER_MODE_*`). Returns the bitmask of range
/// ioctls available on it.
pub fn register(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`.
    unsafe { ioctl(fd, UFFDIO_REGISTER, &mut arg) }?;
    Ok(arg.ioctls)
}

/// `UFFDIO_UNREGISTER`: stops tracking `[start, start + len)`; write protection
/// is removed from the range.
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`.
    unsafe { ioctl(fd, UFFDIO_UNREGISTER, &mut arg) }
}

/// `UFFDIO_WAKE`: wakes threads blocked on faults in `[start, start + len)`.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`.
    unsafe { ioctl(fd, UFFDIO_WAKE, &mut arg) }
}

/// `UFFDIO_WRITEPROTECT`: write-protects (`protect`) or unprotects a range that
/// is registered in WP mode. Unprotecting wakes threads blocked on the range.
pub fn writeprotect(fd: BorrowedFd<'_>, start: u64, len: u64, protect: bool) -> io::Result<()> {
    let mut arg = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode: if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        },
    };
    // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`.
    unsafe { ioctl(fd, UFFDIO_WRITEPROTECT, &mut arg) }
}

/// Turns a partially completed COPY/ZEROPAGE into `Ok(done)`: on `EAGAIN` the
/// kernel reports the bytes it did handle in the out field.
fn partial(result: io::Result<()>, done: i64, len: u64) -> io::Result<u64> {
    match result {
        Ok(()) => Ok(len),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && done > 0 => Ok(done as u64),
        Err(e) => Err(e),
    }
}

/// `UFFDIO_COPY`: atomically fills the missing pages at `dst` (uffd's address
/// space) with `src` (ours) and wakes the faulting threads unless `mode` has
/// `UFFDIO_COPY_MODE_DONTWAKE`. Returns the bytes copied, which is less than
/// `src.len()` when the kernel stopped early (`EAGAIN`, e.g. the mm changed).
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8], mode: u64) -> io::Result<u64> {
    let len = src.len() as u64;
    let mut arg = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len,
        mode,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`; the kernel reads `len`
    // bytes at `src`, which point into the live, borrowed slice `src`.
    let result = unsafe { ioctl(fd, UFFDIO_COPY, &mut arg) };
    partial(result, arg.copy, len)
}

/// `UFFDIO_ZEROPAGE`: maps zero pages at the missing pages of
/// `[start, start + len)`. Returns the bytes handled, as [`copy`] does.
pub fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut arg = UffdioZeropage {
        range: UffdioRange { start, len },
        mode,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage`.
    let result = unsafe { ioctl(fd, UFFDIO_ZEROPAGE, &mut arg) };
    partial(result, arg.zeropage, len)
}

/// Reads pending messages into `msgs` (non-blocking uffds return `WouldBlock`
/// when there are none). Returns how many were read.
pub fn read_msgs(fd: BorrowedFd<'_>, msgs: &mut [UffdMsg]) -> io::Result<usize> {
    let bytes = std::mem::size_of_val(msgs);
    // SAFETY: `msgs` is a live, exclusively borrowed buffer of `bytes` bytes;
    // `UffdMsg` is plain old data, so any bytes the kernel writes are a valid
    // value.
    let ret = unsafe { libc::read(fd.as_raw_fd(), msgs.as_mut_ptr().cast(), bytes) };
    let n = super::cvt(ret)?;
    Ok(n as usize / size_of::<UffdMsg>())
}

/// `UFFDIO_COPY` from a raw source range. [`copy`] takes one slice; a run
/// merged from several back-to-back slices is not one Rust allocation, so it
/// must not be turned into a slice.
/// Copies `len` bytes at `src` (ours) to `dst` (the uffd's address space);
/// returns the bytes copied, fewer than `len` when the kernel stopped
/// early (`EAGAIN` after progress), as `sys::uffd::copy` does.
///
/// # Safety
/// `src..src + len` must be readable memory of this process for the whole call.
pub unsafe fn copy_raw(fd: BorrowedFd<'_>, dst: u64, src: *const u8, len: u64) -> io::Result<u64> {
    let mut arg = UffdioCopy {
        dst,
        src: src as u64,
        len,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`, which `arg` is;
    // the kernel reads `len` bytes at `src`, readable by the caller's
    // contract, and writes only `arg.copy`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY as libc::c_ulong, &raw mut arg) };
    match crate::cvt(ret) {
        Ok(_) => Ok(len),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && arg.copy > 0 => Ok(arg.copy as u64),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn creates_and_handshakes() {
        for flags in [
            libc::O_CLOEXEC | libc::O_NONBLOCK,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        ] {
            let fd =
                userfaultfd(flags).expect("userfaultfd (root, or vm.unprivileged_userfaultfd)");
            let fd_flags = rustix::io::fcntl_getfd(&fd).expect("getfd");
            assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
            let api = api(fd.as_fd(), 0).expect("UFFDIO_API");
            assert_eq!(api.api, UFFD_API);
            assert!(api.ioctls & (1 << UFFDIO_REGISTER_NR) != 0);
            let mut msgs = [UffdMsg::default(); 2];
            let err = read_msgs(fd.as_fd(), &mut msgs).expect_err("nothing pending");
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        }
    }

    #[test]
    fn decodes_messages() {
        let mut raw = [0u8; 32];
        raw[0] = UFFD_EVENT_PAGEFAULT;
        raw[8..16]
            .copy_from_slice(&(UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE).to_le_bytes());
        raw[16..24].copy_from_slice(&0x7f00_0000_1000u64.to_le_bytes());
        raw[24..28].copy_from_slice(&4242u32.to_le_bytes());
        assert_eq!(
            UffdMsg::from_bytes(&raw).event(),
            UffdEvent::Pagefault {
                flags: 3,
                address: 0x7f00_0000_1000,
                ptid: 4242
            }
        );
        raw[0] = UFFD_EVENT_REMAP;
        raw[24..32].copy_from_slice(&0x2000u64.to_le_bytes());
        assert_eq!(
            UffdMsg::from_bytes(&raw).event(),
            UffdEvent::Remap {
                from: 3,
                to: 0x7f00_0000_1000,
                len: 0x2000
            }
        );
        raw[0] = 0x99;
        assert_eq!(
            UffdMsg::from_bytes(&raw).event(),
            UffdEvent::Unknown { event: 0x99 }
        );
    }
}
