//! The background push: every page not sent yet goes over the data
//! streams, most useful first: pages right after recent faults (hints from
//! the demand server), then the working set, then the rest in address order.
use std::collections::VecDeque;
use std::time::Duration;

use crossbeam::channel::Receiver;
use pagehop_mem::page_bits::PageBits;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_wire::FrameKind;
use pagehop_wire::conn::{Conn, ConnError};

use super::Unsent;
use crate::stream::{BATCH_PAGES, PageStreamer, StreamError};

/// Pages pushed right after a fault, in address order from the faulting run.
const HINT_WINDOW: u64 = 64;

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
    first: VecDeque<u64>,
    cursor: u64,
    hints: Receiver<u64>,
    /// Pages after recent faults, to push next.
    hinted: VecDeque<u64>,
}

impl Push {
    /// A push that takes `first` (the working set) before the rest, and
    /// pages after the faults `hints` reports before anything.
    pub fn new(first: Vec<u64>, hints: Receiver<u64>) -> Self {
        Self {
            first: first.into(),
            cursor: 0,
            hints,
            hinted: VecDeque::new(),
        }
    }

    /// After a reconnect: the address-order pass starts again from the bottom.
    pub fn restart(&mut self) {
        self.cursor = 0;
    }

    /// Pushes every unsent page of `space` from `provider` as round
    /// `round`. Returns the pages pushed. The destination says nothing on
    /// `control` during the push unless it fails: any frame there, or a
    /// broken priority lane, ends it with an error.
    pub fn run(
        &mut self,
        control: &mut Conn,
        streamer: &mut PageStreamer,
        provider: &dyn PageProvider,
        space: SpaceKey,
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
            self.next_chunk(&mut unsent.bits(), ps, &mut chunk);
            if chunk.is_empty() {
                streamer.flush()?;
                return Ok(pushed);
            }
            pushed += streamer.send_pages(provider, space, round, &chunk)?.pages;
        }
    }

    /// The next batch of unsent pages, ascending; empty when all are sent.
    fn next_chunk(&mut self, unsent: &mut PageBits, ps: u64, out: &mut Vec<u64>) {
        out.clear();
        while let Ok(end) = self.hints.try_recv() {
            self.hinted.extend((0..HINT_WINDOW).map(|i| end + i * ps));
        }
        let take = |page: u64, unsent: &mut PageBits, out: &mut Vec<u64>| {
            if unsent.clear(page) {
                out.push(page);
            }
        };
        while out.len() < BATCH_PAGES
            && let Some(page) = self.hinted.pop_front()
        {
            take(page, unsent, out);
        }
        while out.len() < BATCH_PAGES
            && let Some(page) = self.first.pop_front()
        {
            take(page, unsent, out);
        }
        while out.len() < BATCH_PAGES {
            match unsent.next_set(self.cursor) {
                Some(page) => {
                    unsent.clear(page);
                    out.push(page);
                    self.cursor = page + ps;
                }
                None => break,
            }
        }
        out.sort_unstable();
    }
}
