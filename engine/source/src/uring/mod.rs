//! io_uring sender: streams page batches over 1..N TCP connections from a
//! pool of registered buffers, on one ring and without threads of its own
//! (the source host has two cores: one for the reader and sender, one for the
//! target and the kernel's network work).
//!
//! # Use
//!
//! ```text
//! let mut tx = UringSender::new(streams, 16, 1 << 20, SendMode::Copy)?;
//! loop {
//!     let id = tx.acquire()?;                // blocks while all buffers are in flight
//!     let n = reader.read(&runs, tx.buffer_mut(id))?;
//!     tx.send(id, n, lane)?;                 // the buffer now belongs to the ring
//! }
//! tx.flush()?;                               // every buffer back, every byte handed to TCP
//! ```
//!
//! # Buffer ownership
//!
//! [`BufferPool`] is one anonymous mapping cut into page-aligned buffers and
//! registered with the ring as fixed buffers `0..count`. A [`BufId`] is the
//! index of one buffer. Every buffer is in exactly one state:
//!
//! ```text
//!   Free ──acquire──> Held ──send──> Queued ──(stream idle)──> Sending ──> Free
//!     ^                 │                                         │
//!     └────release──────┘          error on the stream: Queued ───┘ (never sent)
//! ```
//!
//! `Held` is the only state in which the caller may touch the bytes
//! ([`UringSender::buffer_mut`] panics otherwise). From `send` on, the ring
//! owns the buffer until the kernel is done with it:
//! - copy mode: until the send's completion (the kernel has copied the data
//!   into the socket);
//! - zero-copy mode: until the completion *and* its notification. A `SendZc`
//!   completion carries `IORING_CQE_F_MORE`, meaning "the data may still be
//!   referenced by queued skbs"; a second CQE with `IORING_CQE_F_NOTIF` (same
//!   user_data) says the kernel has let go. Only then is the buffer reusable.
//!   A short send resubmitted from the same buffer gets its own notification,
//!   so a buffer counts its outstanding notifications.
//!
//! Dropping the sender cancels what is in flight and waits for the
//! completions before the mapping goes away; if it cannot collect them, the
//! mapping is leaked rather than unmapped under the kernel (STYLE.md, "a
//! dropped operation's buffer is parked until the kernel is done with it").
//! It does not wait for zero-copy notifications: those depend on the peer
//! reading, and the ring keeps the registered pages pinned until then, so
//! the bytes queued for the wire stay intact after our unmap.
//!
//! # Ordering
//!
//! Bytes on one stream arrive in `send` order because each stream has at most
//! one send in flight; the others wait in a per-stream FIFO and are submitted
//! when the previous one completes. (Linked SQEs were the alternative, but a
//! short send breaks a link chain and would cancel everything behind it.)
//! Sends carry `MSG_WAITALL`, so the kernel itself retries partial sends on a
//! stream socket; a short completion that still arrives is resubmitted for
//! the rest before the stream moves on. There is no order across streams.
//!
//! # Modes
//!
//! - [`SendMode::Copy`]: `IORING_OP_SEND` with `MSG_NOSIGNAL | MSG_WAITALL`
//!   from the buffer's address. (`WRITE_FIXED` on the socket also works, but
//!   it cannot pass `MSG_NOSIGNAL`, so a closed peer raises SIGPIPE, and it
//!   returns partial writes instead of retrying them.)
//! - [`SendMode::ZeroCopy`]: `IORING_OP_SEND_ZC` on the fixed buffer
//!   (`buf_index`), with `IORING_SEND_ZC_REPORT_USAGE`, so each notification
//!   says whether the kernel copied the data after all. DESIGN.md: loopback
//!   and veth always copy; [`Stats::zc_copied`] counts those notifications.
//!   Measured here on loopback (one stream, 16 x 1 MiB buffers, busy shared
//!   machine): copy 1.8-2.6 GB/s, zero-copy 0.9-1.7 GB/s with every
//!   notification flagged ZC_COPIED. [`UringSender::set_mode`] switches
//!   between sends.
//!   If the kernel lacks `SEND_ZC`, the sender falls back to copy mode;
//!   [`UringSender::mode`] reports the mode in use.
//!
//! # Errors
//!
//! A failed send (error CQE) marks its stream dead: its queued buffers go back
//! to the pool unsent, and later `send`s on it fail at once. The error is
//! reported once as [`UringError::Send`] (stream index and errno) by whichever
//! of `acquire`, `flush` or `send_bytes` reaps it; `send` itself only fails
//! for its own stream, and when it fails the buffer is back in the pool.
//! A peer that closes the connection yields `ECONNRESET` or `EPIPE` promptly;
//! a peer that stays connected but stops reading makes `acquire`/`flush`
//! block, as a full socket would.
mod pool;
mod sender;
use pagehop_sys::uring as sys;
#[cfg(test)]
mod tests;

