//! The CRIU switch on the destination (`recv --criu DIR`).
//!
//! The images came ahead of the switch ([`ImageIntake`]). At the switch:
//! 1. pagehop listens on `DIR/lazy-pages.socket` as CRIU's lazy-pages
//!    daemon and starts `criu restore --lazy-pages -d` (in recv's own
//!    namespaces: `nsenter --net` and container runtimes work; `ip netns exec` adds a mount namespace CRIU cannot dump across);
//! 2. every task CRIU restores hands over its userfaultfd (its pid in the
//!    tree's namespace, which names its page store); faults are served from
//!    the first one on, also before CRIU's restore-finished marker;
//! 3. once CRIU has exited cleanly, the restored tree (stopped, as it was
//!    dumped) is found on this host ([`host_tasks`]) and the source hears
//!    `Restored`;
//! 4. only on the source's `Commit` does the tree continue (SIGCONT
//!    through pidfds); then post-copy runs as for any process.
//!
//! Until the commit, any failure kills what was restored: the source may
//! still run, and a source that committed holds the intact copy
//! ([`super::commit`]). After it, the usual post-copy rules hold.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pagehop_criu::{Criu, LazyRestore, RestoreRequest};
use pagehop_dest::criu::host::{HostTreeError, RestoredTask, host_tasks};
use pagehop_dest::criu::images::{ImageIntake, ImageIntakeError};
use pagehop_dest::fetch::{self, Fetch, Served};
use pagehop_dest::handoff::{HandoffError, HandoffListener, LazyItem};
use pagehop_mem::SpaceKey;
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_sys::process::{Process, descendants};
use pagehop_wire::criu::{DumpedTree, DumpedTreeError, TaskState};

use super::postcopy::Switch;
use super::{RecvError, commit};
use crate::report::{CriuRecvReport, CriuTaskReport};

/// The daemon socket CRIU's restore connects to, in its work directory.
pub const LAZY_SOCKET: &str = "lazy-pages.socket";
/// How long `criu restore` may take, handoff included.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one item on the lazy-pages socket may take once it began.
const ITEM_TIMEOUT: Duration = Duration::from_secs(10);
/// Fault-serving waits between looks at CRIU and the control lane.
const TICK: Duration = Duration::from_millis(1);

