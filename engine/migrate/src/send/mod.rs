//! `pagehop send`: the source side of a live migration, by phase.
//!
//! 1. Prepare: validate the process ([`LiveProcess::open`]), open the
//!    lanes ([`connect`]), start dirty tracking (pre-copy and hybrid only).
//! 2. Rounds ([`rounds`]) while the source runs, until the policy says stop.
//! 3. Switch ([`switch`]): freeze, collect the last writes, then pre-copy's
//!    final round and `Switchover`, or post-copy's pending set and
//!    `Switchover { postcopy }`; the destination answers `Done` once its
//!    process runs. Downtime is freeze → `Done`.
//! 4. Post-copy ([`postcopy`]): serve demand requests and push the rest from
//!    the frozen tree until the destination holds everything.
//! 5. Verify ([`verify`], `--verify`), then end the source as asked and
//!    report.
//!
//! The driver owns its [`Phase`] and publishes it to the caller's
//! [`PhaseWatch`]. Until the destination runs, any failure thaws the source
//! and releases tracking: it keeps running exactly as before. From the
//! moment the source is stopped for a post-copy switch it also holds a
//! SIGSTOP, so that it stays stopped even if pagehop dies.
//!
//! `--mode stop-and-copy` is the baseline: no tracking and no rounds; it
//! freezes, sends every populated page as round 0 and switches.
mod connect;
mod criu;
mod postcopy;
mod rounds;
mod switch;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, ProvideError, SpaceKey};
use pagehop_source::freeze::{FreezeError, FreezeMethod};
use pagehop_source::heat::WriteHeat;
use pagehop_source::postcopy::demand::DemandError;
use pagehop_source::postcopy::push::PushError;
use pagehop_source::provider::{FrozenTree, LiveProcess, LiveTree};
use pagehop_source::stream::{PageStreamer, StreamError, ZeroCopy};
use pagehop_source::target::TargetError;
use pagehop_source::track::{Session, TrackError, TrackOptions};
use pagehop_source::tracker::Backend;
use pagehop_wire::batch::Compress;
use pagehop_wire::conn::{Conn, ConnError, Security, codes};

use crate::phase::{CriuHold, Phase, PhaseWatch};
use crate::report::{CriuProcess, CriuReport, Mode, Progress, Report, RoundReport, Verify};
use crate::working_set::{WorkingSet, WorkingSetError};
use connect::{Links, connect, new_session_id};
use rounds::{Policy, Spaces, layouts_of, run_round, run_rounds, total_pages, update_layouts};
use switch::{Frozen, commit, freeze_and_collect, switch_criu, switch_postcopy, switch_precopy};

pub use criu::{CriuSend, CriuSendError};

pub struct SendOptions {
    /// The process (with `criu`: the root of the process tree).
    pub pid: i32,
    pub to: SocketAddr,
    /// How every connection is protected.
    pub security: Security,
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
    /// Migrate the whole tree under `pid` with CRIU recreating it at the
    /// destination (`recv --criu`).
    pub criu: Option<CriuSend>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Track(#[from] TrackError),
    #[error(transparent)]
    Provide(#[from] ProvideError),
    #[error(
        "refusing to send memory to {addr} without a token: only loopback peers may go \
         unauthenticated"
    )]
    NeedToken { addr: SocketAddr },
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("freezing the source")]
    Freeze(#[from] FreezeError),
    #[error(
        "--mode {mode} needs a destination that runs the process (pagehop recv --restore-cmd); \
         this one cannot serve post-copy"
    )]
    NoPostcopy { mode: Mode },
    #[error("destination acknowledged a layout of {acked} mappings, sent {sent}")]
    LayoutAck { acked: u32, sent: usize },
    #[error("the destination did not acknowledge round {round} in time: given up")]
    AckTimeout { round: u32 },
    #[error(
        "destination acknowledged round {acked_round} with {acked_pages} pages, sent round {round} with {pages}"
    )]
    RoundAck {
        round: u32,
        pages: u64,
        acked_round: u32,
        acked_pages: u64,
    },
    #[error("post-copy push")]
    Push(#[from] PushError),
    #[error("post-copy demand server")]
    Demand(#[from] DemandError),
    #[error("post-copy: the reconnected destination opened no priority lane")]
    NoPriorityLane,
    #[error(
        "post-copy: the destination stayed unreachable for {secs:.1} s after: {}",
        pagehop_mem::error_chain(.cause)
    )]
    Unreachable {
        secs: f64,
        cause: Box<SendError>,
        #[source]
        last: Box<SendError>,
    },
    #[error("the destination's post-copy statistics")]
    DestStats(#[source] serde_json::Error),
    #[error(transparent)]
    WorkingSet(#[from] WorkingSetError),
    #[error(transparent)]
    Criu(#[from] CriuSendError),
    #[error("the destination is not a `pagehop recv --criu`: it cannot restore a CRIU dump")]
    NoCriu,
    #[error(
        "post-copy stopped: the source's memory can no longer be read ({why}); the destination's \
         copy never gets a page it was not sent, so it stays stopped"
    )]
    Unreadable { why: String },
    #[error("the destination restored {got} tasks, the source froze {want}")]
    TaskCount { got: u32, want: u32 },
    #[error(
        "the destination gave the switch up before its copy ran: {message}; the source runs on"
    )]
    DestinationAborted { message: String },
    #[error(
        "in doubt: the source committed, but the destination did not confirm that its copy runs \
         (it may run, or hold its copy stopped). The source (pid {held}) is held stopped. Check \
         the destination's report, then run `pagehop resolve --pid {root} --kill` here if its \
         copy runs, or `pagehop resolve --pid {root} --run` here once its copy is killed"
    )]
    InDoubt {
        held: String,
        root: i32,
        #[source]
        cause: ConnError,
    },
}

