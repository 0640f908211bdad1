//! `pagehop recv`: the destination side of a live migration.
//!
//! Received pages go into the [`PageStore`] until the switch; nothing is
//! installed anywhere before that. At the switch the store empties into the
//! one output the operator chose ([`Output`]): the userfaultfd of the
//! restored process (`--restore-cmd`, CRIU's lazy-pages convention, see
//! [`pagehop_dest::handoff`]), or an image directory (`--image-dir`). For a
//! post-copy switch the process starts at once and its faults are served
//! while the rest streams in ([`postcopy`]).
//!
//! The control loop is a state machine ([`machine`]); the data lanes are
//! accepted in the background ([`accept`]) and feed the store through
//! [`Intake`]. If the source goes away before the switch, recv reports a
//! failed migration: no process was started, nothing was installed.
mod accept;
mod commit;
mod criu;
mod machine;
mod postcopy;
#[cfg(test)]
mod tests;
mod verify;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagehop_dest::criu::images::ImageIntake;
use pagehop_dest::fetch::{FetchError, Lanes};
use pagehop_dest::intake::{Intake, LaneFailure, RoundWaitError};
use pagehop_dest::restore::{RestoreCommand, RestoreError, Restored};
use pagehop_dest::store::{PageStore, StoreError};
use pagehop_dest::uffd_sink::{UffdSink, UffdSinkError};
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_mem::{PageSink, SpaceKey};
use pagehop_wire::conn::{Conn, ConnError, Security, codes};
use pagehop_wire::image::{ImageError, ImageWriter};
use pagehop_wire::msg::{
    self, Done, EndOfRound, ImageChunk, Layout, LayoutAck, MsgError, Pending, Switchover,
    VerifyDigests,
};
use pagehop_wire::{FrameError, FrameKind};

use crate::report::{RecvReport, SwitchKind};
pub use commit::NoCommit;
pub use machine::{Event, OutOfOrder, State};
use postcopy::Switch;
use verify::Verification;

/// How long a round's pages may take to arrive after its end was announced.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the received memory goes at the switch.
#[derive(Clone, Debug)]
pub enum Output {
    /// Start the destination process and install into its userfaultfd.
    Restore(RestoreCommand),
    /// Write an image directory (pre-copy only).
    ImageDir(PathBuf),
    /// Restore the source's CRIU dump (`send --criu`) into its image
    /// directory with `criu restore --lazy-pages`.
    Criu(CriuRestore),
}

pub use criu::{CriuRecvError, CriuRestore};

pub struct RecvOptions {
    pub listen: SocketAddr,
    /// How every connection is protected.
    pub security: Security,
    pub output: Output,
    pub handshake_timeout: Duration,
    /// Post-copy: how long to wait for a source whose connections broke.
    pub reconnect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error(
        "refusing to listen on {addr} without a token: only loopback addresses may go unauthenticated"
    )]
    NeedToken { addr: SocketAddr },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("a control frame")]
    Decode(#[from] MsgError),
    #[error("the source went away during round {round} before switchover; nothing was installed")]
    SourceLost {
        round: u32,
        #[source]
        source: ConnError,
    },
    #[error("round {round} failed before switchover; nothing was installed")]
    Lane {
        round: u32,
        #[source]
        source: LaneFailure,
    },
    #[error("a data lane failed after the switch; the process runs with what it had then")]
    AfterSwitch {
        #[source]
        source: LaneFailure,
    },
    #[error("round {round}: {got} of {want} pages arrived within {timeout:?}")]
    RoundTimeout {
        round: u32,
        got: u64,
        want: u64,
        timeout: Duration,
    },
    #[error(transparent)]
    Protocol(#[from] OutOfOrder),
    #[error("the source asked for post-copy, which needs --restore-cmd")]
    PostcopyNeedsRestore,
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(
        "the restored process registered no memory with its userfaultfd: nothing could be installed"
    )]
    NothingRegistered,
    #[error(transparent)]
    Install(#[from] UffdSinkError),
    #[error("writing the image")]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Criu(#[from] CriuRecvError),
    #[error("the source sent a CRIU dump, but this recv was not started with --criu DIR")]
    CriuNotExpected,
    #[error("this recv restores CRIU dumps (--criu); the source is not `pagehop send --criu`")]
    CriuExpected,
    #[error("{why}; the restored process {pid} was killed before it ran{}", if .why.in_doubt() {
        " (it cannot run without the source's memory; a source that committed holds its copy \
         stopped: resume it there with `pagehop resolve --pid PID --run`)"
    } else {
        ": the source runs on"
    })]
    NotCommitted { pid: i32, why: NoCommit },
    #[error(
        "in doubt: {why}. The restored process {pid} holds all of its memory and is held \
         stopped. The source may have committed (then it is held stopped too) or run on: check \
         its report, then run `pagehop resolve --pid {pid} --run` here once the source's copy is \
         killed, or `pagehop resolve --pid {pid} --kill` here to keep the source's"
    )]
    InDoubt { pid: i32, why: NoCommit },
    #[error(
        "{why}: the image in {dir} is complete, but the source may run on; do not start a \
         process from it unless the source's copy is gone"
    )]
    ImageNotCommitted { dir: String, why: NoCommit },
}

