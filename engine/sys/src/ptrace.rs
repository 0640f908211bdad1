//! ptrace(2) and waitpid(2): thin safe wrappers for the seize / interrupt /
//! run-to-syscall-stop cycle that `inject` builds on, and a decoder for wait
//! statuses of seized (`PTRACE_SEIZE`) tracees.
//!
//! All requests address one thread (`tid`). None of them touches our own
//! memory except through the register structs passed by reference, which is
//! why they are safe functions: what they change is the state of another task.
use std::io;
use std::mem::MaybeUninit;

/// x86-64 general-purpose registers as `PTRACE_GETREGS` returns them.
pub type Regs = libc::user_regs_struct;
const _: () = assert!(std::mem::size_of::<Regs>() == 27 * 8);

/// Seize option: syscall stops report `SIGTRAP | 0x80`.
pub const PTRACE_O_TRACESYSGOOD: u32 = 0x1;
/// Seize option: the tracee is killed when the tracer exits. pagehop never
/// sets it: a crash of ours must not take the target down.
pub const PTRACE_O_EXITKILL: u32 = 0x10_0000;
/// Event code of a `PTRACE_INTERRUPT` or group-stop trap of a seized tracee.
pub const PTRACE_EVENT_STOP: u32 = 128;
/// The stop signal of a syscall stop when `PTRACE_O_TRACESYSGOOD` is set.
pub const SYSCALL_STOP_SIG: i32 = libc::SIGTRAP | 0x80;

const _: () = assert!(PTRACE_O_TRACESYSGOOD == libc::PTRACE_O_TRACESYSGOOD as u32);
const _: () = assert!(PTRACE_O_EXITKILL == libc::PTRACE_O_EXITKILL as u32);
const _: () = assert!(PTRACE_EVENT_STOP == libc::PTRACE_EVENT_STOP as u32);
const _: () = assert!(libc::PTRACE_SEIZE == 0x4206 && libc::PTRACE_INTERRUPT == 0x4207);

