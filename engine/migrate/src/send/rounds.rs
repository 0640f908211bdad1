//! Pre-copy rounds while the source runs: round 0 sends every populated
//! page, round k what the tracker saw written during round k-1 (plus
//! mappings created, moved or zapped). The destination acknowledges each
//! round once it holds all of it, which gives the round's end-to-end
//! bandwidth and keeps page versions in order across streams.
//!
//! The [`Policy`] decides when to stop: pre-copy when the rest would go
//! within the downtime target, hybrid when at most `--postcopy-below` is
//! left (write-hot pages are left out of the rounds); both at
//! `--max-rounds`, or when the rounds stop converging.
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_source::heat::WriteHeat;
use pagehop_source::provider::LiveTree;
use pagehop_source::stream::{PageStreamer, RoundStats};
use pagehop_source::track::Session;
use pagehop_wire::FrameError;
use pagehop_wire::conn::{Conn, ConnError};
use pagehop_wire::msg::{self, EndOfRound, LayoutAck};

use super::{SendError, SendOptions};
use crate::report::{Progress, Report, RoundReport};

/// Rounds in a row with a dirty rate above the bandwidth before pagehop
/// concludes the process does not converge.
const NON_CONVERGING_ROUNDS: u32 = 3;
/// A round whose leftover is at least this share of what it sent made no progress.
const STALL_SHARE: f64 = 0.9;

/// How the rounds decide to stop.
pub enum Policy {
    /// Stop when the rest fits in the downtime target.
    Precopy,
    /// Leave write-hot pages out; stop when at most this many bytes are left.
    Hybrid { hot_after: u32, below: u64 },
}

/// Per address space.
pub type Spaces<T> = BTreeMap<SpaceKey, T>;

/// Where the rounds ended.
pub struct RoundsEnd {
    /// Pages the destination lacks (dirtied since sent, or never sent).
    pub pages: Spaces<RangeSet>,
    /// The next round's number.
    pub round: u32,
    pub layouts: Spaces<Layout>,
    pub reason: String,
    pub heat: Spaces<WriteHeat>,
    /// Every page sent in the rounds (some dirtied again since).
    pub sent: Spaces<RangeSet>,
}

/// Pages in all spaces.
pub fn total_pages(pages: &Spaces<RangeSet>, page_size: u64) -> u64 {
    pages.values().map(|r| r.pages(page_size)).sum()
}

fn total_bytes(pages: &Spaces<RangeSet>) -> u64 {
    pages.values().map(RangeSet::bytes).sum()
}

/// What the destination is told about the mappings it restores.
fn layout_msg(space: SpaceKey, layout: &Layout) -> msg::Layout {
    msg::Layout {
        space,
        vmas: layout
            .vmas
            .iter()
            .filter(|v| v.is_writable_private_state())
            .map(|v| msg::VmaDesc {
                start: v.range.start,
                end: v.range.end,
                prot: (v.read as u32) | (v.write as u32) << 1 | (v.exec as u32) << 2,
                flags: v.shared as u32,
                name: v.name.clone(),
            })
            .collect(),
    }
}

/// Sends the layout and waits until the destination applied it: pages for
/// the new mappings travel on the data streams, which are not ordered with
/// the control connection.
pub fn send_layout(control: &mut Conn, space: SpaceKey, layout: &Layout) -> Result<(), SendError> {
    let msg = layout_msg(space, layout);
    control.send(&msg)?;
    let ack: LayoutAck = control.recv_msg()?;
    if ack.vmas as usize != msg.vmas.len() {
        return Err(SendError::LayoutAck {
            acked: ack.vmas,
            sent: msg.vmas.len(),
        });
    }
    Ok(())
}

/// Sends the layouts of every space that changed (in `now` against
/// `known`, which it updates); an address space that is gone gets an empty
/// layout.
pub fn update_layouts(
    control: &mut Conn,
    known: &mut Spaces<Layout>,
    now: Spaces<Layout>,
) -> Result<(), SendError> {
    for (space, layout) in &now {
        if known.get(space) != Some(layout) {
            send_layout(control, *space, layout)?;
        }
    }
    for space in known.keys() {
        if !now.contains_key(space) {
            send_layout(control, *space, &Layout::default())?;
        }
    }
    *known = now;
    Ok(())
}

