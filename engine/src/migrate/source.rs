//! `pagehop send`: pre-copy live migration, source side.
//!
//! 1. Validate the target, connect (one control connection plus `--streams`
//!    data connections, each authenticated), start dirty tracking.
//! 2. Round 0 sends every resident page of the writable mappings; round k
//!    sends what the tracker saw written during round k-1. The destination
//!    acknowledges each round once it holds all of its pages, which gives the
//!    round's end-to-end bandwidth and keeps page versions in order across
//!    streams.
//! 3. Switch when the remaining set would go within `--downtime-target` at
//!    the measured bandwidth, at `--max-rounds`, or when the dirty rate keeps
//!    exceeding the bandwidth (the process does not converge).
//! 4. Freeze, collect the final dirty set with a full scan, send it,
//!    `Switchover`; the destination installs and starts the process and
//!    answers `Done`: downtime is freeze → Done.
//! 5. `--verify`: digests of every page of the frozen source are compared
//!    with what the destination received.
//!
//! Until `Done` arrives, any failure thaws the source and releases tracking:
//! it keeps running exactly as before.
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::conn::{Conn, ConnError, codes};
use super::stream::{PageStreamer, RoundStats, StreamError, ZeroCopy};
use super::{MigrateError, Progress, Report, RoundReport};
use crate::freeze::{self, FreezeMethod, Frozen};
use crate::layout::Layout;
use crate::pagemap::Pagemap;
use crate::pages::RangeSet;
use crate::reader::PageReader;
use crate::store::page_digest;
use crate::target::Target;
use crate::track::{Session, TrackOptions};
use crate::tracker::Backend;
use crate::wire::auth::Token;
use crate::wire::batch::Compress;
use crate::wire::msg::{
    self, Done, EndOfRound, LayoutAck, Role, Switchover, VerifyDigests, VerifyResult,
};

pub struct SendOptions {
    pub pid: i32,
    pub to: SocketAddr,
    pub token: Option<Token>,
    pub backend: Backend,
    pub compress: Compress,
    pub zerocopy: ZeroCopy,
    pub streams: usize,
    pub downtime_target: Duration,
    pub max_rounds: u32,
    pub freeze: FreezeMethod,
    pub leave_stopped: bool,
    pub verify: bool,
    pub connect_timeout: Duration,
    /// A destination that takes no data for this long is given up.
    pub stall_timeout: Duration,
}

/// Rounds in a row with a dirty rate above the bandwidth before pagehop
/// concludes the process does not converge.
const NON_CONVERGING_ROUNDS: u32 = 3;
/// Set once the destination runs: from then on, aborting must not let the
/// source run too (see [`destination_runs`]).
static DESTINATION_RUNS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a migration of this process has reached the point where the
/// destination runs (the source must then never be resumed).
pub fn destination_runs() -> bool {
    DESTINATION_RUNS.load(std::sync::atomic::Ordering::SeqCst)
}

/// A round whose leftover is at least this share of what it sent made no progress.
const STALL_SHARE: f64 = 0.9;
/// How long a freeze may take before the migration is abandoned.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the destination may take to install and start the process.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

fn connect(opts: &SendOptions, page_size: u32) -> Result<(Conn, Vec<TcpStream>), MigrateError> {
    let caps = msg::CAP_LZ4 | msg::CAP_ZEROCOPY | msg::CAP_VERIFY;
    let open = || -> Result<Conn, MigrateError> {
        let stream =
            TcpStream::connect_timeout(&opts.to, opts.connect_timeout).map_err(|source| {
                MigrateError::Connect {
                    addr: opts.to,
                    source,
                }
            })?;
        Ok(Conn::handshake(
            stream,
            Role::Source,
            opts.token.as_ref(),
            page_size,
            caps,
            opts.connect_timeout,
        )?)
    };
    let control = open()?;
    let mut data = Vec::with_capacity(opts.streams);
    for _ in 0..opts.streams.max(1) {
        data.push(open()?.into_stream());
    }
    Ok((control, data))
}

