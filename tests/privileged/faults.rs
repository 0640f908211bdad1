//! The post-copy fault loop (`pagehop::dest::faults`) against a real process.
//!
//! Each test forks a child of the test binary. The child maps anonymous
//! regions at fixed addresses, creates a userfaultfd with
//! `faults::FEATURES`, registers the regions in MISSING mode, hands the uffd
//! over with the CRIU-convention handoff, and then touches its memory and
//! checks what it reads (a per-page pattern, or zeroes). The parent serves
//! it with a `FaultLoop` whose `PageSource` answers every request from a
//! worker thread after a delay, as a network would.
use pagehop::mem::SpaceKey;
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use pagehop::dest::faults::{FaultError, FaultLoop, PageSource, Waker};
use pagehop::dest::handoff::{self, HandoffListener};
use pagehop::sys::uffd;

use crate::common::{TempDir, require_root};

/// The main region of every child.
const BASE: u64 = 0x6300_0000_0000;
/// A region whose requests the source never answers.
const HELD: u64 = 0x6310_0000_0000;
/// Simulated network delay of each answer.
const DELAY: Duration = Duration::from_millis(1);
/// A test that takes longer than this has hung.
const DEADLINE: Duration = Duration::from_secs(3);

fn ps() -> u64 {
    pagehop::sys::page_size() as u64
}

/// The content of the source page at `addr`: every u64 word is a function
/// of the address and the word's index.
fn pattern(addr: u64) -> Vec<u8> {
    (0..ps() / 8)
        .flat_map(|k| (addr.wrapping_mul(0x9E37_79B9) ^ k).to_le_bytes())
        .collect()
}

/// Reads the page at `addr` of this process and compares it with `want`
/// (`None`: zeroes).
fn check_page(addr: u64, want: Option<&[u8]>) -> Result<(), String> {
    let len = ps() as usize;
    // SAFETY: `addr` is a page of a region the child mapped; reading it may
    // block on a userfaultfd fault, which the parent serves.
    let got = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
    let ok = match want {
        Some(want) => got == want,
        None => got.iter().all(|&b| b == 0),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "page {addr:#x}: first word {:#x}, want {}",
            u64::from_le_bytes(got[..8].try_into().expect("8 bytes")),
            if want.is_some() {
                "the pattern"
            } else {
                "zeroes"
            }
        ))
    }
}

/// Maps `pages` anonymous pages at `addr` in this process.
fn map_fixed(addr: u64, pages: u64) {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            (pages * ps()) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr, "mmap at {addr:#x}");
}

/// A forked child of the test, killed and reaped on drop if still running.
struct Child {
    pid: i32,
    status: Option<i32>,
}

