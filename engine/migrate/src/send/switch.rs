//! The switch: freeze the source, collect the last writes with a full
//! scan, then either send the rest and let the destination start with all
//! of it (pre-copy), or send the list of pages it still lacks and let it
//! start at once (post-copy).
//!
//! Every switch ends in the same [`commit`]: the destination's copy is
//! ready and held stopped (`Restored`); the source holds a SIGSTOP for good
//! and sends `Commit`; the copy continues (`Done`). The destination never
//! runs its copy without `Commit`, and the source never runs again after
//! it unless the destination says it killed its copy, so at most one copy
//! runs. When the link fails between `Commit` and `Done` neither side
//! knows what the other saw: the source stays stopped and says it is in
//! doubt ([`SendError::InDoubt`]); the operator resolves it.
use std::time::{Duration, Instant};

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_source::freeze::FreezeMethod;
use pagehop_source::provider::{FrozenTree, LiveTree};
use pagehop_source::track::Session;
use pagehop_wire::conn::{Conn, ConnError, codes};
use pagehop_wire::msg::{Commit, Done, Restored, Switchover};

use super::rounds::{Spaces, layouts_of, update_layouts};
use super::{Phases, SendError};
use crate::phase::Phase;

/// How long a freeze may take before the migration is abandoned.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the destination may take to install (pre-copy) or restore its
/// copy, until `Restored`.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `Done` may take after `Commit` (the destination only lets its
/// copy continue).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// The source, frozen, with what the destination still lacks.
pub struct Frozen {
    pub tree: FrozenTree,
    pub at: Instant,
    pub layouts: Spaces<Layout>,
    pub pages: Spaces<RangeSet>,
}

/// Freezes the source and adds what was dirtied since the last round (a
/// full scan) to `pages`; re-sends the layouts that changed.
pub fn freeze_and_collect(
    method: &FreezeMethod,
    control: &mut Conn,
    source: &LiveTree,
    session: Option<&mut Session>,
    mut layouts: Spaces<Layout>,
    mut pages: Spaces<RangeSet>,
) -> Result<Frozen, SendError> {
    let tree = source.freeze(method, FREEZE_TIMEOUT)?;
    let at = Instant::now();
    if let Some(session) = session {
        session.force_full_scan();
        let last = session.step()?;
        for (pid, dirty) in last.dirty.iter().chain(last.changed.iter()) {
            if let Some(space) = source.space_of(*pid) {
                pages.entry(space).or_default().union(dirty);
            }
        }
    }
    let known: Vec<SpaceKey> = layouts.keys().copied().collect();
    update_layouts(control, &mut layouts, layouts_of(&tree, tree.spaces())?)?;
    // Processes that joined the tree since the last round: all of their pages.
    for (space, layout) in &layouts {
        if !known.contains(space) {
            pages.insert(*space, tree.populated(*space, layout)?);
        }
    }
    let pages = layouts
        .iter()
        .map(|(&space, layout)| {
            let p = pages.remove(&space).unwrap_or_default();
            (space, p.intersection(&layout.writable_ranges()))
        })
        .collect();
    Ok(Frozen {
        tree,
        at,
        layouts,
        pages,
    })
}

/// Pre-copy: after the final round, tells the destination to install
/// everything; returns once its copy holds every page (`Restored`).
pub fn switch_precopy(control: &mut Conn, final_round: u32) -> Result<(), SendError> {
    control.send(&Switchover {
        final_round,
        postcopy: false,
        criu: false,
    })?;
    Ok(())
}

/// Post-copy: sends the pending set and the post-copy `Switchover`; the
/// destination starts its copy, held stopped, and commits ([`commit`]).
pub fn switch_postcopy(
    control: &mut Conn,
    pending: &Spaces<RangeSet>,
    round: u32,
) -> Result<(), SendError> {
    send_switch(control, pending, round, false)
}

/// CRIU: sends the pending set and the CRIU `Switchover`; the destination
/// restores the tree stopped and commits ([`commit`]).
pub fn switch_criu(
    control: &mut Conn,
    pending: &Spaces<RangeSet>,
    round: u32,
) -> Result<(), SendError> {
    send_switch(control, pending, round, true)
}

fn send_switch(
    control: &mut Conn,
    pending: &Spaces<RangeSet>,
    round: u32,
    criu: bool,
) -> Result<(), SendError> {
    control.send_pending(pending)?;
    control.send(&Switchover {
        final_round: round,
        postcopy: true,
        criu,
    })?;
    Ok(())
}

/// A commit the destination confirmed.
pub struct Committed {
    /// When `Restored` arrived (the commit began).
    pub restored_at: Instant,
    pub done: Done,
}

/// The commit point. Waits for the destination's `Restored` (its copy of
/// `tasks` tasks is ready, held stopped); then the source holds its SIGSTOP
/// for good ([`Phase::Committed`]) and sends `Commit`; returns once the
/// destination says its copy runs (`Done`).
///
/// Before `Commit` any failure is an ordinary one (the source may run on).
/// After it, a destination that says it gave up ([`codes::ABORTED`]) lets
/// the source run on again; any other failure is [`SendError::InDoubt`],
/// with the source held stopped.
pub fn commit(
    control: &mut Conn,
    tree: &FrozenTree,
    root: i32,
    tasks: u32,
    phases: &mut Phases<'_>,
) -> Result<Committed, SendError> {
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let restored: Restored = control.recv_msg()?;
    let restored_at = Instant::now();
    if restored.tasks != tasks {
        return Err(SendError::TaskCount {
            got: restored.tasks,
            want: tasks,
        });
    }
    // A termination signal is acted on before this (the source runs on) or
    // after it (the source stays stopped), never in between.
    let shield = pagehop_sys::shield::enter();
    tree.hold_stopped();
    phases.enter(Phase::Committed);
    let sent = control.send(&Commit { tasks });
    drop(shield);
    let confirmed = sent.and_then(|()| {
        control.set_read_timeout(Some(CONFIRM_TIMEOUT))?;
        control.recv_msg::<Done>()
    });
    match confirmed {
        Ok(done) => {
            control.set_read_timeout(None)?;
            Ok(Committed { restored_at, done })
        }
        Err(ConnError::Peer {
            code: codes::ABORTED,
            message,
        }) => {
            // The destination killed its copy before it ran.
            tree.release_hold();
            phases.enter(Phase::Frozen);
            Err(SendError::DestinationAborted { message })
        }
        Err(cause) => Err(SendError::InDoubt {
            held: tree
                .pids()
                .into_iter()
                .map(|(_, pid)| pid.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            root,
            cause,
        }),
    }
}
