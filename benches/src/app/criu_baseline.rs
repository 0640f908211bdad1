//! CRIU's own migrations, the baselines of a redis scenario, run as an
//! operator would run them, with the same CRIU pagehop uses:
//!
//! - stop-and-copy: `criu dump` (the source stops and is gone), the images
//!   copied to the destination over one TCP connection (`copy_dir.py`, a
//!   plain tar stream), `criu restore -d`;
//! - lazy: `criu dump --lazy-pages --address --port` (every image but the
//!   lazy pages, then a page server), the images copied, `criu lazy-pages
//!   --page-server` on the destination, `criu restore --lazy-pages -d`;
//!   every page is local when the lazy-pages daemon exits. It needs
//!   `fs.pipe-max-size` of 4 MiB ([`PipeMaxSize`]; the driver raises it for
//!   every method's run, since any CRIU dump is faster with it, and puts it
//!   back).
//!
//! Both close the client's connections at the dump (`--tcp-close`, and
//! `--skip-in-flight` for one still in the accept queue), as pagehop's runs
//! do. Bytes on the wire: the tar stream, plus for lazy 4 KiB per lazy
//! page (the page server sends them raw; its small request headers are not
//! counted). Remote faults of lazy: the `#PF` lines of the daemon's log
//! (`-v4`), an upper bound, since a fault on a page already requested is
//! logged too.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{AppError, AppSpec, Measured, wait_for_path};
use crate::cleanup::{self, Group};
use crate::redis::{apps_dir, in_netns};
use pagehop::criu::{Criu, log_reason};

/// CRIU's page server of the lazy baseline, on the source's address.
const PAGE_SERVER_PORT: &str = "27010";
/// The image copy, on the destination's address.
const COPY_PORT: &str = "27011";
/// What CRIU's page server sizes its pipes to.
const LAZY_PIPE_MAX: u64 = 4 << 20;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";
/// The descriptor CRIU reports "images written, page server up" on.
const STATUS_FD: i32 = 4;
/// Dump options of every baseline run.
const DUMP_TCP: [&str; 2] = ["--tcp-close", "--skip-in-flight"];

fn criu_in(ns: &str, criu: &Criu) -> Command {
    let mut cmd = in_netns(ns, &criu.path().to_string_lossy());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Group, AppError> {
    cleanup::spawn(cmd).map_err(|e| AppError::Failed(format!("{what}: {e}")))
}

/// Waits (1 ms polls) for `group` to exit within `limit`; `Ok(true)` when
/// it exited 0.
fn wait(group: &mut Group, limit: Duration) -> Result<bool, AppError> {
    let deadline = Instant::now() + limit;
    loop {
        match group.child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = group.child.kill();
                return Err(AppError::Failed(format!("timed out after {limit:?}")));
            }
            Err(e) => return Err(AppError::io("waiting for a child")(e)),
        }
    }
}

/// Runs a CRIU command to its end; its failure carries CRIU's reason.
fn run_criu(mut cmd: Command, log: &Path, what: &str, limit: Duration) -> Result<(), AppError> {
    let mut group = spawn(&mut cmd, what)?;
    let ok = wait(&mut group, limit).map_err(|e| AppError::Failed(format!("{what}: {e}")))?;
    if !ok {
        return Err(AppError::Failed(format!("{what}: {}", log_reason(log))));
    }
    Ok(())
}

/// The image copy of a baseline: its receiver (destination namespace) and
/// its sender (source namespace), both started before the migration, so
/// that [`ImageCopy::run`] times the copy alone.
struct ImageCopy {
    server: Group,
    server_out: BufReader<std::process::ChildStdout>,
    sender: Group,
    // Kept open: the sender prints its result when done.
    _sender_out: BufReader<std::process::ChildStdout>,
    go: std::process::ChildStdin,
    limit: Duration,
}

impl ImageCopy {
    /// Ready to copy the files of `from` into `to` over the link.
    fn start(spec: &AppSpec<'_>, from: &Path, to: &Path) -> Result<ImageCopy, AppError> {
        let pair = &spec.link.pair;
        let script = apps_dir().join("copy_dir.py");
        let mut server_cmd = in_netns(&pair.b, "python3");
        server_cmd
            .arg(&script)
            .args(["serve", &pair.addr_b, COPY_PORT])
            .arg(to)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut server = spawn(&mut server_cmd, "the image copy's receiver")?;
        let mut server_out = BufReader::new(server.child.stdout.take().expect("piped"));
        expect_line(&mut server_out, "listening", "the image copy's receiver")?;
        let mut sender_cmd = in_netns(&pair.a, "python3");
        sender_cmd
            .arg(&script)
            .args(["send", &pair.addr_b, COPY_PORT])
            .arg(from)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut sender = spawn(&mut sender_cmd, "the image copy's sender")?;
        let go = sender.child.stdin.take().expect("piped");
        let mut sender_out = BufReader::new(sender.child.stdout.take().expect("piped"));
        expect_line(&mut sender_out, "ready", "the image copy's sender")?;
        Ok(ImageCopy {
            server,
            server_out,
            sender,
            _sender_out: sender_out,
            go,
            limit: spec.limit(spec.point.size_mib),
        })
    }