fn layout_msg(layout: &Layout) -> msg::Layout {
    msg::Layout {
        vmas: layout
            .vmas
            .iter()
            .filter(|v| v.is_writable_private_state())
            .map(|v| msg::VmaDesc {
                start: v.range.start,
                end: v.range.end,
                prot: (v.read as u32) | (v.write as u32) << 1 | (v.exec as u32) << 2,
                flags: v.shared as u32,
                name: v.name.clone(),
            })
            .collect(),
    }
}

/// Sends the layout and waits until the destination applied it: pages for
/// the new mappings travel on the data streams, which are not ordered with
/// the control connection.
fn send_layout(control: &mut Conn, layout: &Layout) -> Result<(), MigrateError> {
    let msg = layout_msg(layout);
    control.send(&msg)?;
    let ack: LayoutAck = control.recv_msg()?;
    if ack.vmas as usize != msg.vmas.len() {
        return Err(MigrateError::Protocol(format!(
            "destination acknowledged a layout of {} mappings, sent {}",
            ack.vmas,
            msg.vmas.len()
        )));
    }
    Ok(())
}

/// Sends one round and waits for the destination to hold all of it.
fn run_round(
    control: &mut Conn,
    streamer: &mut PageStreamer,
    round: u32,
    pages: &RangeSet,
) -> Result<(RoundStats, Duration), MigrateError> {
    let started = Instant::now();
    let stats = streamer.send_round(round, pages)?;
    control.send(&EndOfRound {
        round,
        pages: stats.pages,
        bytes_raw: stats.bytes_raw,
        bytes_wire: stats.bytes_wire,
    })?;
    let ack: EndOfRound = control.recv_msg().map_err(|e| match e {
        ConnError::Frame(crate::wire::FrameError::Io { source })
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            MigrateError::Protocol(format!(
                "the destination did not acknowledge round {round} in time: given up"
            ))
        }
        other => other.into(),
    })?;
    if ack.round != round || ack.pages != stats.pages {
        return Err(MigrateError::Protocol(format!(
            "destination acknowledged round {} with {} pages, sent round {round} with {}",
            ack.round, ack.pages, stats.pages
        )));
    }
    Ok((stats, started.elapsed()))
}

pub fn send(opts: SendOptions, progress: &mut dyn Progress) -> Result<Report, MigrateError> {
    let started = Instant::now();
    let cpu_start = crate::track::own_cpu_time();
    let page_size = crate::sys::page_size();
    let ps = page_size as u64;
    let target = Target::open(opts.pid)?;
    let (mut control, data) = connect(&opts, page_size as u32)?;
    // Tracking starts before round 0 reads anything, so no write is missed.
    let mut session = Session::start(TrackOptions {
        pid: target.pid,
        backend: opts.backend,
        interval: Duration::from_millis(100),
        hot_intervals: 3,
        follow_forks: false,
    })?;
    let mut streamer = PageStreamer::new(
        target.pid,
        data,
        opts.compress,
        opts.zerocopy,
        opts.stall_timeout,
    )?;
    let setup = started.elapsed();

    let result = precopy(&opts, &mut control, &mut session, &mut streamer, progress);
    let (mut report, frozen) = match result {
        Ok(ok) => ok,
        Err(e) => {
            control.send_error(codes::SOURCE, &crate::track::error_chain(&e));
            // The session (and with it all write protection) is released on drop.
            drop(session);
            return Err(e);
        }
    };
    // The destination runs: the source is done. Tracking goes first, while the
    // process is still frozen.
    let _ = session.finish("migrated");
    if opts.leave_stopped {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(target.pid, libc::SIGSTOP) };
        let _ = frozen.thaw();
    } else {
        frozen.kill();
    }
    report.setup_ms = setup.as_secs_f64() * 1e3;
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    report.page_size = ps;
    report.streams = opts.streams.max(1);
    report.send_mode = match streamer.mode() {
        crate::uring::SendMode::Copy => "copy",
        crate::uring::SendMode::ZeroCopy => "zerocopy",
    };
    let t = streamer.totals;
    report.pages_sent = t.pages;
    report.zero_pages = t.zero_pages;
    report.bytes_raw = t.bytes_raw;
    report.bytes_wire = t.bytes_wire;
    report.compression_ratio = if t.bytes_wire > 0 {
        t.bytes_raw as f64 / t.bytes_wire as f64
    } else {
        1.0
    };
    let transfer_s: f64 = report.per_round.iter().map(|r| r.ms).sum::<f64>() / 1e3;
    report.throughput_bytes_per_sec = if transfer_s > 0.0 {
        t.bytes_wire as f64 / transfer_s
    } else {
        0.0
    };
    report.engine_cpu_ms = crate::track::own_cpu_time()
        .saturating_sub(cpu_start)
        .as_secs_f64()
        * 1e3;
    Ok(report)
}

