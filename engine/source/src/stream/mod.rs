//! The source's page pipeline: read pages from a [`PageProvider`] (a live
//! or frozen process: `process_vm_readv`) straight into a registered
//! io_uring buffer, turn zero pages into holes, compress where it pays, and
//! send the buffer as one `Pages` frame.
//!
//! Buffer layout of one batch (the frame is built in place, so a page is
//! copied once, by the kernel, into the buffer; compacting out zero pages
//! moves only the pages behind a hole, and lz4 writes its output back over
//! the raw data):
//!
//! ```text
//! | frame header 16 | batch header 24 | entries n×8 | page data (raw or lz4) | tag 16 |
//! ```
//!
//! On a sealed lane the payload is then encrypted in place and the tag
//! written after it ([`pagehop_wire::seal`]), so sealing adds no copy.
mod lz4;
mod watchdog;

use std::net::TcpStream;
use std::time::Duration;

use lz4::Lz4Sampler;
use watchdog::Watchdog;

use crate::uring::{SendMode, UringError, UringSender};
use pagehop_mem::pages::RangeSet;
use pagehop_mem::provider::runs_of;
use pagehop_mem::{PageProvider, ProvideError, SpaceKey};
use pagehop_wire::FrameKind;
use pagehop_wire::batch::{self, Compress};
use pagehop_wire::conn::FrameWriter;
use pagehop_wire::frame::{FrameError, FrameSeal, HEADER_LEN};
use pagehop_wire::seal::TAG_LEN;

/// Pages per batch: 1 MiB of data, the size at which process_vm_readv
/// reaches its best throughput here.
pub const BATCH_PAGES: usize = 256;
const BATCH_HEADER_LEN: usize = 24;
/// Registered buffers (batches in flight plus the one being filled).
const BUFFERS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the destination took no data for {secs:.1} s: streams given up")]
    Stalled { secs: f64 },
    #[error("duplicating a data stream's socket")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Uring(#[from] UringError),
    #[error(transparent)]
    Read(#[from] ProvideError),
    #[error("sealing a page batch")]
    Seal(#[from] FrameError),
}

/// `--zerocopy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// Start with zero-copy sends; fall back to copying sends when the kernel
    /// reports that it copies the data anyway (loopback, veth).
    Auto,
    On,
    Off,
}

/// What one round moved.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RoundStats {
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    /// Pages that vanished (unmapped) before they could be read: sent as zero pages.
    pub vanished_pages: u64,
}

impl RoundStats {
    pub fn add(&mut self, other: &RoundStats) {
        self.pages += other.pages;
        self.zero_pages += other.zero_pages;
        self.bytes_raw += other.bytes_raw;
        self.bytes_wire += other.bytes_wire;
        self.vanished_pages += other.vanished_pages;
    }
}

pub struct PageStreamer {
    sender: UringSender,
    compress: Compress,
    zerocopy: ZeroCopy,
    page_size: usize,
    entries: Vec<u64>,
    prefix: Vec<u8>,
    scratch: Vec<u8>,
    runs: Vec<(u64, usize)>,
    /// Per page of the batch being built: still mapped when read.
    present: Vec<bool>,
    next_stream: usize,
    lz4_sampler: Lz4Sampler,
    watchdog: Watchdog,
    /// Handles to the data sockets (for socket options).
    sockets: Vec<TcpStream>,
    /// How each data lane's frames are finished (sealed on a sealed lane).
    seals: Vec<FrameSeal>,
    pub totals: RoundStats,
}

