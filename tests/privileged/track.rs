//! `pagehop track` against the real workload: accuracy against ground truth,
//! address-space changes, fork following, cleanup, and refusals.
use std::process::{Command, Stdio};
use std::time::Duration;

use pagehop::mem::layout::Layout;
use pagehop::mem::pages::RangeSet;
use pagehop::source::track::{Session, TrackOptions};
use pagehop::source::tracker::Backend;

use crate::common::*;

/// Most pages a real backend may report dirty in an interval that the ground
/// truth does not write in that interval, as a share of the pages reported.
///
/// Measured here (2 CPUs; 20 to 50 runs each, a few with two busy loops
/// competing for the CPUs): ebpf 0 to 0.019 (0 in most runs), pagemap-scan 0
/// to 0.005, the forked child after its first interval 0 to 0.018. Each such
/// page was written within a few milliseconds of an interval edge (tens of
/// milliseconds before the first interval, during the attach that precedes
/// its start time): an interval's end time is taken before its collection,
/// so writes in between may be reported in this interval, the next or both;
/// at 40 MB/s that is about 10 pages per millisecond of delay, which grows
/// on a loaded machine. 0.10 is five times the worst seen, while a backend
/// that reported every resident page (`none`: 0.886) fails, and so would one
/// that over-reported a single interval's resident pages (about 14 500
/// untouched ones, against about 20 000 pages reported in a whole ebpf run).
const MAX_FALSE_POSITIVE_RATIO: f64 = 0.10;

/// The bound for the churn run, which counts the whole address space: on top
/// of the edge pages, the workload's own bookkeeping (heap, malloc arenas,
/// thread stacks, libc's and its binary's data) is written every interval
/// but not in the ground truth: about 15 pages an interval, 0.033 to 0.041 of
/// what is reported (0 to 0.0074 inside the arena). 0.15 leaves that more
/// than three times over; every resident page would be well above 0.5.
const MAX_CHURN_FALSE_POSITIVE_RATIO: f64 = 0.15;

