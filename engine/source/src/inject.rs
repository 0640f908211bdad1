//! Runs syscalls inside a process pagehop did not start, and uses that to take
//! a userfaultfd out of it ([`take_userfaultfd`]).
//!
//! A userfaultfd covers the address space of the process that created it, so
//! for a foreign target it has to be created *inside* the target. The
//! [`Injector`] does that with ptrace, touching as little as possible:
//!
//! ```text
//!  seize ONE thread (leader, or first live user thread), PTRACE_O_TRACESYSGOOD
//!  PTRACE_INTERRUPT ──> PTRACE_EVENT_STOP trap           save regs R0
//!  per injected syscall:
//!    regs = R0 with rip = a `syscall` (0f 05) already in an r-x mapping
//!           ([vdso] first), rax = nr, rdi..r9 = args, orig_rax = -1
//!    PTRACE_SYSCALL ──> syscall-entry stop (check rip/orig_rax)
//!    PTRACE_SYSCALL ──> syscall-exit stop               result = rax
//!  restore:
//!    PTRACE_INTERRUPT + PTRACE_CONT ──> PTRACE_EVENT_STOP trap again
//!    setregs(R0), put back scratch bytes, re-queue held signals (tgkill)
//!    PTRACE_DETACH
//! ```
//!
//! No code is written into the target: its other threads keep running and
//! could execute it. `orig_rax = -1` keeps the kernel's syscall-restart logic
//! off our registers. The original registers are put back at a
//! `PTRACE_EVENT_STOP` trap, which sits in `get_signal()` exactly like the
//! first trap: after detaching, the kernel's restart logic sees the original
//! `orig_rax`/`rax` (e.g. `-ERESTART_RESTARTBLOCK` of an interrupted
//! `nanosleep`) and restarts the interrupted syscall as if nothing happened.
//! (Restoring at the syscall-exit stop also works on 6.18, but only because
//! `PTRACE_DETACH` happens to set `TIF_SIGPENDING` on the thread, which sends
//! it through the same restart logic; without that kick the program would see
//! the raw `-ERESTART*` value. The trap does not depend on it.)
//!
//! Signals that arrive while the thread is ours show up as signal-delivery
//! stops; they are held back (resumed with 0) and re-sent to the same thread
//! with `tgkill` just before detaching, so the thread takes them before it
//! returns to user mode. Their siginfo is that of a `tgkill` from pagehop.
//!
//! An [`Injector`] must stay on the thread that created it: ptrace requests are
//! only accepted from the tracing thread, so the type is `!Send`.
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::target::{Target, TargetError};
use pagehop_sys::pidfd;
use pagehop_sys::ptrace::{self, PTRACE_EVENT_STOP, PTRACE_O_TRACESYSGOOD, Regs, WaitStatus};
use pagehop_sys::uffd;

/// Features [`take_userfaultfd`] callers normally ask for: asynchronous
/// write-protect tracking that also covers pages not yet populated.
pub const DEFAULT_UFFD_FEATURES: u64 =
    uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;

/// Bytes below the stack pointer that the x86-64 ABI lets leaf code use.
const RED_ZONE: u64 = 128;
/// Most bytes [`Injector::scratch`] hands out below the red zone.
pub const SCRATCH_MAX: u64 = 16 * 1024;
/// Most bytes of one executable mapping searched for a `syscall` instruction.
const GADGET_SEARCH_MAX: u64 = 16 << 20;
/// `cs` of 64-bit user code on x86-64 (`__USER_CS`).
const USER64_CS: u64 = 0x33;

