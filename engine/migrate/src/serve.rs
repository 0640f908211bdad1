//! The source side of post-copy: the demand server and the background push.
//!
//! The source is frozen. A demand-server thread answers `PageRequest`s on the
//! priority lane straight from the frozen process's memory (plus up to
//! `--prefetch-pages` unsent pages after each request); the calling thread
//! pushes every page not sent yet over the data streams, most useful first:
//! pages right after recent faults, then the working set, then the rest in
//! address order. Both clear a page's bit in the shared "unsent" set when
//! they take it, so nothing is pushed twice unless asked for again.
//!
//! If a connection breaks, the source reconnects with the next epoch for up
//! to `--reconnect-timeout`; the destination answers with the pages it still
//! lacks (`Pending`), and the push resumes from there.
use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::MigrateError;
use pagehop_mem::page_bits::PageBits;
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_source::reader::PageReader;
use pagehop_source::stream::{BATCH_PAGES, PageStreamer};
use pagehop_wire::batch::{self, Compress};
use pagehop_wire::conn::{Conn, ConnError};
use pagehop_wire::frame::frame_header;
use pagehop_wire::msg::{Done, Pending, Stats};
use pagehop_wire::stats::DestStats;
use pagehop_wire::{FrameKind, FrameReader};

/// Pages pushed right after a fault, in address order from the faulting run.
const HINT_WINDOW: u64 = 64;
/// Most pages in one demand answer (request plus prefetch).
const MAX_ANSWER_PAGES: usize = 1024;
/// Most requested pages remembered for `--record-working-set`.
const MAX_RECORDED: usize = 1 << 20;
/// Send buffer of each bulk lane during post-copy: bulk bytes queued at a
/// slow link's bottleneck sit in front of every demand answer.
const BULK_SEND_BUFFER: usize = 256 << 10;
/// How long the destination may take to finish after the last push.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// The source's connections to the destination.
pub struct Links {
    pub control: Conn,
    pub data: Vec<TcpStream>,
    pub priority: TcpStream,
}

/// What to push and how.
pub struct Plan {
    /// Every page the destination lacks.
    pub pending: RangeSet,
    /// Pages to push first, in order (the working set).
    pub first: Vec<u64>,
    /// Round number carried by post-copy batches.
    pub round: u32,
    pub prefetch_pages: u32,
    pub compress: Compress,
    pub reconnect_timeout: Duration,
}

/// What post-copy did, as the source saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub demand_requests: u64,
    /// Pages sent on the priority lane (requested and prefetched).
    pub demand_pages: u64,
    pub prefetched_pages: u64,
    /// Bytes of page data (non-zero pages) and of frames on the priority lane.
    pub demand_bytes_raw: u64,
    pub demand_bytes_wire: u64,
    pub background_pages: u64,
    pub reconnects: u32,
    /// Requested pages in the order first asked for (for the working set).
    pub requested: Vec<u64>,
    pub dest: DestStats,
    pub installed_pages: u64,
}

/// Opens a fresh set of connections for `epoch`.
pub type Reconnect<'a> = dyn FnMut(u32) -> Result<Links, MigrateError> + 'a;

/// State shared with the demand-server thread.
struct Shared {
    unsent: Mutex<PageBits>,
    requests: AtomicU64,
    pages: AtomicU64,
    prefetched: AtomicU64,
    bytes_raw: AtomicU64,
    bytes_wire: AtomicU64,
    requested: Mutex<Vec<u64>>,
    failed: AtomicBool,
}

