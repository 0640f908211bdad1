//! The syscalls of the fault loop: an eventfd(2) waker, `O_NONBLOCK` via
//! fcntl(2) (both on rustix), and adopting the descriptor number a fork
//! message carries. Polling moved to [`crate::poll`].
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::event::EventfdFlags;
use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::cvt;

/// A non-blocking, close-on-exec eventfd with counter 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Adds 1 to an eventfd's counter. A full counter (`EAGAIN`) already wakes.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Resets an eventfd's counter to 0 (nothing to read is fine).
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut word = [0u8; 8];
    match rustix::io::read(fd, &mut word) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    if flags.contains(OFlags::NONBLOCK) {
        return Ok(());
    }
    Ok(rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?)
}

/// Takes ownership of the descriptor a `UFFD_EVENT_FORK` message names: the
/// kernel installed it in our file table while the message was read, and
/// nobody else knows its number.
pub fn adopt_fork_fd(ufd: u32) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(ufd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // Raw libc, not rustix: rustix's fcntl takes a `BorrowedFd`, which may
    // only be made for a descriptor known to be open; this is the check.
    // SAFETY: F_GETFD only checks that `raw` is an open descriptor.
    cvt(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: `raw` is open (checked above) and was created for us by the read
    // of the fork message; this is the only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Most descriptors [`pass_to_child`] passes.
pub const MAX_PASSED_FDS: usize = 8;

/// Makes `cmd`'s child find each `(fd, number)` of `fds` open as `number`
/// (and not close-on-exec), the way a program is told `--some-fd N`. The
/// numbers must be above 2 and distinct, at most [`MAX_PASSED_FDS`] of them;
/// `fds` stay open in the parent until `cmd` is dropped.
pub fn pass_to_child(cmd: &mut std::process::Command, fds: Vec<(OwnedFd, i32)>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut targets: Vec<i32> = fds.iter().map(|(_, n)| *n).collect();
    targets.sort_unstable();
    targets.dedup();
    if fds.len() > MAX_PASSED_FDS
        || targets.len() != fds.len()
        || targets.first().is_some_and(|&n| n <= 2)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors for a child: at most 8, distinct numbers above 2",
        ));
    }
    let mut pairs = [(-1i32, -1i32); MAX_PASSED_FDS];
    for (slot, (fd, n)) in pairs.iter_mut().zip(&fds) {
        *slot = (fd.as_raw_fd(), *n);
    }
    let count = fds.len();
    // SAFETY: the closure runs between fork and exec and only calls fcntl,
    // dup2 and close, which are async-signal-safe, on numbers in a
    // fixed-size array built before the fork (no allocation, no locks). The
    // OwnedFds it captures keep the sources open until the Command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fds;
            // Copies far above every target first, so that no dup2 below
            // closes a source another pair still needs.
            let mut high = [-1i32; MAX_PASSED_FDS];
            for i in 0..count {
                high[i] = libc::fcntl(pairs[i].0, libc::F_DUPFD_CLOEXEC, 512);
                if high[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for i in 0..count {
                // dup2's copy is not close-on-exec.
                if libc::dup2(high[i], pairs[i].1) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(high[i]);
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
    use std::time::Duration;

    #[test]
    fn eventfd_wakes_and_drains() {
        let efd = eventfd().expect("eventfd");
        let flags = rustix::fs::fcntl_getfl(&efd).expect("getfl");
        assert!(flags.contains(OFlags::NONBLOCK));
        let fd_flags = rustix::io::fcntl_getfd(&efd).expect("getfd");
        assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(!crate::poll::poll_readable(efd.as_fd(), Duration::ZERO).expect("poll"));
        eventfd_signal(efd.as_fd()).expect("signal");
        eventfd_signal(efd.as_fd()).expect("signal");
        assert!(crate::poll::poll_readable(efd.as_fd(), Duration::ZERO).expect("poll"));
        eventfd_drain(efd.as_fd()).expect("drain");
        assert!(!crate::poll::poll_readable(efd.as_fd(), Duration::ZERO).expect("poll"));
        // Draining an empty eventfd is fine.
        eventfd_drain(efd.as_fd()).expect("drain empty");
    }

    #[test]
    fn nonblocking_is_set_once() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(
            !rustix::fs::fcntl_getfl(&a)
                .expect("getfl")
                .contains(OFlags::NONBLOCK)
        );
        set_nonblocking(a.as_fd()).expect("set");
        set_nonblocking(a.as_fd()).expect("again");
        assert!(
            rustix::fs::fcntl_getfl(&a)
                .expect("getfl")
                .contains(OFlags::NONBLOCK)
        );
    }

    #[test]
    fn adopts_only_open_descriptors() {
        let efd = eventfd().expect("eventfd");
        let raw = efd.into_raw_fd();
        let adopted = adopt_fork_fd(raw as u32).expect("open fd");
        assert_eq!(adopted.as_raw_fd(), raw);
        assert!(adopt_fork_fd(u32::MAX).is_err());
        // A number far above any open descriptor.
        let err = adopt_fork_fd(1 << 20).expect_err("closed");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
