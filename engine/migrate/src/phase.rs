//! Where a migration stands on the source, and what an interruption must do
//! there: before the commit, abort (the source runs on: the destination
//! never starts without `Commit`); from the commit until the destination
//! confirms, stay stopped (the destination may or may not run: in doubt);
//! once it runs with all its memory, the source must die; while it runs on
//! memory the source still holds (post-copy), the source must stay stopped.
//!
//! The driver owns the phase: it moves it forward, publishes each step to a
//! [`PhaseWatch`] that the caller gave it (a signal-handling thread reads
//! it), and returns the phase it reached with every error
//! ([`crate::send::SendFailure`]).
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pagehop_sys::process::Process;

/// The source's phases, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Validating the process, connecting, starting tracking.
    #[default]
    Preparing = 0,
    /// Pre-copy rounds; the source runs.
    Rounds = 1,
    /// The source is frozen for the switch; the destination does not run yet.
    Frozen = 2,
    /// The source sent `Commit` (or began to): it holds a SIGSTOP and never
    /// runs again unless the destination says it gave up. Until the
    /// destination confirms, whether it runs is not known here.
    Committed = 3,
    /// The destination runs with all of its memory: the source must never
    /// run again.
    DestinationRuns = 4,
    /// Post-copy: the destination runs on memory the source still holds, so
    /// the source must neither run nor die.
    SourceNeeded = 5,
    /// Finished: the source is ended as the operator asked.
    Done = 6,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Preparing,
            1 => Phase::Rounds,
            2 => Phase::Frozen,
            3 => Phase::Committed,
            4 => Phase::DestinationRuns,
            5 => Phase::SourceNeeded,
            _ => Phase::Done,
        }
    }

    /// Whether the destination is known to run: from here on the source
    /// must not be resumed.
    pub fn destination_runs(self) -> bool {
        self >= Phase::DestinationRuns
    }
}

/// A phase readable from another thread.
#[derive(Clone, Debug, Default)]
pub struct PhaseWatch(Arc<Watched>);

#[derive(Debug, Default)]
struct Watched {
    phase: AtomicU8,
    /// `send --criu` before the commit: what an interruption must release.
    criu: Mutex<Option<CriuHold>>,
}

/// A CRIU-frozen source before the commit: the tree (SIGSTOPped by pagehop)
/// and, once it runs, CRIU's dump with its page-server socket.
#[derive(Debug, Default)]
pub(crate) struct CriuHold {
    pub tree: Vec<Process>,
    pub dump: Option<(Process, UnixStream)>,
}

/// How long an interrupted migration waits for CRIU to let the tree go.
const CRIU_RELEASE_WAIT: Duration = Duration::from_secs(60);

impl PhaseWatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self) -> Phase {
        Phase::from_u8(self.0.phase.load(Ordering::SeqCst))
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.0.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Publishes (or, with `None`, withdraws) what [`PhaseWatch::release_criu_source`]
    /// must release.
    pub(crate) fn hold_criu(&self, hold: Option<CriuHold>) {
        *self.0.criu.lock().expect("lock") = hold;
    }

    /// Adds CRIU's dump to the published hold.
    pub(crate) fn hold_criu_dump(&self, criu: Process, page_server: UnixStream) {
        if let Some(hold) = self.0.criu.lock().expect("lock").as_mut() {
            hold.dump = Some((criu, page_server));
        }
    }

    /// For an interruption of `send --criu` before the commit (the phase
    /// is not [`Phase::destination_runs`]): ends CRIU's page server, waits
    /// until CRIU has let the tree go (it leaves it stopped and untraced),
    /// then continues the tree. Nothing happens without a published hold.
    pub fn release_criu_source(&self) {
        let Some(hold) = self.0.criu.lock().expect("lock").take() else {
            return;
        };
        if let Some((criu, page_server)) = hold.dump {
            let _ = page_server.shutdown(std::net::Shutdown::Both);
            let _ = pagehop_sys::poll::poll_readable(criu.as_fd(), CRIU_RELEASE_WAIT);
        }
        for p in &hold.tree {
            let _ = p.signal(libc::SIGCONT);
        }
    }
}
