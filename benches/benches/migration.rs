//! Pre-copy migration benchmarks (`--mode precopy`; post-copy and hybrid are
//! in `postcopy.rs`), side by side in one run, between two
//! network namespaces joined by a veth pair (the path the tests use):
//!
//! 1. stream throughput: pagehop's round 0 vs an iperf3 stream on the same path;
//! 2. `--zerocopy off` (send) vs `--zerocopy on` (send_zc);
//! 3. lz4 on vs off, for compressible and for random pages;
//! 4. downtime and total time as the workload's write rate grows.
//!
//! Each configuration runs PAGEHOP_BENCH_REPS times (default 3), interleaved;
//! medians are printed. `cargo bench --bench migration` (needs root, iproute2,
//! iperf3: `cargo xtask setup` installs them).
use std::process::Stdio;
use std::time::Duration;

use pagehop_bench::netns::NetnsPair;

mod bench_migrate;
mod common;
use bench_migrate::Path;
use common::median;

const PORT: u16 = 7700;

fn reps() -> usize {
    std::env::var("PAGEHOP_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// iperf3 from namespace a to namespace b, one stream, MB/s.
fn iperf3(pair: &NetnsPair) -> Option<f64> {
    let mut server = NetnsPair::command(&pair.b, "iperf3")
        .args(["-s", "-1", "-p", "5299"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = NetnsPair::command(&pair.a, "iperf3")
        .args(["-c", &pair.addr_b, "-p", "5299", "-t", "3", "-J"])
        .output()
        .ok()?;
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 8.0 / 1e6)
}

struct Migration {
    report: serde_json::Value,
}

impl Migration {
    fn f(&self, key: &str) -> f64 {
        self.report[key].as_f64().unwrap_or(f64::NAN)
    }

    /// Round 0's end-to-end bandwidth (MB/s): the stream throughput.
    fn round0_mbps(&self) -> f64 {
        self.report["per_round"][0]["bandwidth_bytes_per_sec"]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1e6
    }
}

/// Migrates a fresh workload from namespace a to b (`--mode precopy`);
/// returns send's report.
fn migrate(
    pair: &NetnsPair,
    size_mib: u64,
    write_mbps: f64,
    fill: &str,
    send_args: &[&str],
) -> Migration {
    let common = format!("--size-mib {size_mib} --threads 1 --fill {fill}");
    let mut args = vec!["--mode", "precopy"];
    args.extend_from_slice(send_args);
    let report = bench_migrate::migrate(
        &Path::Veth(pair),
        PORT,
        &format!("{common} --write-mbps {write_mbps}"),
        &common,
        &args,
    );
    Migration { report }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || std::env::args().any(|a| a == "--list") {
        eprintln!("migration benchmark: needs root; skipped");
        return;
    }
    let pair = NetnsPair::create("phbench", 50).expect("namespaces");
    let reps = reps();
    println!(
        "pre-copy migration between two network namespaces over veth; medians of {reps} runs; 2 shared cores\n"
    );

    // 1 and 2: throughput, send vs send_zc, against iperf3.
    let iperf: Vec<f64> = (0..reps).filter_map(|_| iperf3(&pair)).collect();
    let mut copy = Vec::new();
    let mut zc = Vec::new();
    let mut auto = Vec::new();
    for _ in 0..reps {
        auto.push(
            migrate(
                &pair,
                512,
                0.0,
                "random",
                &["--zerocopy", "auto", "--compress", "off"],
            )
            .round0_mbps(),
        );
        copy.push(
            migrate(
                &pair,
                512,
                0.0,
                "random",
                &["--zerocopy", "off", "--compress", "off"],
            )
            .round0_mbps(),
        );
        zc.push(
            migrate(
                &pair,
                512,
                0.0,
                "random",
                &["--zerocopy", "on", "--compress", "off"],
            )
            .round0_mbps(),
        );
    }
    let base = median(iperf.clone());
    println!(
        "stream throughput (512 MiB of random pages, round 0, end to end incl. the destination's store):"
    );
    println!(
        "  {:<28} {:>9.0} MB/s  {:>6}",
        "iperf3, one TCP stream", base, "1.00x"
    );
    for (name, v) in [
        ("pagehop, send (copy)", &copy),
        ("pagehop, send_zc", &zc),
        ("pagehop, --zerocopy auto", &auto),
    ] {
        let m = median(v.clone());
        println!("  {name:<28} {m:>9.0} MB/s  {:>5.2}x", m / base);
    }

    // 3: lz4 on vs off.
    println!("\nlz4 (256 MiB idle workload): bytes on the wire and round-0 throughput");
    println!(
        "  {:<12} {:<10} {:>12} {:>10} {:>12}",
        "pages", "compress", "wire MiB", "ratio", "MB/s raw"
    );
    for fill in ["compressible", "random"] {
        for compress in ["off", "lz4", "auto"] {
            let runs: Vec<Migration> = (0..reps)
                .map(|_| migrate(&pair, 256, 0.0, fill, &["--compress", compress]))
                .collect();
            let wire = median(
                runs.iter()
                    .map(|m| m.f("bytes_wire") / (1 << 20) as f64)
                    .collect(),
            );
            let ratio = median(runs.iter().map(|m| m.f("compression_ratio")).collect());
            let raw_rate = median(
                runs.iter()
                    .map(|m| {
                        let r0 = &m.report["per_round"][0];
                        r0["bytes_raw"].as_f64().unwrap_or(0.0)
                            / r0["ms"].as_f64().unwrap_or(f64::NAN)
                            / 1e3
                    })
                    .collect(),
            );
            println!("  {fill:<12} {compress:<10} {wire:>12.1} {ratio:>10.2} {raw_rate:>12.0}");
        }
    }

    // 4: downtime and total time as the write rate grows.
    println!(
        "\ndowntime and total time vs write rate (256 MiB, uniform writes, downtime target 50 ms)"
    );
    println!(
        "  {:>10} {:>12} {:>12} {:>7}  switch",
        "MB/s", "downtime ms", "total ms", "rounds"
    );
    for rate in [0.0, 25.0, 50.0, 100.0, 200.0, 400.0] {
        let runs: Vec<Migration> = (0..reps)
            .map(|_| migrate(&pair, 256, rate, "random", &[]))
            .collect();
        let downtime = median(runs.iter().map(|m| m.f("downtime_ms")).collect());
        let total = median(runs.iter().map(|m| m.f("total_ms")).collect());
        let rounds = median(runs.iter().map(|m| m.f("rounds")).collect());
        let reason = runs[runs.len() / 2].report["switch_reason"]
            .as_str()
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        println!("  {rate:>10.0} {downtime:>12.1} {total:>12.1} {rounds:>7.0}  {reason}");
    }
}
