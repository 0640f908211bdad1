//! Scenarios of kind `redis`: Debian's unmodified redis-server, loaded
//! with keys to a resident size, migrated between the scenario's two
//! namespaces by pagehop under CRIU (`send --criu`, each of the scenario's
//! modes) and by CRIU alone (its stop-and-copy: dump, copy the images,
//! restore; and its lazy migration: `dump --lazy-pages`, `lazy-pages
//! --page-server`, `restore --lazy-pages`), all on the same link in one
//! run. Every run has a client reading keys continuously, first from the
//! source's address and then from the destination's, and ends with every
//! key checked at the destination.
//!
//! The record ([`AppRecord`]) keeps what operators compare: the longest gap
//! the client saw, freeze → running split into its parts, the time until
//! every page is local, bytes on the wire, remote faults after the restore,
//! and the client's read latency in its first seconds at the destination.
pub mod criu_baseline;
pub mod pagehop_run;
pub mod table;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::redis::{self, Reader, RedisTree};
use crate::scenario::{MODE_ORDER, Mode, Scenario};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Criu(#[from] pagehop::criu::ToolError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

impl AppError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
        let what = what.into();
        move |source| AppError::Io { what, source }
    }
}

/// How a run migrates redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// CRIU alone: dump (the source stops for good), copy, restore.
    CriuStopAndCopy,
    /// CRIU alone, post-copy: its lazy-pages daemon and page server.
    CriuLazy,
    /// pagehop send --criu / recv --criu in this mode.
    Pagehop(Mode),
}

impl Method {
    pub fn name(self) -> String {
        match self {
            Method::CriuStopAndCopy => "criu-stop-and-copy".into(),
            Method::CriuLazy => "criu-lazy".into(),
            Method::Pagehop(mode) => format!("pagehop-{}", mode.name()),
        }
    }
}

/// The methods a redis scenario runs per point: both CRIU baselines first,
/// then pagehop in each of the scenario's modes.
pub fn methods(s: &Scenario) -> Vec<Method> {
    let mut out = vec![Method::CriuStopAndCopy, Method::CriuLazy];
    out.extend(
        MODE_ORDER
            .into_iter()
            .filter(|m| s.modes.contains(m))
            .map(Method::Pagehop),
    );
    out
}

/// One migration of redis.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppRecord {
    pub scenario: String,
    pub network: String,
    pub size_mib: u64,
    pub method: String,
    pub rep: u32,
    /// The migration succeeded, every key came back with its value, and
    /// the client saw no wrong value.
    pub ok: bool,
    pub error: Option<String>,
    pub keys: u64,
    /// redis's resident size before the migration.
    pub rss_mib: u64,
    /// The destination's key check ("ok keys=N writes=0"), if it ran.
    pub keys_check: Option<String>,
    /// The longest gap between two answers the client saw.
    pub unavailable_ms: Option<f64>,
    /// The source freezing → the destination's copy running.
    pub freeze_to_running_ms: Option<f64>,
    /// What freeze → running is made of, in order (names per method).
    pub parts_ms: BTreeMap<String, f64>,
    /// The source freezing → every page at the destination.
    pub all_local_ms: Option<f64>,
    /// Bytes of the migration on the link (see each method for how counted).
    pub bytes_wire: Option<u64>,
    /// Faults the destination sent to the source after the restore.
    pub remote_faults: Option<u64>,
    /// The client's read latency in its first 3 s at the destination.
    pub read_p50_us: Option<f64>,
    pub read_p99_us: Option<f64>,
    /// The client's whole summary (answers per host, wrong values, ...).
    pub client: serde_json::Value,
    /// pagehop's reports (pagehop runs only).
    pub send: serde_json::Value,
    pub recv: serde_json::Value,
}

/// What the method-specific part of a run measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub freeze_to_running: Option<Duration>,
    /// In order of happening; the names become `parts_ms` keys prefixed
    /// with their index so that they sort as they happened.
    pub parts: Vec<(&'static str, Duration)>,
    pub all_local: Option<Duration>,
    pub bytes_wire: Option<u64>,
    pub remote_faults: Option<u64>,
    pub send: serde_json::Value,
    pub recv: serde_json::Value,
}

/// Where and how a redis run happens.
pub type AppSpec<'a> = crate::run::RunSpec<'a, Method>;

