//! Project tasks: `cargo xtask setup | demo | test | bench`.
//!
//! Every task first runs `scripts/setup.sh`, which installs what is missing
//! (nightly rust-src, bpf-linker, iproute2) and does nothing otherwise.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces pagehop needs (idempotent).
    Setup,
    /// Start the built-in workload and track it with `pagehop track`.
    Demo {
        /// Seconds to track.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// Run the whole test suite, privileged tests included (needs root).
    Test,
    /// Run the benchmarks.
    Bench,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn setup() -> anyhow::Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Make bpf-linker (installed into ~/.cargo/bin) visible to the eBPF build.
    if let Some(home) = std::env::var_os("HOME") {
        let bin = Path::new(&home).join(".cargo/bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if !paths.contains(&bin) {
            paths.push(bin);
        }
        cmd.env("PATH", std::env::join_paths(paths).expect("valid PATH"));
    }
    cmd
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().nth(1) == Some("0"))
            })
        })
        .unwrap_or(false)
}

fn test() -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["build", "--all-targets"]))?;
    run(cargo().args(["test", "--lib", "--bins"]))?;
    if !is_root() {
        bail!(
            "the privileged tests (eBPF, ptrace, userfaultfd) need root; run `sudo cargo xtask test`"
        );
    }
    // Privileged tests share kernel state (probes, tracefs): one at a time.
    // PAGEHOP_REQUIRE_PRIVILEGED turns any skip into a failure.
    run(cargo()
        .args([
            "test",
            "--package",
            "pagehop",
            "--test",
            "privileged",
            "--",
            "--test-threads=1",
        ])
        .env("PAGEHOP_REQUIRE_PRIVILEGED", "1"))
}

fn demo(seconds: u32) -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["build", "--release", "--package", "pagehop", "--bins"]))?;
    let bin = root().join("target/release");
    println!(
        "\n== pagehop demo: a 256 MiB workload writing 50 MB/s of pages, 90% of them into a hot 10%"
    );
    println!("   (so fewer distinct pages are dirty per interval), with mmap/munmap churn,");
    println!("   tracked by `pagehop track --backend ebpf` for {seconds} s\n");
    let mut workload = Command::new(bin.join("pagehop-workload"))
        .args([
            "--size-mib",
            "256",
            "--write-mbps",
            "50",
            "--pattern",
            "skew",
            "--threads",
            "2",
            "--churn",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pagehop-workload")?;
    let result = demo_track(&bin, &mut workload, seconds);
    // The workload exits cleanly on SIGTERM.
    let _ = Command::new("kill")
        .args(["-TERM", &workload.id().to_string()])
        .status();
    let _ = workload.wait();
    result
}

fn demo_track(bin: &Path, workload: &mut Child, seconds: u32) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let stdout = workload.stdout.take().context("workload stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .next()
        .context("workload exited before it was ready")??;
    println!("workload: {ready}");
    // Keep draining the workload's heartbeat so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(300));
    run(Command::new(bin.join("pagehop")).args([
        "track",
        "--pid",
        &workload.id().to_string(),
        "--duration",
        &seconds.to_string(),
        "--interval",
        "1000",
    ]))
}

fn bench() -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["bench", "--package", "pagehop"]))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo { seconds } => demo(seconds),
        Task::Test => test(),
        Task::Bench => bench(),
    }
}
