//! The background push: every page not sent yet goes over the data
//! streams, most useful first: pages right after recent faults (hints from
//! the demand server), then the working set, then the rest in address order.
use std::collections::VecDeque;
use std::time::Duration;

use crossbeam::channel::Receiver;
use pagehop_mem::page_bits::SpaceBits;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_wire::FrameKind;
use pagehop_wire::conn::{Conn, ConnError};

use super::Unsent;
use crate::stream::{BATCH_PAGES, PageStreamer, StreamError};

/// Pages pushed right after a fault, in address order from the faulting run.
const HINT_WINDOW: u64 = 64;
/// While the destination faults (a request within this long), the push
/// goes in small chunks with a pause before each, so that requests and
/// their answers get the CPU and the links between them (on a small
/// machine full batches delay every answer by milliseconds), as CRIU's
/// lazy-pages daemon shrinks its background transfers on each fault. It
/// never stops: a service faulting all over its memory still gets all of
/// it soon.
const DEMAND_RECENT: Duration = Duration::from_micros(2000);
/// The chunk and the pause while requests come.
const DEMAND_CHUNK: usize = BATCH_PAGES / 8;
const DEMAND_PAUSE: Duration = Duration::from_micros(100);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the priority lane broke")]
    PriorityLane,
    #[error("unexpected {kind} frame from the destination during post-copy")]
    Unexpected { kind: FrameKind },
    #[error(transparent)]
    Control(#[from] ConnError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Where the background push stands.
pub struct Push {
    first: VecDeque<(SpaceKey, u64)>,
    /// The address-order pass: the space it is in and the next address.
    cursor: (SpaceKey, u64),
    hints: Receiver<(SpaceKey, u64)>,
    /// Pages after recent faults, to push next.
    hinted: VecDeque<(SpaceKey, u64)>,
}

impl Push {
    /// A push that takes `first` (the working set) before the rest, and
    /// pages after the faults `hints` reports before anything.
    pub fn new(first: Vec<(SpaceKey, u64)>, hints: Receiver<(SpaceKey, u64)>) -> Self {
        Self {
            first: first.into(),
            cursor: (SpaceKey(0), 0),
            hints,
            hinted: VecDeque::new(),
        }
    }

    /// After a reconnect: the address-order pass starts again from the bottom.
    pub fn restart(&mut self) {
        self.cursor = (SpaceKey(0), 0);
    }

    /// Pushes every unsent page from `provider` as round `round`, a batch
    /// of one address space at a time. Returns the pages pushed. The destination says nothing on
    /// `control` during the push unless it fails: any frame there, or a
    /// broken priority lane, ends it with an error.
    pub fn run(
        &mut self,
        control: &mut Conn,
        streamer: &mut PageStreamer,
        provider: &dyn PageProvider,
        unsent: &Unsent,
        round: u32,
    ) -> Result<u64, PushError> {
        let ps = provider.page_size() as u64;
        let mut chunk = Vec::with_capacity(BATCH_PAGES);
        let mut pushed = 0;
        loop {
            if unsent.lane_broke() {
                return Err(PushError::PriorityLane);
            }
            if control.readable(Duration::ZERO)? {
                let (kind, _) = control.recv()?;
                return Err(PushError::Unexpected { kind });
            }
            let faulting = unsent
                .since_last_request()
                .is_some_and(|since| since < DEMAND_RECENT);
            let limit = if faulting {
                std::thread::sleep(DEMAND_PAUSE);
                DEMAND_CHUNK
            } else {
                BATCH_PAGES
            };
            let Some(space) = self.next_chunk(&mut unsent.bits(), ps, limit, &mut chunk) else {
                streamer.flush()?;
                return Ok(pushed);
            };
            pushed += streamer.send_pages(provider, space, round, &chunk)?.pages;
        }
    }

    /// The next batch of unsent pages, ascending, all of one space (which
    /// it returns); `None` when all are sent.
    fn next_chunk(
        &mut self,
        unsent: &mut SpaceBits,
        ps: u64,
        limit: usize,
        out: &mut Vec<u64>,
    ) -> Option<SpaceKey> {
        out.clear();
        while let Ok((space, end)) = self.hints.try_recv() {
            self.hinted
                .extend((0..HINT_WINDOW).map(|i| (space, end + i * ps)));
        }
        let mut space: Option<SpaceKey> = None;
        // Takes `page` of `of` if it is unsent and of the chunk's space.
        let mut take = |of: SpaceKey, page: u64, unsent: &mut SpaceBits, out: &mut Vec<u64>| {
            if space.is_some_and(|s| s != of) {
                return false;
            }
            if unsent.clear(of, page) {
                space = Some(of);
                out.push(page);
            }
            true
        };
        for queue in [&mut self.hinted, &mut self.first] {
            while out.len() < limit
                && let Some(&(of, page)) = queue.front()
            {
                if !take(of, page, unsent, out) {
                    break;
                }
                queue.pop_front();
            }
        }
        let spaces: Vec<SpaceKey> = unsent.spaces().filter(|&s| s >= self.cursor.0).collect();
        for of in spaces {
            if space.is_some_and(|s| s != of) {
                break;
            }
            if of != self.cursor.0 {
                self.cursor = (of, 0);
            }
            while out.len() < limit {
                match unsent.next_set(of, self.cursor.1) {
                    Some(page) => {
                        unsent.clear(of, page);
                        space = Some(of);
                        out.push(page);
                        self.cursor.1 = page + ps;
                    }
                    None => break,
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        out.sort_unstable();
        space
    }
}