impl Child {
    /// Forks a child that maps and registers `regions` (start, pages), hands
    /// its uffd to `socket`, and runs `body`; it exits 0 when `body` returns
    /// `Ok`, 1 (after printing the reason) otherwise.
    fn spawn(
        socket: &std::path::Path,
        regions: &[(u64, u64)],
        body: impl FnOnce() -> Result<(), String>,
    ) -> Self {
        // SAFETY: the child only runs `child_main`, which ends in `_exit`; it
        // never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child_main(socket, regions, body)
            }));
            let code = match result {
                Ok(Ok(())) => 0,
                Ok(Err(reason)) => {
                    eprintln!("child: {reason}");
                    1
                }
                Err(_) => 2,
            };
            // SAFETY: _exit ends this forked child without running the
            // parent's destructors or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        Self { pid, status: None }
    }

    /// The exit code once the child has exited (panics if it was killed by a signal).
    fn try_wait(&mut self) -> Option<i32> {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waitpid writes the status of our own child into `status`.
            let ret = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            assert!(ret >= 0, "waitpid: {}", std::io::Error::last_os_error());
            if ret == self.pid {
                assert!(
                    libc::WIFEXITED(status),
                    "child killed by signal {}",
                    libc::WTERMSIG(status)
                );
                self.status = Some(libc::WEXITSTATUS(status));
            }
        }
        self.status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SAFETY: kill and waitpid act on our own child only.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn child_main(
    socket: &std::path::Path,
    regions: &[(u64, u64)],
    body: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    for &(start, pages) in regions {
        map_fixed(start, pages);
    }
    let fd = uffd::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .map_err(|e| format!("userfaultfd: {e}"))?;
    uffd::api(fd.as_fd(), pagehop::dest::faults::FEATURES)
        .map_err(|e| format!("UFFDIO_API: {e}"))?;
    for &(start, pages) in regions {
        uffd::register(
            fd.as_fd(),
            start,
            pages * ps(),
            uffd::UFFDIO_REGISTER_MODE_MISSING,
        )
        .map_err(|e| format!("register {start:#x}: {e}"))?;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let _stream = handoff::send_uffd(socket, pid, fd.as_fd()).map_err(|e| format!("{e}"))?;
    body()
}

/// A source that answers each request from a worker thread after [`DELAY`],
/// except requests inside the `held` range, which it only logs.
struct TestSource {
    requests: Vec<(u64, u32)>,
    to_worker: mpsc::Sender<(Instant, u64, u32)>,
    held: std::ops::Range<u64>,
}

impl PageSource for TestSource {
    fn request(&mut self, _space: SpaceKey, addr: u64, pages: u32) -> Result<(), FaultError> {
        self.requests.push((addr, pages));
        if self.held.contains(&addr) {
            return Ok(());
        }
        self.to_worker
            .send((Instant::now() + DELAY, addr, pages))
            .map_err(|e| FaultError::Source {
                addr,
                pages,
                source: e.to_string().into(),
            })
    }
}

impl TestSource {
    /// The source and the receiver of its answers (address, pages of data).
    fn start(waker: Waker, held: std::ops::Range<u64>) -> (Self, mpsc::Receiver<(u64, Vec<u8>)>) {
        let (to_worker, requests) = mpsc::channel::<(Instant, u64, u32)>();
        let (answers, from_worker) = mpsc::channel();
        std::thread::spawn(move || {
            // Requests arrive in order and all wait the same delay, so
            // answering them in arrival order keeps every deadline.
            for (due, addr, pages) in requests {
                if let Some(left) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(left);
                }
                let data: Vec<u8> = (0..pages as u64)
                    .flat_map(|i| pattern(addr + i * ps()))
                    .collect();
                if answers.send((addr, data)).is_err() {
                    break;
                }
                waker.wake().expect("wake the fault loop");
            }
        });
        (
            Self {
                requests: Vec::new(),
                to_worker,
                held,
            },
            from_worker,
        )
    }

    /// How many times each page was requested.
    fn pages_requested(&self) -> BTreeMap<u64, u32> {
        let mut counts = BTreeMap::new();
        for &(addr, pages) in &self.requests {
            for i in 0..pages as u64 {
                *counts.entry(addr + i * ps()).or_default() += 1;
            }
        }
        counts
    }
}

/// The parent's side: accepts the child's uffd, then runs the loop and
/// delivers answers until the child exits. `each` runs after every round.
fn serve(
    listener: &HandoffListener,
    child: &mut Child,
    held: std::ops::Range<u64>,
    mut each: impl FnMut(&mut FaultLoop, &TestSource),
) -> (FaultLoop, TestSource, i32) {
    let handoff = listener
        .accept_uffd(DEADLINE)
        .unwrap_or_else(|e| panic!("accept the child's uffd: {e}"));
    let mut faults =
        FaultLoop::new(handoff.uffd, ps() as usize, SpaceKey::ROOT).expect("FaultLoop::new");
    let (mut source, answers) = TestSource::start(faults.waker(), held);
    let start = Instant::now();
    loop {
        faults
            .run_once(&mut source, Duration::from_millis(5))
            .unwrap_or_else(|e| panic!("run_once: {e}"));
        for (addr, data) in answers.try_iter() {
            faults
                .deliver(SpaceKey::ROOT, addr, Some(&data))
                .unwrap_or_else(|e| panic!("deliver {addr:#x}: {e}"));
        }
        each(&mut faults, &source);
        if let Some(code) = child.try_wait() {
            return (faults, source, code);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the child did not finish within {DEADLINE:?}; stats {:?}, {} in flight",
            faults.stats(),
            faults.in_flight()
        );
    }
}

