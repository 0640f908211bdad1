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
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pagehop_common::{MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MmEvent, MmEventKind};

use crate::bpf::{BpfError, ProbeStats, Probes};
use crate::heat::WriteHeat;
use crate::pagemap::PagemapError;
use crate::target::{Target, TargetError};
use crate::tracker::{self, Backend, DirtyTracker, TrackerError};
use pagehop_mem::layout::{Layout, LayoutError};
use pagehop_mem::pages::{Range, RangeSet};

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

/// An address-space or process event, as reported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub pid: i32,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Per-process figures of one interval.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcessReport {
    pub pid: i32,
    pub dirty_pages: u64,
    pub hot_pages: u64,
    pub resident_pages: u64,
    pub tracked_pages: u64,
    pub untracked_pages: u64,
}

/// One interval, as `--json` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IntervalReport {
    pub interval: u64,
    /// CLOCK_MONOTONIC when tracking of this interval was armed.
    pub t_start_ns: u64,
    /// CLOCK_MONOTONIC just before collection: every write finished by then is in this report.
    pub t_end_ns: u64,
    pub dirty_pages: u64,
    pub dirty_bytes_per_sec: f64,
    pub hot_pages: u64,
    pub resident_pages: u64,
    pub zapped_pages: u64,
    pub fault_events: u64,
    pub collect_us: u64,
    pub events: Vec<Event>,
    pub processes: Vec<ProcessReport>,
    /// Dirty ranges per pid (not printed; for `--dirty-log` and library users).
    #[serde(skip)]
    pub dirty: BTreeMap<i32, RangeSet>,
    /// Ranges whose contents changed without writes (new or moved mappings,
    /// zapped pages): a migration resends them whole (untouched pages go as
    /// zero holes).
    #[serde(skip)]
    pub changed: BTreeMap<i32, RangeSet>,
}

/// The end of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub backend: &'static str,
    pub pid: i32,
    pub intervals: u64,
    pub interval_ms: u64,
    pub wall_ms: u64,
    pub mean_dirty_bytes_per_sec: f64,
    pub max_dirty_bytes_per_sec: f64,
    pub mean_dirty_pages: f64,
    pub total_dirty_pages: u64,
    pub hot_pages: u64,
    pub resident_pages: u64,
    pub processes_tracked: usize,
    pub events: BTreeMap<&'static str, u64>,
    pub fault_events: u64,
    pub fault_events_dropped: u64,
    /// CPU time pagehop itself used (user + system) while tracking.
    pub cpu_ms: f64,
    pub cpu_ns_per_dirty_page: f64,
    /// The pages dirty in the most intervals (a write-heat ranking).
    pub hottest_pages: Vec<HotPage>,
    pub end_reason: String,
}

/// One entry of the write-heat ranking.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HotPage {
    pub pid: i32,
    /// Page address, hex.
    pub addr: String,
    pub dirty_intervals: u32,
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

