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
//!
//! `--mode postcopy` freezes at once and `--mode hybrid` after pre-copy
//! rounds that leave out write-hot pages; both then send the pages the
//! destination still lacks as `Pending`, switch with `postcopy: true`, and
//! serve them ([`super::postcopy::serve`]). From the moment the source is
//! stopped for a post-copy switch it also holds a SIGSTOP, so that it stays
//! stopped even if pagehop dies: once the destination runs, the source must
//! never run again.
//!
//! `--mode stop-and-copy` is the baseline: no tracking and no rounds; it
//! freezes, sends every resident page as round 0 and switches.
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{MigrateError, Progress, Report, RoundReport};
use crate::serve::{self, Links, Plan};
use crate::working_set::WorkingSet;
use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_source::freeze::{self, FreezeMethod, Frozen};
use pagehop_source::heat::WriteHeat;
use pagehop_source::pagemap::Pagemap;
use pagehop_source::reader::PageReader;
use pagehop_source::stream::{PageStreamer, RoundStats, StreamError, ZeroCopy};
use pagehop_source::target::Target;
use pagehop_source::track::{Session, TrackOptions};
use pagehop_source::tracker::Backend;
use pagehop_wire::auth::Token;
use pagehop_wire::batch::Compress;
use pagehop_wire::conn::{Conn, ConnError, codes};
use pagehop_wire::msg::{
    self, Attach, Done, EndOfRound, Lane, LayoutAck, Role, Switchover, VerifyDigests, VerifyResult,
};
use pagehop_wire::verify::page_digest;

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
    pub mode: Mode,
    /// Hybrid: a page dirty in this many consecutive rounds is write-hot and
    /// left for post-copy.
    pub hot_after: u32,
    /// Hybrid: switch to post-copy once at most this many bytes are left.
    pub postcopy_below: u64,
    /// Post-copy: unsent pages sent along with each demand answer.
    pub prefetch_pages: u32,
    /// Post-copy: how long to try reconnecting after a break.
    pub reconnect_timeout: Duration,
    /// Write the pages the destination asked for (then the write-hot ones) here.
    pub record_working_set: Option<PathBuf>,
    /// Push this recorded working set first.
    pub prefetch_from: Option<PathBuf>,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rounds until converged, then stop and copy the rest.
    Precopy,
    /// Stop at once; pages follow on demand and in the background.
    Postcopy,
    /// Pre-copy the pages that are not write-hot, then post-copy the rest.
    Hybrid,
    /// Stop at once, send every page, then start the destination: no
    /// tracking, no rounds (the downtime floor every live scheme must beat).
    StopAndCopy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Precopy => "precopy",
            Mode::Postcopy => "postcopy",
            Mode::Hybrid => "hybrid",
            Mode::StopAndCopy => "stop-and-copy",
        }
    }

    /// Whether the destination runs before it holds every page.
    pub fn is_postcopy(self) -> bool {
        matches!(self, Mode::Postcopy | Mode::Hybrid)
    }
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

/// Set from the post-copy switch until the destination holds every page:
/// the source's memory is still needed, so it must neither run nor die.
static SOURCE_NEEDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a post-copy destination still depends on the source's memory.
pub fn source_needed() -> bool {
    SOURCE_NEEDED.load(std::sync::atomic::Ordering::SeqCst)
}

