//! Post-copy and hybrid migration end to end, between two network
//! namespaces: the restored workload runs while its pages are still on the
//! source, faulting from several threads, forking and unmapping; and the
//! failures: the source killed mid-post-copy, connections cut and restored.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pagehop_bench::netns::NetnsPair;

use crate::common::*;
use crate::migrate::wait_for_line;

const TOKEN: &str = "pagehop-postcopy-token-0123456789abcdef";

/// One post-copy scenario: namespaces, a running source workload, a recv
/// whose output goes to files, and the restored workload's log.
struct Scenario {
    dir: TempDir,
    pair: NetnsPair,
    listen: String,
    recv: Child,
    source: Workload,
    restored_log: PathBuf,
}

impl Scenario {
    /// `workload`: the source's arguments (the restored one gets the same
    /// plus `resume_extra`); `rate`: a tc rate for the a → b direction.
    fn start(
        name: &str,
        index: u8,
        workload: &[&str],
        resume_extra: &str,
        rate: Option<&str>,
        recv_extra: &[&str],
    ) -> Self {
        let dir = TempDir::new(name);
        pagehop_bench::write_secret(&dir.path("token"), TOKEN).expect("token");
        let pair = NetnsPair::create(&format!("pc{index}"), index).expect("network namespaces");
        if let Some(rate) = rate {
            pair.shape(rate).expect("shape the link");
        }
        let listen = format!("{}:{}", pair.addr_b, 7600 + index as u16);
        let restored_log = dir.path("restored.log");
        let restore = format!(
            "exec {bin} --resume {} {resume_extra} > {} 2>&1",
            workload.join(" "),
            restored_log.display(),
            bin = workload_bin()
        );
        let recv = NetnsPair::command(&pair.b, pagehop_bin())
            .arg("recv")
            .args(["--listen", &listen, "--token-file"])
            .arg(dir.path("token"))
            .args(["--restore-cmd", &restore, "--json"])
            .args(recv_extra)
            .stdout(std::fs::File::create(dir.path("recv.out")).expect("recv.out"))
            .stderr(std::fs::File::create(dir.path("recv.err")).expect("recv.err"))
            .spawn()
            .expect("start pagehop recv");
        wait_for_line(
            &dir.path("recv.err"),
            "listening on",
            Duration::from_secs(10),
        );
        let source = Workload::spawn(workload);
        std::thread::sleep(Duration::from_millis(300));
        Self {
            dir,
            pair,
            listen,
            recv,
            source,
            restored_log,
        }
    }

    fn send(&self, extra: &[&str]) -> Command {
        let mut cmd = NetnsPair::command(&self.pair.a, pagehop_bin());
        cmd.arg("send")
            .args(["--pid", &self.source.pid.to_string(), "--to", &self.listen])
            .arg("--token-file")
            .arg(self.dir.path("token"))
            .args(["--verify", "--json"])
            .args(extra);
        cmd
    }

    /// Starts send (output captured) and returns once recv says the
    /// restored process runs, that is, once post-copy has begun.
    fn send_until_running(&self, extra: &[&str]) -> Child {
        let send = self
            .send(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pagehop send");
        wait_for_line(
            &self.dir.path("recv.err"),
            "post-copy: process",
            Duration::from_secs(20),
        );
        send
    }

    /// Runs send to the end; returns its JSON report.
    fn run_send(&self, extra: &[&str]) -> serde_json::Value {
        let out = self.send(extra).output().expect("run pagehop send");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pagehop send failed: {stderr}\nrecv: {}",
            self.recv_err()
        );
        serde_json::from_slice(&out.stdout).expect("send report is JSON")
    }

    fn recv_err(&self) -> String {
        std::fs::read_to_string(self.dir.path("recv.err")).unwrap_or_default()
    }

    /// Waits for recv to exit; returns (success, JSON report if any).
    fn finish_recv(&mut self, timeout: Duration) -> (bool, Option<serde_json::Value>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.recv.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "recv still runs: {}",
                self.recv_err()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(self.dir.path("recv.out")).unwrap_or_default();
        (status.success(), serde_json::from_str(out.trim()).ok())
    }

