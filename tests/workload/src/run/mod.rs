//! The run: writer threads pace their ticks, the main thread reports,
//! churns, forks, flushes the ground truth and stops everything on a signal
//! or at the end of the duration.
//!
//! This module has [`run`] itself, the resume set-up and the main loop; the
//! rest is split by job:
//! - `writers`: the pacing, the stop and pause control, and the writer
//!   threads' tick loop.
//! - `child`: forking the child with the writers parked, the child's own
//!   run, and waiting for it.
mod child;
mod writers;

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::arena::{Arena, Layout};
use super::check::InvariantViolation;
use super::churn::Churn;
use super::ground_truth::GroundTruth;
use super::{RunSummary, WorkloadConfig, WorkloadError, resume, resume::ResumeError, sys};
use child::{Child, fork_child};
use pagehop_dest::handoff;
use pagehop_sys::monotonic_ns;
use writers::{Control, Pacing, writer_thread};

const MS: u64 = 1_000_000;
/// Longest sleep between checks of the stop and pause flags.
const POLL_NS: u64 = 5 * MS;
const CHURN_PERIOD_NS: u64 = 200 * MS;
const FLUSH_PERIOD_NS: u64 = 100 * MS;

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

#[cfg(test)]
mod tests {
    use super::child::child_path;
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
