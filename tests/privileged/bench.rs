//! `pagehop bench` end to end: a small scenario set run for real (veth
//! shaped with tc, iperf3, every mode with its baseline), the scenarios it
//! must refuse, and an interrupted run that must leave nothing behind.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(pagehop_bin())
        .arg("bench")
        .args(args)
        .output()
        .expect("run pagehop bench")
}

/// Runs `toml` as the only scenario file with a 1 s iperf3 baseline and
/// namespaces named `prefix-*`; expects success and returns the results
/// directory with its run records.
fn run_scenario(
    dir: &TempDir,
    toml: &str,
    prefix: &str,
) -> (std::path::PathBuf, String, Vec<serde_json::Value>) {
    let scenario = dir.path("scenario.toml");
    std::fs::write(&scenario, toml).unwrap();
    let out_dir = dir.path("results");
    let out = bench(&[
        "--scenario",
        scenario.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--iperf3-seconds",
        "1",
        "--netns-prefix",
        prefix,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pagehop bench failed:\n{stderr}");
    let runs = std::fs::read_to_string(out_dir.join("runs.jsonl")).unwrap();
    let lines = runs
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (out_dir, runs, lines)
}

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root"]
fn bench_runs_a_scenario_with_its_baselines_and_writes_the_results() {
    require_root();
    let dir = TempDir::new("bench-run");
    let (out_dir, runs, lines) = run_scenario(
        &dir,
        "[[scenario]]\nname = \"small\"\nrepetitions = 1\n\
         modes = [\"precopy\", \"postcopy\", \"hybrid\"]\n\
         workload = { size_mib = 8, write_mbps = [0, 20], threads = 2 }\n\
         network = { rate = \"500mbit\" }\nengine = { max_rounds = 4 }\n",
        "phbt",
    );
    // One iperf3 baseline, then 2 points x 4 modes (stop-and-copy added).
    assert_eq!(lines.len(), 1 + 8, "{runs}");
    assert_eq!(lines[0]["kind"], "iperf3");
    assert!(lines[0]["mbps"].as_f64().unwrap() > 1.0, "{}", lines[0]);
    let mut modes: Vec<&str> = Vec::new();
    for r in &lines[1..] {
        assert_eq!(r["kind"], "migration");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["invariant"], "ok", "{r}");
        assert_eq!(r["send"]["mode"], r["mode"], "{r}");
        assert!(r["send"]["downtime_ms"].as_f64().unwrap() > 0.0);
        assert!(r["recv"]["restored_pid"].is_i64(), "{r}");
        let seen = r["workload_downtime_ms"]
            .as_f64()
            .expect("workload downtime");
        assert!(seen > 0.0 && seen < 60_000.0, "{r}");
        modes.push(r["mode"].as_str().unwrap());
    }
    for mode in ["stop-and-copy", "precopy", "postcopy", "hybrid"] {
        assert_eq!(modes.iter().filter(|m| **m == mode).count(), 2, "{modes:?}");
    }
    let csv = std::fs::read_to_string(out_dir.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8, "{csv}");
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(md.contains("| 8 MiB | 20 MB/s | hybrid |"), "{md}");
    assert!(md.contains("Raw path (iperf3"), "{md}");
    for svg in [
        "small-downtime-vs-write-rate.svg",
        "small-wire-bytes.svg",
        "small-fault-latency.svg",
    ] {
        let text = std::fs::read_to_string(out_dir.join(svg)).unwrap_or_default();
        assert!(text.starts_with("<svg"), "{svg} missing");
    }
    assert!(!namespaces().contains("phbt-"), "namespaces left behind");
}

#[test]
#[ignore = "needs root"]
fn bench_runs_redis_under_criu_next_to_both_criu_baselines() {
    require_root();
    let pipe_max = || std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap();
    let pipe_max_before = pipe_max();
    let dir = TempDir::new("bench-redis");
    let (out_dir, runs, lines) = run_scenario(
        &dir,
        "[[scenario]]\nname = \"redis\"\nkind = \"redis\"\nrepetitions = 1\n\
         modes = [\"hybrid\"]\nworkload = { size_mib = 32 }\n",
        "phbr",
    );
    let apps: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "app").collect();
    let methods: Vec<&str> = apps.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["criu-stop-and-copy", "criu-lazy", "pagehop-hybrid"],
        "{runs}"
    );
    for r in &apps {
        assert_eq!(r["ok"], true, "{r}");
        // Every key came back with its value, and the client, reading
        // throughout, saw no wrong one and did see the destination.
        let keys = r["keys"].as_u64().unwrap();
        assert_eq!(r["keys_check"], format!("ok keys={keys} writes=0"), "{r}");
        assert_eq!(r["client"]["bad_values"], 0, "{r}");
        assert!(r["client"]["answers"][1].as_u64().unwrap() > 0, "{r}");
        let unavailable = r["unavailable_ms"].as_f64().unwrap();
        let running = r["freeze_to_running_ms"].as_f64().unwrap();
        let local = r["all_local_ms"].as_f64().unwrap();
        assert!(
            unavailable > 0.0 && running > 0.0 && local >= running,
            "{r}"
        );
        assert!(r["bytes_wire"].as_u64().unwrap() > 0, "{r}");
        assert!(!r["parts_ms"].as_object().unwrap().is_empty(), "{r}");
    }
    // Only CRIU's post-copy (and pagehop's) has remote faults; pagehop's
    // run carries both its reports.
    assert_eq!(apps[0]["remote_faults"], 0);
    assert!(
        apps[1]["remote_faults"].as_u64().unwrap() > 0,
        "{}",
        apps[1]
    );
    assert!(apps[2]["send"]["criu"]["dump_ms"].as_f64().unwrap() > 0.0);
    assert!(apps[2]["recv"]["criu"]["restore_ms"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(md.contains("Unmodified redis under CRIU"), "{md}");
    assert!(
        md.contains("| pagehop-hybrid | unavailability vs criu-lazy |"),
        "{md}"
    );
    // CRIU's lazy baseline needed a larger pipe limit: put back.
    assert_eq!(pipe_max(), pipe_max_before);
    assert!(!namespaces().contains("phbr-"), "namespaces left behind");
}

#[test]
#[ignore = "needs root"]
fn bench_refuses_scenarios_it_cannot_run() {
    require_root();
    let dir = TempDir::new("bench-refuse");
    let write = |name: &str, body: &str| {
        let path = dir.path(name);
        std::fs::write(&path, format!("[[scenario]]\nname = \"x\"\n{body}")).unwrap();
        path
    };
    // This kernel has no netem: delay and loss must be refused, not dropped.
    let delay = write(
        "delay.toml",
        "workload = { size_mib = 8 }\nnetwork = { rate = \"20mbit\", delay_ms = 30 }",
    );
    let out = bench(&["--scenario", delay.to_str().unwrap(), "--check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if crate_has_netem() {
        eprintln!("this kernel has netem; the delay scenario is runnable");
        assert!(out.status.success(), "{err}");
    } else {
        assert!(!out.status.success());
        assert!(
            err.contains("netem") && err.contains("30 ms of delay"),
            "{err}"
        );
    }
    for (body, needle) in [
        ("workload = { size_mib = 0 }", "size_mib = 0"),
        (
            "workload = { size_mib = 8 }\nnetwork = { rate = \"fast\" }",
            "rate",
        ),
        ("workload = { size_mib = 8, threads = 0 }", "threads = 0"),
        ("workload = { size_mib = 4000000 }", "size_mib = 4000000"),
        (
            "workload = { size_mib = 8 }\nmodes = [\"teleport\"]",
            "teleport",
        ),
    ] {
        let file = write("bad.toml", body);
        let out = bench(&["--scenario", file.to_str().unwrap(), "--check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body} was accepted");
        assert!(err.contains(needle), "{body}: {err}");
    }
    // More memory than this machine has.
    let huge = write("huge.toml", "workload = { size_mib = 65536 }");
    let out = bench(&["--scenario", huge.to_str().unwrap(), "--check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("MiB are available"),
        "{err}"
    );
    // Not root.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            pagehop_bin(),
        ])
        .args(["bench", "--check"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs root"), "{err}");
    // The built-in set itself is runnable here.
    let out = bench(&["--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn crate_has_netem() -> bool {
    pagehop_bench::netns::netem_available().is_ok()
}

#[test]
#[ignore = "needs root"]
fn interrupted_bench_cleans_up_its_namespaces_and_processes() {
    require_root();
    let dir = TempDir::new("bench-interrupt");
    let scenario = dir.path("slow.toml");
    // Stop-and-copy (the baseline, first) takes about 4 s at 20 Mbit/s;
    // the post-copy run after it takes as long, with the restored workload
    // running all the while: that is when the signal comes.
    std::fs::write(
        &scenario,
        "[[scenario]]\nname = \"slow\"\nrepetitions = 1\nmodes = [\"postcopy\"]\n\
         workload = { size_mib = 8, write_mbps = 1 }\nnetwork = { rate = \"20mbit\" }\n",
    )
    .unwrap();
    let out_dir = dir.path("results");
    let child = Command::new(pagehop_bin())
        .args(["bench", "--iperf3-seconds", "1", "--netns-prefix", "phbi"])
        .arg("--scenario")
        .arg(&scenario)
        .arg("--out")
        .arg(&out_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pagehop bench");
    // A failed assertion must not leave the bench running.
    let mut child = KillOnDrop(Some(child));
    let child = child.0.as_mut().unwrap();
    let bench_pid = child.id();
    let scratch = std::env::temp_dir().join(format!("pagehop-bench-{bench_pid}"));
    let runs = out_dir.join("runs.jsonl");
    let restored_log = scratch.join("restored-postcopy.log");
    // The baseline recorded, then the post-copy run's workload resumed.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let recorded = std::fs::read_to_string(&runs).unwrap_or_default();
        let log = std::fs::read_to_string(&restored_log).unwrap_or_default();
        if recorded.lines().count() >= 2 && log.contains("resumed") {
            break;
        }
        assert!(Instant::now() < deadline, "the post-copy run never started");
        assert!(child.try_wait().unwrap().is_none(), "bench ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(namespaces().contains("phbi-a"));
    // The bench's own workloads: the source (if still there) and the restored one.
    let ours = "--size-mib 8 --threads 2 --pattern uniform --fill random";
    let running = Command::new("pgrep")
        .args(["-f", "--", ours])
        .output()
        .unwrap();
    assert!(
        !running.stdout.is_empty(),
        "no workload running at the signal"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(bench_pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cleaned up"), "{err}");
    assert!(!namespaces().contains("phbi-"), "namespaces left behind");
    assert!(!scratch.exists(), "scratch directory left behind");
    std::thread::sleep(Duration::from_millis(200));
    // recv and send carry the scratch directory in their arguments.
    for pattern in [format!("pagehop-bench-{bench_pid}"), ours.to_string()] {
        let ps = Command::new("pgrep")
            .args(["-af", &pattern])
            .output()
            .unwrap();
        assert!(
            ps.stdout.is_empty(),
            "processes left behind: {}",
            String::from_utf8_lossy(&ps.stdout)
        );
    }
    // What was measured before the interruption stays.
    let runs = std::fs::read_to_string(out_dir.join("runs.jsonl")).unwrap();
    assert!(runs.contains("\"kind\":\"iperf3\""), "{runs}");
}

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0
            && matches!(child.try_wait(), Ok(None))
        {
            // SIGINT first: the bench cleans up after itself.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}
