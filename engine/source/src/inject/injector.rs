//! The [`Injector`]: seizes one thread of a target with ptrace, runs
//! syscalls in it from a borrowed `syscall` instruction, lends out scratch
//! space below its stack pointer, holds back the signals that arrive
//! meanwhile, and on detach (or drop) puts registers, stack bytes and
//! signals back so the thread carries on as if nothing happened.
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::gadget::find_syscall_insn;
use super::{InjectError, Result};
use crate::target::{Target, TargetError};
use pagehop_sys::pidfd;
use pagehop_sys::ptrace::{self, PTRACE_EVENT_STOP, PTRACE_O_TRACESYSGOOD, Regs, WaitStatus};

/// Bytes below the stack pointer that the x86-64 ABI lets leaf code use.
const RED_ZONE: u64 = 128;
/// Most bytes [`Injector::scratch`] hands out below the red zone.
pub const SCRATCH_MAX: u64 = 16 * 1024;
/// `cs` of 64-bit user code on x86-64 (`__USER_CS`).
const USER64_CS: u64 = 0x33;

/// Where the traced thread is, as far as the injector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Resumed; no stop observed yet.
    Running,
    /// In a `PTRACE_EVENT_STOP` trap (interrupt or group stop).
    Event,
    /// In the syscall-entry stop of an injected syscall.
    SyscallEntry,
    /// In the syscall-exit stop of an injected syscall.
    SyscallExit,
    /// The thread no longer exists.
    Gone,
}

/// One seized thread of a target process, stopped, with its registers saved.
/// Dropping it (or [`Injector::detach`]) restores the thread exactly and lets
/// it run again.
pub struct Injector {
    pid: i32,
    tid: i32,
    pidfd: OwnedFd,
    mem: Option<File>,
    saved: Option<Regs>,
    syscall_insn: u64,
    stop: Stop,
    held_signals: Vec<i32>,
    scratch_used: u64,
    scratch_orig: Vec<(u64, Vec<u8>)>,
    released: bool,
    /// A termination signal waits until the registers are back (dropped
    /// after `Drop::drop` has released the thread).
    _shield: pagehop_sys::shield::Shielded,
    /// ptrace requests only work from the tracing thread.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .field("syscall_insn", &format_args!("{:#x}", self.syscall_insn))
            .field("stop", &self.stop)
            .field("held_signals", &self.held_signals)
            .finish_non_exhaustive()
    }
}

