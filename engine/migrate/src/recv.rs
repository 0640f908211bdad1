//! `pagehop recv`: pre-copy live migration, destination side.
//!
//! Received pages go into the [`PageStore`] until switchover; nothing is
//! installed anywhere before that. At switchover the destination process is
//! started (`--restore-cmd`), hands its userfaultfd over the handoff socket
//! (CRIU's lazy-pages convention, see [`crate::handoff`]), and every stored
//! page inside its registered ranges is installed with UFFDIO_COPY or
//! UFFDIO_ZEROPAGE; or the memory is written to `--image-dir` instead.
//!
//! If the source goes away before switchover, recv reports a failed
//! migration: no process was started, nothing was installed.
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::MigrateError;
use pagehop_dest::fetch::{self, Arrivals, Fetch, Lanes};
use pagehop_dest::handoff::{self, HandoffListener};
use pagehop_dest::install::Installer;
use pagehop_dest::store::{PageState, PageStore};
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_wire::auth::Token;
use pagehop_wire::batch::decode_batch;
use pagehop_wire::conn::{Conn, ConnError, codes};
use pagehop_wire::image;
use pagehop_wire::msg::{
    self, Attach, Done, EndOfRound, Lane, Layout, LayoutAck, Pending, Role, Switchover,
    VerifyDigests, VerifyResult,
};
use pagehop_wire::stats::DestStats;
use pagehop_wire::verify::page_digest;
use pagehop_wire::{FrameError, FrameKind, FrameReader};