/// Rounds, freeze, final round, switchover. On success the source is frozen.
fn precopy(
    opts: &SendOptions,
    control: &mut Conn,
    session: &mut Session,
    streamer: &mut PageStreamer,
    progress: &mut dyn Progress,
) -> Result<(Report, Box<dyn Frozen>), MigrateError> {
    let pid = opts.pid;
    let ps = crate::sys::page_size() as u64;
    let mut report = Report {
        mode: "precopy",
        ..Report::default()
    };
    // An acknowledgement that does not come within the stall timeout means the
    // destination is stuck: give up rather than hold the source.
    control.set_read_timeout(Some(opts.stall_timeout))?;
    let mut layout = Layout::read(pid)?;
    send_layout(control, &layout)?;
    let mut pages = initial_pages(pid, &layout)?;
    let mut round = 0u32;
    let mut bandwidth = 0.0f64; // bytes per second, end to end
    let mut over_bandwidth = 0;
    let switch_reason = loop {
        let (stats, took) = run_round(control, streamer, round, &pages)?;
        bandwidth = (stats.bytes_wire.max(1) as f64 / took.as_secs_f64()).max(bandwidth * 0.5);
        let interval = session.step()?;
        let mut dirty = interval.dirty.get(&pid).cloned().unwrap_or_default();
        let dirty_pages = dirty.pages(ps);
        if let Some(changed) = interval.changed.get(&pid) {
            dirty.union(changed);
        }
        let dirty_rate = interval.dirty_bytes_per_sec;
        report.per_round.push(RoundReport {
            dirty_pages_after: dirty_pages,
            dirty_bytes_per_sec: dirty_rate,
            bandwidth_bytes_per_sec: bandwidth,
            ..RoundReport::sent(round, &stats, took)
        });
        progress.round(report.per_round.last().expect("just pushed"));
        if !interval.events.is_empty() {
            let now = Layout::read(pid)?;
            if now != layout {
                layout = now;
                send_layout(control, &layout)?;
            }
        }
        let sent_pages = pages.pages(ps);
        pages = dirty.intersection(&layout.writable_ranges());
        round += 1;
        let remaining = (pages.bytes() as f64) / bandwidth.max(1.0);
        // Not converging: the process dirties faster than the link carries,
        // or what is left no longer shrinks (its writable set is dirtied
        // whole during every round, which caps the measured rate at the
        // bandwidth).
        let no_progress = pages.pages(ps) as f64 >= STALL_SHARE * sent_pages as f64;
        over_bandwidth = if dirty_rate > bandwidth || no_progress {
            over_bandwidth + 1
        } else {
            0
        };
        if remaining <= opts.downtime_target.as_secs_f64() {
            break format!(
                "converged: {} pages left, {:.1} ms at {:.0} MB/s",
                pages.pages(ps),
                remaining * 1e3,
                bandwidth / 1e6
            );
        }
        if round >= opts.max_rounds {
            break format!(
                "max rounds ({}) reached with {} pages left",
                opts.max_rounds,
                pages.pages(ps)
            );
        }
        if over_bandwidth >= NON_CONVERGING_ROUNDS {
            break format!(
                "not converging: for {NON_CONVERGING_ROUNDS} rounds the dirty set did not shrink below {:.0}% \
                 or the dirty rate exceeded the bandwidth ({:.1} MB/s dirtied, {:.1} MB/s sent, {} pages left)",
                STALL_SHARE * 100.0,
                dirty_rate / 1e6,
                bandwidth / 1e6,
                pages.pages(ps)
            );
        }
    };
    report.switch_reason = switch_reason;

    // Stop the world.
    let frozen = freeze::freeze(pid, &opts.freeze, FREEZE_TIMEOUT)?;
    let frozen_at = Instant::now();
    session.force_full_scan();
    let last = session.step()?;
    let now = Layout::read(pid)?;
    if now != layout {
        layout = now;
        send_layout(control, &layout)?;
    }
    pages.union(&last.dirty.get(&pid).cloned().unwrap_or_default());
    if let Some(changed) = last.changed.get(&pid) {
        pages.union(changed);
    }
    let pages = pages.intersection(&layout.writable_ranges());
    let (stats, took) = run_round(control, streamer, round, &pages)?;
    report.per_round.push(RoundReport {
        bandwidth_bytes_per_sec: stats.bytes_wire as f64 / took.as_secs_f64().max(1e-9),
        ..RoundReport::sent(round, &stats, took)
    });
    progress.round(report.per_round.last().expect("just pushed"));
    control.send(&Switchover { final_round: round })?;
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let done: Done = control.recv_msg()?;
    DESTINATION_RUNS.store(true, std::sync::atomic::Ordering::SeqCst);
    report.downtime_ms = frozen_at.elapsed().as_secs_f64() * 1e3;
    report.rounds = round + 1;
    report.final_round_pages = stats.pages;
    report.installed_pages = done.pages_sent;
    report.verify = if opts.verify {
        verify(pid, &layout, control)?
    } else {
        "skipped".to_string()
    };
    Ok((report, frozen))
}