impl SendError {
    /// Whether neither side can know if the other's copy runs: the
    /// operator decides (`pagehop resolve`).
    pub fn in_doubt(&self) -> bool {
        matches!(self, SendError::InDoubt { .. })
    }
}

/// A failed migration, and the phase it failed in: up to
/// [`Phase::Frozen`] the source runs on as before; from
/// [`Phase::DestinationRuns`] on it must not.
#[derive(Debug)]
pub struct SendFailure {
    pub phase: Phase,
    pub error: SendError,
}

/// Reads as the error itself: its message, then its causes.
impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SendFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl SendFailure {
    /// The error itself, for matching.
    pub fn error(&self) -> &SendError {
        &self.error
    }
}

/// The driver's phase: owned here, published to the caller's watch.
struct Phases<'a> {
    now: Phase,
    watch: &'a PhaseWatch,
}

impl Phases<'_> {
    fn enter(&mut self, phase: Phase) {
        self.now = phase;
        self.watch.set(phase);
    }
}

impl Drop for Phases<'_> {
    /// Whatever happened, no CRIU hold outlives the driver.
    fn drop(&mut self) {
        self.watch.hold_criu(None);
    }
}

/// Everything a migration works with once prepared.
struct Migration<'a> {
    opts: &'a SendOptions,
    source: &'a LiveTree,
    control: Conn,
    session: Option<Session>,
    streamer: PageStreamer,
    report: Report,
    session_id: u64,
}

/// Migrates the process `opts.pid`; `watch` follows the phase as it goes.
pub fn send(
    opts: SendOptions,
    watch: &PhaseWatch,
    progress: &mut dyn Progress,
) -> Result<Report, SendFailure> {
    let mut phases = Phases {
        now: Phase::Preparing,
        watch,
    };
    watch.set(Phase::Preparing);
    drive(&opts, &mut phases, progress).map_err(|error| SendFailure {
        phase: phases.now,
        error,
    })
}