impl RecvError {
    /// Whether neither side can know if the other's copy runs: the
    /// operator decides (`pagehop resolve`).
    pub fn in_doubt(&self) -> bool {
        matches!(self, RecvError::InDoubt { .. })
    }
}

/// Receives one migration and starts its process (or writes its image).
pub fn recv(opts: RecvOptions) -> Result<RecvReport, RecvError> {
    if !opts.listen.ip().is_loopback() && opts.security.token().is_none() {
        return Err(RecvError::NeedToken { addr: opts.listen });
    }
    let page_size = pagehop_sys::page_size();
    let listen = |source| RecvError::Listen {
        addr: opts.listen,
        source,
    };
    let listener = TcpListener::bind(opts.listen).map_err(listen)?;
    // CRIU's kernel probe happens now, not inside the migration's freeze.
    let _kdat = match &opts.output {
        Output::Criu(c) => Some(pagehop_criu::KdatCache::prepare(&c.criu)),
        _ => None,
    };
    log::info!(
        "listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let mut capabilities = msg::CAP_LZ4 | msg::CAP_ZEROCOPY | msg::CAP_VERIFY;
    if matches!(opts.output, Output::Restore(_) | Output::Criu(_)) {
        capabilities |= msg::CAP_POSTCOPY;
    }
    // The image directory is checked before any source is taken.
    let images = match &opts.output {
        Output::Criu(c) => {
            capabilities |= msg::CAP_CRIU;
            Some(ImageIntake::new(&c.dir).map_err(CriuRecvError::from)?)
        }
        _ => None,
    };
    let handshake = accept::Handshake {
        security: opts.security.clone(),
        page_size: page_size as u32,
        capabilities,
        timeout: opts.handshake_timeout,
    };
    let mut acceptor = accept::Acceptor::start(listener.try_clone().map_err(listen)?, handshake);
    let (control, session) = acceptor.control(opts.listen)?;
    let started = Instant::now();
    let cpu_start = pagehop_sys::own_cpu_time();
    let source = control
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log::info!("source {source} connected");
    let intake = Arc::new(Intake::new(
        PageStore::new(page_size),
        control.try_clone_stream().map_err(ConnError::from)?,
    ));
    let lanes = Arc::new(Lanes::default());
    acceptor.spawn_lanes(session, Arc::clone(&intake), Arc::clone(&lanes));
    let mut receiver = Receiver {
        opts: &opts,
        control,
        intake,
        lanes,
        state: State::start(),
        pending: BTreeMap::new(),
        verification: Verification::default(),
        restored: None,
        criu_tree: Vec::new(),
        images,
        report: RecvReport {
            source,
            protection: opts.security.protection().name(),
            ..RecvReport::default()
        },
    };
    receiver.run()?;
    let mut report = receiver.report;
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    report.engine_cpu_ms = pagehop_sys::own_cpu_time()
        .saturating_sub(cpu_start)
        .as_secs_f64()
        * 1e3;
    // The restored process runs on its own; recv does not wait for it
    // beyond the end of its restore.
    if let Some(restored) = receiver.restored {
        restored.release_when_restored();
    }
    Ok(report)
}

/// The control loop's state.
struct Receiver<'a> {
    opts: &'a RecvOptions,
    control: Conn,
    intake: Arc<Intake>,
    lanes: Arc<Lanes>,
    state: State,
    /// Post-copy: the pages the source still holds, as announced.
    pending: BTreeMap<SpaceKey, Vec<Range>>,
    verification: Verification,
    restored: Option<Restored>,
    /// CRIU mode: the restored tree, and the images as they arrive.
    criu_tree: Vec<pagehop_sys::process::Process>,
    images: Option<ImageIntake>,
    report: RecvReport,
}

