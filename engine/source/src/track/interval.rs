//! One interval of a session, [`Session::step`]: applies the address-space
//! events, syncs changed layouts into the trackers, hands the write-fault
//! events to them, collects and re-arms each tracker's dirty set, and
//! updates write heat, resident counts and the totals for the summary.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{IntervalReport, ProcessReport, Session, TrackError};
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;

impl Session {
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
