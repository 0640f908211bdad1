//! Shared helpers: the root check, the workload process, ground truth and
//! dirty-log parsing.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use pagehop_bench::bins::pagehop as pagehop_bin;
pub use pagehop_bench::bins::workload as workload_bin;

/// Fails the calling test unless it runs as root. Root-only tests are also
/// `#[ignore = "needs root"]`, so that a plain `cargo test` lists them as
/// ignored instead of passing them unrun; this check makes a run that
/// includes them (`--include-ignored`) without root fail loudly.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "needs root (eBPF, ptrace, userfaultfd, network namespaces), but euid is {euid}: \
         run `sudo cargo xtask test`"
    );
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pagehop-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pagehop-workload`.
pub struct Workload {
    pub child: Child,
    pub pid: i32,
    pub arena: (u64, u64),
    /// Stdout lines after `ready` (heartbeats, the exit line).
    pub lines: mpsc::Receiver<String>,
}

impl Workload {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(workload_bin())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pagehop-workload");
        let stdout = child.stdout.take().expect("workload stdout");
        let mut reader = BufReader::new(stdout);
        let mut ready = String::new();
        reader
            .read_line(&mut ready)
            .expect("read workload ready line");
        assert!(
            ready.starts_with("ready "),
            "workload did not start: {ready:?}"
        );
        let field = |name: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {ready:?}"))
                .to_string()
        };
        let pid: i32 = field("pid=").parse().expect("pid");
        let arena = field("arena=");
        let (start, end) = arena.split_once('-').expect("arena range");
        let arena = (
            u64::from_str_radix(start, 16).expect("hex"),
            u64::from_str_radix(end, 16).expect("hex"),
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            pid,
            arena,
            lines: rx,
        }
    }

    /// Pages-per-second figures of the heartbeats arriving within `window`.
    pub fn heartbeat_rates(&self, window: Duration) -> Vec<f64> {
        let deadline = std::time::Instant::now() + window;
        let mut rates = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("heartbeat") => {
                    if let Some(rate) = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("pages_per_sec="))
                    {
                        rates.push(rate.parse().expect("rate"));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        rates
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid, sig) };
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Stops the workload with SIGTERM and returns its remaining output.
    pub fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait workload");
        assert!(status.success(), "workload failed: {status}");
        self.lines.try_iter().collect()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// One ground-truth batch: pages written by `pid` between `start` and `end`.
pub struct Batch {
    pub pid: i32,
    pub start: u64,
    pub end: u64,
    pub pages: Vec<u64>,
}

pub fn read_ground_truth(path: &Path) -> Vec<Batch> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.split_whitespace();
            let pid = f.next().expect("pid").parse().expect("pid");
            let start = f.next().expect("start").parse().expect("start");
            let end = f.next().expect("end").parse().expect("end");
            let pages = f
                .map(|a| u64::from_str_radix(a, 16).expect("hex page"))
                .collect();
            Batch {
                pid,
                start,
                end,
                pages,
            }
        })
        .collect()
}

/// One interval of `pagehop track --dirty-log` for one pid.
pub struct LoggedInterval {
    pub start: u64,
    pub end: u64,
    pub pid: i32,
    pub pages: BTreeSet<u64>,
}

pub fn read_dirty_log(path: &Path) -> Vec<LoggedInterval> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.split_whitespace();
            let _interval: u64 = f.next().expect("interval").parse().expect("interval");
            let start = f.next().expect("start").parse().expect("start");
            let end = f.next().expect("end").parse().expect("end");
            let pid = f.next().expect("pid").parse().expect("pid");
            let mut pages = BTreeSet::new();
            for range in f {
                let (a, b) = range.split_once('-').expect("range");
                let (a, b) = (
                    u64::from_str_radix(a, 16).expect("hex"),
                    u64::from_str_radix(b, 16).expect("hex"),
                );
                pages.extend((a..b).step_by(4096));
            }
            LoggedInterval {
                start,
                end,
                pid,
                pages,
            }
        })
        .collect()
}

/// How a tracker's report compares with the ground truth of one process.
#[derive(Debug)]
pub struct Accuracy {
    pub written_pages: usize,
    pub false_negatives: Vec<(u64, u64)>,
    pub batches_checked: usize,
    pub false_positives: FalsePositives,
}

/// Pages a tracker reported dirty in an interval that the ground truth did
/// not write in that interval.
#[derive(Debug, Clone)]
pub struct FalsePositives {
    /// `(false positives, pages reported)` of each interval, in log order.
    pub per_interval: Vec<(usize, usize)>,
}

impl FalsePositives {
    pub fn count(&self) -> usize {
        self.per_interval.iter().map(|(fp, _)| fp).sum()
    }

    /// Pages reported, summed over the intervals (a page reported in three
    /// intervals counts three times).
    pub fn reported(&self) -> usize {
        self.per_interval.iter().map(|(_, n)| n).sum()
    }

    /// False positives over pages reported (0 when nothing was reported).
    pub fn ratio(&self) -> f64 {
        match self.reported() {
            0 => 0.0,
            n => self.count() as f64 / n as f64,
        }
    }

    /// The same figures without the first `n` intervals.
    pub fn skip(&self, n: usize) -> Self {
        Self {
            per_interval: self.per_interval.iter().skip(n).copied().collect(),
        }
    }

    pub fn describe(&self) -> String {
        let worst = self
            .per_interval
            .iter()
            .enumerate()
            .max_by_key(|(_, (fp, _))| *fp)
            .map_or_else(String::new, |(i, (fp, n))| {
                format!("; the most in interval {i}: {fp} of {n}")
            });
        format!(
            "false-positive ratio {:.4}: {} of {} pages reported dirty over {} intervals \
             were not written in their interval{worst}",
            self.ratio(),
            self.count(),
            self.reported(),
            self.per_interval.len(),
        )
    }

    /// Fails unless the ratio is at most `bound`; `what` names the run.
    #[track_caller]
    pub fn assert_ratio_at_most(&self, what: &str, bound: f64) {
        assert!(
            self.ratio() <= bound,
            "{what}: {}, above the bound of {bound}",
            self.describe()
        );
    }
}

/// Checks every ground-truth batch that lies entirely inside the tracked
/// window: its pages must be reported in the interval that contains it
/// (strict), and in the union of all intervals.
///
/// False positives, per interval: reported pages inside `scope` that no
/// ground-truth batch overlapping the interval in time wrote (a batch that
/// straddles an interval edge counts for both intervals).
pub fn compare(truth: &[Batch], log: &[LoggedInterval], pid: i32, scope: (u64, u64)) -> Accuracy {
    let intervals: Vec<&LoggedInterval> = log.iter().filter(|i| i.pid == pid).collect();
    assert!(
        !intervals.is_empty(),
        "no intervals were logged for pid {pid}"
    );
    let truth: Vec<&Batch> = truth.iter().filter(|b| b.pid == pid).collect();
    let window_start = intervals.iter().map(|i| i.start).min().expect("intervals");
    let window_end = intervals.iter().map(|i| i.end).max().expect("intervals");
    let union: BTreeSet<u64> = intervals
        .iter()
        .flat_map(|i| i.pages.iter().copied())
        .collect();
    let mut written = BTreeSet::new();
    let mut false_negatives = Vec::new();
    let mut checked = 0;
    for b in truth
        .iter()
        .filter(|b| b.start >= window_start && b.end <= window_end)
    {
        checked += 1;
        let containing = intervals
            .iter()
            .find(|i| i.start <= b.start && b.end <= i.end);
        for &page in &b.pages {
            written.insert(page);
            let in_interval = containing.is_none_or(|i| i.pages.contains(&page));
            if !in_interval || !union.contains(&page) {
                false_negatives.push((page, b.start));
            }
        }
    }
    let per_interval: Vec<(usize, usize)> = intervals
        .iter()
        .map(|i| {
            let touched: BTreeSet<u64> = truth
                .iter()
                .filter(|b| b.end >= i.start && b.start <= i.end)
                .flat_map(|b| b.pages.iter().copied())
                .collect();
            let reported = i.pages.range(scope.0..scope.1);
            let fp = reported.clone().filter(|p| !touched.contains(p)).count();
            (fp, reported.count())
        })
        .collect();
    Accuracy {
        written_pages: written.len(),
        false_negatives,
        batches_checked: checked,
        false_positives: FalsePositives { per_interval },
    }
}

pub fn run_pagehop(args: &[&str]) -> Output {
    Command::new(pagehop_bin())
        .args(args)
        .output()
        .expect("run pagehop")
}

/// The `{"summary": ...}` object of a `--json` run, and the interval objects.
pub fn parse_json_lines(stdout: &[u8]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let text = String::from_utf8_lossy(stdout);
    let mut intervals = Vec::new();
    let mut summary = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        match v.get("summary") {
            Some(s) => summary = Some(s.clone()),
            None => intervals.push(v),
        }
    }
    (intervals, summary.expect("a summary line"))
}

/// The target's open file descriptors that are userfaultfds.
pub fn userfaultfds_of(pid: i32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.contains("userfaultfd"))
        .collect()
}

/// Mappings of the target still registered with a userfaultfd (smaps VmFlags
/// `uw` = write-protect, `um` = missing).
pub fn uffd_registered_vmas(pid: i32) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut current = String::new();
    let mut out = Vec::new();
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            current = line.to_string();
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && flags.split_whitespace().any(|f| f == "uw" || f == "um")
        {
            out.push(current.clone());
        }
    }
    out
}

/// Counts of interval events by kind over a JSON run.
pub fn event_counts(intervals: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in intervals {
        for e in i["events"].as_array().expect("events array") {
            *counts
                .entry(e["kind"].as_str().expect("kind").to_string())
                .or_default() += 1;
        }
    }
    counts
}

/// The scheduler state of `pid` (`/proc/PID/stat` field 3: `T` stopped,
/// `R`/`S` running or sleeping, `Z` zombie), `None` once it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

pub fn wait_state(pid: i32, want: char, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while process_state(pid) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "process {pid} is in state {:?}, expected {want}",
            process_state(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `pid` runs (sleeping or running: not stopped, not gone).
pub fn assert_runs(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match process_state(pid) {
            Some('S' | 'R' | 'D') => return,
            state => assert!(
                Instant::now() < deadline,
                "{what} (pid {pid}) is not running: state {state:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
