//! The destination side of post-copy: serves the restored process's page
//! faults while the rest of its memory streams in.
//!
//! One thread drives everything that installs pages, so that the fault
//! loop's bookkeeping (present pages, discarded ranges, fork children) sees
//! every install in order. Each turn it:
//! 1. runs [`FaultLoop::run_once`]; a fault on a page still pending at the
//!    source becomes a `PageRequest` on the priority lane, any other fault is
//!    answered from the store (or with a zero page) right after;
//! 2. installs pages that arrived on the priority lane (their faults wait);
//! 3. installs at most [`BACKGROUND_STEP`] pages of the background (pages
//!    that arrived on the data lanes, then pre-copy pages from the store), so
//!    that a fault never waits behind more than that;
//! 4. checks the connections. A break stops the process tree (SIGSTOP: no
//!    thread may run on towards a page that cannot come), cuts the old
//!    connections, and waits up to `--reconnect-timeout` for the source to
//!    come back with the next epoch; it then gets the `Pending` list of what
//!    is still missing, the requests in flight are asked again, and the
//!    process continues.
//!
//! The receiver threads put pages into the store first and only then clear
//! them from `outstanding` and queue them here, so a page that is not
//! outstanding is always readable from the store.
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::faults::{FaultError, FaultLoop, LatencyHistogram};
use crate::store::{PageState, PageStore};
use pagehop_mem::SpaceKey;
use pagehop_mem::page_bits::SpaceBits;
use pagehop_mem::pages::RangeSet;
use pagehop_sys::process::Process;
use pagehop_wire::conn::{Conn, ConnError};
use pagehop_wire::msg::{Done, Stats};
use pagehop_wire::stats::DestStats;

mod arrivals;
mod lanes;
mod requests;

pub use arrivals::Arrivals;
pub use lanes::Lanes;
use requests::Requests;

/// Background pages installed per turn, between two looks at the faults.
const BACKGROUND_STEP: usize = 64;
/// How long a turn waits for faults when there is no background work.
const IDLE_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Faults(#[from] FaultError),
    #[error(
        "post-copy: the source has been gone for {waited:.1} s; the restored process {pid} \
         is left stopped with {missing} pages still on the source (its userfaultfd kept open, \
         so continued it would wait at its first missing page, never read zeros); kill it or \
         migrate again"
    )]
    SourceLost {
        pid: i32,
        missing: u64,
        waited: f64,
        #[source]
        why: LinkBreak,
    },
    #[error("post-copy: no userfaultfd to serve")]
    NothingToServe,
    #[error("post-copy: sending to the source")]
    Control(#[source] ConnError),
}

/// Why post-copy lost the source.
#[derive(Debug, thiserror::Error)]
pub enum LinkBreak {
    #[error("the control lane broke")]
    Control(#[source] ConnError),
    #[error("unexpected {kind} frame from the source")]
    Unexpected { kind: pagehop_wire::FrameKind },
    #[error("a data or priority lane broke")]
    Lane,
}

/// What the caller knows at the switch.
pub struct Start<'a> {
    pub store: &'a Mutex<PageStore>,
    pub lanes: &'a Lanes,
    /// Pages the source still holds, per address space.
    pub pending: &'a BTreeMap<SpaceKey, RangeSet>,
    /// The restored processes (stopped and continued as a tree on a break).
    pub processes: &'a [Process],
    pub reconnect_timeout: Duration,
    /// Where stored pages may be installed, per address space (CRIU's lazy
    /// ranges); `None`: wherever the process registered memory.
    pub installable: Option<&'a BTreeMap<SpaceKey, RangeSet>>,
}

/// A restored process's userfaultfd, and the source address space it holds.
pub struct Served {
    pub uffd: OwnedFd,
    pub space: SpaceKey,
}

