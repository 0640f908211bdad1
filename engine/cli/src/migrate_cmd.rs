//! `pagehop send` and `pagehop recv`.
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use pagehop::sys::process::Process;

use crate::choices::{BackendArg, CompressArg, ModeArg, ZeroCopyArg};
use anyhow::Context;
use pagehop::dest::restore::RestoreCommand;
use pagehop::recv::{CriuRestore, Output, RecvOptions, recv};
use pagehop::send::{CriuSend, SendOptions, send};
use pagehop::source::cgroup::Cgroup;
use pagehop::source::freeze::FreezeMethod;
use pagehop::wire::auth::{TOKEN_ENV, Token};
use pagehop::wire::conn::Security;
use pagehop::{Phase, PhaseWatch, Progress, Quiet, RecvReport, Report, RoundReport};

/// How send and recv protect their connections; both ends must agree.
#[derive(Args)]
pub struct WireArgs {
    /// File holding the token shared by source and destination (default:
    /// $PAGEHOP_TOKEN). Required unless --unauthenticated.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Authenticate with the token but send frames unencrypted, checked by a
    /// crc only: anyone on the path can read the memory and alter it
    /// undetected. For a link you trust, to save the encryption's CPU; the
    /// report's `protection` says "plaintext".
    #[arg(long)]
    plaintext: bool,
    /// Loopback only: no token, no encryption. Any local user who connects
    /// first (to recv) or listens first (for send) becomes the peer, and can
    /// read the memory or choose what the restored process runs on.
    #[arg(long, conflicts_with_all = ["token_file", "plaintext"])]
    unauthenticated: bool,
}

impl WireArgs {
    /// The protection asked for: the token from `--token-file`, else
    /// $PAGEHOP_TOKEN; none only with `--unauthenticated`.
    fn security(&self) -> anyhow::Result<Security> {
        let token = match &self.token_file {
            Some(path) => Some(Token::from_file(path)?),
            None => Token::from_env(TOKEN_ENV)?,
        };
        match (token, self.unauthenticated) {
            (Some(_), true) => anyhow::bail!(
                "--unauthenticated with a token in ${TOKEN_ENV}: unset it, or drop the flag"
            ),
            (None, true) => Ok(Security::unauthenticated()),
            (None, false) => anyhow::bail!(
                "no token: give --token-file FILE or ${TOKEN_ENV} (the same on both ends), \
                 or on loopback --unauthenticated"
            ),
            (Some(token), false) if self.plaintext => Ok(Security::plaintext(token)),
            (Some(token), false) => Ok(Security::sealed(token)),
        }
    }
}