    /// Copies; returns the bytes of the stream.
    fn run(mut self) -> Result<u64, AppError> {
        self.go
            .write_all(b"go\n")
            .map_err(AppError::io("starting the image copy"))?;
        let sent = wait(&mut self.sender, self.limit)?;
        let received = wait(&mut self.server, Duration::from_secs(10))?;
        let mut rest = String::new();
        let _ = self.server_out.read_to_string(&mut rest);
        rest.trim()
            .strip_prefix("ok ")
            .and_then(|b| b.parse().ok())
            .filter(|_| sent && received)
            .ok_or_else(|| AppError::Failed(format!("copying the images failed: {rest}")))
    }
}

fn expect_line(
    out: &mut BufReader<std::process::ChildStdout>,
    want: &str,
    what: &str,
) -> Result<(), AppError> {
    let mut line = String::new();
    out.read_line(&mut line)
        .map_err(AppError::io(format!("reading {what}")))?;
    if line.trim() != want {
        return Err(AppError::Failed(format!("{what} did not start: {line}")));
    }
    Ok(())
}

fn dirs(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), AppError> {
    let (src, dst) = (dir.join("source-images"), dir.join("destination-images"));
    for d in [&src, &dst] {
        std::fs::create_dir_all(d).map_err(AppError::io(format!("creating {}", d.display())))?;
    }
    Ok((src, dst))
}

/// CRIU's stop-and-copy: dump, copy, restore.
pub fn stop_and_copy(spec: &AppSpec<'_>, root: i32, dir: &Path) -> Result<Measured, AppError> {
    let criu = Criu::find(None)?;
    let pair = &spec.link.pair;
    let (src, dst) = dirs(dir)?;
    let limit = spec.limit(spec.point.size_mib);
    let copy = ImageCopy::start(spec, &src, &dst)?;
    let mut dump = criu_in(&pair.a, &criu);
    dump.args(["dump", "-t", &root.to_string(), "-D"])
        .arg(&src)
        .args(["-o", "dump.log"])
        .args(DUMP_TCP);
    let frozen = Instant::now();
    run_criu(dump, &src.join("dump.log"), "criu dump", limit)?;
    let dumped = frozen.elapsed();
    let bytes = copy.run()?;
    let copied = frozen.elapsed();
    let mut restore = criu_in(&pair.b, &criu);
    restore
        .args(["restore", "-d", "-D"])
        .arg(&dst)
        .args(["-o", "restore.log", "--tcp-close"]);
    run_criu(restore, &dst.join("restore.log"), "criu restore", limit)?;
    let running = frozen.elapsed();
    Ok(Measured {
        freeze_to_running: Some(running),
        parts: vec![
            ("criu_dump", dumped),
            ("images_copied", copied - dumped),
            ("criu_restore", running - copied),
        ],
        all_local: Some(running),
        bytes_wire: Some(bytes),
        remote_faults: Some(0),
        ..Measured::default()
    })
}

/// `fs.pipe-max-size` raised to what CRIU's page server needs, put back on
/// drop.
pub struct PipeMaxSize {
    before: Option<u64>,
}

impl PipeMaxSize {
    pub fn raise() -> Result<PipeMaxSize, AppError> {
        let read = std::fs::read_to_string(PIPE_MAX_SIZE)
            .map_err(AppError::io(format!("reading {PIPE_MAX_SIZE}")))?;
        let now: u64 = read
            .trim()
            .parse()
            .map_err(|_| AppError::Failed(format!("{PIPE_MAX_SIZE} reads {read:?}")))?;
        if now >= LAZY_PIPE_MAX {
            return Ok(PipeMaxSize { before: None });
        }
        std::fs::write(PIPE_MAX_SIZE, LAZY_PIPE_MAX.to_string())
            .map_err(AppError::io(format!("writing {PIPE_MAX_SIZE}")))?;
        Ok(PipeMaxSize { before: Some(now) })
    }
}

