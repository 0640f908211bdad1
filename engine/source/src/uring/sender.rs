//! [`UringSender`]: the ring, the streams, the buffer slots and the calls
//! that hand buffers out and take them back. See the module docs of
//! `crate::uring` for the ownership and ordering rules this code implements.
//!
//! - `submit`: starting sends, pushing and submitting SQEs, waiting.
//! - `complete`: reaping and handling completions, and the cancellation that
//!   collects them on drop.
mod complete;
mod submit;

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::IoUring;

use super::{BufferPool, SendMode, Support, UringError};

/// A buffer of the pool, by index. Obtained from [`UringSender::acquire`];
/// valid for `buffer_mut` until it is passed to `send` or `release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufId(u16);

impl BufId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Counters since the sender was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes the kernel accepted on all streams.
    pub bytes_sent: u64,
    /// Buffers completely sent.
    pub sends: u64,
    /// SQEs submitted for sends (`sends` plus resubmitted short sends).
    pub submissions: u64,
    /// Completions that sent less than asked (resubmitted for the rest).
    pub short_sends: u64,
    /// Zero-copy notifications received.
    pub zc_notifs: u64,
    /// Zero-copy notifications saying the kernel copied the data anyway.
    pub zc_copied: u64,
}

/// Where one buffer is in its life (module docs: "Buffer ownership").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Handed to the caller by `acquire`.
    Held,
    /// Waiting for its stream's current send to finish.
    Queued {
        len: usize,
    },
    /// Owned by the ring: a send is in flight (`in_flight`) and/or zero-copy
    /// notifications are outstanding (`notifs`). Back to Free when neither.
    Busy {
        stream: usize,
        len: usize,
        done: usize,
        in_flight: bool,
        /// Signed: robust even if a notification overtook its result.
        notifs: i32,
    },
}

struct Stream {
    sock: TcpStream,
    fd: RawFd,
    /// The buffer whose send is in flight on this stream.
    active: Option<u16>,
    /// Buffers waiting for `active` to finish, in send order.
    queue: VecDeque<u16>,
    /// errno of the first failed send (0: the kernel accepted 0 bytes).
    error: Option<i32>,
    /// Whether `error` has been returned to the caller yet.
    reported: bool,
}

/// Sends registered buffers over TCP streams with one io_uring.
///
/// Field order matters: the ring is dropped before the pool, so the kernel
/// unregisters the buffers before they are unmapped.
pub struct UringSender {
    ring: IoUring,
    streams: Vec<Stream>,
    pool: BufferPool,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Slots in the Queued or Busy state.
    busy: usize,
    mode: SendMode,
    support: Support,
    stats: Stats,
    cqes: Vec<(u64, i32, u32)>,
}

impl UringSender {
    /// A sender over `streams` with `buffers` registered buffers of
    /// `buffer_size` bytes. Falls back to copy mode if `mode` is zero-copy and
    /// the kernel lacks `SEND_ZC` (see [`Self::mode`]).
    ///
    /// The streams keep their blocking mode and options; set `TCP_NODELAY`
    /// beforehand for latency-sensitive lanes.
    pub fn new(
        streams: Vec<TcpStream>,
        buffers: usize,
        buffer_size: usize,
        mode: SendMode,
    ) -> Result<Self, UringError> {
        if streams.is_empty() {
            return Err(UringError::NoStreams);
        }
        let pool = BufferPool::new(buffers, buffer_size)?;
        // At most one send per stream is in flight, plus one cancellation
        // per stream on drop (see `push`). Each buffer can owe a result and a
        // notification at once; the kernel keeps overflowing CQEs anyway
        // (IORING_FEAT_NODROP), sizing the CQ only avoids that slow path.
        if streams.len() > 1 << 14 {
            return Err(UringError::TooManyStreams {
                streams: streams.len(),
            });
        }
        let sq = (2 * streams.len()).next_power_of_two().max(8) as u32;
        let cq = (2 * (buffers + streams.len()) + 8)
            .next_power_of_two()
            .clamp(2 * sq as usize, 1 << 16) as u32;
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .build(sq)
            .map_err(|source| UringError::Setup {
                entries: sq,
                source,
            })?;
        let support = Support::of(&ring)?;
        if !support.send {
            return Err(UringError::Unsupported {
                op: "IORING_OP_SEND",
            });
        }
        pool.register(&ring)?;
        let streams = streams
            .into_iter()
            .map(|sock| Stream {
                fd: sock.as_raw_fd(),
                sock,
                active: None,
                queue: VecDeque::new(),
                error: None,
                reported: false,
            })
            .collect();
        let mut sender = Self {
            ring,
            streams,
            pool,
            slots: vec![Slot::Free; buffers],
            // Reversed so that buffer 0 goes out first.
            free: (0..buffers as u16).rev().collect(),
            busy: 0,
            mode,
            support,
            stats: Stats::default(),
            cqes: Vec::with_capacity(cq as usize),
        };
        sender.set_mode(mode);
        Ok(sender)
    }

    /// The mode in use (copy if zero-copy was asked for but is unsupported).
    pub fn mode(&self) -> SendMode {
        self.mode
    }

    /// Switches the mode for sends submitted from now on (including the
    /// rest of a short send); sends already in flight finish as they were
    /// submitted. Zero-copy falls back to copy without `SEND_ZC`. Returns the
    /// mode in use.
    ///
    /// DESIGN.md: on loopback and veth the kernel copies zero-copy data
    /// anyway; [`Stats::zc_copied`] against [`Stats::zc_notifs`] tells.
    pub fn set_mode(&mut self, mode: SendMode) -> SendMode {
        self.mode = match mode {
            SendMode::ZeroCopy if !self.support.send_zc => SendMode::Copy,
            mode => mode,
        };
        self.mode
    }

