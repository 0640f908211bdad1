//! The post-copy switch on the destination: start the process at once,
//! held stopped; commit ([`super::commit`]); then let it run and serve its
//! faults until every page is installed ([`pagehop_dest::fetch`]).
use std::time::{Duration, Instant};

use pagehop_dest::fetch::{self, Fetch, Lanes};
use pagehop_dest::intake::Intake;
use pagehop_dest::restore::{RestoreCommand, Restored};
use std::collections::BTreeMap;

use pagehop_mem::SpaceKey;
use pagehop_mem::pages::RangeSet;
use pagehop_wire::conn::Conn;

use super::{RecvError, commit};
use crate::report::RecvReport;

/// What both post-copy switches (a restore command's, here, and CRIU's,
/// [`super::criu::run`]) work with.
pub struct Switch<'a> {
    pub intake: &'a Intake,
    pub lanes: &'a Lanes,
    pub control: &'a mut Conn,
    /// The pages the destination lacks, per address space.
    pub pending: &'a BTreeMap<SpaceKey, RangeSet>,
    pub reconnect_timeout: Duration,
    pub report: &'a mut RecvReport,
}

/// Starts the process and serves it until it holds all of its memory.
/// Returns the running process. Before the commit any failure kills it
/// (it cannot run without the source). After it, if the source is lost for
/// good, the process is left stopped (the source may still hold its
/// memory); on any other failure it is killed.
pub fn run(cmd: &RestoreCommand, s: Switch<'_>) -> Result<Restored, RecvError> {
    let Switch {
        intake,
        lanes,
        control,
        pending,
        reconnect_timeout,
        report,
    } = s;
    let started = Instant::now();
    let mut restored = cmd.start()?;
    report.restored_pid = Some(restored.pid());
    let uffd = restored.take_uffd().expect("the uffd is taken once");
    let process = match restored.process().try_clone() {
        Ok(p) => p,
        Err(source) => {
            let pid = restored.pid();
            restored.abandon();
            return Err(pagehop_dest::restore::RestoreError::Pidfd { pid, source }.into());
        }
    };
    let processes = [process];
    let start = fetch::Start {
        store: intake.store(),
        lanes,
        pending,
        processes: &processes,
        reconnect_timeout,
        installable: None,
    };
    let served = vec![fetch::Served {
        uffd,
        space: SpaceKey::ROOT,
    }];
    let fetch = match Fetch::new(&start, served) {
        Ok(f) => f,
        Err(e) => {
            restored.abandon();
            return Err(e.into());
        }
    };
    intake.start_postcopy(fetch.arrivals());
    let waited = match commit::await_commit(control, 1, commit::COMMIT_TIMEOUT, &mut commit::idle) {
        Ok(waited) => waited,
        Err(e) => {
            restored.abandon();
            return Err(e);
        }
    };
    if let Err(why) = waited {
        let pid = restored.pid();
        restored.abandon();
        commit::tell_source(control, &why);
        return Err(RecvError::NotCommitted { pid, why });
    }
    restored.resume();
    report.switchover = "committed";
    report.install_ms = started.elapsed().as_secs_f64() * 1e3;
    commit::confirm_running(control, 0);
    log::info!(
        "post-copy: process {} running after {:.1} ms; {} pages to fetch",
        restored.pid(),
        report.install_ms,
        pending
            .values()
            .map(|r| r.pages(intake.lock_store().page_size() as u64))
            .sum::<u64>()
    );
    match fetch.run(&start, control) {
        Ok(stats) => {
            report.pages_installed = stats.installed_pages;
            let (data, zero) = intake.lock_store().received();
            report.pages_received = data;
            report.zero_pages_received = zero;
            let remote = stats.remote_fault_latency_us.as_ref();
            log::info!(
                "post-copy: all pages installed in {:.1} ms; {} faults, remote fault latency p50 {} us p99 {} us",
                stats.postcopy_ms,
                stats.faults,
                remote.map_or(0, |l| l.p50_us),
                remote.map_or(0, |l| l.p99_us),
            );
            report.postcopy = Some(stats);
            Ok(restored)
        }
        // The process stays stopped: the source may still hold its memory.
        Err(e @ fetch::FetchError::SourceLost { .. }) => {
            restored.release();
            Err(e.into())
        }
        Err(e) => {
            restored.abandon();
            Err(e.into())
        }
    }
}
