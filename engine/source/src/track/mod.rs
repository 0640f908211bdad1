//! `pagehop track`: watch a running process (and the children it forks),
//! report per interval how much memory it dirties, how much of it is hot,
//! and how its address space changes. The process equivalent of QEMU's
//! calc-dirty-rate: it tells how migratable a process is.
//!
//! One interval, in order (the order is what makes the report complete):
//! 1. drain address-space events; register and protect new mappings (pages
//!    already resident in them count as dirty), forget unmapped ones;
//! 2. drain write-fault events and hand them to the per-process trackers;
//! 3. collect each tracker's dirty set, which re-arms it;
//! 4. update write heat and resident counts, and report.
//!
//! - `interval`: [`Session::step`], one interval in that order.
//! - `events`: step 1, the address-space and process events (mappings,
//!   madvise zaps, fork, exec, exit) and what they do to the tracked set.
//! - `report`: what a step and the end of a run report ([`IntervalReport`],
//!   [`Summary`]).
mod events;
mod interval;
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::bpf::{BpfError, ProbeStats, Probes};
use crate::heat::WriteHeat;
use crate::pagemap::PagemapError;
use crate::target::{Target, TargetError};
use crate::tracker::{self, Backend, DirtyTracker, TrackerError};
use pagehop_mem::layout::{Layout, LayoutError};
use pagehop_mem::pages::{Range, RangeSet};

pub use report::{Event, HotPage, IntervalReport, ProcessReport, Summary};

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("the eBPF programs are needed for the {backend} backend and for address-space events")]
    Bpf {
        backend: &'static str,
        #[source]
        source: BpfError,
    },
    #[error("tracking pid {pid}")]
    Tracker {
        pid: i32,
        #[source]
        source: TrackerError,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
}

/// How many pages the summary ranks.
const HOTTEST_LISTED: usize = 10;

pub struct TrackOptions {
    pub backend: Backend,
    pub interval: Duration,
    /// A page is hot when it was dirty in at least this many consecutive intervals.
    pub hot_intervals: u32,
    /// Follow children the process forks.
    pub follow_forks: bool,
}

/// One tracked process.
struct Tracked {
    tracker: Box<dyn DirtyTracker>,
    layout: Layout,
    heat: WriteHeat,
    /// Pages found resident when tracking began or a mapping appeared.
    carried: RangeSet,
    /// Ranges replaced since the last layout sync.
    replaced: Vec<Range>,
    layout_changed: bool,
    hot_pages: u64,
}

/// A running tracking session.
pub struct Session {
    opts: TrackOptions,
    /// The process the session started with.
    root: i32,
    probes: Option<Probes>,
    procs: BTreeMap<i32, Tracked>,
    page_size: u64,
    interval_no: u64,
    armed_at_ns: u64,
    last_collect: Instant,
    started: Instant,
    cpu_start: Duration,
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    dirty_pages: u64,
    rate_sum: f64,
    rate_max: f64,
    events: BTreeMap<&'static str, u64>,
    fault_events: u64,
    last_hot: u64,
    last_resident: u64,
    processes: usize,
    /// The kernel's cumulative dropped-fault count at the last interval.
    dropped_seen: u64,
}

impl Session {
    /// Loads the probes and arms tracking of `target` (and, with
    /// `follow_forks`, of the children it forks).
    pub fn start(target: &Target, opts: TrackOptions) -> Result<Self, TrackError> {
        let backend = opts.backend;
        // Address-space and process events come from eBPF for every backend;
        // the write-fault programs only matter to the ebpf backend.
        let probes =
            Probes::load(backend.uses_fault_events()).map_err(|source| TrackError::Bpf {
                backend: backend.name(),
                source,
            })?;
        let mut session = Self {
            page_size: pagehop_sys::page_size() as u64,
            probes: Some(probes),
            procs: BTreeMap::new(),
            interval_no: 0,
            armed_at_ns: 0,
            last_collect: Instant::now(),
            started: Instant::now(),
            cpu_start: pagehop_sys::own_cpu_time(),
            totals: Totals::default(),
            opts,
            root: target.pid(),
        };
        // The root's resident pages were written before tracking began: not
        // this interval's writes. (A forked child's or exec'd image's are.)
        session.attach(target.pid(), false)?;
        session.armed_at_ns = pagehop_sys::monotonic_ns();
        session.last_collect = Instant::now();
        Ok(session)
    }

    fn attach(&mut self, pid: i32, count_resident_as_dirty: bool) -> Result<(), TrackError> {
        // Events first, so that nothing the process does from here on is missed.
        if let Some(probes) = self.probes.as_mut() {
            probes.track(pid as u32).map_err(|source| TrackError::Bpf {
                backend: self.opts.backend.name(),
                source,
            })?;
        }
        let layout = Layout::read(pid)?;
        let (tracker, carried) = tracker::open(self.opts.backend, pid, &layout)
            .map_err(|source| TrackError::Tracker { pid, source })?;
        self.procs.insert(
            pid,
            Tracked {
                tracker,
                layout,
                heat: WriteHeat::new(),
                carried: if count_resident_as_dirty {
                    carried
                } else {
                    RangeSet::new()
                },
                replaced: Vec::new(),
                layout_changed: false,
                hot_pages: 0,
            },
        );
        self.totals.processes += 1;
        Ok(())
    }

