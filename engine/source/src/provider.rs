//! The source's [`PageProvider`]s: the running processes ([`LiveTree`]:
//! one [`LiveProcess`] per address space) and the same processes held
//! stopped ([`FrozenTree`]).
//!
//! A [`LiveTree`] is what the pre-copy rounds read while the processes run
//! on: one process under [`SpaceKey::ROOT`], or a process tree keyed by pid
//! in the tree's pid namespace, with members joining (forks) and leaving
//! (exits) as the rounds go. [`LiveTree::freeze`] stops every member and
//! returns a [`FrozenTree`], which
//! the final round, post-copy's demand server and `--verify` read: they take
//! a frozen tree, so they cannot be handed a process that still runs. The
//! tree decides the source's fate at the end: [`FrozenTree::thaw`] (a failed
//! migration: it runs on), [`FrozenTree::kill`] or
//! [`FrozenTree::leave_stopped`].
//!
//! Pages are read with `process_vm_readv` ([`PageReader`]). A page that was
//! unmapped since it was planned is reported absent (`present[i] == false`),
//! never as zeros. After each read the process is checked through its pidfd,
//! so that a pid reused by another process after ours exited cannot hand
//! over someone else's memory.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, ProvideError, SpaceKey};

use crate::freeze::{self, FreezeError, FreezeMethod, Frozen};
use crate::pagemap::Pagemap;
use crate::reader::{PageReader, ReadError};
use crate::target::{Target, TargetError};
use pagehop_sys::process::Process;

/// A running process whose memory is read as it runs.
pub struct LiveProcess {
    target: Target,
    reader: PageReader,
}

impl LiveProcess {
    /// Validates `pid` ([`Target::open`]) and opens its memory.
    pub fn open(pid: i32) -> Result<Self, TargetError> {
        Ok(Self::new(Target::open(pid)?))
    }

    pub fn new(target: Target) -> Self {
        let reader = PageReader::new(target.pid());
        Self { target, reader }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn pid(&self) -> i32 {
        self.target.pid()
    }

    fn gone(&self, space: SpaceKey) -> ProvideError {
        ProvideError::Gone {
            space,
            pid: self.pid(),
        }
    }

    fn read_error(&self, space: SpaceKey, e: ReadError) -> ProvideError {
        match e {
            ReadError::Gone { .. } => self.gone(space),
            ReadError::BufferTooSmall { .. } | ReadError::BadRun { .. } => ProvideError::BadRead {
                space,
                why: e.to_string(),
            },
            other => ProvideError::Failed {
                space,
                what: "memory",
                source: Box::new(other),
            },
        }
    }
}

/// One process read as address space `space` (the key only labels errors;
/// a [`LiveTree`] picks the member).
impl PageProvider for LiveProcess {
    fn page_size(&self) -> usize {
        self.reader.page_size()
    }

    fn layout(&self, space: SpaceKey) -> Result<Layout, ProvideError> {
        Layout::read(self.pid()).map_err(|source| {
            if !self.target.is_alive() {
                self.gone(space)
            } else {
                ProvideError::Failed {
                    space,
                    what: "the address space",
                    source: Box::new(source),
                }
            }
        })
    }

