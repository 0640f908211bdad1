//! Delivering pages and waking waiters: [`FaultLoop::deliver`] installs
//! delivered data into every address space that waits for it or lacks it
//! (`UFFDIO_COPY` / `ZEROPAGE`), parks deliveries that meet a pending event,
//! wakes faulting threads with `UFFDIO_WAKE`, records their latency, and
//! forgets address spaces whose process is gone.
use super::{FaultError, FaultLoop, Progress, Result, SpaceId, Waiter};
use crate::install::InstallError;
use pagehop_mem::SpaceKey;
use pagehop_sys::monotonic_ns;
use pagehop_sys::uffd;

/// How one install into one space ended.
pub(super) enum Outcome {
    Installed,
    WasPresent,
    Busy,
    Discarded,
    Gone,
}

impl FaultLoop {
    /// Installs delivered data at source address `addr` of the source's
    /// address space `source`: `Some(data)` is one or more whole pages,
    /// `None` one zero page. Wakes the threads waiting for those pages; a
    /// page found present already (`EEXIST`) is woken and skipped. Returns
    /// the spaces found gone on the way.
    pub fn deliver(
        &mut self,
        source: SpaceKey,
        addr: u64,
        data: Option<&[u8]>,
    ) -> Result<Vec<SpaceId>> {
        let ps = self.page_size;
        let len = data.map_or(ps as usize, <[u8]>::len);
        if !addr.is_multiple_of(ps) || len == 0 || !(len as u64).is_multiple_of(ps) {
            return Err(FaultError::Unaligned {
                addr,
                len,
                page_size: ps,
            });
        }
        let mut progress = Progress::default();
        for (k, at) in (addr..addr + len as u64).step_by(ps as usize).enumerate() {
            let page = data.map(|d| &d[k * ps as usize..(k + 1) * ps as usize]);
            self.deliver_page(source, at, page, &mut progress)?;
        }
        Ok(progress.gone)
    }

    pub(super) fn deliver_page(
        &mut self,
        source: SpaceKey,
        source_addr: u64,
        data: Option<&[u8]>,
        progress: &mut Progress,
    ) -> Result<()> {
        let ps = self.page_size;
        let waiters = self
            .in_flight
            .remove(&(source, source_addr))
            .unwrap_or_default();
        // Targets: each waiting (space, page), then every other live space
        // where the page belongs and is missing.
        let mut targets: Vec<(SpaceId, u64)> = Vec::new();
        for w in &waiters {
            if !targets.contains(&(w.space, w.addr)) {
                targets.push((w.space, w.addr));
            }
        }
        for (i, s) in self.spaces.iter().enumerate() {
            let space = SpaceId(i as u32);
            if s.installer.is_none() || s.source != source || targets.iter().any(|t| t.0 == space) {
                continue;
            }
            if let Some(addr) = s.book.place_of(source_addr)
                && !s.book.is_present(addr)
            {
                targets.push((space, addr));
            }
        }
        if targets.is_empty() {
            self.stats.discarded += 1;
        }
        for (k, &(space, addr)) in targets.iter().enumerate() {
            let s = &self.spaces[space.0 as usize];
            let Some(installer) = s.installer.as_ref() else {
                continue;
            };
            let outcome = if s.book.is_local(addr) {
                Outcome::Discarded
            } else if s.book.is_present(addr) {
                Outcome::WasPresent
            } else {
                let result = match data {
                    Some(page) => installer.copy(addr, page),
                    None => installer.zero(addr, ps),
                };
                classify(result, space, addr)?
            };
            match outcome {
                Outcome::Installed => {
                    self.stats.pages_delivered += 1;
                    self.spaces[space.0 as usize].book.set_present(addr);
                }
                Outcome::WasPresent => {
                    self.stats.present_wakes += 1;
                    self.wake(space, addr, ps, progress)?;
                    self.spaces[space.0 as usize].book.set_present(addr);
                }
                Outcome::Discarded => {
                    self.stats.discarded += 1;
                    self.wake(space, addr, ps, progress)?;
                }
                Outcome::Gone => self.gone(space, progress),
                Outcome::Busy => {
                    // Keep the waiters of this and later targets; retry after
                    // the pending event has been read.
                    let rest: Vec<Waiter> = waiters
                        .iter()
                        .filter(|w| targets[k..].contains(&(w.space, w.addr)))
                        .copied()
                        .collect();
                    self.record_served(&waiters, &targets[..k]);
                    self.in_flight.insert((source, source_addr), rest);
                    self.parked
                        .push((source, source_addr, data.map(<[u8]>::to_vec)));
                    self.stats.parked += 1;
                    return Ok(());
                }
            }
        }
        self.record_served(&waiters, &targets);
        Ok(())
    }

    /// Records the latency of the waiters whose (space, page) is in `served`.
    fn record_served(&mut self, waiters: &[Waiter], served: &[(SpaceId, u64)]) {
        let now = monotonic_ns();
        for w in waiters {
            if served.contains(&(w.space, w.addr)) {
                self.latency.record(now.saturating_sub(w.read_ns));
            }
        }
    }

    pub(super) fn wake(
        &mut self,
        space: SpaceId,
        addr: u64,
        len: u64,
        progress: &mut Progress,
    ) -> Result<()> {
        let Some(installer) = self.spaces[space.0 as usize].installer.as_ref() else {
            return Ok(());
        };
        match uffd::wake(installer.uffd(), addr, len) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                self.gone(space, progress);
                Ok(())
            }
            Err(source) => Err(FaultError::Wake {
                space: space.0,
                addr,
                source,
            }),
        }
    }

    /// The process of `space` exited: close its uffd and forget its waiters.
    pub(super) fn gone(&mut self, space: SpaceId, progress: &mut Progress) {
        if self.spaces[space.0 as usize].installer.take().is_some() {
            progress.gone.push(space);
        }
        for waiters in self.in_flight.values_mut() {
            waiters.retain(|w| w.space != space);
        }
    }
}

/// Sorts an install result into what the loop does next.
pub(super) fn classify(
    result: Result<(), InstallError>,
    space: SpaceId,
    addr: u64,
) -> Result<Outcome> {
    match result {
        Ok(()) => Ok(Outcome::Installed),
        Err(InstallError::AlreadyPresent { .. }) => Ok(Outcome::WasPresent),
        Err(InstallError::Busy { .. }) => Ok(Outcome::Busy),
        Err(InstallError::ProcessGone { .. }) => Ok(Outcome::Gone),
        // No registered mapping there any more (ENOENT), or not one this uffd
        // may fill (EINVAL): the page has nowhere to go.
        Err(InstallError::Copy { source, .. } | InstallError::Zero { source, .. })
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
        {
            Ok(Outcome::Discarded)
        }
        Err(source) => Err(FaultError::Install {
            space: space.0,
            addr,
            source,
        }),
    }
}