use std::io;

use io_uring::{IoUring, Probe, opcode};

pub use pool::BufferPool;
pub use sender::{BufId, Stats, UringSender};

#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("creating an io_uring with {entries} entries")]
    Setup {
        entries: u32,
        #[source]
        source: io::Error,
    },
    #[error("probing io_uring opcodes")]
    Probe {
        #[source]
        source: io::Error,
    },
    #[error("this kernel's io_uring has no {op}")]
    Unsupported { op: &'static str },
    #[error("buffer pool of {count} buffers of {size} bytes: {reason}")]
    PoolShape {
        count: usize,
        size: usize,
        reason: &'static str,
    },
    #[error("mapping {len} bytes for the buffer pool")]
    Map {
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("registering {count} buffers of {size} bytes with the ring (RLIMIT_MEMLOCK?)")]
    Register {
        count: usize,
        size: usize,
        #[source]
        source: io::Error,
    },
    #[error("a sender needs at least one stream")]
    NoStreams,
    #[error("{streams} streams are too many for one ring")]
    TooManyStreams { streams: usize },
    #[error("stream {stream} does not exist ({streams} streams)")]
    NoSuchStream { stream: usize, streams: usize },
    #[error("buffer {index} is not held by the caller")]
    NotHeld { index: usize },
    #[error("send of {len} bytes does not fit a {size}-byte buffer")]
    TooLong { len: usize, size: usize },
    #[error("all {count} buffers are held by the caller, none is in flight to come back")]
    Exhausted { count: usize },
    #[error("send on stream {stream}")]
    Send {
        stream: usize,
        #[source]
        source: io::Error,
    },
    #[error("io_uring_enter")]
    Enter {
        #[source]
        source: io::Error,
    },
}

impl UringError {
    /// The errno of a failed send or syscall, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Send { source, .. }
            | Self::Enter { source }
            | Self::Setup { source, .. }
            | Self::Register { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// How buffers go to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// `IORING_OP_SEND`: the kernel copies the buffer into the socket.
    Copy,
    /// `IORING_OP_SEND_ZC` on the registered buffer: the NIC (or, on
    /// loopback/veth, a later kernel copy) reads the pages in place.
    ZeroCopy,
}

impl std::fmt::Display for SendMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendMode::Copy => "copy",
            SendMode::ZeroCopy => "zerocopy",
        })
    }
}

/// The io_uring opcodes this module can use, as the running kernel reports
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// `IORING_OP_SEND` (Linux 5.6): copy mode.
    pub send: bool,
    /// `IORING_OP_SEND_ZC` (Linux 6.0): zero-copy mode.
    pub send_zc: bool,
    /// `IORING_OP_WRITE_FIXED` (Linux 5.1).
    pub write_fixed: bool,
    /// `IORING_OP_ASYNC_CANCEL` (Linux 5.5): used to stop sends on drop.
    pub async_cancel: bool,
}

impl Support {
    fn of(ring: &IoUring) -> Result<Self, UringError> {
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|source| UringError::Probe { source })?;
        Ok(Self {
            send: probe.is_supported(opcode::Send::CODE),
            send_zc: probe.is_supported(opcode::SendZc::CODE),
            write_fixed: probe.is_supported(opcode::WriteFixed::CODE),
            async_cancel: probe.is_supported(opcode::AsyncCancel::CODE),
        })
    }
}

/// Asks the kernel which of the opcodes we use it supports (creates and drops
/// a tiny ring).
pub fn probe() -> Result<Support, UringError> {
    let ring = IoUring::new(2).map_err(|source| UringError::Setup { entries: 2, source })?;
    Support::of(&ring)
}