/// Round 0: the resident pages of anonymous writable mappings, and every
/// page of file-backed writable ones (their untouched pages hold file
/// contents, which the destination cannot know).
fn initial_pages(pid: i32, layout: &Layout) -> Result<RangeSet, MigrateError> {
    let mut pages = Pagemap::open(pid)?.present_in(&layout.writable_ranges())?;
    let file_backed = RangeSet::from_ranges(
        layout
            .vmas
            .iter()
            .filter(|v| v.is_writable_private_state() && !v.is_anonymous())
            .map(|v| v.range)
            .collect(),
    );
    pages.union(&file_backed);
    Ok(pages)
}

/// Sends digests of every page of the (frozen) source's writable mappings;
/// returns `ok` or the first mismatching page.
fn verify(pid: i32, layout: &Layout, control: &mut Conn) -> Result<String, MigrateError> {
    let page_size = crate::sys::page_size();
    let reader = PageReader::with_page_size(pid, page_size);
    let chunk_pages = 256;
    let mut buf = vec![0u8; chunk_pages * page_size];
    for range in layout.writable_ranges().ranges() {
        let mut addr = range.start;
        while addr < range.end {
            let n = (((range.end - addr) / page_size as u64) as usize).min(chunk_pages);
            let hashes = match reader.read(&[(addr, n)], &mut buf[..n * page_size]) {
                Ok(_) => buf[..n * page_size]
                    .chunks_exact(page_size)
                    .map(|p| page_digest(Some(p), page_size))
                    .collect(),
                // Unreadable (guard pages, PROT_NONE holes): compare as zero on both sides.
                Err(_) => vec![page_digest(None, page_size); n],
            };
            control.send(&VerifyDigests {
                start: addr,
                hashes,
            })?;
            addr += (n * page_size) as u64;
        }
    }
    control.send(&Done { pages_sent: 0 })?;
    let result: VerifyResult = control.recv_msg()?;
    Ok(match result.mismatch {
        None => "ok".to_string(),
        Some(addr) => format!(
            "mismatch at page {addr:#x} ({} pages checked)",
            result.pages_checked
        ),
    })
}

impl RoundReport {
    /// What a round moved; the tracker's and bandwidth fields are the caller's.
    fn sent(round: u32, stats: &RoundStats, took: Duration) -> Self {
        RoundReport {
            round,
            pages: stats.pages,
            zero_pages: stats.zero_pages,
            bytes_raw: stats.bytes_raw,
            bytes_wire: stats.bytes_wire,
            ms: took.as_secs_f64() * 1e3,
            ..RoundReport::default()
        }
    }
}

impl From<StreamError> for MigrateError {
    fn from(e: StreamError) -> Self {
        MigrateError::Stream(e)
    }
}

impl From<ConnError> for MigrateError {
    fn from(e: ConnError) -> Self {
        MigrateError::Conn(e)
    }
}
