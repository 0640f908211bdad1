//! `pagehop bench`: the research harness. Runs scenario files (TOML, see
//! [`scenario`]) or the built-in set, with the baselines in the same run,
//! and writes a results directory:
//!
//! - `runs.jsonl`: one line per migration (every field of send's and recv's
//!   reports, the downtime the workload saw, its exit check) and one per
//!   iperf3 baseline; written as the run goes, so an interrupted run keeps
//!   what it measured;
//! - `summary.csv`, `summary.md`: medians and spread, next to the baselines;
//! - `*.svg`: the plots ([`outputs`]);
//! - `scenarios.toml` (what ran) and `environment.json` (where).
//!
//! Order of work: [`preflight`] checks everything first; per scenario a
//! [`network::Link`] is built and measured with iperf3, then the migrations
//! run interleaved (repetition, point, mode), so that drift on a shared
//! machine spreads over all modes. [`cleanup`] releases the namespaces and
//! processes also on SIGINT/SIGTERM/SIGHUP.
pub mod app;
pub mod bins;
pub mod cleanup;
pub mod demo;
pub mod demo_redis;
pub mod netns;
pub mod network;
pub mod outputs;
pub mod plot;
pub mod preflight;
pub mod redis;
pub mod run;
pub mod scenario;
pub mod summary;

use std::io::Write;
use std::path::{Path, PathBuf};

use run::{Binaries, Line, RunSpec};
use scenario::Scenario;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error("scenario {scenario:?}: setting up its link")]
    Network {
        scenario: String,
        #[source]
        source: network::NetworkError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already holds results; choose another --out")]
    Exists { path: PathBuf },
    #[error("{path}: line {line} is not a run record: {message}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Output(#[from] outputs::OutputError),
    #[error(transparent)]
    Cleanup(#[from] cleanup::CleanupError),
}

pub struct BenchOptions {
    /// What to run (written to the results as `scenarios.toml`).
    pub scenarios: Vec<Scenario>,
    pub out: PathBuf,
    pub binaries: Binaries,
    /// Seconds of each iperf3 baseline.
    pub iperf3_seconds: u32,
    /// Prefix of the two namespaces (see [`network::Link::create`]).
    pub netns_prefix: String,
}

/// What a finished run produced.
pub struct Outcome {
    pub dir: PathBuf,
    pub runs: usize,
    pub failed: usize,
    /// Scenarios that could not run at all (their link could not be built).
    pub skipped: Vec<String>,
    pub files: Vec<PathBuf>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.to_path_buf();
    move |source| BenchError::Io { what, path, source }
}

/// Runs every scenario; `progress` gets a line per step.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Outcome, BenchError> {
    preflight::check(&opts.scenarios)?;
    let dir = &opts.out;
    let runs_path = dir.join("runs.jsonl");
    if runs_path.exists() {
        return Err(BenchError::Exists { path: dir.clone() });
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let copy = dir.join("scenarios.toml");
    std::fs::write(&copy, scenario::to_toml(&opts.scenarios)).map_err(io("writing", &copy))?;
    let env = dir.join("environment.json");
    std::fs::write(&env, environment().to_string() + "\n").map_err(io("writing", &env))?;
    let mut jsonl = std::fs::File::create(&runs_path).map_err(io("creating", &runs_path))?;
    let scratch = cleanup::ScratchDir::create(
        std::env::temp_dir().join(format!("pagehop-bench-{}", std::process::id())),
    )
    .map_err(io("creating", &std::env::temp_dir()))?;

    let total: usize = opts.scenarios.iter().map(Scenario::runs).sum();
    let mut lines = Vec::new();
    let mut done = 0;
    let mut failed = 0;
    let mut skipped = Vec::new();
    for s in &opts.scenarios {
        progress(&format!(
            "== {}: {} ({} runs)",
            s.name,
            s.network.label(),
            s.runs()
        ));
        let link = match network::Link::create(&opts.netns_prefix, &s.network) {
            Ok(link) => link,
            Err(source) => {
                // The other scenarios still run; the run fails at the end.
                let e = BenchError::Network {
                    scenario: s.name.clone(),
                    source,
                };
                let message = pagehop::mem::error_chain(&e);
                progress(&format!("   skipped: {message}"));
                skipped.push(message);
                continue;
            }
        };
        let (mbps, error) = match link.iperf3_mbps(opts.iperf3_seconds) {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(pagehop::mem::error_chain(&e))),
        };
        progress(&format!(
            "   raw path (iperf3): {}",
            mbps.map_or_else(
                || format!("failed: {}", error.clone().unwrap_or_default()),
                |v| format!("{v:.1} MB/s")
            )
        ));
        let line = Line::Iperf3 {
            scenario: s.name.clone(),
            network: s.network.label(),
            mbps,
            error,
        };
        append(&mut jsonl, &line, &runs_path)?;
        lines.push(line);
        for rep in 0..s.repetitions {
            for point in s.points() {
                for method in methods(s) {
                    let spec = RunSpec {
                        scenario: s,
                        point,
                        method,
                        rep,
                        link: &link,
                        binaries: &opts.binaries,
                        scratch: scratch.path(),
                    };
                    let (ok, what, line) = match method {
                        Method::Workload(mode) => {
                            let record = run::migrate(&spec.with(mode));
                            let what = format!(
                                "{} MiB, {} MB/s, {}, #{}: {}",
                                point.size_mib,
                                point.write_mbps,
                                mode.name(),
                                rep + 1,
                                describe(&record)
                            );
                            (record.ok, what, Line::Migration(Box::new(record)))
                        }
                        Method::Redis(method) => {
                            let record = app::migrate(&spec.with(method));
                            let what = format!(
                                "redis {} MiB, {}, #{}: {}",
                                point.size_mib,
                                record.method,
                                rep + 1,
                                describe_app(&record)
                            );
                            (record.ok, what, Line::App(Box::new(record)))
                        }
                    };
                    done += 1;
                    failed += usize::from(!ok);
                    progress(&format!("   [{done}/{total}] {what}"));
                    append(&mut jsonl, &line, &runs_path)?;
                    lines.push(line);
                }
            }
        }
    }
    drop(scratch);
    let files = outputs::write_all(dir, &lines, &opts.scenarios)?;
    Ok(Outcome {
        dir: dir.clone(),
        runs: done,
        failed,
        skipped,
        files,
    })
}