pub struct RecvOptions {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    pub restore_cmd: Option<String>,
    pub image_dir: Option<PathBuf>,
    /// Where the restored process finds the handoff socket.
    pub socket_path: PathBuf,
    pub handshake_timeout: Duration,
    pub restore_timeout: Duration,
    /// Post-copy: how long to wait for a source whose connections broke.
    pub reconnect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error(
        "refusing to listen on {addr} without a token: only loopback addresses may go unauthenticated"
    )]
    NeedToken { addr: SocketAddr },
    #[error("nothing to restore into: give --restore-cmd or --image-dir")]
    NoTarget,
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the source went away during round {round} before switchover; nothing was installed")]
    SourceLost {
        round: u32,
        #[source]
        source: ConnError,
    },
    #[error("a data stream delivered bad data ({0}); nothing was installed")]
    DataStream(String),
    #[error("round {round}: {got} of {want} pages arrived within {timeout:?}")]
    RoundTimeout {
        round: u32,
        got: u64,
        want: u64,
        timeout: Duration,
    },
    #[error("starting the restore command {cmd:?}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the restored process did not hand over its userfaultfd")]
    Handoff(#[source] handoff::HandoffError),
    #[error(
        "the restored process registered no memory with its userfaultfd: nothing could be installed"
    )]
    NothingRegistered,
    #[error("duplicating the userfaultfd for the installer threads")]
    DupUffd {
        #[source]
        source: std::io::Error,
    },
    #[error("installing pages into the restored process")]
    Install(#[source] pagehop_dest::install::InstallError),
    #[error("writing the image")]
    Image(#[source] image::ImageError),
    #[error(transparent)]
    Store(#[from] pagehop_dest::store::StoreError),
}

impl From<DestError> for MigrateError {
    fn from(e: DestError) -> Self {
        MigrateError::Protocol(pagehop_mem::error_chain(&e))
    }
}

/// What recv reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RecvReport {
    pub source: String,
    pub rounds: u32,
    pub pages_received: u64,
    pub zero_pages_received: u64,
    pub pages_installed: u64,
    pub pages_outside_registered_ranges: u64,
    pub restored_pid: Option<i32>,
    pub image_dir: Option<String>,
    pub install_ms: f64,
    pub verify: String,
    pub total_ms: f64,
    /// `precopy` or `postcopy` (the switch the source asked for).
    pub mode: &'static str,
    /// Post-copy only.
    pub postcopy: Option<DestStats>,
}

/// State shared by the control loop and the data-stream threads.
struct Shared {
    store: Mutex<PageStore>,
    /// Pages received per round.
    counts: Mutex<HashMap<u32, u64>>,
    arrived: Condvar,
    failure: Mutex<Option<Failure>>,
    /// The control connection, to wake the control loop when a data stream fails.
    control: TcpStream,
    /// Switchover happened: data streams may close.
    switched: AtomicBool,
    /// The migration's session id (from the first control connection).
    session: u64,
    lanes: Lanes,
    /// Set at a post-copy switch: where received pages are reported.
    postcopy: OnceLock<Arc<Arrivals>>,
}

impl Shared {
    /// Records why a data stream failed and stops the control loop's read, so
    /// that it tells the source and ends the migration instead of waiting.
    fn fail(&self, why: Failure) {
        self.failure.lock().expect("lock").get_or_insert(why);
        self.arrived.notify_all();
        let _ = self.control.shutdown(std::net::Shutdown::Read);
    }

    fn failure(&self) -> Option<Failure> {
        self.failure.lock().expect("lock").clone()
    }

    /// The error a recorded failure becomes.
    fn error(&self, round: u32, failure: Failure) -> MigrateError {
        match failure {
            Failure::SourceGone => DestError::SourceLost {
                round,
                source: ConnError::Frame(FrameError::Closed),
            }
            .into(),
            Failure::Stream(why) => DestError::DataStream(why).into(),
        }
    }
}

/// Why a data stream ended the migration.
#[derive(Clone, Debug)]
enum Failure {
    /// It closed before switchover: the source went away.
    SourceGone,
    /// It delivered something wrong.
    Stream(String),
}

/// How long a round's pages may take to arrive after its end was announced.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Receives `Pages` frames from one data or priority lane into the store.
fn data_stream(
    stream: TcpStream,
    shared: Arc<Shared>,
    page_size: usize,
    epoch: u32,
    priority: bool,
) {
    let mut reader = FrameReader::new(stream);
    let mut scratch = Vec::new();
    loop {
        let frame = reader.read_frame();
        if frame.is_err()
            && let Some(arrivals) = shared.postcopy.get()
        {
            // Post-copy: a bad frame is dropped whole; the source resends
            // whatever is still missing after it reconnects.
            if let Err(e) = &frame
                && !matches!(e, FrameError::Closed)
            {
                eprintln!(
                    "pagehop recv: lane of epoch {epoch} ended: {}",
                    pagehop_mem::error_chain(e)
                );
            }
            return arrivals.stream_ended(epoch);
        }
        let (kind, payload) = match frame {
            Ok(frame) => frame,
            Err(FrameError::Closed) if shared.switched.load(Ordering::Acquire) => return,
            // The source went away: cleanly, mid-frame, or with a reset.
            Err(FrameError::Closed | FrameError::Truncated { .. } | FrameError::Io { .. }) => {
                return shared.fail(Failure::SourceGone);
            }
            Err(e) => return shared.fail(Failure::Stream(pagehop_mem::error_chain(&e))),
        };
        if kind != FrameKind::Pages {
            return shared.fail(Failure::Stream(format!("unexpected {} frame", kind.name())));
        }
        let batch = match decode_batch(payload, page_size, &mut scratch) {
            Ok(b) => b,
            Err(e) => {
                if let Some(arrivals) = shared.postcopy.get() {
                    return arrivals.stream_ended(epoch);
                }
                return shared.fail(Failure::Stream(pagehop_mem::error_chain(&e)));
            }
        };
        let round = batch.round;
        let count = batch.len() as u64;
        {
            let mut store = shared.store.lock().expect("lock");
            for (addr, page) in batch.iter() {
                if let Err(e) = store.put(addr, page) {
                    drop(store);
                    return shared.fail(Failure::Stream(pagehop_mem::error_chain(&e)));
                }
            }
        }
        if let Some(arrivals) = shared.postcopy.get() {
            arrivals.arrived(priority, batch.iter().map(|(addr, _)| addr).collect());
        }
        *shared
            .counts
            .lock()
            .expect("lock")
            .entry(round)
            .or_default() += count;
        shared.arrived.notify_all();
    }
}

pub fn recv(opts: RecvOptions, log: &mut dyn FnMut(&str)) -> Result<RecvReport, MigrateError> {
    if !opts.listen.ip().is_loopback() && opts.token.is_none() {
        return Err(DestError::NeedToken { addr: opts.listen }.into());
    }
    if opts.restore_cmd.is_none() && opts.image_dir.is_none() {
        return Err(DestError::NoTarget.into());
    }
    let page_size = pagehop_sys::page_size();
    let listener = TcpListener::bind(opts.listen).map_err(|source| DestError::Listen {
        addr: opts.listen,
        source,
    })?;
    log(&format!(
        "listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    ));
    let mut caps = msg::CAP_LZ4 | msg::CAP_ZEROCOPY | msg::CAP_VERIFY;
    if opts.restore_cmd.is_some() {
        caps |= msg::CAP_POSTCOPY;
    }
    let handshake = |stream: TcpStream| {
        Conn::handshake(
            stream,
            Role::Destination,
            opts.token.as_ref(),
            page_size as u32,
            caps,
            opts.handshake_timeout,
        )
    };
    // The control connection: keep listening past refused peers (wrong token,
    // other version), logging each.
    let control = loop {
        let (stream, peer) = listener.accept().map_err(|source| DestError::Listen {
            addr: opts.listen,
            source,
        })?;
        match handshake(stream).and_then(|mut conn| {
            let attach: Attach = conn.recv_msg()?;
            Ok((conn, attach))
        }) {
            Ok((conn, attach)) if attach.lane == Lane::Control && attach.epoch == 0 => {
                break (conn, attach.session);
            }
            Ok((_, attach)) => log(&format!(
                "refused {peer}: expected a new migration's control connection, got a {:?} lane of epoch {}",
                attach.lane, attach.epoch
            )),
            Err(e) => log(&format!("refused {peer}: {}", pagehop_mem::error_chain(&e))),
        }
    };
    let (mut control, session) = control;
    let started = Instant::now();
    let peer = control
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log(&format!("source {peer} connected"));
    let shared = Arc::new(Shared {
        store: Mutex::new(PageStore::new(page_size)),
        counts: Mutex::new(HashMap::new()),
        arrived: Condvar::new(),
        failure: Mutex::new(None),
        control: control.try_clone_stream().map_err(ConnError::from)?,
        switched: AtomicBool::new(false),
        session,
        lanes: Lanes::default(),
        postcopy: OnceLock::new(),
    });
    // Data streams: accepted and authenticated in the background.
    {
        let listener = listener.try_clone().map_err(|source| DestError::Listen {
            addr: opts.listen,
            source,
        })?;
        let shared = Arc::clone(&shared);
        let token = opts.token.clone();
        let timeout = opts.handshake_timeout;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let peer = stream.peer_addr().ok();
                let attached = Conn::handshake(
                    stream,
                    Role::Destination,
                    token.as_ref(),
                    page_size as u32,
                    caps,
                    timeout,
                )
                .and_then(|mut conn| {
                    conn.set_read_timeout(Some(timeout))?;
                    let attach: Attach = conn.recv_msg()?;
                    conn.set_read_timeout(None)?;
                    Ok((conn, attach))
                });
                match attached {
                    Ok((conn, attach)) if attach.session == shared.session => {
                        if let Err(e) = attach_lane(&shared, conn, &attach, page_size) {
                            eprintln!(
                                "pagehop recv: dropped a {:?} lane from {peer:?}: {e}",
                                attach.lane
                            );
                        }
                    }
                    Ok(_) => eprintln!(
                        "pagehop recv: refused a connection from {peer:?}: it belongs to another migration"
                    ),
                    Err(e) => eprintln!(
                        "pagehop recv: refused a connection from {peer:?}: {}",
                        pagehop_mem::error_chain(&e)
                    ),
                }
            }
        });
    }

    let mut report = RecvReport {
        source: peer,
        verify: "skipped".to_string(),
        mode: "precopy",
        ..RecvReport::default()
    };
    let mut pending: Vec<Range> = Vec::new();
    let mut round = 0u32;
    let mut child: Option<Child> = None;
    let mut switched = false;
    let mut verify = Verification::default();
    loop {
        let frame = control.recv();
        let (kind, payload) = match frame {
            Ok(f) => f,
            Err(source) if !switched => {
                return Err(match shared.failure() {
                    Some(failure) => {
                        if let Failure::Stream(why) = &failure {
                            control.send_error(codes::DESTINATION, why);
                        }
                        shared.error(round, failure)
                    }
                    None => DestError::SourceLost { round, source }.into(),
                });
            }
            // After switchover the process runs; a source that leaves without
            // verification is no failure.
            Err(_) => break,
        };
        match kind {
            FrameKind::Layout => {
                let layout = Layout::decode(payload).map_err(ConnError::from)?;
                let ranges: Vec<Range> = layout
                    .vmas
                    .iter()
                    .map(|v| Range::new(v.start, v.end))
                    .collect();
                shared
                    .store
                    .lock()
                    .expect("lock")
                    .set_layout(&ranges)
                    .map_err(DestError::from)?;
                control.send(&LayoutAck {
                    vmas: layout.vmas.len() as u32,
                })?;
            }
            FrameKind::EndOfRound => {
                let end = EndOfRound::decode(payload).map_err(ConnError::from)?;
                round = end.round;
                wait_for_round(&shared, end.round, end.pages)?;
                report.rounds = end.round + 1;
                control.send(&end)?;
            }
            FrameKind::Pending => {
                let p = Pending::decode(payload).map_err(ConnError::from)?;
                pending.extend(p.ranges.iter().map(|&(a, b)| Range::new(a, b)));
            }
            FrameKind::Switchover
                if Switchover::decode(payload)
                    .map_err(ConnError::from)?
                    .postcopy =>
            {
                switched = true;
                report.mode = "postcopy";
                let pending = RangeSet::from_ranges(std::mem::take(&mut pending));
                let (c, stats) =
                    postcopy(&opts, &shared, &mut control, &pending, &mut report, log)?;
                child = Some(c);
                report.postcopy = Some(stats);
            }
            FrameKind::Switchover => {
                switched = true;
                shared.switched.store(true, Ordering::Release);
                let install_started = Instant::now();
                let store = shared.store.lock().expect("lock");
                let (data, zero) = store.received();
                report.pages_received = data;
                report.zero_pages_received = zero;
                let installed = if let Some(dir) = &opts.image_dir {
                    let n = image::write(dir, store.page_size(), store.ranges(), store.iter())
                        .map_err(DestError::Image)?;
                    report.image_dir = Some(dir.display().to_string());
                    n
                } else {
                    let cmd = opts.restore_cmd.as_deref().expect("checked above");
                    let (c, installed, outside, pid) = restore(cmd, &opts, &store)?;
                    child = Some(c);
                    report.pages_outside_registered_ranges = outside;
                    report.restored_pid = Some(pid);
                    installed
                };
                report.pages_installed = installed;
                report.install_ms = install_started.elapsed().as_secs_f64() * 1e3;
                drop(store);
                control.send(&Done {
                    pages_sent: installed,
                })?;
                log(&format!(
                    "switched over: {installed} pages installed in {:.1} ms",
                    report.install_ms
                ));
            }
            FrameKind::VerifyDigests => {
                let digests = VerifyDigests::decode(payload).map_err(ConnError::from)?;
                verify.check(&shared.store.lock().expect("lock"), &digests);
            }
            FrameKind::Done => {
                let result = VerifyResult {
                    mismatch: verify.mismatch,
                    pages_checked: verify.checked,
                };
                control.send(&result)?;
                report.verify = match verify.mismatch {
                    None => "ok".to_string(),
                    Some(a) => format!("mismatch at page {a:#x}"),
                };
                break;
            }
            other => {
                control.send_error(
                    codes::PROTOCOL,
                    &format!("unexpected {} frame", other.name()),
                );
                return Err(MigrateError::Protocol(format!(
                    "unexpected {} frame on the control connection",
                    other.name()
                )));
            }
        }
    }
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    // The restored process runs on its own; recv does not wait for it.
    drop(child);
    Ok(report)
}

