//! Syscall injection and taking a userfaultfd out of processes pagehop did not
//! start (`pagehop::source::inject`), and driving the taken uffd from outside.
//!
//! Needs root (ptrace of arbitrary processes, /proc/PID/syscall), except the
//! refusals that `Target::validate` makes from world-readable /proc files
//! before any ptrace, and the error messages: those run without. Targets are
//! ordinary child processes (`sleep`, `cat`, `bash`, `python3`); being our
//! children gives no shortcut: the injector seizes them like any process.
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pagehop::source::inject::*;
use pagehop::source::target::TargetError;
use pagehop::sys::uffd::*;

use crate::common::{process_state, require_root, wait_state};

/// A child process killed and reaped when dropped.
struct Target {
    child: Child,
    lines: Option<mpsc::Receiver<String>>,
}

impl Target {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Target { child, lines }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn next_line(&self, timeout: Duration) -> String {
        let rx = self.lines.as_ref().expect("target has no piped stdout");
        rx.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "no output from target {} within {timeout:?}: {e}",
                self.pid()
            )
        })
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child
            .stdin
            .as_mut()
            .expect("target has no piped stdin")
    }

    /// Asserts the child has not exited.
    fn assert_alive(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => panic!("target {} exited: {status}", self.pid()),
            Err(e) => panic!("waiting for target {}: {e}", self.pid()),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn sleep_target(secs: &str) -> Target {
    let t = Target::spawn(Command::new("sleep").arg(secs));
    wait_in_syscall(t.pid(), &[libc::SYS_clock_nanosleep, libc::SYS_nanosleep]);
    t
}

/// Waits until `pid` is blocked in one of `nrs` (per /proc/PID/syscall).
fn wait_in_syscall(pid: i32, nrs: &[i64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let nr = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        if nr.is_some_and(|nr| nrs.contains(&nr)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "target {pid} never blocked in syscalls {nrs:?} (last: {text:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// User plus system CPU ticks of the whole process.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn assert_no_uffd_in(pid: i32) {
    let fds = fd_targets(pid);
    assert!(
        !fds.iter().any(|f| f.contains("userfaultfd")),
        "target {pid} still holds a userfaultfd: {fds:?}"
    );
}

fn assert_is_uffd(fd: &impl AsRawFd) {
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink own fd");
    assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
}

/// The largest private anonymous writable mapping of `pid` of at least
/// `min_len` bytes.
fn anon_rw_range(pid: i32, min_len: u64) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("reading maps");
    maps.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 5 || f[1] != "rw-p" {
                return None;
            }
            let (s, e) = f[0].split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .filter(|(s, e)| e - s >= min_len)
        .max_by_key(|(s, e)| e - s)
        .unwrap_or_else(|| panic!("no anonymous rw-p mapping of {min_len} bytes in {pid}:\n{maps}"))
}

/// Pages of `[start, end)` whose pagemap entry has the uffd-wp bit (57).
fn wp_pages(pid: i32, start: u64, end: u64) -> usize {
    use std::os::unix::fs::FileExt;
    let page = 4096u64;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("opening pagemap");
    let n = ((end - start) / page) as usize;
    let mut buf = vec![0u8; n * 8];
    pagemap
        .read_exact_at(&mut buf, start / page * 8)
        .expect("reading pagemap");
    buf.chunks_exact(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) & (1 << 57) != 0)
        .count()
}

const PY_WRITERS: &str = r#"
import sys, threading, time
buf = bytearray(48 << 20)
counts = [0] * 4
def writer(i):
    while True:
        for off in range(i * 4096, len(buf), 4 * 4096):
            buf[off] = (buf[off] + 1) & 255
        counts[i] += 1
for i in range(4):
    threading.Thread(target=writer, args=(i,), daemon=True).start()
while True:
    time.sleep(0.05)
    print(sum(counts), flush=True)
"#;

fn python_writers() -> Target {
    let t = Target::spawn(
        Command::new(python())
            .args(["-c", PY_WRITERS])
            .stdout(Stdio::piped()),
    );
    t.next_line(Duration::from_secs(10));
    t
}

/// Reads progress lines until the counter exceeds `above`.
fn wait_progress(t: &Target, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: u64 = t
            .next_line(Duration::from_secs(5))
            .trim()
            .parse()
            .expect("a counter line");
        if n > above {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "target {} made no progress past {above}",
            t.pid()
        );
    }
}

