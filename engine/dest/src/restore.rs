//! Starting the destination process: the restore command runs (through
//! `sh -c`, with the handoff socket in [`handoff::SOCKET_ENV`]), the process
//! hands over its userfaultfd ([`crate::handoff`]), and pagehop holds a
//! pidfd on it from then on. The process is held stopped until the source
//! has committed ([`Restored::resume`]).
//!
//! A restored process whose memory could not be installed must not run:
//! once its userfaultfd goes, missing pages read as zeros.
//! [`Restored::abandon`] kills it, the processes below it, and the command.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use pagehop_mem::pages::{Range, RangeSet};
use pagehop_sys::process::Process;

use crate::handoff::{self, HandoffError, HandoffListener};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("starting the restore command {cmd:?}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the restored process did not hand over its userfaultfd")]
    Handoff(#[source] HandoffError),
    #[error(
        "the handoff names process {claimed}, but came from process {peer}: refused (a process \
         hands over its own userfaultfd)"
    )]
    ForeignPid { claimed: i32, peer: i32 },
    #[error(
        "process {pid} handed over a userfaultfd, but was not started by the restore command \
         (pid {cmd}): refused"
    )]
    NotStartedByUs { pid: i32, cmd: u32 },
    #[error("reading the handoff connection's peer")]
    Peer(#[source] std::io::Error),
    #[error("opening a pidfd for the restored process {pid}")]
    Pidfd {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the registered ranges of the restored process {pid}")]
    Smaps {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// How to start the destination process.
#[derive(Clone, Debug)]
pub struct RestoreCommand {
    /// Run with `sh -c`.
    pub cmd: String,
    /// Where the process finds the handoff socket.
    pub socket_path: PathBuf,
    /// How long the process may take to hand over its userfaultfd.
    pub timeout: Duration,
}

/// A started destination process and its userfaultfd.
pub struct Restored {
    /// The restore command (`sh -c`), which need not be the process itself.
    child: Child,
    /// The process that handed its userfaultfd over.
    process: Process,
    uffd: Option<OwnedFd>,
    /// Fires once the process reported the end of its restore (or closed
    /// the handoff connection).
    restore_finished: std::sync::mpsc::Receiver<()>,
}

/// How long a running process may take to report the end of its restore
/// before recv leaves it.
const RESTORE_FINISHED_WAIT: Duration = Duration::from_secs(10);

impl RestoreCommand {
    /// Starts the command and waits for its userfaultfd; the process is then
    /// held stopped (SIGSTOP, with everything below it) until
    /// [`Restored::resume`]: it must not run before the source has committed.
    pub fn start(&self) -> Result<Restored, RestoreError> {
        let listener = HandoffListener::bind(&self.socket_path).map_err(RestoreError::Handoff)?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .env(handoff::SOCKET_ENV, &self.socket_path)
            .spawn()
            .map_err(|source| RestoreError::Spawn {
                cmd: self.cmd.clone(),
                source,
            })?;
        let handoff = match listener.accept_uffd(self.timeout) {
            Ok(h) => h,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RestoreError::Handoff(e));
            }
        };
        let handoff::Handoff {
            pid,
            uffd,
            mut stream,
        } = handoff;
        let process = match checked_process(pid, &stream, child.id()) {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        // Nothing runs before the source commits (see `Restored::resume`).
        crate::tree::signal_tree(&process, libc::SIGSTOP);
        // The handoff connection stays open until the process reports the end
        // of its restore (the 4-byte marker), as CRIU's restorer expects.
        let (finished, restore_finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut marker = [0u8; 4];
            let _ = std::io::Read::read_exact(&mut stream, &mut marker);
            let _ = finished.send(());
        });
        Ok(Restored {
            child,
            process,
            uffd: Some(uffd),
            restore_finished,
        })
    }
}

impl Restored {
    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Takes the userfaultfd (once).
    pub fn take_uffd(&mut self) -> Option<OwnedFd> {
        self.uffd.take()
    }

    /// The ranges the process registered with its userfaultfd in missing
    /// mode (smaps `um`).
    pub fn registered_ranges(&self) -> Result<RangeSet, RestoreError> {
        let pid = self.pid();
        registered_ranges(Path::new(&format!("/proc/{pid}/smaps")))
            .map_err(|source| RestoreError::Smaps { pid, source })
    }

    /// Continues the process (and every process below it), held stopped
    /// since [`RestoreCommand::start`].
    pub fn resume(&self) {
        crate::tree::signal_tree(&self.process, libc::SIGCONT);
    }

    /// Kills the process, every process below it, and the restore command.
    pub fn abandon(mut self) {
        crate::tree::signal_tree(&self.process, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Leaves the process as it is (running, or held stopped); recv does
    /// not wait for it.
    pub fn release(self) {
        drop(self.child);
    }

    /// Leaves the running process once it has reported the end of its
    /// restore (a few seconds at most): the handoff connection must outlive
    /// the marker, or the process's write of it fails (SIGPIPE by default).
    pub fn release_when_restored(self) {
        let _ = self.restore_finished.recv_timeout(RESTORE_FINISHED_WAIT);
        self.release();
    }
}

/// The process that handed its userfaultfd over: the pid it sent must be
/// the connection's own (`SO_PEERCRED`), and it must descend from the
/// restore command (pid `cmd`). Nothing is ever signalled or read by a pid
/// a peer merely claimed.
fn checked_process(
    pid: i32,
    stream: &std::os::unix::net::UnixStream,
    cmd: u32,
) -> Result<Process, RestoreError> {
    use std::os::fd::AsFd;
    let peer = pagehop_sys::unix::peer_pid(stream.as_fd()).map_err(RestoreError::Peer)?;
    if peer != pid {
        return Err(RestoreError::ForeignPid { claimed: pid, peer });
    }
    let process = Process::open(pid).map_err(|source| RestoreError::Pidfd { pid, source })?;
    // Up the parent chain to the command (the pidfd keeps `pid` itself
    // from being reused meanwhile).
    let mut at = pid;
    for _ in 0..64 {
        if at == cmd as i32 {
            return Ok(process);
        }
        match pagehop_sys::process::parent_of(at) {
            Ok(parent) if parent > 1 => at = parent,
            _ => break,
        }
    }
    Err(RestoreError::NotStartedByUs { pid, cmd })
}

/// Ranges of an smaps file registered with a userfaultfd in missing mode.
fn registered_ranges(smaps: &Path) -> std::io::Result<RangeSet> {
    let smaps = std::fs::read_to_string(smaps)?;
    Ok(parse_registered(&smaps))
}

fn parse_registered(smaps: &str) -> RangeSet {
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
    RangeSet::from_ranges(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_ranges_come_from_um_flags() {
        let smaps = "\
600000000000-600000400000 rw-p 00000000 00:00 0
Size:               4096 kB
VmFlags: rd wr mr mw me ac um
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
VmFlags: rd wr mr mw me ac
7f0000002000-7f0000003000 rw-p 00000000 00:00 0
VmFlags: rd wr um
";
        let got = parse_registered(smaps);
        assert_eq!(
            got.ranges(),
            &[
                Range::new(0x6000_0000_0000, 0x6000_0040_0000),
                Range::new(0x7f00_0000_2000, 0x7f00_0000_3000)
            ]
        );
        assert!(parse_registered("").is_empty());
    }
}
