//! pidfds: stable handles on processes (`pidfd_open`), taking a descriptor out
//! of another process (`pidfd_getfd`) and signalling through a pidfd.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `pidfd_open` flag (6.9+): the pidfd refers to one thread, not the process.
/// Same value as `O_EXCL`.
pub const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
const _: () = assert!(PIDFD_THREAD == 0o200);

/// Turns a new-fd-or-minus-one syscall return into an `OwnedFd`.
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = super::cvt(ret)?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor in our
    // table that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_open(pid, 0)`: a pidfd for the process whose thread-group leader is
/// `pid`. Fails with `EINVAL` when `pid` is a non-leader thread id and `ESRCH`
/// when there is no such process. The returned fd is close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and touches no memory.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })
}

/// `pidfd_open(tid, PIDFD_THREAD)`: a pidfd for one thread (Linux 6.9+).
pub fn pidfd_open_thread(tid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and touches no memory.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) })
}

/// `pidfd_getfd(pidfd, targetfd, 0)`: duplicates descriptor `targetfd` of the
/// process behind `pidfd` into our table (close-on-exec). It shares the open
/// file description, so status flags such as `O_NONBLOCK` are shared. Needs
/// ptrace-attach permission over the process.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, targetfd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes two descriptors and a flags word and touches
    // no memory of ours.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), targetfd, 0u32) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: sends `sig` as `kill(2)` would.
/// `sig == 0` only checks that the process still exists (`ESRCH` otherwise).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: a NULL siginfo pointer is allowed (the kernel fills one in as
    // kill(2) does); no other memory is touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    super::cvt(ret).map(drop)
}
