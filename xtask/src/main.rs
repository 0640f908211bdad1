//! Project tasks: `cargo xtask setup | demo | test | bench | criterion | fuzz`.
//!
//! Every task first runs `scripts/setup.sh`, which installs what is missing
//! (nightly rust-src, bpf-linker, iproute2) and does nothing otherwise.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod fuzz;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces pagehop needs (idempotent).
    Setup,
    /// Live-migrate the built-in workload between two network namespaces
    /// (`pagehop demo`); with --redis, an unmodified redis-server under CRIU.
    Demo {
        /// Migrate Debian's redis-server (300 MiB of keys) with `send --criu`,
        /// a client reading through it.
        #[arg(long)]
        redis: bool,
    },
    /// Run the whole test suite, privileged tests included (needs root).
    Test,
    /// Run the research harness (`pagehop bench`, release build): the
    /// built-in scenario set, or what the arguments after `--` say.
    Bench {
        /// Arguments for `pagehop bench` (e.g. `-- --scenario FILE --only NAME`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the criterion micro-benchmarks and the other `cargo bench` targets.
    Criterion,
    /// A short run of every fuzz target (cargo-fuzz, nightly); installs cargo-fuzz if missing.
    Fuzz {
        /// Seconds to fuzz each target.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Only this target (frame_decoder or image_reader).
        target: Option<String>,
    },
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
    let unit_tests = ["test", "--lib", "--bins"];
    if !is_root() {
        // What runs without root; the root-only tests are listed as ignored.
        run(cargo().args(unit_tests))?;
        bail!(
            "the root-only tests (eBPF, ptrace, userfaultfd, network namespaces) did not run; \
             run `sudo cargo xtask test`"
        );
    }
    // Root-only tests are `#[ignore = "needs root"]`, so that a plain `cargo
    // test` lists them as ignored instead of passing them unrun. Here, as
    // root, they all run; each fails, not skips, if it finds itself without root.
    run(cargo().args(unit_tests).args(["--", "--include-ignored"]))?;
    // Privileged tests share kernel state (probes, tracefs): one at a time.
    run(cargo().args([
        "test",
        "--package",
        "pagehop-tests",
        "--test",
        "privileged",
        "--",
        "--include-ignored",
        "--test-threads=1",
    ]))
}

fn demo(redis: bool) -> anyhow::Result<()> {
    setup()?;
    let bin = release_bins()?;
    if redis {
        return run(Command::new(bin.join("pagehop")).args([
            "demo",
            "--redis",
            "--size-mib",
            "300",
        ]));
    }
    run(Command::new(bin.join("pagehop")).args(["demo", "--size-mib", "512", "--write-mbps", "50"]))
}

fn release_bins() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--bins"]))?;
    Ok(root().join("target/release"))
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    setup()?;
    let bin = release_bins()?;
    run(Command::new(bin.join("pagehop")).arg("bench").args(args))
}

fn criterion() -> anyhow::Result<()> {
    setup()?;
    // Benchmarks run the release binaries; cargo builds only a package's own.
    release_bins()?;
    run(cargo().args(["bench", "--package", "pagehop-bench"]))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo { redis } => demo(redis),
        Task::Test => test(),
        Task::Bench { args } => bench(&args),
        Task::Criterion => criterion(),
        Task::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
    }
}