/// Why injecting into, or taking a userfaultfd out of, a process failed.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The pid is not a process pagehop can trace.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `PTRACE_SEIZE` was refused.
    #[error("not permitted to trace process {pid}")]
    PermissionDenied {
        /// The pid asked for.
        pid: i32,
        /// The seize error (EPERM).
        #[source]
        source: io::Error,
    },
    /// Only 64-bit x86 processes are supported.
    #[error("process {pid} is not a 64-bit x86 process (cs {cs:#x})")]
    UnsupportedAbi {
        /// The pid.
        pid: i32,
        /// Its code segment.
        cs: u64,
    },
    /// Reading a /proc file failed.
    #[error("cannot read {path}")]
    Proc {
        /// The file.
        path: String,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// A ptrace or wait request failed.
    #[error("ptrace {op} of thread {tid}")]
    Ptrace {
        /// The request (`seize`, `interrupt`, `getregs`, ...).
        op: &'static str,
        /// The traced thread.
        tid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The target exited or was killed while we held it.
    #[error("process {pid} ended while being traced ({status:?})")]
    TargetGone {
        /// The pid.
        pid: i32,
        /// How it ended.
        status: WaitStatus,
    },
    /// The thread stopped somewhere an injected syscall cannot be.
    #[error("thread {tid} stopped unexpectedly: {detail}")]
    UnexpectedStop {
        /// The traced thread.
        tid: i32,
        /// What was seen.
        detail: String,
    },
    /// No executable mapping contains a `syscall` instruction to borrow.
    #[error("no syscall instruction found in the executable mappings of process {pid}")]
    NoSyscallInstruction {
        /// The pid.
        pid: i32,
    },
    /// Reading or writing the target's memory failed.
    #[error("{op} of {len} bytes at {addr:#x} in process {pid}")]
    Memory {
        /// `read` or `write`.
        op: &'static str,
        /// The pid.
        pid: i32,
        /// Target address.
        addr: u64,
        /// Length.
        len: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// [`Injector::scratch`] ran out of room.
    #[error("scratch space of process {pid} exhausted ({wanted} more bytes, {max} max)")]
    ScratchFull {
        /// The pid.
        pid: i32,
        /// Bytes asked for.
        wanted: usize,
        /// [`SCRATCH_MAX`].
        max: u64,
    },
    /// An injected syscall returned an error in the target.
    #[error("{name} failed in process {pid}")]
    RemoteSyscall {
        /// The syscall.
        name: &'static str,
        /// The pid.
        pid: i32,
        /// The errno it returned.
        #[source]
        source: io::Error,
    },
    /// A pidfd operation on the target failed.
    #[error("{op} of process {pid}")]
    Pidfd {
        /// `pidfd_open`, `pidfd_getfd`, ...
        op: &'static str,
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel lacks some of the requested userfaultfd features.
    #[error(
        "userfaultfd features {missing:#x} unsupported (requested {requested:#x}, available {available:#x})"
    )]
    UnsupportedFeatures {
        /// What was asked for.
        requested: u64,
        /// What the kernel offers.
        available: u64,
        /// `requested & !available`.
        missing: u64,
    },
    /// `UFFDIO_API` on the taken fd failed.
    #[error("UFFDIO_API with features {features:#x}")]
    Api {
        /// The requested features.
        features: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, InjectError>;

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

/// A userfaultfd taken out of another process: it covers that process's
/// address space, and the target holds no descriptor for it.
#[derive(Debug)]
pub struct TakenUffd {
    /// The uffd, in our file table (close-on-exec, non-blocking).
    pub fd: OwnedFd,
    /// The process whose memory it covers.
    pub pid: i32,
    /// The features enabled with `UFFDIO_API`.
    pub features: u64,
    /// All features the kernel offered.
    pub available: u64,
    /// The ioctls available on the uffd (`1 << _UFFDIO_*`).
    pub ioctls: u64,
    /// Created with `UFFD_USER_MODE_ONLY` (the target lacked the privilege
    /// for a full uffd): faults taken in kernel mode are not reported. With
    /// `WP_ASYNC` that does not matter, the kernel resolves write-protect
    /// faults itself in either mode (a `read(2)` into a protected page of such
    /// a target succeeded on 6.18).
    pub user_mode_only: bool,
}

impl AsFd for TakenUffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates a userfaultfd inside process `pid` by syscall injection, takes it
/// into our process with `pidfd_getfd`, closes it in the target, detaches, and
/// enables `features` (e.g. [`DEFAULT_UFFD_FEATURES`]) with `UFFDIO_API` from
/// our side.
///
/// The injected `userfaultfd` and `close` run under the target's seccomp
/// filter, if it has one (`Seccomp: 2` in /proc/PID/status): a filter that
/// returns an errno makes this fail cleanly, but one that kills on unlisted
/// syscalls (systemd's `SystemCallFilter=` default) kills the target.
pub fn take_userfaultfd(pid: i32, features: u64) -> Result<TakenUffd> {
    let mut inj = Injector::seize(pid)?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let mut user_mode_only = false;
    let mut ret = inj.syscall(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if ret == -(libc::EPERM as i64) {
        // vm.unprivileged_userfaultfd = 0 and the target lacks CAP_SYS_PTRACE.
        user_mode_only = true;
        let flags = flags | uffd::UFFD_USER_MODE_ONLY as u64;
        ret = inj.syscall(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    }
    if ret < 0 {
        let source = io::Error::from_raw_os_error(-ret as i32);
        inj.detach()?;
        return Err(InjectError::RemoteSyscall {
            name: "userfaultfd",
            pid,
            source,
        });
    }
    let remote_fd = ret as i32;
    let taken = inj.getfd(remote_fd);
    let closed = inj.syscall_checked("close", libc::SYS_close, [remote_fd as u64, 0, 0, 0, 0, 0]);
    inj.detach()?;
    let fd = taken?;
    closed?;

    match uffd::api(fd.as_fd(), features) {
        Ok(api) => Ok(TakenUffd {
            fd,
            pid,
            features,
            available: api.features,
            ioctls: api.ioctls,
            user_mode_only,
        }),
        Err(source) if source.raw_os_error() == Some(libc::EINVAL) => {
            // UFFDIO_API can only be asked once per uffd; ask a local one
            // what the kernel offers, to say what is missing.
            let available = uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY)
                .and_then(|local| uffd::api(local.as_fd(), 0))
                .map(|api| api.features);
            match available {
                Ok(available) if features & !available != 0 => {
                    Err(InjectError::UnsupportedFeatures {
                        requested: features,
                        available,
                        missing: features & !available,
                    })
                }
                _ => Err(InjectError::Api { features, source }),
            }
        }
        Err(source) => Err(InjectError::Api { features, source }),
    }
}

fn read_proc(path: String) -> Result<String> {
    std::fs::read_to_string(&path).map_err(|source| InjectError::Proc { path, source })
}

/// An executable mapping from /proc/PID/maps.
struct ExecMapping {
    start: u64,
    end: u64,
    path: String,
}

/// Finds a `syscall` instruction (0f 05) in an executable mapping of `pid`:
/// `[vdso]` first, then libc, then any other. Executing it from there runs
/// exactly one syscall; the thread is stopped at the syscall-exit stop before
/// whatever follows the two bytes could run.
fn find_syscall_insn(pid: i32, tid: i32, mem: &File) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/maps");
    let maps = read_proc(path)?;
    let mut mappings: Vec<ExecMapping> = maps
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (start, end) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            let path = f.nth(3).unwrap_or("").to_string();
            // [vsyscall] is emulated: jumping into the middle of it faults.
            if !perms.starts_with("r-x") || path == "[vsyscall]" {
                return None;
            }
            Some(ExecMapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                path,
            })
        })
        .collect();
    let rank = |m: &ExecMapping| match m.path.as_str() {
        "[vdso]" => 0,
        p if p
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("libc.so") || name.starts_with("libc-")) =>
        {
            1
        }
        _ => 2,
    };
    mappings.sort_by_key(rank);
    let mut chunk = vec![0u8; 64 * 1024];
    for m in &mappings {
        let end = m.end.min(m.start.saturating_add(GADGET_SEARCH_MAX));
        let mut addr = m.start;
        while addr < end {
            let len = chunk.len().min((end - addr) as usize);
            let Ok(n) = mem.read_at(&mut chunk[..len], addr) else {
                break;
            };
            if n == 0 {
                break;
            }
            if let Some(i) = chunk[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(addr + i as u64);
            }
            // Overlap one byte so a pair split across chunks is found.
            addr += if n > 1 { n as u64 - 1 } else { 1 };
        }
    }
    Err(InjectError::NoSyscallInstruction { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_rejected() {
        let pid = std::process::id() as i32;
        let got = take_userfaultfd(pid, DEFAULT_UFFD_FEATURES);
        assert!(
            matches!(got, Err(InjectError::Target(TargetError::IsSelf { .. }))),
            "got {got:?}"
        );
    }
}