/// The fault loop, ready to run; [`Fetch::arrivals`] must be given to the
/// receiver threads before the source is told the process runs.
pub struct Fetch {
    fault_loop: FaultLoop,
    arrivals: Arc<Arrivals>,
    pid: i32,
    reconnect_timeout: Duration,
    /// Pre-copy pages to install in the background, and how far that got.
    local: Vec<(SpaceKey, u64)>,
    local_next: usize,
    /// The fault loop's page source (requests on the priority lane).
    source: Requests,
    remote_latency: LatencyHistogram,
    /// Pages that arrived on the data lanes, to install in the background.
    bulk: VecDeque<(SpaceKey, u64)>,
    stats: DestStats,
    installed: u64,
    started: Instant,
    /// Where stored pages may be installed (`Start::installable`).
    installable: Option<BTreeMap<SpaceKey, RangeSet>>,
}

impl Fetch {
    /// A fault loop over the userfaultfds in `served` (more may come with
    /// [`Fetch::add`]).
    pub fn new(start: &Start<'_>, served: Vec<Served>) -> Result<Self, FetchError> {
        let store = start.store.lock().expect("lock");
        let ps = store.page_size() as u64;
        let mut fault_loop = FaultLoop::empty(store.page_size())?;
        for more in served {
            fault_loop.add(more.uffd, more.space)?;
        }
        let none = RangeSet::new();
        let local: Vec<(SpaceKey, u64)> = store
            .spaces()
            .flat_map(|space| {
                let pending = start.pending.get(&space).unwrap_or(&none);
                store
                    .space(space)
                    .into_iter()
                    .flat_map(|s| s.iter())
                    .map(move |(addr, _)| (space, addr))
                    .filter(move |&(_, addr)| !pending.contains(addr))
            })
            .filter(|&(space, addr)| {
                start
                    .installable
                    .is_none_or(|ranges| ranges.get(&space).is_some_and(|r| r.contains(addr)))
            })
            .collect();
        let arrivals = Arc::new(Arrivals {
            outstanding: Mutex::new(SpaceBits::filled(start.pending, ps)),
            demand: crossbeam::channel::unbounded(),
            bulk: crossbeam::channel::unbounded(),
            waker: fault_loop.waker(),
            lost: AtomicBool::new(false),
            epoch: AtomicU32::new(0),
            demand_pages: AtomicU64::new(0),
            bulk_pages: AtomicU64::new(0),
        });
        let source = Requests::new(&arrivals, start.lanes.take_priority(0), ps);
        Ok(Self {
            fault_loop,
            arrivals,
            pid: start.processes.first().map_or(0, Process::pid),
            reconnect_timeout: start.reconnect_timeout,
            local,
            local_next: 0,
            source,
            remote_latency: LatencyHistogram::new(),
            bulk: VecDeque::new(),
            stats: DestStats::default(),
            installed: 0,
            started: Instant::now(),
            installable: start.installable.cloned(),
        })
    }

    /// Serves one more restored process: `served.uffd` holds the source's
    /// address space `served.space`.
    pub fn add(&mut self, served: Served) -> Result<(), FetchError> {
        self.fault_loop.add(served.uffd, served.space)?;
        Ok(())
    }

    /// One turn of serving faults only (no background installs): while a
    /// restore is still handing over userfaultfds, or waiting for the
    /// source's commit. Waits up to `wait` for faults.
    pub fn serve_faults(&mut self, start: &Start<'_>, wait: Duration) -> Result<(), FetchError> {
        self.turn(start, wait, false)
    }

