//! Raw syscalls of the workload: mappings, fork/wait and the stop signal
//! handler. Everything else in the workload calls these wrappers.
//!
//! Mappings, `waitpid` and `getpid` are on rustix; `fork`, `sigaction` and
//! `_exit` stay on libc: rustix has them only in its unstable `runtime`
//! module, and a raw fork would skip libc's own fork handling (atfork
//! handlers, the child's cached state).
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags};
use rustix::process::WaitOptions;

use crate::cvt;

/// Set by the SIGTERM/SIGINT handler.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Async-signal-safe: a single lock-free atomic store.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs a SIGTERM and SIGINT handler that sets the flag read by
/// [`stop_requested`].
pub fn install_stop_handler() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is initialised and its handler only does an atomic
        // store, which is async-signal-safe; the old action is not requested.
        cvt(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) })?;
    }
    Ok(())
}

/// Whether SIGTERM or SIGINT arrived since [`install_stop_handler`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Maps `len` bytes of private anonymous memory exactly at `addr`, failing
/// with `AlreadyExists` if anything is mapped there already.
pub fn map_fixed_noreplace(addr: usize, len: usize) -> io::Result<NonNull<u8>> {
    let flags = MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE;
    let ptr = mmap(addr as *mut libc::c_void, len, flags)?;
    if ptr.as_ptr() as usize != addr {
        // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat `addr` as a hint.
        // SAFETY: the mapping was just created by us and nothing refers to it.
        unsafe { unmap(ptr, len)? };
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    Ok(ptr)
}

/// Maps `len` bytes of private anonymous memory where the kernel chooses.
pub fn map_anywhere(len: usize) -> io::Result<NonNull<u8>> {
    mmap(std::ptr::null_mut(), len, MapFlags::PRIVATE)
}

/// A read-write anonymous mapping (`mmap_anonymous` adds `MAP_ANONYMOUS`);
/// `flags` must not contain `MAP_FIXED`.
fn mmap(addr: *mut libc::c_void, len: usize, flags: MapFlags) -> io::Result<NonNull<u8>> {
    debug_assert!(!flags.contains(MapFlags::FIXED));
    let prot = ProtFlags::READ | ProtFlags::WRITE;
    // SAFETY: anonymous mapping without MAP_FIXED: it cannot replace an
    // existing mapping, so no memory the program uses is affected.
    let ptr = unsafe { rustix::mm::mmap_anonymous(addr, len, prot, flags) }?;
    NonNull::new(ptr.cast()).ok_or_else(|| io::ErrorKind::AddrNotAvailable.into())
}

/// Unmaps `len` bytes at `ptr`.
///
/// # Safety
/// The range must be a mapping owned by the caller that nothing refers to any more.
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and guarantees it is no longer used.
    Ok(unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) }?)
}

/// Replaces the `len` bytes at `ptr` with a fresh private anonymous mapping
/// at the same address: `munmap`, then `mmap` with `MAP_FIXED_NOREPLACE`,
/// so that if another thread took the hole meanwhile this fails
/// (`AlreadyExists`) instead of clobbering its mapping. The new pages read as
/// zeros and, like the arena, get no transparent huge pages.
///
/// The range is left unmapped if the second step fails.
///
/// # Safety
/// The range must be owned by the caller, with no live reference into it.
pub unsafe fn remap_fresh(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and guarantees that nothing refers to it.
    unsafe { unmap(ptr, len)? };
    let fresh = map_fixed_noreplace(ptr.as_ptr() as usize, len)?;
    no_huge_pages(fresh, len)
}

/// Drops the pages of `len` bytes at `ptr` (`MADV_DONTNEED`): they read as
/// zeros afterwards.
///
/// # Safety
/// The range must be owned by the caller, with no live reference into it that
/// relies on its content.
pub unsafe fn discard(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range; zeroing it breaks no reference.
    Ok(unsafe { rustix::mm::madvise(ptr.as_ptr().cast(), len, Advice::LinuxDontNeed) }?)
}

