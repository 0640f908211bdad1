//! pagehop's runs of a redis scenario: `recv --criu DIR --json` in the
//! destination namespace, `send --criu --json` in the source's, with the
//! same TCP options as CRIU's baselines. What the record needs comes from
//! the two reports:
//!
//! - freeze → running: send's downtime (SIGSTOP of the tree → the
//!   destination's Done after its SIGCONT), in the parts send measures:
//!   final dirty scan, CRIU's dump, final pages, images shipped, the
//!   destination's restore (criu restore, uffd handoff, installs of every
//!   pre-copied page), the commit, and the rest (freezing, releasing the
//!   trackers);
//! - every page local: freeze → switch plus post-copy's time until the
//!   destination holds every page;
//! - bytes on the wire: the page streams, demand answers and the images;
//! - remote faults: the destination's demand requests.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::{AppError, AppSpec, Measured};
use crate::cleanup;
use crate::redis::in_netns;
use crate::run::read_all;
use crate::scenario::Mode;

/// Port `pagehop recv` listens on in the destination namespace.
const PORT: u16 = 7811;

/// Runs pagehop under CRIU in `mode` on the tree of `root`.
pub fn migrate(
    spec: &AppSpec<'_>,
    mode: Mode,
    root: i32,
    dir: &Path,
) -> Result<Measured, AppError> {
    let pair = &spec.link.pair;
    let pagehop = spec.binaries.pagehop.to_string_lossy().into_owned();
    let token = dir.join("token");
    crate::write_token(&token, "pagehop-bench").map_err(AppError::io("writing the token file"))?;
    let listen = format!("{}:{PORT}", pair.addr_b);
    let failed = |what: &str| {
        let what = what.to_string();
        move |e: cleanup::CleanupError| AppError::Failed(format!("{what}: {e}"))
    };
    let mut recv = cleanup::spawn(
        in_netns(&pair.b, &pagehop)
            .args(["recv", "--listen", &listen, "--json"])
            .args(spec.scenario.engine.wire_args())
            .arg("--token-file")
            .arg(&token)
            .arg("--criu")
            .arg(dir.join("images"))
            .arg("--criu-restore-opt=--tcp-close")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(failed("pagehop recv"))?;
    let recv_out = read_all(recv.child.stdout.take());
    let recv_err = read_all(recv.child.stderr.take());
    // recv binds before it prints; a short wait beats parsing its log here.
    std::thread::sleep(Duration::from_millis(300));
    let mut send = cleanup::spawn(
        in_netns(&pair.a, &pagehop)
            .args(["send", "--pid", &root.to_string(), "--to", &listen])
            .args(["--json", "--mode", mode.name(), "--token-file"])
            .arg(&token)
            .args([
                "--criu",
                "--criu-opt=--tcp-close",
                "--criu-opt=--skip-in-flight",
            ])
            .args(spec.scenario.engine.send_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(failed("pagehop send"))?;
    let send_out = read_all(send.child.stdout.take());
    let send_err = read_all(send.child.stderr.take());
    let limit = spec.limit(spec.point.size_mib * 3);
    let sent = send
        .wait_within(limit)
        .map_err(AppError::io("waiting for pagehop send"))?;
    let received = recv
        .wait_within(Duration::from_secs(60))
        .map_err(AppError::io("waiting for pagehop recv"))?;
    let parse = |text: String| serde_json::from_str(text.trim()).unwrap_or_default();
    let send_report: serde_json::Value = parse(send_out.recv().unwrap_or_default());
    let recv_report: serde_json::Value = parse(recv_out.recv().unwrap_or_default());
    if !sent.is_some_and(|s| s.success()) || !received.is_some_and(|s| s.success()) {
        return Err(AppError::Failed(format!(
            "send: {}; recv: {}",
            send_err.recv().unwrap_or_default().trim(),
            recv_err.recv().unwrap_or_default().trim()
        )));
    }
    let ms = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap_or(0.0) / 1e3);
    let criu = &send_report["criu"];
    let downtime = ms(&send_report["downtime_ms"]);
    let mut parts = vec![
        ("final_scan", ms(&criu["final_scan_ms"])),
        ("criu_dump", ms(&criu["dump_ms"])),
        ("final_pages", ms(&criu["final_pages_ms"])),
        ("images_shipped", ms(&criu["images_ms"])),
        ("restore_and_installs", ms(&criu["restore_ms"])),
        ("commit", ms(&criu["commit_ms"])),
    ];
    let accounted: Duration = parts.iter().map(|(_, d)| *d).sum();
    parts.push(("freeze_and_release", downtime.saturating_sub(accounted)));
    let to_switch = downtime.saturating_sub(ms(&criu["restore_ms"]) + ms(&criu["commit_ms"]));
    let bytes = send_report["bytes_wire"].as_u64().unwrap_or(0)
        + criu["images_wire_bytes"].as_u64().unwrap_or(0);
    Ok(Measured {
        freeze_to_running: Some(downtime),
        parts,
        all_local: Some(to_switch + ms(&send_report["postcopy_ms"])),
        bytes_wire: Some(bytes),
        remote_faults: send_report["demand_requests"].as_u64(),
        send: send_report,
        recv: recv_report,
    })
}
