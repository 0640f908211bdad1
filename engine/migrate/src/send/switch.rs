//! The switch: freeze the source, collect the last writes with a full
//! scan, then either send the rest and let the destination start with all
//! of it (pre-copy), or send the list of pages it still lacks and let it
//! start at once (post-copy).
use std::time::{Duration, Instant};

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_source::freeze::FreezeMethod;
use pagehop_source::provider::{FrozenTree, LiveTree};
use pagehop_source::track::Session;
use pagehop_wire::conn::Conn;
use pagehop_wire::msg::{Done, Switchover};

use super::SendError;
use super::rounds::{Spaces, layouts_of, update_layouts};

/// How long a freeze may take before the migration is abandoned.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the destination may take to install and start the process.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Pre-copy: after the final round, tells the destination to start and
/// waits until it runs. Returns the pages it installed.
pub fn switch_precopy(control: &mut Conn, final_round: u32) -> Result<u64, SendError> {
    control.send(&Switchover {
        final_round,
        postcopy: false,
        criu: false,
    })?;
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let done: Done = control.recv_msg()?;
    Ok(done.pages_sent)
}

/// Post-copy: sends the pending set and the post-copy `Switchover`, and
/// waits until the destination says its process runs.
pub fn switch_postcopy(
    control: &mut Conn,
    pending: &Spaces<RangeSet>,
    round: u32,
) -> Result<(), SendError> {
    send_switch(control, pending, round, false)?;
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let _: Done = control.recv_msg()?;
    control.set_read_timeout(None)?;
    Ok(())
}

/// CRIU: sends the pending set and the CRIU `Switchover`; the destination
/// restores the tree stopped and answers `Restored` (see `criu::commit`).
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