    /// One turn: faults, then the pages someone waits for, then (with
    /// `background`) a bounded step of the background.
    fn turn(
        &mut self,
        start: &Start<'_>,
        wait: Duration,
        background: bool,
    ) -> Result<(), FetchError> {
        let ps = self.fault_loop.page_size() as u64;
        self.fault_loop.run_once(&mut self.source, wait)?;
        if self.source.priority.is_none() {
            self.source.priority = start
                .lanes
                .take_priority(self.arrivals.epoch.load(Ordering::SeqCst));
        }
        // Faults answered from the store.
        for (space, addr, pages) in std::mem::take(&mut self.source.local) {
            let store = start.store.lock().expect("lock");
            for page in (addr..addr + pages as u64 * ps).step_by(ps as usize) {
                self.installed += install(
                    &mut self.fault_loop,
                    &store,
                    self.installable.as_ref(),
                    space,
                    page,
                )?;
            }
        }
        // Pages someone waits for.
        while let Ok((space, pages)) = self.arrivals.demand.1.try_recv() {
            let store = start.store.lock().expect("lock");
            for page in pages {
                self.installed += install(
                    &mut self.fault_loop,
                    &store,
                    self.installable.as_ref(),
                    space,
                    page,
                )?;
                self.source.answered(space, page, &mut self.remote_latency);
            }
        }
        if !background {
            return Ok(());
        }
        // The background, a bounded step at a time.
        while let Ok((space, pages)) = self.arrivals.bulk.1.try_recv() {
            self.bulk.extend(pages.into_iter().map(|p| (space, p)));
        }
        let mut step = Vec::with_capacity(BACKGROUND_STEP);
        for _ in 0..BACKGROUND_STEP {
            let (space, page) = match self.bulk.pop_front() {
                Some((space, page)) => {
                    self.source.answered(space, page, &mut self.remote_latency);
                    (space, page)
                }
                None if self.local_next < self.local.len() => {
                    self.local_next += 1;
                    self.stats.local_pages += 1;
                    self.local[self.local_next - 1]
                }
                None => break,
            };
            step.push((space, page));
        }
        // The step's pages leave the store under its lock and are installed
        // without it: the intake threads need the lock to store what arrives
        // (demand answers among it), and a loop that takes it again at once
        // starved them, for seconds, while ~250k pre-copied pages went in.
        let copied = copy_out(start.store, self.installable.as_ref(), &step);
        for (space, page, data) in copied {
            self.installed += deliver(&mut self.fault_loop, space, page, data.as_deref())?;
        }
        Ok(())
    }

    pub fn arrivals(&self) -> Arc<Arrivals> {
        Arc::clone(&self.arrivals)
    }

    /// Serves faults until every page is installed, then sends the
    /// statistics and `Done` on `control` (which a reconnect replaces).
    pub fn run(mut self, start: &Start<'_>, control: &mut Conn) -> Result<DestStats, FetchError> {
        let mut epoch = self.arrivals.epoch.load(Ordering::SeqCst);
        loop {
            let busy = !self.bulk.is_empty() || self.local_next < self.local.len();
            let wait = if busy { Duration::ZERO } else { IDLE_WAIT };
            self.turn(start, wait, true)?;
            // The source reconnected on its own (it saw a break we did not).
            if let Some((new_epoch, conn)) = start.lanes.take_control(epoch + 1) {
                epoch = self.adopt(new_epoch, conn, control)?;
                self.stats.reconnects += 1;
                self.source.rearm(
                    start.lanes.take_priority(epoch),
                    &self.fault_loop.in_flight_pages(),
                );
                continue;
            }
            let missing = self.arrivals.outstanding.lock().expect("lock").count();
            let control_broke = control.readable(Duration::ZERO).unwrap_or(true);
            let lane_lost = self.arrivals.lost.swap(false, Ordering::SeqCst);
            if control_broke || (lane_lost && missing > 0) {
                let why = if control_broke {
                    match control.recv() {
                        Ok((kind, _)) => LinkBreak::Unexpected { kind },
                        Err(e) => LinkBreak::Control(e),
                    }
                } else {
                    LinkBreak::Lane
                };
                let stopped = Instant::now();
                epoch = self.reconnect(start, control, epoch, why)?;
                self.stats.reconnects += 1;
                self.stats.stopped_ms += stopped.elapsed().as_secs_f64() * 1e3;
                self.source.rearm(
                    start.lanes.take_priority(epoch),
                    &self.fault_loop.in_flight_pages(),
                );
                continue;
            }
            let finished = self.arrivals.outstanding.lock().expect("lock").count() == 0
                && self.bulk.is_empty()
                && self.local_next == self.local.len()
                && self.arrivals.demand.1.is_empty()
                && self.arrivals.bulk.1.is_empty()
                && self.fault_loop.in_flight() == 0
                && self.source.local.is_empty();
            if finished {
                break;
            }
        }
        let (source, remote_latency, mut stats, installed, started) = (
            &self.source,
            &self.remote_latency,
            std::mem::take(&mut self.stats),
            self.installed,
            self.started,
        );
        let fl = self.fault_loop.stats();
        stats.faults = fl.faults;
        stats.remote_requests = source.sent;
        stats.demand_pages = self.arrivals.demand_pages.load(Ordering::Relaxed);
        stats.background_pages = self.arrivals.bulk_pages.load(Ordering::Relaxed);
        stats.installed_pages = installed;
        let latency = self.fault_loop.latency();
        stats.fault_latency_us = Some(latency.summary());
        stats.blocked_ms = latency.total_ms();
        stats.remote_fault_latency_us = Some(remote_latency.summary());
        stats.postcopy_ms = started.elapsed().as_secs_f64() * 1e3;
        stats.per_space = self
            .fault_loop
            .faults_by_source()
            .into_iter()
            .map(
                |(space, (faults, requested_pages))| pagehop_wire::stats::SpaceFaults {
                    space: space.0,
                    faults,
                    requested_pages,
                },
            )
            .collect();
        stats.forks = fl.forks;
        stats.remaps = fl.remaps;
        stats.removes = fl.removes;
        stats.unmaps = fl.unmaps;
        let json = serde_json::to_string(&stats).unwrap_or_default();
        // Every page is installed: the process is whole and runs on, whether
        // or not the source hears it.
        let told = control.send(&Stats { json }).and_then(|()| {
            control.send(&Done {
                pages_sent: installed,
            })
        });
        if let Err(e) = told {
            log::warn!(
                "post-copy complete, but the source did not hear it: {}",
                pagehop_mem::error_chain(&e)
            );
        }
        Ok(stats)
    }

