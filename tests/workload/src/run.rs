//! The run: writer threads pace their ticks, the main thread reports,
//! churns, forks, flushes the ground truth and stops everything on a signal
//! or at the end of the duration.
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::arena::{Arena, Layout, ShardWriter};
use super::check::InvariantViolation;
use super::churn::Churn;
use super::ground_truth::GroundTruth;
use super::pattern::{Pattern, PickState, TickPicker, tick_quota};
use super::{RunSummary, WorkloadConfig, WorkloadError, resume, resume::ResumeError, sys};
use pagehop_dest::handoff;
use pagehop_sys::monotonic_ns;

const MS: u64 = 1_000_000;
/// Longest sleep between checks of the stop and pause flags.
const POLL_NS: u64 = 5 * MS;
/// Pages per tick when unthrottled.
const MAX_BATCH: u64 = 256;
const CHURN_PERIOD_NS: u64 = 200 * MS;
const FLUSH_PERIOD_NS: u64 = 100 * MS;
/// How long to wait for the child after asking it to stop.
const CHILD_STOP_NS: u64 = 2_000 * MS;

/// Runs the workload until SIGTERM/SIGINT or the end of `config.duration`,
/// printing the `ready`, `heartbeat` and `exit` lines on stdout.
pub fn run(config: &WorkloadConfig) -> Result<RunSummary, WorkloadError> {
    config.validate()?;
    let size = usize::try_from(config.size_mib)
        .ok()
        .and_then(|mib| mib.checked_mul(1 << 20))
        .filter(|&size| size > 0)
        .ok_or_else(|| WorkloadError::Config(format!("bad arena size {} MiB", config.size_mib)))?;
    let page_size = pagehop_sys::page_size();
    let layout = Layout::new(size, page_size, config.threads)?;
    let pacing = Pacing::new(config, &layout);
    let ground_truth = config
        .ground_truth
        .as_deref()
        .map(GroundTruth::create)
        .transpose()?;
    sys::install_stop_handler().map_err(WorkloadError::Signal)?;
    let pid = sys::getpid();
    let arena = match &config.resume {
        None => {
            let arena = Arena::create(
                config.arena_addr,
                layout,
                config.seed,
                config.pattern,
                config.fill,
            )?;
            emit(format_args!(
                "ready pid={pid} arena={:x}-{:x} pages={}",
                arena.start(),
                arena.end(),
                layout.total_pages
            ));
            arena
        }
        Some(socket) => match resume_arena(config, layout, socket)? {
            Ok(arena) => arena,
            Err(failed) => return Ok(failed),
        },
    };

    let control = Control::default();
    let recycled = AtomicU64::new(0);
    let mut child = Child::default();
    let ctx = Context {
        arena: &arena,
        config,
        pacing,
        control: &control,
        ground_truth: ground_truth.as_ref(),
        pid,
        recycled: &recycled,
    };
    let result = std::thread::scope(|scope| {
        let mut writers = Vec::with_capacity(layout.threads);
        let mut result = Ok(());
        for shard in 0..layout.threads {
            // SAFETY: each shard gets exactly one writer, and the arena's
            // invariants are only checked after this scope has joined them all.
            let mut writer = unsafe { arena.shard_writer(shard) };
            writer.recycle_first(config.recycle_pages);
            let ctx = &ctx;
            match std::thread::Builder::new()
                .name(format!("writer-{shard}"))
                .spawn_scoped(scope, move || writer_thread(writer, ctx))
            {
                Ok(thread) => writers.push(thread),
                Err(source) => {
                    result = Err(WorkloadError::Spawn {
                        thread: shard,
                        source,
                    });
                    break;
                }
            }
        }
        if result.is_ok() {
            result = main_loop(&ctx, &mut child);
        }
        control.stop.store(true, Ordering::Release);
        for thread in writers {
            let written = thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if result.is_ok() {
                result = written;
            }
        }
        result
    });
    // The child winds down (and checks its copy) while we check ours.
    child.request_stop();
    let flushed = ground_truth.as_ref().map_or(Ok(()), GroundTruth::flush);
    let invariant = (result.is_ok() && config.check_on_exit)
        .then(|| arena.check_invariants_parallel(check_threads(&layout)));
    let child_status = child.finish();
    result?;
    flushed?;
    let child_status = child_status?;

    let pages_total = arena.pages_written();
    let recycled = recycled.into_inner();
    let recycled_field = if config.recycle_pages > 0 {
        format!(" recycled={recycled}")
    } else {
        String::new()
    };
    match &invariant {
        None => emit(format_args!(
            "exit pages_total={pages_total}{recycled_field}"
        )),
        Some(Ok(())) => emit(format_args!(
            "exit pages_total={pages_total}{recycled_field} invariant=ok"
        )),
        Some(Err(bad)) => emit(format_args!(
            "exit pages_total={pages_total}{recycled_field} invariant=bad page={:x}",
            bad.addr()
        )),
    }
    Ok(RunSummary {
        pages_total,
        invariant,
        child_status,
        recycled,
    })
}