#[derive(Args)]
pub struct SendArgs {
    /// Process to migrate (with --criu: the root of the process tree; with
    /// --criu and --cgroup it may be left out: the cgroup names the tree).
    #[arg(long, required_unless_present = "cgroup")]
    pid: Option<i32>,
    /// Migrate the whole process tree under --pid with CRIU recreating it at
    /// the destination (`pagehop recv --criu DIR`). Optionally names the
    /// CRIU binary (default: $PAGEHOP_CRIU, then /opt/pagehop/bin/criu from
    /// the setup, then `criu` on PATH); CRIU 4.2 or later.
    #[arg(long, value_name = "CRIU", num_args = 0..=1, default_missing_value = "")]
    criu: Option<String>,
    /// With --criu: an option passed through to `criu dump` (repeatable),
    /// e.g. --criu-opt=--tcp-close --criu-opt=--shell-job.
    #[arg(
        long = "criu-opt",
        value_name = "OPT",
        allow_hyphen_values = true,
        requires = "criu"
    )]
    criu_opts: Vec<String>,
    /// With --criu: where CRIU writes its images on this host (default: a
    /// fresh directory under $TMPDIR, removed after a successful migration).
    #[arg(long, value_name = "DIR", requires = "criu")]
    criu_images: Option<PathBuf>,
    /// Destination `pagehop recv` address (HOST:PORT).
    #[arg(long)]
    to: SocketAddr,
    #[command(flatten)]
    wire: WireArgs,
    #[arg(long, value_enum, default_value_t = BackendArg::Ebpf)]
    backend: BackendArg,
    /// lz4-compress page batches: auto skips batches that do not shrink.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    compress: CompressArg,
    /// Zero-copy sends: auto starts with them and drops them when the kernel copies anyway.
    #[arg(long, value_enum, default_value_t = ZeroCopyArg::Auto)]
    zerocopy: ZeroCopyArg,
    /// Parallel data connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    streams: u16,
    /// Switch over once the rest would go within this many milliseconds.
    #[arg(long, default_value_t = 50)]
    downtime_target: u64,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    max_rounds: u32,
    /// A container's cgroup v2 directory. Without --criu: freeze the process
    /// through it instead of ptrace-stopping it. With --criu: migrate the
    /// process tree it holds (every process in it must descend from one
    /// root; the tree is stopped with SIGSTOP and CRIU records the cgroup).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// After a successful migration, leave the source stopped instead of killing it.
    #[arg(long)]
    leave_stopped: bool,
    /// Compare every page of the frozen source with the destination by hash.
    #[arg(long)]
    verify: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// Give the migration up (the source runs on) when the destination takes
    /// no data for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    stall_timeout: f64,
    /// precopy: rounds, then stop and copy the rest. postcopy: stop at once,
    /// pages follow on demand. hybrid: pre-copy all but the write-hot pages,
    /// then post-copy the rest. stop-and-copy: stop, send everything, start
    /// (the baseline).
    #[arg(long, value_enum, default_value_t = ModeArg::Hybrid)]
    mode: ModeArg,
    /// Hybrid: a page dirty in this many consecutive rounds is write-hot and left for post-copy.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    hot_after: u32,
    /// Hybrid: switch to post-copy once at most this many MiB are left
    /// (also on --max-rounds, or when the rounds stop converging).
    #[arg(long, default_value_t = 64)]
    postcopy_below_mib: u64,
    /// Post-copy: unsent pages sent along with each page request's answer.
    #[arg(long, default_value_t = 16)]
    prefetch_pages: u32,
    /// Post-copy: seconds to keep reconnecting after a connection breaks (0: give up at once).
    #[arg(long, default_value_t = 10.0)]
    reconnect_timeout: f64,
    /// Post-copy: write the pages the destination asked for (then the
    /// write-hot ones) to FILE, for --prefetch-from in a later migration.
    #[arg(long, value_name = "FILE")]
    record_working_set: Option<PathBuf>,
    /// Post-copy: push the working set recorded in FILE before anything else.
    #[arg(long, value_name = "FILE")]
    prefetch_from: Option<PathBuf>,
}

/// A non-negative number of seconds.
fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds"))
}

struct TerminalProgress;

impl Progress for TerminalProgress {
    fn round(&mut self, r: &RoundReport) {
        eprintln!(
            "round {:>3}: {:>8} pages ({:>6} zero) in {:>8.1} ms, {:>8.1} MB/s; {:>8} pages dirtied meanwhile",
            r.round,
            r.pages,
            r.zero_pages,
            r.ms,
            r.bandwidth_bytes_per_sec / 1e6,
            r.dirty_pages_after
        );
    }
}

/// Whether `err` is a switchover left in doubt (either side).
pub fn in_doubt(err: &anyhow::Error) -> bool {
    err.downcast_ref::<pagehop::send::SendFailure>()
        .is_some_and(|f| f.error().in_doubt())
        || err
            .downcast_ref::<pagehop::recv::RecvError>()
            .is_some_and(|e| e.in_doubt())
}

