//! What a migration reports: the source's [`Report`] (`pagehop send
//! --json`), the destination's [`RecvReport`] (`pagehop recv --json`), and
//! the typed values inside them ([`Mode`], [`Verify`], [`SwitchKind`]),
//! which serialize as the strings the JSON has always carried.
use pagehop_source::stream::RoundStats;
use pagehop_source::uring::SendMode;
use pagehop_wire::stats::{DestStats, LatencySummary};

/// `--mode`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rounds until converged, then stop and copy the rest.
    Precopy,
    /// Stop at once; pages follow on demand and in the background.
    Postcopy,
    /// Pre-copy the pages that are not write-hot, then post-copy the rest.
    #[default]
    Hybrid,
    /// Stop at once, send every page, then start the destination: no
    /// tracking, no rounds (the downtime floor every live scheme must beat).
    StopAndCopy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Precopy => "precopy",
            Mode::Postcopy => "postcopy",
            Mode::Hybrid => "hybrid",
            Mode::StopAndCopy => "stop-and-copy",
        }
    }

    /// Whether the destination runs before it holds every page.
    pub fn is_postcopy(self) -> bool {
        matches!(self, Mode::Postcopy | Mode::Hybrid)
    }

    /// Whether pre-copy rounds run (and so dirty tracking).
    pub fn has_rounds(self) -> bool {
        matches!(self, Mode::Precopy | Mode::Hybrid)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of `--verify`. Serialized as `"skipped"`, `"ok"` or
/// `"mismatch at page 0x…"` (with the number of pages checked when known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    #[default]
    Skipped,
    Ok,
    Mismatch {
        addr: u64,
        pages_checked: Option<u64>,
    },
}

impl Verify {
    pub fn is_mismatch(self) -> bool {
        matches!(self, Verify::Mismatch { .. })
    }
}

impl std::fmt::Display for Verify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verify::Skipped => f.write_str("skipped"),
            Verify::Ok => f.write_str("ok"),
            Verify::Mismatch {
                addr,
                pages_checked: Some(n),
            } => write!(f, "mismatch at page {addr:#x} ({n} pages checked)"),
            Verify::Mismatch {
                addr,
                pages_checked: None,
            } => write!(f, "mismatch at page {addr:#x}"),
        }
    }
}

impl serde::Serialize for Verify {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which switch the source asked for, as the destination saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchKind {
    /// Every page arrived before the process started.
    #[default]
    Precopy,
    /// The process started first; pages followed.
    Postcopy,
}

/// One round, as the report lists it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub ms: f64,
    /// Pages the tracker saw written while this round was sent.
    pub dirty_pages_after: u64,
    pub dirty_bytes_per_sec: f64,
    pub bandwidth_bytes_per_sec: f64,
    /// Hybrid: write-hot pages left out of this round for post-copy.
    pub deferred_pages: u64,
}

impl RoundReport {
    /// What a round moved; the tracker's and bandwidth fields are the caller's.
    pub fn sent(round: u32, stats: &RoundStats, took: std::time::Duration) -> Self {
        RoundReport {
            round,
            pages: stats.pages,
            zero_pages: stats.zero_pages,
            bytes_raw: stats.bytes_raw,
            bytes_wire: stats.bytes_wire,
            ms: took.as_secs_f64() * 1e3,
            ..RoundReport::default()
        }
    }
}

/// The source's report of a migration (`pagehop send --json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub mode: Mode,
    /// How the connections were protected: "sealed" (AES-256-GCM after a
    /// token handshake), "plaintext" (`--plaintext`: token handshake, crc
    /// frames) or "none" (`--unauthenticated`, loopback only).
    pub protection: &'static str,
    pub total_ms: f64,
    pub setup_ms: f64,
    /// Source frozen → destination running.
    pub downtime_ms: f64,
    /// "committed": the destination confirmed that its copy runs. (A switch
    /// that did not commit is an error, which says what runs where.)
    pub switchover: &'static str,
    pub rounds: u32,
    pub pages_sent: u64,
    pub zero_pages: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub compression_ratio: f64,
    pub throughput_bytes_per_sec: f64,
    pub final_round_pages: u64,
    pub installed_pages: u64,
    pub switch_reason: String,
    pub verify: Verify,
    pub send_mode: SendMode,
    pub streams: usize,
    pub page_size: u64,
    /// CPU time pagehop itself used (user + system).
    pub engine_cpu_ms: f64,
    /// Post-copy: destination running → every page installed.
    pub postcopy_ms: f64,
    /// Post-copy: page requests answered, and the pages in them (asked for
    /// plus `prefetched_pages`).
    pub demand_requests: u64,
    pub demand_pages: u64,
    pub prefetched_pages: u64,
    /// Post-copy: page data and frame bytes of the answers on the priority
    /// lane (included in `bytes_raw` and `bytes_wire`).
    pub demand_bytes_raw: u64,
    pub demand_bytes_wire: u64,
    /// Post-copy: pages pushed in the background.
    pub background_pages: u64,
    /// Post-copy: page faults at the destination, fault-to-install latency
    /// of all of them, and request-to-install latency of remote ones.
    pub faults: u64,
    pub fault_latency_us: Option<LatencySummary>,
    pub remote_fault_latency_us: Option<LatencySummary>,
    /// Post-copy: time the destination's threads spent blocked on faults.
    pub blocked_ms: f64,
    pub reconnects: u32,
    pub per_round: Vec<RoundReport>,
    /// `send --criu`: the parts of the switch, CRIU's included.
    pub criu: Option<CriuReport>,
}

