//! `pagehop bench`: runs scenario files (or the built-in set) and writes a
//! results directory; see `pagehop_bench`.
use std::path::PathBuf;

use clap::Args;
use pagehop_bench::{self, BenchOptions, run::Binaries, scenario};

#[derive(Args)]
pub struct BenchArgs {
    /// Scenario file (TOML); default: the built-in set (see --print-builtin).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Run only these scenarios of the file (repeatable).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Override every scenario's repetitions.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    repetitions: Option<u32>,
    /// Results directory (default: bench-results/<UTC time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seconds of each iperf3 baseline.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    iperf3_seconds: u32,
    /// Names of the two network namespaces: PREFIX-a and PREFIX-b (to run
    /// two benches at once, give them different prefixes).
    #[arg(long, value_name = "PREFIX", default_value = pagehop_bench::network::DEFAULT_PREFIX)]
    netns_prefix: String,
    /// Check the scenarios and this machine, print the plan, run nothing.
    #[arg(long)]
    check: bool,
    /// Print the built-in scenario file and exit.
    #[arg(long)]
    print_builtin: bool,
    /// Redo summary.csv, summary.md and the plots of DIR from its runs.jsonl.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["scenario", "check", "out"])]
    summarize: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.print_builtin {
        print!("{}", scenario::BUILTIN);
        return Ok(());
    }
    if let Some(dir) = args.summarize {
        for file in pagehop_bench::summarize(&dir)? {
            println!("{}", file.display());
        }
        return Ok(());
    }
    let (text, origin) = match &args.scenario {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (scenario::BUILTIN.to_string(), "built-in scenarios".into()),
    };
    let mut scenarios = scenario::parse(&text, &origin)?;
    if !args.only.is_empty() {
        if let Some(missing) = args
            .only
            .iter()
            .find(|n| !scenarios.iter().any(|s| &s.name == *n))
        {
            anyhow::bail!("{origin} has no scenario named {missing:?}");
        }
        scenarios.retain(|s| args.only.contains(&s.name));
    }
    if let Some(reps) = args.repetitions {
        for s in &mut scenarios {
            s.repetitions = reps;
        }
    }
    pagehop_bench::network::check_prefix(&args.netns_prefix)?;
    let exe = std::env::current_exe()?;
    let workload = exe.with_file_name("pagehop-workload");
    anyhow::ensure!(
        workload.is_file(),
        "{} not found: pagehop bench runs the pagehop-workload built next to it \
         (cargo build --release --bins, or cargo xtask bench)",
        workload.display()
    );
    // Before any thread exists, so that every thread inherits the mask.
    pagehop_bench::cleanup::watch_signals(|sig| {
        eprintln!("pagehop bench: signal {sig}: stopped; namespaces and processes cleaned up");
    })?;
    if args.check {
        pagehop_bench::preflight::check(&scenarios)?;
        for s in &scenarios {
            println!(
                "{}: {}, {} point(s) x {} mode(s) x {} repetition(s) = {} migrations",
                s.name,
                s.network.label(),
                s.points().len(),
                s.modes_with_baseline().len(),
                s.repetitions,
                s.runs()
            );
        }
        println!("ok: this machine can run {origin}");
        return Ok(());
    }
    let opts = BenchOptions {
        scenarios,
        out: args.out.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from("bench-results").join(pagehop_bench::utc_stamp(now))
        }),
        binaries: Binaries {
            workload,
            pagehop: exe,
        },
        iperf3_seconds: args.iperf3_seconds,
        netns_prefix: args.netns_prefix,
    };
    let outcome = pagehop_bench::run(&opts, &mut |line| eprintln!("{line}"))?;
    println!(
        "{} migrations ({} failed); results in {}",
        outcome.runs,
        outcome.failed,
        outcome.dir.display()
    );
    for file in &outcome.files {
        println!("  {}", file.display());
    }
    for skipped in &outcome.skipped {
        eprintln!("pagehop bench: skipped {skipped}");
    }
    anyhow::ensure!(
        outcome.skipped.is_empty(),
        "{} scenario(s) could not run",
        outcome.skipped.len()
    );
    anyhow::ensure!(
        outcome.failed == 0,
        "{} of {} migrations failed (see runs.jsonl)",
        outcome.failed,
        outcome.runs
    );
    Ok(())
}
