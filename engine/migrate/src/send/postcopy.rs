//! Post-copy on the source, once the destination runs: the demand server
//! answers page requests and the background push sends the rest, both from
//! the frozen tree ([`pagehop_source::postcopy`]), until the destination
//! holds every page and says `Done`.
//!
//! If a connection breaks, the source reconnects with the next epoch for up
//! to `--reconnect-timeout`; the destination answers with the pages it still
//! lacks (`Pending`), and the push resumes from there.
use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use pagehop_mem::pages::RangeSet;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_source::postcopy::demand::{Answering, DemandServer};
use pagehop_source::postcopy::push::{Push, PushError};
use pagehop_source::postcopy::{DemandTotals, Unsent};
use pagehop_source::provider::FrozenTree;
use pagehop_source::stream::{PageStreamer, StreamError};
use pagehop_wire::batch::Compress;
use pagehop_wire::conn::{Conn, Halves};
use pagehop_wire::msg::{Done, Stats};
use pagehop_wire::stats::DestStats;

use super::SendError;
use super::connect::Links;

/// Send buffer of each bulk lane during post-copy: bulk bytes queued at a
/// slow link's bottleneck sit in front of every demand answer.
const BULK_SEND_BUFFER: usize = 256 << 10;
/// How long a reconnected destination may take to say what it lacks.
const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// Between reconnect attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long the destination may take to finish after the last push.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// What to push and how.
pub struct Plan {
    /// Every page the destination lacks, per address space.
    pub pending: BTreeMap<SpaceKey, RangeSet>,
    /// Pages to push first, in order (the working set).
    pub first: Vec<(SpaceKey, u64)>,
    /// Round number carried by post-copy batches.
    pub round: u32,
    pub prefetch_pages: u32,
    pub compress: Compress,
    pub reconnect_timeout: Duration,
}

/// What post-copy did, as the source saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub demand: DemandTotals,
    pub background_pages: u64,
    pub reconnects: u32,
    /// Requested pages in the order first asked for (for the working set).
    pub requested: Vec<(SpaceKey, u64)>,
    pub dest: DestStats,
    pub installed_pages: u64,
}

/// Opens a fresh set of connections for an epoch.
pub type Reconnect<'a> = dyn FnMut(u32) -> Result<Links, SendError> + 'a;

/// The CRIU commit, run once the demand server answers (the restore may
/// fault before the destination is ready).
pub type CommitStep<'a> = dyn FnMut(&mut Conn) -> Result<(), SendError> + 'a;

/// Runs post-copy until the destination holds every page and says `Done`;
/// with `commit`, that runs first, with the demand server already up.
pub fn serve(
    tree: &FrozenTree,
    control: &mut Conn,
    streamer: &mut PageStreamer,
    priority: Halves,
    plan: &Plan,
    reconnect: &mut Reconnect<'_>,
    commit: Option<&mut CommitStep<'_>>,
) -> Result<Outcome, SendError> {
    let provider: &dyn PageProvider = tree;
    let unsent = Unsent::new(&plan.pending, provider.page_size() as u64);
    let answering = Answering {
        round: plan.round,
        prefetch: plan.prefetch_pages,
        compress: plan.compress,
    };
    let (hint_tx, hint_rx) = crossbeam::channel::bounded(4096);
    let mut push = Push::new(plan.first.clone(), hint_rx);
    let mut outcome = Outcome::default();
    let mut epoch = 0u32;
    streamer.limit_send_buffer(BULK_SEND_BUFFER);
    let (dest, installed) = std::thread::scope(|scope| -> Result<_, SendError> {
        let mut demand = Some(DemandServer::start(
            scope,
            priority,
            provider,
            &unsent,
            hint_tx.clone(),
            answering,
        )?);
        if let Some(commit) = commit {
            commit(control)?;
        }
        loop {
            let result = push
                .run(control, streamer, provider, &unsent, plan.round)
                .map_err(SendError::from)
                .and_then(|pushed| {
                    outcome.background_pages += pushed;
                    finish(control)
                });
            let cause = match result {
                Ok(done) => return Ok(done),
                // The source's memory cannot be read: no reconnect brings it
                // back, and no page goes as zeros instead.
                Err(SendError::Push(PushError::Stream(StreamError::Read(e)))) => {
                    return Err(SendError::Unreadable {
                        why: pagehop_mem::error_chain(&e),
                    });
                }
                Err(e) => match unsent.unreadable() {
                    Some(why) => return Err(SendError::Unreadable { why }),
                    None if plan.reconnect_timeout.is_zero() => return Err(e),
                    None => e,
                },
            };
            log::warn!(
                "post-copy connection lost ({}); reconnecting for up to {:.1} s",
                pagehop_mem::error_chain(&cause),
                plan.reconnect_timeout.as_secs_f64()
            );
            drop(demand.take());
            let lane = reestablish(
                &mut epoch, plan, reconnect, control, streamer, &unsent, cause,
            )?;
            demand = Some(DemandServer::start(
                scope,
                lane,
                provider,
                &unsent,
                hint_tx.clone(),
                answering,
            )?);
            push.restart();
            outcome.reconnects += 1;
        }
    })?;
    outcome.demand = unsent.totals();
    outcome.requested = unsent.take_requested();
    outcome.dest = dest;
    outcome.installed_pages = installed;
    Ok(outcome)
}

/// Opens a new epoch's connections and takes the destination's list of the
/// pages it still lacks, every step retried (with a fresh epoch, so that
/// the destination never adopts a lane of a failed attempt) until one
/// attempt gets through them all or `--reconnect-timeout` passes. Returns
/// the new priority lane; `control` and the streams are the new epoch's.
fn reestablish(
    epoch: &mut u32,
    plan: &Plan,
    reconnect: &mut Reconnect<'_>,
    control: &mut Conn,
    streamer: &mut PageStreamer,
    unsent: &Unsent,
    cause: SendError,
) -> Result<Halves, SendError> {
    let deadline = Instant::now() + plan.reconnect_timeout;
    loop {
        *epoch += 1;
        let attempt = reconnect(*epoch).and_then(|links| {
            let mut new_control = links.control;
            new_control.set_read_timeout(Some(PENDING_TIMEOUT))?;
            let missing = new_control.recv_pending()?;
            new_control.set_read_timeout(None)?;
            let lane = links.priority.ok_or(SendError::NoPriorityLane)?;
            streamer.replace_streams(links.data)?;
            streamer.limit_send_buffer(BULK_SEND_BUFFER);
            unsent.reset(&plan.pending, &missing);
            *control = new_control;
            Ok(lane)
        });
        match attempt {
            Ok(lane) => return Ok(lane),
            Err(e) if Instant::now() < deadline => {
                log::warn!(
                    "post-copy reconnect (epoch {epoch}) failed: {}; retrying",
                    pagehop_mem::error_chain(&e)
                );
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(last) => {
                return Err(SendError::Unreachable {
                    secs: plan.reconnect_timeout.as_secs_f64(),
                    cause: Box::new(cause),
                    last: Box::new(last),
                });
            }
        }
    }
}

/// Waits for the destination's statistics and its final `Done`.
fn finish(control: &mut Conn) -> Result<(DestStats, u64), SendError> {
    control.set_read_timeout(Some(FINISH_TIMEOUT))?;
    let stats: Stats = control.recv_msg()?;
    let dest: DestStats = serde_json::from_str(&stats.json).map_err(SendError::DestStats)?;
    let done: Done = control.recv_msg()?;
    Ok((dest, done.pages_sent))
}