/// Threads of the full invariant checks (after a resume and at exit): at
/// least two, so that a resume's missing pages fault in concurrently, and as
/// many as the writers or the CPUs, up to 16 (the faults wait on pagehop,
/// not on a CPU).
fn check_threads(layout: &Layout) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    layout.threads.max(cpus).clamp(2, 16)
}

/// Resume mode: maps the arena empty, hands its userfaultfd over, and checks
/// it once pagehop has filled it, or only its header if lazy (printing
/// `resume` and `resumed`). Returns the arena ready for the writers, or the
/// summary of a failed check.
fn resume_arena(
    config: &WorkloadConfig,
    layout: Layout,
    socket: &Path,
) -> Result<Result<Arena, RunSummary>, WorkloadError> {
    let mut arena = Arena::map_empty(config.arena_addr, layout, config.fill)?;
    let mut stream = resume::hand_over(&arena, socket)?;
    // pagehop holds the uffd now: unmapping the arena would wait for it to
    // read the unmap event, so the arena stays mapped until the exit.
    arena.keep_mapped();
    emit(format_args!(
        "resume pid={} arena={:x}-{:x}",
        sys::getpid(),
        arena.start(),
        arena.end()
    ));
    // Blocks in page faults until pagehop has installed the pages (only the
    // header and the pages in flight if lazy).
    let checked = if config.resume_lazy {
        resume::prepare(&arena, config)?
    } else {
        resume::check(&arena, config, check_threads(&layout))?
    };
    if let Err(bad) = checked {
        emit(format_args!("resumed invariant=bad page={:x}", bad.addr()));
        // A bad header's counters are garbage; a bad page's header is sound.
        let pages_total = match bad {
            InvariantViolation::Page { .. } => arena.pages_written(),
            InvariantViolation::Header { .. } => 0,
        };
        return Ok(Err(RunSummary {
            pages_total,
            invariant: Some(Err(bad)),
            child_status: None,
            recycled: 0,
        }));
    }
    if config.resume_lazy {
        emit(format_args!("resumed lazy pages={}", layout.total_pages));
    } else {
        emit(format_args!(
            "resumed invariant=ok pages={}",
            layout.total_pages
        ));
    }
    handoff::send_restore_finished(&mut stream).map_err(ResumeError::from)?;
    Ok(Ok(arena))
}

/// Prints one protocol line on stdout and flushes it. A closed stdout is
/// ignored: the workload keeps running for whoever else watches it.
fn emit(line: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// How many pages a writer writes per tick and how long a tick lasts.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// Pages per tick per writer, or `None` when unthrottled.
    share: Option<f64>,
    tick_ns: u64,
}