fn wait_for_round(shared: &Shared, round: u32, want: u64) -> Result<(), MigrateError> {
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut counts = shared.counts.lock().expect("lock");
    loop {
        if let Some(failure) = shared.failure() {
            return Err(shared.error(round, failure));
        }
        let got = counts.get(&round).copied().unwrap_or(0);
        if got >= want {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DestError::RoundTimeout {
                round,
                got,
                want,
                timeout: ROUND_TIMEOUT,
            }
            .into());
        }
        counts = shared
            .arrived
            .wait_timeout(counts, left.min(Duration::from_millis(100)))
            .expect("lock")
            .0;
    }
}

/// Hands a freshly attached lane to its user.
fn attach_lane(
    shared: &Arc<Shared>,
    conn: Conn,
    attach: &Attach,
    page_size: usize,
) -> Result<(), ConnError> {
    let epoch = attach.epoch;
    match attach.lane {
        Lane::Control if epoch > 0 => {
            shared.lanes.register(epoch, &conn.try_clone_stream()?);
            shared.lanes.attach_control(epoch, conn);
        }
        Lane::Control => {
            return Err(ConnError::Unexpected {
                expected: "a reconnecting control lane",
                got: "a second control lane of epoch 0",
            });
        }
        Lane::Data | Lane::Priority => {
            let stream = conn.into_stream();
            shared.lanes.register(epoch, &stream);
            let priority = attach.lane == Lane::Priority;
            if priority {
                shared.lanes.attach_priority(epoch, stream.try_clone()?);
            }
            let shared = Arc::clone(shared);
            std::thread::spawn(move || data_stream(stream, shared, page_size, epoch, priority));
        }
    }
    Ok(())
}

