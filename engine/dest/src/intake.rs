//! The receiving end of the data lanes: every `Pages` frame that arrives on
//! a data or priority lane goes into the [`PageStore`], counted per round so
//! that the control loop can acknowledge a round once all of it is here.
//!
//! What a lane may deliver depends on where the migration stands
//! ([`Accepting`], set by the receiver's state machine): pages during the
//! rounds and during post-copy, nothing after the pre-copy switch or after
//! the end. Before the switch, a lane that fails ends the migration: the
//! failure is recorded and the control loop is woken (its socket's read
//! side is shut down) so that it tells the source. During post-copy a lane
//! that breaks is reported to the fetch loop, which reconnects.
use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pagehop_mem::PageSink;
use pagehop_wire::batch::{BatchError, decode_batch};
use pagehop_wire::{FrameError, FrameKind, FrameReader};

use crate::fetch::Arrivals;
use crate::store::{PageStore, StoreError};

/// What the data lanes may deliver now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepting {
    /// Pre-copy rounds: pages for the store.
    Rounds,
    /// Post-copy: pages for the store and the fetch loop.
    Postcopy,
    /// After the pre-copy switch: the final round was acknowledged, nothing
    /// more may come; lanes may close.
    AfterSwitch,
    /// After the end of the migration.
    AfterDone,
}

impl Accepting {
    fn describe(self) -> &'static str {
        match self {
            Accepting::Rounds => "during the rounds",
            Accepting::Postcopy => "during post-copy",
            Accepting::AfterSwitch => "after the pre-copy switch",
            Accepting::AfterDone => "after the migration ended",
        }
    }
}

