//! Processes by pid and by pidfd: the crate's one `kill(pid, sig)` wrapper
//! and [`Process`], a pidfd-backed handle that also remembers the process's
//! start time so that a later `/proc/PID` read can tell whether the pid still
//! names the same process.
//!
//! The crate's conversions of raw pids and signal numbers to rustix types
//! live here too.
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use rustix::process::{Pid, Signal};

use crate::pidfd;

/// `pid` as a rustix `Pid`: `EINVAL` unless it is positive.
pub(crate) fn to_pid(pid: i32) -> io::Result<Pid> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `sig` as a rustix `Signal`; `None` for 0 (the existence check, which
/// rustix's `Signal` cannot represent). Named signals and the realtime
/// signals `SIGRTMIN..=SIGRTMAX` are accepted; anything else (including the
/// signals glibc reserves below `SIGRTMIN`) is `EINVAL`.
pub(crate) fn to_signal(sig: i32) -> io::Result<Option<Signal>> {
    if sig == 0 {
        return Ok(None);
    }
    if let Some(named) = Signal::from_named_raw(sig) {
        return Ok(Some(named));
    }
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        // SAFETY: `sig` is non-zero and a valid signal number in the realtime
        // range that libc leaves to applications (SIGRTMIN..=SIGRTMAX as libc
        // reports them), so it is not one libc reserves for itself.
        return Ok(Some(unsafe { Signal::from_raw_unchecked(sig) }));
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// `kill(pid, sig)`: sends `sig` to process `pid` (`pid == 0`: our process
/// group; `pid < -1`: process group `-pid`). `sig == 0` only checks that the
/// target exists. `pid == -1` (every process we may signal) is refused with
/// `EINVAL`, as are signal numbers that are neither named signals nor in
/// `SIGRTMIN..=SIGRTMAX` (rustix's `Signal` holds no others).
///
/// Prefer [`Process::signal`] for a process that may exit meanwhile: a pid
/// can be reused, a pidfd cannot.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    let sig = to_signal(sig)?;
    let result = match pid {
        p if p > 0 => {
            let p = to_pid(p)?;
            match sig {
                Some(s) => rustix::process::kill_process(p, s),
                None => rustix::process::test_kill_process(p),
            }
        }
        0 => match sig {
            Some(s) => rustix::process::kill_current_process_group(s),
            None => rustix::process::test_kill_current_process_group(),
        },
        -1 => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        p => {
            let group = p
                .checked_neg()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            let group = to_pid(group)?;
            match sig {
                Some(s) => rustix::process::kill_process_group(group, s),
                None => rustix::process::test_kill_process_group(group),
            }
        }
    };
    result.map_err(Into::into)
}

/// The fields of `/proc/PID/stat` that [`Process`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`, ...
    pub state: char,
    /// Field 4: the parent's pid (0 for init and kernel roots).
    pub ppid: i32,
    /// Field 22: start time after boot, in clock ticks.
    pub start_time: u64,
}

/// Parses one `/proc/PID/stat` line. `comm` (field 2) is in parentheses and
/// may itself contain spaces and `)`, so the fields after it are found from
/// the *last* `)`.
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let close = line.rfind(')')?;
    // Field 3 onwards; `rest[0]` is field 3.
    let rest: Vec<&str> = line.get(close + 1..)?.split_ascii_whitespace().collect();
    let mut chars = rest.first()?.chars();
    let state = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    Some(Stat {
        state,
        ppid: rest.get(1)?.parse().ok()?,
        start_time: rest.get(22 - 3)?.parse().ok()?,
    })
}

/// The parent pid of `pid` (`/proc/PID/stat` field 4; 0 when the parent is
/// outside our pid namespace). A snapshot by pid: for a process that must
/// stay the same one, use [`Process::parent_pid`].
pub fn parent_of(pid: i32) -> io::Result<i32> {
    Ok(read_stat(pid)?.ppid)
}