    /// Makes the next [`step`](Self::step) look at all tracked memory rather
    /// than trust the fault events (the final round of a migration: it also
    /// catches writes made into the process by others, which do not fault in
    /// its context).
    pub fn force_full_scan(&mut self) {
        for p in self.procs.values_mut() {
            p.tracker.note_lost_faults();
        }
    }

    /// Starts tracking `pid` too (another member of a followed tree); with
    /// `resident_written` its resident pages count as written in this
    /// interval (a process that joined since the last look). Nothing
    /// happens if it is tracked already.
    pub fn track(&mut self, pid: i32, resident_written: bool) -> Result<(), TrackError> {
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        self.attach(pid, resident_written)
    }

    /// Stops tracking `pid` (it left the tree), leaving it as it was.
    pub fn untrack(&mut self, pid: i32) {
        if let Some(old) = self.procs.remove(&pid) {
            let _ = old.tracker.release();
        }
        if let Some(probes) = self.probes.as_mut() {
            probes.untrack(pid as u32);
        }
    }

    /// Pids tracked right now.
    pub fn pids(&self) -> Vec<i32> {
        self.procs.keys().copied().collect()
    }

    /// Whether the process the session started with is still tracked.
    pub fn root_alive(&self) -> bool {
        self.procs.contains_key(&self.root)
    }

    pub fn probe_stats(&self) -> ProbeStats {
        self.probes.as_ref().map(Probes::stats).unwrap_or_default()
    }

    /// Releases every process's tracker now (uffd-wp unregistered, nothing
    /// of pagehop's left in the processes), keeping the eBPF probes, whose
    /// unloading takes a while and touches no process: for a switch where
    /// another tool (CRIU) must find the processes clean. The session
    /// tracks nothing afterwards.
    pub fn release_trackers(&mut self) -> Result<(), TrackError> {
        let mut first_error = None;
        for (pid, p) in std::mem::take(&mut self.procs) {
            if let Err(source) = p.tracker.release() {
                first_error.get_or_insert(TrackError::Tracker { pid, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops tracking: every process is left as it was.
    pub fn finish(mut self, end_reason: &str) -> Result<Summary, TrackError> {
        let mut hottest: Vec<(u32, i32, u64)> = Vec::new();
        for (&pid, p) in &self.procs {
            hottest.extend(
                p.heat
                    .hottest(HOTTEST_LISTED)
                    .into_iter()
                    .map(|(page, n)| (n, pid, page)),
            );
        }
        hottest.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
        hottest.truncate(HOTTEST_LISTED);
        let mut first_error = None;
        for (pid, p) in std::mem::take(&mut self.procs) {
            if let Err(source) = p.tracker.release() {
                first_error.get_or_insert(TrackError::Tracker { pid, source });
            }
        }
        let stats = self.probe_stats();
        self.probes = None;
        let cpu = pagehop_sys::own_cpu_time().saturating_sub(self.cpu_start);
        let intervals = self.interval_no;
        let summary = Summary {
            backend: self.opts.backend.name(),
            pid: self.root,
            intervals,
            interval_ms: self.opts.interval.as_millis() as u64,
            wall_ms: self.started.elapsed().as_millis() as u64,
            mean_dirty_bytes_per_sec: if intervals > 0 {
                self.totals.rate_sum / intervals as f64
            } else {
                0.0
            },
            max_dirty_bytes_per_sec: self.totals.rate_max,
            mean_dirty_pages: if intervals > 0 {
                self.totals.dirty_pages as f64 / intervals as f64
            } else {
                0.0
            },
            total_dirty_pages: self.totals.dirty_pages,
            hot_pages: self.totals.last_hot,
            resident_pages: self.totals.last_resident,
            processes_tracked: self.totals.processes,
            events: std::mem::take(&mut self.totals.events),
            fault_events: self.totals.fault_events,
            fault_events_dropped: stats.faults_dropped,
            cpu_ms: cpu.as_secs_f64() * 1e3,
            cpu_ns_per_dirty_page: if self.totals.dirty_pages > 0 {
                cpu.as_nanos() as f64 / self.totals.dirty_pages as f64
            } else {
                0.0
            },
            hottest_pages: hottest
                .into_iter()
                .map(|(n, pid, page)| HotPage {
                    pid,
                    addr: format!("{page:x}"),
                    dirty_intervals: n,
                })
                .collect(),
            end_reason: end_reason.to_string(),
        };
        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, p) in std::mem::take(&mut self.procs) {
            let _ = p.tracker.release();
        }
    }
}
