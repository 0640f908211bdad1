//! The destination's userfaultfd fault loop: the heart of post-copy.
//!
//! The restored process creates a userfaultfd, negotiates [`FEATURES`] with
//! `UFFDIO_API`, registers its memory in MISSING mode and hands the uffd over
//! (normally through [`crate::handoff`]). [`FaultLoop`] owns it from then on:
//!
//! ```text
//!  process threads ──fault──> uffd ──read (all queued msgs)──> run_once
//!                                                                │ new pages only
//!                                                                v
//!                                         PageSource::request(addr, pages)
//!                                                                │ later, e.g. from the network
//!  threads wake <── UFFDIO_COPY / ZEROPAGE / WAKE <── deliver(addr, data)
//! ```
//!
//! One thread drives the loop: `run_once` polls the uffds (and the [`Waker`],
//! which a receiver thread signals after queueing data), reads every queued
//! message of a ready uffd in one `read`, handles them in order, and then
//! issues the requests of new pages (contiguous pages of one batch become one
//! request). `deliver` installs data as it arrives.
//!
//! The code is split by job: `messages` is the loop proper (`run_once`:
//! reading and handling fault and event messages, issuing requests),
//! `deliver` installs delivered pages and wakes their waiters, `book` keeps
//! the per-address-space bookkeeping and `histogram` the fault latencies.
//!
//! # Addresses
//! [`PageSource::request`] and [`FaultLoop::deliver`] speak *source*
//! addresses: an address space of the source ([`SpaceKey`]) and an address
//! in the layout the source sent for it. Each uffd the loop serves belongs to
//! one source space (given to [`FaultLoop::new`] and [`FaultLoop::add`]; a
//! fork child inherits its parent's). Source addresses They equal the
//! process's addresses until the process moves a range with mremap; the loop
//! follows `UFFD_EVENT_REMAP` and translates both ways.
//!
//! # Coalescing
//! A page is requested at most once while its request is in flight, however
//! many threads (or fork children) fault on it; every faulting thread is
//! recorded as a waiter and woken by the one install. Delivered pages are
//! remembered as present per address space; a fault on a present page (a
//! fault that raced with the install) is answered with `UFFDIO_WAKE` and is
//! never requested again. `deliver` of a page nobody waits for (background
//! push) installs it into every address space that lacks it.
//!
//! # Events (what the loop does, and why)
//! - **fork** (`UFFD_FEATURE_EVENT_FORK`): the message carries a new uffd for
//!   the child. The loop keeps it as a new address space ([`SpaceId`],
//!   reported in [`Progress::forks`]) that starts with the parent's
//!   bookkeeping and is served like the parent: the child's missing pages
//!   were missing in the parent at fork time, so the source data is right
//!   for both, and one in-flight request serves both. The child's pid is not
//!   in the message. Without the feature the kernel unregisters the child's
//!   ranges and the child silently reads zeroes where pages were missing.
//! - **remap** (`EVENT_REMAP`): present pages, zero-filled ranges and source
//!   addresses move to the new place; the old place becomes new memory.
//!   Threads still blocked on the old place are woken (they fault again on
//!   whatever is there now).
//! - **remove** (`EVENT_REMOVE`, madvise `MADV_DONTNEED`/`MADV_REMOVE`): the
//!   range is **zero-filled from now on**, not re-requested. The process
//!   threw the contents away, so on Linux it must read zeroes, and resending
//!   the source's copy would resurrect stale data (CRIU's lazy-pages daemon
//!   does the same). Later faults there get `UFFDIO_ZEROPAGE`, in-flight
//!   data for it is dropped, and threads blocked in it are woken to fault again.
//! - **unmap** (`EVENT_UNMAP`): the range is forgotten (and treated as new
//!   memory should it ever be registered again); threads blocked in it are
//!   woken with `UFFDIO_WAKE` so that none waits forever (they fault again
//!   and get whatever the address holds now, or SIGSEGV).
//!
//! Without `EVENT_REMOVE`/`EVENT_UNMAP` the loop cannot see those changes and
//! would install source data over memory the process dropped. With
//! `UFFD_FEATURE_THREAD_ID` the faulting thread's id is available in the
//! message; the loop does not need it. Pending events make
//! `UFFDIO_COPY` fail with `EAGAIN` until they are read; a delivery that
//! stays busy is parked and retried after the next `run_once` reads them.
//!
//! # Metrics
//! [`FaultStats`] counts faults, requests, delivered pages and coalesced
//! duplicates; [`LatencyHistogram`] holds, per fault message, the time from
//! the `read` that returned it to the install (or wake) that resolved it,
//! on `CLOCK_MONOTONIC`.
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use pagehop_mem::SpaceKey;
use std::sync::Arc;

use crate::install::{InstallError, Installer};
use pagehop_sys::uffd::{self, UffdMsg};

