//! The raw syscalls of the fault loop: poll(2) over several descriptors,
//! an eventfd(2) waker, `O_NONBLOCK` via fcntl(2), and adopting the
//! descriptor number a fork message carries.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::cvt;

/// Polls `fds` for input for up to `timeout`; `ready[i]` is set when `fds[i]`
/// has input, an error or a hangup. Returns whether any is ready (`false` on
/// timeout or `EINTR`).
pub fn poll_in(
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
    ready: &mut Vec<bool>,
) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up, so that a sub-millisecond timeout still waits.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a live, exclusively borrowed array of `pfds.len()`
    // pollfd structs; every descriptor in it is borrowed for this call.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    ready.clear();
    match cvt(ret) {
        Ok(n) => {
            ready.extend(pfds.iter().map(|p| p.revents != 0));
            Ok(n > 0)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
            ready.resize(fds.len(), false);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A non-blocking, close-on-exec eventfd with counter 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags; it touches no memory.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: eventfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter. A full counter (`EAGAIN`) already wakes.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: `one` is 8 readable bytes, the size an eventfd write takes.
    let ret = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    match cvt(ret) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resets an eventfd's counter to 0 (nothing to read is fine).
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut word = [0u8; 8];
    // SAFETY: `word` is 8 writable bytes, the size an eventfd read returns.
    let ret = unsafe { libc::read(fd.as_raw_fd(), word.as_mut_ptr().cast(), word.len()) };
    match cvt(ret) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and touches no memory.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL takes an int of flags and touches no memory.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Takes ownership of the descriptor a `UFFD_EVENT_FORK` message names: the
/// kernel installed it in our file table while the message was read, and
/// nobody else knows its number.
pub fn adopt_fork_fd(ufd: u32) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(ufd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: F_GETFD only checks that `raw` is an open descriptor.
    cvt(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: `raw` is open (checked above) and was created for us by the read
    // of the fork message; this is the only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
