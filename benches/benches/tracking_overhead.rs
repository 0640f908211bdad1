//! Tracking overhead, side by side in one run: the workload's write
//! throughput untracked vs tracked by `ebpf` vs `pagemap-scan`, and the CPU
//! time pagehop spends per dirty page it reports.
//!
//! Scenarios:
//! - `uniform-max`, `skew-max`: a 256 MiB workload writing as fast as it can
//!   (`--write-mbps max`), so every write fault tracking adds shows up as
//!   lost throughput (the worst case);
//! - `sparse-1g`: a 1 GiB workload writing 40 MB/s, where throughput is set
//!   by the workload and what differs is pagehop's own cost: `pagemap-scan`
//!   walks all of memory each interval, `ebpf` only the pages that faulted
//!   (or everything, when they are too scattered to be worth it);
//! - `seq-1g`: the same with sequential writes, where the faulted pages form
//!   a few runs and `ebpf` scans megabytes instead of the whole gigabyte.
//!
//! Configurations are interleaved round-robin so that the shared machine's
//! noise hits all of them alike; medians and ratios are reported.
//!
//! `cargo bench --bench tracking_overhead` (needs root).
//! Environment: PAGEHOP_BENCH_ROUNDS (default 3), PAGEHOP_BENCH_SECS (per run, default 3),
//! PAGEHOP_BENCH_SCENARIOS (default "uniform-max,skew-max,sparse-1g,seq-1g").
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::median;

use pagehop_bench::bins::pagehop as pagehop_bin;
use pagehop_bench::bins::workload as workload_bin;
const INTERVAL_MS: &str = "100";

/// (name, arena MiB, write rate, pattern)
type Scenario = (&'static str, &'static str, &'static str, &'static str);

const SCENARIOS: [Scenario; 4] = [
    ("uniform-max", "256", "max", "uniform"),
    ("skew-max", "256", "max", "skew"),
    ("sparse-1g", "1024", "40", "uniform"),
    ("seq-1g", "1024", "40", "seq"),
];

struct Run {
    pages_per_sec: f64,
    cpu_ns_per_page: Option<f64>,
    collect_us: Option<f64>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run: start the workload, optionally track it, measure its rate.
fn run(backend: Option<&str>, scenario: Scenario, secs: f64) -> Run {
    let (_, size_mib, rate, pattern) = scenario;
    let mut workload = Command::new(workload_bin())
        .args([
            "--size-mib",
            size_mib,
            "--write-mbps",
            rate,
            "--pattern",
            pattern,
            "--report-ms",
            "250",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start workload");
    let mut lines = BufReader::new(workload.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("ready line").expect("read");
    assert!(ready.starts_with("ready"), "{ready}");
    let track = backend.map(|b| {
        Command::new(pagehop_bin())
            .args([
                "track",
                "--pid",
                &workload.id().to_string(),
                "--backend",
                b,
                "--interval",
                INTERVAL_MS,
            ])
            .args(["--duration", &format!("{}", secs + 1.0), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pagehop track")
    });
    // Let tracking arm, then sample the heartbeats.
    let warmup = Instant::now() + Duration::from_millis(500);
    let end = warmup + Duration::from_secs_f64(secs);
    let mut rates = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read");
        let now = Instant::now();
        if now > end {
            break;
        }
        if now > warmup
            && let Some(rate) = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("pages_per_sec="))
        {
            rates.push(rate.parse::<f64>().unwrap());
        }
    }
    let (mut cpu_ns_per_page, mut collect_us) = (None, None);
    if let Some(track) = track {
        let out = track.wait_with_output().expect("pagehop track");
        assert!(out.status.success(), "pagehop track failed");
        let mut collects = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(s) = v.get("summary") {
                cpu_ns_per_page = s["cpu_ns_per_dirty_page"].as_f64();
            } else if let Some(c) = v["collect_us"].as_f64() {
                collects.push(c);
            }
        }
        collect_us = Some(median(collects));
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(workload.id() as i32, libc::SIGTERM) };
    for _ in lines {}
    workload.wait().expect("workload");
    Run {
        pages_per_sec: median(rates),
        cpu_ns_per_page,
        collect_us,
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tracking_overhead: needs root (eBPF, ptrace, userfaultfd); skipped");
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harnesses
    }
    let rounds: usize = env_or("PAGEHOP_BENCH_ROUNDS", 3);
    let secs: f64 = env_or("PAGEHOP_BENCH_SECS", 3.0);
    let wanted: String = env_or(
        "PAGEHOP_BENCH_SCENARIOS",
        "uniform-max,skew-max,sparse-1g,seq-1g".to_string(),
    );
    let configs: [(&str, Option<&str>); 3] = [
        ("untracked", None),
        ("ebpf", Some("ebpf")),
        ("pagemap-scan", Some("pagemap-scan")),
    ];
    println!(
        "tracking overhead: workload write throughput untracked and tracked, {INTERVAL_MS} ms intervals,"
    );
    println!(
        "{rounds} interleaved rounds of {secs} s per configuration; medians; 2 shared cores, so read the ratios\n"
    );
    println!(
        "{:<12} {:<13} {:>14} {:>10} {:>16} {:>12}",
        "scenario", "tracking", "pages/s", "vs untracked", "pagehop ns/page", "collect µs"
    );
    for scenario in SCENARIOS
        .into_iter()
        .filter(|s| wanted.split(',').any(|w| w == s.0))
    {
        let name = scenario.0;
        let mut results: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, (_, backend)) in configs.iter().enumerate() {
                results[i].push(run(*backend, scenario, secs));
            }
        }
        let base = median(results[0].iter().map(|r| r.pages_per_sec).collect());
        for ((tracking, _), runs) in configs.iter().zip(&results) {
            let rate = median(runs.iter().map(|r| r.pages_per_sec).collect());
            let cpu = median(runs.iter().filter_map(|r| r.cpu_ns_per_page).collect());
            let collect = median(runs.iter().filter_map(|r| r.collect_us).collect());
            let show = |v: f64| {
                if v.is_nan() {
                    "-".to_string()
                } else {
                    format!("{v:.0}")
                }
            };
            println!(
                "{name:<12} {tracking:<13} {rate:>14.0} {:>10.2}x {:>16} {:>12}",
                rate / base,
                show(cpu),
                show(collect)
            );
        }
    }
}