/// Ctrl-C, SIGTERM or SIGHUP during a migration: what happens depends on
/// the phase the driver published, read once no shielded section (an
/// injected syscall, the commit) runs. Before the commit the process exits,
/// which drops the userfaultfd (all tracking) and detaches ptrace (a ptrace
/// freeze); a cgroup freeze is thawed first, since the kernel would not.
/// From the commit until the destination confirms, and during post-copy,
/// the source stays stopped. Once the destination runs, the source is
/// killed (through its pidfd): never both.
fn abort_on_signal(
    source: Option<Process>,
    cgroup: Option<PathBuf>,
    phase: PhaseWatch,
) -> anyhow::Result<()> {
    pagehop::sys::block_termination_signals()?;
    std::thread::spawn(move || {
        let sig = pagehop::sys::wait_termination_signal();
        pagehop::sys::shield::close();
        match phase.get() {
            Phase::Committed => log::warn!(
                "signal {sig}: in doubt: the source committed, the destination did not confirm \
                 yet; the source stays stopped (see the destination's report, then `pagehop \
                 resolve`)"
            ),
            Phase::SourceNeeded => log::warn!(
                "signal {sig}: post-copy interrupted; the source stays stopped \
                 (the destination still needs its memory)"
            ),
            p if p.destination_runs() => {
                if let Some(source) = &source {
                    let _ = source.signal(libc::SIGKILL);
                }
                log::warn!("signal {sig}: the destination runs; source killed");
            }
            _ => {
                // send --criu: CRIU lets the tree go, then it continues.
                phase.release_criu_source();
                log::warn!("signal {sig}: migration aborted; the source runs on")
            }
        }
        if let Some(cgroup) = cgroup {
            let _ = std::fs::write(cgroup.join("cgroup.freeze"), "0");
        }
        std::process::exit(128 + sig);
    });
    Ok(())
}

pub fn run_send(args: SendArgs) -> anyhow::Result<()> {
    let phase = PhaseWatch::new();
    let criu = match &args.criu {
        None => None,
        Some(bin) => {
            if args.verify {
                anyhow::bail!(
                    "--verify compares the destination's memory with the frozen source's, and a tree \
                     CRIU restores runs (and writes) before all of its memory has arrived; check the \
                     service's own data instead"
                );
            }
            if args.record_working_set.is_some() || args.prefetch_from.is_some() {
                anyhow::bail!(
                    "--record-working-set and --prefetch-from record one process's address space; \
                     with --criu the tree has one per process"
                );
            }
            pagehop::criu::check_user_options(&args.criu_opts)?;
            let bin = (!bin.is_empty()).then(|| std::path::Path::new(bin.as_str()));
            let cgroup = args.cgroup.as_deref().map(Cgroup::open).transpose()?;
            Some(CriuSend {
                criu: pagehop::criu::Criu::find(bin)?,
                dump_options: args.criu_opts.clone(),
                images_dir: args.criu_images.clone(),
                cgroup,
            })
        }
    };
    let pid = match (criu.as_ref().and_then(|c| c.cgroup.as_ref()), args.pid) {
        (Some(cgroup), pid) => {
            let root = cgroup.tree_root(pid)?;
            cgroup.check_only(root, &pagehop::sys::process::descendants(root))?;
            root
        }
        (None, Some(pid)) => pid,
        (None, None) => anyhow::bail!("--pid names the process (--cgroup alone needs --criu)"),
    };
    // --criu stops the tree with SIGSTOP, not through the cgroup.
    let freeze_cgroup = args.cgroup.clone().filter(|_| criu.is_none());
    // A handle taken now: a signal must never reach a process that reused
    // the pid. (A pid that is no process is refused by send itself, with
    // the reason.)
    abort_on_signal(
        Process::open(pid).ok(),
        freeze_cgroup.clone(),
        phase.clone(),
    )?;
    let opts = SendOptions {
        pid,
        to: args.to,
        security: args.wire.security()?,
        backend: args.backend.into(),
        compress: args.compress.into(),
        zerocopy: args.zerocopy.into(),
        streams: args.streams as usize,
        downtime_target: Duration::from_millis(args.downtime_target),
        max_rounds: args.max_rounds,
        freeze: match (&criu, freeze_cgroup) {
            (Some(_), _) => FreezeMethod::Signal,
            (None, Some(cgroup)) => FreezeMethod::Cgroup(cgroup),
            (None, None) => FreezeMethod::Ptrace,
        },
        leave_stopped: args.leave_stopped,
        verify: args.verify,
        connect_timeout: Duration::from_secs(10),
        stall_timeout: Duration::try_from_secs_f64(args.stall_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!("--stall-timeout must be a positive number of seconds")
            })?,
        mode: args.mode.into(),
        hot_after: args.hot_after,
        postcopy_below: args.postcopy_below_mib << 20,
        prefetch_pages: args.prefetch_pages,
        reconnect_timeout: seconds(args.reconnect_timeout, "--reconnect-timeout")?,
        record_working_set: args.record_working_set,
        prefetch_from: args.prefetch_from,
        criu,
    };
    if !opts.mode.is_postcopy()
        && (opts.record_working_set.is_some() || opts.prefetch_from.is_some())
    {
        anyhow::bail!("--record-working-set and --prefetch-from need --mode postcopy or hybrid");
    }
    let mut progress: Box<dyn Progress> = if !args.json && std::io::stderr().is_terminal() {
        Box::new(TerminalProgress)
    } else {
        Box::new(Quiet)
    };
    let report = send(opts, &phase, progress.as_mut())?;
    print_send_report(&report, args.json)?;
    if report.verify.is_mismatch() {
        anyhow::bail!(
            "verification failed: {}; the destination's copy was killed; the source (pid {pid}) is \
             held stopped and intact: `pagehop resolve --pid {pid} --run` resumes it",
            report.verify
        );
    }
    Ok(())
}

