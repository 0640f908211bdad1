//! The writer threads: [`Pacing`] turns the write rate into pages per tick,
//! [`Control`] carries the main thread's stop and pause requests, and each
//! thread's [`Worker`] picks and writes its shard's pages tick by tick
//! until told to stop.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{Context, MS, POLL_NS};
use crate::arena::{Layout, ShardWriter};
use crate::ground_truth::GroundTruth;
use crate::pattern::{Pattern, PickState, TickPicker, tick_quota};
use crate::{WorkloadConfig, WorkloadError, sys};
use pagehop_sys::monotonic_ns;

/// Pages per tick when unthrottled.
const MAX_BATCH: u64 = 256;

/// How many pages a writer writes per tick and how long a tick lasts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pacing {
    /// Pages per tick per writer, or `None` when unthrottled.
    pub(super) share: Option<f64>,
    pub(super) tick_ns: u64,
}

impl Pacing {
    pub(super) fn new(config: &WorkloadConfig, layout: &Layout) -> Self {
        let tick_ns = config.tick_ms * MS;
        let share = config
            .write_rate
            .pages_per_sec(layout.page_size)
            .map(|pages_per_sec| pages_per_sec / layout.threads as f64 * tick_ns as f64 / 1e9);
        Self { share, tick_ns }
    }
}

/// Stop and pause requests from the main thread to the writer threads.
#[derive(Debug, Default)]
pub(super) struct Control {
    pub(super) stop: AtomicBool,
    /// Writers park at their next tick boundary while this is set.
    pause: AtomicBool,
    /// Writers currently parked.
    parked: AtomicUsize,
}

impl Control {
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) || sys::stop_requested()
    }

    /// Parks the calling writer while a pause is requested.
    fn pause_point(&self) {
        if !self.pause.load(Ordering::Acquire) {
            return;
        }
        self.parked.fetch_add(1, Ordering::AcqRel);
        while self.pause.load(Ordering::Acquire) && !self.stopping() {
            std::thread::sleep(Duration::from_micros(100));
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
    }

    /// Sleeps until `deadline_ns`, waking early on stop, parking on pause.
    pub(super) fn sleep_until(&self, deadline_ns: u64) {
        loop {
            self.pause_point();
            let now = monotonic_ns();
            if now >= deadline_ns || self.stopping() {
                return;
            }
            std::thread::sleep(Duration::from_nanos((deadline_ns - now).min(POLL_NS)));
        }
    }

    /// Asks every writer to park and waits until all of them have; false if
    /// stopping instead.
    pub(super) fn pause_writers(&self, writers: usize) -> bool {
        self.pause.store(true, Ordering::Release);
        while self.parked.load(Ordering::Acquire) < writers {
            if self.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }

    pub(super) fn resume_writers(&self) {
        self.pause.store(false, Ordering::Release);
    }
}

/// One shard's writer with its pattern state and scratch buffers.
pub(super) struct Worker<'a> {
    writer: ShardWriter<'a>,
    picker: TickPicker,
    state: PickState,
    carry: f64,
    picks: Vec<u64>,
    addrs: Vec<usize>,
}

impl<'a> Worker<'a> {
    pub(super) fn new(writer: ShardWriter<'a>) -> Self {
        let slot = writer.slot();
        Self {
            picker: TickPicker::new(writer.pages()),
            state: slot.pick_state(),
            carry: slot.carry(),
            picks: Vec::new(),
            addrs: Vec::new(),
            writer,
        }
    }

    /// One tick: this tick's share of pages (if any), written and logged.
    pub(super) fn tick(
        &mut self,
        pacing: Pacing,
        pattern: Pattern,
        ground_truth: Option<&GroundTruth>,
        pid: i32,
    ) -> Result<(), WorkloadError> {
        let pages = match pacing.share {
            Some(share) => {
                let (pages, carry) = tick_quota(share, self.carry, self.writer.pages());
                self.carry = carry;
                pages
            }
            None => MAX_BATCH.min(self.writer.pages()),
        };
        if pages == 0 {
            // Nothing is written, not even the header slot: the carry stays local.
            return Ok(());
        }
        self.picker
            .pick_tick(pattern, &mut self.state, pages, &mut self.picks);
        self.addrs.clear();
        let addrs = ground_truth.is_some().then_some(&mut self.addrs);
        let times = self
            .writer
            .write_tick(&self.picks, self.state, self.carry, addrs)
            .map_err(|source| WorkloadError::Recycle {
                thread: self.writer.shard(),
                source,
            })?;
        if let Some(gt) = ground_truth {
            gt.record(pid, times.start_ns, times.end_ns, &self.addrs);
        }
        Ok(())
    }
}

/// Next tick deadline after `deadline`; restarts from now when more than a
/// tick behind (after a pause or an overload) rather than bursting.
pub(super) fn next_deadline(deadline: u64, tick_ns: u64) -> u64 {
    let next = deadline + tick_ns;
    let now = monotonic_ns();
    if now > next { now + tick_ns } else { next }
}

/// A writer thread's life; on an error it asks everything to stop.
pub(super) fn writer_thread(
    writer: ShardWriter<'_>,
    ctx: &Context<'_>,
) -> Result<(), WorkloadError> {
    let mut worker = Worker::new(writer);
    let written = write_until_stopped(&mut worker, ctx);
    ctx.recycled
        .fetch_add(worker.writer.recycled(), Ordering::Relaxed);
    if written.is_err() {
        ctx.control.stop.store(true, Ordering::Release);
    }
    written
}

fn write_until_stopped(worker: &mut Worker<'_>, ctx: &Context<'_>) -> Result<(), WorkloadError> {
    let pacing = ctx.pacing;
    let mut deadline = monotonic_ns() + pacing.tick_ns;
    while !ctx.control.stopping() {
        ctx.control.pause_point();
        worker.tick(pacing, ctx.config.pattern, ctx.ground_truth, ctx.pid)?;
        if pacing.share.is_some() {
            ctx.control.sleep_until(deadline);
            deadline = next_deadline(deadline, pacing.tick_ns);
        }
    }
    Ok(())
}
