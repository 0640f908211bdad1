//! The built-in workload (`pagehop-workload`) used by tests, demos and
//! benchmarks: writer threads dirty the pages of one [`Arena`] at a set rate
//! and [`Pattern`] with content of a set [`Fill`], and can log exactly which pages they wrote and when (the
//! ground truth that dirty-page trackers are checked against).
//!
//! - [`arena`]: the arena, which holds all of the workload's state.
//! - [`check`]: the arena's invariant check.
//! - [`page`]: data-page content, a pure function of (index, generation, fill).
//! - [`pattern`]: page-choice patterns, write rate and per-tick budget.
//! - [`ground_truth`]: the ground-truth file.
//! - [`churn`]: short-lived mappings outside the arena.
//! - `run`: the writer threads, the forked child and the main loop.
//! - `resume`: resume mode, which carries on a migrated arena.
//!
//! Output on stdout, one flushed line each:
//!
//! ```text
//! ready pid=<pid> arena=<hex start>-<hex end> pages=<arena pages>
//! heartbeat t_ns=<monotonic ns> pages_total=<n> pages_per_sec=<n>
//! exit pages_total=<n> [recycled=<n>] [invariant=ok | invariant=bad page=<hex addr>]
//! ```
//!
//! (`recycled` only with `--recycle-pages`, `invariant` only with
//! `--check-on-exit`.) In resume mode `ready` is replaced by
//!
//! ```text
//! resume pid=<pid> arena=<hex start>-<hex end>      (uffd handed over)
//! resumed invariant=ok pages=<arena pages>          (all pages checked; or:)
//! resumed lazy pages=<arena pages>                  (--resume-lazy: header only; or:)
//! resumed invariant=bad page=<hex addr>             (then exit status 1)
//! ```
//!
//! after which heartbeats follow, the first within one report period. A
//! lazy resume (`--resume-lazy`, post-copy) checks only the header, finishes
//! the interrupted writes and starts the writers at once: the data pages
//! fault in as the writers (and a forked child) touch them, and
//! `--check-on-exit` checks them all at the end. `bad` on the `resumed`
//! line of a lazy resume can only name the header page.
//! `pages_total` counts the source's writes too (the counters live in the
//! arena); `pages_per_sec` only covers this process's own writes. `t_ns` is
//! CLOCK_MONOTONIC, so on one host the gap between the source's last and the
//! destination's first heartbeat is the downtime plus at most two report
//! periods.
pub mod arena;
pub mod check;
pub mod churn;
pub mod ground_truth;
pub mod page;
pub mod pattern;
mod resume;
mod run;
use pagehop_sys::mm as sys;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use arena::{Arena, ArenaError, Layout, RecycleError, ShardWriter};
pub use check::InvariantViolation;
pub use ground_truth::GroundTruthError;
pub use page::Fill;
pub use pattern::{Pattern, WriteRate};
pub use resume::ResumeError;
pub use run::run;

/// The timestamp of a `heartbeat t_ns=...` output line (None for other lines).
pub fn heartbeat_ns(line: &str) -> Option<u64> {
    line.strip_prefix("heartbeat t_ns=")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Default arena address: far from the heap, the stacks and shared libraries.
pub const DEFAULT_ARENA_ADDR: usize = 0x6000_0000_0000;

/// What the workload does; mirrors the command line of `pagehop-workload`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    /// Arena size in MiB.
    pub size_mib: u64,
    pub write_rate: WriteRate,
    pub pattern: Pattern,
    /// What the data pages hold: random-looking (incompressible) or partly
    /// repetitive (compressible) words.
    pub fill: Fill,
    /// Writer threads, each owning a disjoint shard of the data pages.
    pub threads: usize,
    /// Pacing granularity.
    pub tick_ms: u64,
    /// Map, write and unmap short-lived regions every 200 ms.
    pub churn: bool,
    /// Fork once, this long after `ready`.
    pub fork_after_ms: Option<u64>,
    /// How long the forked child writes before exiting.
    pub child_lifetime_ms: u64,
    /// Ground-truth file (the child writes `<file>.child`).
    pub ground_truth: Option<PathBuf>,
    /// Run time; `None` runs until SIGTERM/SIGINT.
    pub duration: Option<Duration>,
    /// Fixed arena address.
    pub arena_addr: usize,
    /// Heartbeat period.
    pub report_ms: u64,
    pub seed: u64,
    /// Check the arena's invariants before exiting.
    pub check_on_exit: bool,
    /// Resume a migrated arena instead of creating one: the arena is mapped
    /// empty, and its userfaultfd is handed to pagehop over this socket (see
    /// `resume`). `size_mib`, `threads`, `arena_addr`, `seed`, `pattern` and
    /// `fill` must be the source run's; the arena header is checked against
    /// them.
    pub resume: Option<PathBuf>,
    /// With `resume`: start the writers right after the header check
    /// instead of checking (and so faulting in) every page first.
    pub resume_lazy: bool,
    /// With `resume`: each writer thread's first this many page writes
    /// recycle the page first, alternately by `munmap` + `mmap` of a fresh
    /// page and by `MADV_DONTNEED` (see [`ShardWriter::recycle_first`]). The
    /// forked child does not recycle.
    pub recycle_pages: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            size_mib: 64,
            write_rate: WriteRate::default(),
            pattern: Pattern::default(),
            fill: Fill::default(),
            threads: 1,
            tick_ms: 10,
            churn: false,
            fork_after_ms: None,
            child_lifetime_ms: 2000,
            ground_truth: None,
            duration: None,
            arena_addr: DEFAULT_ARENA_ADDR,
            report_ms: 1000,
            seed: 1,
            check_on_exit: false,
            resume: None,
            resume_lazy: false,
            recycle_pages: 0,
        }
    }
}