fn read_all(pages: u64) -> Result<(), String> {
    for i in 0..pages {
        let addr = BASE + i * ps();
        check_page(addr, Some(&pattern(addr)))?;
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn faults_coalesce_concurrent_threads() {
    require_root();
    const PAGES: u64 = 64;
    const THREADS: usize = 4;
    let dir = TempDir::new("faults-coalesce");
    let socket = dir.path("uffd.sock");
    let listener = HandoffListener::bind(&socket).expect("bind the handoff socket");
    let mut child = Child::spawn(&socket, &[(BASE, PAGES)], || {
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    read_all(PAGES)
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| "reader panicked".to_string())??;
        }
        Ok(())
    });
    let (faults, source, code) = serve(&listener, &mut child, 0..0, |_, _| {});
    assert_eq!(code, 0, "the child saw wrong data (see its stderr)");

    let counts = source.pages_requested();
    assert_eq!(counts.len() as u64, PAGES, "every page requested");
    assert!(
        counts.iter().all(|(_, &n)| n == 1),
        "a page was requested twice: {counts:x?}"
    );
    let stats = faults.stats();
    assert_eq!(stats.pages_requested, PAGES, "{stats:?}");
    assert_eq!(stats.pages_delivered, PAGES, "{stats:?}");
    assert!(
        stats.duplicates > 0,
        "4 threads reading the same pages never coalesced: {stats:?}"
    );
    assert_eq!(
        stats.faults,
        stats.pages_requested + stats.duplicates + stats.present_wakes,
        "every fault is a request, a duplicate or a wake: {stats:?}"
    );
    let latency = faults.latency();
    assert_eq!(latency.count(), stats.faults, "one latency per fault");
    assert!(
        latency.p50_us() >= DELAY.as_micros() as u64 / 2,
        "latency below the simulated delay: {:?}",
        latency.summary()
    );
    assert_eq!(faults.in_flight(), 0);
    eprintln!(
        "stats {stats:?}\nfault_latency_us {}",
        serde_json::to_string(latency).expect("serialize")
    );
}

#[test]
#[ignore = "needs root"]
fn faults_dontneed_zero_fills() {
    require_root();
    const PAGES: u64 = 32;
    const ZAPPED: std::ops::Range<u64> = 8..16;
    let dir = TempDir::new("faults-dontneed");
    let socket = dir.path("uffd.sock");
    let listener = HandoffListener::bind(&socket).expect("bind the handoff socket");
    let mut child = Child::spawn(&socket, &[(BASE, PAGES)], || {
        read_all(PAGES)?;
        let start = BASE + ZAPPED.start * ps();
        let len = (ZAPPED.end - ZAPPED.start) * ps();
        // SAFETY: the zapped pages are inside our own region.
        let ret = unsafe { libc::madvise(start as *mut _, len as usize, libc::MADV_DONTNEED) };
        if ret != 0 {
            return Err(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        for i in 0..PAGES {
            let addr = BASE + i * ps();
            let want = (!ZAPPED.contains(&i)).then(|| pattern(addr));
            check_page(addr, want.as_deref())?;
        }
        Ok(())
    });
    let (faults, source, code) = serve(&listener, &mut child, 0..0, |_, _| {});
    assert_eq!(code, 0, "the child saw wrong data (see its stderr)");
    let stats = faults.stats();
    assert!(
        source.pages_requested().values().all(|&n| n == 1),
        "zapped pages were requested again: {:x?}",
        source.requests
    );
    assert_eq!(stats.pages_requested, PAGES, "{stats:?}");
    assert_eq!(stats.removes, 1, "{stats:?}");
    assert_eq!(
        stats.zero_filled,
        ZAPPED.end - ZAPPED.start,
        "re-reads of zapped pages are zero-filled: {stats:?}"
    );
    assert_eq!(faults.latency().count(), stats.faults);
}

/// Counts SIGSEGVs in the held region; see `faults_munmap_wakes_blocked_thread`.
static SEGVS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_segv(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as u64 & !(ps() - 1);
    if !(HELD..HELD + 4 * ps()).contains(&addr) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(4) };
    }
    SEGVS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: maps a fresh page over an address the test unmapped; mmap is
    // async-signal-safe. The faulting load is retried on return.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            ps() as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(3) };
    }
}