/// The post-copy switch: start the process at once, tell the source it runs,
/// and serve its faults until every page is installed.
fn postcopy(
    opts: &RecvOptions,
    shared: &Shared,
    control: &mut Conn,
    pending: &RangeSet,
    report: &mut RecvReport,
    log: &mut dyn FnMut(&str),
) -> Result<(Child, DestStats), MigrateError> {
    let Some(cmd) = opts.restore_cmd.as_deref() else {
        control.send_error(
            codes::DESTINATION,
            "post-copy needs --restore-cmd at the destination",
        );
        return Err(MigrateError::Protocol(
            "the source asked for post-copy, which needs --restore-cmd".into(),
        ));
    };
    let started = Instant::now();
    let (mut child, pid, uffd) = start_restore(cmd, opts)?;
    report.restored_pid = Some(pid);
    let start = fetch::Start {
        store: &shared.store,
        lanes: &shared.lanes,
        pending,
        pid,
        reconnect_timeout: opts.reconnect_timeout,
    };
    let fetch = match Fetch::new(&start, uffd) {
        Ok(f) => f,
        Err(e) => {
            abandon(&mut child, pid);
            return Err(e.into());
        }
    };
    let _ = shared.postcopy.set(fetch.arrivals());
    report.install_ms = started.elapsed().as_secs_f64() * 1e3;
    control.send(&Done { pages_sent: 0 })?;
    log(&format!(
        "post-copy: process {pid} running after {:.1} ms; {} pages to fetch",
        report.install_ms,
        pending.pages(shared.store.lock().expect("lock").page_size() as u64)
    ));
    match fetch.run(&start, control) {
        Ok(stats) => {
            report.pages_installed = stats.installed_pages;
            let (data, zero) = shared.store.lock().expect("lock").received();
            report.pages_received = data;
            report.zero_pages_received = zero;
            log(&format!(
                "post-copy: all pages installed in {:.1} ms; {} faults, remote fault latency p50 {} us p99 {} us",
                stats.postcopy_ms,
                stats.faults,
                stats
                    .remote_fault_latency_us
                    .as_ref()
                    .map_or(0, |l| l.p50_us),
                stats
                    .remote_fault_latency_us
                    .as_ref()
                    .map_or(0, |l| l.p99_us),
            ));
            Ok((child, stats))
        }
        // The process stays stopped: the source may still hold its memory.
        Err(e @ fetch::FetchError::SourceLost { .. }) => Err(e.into()),
        Err(e) => {
            abandon(&mut child, pid);
            Err(e.into())
        }
    }
}