fn page_align_up(len: u64, page_size: u64) -> u64 {
    len.div_ceil(page_size) * page_size
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

    /// Applies queued address-space and process events; returns them as reported.
    fn apply_mm_events(
        &mut self,
        zapped: &mut BTreeMap<i32, RangeSet>,
        changed: &mut BTreeMap<i32, RangeSet>,
    ) -> Vec<Event> {
        let mut raw: Vec<MmEvent> = Vec::new();
        if let Some(probes) = self.probes.as_mut() {
            probes.drain_mm_events(|e| raw.push(e));
        }
        let mut events = Vec::with_capacity(raw.len());
        for e in raw {
            let pid = e.tgid as i32;
            let kind = MmEventKind::from_raw(e.kind);
            let len = page_align_up(e.len, self.page_size);
            let range = Range::new(e.addr, e.addr.saturating_add(len));
            let mut report = Event {
                pid,
                kind: kind_name(kind),
                range: None,
                detail: None,
            };
            match kind {
                MmEventKind::Mmap | MmEventKind::Munmap | MmEventKind::Mprotect => {
                    report.range = Some(range.to_string());
                    if let Some(p) = self.procs.get_mut(&pid) {
                        if kind != MmEventKind::Mprotect {
                            p.replaced.push(range);
                        }
                        if kind == MmEventKind::Mmap {
                            changed.entry(pid).or_default().insert(range);
                        }
                        p.layout_changed = true;
                    }
                }
                MmEventKind::Mremap => {
                    let new = Range::new(
                        e.arg0,
                        e.arg0.saturating_add(page_align_up(e.arg1, self.page_size)),
                    );
                    report.range = Some(range.to_string());
                    report.detail = Some(format!("to {new}"));
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.replaced.extend([range, new]);
                        changed.entry(pid).or_default().insert(new);
                        p.layout_changed = true;
                    }
                }
                MmEventKind::Brk => {
                    report.detail = Some(format!("break {:#x}", e.addr));
                    if let Some(p) = self.procs.get_mut(&pid) {
                        // The heap grew or shrank between its old end and the new break.
                        let new_end = page_align_up(e.addr, self.page_size);
                        if let Some(heap) = p.layout.heap() {
                            let delta = Range::new(heap.end.min(new_end), heap.end.max(new_end));
                            p.replaced.push(delta);
                            changed.entry(pid).or_default().insert(delta);
                        }
                        p.layout_changed = true;
                    }
                }
                MmEventKind::Madvise => {
                    report.range = Some(range.to_string());
                    let advice = e.arg0;
                    let zaps = matches!(advice, MADV_DONTNEED | MADV_FREE | MADV_REMOVE);
                    report.detail = Some(format!(
                        "advice {advice}{}",
                        if zaps { " (zap)" } else { "" }
                    ));
                    if zaps && self.procs.contains_key(&pid) {
                        zapped.entry(pid).or_default().insert(range);
                        changed.entry(pid).or_default().insert(range);
                    }
                }
                MmEventKind::Fork => {
                    let child = e.arg0 as i32;
                    report.detail = Some(format!("child {child}"));
                    if self.opts.follow_forks && self.procs.contains_key(&pid) {
                        if let Err(err) = self.attach(child, true) {
                            report.detail = Some(format!(
                                "child {child} not followed: {}",
                                pagehop_mem::error_chain(&err)
                            ));
                        }
                    } else if let Some(probes) = self.probes.as_mut() {
                        probes.untrack(child as u32);
                    }
                }
                MmEventKind::Exec => {
                    // The old address space is gone; track the new one afresh.
                    if let Some(old) = self.procs.remove(&pid) {
                        let _ = old.tracker.release();
                        if let Err(err) = self.attach(pid, true) {
                            report.detail = Some(format!(
                                "not re-attached after exec: {}",
                                pagehop_mem::error_chain(&err)
                            ));
                        }
                    }
                }
                MmEventKind::Exit => {
                    if let Some(old) = self.procs.remove(&pid) {
                        let _ = old.tracker.release();
                    }
                }
                MmEventKind::Invalid => continue,
            }
            *self.totals.events.entry(report.kind).or_default() += 1;
            events.push(report);
        }
        events
    }

    /// Runs one interval: collects what was dirtied since the last call.
    pub fn step(&mut self) -> Result<IntervalReport, TrackError> {
        let t_start_ns = self.armed_at_ns;
        let t_end_ns = pagehop_sys::monotonic_ns();
        let collect_started = Instant::now();
        let elapsed = self.last_collect.elapsed().max(Duration::from_micros(1));

        let mut zapped: BTreeMap<i32, RangeSet> = BTreeMap::new();
        let mut changed: BTreeMap<i32, RangeSet> = BTreeMap::new();
        let events = self.apply_mm_events(&mut zapped, &mut changed);
        // Processes that vanished without an exit event (probes lost it, or
        // the process was reaped between intervals).
        self.procs
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}/maps")).exists());

        for (&pid, p) in self.procs.iter_mut() {
            if p.layout_changed || self.probes.is_none() {
                p.layout = Layout::read(pid)?;
                let replaced = std::mem::take(&mut p.replaced);
                let added = p
                    .tracker
                    .sync_layout(&p.layout, &replaced)
                    .map_err(|source| TrackError::Tracker { pid, source })?;
                p.carried.union(&added);
                p.layout_changed = false;
            }
        }

        let mut fault_events = 0u64;
        if self.opts.backend.uses_fault_events()
            && let Some(probes) = self.probes.as_mut()
        {
            let procs = &mut self.procs;
            fault_events = probes.drain_faults(|f| {
                if let Some(p) = procs.get_mut(&(f.tgid as i32)) {
                    p.tracker.note_fault(f.addr);
                }
            }) as u64;
            // The kernel's counter is cumulative: compare with the last interval.
            let dropped = probes.stats().faults_dropped;
            if dropped > self.totals.dropped_seen {
                self.totals.dropped_seen = dropped;
                for p in self.procs.values_mut() {
                    p.tracker.note_lost_faults();
                }
            }
        }
        self.totals.fault_events += fault_events;

        let mut dirty_by_pid = BTreeMap::new();
        let mut processes = Vec::with_capacity(self.procs.len());
        for (&pid, p) in self.procs.iter_mut() {
            let collected = match p.tracker.collect() {
                Ok(c) => c,
                // The process exited during collection.
                Err(_) if !std::path::Path::new(&format!("/proc/{pid}/maps")).exists() => continue,
                Err(source) => return Err(TrackError::Tracker { pid, source }),
            };
            let mut dirty = collected.dirty;
            dirty.union(&std::mem::take(&mut p.carried));
            // Unmapped since: not memory any more.
            let dirty = dirty.intersection(&p.layout.mapped());
            p.hot_pages = p
                .heat
                .record(&dirty, self.page_size, self.opts.hot_intervals);
            let resident = resident_private_pages(pid, self.page_size);
            processes.push(ProcessReport {
                pid,
                dirty_pages: dirty.pages(self.page_size),
                hot_pages: p.hot_pages,
                resident_pages: resident,
                tracked_pages: p.tracker.tracked().pages(self.page_size),
                untracked_pages: p.tracker.untracked().pages(self.page_size),
            });
            dirty_by_pid.insert(pid, dirty);
        }
        self.armed_at_ns = pagehop_sys::monotonic_ns();
        self.last_collect = Instant::now();
        self.interval_no += 1;

        let dirty_pages: u64 = processes.iter().map(|p| p.dirty_pages).sum();
        let rate = (dirty_pages * self.page_size) as f64 / elapsed.as_secs_f64();
        let hot_pages = processes.iter().map(|p| p.hot_pages).sum();
        let resident_pages = processes.iter().map(|p| p.resident_pages).sum();
        self.totals.dirty_pages += dirty_pages;
        self.totals.rate_sum += rate;
        self.totals.rate_max = self.totals.rate_max.max(rate);
        self.totals.last_hot = hot_pages;
        self.totals.last_resident = resident_pages;
        Ok(IntervalReport {
            interval: self.interval_no,
            t_start_ns,
            t_end_ns,
            dirty_pages,
            dirty_bytes_per_sec: rate,
            hot_pages,
            resident_pages,
            zapped_pages: zapped.values().map(|z| z.pages(self.page_size)).sum(),
            changed,
            fault_events,
            collect_us: collect_started.elapsed().as_micros() as u64,
            events,
            processes,
            dirty: dirty_by_pid,
        })
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

fn kind_name(kind: MmEventKind) -> &'static str {
    match kind {
        MmEventKind::Mmap => "mmap",
        MmEventKind::Munmap => "munmap",
        MmEventKind::Mremap => "mremap",
        MmEventKind::Brk => "brk",
        MmEventKind::Madvise => "madvise",
        MmEventKind::Mprotect => "mprotect",
        MmEventKind::Fork => "fork",
        MmEventKind::Exec => "exec",
        MmEventKind::Exit => "exit",
        MmEventKind::Invalid => "invalid",
    }
}

/// Resident anonymous and shared-memory pages (`RssAnon` + `RssShmem` of
/// /proc/PID/status): the memory a migration has to move. Read in O(1), where
/// walking the page tables would cost as much as tracking itself.
fn resident_private_pages(pid: i32, page_size: u64) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    let kib: u64 = status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("RssAnon:")
                .or_else(|| l.strip_prefix("RssShmem:"))
        })
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    kib * 1024 / page_size
}