    /// Switches to a reconnected source's control lane: tells it what is
    /// still missing. Returns the new epoch.
    fn adopt(&mut self, epoch: u32, mut conn: Conn, control: &mut Conn) -> Result<u32, FetchError> {
        self.arrivals.epoch.store(epoch, Ordering::SeqCst);
        self.arrivals.lost.store(false, Ordering::SeqCst);
        let still = self.arrivals.outstanding.lock().expect("lock").to_ranges();
        conn.send_pending(&still).map_err(FetchError::Control)?;
        *control = conn;
        Ok(epoch)
    }

    /// The source is gone for good: the process stays stopped, and its
    /// userfaultfds stay open in a keeper after recv exits, so that a
    /// SIGCONT from outside makes it wait at its first missing page rather
    /// than run on zeros.
    fn keep_stopped(&self, start: &Start<'_>) {
        let Some(root) = start.processes.first() else {
            return;
        };
        match self.fault_loop.keep_registered(root) {
            Ok(keeper) => log::warn!(
                "process {} stays stopped; keeper {keeper} holds its userfaultfd until it exits \
                 (continued, it would wait at its first missing page): kill it to end it",
                root.pid()
            ),
            Err(e) => log::error!(
                "process {} stays stopped, but no keeper could hold its userfaultfd ({e}): \
                 continued, it would read missing pages as zeros; kill it",
                root.pid()
            ),
        }
    }

