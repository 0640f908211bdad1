//! poll(2), on rustix: waiting until descriptors have input. The crate's only
//! poll wrapper; `pagehop_sys::poll_readable`, `pagehop_sys::unix::poll_readable`
//! and `pagehop_sys::fd::poll_in` are re-exports of these kept for old callers.
//!
//! rustix issues `ppoll`, so the timeout keeps its nanoseconds: a
//! sub-millisecond timeout still waits (the kernel rounds up to its timer
//! granularity) instead of being truncated to a busy poll.
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};

/// `timeout` as the `Timespec` ppoll takes (saturating at `i64::MAX` seconds).
fn timespec(timeout: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    }
}

/// Whether `fd` is readable (data, end of file, a hangup or an error pending)
/// within `timeout`. `false` on timeout or when a signal interrupted the wait.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&timespec(timeout))) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Polls `fds` for input for up to `timeout`; `ready[i]` is set when `fds[i]`
/// has input, an error or a hangup (or is not open). Returns whether any is
/// ready (`false` on timeout or `EINTR`, with every `ready[i]` false).
pub fn poll_in(
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
    ready: &mut Vec<bool>,
) -> io::Result<bool> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    let ret = rustix::event::poll(&mut pfds, Some(&timespec(timeout)));
    ready.clear();
    match ret {
        Ok(n) => {
            ready.extend(pfds.iter().map(|p| !p.revents().is_empty()));
            Ok(n > 0)
        }
        Err(rustix::io::Errno::INTR) => {
            ready.resize(fds.len(), false);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn readable_after_write_and_hangup() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        assert!(!poll_readable(b.as_fd(), Duration::ZERO).expect("poll"));
        a.write_all(b"x").expect("write");
        assert!(poll_readable(b.as_fd(), Duration::from_secs(5)).expect("poll"));
        let (c, d) = UnixStream::pair().expect("pair");
        drop(c);
        assert!(poll_readable(d.as_fd(), Duration::from_secs(5)).expect("poll"));
    }

    #[test]
    fn sub_millisecond_timeout_still_waits() {
        let (_a, b) = UnixStream::pair().expect("pair");
        let t = Instant::now();
        assert!(!poll_readable(b.as_fd(), Duration::from_micros(500)).expect("poll"));
        assert!(t.elapsed() >= Duration::from_micros(500));
        // A huge timeout is accepted (saturated), not rejected.
        assert_eq!(timespec(Duration::MAX).tv_sec, i64::MAX);
    }

    #[test]
    fn poll_in_marks_each_ready_descriptor() {
        let (mut a1, b1) = UnixStream::pair().expect("pair");
        let (_a2, b2) = UnixStream::pair().expect("pair");
        let (mut a3, b3) = UnixStream::pair().expect("pair");
        let fds = [b1.as_fd(), b2.as_fd(), b3.as_fd()];
        let mut ready = vec![true; 7];
        assert!(!poll_in(&fds, Duration::from_millis(1), &mut ready).expect("poll"));
        assert_eq!(ready, [false, false, false]);
        a1.write_all(b"1").expect("write");
        a3.write_all(b"3").expect("write");
        assert!(poll_in(&fds, Duration::from_secs(5), &mut ready).expect("poll"));
        assert_eq!(ready, [true, false, true]);
    }
}