    /// Stops the restored workload and checks its whole arena (`--check-on-exit`).
    fn check_restored(&self, restored: i32) -> String {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(restored, libc::SIGTERM) };
        let text = wait_for_line(&self.restored_log, "exit ", Duration::from_secs(30));
        assert!(
            text.contains("invariant=ok") && !text.contains("invariant=bad"),
            "the restored workload found bad pages:\n{text}"
        );
        text
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.recv.kill();
        let _ = self.recv.wait();
        // The restored workload, wherever it is.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.restored_log.display().to_string()])
            .output();
    }
}

fn restored_pid(log: &Path) -> i32 {
    let text = wait_for_line(log, "resume pid=", Duration::from_secs(10));
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("resume line has the pid")
}

fn assert_postcopy_report(report: &serde_json::Value, mode: &str) {
    assert_eq!(report["mode"], mode, "{report}");
    assert_eq!(report["verify"], "ok", "{report}");
    for field in [
        "demand_pages",
        "background_pages",
        "postcopy_ms",
        "blocked_ms",
        "switch_reason",
        "downtime_ms",
        "total_ms",
    ] {
        assert!(
            report.get(field).is_some(),
            "report lacks {field}: {report}"
        );
    }
    let latency = &report["fault_latency_us"];
    for field in ["p50_us", "p99_us", "max_us", "buckets"] {
        assert!(
            latency.get(field).is_some(),
            "fault_latency_us lacks {field}: {report}"
        );
    }
}

const ARENA: [&str; 8] = [
    "--size-mib",
    "64",
    "--threads",
    "2",
    "--report-ms",
    "100",
    "--check-on-exit",
    "--seed",
];

fn workload_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = ARENA.to_vec();
    v.push("7");
    v.extend_from_slice(extra);
    v
}

