//! The loop proper: [`FaultLoop::run_once`] polls the uffds and the waker,
//! reads every queued message of a ready uffd, handles page faults
//! (coalescing them into in-flight requests) and fork, remap, remove and
//! unmap events, and issues the requests of new pages to the
//! [`PageSource`].
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use super::deliver::{Outcome, classify};
use super::{FaultError, FaultLoop, PageSource, Progress, Result, Space, SpaceId, Waiter, sys};
use crate::install::Installer;
use pagehop_mem::SpaceKey;
use pagehop_mem::pages::Range;
use pagehop_sys::monotonic_ns;
use pagehop_sys::uffd::{self, UffdEvent};

/// Longest request issued for one run of contiguous faulting pages.
const MAX_REQUEST_PAGES: u32 = 256;

impl FaultLoop {
    /// Waits up to `timeout` for messages on any uffd (or the waker), reads
    /// every queued message of each ready uffd in one `read`, handles them,
    /// issues the requests of new pages, and retries parked deliveries.
    pub fn run_once(&mut self, source: &mut dyn PageSource, timeout: Duration) -> Result<Progress> {
        let mut progress = Progress::default();
        let timeout = if self.parked.is_empty() {
            timeout
        } else {
            timeout.min(Duration::from_millis(1))
        };
        let live: Vec<usize> = (0..self.spaces.len())
            .filter(|&i| self.spaces[i].installer.is_some())
            .collect();
        {
            let mut fds = vec![self.waker.0.as_fd()];
            fds.extend(live.iter().map(|&i| {
                self.spaces[i]
                    .installer
                    .as_ref()
                    .expect("live space")
                    .uffd()
            }));
            let mut ready = std::mem::take(&mut self.ready);
            let polled = pagehop_sys::poll::poll_in(&fds, timeout, &mut ready);
            self.ready = ready;
            polled.map_err(FaultError::Poll)?;
        }
        if self.ready.first() == Some(&true) {
            sys::eventfd_drain(self.waker.0.as_fd()).map_err(FaultError::Poll)?;
            progress.woken = true;
        }
        let mut wanted = Vec::new();
        for (k, &i) in live.iter().enumerate() {
            if self.ready.get(k + 1) == Some(&true) {
                self.read_and_handle(SpaceId(i as u32), &mut wanted, &mut progress)?;
            }
        }
        progress.requests = self.issue(source, wanted)?;
        for (space, addr, data) in std::mem::take(&mut self.parked) {
            self.deliver_page(space, addr, data.as_deref(), &mut progress)?;
        }
        Ok(progress)
    }