impl Receiver<'_> {
    /// One `(state, frame)` step at a time until the migration ends.
    fn run(&mut self) -> Result<(), RecvError> {
        loop {
            let (kind, payload) = match self.control.recv() {
                Ok(frame) => frame,
                Err(source) if !self.state.switched() => return Err(self.lost(source)),
                // After the switch the process runs; a source that leaves
                // without verification is no failure, a lane that broke the
                // protocol is.
                Err(_) => {
                    return match self.intake.take_failure() {
                        None | Some(LaneFailure::SourceGone) => Ok(()),
                        Some(failure) => Err(RecvError::AfterSwitch { source: failure }),
                    };
                }
            };
            let frame = ControlFrame::decode(kind, payload)?;
            let next = match self.state.next(frame.event()) {
                Ok(next) => next,
                Err(e) => {
                    self.control.send_error(codes::PROTOCOL, &e.to_string());
                    return Err(e.into());
                }
            };
            self.state = next;
            self.intake.set_accepting(next.accepting());
            self.handle(frame)?;
            if self.state == State::Finished {
                return Ok(());
            }
        }
    }

    /// The error for a control lane that broke before the switch: what a
    /// data lane reported, or the source's disappearance.
    fn lost(&mut self, source: ConnError) -> RecvError {
        let round = self.round();
        match self.intake.take_failure() {
            Some(LaneFailure::SourceGone) | None => RecvError::SourceLost { round, source },
            Some(failure) => {
                self.control
                    .send_error(codes::DESTINATION, &pagehop_mem::error_chain(&failure));
                RecvError::Lane {
                    round,
                    source: failure,
                }
            }
        }
    }

    fn round(&self) -> u32 {
        match self.state {
            State::Rounds { next_round } => next_round,
            _ => self.report.rounds,
        }
    }

    /// The action of a frame the state machine accepted.
    fn handle(&mut self, frame: ControlFrame) -> Result<(), RecvError> {
        match frame {
            ControlFrame::Layout(layout) => {
                let ranges: Vec<Range> = layout
                    .vmas
                    .iter()
                    .map(|v| Range::new(v.start, v.end))
                    .collect();
                self.intake.lock_store().set_layout(layout.space, &ranges)?;
                self.control.send(&LayoutAck {
                    vmas: layout.vmas.len() as u32,
                })?;
            }
            ControlFrame::EndOfRound(end) => {
                self.wait_for_round(end.round, end.pages)?;
                self.report.rounds = end.round + 1;
                self.control.send(&end)?;
            }
            ControlFrame::Pending(p) => {
                self.pending
                    .entry(p.space)
                    .or_default()
                    .extend(p.ranges.iter().map(|&(a, b)| Range::new(a, b)));
            }
            ControlFrame::ImageChunk(chunk) => match self.images.as_mut() {
                Some(images) => images.add(&chunk).map_err(CriuRecvError::from)?,
                None => {
                    self.control.send_error(
                        codes::DESTINATION,
                        "this recv does not take CRIU images (no --criu)",
                    );
                    return Err(RecvError::CriuNotExpected);
                }
            },
            ControlFrame::Switchover(s) if s.criu => self.switch_criu()?,
            ControlFrame::Switchover(_) if self.images.is_some() => {
                self.control.send_error(
                    codes::DESTINATION,
                    "this recv restores CRIU dumps: use pagehop send --criu",
                );
                return Err(RecvError::CriuExpected);
            }
            ControlFrame::Switchover(s) if s.postcopy => self.postcopy()?,
            ControlFrame::Switchover(_) => self.switch_precopy()?,
            ControlFrame::VerifyDigests(digests) => {
                self.verification.check(&self.intake.lock_store(), &digests);
            }
            ControlFrame::Done => {
                let result = self.verification.result();
                if let (Some(addr), Some(restored)) = (result.mismatch, self.restored.take()) {
                    // Memory that arrived wrong must not run: the copy goes
                    // before the source hears of it, so that the source may
                    // run on as the only copy.
                    restored.abandon();
                    log::error!(
                        "verification failed at {addr:#x}: the restored process was killed; \
                         the source runs on"
                    );
                }
                self.control.send(&result)?;
                self.report.verify = self.verification.verdict();
            }
            ControlFrame::Other(kind) => unreachable!("the state machine accepted a {kind} frame"),
        }
        Ok(())
    }

    fn wait_for_round(&mut self, round: u32, pages: u64) -> Result<(), RecvError> {
        self.intake
            .wait_for_round(round, pages, ROUND_TIMEOUT)
            .map_err(|e| match e {
                RoundWaitError::Lane(LaneFailure::SourceGone) => RecvError::SourceLost {
                    round,
                    source: ConnError::Frame(FrameError::Closed),
                },
                RoundWaitError::Lane(failure) => {
                    self.control
                        .send_error(codes::DESTINATION, &pagehop_mem::error_chain(&failure));
                    RecvError::Lane {
                        round,
                        source: failure,
                    }
                }
                RoundWaitError::Timeout {
                    round,
                    got,
                    want,
                    timeout,
                } => RecvError::RoundTimeout {
                    round,
                    got,
                    want,
                    timeout,
                },
            })
    }

    /// The pre-copy switch: every page is here; install them into the
    /// process, held stopped (or write the image), then commit: the process
    /// continues only on the source's `Commit`.
    fn switch_precopy(&mut self) -> Result<(), RecvError> {
        self.report.mode = SwitchKind::Precopy;
        let started = Instant::now();
        let store = Arc::clone(&self.intake);
        let store = store.lock_store();
        let (data, zero) = store.received();
        self.report.pages_received = data;
        self.report.zero_pages_received = zero;
        let installed = match &self.opts.output {
            Output::ImageDir(dir) => {
                let mut writer = ImageWriter::create(dir, store.page_size())?;
                for space in store.spaces() {
                    let ranges: Vec<Range> = store
                        .space(space)
                        .map(|s| s.ranges().collect())
                        .unwrap_or_default();
                    writer.set_layout(space, &ranges)?;
                }
                store.drain_into(&mut writer)?;
                self.report.image_dir = Some(dir.display().to_string());
                writer.finish()?
            }
            Output::Criu(_) => return Err(RecvError::CriuExpected),
            Output::Restore(cmd) => {
                let mut restored = cmd.start()?;
                self.report.restored_pid = Some(restored.pid());
                match install_all(&mut restored, &store) {
                    Ok((installed, outside)) => {
                        if outside > 0 {
                            log::warn!(
                                "{outside} received pages lie outside the ranges process {} \
                                 registered with its userfaultfd: not installed (the restored \
                                 program makes that memory itself)",
                                restored.pid()
                            );
                        }
                        self.report.pages_outside_registered_ranges = outside;
                        self.restored = Some(restored);
                        installed
                    }
                    Err(e) => {
                        restored.abandon();
                        return Err(e);
                    }
                }
            }
        };
        self.report.pages_installed = installed;
        self.report.install_ms = started.elapsed().as_secs_f64() * 1e3;
        drop(store);
        let waited = commit::await_commit(
            &mut self.control,
            1,
            commit::COMMIT_TIMEOUT,
            &mut commit::idle,
        )?;
        if let Err(why) = waited {
            return Err(self.not_committed(why));
        }
        if let Some(restored) = &self.restored {
            restored.resume();
        }
        self.report.switchover = "committed";
        commit::confirm_running(&mut self.control, installed);
        log::info!(
            "switched over: {installed} pages installed in {:.1} ms",
            self.report.install_ms
        );
        Ok(())
    }

    /// A pre-copy switch whose commit did not come: the copy is held
    /// stopped when the source may have committed (it is whole and may be
    /// the only one), killed otherwise.
    fn not_committed(&mut self, why: NoCommit) -> RecvError {
        match self.restored.take() {
            Some(restored) if why.in_doubt() => {
                let pid = restored.pid();
                restored.release();
                RecvError::InDoubt { pid, why }
            }
            Some(restored) => {
                let pid = restored.pid();
                restored.abandon();
                commit::tell_source(&mut self.control, &why);
                RecvError::NotCommitted { pid, why }
            }
            None => {
                commit::tell_source(&mut self.control, &why);
                RecvError::ImageNotCommitted {
                    dir: self.report.image_dir.clone().unwrap_or_default(),
                    why,
                }
            }
        }
    }

    /// The pages the source announced it still holds, clipped to the
    /// layouts it sent (nothing is sized or requested outside them).
    fn take_pending(&mut self) -> BTreeMap<SpaceKey, RangeSet> {
        let store = self.intake.lock_store();
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|(space, r)| {
                let layout = RangeSet::from_ranges(store.space(space)?.ranges().collect());
                Some((space, RangeSet::from_ranges(r).intersection(&layout)))
            })
            .collect()
    }

    /// The CRIU switch ([`criu`]): restore, commit, post-copy.
    fn switch_criu(&mut self) -> Result<(), RecvError> {
        let pending = self.take_pending();
        let (Output::Criu(c), Some(images)) = (&self.opts.output, self.images.as_ref()) else {
            self.control.send_error(
                codes::DESTINATION,
                "this recv does not restore CRIU dumps (no --criu)",
            );
            return Err(RecvError::CriuNotExpected);
        };
        self.report.mode = SwitchKind::Postcopy;
        let result = criu::run(
            c,
            images,
            Switch {
                intake: &self.intake,
                lanes: &self.lanes,
                control: &mut self.control,
                pending: &pending,
                reconnect_timeout: self.opts.reconnect_timeout,
                report: &mut self.report,
            },
        );
        match result {
            Ok(tree) => {
                self.criu_tree = tree;
                Ok(())
            }
            Err(e) => {
                self.control
                    .send_error(codes::DESTINATION, &pagehop_mem::error_chain(&e));
                Err(e)
            }
        }
    }

    fn postcopy(&mut self) -> Result<(), RecvError> {
        let Output::Restore(cmd) = &self.opts.output else {
            self.control.send_error(
                codes::DESTINATION,
                "post-copy needs --restore-cmd at the destination",
            );
            return Err(RecvError::PostcopyNeedsRestore);
        };
        self.report.mode = SwitchKind::Postcopy;
        let pending = self.take_pending();
        let restored = postcopy::run(
            cmd,
            Switch {
                intake: &self.intake,
                lanes: &self.lanes,
                control: &mut self.control,
                pending: &pending,
                reconnect_timeout: self.opts.reconnect_timeout,
                report: &mut self.report,
            },
        )?;
        self.restored = Some(restored);
        Ok(())
    }
}