/// Pure post-copy over a 200 Mbit/s link: the restored workload starts its
/// writers at once (`--resume-lazy`), so two threads fault on missing pages
/// concurrently while the rest streams in.
#[test]
#[ignore = "needs root"]
fn postcopy_between_namespaces_with_concurrent_faults() {
    require_root();
    let args = workload_args(&["--write-mbps", "20"]);
    let scenario = Scenario::start("postcopy", 1, &args, "--resume-lazy", Some("200mbit"), &[]);
    let report = scenario.run_send(&["--mode", "postcopy"]);
    println!("postcopy: {report}");
    assert_postcopy_report(&report, "postcopy");
    assert_eq!(report["rounds"], 0);
    assert!(report["faults"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(report["demand_pages"].as_u64().unwrap_or(0) > 0, "{report}");
    let restored = restored_pid(&scenario.restored_log);
    let text = scenario.check_restored(restored);
    assert!(text.contains("resumed lazy"), "{text}");
}

/// Hybrid with a skewed writer at 100 MB/s: pre-copy rounds leave the hot
/// pages out, then post-copy; four threads check the arena concurrently
/// right after the switch (each faulting on its own share).
#[test]
#[ignore = "needs root"]
fn hybrid_between_namespaces() {
    require_root();
    let args = [
        "--size-mib",
        "64",
        "--threads",
        "4",
        "--report-ms",
        "100",
        "--check-on-exit",
        "--pattern",
        "skew",
        "--write-mbps",
        "100",
    ];
    let scenario = Scenario::start("hybrid", 2, &args, "", None, &[]);
    let report = scenario.run_send(&["--mode", "hybrid", "--postcopy-below-mib", "8"]);
    println!("hybrid: {report}");
    assert_postcopy_report(&report, "hybrid");
    assert!(report["rounds"].as_u64().unwrap_or(0) >= 1, "{report}");
    let restored = restored_pid(&scenario.restored_log);
    wait_for_line(
        &scenario.restored_log,
        "resumed invariant=ok",
        Duration::from_secs(20),
    );
    scenario.check_restored(restored);
}

/// The restored workload forks a child (served through the child's own
/// userfaultfd) and unmaps and discards pages of its registered arena
/// while post-copy runs: every event is handled and nothing reads wrong.
#[test]
#[ignore = "needs root"]
fn postcopy_with_fork_and_unmap() {
    require_root();
    let args = workload_args(&[
        "--write-mbps",
        "40",
        "--fork-after-ms",
        "100",
        "--child-lifetime-ms",
        "500",
    ]);
    let mut scenario = Scenario::start(
        "pc-fork",
        3,
        &args,
        "--resume-lazy --recycle-pages 64",
        Some("100mbit"),
        &[],
    );
    let report = scenario.run_send(&["--mode", "postcopy"]);
    println!("postcopy with fork and unmap: {report}");
    assert_postcopy_report(&report, "postcopy");
    let (ok, recv) = scenario.finish_recv(Duration::from_secs(30));
    assert!(ok, "recv failed: {}", scenario.recv_err());
    let stats = &recv.expect("recv report")["postcopy"];
    println!("destination: {stats}");
    assert!(
        stats["forks"].as_u64().unwrap_or(0) >= 1,
        "no fork seen: {stats}"
    );
    assert!(
        stats["unmaps"].as_u64().unwrap_or(0) >= 1,
        "no unmap seen: {stats}"
    );
    assert!(
        stats["removes"].as_u64().unwrap_or(0) >= 1,
        "no remove seen: {stats}"
    );
    let restored = restored_pid(&scenario.restored_log);
    let text = scenario.check_restored(restored);
    assert!(text.contains("recycled="), "{text}");
}

/// `pagehop send` killed mid-post-copy: the destination process is stopped,
/// not crashed and not running on missing memory; recv gives up after its
/// reconnect timeout with a clear error; the source stays stopped.
#[test]
#[ignore = "needs root"]
fn killing_the_source_during_postcopy_stops_the_destination() {
    require_root();
    let args = workload_args(&["--write-mbps", "20"]);
    let mut scenario = Scenario::start(
        "pc-kill",
        4,
        &args,
        "--resume-lazy",
        Some("20mbit"),
        &["--reconnect-timeout", "2"],
    );
    let mut send = scenario.send_until_running(&["--mode", "postcopy"]);
    std::thread::sleep(Duration::from_millis(500));
    send.kill().expect("kill pagehop send");
    let _ = send.wait();
    let restored = restored_pid(&scenario.restored_log);
    let (ok, _) = scenario.finish_recv(Duration::from_secs(20));
    assert!(!ok, "recv succeeded without its source");
    let err = scenario.recv_err();
    assert!(
        err.contains("the source has been gone") && err.contains("left stopped"),
        "recv's error does not say what happened: {err}"
    );
    wait_state(restored, 'T', Duration::from_secs(2));
    let log = std::fs::read_to_string(&scenario.restored_log).unwrap_or_default();
    assert!(!log.contains("invariant=bad"), "{log}");
    // The source never runs again either: it is stopped, not killed or resumed.
    wait_state(scenario.source.pid, 'T', Duration::from_secs(2));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(restored, libc::SIGKILL);
        libc::kill(scenario.source.pid, libc::SIGKILL);
    }
}

/// The frozen source process itself killed mid-post-copy (pagehop send
/// lives on): its pages can no longer be read, which is an error, never a
/// zero page. send fails (no verdict of "ok"); the destination process is
/// left stopped with its userfaultfd kept registered after recv exits, so
/// that even a SIGCONT from outside cannot make it run on a page it never
/// received: it waits at the first missing one.
#[test]
#[ignore = "needs root"]
fn killing_the_frozen_source_process_never_runs_the_copy_on_missing_pages() {
    require_root();
    let args = workload_args(&["--write-mbps", "20"]);
    let mut scenario = Scenario::start(
        "pc-srckill",
        9,
        &args,
        "--resume-lazy",
        Some("20mbit"),
        &["--reconnect-timeout", "2"],
    );
    let send = scenario.send_until_running(&["--mode", "postcopy"]);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(scenario.source.pid, libc::SIGKILL) };
    let out = send.wait_with_output().expect("send output");
    let send_err = String::from_utf8_lossy(&out.stderr);
    println!("send: {send_err}");
    assert!(
        !out.status.success(),
        "send succeeded without its source process"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"ok\""),
        "verify said ok"
    );
    let restored = restored_pid(&scenario.restored_log);
    let (ok, _) = scenario.finish_recv(Duration::from_secs(30));
    let err = scenario.recv_err();
    println!("recv: {err}");
    assert!(!ok, "recv succeeded without its source");
    assert!(
        err.contains("left stopped") && err.contains("keeper"),
        "{err}"
    );
    wait_state(restored, 'T', Duration::from_secs(2));
    // recv is gone; the registration is not.
    assert!(
        !uffd_registered_vmas(restored).is_empty(),
        "the restored process lost its userfaultfd registration"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(restored, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(1500));
    let log = std::fs::read_to_string(&scenario.restored_log).unwrap_or_default();
    assert!(
        !log.contains("invariant=bad"),
        "it ran on missing pages: {log}"
    );
    assert!(
        !uffd_registered_vmas(restored).is_empty(),
        "the registration went while the process lives"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(restored, libc::SIGKILL) };
}