/// `pid` and every process below it (by parent pid in /proc), parents
/// before their children. A snapshot: processes fork and exit meanwhile.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = read_stat(p) {
                parents.push((p, stat.ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// The pids of the `NSpid:` line of a `/proc/PID/status` text: the pid in
/// each pid namespace from the one of the procfs mount down to the process's
/// own. `None` when there is no such line (kernels before 4.1) or it is
/// malformed.
pub(crate) fn parse_ns_pid(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids = line
        .split_ascii_whitespace()
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<i32>>>()?;
    (!pids.is_empty()).then_some(pids)
}

fn invalid_data(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn read_stat(pid: i32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| invalid_data("malformed /proc/PID/stat"))
}

/// A process held by a pidfd (`pidfd_open`), with the start time `/proc`
/// reported for its pid when it was opened.
///
/// Signals go through the pidfd, so they can never reach another process
/// that reused the pid. `/proc/PID` reads cannot go through it; each one
/// here is confirmed afterwards with a `pidfd_send_signal(0)`: the pid cannot
/// be reused while the process (even as a zombie) holds it, so a successful
/// check after the read means the read was of this process.
///
/// `/proc` is the procfs of our pid namespace (the usual setup); pids here
/// are in the caller's namespace.
#[derive(Debug)]
pub struct Process {
    pid: i32,
    pidfd: OwnedFd,
    start_time: u64,
}

impl Process {
    /// Opens the process whose thread-group leader is `pid`: `ESRCH` when
    /// there is none (or it was reaped), `EINVAL` for `pid <= 0`, and for a
    /// non-leader thread id what [`pidfd::pidfd_open`] says (`EINVAL`, or
    /// `ENOENT` on recent kernels).
    pub fn open(pid: i32) -> io::Result<Process> {
        let pidfd = pidfd::pidfd_open(pid)?;
        let mut process = Process {
            pid,
            pidfd,
            start_time: 0,
        };
        let stat = process.confirmed(read_stat(pid))?;
        process.start_time = stat.start_time;
        Ok(process)
    }

    /// The pid (in our pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The start time (clock ticks after boot, `/proc/PID/stat` field 22)
    /// recorded when the handle was opened.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Sends `sig` through the pidfd (`pidfd_send_signal`); `sig == 0` only
    /// checks existence. `ESRCH` once the process has been reaped (a zombie
    /// still accepts signals, which it ignores).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        pidfd::pidfd_send_signal(self.pidfd.as_fd(), sig)
    }

    /// Whether the process still exists (pidfd signal 0 succeeds; `EPERM`
    /// counts as existing) and is not a zombie (`/proc/PID/stat` state is
    /// neither `Z` nor `X`).
    pub fn is_alive(&self) -> bool {
        let state = match read_stat(self.pid) {
            Ok(stat) => stat.state,
            Err(_) => return false,
        };
        // The check comes after the read, so the state read was this process's.
        self.exists() && !matches!(state, 'Z' | 'X')
    }

    /// Whether `/proc/PID/stat` still shows the start time recorded at
    /// [`open`](Self::open): `false` when the pid is gone or names a
    /// different process now.
    pub fn same_process_at_proc(&self) -> bool {
        read_stat(self.pid).is_ok_and(|s| s.start_time == self.start_time)
    }

    /// A second handle on the same process (the pidfd is duplicated).
    pub fn try_clone(&self) -> io::Result<Process> {
        Ok(Process {
            pid: self.pid,
            pidfd: self.pidfd.try_clone()?,
            start_time: self.start_time,
        })
    }

    /// The inode number of the process's pid namespace (`stat` of
    /// `/proc/PID/ns/pid`): equal inodes (on the nsfs device) mean the same
    /// namespace.
    pub fn pid_namespace_inode(&self) -> io::Result<u64> {
        let ino = fs::metadata(self.proc_path("ns/pid")).map(|m| m.ino());
        self.confirmed(ino)
    }

    /// The process's pid in each nested pid namespace, outermost (the one of
    /// `/proc`) first, its own namespace last (`NSpid:` of
    /// `/proc/PID/status`). `Unsupported` when the kernel has no `NSpid`.
    pub fn ns_pid(&self) -> io::Result<Vec<i32>> {
        let status = self.confirmed(fs::read_to_string(self.proc_path("status")))?;
        parse_ns_pid(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no NSpid line in /proc/PID/status",
            )
        })
    }

    /// The thread ids of the process (`/proc/PID/task`), sorted.
    pub fn threads(&self) -> io::Result<Vec<i32>> {
        let tids = fs::read_dir(self.proc_path("task")).and_then(|dir| {
            let mut tids = Vec::new();
            for entry in dir {
                if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
                    tids.push(tid);
                }
            }
            Ok(tids)
        });
        let mut tids = self.confirmed(tids)?;
        tids.sort_unstable();
        Ok(tids)
    }

    /// The scheduler state (`/proc/PID/stat` field 3): `T` stopped, `R`
    /// running, `S` sleeping, ...
    pub fn state(&self) -> io::Result<char> {
        Ok(self.confirmed(read_stat(self.pid))?.state)
    }

    /// The parent's pid (`/proc/PID/stat` field 4); 0 when the parent is
    /// outside our pid namespace.
    pub fn parent_pid(&self) -> io::Result<i32> {
        Ok(self.confirmed(read_stat(self.pid))?.ppid)
    }

    fn proc_path(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{rest}", self.pid))
    }

    /// Whether the process still holds its pid (pidfd signal 0).
    fn exists(&self) -> bool {
        match self.signal(0) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::EPERM),
        }
    }

    /// `read`, if the process still held its pid after it (so that a
    /// `/proc/PID` read was of this process and not of a pid reuser);
    /// `ESRCH` otherwise, also in place of the read's own error.
    fn confirmed<T>(&self, read: io::Result<T>) -> io::Result<T> {
        if !self.exists() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        read
    }
}