/// `recv --criu DIR`.
#[derive(Clone, Debug)]
pub struct CriuRestore {
    pub criu: Criu,
    pub dir: PathBuf,
    /// Passed through to `criu restore` (`--tcp-close`, `--shell-job`, ...).
    pub restore_options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CriuRecvError {
    #[error(transparent)]
    Images(#[from] ImageIntakeError),
    #[error("the received dump")]
    Tree(#[from] DumpedTreeError),
    #[error(
        "the source left pages of {space} pending that CRIU's dump does not hold lazily: \
         they could never be installed"
    )]
    PendingOutsideLazy { space: SpaceKey },
    #[error(transparent)]
    Restore(#[from] pagehop_criu::RestoreError),
    #[error("CRIU's lazy-pages connection")]
    Handoff(#[from] HandoffError),
    #[error(
        "the lazy-pages socket was connected by pid {got}, not by our criu restore ({want}): refused"
    )]
    Stranger { got: i32, want: i32 },
    #[error("criu restore sent task {vpid}, which {why}")]
    BadTask { vpid: i32, why: &'static str },
    #[error("criu restore handed over {got} tasks; the dump has {want}")]
    TaskCount { got: usize, want: usize },
    #[error("criu restore did not finish within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Host(#[from] HostTreeError),
}

/// What was restored, killed on drop unless [`Doomed::spare`]d: the
/// source runs on until it commits.
struct Doomed {
    restore: Option<LazyRestore>,
    tasks: Vec<Process>,
}

impl Doomed {
    fn spare(mut self) -> Vec<Process> {
        self.restore = None;
        std::mem::take(&mut self.tasks)
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        // CRIU's children first: tasks it restored but did not report yet.
        if let Some(restore) = self.restore.as_mut() {
            for pid in descendants(restore.pid()).into_iter().skip(1) {
                if let Ok(p) = Process::open(pid) {
                    let _ = p.signal(libc::SIGKILL);
                }
            }
            restore.kill();
        }
        for p in &self.tasks {
            let _ = p.signal(libc::SIGKILL);
        }
        if !self.tasks.is_empty() {
            log::warn!("the restored tree was killed: the source was not committed");
        }
    }
}

/// Restores the tree, waits for the commit, continues it and serves it
/// until it holds all of its memory. Returns the restored processes.
pub fn run(
    c: &CriuRestore,
    images: &ImageIntake,
    s: Switch<'_>,
) -> Result<Vec<Process>, RecvError> {
    let Switch {
        intake,
        lanes,
        control,
        pending,
        reconnect_timeout,
        report,
    } = s;
    let started = Instant::now();
    let received = images.finish().map_err(CriuRecvError::from)?;
    let tree = DumpedTree::read(&c.dir).map_err(CriuRecvError::from)?;
    let lazy: BTreeMap<SpaceKey, RangeSet> = tree
        .live_tasks()
        .map(|t| {
            let ranges = t.lazy.iter().map(|&(a, b)| Range::new(a, b)).collect();
            (SpaceKey(t.vpid), RangeSet::from_ranges(ranges))
        })
        .collect();
    let none = RangeSet::new();
    for (space, p) in pending {
        if !p.difference(lazy.get(space).unwrap_or(&none)).is_empty() {
            return Err(CriuRecvError::PendingOutsideLazy { space: *space }.into());
        }
    }
    let mut r = CriuRecvReport {
        images_files: received.files,
        images_bytes: received.bytes,
        ..CriuRecvReport::default()
    };
    let listener = HandoffListener::bind(c.dir.join(LAZY_SOCKET)).map_err(CriuRecvError::from)?;
    let restore = LazyRestore::start(
        &c.criu,
        &RestoreRequest {
            dir: &c.dir,
            extra: &c.restore_options,
        },
    )
    .map_err(CriuRecvError::from)?;
    let criu_pid = restore.pid();
    let mut doomed = Doomed {
        restore: Some(restore),
        tasks: Vec::new(),
    };
    let early = fetch::Start {
        store: intake.store(),
        lanes,
        pending,
        processes: &[],
        reconnect_timeout,
        installable: Some(&lazy),
    };
    let mut fetch = Fetch::new(&early, Vec::new())?;
    intake.start_postcopy(fetch.arrivals());
    let deadline = started + RESTORE_TIMEOUT;
    // CRIU connects before it forks any task.
    let mut client = loop {
        match listener.accept_lazy(Duration::from_millis(20)) {
            Ok(client) => break client,
            Err(HandoffError::AcceptTimeout { .. }) => {}
            Err(e) => return Err(CriuRecvError::from(e).into()),
        }
        check_restore(&mut doomed, deadline)?;
    };
    if client.peer_pid() != criu_pid {
        return Err(CriuRecvError::Stranger {
            got: client.peer_pid(),
            want: criu_pid,
        }
        .into());
    }
    // One item per task, in no set order, then the marker; faults are
    // served meanwhile.
    let mut seen: Vec<u32> = Vec::new();
    loop {
        if client.readable(Duration::ZERO) {
            let item = match client.next_item(ITEM_TIMEOUT) {
                Ok(item) => item,
                // CRIU ending the connection early is CRIU failing: give its reason.
                Err(e) => {
                    return Err(restore_failure(&mut doomed)
                        .unwrap_or_else(|| CriuRecvError::from(e).into()));
                }
            };
            match item {
                LazyItem::Task { vpid, uffd } => {
                    let v = check_item(&tree, &seen, vpid, false)?;
                    seen.push(v);
                    fetch.add(Served {
                        uffd,
                        space: SpaceKey(v),
                    })?;
                }
                LazyItem::Zombie { vpid } => seen.push(check_item(&tree, &seen, vpid, true)?),
                LazyItem::Finished => break,
            }
            continue;
        }
        check_restore(&mut doomed, deadline)?;
        fetch.serve_faults(&early, TICK)?;
    }
    r.handoff_ms = started.elapsed().as_secs_f64() * 1e3;
    if seen.len() != tree.tasks.len() {
        return Err(CriuRecvError::TaskCount {
            got: seen.len(),
            want: tree.tasks.len(),
        }
        .into());
    }
    // CRIU finishes (detaches the tree, exits); its last steps may fault.
    let root = loop {
        if let Some(outcome) = doomed.restore.as_mut().and_then(LazyRestore::outcome) {
            break outcome.map_err(CriuRecvError::from)?;
        }
        if Instant::now() >= deadline {
            return Err(CriuRecvError::Timeout(RESTORE_TIMEOUT).into());
        }
        fetch.serve_faults(&early, TICK)?;
    };
    r.restore_ms = started.elapsed().as_secs_f64() * 1e3;
    let tasks: Vec<RestoredTask> = host_tasks(root, &tree).map_err(CriuRecvError::from)?;
    doomed.tasks = tasks
        .iter()
        .filter_map(|t| t.process.try_clone().ok())
        .collect();
    report.restored_pid = Some(root);
    log::info!(
        "criu restore: {} tasks restored (root pid {root}) in {:.1} ms; waiting for the source's commit",
        seen.len(),
        r.restore_ms
    );
    // Nothing runs before the commit; a fault would come from outside.
    let waited = commit::await_commit(
        control,
        seen.len() as u32,
        commit::COMMIT_TIMEOUT,
        &mut || fetch.serve_faults(&early, TICK).map_err(RecvError::from),
    )?;
    r.commit_wait_ms = match waited {
        Ok(waited) => waited.as_secs_f64() * 1e3,
        Err(why) => {
            // Killed before the source hears that it may run on.
            drop(doomed);
            commit::tell_source(control, &why);
            return Err(RecvError::NotCommitted { pid: root, why });
        }
    };
    report.switchover = "committed";
    let processes = doomed.spare();
    // Every task was dumped stopped (pagehop's freeze): all continue.
    for p in &processes {
        let _ = p.signal(libc::SIGCONT);
    }
    commit::confirm_running(control, 0);
    report.install_ms = started.elapsed().as_secs_f64() * 1e3;
    log::info!(
        "criu: the tree runs {:.1} ms after the switch; {} pages to fetch",
        report.install_ms,
        pending
            .values()
            .map(|p| p.pages(intake.lock_store().page_size() as u64))
            .sum::<u64>()
    );
    r.tasks = tasks
        .iter()
        .map(|t| CriuTaskReport {
            vpid: t.vpid,
            pid: t.process.pid(),
            lazy_pages: lazy
                .get(&SpaceKey(t.vpid))
                .map_or(0, |l| l.pages(intake.lock_store().page_size() as u64)),
            ..CriuTaskReport::default()
        })
        .collect();
    report.criu = Some(r);
    let start = fetch::Start {
        processes: &processes,
        ..early
    };
    match fetch.run(&start, control) {
        Ok(stats) => {
            report.pages_installed = stats.installed_pages;
            let (data, zero) = intake.lock_store().received();
            report.pages_received = data;
            report.zero_pages_received = zero;
            if let Some(c) = report.criu.as_mut() {
                for t in &mut c.tasks {
                    if let Some(f) = stats.per_space.iter().find(|f| f.space == t.vpid) {
                        (t.faults, t.requested_pages) = (f.faults, f.requested_pages);
                    }
                }
            }
            report.postcopy = Some(stats);
            Ok(processes)
        }
        // The tree stays stopped: the source may still hold its memory.
        Err(e @ fetch::FetchError::SourceLost { .. }) => Err(e.into()),
        Err(e) => {
            for p in &processes {
                let _ = p.signal(libc::SIGKILL);
            }
            Err(e.into())
        }
    }
}

/// CRIU's own failure, if it exits failing within a few seconds.
fn restore_failure(doomed: &mut Doomed) -> Option<RecvError> {
    let restore = doomed.restore.as_mut()?;
    let _ = pagehop_sys::poll::poll_readable(restore.exit_fd(), Duration::from_secs(5));
    match restore.outcome()? {
        Err(e) => Some(CriuRecvError::from(e).into()),
        Ok(_) => None,
    }
}

/// Fails when CRIU's restore failed or ran out of time.
fn check_restore(doomed: &mut Doomed, deadline: Instant) -> Result<(), RecvError> {
    if let Some(restore) = doomed.restore.as_mut()
        && let Some(Err(e)) = restore.outcome()
    {
        return Err(CriuRecvError::from(e).into());
    }
    if Instant::now() >= deadline {
        return Err(CriuRecvError::Timeout(RESTORE_TIMEOUT).into());
    }
    Ok(())
}

/// A task item's pid, checked against the dump and what came before.
fn check_item(tree: &DumpedTree, seen: &[u32], vpid: i32, zombie: bool) -> Result<u32, RecvError> {
    let bad = |why| Err(CriuRecvError::BadTask { vpid, why }.into());
    let Ok(v) = u32::try_from(vpid) else {
        return bad("is no pid");
    };
    let Some(task) = tree.tasks.iter().find(|t| t.vpid == v) else {
        return bad("is not in the dump");
    };
    if seen.contains(&v) {
        return bad("came twice");
    }
    if zombie != (task.state == TaskState::Dead) {
        return bad(if zombie {
            "the dump holds as a live task, but came as a zombie"
        } else {
            "the dump holds as a zombie, but came with a userfaultfd"
        });
    }
    Ok(v)
}
