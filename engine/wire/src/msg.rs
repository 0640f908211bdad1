//! Typed messages: the payloads of every frame kind but `Pages`.
//!
//! All integers are little-endian. A string is a u32 byte length followed by
//! that many UTF-8 bytes; a vector is a u32 element count followed by the
//! elements. Decoders check every length against its cap, and a count
//! against the bytes actually left, before allocating; bytes left over after
//! a message are an error.
//!
//! ```text
//! Hello          version u16 | role u8 | protection u8 | page_size u32
//!                | capabilities u64 | nonce [32]                     (48 bytes)
//! Auth           mac [32]                                            (32 bytes)
//! Layout         space u32 | count u32 | count × VmaDesc
//!   VmaDesc      start u64 | end u64 | prot u32 | flags u32 | name string
//! EndOfRound     round u32 | pages u64 | bytes_raw u64 | bytes_wire u64 (28 bytes)
//! Switchover     final_round u32 | postcopy u8 (0|1) | criu u8 (0|1)  (6 bytes)
//! Done           pages_sent u64                                      (8 bytes)
//! Error          code u32 | message string
//! Stats          json string
//! VerifyDigests  space u32 | start u64 | count u32 | count × xxh3-64 u64
//! VerifyResult   has_mismatch u8 (0|1) | mismatch u64 (0 if none)
//!                | pages_checked u64                                 (17 bytes)
//! PageRequest    space u32 | addr u64 | pages u32                    (16 bytes)
//! LayoutAck      vmas u32: the destination follows that Layout now   (4 bytes)
//! Attach         session u64 | lane u8 (1 control, 2 data, 3 priority)
//!                | epoch u32                                         (13 bytes)
//! Pending        space u32 | last u8 (0|1) | count u32
//!                | count × (start u64 | end u64)
//! ImageChunk     name string | offset u64 | flags u8 (bit 0 lz4, bit 1 last)
//!                | raw_len u32 | data (count u32 | bytes)
//! Restored       tasks u32: the destination's copy of that many tasks is
//!                ready, held stopped                                 (4 bytes)
//! Commit         tasks u32: the source never runs again; continue     (4 bytes)
//! ```
//!
//! The fixed-size messages, and the fixed runs of fields inside the others,
//! are `#[repr(C)]` structs of bytes and little-endian integers (zerocopy):
//! encoding appends their bytes and decoding is one checked cast, and a
//! payload too short for one is refused naming the first field it lacks.
//!
//! `space` is the address space a message is about (a
//! [`SpaceKey`](pagehop_mem::SpaceKey): 0 for a single process, the pid in
//! the tree's own pid namespace for each process of a tree).
//!
//! Encoding never fails: a string longer than its cap is cut at a character
//! boundary, and a vector longer than its cap is sent whole for the peer to
//! refuse (callers split layouts and digests into frames of at most
//! [`MAX_VMAS`] and [`MAX_HASHES`] entries).

use pagehop_mem::SpaceKey;

use super::frame::{FrameError, FrameKind, FrameSeal, HEADER_LEN};

mod codec;
mod fixed;
mod var;

#[cfg(test)]
mod decoder_tests;

/// Capability bit: the sender may lz4-compress page batches.
pub const CAP_LZ4: u64 = 1;
/// Capability bit: zero-copy sends (informational; no wire difference).
pub const CAP_ZEROCOPY: u64 = 2;
/// Capability bit: the peer can serve or issue post-copy page requests.
pub const CAP_POSTCOPY: u64 = 4;
/// Capability bit: the peer can verify pages with digests.
pub const CAP_VERIFY: u64 = 8;
/// The destination restores CRIU dumps (`recv --criu`).
pub const CAP_CRIU: u64 = 16;

/// No user address reaches this (5-level paging ends at 2^57): decoders
/// refuse addresses beyond it, so an address plus a message's page count
/// times any page size (at most 2^32 bytes) never overflows.
pub const MAX_USER_ADDRESS: u64 = 1 << 57;