/// Asks the kernel not to back `len` bytes at `ptr` with transparent huge
/// pages, so that pages are dirtied and tracked one base page at a time.
pub fn no_huge_pages(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: MADV_NOHUGEPAGE only changes a VMA flag; memory content is kept.
    Ok(unsafe { rustix::mm::madvise(ptr.as_ptr().cast(), len, Advice::LinuxNoHugepage) }?)
}

/// What [`fork`] returned in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// We are the child.
    Child,
    /// We are the parent of the child with this pid.
    Parent(libc::pid_t),
}

/// Forks the process.
///
/// # Safety
/// In the child only the calling thread exists: it must not use locks or
/// objects that other threads may have held at the time of the fork, and it
/// must end with [`exit_now`] rather than unwind or return into code that
/// expects the other threads (scoped thread joins, destructors).
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the post-fork restrictions above.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// Reaps child `pid` if it has exited; returns its raw wait status.
/// `EINVAL` unless `pid` is positive (no "any child" or group waits).
pub fn try_wait(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    let child = crate::process::to_pid(pid)?;
    let reaped = rustix::process::waitpid(Some(child), WaitOptions::NOHANG)?;
    Ok(reaped.and_then(|(p, status)| (p == child).then_some(status.as_raw())))
}

/// The calling process's pid (its thread-group id).
pub fn getpid() -> libc::pid_t {
    rustix::process::getpid().as_raw_pid()
}

/// Ends the process at once with `code`, running no destructors or atexit handlers.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit has no preconditions; it does not return.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_pages_read_as_zeros_and_spare_their_neighbours() {
        let ps = crate::page_size();
        let base = map_anywhere(4 * ps).expect("map");
        let page = |i: usize| NonNull::new(base.as_ptr().wrapping_add(i * ps)).expect("not null");
        // SAFETY: the mapping is ours, 4 pages long; no reference into it is kept.
        unsafe { base.as_ptr().write_bytes(0xa5, 4 * ps) };
        // SAFETY: pages 1 and 2 are ours and nothing refers to them.
        unsafe { remap_fresh(page(1), ps) }.expect("remap");
        // SAFETY: as above.
        unsafe { discard(page(2), ps) }.expect("discard");
        // SAFETY: all four pages are mapped (page 1 afresh) and only read here.
        let bytes = unsafe { std::slice::from_raw_parts(base.as_ptr(), 4 * ps) };
        assert!(bytes[..ps].iter().all(|&b| b == 0xa5));
        assert!(bytes[ps..3 * ps].iter().all(|&b| b == 0));
        assert!(bytes[3 * ps..].iter().all(|&b| b == 0xa5));
        // The remapped page is writable.
        // SAFETY: page 1 is mapped read-write and ours.
        unsafe { page(1).as_ptr().write_volatile(7) };
        // SAFETY: the whole range is ours and no longer used.
        unsafe { unmap(base, 4 * ps) }.expect("unmap");
    }

    #[test]
    fn fixed_noreplace_refuses_a_taken_range() {
        let ps = crate::page_size();
        let base = map_anywhere(2 * ps).expect("map");
        let err = map_fixed_noreplace(base.as_ptr() as usize, ps).expect_err("taken");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        // SAFETY: the second page is ours and nothing refers to it.
        unsafe {
            unmap(
                NonNull::new(base.as_ptr().wrapping_add(ps)).expect("nn"),
                ps,
            )
        }
        .expect("unmap");
        let again = map_fixed_noreplace(base.as_ptr() as usize + ps, ps).expect("the hole is free");
        assert_eq!(again.as_ptr() as usize, base.as_ptr() as usize + ps);
        no_huge_pages(base, 2 * ps).expect("nohugepage");
        // SAFETY: both pages are ours and no longer used.
        unsafe { unmap(base, 2 * ps) }.expect("unmap");
    }

    #[test]
    fn wait_and_pid() {
        assert_eq!(getpid(), std::process::id() as libc::pid_t);
        #[expect(
            clippy::zombie_processes,
            reason = "reaped by try_wait, the function under test"
        )]
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("spawn");
        let pid = child.id() as libc::pid_t;
        let status = loop {
            if let Some(status) = try_wait(pid).expect("wait") {
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 3);
        assert_eq!(
            try_wait(0).expect_err("pid 0").raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
