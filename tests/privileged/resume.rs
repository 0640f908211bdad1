//! Resuming a migrated workload (`pagehop-workload --resume`) through the
//! uffd handoff (`pagehop::dest::handoff`) and the installer (`pagehop::dest::install`).
//!
//! The source side is faked: a normal workload runs for a second, is frozen
//! with SIGSTOP at whatever instant, and its arena is read out of
//! /proc/PID/mem before it is killed. The destination is a real
//! `pagehop-workload --resume`, whose uffd arrives over the handoff socket and
//! through which every page of the copy is installed.
use std::io::{BufRead, BufReader, Read, Write};
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pagehop::dest::handoff::{self, Handoff, HandoffError, HandoffListener};
use pagehop::dest::install::{InstallError, Installer};
use pagehop_workload::Layout;
use pagehop_workload::arena::{Header, ThreadSlot};

use crate::common::{TempDir, Workload, require_root, workload_bin};

const SIZE_MIB: usize = 16;
const THREADS: usize = 2;
const REPORT_MS: u64 = 200;
const WAIT: Duration = Duration::from_secs(10);

/// Options of the source and the resumed run; only the write rate may differ.
fn shape_args(seed: &str, write_mbps: &str) -> Vec<String> {
    [
        "--size-mib",
        &SIZE_MIB.to_string(),
        "--threads",
        &THREADS.to_string(),
        "--arena-addr",
        "0x610000000000",
        "--seed",
        seed,
        "--pattern",
        "skew",
        "--write-mbps",
        write_mbps,
        "--report-ms",
        &REPORT_MS.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

fn field_u64(line: &str, name: &str) -> u64 {
    field(line, name)
        .parse()
        .unwrap_or_else(|e| panic!("{name} in {line:?}: {e}"))
}

/// The arena of a frozen source: its start address and its bytes.
struct Snapshot {
    start: u64,
    bytes: Vec<u8>,
    /// `pages_total` of the source's last heartbeat.
    last_pages_total: u64,
}

impl Snapshot {
    fn page_size() -> usize {
        pagehop::sys::page_size()
    }

    fn layout() -> Layout {
        Layout::new(SIZE_MIB << 20, Self::page_size(), THREADS).expect("layout")
    }

    /// Pages in flight in the thread slots of the copied header.
    fn in_flight(&self) -> Vec<u64> {
        (0..THREADS)
            .filter_map(|t| {
                let at = offset_of!(Header, slots)
                    + t * size_of::<ThreadSlot>()
                    + offset_of!(ThreadSlot, in_flight);
                let word = u64::from_ne_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"));
                word.checked_sub(1)
            })
            .collect()
    }

    /// One batch entry per page: data, or `None` for an all-zero page.
    fn batch(&self) -> Vec<(u64, Option<&[u8]>)> {
        let ps = Self::page_size();
        self.bytes
            .chunks(ps)
            .enumerate()
            .map(|(i, page)| {
                let addr = self.start + (i * ps) as u64;
                (addr, page.iter().any(|&b| b != 0).then_some(page))
            })
            .collect()
    }
}

/// States of every thread of `pid` (the letter after the command in stat).
fn thread_states(pid: i32) -> Vec<char> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
        .collect()
}

/// Runs a workload writing at `write_mbps` for about a second, freezes it at
/// whatever instant, copies its arena and kills it.
fn fake_source(write_mbps: &str) -> Snapshot {
    let w = Workload::spawn(
        &shape_args("7", write_mbps)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_millis(1000);
    let mut last_pages_total = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match w.lines.recv_timeout(left) {
            Ok(line) if line.starts_with("heartbeat ") => {
                last_pages_total = field_u64(&line, "pages_total=");
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(last_pages_total > 0, "the source wrote nothing in a second");
    w.signal(libc::SIGSTOP);
    let deadline = Instant::now() + WAIT;
    while !thread_states(w.pid).iter().all(|&s| s == 'T') {
        assert!(Instant::now() < deadline, "source {} did not stop", w.pid);
        std::thread::sleep(Duration::from_millis(1));
    }
    let (start, end) = w.arena;
    assert_eq!(end - start, Snapshot::layout().size() as u64, "arena size");
    let mem = std::fs::File::open(format!("/proc/{}/mem", w.pid)).expect("open source mem");
    let mut bytes = vec![0u8; (end - start) as usize];
    mem.read_exact_at(&mut bytes, start)
        .expect("read the source's arena");
    drop(w); // SIGKILL and reap
    Snapshot {
        start,
        bytes,
        last_pages_total,
    }
}

/// A `pagehop-workload --resume` run, killed and reaped on drop.
struct Resumed {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    stderr: Option<ChildStderr>,
}

impl Resumed {
    fn spawn(socket: &std::path::Path, seed: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(workload_bin())
            .args(shape_args(seed, "40"))
            .arg("--resume")
            .args(extra)
            .env(handoff::SOCKET_ENV, socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pagehop-workload --resume");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take();
        Self {
            child,
            lines: rx,
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next stdout line, with the time it was read.
    fn next_line(&self, what: &str) -> (Instant, String) {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no {what} line from the resumed workload: {e}"))
    }

    /// The stdout lines not read yet, up to the end of the output.
    fn remaining_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok((_, line)) = self.lines.recv_timeout(WAIT) {
            lines.push(line);
        }
        lines
    }

    /// Waits for the process to exit; returns its status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "resumed workload did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut err = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Resumed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Binds a listener, starts the resumed workload and takes its uffd.
fn start_resume(dir: &TempDir, seed: &str, extra: &[&str]) -> (Resumed, Handoff) {
    let listener = HandoffListener::bind(dir.path("uffd.sock")).expect("bind handoff socket");
    let resumed = Resumed::spawn(listener.path(), seed, extra);
    let handoff = listener
        .accept_uffd(WAIT)
        .expect("accept the resumed workload's uffd");
    assert_eq!(handoff.pid, resumed.pid(), "pid sent over the handoff");
    let (_, line) = resumed.next_line("resume");
    assert!(line.starts_with("resume "), "first line: {line:?}");
    assert_eq!(field(&line, "pid="), resumed.pid().to_string(), "{line}");
    (resumed, handoff)
}

fn installer(handoff: &Handoff) -> Installer {
    Installer::new(handoff.uffd.try_clone().expect("dup uffd"))
}

#[test]
#[ignore = "needs root"]
fn resumed_workload_checks_its_arena_and_carries_on() {
    require_root();
    // Unthrottled writers are nearly always in the middle of a page when
    // frozen: the resume must finish those writes.
    let snapshot = fake_source("max");
    eprintln!("pages in flight at the freeze: {:?}", snapshot.in_flight());
    let dir = TempDir::new("resume-ok");
    let (mut resumed, mut handoff) = start_resume(&dir, "7", &["--check-on-exit"]);

    let installer = installer(&handoff);
    let batch = snapshot.batch();
    let stats = installer.copy_batch(&batch).expect("install every page");
    let pages = Snapshot::layout().total_pages;
    assert_eq!(stats.pages(), pages, "{stats:?}");
    assert!(
        stats.copy_runs + stats.zero_runs < pages / 8,
        "contiguous pages were not merged: {stats:?}"
    );
    // Installing twice is refused, not overwritten.
    let err = installer
        .copy_batch(&batch[..1])
        .expect_err("header already present");
    assert!(
        matches!(err, InstallError::AlreadyPresent { addr } if addr == snapshot.start),
        "{err}"
    );

    let (resumed_at, line) = resumed.next_line("resumed");
    assert_eq!(line, format!("resumed invariant=ok pages={pages}"));
    handoff
        .wait_restore_finished(WAIT)
        .expect("restore-finished marker");

    // Heartbeats go on from the source's counters, the first within a period.
    let mut totals = Vec::new();
    let mut first_gap = None;
    while totals.len() < 4 {
        let (at, line) = resumed.next_line("heartbeat");
        if line.starts_with("heartbeat ") {
            first_gap.get_or_insert(at - resumed_at);
            totals.push(field_u64(&line, "pages_total="));
            assert!(field_u64(&line, "pages_per_sec=") > 0, "{line}");
        }
    }
    let first_gap = first_gap.expect("a heartbeat");
    assert!(
        first_gap < Duration::from_millis(REPORT_MS * 3 / 2 + 100),
        "first heartbeat {first_gap:?} after resume (period {REPORT_MS} ms)"
    );
    assert!(
        totals[0] >= snapshot.last_pages_total,
        "pages_total restarted: {totals:?} after the source's {}",
        snapshot.last_pages_total
    );
    assert!(totals.windows(2).all(|w| w[0] < w[1]), "{totals:?}");

    // SIGTERM: the writes since the resume keep the invariants too.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(resumed.pid(), libc::SIGTERM) };
    let (status, stderr) = resumed.wait();
    assert!(
        status.success(),
        "resumed workload failed: {status}: {stderr}"
    );
    let rest = resumed.remaining_lines();
    let exit = rest
        .iter()
        .find(|l| l.starts_with("exit "))
        .unwrap_or_else(|| panic!("no exit line in {rest:?}"));
    assert!(exit.ends_with("invariant=ok"), "{exit}");
}

#[test]
#[ignore = "needs root"]
fn resumed_workload_detects_a_corrupted_page() {
    require_root();
    let mut snapshot = fake_source("40");
    let layout = Snapshot::layout();
    let ps = Snapshot::page_size();
    // A data page that no writer was in the middle of (those are rewritten).
    let in_flight = snapshot.in_flight();
    let index = (layout.data_pages / 2..)
        .find(|i| !in_flight.contains(i))
        .expect("a page");
    let offset = layout.data_offset() + index as usize * ps;
    snapshot.bytes[offset + 123] ^= 0x20;

    let dir = TempDir::new("resume-bad");
    let (mut resumed, mut handoff) = start_resume(&dir, "7", &[]);
    installer(&handoff)
        .copy_batch(&snapshot.batch())
        .expect("install every page");
    let (_, line) = resumed.next_line("resumed");
    let bad = snapshot.start + offset as u64;
    assert_eq!(line, format!("resumed invariant=bad page={bad:x}"));
    let (status, stderr) = resumed.wait();
    assert_eq!(status.code(), Some(1), "exit status {status}: {stderr}");
    let err = handoff
        .wait_restore_finished(WAIT)
        .expect_err("no restore-finished after a bad check");
    assert!(matches!(err, HandoffError::PeerClosed { .. }), "{err}");
}

#[test]
#[ignore = "needs root"]
fn resume_refuses_options_that_differ_from_the_source() {
    require_root();
    let snapshot = fake_source("40");
    let dir = TempDir::new("resume-mismatch");
    // Same arena size and address, another seed: the header says otherwise.
    let (mut resumed, handoff) = start_resume(&dir, "8", &[]);
    let installer = installer(&handoff);
    // Only the header is needed to find out.
    installer
        .copy(snapshot.start, &snapshot.bytes[..Snapshot::page_size()])
        .expect("install the header");
    let (status, stderr) = resumed.wait();
    assert!(!status.success(), "resumed with the wrong seed");
    assert!(
        stderr.contains("seed 7, this run has 8"),
        "unclear error: {stderr}"
    );
}

/// No root needed: only a Unix socket, no userfaultfd.
#[test]
fn handoff_reports_a_client_that_sends_no_fd() {
    let dir = TempDir::new("resume-nofd");
    let listener = HandoffListener::bind(dir.path("uffd.sock")).expect("bind");

    // Connects and closes at once.
    drop(UnixStream::connect(listener.path()).expect("connect"));
    let err = listener.accept_uffd(WAIT).expect_err("nothing sent");
    assert!(matches!(err, HandoffError::PeerClosed { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "peer closed the connection before sending the pid (0 of 4 bytes received)"
    );

    // Sends its pid, then closes without the descriptor.
    let mut stream = UnixStream::connect(listener.path()).expect("connect");
    stream
        .write_all(&std::process::id().to_ne_bytes())
        .expect("pid");
    drop(stream);
    let err = listener.accept_uffd(WAIT).expect_err("no fd");
    assert_eq!(
        err.to_string(),
        "peer closed the connection before sending the userfaultfd (0 of 1 bytes received)"
    );

    // Sends pid and a byte, but no descriptor with it.
    let mut stream = UnixStream::connect(listener.path()).expect("connect");
    stream.write_all(&42i32.to_ne_bytes()).expect("pid");
    stream.write_all(&[0]).expect("byte");
    let err = listener.accept_uffd(WAIT).expect_err("no fd");
    assert!(matches!(err, HandoffError::NoFd { pid: 42 }), "{err}");
    assert_eq!(
        err.to_string(),
        "process 42 sent data without a file descriptor where its userfaultfd was expected"
    );
}

/// A handoff that names another process, or comes from a process the
/// restore command did not start, is refused before anything is done to
/// the named pid (it would be stopped, read and, on failure, killed).
#[test]
#[ignore = "needs root"]
fn a_foreign_pid_over_the_handoff_socket_is_refused() {
    use pagehop::dest::restore::{RestoreCommand, RestoreError};
    require_root();
    let dir = TempDir::new("resume-foreign");
    // The test's own userfaultfd: the pid is checked before it is used.
    let fd = pagehop::sys::uffd::userfaultfd(libc::O_CLOEXEC).expect("a userfaultfd");
    for (claimed, expected) in [
        (1, "names process 1, but came from process"),
        (
            std::process::id() as i32,
            "was not started by the restore command",
        ),
    ] {
        let cmd = RestoreCommand {
            cmd: "sleep 10".to_string(),
            socket_path: dir.path(&format!("uffd-{claimed}.sock")),
            timeout: WAIT,
        };
        let socket = cmd.socket_path.clone();
        let fd = fd.try_clone().expect("dup");
        // This test process plays the intruder: it is nobody's child here.
        let intruder = std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while !socket.exists() {
                assert!(Instant::now() < deadline, "no handoff socket");
                std::thread::sleep(Duration::from_millis(10));
            }
            handoff::send_uffd(&socket, claimed, std::os::fd::AsFd::as_fd(&fd))
        });
        let err = match cmd.start() {
            Ok(_) => panic!("a handoff naming {claimed} was taken"),
            Err(e) => e,
        };
        let _ = intruder.join().expect("intruder");
        assert!(
            matches!(
                err,
                RestoreError::ForeignPid { .. } | RestoreError::NotStartedByUs { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(expected), "{err}");
    }
    // pid 1 was named, and is untouched (not stopped).
    assert_ne!(crate::common::process_state(1), Some('T'));
}