/// Starts the restore command and takes its userfaultfd.
/// Returns the child, the pid that handed the uffd over, and the uffd.
fn start_restore(
    cmd: &str,
    opts: &RecvOptions,
) -> Result<(Child, i32, std::os::fd::OwnedFd), MigrateError> {
    let listener = HandoffListener::bind(&opts.socket_path).map_err(DestError::Handoff)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env(handoff::SOCKET_ENV, &opts.socket_path)
        .spawn()
        .map_err(|source| DestError::Spawn {
            cmd: cmd.to_string(),
            source,
        })?;
    let handoff = match listener.accept_uffd(opts.restore_timeout) {
        Ok(h) => h,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DestError::Handoff(e).into());
        }
    };
    let handoff::Handoff {
        pid,
        uffd,
        mut stream,
    } = handoff;
    // The handoff connection stays open until the process reports the end of
    // its restore (the 4-byte marker), as CRIU's restorer expects.
    std::thread::spawn(move || {
        let mut marker = [0u8; 4];
        let _ = std::io::Read::read_exact(&mut stream, &mut marker);
    });
    Ok((child, pid, uffd))
}

/// Starts the restore command, takes its userfaultfd, installs the store.
/// Returns the child, pages installed, pages outside its registered ranges, its pid.
fn restore(
    cmd: &str,
    opts: &RecvOptions,
    store: &PageStore,
) -> Result<(Child, u64, u64, i32), MigrateError> {
    let (mut child, pid, uffd) = start_restore(cmd, opts)?;
    // The pid the process sent (the restore command may have started it
    // through a shell, so it need not be our child).
    let registered = registered_ranges(pid).unwrap_or_default();
    if registered.is_empty() {
        abandon(&mut child, pid);
        return Err(DestError::NothingRegistered.into());
    }
    // Pre-copy installs everything before the installers (the only holders of
    // the userfaultfd) go away; the kernel zero-fills whatever was never sent.
    let (installed, outside) = match install_store(uffd, store, &registered) {
        Ok(counts) => counts,
        Err(e) => {
            abandon(&mut child, pid);
            return Err(e);
        }
    };
    Ok((child, installed, outside, pid))
}

