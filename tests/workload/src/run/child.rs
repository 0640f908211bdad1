//! The forked child: [`fork_child`] forks with every writer parked, the
//! child writes all shards itself for its lifetime and exits, and the
//! parent's [`Child`] reaps it (asking it to stop at the end of the run).
use std::path::Path;
use std::time::Duration;

use super::writers::{Control, Worker, next_deadline};
use super::{Context, FLUSH_PERIOD_NS, MS};
use crate::WorkloadError;
use crate::ground_truth::GroundTruth;
use crate::sys;
use pagehop_sys::monotonic_ns;

/// How long to wait for the child after asking it to stop.
const CHILD_STOP_NS: u64 = 2_000 * MS;

/// Forks with every writer parked at a tick boundary, so the child's copy of
/// the arena is consistent. Returns the child's pid (`None` if stopping).
pub(super) fn fork_child(ctx: &Context<'_>) -> Result<Option<libc::pid_t>, WorkloadError> {
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
pub(super) struct Child {
    /// Pid of the child while it runs unreaped.
    pub(super) pid: Option<libc::pid_t>,
    /// Its wait status once reaped.
    status: Option<i32>,
}

impl Child {
    /// Reaps the child if it has exited, without blocking.
    pub(super) fn reap(&mut self) -> Result<(), WorkloadError> {
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
    pub(super) fn request_stop(&self) {
        if let Some(pid) = self.pid {
            // The child may have exited already: ESRCH is fine, `finish` reaps it.
            let _ = pagehop_sys::process::kill(pid, libc::SIGTERM);
        }
    }

    /// Waits for a child asked to stop (SIGKILL after [`CHILD_STOP_NS`]) and
    /// reaps it; returns its wait status.
    pub(super) fn finish(&mut self) -> Result<Option<i32>, WorkloadError> {
        self.reap()?;
        let Some(pid) = self.pid else {
            return Ok(self.status);
        };
        let give_up = monotonic_ns() + CHILD_STOP_NS;
        while self.pid.is_some() {
            std::thread::sleep(Duration::from_millis(1));
            if monotonic_ns() >= give_up {
                let _ = pagehop_sys::process::kill(pid, libc::SIGKILL);
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
pub(super) fn child_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".child");
    name.into()
}