fn drive(
    opts: &SendOptions,
    phases: &mut Phases<'_>,
    progress: &mut dyn Progress,
) -> Result<Report, SendError> {
    if !opts.to.ip().is_loopback() && opts.security.token().is_none() {
        return Err(SendError::NeedToken { addr: opts.to });
    }
    let started = Instant::now();
    let cpu_start = pagehop_sys::own_cpu_time();
    let page_size = pagehop_sys::page_size();
    let source = if opts.criu.is_some() {
        LiveTree::tree(opts.pid)?
    } else {
        LiveTree::single(LiveProcess::open(opts.pid)?)
    };
    // CRIU's kernel probe happens now, not inside the freeze.
    let _kdat = opts
        .criu
        .as_ref()
        .map(|c| pagehop_criu::KdatCache::prepare(&c.criu));
    let session_id = new_session_id()?;
    let Links {
        control,
        data,
        priority,
    } = connect(opts, page_size as u32, session_id, 0)?;
    // Tracking starts before round 0 reads anything, so no write is missed.
    let session = if opts.mode.has_rounds() {
        let root = source.space_of(opts.pid).expect("the root is a member");
        let mut session = Session::start(
            source.process(root).expect("the root process").target(),
            TrackOptions {
                backend: opts.backend,
                interval: Duration::from_millis(100),
                hot_intervals: 3,
                follow_forks: source.follows_tree(),
            },
        )?;
        for space in source.spaces() {
            if let Some(p) = source.process(space)
                && p.pid() != opts.pid
            {
                session.track(p.pid(), false)?;
            }
        }
        Some(session)
    } else {
        None
    };
    let streamer = PageStreamer::new(data, opts.compress, opts.zerocopy, opts.stall_timeout)?;
    let setup = started.elapsed();
    let mut m = Migration {
        opts,
        source: &source,
        control,
        session,
        streamer,
        report: Report {
            protection: opts.security.protection().name(),
            ..Report::new(opts.mode)
        },
        session_id,
    };
    let result = match priority {
        None => m.precopy(phases, progress),
        Some(priority) => {
            let mut reconnect = |epoch: u32| connect(opts, page_size as u32, session_id, epoch);
            m.postcopy(phases, priority, &mut reconnect, progress)
        }
    };
    let tree = match result {
        Ok(tree) => tree,
        Err(e) => {
            m.control
                .send_error(codes::SOURCE, &pagehop_mem::error_chain(&e));
            // The session (and with it all write protection) is released on
            // drop; a frozen tree was thawed when it was dropped.
            return Err(e);
        }
    };
    // The destination runs: the source is done. Tracking goes first, while
    // the process is still frozen.
    if let Some(session) = m.session.take() {
        let _ = session.finish("migrated");
    }
    if m.report.verify.is_mismatch() {
        // The destination killed its copy before it answered: the frozen
        // source, the only intact copy, stays as it is, stopped, for the
        // operator (the report carries the verdict; the caller says so).
        tree.leave_stopped();
    } else if opts.leave_stopped {
        tree.leave_stopped();
    } else {
        tree.kill();
    }
    phases.enter(Phase::Done);
    let mut report = m.report;
    report.setup_ms = setup.as_secs_f64() * 1e3;
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    report.page_size = page_size as u64;
    report.streams = opts.streams.max(1);
    report.send_mode = m.streamer.mode();
    report.add_totals(&m.streamer);
    report.engine_cpu_ms = pagehop_sys::own_cpu_time()
        .saturating_sub(cpu_start)
        .as_secs_f64()
        * 1e3;
    Ok(report)
}

impl Report {
    /// Adds the stream's totals (and the demand answers already counted) to
    /// the byte and throughput fields.
    fn add_totals(&mut self, streamer: &PageStreamer) {
        let t = streamer.totals;
        self.pages_sent = t.pages + self.demand_pages;
        self.zero_pages = t.zero_pages;
        self.bytes_raw = t.bytes_raw + self.demand_bytes_raw;
        self.bytes_wire = t.bytes_wire + self.demand_bytes_wire;
        self.compression_ratio = if self.bytes_wire > 0 {
            self.bytes_raw as f64 / self.bytes_wire as f64
        } else {
            1.0
        };
        let transfer_s: f64 =
            (self.per_round.iter().map(|r| r.ms).sum::<f64>() + self.postcopy_ms) / 1e3;
        self.throughput_bytes_per_sec = if transfer_s > 0.0 {
            self.bytes_wire as f64 / transfer_s
        } else {
            0.0
        };
    }
}