/// The layouts of every space of `provider` listed in `spaces`.
pub fn layouts_of(
    provider: &dyn PageProvider,
    spaces: impl IntoIterator<Item = SpaceKey>,
) -> Result<Spaces<Layout>, SendError> {
    spaces
        .into_iter()
        .map(|space| Ok((space, provider.layout(space)?)))
        .collect()
}

/// Sends one round (every space's pages) and waits for the destination to
/// hold all of it.
pub fn run_round(
    control: &mut Conn,
    streamer: &mut PageStreamer,
    provider: &dyn PageProvider,
    round: u32,
    pages: &Spaces<RangeSet>,
) -> Result<(RoundStats, Duration), SendError> {
    let started = Instant::now();
    let mut stats = RoundStats::default();
    for (&space, pages) in pages {
        stats.add(&streamer.send_round(provider, space, round, pages)?);
    }
    control.send(&EndOfRound {
        round,
        pages: stats.pages,
        bytes_raw: stats.bytes_raw,
        bytes_wire: stats.bytes_wire,
    })?;
    let ack: EndOfRound = control.recv_msg().map_err(|e| match e {
        ConnError::Frame(FrameError::Io { source })
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            SendError::AckTimeout { round }
        }
        other => other.into(),
    })?;
    if ack.round != round || ack.pages != stats.pages {
        return Err(SendError::RoundAck {
            round,
            pages: stats.pages,
            acked_round: ack.round,
            acked_pages: ack.pages,
        });
    }
    Ok((stats, started.elapsed()))
}