/// Installer threads: every first touch of a fresh page is expensive here (a
/// VM's memory), so the switchover install uses every core.
fn install_lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

/// Installs every stored page inside `registered` through `uffd`, in batches
/// of 256 pages spread over [`install_lanes`] threads. Returns (installed,
/// pages outside the registered ranges).
fn install_store(
    uffd: std::os::fd::OwnedFd,
    store: &PageStore,
    registered: &RangeSet,
) -> Result<(u64, u64), MigrateError> {
    const BATCH: usize = 256;
    let lanes = install_lanes();
    let mut fds = (1..lanes)
        .map(|_| uffd.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| DestError::DupUffd { source })?;
    fds.push(uffd);
    let outside = store
        .iter()
        .filter(|(addr, _)| !registered.contains(*addr))
        .count() as u64;
    let results: Vec<Result<u64, MigrateError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = fds
            .into_iter()
            .enumerate()
            .map(|(lane, fd)| {
                scope.spawn(move || -> Result<u64, MigrateError> {
                    let installer = Installer::with_page_size(fd, store.page_size());
                    let mut batch: Vec<(u64, Option<&[u8]>)> = Vec::with_capacity(BATCH);
                    let mut number = 0usize;
                    let flush = |batch: &mut Vec<(u64, Option<&[u8]>)>, number: &mut usize| {
                        let mine = *number % lanes == lane;
                        *number += 1;
                        let result: Result<(), MigrateError> = if mine && !batch.is_empty() {
                            installer
                                .copy_batch(batch)
                                .map(drop)
                                .map_err(|e| DestError::Install(e).into())
                        } else {
                            Ok(())
                        };
                        batch.clear();
                        result
                    };
                    for (addr, page) in store.iter().filter(|(addr, _)| registered.contains(*addr))
                    {
                        batch.push((addr, page));
                        if batch.len() == BATCH {
                            flush(&mut batch, &mut number)?;
                        }
                    }
                    flush(&mut batch, &mut number)?;
                    Ok(installer.installed().pages())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("installer thread"))
            .collect()
    });
    let mut installed = 0;
    for r in results {
        installed += r?;
    }
    Ok((installed, outside))
}

/// Kills a restored process whose memory could not be installed: once the
/// userfaultfd goes, the missing pages would read as zeros, and such a
/// process must not run.
fn abandon(child: &mut Child, pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

/// Ranges of `pid` registered with a userfaultfd in missing mode (smaps `um`).
fn registered_ranges(pid: i32) -> std::io::Result<RangeSet> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut current: Option<Range> = None;
    let mut out = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            current = Some(Range::new(a, b));
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && flags.split_whitespace().any(|f| f == "um")
            && let Some(r) = current
        {
            out.push(r);
        }
    }
    Ok(RangeSet::from_ranges(out))
}

/// `--verify` on this side: digests of the stored pages against the source's.
#[derive(Default)]
struct Verification {
    mismatch: Option<u64>,
    checked: u64,
}

impl Verification {
    fn check(&mut self, store: &PageStore, digests: &VerifyDigests) {
        let ps = store.page_size();
        for (i, &want) in digests.hashes.iter().enumerate() {
            let addr = digests.start + (i * ps) as u64;
            let got = match store.get(addr) {
                PageState::Data(d) => page_digest(Some(d), ps),
                PageState::Zero | PageState::Absent => page_digest(None, ps),
            };
            self.checked += 1;
            if got != want && self.mismatch.is_none_or(|m| addr < m) {
                self.mismatch = Some(addr);
            }
        }
    }
}