/// One ptrace request whose `addr` and `data` carry integers or a pointer to a
/// buffer the request fills or reads.
///
/// # Safety
/// When `data` is a pointer, it must be valid for what `request` does with it.
unsafe fn request(request: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<()> {
    // SAFETY: forwarded from the caller; the kernel validates `tid` and the
    // request and only dereferences `data` for requests that take a buffer.
    let ret = unsafe {
        libc::ptrace(
            request,
            tid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    super::cvt(ret).map(drop)
}

/// `PTRACE_SEIZE` with `options` (`PTRACE_O_*`): attaches without stopping the
/// thread. `EPERM` when we may not trace it (or it is already traced).
pub fn seize(tid: i32, options: u32) -> io::Result<()> {
    // SAFETY: SEIZE takes the options as an integer in `data`.
    unsafe { request(libc::PTRACE_SEIZE, tid, 0, options as usize) }
}

/// `PTRACE_INTERRUPT`: asks a seized thread to enter a `PTRACE_EVENT_STOP`
/// trap. If it is already in a ptrace stop, the trap happens after it resumes.
pub fn interrupt(tid: i32) -> io::Result<()> {
    // SAFETY: INTERRUPT takes no buffer.
    unsafe { request(libc::PTRACE_INTERRUPT, tid, 0, 0) }
}

/// `PTRACE_CONT`: resumes a stopped thread, delivering `sig` if it is in a
/// signal-delivery stop (0 suppresses the signal).
pub fn cont(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: CONT takes the signal as an integer in `data`.
    unsafe { request(libc::PTRACE_CONT, tid, 0, sig as usize) }
}

/// `PTRACE_SYSCALL`: resumes a stopped thread until the next syscall entry or
/// exit (or any other stop), delivering `sig` as [`cont`] does.
pub fn syscall(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: SYSCALL takes the signal as an integer in `data`.
    unsafe { request(libc::PTRACE_SYSCALL, tid, 0, sig as usize) }
}

/// `PTRACE_DETACH`: detaches a stopped thread and lets it run. `sig` is only
/// delivered from signal-delivery and syscall stops; from a
/// `PTRACE_EVENT_STOP` trap the kernel ignores it.
pub fn detach(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: DETACH takes the signal as an integer in `data`.
    unsafe { request(libc::PTRACE_DETACH, tid, 0, sig as usize) }
}

/// `PTRACE_GETREGS` of a stopped thread.
pub fn getregs(tid: i32) -> io::Result<Regs> {
    let mut regs = MaybeUninit::<Regs>::uninit();
    // SAFETY: GETREGS writes one `user_regs_struct` to `data`, which points to
    // writable storage of that type.
    unsafe { request(libc::PTRACE_GETREGS, tid, 0, regs.as_mut_ptr() as usize) }?;
    // SAFETY: the request succeeded, so the kernel filled in every field.
    Ok(unsafe { regs.assume_init() })
}

/// `PTRACE_SETREGS` of a stopped thread.
pub fn setregs(tid: i32, regs: &Regs) -> io::Result<()> {
    // SAFETY: SETREGS reads one `user_regs_struct` from `data`, which points to
    // a live one; the kernel does not write through it.
    unsafe { request(libc::PTRACE_SETREGS, tid, 0, regs as *const Regs as usize) }
}

/// `PTRACE_GETSIGINFO`: the siginfo of the signal that caused the current stop.
pub fn getsiginfo(tid: i32) -> io::Result<libc::siginfo_t> {
    let mut info = MaybeUninit::<libc::siginfo_t>::uninit();
    // SAFETY: GETSIGINFO writes one `siginfo_t` to `data`, which points to
    // writable storage of that type.
    unsafe { request(libc::PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize) }?;
    // SAFETY: the request succeeded, so the kernel filled in the struct.
    Ok(unsafe { info.assume_init() })
}

/// `tgkill(tgid, tid, sig)`: sends `sig` to one thread of process `tgid`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill takes three integers and touches no memory.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    super::cvt(ret).map(drop)
}

/// A decoded wait status of a (seized) child or tracee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Syscall-entry or syscall-exit stop (`PTRACE_O_TRACESYSGOOD`); which one
    /// the tracer has to remember.
    SyscallStop {
        /// The thread.
        tid: i32,
    },
    /// A `PTRACE_EVENT_*` stop. `event == PTRACE_EVENT_STOP` is an interrupt
    /// trap (`sig == SIGTRAP`) or a group stop (`sig` = the stop signal).
    EventStop {
        /// The thread.
        tid: i32,
        /// `PTRACE_EVENT_*`.
        event: u32,
        /// The stop signal reported with it.
        sig: i32,
    },
    /// Signal-delivery stop: `sig` is about to be delivered; resuming with 0
    /// suppresses it.
    SignalStop {
        /// The thread.
        tid: i32,
        /// The signal.
        sig: i32,
    },
    /// The process exited with `code`.
    Exited {
        /// The thread.
        tid: i32,
        /// Exit code.
        code: i32,
    },
    /// The process was killed by `sig`.
    Signaled {
        /// The thread.
        tid: i32,
        /// The fatal signal.
        sig: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
    /// The (non-traced) child was resumed by `SIGCONT`.
    Continued {
        /// The thread.
        tid: i32,
    },
}

impl WaitStatus {
    /// Decodes a raw `status` from `waitpid` for thread `tid`.
    pub fn decode(tid: i32, status: i32) -> Self {
        if libc::WIFEXITED(status) {
            Self::Exited {
                tid,
                code: libc::WEXITSTATUS(status),
            }
        } else if libc::WIFSIGNALED(status) {
            Self::Signaled {
                tid,
                sig: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else if libc::WIFSTOPPED(status) {
            let sig = libc::WSTOPSIG(status);
            let event = (status as u32 >> 16) & 0xff;
            if sig == SYSCALL_STOP_SIG {
                Self::SyscallStop { tid }
            } else if event != 0 {
                Self::EventStop { tid, event, sig }
            } else {
                Self::SignalStop { tid, sig }
            }
        } else {
            Self::Continued { tid }
        }
    }

    /// Whether the thread is gone (exited or killed).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Exited { .. } | Self::Signaled { .. })
    }
}

/// Blocking `waitpid(tid, __WALL)`, retried on `EINTR`.
pub fn waitpid(tid: i32) -> io::Result<WaitStatus> {
    loop {
        match wait_raw(tid, libc::__WALL) {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Non-blocking `waitpid(tid, __WALL | WNOHANG)`: `None` when nothing is
/// pending.
pub fn try_waitpid(tid: i32) -> io::Result<Option<WaitStatus>> {
    loop {
        match wait_raw(tid, libc::__WALL | libc::WNOHANG) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn wait_raw(tid: i32, flags: i32) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    // SAFETY: `status` is a valid, writable int for the duration of the call.
    let ret = unsafe { libc::waitpid(tid, &mut status, flags) };
    match super::cvt(ret)? {
        0 => Ok(None),
        pid => Ok(Some(WaitStatus::decode(pid, status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_statuses() {
        assert_eq!(
            WaitStatus::decode(7, 0x857f),
            WaitStatus::SyscallStop { tid: 7 }
        );
        assert_eq!(
            WaitStatus::decode(7, (128 << 16) | (libc::SIGTRAP << 8) | 0x7f),
            WaitStatus::EventStop {
                tid: 7,
                event: PTRACE_EVENT_STOP,
                sig: libc::SIGTRAP
            }
        );
        assert_eq!(
            WaitStatus::decode(7, (128 << 16) | (libc::SIGSTOP << 8) | 0x7f),
            WaitStatus::EventStop {
                tid: 7,
                event: PTRACE_EVENT_STOP,
                sig: libc::SIGSTOP
            }
        );
        assert_eq!(
            WaitStatus::decode(7, (libc::SIGUSR1 << 8) | 0x7f),
            WaitStatus::SignalStop {
                tid: 7,
                sig: libc::SIGUSR1
            }
        );
        assert_eq!(
            WaitStatus::decode(7, 3 << 8),
            WaitStatus::Exited { tid: 7, code: 3 }
        );
        assert_eq!(
            WaitStatus::decode(7, libc::SIGKILL),
            WaitStatus::Signaled {
                tid: 7,
                sig: libc::SIGKILL,
                core_dumped: false
            }
        );
        assert_eq!(
            WaitStatus::decode(7, 0xffff),
            WaitStatus::Continued { tid: 7 }
        );
    }
}
