//! pagehop's syscall layer: every raw syscall and ioctl the engine makes,
//! behind small safe wrappers. Each module owns its `#[repr(C)]` structs and
//! ioctl numbers (checked at compile time); no other pagehop crate calls
//! `libc` for a syscall.
//!
//! Calls go through rustix wherever rustix has them (clocks, page size,
//! mount, memfd, poll, eventfd, fcntl, kill and pidfds, sockets and
//! `SCM_RIGHTS`, mmap/munmap/madvise, waitpid). Hand-written on libc are
//! what rustix lacks or offers only unsafely/unstably: ptrace and its
//! `waitpid(__WALL)`, `tgkill`, `process_vm_readv`, the userfaultfd ioctls,
//! `PAGEMAP_SCAN`, signal masks, `sigwait` and `sigaction`, `fork` and
//! `_exit`, `pidfd_send_signal` with signal 0, and the io_uring constants.
pub mod fd;
pub mod fs;
pub mod mm;
pub mod mount_ns;
pub mod pagemap;
pub mod pidfd;
pub mod poll;
pub mod process;
pub mod ptrace;
pub mod shield;
pub mod uffd;
pub mod unix;
pub mod uring;
pub mod vm;

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::time::ClockId;

/// Turns a `-1`-on-error libc return value into an `io::Result`.
pub fn cvt<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC), comparable across processes.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The system page size (from the auxiliary vector, read once).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// Mounts tracefs at `target` (needed to attach classic tracepoints when the
/// system has not mounted it). A path with an interior NUL is `InvalidInput`.
pub fn mount_tracefs(target: &std::path::Path) -> io::Result<()> {
    use rustix::mount::MountFlags;
    let fstype = c"tracefs";
    Ok(rustix::mount::mount(
        fstype,
        target,
        fstype,
        MountFlags::empty(),
        None,
    )?)
}

/// An anonymous memory file (`memfd_create`, close-on-exec) of `len` bytes;
/// its pages are allocated only when written.
pub fn memfd(name: &std::ffi::CStr, len: u64) -> io::Result<std::fs::File> {
    use rustix::fs::MemfdFlags;
    let file = std::fs::File::from(rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?);
    file.set_len(len)?;
    Ok(file)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads
/// it creates afterwards), so that [`wait_termination_signal`] can take them.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset; a null old-set pointer is allowed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Makes `cmd`'s child start with SIGINT, SIGTERM and SIGHUP unblocked:
/// children inherit the signal mask across fork and exec, and a program
/// started with them blocked would ignore being told to stop.
pub fn unblock_termination_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let set = termination_set();
    // SAFETY: the closure runs between fork and exec and only calls
    // pthread_sigmask, which is async-signal-safe, on a set built before
    // the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            let ret = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            if ret != 0 {
                return Err(io::Error::from_raw_os_error(ret));
            }
            Ok(())
        });
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP (blocked beforehand) and returns it.
pub fn wait_termination_signal() -> i32 {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

fn termination_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset gets valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Sets SO_SNDBUF of `socket` (the kernel doubles it for bookkeeping).
///
/// `bytes` is capped at `i32::MAX` (the option is a C `int`).
pub fn set_send_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<()> {
    let bytes = bytes.min(i32::MAX as usize);
    Ok(rustix::net::sockopt::set_socket_send_buffer_size(
        socket, bytes,
    )?)
}

/// The CPU time (user + system, all threads) this process has used so far.
///
/// `CLOCK_PROCESS_CPUTIME_ID` via rustix (which has no `getrusage`): the same
/// quantity as `getrusage(RUSAGE_SELF)`'s `ru_utime + ru_stime`, at
/// nanosecond rather than tick resolution.
pub fn own_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// An anonymous memory file of `len` bytes ([`memfd`]) mapped shared and
/// writable; its pages are allocated only when written. The file is private
/// to the mapping (closed once mapped), so nothing can truncate it.
pub fn memfd_mapping(name: &std::ffi::CStr, len: u64) -> io::Result<memmap2::MmapMut> {
    let file = memfd(name, len)?;
    // SAFETY: the memfd was just created and is never shared: no other
    // handle exists to truncate or resize it while it is mapped, which is
    // what memmap2's safety contract asks for.
    unsafe { memmap2::MmapMut::map_mut(&file) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_ns();
        let cpu_a = own_cpu_time();
        // Burn a little CPU.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let b = monotonic_ns();
        assert!(b > a);
        assert!(own_cpu_time() > cpu_a);
        assert!(own_cpu_time() > Duration::ZERO);
    }

    #[test]
    fn page_size_is_a_power_of_two() {
        let ps = page_size();
        assert!(ps >= 4096 && ps.is_power_of_two());
    }

    #[test]
    fn memfd_has_its_length_and_cloexec() {
        let file = memfd(c"pagehop-sys-test", 3 * 4096).expect("memfd");
        assert_eq!(file.metadata().expect("stat").len(), 3 * 4096);
        let flags = rustix::io::fcntl_getfd(&file).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        file.write_all_at(b"abc", 4096).expect("write");
        let mut back = [0u8; 3];
        file.read_exact_at(&mut back, 4096).expect("read");
        assert_eq!(&back, b"abc");
    }

    #[test]
    fn send_buffer_is_set() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        set_send_buffer(&a, 64 * 1024).expect("set");
        // The kernel caps the value at wmem_max and doubles it for bookkeeping.
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .expect("wmem_max")
            .trim()
            .parse()
            .expect("number");
        let got = rustix::net::sockopt::socket_send_buffer_size(&a).expect("get");
        assert_eq!(got, 2 * wmem_max.min(64 * 1024));
        // Huge values are capped, not rejected.
        set_send_buffer(&a, usize::MAX).expect("capped");
    }

    #[test]
    fn mount_tracefs_rejects_bad_paths() {
        let err = mount_tracefs(std::path::Path::new("/nonexistent/pagehop-sys/x"))
            .expect_err("no such dir");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn termination_signals_block_and_arrive() {
        // On its own thread: the mask is per thread and inherited by threads
        // created afterwards, so the other tests' threads are unaffected.
        std::thread::spawn(|| {
            block_termination_signals().expect("block");
            let tid = crate::gettid();
            crate::ptrace::tgkill(crate::mm::getpid(), tid, libc::SIGHUP).expect("tgkill");
            assert_eq!(wait_termination_signal(), libc::SIGHUP);
        })
        .join()
        .expect("join");
    }
}
