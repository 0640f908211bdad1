//! A process to track or migrate, checked before anything touches it. This
//! module is the one place that decides whether a pid is a valid target;
//! [`crate::inject`] and [`crate::track`] both go through it.
//!
//! The checks run in the order that gives the clearest message: the pid
//! exists, it is not pagehop itself, it is not a kernel thread, it is a
//! process id and not the id of one of a process's threads, some thread of it
//! is still alive, and nobody else is tracing the thread pagehop would seize.
//! Permission problems surface as `PermissionDenied` when pagehop first needs
//! /proc/PID/pagemap ([`Target::open`]) or ptrace (`inject`).
use std::fs;
use std::io;
use std::path::PathBuf;

use pagehop_sys::process::Process;

/// Why a pid is not a process pagehop can work on.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such process (or it exited while being checked).
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: i32,
    },
    /// pagehop cannot work on itself.
    #[error("pid {pid} is pagehop itself")]
    IsSelf {
        /// The pid (or one of our thread ids) asked for.
        pid: i32,
    },
    /// A kernel thread has no user address space.
    #[error("pid {pid} ({comm}) is a kernel thread; only user processes have memory to track")]
    KernelThread {
        /// The pid asked for.
        pid: i32,
        /// Its command name.
        comm: String,
    },
    /// All threads have exited; only the zombie is left.
    #[error("pid {pid} ({comm}) is a zombie: it has exited and has no memory")]
    Zombie {
        /// The pid asked for.
        pid: i32,
        /// Its command name.
        comm: String,
    },
    /// The main thread has exited while other threads still run: /proc/PID
    /// no longer shows the address space, which tracking reads from there.
    #[error(
        "pid {pid} ({comm}): its main thread has exited, so /proc/{pid} no longer shows the memory of its other threads"
    )]
    LeaderExited {
        /// The pid asked for.
        pid: i32,
        /// Its command name.
        comm: String,
    },
    /// The id is a thread of another process, not a process id.
    #[error("{pid} is a thread of process {tgid}, not a process id")]
    NotAProcess {
        /// The id asked for.
        pid: i32,
        /// The process it belongs to.
        tgid: i32,
    },
    /// Someone else (a debugger, strace, CRIU) is tracing the thread.
    #[error("pid {pid} is already traced by pid {tracer}; pagehop needs to ptrace it")]
    AlreadyTraced {
        /// The pid asked for.
        pid: i32,
        /// TracerPid from /proc.
        tracer: i32,
    },
    /// pidfd_open failed.
    #[error("opening a pidfd for pid {pid}")]
    Pidfd {
        /// The pid asked for.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Opening /proc/PID/pagemap was refused.
    #[error(
        "not permitted to trace pid {pid} (pagehop needs CAP_SYS_PTRACE, or the same user and ptrace_scope 0)"
    )]
    PermissionDenied {
        /// The pid asked for.
        pid: i32,
    },
    /// Reading a /proc file failed.
    #[error("reading {path}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// A /proc file did not have the expected format.
    #[error("unexpected format of {path}")]
    ProcFormat {
        /// The file.
        path: PathBuf,
    },
}

/// `PF_*` task flags in /proc/PID/stat field 9.
const PF_EXITING: u64 = 0x0000_0004;
const PF_IO_WORKER: u64 = 0x0000_0010;
const PF_USER_WORKER: u64 = 0x0000_4000;
const PF_KTHREAD: u64 = 0x0020_0000;

/// A validated target process: a pidfd-backed handle on it (signals go
/// through the pidfd, so they can never reach a process that reused its pid),
/// its command name, and the thread to seize with ptrace.
#[derive(Debug)]
pub struct Target {
    process: Process,
    comm: String,
    tid: i32,
}

/// The fields of /proc/PID/stat that pagehop uses.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    state: char,
    flags: u64,
}

impl Stat {
    /// Whether the task has exited (zombie or dead).
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// A thread that can take a ptrace interrupt: alive, not exiting, and not
    /// an io_uring or other kernel-side worker (those never return to user
    /// mode).
    fn is_usable_thread(&self) -> bool {
        !self.is_dead()
            && self.flags & (PF_EXITING | PF_IO_WORKER | PF_USER_WORKER | PF_KTHREAD) == 0
    }
}

