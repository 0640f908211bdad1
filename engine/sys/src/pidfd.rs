//! pidfds: stable handles on processes (`pidfd_open`), taking a descriptor out
//! of another process (`pidfd_getfd`) and signalling through a pidfd, on
//! rustix. [`crate::process::Process`] wraps a pidfd with its pid.
//!
//! Only `pidfd_send_signal(pidfd, 0, ...)` (the existence check) stays a raw
//! syscall: rustix's `Signal` cannot hold 0.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::process::{PidfdFlags, PidfdGetfdFlags};

use crate::process::{to_pid, to_signal};

/// `pidfd_open` flag (6.9+): the pidfd refers to one thread, not the process.
/// Same value as `O_EXCL`.
pub const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
const _: () = assert!(PIDFD_THREAD == 0o200);

/// `pidfd_open(pid, 0)`: a pidfd for the process whose thread-group leader is
/// `pid`. Fails with `ESRCH` when there is no such process, `EINVAL` when
/// `pid` is not positive, and for a non-leader thread id with `EINVAL`
/// (`ENOENT` on recent kernels, e.g. 6.18). The returned fd is close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        to_pid(pid)?,
        PidfdFlags::empty(),
    )?)
}

/// `pidfd_open(tid, PIDFD_THREAD)`: a pidfd for one thread (Linux 6.9+).
pub fn pidfd_open_thread(tid: i32) -> io::Result<OwnedFd> {
    // rustix has no name for PIDFD_THREAD; its flags type keeps unknown bits.
    let flags = PidfdFlags::from_bits_retain(PIDFD_THREAD);
    Ok(rustix::process::pidfd_open(to_pid(tid)?, flags)?)
}

/// `pidfd_getfd(pidfd, targetfd, 0)`: duplicates descriptor `targetfd` of the
/// process behind `pidfd` into our table (close-on-exec). It shares the open
/// file description, so status flags such as `O_NONBLOCK` are shared. Needs
/// ptrace-attach permission over the process.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, targetfd: i32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(
        pidfd,
        targetfd,
        PidfdGetfdFlags::empty(),
    )?)
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: sends `sig` as `kill(2)` would.
/// `sig == 0` only checks that the process still exists (`ESRCH` otherwise;
/// a zombie still exists). Signal numbers are checked as
/// [`crate::process::kill`] checks them.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    match to_signal(sig)? {
        Some(sig) => Ok(rustix::process::pidfd_send_signal(pidfd, sig)?),
        None => {
            // SAFETY: signal 0 with a NULL siginfo pointer and no flags: the
            // kernel only looks the process up and checks permission; no
            // memory is touched.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    0,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
            crate::cvt(ret).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn own_process_and_thread() {
        let pid = crate::mm::getpid();
        let fd = pidfd_open(pid).expect("pidfd_open");
        pidfd_send_signal(fd.as_fd(), 0).expect("we exist");

        // One of our descriptors, fetched through the pidfd: same file.
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let dup = pidfd_getfd(fd.as_fd(), file.as_raw_fd()).expect("pidfd_getfd");
        let dup = std::fs::File::from(dup);
        assert_eq!(
            dup.metadata().expect("stat").ino(),
            file.metadata().expect("stat").ino()
        );

        // A thread that is not the leader: EINVAL without PIDFD_THREAD.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let tid = crate::gettid();
            let leader = pidfd_open(tid).expect_err("not a leader");
            assert!(
                matches!(leader.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)),
                "{leader}"
            );
            match pidfd_open_thread(tid) {
                Ok(thread) => pidfd_send_signal(thread.as_fd(), 0).expect("thread exists"),
                // Kernels before 6.9 refuse the flag.
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
            }
            rx.recv().expect("released");
        });
        tx.send(()).expect("release");
        thread.join().expect("join");
    }
}