impl Pacing {
    fn new(config: &WorkloadConfig, layout: &Layout) -> Self {
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
struct Control {
    stop: AtomicBool,
    /// Writers park at their next tick boundary while this is set.
    pause: AtomicBool,
    /// Writers currently parked.
    parked: AtomicUsize,
}

impl Control {
    fn stopping(&self) -> bool {
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
    fn sleep_until(&self, deadline_ns: u64) {
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
    fn pause_writers(&self, writers: usize) -> bool {
        self.pause.store(true, Ordering::Release);
        while self.parked.load(Ordering::Acquire) < writers {
            if self.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }

    fn resume_writers(&self) {
        self.pause.store(false, Ordering::Release);
    }
}

/// What every writer and the main thread share.
struct Context<'a> {
    arena: &'a Arena,
    config: &'a WorkloadConfig,
    pacing: Pacing,
    control: &'a Control,
    ground_truth: Option<&'a GroundTruth>,
    pid: i32,
    /// Pages recycled by the writer threads that have finished.
    recycled: &'a AtomicU64,
}

/// One shard's writer with its pattern state and scratch buffers.
struct Worker<'a> {
    writer: ShardWriter<'a>,
    picker: TickPicker,
    state: PickState,
    carry: f64,
    picks: Vec<u64>,
    addrs: Vec<usize>,
}

impl<'a> Worker<'a> {
    fn new(writer: ShardWriter<'a>) -> Self {
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
    fn tick(
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
fn next_deadline(deadline: u64, tick_ns: u64) -> u64 {
    let next = deadline + tick_ns;
    let now = monotonic_ns();
    if now > next { now + tick_ns } else { next }
}

/// A writer thread's life; on an error it asks everything to stop.
fn writer_thread(writer: ShardWriter<'_>, ctx: &Context<'_>) -> Result<(), WorkloadError> {
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

/// Reports, churns, forks and flushes until a stop signal or the end of the run.
fn main_loop(ctx: &Context<'_>, child: &mut Child) -> Result<(), WorkloadError> {
    let config = ctx.config;
    let report_ns = config.report_ms * MS;
    let start = monotonic_ns();
    let end = config
        .duration
        .map(|d| start.saturating_add(d.as_nanos().try_into().unwrap_or(u64::MAX)));
    let mut fork_at = config.fork_after_ms.map(|ms| start + ms * MS);
    let mut churn = config
        .churn
        .then(|| Churn::new(config.seed, ctx.arena.layout().page_size));
    let mut churn_addrs = Vec::new();
    // After a resume the arena's counters include the source's writes: rates
    // are measured from what they were when this loop started.
    let (mut last_report, mut last_total) = (start, ctx.arena.pages_written());
    let mut next_report = start + report_ns;
    let mut next_churn = start + CHURN_PERIOD_NS;
    let mut next_flush = start + FLUSH_PERIOD_NS;

    loop {
        let now = monotonic_ns();
        // `control.stop` here means a writer failed.
        if ctx.control.stopping() || end.is_some_and(|end| now >= end) {
            return Ok(());
        }
        if now >= next_report {
            let total = ctx.arena.pages_written();
            let per_sec = (total - last_total) as f64 * 1e9 / (now - last_report) as f64;
            emit(format_args!(
                "heartbeat t_ns={now} pages_total={total} pages_per_sec={}",
                per_sec.round() as u64
            ));
            (last_report, last_total) = (now, total);
            next_report = (next_report + report_ns).max(now + 1);
        }
        if let Some(churn) = churn.as_mut().filter(|_| now >= next_churn) {
            let times = churn.step(&mut churn_addrs)?;
            if let Some(gt) = ctx.ground_truth {
                gt.record(ctx.pid, times.start_ns, times.end_ns, &churn_addrs);
            }
            next_churn = (next_churn + CHURN_PERIOD_NS).max(now + 1);
        }
        if fork_at.is_some_and(|at| now >= at) {
            fork_at = None;
            child.pid = fork_child(ctx)?;
        }
        child.reap()?;
        if now >= next_flush {
            if let Some(gt) = ctx.ground_truth {
                gt.flush()?;
            }
            next_flush = now + FLUSH_PERIOD_NS;
        }

        let mut wake = next_report.min(next_flush);
        if churn.is_some() {
            wake = wake.min(next_churn);
        }
        wake = [fork_at, end].into_iter().flatten().fold(wake, u64::min);
        let now = monotonic_ns();
        std::thread::sleep(Duration::from_nanos(wake.saturating_sub(now).min(POLL_NS)));
    }
}

/// Forks with every writer parked at a tick boundary, so the child's copy of
/// the arena is consistent. Returns the child's pid (`None` if stopping).
fn fork_child(ctx: &Context<'_>) -> Result<Option<libc::pid_t>, WorkloadError> {
    if !ctx.control.pause_writers(ctx.arena.layout().threads) {
        ctx.control.resume_writers();
        return Ok(None);
    }
    // SAFETY: the writers are parked and hold no lock (not the ground-truth
    // mutex, not stdout); the child creates its own writers and ground-truth
    // file, prints nothing, and ends with `exit_now` without returning.
    let forked = unsafe { sys::fork() };
    ctx.control.resume_writers();
    match forked.map_err(WorkloadError::Fork)? {
        sys::Forked::Child => child_main(ctx),
        sys::Forked::Parent(pid) => Ok(Some(pid)),
    }
}

/// The forked child, as seen from the parent.
#[derive(Debug, Default)]
struct Child {
    /// Pid of the child while it runs unreaped.
    pid: Option<libc::pid_t>,
    /// Its wait status once reaped.
    status: Option<i32>,
}

impl Child {
    /// Reaps the child if it has exited, without blocking.
    fn reap(&mut self) -> Result<(), WorkloadError> {
        if let Some(pid) = self.pid {
            let status =
                sys::try_wait(pid).map_err(|source| WorkloadError::Wait { pid, source })?;
            if status.is_some() {
                (self.pid, self.status) = (None, status);
            }
        }
        Ok(())
    }

    /// Asks a still-running child to stop (SIGTERM).
    fn request_stop(&self) {
        if let Some(pid) = self.pid {
            // The child may have exited already: ESRCH is fine, `finish` reaps it.
            let _ = sys::kill(pid, libc::SIGTERM);
        }
    }

    /// Waits for a child asked to stop (SIGKILL after [`CHILD_STOP_NS`]) and
    /// reaps it; returns its wait status.
    fn finish(&mut self) -> Result<Option<i32>, WorkloadError> {
        self.reap()?;
        let Some(pid) = self.pid else {
            return Ok(self.status);
        };
        let give_up = monotonic_ns() + CHILD_STOP_NS;
        while self.pid.is_some() {
            std::thread::sleep(Duration::from_millis(1));
            if monotonic_ns() >= give_up {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            self.reap()?;
        }
        Ok(self.status)
    }
}

/// The forked child: the only thread left, it writes all shards at the same
/// rate and pattern for `child_lifetime_ms`, then exits 0 (1 if the invariant
/// check of `--check-on-exit` fails, 2 on error).
fn child_main(ctx: &Context<'_>) -> ! {
    let code = match child_run(ctx) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("pagehop-workload child: {e}");
            2
        }
    };
    sys::exit_now(code)
}

fn child_run(ctx: &Context<'_>) -> Result<bool, WorkloadError> {
    let config = ctx.config;
    let pid = sys::getpid();
    let ground_truth = config
        .ground_truth
        .as_deref()
        .map(|path| GroundTruth::create(&child_path(path)))
        .transpose()?;
    let control = Control::default();
    let pacing = ctx.pacing;
    let start = monotonic_ns();
    let end = start + config.child_lifetime_ms * MS;
    {
        let mut workers: Vec<Worker<'_>> = (0..ctx.arena.layout().threads)
            // SAFETY: the parent's writer threads do not exist in the child,
            // and the invariant check runs after these writers are dropped.
            .map(|shard| Worker::new(unsafe { ctx.arena.shard_writer(shard) }))
            .collect();
        let mut deadline = start + pacing.tick_ns;
        let mut next_flush = start + FLUSH_PERIOD_NS;
        while !control.stopping() && monotonic_ns() < end {
            for worker in &mut workers {
                worker.tick(pacing, config.pattern, ground_truth.as_ref(), pid)?;
            }
            if pacing.share.is_some() {
                control.sleep_until(deadline.min(end));
                deadline = next_deadline(deadline, pacing.tick_ns);
            }
            if let Some(gt) = ground_truth
                .as_ref()
                .filter(|_| monotonic_ns() >= next_flush)
            {
                gt.flush()?;
                next_flush = monotonic_ns() + FLUSH_PERIOD_NS;
            }
        }
    }
    if let Some(gt) = &ground_truth {
        gt.flush()?;
    }
    if config.check_on_exit {
        if let Err(bad) = ctx.arena.check_invariants() {
            eprintln!("pagehop-workload child: {bad}");
            return Ok(false);
        }
    }
    Ok(true)
}

/// Ground-truth path of the forked child: `<path>.child`.
fn child_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".child");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ground_truth_path() {
        assert_eq!(
            child_path(Path::new("/tmp/gt.txt")),
            Path::new("/tmp/gt.txt.child")
        );
    }

    #[test]
    fn pacing_splits_the_rate_over_threads_and_ticks() {
        let layout = Layout::new(16 << 20, 4096, 2).expect("layout");
        let config = WorkloadConfig {
            threads: 2,
            tick_ms: 10,
            write_rate: super::super::WriteRate::MbPerSec(20.48),
            ..WorkloadConfig::default()
        };
        let pacing = Pacing::new(&config, &layout);
        // 20.48 MB/s = 5000 pages/s, over 2 threads and 100 ticks per second.
        assert_eq!(pacing.share, Some(25.0));
        assert_eq!(pacing.tick_ns, 10 * MS);
        let config = WorkloadConfig {
            write_rate: super::super::WriteRate::Max,
            ..config
        };
        assert_eq!(Pacing::new(&config, &layout).share, None);
    }
}