/// Longest VMA name (bytes).
pub const MAX_VMA_NAME: usize = 4096;
/// Most VMAs in one `Layout`.
pub const MAX_VMAS: usize = 65536;
/// Most digests in one `VerifyDigests`.
pub const MAX_HASHES: usize = 65536;
/// Longest image file name.
pub const MAX_IMAGE_NAME: usize = 255;
/// Most data bytes in one `ImageChunk` (raw or compressed).
pub const MAX_IMAGE_CHUNK: usize = 4 * 1024 * 1024;
/// Most ranges in one `Pending`.
pub const MAX_PENDING_RANGES: usize = 65536;
/// Longest `Error` message: the frame cap minus code and length.
pub const MAX_ERROR_MESSAGE: usize = 64 * 1024 - 8;
/// Longest `Stats` JSON document: the frame cap minus the length.
pub const MAX_STATS_JSON: usize = 64 * 1024 - 4;

#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("{msg}: {field} needs {need} bytes at offset {at}, payload has {len}")]
    Short {
        msg: &'static str,
        field: &'static str,
        at: usize,
        need: usize,
        len: usize,
    },
    #[error("{msg}: {extra} unexpected bytes after the message")]
    Trailing { msg: &'static str, extra: usize },
    #[error("{msg}: {field} of {len} exceeds the cap of {max}")]
    TooLong {
        msg: &'static str,
        field: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{msg}: {field} is not valid UTF-8")]
    Utf8 {
        msg: &'static str,
        field: &'static str,
    },
    #[error("{msg}: invalid {field} {value:#x}")]
    Invalid {
        msg: &'static str,
        field: &'static str,
        value: u64,
    },
    #[error("Layout: vma {index} {start:#x}-{end:#x} is empty or not 4 KiB aligned")]
    Vma { index: usize, start: u64, end: u64 },
}

/// A message with its frame kind, for code generic over messages.
///
/// Every message also has inherent `encode` and `decode`, so callers need not
/// import this trait to use them.
pub trait Message: Sized {
    const KIND: FrameKind;

    /// Appends the payload (no frame header) to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Parses a whole payload.
    fn decode(payload: &[u8]) -> Result<Self, MsgError>;

    /// Appends a whole frame (header, payload and, when sealed, the tag) to
    /// `out`, finished by `seal`.
    fn encode_frame(&self, seal: &mut FrameSeal, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        Message::encode(self, out);
        seal.finish_vec(Self::KIND, out, start)
    }
}

/// Which end of a migration a peer is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Source = 1,
    Destination = 2,
}

impl Role {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Role::Source),
            2 => Some(Role::Destination),
            _ => None,
        }
    }

    /// The role at the other end of the connection.
    pub fn peer(self) -> Self {
        match self {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        }
    }
}

/// The first frame each side sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the sender speaks.
    pub version: u16,
    /// The sender's page size in bytes (a power of two).
    pub page_size: u32,
    /// `CAP_*` bits; unknown bits are ignored.
    pub capabilities: u64,
    pub role: Role,
    /// The sender's authentication challenge (see [`super::auth`]).
    pub nonce: [u8; 32],
    /// How the sender protects this connection; both ends must agree.
    pub protection: Protection,
}

/// How a connection is protected, as each end's `Hello` states it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    /// No token: anyone who can connect is a peer (loopback only, by an
    /// explicit choice of the operator).
    None = 1,
    /// Token-authenticated handshake, frames checked by crc only
    /// (`--plaintext`, for a link the operator trusts).
    Plaintext = 2,
    /// Token-authenticated handshake, every later frame sealed (the default).
    Sealed = 3,
}

impl Protection {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Protection::None),
            2 => Some(Protection::Plaintext),
            3 => Some(Protection::Sealed),
            _ => None,
        }
    }

    /// Whether the handshake proves the token.
    pub fn authenticated(self) -> bool {
        self != Protection::None
    }

    pub fn name(self) -> &'static str {
        match self {
            Protection::None => "none",
            Protection::Plaintext => "plaintext",
            Protection::Sealed => "sealed",
        }
    }
}

