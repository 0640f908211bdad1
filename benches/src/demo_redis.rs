//! The CRIU demo (`pagehop demo --redis`, `cargo xtask demo --redis`): an
//! unmodified redis-server from Debian, holding a few hundred MiB, is
//! live-migrated with `send --criu` / `recv --criu` between two network
//! namespaces while a client reads keys through it; then the report, the
//! unavailability the client saw, and a check that every key arrived.
use std::process::Stdio;
use std::time::Duration;

use crate::demo::DemoError;
use crate::netns::NetnsPair;
use crate::redis::{self, Reader, RedisTree};
use crate::run::Binaries;

pub struct RedisDemoOptions {
    /// redis's resident size to load.
    pub size_mib: u64,
    /// pagehop's --mode.
    pub mode: String,
    pub binaries: Binaries,
}

pub fn run(opts: &RedisDemoOptions) -> Result<(), DemoError> {
    let pagehop = opts.binaries.pagehop.to_str().expect("utf-8 path");
    let dir = std::env::temp_dir().join(format!("pagehop-demo-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(DemoError::Io)?;
    let token = dir.join("token");
    crate::write_token(&token, "demo-token").map_err(DemoError::Io)?;
    let token = token.to_str().expect("utf-8 path").to_string();
    let pair = NetnsPair::create("phredis", 43)?;
    let listen = format!("{}:7000", pair.addr_b);
    println!(
        "== two network namespaces: {} ({}) and {} ({}), joined by a veth pair",
        pair.a, pair.addr_a, pair.b, pair.addr_b
    );
    let source = RedisTree::start(&pair.a, &pair.addr_a)?;
    let keys = redis::keys_for_mib(opts.size_mib);
    redis::load(&pair.a, &pair.addr_a, keys)?;
    println!(
        "== redis-server (Debian's, unmodified) in its own pid namespace in {}: pid {}, {keys} keys, {} MiB resident",
        pair.a,
        source.root(),
        source.rss_mib()
    );
    let images = dir.join("images");
    let recv_log = dir.join("recv.log");
    let mut recv = redis::in_netns(&pair.b, pagehop)
        .args([
            "recv",
            "--listen",
            &listen,
            "--token-file",
            &token,
            "--criu",
        ])
        .arg(&images)
        .arg("--criu-restore-opt=--tcp-close")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&recv_log).map_err(DemoError::Io)?)
        .spawn()
        .map_err(DemoError::Io)?;
    std::thread::sleep(Duration::from_millis(500));
    let reads = dir.join("reads.json");
    let reader = Reader::start(
        &pair.a,
        &[&pair.addr_a, &pair.addr_b],
        keys,
        (opts.size_mib as f64 / 40.0).max(8.0),
        &reads,
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    println!(
        "== a client reads keys from {} (then {}); pagehop send --criu --pid {} --mode {} (from {})",
        pair.addr_a,
        pair.addr_b,
        source.root(),
        opts.mode,
        pair.a
    );
    let status = redis::in_netns(&pair.a, pagehop)
        .args(["send", "--pid", &source.root().to_string(), "--to", &listen])
        .args([
            "--criu",
            "--criu-opt=--tcp-close",
            "--criu-opt=--skip-in-flight",
        ])
        .args(["--mode", &opts.mode])
        .args(["--token-file", &token])
        .status()
        .map_err(DemoError::Io)?;
    let _ = recv.wait();
    if let Ok(text) = std::fs::read_to_string(&recv_log) {
        for line in text.lines() {
            println!("   recv: {line}");
        }
    }
    let seen = reader.finish()?;
    println!(
        "== the client: longest gap between two answers {:.1} ms; answers from the source {}, from the destination {}; wrong values {}; read latency in the destination's first 3 s: p50 {:.0} us, p99 {:.0} us",
        seen["longest_gap_ms"].as_f64().unwrap_or(0.0),
        seen["answers"][0],
        seen["answers"][1],
        seen["bad_values"],
        seen["first_seconds_latency_us"]["p50"]
            .as_f64()
            .unwrap_or(0.0),
        seen["first_seconds_latency_us"]["p99"]
            .as_f64()
            .unwrap_or(0.0),
    );
    let checked = if status.success() {
        redis::check(&pair.b, &pair.addr_b, keys, &dir.join("no-writes"))
    } else {
        Ok(String::new())
    };
    // The restored redis, and anything else in the destination's namespace.
    crate::netns::kill_processes(&pair.b);
    drop(source);
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        return Err(DemoError::Failed { status });
    }
    println!("== every key arrived at the destination: {}", checked?);
    Ok(())
}