impl<'a> Migration<'a> {
    /// The rounds the policy allows (none for post-copy and stop-and-copy),
    /// then the freeze. Returns the frozen source with what is left to send.
    fn rounds_then_freeze(
        &mut self,
        phases: &mut Phases<'_>,
        policy: Option<Policy>,
        progress: &mut dyn Progress,
    ) -> Result<(Frozen, u32, Spaces<WriteHeat>, Spaces<RangeSet>), SendError> {
        phases.enter(Phase::Rounds);
        // An acknowledgement that does not come within the stall timeout means
        // the destination is stuck: give up rather than hold the source.
        self.control
            .set_read_timeout(Some(self.opts.stall_timeout))?;
        let (pages, round, layouts, heat, sent) = match (policy, self.session.as_mut()) {
            (Some(policy), Some(session)) => {
                let end = run_rounds(
                    self.opts,
                    &mut self.control,
                    self.source,
                    session,
                    &mut self.streamer,
                    &policy,
                    &mut self.report,
                    progress,
                )?;
                self.report.switch_reason = end.reason;
                (end.pages, end.round, end.layouts, end.heat, end.sent)
            }
            _ => {
                let mut layouts = Spaces::new();
                update_layouts(
                    &mut self.control,
                    &mut layouts,
                    layouts_of(self.source, self.source.spaces())?,
                )?;
                self.report.switch_reason = match self.opts.mode {
                    Mode::StopAndCopy => "stop-and-copy: no pre-copy rounds",
                    _ => "post-copy: no pre-copy rounds",
                }
                .to_string();
                (Spaces::new(), 0, layouts, Spaces::new(), Spaces::new())
            }
        };
        let tracked = self.session.is_some();
        let mut frozen = freeze_and_collect(
            &self.opts.freeze,
            &mut self.control,
            self.source,
            self.session.as_mut(),
            layouts,
            pages,
        )?;
        phases.enter(Phase::Frozen);
        if !tracked {
            // Frozen, so the populated set is final: all of it goes now.
            frozen.pages = frozen
                .layouts
                .iter()
                .map(|(&space, layout)| Ok((space, frozen.tree.populated(space, layout)?)))
                .collect::<Result<_, SendError>>()?;
        }
        Ok((frozen, round, heat, sent))
    }

    /// Pre-copy and stop-and-copy: rounds, freeze, final round, switchover,
    /// verify. On success the source is frozen.
    fn precopy(
        &mut self,
        phases: &mut Phases<'_>,
        progress: &mut dyn Progress,
    ) -> Result<FrozenTree, SendError> {
        let policy = (self.opts.mode == Mode::Precopy).then_some(Policy::Precopy);
        let (frozen, round, _, _) = self.rounds_then_freeze(phases, policy, progress)?;
        let (stats, took) = run_round(
            &mut self.control,
            &mut self.streamer,
            &frozen.tree,
            round,
            &frozen.pages,
        )?;
        self.report.per_round.push(RoundReport {
            bandwidth_bytes_per_sec: stats.bytes_wire as f64 / took.as_secs_f64().max(1e-9),
            ..RoundReport::sent(round, &stats, took)
        });
        progress.round(self.report.per_round.last().expect("just pushed"));
        switch_precopy(&mut self.control, round)?;
        let committed = commit(&mut self.control, &frozen.tree, self.opts.pid, 1, phases)?;
        phases.enter(Phase::DestinationRuns);
        self.report.downtime_ms = frozen.at.elapsed().as_secs_f64() * 1e3;
        self.report.rounds = round + 1;
        self.report.final_round_pages = stats.pages;
        self.report.installed_pages = committed.done.pages_sent;
        self.report.switchover = "committed";
        self.verify(&frozen)?;
        Ok(frozen.tree)
    }