/// Installs every stored page inside the restored process's registered
/// ranges through its userfaultfd, on every core. Returns (installed, pages
/// outside the registered ranges).
fn install_all(restored: &mut Restored, store: &PageStore) -> Result<(u64, u64), RecvError> {
    // The pid the process sent (the restore command may have started it
    // through a shell, so it need not be our child).
    let registered = restored.registered_ranges().unwrap_or_default();
    if registered.is_empty() {
        return Err(RecvError::NothingRegistered);
    }
    let uffd = restored.take_uffd().expect("the uffd is taken once");
    // Pre-copy installs everything before the installers (the only holders
    // of the userfaultfd) go away; the kernel zero-fills whatever was never
    // sent.
    let mut lanes = UffdSink::lanes(
        SpaceKey::ROOT,
        uffd,
        store.page_size(),
        &registered,
        UffdSink::lane_count(),
    )?;
    store.drain_parallel(SpaceKey::ROOT, &mut lanes)?;
    let installs = UffdSink::finish_all(&mut lanes)?;
    Ok((installs.installed, installs.outside))
}

/// A decoded control-lane frame.
enum ControlFrame {
    Layout(Layout),
    ImageChunk(ImageChunk),
    EndOfRound(EndOfRound),
    Pending(Pending),
    Switchover(Switchover),
    VerifyDigests(VerifyDigests),
    Done,
    Other(FrameKind),
}

