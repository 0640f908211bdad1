//! Post-copy and hybrid benchmarks, side by side in one run:
//!
//! 1. remote fault latency (request sent → page installed) over loopback and
//!    over the veth pair between two network namespaces;
//! 2. post-copy with and without a recorded working set (`--prefetch-from`).
//!
//! The modes side by side across write rates, sizes and links, with their
//! baselines, are `pagehop bench`'s (`cargo xtask bench`).
//!
//! The restored workload starts its writers at once (`--resume-lazy`), so it
//! faults the way a service would. Each configuration runs
//! PAGEHOP_BENCH_REPS times (default 3), interleaved; medians are printed.
//! `cargo bench --bench postcopy` (needs root and iproute2).
use pagehop_bench::netns::NetnsPair;

mod bench_migrate;
mod common;
use bench_migrate::Path;
use common::median;

const PORT: u16 = 7750;

fn reps() -> usize {
    std::env::var("PAGEHOP_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Migrates a fresh workload started with `workload`; returns send's report.
fn migrate(path: &Path<'_>, workload: &str, send_args: &[&str]) -> serde_json::Value {
    bench_migrate::migrate(
        path,
        PORT,
        workload,
        &format!("{workload} --resume-lazy"),
        send_args,
    )
}

fn f(r: &serde_json::Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or(f64::NAN)
}

fn latency(r: &serde_json::Value, which: &str, q: &str) -> f64 {
    r[which][q].as_f64().unwrap_or(f64::NAN)
}

fn med(runs: &[serde_json::Value], get: impl Fn(&serde_json::Value) -> f64) -> f64 {
    median(runs.iter().map(get).collect())
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || std::env::args().any(|a| a == "--list") {
        eprintln!("post-copy benchmark: needs root; skipped");
        return;
    }
    let reps = reps();
    println!("post-copy and hybrid migration; medians of {reps} runs; 2 shared cores\n");

    // 1: remote fault latency.
    let pair = NetnsPair::create("phpc", 51).expect("namespaces");
    let workload = "--size-mib 128 --threads 2 --write-mbps 20 --seed 3";
    println!(
        "1. remote fault latency, post-copy of 128 MiB, 2 writer threads faulting (all faults: fault → install; remote: request → install)"
    );
    println!(
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  (reference: QEMU preempt channel, 570 us mean)",
        "path", "remote50", "remote99", "all p50", "all p99", "faults", "post ms"
    );
    for (name, path) in [("loopback", Path::Loopback), ("veth", Path::Veth(&pair))] {
        let runs: Vec<_> = (0..reps)
            .map(|_| migrate(&path, workload, &["--mode", "postcopy"]))
            .collect();
        println!(
            "  {name:<10} {:>7.0}us {:>7.0}us {:>7.0}us {:>7.0}us {:>8.0} {:>10.0}",
            med(&runs, |r| latency(r, "remote_fault_latency_us", "p50_us")),
            med(&runs, |r| latency(r, "remote_fault_latency_us", "p99_us")),
            med(&runs, |r| latency(r, "fault_latency_us", "p50_us")),
            med(&runs, |r| latency(r, "fault_latency_us", "p99_us")),
            med(&runs, |r| f(r, "faults")),
            med(&runs, |r| f(r, "postcopy_ms")),
        );
    }
    println!("  (percentiles exact to 3 significant digits: hdrhistogram)");

    // 2: with and without a recorded working set.
    let slow = NetnsPair::create("phpcw", 53).expect("namespaces");
    slow.shape("200mbit").expect("tc tbf");
    let ws = std::env::temp_dir().join(format!("pagehop-ws-{}", std::process::id()));
    let workload = "--size-mib 128 --threads 2 --write-mbps 40 --pattern skew --seed 9";
    let record = migrate(
        &Path::Veth(&slow),
        workload,
        &[
            "--mode",
            "postcopy",
            "--record-working-set",
            ws.to_str().unwrap(),
        ],
    );
    println!(
        "\n2. post-copy of 128 MiB over 200 Mbit/s, skewed writers; working set recorded by an earlier migration ({} page requests)",
        f(&record, "demand_requests")
    );
    println!(
        "  {:<22} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "", "faults", "blocked ms", "all p50", "all p99", "post ms"
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..reps {
        without.push(migrate(
            &Path::Veth(&slow),
            workload,
            &["--mode", "postcopy"],
        ));
        with.push(migrate(
            &Path::Veth(&slow),
            workload,
            &[
                "--mode",
                "postcopy",
                "--prefetch-from",
                ws.to_str().unwrap(),
            ],
        ));
    }
    for (name, runs) in [("no working set", &without), ("--prefetch-from", &with)] {
        println!(
            "  {name:<22} {:>8.0} {:>10.0} {:>8.0}us {:>8.0}us {:>10.0}",
            med(runs, |r| f(r, "faults")),
            med(runs, |r| f(r, "blocked_ms")),
            med(runs, |r| latency(r, "fault_latency_us", "p50_us")),
            med(runs, |r| latency(r, "fault_latency_us", "p99_us")),
            med(runs, |r| f(r, "postcopy_ms")),
        );
    }
    let ratio = med(&with, |r| f(r, "blocked_ms")) / med(&without, |r| f(r, "blocked_ms"));
    println!("  blocked time with / without: {ratio:.2}x");
    let _ = std::fs::remove_file(&ws);
}