impl AsFd for Process {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// Forks a keeper: a process that holds duplicates of `keep` open until the
/// process behind the pidfd `until_exit_of` has exited, then exits. It runs
/// in its own session (signals to pagehop's process group miss it) and
/// holds no other descriptor. Returns its pid.
///
/// For a userfaultfd that must outlive pagehop: while any descriptor of it
/// is open its registrations stay, so a stopped process that is continued
/// from outside waits at its first missing page instead of reading zeros.
pub fn spawn_fd_keeper(keep: &[BorrowedFd<'_>], until_exit_of: BorrowedFd<'_>) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    // Everything the child uses is computed before the fork: after it, in a
    // multi-threaded parent, only async-signal-safe calls are allowed.
    let watch = until_exit_of.as_raw_fd();
    let fds: Vec<libc::c_int> = keep.iter().map(|fd| fd.as_raw_fd()).collect();
    let above = fds.iter().copied().chain([watch]).max().unwrap_or(2) + 1;
    // SAFETY: fork has no memory preconditions; the child below only makes
    // async-signal-safe calls (setsid, fcntl, close_range, poll, _exit) on
    // values prepared before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // SAFETY: async-signal-safe syscalls on plain integers; `fds` is only
    // read (no allocation, no lock). The child ends in _exit.
    unsafe {
        libc::setsid();
        // Move what is kept above every descriptor, then close the rest.
        let watch_dup = libc::fcntl(watch, libc::F_DUPFD_CLOEXEC, above);
        let mut last = watch_dup;
        for &fd in &fds {
            last = last.max(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above));
        }
        libc::syscall(libc::SYS_close_range, 0u32, (above - 1) as u32, 0u32);
        libc::syscall(libc::SYS_close_range, (last + 1) as u32, u32::MAX, 0u32);
        if watch_dup >= 0 {
            let mut pfd = libc::pollfd {
                fd: watch_dup,
                events: libc::POLLIN,
                revents: 0,
            };
            while libc::poll(&mut pfd, 1, -1) < 0 && *libc::__errno_location() == libc::EINTR {}
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    fn sleeper() -> Child {
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep")
    }

    fn pid_of(child: &Child) -> i32 {
        i32::try_from(child.id()).expect("pid fits i32")
    }

    #[test]
    fn open_signal_kill_and_reap() {
        let mut child = sleeper();
        let pid = pid_of(&child);
        let process = Process::open(pid).expect("open");
        assert_eq!(process.pid(), pid);
        assert!(process.start_time() > 0);
        process.signal(0).expect("signal 0");
        assert!(process.is_alive());
        assert!(process.same_process_at_proc());
        assert_eq!(process.threads().expect("threads"), [pid]);
        assert_eq!(
            process.parent_pid().expect("ppid"),
            i32::try_from(std::process::id()).expect("pid")
        );
        let ns = process.ns_pid().expect("NSpid");
        assert_eq!(ns.first(), Some(&pid));
        let own_ns = fs::metadata("/proc/self/ns/pid").expect("own ns").ino();
        assert_eq!(process.pid_namespace_inode().expect("ns inode"), own_ns);

        let clone = process.try_clone().expect("clone");
        assert_eq!(clone.pid(), pid);
        assert_eq!(clone.start_time(), process.start_time());

        process.signal(libc::SIGKILL).expect("SIGKILL");
        // The pidfd turns readable when the process has exited: a zombie now.
        assert!(
            crate::poll::poll_readable(process.pidfd(), Duration::from_secs(10)).expect("poll")
        );
        assert!(!process.is_alive(), "a zombie is not alive");
        process.signal(0).expect("a zombie still holds its pid");

        let status = child.wait().expect("reap");
        assert!(!status.success());
        assert!(!process.is_alive());
        assert!(!clone.is_alive());
        let gone = process.signal(0).expect_err("reaped");
        assert_eq!(gone.raw_os_error(), Some(libc::ESRCH));
        assert_eq!(
            process
                .signal(libc::SIGTERM)
                .expect_err("reaped")
                .raw_os_error(),
            Some(libc::ESRCH)
        );
        assert_eq!(
            process.threads().expect_err("reaped").raw_os_error(),
            Some(libc::ESRCH)
        );
    }

    #[test]
    fn open_of_a_missing_pid_fails_with_esrch() {
        // pid_max itself is never allocated (pids run up to pid_max - 1).
        let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("pid_max")
            .trim()
            .parse()
            .expect("number");
        let err = Process::open(pid_max).expect_err("no such pid");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        for bad in [0, -1, i32::MIN] {
            let err = Process::open(bad).expect_err("invalid pid");
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        }
    }

    #[test]
    fn kill_by_pid() {
        let mut child = sleeper();
        let pid = pid_of(&child);
        kill(pid, 0).expect("exists");
        kill(pid, libc::SIGKILL).expect("kill");
        child.wait().expect("reap");
        assert_eq!(
            kill(pid, 0).expect_err("reaped").raw_os_error(),
            Some(libc::ESRCH)
        );
        assert_eq!(
            kill(-1, 0).expect_err("broadcast").raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            kill(i32::MIN, 0).expect_err("no group").raw_os_error(),
            Some(libc::EINVAL)
        );
        // Our own process group exists.
        kill(0, 0).expect("own group");
    }

    #[test]
    fn signal_numbers() {
        assert!(to_signal(0).expect("0").is_none());
        assert_eq!(
            to_signal(libc::SIGKILL).expect("named").map(Signal::as_raw),
            Some(libc::SIGKILL)
        );
        let rt = libc::SIGRTMIN() + 1;
        assert_eq!(to_signal(rt).expect("rt").map(Signal::as_raw), Some(rt));
        for bad in [-1, libc::SIGRTMAX() + 1, 1000] {
            assert_eq!(
                to_signal(bad).expect_err("bad").raw_os_error(),
                Some(libc::EINVAL)
            );
        }
    }

    #[test]
    fn stat_parsing_survives_hostile_comm() {
        let tail = "S 1 2 3 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        for comm in ["sleep", "a b", "x) y", ") R 9 9 (", "(()", ""] {
            let line = format!("4242 ({comm}) {tail} 18446744073709551615 1 1\n");
            assert_eq!(
                parse_stat(&line),
                Some(Stat {
                    state: 'S',
                    ppid: 1,
                    start_time: 987654
                }),
                "comm {comm:?}"
            );
        }
        let zombie = "7 (w) Z 3 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(
            parse_stat(zombie).map(|s| (s.state, s.start_time)),
            Some(('Z', 55))
        );
        assert_eq!(parse_stat("7 (w) S 3"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(
            parse_stat("7 (w) SS 3 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55"),
            None
        );
    }

    #[test]
    fn own_stat_parses() {
        let stat = read_stat(i32::try_from(std::process::id()).expect("pid")).expect("stat");
        assert!(matches!(stat.state, 'R' | 'S'));
        assert!(stat.start_time > 0);
    }

    #[test]
    fn ns_pid_parsing() {
        let status = "Name:\tsleep\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\n\
                      NStgid:\t4242\t17\t1\nNSpid:\t4242\t17\t1\nNSpgid:\t4242\t17\t1\n";
        assert_eq!(parse_ns_pid(status), Some(vec![4242, 17, 1]));
        assert_eq!(parse_ns_pid("Pid:\t1\nNSpid:\t1\n"), Some(vec![1]));
        assert_eq!(parse_ns_pid("Pid:\t1\n"), None);
        assert_eq!(parse_ns_pid("NSpid:\t1\tx\n"), None);
        assert_eq!(parse_ns_pid("NSpid:\n"), None);
    }

    #[test]
    fn a_keeper_holds_a_descriptor_until_the_watched_process_exits() {
        use std::io::Read;
        let (mut read_end, write_end) = std::io::pipe().expect("pipe");
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .expect("sleep");
        let watched = Process::open(child.id() as i32).expect("pidfd");
        let keeper = spawn_fd_keeper(&[write_end.as_fd()], watched.pidfd()).expect("keeper");
        drop(write_end);
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        // EOF only once the keeper let go of the write end.
        read_end.read_to_end(&mut rest).expect("read");
        assert!(started.elapsed() >= std::time::Duration::from_millis(200));
        child.wait().expect("wait sleep");
        let keeper = Process::open(keeper).expect("keeper pidfd");
        let _ = rustix::process::waitpid(
            Some(Pid::from_raw(keeper.pid()).expect("pid")),
            rustix::process::WaitOptions::empty(),
        );
    }
}
