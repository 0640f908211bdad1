//! Stopping a source process for the final round, and letting it go again.
//!
//! Two ways:
//! - ptrace ([`FreezeMethod::Ptrace`]): every thread is seized and
//!   interrupted. If pagehop dies while the process is frozen, the kernel
//!   detaches and the process simply runs on: a failed migration never
//!   leaves the source stopped.
//! - cgroup v2 ([`FreezeMethod::Cgroup`]): `cgroup.freeze` of the container's
//!   cgroup, for all of its processes at once.
//!
//! - signals ([`FreezeMethod::Signal`]): SIGSTOP to every process, waited
//!   for until every thread is stopped. Nothing else holds the processes, so
//!   another tool (CRIU) can seize them; a SIGSTOPped tree stays stopped
//!   through CRIU's dump and comes back stopped from its restore. If pagehop
//!   dies meanwhile the tree stays stopped (`kill -CONT` resumes it).
//!
//! [`freeze_tree`] freezes several processes at once (one guard each, or
//! one for the cgroup). Dropping a freeze without [`Frozen::thaw`] thaws it.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pagehop_sys::process::Process;
use pagehop_sys::ptrace::{self, WaitStatus};

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("ptrace of thread {tid} of pid {pid}")]
    Ptrace {
        pid: i32,
        tid: i32,
        #[source]
        source: io::Error,
    },
    #[error("thread {tid} of pid {pid} did not stop within {timeout:?} (uninterruptible sleep?)")]
    Timeout {
        pid: i32,
        tid: i32,
        timeout: Duration,
    },
    #[error("pid {pid} exited while being frozen")]
    Exited { pid: i32 },
    #[error("listing the threads of pid {pid}")]
    Threads {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path}: {what}")]
    Cgroup {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("signalling pid {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("duplicating the pidfd of pid {pid}")]
    Handle {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} did not report frozen within {timeout:?}")]
    CgroupTimeout { path: PathBuf, timeout: Duration },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FreezeMethod {
    Ptrace,
    Cgroup(PathBuf),
    Signal,
}

/// A frozen process (or cgroup).
pub trait Frozen: Send + Sync {
    /// Lets the process run again.
    fn thaw(self: Box<Self>) -> Result<(), FreezeError>;
    /// Kills the process (after a successful migration) and releases it.
    fn kill(self: Box<Self>);
    /// Releases the freeze but leaves the process stopped (it holds a
    /// SIGSTOP already: see `FrozenTree::hold_stopped`).
    fn leave_stopped(self: Box<Self>);
}

/// Freezes every process of `processes` (or their cgroup) within `timeout`.
/// On failure the ones already frozen are thawed.
pub fn freeze_tree(
    processes: &[&Process],
    method: &FreezeMethod,
    timeout: Duration,
) -> Result<Vec<Box<dyn Frozen>>, FreezeError> {
    let handles = processes
        .iter()
        .map(|p| {
            p.try_clone().map_err(|source| FreezeError::Handle {
                pid: p.pid(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match method {
        FreezeMethod::Cgroup(path) => Ok(vec![Box::new(CgroupFreeze::freeze(
            handles, path, timeout,
        )?)]),
        FreezeMethod::Ptrace => handles
            .into_iter()
            .map(|h| Ok(Box::new(PtraceFreeze::freeze(h, timeout)?) as Box<dyn Frozen>))
            .collect(),
        FreezeMethod::Signal => {
            // Stop them all first, so that none runs on while another is waited for.
            let stopping: Vec<SignalFreeze> = handles
                .into_iter()
                .map(SignalFreeze::stop)
                .collect::<Result<_, _>>()?;
            let deadline = Instant::now() + timeout;
            for s in &stopping {
                s.wait_stopped(deadline, timeout)?;
            }
            Ok(stopping
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Frozen>)
                .collect())
        }
    }
}

/// Freezes `process` (or its cgroup) within `timeout`.
pub fn freeze(
    process: &Process,
    method: &FreezeMethod,
    timeout: Duration,
) -> Result<Box<dyn Frozen>, FreezeError> {
    let mut frozen = freeze_tree(&[process], method, timeout)?;
    Ok(frozen.pop().expect("one process, one guard"))
}

fn thread_ids(pid: i32) -> Result<Vec<i32>, FreezeError> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => FreezeError::Exited { pid },
        _ => FreezeError::Threads { pid, source },
    })?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Every thread seized and stopped.
struct PtraceFreeze {
    process: Process,
    pid: i32,
    /// Stopped threads and the signal each must get back when released.
    threads: Vec<(i32, i32)>,
}

impl PtraceFreeze {
    fn freeze(process: Process, timeout: Duration) -> Result<Self, FreezeError> {
        let pid = process.pid();
        let mut frozen = Self {
            process,
            pid,
            threads: Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        // Threads may be created while we work: repeat until a pass finds no new one.
        loop {
            let new: Vec<i32> = thread_ids(pid)?
                .into_iter()
                .filter(|tid| !frozen.threads.iter().any(|(t, _)| t == tid))
                .collect();
            if new.is_empty() {
                return Ok(frozen);
            }
            for tid in new {
                match ptrace::seize(tid, 0).and_then(|()| ptrace::interrupt(tid)) {
                    Ok(()) => {}
                    // The thread exited between listing and seizing.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    Err(source) => return Err(FreezeError::Ptrace { pid, tid, source }),
                }
                let sig = frozen.wait_stopped(tid, deadline, timeout)?;
                frozen.threads.push((tid, sig));
            }
        }
    }

    /// Waits until `tid` reports a stop; returns a signal to re-deliver.
    fn wait_stopped(
        &self,
        tid: i32,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<i32, FreezeError> {
        let pid = self.pid;
        loop {
            match ptrace::try_waitpid(tid) {
                Ok(Some(WaitStatus::EventStop { .. })) => return Ok(0),
                // A signal arrived first: the thread is stopped in its delivery; keep it for later.
                Ok(Some(WaitStatus::SignalStop { sig, .. })) => return Ok(sig),
                Ok(Some(s)) if s.is_gone() => return Err(FreezeError::Exited { pid }),
                Ok(_) => {}
                Err(source) => return Err(FreezeError::Ptrace { pid, tid, source }),
            }
            if Instant::now() >= deadline {
                return Err(FreezeError::Timeout { pid, tid, timeout });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn release(&mut self) -> Result<(), FreezeError> {
        let mut first = None;
        for (tid, sig) in self.threads.drain(..) {
            if let Err(source) = ptrace::detach(tid, sig)
                && source.raw_os_error() != Some(libc::ESRCH)
            {
                first.get_or_insert(FreezeError::Ptrace {
                    pid: self.pid,
                    tid,
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Frozen for PtraceFreeze {
    fn thaw(mut self: Box<Self>) -> Result<(), FreezeError> {
        self.release()
    }

    fn kill(mut self: Box<Self>) {
        let _ = self.process.signal(libc::SIGKILL);
        let _ = self.release();
    }

    fn leave_stopped(mut self: Box<Self>) {
        let _ = self.release();
    }
}

impl Drop for PtraceFreeze {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// A cgroup v2 freeze.
struct CgroupFreeze {
    processes: Vec<Process>,
    path: PathBuf,
    frozen: bool,
}

impl CgroupFreeze {
    fn write(path: &Path, value: &str) -> Result<(), FreezeError> {
        fs::write(path.join("cgroup.freeze"), value).map_err(|source| FreezeError::Cgroup {
            path: path.to_path_buf(),
            what: "writing cgroup.freeze (is it a cgroup v2 directory?)",
            source,
        })
    }

    fn freeze(
        processes: Vec<Process>,
        path: &Path,
        timeout: Duration,
    ) -> Result<Self, FreezeError> {
        Self::write(path, "1")?;
        let mut freeze = Self {
            processes,
            path: path.to_path_buf(),
            frozen: true,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let events = fs::read_to_string(path.join("cgroup.events")).map_err(|source| {
                FreezeError::Cgroup {
                    path: path.to_path_buf(),
                    what: "reading cgroup.events",
                    source,
                }
            })?;
            if events.lines().any(|l| l.trim() == "frozen 1") {
                return Ok(freeze);
            }
            if Instant::now() >= deadline {
                let _ = Self::write(path, "0");
                freeze.frozen = false;
                return Err(FreezeError::CgroupTimeout {
                    path: path.to_path_buf(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Frozen for CgroupFreeze {
    fn thaw(mut self: Box<Self>) -> Result<(), FreezeError> {
        self.frozen = false;
        Self::write(&self.path, "0")
    }

    fn kill(mut self: Box<Self>) {
        for p in &self.processes {
            let _ = p.signal(libc::SIGKILL);
        }
        self.frozen = false;
        let _ = Self::write(&self.path, "0");
    }

    fn leave_stopped(mut self: Box<Self>) {
        self.frozen = false;
        let _ = Self::write(&self.path, "0");
    }
}

impl Drop for CgroupFreeze {
    fn drop(&mut self) {
        if self.frozen {
            let _ = Self::write(&self.path, "0");
        }
    }
}

/// A SIGSTOP freeze of one process.
struct SignalFreeze {
    process: Process,
    frozen: bool,
}

impl SignalFreeze {
    fn stop(process: Process) -> Result<Self, FreezeError> {
        let pid = process.pid();
        process
            .signal(libc::SIGSTOP)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ESRCH) => FreezeError::Exited { pid },
                _ => FreezeError::Signal { pid, source },
            })?;
        Ok(Self {
            process,
            frozen: true,
        })
    }

    /// Waits until every thread of the process is stopped.
    fn wait_stopped(&self, deadline: Instant, timeout: Duration) -> Result<(), FreezeError> {
        let pid = self.process.pid();
        loop {
            let mut running = None;
            for tid in thread_ids(pid)? {
                match thread_state(pid, tid) {
                    Some('T') | Some('t') | None => {}
                    Some(_) => {
                        running = Some(tid);
                        break;
                    }
                }
            }
            let Some(tid) = running else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(FreezeError::Timeout { pid, tid, timeout });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The state letter of one thread (`None` once it is gone).
fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

impl Frozen for SignalFreeze {
    fn thaw(mut self: Box<Self>) -> Result<(), FreezeError> {
        self.frozen = false;
        let pid = self.process.pid();
        match self.process.signal(libc::SIGCONT) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(FreezeError::Signal { pid, source }),
        }
    }

    fn kill(mut self: Box<Self>) {
        self.frozen = false;
        let _ = self.process.signal(libc::SIGKILL);
    }

    fn leave_stopped(mut self: Box<Self>) {
        self.frozen = false;
    }
}

impl Drop for SignalFreeze {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.process.signal(libc::SIGCONT);
        }
    }
}