    fn read_and_handle(
        &mut self,
        space: SpaceId,
        wanted: &mut Vec<(SpaceKey, u64)>,
        progress: &mut Progress,
    ) -> Result<()> {
        let fd = self.spaces[space.0 as usize]
            .installer
            .as_ref()
            .expect("live space")
            .uffd();
        let n = match uffd::read_msgs(fd, &mut self.msgs) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(source) => {
                return Err(FaultError::Read {
                    space: space.0,
                    source,
                });
            }
        };
        let read_ns = monotonic_ns();
        progress.messages += n;
        for i in 0..n {
            let msg = self.msgs[i];
            match msg.event() {
                UffdEvent::Pagefault { address, .. } => {
                    progress.faults += 1;
                    self.fault(
                        space,
                        address & !(self.page_size - 1),
                        read_ns,
                        wanted,
                        progress,
                    )?;
                }
                UffdEvent::Fork { ufd } => {
                    let fd = sys::adopt_fork_fd(ufd)
                        .and_then(|fd| sys::set_nonblocking(fd.as_fd()).map(|()| fd))
                        .map_err(|source| FaultError::ForkFd { ufd, source })?;
                    let parent = &self.spaces[space.0 as usize];
                    let (book, source) = (parent.book.clone(), parent.source);
                    let child = SpaceId(self.spaces.len() as u32);
                    self.spaces.push(Space {
                        source,
                        installer: Some(Installer::with_page_size(fd, self.page_size as usize)),
                        book,
                        faults: 0,
                        requested_pages: 0,
                    });
                    self.stats.forks += 1;
                    progress.forks.push(child);
                }
                UffdEvent::Remap { from, to, len } => {
                    self.stats.remaps += 1;
                    self.release_waiters(space, Range::new(from, from + len), progress)?;
                    self.spaces[space.0 as usize].book.remap(from, to, len);
                }
                UffdEvent::Remove { start, end } => {
                    self.stats.removes += 1;
                    let range = Range::new(start, end);
                    self.spaces[space.0 as usize].book.remove(range);
                    self.release_waiters(space, range, progress)?;
                }
                UffdEvent::Unmap { start, end } => {
                    self.stats.unmaps += 1;
                    let range = Range::new(start, end);
                    self.spaces[space.0 as usize].book.unmap(range);
                    self.release_waiters(space, range, progress)?;
                }
                UffdEvent::Unknown { .. } => self.stats.unknown_events += 1,
            }
        }
        Ok(())
    }

    /// One page fault at page `addr` of `space`.
    fn fault(
        &mut self,
        space: SpaceId,
        addr: u64,
        read_ns: u64,
        wanted: &mut Vec<(SpaceKey, u64)>,
        progress: &mut Progress,
    ) -> Result<()> {
        self.stats.faults += 1;
        let ps = self.page_size;
        let s = &mut self.spaces[space.0 as usize];
        s.faults += 1;
        let Some(installer) = s.installer.as_ref() else {
            return Ok(());
        };
        if s.book.is_present(addr) {
            self.stats.present_wakes += 1;
            self.wake(space, addr, ps, progress)?;
            self.latency.record(monotonic_ns().saturating_sub(read_ns));
            return Ok(());
        }
        if s.book.is_local(addr) {
            let outcome = classify(installer.zero(addr, ps), space, addr)?;
            match outcome {
                Outcome::Installed | Outcome::WasPresent => {
                    if matches!(outcome, Outcome::WasPresent) {
                        self.wake(space, addr, ps, progress)?;
                    }
                    self.spaces[space.0 as usize].book.set_present(addr);
                    self.stats.zero_filled += 1;
                    self.latency.record(monotonic_ns().saturating_sub(read_ns));
                }
                // An event is pending: let the thread fault again after it is read.
                Outcome::Busy | Outcome::Discarded => self.wake(space, addr, ps, progress)?,
                Outcome::Gone => self.gone(space, progress),
            }
            return Ok(());
        }
        let source_addr = (s.source, s.book.source_of(addr));
        let waiter = Waiter {
            space,
            addr,
            read_ns,
        };
        match self.in_flight.get_mut(&source_addr) {
            Some(waiters) => {
                self.stats.duplicates += 1;
                waiters.push(waiter);
            }
            None => {
                self.in_flight.insert(source_addr, vec![waiter]);
                wanted.push(source_addr);
                self.spaces[space.0 as usize].requested_pages += 1;
            }
        }
        Ok(())
    }

    /// Issues requests for `wanted` source pages, contiguous runs merged.
    fn issue(
        &mut self,
        source: &mut dyn PageSource,
        mut wanted: Vec<(SpaceKey, u64)>,
    ) -> Result<usize> {
        wanted.sort_unstable();
        let ps = self.page_size;
        let mut requests = 0;
        let mut i = 0;
        while i < wanted.len() {
            let (space, start) = wanted[i];
            let mut pages = 1u32;
            while pages < MAX_REQUEST_PAGES
                && wanted.get(i + pages as usize) == Some(&(space, start + pages as u64 * ps))
            {
                pages += 1;
            }
            source.request(space, start, pages)?;
            self.stats.requests += 1;
            self.stats.pages_requested += pages as u64;
            requests += 1;
            i += pages as usize;
        }
        Ok(requests)
    }

    /// Drops the waiters of `space` in `range` (their page became local or
    /// went away) and wakes the range, so that no thread waits forever.
    fn release_waiters(
        &mut self,
        space: SpaceId,
        range: Range,
        progress: &mut Progress,
    ) -> Result<()> {
        for waiters in self.in_flight.values_mut() {
            waiters.retain(|w| !(w.space == space && range.contains(w.addr)));
        }
        self.wake(space, range.start, range.len(), progress)
    }
}