#[test]
#[ignore = "needs root"]
fn faults_munmap_wakes_blocked_thread() {
    require_root();
    const HELD_PAGES: u64 = 4;
    let held_page = HELD + ps();
    let dir = TempDir::new("faults-munmap");
    let socket = dir.path("uffd.sock");
    let listener = HandoffListener::bind(&socket).expect("bind the handoff socket");
    let mut child = Child::spawn(&socket, &[(BASE, 4), (HELD, HELD_PAGES)], || {
        // A thread blocked on a page the source never sends; after the
        // munmap it is woken, faults on the unmapped address, and the
        // SIGSEGV handler maps a fresh page there, so the load returns 0.
        // SAFETY: a zeroed sigaction with SA_SIGINFO and a valid handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_segv as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
        }
        let blocked = std::thread::spawn(move || {
            // SAFETY: a page of the held region, registered with the uffd.
            unsafe { (held_page as *const u64).read_volatile() }
        });
        read_all(4)?;
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: the held region is ours; only the blocked thread uses it.
        let ret = unsafe { libc::munmap(HELD as *mut _, (HELD_PAGES * ps()) as usize) };
        if ret != 0 {
            return Err(format!("munmap: {}", std::io::Error::last_os_error()));
        }
        let value = blocked.join().map_err(|_| "blocked reader panicked")?;
        if value != 0 {
            return Err(format!("read {value:#x} from a fresh page"));
        }
        eprintln!(
            "child: woken after munmap; SIGSEGVs {}",
            SEGVS.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    });
    let mut delivered_after_unmap = false;
    let (faults, source, code) = serve(
        &listener,
        &mut child,
        HELD..HELD + HELD_PAGES * ps(),
        |faults, _| {
            // The source answers the held page late, after the unmap: the
            // data must be dropped without error.
            if faults.stats().unmaps == 1 && !delivered_after_unmap {
                delivered_after_unmap = true;
                faults
                    .deliver(SpaceKey::ROOT, held_page, Some(&pattern(held_page)))
                    .unwrap_or_else(|e| panic!("late delivery: {e}"));
            }
        },
    );
    assert_eq!(code, 0, "the child failed (see its stderr)");
    assert!(
        source.requests.contains(&(held_page, 1)),
        "the held page was never requested, so no thread was blocked on it: {:x?}",
        source.requests
    );
    let stats = faults.stats();
    assert_eq!(stats.unmaps, 1, "{stats:?}");
    assert!(delivered_after_unmap);
    assert!(stats.discarded >= 1, "late data discarded: {stats:?}");
    assert_eq!(faults.in_flight(), 0);
}

#[test]
#[ignore = "needs root"]
fn faults_fork_child_is_served() {
    require_root();
    const PAGES: u64 = 32;
    let dir = TempDir::new("faults-fork");
    let socket = dir.path("uffd.sock");
    let listener = HandoffListener::bind(&socket).expect("bind the handoff socket");
    let mut child = Child::spawn(&socket, &[(BASE, PAGES)], || {
        // Read the first half, fork, and let both processes read everything.
        for i in 0..PAGES / 2 {
            let addr = BASE + i * ps();
            check_page(addr, Some(&pattern(addr)))?;
        }
        // SAFETY: the grandchild only reads memory and ends in `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let code = i32::from(read_all(PAGES).is_err());
            // SAFETY: ends the grandchild without running destructors.
            unsafe { libc::_exit(code) };
        }
        read_all(PAGES)?;
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(format!("grandchild failed: status {status:#x}"));
        }
        Ok(())
    });
    let mut forks = Vec::new();
    let (faults, source, code) = serve(&listener, &mut child, 0..0, |faults, _| {
        forks = faults.live_spaces();
    });
    assert_eq!(
        code, 0,
        "the child or grandchild saw wrong data (see stderr)"
    );
    let stats = faults.stats();
    assert_eq!(stats.forks, 1, "{stats:?}");
    assert!(
        forks.len() >= 2,
        "the fork child was served as a space: {forks:?}"
    );
    let counts = source.pages_requested();
    assert_eq!(counts.len() as u64, PAGES, "{counts:x?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "one request serves both processes: {counts:x?}"
    );
}
