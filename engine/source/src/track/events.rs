//! Step 1 of an interval: drains the address-space and process events the
//! eBPF probes queued, marks the ranges they replace or change (new, moved
//! and grown mappings, madvise zaps), follows forks and execs, forgets
//! exited processes, and turns each event into a reported [`Event`].
use std::collections::BTreeMap;

use pagehop_common::{MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MmEvent, MmEventKind};

use super::{Event, Session};
use pagehop_mem::pages::{Range, RangeSet};

fn page_align_up(len: u64, page_size: u64) -> u64 {
    len.div_ceil(page_size) * page_size
}

impl Session {
    /// Applies queued address-space and process events; returns them as reported.
    pub(super) fn apply_mm_events(
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