/// Parses the comm (field 2), state (field 3) and flags (field 9) of a
/// /proc/.../stat line.
fn parse_stat(text: &str) -> Option<Stat> {
    // comm is in parentheses and may itself contain spaces and ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    // After state (field 3) come ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags = rest.nth(5)?.parse().ok()?;
    Some(Stat { comm, state, flags })
}

/// Reads a /proc file; a missing file means the process is gone.
fn read_proc(pid: i32, path: String) -> Result<String, TargetError> {
    let path = PathBuf::from(path);
    fs::read_to_string(&path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            TargetError::NoSuchProcess { pid }
        } else {
            TargetError::Proc { path, source }
        }
    })
}

/// /proc/`pid`/stat, or the stat file of one of its threads.
fn read_stat(pid: i32, path: String) -> Result<Stat, TargetError> {
    let text = read_proc(pid, path.clone())?;
    parse_stat(&text).ok_or_else(|| TargetError::ProcFormat { path: path.into() })
}

/// An integer field (`Tgid`, `TracerPid`) of a /proc/.../status file.
fn status_field(pid: i32, path: String, key: &str) -> Result<i32, TargetError> {
    let text = read_proc(pid, path.clone())?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
        .ok_or_else(|| TargetError::ProcFormat { path: path.into() })
}

