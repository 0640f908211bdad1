//! `pagehop track`.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::choices::BackendArg;
use clap::Args;
use pagehop::source::target::Target;
use pagehop::source::track::{IntervalReport, Session, Summary, TrackOptions};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Args)]
pub struct TrackArgs {
    /// Process to track (its forked children are followed too).
    #[arg(long)]
    pid: i32,
    /// How writes are detected.
    #[arg(long, value_enum, default_value_t = BackendArg::Ebpf)]
    backend: BackendArg,
    /// Reporting interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    interval: u64,
    /// Stop after this many seconds (default: until Ctrl-C or the process exits).
    #[arg(long)]
    duration: Option<f64>,
    /// One JSON object per interval and a final {"summary": ...} line.
    #[arg(long)]
    json: bool,
    /// A page is write-hot once dirty in this many consecutive intervals.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..))]
    hot_intervals: u32,
    /// Do not follow children the process forks.
    #[arg(long)]
    no_follow_forks: bool,
    /// Write every interval's dirty ranges to FILE
    /// (`<interval> <t_start_ns> <t_end_ns> <pid> <start>-<end> ...`, hex addresses).
    #[arg(long, value_name = "FILE")]
    dirty_log: Option<PathBuf>,
}

pub fn run(args: TrackArgs) -> anyhow::Result<()> {
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(track(args))
}

async fn track(args: TrackArgs) -> anyhow::Result<()> {
    let interval = Duration::from_millis(args.interval);
    let mut dirty_log = match &args.dirty_log {
        Some(path) => Some(BufWriter::new(File::create(path)?)),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let target = Target::open(args.pid)?;
    let mut session = Session::start(
        &target,
        TrackOptions {
            backend: args.backend.into(),
            interval,
            hot_intervals: args.hot_intervals,
            follow_forks: !args.no_follow_forks,
        },
    )?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "pagehop track: pid {}, backend {}, interval {} ms",
            args.pid,
            pagehop::source::tracker::Backend::from(args.backend).name(),
            args.interval
        )?;
        writeln!(
            out,
            "{:>8}  {:>11}  {:>12}  {:>9}  {:>10}  events",
            "time", "dirty pages", "dirty rate", "hot pages", "resident"
        )?;
    }
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let mut next = tokio::time::Instant::now() + interval;
    let end_reason = loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep_until(next) => None,
            _ = sigint.recv() => Some("interrupted (SIGINT)"),
            _ = sigterm.recv() => Some("terminated (SIGTERM)"),
            _ = sighup.recv() => Some("hung up (SIGHUP)"),
        };
        // A final interval reports what was written up to the stop.
        let report = session.step();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                drop(session);
                return Err(e.into());
            }
        };
        print_interval(&mut out, &report, started, args.json)?;
        if let Some(log) = dirty_log.as_mut() {
            write_dirty_log(log, &report)?;
        }
        if let Some(reason) = stop {
            break reason.to_string();
        }
        if !session.root_alive() {
            break format!("process {} exited", args.pid);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "duration reached".to_string();
        }
        next += interval;
    };
    if let Some(mut log) = dirty_log {
        log.flush()?;
    }
    let summary = session.finish(&end_reason)?;
    print_summary(&mut out, &summary, args.json)?;
    Ok(())
}

fn print_interval(
    out: &mut impl Write,
    r: &IntervalReport,
    started: Instant,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        crate::write_json_line(out, r)?;
    } else {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &r.events {
            *counts.entry(e.kind).or_default() += 1;
        }
        writeln!(
            out,
            "{:>7.2}s  {:>11}  {:>12}  {:>9}  {:>10}  {}",
            started.elapsed().as_secs_f64(),
            r.dirty_pages,
            format_rate(r.dirty_bytes_per_sec),
            r.hot_pages,
            r.resident_pages,
            format_counts(&counts, "-"),
        )?;
        if std::io::stdout().is_terminal() {
            out.flush()?;
        }
    }
    Ok(())
}

fn print_summary(out: &mut impl Write, s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        crate::write_json_line(out, &serde_json::json!({ "summary": s }))?;
        return Ok(());
    }
    writeln!(
        out,
        "summary ({}): {} intervals over {:.1} s, backend {}",
        s.end_reason,
        s.intervals,
        s.wall_ms as f64 / 1e3,
        s.backend
    )?;
    writeln!(
        out,
        "  dirty rate   mean {} / max {}   ({:.0} pages per interval)",
        format_rate(s.mean_dirty_bytes_per_sec),
        format_rate(s.max_dirty_bytes_per_sec),
        s.mean_dirty_pages
    )?;
    writeln!(
        out,
        "  memory       {} resident pages, {} write-hot at the end",
        s.resident_pages, s.hot_pages
    )?;
    writeln!(
        out,
        "  events       {}   processes tracked: {}",
        format_counts(&s.events, "none"),
        s.processes_tracked
    )?;
    if !s.hottest_pages.is_empty() {
        let top: Vec<String> = s
            .hottest_pages
            .iter()
            .take(3)
            .map(|h| format!("{} ({}/{})", h.addr, h.dirty_intervals, s.intervals))
            .collect();
        writeln!(
            out,
            "  hottest      {} (page: dirty intervals)",
            top.join(", ")
        )?;
    }
    writeln!(
        out,
        "  pagehop cost {:.1} ms CPU, {:.0} ns per dirty page; {} fault events ({} dropped)",
        s.cpu_ms, s.cpu_ns_per_dirty_page, s.fault_events, s.fault_events_dropped
    )?;
    Ok(())
}

/// `mmap 2, munmap 1`, or `empty` when there is nothing.
fn format_counts(counts: &BTreeMap<&str, u64>, empty: &str) -> String {
    if counts.is_empty() {
        return empty.to_string();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_rate(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

fn write_dirty_log(log: &mut impl Write, r: &IntervalReport) -> std::io::Result<()> {
    for (pid, dirty) in &r.dirty {
        write!(
            log,
            "{} {} {} {}",
            r.interval, r.t_start_ns, r.t_end_ns, pid
        )?;
        for range in dirty.ranges() {
            write!(log, " {range}")?;
        }
        writeln!(log)?;
    }
    Ok(())
}