    /// Post-copy and hybrid: rounds (hybrid only), freeze, switch with the
    /// pending set, then serve until the destination holds every page.
    /// With CRIU (every mode), CRIU dumps the frozen tree before the switch
    /// and the destination's restore commits it ([`criu`]).
    fn postcopy(
        &mut self,
        phases: &mut Phases<'_>,
        priority: pagehop_wire::conn::Halves,
        reconnect: &mut postcopy::Reconnect<'_>,
        progress: &mut dyn Progress,
    ) -> Result<FrozenTree, SendError> {
        let opts = self.opts;
        let ps = self.source.page_size() as u64;
        let policy = match opts.mode {
            Mode::Hybrid => Some(Policy::Hybrid {
                hot_after: opts.hot_after.max(1),
                below: opts.postcopy_below,
            }),
            Mode::Precopy => Some(Policy::Precopy),
            Mode::Postcopy | Mode::StopAndCopy => None,
        };
        let (frozen, mut round, heat, sent) = self.rounds_then_freeze(phases, policy, progress)?;
        let mut pending = frozen.pages.clone();
        // CRIU: tracking goes, CRIU dumps, the images go ahead of the switch.
        let mut dumped = None;
        if let Some(c) = &opts.criu {
            let mut r = CriuReport {
                criu_version: c.criu.version().to_string(),
                cgroup: c.cgroup.as_ref().map(|g| g.path().display().to_string()),
                ..CriuReport::default()
            };
            if let Some(cgroup) = &c.cgroup {
                // Frozen, so no process can enter by fork; one that came in
                // from outside would be left behind by CRIU.
                let pids: Vec<i32> = frozen.tree.pids().into_iter().map(|(_, p)| p).collect();
                cgroup
                    .check_only(opts.pid, &pids)
                    .map_err(CriuSendError::from)?;
            }
            phases.watch.hold_criu(Some(CriuHold {
                tree: frozen.tree.processes(),
                dump: None,
            }));
            // CRIU must find the tree clean; the probes go after the migration.
            if let Some(session) = self.session.as_mut() {
                session.release_trackers()?;
            }
            r.final_scan_ms = frozen.at.elapsed().as_secs_f64() * 1e3;
            let spaces: Vec<SpaceKey> = frozen.tree.spaces().collect();
            let state = criu::TreeState {
                root: opts.pid,
                session: self.session_id,
                spaces: &spaces,
                sent: &sent,
                dirty: &frozen.pages,
                page_size: ps,
            };
            let d = criu::dump(c, &state, &mut |dump| {
                if let Ok((criu, sk)) = dump.handles() {
                    phases.watch.hold_criu_dump(criu, sk);
                }
            })?;
            r.dump_ms = d.dump_ms;
            r.tasks = d.tasks;
            r.lazy_pages = d.lazy_pages;
            pending = d.need.clone();
            if !opts.mode.is_postcopy() {
                // Pre-copy and stop-and-copy: the rest goes now.
                let started = Instant::now();
                let (stats, took) = run_round(
                    &mut self.control,
                    &mut self.streamer,
                    &frozen.tree,
                    round,
                    &pending,
                )?;
                self.report.per_round.push(RoundReport {
                    bandwidth_bytes_per_sec: stats.bytes_wire as f64 / took.as_secs_f64().max(1e-9),
                    ..RoundReport::sent(round, &stats, took)
                });
                progress.round(self.report.per_round.last().expect("just pushed"));
                self.report.final_round_pages = stats.pages;
                round += 1;
                pending = Spaces::new();
                r.final_pages_ms = started.elapsed().as_secs_f64() * 1e3;
            }
            let shipped = criu::ship_images(&mut self.control, &d.dir, opts.compress)?;
            r.images_files = shipped.files;
            r.images_bytes = shipped.bytes;
            r.images_wire_bytes = shipped.wire_bytes;
            r.images_ms = shipped.ms;
            r.pending_pages = total_pages(&pending, ps);
            r.processes = frozen
                .tree
                .pids()
                .into_iter()
                .map(|(space, pid)| CriuProcess {
                    vpid: space.0,
                    pid,
                    pending_pages: pending.get(&space).map_or(0, |p| p.pages(ps)),
                    ..CriuProcess::default()
                })
                .collect();
            self.report.criu = Some(r);
            dumped = Some(d);
        }
        // Push order: the recorded working set (of the root process), then
        // the pages written in the last rounds, then the rest.
        let mut first: Vec<(SpaceKey, u64)> =
            match (&opts.prefetch_from, frozen.layouts.get(&SpaceKey::ROOT)) {
                (Some(path), Some(layout)) => WorkingSet::load(path)?
                    .resolve(layout, ps)
                    .into_iter()
                    .map(|p| (SpaceKey::ROOT, p))
                    .collect(),
                _ => Vec::new(),
            };
        for (space, h) in &heat {
            if let Some(p) = pending.get(space) {
                first.extend(
                    h.hot(1, ps)
                        .intersection(p)
                        .iter_pages(ps)
                        .map(|p| (*space, p)),
                );
            }
        }
        first.retain(|(space, p)| pending.get(space).is_some_and(|r| r.contains(*p)));
        let switch_sent = Instant::now();
        if dumped.is_some() {
            // The destination restores, stopped; the commit comes once the
            // demand server runs (the restore may fault).
            switch_criu(&mut self.control, &pending, round)?;
        } else {
            switch_postcopy(&mut self.control, &pending, round)?;
            // From the commit a dying pagehop leaves the source stopped.
            commit(&mut self.control, &frozen.tree, opts.pid, 1, phases)?;
            self.report.switchover = "committed";
            phases.enter(Phase::SourceNeeded);
            self.report.downtime_ms = frozen.at.elapsed().as_secs_f64() * 1e3;
        }
        self.report.rounds = round;
        if dumped.is_none() || opts.mode.is_postcopy() {
            self.report.final_round_pages = total_pages(&pending, ps);
        }
        let running = Instant::now();
        let plan = postcopy::Plan {
            pending: pending.clone(),
            first,
            round,
            prefetch_pages: opts.prefetch_pages,
            compress: opts.compress,
            reconnect_timeout: opts.reconnect_timeout,
        };
        let mut criu_times = (0.0, 0.0);
        let tasks = dumped.as_ref().map_or(0, |d| d.tasks);
        let tree = &frozen.tree;
        let at = frozen.at;
        let downtime = &mut self.report.downtime_ms;
        let switchover = &mut self.report.switchover;
        let mut commit = |control: &mut Conn| -> Result<(), SendError> {
            // From the commit the source never runs again.
            let c = commit(control, tree, opts.pid, tasks, phases)?;
            phases.watch.hold_criu(None);
            phases.enter(Phase::SourceNeeded);
            *switchover = "committed";
            criu_times = (
                c.restored_at.duration_since(switch_sent).as_secs_f64() * 1e3,
                c.restored_at.elapsed().as_secs_f64() * 1e3,
            );
            *downtime = at.elapsed().as_secs_f64() * 1e3;
            Ok(())
        };
        let commit_step: Option<&mut postcopy::CommitStep<'_>> = match dumped {
            Some(_) => Some(&mut commit),
            None => None,
        };
        let outcome = postcopy::serve(
            &frozen.tree,
            &mut self.control,
            &mut self.streamer,
            priority,
            &plan,
            reconnect,
            commit_step,
        )?;
        if let Some(r) = self.report.criu.as_mut() {
            (r.restore_ms, r.commit_ms) = criu_times;
        }
        // Every page is at the destination: CRIU's page server can go (it
        // leaves the tree stopped; the driver ends it as the operator chose).
        if let Some(d) = dumped {
            let dir = d.dir.clone();
            let own = d.own_dir;
            if let Err(e) = d.dump.finish() {
                log::warn!(
                    "criu dump did not end cleanly: {}",
                    pagehop_mem::error_chain(&e)
                );
            }
            if own {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        phases.enter(Phase::DestinationRuns);
        let r = &mut self.report;
        r.postcopy_ms = running.elapsed().as_secs_f64() * 1e3;
        r.demand_requests = outcome.demand.requests;
        r.demand_pages = outcome.demand.pages;
        r.prefetched_pages = outcome.demand.prefetched;
        r.demand_bytes_wire = outcome.demand.bytes_wire;
        r.demand_bytes_raw = outcome.demand.bytes_raw;
        r.background_pages = outcome.background_pages;
        r.reconnects = outcome.reconnects;
        r.installed_pages = outcome.installed_pages;
        r.fault_latency_us = outcome.dest.fault_latency_us.clone();
        r.remote_fault_latency_us = outcome.dest.remote_fault_latency_us.clone();
        r.blocked_ms = outcome.dest.blocked_ms;
        r.faults = outcome.dest.faults;
        if let Some(c) = r.criu.as_mut() {
            for p in &mut c.processes {
                if let Some(f) = outcome.dest.per_space.iter().find(|f| f.space == p.vpid) {
                    (p.faults, p.requested_pages) = (f.faults, f.requested_pages);
                }
            }
        }
        if let (Some(path), Some(layout)) = (
            &opts.record_working_set,
            frozen.layouts.get(&SpaceKey::ROOT),
        ) {
            let mut wanted: Vec<u64> = outcome
                .requested
                .iter()
                .filter(|(space, _)| *space == SpaceKey::ROOT)
                .map(|&(_, p)| p)
                .collect();
            if let Some(h) = heat.get(&SpaceKey::ROOT) {
                wanted.extend(h.hot(1, ps).iter_pages(ps));
            }
            WorkingSet::from_pages(layout, &wanted, ps).save(path)?;
        }
        self.verify(&frozen)?;
        Ok(frozen.tree)
    }

    fn verify(&mut self, frozen: &Frozen) -> Result<(), SendError> {
        self.report.verify = if self.opts.verify {
            verify::verify(&frozen.tree, &frozen.layouts, &mut self.control)?
        } else {
            Verify::Skipped
        };
        Ok(())
    }
}
