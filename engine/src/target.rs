//! A process to track or migrate, checked before anything touches it.
//!
//! The checks run in the order that gives the clearest message: the pid
//! exists, it is not pagehop itself, it is not a kernel thread, it is not a
//! zombie, and nobody else is tracing it. Permission problems surface as
//! `PermissionDenied` when pagehop first needs ptrace or /proc/PID/pagemap.
use std::fs;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: i32 },
    #[error("pid {pid} is pagehop itself")]
    IsSelf { pid: i32 },
    #[error("pid {pid} ({comm}) is a kernel thread; only user processes have memory to track")]
    KernelThread { pid: i32, comm: String },
    #[error("pid {pid} ({comm}) is a zombie: it has exited and has no memory")]
    Zombie { pid: i32, comm: String },
    #[error("pid {pid} is already traced by pid {tracer}; pagehop needs to ptrace it")]
    AlreadyTraced { pid: i32, tracer: i32 },
    #[error(
        "not permitted to trace pid {pid} (pagehop needs CAP_SYS_PTRACE, or the same user and ptrace_scope 0)"
    )]
    PermissionDenied { pid: i32 },
    #[error("reading {path}")]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `PF_KTHREAD` in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A validated target process.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: i32,
    pub comm: String,
}

/// The fields of /proc/PID/stat that pagehop uses.
struct Stat {
    comm: String,
    state: char,
    flags: u64,
}

fn read_stat(pid: i32) -> Result<Stat, TargetError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TargetError::NoSuchProcess { pid },
        _ => TargetError::Proc {
            path: path.clone(),
            source,
        },
    })?;
    // comm is in parentheses and may itself contain spaces and ')'.
    let open = text.find('(').unwrap_or(0);
    let close = text.rfind(')').unwrap_or(text.len());
    let comm = text.get(open + 1..close).unwrap_or("?").to_string();
    let rest: Vec<&str> = text
        .get(close + 1..)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // rest[0] is field 3 (state); field 9 (flags) is rest[6].
    let state = rest.first().and_then(|s| s.chars().next()).unwrap_or('?');
    let flags = rest.get(6).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(Stat { comm, state, flags })
}

fn tracer_of(pid: i32) -> Result<i32, TargetError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = fs::read_to_string(&path).map_err(|source| TargetError::Proc { path, source })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

impl Target {
    /// Checks that `pid` is a live user process pagehop may work on.
    pub fn open(pid: i32) -> Result<Self, TargetError> {
        if pid <= 0 {
            return Err(TargetError::NoSuchProcess { pid });
        }
        if pid == std::process::id() as i32 {
            return Err(TargetError::IsSelf { pid });
        }
        let stat = read_stat(pid)?;
        if stat.flags & PF_KTHREAD != 0 {
            return Err(TargetError::KernelThread {
                pid,
                comm: stat.comm,
            });
        }
        if stat.state == 'Z' || stat.state == 'X' {
            return Err(TargetError::Zombie {
                pid,
                comm: stat.comm,
            });
        }
        let tracer = tracer_of(pid)?;
        if tracer != 0 {
            return Err(TargetError::AlreadyTraced { pid, tracer });
        }
        // /proc/PID/pagemap needs PTRACE_MODE_READ: opening it is a cheap,
        // side-effect-free permission probe.
        if let Err(e) = fs::File::open(format!("/proc/{pid}/pagemap")) {
            return Err(match e.kind() {
                io::ErrorKind::PermissionDenied => TargetError::PermissionDenied { pid },
                io::ErrorKind::NotFound => TargetError::NoSuchProcess { pid },
                _ => TargetError::Proc {
                    path: format!("/proc/{pid}/pagemap").into(),
                    source: e,
                },
            });
        }
        Ok(Self {
            pid,
            comm: stat.comm,
        })
    }

    /// Whether the process still exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        read_stat(self.pid).is_ok_and(|s| s.state != 'Z' && s.state != 'X')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn rejects_kernel_thread() {
        // kthreadd is pid 2 on every Linux system.
        assert!(matches!(
            Target::open(2),
            Err(TargetError::KernelThread { .. })
        ));
    }
}
