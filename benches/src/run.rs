//! One migration of a scenario: a fresh workload in the source namespace,
//! `pagehop recv` in the destination namespace (it restores the workload
//! lazily and the workload checks its whole arena when told to exit),
//! `pagehop send` between them. The record keeps send's and recv's whole
//! reports, the downtime the workload itself saw (its last heartbeat on the
//! source to its first on the destination, 10 ms apart) and the verdict of
//! its exit check. A failed run is recorded with its error, not retried.
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cleanup::{self, Group};
use super::network::Link;
use super::scenario::{Mode, Point, Scenario};
use crate::netns::NetnsPair;
use pagehop_workload::heartbeat_ns;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cleanup(#[from] cleanup::CleanupError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// The programs a run starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub pagehop: PathBuf,
    pub workload: PathBuf,
}

/// Workload heartbeat period: bounds the error of the workload-seen downtime.
pub const HEARTBEAT_MS: u64 = 10;
/// Port `pagehop recv` listens on in the destination namespace.
const PORT: u16 = 7810;
/// How long the workload runs before the migration starts.
const WARMUP: Duration = Duration::from_millis(500);

/// One line of `runs.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Line {
    /// The raw-path baseline of a scenario's link.
    Iperf3 {
        scenario: String,
        network: String,
        mbps: Option<f64>,
        error: Option<String>,
    },
    Migration(Box<Record>),
    /// A run of a redis scenario (pagehop under CRIU or a CRIU baseline).
    App(Box<crate::app::AppRecord>),
}

/// One migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub scenario: String,
    pub network: String,
    pub size_mib: u64,
    pub write_mbps: f64,
    pub mode: String,
    pub rep: u32,
    /// send and recv succeeded and the workload's exit check passed.
    pub ok: bool,
    pub error: Option<String>,
    /// Last heartbeat on the source → first on the destination.
    pub workload_downtime_ms: Option<f64>,
    /// The restored workload's exit check: "ok", or "bad page=<addr>".
    pub invariant: Option<String>,
    /// `pagehop send --json` (null if it printed none).
    pub send: serde_json::Value,
    /// `pagehop recv --json` (null if it printed none).
    pub recv: serde_json::Value,
}

impl Record {
    /// A number from send's report (NaN if absent).
    pub fn send_f64(&self, key: &str) -> f64 {
        self.send[key].as_f64().unwrap_or(f64::NAN)
    }
}

/// What a workload run assumes of an unshaped link, for its time limits:
/// 100 MB/s, well below what this path gives.
const UNSHAPED_BITS: f64 = 800e6;

/// What to run: a point of a scenario, by a method (a pagehop mode on the
/// built-in workload, an [`crate::app::Method`] on redis).
#[derive(Clone, Copy)]
pub struct RunSpec<'a, M> {
    pub scenario: &'a Scenario,
    pub point: Point,
    pub method: M,
    pub rep: u32,
    pub link: &'a Link,
    pub binaries: &'a Binaries,
    pub scratch: &'a Path,
}

impl<'a, M> RunSpec<'a, M> {
    /// The same run by another method.
    pub fn with<N>(&self, method: N) -> RunSpec<'a, N> {
        RunSpec {
            scenario: self.scenario,
            point: self.point,
            method,
            rep: self.rep,
            link: self.link,
            binaries: self.binaries,
            scratch: self.scratch,
        }
    }

    /// Seconds the link needs for `mib` MiB at the scenario's rate, or at
    /// `unshaped_bits` per second on an unshaped link.
    pub fn link_secs(&self, mib: u64, unshaped_bits: f64) -> f64 {
        let bits = match self.scenario.network.rate_bits() {
            Ok(Some(bits)) => bits as f64,
            _ => unshaped_bits,
        };
        (mib << 20) as f64 * 8.0 / bits
    }
}

