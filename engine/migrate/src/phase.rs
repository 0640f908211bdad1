//! Where a migration stands on the source, and what an interruption must do
//! there: before the destination runs, abort (the source runs on); once it
//! runs with all its memory, the source must die; while it runs on memory
//! the source still holds (post-copy), the source must stay stopped.
//!
//! The driver owns the phase: it moves it forward, publishes each step to a
//! [`PhaseWatch`] that the caller gave it (a signal-handling thread reads
//! it), and returns the phase it reached with every error
//! ([`crate::send::SendFailure`]).
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

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
    /// The destination runs with all of its memory: the source must never
    /// run again.
    DestinationRuns = 3,
    /// Post-copy: the destination runs on memory the source still holds, so
    /// the source must neither run nor die.
    SourceNeeded = 4,
    /// Finished: the source is ended as the operator asked.
    Done = 5,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Preparing,
            1 => Phase::Rounds,
            2 => Phase::Frozen,
            3 => Phase::DestinationRuns,
            4 => Phase::SourceNeeded,
            _ => Phase::Done,
        }
    }

    /// Whether the destination may be running: from here on the source must
    /// not be resumed.
    pub fn destination_runs(self) -> bool {
        self >= Phase::DestinationRuns
    }
}

/// A phase readable from another thread.
#[derive(Clone, Debug, Default)]
pub struct PhaseWatch(Arc<AtomicU8>);

impl PhaseWatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::SeqCst))
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }
}
