//! The versioned wire protocol between `pagehop send` (source) and
//! `pagehop recv` (destination).
//!
//! One connection carries a sequence of frames. Every frame is a 16-byte
//! little-endian header followed by its payload ([`frame`]):
//!
//! ```text
//!  0       4       6       8          12         16
//!  +-------+-------+-------+----------+----------+---- payload (len bytes) ----+
//!  | magic |version| kind  |   len    |  crc32   |                             |
//!  +-------+-------+-------+----------+----------+-----------------------------+
//! ```
//!
//! The payload of every kind but `Pages` is a typed message ([`msg`]); a
//! `Pages` payload is a batch of up to [`batch::MAX_BATCH_PAGES`] pages, zero
//! pages as flags and the rest raw or as one lz4 block ([`batch`]). Peers
//! holding a shared token authenticate each other with an HMAC-SHA256
//! challenge ([`auth`]).
//!
//! Typical session (the handshake and round logic live with the caller):
//!
//! ```text
//! source                                   destination
//!   Hello ───────────────────────────────────> Hello
//!   Auth (if a token is configured) <────────> Auth
//!   Layout ──────────────────────────────────>
//!        <────────────────────────────────────── LayoutAck (then pages may follow)
//!   Pages* EndOfRound ───────────────────────>   (pre-copy rounds)
//!   Switchover, Pages* EndOfRound ───────────>   (final round, source frozen)
//!   VerifyDigests* ──────────────────────────>
//!        <────────────────────────────────────── VerifyResult
//!        <────────────────────────────────────── PageRequest (post-copy)
//!   Done, Stats ─────────────────────────────>
//!   Error <──────────────────────────────────> Error (either side, any time)
//! ```
//!
//! Decoders never panic and never allocate more than a frame kind's cap, so
//! bytes from the network can be fed to them as they are.

pub mod auth;
pub mod batch;
pub mod conn;
pub mod frame;
pub mod image;
pub mod msg;
pub mod stats;
pub mod verify;

pub use frame::{FrameError, FrameKind, FrameReader, HEADER_LEN, PROTOCOL_VERSION};