    /// The resident pages of the writable mappings, and every page of the
    /// writable file-backed ones (their untouched pages hold file contents,
    /// which the destination cannot know).
    fn populated(&self, space: SpaceKey, layout: &Layout) -> Result<RangeSet, ProvideError> {
        let failed = |source: crate::pagemap::PagemapError| ProvideError::Failed {
            space,
            what: "the resident pages",
            source: Box::new(source),
        };
        let mut pages = Pagemap::open(self.pid())
            .map_err(failed)?
            .present_in(&layout.writable_ranges())
            .map_err(failed)?;
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

    fn read(
        &self,
        space: SpaceKey,
        runs: &[(u64, usize)],
        buf: &mut [u8],
        present: &mut Vec<bool>,
    ) -> Result<(), ProvideError> {
        // A run that fails part way is read again page by page, and what
        // cannot be read is marked absent.
        let ps = self.reader.page_size();
        let pages: usize = runs.iter().map(|&(_, n)| n).sum();
        present.clear();
        present.resize(pages, true);
        match self.reader.read(runs, buf) {
            Ok(_) => {}
            // Part of it was unmapped meanwhile: read what is left page by page.
            Err(ReadError::Unmapped { .. }) => {
                let mut i = 0;
                for &(start, n) in runs {
                    for k in 0..n as u64 {
                        let at = i * ps;
                        let page = [(start + k * ps as u64, 1)];
                        match self.reader.read(&page, &mut buf[at..at + ps]) {
                            Ok(_) => {}
                            Err(ReadError::Unmapped { .. }) => present[i] = false,
                            Err(e) => return Err(self.read_error(space, e)),
                        }
                        i += 1;
                    }
                }
            }
            Err(e) => return Err(self.read_error(space, e)),
        }
        // The pid still names our process (a pid is not reused while the
        // process, or its zombie, exists), and pages that went missing went
        // with a mapping, not with the process (a dying one loses them all).
        if self.target.process().signal(0).is_err()
            || (present.contains(&false) && !self.target.is_alive())
        {
            return Err(self.gone(space));
        }
        Ok(())
    }
}

/// The source's running processes, one per address space.
#[derive(Default)]
pub struct LiveTree {
    members: RwLock<BTreeMap<SpaceKey, Arc<LiveProcess>>>,
    /// The root of the followed process tree; `None` for a single process.
    root: Option<i32>,
}

/// How a followed tree changed since the last [`LiveTree::sync`].
#[derive(Debug, Default)]
pub struct TreeChange {
    /// New members: (space, pid).
    pub joined: Vec<(SpaceKey, i32)>,
    /// Members that exited: (space, pid).
    pub left: Vec<(SpaceKey, i32)>,
}

impl LiveTree {
    /// One process, as [`SpaceKey::ROOT`].
    pub fn single(process: LiveProcess) -> Self {
        Self {
            members: RwLock::new([(SpaceKey::ROOT, Arc::new(process))].into()),
            root: None,
        }
    }

    /// The process `root` and every process below it, each under its pid in
    /// its own pid namespace (what CRIU names it); [`LiveTree::sync`] keeps
    /// the members in step with the tree.
    pub fn tree(root: i32) -> Result<Self, TargetError> {
        let process = LiveProcess::open(root)?;
        let space = tree_key(&process).ok_or(TargetError::NoSuchProcess { pid: root })?;
        let tree = Self {
            members: RwLock::new([(space, Arc::new(process))].into()),
            root: Some(root),
        };
        tree.sync();
        Ok(tree)
    }

    /// Whether this follows a process tree (rather than one process).
    pub fn follows_tree(&self) -> bool {
        self.root.is_some()
    }

    /// Brings the members of a followed tree up to date: processes forked
    /// below the root join, processes that exited leave. A process that
    /// cannot be opened (it exited meanwhile, or is a zombie) is skipped.
    pub fn sync(&self) -> TreeChange {
        let mut change = TreeChange::default();
        let Some(root) = self.root else {
            return change;
        };
        let now = pagehop_sys::process::descendants(root);
        let mut members = self.members.write().expect("lock");
        members.retain(|&space, p| {
            let stays = now.contains(&p.pid()) && p.target().is_alive();
            if !stays {
                change.left.push((space, p.pid()));
            }
            stays
        });
        for pid in now {
            if members.values().any(|p| p.pid() == pid) {
                continue;
            }
            let Ok(process) = LiveProcess::open(pid) else {
                continue;
            };
            let Some(space) = tree_key(&process) else {
                continue;
            };
            change.joined.push((space, pid));
            members.insert(space, Arc::new(process));
        }
        change
    }

    /// Adds (or replaces) the process of `space`.
    pub fn insert(&self, space: SpaceKey, process: LiveProcess) {
        self.members
            .write()
            .expect("lock")
            .insert(space, Arc::new(process));
    }

    /// Drops the process of `space` (it exited).
    pub fn remove(&self, space: SpaceKey) -> Option<Arc<LiveProcess>> {
        self.members.write().expect("lock").remove(&space)
    }

    /// The address spaces, in order.
    pub fn spaces(&self) -> Vec<SpaceKey> {
        self.members.read().expect("lock").keys().copied().collect()
    }

    /// The process of `space`.
    pub fn process(&self, space: SpaceKey) -> Option<Arc<LiveProcess>> {
        self.members.read().expect("lock").get(&space).cloned()
    }

    /// The address space of the process `pid`, if it is a member.
    pub fn space_of(&self, pid: i32) -> Option<SpaceKey> {
        self.members
            .read()
            .expect("lock")
            .iter()
            .find(|(_, p)| p.pid() == pid)
            .map(|(&space, _)| space)
    }

    fn member(&self, space: SpaceKey) -> Result<Arc<LiveProcess>, ProvideError> {
        self.process(space)
            .ok_or(ProvideError::UnknownSpace { space })
    }