mod book;
mod deliver;
mod histogram;
mod messages;
use pagehop_sys::fd as sys;

use book::Book;
pub use histogram::{BUCKETS, Bucket, LatencyHistogram, LatencySummary};

/// Features the process should request with `UFFDIO_API` (all are in Linux
/// 4.14+). See the module docs for what is lost without each.
pub const FEATURES: u64 = uffd::UFFD_FEATURE_EVENT_FORK
    | uffd::UFFD_FEATURE_EVENT_REMAP
    | uffd::UFFD_FEATURE_EVENT_REMOVE
    | uffd::UFFD_FEATURE_EVENT_UNMAP
    | uffd::UFFD_FEATURE_THREAD_ID;

/// Messages read per `read` call (32 bytes each).
const MSG_BATCH: usize = 256;

/// Errors of the fault loop.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("page size {page_size} is not a power of two")]
    PageSize { page_size: usize },
    #[error("delivery at {addr:#x} of {len} bytes is not whole pages (page size {page_size})")]
    Unaligned {
        addr: u64,
        len: usize,
        page_size: u64,
    },
    #[error("making the userfaultfd non-blocking")]
    NonBlocking(#[source] io::Error),
    #[error("creating the waker eventfd")]
    Waker(#[source] io::Error),
    #[error("polling the userfaultfds")]
    Poll(#[source] io::Error),
    #[error("reading messages from the userfaultfd of space {space}")]
    Read {
        space: u32,
        #[source]
        source: io::Error,
    },
    #[error("adopting the userfaultfd {ufd} of a forked child")]
    ForkFd {
        ufd: u32,
        #[source]
        source: io::Error,
    },
    #[error("installing page {addr:#x} in space {space}")]
    Install {
        space: u32,
        addr: u64,
        #[source]
        source: InstallError,
    },
    #[error("UFFDIO_WAKE at {addr:#x} in space {space}")]
    Wake {
        space: u32,
        addr: u64,
        #[source]
        source: io::Error,
    },
    #[error("the page source failed to request {pages} pages at {addr:#x}")]
    Source {
        addr: u64,
        pages: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Result<T, E = FaultError> = std::result::Result<T, E>;

/// Where the pages come from (the network, in post-copy).
pub trait PageSource: Send {
    /// Starts fetching `pages` pages at `addr` (page-aligned); the data arrives later through `FaultLoop::deliver`.
    fn request(&mut self, space: SpaceKey, addr: u64, pages: u32) -> Result<(), FaultError>;
}

/// One address space served by the loop: 0 is the process whose uffd was
/// given to [`FaultLoop::new`], later ones are fork children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SpaceId(pub u32);

impl std::fmt::Display for SpaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Counters of the loop's whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultStats {
    /// Page-fault messages read.
    pub faults: u64,
    /// `PageSource::request` calls.
    pub requests: u64,
    /// Pages asked for by those calls.
    pub pages_requested: u64,
    /// Faults that joined a request already in flight instead of making one.
    pub duplicates: u64,
    /// Pages installed from deliveries (per address space).
    pub pages_delivered: u64,
    /// Faults on pages already present, answered with `UFFDIO_WAKE`, plus
    /// deliveries that found the page present (`EEXIST`).
    pub present_wakes: u64,
    /// Faults in zapped/unmapped ranges answered with `UFFDIO_ZEROPAGE`.
    pub zero_filled: u64,
    /// Deliveries not installed: the page was zapped, unmapped or moved away,
    /// or no longer exists in the process.
    pub discarded: u64,
    /// Deliveries parked because an event was pending (retried later).
    pub parked: u64,
    pub forks: u64,
    pub remaps: u64,
    pub removes: u64,
    pub unmaps: u64,
    /// Messages with an event code the loop does not know (ignored).
    pub unknown_events: u64,
}

/// What one `run_once` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages read (faults and events).
    pub messages: usize,
    /// Page-fault messages among them.
    pub faults: usize,
    /// Requests issued to the source.
    pub requests: usize,
    /// Address spaces added by fork events.
    pub forks: Vec<SpaceId>,
    /// Address spaces whose process exited (found when installing or waking).
    pub gone: Vec<SpaceId>,
    /// The [`Waker`] was signalled.
    pub woken: bool,
}

/// Interrupts a `run_once` that is waiting in poll, from any thread (e.g. a
/// receiver that has just queued data for `deliver`).
#[derive(Debug, Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) -> io::Result<()> {
        sys::eventfd_signal(self.0.as_fd())
    }
}

/// A thread blocked on a page, waiting for its request.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    space: SpaceId,
    /// The page in the waiter's address space.
    addr: u64,
    /// When its fault message was read.
    read_ns: u64,
}