#[test]
#[ignore = "needs root"]
fn take_uffd_from_sleeping_process() {
    require_root();
    let mut t = sleep_target("30");
    let before = fd_targets(t.pid());
    let uffd = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    assert_eq!(uffd.pid, t.pid());
    assert_eq!(uffd.features, DEFAULT_UFFD_FEATURES);
    assert!(
        uffd.available & UFFD_FEATURE_WP_ASYNC != 0
            && uffd.available & UFFD_FEATURE_WP_UNPOPULATED != 0,
        "kernel offers {:#x}",
        uffd.available
    );
    assert!(
        !uffd.user_mode_only,
        "root target needs no UFFD_USER_MODE_ONLY"
    );
    assert!(uffd.ioctls & (1 << UFFDIO_REGISTER_NR) != 0);
    assert_is_uffd(&uffd.fd);
    assert_no_uffd_in(t.pid());
    assert_eq!(fd_targets(t.pid()), before, "target's descriptors changed");
    let tracer = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
    assert!(
        tracer.contains("TracerPid:\t0\n"),
        "target still traced:\n{tracer}"
    );
    wait_in_syscall(
        t.pid(),
        &[
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_restart_syscall,
        ],
    );
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn interrupted_sleep_restarts() {
    require_root();
    let started = Instant::now();
    let mut t = sleep_target("1.5");
    let uffd = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    drop(uffd);
    let status = t.child.wait().expect("waiting for sleep");
    let took = started.elapsed();
    assert!(status.success(), "sleep failed after injection: {status}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "sleep 1.5 took {took:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn blocked_read_keeps_working() {
    require_root();
    let mut t = Target::spawn(
        Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    wait_in_syscall(t.pid(), &[libc::SYS_read]);
    let uffd = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    assert_no_uffd_in(t.pid());
    writeln!(t.stdin(), "ping").expect("writing to cat");
    assert_eq!(t.next_line(Duration::from_secs(5)), "ping");
    wait_in_syscall(t.pid(), &[libc::SYS_read]);
    drop(uffd);
    drop(t.child.stdin.take());
    let status = t.child.wait().expect("waiting for cat");
    assert!(status.success(), "cat failed after injection: {status}");
}

#[test]
#[ignore = "needs root"]
fn write_protect_multithreaded_target_from_outside() {
    require_root();
    let mut t = python_writers();
    let pid = t.pid();
    let progress = wait_progress(&t, 0);
    let uffd = take_userfaultfd(pid, DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    assert_no_uffd_in(pid);
    let progress = wait_progress(&t, progress);

    let (start, end) = anon_rw_range(pid, 40 << 20);
    let len = end - start;
    let fd = uffd.as_fd();
    let ioctls =
        register(fd, start, len, UFFDIO_REGISTER_MODE_WP).expect("UFFDIO_REGISTER from outside");
    assert!(
        ioctls & (1 << UFFDIO_WRITEPROTECT_NR) != 0,
        "range ioctls {ioctls:#x}"
    );
    writeprotect(fd, start, len, true).expect("UFFDIO_WRITEPROTECT from outside");
    let protected = wp_pages(pid, start, end);
    assert!(
        protected > 0,
        "no page of {start:#x}..{end:#x} is write-protected"
    );
    // The writers touch every page in well under a second; with WP_ASYNC the
    // kernel resolves each first write by itself and clears the bit.
    let progress = wait_progress(&t, progress + 2);
    let still = wp_pages(pid, start, end);
    assert!(
        still < protected,
        "writes did not clear uffd-wp ({protected} -> {still} pages)"
    );
    writeprotect(fd, start, len, true).expect("re-protecting");
    writeprotect(fd, start, len, false).expect("unprotecting");
    assert_eq!(
        wp_pages(pid, start, end),
        0,
        "pages still protected after unprotect"
    );
    writeprotect(fd, start, len, true).expect("protecting before unregister");
    unregister(fd, start, len).expect("UFFDIO_UNREGISTER from outside");
    assert_eq!(
        wp_pages(pid, start, end),
        0,
        "pages still protected after unregister"
    );
    wait_progress(&t, progress);
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn busy_loop_target_and_repeated_injection() {
    require_root();
    let mut t = Target::spawn(Command::new("bash").args(["-c", "while :; do :; done"]));
    std::thread::sleep(Duration::from_millis(100));
    let first = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("first uffd");
    let second = take_userfaultfd(t.pid(), UFFD_FEATURE_PAGEFAULT_FLAG_WP).expect("second uffd");
    assert_eq!(second.features, UFFD_FEATURE_PAGEFAULT_FLAG_WP);
    assert_ne!(first.fd.as_raw_fd(), second.fd.as_raw_fd());
    // What the write-protect session asks for.
    let wanted = DEFAULT_UFFD_FEATURES | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    let third = take_userfaultfd(t.pid(), wanted).expect("third uffd");
    assert_eq!(third.features, wanted);
    assert_no_uffd_in(t.pid());
    let ticks = cpu_ticks(t.pid());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cpu_ticks(t.pid()) > ticks,
        "busy loop stopped running after injection"
    );
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn stopped_target_stays_stopped() {
    require_root();
    let mut t = sleep_target("30");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(t.pid(), libc::SIGSTOP) };
    wait_state(t.pid(), 'T', Duration::from_secs(10));
    let _uffd = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        process_state(t.pid()),
        Some('T'),
        "job-control stop was lost"
    );
    // SAFETY: as above.
    unsafe { libc::kill(t.pid(), libc::SIGCONT) };
    wait_state(t.pid(), 'S', Duration::from_secs(10));
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn signal_during_injection_is_delivered_after() {
    require_root();
    let script = r#"
import signal, time
n = [0]
def on_usr1(sig, frame):
    n[0] += 1
    print("usr1", n[0], flush=True)
signal.signal(signal.SIGUSR1, on_usr1)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"#;
    let mut t = Target::spawn(
        Command::new(python())
            .args(["-c", script])
            .stdout(Stdio::piped()),
    );
    assert_eq!(t.next_line(Duration::from_secs(10)), "ready");
    let mut inj = Injector::seize(t.pid()).expect("seizing");
    // Queued while the thread is in its interrupt trap: it is taken on the
    // way to the injected syscall, so the injector has to hold it back.
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(t.pid(), libc::SIGUSR1) };
    let got = inj
        .syscall(libc::SYS_getpid, [0; 6])
        .expect("injected getpid");
    assert_eq!(got, t.pid() as i64);
    assert_eq!(inj.held_signals(), &[libc::SIGUSR1]);
    inj.detach().expect("detaching");
    assert_eq!(t.next_line(Duration::from_secs(5)), "usr1 1");
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn injected_syscalls_and_scratch_memory() {
    require_root();
    let mut t = sleep_target("30");
    let pid = t.pid();
    let mut inj = Injector::seize(pid).expect("seizing");
    assert_eq!(inj.tid(), pid);
    let regs = inj.saved_regs();
    // Interrupted inside clock_nanosleep: the restart state is what detach puts back.
    assert_eq!(regs.orig_rax as i64, libc::SYS_clock_nanosleep);
    assert!(
        [-512, -513, -514, -516].contains(&(regs.rax as i64))
            || regs.rax as i64 == -(libc::EINTR as i64),
        "rax {} is not a restart code",
        regs.rax as i64
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let vdso = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .expect("target has a vdso");
    let (lo, hi) = vdso
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let (lo, hi) = (
        u64::from_str_radix(lo, 16).unwrap(),
        u64::from_str_radix(hi, 16).unwrap(),
    );
    assert!(
        (lo..hi).contains(&inj.syscall_insn()),
        "syscall instruction not taken from [vdso]"
    );
    assert_eq!(
        inj.read_memory(inj.syscall_insn(), 2).unwrap(),
        [0x0f, 0x05]
    );

    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    assert_eq!(
        inj.syscall(libc::SYS_close, [999_999, 0, 0, 0, 0, 0])
            .unwrap(),
        -(libc::EBADF as i64)
    );
    match inj.syscall_checked("close", libc::SYS_close, [999_999, 0, 0, 0, 0, 0]) {
        Err(InjectError::RemoteSyscall {
            name: "close",
            source,
            ..
        }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBADF))
        }
        other => panic!("expected RemoteSyscall, got {other:?}"),
    }

    // uname(2) into scratch space on the target's stack.
    let below = regs.rsp - 128 - 1024;
    let original = inj.read_memory(below, 1024).unwrap();
    let utsname = std::mem::size_of::<libc::utsname>();
    let addr = inj.scratch(&vec![0u8; utsname]).expect("scratch");
    assert!(
        addr + utsname as u64 <= regs.rsp - 128 && addr.is_multiple_of(16),
        "scratch at {addr:#x}, rsp {:#x}",
        regs.rsp
    );
    assert_eq!(
        inj.syscall(libc::SYS_uname, [addr, 0, 0, 0, 0, 0]).unwrap(),
        0
    );
    let sysname = inj.read_memory(addr, 5).unwrap();
    assert_eq!(sysname, b"Linux");
    let path = inj.scratch(b"/proc/self/status\0").expect("scratch path");
    assert_eq!(
        inj.syscall(libc::SYS_access, [path, libc::F_OK as u64, 0, 0, 0, 0])
            .unwrap(),
        0
    );
    inj.detach().expect("detaching");

    // The stack below the red zone is as it was.
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut after = vec![0u8; 1024];
    mem.read_exact_at(&mut after, below).unwrap();
    assert_eq!(after, original, "scratch bytes were not put back");
    wait_in_syscall(pid, &[libc::SYS_clock_nanosleep, libc::SYS_restart_syscall]);
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn unprivileged_target_gets_user_mode_only_uffd() {
    require_root();
    let strict = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    let mut t = Target::spawn(Command::new("sleep").arg("30").uid(65534).gid(65534));
    wait_in_syscall(t.pid(), &[libc::SYS_clock_nanosleep, libc::SYS_nanosleep]);
    let uffd = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    assert_eq!(uffd.user_mode_only, strict);
    assert_is_uffd(&uffd.fd);
    assert_no_uffd_in(t.pid());
    t.assert_alive();
}

/// No root needed: refused before any ptrace.
#[test]
fn rejects_nonexistent_process() {
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("reading pid_max")
        .trim()
        .parse()
        .unwrap();
    let err = take_userfaultfd(pid_max + 1, DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(err, InjectError::Target(TargetError::NoSuchProcess { .. })),
        "got {err:?}"
    );
    let err = take_userfaultfd(0, DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(err, InjectError::Target(TargetError::NoSuchProcess { .. })),
        "got {err:?}"
    );
}

/// No root needed: refused before any ptrace.
#[test]
fn rejects_kernel_thread() {
    let err = take_userfaultfd(2, DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(
            err,
            InjectError::Target(TargetError::KernelThread { pid: 2, .. })
        ),
        "got {err:?}"
    );
}

/// No root needed: refused before any ptrace.
#[test]
fn rejects_own_process() {
    let pid = std::process::id() as i32;
    let err = take_userfaultfd(pid, DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(err, InjectError::Target(TargetError::IsSelf { .. })),
        "got {err:?}"
    );
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let err = take_userfaultfd(tid, DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(err, InjectError::Target(TargetError::IsSelf { .. })),
        "got {err:?}"
    );
}

/// No root needed: refused before any ptrace.
#[test]
fn rejects_zombie() {
    let t = Target::spawn(&mut Command::new("true"));
    wait_state(t.pid(), 'Z', Duration::from_secs(10));
    let err = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(err, InjectError::Target(TargetError::Zombie { .. })),
        "got {err:?}"
    );
}

/// No root needed: refused before any ptrace.
#[test]
fn rejects_thread_id() {
    let t = python_writers();
    let tid = std::fs::read_dir(format!("/proc/{}/task", t.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&tid| tid != t.pid())
        .expect("python target has threads");
    let err = take_userfaultfd(tid, DEFAULT_UFFD_FEATURES).unwrap_err();
    assert!(
        matches!(err, InjectError::Target(TargetError::NotAProcess { tgid, .. }) if tgid == t.pid()),
        "got {err:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn rejects_already_traced() {
    require_root();
    let mut t = sleep_target("30");
    let inj = Injector::seize(t.pid()).expect("seizing");
    let err = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).unwrap_err();
    // TracerPid names the tracing thread.
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    assert!(
        matches!(err, InjectError::Target(TargetError::AlreadyTraced { tracer, .. }) if tracer == me),
        "got {err:?}"
    );
    drop(inj);
    take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES)
        .expect("taking the uffd after the first tracer left");
    t.assert_alive();
}

#[test]
fn error_messages_are_distinct() {
    let comm = || "sleep".to_string();
    let target_errors = [
        TargetError::NoSuchProcess { pid: 7 },
        TargetError::IsSelf { pid: 7 },
        TargetError::KernelThread {
            pid: 7,
            comm: comm(),
        },
        TargetError::Zombie {
            pid: 7,
            comm: comm(),
        },
        TargetError::LeaderExited {
            pid: 7,
            comm: comm(),
        },
        TargetError::NotAProcess { pid: 7, tgid: 8 },
        TargetError::AlreadyTraced { pid: 7, tracer: 8 },
        TargetError::PermissionDenied { pid: 7 },
    ];
    let seize_refused = InjectError::PermissionDenied {
        pid: 7,
        source: std::io::Error::from_raw_os_error(libc::EPERM),
    };
    let msgs: Vec<String> = target_errors
        .into_iter()
        .map(InjectError::from)
        .chain([seize_refused])
        .map(|e| e.to_string())
        .collect();
    for (i, a) in msgs.iter().enumerate() {
        assert!(
            msgs[i + 1..].iter().all(|b| a != b),
            "duplicate message {a:?}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn unsupported_feature_is_reported_and_target_left_clean() {
    require_root();
    let mut t = sleep_target("30");
    let bogus = DEFAULT_UFFD_FEATURES | 1 << 62;
    let err = take_userfaultfd(t.pid(), bogus).unwrap_err();
    assert!(
        matches!(err, InjectError::UnsupportedFeatures { missing, .. } if missing == 1 << 62),
        "got {err:?}"
    );
    assert_no_uffd_in(t.pid());
    wait_in_syscall(
        t.pid(),
        &[libc::SYS_clock_nanosleep, libc::SYS_restart_syscall],
    );
    t.assert_alive();
}

#[test]
#[ignore = "needs root"]
fn leader_exited_but_threads_live() {
    require_root();
    // The main thread leaves with pthread_exit (ctypes drops the GIL for the
    // call); the worker keeps the process alive and printing.
    let script = r#"
import ctypes, threading, time
def worker():
    n = 0
    while True:
        n += 1
        print(n, flush=True)
        time.sleep(0.02)
threading.Thread(target=worker).start()
ctypes.CDLL(None).pthread_exit(None)
"#;
    let mut t = Target::spawn(
        Command::new(python())
            .args(["-c", script])
            .stdout(Stdio::piped()),
    );
    wait_state(t.pid(), 'Z', Duration::from_secs(10));
    let progress = wait_progress(&t, 0);
    let uffd = take_userfaultfd(t.pid(), DEFAULT_UFFD_FEATURES).expect("taking the uffd");
    assert_is_uffd(&uffd.fd);
    let worker = std::fs::read_dir(format!("/proc/{}/task", t.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&tid| tid != t.pid())
        .expect("worker thread");
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/task/{worker}/fd", t.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        !fds.iter().any(|f| f.contains("userfaultfd")),
        "worker still holds a uffd: {fds:?}"
    );
    wait_progress(&t, progress);
    t.assert_alive();
}
