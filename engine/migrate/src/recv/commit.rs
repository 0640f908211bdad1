//! The destination's half of the commit, shared by every switch: its copy
//! is ready and held stopped; it says `Restored` and waits for the source's
//! `Commit` before the copy may run.
//!
//! ```text
//!  source                               destination
//!  frozen ── Switchover ──────────────> installs (pre-copy) or starts, stopped
//!         <──────────────── Restored ── copy ready, held stopped
//!  holds SIGSTOP for good
//!         ── Commit ──────────────────> copy continues
//!         <──────────────────── Done ── copy runs
//! ```
//!
//! What each side knows when the link fails:
//! - no `Commit` arrived, and the source said it gave up (an `Error`
//!   frame): the source runs on, the copy is killed ([`NoCommit::Aborted`]);
//! - the link is up but no `Commit` comes in time (or something else
//!   comes): the copy is killed, then the source hears that it may run on
//!   ([`tell_source`], [`codes::ABORTED`]);
//! - the link broke before a `Commit`: the source may have committed or
//!   not, so this side cannot know whether it runs ([`NoCommit::Lost`]).
//!   The caller holds its copy stopped (pre-copy, where the copy is whole)
//!   or kills it (post-copy, where it cannot run without the source); in
//!   both cases the source, if it committed, holds the intact copy stopped.
use std::time::{Duration, Instant};

use pagehop_wire::conn::{Conn, ConnError, codes};
use pagehop_wire::msg::{Commit, Done, Restored};

use super::RecvError;

/// How long the source may take to commit after `Restored`.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the copy may not run.
#[derive(Debug, thiserror::Error)]
pub enum NoCommit {
    #[error("the source gave the switch up before committing: {0}")]
    Aborted(String),
    #[error("the source did not commit within {0:?}")]
    Timeout(Duration),
    #[error("the link to the source broke before its commit arrived")]
    Lost(#[source] ConnError),
    #[error("the source sent {tasks} tasks in its commit, the destination restored {want}")]
    Tasks { tasks: u32, want: u32 },
    #[error("the source sent something else than its commit")]
    Protocol(#[source] ConnError),
}

impl NoCommit {
    /// Whether the source may have committed (only a broken link leaves
    /// that open).
    pub fn in_doubt(&self) -> bool {
        matches!(self, NoCommit::Lost(_))
    }
}

/// Says `Restored { tasks }` and waits for `Commit`, running `meanwhile`
/// (which should wait a little, e.g. serving faults) between looks. `Err`
/// of the outer result is a failure of `meanwhile`.
pub fn await_commit(
    control: &mut Conn,
    tasks: u32,
    timeout: Duration,
    meanwhile: &mut dyn FnMut() -> Result<(), RecvError>,
) -> Result<Result<Duration, NoCommit>, RecvError> {
    if let Err(e) = control.send(&Restored { tasks }) {
        return Ok(Err(NoCommit::Lost(e)));
    }
    let waiting = Instant::now();
    loop {
        match control.readable(Duration::ZERO) {
            Ok(true) => {
                return Ok(match control.recv_msg::<Commit>() {
                    Ok(c) if c.tasks == tasks => Ok(waiting.elapsed()),
                    Ok(c) => Err(NoCommit::Tasks {
                        tasks: c.tasks,
                        want: tasks,
                    }),
                    Err(ConnError::Peer { message, .. }) => Err(NoCommit::Aborted(message)),
                    Err(e @ (ConnError::Msg(_) | ConnError::Unexpected { .. })) => {
                        Err(NoCommit::Protocol(e))
                    }
                    Err(e) => Err(NoCommit::Lost(e)),
                });
            }
            Ok(false) => {}
            Err(e) => return Ok(Err(NoCommit::Lost(e))),
        }
        if waiting.elapsed() >= timeout {
            return Ok(Err(NoCommit::Timeout(timeout)));
        }
        meanwhile()?;
    }
}

/// Once the copy is killed: tells a source that may have committed that it
/// may run on (nothing to say when the source gave up, or the link is gone).
pub fn tell_source(control: &mut Conn, why: &NoCommit) {
    if !matches!(why, NoCommit::Aborted(_) | NoCommit::Lost(_)) {
        control.send_error(
            codes::ABORTED,
            &format!(
                "{}: the destination's copy was killed before it ran",
                pagehop_mem::error_chain(why)
            ),
        );
    }
}

/// After the commit: tells the source the copy runs (`Done`). The copy
/// runs whether or not the source hears it, so a failure is only logged.
pub fn confirm_running(control: &mut Conn, pages_sent: u64) {
    if let Err(e) = control.send(&Done { pages_sent }) {
        log::warn!(
            "the copy runs, but the source did not hear it: {}",
            pagehop_mem::error_chain(&e)
        );
    }
}

/// Waits a little: between looks when there is nothing else to do.
pub fn idle() -> Result<(), RecvError> {
    std::thread::sleep(Duration::from_millis(1));
    Ok(())
}
