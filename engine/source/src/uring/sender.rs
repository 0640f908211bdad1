//! [`UringSender`]: the ring, the streams, the buffer slots and the
//! completion handling. See the module docs of `crate::uring` for the
//! ownership and ordering rules this code implements.
use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::sys::{IORING_NOTIF_USAGE_ZC_COPIED, IORING_SEND_ZC_REPORT_USAGE, SEND_FLAGS};
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

/// user_data of operations that are not sends (cancellations): beyond any
/// buffer index.
const CANCEL: u64 = 1 << 32;

/// How long `Drop` waits for cancelled sends to complete.
const DROP_RESULTS_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Starts the oldest queued buffer of an idle `stream`. On a dead stream,
    /// returns every queued buffer to the pool instead.
    fn start_next(&mut self, stream: usize) {
        debug_assert!(self.streams[stream].active.is_none());
        if self.streams[stream].error.is_some() {
            while let Some(index) = self.streams[stream].queue.pop_front() {
                self.slots[index as usize] = Slot::Free;
                self.free.push(index);
                self.busy -= 1;
            }
            return;
        }
        let Some(index) = self.streams[stream].queue.pop_front() else {
            return;
        };
        let Slot::Queued { len, .. } = self.slots[index as usize] else {
            unreachable!(
                "queued buffer {index} in state {:?}",
                self.slots[index as usize]
            );
        };
        self.slots[index as usize] = Slot::Busy {
            stream,
            len,
            done: 0,
            in_flight: true,
            notifs: 0,
        };
        self.streams[stream].active = Some(index);
        self.push_send(index);
    }

    /// Pushes the SQE sending the unsent rest of Busy buffer `index`.
    fn push_send(&mut self, index: u16) {
        let Slot::Busy {
            stream, len, done, ..
        } = self.slots[index as usize]
        else {
            unreachable!(
                "sending buffer {index} in state {:?}",
                self.slots[index as usize]
            );
        };
        let fd = types::Fd(self.streams[stream].fd);
        // SAFETY: done < len <= buffer_size, so the offset stays inside the
        // buffer.
        let ptr = unsafe { self.pool.ptr(index as usize).add(done) };
        let rest = (len - done) as u32;
        let entry = match self.mode {
            SendMode::Copy => opcode::Send::new(fd, ptr, rest).flags(SEND_FLAGS).build(),
            SendMode::ZeroCopy => opcode::SendZc::new(fd, ptr, rest)
                .buf_index(Some(index))
                .flags(SEND_FLAGS)
                .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                .build(),
        }
        .user_data(u64::from(index));
        // SAFETY: the SQE reads `rest` bytes at `ptr`, inside buffer `index`
        // of the pool (and of its fixed-buffer registration for SEND_ZC). The
        // slot is Busy, so nobody writes the buffer or hands it out until the
        // completion (and every notification) has been reaped; the pool
        // outlives all operations (`Drop` collects them or leaks the pool).
        // `fd` belongs to a stream owned by `self` that stays open as long.
        unsafe { self.push(&entry) };
        self.stats.submissions += 1;
    }

    /// Pushes an SQE.
    ///
    /// The submission queue holds two entries per stream, and at most one
    /// send and one cancellation per stream are ever waiting in it, so it
    /// cannot be full.
    ///
    /// # Safety
    /// Every buffer and fd the entry names must stay valid until its
    /// completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.submission().push(entry) }
            .expect("submission queue sized for one send and one cancel per stream");
    }

    /// Submits pushed SQEs.
    fn submit(&mut self) -> Result<(), UringError> {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if retryable(&e) => self.reap(),
                Err(source) => return Err(UringError::Enter { source }),
            }
        }
        Ok(())
    }

    /// Submits and waits for at least one completion (or the timeout).
    /// Returns false on timeout.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, UringError> {
        let res = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(false),
            Err(e) if retryable(&e) => Ok(true),
            Err(source) => Err(UringError::Enter { source }),
        }
    }

    /// Handles every completion available now, without blocking. Send errors
    /// are recorded on their stream (see `take_error`).
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            for &(user_data, res, flags) in &cqes {
                self.complete(user_data, res, flags);
            }
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        if user_data >= CANCEL {
            return;
        }
        let index = user_data as u16;
        let Slot::Busy {
            stream,
            len,
            mut done,
            mut in_flight,
            mut notifs,
        } = self.slots[index as usize]
        else {
            unreachable!(
                "completion for buffer {index} in state {:?}",
                self.slots[index as usize]
            );
        };
        if cqueue::notif(flags) {
            // The kernel no longer references the data of one SEND_ZC.
            notifs -= 1;
            self.stats.zc_notifs += 1;
            if res as u32 & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                self.stats.zc_copied += 1;
            }
        } else {
            in_flight = false;
            if cqueue::more(flags) {
                notifs += 1;
            }
            let s = &mut self.streams[stream];
            if res < 0 {
                s.error.get_or_insert(-res);
            } else if res == 0 && done < len {
                s.error.get_or_insert(0);
            } else {
                done += res as usize;
                self.stats.bytes_sent += res as u64;
            }
            if s.error.is_none() && done < len {
                self.stats.short_sends += 1;
                in_flight = true;
            } else if s.error.is_none() {
                self.stats.sends += 1;
            }
        }
        self.slots[index as usize] = Slot::Busy {
            stream,
            len,
            done,
            in_flight,
            notifs,
        };
        if cqueue::notif(flags) {
            // Nothing else changes for the stream.
        } else if in_flight {
            self.push_send(index);
        } else {
            self.streams[stream].active = None;
            self.start_next(stream);
        }
        if !in_flight && notifs == 0 {
            self.slots[index as usize] = Slot::Free;
            self.free.push(index);
            self.busy -= 1;
        }
    }

    /// Cancels all sends and collects their completions; false if the kernel
    /// did not complete every send within the timeout.
    fn shut_down(&mut self) -> bool {
        for s in &mut self.streams {
            // Stops new submissions and releases queued buffers.
            s.error.get_or_insert(libc::ECANCELED);
        }
        for stream in 0..self.streams.len() {
            if self.streams[stream].active.is_none() {
                self.start_next(stream);
            }
        }
        let in_flight: Vec<u16> = self.streams.iter().filter_map(|s| s.active).collect();
        if self.support.async_cancel {
            for index in in_flight {
                let entry = opcode::AsyncCancel::new(u64::from(index))
                    .build()
                    .user_data(CANCEL);
                // SAFETY: a cancellation names no buffer or fd.
                unsafe { self.push(&entry) };
            }
        }
        let start = Instant::now();
        while self.streams.iter().any(|s| s.active.is_some()) {
            let left = DROP_RESULTS_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() || !matches!(self.wait(Some(left)), Ok(true)) {
                return false;
            }
            self.reap();
        }
        // Outstanding zero-copy notifications are not waited for: they come
        // when the skbs are freed, which a peer that stopped reading can
        // delay indefinitely, and the ring pins the registered pages until
        // then, so unmapping our view of them is safe and the bytes queued
        // for the wire stay intact.
        true
    }
}

impl Drop for UringSender {
    fn drop(&mut self) {
        if self.busy > 0 && !self.shut_down() {
            // A send may still read from the pool by address: never unmap it.
            self.pool.leak();
        }
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

/// io_uring_enter errors that go away by reaping or retrying.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}
