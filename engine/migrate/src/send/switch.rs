//! The switch: freeze the source, collect the last writes with a full
//! scan, then either send the rest and let the destination start with all
//! of it (pre-copy), or send the list of pages it still lacks and let it
//! start at once (post-copy).
use std::time::{Duration, Instant};

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_source::provider::{FrozenTree, LiveProcess};
use pagehop_source::track::Session;
use pagehop_wire::conn::Conn;
use pagehop_wire::msg::{Done, Switchover};

use super::SendError;
use super::rounds::send_layout;

/// How long a freeze may take before the migration is abandoned.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the destination may take to install and start the process.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// The source, frozen, with what the destination still lacks.
pub struct Frozen<'a> {
    pub tree: FrozenTree<'a>,
    pub at: Instant,
    pub layout: Layout,
    pub pages: RangeSet,
}

/// Freezes the source and adds what was dirtied since the last round (a
/// full scan) to `pages`; re-sends the layout if it changed.
pub fn freeze_and_collect<'a>(
    method: &pagehop_source::freeze::FreezeMethod,
    control: &mut Conn,
    source: &'a LiveProcess,
    session: Option<&mut Session>,
    mut layout: Layout,
    mut pages: RangeSet,
) -> Result<Frozen<'a>, SendError> {
    let pid = source.pid();
    let tree = source.freeze(method, FREEZE_TIMEOUT)?;
    let at = Instant::now();
    if let Some(session) = session {
        session.force_full_scan();
        let last = session.step()?;
        pages.union(&last.dirty.get(&pid).cloned().unwrap_or_default());
        if let Some(changed) = last.changed.get(&pid) {
            pages.union(changed);
        }
    }
    let now = tree.layout(SpaceKey::ROOT)?;
    if now != layout {
        layout = now;
        send_layout(control, &layout)?;
    }
    let pages = pages.intersection(&layout.writable_ranges());
    Ok(Frozen {
        tree,
        at,
        layout,
        pages,
    })
}

/// Pre-copy: after the final round, tells the destination to start and
/// waits until it runs. Returns the pages it installed.
pub fn switch_precopy(control: &mut Conn, final_round: u32) -> Result<u64, SendError> {
    control.send(&Switchover {
        final_round,
        postcopy: false,
    })?;
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let done: Done = control.recv_msg()?;
    Ok(done.pages_sent)
}

/// Post-copy: sends the pending set and the post-copy `Switchover`, and
/// waits until the destination says its process runs.
pub fn switch_postcopy(
    control: &mut Conn,
    pending: &RangeSet,
    round: u32,
) -> Result<(), SendError> {
    control.send_pending(pending)?;
    control.send(&Switchover {
        final_round: round,
        postcopy: true,
    })?;
    control.set_read_timeout(Some(RESTORE_TIMEOUT))?;
    let _: Done = control.recv_msg()?;
    control.set_read_timeout(None)?;
    Ok(())
}