#[derive(Debug)]
struct Space {
    /// The source address space whose pages this one holds.
    source: SpaceKey,
    /// `None` once the process is gone.
    installer: Option<Installer>,
    book: Book,
    /// Fault messages read from its userfaultfd.
    faults: u64,
    /// Pages its faults asked for (installed from the store or fetched).
    requested_pages: u64,
}

/// The fault loop; see the module docs.
#[derive(Debug)]
pub struct FaultLoop {
    page_size: u64,
    spaces: Vec<Space>,
    /// Source page -> threads waiting for it. An entry whose waiters all went
    /// away (unmap, remove) stays until delivery, so it is not requested twice.
    in_flight: HashMap<(SpaceKey, u64), Vec<Waiter>>,
    /// Deliveries that met a pending event, with their data.
    parked: Vec<(SpaceKey, u64, Option<Vec<u8>>)>,
    waker: Waker,
    msgs: Vec<UffdMsg>,
    ready: Vec<bool>,
    stats: FaultStats,
    latency: LatencyHistogram,
}

impl FaultLoop {
    /// Keeps every served userfaultfd open in a keeper process until
    /// `until_exit_of` exits ([`pagehop_sys::process::spawn_fd_keeper`]), so
    /// that the process, left stopped, can never read a page it did not
    /// receive as zeros. Returns the keeper's pid.
    pub fn keep_registered(
        &self,
        until_exit_of: &pagehop_sys::process::Process,
    ) -> io::Result<i32> {
        let uffds: Vec<_> = self
            .spaces
            .iter()
            .filter_map(|s| s.installer.as_ref().map(Installer::uffd))
            .collect();
        pagehop_sys::process::spawn_fd_keeper(&uffds, until_exit_of.pidfd())
    }

    /// A loop serving the process that owns `uffd`, whose memory is the
    /// source's address space `source` (see the module docs for what the
    /// process must have set up). The uffd is made non-blocking.
    pub fn new(uffd: OwnedFd, page_size: usize, source: SpaceKey) -> Result<Self> {
        let mut fault_loop = Self::empty(page_size)?;
        fault_loop.add(uffd, source)?;
        Ok(fault_loop)
    }

    /// A loop that serves no process yet ([`FaultLoop::add`] adds them).
    pub fn empty(page_size: usize) -> Result<Self> {
        if !page_size.is_power_of_two() {
            return Err(FaultError::PageSize { page_size });
        }
        let waker = Waker(Arc::new(sys::eventfd().map_err(FaultError::Waker)?));
        Ok(Self {
            page_size: page_size as u64,
            spaces: Vec::new(),
            in_flight: HashMap::new(),
            parked: Vec::new(),
            waker,
            msgs: vec![UffdMsg::default(); MSG_BATCH],
            ready: Vec::new(),
            stats: FaultStats::default(),
            latency: LatencyHistogram::new(),
        })
    }

    /// Serves another process too: `uffd` holds the source's address space
    /// `source` (a process tree: one uffd per task).
    pub fn add(&mut self, uffd: OwnedFd, source: SpaceKey) -> Result<SpaceId> {
        sys::set_nonblocking(uffd.as_fd()).map_err(FaultError::NonBlocking)?;
        let id = SpaceId(self.spaces.len() as u32);
        self.spaces.push(Space {
            source,
            installer: Some(Installer::with_page_size(uffd, self.page_size as usize)),
            book: Book::default(),
            faults: 0,
            requested_pages: 0,
        });
        Ok(id)
    }

    pub fn page_size(&self) -> usize {
        self.page_size as usize
    }

    /// A handle that makes a waiting `run_once` return.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Per source address space: fault messages and pages asked of the
    /// source, of its process here and of the children it forked here.
    pub fn faults_by_source(&self) -> BTreeMap<SpaceKey, (u64, u64)> {
        let mut out: BTreeMap<SpaceKey, (u64, u64)> = BTreeMap::new();
        for s in &self.spaces {
            let e = out.entry(s.source).or_default();
            e.0 += s.faults;
            e.1 += s.requested_pages;
        }
        out
    }

    /// Latency of every resolved fault message.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Pages requested and not delivered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Source pages requested and not delivered yet (to ask again after the
    /// source reconnects).
    pub fn in_flight_pages(&self) -> Vec<(SpaceKey, u64)> {
        let mut pages: Vec<(SpaceKey, u64)> = self.in_flight.keys().copied().collect();
        pages.sort_unstable();
        pages
    }

    /// Address spaces still served (their process has not been seen to exit).
    pub fn live_spaces(&self) -> Vec<SpaceId> {
        (0..self.spaces.len() as u32)
            .map(SpaceId)
            .filter(|id| self.spaces[id.0 as usize].installer.is_some())
            .collect()
    }

    /// Pages known present in `space`.
    pub fn present_pages(&self, space: SpaceId) -> usize {
        self.spaces
            .get(space.0 as usize)
            .map_or(0, |s| s.book.present_pages())
    }
}