impl WorkloadConfig {
    /// Refuses option combinations that make no sense; the rest of the
    /// checks happen as the run sets up.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.tick_ms == 0 || self.report_ms == 0 {
            return Err(WorkloadError::Config(
                "--tick-ms and --report-ms must be positive".into(),
            ));
        }
        if self.resume.is_none() {
            if self.resume_lazy {
                return Err(WorkloadError::Config(
                    "--resume-lazy only applies to --resume".into(),
                ));
            }
            if self.recycle_pages > 0 {
                return Err(WorkloadError::Config(
                    "--recycle-pages only applies to --resume".into(),
                ));
            }
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Data pages written by the writer threads (the child's not included).
    pub pages_total: u64,
    /// Result of the invariant check, if `check_on_exit` was set, or of the
    /// check after a resume if it failed (the run then stops there).
    pub invariant: Option<Result<(), InvariantViolation>>,
    /// Raw wait status of the forked child, if one was forked and reaped.
    pub child_status: Option<i32>,
    /// Pages the writer threads recycled (`recycle_pages`).
    pub recycled: u64,
}

/// Errors of a workload run.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Arena(#[from] ArenaError),
    #[error(transparent)]
    GroundTruth(#[from] GroundTruthError),
    #[error(transparent)]
    Churn(#[from] churn::ChurnError),
    #[error("resuming the migrated arena")]
    Resume(#[from] ResumeError),
    #[error("installing the SIGTERM/SIGINT handler")]
    Signal(#[source] io::Error),
    #[error("writer thread {thread}")]
    Recycle {
        thread: usize,
        #[source]
        source: RecycleError,
    },
    #[error("spawning writer thread {thread}")]
    Spawn {
        thread: usize,
        #[source]
        source: io::Error,
    },
    #[error("forking the child")]
    Fork(#[source] io::Error),
    #[error("waiting for child {pid}")]
    Wait {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_only_options_need_resume() {
        WorkloadConfig::default().validate().expect("defaults");
        let lazy = WorkloadConfig {
            resume_lazy: true,
            ..WorkloadConfig::default()
        };
        let err = lazy.validate().expect_err("lazy without resume");
        assert_eq!(
            err.to_string(),
            "invalid configuration: --resume-lazy only applies to --resume"
        );
        let recycle = WorkloadConfig {
            recycle_pages: 3,
            ..WorkloadConfig::default()
        };
        let err = recycle.validate().expect_err("recycle without resume");
        assert_eq!(
            err.to_string(),
            "invalid configuration: --recycle-pages only applies to --resume"
        );
        let resumed = WorkloadConfig {
            resume: Some("/run/pagehop.sock".into()),
            ..lazy
        };
        resumed.validate().expect("lazy resume");
        WorkloadConfig {
            resume_lazy: false,
            recycle_pages: 3,
            ..resumed
        }
        .validate()
        .expect("eager resume with recycling");
        let no_ticks = WorkloadConfig {
            tick_ms: 0,
            ..WorkloadConfig::default()
        };
        assert!(matches!(no_ticks.validate(), Err(WorkloadError::Config(_))));
    }

    #[test]
    fn run_refuses_resume_only_options_before_doing_anything() {
        let config = WorkloadConfig {
            recycle_pages: 1,
            // An address nothing could map: the run must fail before mapping.
            arena_addr: 1,
            ..WorkloadConfig::default()
        };
        let err = run(&config).expect_err("refused");
        assert!(matches!(err, WorkloadError::Config(_)), "{err}");
    }
}