/// What a point of a scenario runs: a mode on pagehop's workload, or a
/// method on redis (see [`app::methods`]).
#[derive(Clone, Copy)]
enum Method {
    Workload(scenario::Mode),
    Redis(app::Method),
}

fn methods(s: &Scenario) -> Vec<Method> {
    match s.kind {
        scenario::Kind::Workload => s
            .modes_with_baseline()
            .into_iter()
            .map(Method::Workload)
            .collect(),
        scenario::Kind::Redis => app::methods(s).into_iter().map(Method::Redis).collect(),
    }
}

fn describe(r: &run::Record) -> String {
    if let Some(e) = &r.error {
        return format!("FAILED: {e}");
    }
    format!(
        "downtime {:.1} ms (workload saw {}), total {:.2} s, {:.0} MiB on the wire, {} rounds",
        r.send_f64("downtime_ms"),
        r.workload_downtime_ms
            .map_or("?".into(), |v| format!("{v:.1} ms")),
        r.send_f64("total_ms") / 1e3,
        r.send_f64("bytes_wire") / (1u64 << 20) as f64,
        r.send_f64("rounds")
    )
}

fn describe_app(r: &app::AppRecord) -> String {
    if let Some(e) = &r.error {
        return format!("FAILED: {e}");
    }
    let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0} ms"));
    format!(
        "client saw {} unavailable, freeze → running {}, all local {}, {:.0} MiB on the wire, {} remote faults, keys {}",
        ms(r.unavailable_ms),
        ms(r.freeze_to_running_ms),
        ms(r.all_local_ms),
        r.bytes_wire.unwrap_or(0) as f64 / (1u64 << 20) as f64,
        r.remote_faults.map_or("?".into(), |f| f.to_string()),
        r.keys_check.as_deref().unwrap_or("not checked"),
    )
}

fn append(file: &mut std::fs::File, line: &Line, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string(line).expect("records serialize") + "\n";
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(io("writing", path))
}

/// Writes a fresh token for one migration to `path` (send and recv both
/// read it with `--token-file`); `what` starts it, for whoever reads it.
pub fn write_token(path: &Path, what: &str) -> std::io::Result<()> {
    write_secret(path, &format!("{what}-{:x}", pagehop::sys::monotonic_ns()))
}

/// Writes `contents` to a new file at `path` that only its owner may read
/// (what pagehop asks of a token file).
pub fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_bytes())
}

/// Redoes the summary and plots of an existing results directory.
pub fn summarize(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let runs_path = dir.join("runs.jsonl");
    let text = std::fs::read_to_string(&runs_path).map_err(io("reading", &runs_path))?;
    let mut lines = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        lines.push(
            serde_json::from_str::<Line>(l).map_err(|e| BenchError::Record {
                path: runs_path.clone(),
                line: i + 1,
                message: e.to_string(),
            })?,
        );
    }
    let scenarios_path = dir.join("scenarios.toml");
    let scenarios = match std::fs::read_to_string(&scenarios_path) {
        Ok(text) => scenario::parse(&text, &scenarios_path.display().to_string())?,
        Err(_) => Vec::new(),
    };
    Ok(outputs::write_all(dir, &lines, &scenarios)?)
}

/// Where the run happened: kernel, CPUs, memory, pagehop's version.
fn environment() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    serde_json::json!({
        "pagehop_version": env!("CARGO_PKG_VERSION"),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_total_kib.map(|k| k / 1024),
        "started_unix_s": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// A UTC timestamp for directory names: `20261122-143005`.
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamps() {
        assert_eq!(super::utc_stamp(0), "19700101-000000");
        assert_eq!(super::utc_stamp(1_795_357_805), "20261122-143005");
        assert_eq!(super::utc_stamp(951_782_400), "20000229-000000");
    }
}