/// Every connection cut (`ss -K`) in the middle of post-copy: both sides
/// reconnect within the timeout, the rest arrives, and it verifies.
#[test]
#[ignore = "needs root"]
fn connection_cut_during_postcopy_is_survived() {
    require_root();
    let args = workload_args(&["--write-mbps", "20"]);
    let scenario = Scenario::start(
        "pc-cut",
        5,
        &args,
        "--resume-lazy",
        Some("50mbit"),
        &["--reconnect-timeout", "10"],
    );
    // Peers that connect and send a byte every two seconds, reconnecting
    // when recv drops them, all through the migration and its reconnect.
    let _dribblers = Dribblers::start(&scenario.pair.a, &scenario.listen, 4);
    std::thread::sleep(Duration::from_millis(500));
    let send = scenario.send_until_running(&["--mode", "postcopy", "--reconnect-timeout", "10"]);
    std::thread::sleep(Duration::from_millis(1500));
    let cut = NetnsPair::command(&scenario.pair.a, "ss")
        .args(["-K", "dst", &scenario.pair.addr_b])
        .output()
        .expect("ss -K");
    assert!(cut.status.success(), "ss -K failed: {cut:?}");
    let out = send.wait_with_output().expect("pagehop send");
    assert!(
        out.status.success(),
        "send did not survive the cut: {}\nrecv: {}",
        String::from_utf8_lossy(&out.stderr),
        scenario.recv_err()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    println!("cut: {report}");
    assert_postcopy_report(&report, "postcopy");
    assert!(
        report["reconnects"].as_u64().unwrap_or(0) >= 1,
        "no reconnect happened (was post-copy over before the cut?): {report}"
    );
    let restored = restored_pid(&scenario.restored_log);
    scenario.check_restored(restored);
}

/// Slow peers: each connects to `addr` from namespace `ns` and sends one
/// byte every two seconds, connecting again whenever it is dropped.
struct Dribblers(Vec<Child>);

impl Dribblers {
    fn start(ns: &str, addr: &str, count: usize) -> Self {
        let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
        let script = format!(
            "while :; do exec 3<>/dev/tcp/{host}/{port} || {{ sleep 0.2; continue; }}; \
             while printf P >&3 2>/dev/null; do sleep 2; done; done"
        );
        Self(
            (0..count)
                .map(|_| {
                    NetnsPair::command(ns, "bash")
                        .args(["-c", &script])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start a dribbler")
                })
                .collect(),
        )
    }
}

impl Drop for Dribblers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
