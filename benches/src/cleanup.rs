//! What a bench run leaves running or created (child process groups,
//! network namespaces, a scratch directory) is released when the run ends,
//! fails, or is interrupted by SIGINT, SIGTERM or SIGHUP.
//!
//! Every child starts in a process group of its own ([`spawn`]), so that
//! one `kill(-pgid)` also reaches what it started (recv's restored
//! workload). A watcher thread waits for the termination signals (blocked in
//! every other thread) and, under the registry's lock, kills every group,
//! deletes every namespace and directory, and exits; spawning takes the
//! same lock, so nothing starts after the cleanup.
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("setting up the signal watcher")]
    Signals(#[source] io::Error),
    #[error("starting {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

#[derive(Default)]
struct Registry {
    interrupted: bool,
    groups: Vec<i32>,
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    interrupted: false,
    groups: Vec::new(),
    namespaces: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks the termination signals in this thread (call it before starting
/// any other) and starts the watcher; `on_signal` runs after the cleanup.
pub fn watch_signals(on_signal: fn(i32)) -> Result<(), CleanupError> {
    pagehop::sys::block_termination_signals().map_err(CleanupError::Signals)?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            let sig = pagehop::sys::wait_termination_signal();
            let mut r = registry();
            r.interrupted = true;
            release(&mut r);
            on_signal(sig);
            std::process::exit(128 + sig);
        })
        .map_err(CleanupError::Signals)?;
    Ok(())
}

fn release(r: &mut Registry) {
    for pgid in r.groups.drain(..) {
        kill_group(pgid);
    }
    for ns in r.namespaces.drain(..) {
        crate::netns::remove(&ns);
    }
    for dir in r.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn kill_group(pgid: i32) {
    // A negative pid names the process group this module created (a group
    // has no pidfd).
    let _ = pagehop::sys::process::kill(-pgid, libc::SIGKILL);
}

/// A child running in its own process group; dropping it kills the group.
pub struct Group {
    pub child: Child,
}

/// Starts `cmd` as the leader of a new process group, with the
/// termination signals unblocked (this process blocks them for the watcher).
pub fn spawn(cmd: &mut Command) -> Result<Group, CleanupError> {
    use std::os::unix::process::CommandExt;
    let mut r = registry();
    if r.interrupted {
        return Err(CleanupError::Interrupted);
    }
    pagehop::sys::unblock_termination_signals_in_child(cmd);
    let child = cmd
        .process_group(0)
        .spawn()
        .map_err(|source| CleanupError::Spawn {
            program: format!("{:?}", cmd.get_program()),
            source,
        })?;
    r.groups.push(child.id() as i32);
    Ok(Group { child })
}

impl Group {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits up to `limit` for the leader to exit; kills it and returns
    /// `None` when it does not.
    pub fn wait_within(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.pid();
        registry().groups.retain(|&g| g != pgid);
        kill_group(pgid);
        let _ = self.child.wait();
    }
}

/// Namespaces (deleted by their owner) to delete on interruption too.
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn register(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        registry().namespaces.extend(names.iter().cloned());
        Self(names)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        registry().namespaces.retain(|n| !self.0.contains(n));
    }
}

/// A scratch directory, removed on drop and on interruption.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn create(path: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        registry().dirs.push(path.clone());
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        registry().dirs.retain(|d| d != &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