/// Runs one migration; failures are in the record.
pub fn migrate(spec: &RunSpec<'_, Mode>) -> Record {
    let mut record = Record {
        scenario: spec.scenario.name.clone(),
        network: spec.scenario.network.label(),
        size_mib: spec.point.size_mib,
        write_mbps: spec.point.write_mbps,
        mode: spec.method.name().to_string(),
        rep: spec.rep,
        ok: false,
        error: None,
        workload_downtime_ms: None,
        invariant: None,
        send: serde_json::Value::Null,
        recv: serde_json::Value::Null,
    };
    if let Err(e) = drive(spec, &mut record) {
        record.error = Some(pagehop::mem::error_chain(&e));
    }
    record.ok = record.error.is_none() && record.invariant.as_deref() == Some("ok");
    if record.error.is_none() && !record.ok {
        record.error = Some(match &record.invariant {
            Some(bad) => format!("the restored workload's exit check failed: {bad}"),
            None => "the restored workload never reported its exit check".into(),
        });
    }
    record
}

/// The workload options shared by the source and the resumed process (the
/// resumed one checks its arena header against them).
fn workload_args(spec: &RunSpec<'_, Mode>) -> Vec<String> {
    let w = &spec.scenario.workload;
    [
        "--size-mib",
        &spec.point.size_mib.to_string(),
        "--threads",
        &w.threads.to_string(),
        "--pattern",
        &w.pattern,
        "--fill",
        &w.fill,
        "--seed",
        &(spec.rep + 1).to_string(),
        "--write-mbps",
        &spec.point.write_mbps.to_string(),
        "--report-ms",
        &HEARTBEAT_MS.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn drive(spec: &RunSpec<'_, Mode>, record: &mut Record) -> Result<(), RunError> {
    let pair = &spec.link.pair;
    let dir = spec.scratch;
    let token = dir.join("token");
    crate::write_token(&token, "pagehop-bench").map_err(|source| RunError::Io {
        what: "writing the token file",
        source,
    })?;
    let log = dir.join(format!("restored-{}.log", spec.method.name()));
    let _ = std::fs::remove_file(&log);
    let args = workload_args(spec);
    let listen = format!("{}:{PORT}", pair.addr_b);
    let restore = format!(
        "exec {} --resume --resume-lazy --check-on-exit {} > {} 2>&1",
        shell_quote(&spec.binaries.workload.to_string_lossy()),
        args.join(" "),
        shell_quote(&log.to_string_lossy())
    );
    let mut recv = cleanup::spawn(
        NetnsPair::command(&pair.b, path_str(&spec.binaries.pagehop)?)
            .args(["recv", "--listen", &listen, "--json"])
            .args(spec.scenario.engine.wire_args())
            .args(["--reconnect-timeout", "2", "--token-file"])
            .arg(&token)
            .arg("--socket")
            .arg(dir.join("uffd.sock"))
            .args(["--restore-cmd", &restore])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let recv_out = read_all(recv.child.stdout.take());
    let recv_err = lines(recv.child.stderr.take());
    wait_line(&recv_err.lines, "listening on", Duration::from_secs(10))
        .map_err(|_| RunError::Failed(format!("recv did not start: {}", recv_err.text())))?;

    let mut source = cleanup::spawn(
        Command::new(&spec.binaries.workload)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let beats = heartbeats(source.child.stdout.take().expect("piped"));
    let ready_within = Duration::from_secs(30 + spec.point.size_mib / 16);
    let deadline = Instant::now() + ready_within;
    while beats.last_ns.load(Ordering::SeqCst) == 0 {
        if Instant::now() > deadline || source.child.try_wait().ok().flatten().is_some() {
            return Err(RunError::Failed("the source workload did not start".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(WARMUP);

    let mut send = cleanup::spawn(
        NetnsPair::command(&pair.a, path_str(&spec.binaries.pagehop)?)
            .args(["send", "--pid", &source.pid().to_string(), "--to", &listen])
            .args(["--json", "--mode", spec.method.name(), "--token-file"])
            .arg(&token)
            .args(spec.scenario.engine.send_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let send_out = read_all(send.child.stdout.take());
    let send_err = read_all(send.child.stderr.take());
    // Generous: every page a few times over the link, plus start-up.
    let limit = Duration::from_secs_f64(
        120.0 + 8.0 * spec.link_secs(spec.point.size_mib + 16, UNSHAPED_BITS),
    );
    let status = wait_exit(&mut send, "pagehop send", limit)?;
    let send_text = send_out.recv().unwrap_or_default();
    record.send = serde_json::from_str(send_text.trim()).unwrap_or(serde_json::Value::Null);
    if !status {
        let err = send_err.recv().unwrap_or_default();
        return Err(RunError::Failed(format!(
            "send failed: {}; recv: {}",
            err.trim(),
            recv_err.text().trim()
        )));
    }
    let recv_ok = wait_exit(&mut recv, "pagehop recv", Duration::from_secs(60))?;
    record.recv = serde_json::from_str(recv_out.recv().unwrap_or_default().trim())
        .unwrap_or(serde_json::Value::Null);
    if !recv_ok {
        return Err(RunError::Failed(format!(
            "recv failed: {}",
            recv_err.text().trim()
        )));
    }
    let last_source_ns = beats.last_ns.load(Ordering::SeqCst);
    drop(source);

    // The restored workload: its first heartbeat, then its exit check.
    let restored = record.recv["restored_pid"]
        .as_i64()
        .ok_or_else(|| RunError::Failed("recv reported no restored pid".into()))?
        as i32;
    let text = wait_file_line(&log, "heartbeat", Duration::from_secs(30));
    let first_dest_ns = text.lines().find_map(heartbeat_ns);
    if let Some(first) = first_dest_ns {
        record.workload_downtime_ms = Some(first.saturating_sub(last_source_ns) as f64 / 1e6);
    }
    // The restored workload recv just reported, in recv's process group.
    if let Ok(process) = pagehop::sys::process::Process::open(restored) {
        let _ = process.signal(libc::SIGTERM);
    }
    let check_within = Duration::from_secs(30 + spec.point.size_mib / 8);
    let text = wait_file_line(&log, "exit ", check_within);
    let Some(exit) = text.lines().find(|l| l.starts_with("exit ")) else {
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(RunError::Failed(format!(
            "the restored workload (pid {restored}) did not report its exit check within {check_within:?}; \
             its output ends with: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    };
    // "ok", or the whole exit line, which names the bad page.
    record.invariant = exit
        .split_whitespace()
        .find_map(|w| w.strip_prefix("invariant="))
        .map(|v| if v == "ok" { v } else { exit }.to_string());
    drop(recv);
    Ok(())
}

fn path_str(path: &Path) -> Result<&str, RunError> {
    path.to_str()
        .ok_or_else(|| RunError::Failed(format!("{} is not a UTF-8 path", path.display())))
}

/// `text` as one single-quoted `sh` word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Waits for `group`'s leader to exit within `limit` (killing it after);
/// whether it succeeded.
fn wait_exit(group: &mut Group, name: &str, limit: Duration) -> Result<bool, RunError> {
    match group.wait_within(limit) {
        Ok(Some(status)) => Ok(status.success()),
        Ok(None) => Err(RunError::Failed(format!(
            "{name} did not finish within {limit:?}"
        ))),
        Err(source) => Err(RunError::Io {
            what: "waiting for a child",
            source,
        }),
    }
}

/// Reads `pipe` to its end on a thread; the text arrives on the channel.
pub(crate) fn read_all(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
    }
    rx
}

/// Lines of a pipe, collected as they come.
struct Lines {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Lines {
    fn text(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

fn lines(pipe: Option<impl Read + Send + 'static>) -> Lines {
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Some(pipe) = pipe {
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
    }
    Lines { lines }
}

fn wait_line(
    lines: &std::sync::Mutex<Vec<String>>,
    needle: &str,
    limit: Duration,
) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if lines
            .lock()
            .map(|l| l.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(())
}

/// Polls `path` until it has a line starting with `prefix` (or `limit`
/// passes); returns its text either way.
fn wait_file_line(path: &Path, prefix: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(prefix)) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The source workload's heartbeats: the newest timestamp (0 before `ready`).
struct Heartbeats {
    last_ns: Arc<AtomicU64>,
}

fn heartbeats(stdout: ChildStdout) -> Heartbeats {
    let last_ns = Arc::new(AtomicU64::new(0));
    let sink = last_ns.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(ns) = heartbeat_ns(&line) {
                sink.store(ns, Ordering::SeqCst);
            }
        }
    });
    Heartbeats { last_ns }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_quote_survives_spaces_and_quotes() {
        assert_eq!(super::shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(super::shell_quote("it's"), "'it'\\''s'");
    }
}