/// A round whose leftover is at least this share of what it sent made no progress.
const STALL_SHARE: f64 = 0.9;
/// How long a freeze may take before the migration is abandoned.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the destination may take to install and start the process.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// Opens the control lane, the data lanes and (for post-copy) the priority
/// lane, each authenticated and attached to `session` at `epoch`.
fn connect(
    opts: &SendOptions,
    page_size: u32,
    session: u64,
    epoch: u32,
) -> Result<(Conn, Vec<TcpStream>, Option<TcpStream>), MigrateError> {
    let mut caps = msg::CAP_LZ4 | msg::CAP_ZEROCOPY | msg::CAP_VERIFY;
    if opts.mode.is_postcopy() {
        caps |= msg::CAP_POSTCOPY;
    }
    let open = |lane: Lane| -> Result<Conn, MigrateError> {
        let stream =
            TcpStream::connect_timeout(&opts.to, opts.connect_timeout).map_err(|source| {
                MigrateError::Connect {
                    addr: opts.to,
                    source,
                }
            })?;
        let mut conn = Conn::handshake(
            stream,
            Role::Source,
            opts.token.as_ref(),
            page_size,
            caps,
            opts.connect_timeout,
        )?;
        conn.send(&Attach {
            session,
            lane,
            epoch,
        })?;
        Ok(conn)
    };
    let control = open(Lane::Control)?;
    if opts.mode.is_postcopy() && control.peer.capabilities & msg::CAP_POSTCOPY == 0 {
        return Err(MigrateError::Protocol(format!(
            "--mode {} needs a destination that runs the process (pagehop recv --restore-cmd); \
             this one cannot serve post-copy",
            opts.mode.name()
        )));
    }
    let mut data = Vec::with_capacity(opts.streams);
    for _ in 0..opts.streams.max(1) {
        data.push(open(Lane::Data)?.into_stream());
    }
    let priority = if opts.mode.is_postcopy() {
        Some(open(Lane::Priority)?.into_stream())
    } else {
        None
    };
    Ok((control, data, priority))
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
        ConnError::Frame(pagehop_wire::FrameError::Io { source })
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
    let cpu_start = pagehop_sys::own_cpu_time();
    let page_size = pagehop_sys::page_size();
    let ps = page_size as u64;
    let target = Target::open(opts.pid)?;
    let session_id = u64::from_le_bytes(
        pagehop_wire::auth::try_new_nonce().map_err(ConnError::from)?[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let (mut control, data, priority) = connect(&opts, page_size as u32, session_id, 0)?;
    // Tracking starts before round 0 reads anything, so no write is missed.
    // Pure post-copy and stop-and-copy have no rounds and need none.
    let mut session = match opts.mode {
        Mode::Postcopy | Mode::StopAndCopy => None,
        Mode::Precopy | Mode::Hybrid => Some(Session::start(TrackOptions {
            pid: target.pid,
            backend: opts.backend,
            interval: Duration::from_millis(100),
            hot_intervals: 3,
            follow_forks: false,
        })?),
    };
    let mut streamer = PageStreamer::new(
        target.pid,
        data,
        opts.compress,
        opts.zerocopy,
        opts.stall_timeout,
    )?;
    let setup = started.elapsed();

    let result = match priority {
        None => precopy(
            &opts,
            &mut control,
            session.as_mut(),
            &mut streamer,
            progress,
        ),
        Some(priority) => {
            let mut reconnect = |epoch: u32| -> Result<Links, MigrateError> {
                let (control, data, priority) =
                    connect(&opts, page_size as u32, session_id, epoch)?;
                Ok(Links {
                    control,
                    data,
                    priority: priority.expect("post-copy opens a priority lane"),
                })
            };
            postcopy(
                &opts,
                &mut control,
                session.as_mut(),
                &mut streamer,
                priority,
                &mut reconnect,
                progress,
            )
        }
    };
    let (mut report, frozen) = match result {
        Ok(ok) => ok,
        Err(e) => {
            control.send_error(codes::SOURCE, &pagehop_mem::error_chain(&e));
            // The session (and with it all write protection) is released on drop.
            drop(session);
            return Err(e);
        }
    };
    // The destination runs: the source is done. Tracking goes first, while the
    // process is still frozen.
    if let Some(session) = session {
        let _ = session.finish("migrated");
    }
    if opts.leave_stopped {
        let _ = pagehop_sys::signal(target.pid, libc::SIGSTOP);
        let _ = frozen.thaw();
    } else {
        frozen.kill();
    }
    report.setup_ms = setup.as_secs_f64() * 1e3;
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    report.page_size = ps;
    report.streams = opts.streams.max(1);
    report.send_mode = match streamer.mode() {
        pagehop_source::uring::SendMode::Copy => "copy",
        pagehop_source::uring::SendMode::ZeroCopy => "zerocopy",
    };
    let t = streamer.totals;
    report.pages_sent = t.pages + report.demand_pages;
    report.zero_pages = t.zero_pages;
    report.bytes_raw = t.bytes_raw + report.demand_bytes_raw;
    report.bytes_wire = t.bytes_wire + report.demand_bytes_wire;
    report.compression_ratio = if report.bytes_wire > 0 {
        report.bytes_raw as f64 / report.bytes_wire as f64
    } else {
        1.0
    };
    let transfer_s: f64 =
        (report.per_round.iter().map(|r| r.ms).sum::<f64>() + report.postcopy_ms) / 1e3;
    report.throughput_bytes_per_sec = if transfer_s > 0.0 {
        report.bytes_wire as f64 / transfer_s
    } else {
        0.0
    };
    report.engine_cpu_ms = pagehop_sys::own_cpu_time()
        .saturating_sub(cpu_start)
        .as_secs_f64()
        * 1e3;
    Ok(report)
}

/// How the rounds decide to stop.
enum Policy {
    /// Stop when the rest fits in the downtime target.
    Precopy,
    /// Leave write-hot pages out; stop when at most this many bytes are left.
    Hybrid { hot_after: u32, below: u64 },
}

/// Where the rounds ended.
struct RoundsEnd {
    /// Pages the destination lacks (dirtied since sent, or never sent).
    pages: RangeSet,
    /// The next round's number.
    round: u32,
    layout: Layout,
    reason: String,
    heat: WriteHeat,
}

/// Pre-copy rounds until the policy says stop; the source keeps running.
fn run_rounds(
    opts: &SendOptions,
    control: &mut Conn,
    session: &mut Session,
    streamer: &mut PageStreamer,
    policy: &Policy,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<RoundsEnd, MigrateError> {
    let pid = opts.pid;
    let ps = pagehop_sys::page_size() as u64;
    let mut layout = Layout::read(pid)?;
    send_layout(control, &layout)?;
    let mut pages = initial_pages(pid, &layout)?;
    let mut heat = WriteHeat::new();
    let mut round = 0u32;
    let mut bandwidth = 0.0f64; // bytes per second, end to end
    let mut over_bandwidth = 0;
    let reason = loop {
        // Hybrid: write-hot pages would only be sent again; they wait for post-copy.
        let hot = match policy {
            Policy::Hybrid { hot_after, .. } => heat.hot(*hot_after, ps),
            Policy::Precopy => RangeSet::new(),
        };
        let deferred = pages.intersection(&hot);
        let send = pages.difference(&hot);
        let (stats, took) = run_round(control, streamer, round, &send)?;
        bandwidth = (stats.bytes_wire.max(1) as f64 / took.as_secs_f64()).max(bandwidth * 0.5);
        let interval = session.step()?;
        let mut dirty = interval.dirty.get(&pid).cloned().unwrap_or_default();
        let dirty_pages = dirty.pages(ps);
        heat.record(&dirty, ps, 1);
        if let Some(changed) = interval.changed.get(&pid) {
            dirty.union(changed);
        }
        let dirty_rate = interval.dirty_bytes_per_sec;
        report.per_round.push(RoundReport {
            dirty_pages_after: dirty_pages,
            dirty_bytes_per_sec: dirty_rate,
            bandwidth_bytes_per_sec: bandwidth,
            deferred_pages: deferred.pages(ps),
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
        let sent_pages = send.pages(ps);
        dirty.union(&deferred);
        pages = dirty.intersection(&layout.writable_ranges());
        round += 1;
        let remaining = (pages.bytes() as f64) / bandwidth.max(1.0);
        // Not converging: the process dirties faster than the link carries,
        // or what is left no longer shrinks (its writable set is dirtied
        // whole during every round, which caps the measured rate at the
        // bandwidth). Deferred pages do not count against progress.
        let left_to_send = pages.difference(&deferred).pages(ps);
        let no_progress = left_to_send as f64 >= STALL_SHARE * sent_pages as f64;
        over_bandwidth = if dirty_rate > bandwidth || no_progress {
            over_bandwidth + 1
        } else {
            0
        };
        match policy {
            Policy::Precopy if remaining <= opts.downtime_target.as_secs_f64() => {
                break format!(
                    "converged: {} pages left, {:.1} ms at {:.0} MB/s",
                    pages.pages(ps),
                    remaining * 1e3,
                    bandwidth / 1e6
                );
            }
            Policy::Hybrid { below, .. } if pages.bytes() <= *below => {
                break format!(
                    "small remainder: {} pages left ({} write-hot), at most {} MiB to post-copy",
                    pages.pages(ps),
                    pages.intersection(&heat.hot(1, ps)).pages(ps),
                    below >> 20
                );
            }
            _ => {}
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
    Ok(RoundsEnd {
        pages,
        round,
        layout,
        reason,
        heat,
    })
}

/// Freezes the source and adds what was dirtied since the last round (a
/// full scan) to `pages`; re-sends the layout if it changed.
fn freeze_and_collect(
    opts: &SendOptions,
    control: &mut Conn,
    session: Option<&mut Session>,
    layout: &mut Layout,
    pages: &mut RangeSet,
) -> Result<(Box<dyn Frozen>, Instant), MigrateError> {
    let pid = opts.pid;
    let frozen = freeze::freeze(pid, &opts.freeze, FREEZE_TIMEOUT)?;
    let frozen_at = Instant::now();
    if let Some(session) = session {
        session.force_full_scan();
        let last = session.step()?;
        pages.union(&last.dirty.get(&pid).cloned().unwrap_or_default());
        if let Some(changed) = last.changed.get(&pid) {
            pages.union(changed);
        }
    }
    let now = Layout::read(pid)?;
    if now != *layout {
        *layout = now;
        send_layout(control, layout)?;
    }
    *pages = pages.intersection(&layout.writable_ranges());
    Ok((frozen, frozen_at))
}

/// Rounds (none without a tracking session: stop-and-copy), freeze, final
/// round, switchover. On success the source is frozen.
fn precopy(
    opts: &SendOptions,
    control: &mut Conn,
    mut session: Option<&mut Session>,
    streamer: &mut PageStreamer,
    progress: &mut dyn Progress,
) -> Result<(Report, Box<dyn Frozen>), MigrateError> {
    let pid = opts.pid;
    let mut report = Report {
        mode: opts.mode.name(),
        ..Report::default()
    };
    // An acknowledgement that does not come within the stall timeout means the
    // destination is stuck: give up rather than hold the source.
    control.set_read_timeout(Some(opts.stall_timeout))?;
    let (mut pages, round, mut layout) = match session.as_deref_mut() {
        Some(session) => {
            let end = run_rounds(
                opts,
                control,
                session,
                streamer,
                &Policy::Precopy,
                &mut report,
                progress,
            )?;
            report.switch_reason = end.reason;
            (end.pages, end.round, end.layout)
        }
        None => {
            let layout = Layout::read(pid)?;
            send_layout(control, &layout)?;
            report.switch_reason = "stop-and-copy: no pre-copy rounds".to_string();
            (RangeSet::new(), 0, layout)
        }
    };

    // Stop the world.
    let tracked = session.is_some();
    let (frozen, frozen_at) = freeze_and_collect(opts, control, session, &mut layout, &mut pages)?;
    if !tracked {
        // Frozen, so the resident set is final: all of it goes now.
        pages = initial_pages(pid, &layout)?;
    }
    let (stats, took) = run_round(control, streamer, round, &pages)?;
    report.per_round.push(RoundReport {
        bandwidth_bytes_per_sec: stats.bytes_wire as f64 / took.as_secs_f64().max(1e-9),
        ..RoundReport::sent(round, &stats, took)
    });
    progress.round(report.per_round.last().expect("just pushed"));
    control.send(&Switchover {
        final_round: round,
        postcopy: false,
    })?;
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

/// Post-copy and hybrid: rounds (hybrid only), freeze, switch with the
/// pending set, then serve until the destination holds every page.
fn postcopy(
    opts: &SendOptions,
    control: &mut Conn,
    mut session: Option<&mut Session>,
    streamer: &mut PageStreamer,
    priority: TcpStream,
    reconnect: &mut serve::Reconnect<'_>,
    progress: &mut dyn Progress,
) -> Result<(Report, Box<dyn Frozen>), MigrateError> {
    let pid = opts.pid;
    let ps = pagehop_sys::page_size() as u64;
    let mut report = Report {
        mode: opts.mode.name(),
        ..Report::default()
    };
    control.set_read_timeout(Some(opts.stall_timeout))?;
    let (mut pages, round, mut layout, heat) = match session.as_deref_mut() {
        Some(session) if opts.mode == Mode::Hybrid => {
            let end = run_rounds(
                opts,
                control,
                session,
                streamer,
                &Policy::Hybrid {
                    hot_after: opts.hot_after.max(1),
                    below: opts.postcopy_below,
                },
                &mut report,
                progress,
            )?;
            report.switch_reason = end.reason;
            (end.pages, end.round, end.layout, end.heat)
        }
        _ => {
            let layout = Layout::read(pid)?;
            send_layout(control, &layout)?;
            report.switch_reason = "post-copy: no pre-copy rounds".to_string();
            (RangeSet::new(), 0, layout, WriteHeat::new())
        }
    };
    let (frozen, frozen_at) = freeze_and_collect(opts, control, session, &mut layout, &mut pages)?;
    if opts.mode == Mode::Postcopy {
        // Frozen, so the resident set is final.
        pages = initial_pages(pid, &layout)?;
    }
    // Push order: the recorded working set, then the pages written in the
    // last rounds, then the rest.
    let mut first = match &opts.prefetch_from {
        Some(path) => WorkingSet::load(path)
            .map_err(|e| MigrateError::Protocol(pagehop_mem::error_chain(&e)))?
            .resolve(&layout, ps),
        None => Vec::new(),
    };
    first.extend(heat.hot(1, ps).intersection(&pages).iter_pages(ps));
    first.retain(|&p| pages.contains(p));

    // From here a dying pagehop must leave the source stopped, not running.
    let _ = pagehop_sys::signal(pid, libc::SIGSTOP);
    let switched = switch_to_postcopy(control, &pages, round);
    if let Err(e) = switched {
        let _ = pagehop_sys::signal(pid, libc::SIGCONT);
        return Err(e);
    }
    SOURCE_NEEDED.store(true, std::sync::atomic::Ordering::SeqCst);
    DESTINATION_RUNS.store(true, std::sync::atomic::Ordering::SeqCst);
    report.downtime_ms = frozen_at.elapsed().as_secs_f64() * 1e3;
    report.rounds = round;
    report.final_round_pages = pages.pages(ps);
    let running = Instant::now();
    let plan = Plan {
        pending: pages,
        first,
        round,
        prefetch_pages: opts.prefetch_pages,
        compress: opts.compress,
        reconnect_timeout: opts.reconnect_timeout,
    };
    let outcome = serve::serve(pid, control, streamer, priority, &plan, reconnect)?;
    SOURCE_NEEDED.store(false, std::sync::atomic::Ordering::SeqCst);
    report.postcopy_ms = running.elapsed().as_secs_f64() * 1e3;
    report.demand_requests = outcome.demand_requests;
    report.demand_pages = outcome.demand_pages;
    report.prefetched_pages = outcome.prefetched_pages;
    report.demand_bytes_wire = outcome.demand_bytes_wire;
    report.demand_bytes_raw = outcome.demand_bytes_raw;
    report.background_pages = outcome.background_pages;
    report.reconnects = outcome.reconnects;
    report.installed_pages = outcome.installed_pages;
    report.fault_latency_us = outcome.dest.fault_latency_us.clone();
    report.remote_fault_latency_us = outcome.dest.remote_fault_latency_us.clone();
    report.blocked_ms = outcome.dest.blocked_ms;
    report.faults = outcome.dest.faults;
    if let Some(path) = &opts.record_working_set {
        let mut wanted = outcome.requested.clone();
        wanted.extend(heat.hot(1, ps).iter_pages(ps));
        WorkingSet::from_pages(&layout, &wanted, ps)
            .save(path)
            .map_err(|e| MigrateError::Protocol(pagehop_mem::error_chain(&e)))?;
    }
    report.verify = if opts.verify {
        verify(pid, &layout, control)?
    } else {
        "skipped".to_string()
    };
    Ok((report, frozen))
}

/// Sends the pending set and the post-copy `Switchover`, and waits until
/// the destination says its process runs.
fn switch_to_postcopy(
    control: &mut Conn,
    pages: &RangeSet,
    round: u32,
) -> Result<(), MigrateError> {
    pagehop_dest::fetch::send_pending(control, pages)?;
    control.send(&Switchover {
        final_round: round,
        postcopy: true,
    })?;
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let _: Done = control.recv_msg()?;
    control.set_read_timeout(None)?;
    Ok(())
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
    let page_size = pagehop_sys::page_size();
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
