//! The demo (`pagehop demo`, `cargo xtask demo`): a live hybrid migration
//! of the built-in workload between two network namespaces on this
//! machine, end to end: the migration report, and what the workload itself
//! saw (its heartbeat gap and its exit check of every page).
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pagehop::sys::process::Process;
use pagehop_workload::heartbeat_ns;

use crate::netns::{NetnsError, NetnsPair};
use crate::run::Binaries;

/// What the demo migrates.
pub struct DemoOptions {
    /// Workload arena size.
    pub size_mib: u64,
    /// Workload write rate (MB/s of distinct pages).
    pub write_mbps: f64,
    pub binaries: Binaries,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("running the demo")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("the migration failed ({status})")]
    Failed { status: std::process::ExitStatus },
    #[error(transparent)]
    Redis(#[from] crate::redis::RedisError),
}

/// Runs the demo, printing as it goes.
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    let args = opts;
    let pagehop = &opts.binaries.pagehop;
    let workload = &opts.binaries.workload;
    let dir = std::env::temp_dir().join(format!("pagehop-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(DemoError::Io)?;
    let token = dir.join("token");
    crate::write_token(&token, "demo-token").map_err(DemoError::Io)?;
    let pair = NetnsPair::create("phdemo", 42)?;
    let listen = format!("{}:7000", pair.addr_b);
    let log = dir.join("destination.log");
    let common = format!("--size-mib {} --threads 2 --report-ms 50", args.size_mib);
    println!(
        "== two network namespaces: {} ({}) and {} ({}), joined by a veth pair",
        pair.a, pair.addr_a, pair.b, pair.addr_b
    );

    let mut source = Command::new(workload)
        .args(common.split(' '))
        .args(["--write-mbps", &args.write_mbps.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(DemoError::Io)?;
    let mut lines = BufReader::new(source.stdout.take().expect("piped")).lines();
    let ready = lines
        .next()
        .transpose()
        .map_err(DemoError::Io)?
        .unwrap_or_default();
    println!(
        "== source workload ({} MiB, {} MB/s): {ready}",
        args.size_mib, args.write_mbps
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let restore = format!(
        "exec {} --resume {common} --resume-lazy --check-on-exit > {} 2>&1",
        workload.display(),
        log.display()
    );
    let mut recv = NetnsPair::command(&pair.b, pagehop.to_str().expect("utf-8 path"))
        .args([
            "recv",
            "--listen",
            &listen,
            "--token-file",
            token.to_str().expect("utf-8"),
            "--restore-cmd",
            &restore,
        ])
        .spawn()
        .map_err(DemoError::Io)?;
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "== pagehop send --pid {} --to {listen} --mode hybrid --verify  (from {})",
        source.id(),
        pair.a
    );
    let status = NetnsPair::command(&pair.a, pagehop.to_str().expect("utf-8 path"))
        .args([
            "send",
            "--pid",
            &source.id().to_string(),
            "--to",
            &listen,
            "--mode",
            "hybrid",
            "--verify",
        ])
        .args(["--token-file", token.to_str().expect("utf-8")])
        .status()
        .map_err(DemoError::Io)?;
    let _ = recv.wait();
    let _ = source.wait();
    let last_source_beat = rx.try_iter().filter_map(|l| heartbeat_ns(&l)).last();
    // The destination's first heartbeat (its writers start at once; pages
    // fault in as they touch them).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dest_text = String::new();
    while Instant::now() < deadline {
        dest_text = std::fs::read_to_string(&log).unwrap_or_default();
        if dest_text.lines().any(|l| l.starts_with("heartbeat")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(line) = dest_text.lines().find(|l| l.starts_with("resumed")) {
        println!("== destination workload: {line}");
    }
    let first_dest_beat = dest_text.lines().find_map(heartbeat_ns);
    if let (Some(a), Some(b)) = (last_source_beat, first_dest_beat) {
        println!(
            "== downtime the workload itself saw: {:.1} ms between its last heartbeat on the source and its first on the destination (50 ms heartbeats, so up to 50 ms of that is the heartbeat period)",
            b.saturating_sub(a) as f64 / 1e6
        );
    }
    if let Some(pid) = dest_text.lines().find_map(|l| {
        l.strip_prefix("resume pid=")?
            .split_whitespace()
            .next()?
            .parse::<i32>()
            .ok()
    }) {
        if let Ok(restored) = Process::open(pid) {
            let _ = restored.signal(libc::SIGTERM);
        }
        // Its exit line carries the check of every page of its arena.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("exit ")) {
                println!("== destination workload: {line}");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        return Err(DemoError::Failed { status });
    }
    Ok(())
}