/// Tracks a 64 MiB workload writing 40 MB/s for 3 s in 200 ms intervals and
/// checks that no written page was missed; returns the intervals and the
/// comparison with the ground truth.
fn accuracy_run(backend: &str, pattern: &str) -> (Vec<serde_json::Value>, Accuracy) {
    let dir = TempDir::new(&format!("accuracy-{backend}"));
    let (gt, log) = (dir.path("truth"), dir.path("dirty"));
    let workload = Workload::spawn(&[
        "--size-mib",
        "64",
        "--write-mbps",
        "40",
        "--threads",
        "2",
        "--pattern",
        pattern,
        "--ground-truth",
        gt.to_str().unwrap(),
    ]);
    let out = run_pagehop(&[
        "track",
        "--pid",
        &workload.pid.to_string(),
        "--backend",
        backend,
        "--interval",
        "200",
        "--duration",
        "3",
        "--json",
        "--dirty-log",
        log.to_str().unwrap(),
    ]);
    let pid = workload.pid;
    let arena = workload.arena;
    workload.stop();
    assert!(
        out.status.success(),
        "pagehop track failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (intervals, summary) = parse_json_lines(&out.stdout);
    assert_eq!(summary["backend"], backend);
    assert!(
        summary["intervals"].as_u64().unwrap() >= 10,
        "summary: {summary}"
    );
    for field in [
        "dirty_pages",
        "dirty_bytes_per_sec",
        "hot_pages",
        "resident_pages",
    ] {
        assert!(
            intervals.iter().all(|i| i.get(field).is_some()),
            "interval lacks {field}"
        );
    }
    assert!(
        summary["mean_dirty_bytes_per_sec"].as_f64().unwrap() > 1e6,
        "summary: {summary}"
    );

    let accuracy = compare(&read_ground_truth(&gt), &read_dirty_log(&log), pid, arena);
    println!(
        "{backend}: {} written pages in {} batches checked, false negatives {}; in the arena, {}",
        accuracy.written_pages,
        accuracy.batches_checked,
        accuracy.false_negatives.len(),
        accuracy.false_positives.describe()
    );
    assert!(
        accuracy.batches_checked > 100 && accuracy.written_pages > 2000,
        "too little was checked: {accuracy:?}"
    );
    assert!(
        accuracy.false_negatives.is_empty(),
        "{backend} missed {} written pages, first: {:x?}",
        accuracy.false_negatives.len(),
        &accuracy.false_negatives[..accuracy.false_negatives.len().min(5)]
    );
    (intervals, accuracy)
}

#[test]
#[ignore = "needs root"]
fn ebpf_backend_misses_no_written_page() {
    require_root();
    let (intervals, accuracy) = accuracy_run("ebpf", "skew");
    accuracy
        .false_positives
        .assert_ratio_at_most("ebpf", MAX_FALSE_POSITIVE_RATIO);
    // 90% of the writes go to 10% of the pages: most of those stay dirty in
    // every interval and must show as hot.
    let hot = intervals.last().unwrap()["hot_pages"].as_u64().unwrap();
    assert!(hot > 100, "skewed writes produced only {hot} hot pages");
}

#[test]
#[ignore = "needs root"]
fn pagemap_scan_backend_misses_no_written_page() {
    require_root();
    let (_, accuracy) = accuracy_run("pagemap-scan", "uniform");
    accuracy
        .false_positives
        .assert_ratio_at_most("pagemap-scan", MAX_FALSE_POSITIVE_RATIO);
}

/// The `none` backend reports every resident page in every interval: it misses
/// nothing, and it must fail the false-positive bound, or the bound proves
/// nothing.
#[test]
#[ignore = "needs root"]
fn none_backend_exceeds_the_false_positive_bound() {
    require_root();
    let (_, accuracy) = accuracy_run("none", "uniform");
    let fp = &accuracy.false_positives;
    assert!(
        fp.ratio() > MAX_FALSE_POSITIVE_RATIO,
        "none: {}, yet within the bound of {MAX_FALSE_POSITIVE_RATIO} meant to fail it",
        fp.describe()
    );
}

#[test]
#[ignore = "needs root"]
fn address_space_changes_are_tracked() {
    require_root();
    let dir = TempDir::new("churn");
    let gt = dir.path("truth");
    let workload = Workload::spawn(&[
        "--size-mib",
        "16",
        "--write-mbps",
        "10",
        "--churn",
        "--ground-truth",
        gt.to_str().unwrap(),
    ]);
    let pid = workload.pid;
    let arena = workload.arena;
    let target = pagehop::source::target::Target::open(pid).expect("a valid target");
    let mut session = Session::start(
        &target,
        TrackOptions {
            backend: Backend::Ebpf,
            interval: Duration::from_millis(200),
            hot_intervals: 3,
            follow_forks: true,
        },
    )
    .expect("start tracking");
    let mut log = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(200));
        let report = session.step().expect("step");
        kinds.extend(report.events.iter().map(|e| e.kind));
        log.push(report);
    }
    // Freeze the workload so that its layout holds still, then collect once more.
    workload.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(100));
    let last = session.step().expect("final step");
    kinds.extend(last.events.iter().map(|e| e.kind));
    let mapped = Layout::read(pid).expect("maps").mapped();
    let last_dirty = last.dirty.get(&pid).cloned().unwrap_or_default();
    assert_eq!(
        last_dirty.difference(&mapped),
        RangeSet::new(),
        "dirty pages reported outside any mapping"
    );
    log.push(last);
    workload.signal(libc::SIGCONT);
    session.finish("test end").expect("finish");
    workload.stop();

    for kind in ["mmap", "munmap", "madvise"] {
        assert!(kinds.contains(kind), "no {kind} event seen; saw {kinds:?}");
    }
    let logged: Vec<LoggedInterval> = log
        .iter()
        .map(|r| LoggedInterval {
            start: r.t_start_ns,
            end: r.t_end_ns,
            pid,
            pages: r
                .dirty
                .get(&pid)
                .map(|d| d.iter_pages(4096).collect())
                .unwrap_or_default(),
        })
        .collect();
    let truth = read_ground_truth(&gt);
    let accuracy = compare(&truth, &logged, pid, (0, u64::MAX));
    println!("churn: {accuracy:?}");
    assert!(
        accuracy.false_negatives.is_empty(),
        "missed pages in new mappings: {:x?}",
        &accuracy.false_negatives
    );
    accuracy
        .false_positives
        .assert_ratio_at_most("churn", MAX_CHURN_FALSE_POSITIVE_RATIO);
    // The churn writes land outside the arena, in mappings created while tracking.
    let outside: usize = truth
        .iter()
        .filter(|b| b.start >= logged[0].start)
        .flat_map(|b| b.pages.iter())
        .filter(|p| !(arena.0..arena.1).contains(*p))
        .count();
    assert!(
        outside > 0,
        "the workload wrote no churn pages while tracked"
    );
}