/// Why a data lane ended the migration.
#[derive(Debug, thiserror::Error)]
pub enum LaneFailure {
    #[error("the source went away (a data lane closed)")]
    SourceGone,
    #[error("a data lane delivered a bad frame")]
    Frame(#[source] FrameError),
    #[error("a data lane delivered a bad page batch")]
    Batch(#[source] BatchError),
    #[error("a data lane delivered a page the store refused")]
    Store(#[source] StoreError),
    #[error("a data lane delivered a {kind} frame; only Pages frames belong there")]
    Unexpected { kind: FrameKind },
    #[error("protocol: a Pages frame arrived {when}")]
    OutOfOrder { when: &'static str },
}

/// A round's pages did not all arrive.
#[derive(Debug, thiserror::Error)]
pub enum RoundWaitError {
    #[error(transparent)]
    Lane(#[from] LaneFailure),
    #[error("round {round}: {got} of {want} pages arrived within {timeout:?}")]
    Timeout {
        round: u32,
        got: u64,
        want: u64,
        timeout: Duration,
    },
}

/// State shared by the control loop and the lane threads.
pub struct Intake {
    store: Mutex<PageStore>,
    /// Pages received per round.
    counts: Mutex<HashMap<u32, u64>>,
    arrived: Condvar,
    failure: Mutex<Option<LaneFailure>>,
    /// The control connection, to wake the control loop when a lane fails.
    control: TcpStream,
    accepting: Mutex<Accepting>,
    /// Set at a post-copy switch: where received pages are reported.
    postcopy: OnceLock<Arc<Arrivals>>,
}

impl Intake {
    pub fn new(store: PageStore, control: TcpStream) -> Self {
        Self {
            store: Mutex::new(store),
            counts: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            failure: Mutex::new(None),
            control,
            accepting: Mutex::new(Accepting::Rounds),
            postcopy: OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Mutex<PageStore> {
        &self.store
    }

    pub fn lock_store(&self) -> MutexGuard<'_, PageStore> {
        self.store.lock().expect("lock")
    }

    /// What the lanes may deliver from now on.
    pub fn set_accepting(&self, accepting: Accepting) {
        *self.accepting.lock().expect("lock") = accepting;
    }

    pub fn accepting(&self) -> Accepting {
        *self.accepting.lock().expect("lock")
    }

    /// Post-copy: report arrivals to `arrivals` from now on.
    pub fn start_postcopy(&self, arrivals: Arc<Arrivals>) {
        let _ = self.postcopy.set(arrivals);
        self.set_accepting(Accepting::Postcopy);
    }

    /// Records why a lane failed (the first reason wins) and wakes the
    /// control loop, so that it tells the source and ends the migration.
    fn fail(&self, why: LaneFailure) {
        self.failure.lock().expect("lock").get_or_insert(why);
        self.arrived.notify_all();
        let _ = self.control.shutdown(std::net::Shutdown::Read);
    }

    /// Why a lane failed, if one did (taken once).
    pub fn take_failure(&self) -> Option<LaneFailure> {
        self.failure.lock().expect("lock").take()
    }

    /// Receives `Pages` frames from one lane of `epoch` until it closes.
    pub fn receive(
        &self,
        mut reader: FrameReader<TcpStream>,
        page_size: usize,
        epoch: u32,
        priority: bool,
    ) {
        let mut scratch = Vec::new();
        loop {
            let frame = reader.read_frame();
            if let Some(arrivals) = self.postcopy.get()
                && frame.is_err()
            {
                // Post-copy: a bad frame is dropped whole; the source resends
                // whatever is still missing after it reconnects.
                if let Err(e) = &frame
                    && !matches!(e, FrameError::Closed)
                {
                    log::warn!(
                        "lane of epoch {epoch} ended: {}",
                        pagehop_mem::error_chain(e)
                    );
                }
                return arrivals.stream_ended(epoch);
            }
            let (kind, payload) = match frame {
                Ok(frame) => frame,
                Err(FrameError::Closed)
                    if matches!(
                        self.accepting(),
                        Accepting::AfterSwitch | Accepting::AfterDone
                    ) =>
                {
                    return;
                }
                // The source went away: cleanly, mid-frame, or with a reset.
                Err(FrameError::Closed | FrameError::Truncated { .. } | FrameError::Io { .. }) => {
                    return self.fail(LaneFailure::SourceGone);
                }
                Err(e) => return self.fail(LaneFailure::Frame(e)),
            };
            if kind != FrameKind::Pages {
                return self.fail(LaneFailure::Unexpected { kind });
            }
            let accepting = self.accepting();
            if matches!(accepting, Accepting::AfterSwitch | Accepting::AfterDone) {
                return self.fail(LaneFailure::OutOfOrder {
                    when: accepting.describe(),
                });
            }
            let batch = match decode_batch(payload, page_size, &mut scratch) {
                Ok(b) => b,
                Err(e) => {
                    if let Some(arrivals) = self.postcopy.get() {
                        return arrivals.stream_ended(epoch);
                    }
                    return self.fail(LaneFailure::Batch(e));
                }
            };
            let round = batch.round;
            let pages: Vec<(u64, Option<&[u8]>)> = batch.iter().collect();
            let stored = self.lock_store().put(batch.space, &pages);
            if let Err(e) = stored {
                return self.fail(LaneFailure::Store(e));
            }
            if let Some(arrivals) = self.postcopy.get() {
                arrivals.arrived(
                    batch.space,
                    priority,
                    pages.iter().map(|(addr, _)| *addr).collect(),
                );
            }
            *self.counts.lock().expect("lock").entry(round).or_default() += pages.len() as u64;
            self.arrived.notify_all();
        }
    }

    /// Waits until `want` pages of `round` are in the store, a lane fails,
    /// or `timeout` passes.
    pub fn wait_for_round(
        &self,
        round: u32,
        want: u64,
        timeout: Duration,
    ) -> Result<(), RoundWaitError> {
        let deadline = Instant::now() + timeout;
        let mut counts = self.counts.lock().expect("lock");
        loop {
            if let Some(failure) = self.take_failure() {
                return Err(failure.into());
            }
            let got = counts.get(&round).copied().unwrap_or(0);
            if got >= want {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RoundWaitError::Timeout {
                    round,
                    got,
                    want,
                    timeout,
                });
            }
            counts = self
                .arrived
                .wait_timeout(counts, left.min(Duration::from_millis(100)))
                .expect("lock")
                .0;
        }
    }
}