    /// Stops every process (every thread, or their cgroup, or with SIGSTOP)
    /// within `timeout`. A followed tree is stopped until no process joins
    /// any more (a stopped process cannot fork); members that exited on the
    /// way leave it.
    pub fn freeze(
        &self,
        method: &FreezeMethod,
        timeout: Duration,
    ) -> Result<FrozenTree, FreezeError> {
        let mut frozen: Vec<i32> = Vec::new();
        let mut guards = Vec::new();
        loop {
            let members: Vec<Arc<LiveProcess>> = self
                .members
                .read()
                .expect("lock")
                .values()
                .filter(|p| !frozen.contains(&p.pid()))
                .cloned()
                .collect();
            // A cgroup freeze holds every process of the cgroup, new ones too.
            let cgroup_holds = matches!(method, FreezeMethod::Cgroup(_)) && !guards.is_empty();
            if !cgroup_holds && !members.is_empty() {
                let processes: Vec<&Process> =
                    members.iter().map(|p| p.target().process()).collect();
                match freeze::freeze_tree(&processes, method, timeout) {
                    Ok(more) => guards.extend(more),
                    // A member of a followed tree exited: it leaves, the rest is frozen again.
                    Err(FreezeError::Exited { pid } | FreezeError::Signal { pid, .. })
                        if self.root.is_some_and(|root| root != pid) =>
                    {
                        self.sync();
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            frozen.extend(members.iter().map(|p| p.pid()));
            if self.sync().joined.is_empty() {
                break;
            }
        }
        let members = self
            .members
            .read()
            .expect("lock")
            .iter()
            .map(|(&k, p)| (k, Arc::clone(p)))
            .collect();
        Ok(FrozenTree {
            members,
            guards,
            held: AtomicBool::new(false),
        })
    }
}

/// A tree member's key: its pid in its own (innermost) pid namespace.
fn tree_key(process: &LiveProcess) -> Option<SpaceKey> {
    let ns = process.target().process().ns_pid().ok()?;
    let pid = *ns.last()?;
    u32::try_from(pid).ok().filter(|&p| p > 0).map(SpaceKey)
}

impl PageProvider for LiveTree {
    fn page_size(&self) -> usize {
        pagehop_sys::page_size()
    }

    fn layout(&self, space: SpaceKey) -> Result<Layout, ProvideError> {
        self.member(space)?.layout(space)
    }

    fn populated(&self, space: SpaceKey, layout: &Layout) -> Result<RangeSet, ProvideError> {
        self.member(space)?.populated(space, layout)
    }

    fn read(
        &self,
        space: SpaceKey,
        runs: &[(u64, usize)],
        buf: &mut [u8],
        present: &mut Vec<bool>,
    ) -> Result<(), ProvideError> {
        self.member(space)?.read(space, runs, buf, present)
    }
}

/// The source's processes, stopped: nothing in them runs until the tree is
/// thawed (a failed migration) or ended ([`FrozenTree::kill`],
/// [`FrozenTree::leave_stopped`]). Dropping it thaws it.
pub struct FrozenTree {
    members: Vec<(SpaceKey, Arc<LiveProcess>)>,
    guards: Vec<Box<dyn Frozen>>,
    /// Held stopped ([`FrozenTree::hold_stopped`]): dropping it leaves the
    /// tree stopped instead of thawing it.
    held: AtomicBool,
}

impl FrozenTree {
    fn member(&self, space: SpaceKey) -> Result<&LiveProcess, ProvideError> {
        self.members
            .iter()
            .find(|(key, _)| *key == space)
            .map(|(_, p)| &**p)
            .ok_or(ProvideError::UnknownSpace { space })
    }

    /// Handles on every member (pidfds), to signal them from elsewhere.
    pub fn processes(&self) -> Vec<Process> {
        self.members
            .iter()
            .filter_map(|(_, p)| p.target().process().try_clone().ok())
            .collect()
    }

    /// The members: (space, pid).
    pub fn pids(&self) -> Vec<(SpaceKey, i32)> {
        self.members.iter().map(|(k, p)| (*k, p.pid())).collect()
    }

    /// The address spaces of the tree.
    pub fn spaces(&self) -> impl Iterator<Item = SpaceKey> + '_ {
        self.members.iter().map(|(key, _)| *key)
    }

    /// Adds a SIGSTOP to every process of the tree, so that it stays stopped
    /// even if pagehop dies and its freeze goes (post-copy: once the
    /// destination runs, the source must never run again).
    pub fn hold_stopped(&self) {
        self.held.store(true, Ordering::SeqCst);
        for (_, p) in &self.members {
            let _ = p.target().process().signal(libc::SIGSTOP);
        }
    }

    /// Takes back [`FrozenTree::hold_stopped`] (the switch failed before the
    /// destination ran).
    pub fn release_hold(&self) {
        self.held.store(false, Ordering::SeqCst);
        for (_, p) in &self.members {
            let _ = p.target().process().signal(libc::SIGCONT);
        }
    }

    /// The process of `space`.
    pub fn process(&self, space: SpaceKey) -> Option<&LiveProcess> {
        self.member(space).ok()
    }

    /// Lets the tree run again: a failed migration.
    pub fn thaw(mut self) -> Result<(), FreezeError> {
        let mut first = Ok(());
        for guard in self.guards.drain(..) {
            if let Err(e) = guard.thaw()
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Ends the source after a successful migration: killed.
    pub fn kill(mut self) {
        for guard in self.guards.drain(..) {
            guard.kill();
        }
    }

    /// Ends the source after a successful migration: left stopped
    /// (SIGSTOP), and untraced.
    pub fn leave_stopped(mut self) {
        self.hold_stopped();
        for guard in self.guards.drain(..) {
            guard.leave_stopped();
        }
    }
}

impl Drop for FrozenTree {
    /// A tree dropped while held stays stopped (the destination may run);
    /// otherwise the freeze guards thaw it as they go.
    fn drop(&mut self) {
        if self.held.load(Ordering::SeqCst) {
            for guard in self.guards.drain(..) {
                guard.leave_stopped();
            }
        }
    }
}

impl PageProvider for FrozenTree {
    fn page_size(&self) -> usize {
        pagehop_sys::page_size()
    }

    fn layout(&self, space: SpaceKey) -> Result<Layout, ProvideError> {
        self.member(space)?.layout(space)
    }

    fn populated(&self, space: SpaceKey, layout: &Layout) -> Result<RangeSet, ProvideError> {
        self.member(space)?.populated(space, layout)
    }

    /// A frozen process unmaps nothing, so a page it cannot read is an
    /// error, never a hole to be filled with zeros: the process is dying
    /// (killed, taken by the OOM killer) or the page was never mapped.
    fn read(
        &self,
        space: SpaceKey,
        runs: &[(u64, usize)],
        buf: &mut [u8],
        present: &mut Vec<bool>,
    ) -> Result<(), ProvideError> {
        let member = self.member(space)?;
        member.read(space, runs, buf, present)?;
        let missing = present.iter().filter(|p| !**p).count();
        if missing == 0 {
            return Ok(());
        }
        if !member.target().is_alive() {
            return Err(member.gone(space));
        }
        let first = present.iter().position(|p| !p).unwrap_or(0);
        Err(ProvideError::BadRead {
            space,
            why: format!(
                "{missing} page(s) are not mapped in the frozen process (the first at {:#x})",
                page_at(runs, first, member.page_size() as u64).unwrap_or(0)
            ),
        })
    }
}

/// The address of the `i`th page of `runs`.
fn page_at(runs: &[(u64, usize)], mut i: usize, page_size: u64) -> Option<u64> {
    for &(start, n) in runs {
        if i < n {
            return Some(start + i as u64 * page_size);
        }
        i -= n;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use super::*;

    /// A `sleep` child, killed and reaped when dropped.
    struct Sleeper(Child);

    impl Sleeper {
        fn start() -> Self {
            Self(
                Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("spawn sleep"),
            )
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }

        /// The state letter of /proc/PID/stat, once it settles on `want`.
        fn wait_state(&self, want: &[char]) -> char {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let stat =
                    std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next())
                    .expect("state");
                if want.contains(&state) || Instant::now() >= deadline {
                    return state;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn a_live_process_reads_what_proc_mem_shows() {
        let child = Sleeper::start();
        // Asleep in nanosleep: its memory no longer changes under the reads.
        assert_eq!(child.wait_state(&['S']), 'S');
        let live = LiveProcess::open(child.pid()).expect("a valid target");
        let layout = live.layout(SpaceKey::ROOT).expect("layout");
        let populated = live.populated(SpaceKey::ROOT, &layout).expect("populated");
        assert!(
            !populated.is_empty(),
            "a running process has resident pages"
        );
        let ps = live.page_size();
        let runs: Vec<(u64, usize)> = populated
            .ranges()
            .iter()
            .take(4)
            .map(|r| (r.start, ((r.len() as usize) / ps).min(16)))
            .collect();
        let bytes: usize = runs.iter().map(|r| r.1 * ps).sum();
        let mut buf = vec![0u8; bytes];
        let mut present = Vec::new();
        live.read(SpaceKey::ROOT, &runs, &mut buf, &mut present)
            .expect("read");
        assert!(present.iter().all(|&p| p), "resident pages are readable");
        let mut mem = std::fs::File::open(format!("/proc/{}/mem", child.pid())).expect("mem");
        let mut at = 0;
        for &(start, pages) in &runs {
            let mut want = vec![0u8; pages * ps];
            mem.seek(SeekFrom::Start(start)).expect("seek");
            mem.read_exact(&mut want).expect("read mem");
            assert!(
                buf[at..at + want.len()] == want[..],
                "run at {start:#x} differs"
            );
            at += want.len();
        }
        // A tree of one holds only the root space.
        let tree = LiveTree::single(live);
        assert!(matches!(
            tree.layout(SpaceKey(3)),
            Err(ProvideError::UnknownSpace { .. })
        ));
    }

    /// What the demand server and the final round read from: a page the
    /// frozen process cannot give is an error, never a zero page.
    #[test]
    #[ignore = "needs root"]
    fn a_frozen_process_s_unreadable_page_is_an_error_not_a_hole() {
        let child = Sleeper::start();
        let live = LiveTree::single(LiveProcess::open(child.pid()).expect("a valid target"));
        let tree = live
            .freeze(&FreezeMethod::Signal, Duration::from_secs(5))
            .expect("freeze");
        let layout = tree.layout(SpaceKey::ROOT).expect("layout");
        let mapped = tree
            .populated(SpaceKey::ROOT, &layout)
            .expect("populated")
            .ranges()[0]
            .start;
        let ps = tree.page_size();
        let mut buf = vec![0u8; 2 * ps];
        let mut present = Vec::new();
        // One mapped page and one at an address no process maps.
        let runs = [(mapped, 1), (ps as u64, 1)];
        match tree.read(SpaceKey::ROOT, &runs, &mut buf, &mut present) {
            Err(ProvideError::BadRead { why, .. }) => {
                assert!(why.contains(&format!("{:#x}", ps)), "{why}")
            }
            other => panic!("an unmapped page read as {other:?}"),
        }
        // Killed while frozen (the OOM killer's way): gone, not zeros.
        pagehop_sys::process::kill(child.pid(), libc::SIGKILL).expect("kill");
        assert_eq!(child.wait_state(&['Z']), 'Z');
        let err = tree
            .read(SpaceKey::ROOT, &[(mapped, 1)], &mut buf[..ps], &mut present)
            .expect_err("a dead process's page");
        assert!(matches!(err, ProvideError::Gone { .. }), "{err}");
    }

    #[test]
    #[ignore = "needs root"]
    fn a_frozen_tree_stops_holds_and_thaws() {
        let child = Sleeper::start();
        let live = LiveTree::single(LiveProcess::open(child.pid()).expect("a valid target"));
        let tree = live
            .freeze(&FreezeMethod::Ptrace, Duration::from_secs(5))
            .expect("freeze");
        assert_eq!(child.wait_state(&['t']), 't', "ptrace-stopped");
        assert_eq!(tree.spaces().collect::<Vec<_>>(), vec![SpaceKey::ROOT]);
        // Readable while frozen, through the same interface.
        let layout = tree.layout(SpaceKey::ROOT).expect("layout");
        assert!(
            !tree
                .populated(SpaceKey::ROOT, &layout)
                .expect("populated")
                .is_empty()
        );
        tree.thaw().expect("thaw");
        assert!(
            matches!(child.wait_state(&['S', 'R']), 'S' | 'R'),
            "running again"
        );
        // A post-copy hold survives the freeze going away: stopped, untraced.
        let tree = live
            .freeze(&FreezeMethod::Ptrace, Duration::from_secs(5))
            .expect("freeze again");
        tree.hold_stopped();
        tree.leave_stopped();
        assert_eq!(child.wait_state(&['T']), 'T', "left stopped");
        live.process(SpaceKey::ROOT)
            .expect("member")
            .target()
            .process()
            .signal(libc::SIGCONT)
            .expect("continue");
        assert!(
            matches!(child.wait_state(&['S', 'R']), 'S' | 'R'),
            "continued"
        );
    }
}