#[test]
#[ignore = "needs root"]
fn forked_child_is_followed() {
    require_root();
    let dir = TempDir::new("fork");
    let (gt, log) = (dir.path("truth"), dir.path("dirty"));
    let workload = Workload::spawn(&[
        "--size-mib",
        "16",
        "--write-mbps",
        "10",
        "--fork-after-ms",
        "600",
        "--child-lifetime-ms",
        "1500",
        "--ground-truth",
        gt.to_str().unwrap(),
    ]);
    let out = run_pagehop(&[
        "track",
        "--pid",
        &workload.pid.to_string(),
        "--interval",
        "200",
        "--duration",
        "3",
        "--json",
        "--dirty-log",
        log.to_str().unwrap(),
    ]);
    let arena = workload.arena;
    workload.stop();
    assert!(
        out.status.success(),
        "pagehop track failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (intervals, summary) = parse_json_lines(&out.stdout);
    let counts = event_counts(&intervals);
    assert_eq!(counts.get("fork"), Some(&1), "events: {counts:?}");
    assert!(
        summary["processes_tracked"].as_u64().unwrap() >= 2,
        "summary: {summary}"
    );

    let child_truth = read_ground_truth(&dir.path("truth.child"));
    let child = child_truth
        .first()
        .expect("the child wrote ground truth")
        .pid;
    let reported_for_child = intervals.iter().any(|i| {
        i["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == child && p["dirty_pages"].as_u64() > Some(0))
    });
    assert!(reported_for_child, "no interval reports the child {child}");
    let accuracy = compare(&child_truth, &read_dirty_log(&log), child, arena);
    println!("child: {accuracy:?}");
    assert!(
        accuracy.batches_checked > 10,
        "child checked too little: {accuracy:?}"
    );
    assert!(
        accuracy.false_negatives.is_empty(),
        "missed child pages: {:x?}",
        &accuracy.false_negatives
    );
    // A child's resident pages count as written in the interval it is attached
    // in (it may have written any of them since the fork, before tracking):
    // that interval reports the whole arena by design. The bound applies to
    // the intervals after it.
    accuracy
        .false_positives
        .skip(1)
        .assert_ratio_at_most("child after its first interval", MAX_FALSE_POSITIVE_RATIO);
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    Duration,
    Sigint,
    Sigkill,
}

fn track_leaves_target_as_it_was(ending: Ending) {
    let mut workload = Workload::spawn(&[
        "--size-mib",
        "64",
        "--write-mbps",
        "max",
        "--report-ms",
        "200",
    ]);
    let pid = workload.pid.to_string();
    let before = median(workload.heartbeat_rates(Duration::from_millis(1200)));
    let duration = if matches!(ending, Ending::Duration) {
        "1.5"
    } else {
        "60"
    };
    let mut track = Command::new(pagehop_bin())
        .args([
            "track",
            "--pid",
            &pid,
            "--interval",
            "200",
            "--duration",
            duration,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pagehop track");
    let during = median(workload.heartbeat_rates(Duration::from_millis(1200)));
    assert!(
        !uffd_registered_vmas(workload.pid).is_empty(),
        "while tracking, the workload's memory should be registered for write-protection"
    );
    match ending {
        Ending::Duration => {}
        Ending::Sigint => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(track.id() as i32, libc::SIGINT) };
        }
        Ending::Sigkill => track.kill().expect("SIGKILL pagehop"),
    };
    let out = track.wait_with_output().expect("wait for pagehop");
    match ending {
        Ending::Sigkill => assert!(!out.status.success()),
        _ => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "pagehop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("summary"), "no summary printed: {stdout}");
        }
    }
    // Let the kernel finish releasing the userfaultfd after a SIGKILL.
    std::thread::sleep(Duration::from_millis(200));
    let after = median(workload.heartbeat_rates(Duration::from_millis(1200)));
    println!(
        "{ending:?}: workload write speed before {before:.0}, while tracked {during:.0}, after {after:.0} pages/s (after/before {:.2})",
        after / before
    );
    assert!(workload.is_running(), "the workload died");
    assert_eq!(
        userfaultfds_of(workload.pid),
        Vec::<String>::new(),
        "a userfaultfd was left in the target"
    );
    assert_eq!(
        uffd_registered_vmas(workload.pid),
        Vec::<String>::new(),
        "write protection was left behind"
    );
    assert!(after > 0.0, "the workload stopped writing");
    let lines = workload.stop();
    assert!(
        lines.iter().any(|l| l.starts_with("exit ")),
        "workload did not exit cleanly: {lines:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn track_ending_normally_leaves_target_as_it_was() {
    require_root();
    track_leaves_target_as_it_was(Ending::Duration);
}

#[test]
#[ignore = "needs root"]
fn track_interrupted_leaves_target_as_it_was() {
    require_root();
    track_leaves_target_as_it_was(Ending::Sigint);
}

#[test]
#[ignore = "needs root"]
fn track_killed_leaves_target_as_it_was() {
    require_root();
    track_leaves_target_as_it_was(Ending::Sigkill);
}

fn assert_refused(args: &[&str], expected: &str) {
    let out = run_pagehop(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in: {stderr}"
    );
}

#[test]
#[ignore = "needs root"]
fn bad_targets_are_refused_clearly() {
    require_root();
    assert_refused(
        &["track", "--pid", "2147483000"],
        "no process with pid 2147483000",
    );
    assert_refused(&["track", "--pid", "2"], "kernel thread");
    let workload = Workload::spawn(&["--size-mib", "4", "--write-mbps", "1"]);
    let pid = workload.pid.to_string();
    // An unprivileged user may not trace a root process.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            pagehop_bin(),
            "track",
            "--pid",
            &pid,
        ])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not permitted to trace"),
        "unprivileged run: {stderr}"
    );
    // This kernel has no soft-dirty bits: the backend must say so, not track wrongly.
    if !pagehop::source::tracker::kernel_has_soft_dirty() {
        assert_refused(
            &["track", "--pid", &pid, "--backend", "soft-dirty"],
            "CONFIG_MEM_SOFT_DIRTY",
        );
    }
    assert_eq!(userfaultfds_of(workload.pid), Vec::<String>::new());
    workload.stop();
}

#[test]
#[ignore = "needs root"]
fn none_backend_counts_every_resident_page() {
    require_root();
    let workload = Workload::spawn(&["--size-mib", "16", "--write-mbps", "1"]);
    let out = run_pagehop(&[
        "track",
        "--pid",
        &workload.pid.to_string(),
        "--backend",
        "none",
        "--interval",
        "200",
        "--duration",
        "1",
        "--json",
    ]);
    workload.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (intervals, summary) = parse_json_lines(&out.stdout);
    assert_eq!(summary["backend"], "none");
    for i in &intervals {
        let (dirty, resident) = (
            i["dirty_pages"].as_u64().unwrap(),
            i["resident_pages"].as_u64().unwrap(),
        );
        // Both are counts of the same resident pages, taken moments apart.
        assert!(
            dirty >= 4096 && dirty * 10 >= resident * 9,
            "none backend: dirty {dirty}, resident {resident}"
        );
    }
}
