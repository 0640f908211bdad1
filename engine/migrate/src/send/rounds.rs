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

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_source::heat::WriteHeat;
use pagehop_source::provider::LiveProcess;
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

/// Where the rounds ended.
pub struct RoundsEnd {
    /// Pages the destination lacks (dirtied since sent, or never sent).
    pub pages: RangeSet,
    /// The next round's number.
    pub round: u32,
    pub layout: Layout,
    pub reason: String,
    pub heat: WriteHeat,
}

/// What the destination is told about the mappings it restores.
fn layout_msg(layout: &Layout) -> msg::Layout {
    msg::Layout {
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
pub fn send_layout(control: &mut Conn, layout: &Layout) -> Result<(), SendError> {
    let msg = layout_msg(layout);
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

/// Sends one round and waits for the destination to hold all of it.
pub fn run_round(
    control: &mut Conn,
    streamer: &mut PageStreamer,
    provider: &dyn PageProvider,
    round: u32,
    pages: &RangeSet,
) -> Result<(RoundStats, Duration), SendError> {
    let started = Instant::now();
    let stats = streamer.send_round(provider, SpaceKey::ROOT, round, pages)?;
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
    source: &LiveProcess,
    session: &mut Session,
    streamer: &mut PageStreamer,
    policy: &Policy,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<RoundsEnd, SendError> {
    let pid = source.pid();
    let ps = source.page_size() as u64;
    let mut layout = source.layout(SpaceKey::ROOT)?;
    send_layout(control, &layout)?;
    let mut pages = source.populated(SpaceKey::ROOT, &layout)?;
    let mut heat = WriteHeat::new();
    let mut round = 0u32;
    let mut bandwidth = 0.0f64; // bytes per second, end to end
    let mut over_bandwidth = 0;
    let reason = loop {
        // Hybrid: write-hot pages would only be sent again; they wait for post-copy.
        let hot = match policy {
            Policy::Hybrid { hot_after, .. } => heat.hot(*hot_after, ps),
            Policy::Precopy => RangeSet::new(),
        };
        let deferred = pages.intersection(&hot);
        let send = pages.difference(&hot);
        let (stats, took) = run_round(control, streamer, source, round, &send)?;
        bandwidth = (stats.bytes_wire.max(1) as f64 / took.as_secs_f64()).max(bandwidth * 0.5);
        let interval = session.step()?;
        let mut dirty = interval.dirty.get(&pid).cloned().unwrap_or_default();
        let dirty_pages = dirty.pages(ps);
        heat.record(&dirty, ps, 1);
        if let Some(changed) = interval.changed.get(&pid) {
            dirty.union(changed);
        }
        let dirty_rate = interval.dirty_bytes_per_sec;
        report.per_round.push(RoundReport {
            dirty_pages_after: dirty_pages,
            dirty_bytes_per_sec: dirty_rate,
            bandwidth_bytes_per_sec: bandwidth,
            deferred_pages: deferred.pages(ps),
            ..RoundReport::sent(round, &stats, took)
        });
        progress.round(report.per_round.last().expect("just pushed"));
        if !interval.events.is_empty() {
            let now = source.layout(SpaceKey::ROOT)?;
            if now != layout {
                layout = now;
                send_layout(control, &layout)?;
            }
        }
        let sent_pages = send.pages(ps);
        dirty.union(&deferred);
        pages = dirty.intersection(&layout.writable_ranges());
        round += 1;
        let remaining = (pages.bytes() as f64) / bandwidth.max(1.0);
        // Not converging: the process dirties faster than the link carries,
        // or what is left no longer shrinks (its writable set is dirtied
        // whole during every round, which caps the measured rate at the
        // bandwidth). Deferred pages do not count against progress.
        let left_to_send = pages.difference(&deferred).pages(ps);
        let no_progress = left_to_send as f64 >= STALL_SHARE * sent_pages as f64;
        over_bandwidth = if dirty_rate > bandwidth || no_progress {
            over_bandwidth + 1
        } else {
            0
        };
        match policy {
            Policy::Precopy if remaining <= opts.downtime_target.as_secs_f64() => {
                break format!(
                    "converged: {} pages left, {:.1} ms at {:.0} MB/s",
                    pages.pages(ps),
                    remaining * 1e3,
                    bandwidth / 1e6
                );
            }
            Policy::Hybrid { below, .. } if pages.bytes() <= *below => {
                break format!(
                    "small remainder: {} pages left ({} write-hot), at most {} MiB to post-copy",
                    pages.pages(ps),
                    pages.intersection(&heat.hot(1, ps)).pages(ps),
                    below >> 20
                );
            }
            _ => {}
        }
        if round >= opts.max_rounds {
            break format!(
                "max rounds ({}) reached with {} pages left",
                opts.max_rounds,
                pages.pages(ps)
            );
        }
        if over_bandwidth >= NON_CONVERGING_ROUNDS {
            break format!(
                "not converging: for {NON_CONVERGING_ROUNDS} rounds the dirty set did not shrink below {:.0}% \
                 or the dirty rate exceeded the bandwidth ({:.1} MB/s dirtied, {:.1} MB/s sent, {} pages left)",
                STALL_SHARE * 100.0,
                dirty_rate / 1e6,
                bandwidth / 1e6,
                pages.pages(ps)
            );
        }
    };
    Ok(RoundsEnd {
        pages,
        round,
        layout,
        reason,
        heat,
    })
}