impl ControlFrame {
    fn decode(kind: FrameKind, payload: &[u8]) -> Result<Self, MsgError> {
        Ok(match kind {
            FrameKind::Layout => ControlFrame::Layout(Layout::decode(payload)?),
            FrameKind::ImageChunk => ControlFrame::ImageChunk(ImageChunk::decode(payload)?),
            FrameKind::EndOfRound => ControlFrame::EndOfRound(EndOfRound::decode(payload)?),
            FrameKind::Pending => ControlFrame::Pending(Pending::decode(payload)?),
            FrameKind::Switchover => ControlFrame::Switchover(Switchover::decode(payload)?),
            FrameKind::VerifyDigests => {
                ControlFrame::VerifyDigests(VerifyDigests::decode(payload)?)
            }
            FrameKind::Done => {
                Done::decode(payload)?;
                ControlFrame::Done
            }
            other => ControlFrame::Other(other),
        })
    }

    /// The state machine's view of it.
    fn event(&self) -> Event {
        match self {
            ControlFrame::Layout(_) => Event::Layout,
            ControlFrame::ImageChunk(_) => Event::ImageChunk,
            ControlFrame::EndOfRound(end) => Event::EndOfRound { round: end.round },
            ControlFrame::Pending(_) => Event::Pending,
            ControlFrame::Switchover(s) => Event::Switchover {
                postcopy: s.postcopy,
            },
            ControlFrame::VerifyDigests(_) => Event::VerifyDigests,
            ControlFrame::Done => Event::Done,
            ControlFrame::Other(kind) => Event::Other(*kind),
        }
    }
}