impl Target {
    /// Checks that `pid` is a live user process other than pagehop that
    /// nobody traces, and picks the thread to seize ([`Target::tid`]). A
    /// process whose leader has exited but whose other threads run is
    /// accepted. Does not check permissions: ptrace reports those.
    pub fn validate(pid: i32) -> Result<Self, TargetError> {
        let own = std::process::id() as i32;
        if pid == own {
            return Err(TargetError::IsSelf { pid });
        }
        if pid <= 0 {
            return Err(TargetError::NoSuchProcess { pid });
        }
        let leader = read_stat(pid, format!("/proc/{pid}/stat"))?;
        if leader.flags & PF_KTHREAD != 0 {
            return Err(TargetError::KernelThread {
                pid,
                comm: leader.comm,
            });
        }
        // /proc/TID works for any thread id too: only Tgid tells them apart.
        let tgid = status_field(pid, format!("/proc/{pid}/status"), "Tgid")?;
        if tgid == own {
            return Err(TargetError::IsSelf { pid });
        }
        if tgid != pid {
            return Err(TargetError::NotAProcess { pid, tgid });
        }

        let tid = if leader.is_usable_thread() {
            pid
        } else {
            let dir = format!("/proc/{pid}/task");
            let entries = fs::read_dir(&dir).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => TargetError::NoSuchProcess { pid },
                _ => TargetError::Proc {
                    path: dir.into(),
                    source,
                },
            })?;
            let mut tids: Vec<i32> = entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            tids.sort_unstable();
            let usable = tids.into_iter().find(|tid| {
                read_stat(pid, format!("/proc/{pid}/task/{tid}/stat"))
                    .is_ok_and(|s| s.is_usable_thread())
            });
            match usable {
                Some(tid) => tid,
                None => {
                    return Err(TargetError::Zombie {
                        pid,
                        comm: leader.comm,
                    });
                }
            }
        };

        // Kernel threads have no executable (no mm); PF_KTHREAD caught them
        // above, this catches anything else without a user address space.
        if let Err(e) = fs::read_link(format!("/proc/{pid}/task/{tid}/exe"))
            && e.raw_os_error() == Some(libc::ENOENT)
        {
            let now = read_stat(pid, format!("/proc/{pid}/task/{tid}/stat"))?;
            return Err(if now.is_dead() {
                TargetError::Zombie {
                    pid,
                    comm: now.comm,
                }
            } else {
                TargetError::KernelThread {
                    pid,
                    comm: now.comm,
                }
            });
        }
        let tracer = status_field(pid, format!("/proc/{pid}/task/{tid}/status"), "TracerPid")?;
        if tracer != 0 {
            return Err(TargetError::AlreadyTraced { pid, tracer });
        }
        let process = Process::open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => TargetError::NoSuchProcess { pid },
            _ => TargetError::Pidfd { pid, source },
        })?;
        Ok(Self {
            process,
            comm: leader.comm,
            tid,
        })
    }

    /// Checks that `pid` is a live user process pagehop may track: everything
    /// [`Target::validate`] checks, plus that its leader is alive (tracking
    /// reads the address space through /proc/PID) and that pagehop may read
    /// its /proc/PID/pagemap.
    pub fn open(pid: i32) -> Result<Self, TargetError> {
        let target = Self::validate(pid)?;
        if target.tid != pid {
            return Err(TargetError::LeaderExited {
                pid,
                comm: target.comm,
            });
        }
        // /proc/PID/pagemap needs PTRACE_MODE_READ: opening it is a cheap,
        // side-effect-free permission probe.
        let path = format!("/proc/{pid}/pagemap");
        if let Err(source) = fs::File::open(&path) {
            return Err(match source.kind() {
                io::ErrorKind::PermissionDenied => TargetError::PermissionDenied { pid },
                io::ErrorKind::NotFound => TargetError::NoSuchProcess { pid },
                _ => TargetError::Proc {
                    path: path.into(),
                    source,
                },
            });
        }
        Ok(target)
    }

    /// The process id (thread-group id).
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The thread to seize with ptrace: the leader, or the first live user
    /// thread if the leader has exited or is exiting.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Its command name.
    pub fn comm(&self) -> &str {
        &self.comm
    }

    /// The pidfd-backed handle.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Whether the process still exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        self.process.is_alive()
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use super::*;

    /// A child process killed and reaped when dropped.
    struct KillOnDrop(Child);

    impl KillOnDrop {
        fn spawn(cmd: &mut Command) -> Self {
            Self(
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
            )
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn wait_state(pid: i32, want: char) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = read_stat(pid, format!("/proc/{pid}/stat"))
                .unwrap_or_else(|e| panic!("reading stat of {pid}: {e}"));
            if stat.state == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pid} never reached state {want}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn rejects_self_and_nonexistent() {
        assert!(matches!(
            Target::open(std::process::id() as i32),
            Err(TargetError::IsSelf { .. })
        ));
        assert!(matches!(
            Target::open(0),
            Err(TargetError::NoSuchProcess { .. })
        ));
        assert!(matches!(
            Target::open(i32::MAX),
            Err(TargetError::NoSuchProcess { .. })
        ));
    }

    #[test]
    fn rejects_own_thread_id() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(pagehop_sys::gettid()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let got = Target::validate(tid);
        drop(done_tx);
        thread.join().unwrap();
        assert!(
            matches!(got, Err(TargetError::IsSelf { pid }) if pid == tid),
            "got {got:?}"
        );
    }

    #[test]
    fn rejects_kernel_thread() {
        // kthreadd is pid 2 on every Linux system.
        let got = Target::open(2);
        assert!(
            matches!(&got, Err(TargetError::KernelThread { pid: 2, comm }) if comm == "kthreadd"),
            "got {got:?}"
        );
        assert!(got.unwrap_err().to_string().contains("kernel thread"));
    }

    #[test]
    fn accepts_child_and_rejects_zombie() {
        let child = KillOnDrop::spawn(Command::new("sleep").arg("30"));
        let target = Target::open(child.pid()).expect("a sleeping child is a valid target");
        assert_eq!((target.pid(), target.tid()), (child.pid(), child.pid()));
        assert_eq!(target.comm(), "sleep");
        assert!(target.is_alive());

        let zombie = KillOnDrop::spawn(&mut Command::new("true"));
        wait_state(zombie.pid(), 'Z');
        let got = Target::validate(zombie.pid());
        assert!(
            matches!(&got, Err(TargetError::Zombie { pid, .. }) if *pid == zombie.pid()),
            "got {got:?}"
        );
    }

    #[test]
    fn parses_stat() {
        let line = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "a) b) (c".into(),
                state: 'S',
                flags: 4_194_560,
            })
        );
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn usable_threads() {
        let stat = |state, flags| Stat {
            comm: String::new(),
            state,
            flags,
        };
        assert!(stat('S', 0x0040_0000).is_usable_thread());
        assert!(stat('R', 0).is_usable_thread());
        assert!(!stat('Z', 0).is_usable_thread());
        assert!(!stat('S', PF_EXITING).is_usable_thread());
        assert!(!stat('S', PF_IO_WORKER).is_usable_thread());
        assert!(!stat('I', PF_KTHREAD).is_usable_thread());
    }
}
