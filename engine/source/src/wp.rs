//! A write-protect session on another process: the userfaultfd pagehop took
//! out of it (see [`crate::inject`]) with every writable mapping registered in
//! async write-protect mode.
//!
//! With `UFFD_FEATURE_WP_ASYNC` the kernel resolves write faults on protected
//! pages itself (the process never blocks on pagehop); the fault still fires
//! the `page_fault_user` tracepoint and the page's PAGEMAP_SCAN "written" bit.
//!
//! pagehop holds the only reference to the userfaultfd, so if pagehop dies
//! the kernel drops every registration. On a normal end, [`WpSession::release`]
//! (or `Drop`) unregisters every range, which also removes the protection.
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::inject::{self, InjectError};
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_sys::uffd;

#[derive(Debug, thiserror::Error)]
pub enum WpError {
    #[error("taking a userfaultfd out of pid {pid}")]
    Inject {
        pid: i32,
        #[source]
        source: InjectError,
    },
    #[error(
        "userfaultfd of pid {pid} lacks {feature}; this kernel cannot track writes with it (needs Linux 6.7+)"
    )]
    MissingFeature { pid: i32, feature: &'static str },
    #[error("UFFDIO_{op} on {range} of pid {pid}")]
    Ioctl {
        op: &'static str,
        pid: i32,
        range: Range,
        #[source]
        source: io::Error,
    },
}

/// What a layout sync changed.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Ranges registered and write-protected by this sync.
    pub added: RangeSet,
    /// Writable ranges that could not be registered (file-backed private
    /// mappings, for example): the caller must treat their pages as always dirty.
    pub unregistrable: RangeSet,
}

pub struct WpSession {
    pid: i32,
    uffd: OwnedFd,
    registered: RangeSet,
    unregistrable: RangeSet,
}

/// Features requested from the kernel, and the ones pagehop cannot do without.
const WANTED: u64 = uffd::UFFD_FEATURE_WP_ASYNC
    | uffd::UFFD_FEATURE_WP_UNPOPULATED
    | uffd::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;

impl WpSession {
    /// Takes a userfaultfd out of `pid`; registers nothing yet.
    pub fn attach(pid: i32) -> Result<Self, WpError> {
        let taken = inject::take_userfaultfd(pid, WANTED)
            .map_err(|source| WpError::Inject { pid, source })?;
        if taken.features & uffd::UFFD_FEATURE_WP_ASYNC == 0 {
            return Err(WpError::MissingFeature {
                pid,
                feature: "UFFD_FEATURE_WP_ASYNC",
            });
        }
        Ok(Self {
            pid,
            uffd: taken.fd,
            registered: RangeSet::new(),
            unregistrable: RangeSet::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn registered(&self) -> &RangeSet {
        &self.registered
    }

    pub fn unregistrable(&self) -> &RangeSet {
        &self.unregistrable
    }

    /// Registers and write-protects every writable mapping of `layout` not yet
    /// registered, and forgets registered ranges that are no longer writable
    /// mappings.
    pub fn sync(&mut self, layout: &Layout) -> Result<SyncOutcome, WpError> {
        let writable = layout.writable_ranges();
        // Whatever was unmapped is no longer ours. A range made read-only stays
        // registered (the kernel keeps it) so that release unregisters it.
        let mapped = layout.mapped();
        self.registered = self.registered.intersection(&mapped);
        self.unregistrable = self.unregistrable.intersection(&writable);
        let mut outcome = SyncOutcome::default();
        for vma in layout.vmas.iter().filter(|v| v.is_writable_private_state()) {
            let todo = RangeSet::from_ranges(vec![vma.range]).difference(&self.registered);
            for &range in todo.ranges() {
                if self.unregistrable.contains(range.start) {
                    continue;
                }
                match uffd::register(
                    self.uffd.as_fd(),
                    range.start,
                    range.len(),
                    uffd::UFFDIO_REGISTER_MODE_WP,
                ) {
                    Ok(_) => {}
                    // Not anonymous, shmem or hugetlb: uffd-wp cannot cover it.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.unregistrable.insert(range);
                        outcome.unregistrable.insert(range);
                        continue;
                    }
                    // The mapping changed under us; the next sync sees the new layout.
                    Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => continue,
                    Err(source) => {
                        return Err(WpError::Ioctl {
                            op: "REGISTER",
                            pid: self.pid,
                            range,
                            source,
                        });
                    }
                }
                self.registered.insert(range);
                self.protect(range)?;
                outcome.added.insert(range);
            }
        }
        Ok(outcome)
    }

    /// Marks `range` as changed behind our back (munmap, MAP_FIXED mmap,
    /// mremap, brk): the next [`sync`](Self::sync) registers whatever is there now.
    pub fn forget(&mut self, range: Range) {
        self.registered.remove(range);
        self.unregistrable.remove(range);
    }

    /// Write-protects `range` (which must be registered).
    pub fn protect(&self, range: Range) -> Result<(), WpError> {
        uffd::writeprotect(self.uffd.as_fd(), range.start, range.len(), true).map_err(|source| {
            WpError::Ioctl {
                op: "WRITEPROTECT",
                pid: self.pid,
                range,
                source,
            }
        })
    }

    /// Unregisters everything: protection is removed and the process is left
    /// as it was. Ranges that no longer exist are skipped.
    pub fn release(mut self) -> Result<(), WpError> {
        self.unregister_all()
    }

    fn unregister_all(&mut self) -> Result<(), WpError> {
        let mapped = Layout::read(self.pid)
            .map(|l| l.mapped())
            .unwrap_or_default();
        let live = self.registered.intersection(&mapped);
        self.registered = RangeSet::new();
        let mut first_error = None;
        for &range in live.ranges() {
            if let Err(source) = uffd::unregister(self.uffd.as_fd(), range.start, range.len()) {
                // ENOMEM/EINVAL: the mm or mapping went away meanwhile.
                if !matches!(
                    source.raw_os_error(),
                    Some(libc::ENOMEM | libc::EINVAL | libc::ESRCH)
                ) {
                    first_error.get_or_insert(WpError::Ioctl {
                        op: "UNREGISTER",
                        pid: self.pid,
                        range,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for WpSession {
    fn drop(&mut self) {
        let _ = self.unregister_all();
    }
}