    /// What the kernel's io_uring supports.
    pub fn support(&self) -> Support {
        self.support
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn buffer_size(&self) -> usize {
        self.pool.buffer_size()
    }

    pub fn buffer_count(&self) -> usize {
        self.pool.count()
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Stream `stream`'s socket, e.g. to read replies from the peer or to
    /// set options. Writing to it directly would interleave with queued sends.
    pub fn stream(&self, stream: usize) -> &TcpStream {
        &self.streams[stream].sock
    }

    /// Whether a send on `stream` has failed (later sends on it fail too).
    pub fn stream_failed(&self, stream: usize) -> bool {
        self.streams[stream].error.is_some()
    }

    /// Buffers owned by the ring (queued or being sent).
    pub fn in_flight(&self) -> usize {
        self.busy
    }

    /// A free buffer. Reaps completions first; blocks while every buffer is
    /// in flight. Returns a stream's send error once if one was reaped, and
    /// [`UringError::Exhausted`] if the caller holds every buffer.
    pub fn acquire(&mut self) -> Result<BufId, UringError> {
        loop {
            self.reap();
            self.take_error()?;
            if let Some(index) = self.free.pop() {
                self.slots[index as usize] = Slot::Held;
                return Ok(BufId(index));
            }
            if self.busy == 0 {
                return Err(UringError::Exhausted {
                    count: self.pool.count(),
                });
            }
            self.wait(None)?;
        }
    }

    /// The bytes of a held buffer (all `buffer_size()` of them).
    ///
    /// # Panics
    /// If `id` is not held by the caller: after `send` or `release` the
    /// buffer belongs to the ring or the pool.
    pub fn buffer_mut(&mut self, id: BufId) -> &mut [u8] {
        let index = self.held(id).unwrap_or_else(|e| panic!("{e}"));
        self.pool.buffer_mut(index)
    }

    /// Read access to a held buffer; panics like [`Self::buffer_mut`].
    pub fn buffer(&self, id: BufId) -> &[u8] {
        let index = self.held(id).unwrap_or_else(|e| panic!("{e}"));
        self.pool.buffer(index)
    }

    /// Gives a held buffer back without sending it.
    pub fn release(&mut self, id: BufId) -> Result<(), UringError> {
        let index = self.held(id)?;
        self.slots[index] = Slot::Free;
        self.free.push(id.0);
        Ok(())
    }

    /// Queues `buf[..len]` on `stream` after everything queued on it before.
    /// The buffer belongs to the ring from now on.
    ///
    /// Fails only for this call's own stream (dead stream, bad index, `len`
    /// too long); the buffer is then back in the pool. Errors of other
    /// streams are left for `acquire`/`flush`.
    pub fn send(&mut self, id: BufId, len: usize, stream: usize) -> Result<(), UringError> {
        let index = self.held(id)?;
        let checked = self.check_send(len, stream);
        if checked.is_err() || len == 0 {
            self.slots[index] = Slot::Free;
            self.free.push(id.0);
            return checked;
        }
        self.slots[index] = Slot::Queued { len };
        self.busy += 1;
        self.streams[stream].queue.push_back(id.0);
        // Completions may have freed the stream since we last looked.
        self.reap();
        if self.streams[stream].active.is_none() {
            self.start_next(stream);
        }
        self.submit()
    }

    /// Sends a copy of `bytes` on `stream` (control frames; splits across
    /// buffers if needed). May block in `acquire`.
    pub fn send_bytes(&mut self, stream: usize, bytes: &[u8]) -> Result<(), UringError> {
        self.check_send(0, stream)?;
        for chunk in bytes.chunks(self.pool.buffer_size()) {
            let id = self.acquire()?;
            self.buffer_mut(id)[..chunk.len()].copy_from_slice(chunk);
            self.send(id, chunk.len(), stream)?;
        }
        Ok(())
    }

    /// Waits until every queued byte has been handed to TCP and every buffer
    /// is back (zero-copy: notified). Returns the first send error not
    /// reported yet.
    pub fn flush(&mut self) -> Result<(), UringError> {
        loop {
            self.reap();
            if self.busy == 0 {
                return self.take_error();
            }
            self.wait(None)?;
        }
    }

    fn held(&self, id: BufId) -> Result<usize, UringError> {
        let index = id.index();
        match self.slots.get(index) {
            Some(Slot::Held) => Ok(index),
            _ => Err(UringError::NotHeld { index }),
        }
    }

    fn check_send(&self, len: usize, stream: usize) -> Result<(), UringError> {
        let Some(s) = self.streams.get(stream) else {
            return Err(UringError::NoSuchStream {
                stream,
                streams: self.streams.len(),
            });
        };
        if let Some(errno) = s.error {
            return Err(send_error(stream, errno));
        }
        if len > self.pool.buffer_size() {
            return Err(UringError::TooLong {
                len,
                size: self.pool.buffer_size(),
            });
        }
        Ok(())
    }

    /// The first stream error not returned yet.
    fn take_error(&mut self) -> Result<(), UringError> {
        for (i, s) in self.streams.iter_mut().enumerate() {
            if let (Some(errno), false) = (s.error, s.reported) {
                s.reported = true;
                return Err(send_error(i, errno));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for UringSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringSender")
            .field("streams", &self.streams.len())
            .field("pool", &self.pool)
            .field("mode", &self.mode)
            .field("in_flight", &self.busy)
            .field("stats", &self.stats)
            .finish()
    }
}

fn send_error(stream: usize, errno: i32) -> UringError {
    let source = if errno == 0 {
        io::Error::new(io::ErrorKind::WriteZero, "the socket accepted no bytes")
    } else {
        io::Error::from_raw_os_error(errno)
    };
    UringError::Send { stream, source }
}