struct DemandServer {
    stream: TcpStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DemandServer {
    fn start(
        stream: TcpStream,
        pid: i32,
        shared: Arc<Shared>,
        hints: Sender<u64>,
        plan: &Plan,
    ) -> Result<Self, MigrateError> {
        let handle = stream.try_clone().map_err(ConnError::from)?;
        let (round, prefetch, compress) = (plan.round, plan.prefetch_pages, plan.compress);
        let thread = std::thread::Builder::new()
            .name("demand-server".into())
            .spawn(move || {
                let failed = Arc::clone(&shared);
                if serve_requests(stream, pid, &shared, &hints, round, prefetch, compress).is_err()
                {
                    failed.failed.store(true, Ordering::SeqCst);
                }
            })
            .map_err(|e| MigrateError::Protocol(format!("starting the demand server: {e}")))?;
        Ok(Self {
            stream: handle,
            thread: Some(thread),
        })
    }
}

impl Drop for DemandServer {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The demand server's loop: one answer per request, until the lane closes.
fn serve_requests(
    stream: TcpStream,
    pid: i32,
    shared: &Shared,
    hints: &Sender<u64>,
    round: u32,
    prefetch: u32,
    compress: Compress,
) -> Result<(), MigrateError> {
    let page_size = pagehop_sys::page_size();
    let ps = page_size as u64;
    let mut writer = stream.try_clone().map_err(ConnError::from)?;
    let mut reader = FrameReader::new(stream);
    let pages_reader = PageReader::with_page_size(pid, page_size);
    let (mut data, mut scratch, mut out, mut entries) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut pages: Vec<u64> = Vec::new();
    loop {
        let (kind, payload) = reader.read_frame().map_err(ConnError::from)?;
        if kind != FrameKind::PageRequest {
            return Err(MigrateError::Protocol(format!(
                "unexpected {} frame on the priority lane",
                kind.name()
            )));
        }
        let req = pagehop_wire::msg::PageRequest::decode(payload).map_err(ConnError::from)?;
        if !req.addr.is_multiple_of(ps) || req.pages == 0 || req.pages as usize > BATCH_PAGES {
            return Err(MigrateError::Protocol(format!(
                "bad page request: {} pages at {:#x}",
                req.pages, req.addr
            )));
        }
        let end = req.addr + req.pages as u64 * ps;
        pages.clear();
        pages.extend((req.addr..end).step_by(page_size));
        {
            let mut unsent = shared.unsent.lock().expect("lock");
            for &p in &pages {
                unsent.clear(p);
            }
            // Prefetch: the next unsent pages after the request.
            let mut at = end;
            let mut added = 0;
            while added < prefetch && pages.len() < MAX_ANSWER_PAGES {
                match unsent.next_set(at) {
                    Some(p) if p < end + 2 * prefetch as u64 * ps => {
                        unsent.clear(p);
                        pages.push(p);
                        added += 1;
                        at = p + ps;
                    }
                    _ => break,
                }
            }
            shared.prefetched.fetch_add(added as u64, Ordering::Relaxed);
        }
        {
            let mut recorded = shared.requested.lock().expect("lock");
            if recorded.len() < MAX_RECORDED {
                recorded.extend((req.addr..end).step_by(page_size));
            }
        }
        answer(
            &pages_reader,
            &pages,
            round,
            compress,
            (&mut data, &mut scratch, &mut entries, &mut out),
        )?;
        std::io::Write::write_all(&mut writer, &out).map_err(ConnError::from)?;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes_raw
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        shared
            .bytes_wire
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        shared
            .pages
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        let _ = hints.try_send(end);
    }
}

/// Builds one `Pages` frame of `pages` (ascending) read from the process;
/// unreadable pages go as zero pages.
fn answer(
    reader: &PageReader,
    pages: &[u64],
    round: u32,
    compress: Compress,
    (data, scratch, entries, out): (&mut Vec<u8>, &mut Vec<u8>, &mut Vec<u64>, &mut Vec<u8>),
) -> Result<(), MigrateError> {
    let ps = reader.page_size();
    let mut page = vec![0u8; ps];
    data.clear();
    entries.clear();
    for &p in pages {
        let readable = reader.read(&[(p, 1)], &mut page).is_ok();
        if !readable || batch::is_zero_page(&page) {
            entries.push(batch::entry(p, true));
        } else {
            entries.push(batch::entry(p, false));
            data.extend_from_slice(&page);
        }
    }
    let mut payload = Vec::with_capacity(data.len() + entries.len() * 8 + 64);
    batch::encode_batch(round, entries, data, compress, scratch, &mut payload);
    out.clear();
    out.extend_from_slice(&frame_header(FrameKind::Pages, &[&payload]));
    out.extend_from_slice(&payload);
    Ok(())
}

/// Runs post-copy until the destination holds every page and says `Done`.
/// The destination process already runs.
pub fn serve(
    pid: i32,
    control: &mut Conn,
    streamer: &mut PageStreamer,
    priority: TcpStream,
    plan: &Plan,
    reconnect: &mut Reconnect<'_>,
) -> Result<Outcome, MigrateError> {
    let ps = pagehop_sys::page_size() as u64;
    let shared = Arc::new(Shared {
        unsent: Mutex::new(PageBits::filled(&plan.pending, ps)),
        requests: AtomicU64::new(0),
        pages: AtomicU64::new(0),
        prefetched: AtomicU64::new(0),
        bytes_raw: AtomicU64::new(0),
        bytes_wire: AtomicU64::new(0),
        requested: Mutex::new(Vec::new()),
        failed: AtomicBool::new(false),
    });
    let (hint_tx, hint_rx) = crossbeam::channel::bounded(4096);
    let mut demand = Some(DemandServer::start(
        priority,
        pid,
        Arc::clone(&shared),
        hint_tx.clone(),
        plan,
    )?);
    let mut push = Push {
        first: plan.first.iter().copied().collect(),
        cursor: 0,
        hints: hint_rx,
        hinted: VecDeque::new(),
    };
    let mut outcome = Outcome::default();
    let mut epoch = 0u32;
    streamer.limit_send_buffer(BULK_SEND_BUFFER);
    let (dest, installed) = loop {
        let result = push_all(control, streamer, &shared, &mut push, plan, &mut outcome)
            .and_then(|()| finish(control));
        match result {
            Ok(done) => break done,
            Err(e) if plan.reconnect_timeout.is_zero() => return Err(e),
            Err(e) => {
                eprintln!(
                    "pagehop send: post-copy connection lost ({}); reconnecting for up to {:.1} s",
                    pagehop_mem::error_chain(&e),
                    plan.reconnect_timeout.as_secs_f64()
                );
                drop(demand.take());
                epoch += 1;
                let links = reconnect_within(epoch, plan.reconnect_timeout, reconnect, &e)?;
                *control = links.control;
                let still = read_pending(control)?;
                let mut unsent = PageBits::filled(&plan.pending, ps);
                for page in plan.pending.difference(&still).iter_pages(ps) {
                    unsent.clear(page);
                }
                *shared.unsent.lock().expect("lock") = unsent;
                shared.failed.store(false, Ordering::SeqCst);
                streamer.replace_streams(links.data)?;
                streamer.limit_send_buffer(BULK_SEND_BUFFER);
                demand = Some(DemandServer::start(
                    links.priority,
                    pid,
                    Arc::clone(&shared),
                    hint_tx.clone(),
                    plan,
                )?);
                push.cursor = 0;
                outcome.reconnects += 1;
            }
        }
    };
    drop(demand);
    outcome.demand_requests = shared.requests.load(Ordering::Relaxed);
    outcome.demand_pages = shared.pages.load(Ordering::Relaxed);
    outcome.prefetched_pages = shared.prefetched.load(Ordering::Relaxed);
    outcome.demand_bytes_raw = shared.bytes_raw.load(Ordering::Relaxed);
    outcome.demand_bytes_wire = shared.bytes_wire.load(Ordering::Relaxed);
    outcome.requested = std::mem::take(&mut *shared.requested.lock().expect("lock"));
    outcome.dest = dest;
    outcome.installed_pages = installed;
    Ok(outcome)
}

fn reconnect_within(
    epoch: u32,
    timeout: Duration,
    reconnect: &mut Reconnect<'_>,
    cause: &MigrateError,
) -> Result<Links, MigrateError> {
    let deadline = Instant::now() + timeout;
    loop {
        match reconnect(epoch) {
            Ok(links) => return Ok(links),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                return Err(MigrateError::Protocol(format!(
                    "post-copy: the destination stayed unreachable for {:.1} s after {}: last attempt: {}",
                    timeout.as_secs_f64(),
                    pagehop_mem::error_chain(cause),
                    pagehop_mem::error_chain(&e)
                )));
            }
        }
    }
}

/// The destination's list of pages it still lacks, after a reconnect.
fn read_pending(control: &mut Conn) -> Result<RangeSet, MigrateError> {
    let mut ranges = Vec::new();
    loop {
        let p: Pending = control.recv_msg()?;
        ranges.extend(p.ranges.iter().map(|&(a, b)| Range::new(a, b)));
        if p.last {
            return Ok(RangeSet::from_ranges(ranges));
        }
    }
}

/// Where the background push stands.
struct Push {
    first: VecDeque<u64>,
    cursor: u64,
    hints: Receiver<u64>,
    /// Pages after recent faults, to push next.
    hinted: VecDeque<u64>,
}

impl Push {
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

/// Pushes every unsent page; a broken connection or an `Error` from the
/// destination ends it with an error.
fn push_all(
    control: &mut Conn,
    streamer: &mut PageStreamer,
    shared: &Shared,
    push: &mut Push,
    plan: &Plan,
    outcome: &mut Outcome,
) -> Result<(), MigrateError> {
    let ps = pagehop_sys::page_size() as u64;
    let mut chunk = Vec::with_capacity(BATCH_PAGES);
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(MigrateError::Protocol("the priority lane broke".into()));
        }
        if control.readable(Duration::ZERO)? {
            // The destination never speaks during the push unless it fails.
            let (kind, _) = control.recv()?;
            return Err(MigrateError::Protocol(format!(
                "unexpected {} frame during post-copy",
                kind.name()
            )));
        }
        push.next_chunk(&mut shared.unsent.lock().expect("lock"), ps, &mut chunk);
        if chunk.is_empty() {
            streamer.flush()?;
            return Ok(());
        }
        let stats = streamer.send_pages(plan.round, &chunk)?;
        outcome.background_pages += stats.pages;
    }
}

/// Waits for the destination's statistics and its final `Done`.
fn finish(control: &mut Conn) -> Result<(DestStats, u64), MigrateError> {
    control.set_read_timeout(Some(FINISH_TIMEOUT))?;
    let stats: Stats = control.recv_msg()?;
    let dest: DestStats = serde_json::from_str(&stats.json)
        .map_err(|e| MigrateError::Protocol(format!("destination statistics: {e}")))?;
    let done: Done = control.recv_msg()?;
    Ok((dest, done.pages_sent))
}
