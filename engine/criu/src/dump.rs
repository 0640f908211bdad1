//! `criu dump --lazy-pages` on a tree pagehop holds stopped.
//!
//! CRIU writes every image but the lazy pages, signals readiness on its
//! status fd, and serves as a page server on one end of a socket pair
//! (`--ps-socket`); pagehop holds the other end and never asks for a page.
//! [`LazyDump::finish`] sends the 32-byte `page_server_iov` with
//! `PS_IOV_CLOSE` (u32 cmd, 4 bytes of padding, u64 nr_pages, u64 vaddr,
//! u64 dst_id; little-endian, all zero but cmd); CRIU answers a 4-byte
//! status 0, cures the tree and, with `--leave-stopped`, exits leaving it
//! stopped and untraced. An end of the socket without that message also
//! ends CRIU's page server without error, so a pagehop that dies leaves
//! the tree stopped too, never running twice.
//!
//! CRIU is never killed while it may hold the tree: its parasite code may
//! be inside the processes. Only a CRIU that outlives every timeout is.
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use pagehop_sys::process::Process;

use crate::log::log_reason;
use crate::options::{OptionsError, check_user_options};
use crate::tool::Criu;

/// CRIU's `PS_IOV_CLOSE` page-server command.
const PS_IOV_CLOSE: u32 = 0x1023;
/// Descriptor numbers CRIU finds its page-server socket and status pipe at.
const PS_SOCKET_FD: i32 = 3;
const STATUS_FD: i32 = 4;
/// How long CRIU may take to end after its page server closed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// CRIU's log, in the image directory.
pub const DUMP_LOG: &str = "dump.log";
/// The pipe size CRIU's page pipes want; below it CRIU still dumps, but a
/// large tree takes longer (a 1 GiB redis here: 164-245 ms at 1 MiB,
/// 98-126 ms at 4 MiB).
const FAST_PIPE_MAX: u64 = 4 << 20;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("preparing the image directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("criu dump failed ({status}): {reason}")]
    Failed { status: String, reason: String },
    #[error("criu dump did not {what} within {timeout:?}: {reason}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
        reason: String,
    },
    #[error("closing CRIU's page server")]
    Close(#[source] std::io::Error),
    #[error("CRIU's page server answered the close with status {status}")]
    CloseStatus { status: i32 },
}

/// What to dump.
pub struct DumpRequest<'a> {
    /// The root of the tree (a host pid).
    pub root: i32,
    /// Where the images go (created if missing; should be empty).
    pub dir: &'a Path,
    /// The operator's options, passed through (`--tcp-close`, `--shell-job`, ...).
    pub extra: &'a [String],
}

/// A running `criu dump --lazy-pages`.
pub struct LazyDump {
    child: Child,
    handle: Process,
    page_server: Option<UnixStream>,
    status: Option<File>,
    log: PathBuf,
    started: Instant,
}

