//! `criu restore --lazy-pages -d` in an image directory.
//!
//! The restored tasks connect to `lazy-pages.socket` in that directory (the
//! caller listens there first) and hand over their userfaultfds; CRIU
//! writes the root's host pid to its pidfile and, with `-d`, exits once the
//! tree is restored. A tree dumped stopped comes back stopped.
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Instant;

use pagehop_sys::process::Process;

use crate::log::log_reason;
use crate::options::{OptionsError, check_user_options};
use crate::tool::Criu;

/// CRIU's log and pidfile, in the image directory.
pub const RESTORE_LOG: &str = "restore.log";
pub const RESTORE_PIDFILE: &str = "restored.pid";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("starting {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("criu restore failed ({status}): {reason}")]
    Failed { status: String, reason: String },
    #[error("criu restore succeeded but its pidfile {path} holds no pid")]
    Pidfile {
        path: PathBuf,
        #[source]
        source: Option<std::io::Error>,
    },
}

/// Where and how to restore.
pub struct RestoreRequest<'a> {
    pub dir: &'a Path,
    /// The operator's options, passed through (`--tcp-close`, `--shell-job`, ...).
    pub extra: &'a [String],
}

/// A running `criu restore`.
pub struct LazyRestore {
    child: Child,
    handle: Process,
    dir: PathBuf,
    started: Instant,
}

impl LazyRestore {
    /// Starts CRIU; it runs in the caller's namespaces (enter a network namespace with `nsenter --net`).
    pub fn start(criu: &Criu, req: &RestoreRequest<'_>) -> Result<LazyRestore, RestoreError> {
        check_user_options(req.extra)?;
        let spawn = |source| RestoreError::Spawn {
            path: criu.path().to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(req.dir.join(RESTORE_PIDFILE));
        let mut cmd = criu.command();
        cmd.arg("restore")
            .arg("-D")
            .arg(req.dir)
            .args(["-o", RESTORE_LOG, "-v2", "--lazy-pages", "-d"])
            .args(["--pidfile", RESTORE_PIDFILE])
            .args(req.extra)
            .stdin(std::process::Stdio::null());
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(spawn)?;
        let handle = match Process::open(child.id() as i32) {
            Ok(h) => h,
            Err(source) => {
                let _ = child.wait();
                return Err(spawn(source));
            }
        };
        Ok(LazyRestore {
            child,
            handle,
            dir: req.dir.to_path_buf(),
            started,
        })
    }

    /// CRIU's pid (the peer of the lazy-pages socket).
    pub fn pid(&self) -> i32 {
        self.handle.pid()
    }

    /// Since the start.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// CRIU's pidfd: readable once it exited.
    pub fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.handle.as_fd()
    }

    /// `None` while CRIU runs; once it exited, the restored root's host pid
    /// or CRIU's reason for failing.
    pub fn outcome(&mut self) -> Option<Result<i32, RestoreError>> {
        let status = self.child.try_wait().ok().flatten()?;
        Some(self.result(status))
    }

    fn result(&self, status: ExitStatus) -> Result<i32, RestoreError> {
        if !status.success() {
            return Err(RestoreError::Failed {
                status: status.to_string(),
                reason: log_reason(&self.dir.join(RESTORE_LOG)),
            });
        }
        let path = self.dir.join(RESTORE_PIDFILE);
        let text = std::fs::read_to_string(&path).map_err(|e| RestoreError::Pidfile {
            path: path.clone(),
            source: Some(e),
        })?;
        text.trim()
            .parse::<i32>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or(RestoreError::Pidfile { path, source: None })
    }

    /// CRIU's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join(RESTORE_LOG)
    }

    /// Kills CRIU (a restore given up); the caller kills what it restored.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.handle.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for LazyRestore {
    fn drop(&mut self) {
        self.kill();
    }
}