/// The CRIU switch as the source saw it (`send --criu`); `downtime_ms` is
/// freeze → the destination's tree continued, the sum of these parts and
/// the messages between them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CriuReport {
    pub criu_version: String,
    /// The container's cgroup v2 directory, when the tree was named by it.
    pub cgroup: Option<String>,
    /// Tasks CRIU dumped (zombies included).
    pub tasks: u32,
    /// Freeze → the last writes collected and tracking removed.
    pub final_scan_ms: f64,
    /// `criu dump --lazy-pages` until every image was written.
    pub dump_ms: f64,
    /// Pre-copy: the lazy pages still missing, sent before the switch.
    pub final_pages_ms: f64,
    pub images_files: usize,
    pub images_bytes: u64,
    pub images_wire_bytes: u64,
    pub images_ms: f64,
    /// `Switchover` → the destination's `Restored` (its `criu restore`,
    /// the uffd handoff and the installs).
    pub restore_ms: f64,
    /// `Restored` → the destination's tree continued.
    pub commit_ms: f64,
    /// Pages CRIU left lazy, and those the destination did not hold yet.
    pub lazy_pages: u64,
    pub pending_pages: u64,
    /// Per process of the tree.
    pub processes: Vec<CriuProcess>,
}

/// One process of a CRIU-migrated tree.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CriuProcess {
    /// Its pid in the tree's pid namespace (what CRIU calls it).
    pub vpid: u32,
    /// Its pid on this host.
    pub pid: i32,
    /// Lazy pages the destination still lacked at the switch.
    pub pending_pages: u64,
    /// Faults at the destination (its own and its children's forked there).
    pub faults: u64,
    /// Pages its faults asked for (from the pre-copied store or from here).
    pub requested_pages: u64,
}

impl Report {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            protection: "",
            total_ms: 0.0,
            setup_ms: 0.0,
            downtime_ms: 0.0,
            switchover: "",
            rounds: 0,
            pages_sent: 0,
            zero_pages: 0,
            bytes_raw: 0,
            bytes_wire: 0,
            compression_ratio: 1.0,
            throughput_bytes_per_sec: 0.0,
            final_round_pages: 0,
            installed_pages: 0,
            switch_reason: String::new(),
            verify: Verify::Skipped,
            send_mode: SendMode::Copy,
            streams: 1,
            page_size: 0,
            engine_cpu_ms: 0.0,
            postcopy_ms: 0.0,
            demand_requests: 0,
            demand_pages: 0,
            prefetched_pages: 0,
            demand_bytes_raw: 0,
            demand_bytes_wire: 0,
            background_pages: 0,
            faults: 0,
            fault_latency_us: None,
            remote_fault_latency_us: None,
            blocked_ms: 0.0,
            reconnects: 0,
            per_round: Vec::new(),
            criu: None,
        }
    }
}

/// What recv reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RecvReport {
    pub source: String,
    /// As in the source's report.
    pub protection: &'static str,
    pub rounds: u32,
    pub pages_received: u64,
    pub zero_pages_received: u64,
    pub pages_installed: u64,
    pub pages_outside_registered_ranges: u64,
    pub restored_pid: Option<i32>,
    /// "committed": the source committed and the copy continued. (A switch
    /// that did not commit is an error, which says what runs where.)
    pub switchover: &'static str,
    pub image_dir: Option<String>,
    pub install_ms: f64,
    pub verify: Verify,
    pub total_ms: f64,
    /// CPU time recv itself used (user + system), from the source's
    /// connection to the end.
    pub engine_cpu_ms: f64,
    /// The switch the source asked for.
    pub mode: SwitchKind,
    /// Post-copy only.
    pub postcopy: Option<DestStats>,
    /// `recv --criu`: CRIU's restore.
    pub criu: Option<CriuRecvReport>,
}

/// CRIU's restore as the destination saw it; times from the switch.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CriuRecvReport {
    pub images_files: usize,
    pub images_bytes: u64,
    /// Every task's userfaultfd received and CRIU's marker read.
    pub handoff_ms: f64,
    /// `criu restore` exited cleanly: the tree is there, stopped.
    pub restore_ms: f64,
    /// `Restored` sent → the source's `Commit`.
    pub commit_wait_ms: f64,
    pub tasks: Vec<CriuTaskReport>,
}

/// One restored task.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CriuTaskReport {
    /// Its pid in the tree's namespace.
    pub vpid: u32,
    /// Its pid on this host.
    pub pid: i32,
    /// Pages CRIU left lazy (pagehop installs them).
    pub lazy_pages: u64,
    /// Faults here (its own and its children's forked here).
    pub faults: u64,
    /// Pages its faults asked for (from the pre-copied store or the source).
    pub requested_pages: u64,
}

/// Receives progress as the migration goes (a terminal display, or nothing).
pub trait Progress {
    fn round(&mut self, round: &RoundReport);
}

/// No progress display.
pub struct Quiet;

impl Progress for Quiet {
    fn round(&mut self, _: &RoundReport) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("serializes")
    }

    #[test]
    fn typed_fields_serialize_as_before() {
        assert_eq!(json(&Mode::StopAndCopy), "\"stop-and-copy\"");
        assert_eq!(json(&Mode::Hybrid), "\"hybrid\"");
        assert_eq!(json(&Verify::Ok), "\"ok\"");
        assert_eq!(json(&Verify::Skipped), "\"skipped\"");
        assert_eq!(
            json(&Verify::Mismatch {
                addr: 0x7f00_0000_1000,
                pages_checked: Some(12)
            }),
            "\"mismatch at page 0x7f0000001000 (12 pages checked)\""
        );
        assert_eq!(
            json(&Verify::Mismatch {
                addr: 0x1000,
                pages_checked: None
            }),
            "\"mismatch at page 0x1000\""
        );
        assert_eq!(json(&SwitchKind::Postcopy), "\"postcopy\"");
        assert_eq!(json(&SendMode::ZeroCopy), "\"zerocopy\"");
    }
}
