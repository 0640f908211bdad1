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
//! `Pages` payload is a batch of up to [`batch::MAX_BATCH_PAGES`] pages of
//! one address space, zero pages as flags and the rest raw or as one lz4
//! block ([`batch`]). Peers holding a shared token authenticate each other
//! with an HMAC-SHA256 challenge ([`auth`]), and every frame after that is
//! sealed with AES-256-GCM under the connection's own keys ([`seal`]): the
//! header's crc is then zero and a 16-byte tag follows the payload. How a
//! connection is protected is agreed in `Hello` ([`msg::Protection`]) and
//! set up by [`conn::Conn::handshake`].
//!
//! A migration moves one process or a process tree. Every page batch and
//! every message about pages (`Layout`, `VerifyDigests`, `PageRequest`,
//! `Pending`) names the address space it is about, a [`SpaceKey`]:
//! [`SpaceKey::ROOT`] (0) for a single process, the pid in the tree's own pid
//! namespace for each process of a tree. Version 1 had no such field; peers
//! of different versions refuse each other's first frame
//! ([`FrameError::Version`]).
//!
//! Typical session on the control lane (the handshake and round logic live
//! with the caller; each data lane and the post-copy priority lane open with
//! the same Hello, Auth and Attach):
//!
//! ```text
//! source                                   destination
//!   Hello ───────────────────────────────────> Hello   (plain, ≤ 4 KiB)
//!   Auth (if a token is configured) <────────> Auth    (plain, ≤ 4 KiB)
//!   ── from here on every frame is sealed, unless both chose --plaintext ──
//!   Attach ──────────────────────────────────>   (session, lane, epoch)
//!   Layout ──────────────────────────────────>   (one per address space)
//!        <────────────────────────────────────── LayoutAck (then its pages may follow)
//!   Pages* EndOfRound ───────────────────────>   (each round; Pages on the data lanes)
//!        <────────────────────────────────────── EndOfRound (the round is held)
//!   Switchover ──────────────────────────────>   (after the final round, source frozen)
//!        <────────────────────────────────────── Done (restored and running)
//!   VerifyDigests* Done ─────────────────────>   (if verifying)
//!        <────────────────────────────────────── VerifyResult
//!   Error <──────────────────────────────────> Error (either side, any time)
//! ```
//!
//! Post-copy switches with the pages the destination still lacks, and then
//! serves them until it holds every page:
//!
//! ```text
//!   Pending* Switchover { postcopy } ────────>   (per address space; the last flagged)
//!        <────────────────────────────────────── Done (restored and running)
//!        <────────────────────────────────────── PageRequest (priority lane)
//!   Pages ───────────────────────────────────>   (the answer, on the priority lane)
//!   Pages* ──────────────────────────────────>   (the rest, on the data lanes)
//!        <────────────────────────────────────── Pending* (after the source reconnects)
//!        <────────────────────────────────────── Stats, Done (every page installed)
//! ```
//!
//! Decoders never panic and never allocate more than a frame kind's cap, so
//! bytes from the network can be fed to them as they are.
//!
//! - [`criu`]: the CRIU 4.2 images a peer sends (inventory, pstree, pagemap,
//!   mm, core), read with the same care.

pub mod auth;
pub mod batch;
pub mod conn;
pub mod criu;
pub mod frame;
pub mod image;
pub mod msg;
pub mod seal;
pub mod stats;
pub mod verify;

pub use frame::{FrameError, FrameKind, FrameReader, HEADER_LEN, PROTOCOL_VERSION};
pub use pagehop_mem::SpaceKey;