impl LazyDump {
    /// Starts CRIU on the (already stopped) tree of `req.root`.
    pub fn start(criu: &Criu, req: &DumpRequest<'_>) -> Result<LazyDump, DumpError> {
        check_user_options(req.extra)?;
        std::fs::create_dir_all(req.dir).map_err(|source| DumpError::Dir {
            path: req.dir.to_path_buf(),
            source,
        })?;
        let spawn = |source| DumpError::Spawn {
            path: criu.path().to_path_buf(),
            source,
        };
        let (ours, theirs) = UnixStream::pair().map_err(spawn)?;
        let (status_read, status_write) = std::io::pipe().map_err(spawn)?;
        let mut cmd = criu.command();
        cmd.arg("dump")
            .arg("-t")
            .arg(req.root.to_string())
            .arg("-D")
            .arg(req.dir)
            .args(["-o", DUMP_LOG, "-v2", "--lazy-pages", "--leave-stopped"])
            .args(["--ps-socket", &PS_SOCKET_FD.to_string()])
            .args(["--status-fd", &STATUS_FD.to_string()])
            .args(req.extra)
            .stdin(std::process::Stdio::null());
        pagehop_sys::fd::pass_to_child(
            &mut cmd,
            vec![
                (OwnedFd::from(theirs), PS_SOCKET_FD),
                (OwnedFd::from(status_write), STATUS_FD),
            ],
        )
        .map_err(spawn)?;
        hint_pipe_max_size();
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(spawn)?;
        // The child's ends close with `cmd`: EOF on the status pipe then
        // means CRIU is gone.
        drop(cmd);
        let handle = match Process::open(child.id() as i32) {
            Ok(h) => h,
            Err(source) => {
                let _ = child.wait();
                return Err(spawn(source));
            }
        };
        log::info!(
            "criu dump of tree {} started ({} {})",
            req.root,
            criu.path().display(),
            criu.version()
        );
        Ok(LazyDump {
            child,
            handle,
            page_server: Some(ours),
            status: Some(File::from(OwnedFd::from(status_read))),
            log: req.dir.join(DUMP_LOG),
            started,
        })
    }

    /// CRIU's pid.
    pub fn pid(&self) -> i32 {
        self.handle.pid()
    }

    /// Handles for an interruption that must end the dump from another
    /// thread: CRIU's pidfd and its page-server socket (shutting that down
    /// ends CRIU's wait; CRIU then leaves the tree stopped and exits).
    pub fn handles(&self) -> std::io::Result<(Process, UnixStream)> {
        let sk = self
            .page_server
            .as_ref()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))?;
        Ok((self.handle.try_clone()?, sk.try_clone()?))
    }

    /// The log CRIU writes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until every image is written and CRIU serves pages; returns
    /// how long the dump took. CRIU's failure comes back with its reason.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, DumpError> {
        let Some(mut status) = self.status.take() else {
            return Ok(self.started.elapsed());
        };
        let deadline = Instant::now() + timeout;
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match pagehop_sys::poll::poll_readable(status.as_fd(), left) {
                Ok(true) => break true,
                Ok(false) if !left.is_zero() => continue,
                _ => break false,
            }
        };
        if !ready {
            return Err(DumpError::Timeout {
                what: "finish writing its images",
                timeout,
                reason: log_reason(&self.log),
            });
        }
        let mut byte = [0u8; 1];
        match status.read(&mut byte) {
            Ok(1) => Ok(self.started.elapsed()),
            // EOF: CRIU exited without saying it was ready.
            _ => {
                let exit = self.wait_exit(EXIT_TIMEOUT);
                Err(self.failed(exit))
            }
        }
    }

    /// Ends CRIU's page server and waits for CRIU to leave the tree stopped
    /// and exit. Whatever comes next (kill the tree, or let it run on) is
    /// the caller's decision.
    pub fn finish(mut self) -> Result<(), DumpError> {
        let closed = self.close_page_server();
        let exit = self.wait_exit(EXIT_TIMEOUT);
        closed?;
        match exit {
            Some(status) if status.success() => {
                log::info!("criu dump ended; the tree is stopped and untraced");
                Ok(())
            }
            other => Err(self.failed(other)),
        }
    }

    fn close_page_server(&mut self) -> Result<(), DumpError> {
        let Some(mut sk) = self.page_server.take() else {
            return Ok(());
        };
        let mut iov = [0u8; 32];
        iov[..4].copy_from_slice(&PS_IOV_CLOSE.to_le_bytes());
        sk.set_read_timeout(Some(EXIT_TIMEOUT))
            .map_err(DumpError::Close)?;
        sk.write_all(&iov).map_err(DumpError::Close)?;
        let mut status = [0u8; 4];
        sk.read_exact(&mut status).map_err(DumpError::Close)?;
        match i32::from_le_bytes(status) {
            0 => Ok(()),
            status => Err(DumpError::CloseStatus { status }),
        }
    }

    /// Waits up to `timeout` for CRIU to exit; `None` if it did not.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = pagehop_sys::poll::poll_readable(self.handle.as_fd(), timeout);
        self.child.try_wait().ok().flatten()
    }

    fn failed(&self, exit: Option<ExitStatus>) -> DumpError {
        let reason = log_reason(&self.log);
        match exit {
            Some(status) => DumpError::Failed {
                status: status.to_string(),
                reason,
            },
            None => DumpError::Timeout {
                what: "exit",
                timeout: EXIT_TIMEOUT,
                reason,
            },
        }
    }
}

