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
//!
//! - `injector`: the [`Injector`] itself: seizing a thread, running syscalls
//!   in it, scratch space on its stack, and putting everything back.
//! - `gadget`: finding a `syscall` instruction to borrow in the target's
//!   executable mappings.
//! - `take`: [`take_userfaultfd`] and the [`TakenUffd`] it returns.
mod gadget;
mod injector;
mod take;

use std::io;

use crate::target::TargetError;
use pagehop_sys::ptrace::WaitStatus;

pub use injector::{Injector, SCRATCH_MAX};
pub use take::{DEFAULT_UFFD_FEATURES, TakenUffd, take_userfaultfd};

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