/// Pre-copy rounds until the policy says stop; the source keeps running.
#[allow(clippy::too_many_arguments)]
pub fn run_rounds(
    opts: &SendOptions,
    control: &mut Conn,
    source: &LiveTree,
    session: &mut Session,
    streamer: &mut PageStreamer,
    policy: &Policy,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<RoundsEnd, SendError> {
    let ps = source.page_size() as u64;
    let mut layouts = Spaces::new();
    update_layouts(control, &mut layouts, layouts_of(source, source.spaces())?)?;
    let mut pages: Spaces<RangeSet> = layouts
        .iter()
        .map(|(&space, layout)| Ok((space, source.populated(space, layout)?)))
        .collect::<Result<_, SendError>>()?;
    let mut heat: Spaces<WriteHeat> = Spaces::new();
    let mut sent: Spaces<RangeSet> = Spaces::new();
    let mut round = 0u32;
    let mut bandwidth = 0.0f64; // bytes per second, end to end
    let mut over_bandwidth = 0;
    let reason = loop {
        // Hybrid: write-hot pages would only be sent again; they wait for post-copy.
        let mut deferred = Spaces::new();
        let mut send = Spaces::new();
        for (&space, p) in &pages {
            let hot = match (policy, heat.get(&space)) {
                (Policy::Hybrid { hot_after, .. }, Some(h)) => h.hot(*hot_after, ps),
                _ => RangeSet::new(),
            };
            deferred.insert(space, p.intersection(&hot));
            send.insert(space, p.difference(&hot));
        }
        let (stats, took) = run_round(control, streamer, source, round, &send)?;
        for (&space, p) in &send {
            sent.entry(space).or_default().union(p);
        }
        bandwidth = (stats.bytes_wire.max(1) as f64 / took.as_secs_f64()).max(bandwidth * 0.5);
        let interval = session.step()?;
        // A followed tree: processes forked meanwhile join with all their
        // pages, processes that exited leave.
        let joined = join_and_leave(source, session)?;
        let mut dirty: Spaces<RangeSet> = Spaces::new();
        for (pid, d) in &interval.dirty {
            if let Some(space) = source.space_of(*pid) {
                dirty.entry(space).or_default().union(d);
            }
        }
        let dirty_pages = total_pages(&dirty, ps);
        for (&space, d) in &dirty {
            heat.entry(space).or_default().record(d, ps, 1);
        }
        for (pid, changed) in &interval.changed {
            if let Some(space) = source.space_of(*pid) {
                dirty.entry(space).or_default().union(changed);
            }
        }
        for (space, pages) in &joined {
            dirty.entry(*space).or_default().union(pages);
        }
        let dirty_rate = interval.dirty_bytes_per_sec;
        report.per_round.push(RoundReport {
            dirty_pages_after: dirty_pages,
            dirty_bytes_per_sec: dirty_rate,
            bandwidth_bytes_per_sec: bandwidth,
            deferred_pages: total_pages(&deferred, ps),
            ..RoundReport::sent(round, &stats, took)
        });
        progress.round(report.per_round.last().expect("just pushed"));
        if !interval.events.is_empty() || !layouts.keys().eq(source.spaces().iter()) {
            update_layouts(control, &mut layouts, layouts_of(source, source.spaces())?)?;
        }
        let sent_pages = total_pages(&send, ps);
        pages = layouts
            .iter()
            .map(|(&space, layout)| {
                let mut p = dirty.remove(&space).unwrap_or_default();
                if let Some(d) = deferred.get(&space) {
                    p.union(d);
                }
                (space, p.intersection(&layout.writable_ranges()))
            })
            .collect();
        round += 1;
        let remaining = (total_bytes(&pages) as f64) / bandwidth.max(1.0);
        // Not converging: the process dirties faster than the link carries,
        // or what is left no longer shrinks (its writable set is dirtied
        // whole during every round, which caps the measured rate at the
        // bandwidth). Deferred pages do not count against progress.
        let left_to_send: u64 = pages
            .iter()
            .map(|(space, p)| match deferred.get(space) {
                Some(d) => p.difference(d).pages(ps),
                None => p.pages(ps),
            })
            .sum();
        let no_progress = left_to_send as f64 >= STALL_SHARE * sent_pages as f64;
        over_bandwidth = if dirty_rate > bandwidth || no_progress {
            over_bandwidth + 1
        } else {
            0
        };
        let left = total_pages(&pages, ps);
        match policy {
            Policy::Precopy if remaining <= opts.downtime_target.as_secs_f64() => {
                break format!(
                    "converged: {left} pages left, {:.1} ms at {:.0} MB/s",
                    remaining * 1e3,
                    bandwidth / 1e6
                );
            }
            Policy::Hybrid { below, .. } if total_bytes(&pages) <= *below => {
                let hot: u64 = pages
                    .iter()
                    .map(|(space, p)| {
                        heat.get(space)
                            .map_or(0, |h| p.intersection(&h.hot(1, ps)).pages(ps))
                    })
                    .sum();
                break format!(
                    "small remainder: {left} pages left ({hot} write-hot), at most {} MiB to post-copy",
                    below >> 20
                );
            }
            _ => {}
        }
        if round >= opts.max_rounds {
            break format!(
                "max rounds ({}) reached with {left} pages left",
                opts.max_rounds
            );
        }
        if over_bandwidth >= NON_CONVERGING_ROUNDS {
            break format!(
                "not converging: for {NON_CONVERGING_ROUNDS} rounds the dirty set did not shrink below {:.0}% \
                 or the dirty rate exceeded the bandwidth ({:.1} MB/s dirtied, {:.1} MB/s sent, {left} pages left)",
                STALL_SHARE * 100.0,
                dirty_rate / 1e6,
                bandwidth / 1e6
            );
        }
    };
    Ok(RoundsEnd {
        pages,
        round,
        layouts,
        reason,
        heat,
        sent,
    })
}

/// Brings a followed tree's members up to date with the processes: those
/// that joined are tracked and start with all their pages; those that left
/// are no longer tracked. Returns the joined members' pages.
fn join_and_leave(source: &LiveTree, session: &mut Session) -> Result<Spaces<RangeSet>, SendError> {
    let change = source.sync();
    for &(_, pid) in &change.left {
        session.untrack(pid);
    }
    let mut pages = Spaces::new();
    for &(space, pid) in &change.joined {
        if let Err(e) = session.track(pid, true) {
            // It may have exited already; the next sync drops it.
            log::warn!(
                "process {pid} joined the tree but cannot be tracked: {}",
                pagehop_mem::error_chain(&e)
            );
        }
        let layout = source.layout(space)?;
        pages.insert(space, source.populated(space, &layout)?);
        log::info!("process {pid} joined the tree as {space}");
    }
    Ok(pages)
}
