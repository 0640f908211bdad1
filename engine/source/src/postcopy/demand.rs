//! The demand server: one thread that answers the destination's
//! `PageRequest`s on the priority lane, each with one `Pages` frame of the
//! requested pages and up to `prefetch` unsent pages after them, read from
//! the frozen source.
use std::net::TcpStream;
use std::thread::{Scope, ScopedJoinHandle};

use crossbeam::channel::Sender;
use pagehop_mem::provider::runs_of;
use pagehop_mem::{PageProvider, ProvideError, SpaceKey};
use pagehop_wire::batch::{self, Compress};
use pagehop_wire::conn::{ConnError, FrameWriter, Halves};
use pagehop_wire::frame::{FrameError, FrameKind};
use pagehop_wire::msg::{MsgError, PageRequest};

use super::Unsent;
use crate::stream::BATCH_PAGES;

/// Most pages in one answer (request plus prefetch).
const MAX_ANSWER_PAGES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    #[error("the priority lane")]
    Lane(#[from] FrameError),
    #[error("answering on the priority lane")]
    Send(#[source] ConnError),
    #[error("a page request")]
    Decode(#[from] MsgError),
    #[error("unexpected {kind} frame on the priority lane")]
    Unexpected { kind: FrameKind },
    #[error("bad page request: {pages} pages at {addr:#x}")]
    BadRequest { addr: u64, pages: u32 },
    #[error("reading requested pages")]
    Read(#[from] ProvideError),
    #[error("starting the demand server")]
    Spawn(#[source] std::io::Error),
    #[error("duplicating the priority lane's socket")]
    Socket(#[source] std::io::Error),
}

/// How answers are built.
#[derive(Clone, Copy, Debug)]
pub struct Answering {
    /// Round number carried by the answers' batches.
    pub round: u32,
    /// Unsent pages sent along with each answer.
    pub prefetch: u32,
    pub compress: Compress,
}

/// A running demand server; dropping it closes its lane and joins it.
pub struct DemandServer<'scope> {
    stream: TcpStream,
    thread: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> DemandServer<'scope> {
    /// Serves requests on `lane` until it closes. A failure is logged and
    /// marks the lane broken in `unsent` (the driver reconnects).
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        lane: Halves,
        provider: &'env dyn PageProvider,
        unsent: &'env Unsent,
        hints: Sender<(SpaceKey, u64)>,
        answering: Answering,
    ) -> Result<Self, DemandError> {
        let stream = lane
            .writer
            .stream()
            .try_clone()
            .map_err(DemandError::Socket)?;
        let thread = std::thread::Builder::new()
            .name("demand-server".into())
            .spawn_scoped(scope, move || {
                if let Err(e) = serve(lane, provider, unsent, &hints, answering) {
                    log::warn!(
                        "post-copy demand server stopped: {}",
                        pagehop_mem::error_chain(&e)
                    );
                    if matches!(e, DemandError::Read(_)) {
                        unsent.set_unreadable(pagehop_mem::error_chain(&e));
                    }
                    unsent
                        .lane_broke
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .map_err(DemandError::Spawn)?;
        Ok(Self {
            stream,
            thread: Some(thread),
        })
    }
}

impl Drop for DemandServer<'_> {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One answer per request, until the lane closes.
fn serve(
    lane: Halves,
    provider: &dyn PageProvider,
    unsent: &Unsent,
    hints: &Sender<(SpaceKey, u64)>,
    answering: Answering,
) -> Result<(), DemandError> {
    let ps = provider.page_size();
    let Halves {
        mut reader,
        mut writer,
    } = lane;
    let mut answer = Answer::default();
    let mut pages: Vec<u64> = Vec::new();
    loop {
        let (kind, payload) = match reader.read_frame() {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if kind != FrameKind::PageRequest {
            return Err(DemandError::Unexpected { kind });
        }
        let req = PageRequest::decode(payload)?;
        if !req.addr.is_multiple_of(ps as u64) || req.pages == 0 || req.pages as usize > BATCH_PAGES
        {
            return Err(DemandError::BadRequest {
                addr: req.addr,
                pages: req.pages,
            });
        }
        let bad = DemandError::BadRequest {
            addr: req.addr,
            pages: req.pages,
        };
        let end = req
            .addr
            .checked_add(req.pages as u64 * ps as u64)
            .ok_or(bad)?;
        pages.clear();
        pages.extend((req.addr..end).step_by(ps));
        let prefetched = take_with_prefetch(unsent, req.space, &mut pages, end, answering.prefetch);
        unsent.record_request(req.space, req.addr, req.pages as u64);
        answer.build(provider, req.space, &pages, answering)?;
        let frame_len = answer.send(&mut writer)?;
        unsent.record_answer(
            pages.len() as u64,
            prefetched,
            answer.data.len() as u64,
            frame_len as u64,
        );
        let _ = hints.try_send((req.space, end));
    }
}

/// Marks the requested `pages` sent and appends up to `prefetch` unsent
/// pages after `end` (within twice that distance). Returns how many it added.
fn take_with_prefetch(
    unsent: &Unsent,
    space: SpaceKey,
    pages: &mut Vec<u64>,
    end: u64,
    prefetch: u32,
) -> u64 {
    let ps = unsent.page_size;
    let mut bits = unsent.bits();
    for &p in pages.iter() {
        bits.clear(space, p);
    }
    let mut at = end;
    let mut added = 0;
    while added < prefetch && pages.len() < MAX_ANSWER_PAGES {
        match bits.next_set(space, at) {
            Some(p) if p < end + 2 * prefetch as u64 * ps => {
                bits.clear(space, p);
                pages.push(p);
                added += 1;
                at = p + ps;
            }
            _ => break,
        }
    }
    added as u64
}

/// One answer's buffers, reused from request to request.
#[derive(Default)]
struct Answer {
    runs: Vec<(u64, usize)>,
    raw: Vec<u8>,
    present: Vec<bool>,
    data: Vec<u8>,
    entries: Vec<u64>,
    scratch: Vec<u8>,
    payload: Vec<u8>,
}

impl Answer {
    /// Builds one `Pages` payload of `pages` (ascending) read from `provider`.
    /// A page the provider reports absent goes as a zero page: only a
    /// provider for which absent means zero reports one (an image); the
    /// frozen tree fails the read instead.
    fn build(
        &mut self,
        provider: &dyn PageProvider,
        space: SpaceKey,
        pages: &[u64],
        answering: Answering,
    ) -> Result<(), DemandError> {
        let ps = provider.page_size();
        runs_of(pages, ps, &mut self.runs);
        self.raw.resize(pages.len() * ps, 0);
        provider.read(space, &self.runs, &mut self.raw, &mut self.present)?;
        self.data.clear();
        self.entries.clear();
        for (i, &p) in pages.iter().enumerate() {
            let page = &self.raw[i * ps..(i + 1) * ps];
            if !self.present[i] || batch::is_zero_page(page) {
                self.entries.push(batch::entry(p, true));
            } else {
                self.entries.push(batch::entry(p, false));
                self.data.extend_from_slice(page);
            }
        }
        self.payload.clear();
        batch::encode_batch(
            space,
            answering.round,
            &self.entries,
            &self.data,
            answering.compress,
            &mut self.scratch,
            &mut self.payload,
        );
        Ok(())
    }

    /// Sends the answer built last; returns its length on the wire.
    fn send(&self, writer: &mut FrameWriter) -> Result<usize, DemandError> {
        writer
            .send_payload(FrameKind::Pages, &self.payload)
            .map_err(DemandError::Send)
    }
}