impl AppSpec<'_> {
    /// Seconds the link needs for `mib` MiB (unshaped: at 400 MB/s).
    pub fn transfer_secs(&self, mib: u64) -> f64 {
        self.link_secs(mib, 3.2e9)
    }

    /// A generous limit for one step that moves `mib` MiB.
    pub fn limit(&self, mib: u64) -> Duration {
        Duration::from_secs_f64(60.0 + 6.0 * self.transfer_secs(mib))
    }
}

/// Runs one migration of redis; failures are in the record.
pub fn migrate(spec: &AppSpec<'_>) -> AppRecord {
    let mut record = AppRecord {
        scenario: spec.scenario.name.clone(),
        network: spec.scenario.network.label(),
        size_mib: spec.point.size_mib,
        method: spec.method.name(),
        rep: spec.rep,
        ..AppRecord::default()
    };
    let result = drive(spec, &mut record);
    // A run's leftovers: the restored redis, a CRIU that did not end.
    crate::netns::kill_processes(&spec.link.pair.b);
    crate::netns::kill_processes(&spec.link.pair.a);
    if let Err(e) = result {
        record.error = Some(pagehop::mem::error_chain(&e));
    }
    let client_ok = record.client["bad_values"].as_u64() == Some(0);
    record.ok = record.error.is_none() && record.keys_check.is_some() && client_ok;
    if record.error.is_none() && !record.ok {
        record.error = Some(format!(
            "the client saw {} wrong value(s)",
            record.client["bad_values"]
        ));
    }
    record
}

fn drive(spec: &AppSpec<'_>, record: &mut AppRecord) -> Result<(), AppError> {
    let pair = &spec.link.pair;
    let dir = spec.scratch.join(format!("redis-{}", spec.method.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(AppError::io("creating the run's directory"))?;
    // The same pipe limit for every method: CRIU's lazy migration needs it,
    // and every CRIU dump is faster with it.
    let _pipes = criu_baseline::PipeMaxSize::raise()?;
    // CRIU's kernel-feature cache for every method, as on a host whose /run
    // is a tmpfs: pagehop's send and recv put it in place themselves, and
    // CRIU's own methods must not pay a probe that pagehop avoids.
    let _kdat = pagehop::criu::KdatCache::prepare(&pagehop::criu::Criu::find(None)?);
    let keys = redis::keys_for_mib(spec.point.size_mib);
    record.keys = keys as u64;
    let source = RedisTree::start(&pair.a, &pair.addr_a)?;
    redis::load(&pair.a, &pair.addr_a, keys)?;
    record.rss_mib = source.rss_mib();
    // The client ends 3 s after the destination's first answer; the cap
    // only ends a run that never switches.
    let cap = 30.0 + 4.0 * spec.transfer_secs(spec.point.size_mib);
    let reads = dir.join("client.json");
    let reader = Reader::start(&pair.a, &[&pair.addr_a, &pair.addr_b], keys, cap, &reads)?;
    std::thread::sleep(Duration::from_millis(1000));
    let measured = match spec.method {
        Method::CriuStopAndCopy => criu_baseline::stop_and_copy(spec, source.root(), &dir),
        Method::CriuLazy => criu_baseline::lazy(spec, source.root(), &dir),
        Method::Pagehop(mode) => pagehop_run::migrate(spec, mode, source.root(), &dir),
    };
    let client = reader.finish();
    let measured = measured?;
    record.send = measured.send;
    record.recv = measured.recv;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    record.freeze_to_running_ms = measured.freeze_to_running.map(ms);
    record.all_local_ms = measured.all_local.map(ms);
    record.parts_ms = measured
        .parts
        .iter()
        .enumerate()
        .map(|(i, (name, d))| (format!("{i}_{name}"), ms(*d)))
        .collect();
    record.bytes_wire = measured.bytes_wire;
    record.remote_faults = measured.remote_faults;
    let client = client?;
    record.unavailable_ms = client["longest_gap_ms"].as_f64();
    record.read_p50_us = client["first_seconds_latency_us"]["p50"].as_f64();
    record.read_p99_us = client["first_seconds_latency_us"]["p99"].as_f64();
    record.client = client;
    record.keys_check = Some(redis::check(
        &pair.b,
        &pair.addr_b,
        keys,
        &dir.join("no-writes"),
    )?);
    drop(source);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Polls until `path` exists or `limit` passes.
pub fn wait_for_path(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}
