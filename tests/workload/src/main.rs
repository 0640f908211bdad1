//! `pagehop-workload`: the built-in workload (see `pagehop_workload`).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pagehop_dest::handoff;
use pagehop_workload::{self as workload, Fill, Pattern, WorkloadConfig, WriteRate};

/// Dirties the pages of one memory arena at a set rate and pattern, and can
/// log exactly which pages it wrote and when.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Arena size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Write rate in MB/s (10^6 bytes) of distinct data pages per tick (fractional allowed, 0 = idle), or "max".
    #[arg(long, default_value_t = WriteRate::default())]
    write_mbps: WriteRate,
    /// Page choice: uniform, skew (90% of writes to the first 10% of a shard) or seq.
    #[arg(long, default_value_t = Pattern::default())]
    pattern: Pattern,
    /// Page content: random (incompressible) or compressible (after its
    /// first KiB, each page repeats a 64-byte block; lz4 shrinks it ~3.7x).
    #[arg(long, default_value_t = Fill::default())]
    fill: Fill,
    /// Writer threads, each owning a disjoint shard of the data pages.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pacing granularity in milliseconds.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Every 200 ms map, write and unmap short-lived regions outside the arena.
    #[arg(long)]
    churn: bool,
    /// Fork once after this many milliseconds; the child keeps writing its copy.
    #[arg(long)]
    fork_after_ms: Option<u64>,
    /// How long the forked child writes before exiting.
    #[arg(long, default_value_t = 2000)]
    child_lifetime_ms: u64,
    /// Log every page written, per thread and tick, to this file (the child's to FILE.child).
    #[arg(long, value_name = "FILE")]
    ground_truth: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Arena address in hex (mapped with MAP_FIXED_NOREPLACE).
    #[arg(long, value_name = "HEX", default_value = "0x600000000000", value_parser = parse_hex)]
    arena_addr: usize,
    /// Heartbeat period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// Seed of the page choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Check the arena's invariants before exiting; exit non-zero if they fail.
    #[arg(long)]
    check_on_exit: bool,
    /// Resume a migrated arena: map it empty at --arena-addr, hand a
    /// userfaultfd for it to pagehop over the socket named by
    /// $PAGEHOP_UFFD_SOCKET, check every page once pagehop has filled it
    /// (exit 1 if one is wrong), then carry on writing. --size-mib,
    /// --threads, --arena-addr, --seed, --pattern and --fill must be the
    /// source run's (checked against the arena header); pacing options may
    /// differ.
    #[arg(long)]
    resume: bool,
    /// With --resume (post-copy): check only the arena header, then start
    /// writing at once; the pages fault in as they are touched
    /// (--check-on-exit checks them all at the end).
    #[arg(long, requires = "resume")]
    resume_lazy: bool,
    /// With --resume: each writer thread's first N page writes throw the
    /// page away first, alternately by munmap + mmap of a fresh page and by
    /// MADV_DONTNEED, then write it whole.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "resume")]
    recycle_pages: u64,
}

fn parse_hex(s: &str) -> Result<usize, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    usize::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex address: {e}"))
}

impl Args {
    fn into_config(self) -> anyhow::Result<WorkloadConfig> {
        let duration = self
            .duration_secs
            .map(|secs| {
                Duration::try_from_secs_f64(secs)
                    .context("--duration-secs must be a non-negative number")
            })
            .transpose()?;
        let resume = if self.resume {
            let socket = std::env::var_os(handoff::SOCKET_ENV).with_context(|| {
                format!(
                    "--resume needs the handoff socket path in ${}",
                    handoff::SOCKET_ENV
                )
            })?;
            Some(PathBuf::from(socket))
        } else {
            None
        };
        Ok(WorkloadConfig {
            size_mib: self.size_mib,
            write_rate: self.write_mbps,
            pattern: self.pattern,
            fill: self.fill,
            threads: self.threads,
            tick_ms: self.tick_ms,
            churn: self.churn,
            fork_after_ms: self.fork_after_ms,
            child_lifetime_ms: self.child_lifetime_ms,
            ground_truth: self.ground_truth,
            duration,
            arena_addr: self.arena_addr,
            report_ms: self.report_ms,
            seed: self.seed,
            check_on_exit: self.check_on_exit,
            resume,
            resume_lazy: self.resume_lazy,
            recycle_pages: self.recycle_pages,
        })
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let config = Args::parse().into_config()?;
    let summary = workload::run(&config).context("pagehop-workload failed")?;
    if let Some(Err(bad)) = &summary.invariant {
        eprintln!("pagehop-workload: invariant check failed: {bad}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("pagehop-workload").chain(args.iter().copied()))
    }

    #[test]
    fn resume_only_flags_need_resume() {
        let args = parse(&[]).expect("defaults");
        assert!(!args.resume_lazy);
        assert_eq!(args.recycle_pages, 0);
        let args = parse(&["--resume", "--resume-lazy", "--recycle-pages", "8"]).expect("valid");
        assert!(args.resume && args.resume_lazy);
        assert_eq!(args.recycle_pages, 8);
        for flags in [
            &["--resume-lazy"][..],
            &["--recycle-pages", "8"],
            &["--recycle-pages", "0"],
        ] {
            let err = parse(flags).expect_err("needs --resume");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{flags:?}: {err}"
            );
            assert!(err.to_string().contains("--resume"), "{err}");
        }
        assert!(parse(&["--resume", "--recycle-pages", "-1"]).is_err());
    }

    #[test]
    fn flags_reach_the_config() {
        let config = parse(&["--check-on-exit"])
            .expect("valid")
            .into_config()
            .expect("config");
        assert!(!config.resume_lazy);
        assert_eq!(config.recycle_pages, 0);
        assert_eq!(config.resume, None);
    }
}