impl Drop for PipeMaxSize {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            let _ = std::fs::write(PIPE_MAX_SIZE, before.to_string());
        }
    }
}

/// CRIU's lazy migration: lazy dump + page server, copy, lazy-pages daemon,
/// lazy restore.
pub fn lazy(spec: &AppSpec<'_>, root: i32, dir: &Path) -> Result<Measured, AppError> {
    let criu = Criu::find(None)?;
    let pair = &spec.link.pair;
    let (src, dst) = dirs(dir)?;
    let limit = spec.limit(spec.point.size_mib);
    let copy = ImageCopy::start(spec, &src, &dst)?;
    let (mut status, status_w) = std::io::pipe().map_err(AppError::io("a pipe"))?;
    let mut dump_cmd = criu_in(&pair.a, &criu);
    dump_cmd
        .args(["dump", "-t", &root.to_string(), "-D"])
        .arg(&src)
        .args(["-o", "dump.log", "--lazy-pages", "--address", &pair.addr_a])
        .args(["--port", PAGE_SERVER_PORT, "--status-fd", "4"])
        .args(DUMP_TCP);
    pagehop::sys::fd::pass_to_child(&mut dump_cmd, vec![(OwnedFd::from(status_w), STATUS_FD)])
        .map_err(AppError::io("passing the status pipe"))?;
    let frozen = Instant::now();
    let mut dump = spawn(&mut dump_cmd, "criu dump --lazy-pages")?;
    drop(dump_cmd);
    let ready = pagehop::sys::poll::poll_readable(status.as_fd(), limit).unwrap_or(false);
    let mut byte = [0u8; 1];
    if !ready || status.read(&mut byte).unwrap_or(0) != 1 {
        return Err(AppError::Failed(format!(
            "criu dump --lazy-pages: {}",
            log_reason(&src.join("dump.log"))
        )));
    }
    let dumped = frozen.elapsed();
    let image_bytes = copy.run()?;
    let copied = frozen.elapsed();
    let mut daemon_cmd = criu_in(&pair.b, &criu);
    daemon_cmd
        .args(["lazy-pages", "--page-server", "--address", &pair.addr_a])
        .args(["--port", PAGE_SERVER_PORT, "-D"])
        .arg(&dst)
        .args(["-o", "lazy-pages.log", "-v4"]);
    let mut daemon = spawn(&mut daemon_cmd, "criu lazy-pages")?;
    let daemon_log = dst.join("lazy-pages.log");
    if !wait_for_path(&dst.join("lazy-pages.socket"), Duration::from_secs(10)) {
        return Err(AppError::Failed(format!(
            "criu lazy-pages did not listen: {}",
            log_reason(&daemon_log)
        )));
    }
    let daemon_up = frozen.elapsed();
    let mut restore = criu_in(&pair.b, &criu);
    restore
        .args(["restore", "-d", "--lazy-pages", "-D"])
        .arg(&dst)
        .args(["-o", "restore.log", "--tcp-close"]);
    run_criu(restore, &dst.join("restore.log"), "criu restore", limit)?;
    let running = frozen.elapsed();
    if !wait(&mut daemon, limit)? {
        return Err(AppError::Failed(format!(
            "criu lazy-pages: {}",
            log_reason(&daemon_log)
        )));
    }
    let all_local = frozen.elapsed();
    if !wait(&mut dump, Duration::from_secs(30))? {
        return Err(AppError::Failed(format!(
            "criu dump --lazy-pages: {}",
            log_reason(&src.join("dump.log"))
        )));
    }
    let lazy_pages: u64 = pagehop::wire::criu::DumpedTree::read(&dst)
        .map_err(|e| AppError::Failed(pagehop::mem::error_chain(&e)))?
        .tasks
        .iter()
        .flat_map(|t| t.lazy.iter())
        .map(|(start, end)| (end - start) / 4096)
        .sum();
    let faults = std::fs::read_to_string(&daemon_log)
        .map(|log| log.lines().filter(|l| l.contains("#PF at")).count() as u64)
        .ok();
    Ok(Measured {
        freeze_to_running: Some(running),
        parts: vec![
            ("criu_dump", dumped),
            ("images_copied", copied - dumped),
            ("lazy_daemon_up", daemon_up - copied),
            ("criu_restore", running - daemon_up),
        ],
        all_local: Some(all_local),
        bytes_wire: Some(image_bytes + lazy_pages * 4096),
        remote_faults: faults,
        ..Measured::default()
    })
}