fn print_send_report(r: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        return crate::write_json_line(&mut out, r);
    }
    writeln!(
        out,
        "migrated ({}) in {:.1} ms: downtime {:.1} ms, {} rounds",
        r.mode, r.total_ms, r.downtime_ms, r.rounds
    )?;
    writeln!(out, "  switch       {}", r.switch_reason)?;
    writeln!(
        out,
        "  sent         {} pages ({} zero), {:.1} MiB raw, {:.1} MiB on the wire (x{:.2}), {:.0} MB/s, {} stream(s), {} sends",
        r.pages_sent,
        r.zero_pages,
        r.bytes_raw as f64 / (1 << 20) as f64,
        r.bytes_wire as f64 / (1 << 20) as f64,
        r.compression_ratio,
        r.throughput_bytes_per_sec / 1e6,
        r.streams,
        r.send_mode
    )?;
    if !r.mode.is_postcopy() {
        writeln!(
            out,
            "  final round  {} pages; {} installed at the destination",
            r.final_round_pages, r.installed_pages
        )?;
    } else {
        writeln!(
            out,
            "  post-copy    {} pages pending at the switch, done in {:.1} ms: {} on demand ({} requests, {} prefetched), {} in the background{}",
            r.final_round_pages,
            r.postcopy_ms,
            r.demand_pages,
            r.demand_requests,
            r.prefetched_pages,
            r.background_pages,
            if r.reconnects > 0 {
                format!(", {} reconnect(s)", r.reconnects)
            } else {
                String::new()
            }
        )?;
        if let (Some(all), Some(remote)) = (&r.fault_latency_us, &r.remote_fault_latency_us) {
            writeln!(
                out,
                "  faults       {} at the destination: latency p50 {} us, p99 {} us, max {} us; remote p50 {} us, p99 {} us ({} pages); threads blocked {:.1} ms",
                r.faults,
                all.p50_us,
                all.p99_us,
                all.max_us,
                remote.p50_us,
                remote.p99_us,
                remote.count,
                r.blocked_ms
            )?;
        }
    }
    if let Some(c) = &r.criu {
        writeln!(
            out,
            "  criu         {} tasks (CRIU {}): final scan {:.1} ms, dump {:.1} ms, final pages {:.1} ms, \
             images {} files {:.1} KiB in {:.1} ms, restore {:.1} ms, commit {:.1} ms; {} lazy pages, {} pending",
            c.tasks,
            c.criu_version,
            c.final_scan_ms,
            c.dump_ms,
            c.final_pages_ms,
            c.images_files,
            c.images_bytes as f64 / 1024.0,
            c.images_ms,
            c.restore_ms,
            c.commit_ms,
            c.lazy_pages,
            c.pending_pages
        )?;
        if let Some(cgroup) = &c.cgroup {
            writeln!(out, "  cgroup       {cgroup}")?;
        }
    }
    writeln!(out, "  verify       {}", r.verify)?;
    writeln!(
        out,
        "  pagehop cost {:.1} ms CPU (setup {:.1} ms)",
        r.engine_cpu_ms, r.setup_ms
    )?;
    Ok(())
}

