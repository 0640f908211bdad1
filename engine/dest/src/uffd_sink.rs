//! The userfaultfd of a restored process as a [`PageSink`]: every page
//! inside the ranges the process registered is installed with
//! `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`; pages outside them are counted
//! (the process did not ask for that memory) and not installed.
//!
//! Installing into a fresh process touches every page for the first time,
//! so the switchover install runs on several lanes ([`UffdSink::lanes`]),
//! each with its own duplicate of the uffd, fed by
//! [`crate::store::PageStore::drain_parallel`].
use std::os::fd::OwnedFd;

use pagehop_mem::pages::{Range, RangeSet};
use pagehop_mem::{PageSink, SpaceKey};

use crate::install::{InstallError, Installer};

#[derive(Debug, thiserror::Error)]
pub enum UffdSinkError {
    #[error("{space} has no userfaultfd here")]
    UnknownSpace { space: SpaceKey },
    #[error("duplicating the userfaultfd for the installer lanes")]
    Dup(#[source] std::io::Error),
    #[error("installing pages into the restored process")]
    Install(#[from] InstallError),
}

/// One installer lane of a restored process.
pub struct UffdSink {
    space: SpaceKey,
    installer: Installer,
    registered: RangeSet,
    outside: u64,
}

/// What the lanes did in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installs {
    pub installed: u64,
    /// Pages the store held outside the registered ranges (not installed).
    pub outside: u64,
}

impl UffdSink {
    /// `count` lanes installing the source's address space `space` through
    /// `uffd` into the `registered` ranges.
    pub fn lanes(
        space: SpaceKey,
        uffd: OwnedFd,
        page_size: usize,
        registered: &RangeSet,
        count: usize,
    ) -> Result<Vec<UffdSink>, UffdSinkError> {
        let mut fds = (1..count.max(1))
            .map(|_| uffd.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(UffdSinkError::Dup)?;
        fds.push(uffd);
        Ok(fds
            .into_iter()
            .map(|fd| UffdSink {
                space,
                installer: Installer::with_page_size(fd, page_size),
                registered: registered.clone(),
                outside: 0,
            })
            .collect())
    }

    /// Lanes to use: one per core, at most four.
    pub fn lane_count() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    }

    /// Finishes every lane; the totals.
    pub fn finish_all(lanes: &mut [UffdSink]) -> Result<Installs, UffdSinkError> {
        let mut all = Installs::default();
        for lane in lanes {
            all.installed += lane.finish()?;
            all.outside += lane.outside;
        }
        Ok(all)
    }
}

impl PageSink for UffdSink {
    type Error = UffdSinkError;

    /// The restored process registered its own ranges; the source's layout
    /// only has to agree with them page by page, which `put` checks.
    fn set_layout(&mut self, space: SpaceKey, _ranges: &[Range]) -> Result<(), UffdSinkError> {
        self.check(space)
    }

    fn put(
        &mut self,
        space: SpaceKey,
        pages: &[(u64, Option<&[u8]>)],
    ) -> Result<(), UffdSinkError> {
        self.check(space)?;
        let inside: Vec<(u64, Option<&[u8]>)> = pages
            .iter()
            .copied()
            .filter(|(addr, _)| self.registered.contains(*addr))
            .collect();
        self.outside += (pages.len() - inside.len()) as u64;
        if !inside.is_empty() {
            self.installer.copy_batch(&inside)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<u64, UffdSinkError> {
        Ok(self.installer.installed().pages())
    }
}

impl UffdSink {
    fn check(&self, space: SpaceKey) -> Result<(), UffdSinkError> {
        if space == self.space {
            Ok(())
        } else {
            Err(UffdSinkError::UnknownSpace { space })
        }
    }
}