    /// Stops the process tree, cuts the connections of `epoch`, and waits for
    /// the source to come back; returns the new epoch.
    fn reconnect(
        &mut self,
        start: &Start<'_>,
        control: &mut Conn,
        epoch: u32,
        why: LinkBreak,
    ) -> Result<u32, FetchError> {
        let stopped: Vec<Process> = start
            .processes
            .iter()
            .flat_map(|p| crate::tree::signal_tree(p, libc::SIGSTOP))
            .collect();
        let arrivals = Arc::clone(&self.arrivals);
        let missing = move || arrivals.outstanding.lock().expect("lock").count();
        log::warn!(
            "post-copy connection lost ({}); process {} stopped with {} pages \
             still on the source; waiting {:.1} s for the source",
            pagehop_mem::error_chain(&why),
            start.processes.first().map_or(self.pid, Process::pid),
            missing(),
            self.reconnect_timeout.as_secs_f64()
        );
        start.lanes.cut_upto(epoch);
        let deadline = Instant::now() + self.reconnect_timeout;
        let waited = Instant::now();
        let mut idle = Requests::new(&self.arrivals, None, self.fault_loop.page_size() as u64);
        let epoch = loop {
            // The newest attempt's control lane; one that died with its
            // attempt fails here and the next is waited for.
            if let Some((new_epoch, conn)) = start.lanes.take_control(epoch + 1) {
                match self.adopt(new_epoch, conn, control) {
                    Ok(epoch) => {
                        start.lanes.cut_upto(epoch - 1);
                        break epoch;
                    }
                    Err(e) => log::warn!(
                        "the source's epoch {new_epoch} went before it was adopted: {}",
                        pagehop_mem::error_chain(&e)
                    ),
                }
            }
            if Instant::now() >= deadline {
                self.keep_stopped(start);
                return Err(FetchError::SourceLost {
                    pid: start.processes.first().map_or(self.pid, Process::pid),
                    missing: missing(),
                    waited: waited.elapsed().as_secs_f64(),
                    why,
                });
            }
            // Keep reading events (a stopped process makes none, but its
            // children might have been mid-fork).
            self.fault_loop
                .run_once(&mut idle, Duration::from_millis(20))?;
        };
        for process in stopped {
            let _ = process.signal(libc::SIGCONT);
        }
        log::info!(
            "source back (epoch {epoch}) after {:.2} s; {} pages to go",
            waited.elapsed().as_secs_f64(),
            missing()
        );
        Ok(epoch)
    }
}

/// What to install at `page` of `space`: the store's data, or `None` for a
/// zero page (a page the store lacks was never resident at the source; so
/// is one outside the `installable` ranges, which the source's dump did not
/// hold).
fn stored<'s>(
    store: &'s PageStore,
    installable: Option<&BTreeMap<SpaceKey, RangeSet>>,
    space: SpaceKey,
    page: u64,
) -> Option<&'s [u8]> {
    let allowed = installable.is_none_or(|r| r.get(&space).is_some_and(|r| r.contains(page)));
    match store.get(space, page) {
        PageState::Data(d) if allowed => Some(d),
        _ => None,
    }
}

/// Copies what [`stored`] gives for each of `pages` out of the store.
fn copy_out(
    store: &Mutex<PageStore>,
    installable: Option<&BTreeMap<SpaceKey, RangeSet>>,
    pages: &[(SpaceKey, u64)],
) -> Vec<(SpaceKey, u64, Option<Vec<u8>>)> {
    if pages.is_empty() {
        return Vec::new();
    }
    let store = store.lock().expect("lock");
    pages
        .iter()
        .map(|&(space, page)| {
            let data = stored(&store, installable, space, page).map(<[u8]>::to_vec);
            (space, page, data)
        })
        .collect()
}

/// Installs `data` (or a zero page) at `page` of `space`; 1 if installed
/// anywhere. Spaces found gone (the process exited) simply stop being served.
fn deliver(
    fault_loop: &mut FaultLoop,
    space: SpaceKey,
    page: u64,
    data: Option<&[u8]>,
) -> Result<u64, FetchError> {
    let before = fault_loop.stats().pages_delivered;
    fault_loop.deliver(space, page, data)?;
    Ok((fault_loop.stats().pages_delivered > before) as u64)
}

/// Installs page `page` of `space` from the store (see [`stored`]).
fn install(
    fault_loop: &mut FaultLoop,
    store: &PageStore,
    installable: Option<&BTreeMap<SpaceKey, RangeSet>>,
    space: SpaceKey,
    page: u64,
) -> Result<u64, FetchError> {
    deliver(
        fault_loop,
        space,
        page,
        stored(store, installable, space, page),
    )
}