impl Drop for LazyDump {
    /// An unfinished dump: the end of the page-server socket ends CRIU's
    /// wait (it leaves the tree stopped); a CRIU that does not exit even
    /// then is killed.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(sk) = self.page_server.take() {
            let _ = sk.shutdown(std::net::Shutdown::Both);
        }
        if self.wait_exit(EXIT_TIMEOUT).is_none() {
            log::warn!(
                "criu dump (pid {}) did not exit {:?} after its page server closed; killing it",
                self.handle.pid(),
                EXIT_TIMEOUT
            );
            let _ = self.handle.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Says once per dump when `fs.pipe-max-size` slows CRIU down (pagehop
/// changes no host setting itself).
fn hint_pipe_max_size() {
    let size = std::fs::read_to_string(PIPE_MAX_SIZE)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(size) = size.filter(|&s| s < FAST_PIPE_MAX) {
        log::info!(
            "fs.pipe-max-size is {size}: CRIU dumps a large tree faster with \
             `sysctl fs.pipe-max-size={FAST_PIPE_MAX}`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn state(pid: i32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next())
            .unwrap_or('?')
    }

    #[test]
    #[ignore = "needs root and CRIU"]
    fn a_lazy_dump_closed_by_pagehop_leaves_the_tree_stopped_and_untraced() {
        let criu = Criu::find(None).expect("CRIU (scripts/setup-criu.sh)");
        let mut child = Command::new("setsid")
            .args(["sleep", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(100));
        pagehop_sys::process::kill(pid, libc::SIGSTOP).expect("stop");
        let dir = std::env::temp_dir().join(format!("pagehop-lazy-dump-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut dump = LazyDump::start(
            &criu,
            &DumpRequest {
                root: pid,
                dir: &dir,
                extra: &[],
            },
        )
        .expect("start");
        let took = dump.wait_ready(Duration::from_secs(60));
        let took = took.unwrap_or_else(|e| panic!("dump: {e}"));
        assert!(dir.join("pstree.img").exists() && dir.join("inventory.img").exists());
        assert_eq!(state(pid), 't', "CRIU holds the tree while it serves");
        dump.finish().expect("a clean close");
        assert_eq!(state(pid), 'T', "left stopped, untraced");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(status.contains("TracerPid:\t0"), "{status}");
        pagehop_sys::process::kill(pid, libc::SIGCONT).expect("cont");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(state(pid), 'S', "runs on after SIGCONT");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("lazy dump of a sleep took {took:?}");
    }

    #[test]
    #[ignore = "needs root and CRIU"]
    fn a_refused_dump_names_criu_s_reason() {
        let criu = Criu::find(None).expect("CRIU (scripts/setup-criu.sh)");
        let dir = std::env::temp_dir().join(format!("pagehop-bad-dump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // pid 1's tree holds everything (and CRIU refuses init).
        let mut dump = LazyDump::start(
            &criu,
            &DumpRequest {
                root: i32::MAX - 1,
                dir: &dir,
                extra: &[],
            },
        )
        .expect("start");
        let err = dump
            .wait_ready(Duration::from_secs(60))
            .expect_err("no such tree");
        let msg = err.to_string();
        assert!(msg.starts_with("criu dump failed"), "{msg}");
        assert!(msg.contains("Error"), "CRIU's reason: {msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