/// Second handles to `streams` (for the watchdog and for socket options).
fn clone_all(streams: &[TcpStream]) -> Result<Vec<TcpStream>, StreamError> {
    streams
        .iter()
        .map(TcpStream::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(StreamError::Socket)
}

/// The sockets and seals of `lanes`.
fn split(lanes: Vec<FrameWriter>) -> (Vec<TcpStream>, Vec<FrameSeal>) {
    lanes.into_iter().map(FrameWriter::into_parts).unzip()
}

/// One registered buffer: a whole batch's frame, tag included.
fn buffer_size(page_size: usize) -> usize {
    HEADER_LEN + BATCH_HEADER_LEN + BATCH_PAGES * (8 + page_size) + TAG_LEN
}

impl PageStreamer {
    pub fn new(
        lanes: Vec<FrameWriter>,
        compress: Compress,
        zerocopy: ZeroCopy,
        stall_timeout: Duration,
    ) -> Result<Self, StreamError> {
        let page_size = pagehop_sys::page_size();
        let mode = match zerocopy {
            ZeroCopy::Off => SendMode::Copy,
            ZeroCopy::On | ZeroCopy::Auto => SendMode::ZeroCopy,
        };
        let (streams, seals) = split(lanes);
        let watched = clone_all(&streams)?;
        let sender = UringSender::new(streams, BUFFERS, buffer_size(page_size), mode)?;
        Ok(Self {
            sender,
            compress,
            zerocopy,
            page_size,
            entries: Vec::with_capacity(BATCH_PAGES),
            prefix: Vec::with_capacity(BATCH_HEADER_LEN + BATCH_PAGES * 8),
            scratch: Vec::new(),
            runs: Vec::new(),
            present: Vec::with_capacity(BATCH_PAGES),
            next_stream: 0,
            lz4_sampler: Lz4Sampler::default(),
            sockets: clone_all(&watched)?,
            seals,
            watchdog: Watchdog::start(watched, stall_timeout),
            totals: RoundStats::default(),
        })
    }

    /// Carries on over new data connections (after a reconnect); batches
    /// still in flight on the old ones are abandoned.
    pub fn replace_streams(&mut self, lanes: Vec<FrameWriter>) -> Result<(), StreamError> {
        let (streams, seals) = split(lanes);
        let watched = clone_all(&streams)?;
        self.sender = UringSender::new(
            streams,
            BUFFERS,
            buffer_size(self.page_size),
            self.sender.mode(),
        )?;
        self.sockets = clone_all(&watched)?;
        self.seals = seals;
        self.watchdog = Watchdog::start(watched, self.watchdog.timeout);
        self.next_stream = 0;
        Ok(())
    }

    /// Caps each data socket's send buffer (post-copy: bulk bytes queued
    /// ahead of the bottleneck delay the priority lane's answers behind them).
    pub fn limit_send_buffer(&self, bytes: usize) {
        for s in &self.sockets {
            let _ = pagehop_sys::set_send_buffer(s, bytes);
        }
    }

    /// The send mode in use now.
    pub fn mode(&self) -> SendMode {
        self.sender.mode()
    }

    /// Sends every page of `pages` of `space`, read from `provider`, as round
    /// `round`; returns when all of it is handed to the kernel.
    pub fn send_round(
        &mut self,
        provider: &dyn PageProvider,
        space: SpaceKey,
        round: u32,
        pages: &RangeSet,
    ) -> Result<RoundStats, StreamError> {
        self.watchdog.set_busy(true);
        let mut stats = RoundStats::default();
        let ps = self.page_size as u64;
        let mut batch: Vec<u64> = Vec::with_capacity(BATCH_PAGES);
        let mut result = Ok(());
        for page in pages.iter_pages(ps) {
            batch.push(page);
            if batch.len() == BATCH_PAGES {
                result = self.send_batch(provider, space, round, &batch, &mut stats);
                if result.is_err() {
                    break;
                }
                batch.clear();
                self.watchdog.tick();
                self.adapt_zerocopy();
            }
        }
        if result.is_ok() && !batch.is_empty() {
            result = self.send_batch(provider, space, round, &batch, &mut stats);
        }
        let result = result.and_then(|()| Ok(self.sender.flush()?));
        self.watchdog.set_busy(false);
        result.map_err(|e| self.watchdog.explain(e))?;
        self.adapt_zerocopy();
        self.totals.add(&stats);
        Ok(stats)
    }

    /// Sends at most [`BATCH_PAGES`] pages (sorted addresses) as one batch of
    /// round `round`, without waiting for the sends to complete (post-copy's
    /// background push); [`PageStreamer::flush`] waits.
    pub fn send_pages(
        &mut self,
        provider: &dyn PageProvider,
        space: SpaceKey,
        round: u32,
        pages: &[u64],
    ) -> Result<RoundStats, StreamError> {
        debug_assert!(pages.len() <= BATCH_PAGES);
        let mut stats = RoundStats::default();
        self.watchdog.set_busy(true);
        let result = self.send_batch(provider, space, round, pages, &mut stats);
        self.watchdog.tick();
        self.adapt_zerocopy();
        result.map_err(|e| self.watchdog.explain(e))?;
        self.totals.add(&stats);
        Ok(stats)
    }

    /// Waits until every batch handed over is sent.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        let result = self.sender.flush();
        self.watchdog.set_busy(false);
        result.map_err(|e| self.watchdog.explain(e.into()))
    }

    /// `--zerocopy auto`: once the kernel has said, for most of the first
    /// sends, that it copied the zero-copy data anyway (loopback, veth), plain
    /// sends are cheaper. Checked after every batch, so it costs a few batches.
    fn adapt_zerocopy(&mut self) {
        let s = self.sender.stats();
        if self.zerocopy == ZeroCopy::Auto
            && self.sender.mode() == SendMode::ZeroCopy
            && s.zc_notifs >= 16
            && s.zc_copied * 2 >= s.zc_notifs
        {
            self.sender.set_mode(SendMode::Copy);
        }
    }

    fn send_batch(
        &mut self,
        provider: &dyn PageProvider,
        space: SpaceKey,
        round: u32,
        pages: &[u64],
        stats: &mut RoundStats,
    ) -> Result<(), StreamError> {
        let ps = self.page_size;
        let n = pages.len();
        let data_at = HEADER_LEN + BATCH_HEADER_LEN + n * 8;
        let stream = self.next_stream;
        // Runs of contiguous pages: one remote iovec each.
        runs_of(pages, ps, &mut self.runs);
        let id = self.sender.acquire()?;
        let buf = self.sender.buffer_mut(id);
        let present = &mut self.present;
        if let Err(e) = provider.read(
            space,
            &self.runs,
            &mut buf[data_at..data_at + n * ps],
            present,
        ) {
            let _ = self.sender.release(id);
            return Err(e.into());
        }
        // Zero pages become holes; the other pages move down over them.
        self.entries.clear();
        let mut kept = 0usize;
        for (i, &addr) in pages.iter().enumerate() {
            if !present[i] {
                // Unmapped meanwhile: its contents are gone, so the
                // destination holds it as a zero page, not as an older copy.
                stats.vanished_pages += 1;
                self.entries.push(batch::entry(addr, true));
                continue;
            }
            let at = data_at + i * ps;
            if batch::is_zero_page(&buf[at..at + ps]) {
                self.entries.push(batch::entry(addr, true));
                stats.zero_pages += 1;
                continue;
            }
            if kept != i {
                buf.copy_within(at..at + ps, data_at + kept * ps);
            }
            self.entries.push(batch::entry(addr, false));
            kept += 1;
        }
        stats.pages += self.entries.len() as u64;
        if self.entries.is_empty() {
            self.sender.release(id)?;
            return Ok(());
        }
        // The entries shrank if pages vanished: the data must follow them directly.
        let entries_at = HEADER_LEN + BATCH_HEADER_LEN;
        let real_data_at = entries_at + self.entries.len() * 8;
        let raw_len = kept * ps;
        if real_data_at != data_at {
            buf.copy_within(data_at..data_at + raw_len, real_data_at);
        }
        let lz4 = raw_len > 0 && self.lz4_sampler.should_try(self.compress) && {
            let shrank = batch::compress_pages(
                &buf[real_data_at..real_data_at + raw_len],
                self.compress,
                &mut self.scratch,
            );
            self.lz4_sampler.record(shrank);
            shrank
        };
        let data_len = if lz4 {
            buf[real_data_at..real_data_at + self.scratch.len()].copy_from_slice(&self.scratch);
            self.scratch.len()
        } else {
            raw_len
        };
        self.prefix.clear();
        batch::batch_prefix(
            space,
            round,
            lz4,
            &self.entries,
            data_len as u32,
            raw_len as u32,
            &mut self.prefix,
        );
        buf[HEADER_LEN..real_data_at].copy_from_slice(&self.prefix);
        // Sealed in the order the lane sends: the sender keeps each
        // stream's frames in submission order.
        let frame_len = match self.seals[stream].finish(
            FrameKind::Pages,
            buf,
            real_data_at + data_len - HEADER_LEN,
        ) {
            Ok(len) => len,
            Err(e) => {
                let _ = self.sender.release(id);
                return Err(e.into());
            }
        };
        stats.bytes_raw += raw_len as u64;
        stats.bytes_wire += frame_len as u64;
        self.next_stream = (stream + 1) % self.sender.stream_count();
        self.sender.send(id, frame_len, stream)?;
        Ok(())
    }
}
