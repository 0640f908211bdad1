//! [`take_userfaultfd`]: creates a userfaultfd inside a target with the
//! [`Injector`], moves it into our process with `pidfd_getfd`, closes the
//! target's copy and enables the requested features from our side.
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{InjectError, Injector, Result};
use pagehop_sys::uffd;

/// Features [`take_userfaultfd`] callers normally ask for: asynchronous
/// write-protect tracking that also covers pages not yet populated.
pub const DEFAULT_UFFD_FEATURES: u64 =
    uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;

/// A userfaultfd taken out of another process: it covers that process's
/// address space, and the target holds no descriptor for it.
#[derive(Debug)]
pub struct TakenUffd {
    /// The uffd, in our file table (close-on-exec, non-blocking).
    pub fd: OwnedFd,
    /// The process whose memory it covers.
    pub pid: i32,
    /// The features enabled with `UFFDIO_API`.
    pub features: u64,
    /// All features the kernel offered.
    pub available: u64,
    /// The ioctls available on the uffd (`1 << _UFFDIO_*`).
    pub ioctls: u64,
    /// Created with `UFFD_USER_MODE_ONLY` (the target lacked the privilege
    /// for a full uffd): faults taken in kernel mode are not reported. With
    /// `WP_ASYNC` that does not matter, the kernel resolves write-protect
    /// faults itself in either mode (a `read(2)` into a protected page of such
    /// a target succeeded on 6.18).
    pub user_mode_only: bool,
}

impl AsFd for TakenUffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates a userfaultfd inside process `pid` by syscall injection, takes it
/// into our process with `pidfd_getfd`, closes it in the target, detaches, and
/// enables `features` (e.g. [`DEFAULT_UFFD_FEATURES`]) with `UFFDIO_API` from
/// our side.
///
/// The injected `userfaultfd` and `close` run under the target's seccomp
/// filter, if it has one (`Seccomp: 2` in /proc/PID/status): a filter that
/// returns an errno makes this fail cleanly, but one that kills on unlisted
/// syscalls (systemd's `SystemCallFilter=` default) kills the target.
pub fn take_userfaultfd(pid: i32, features: u64) -> Result<TakenUffd> {
    let mut inj = Injector::seize(pid)?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let mut user_mode_only = false;
    let mut ret = inj.syscall(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if ret == -(libc::EPERM as i64) {
        // vm.unprivileged_userfaultfd = 0 and the target lacks CAP_SYS_PTRACE.
        user_mode_only = true;
        let flags = flags | uffd::UFFD_USER_MODE_ONLY as u64;
        ret = inj.syscall(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    }
    if ret < 0 {
        let source = io::Error::from_raw_os_error(-ret as i32);
        inj.detach()?;
        return Err(InjectError::RemoteSyscall {
            name: "userfaultfd",
            pid,
            source,
        });
    }
    let remote_fd = ret as i32;
    let taken = inj.getfd(remote_fd);
    let closed = inj.syscall_checked("close", libc::SYS_close, [remote_fd as u64, 0, 0, 0, 0, 0]);
    inj.detach()?;
    let fd = taken?;
    closed?;

    match uffd::api(fd.as_fd(), features) {
        Ok(api) => Ok(TakenUffd {
            fd,
            pid,
            features,
            available: api.features,
            ioctls: api.ioctls,
            user_mode_only,
        }),
        Err(source) if source.raw_os_error() == Some(libc::EINVAL) => {
            // UFFDIO_API can only be asked once per uffd; ask a local one
            // what the kernel offers, to say what is missing.
            let available = uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY)
                .and_then(|local| uffd::api(local.as_fd(), 0))
                .map(|api| api.features);
            match available {
                Ok(available) if features & !available != 0 => {
                    Err(InjectError::UnsupportedFeatures {
                        requested: features,
                        available,
                        missing: features & !available,
                    })
                }
                _ => Err(InjectError::Api { features, source }),
            }
        }
        Err(source) => Err(InjectError::Api { features, source }),
    }
}