/// Proof of the shared token (see [`super::auth`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub mac: [u8; 32],
}

/// The mappings of one of the source's address spaces. An empty layout
/// for a space the destination knows says the process is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub space: SpaceKey,
    pub vmas: Vec<VmaDesc>,
}

/// One mapping: `[start, end)`, both 4 KiB aligned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaDesc {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// Mapping flags; their meaning is the caller's.
    pub flags: u32,
    /// File path or pseudo-name, at most [`MAX_VMA_NAME`] bytes.
    pub name: String,
}

/// Sent after the last `Pages` frame of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndOfRound {
    pub round: u32,
    pub pages: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

/// The source is frozen; the rounds that follow up to `final_round` are the
/// last. With `postcopy`, the destination starts the process at once and
/// fetches the pages announced in the preceding `Pending` frames on demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switchover {
    pub final_round: u32,
    pub postcopy: bool,
    /// CRIU mode: CRIU's images came first (`ImageChunk`s); the destination
    /// restores the tree with `criu restore --lazy-pages`. In every mode it
    /// answers `Restored` once its copy is ready and held stopped, and
    /// continues it only on the source's `Commit`.
    pub criu: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub pages_sent: u64,
}

/// A fatal error, sent before closing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    pub code: u32,
    /// At most [`MAX_ERROR_MESSAGE`] bytes.
    pub message: String,
}

/// Statistics as a JSON document of at most [`MAX_STATS_JSON`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub json: String,
}

/// One xxh3-64 per consecutive page from `start` of `space`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyDigests {
    pub space: SpaceKey,
    pub start: u64,
    /// At most [`MAX_HASHES`].
    pub hashes: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyResult {
    /// Address of the first page whose digest did not match.
    pub mismatch: Option<u64>,
    pub pages_checked: u64,
}

/// The destination has applied a `Layout` of `vmas` mappings: pages for it
/// may now arrive on the data streams, which are not ordered with the
/// control connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutAck {
    pub vmas: u32,
}

/// Which job a connection does, sent by the source right after the handshake.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Layout, rounds, switchover, verification.
    Control = 1,
    /// Bulk `Pages` frames.
    Data = 2,
    /// Post-copy page requests and their answers, ahead of the bulk.
    Priority = 3,
}

impl Lane {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Lane::Control),
            2 => Some(Lane::Data),
            3 => Some(Lane::Priority),
            _ => None,
        }
    }
}

/// Binds a connection to a migration (`session`, chosen by the source) and a
/// [`Lane`]. `epoch` counts the source's reconnects: 0 for the first set of
/// connections, one more after each break.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attach {
    pub session: u64,
    pub lane: Lane,
    pub epoch: u32,
}

/// Page ranges `[start, end)` that the destination still needs from the
/// source: sent by the source before a post-copy `Switchover`, and by the
/// destination when the source reconnects. `last` ends the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub space: SpaceKey,
    pub ranges: Vec<(u64, u64)>,
    pub last: bool,
}

/// Part of one of CRIU's image files: `data` goes at `offset` of the file
/// `name` (a plain file name of the images directory); the chunk with
/// `last` ends the file. With `lz4` the data is one lz4 block of `raw_len`
/// bytes; otherwise `raw_len` is the data's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageChunk {
    pub name: String,
    pub offset: u64,
    pub lz4: bool,
    pub last: bool,
    pub raw_len: u32,
    pub data: Vec<u8>,
}

/// The destination restored the source's tree of `tasks` tasks and holds
/// it stopped, waiting for [`Commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub tasks: u32,
}

/// The source has committed: it never runs again, so the destination's
/// copy may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub tasks: u32,
}

/// A request for `pages` pages from `addr` of `space` (post-copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub space: SpaceKey,
    pub addr: u64,
    pub pages: u32,
}

#[cfg(test)]
mod tests;