#[derive(Args)]
pub struct RecvArgs {
    /// Address to listen on (HOST:PORT).
    #[arg(long)]
    listen: SocketAddr,
    #[command(flatten)]
    wire: WireArgs,
    /// Command that starts the destination process at switchover (run with sh -c;
    /// it finds the userfaultfd handoff socket in $PAGEHOP_UFFD_SOCKET).
    #[arg(long, value_name = "CMD", conflicts_with_all = ["image_dir", "criu"])]
    restore_cmd: Option<String>,
    /// Restore the source's process tree (`pagehop send --criu`) with
    /// `criu restore --lazy-pages`, CRIU's images going into DIR (empty or
    /// new). CRIU runs in recv's namespaces (enter a network namespace with `nsenter --net`, not `ip netns exec`).
    #[arg(long, value_name = "DIR", conflicts_with = "image_dir")]
    criu: Option<PathBuf>,
    /// With --criu: the CRIU binary (default: $PAGEHOP_CRIU, then
    /// /opt/pagehop/bin/criu from the setup, then `criu` on PATH).
    #[arg(long, value_name = "PATH", requires = "criu")]
    criu_bin: Option<PathBuf>,
    /// With --criu: an option passed through to `criu restore` (repeatable),
    /// e.g. --criu-restore-opt=--tcp-close.
    #[arg(
        long = "criu-restore-opt",
        value_name = "OPT",
        allow_hyphen_values = true,
        requires = "criu"
    )]
    criu_restore_opts: Vec<String>,
    /// Write the received memory to DIR instead (format: see pagehop::wire::image).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Path of the handoff socket (default: `uffd.sock` in a new directory of
    /// mode 0700 with a random name under $TMPDIR, removed when recv ends).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// Post-copy: seconds to wait for a source whose connections broke (the
    /// process is held stopped meanwhile).
    #[arg(long, default_value_t = 10.0)]
    reconnect_timeout: f64,
}

pub fn run_recv(args: RecvArgs) -> anyhow::Result<()> {
    // Nobody else can plant a file at the socket's path or race its bind;
    // the directory lives until recv returns.
    let (socket_path, _private_dir) = match args.socket {
        Some(path) => (path, None),
        None => {
            let dir = pagehop::dest::handoff::PrivateDir::create(
                &std::env::temp_dir(),
                "pagehop-handoff",
            )
            .context("creating a private directory for the handoff socket")?;
            (dir.path().join("uffd.sock"), Some(dir))
        }
    };
    let output = match (args.restore_cmd, args.image_dir, args.criu) {
        (Some(cmd), None, None) => Output::Restore(RestoreCommand {
            cmd,
            socket_path,
            timeout: Duration::from_secs(30),
        }),
        (None, Some(dir), None) => Output::ImageDir(dir),
        (None, None, Some(dir)) => {
            pagehop::criu::check_user_options(&args.criu_restore_opts)?;
            Output::Criu(CriuRestore {
                criu: pagehop::criu::Criu::find(args.criu_bin.as_deref())?,
                dir: std::path::absolute(&dir)?,
                restore_options: args.criu_restore_opts,
            })
        }
        _ => anyhow::bail!("nothing to restore into: give --restore-cmd, --criu or --image-dir"),
    };
    let opts = RecvOptions {
        listen: args.listen,
        security: args.wire.security()?,
        output,
        handshake_timeout: Duration::from_secs(10),
        reconnect_timeout: seconds(args.reconnect_timeout, "--reconnect-timeout")?,
    };
    let json = args.json;
    let report = recv(opts)?;
    print_recv_report(&report, json)
}

fn print_recv_report(r: &RecvReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        return crate::write_json_line(&mut out, r);
    }
    writeln!(
        out,
        "received {} pages ({} zero) in {} rounds from {}; installed {} in {:.1} ms{}; verify {}",
        r.pages_received,
        r.zero_pages_received,
        r.rounds,
        r.source,
        r.pages_installed,
        r.install_ms,
        r.restored_pid
            .map(|p| format!(" into pid {p}"))
            .unwrap_or_default(),
        r.verify
    )?;
    Ok(())
}