impl Injector {
    /// Validates `pid` ([`Target::validate`]), seizes one of its threads (the
    /// leader, or the first live user thread if the leader has exited), stops it with
    /// `PTRACE_INTERRUPT` and saves its registers. Blocks until the thread
    /// stops, which for a thread in uninterruptible sleep can take a while.
    pub fn seize(pid: i32) -> Result<Self> {
        let shield = pagehop_sys::shield::enter();
        let tid = Target::validate(pid)?.tid();
        let pidfd = pidfd::pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => InjectError::Target(TargetError::NoSuchProcess { pid }),
            _ => InjectError::Pidfd {
                op: "pidfd_open",
                pid,
                source,
            },
        })?;
        ptrace::seize(tid, PTRACE_O_TRACESYSGOOD).map_err(|source| {
            match source.raw_os_error() {
                Some(libc::EPERM) => InjectError::PermissionDenied { pid, source },
                Some(libc::ESRCH) => InjectError::Target(TargetError::NoSuchProcess { pid }),
                _ => InjectError::Ptrace {
                    op: "seize",
                    tid,
                    source,
                },
            }
        })?;
        let mut inj = Injector {
            pid,
            tid,
            pidfd,
            mem: None,
            saved: None,
            syscall_insn: 0,
            stop: Stop::Running,
            held_signals: Vec::new(),
            scratch_used: 0,
            scratch_orig: Vec::new(),
            released: false,
            _shield: shield,
            _not_send: PhantomData,
        };
        // From here on, `inj`'s Drop undoes whatever the setup got to.
        inj.setup()?;
        Ok(inj)
    }

    fn setup(&mut self) -> Result<()> {
        let (pid, tid) = (self.pid, self.tid);
        // The pid may have been reused between pidfd_open and seize: the pidfd
        // still names the process we validated, and fails once it is gone.
        if pidfd::pidfd_send_signal(self.pidfd.as_fd(), 0).is_err() {
            return Err(InjectError::Target(TargetError::NoSuchProcess { pid }));
        }
        self.ptrace("interrupt", ptrace::interrupt(tid))?;
        self.wait_event_stop()?;
        let regs = self.ptrace("getregs", ptrace::getregs(tid))?;
        self.saved = Some(regs);
        if regs.cs != USER64_CS {
            return Err(InjectError::UnsupportedAbi { pid, cs: regs.cs });
        }
        // Through the seized thread: a leader that has exited has no mm.
        let path = format!("/proc/{pid}/task/{tid}/mem");
        let mem = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| InjectError::Proc { path, source })?;
        self.syscall_insn = find_syscall_insn(pid, tid, &mem)?;
        self.mem = Some(mem);
        Ok(())
    }

    /// The target's pid (thread-group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The seized thread.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// A pidfd for the target process.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The registers the thread had when it was stopped; they are put back on
    /// detach.
    pub fn saved_regs(&self) -> Regs {
        self.saved
            .expect("seize() returns only after saving registers")
    }

    /// Address of the `syscall` instruction the injector borrows.
    pub fn syscall_insn(&self) -> u64 {
        self.syscall_insn
    }

    /// Signals held back so far; they are re-sent on detach.
    pub fn held_signals(&self) -> &[i32] {
        &self.held_signals
    }

    fn ptrace<T>(&self, op: &'static str, r: io::Result<T>) -> Result<T> {
        r.map_err(|source| InjectError::Ptrace {
            op,
            tid: self.tid,
            source,
        })
    }

    fn wait(&mut self) -> Result<WaitStatus> {
        let status = ptrace::waitpid(self.tid);
        let status = self.ptrace("waitpid", status)?;
        if status.is_gone() {
            self.stop = Stop::Gone;
            return Err(InjectError::TargetGone {
                pid: self.pid,
                status,
            });
        }
        Ok(status)
    }

    /// Waits for the `PTRACE_EVENT_STOP` trap of a pending `PTRACE_INTERRUPT`.
    /// Any trap consumes a pending interrupt, so after holding back a signal
    /// the interrupt is sent again before resuming.
    fn wait_event_stop(&mut self) -> Result<()> {
        loop {
            match self.wait()? {
                WaitStatus::EventStop {
                    event: PTRACE_EVENT_STOP,
                    ..
                } => {
                    self.stop = Stop::Event;
                    return Ok(());
                }
                WaitStatus::SignalStop { sig, .. } => {
                    self.held_signals.push(sig);
                    self.ptrace("interrupt", ptrace::interrupt(self.tid))?;
                    self.ptrace("cont", ptrace::cont(self.tid, 0))?;
                }
                _ => {
                    self.ptrace("interrupt", ptrace::interrupt(self.tid))?;
                    self.ptrace("cont", ptrace::cont(self.tid, 0))?;
                }
            }
        }
    }

    /// Runs syscall `nr` with `args` in the target thread and returns its raw
    /// result (`-errno` on failure). The syscall runs with the thread's own
    /// stack pointer and credentials; a blocking syscall blocks this call.
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let tid = self.tid;
        let mut regs = self.saved_regs();
        regs.rip = self.syscall_insn;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
        self.ptrace("setregs", ptrace::setregs(tid, &regs))?;
        let mut entered = false;
        loop {
            self.ptrace("syscall", ptrace::syscall(tid, 0))?;
            self.stop = Stop::Running;
            match self.wait()? {
                WaitStatus::SyscallStop { .. } if !entered => {
                    self.stop = Stop::SyscallEntry;
                    let now = self.ptrace("getregs", ptrace::getregs(tid))?;
                    if now.rip != self.syscall_insn + 2 || now.orig_rax != nr as u64 {
                        return Err(InjectError::UnexpectedStop {
                            tid,
                            detail: format!(
                                "syscall entry at rip {:#x} nr {} instead of {:#x} nr {nr}",
                                now.rip,
                                now.orig_rax as i64,
                                self.syscall_insn + 2
                            ),
                        });
                    }
                    entered = true;
                }
                WaitStatus::SyscallStop { .. } => {
                    self.stop = Stop::SyscallExit;
                    let now = self.ptrace("getregs", ptrace::getregs(tid))?;
                    return Ok(now.rax as i64);
                }
                WaitStatus::SignalStop { sig, .. } => self.held_signals.push(sig),
                // A group stop or a stray interrupt trap: keep going.
                _ => self.stop = Stop::Event,
            }
        }
    }

    /// [`Injector::syscall`], with a negative result turned into
    /// [`InjectError::RemoteSyscall`] named `name`.
    pub fn syscall_checked(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let ret = self.syscall(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(InjectError::RemoteSyscall {
                name,
                pid: self.pid,
                source: io::Error::from_raw_os_error(-ret as i32),
            });
        }
        Ok(ret as u64)
    }

    fn mem(&self) -> &File {
        self.mem
            .as_ref()
            .expect("seize() returns only after opening /proc/PID/mem")
    }

    /// Reads `len` bytes of the target's memory at `addr`.
    pub fn read_memory(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.mem()
            .read_exact_at(&mut buf, addr)
            .map_err(|source| InjectError::Memory {
                op: "read",
                pid: self.pid,
                addr,
                len,
                source,
            })?;
        Ok(buf)
    }

    fn write_memory(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.mem()
            .write_all_at(bytes, addr)
            .map_err(|source| InjectError::Memory {
                op: "write",
                pid: self.pid,
                addr,
                len: bytes.len(),
                source,
            })
    }

    /// Copies `bytes` onto the target thread's stack, below the saved stack
    /// pointer and its 128-byte red zone, 16-byte aligned, and returns their
    /// address there, for syscall arguments that are pointers. Successive
    /// calls stack downwards; the original bytes are put back on detach.
    pub fn scratch(&mut self, bytes: &[u8]) -> Result<u64> {
        let full = InjectError::ScratchFull {
            pid: self.pid,
            wanted: bytes.len(),
            max: SCRATCH_MAX,
        };
        let base = self.saved_regs().rsp.saturating_sub(RED_ZONE);
        let used = (self.scratch_used + bytes.len() as u64).next_multiple_of(16);
        // `base` itself need not be aligned; keep the result 16-byte aligned.
        let Some(addr) = base.checked_sub(used).map(|a| a & !15) else {
            return Err(full);
        };
        let used = base - addr;
        if used > SCRATCH_MAX {
            return Err(full);
        }
        let orig = self.read_memory(addr, bytes.len())?;
        self.write_memory(addr, bytes)?;
        self.scratch_orig.push((addr, orig));
        self.scratch_used = used;
        Ok(addr)
    }

    /// Duplicates descriptor `remote_fd` of the target into our process.
    pub fn getfd(&self, remote_fd: i32) -> Result<OwnedFd> {
        match pidfd::pidfd_getfd(self.pidfd.as_fd(), remote_fd) {
            Ok(fd) => Ok(fd),
            // A leader that has exited has no file table; a pidfd for the
            // seized thread (PIDFD_THREAD, 6.9+) reaches the shared one.
            Err(e)
                if self.tid != self.pid
                    && matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EBADF)) =>
            {
                let thread =
                    pidfd::pidfd_open_thread(self.tid).map_err(|source| InjectError::Pidfd {
                        op: "pidfd_open(PIDFD_THREAD)",
                        pid: self.pid,
                        source,
                    })?;
                pidfd::pidfd_getfd(thread.as_fd(), remote_fd)
            }
            Err(e) => Err(e),
        }
        .map_err(|source| InjectError::Pidfd {
            op: "pidfd_getfd",
            pid: self.pid,
            source,
        })
    }

    /// Restores the thread's registers and stack bytes, re-sends held-back
    /// signals and detaches, leaving the thread running as it was.
    pub fn detach(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) || self.stop == Stop::Gone {
            return Ok(());
        }
        let restored = self.restore();
        if self.stop == Stop::Gone {
            return restored;
        }
        // Detach even if restoring failed: a thread left in a ptrace stop
        // would hang until we exit.
        let detached = self.ptrace("detach", ptrace::detach(self.tid, 0));
        restored.and(detached)
    }

    fn restore(&mut self) -> Result<()> {
        let tid = self.tid;
        if self.stop != Stop::Event {
            if self.stop == Stop::SyscallEntry {
                // Cancel the injected syscall before it runs.
                let mut regs = self.ptrace("getregs", ptrace::getregs(tid))?;
                regs.orig_rax = u64::MAX;
                self.ptrace("setregs", ptrace::setregs(tid, &regs))?;
            }
            self.ptrace("interrupt", ptrace::interrupt(tid))?;
            if self.stop != Stop::Running {
                self.ptrace("cont", ptrace::cont(tid, 0))?;
            }
            self.wait_event_stop()?;
        }
        let mut first_err = None;
        for (addr, orig) in std::mem::take(&mut self.scratch_orig).into_iter().rev() {
            if let Err(e) = self.write_memory(addr, &orig) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(saved) = self.saved {
            self.ptrace("setregs", ptrace::setregs(tid, &saved))?;
        }
        // Queued now, taken right after the detach, before the thread
        // returns to user mode.
        for sig in std::mem::take(&mut self.held_signals) {
            if let Err(source) = ptrace::tgkill(self.pid, tid, sig) {
                first_err.get_or_insert(InjectError::Ptrace {
                    op: "tgkill",
                    tid,
                    source,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        // Errors here cannot be reported; `detach()` reports them.
        let _ = self.release();
    }
}
