//! Typed messages: the payloads of every frame kind but `Pages`.
//!
//! All integers are little-endian. A string is a u32 byte length followed by
//! that many UTF-8 bytes; a vector is a u32 element count followed by the
//! elements. Decoders check every length against its cap, and a count
//! against the bytes actually left, before allocating; bytes left over after
//! a message are an error.
//!
//! ```text
//! Hello          version u16 | role u8 | authenticated u8 | page_size u32
//!                | capabilities u64 | nonce [32]                     (48 bytes)
//! Auth           mac [32]                                            (32 bytes)
//! Layout         count u32 | count × VmaDesc
//!   VmaDesc      start u64 | end u64 | prot u32 | flags u32 | name string
//! EndOfRound     round u32 | pages u64 | bytes_raw u64 | bytes_wire u64 (28 bytes)
//! Switchover     final_round u32 | postcopy u8 (0|1)                 (5 bytes)
//! Done           pages_sent u64                                      (8 bytes)
//! Error          code u32 | message string
//! Stats          json string
//! VerifyDigests  start u64 | count u32 | count × xxh3-64 u64
//! VerifyResult   has_mismatch u8 (0|1) | mismatch u64 (0 if none)
//!                | pages_checked u64                                 (17 bytes)
//! PageRequest    addr u64 | pages u32                                (12 bytes)
//! LayoutAck      vmas u32: the destination follows that Layout now   (4 bytes)
//! Attach         session u64 | lane u8 (1 control, 2 data, 3 priority)
//!                | epoch u32                                         (13 bytes)
//! Pending        last u8 (0|1) | count u32 | count × (start u64 | end u64)
//! ```
//!
//! Encoding never fails: a string longer than its cap is cut at a character
//! boundary, and a vector longer than its cap is sent whole for the peer to
//! refuse (callers split layouts and digests into frames of at most
//! [`MAX_VMAS`] and [`MAX_HASHES`] entries).

use super::frame::{FrameKind, HEADER_LEN, frame_header};

/// Capability bit: the sender may lz4-compress page batches.
pub const CAP_LZ4: u64 = 1;
/// Capability bit: zero-copy sends (informational; no wire difference).
pub const CAP_ZEROCOPY: u64 = 2;
/// Capability bit: the peer can serve or issue post-copy page requests.
pub const CAP_POSTCOPY: u64 = 4;
/// Capability bit: the peer can verify pages with digests.
pub const CAP_VERIFY: u64 = 8;

/// Longest VMA name (bytes).
pub const MAX_VMA_NAME: usize = 4096;
/// Most VMAs in one `Layout`.
pub const MAX_VMAS: usize = 65536;
/// Most digests in one `VerifyDigests`.
pub const MAX_HASHES: usize = 65536;
/// Most ranges in one `Pending`.
pub const MAX_PENDING_RANGES: usize = 65536;
/// Longest `Error` message: the frame cap minus code and length.
pub const MAX_ERROR_MESSAGE: usize = 64 * 1024 - 8;
/// Longest `Stats` JSON document: the frame cap minus the length.
pub const MAX_STATS_JSON: usize = 64 * 1024 - 4;

/// VMA addresses must be aligned to at least this.
const VMA_ALIGN: u64 = 4096;

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

    /// Appends a whole frame (header and payload) to `out`.
    fn encode_frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        Message::encode(self, out);
        let header = frame_header(Self::KIND, &[&out[start + HEADER_LEN..]]);
        out[start..start + HEADER_LEN].copy_from_slice(&header);
    }
}

macro_rules! message {
    ($ty:ty, $kind:expr) => {
        impl Message for $ty {
            const KIND: FrameKind = $kind;

            fn encode(&self, out: &mut Vec<u8>) {
                <$ty>::encode(self, out)
            }

            fn decode(payload: &[u8]) -> Result<Self, MsgError> {
                <$ty>::decode(payload)
            }
        }
    };
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
    /// The sender has a token configured and expects an `Auth` exchange.
    pub authenticated: bool,
}

/// Proof of the shared token (see [`super::auth`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub mac: [u8; 32],
}

/// The source's address space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
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

/// One xxh3-64 per consecutive page from `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyDigests {
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
    pub ranges: Vec<(u64, u64)>,
    pub last: bool,
}

/// A request for `pages` pages from `addr` (post-copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub addr: u64,
    pub pages: u32,
}

// ---- encoding helpers ----

fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A count, saturated: an impossible count is refused by the peer.
fn put_count(out: &mut Vec<u8>, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

/// A string cut to at most `max` bytes at a character boundary.
fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    put_count(out, n);
    out.extend_from_slice(&s.as_bytes()[..n]);
}

// ---- decoding helpers ----

struct Cursor<'a> {
    msg: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(kind: FrameKind, buf: &'a [u8]) -> Self {
        Self {
            msg: kind.name(),
            buf,
            pos: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, field: &'static str, need: usize) -> Result<&'a [u8], MsgError> {
        if need > self.remaining() {
            return Err(MsgError::Short {
                msg: self.msg,
                field,
                at: self.pos,
                need,
                len: self.buf.len(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + need];
        self.pos += need;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], MsgError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(field, N)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, MsgError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, MsgError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, MsgError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, MsgError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, MsgError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.invalid(field, v.into())),
        }
    }

    fn invalid(&self, field: &'static str, value: u64) -> MsgError {
        MsgError::Invalid {
            msg: self.msg,
            field,
            value,
        }
    }

    /// A length or count, checked against `max` and against the bytes left
    /// (each element takes at least `min_size` bytes).
    fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_size: usize,
    ) -> Result<usize, MsgError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(MsgError::TooLong {
                msg: self.msg,
                field,
                len: n as u64,
                max: max as u64,
            });
        }
        let need = n.saturating_mul(min_size);
        if need > self.remaining() {
            return Err(MsgError::Short {
                msg: self.msg,
                field,
                at: self.pos,
                need,
                len: self.buf.len(),
            });
        }
        Ok(n)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, MsgError> {
        let n = self.count(field, max, 1)?;
        let bytes = self.take(field, n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(MsgError::Utf8 {
                msg: self.msg,
                field,
            }),
        }
    }

    fn finish(self) -> Result<(), MsgError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(MsgError::Trailing {
                msg: self.msg,
                extra,
            }),
        }
    }
}

// ---- messages ----

impl Hello {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.version);
        put_u8(out, self.role as u8);
        put_u8(out, self.authenticated.into());
        put_u32(out, self.page_size);
        put_u64(out, self.capabilities);
        out.extend_from_slice(&self.nonce);
    }

    /// Refuses an unknown role and a page size that is not a power of two.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Hello, payload);
        let version = c.u16("version")?;
        let role = c.u8("role")?;
        let role = Role::from_u8(role).ok_or_else(|| c.invalid("role", role.into()))?;
        let authenticated = c.bool("authenticated")?;
        let page_size = c.u32("page_size")?;
        if !page_size.is_power_of_two() {
            return Err(c.invalid("page_size", page_size.into()));
        }
        let capabilities = c.u64("capabilities")?;
        let nonce = c.array("nonce")?;
        c.finish()?;
        Ok(Self {
            version,
            page_size,
            capabilities,
            role,
            nonce,
            authenticated,
        })
    }
}
message!(Hello, FrameKind::Hello);

impl Auth {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mac);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Auth, payload);
        let mac = c.array("mac")?;
        c.finish()?;
        Ok(Self { mac })
    }
}
message!(Auth, FrameKind::Auth);

/// Smallest encoded VmaDesc: four integers and an empty name.
const VMA_MIN_LEN: usize = 8 + 8 + 4 + 4 + 4;

impl Layout {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_count(out, self.vmas.len());
        for vma in &self.vmas {
            put_u64(out, vma.start);
            put_u64(out, vma.end);
            put_u32(out, vma.prot);
            put_u32(out, vma.flags);
            put_str(out, &vma.name, MAX_VMA_NAME);
        }
    }

    /// Refuses a VMA that is empty, inverted or not 4 KiB aligned.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Layout, payload);
        let count = c.count("vma count", MAX_VMAS, VMA_MIN_LEN)?;
        let mut vmas = Vec::with_capacity(count);
        for index in 0..count {
            let start = c.u64("start")?;
            let end = c.u64("end")?;
            if start >= end || start % VMA_ALIGN != 0 || end % VMA_ALIGN != 0 {
                return Err(MsgError::Vma { index, start, end });
            }
            let prot = c.u32("prot")?;
            let flags = c.u32("flags")?;
            let name = c.string("name", MAX_VMA_NAME)?;
            vmas.push(VmaDesc {
                start,
                end,
                prot,
                flags,
                name,
            });
        }
        c.finish()?;
        Ok(Self { vmas })
    }
}
message!(Layout, FrameKind::Layout);

impl EndOfRound {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.round);
        put_u64(out, self.pages);
        put_u64(out, self.bytes_raw);
        put_u64(out, self.bytes_wire);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::EndOfRound, payload);
        let m = Self {
            round: c.u32("round")?,
            pages: c.u64("pages")?,
            bytes_raw: c.u64("bytes_raw")?,
            bytes_wire: c.u64("bytes_wire")?,
        };
        c.finish()?;
        Ok(m)
    }
}
message!(EndOfRound, FrameKind::EndOfRound);

impl Switchover {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.final_round);
        put_u8(out, self.postcopy.into());
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Switchover, payload);
        let final_round = c.u32("final_round")?;
        let postcopy = c.bool("postcopy")?;
        c.finish()?;
        Ok(Self {
            final_round,
            postcopy,
        })
    }
}
message!(Switchover, FrameKind::Switchover);

impl Done {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.pages_sent);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Done, payload);
        let pages_sent = c.u64("pages_sent")?;
        c.finish()?;
        Ok(Self { pages_sent })
    }
}
message!(Done, FrameKind::Done);

impl ErrorMsg {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.code);
        put_str(out, &self.message, MAX_ERROR_MESSAGE);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Error, payload);
        let code = c.u32("code")?;
        let message = c.string("message", MAX_ERROR_MESSAGE)?;
        c.finish()?;
        Ok(Self { code, message })
    }
}
message!(ErrorMsg, FrameKind::Error);

impl Stats {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.json, MAX_STATS_JSON);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Stats, payload);
        let json = c.string("json", MAX_STATS_JSON)?;
        c.finish()?;
        Ok(Self { json })
    }
}
message!(Stats, FrameKind::Stats);

impl VerifyDigests {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.start);
        put_count(out, self.hashes.len());
        out.reserve(self.hashes.len() * 8);
        for h in &self.hashes {
            put_u64(out, *h);
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::VerifyDigests, payload);
        let start = c.u64("start")?;
        let count = c.count("hash count", MAX_HASHES, 8)?;
        let hashes = c
            .take("hashes", count * 8)?
            .chunks_exact(8)
            .map(|h| u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]))
            .collect();
        c.finish()?;
        Ok(Self { start, hashes })
    }
}
message!(VerifyDigests, FrameKind::VerifyDigests);

impl VerifyResult {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u8(out, self.mismatch.is_some().into());
        put_u64(out, self.mismatch.unwrap_or(0));
        put_u64(out, self.pages_checked);
    }

    /// Refuses a flag other than 0 or 1, and an address without the flag.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::VerifyResult, payload);
        let has_mismatch = c.bool("has_mismatch")?;
        let addr = c.u64("mismatch")?;
        if !has_mismatch && addr != 0 {
            return Err(c.invalid("mismatch address without the flag", addr));
        }
        let pages_checked = c.u64("pages_checked")?;
        c.finish()?;
        Ok(Self {
            mismatch: has_mismatch.then_some(addr),
            pages_checked,
        })
    }
}
message!(VerifyResult, FrameKind::VerifyResult);

impl PageRequest {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.addr);
        put_u32(out, self.pages);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::PageRequest, payload);
        let addr = c.u64("addr")?;
        let pages = c.u32("pages")?;
        c.finish()?;
        Ok(Self { addr, pages })
    }
}
message!(PageRequest, FrameKind::PageRequest);

impl LayoutAck {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.vmas);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::LayoutAck, payload);
        let vmas = c.u32("vmas")?;
        c.finish()?;
        Ok(Self { vmas })
    }
}
message!(LayoutAck, FrameKind::LayoutAck);

impl Attach {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.session);
        put_u8(out, self.lane as u8);
        put_u32(out, self.epoch);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Attach, payload);
        let session = c.u64("session")?;
        let lane = c.u8("lane")?;
        let lane = Lane::from_u8(lane).ok_or_else(|| c.invalid("lane", lane.into()))?;
        let epoch = c.u32("epoch")?;
        c.finish()?;
        Ok(Self {
            session,
            lane,
            epoch,
        })
    }
}
message!(Attach, FrameKind::Attach);

impl Pending {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u8(out, self.last.into());
        put_count(out, self.ranges.len());
        out.reserve(self.ranges.len() * 16);
        for &(start, end) in &self.ranges {
            put_u64(out, start);
            put_u64(out, end);
        }
    }

    /// Refuses an empty, inverted or unaligned range.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        let mut c = Cursor::new(FrameKind::Pending, payload);
        let last = c.bool("last")?;
        let count = c.count("range count", MAX_PENDING_RANGES, 16)?;
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            let start = c.u64("start")?;
            let end = c.u64("end")?;
            if start >= end || start % VMA_ALIGN != 0 || end % VMA_ALIGN != 0 {
                return Err(c.invalid("range start", start));
            }
            ranges.push((start, end));
        }
        c.finish()?;
        Ok(Self { ranges, last })
    }
}
message!(Pending, FrameKind::Pending);

#[cfg(test)]
mod tests {
    use super::super::frame::FrameReader;
    use super::*;
    use std::fmt::Debug;

    /// Encodes, checks the frame cap, decodes, compares; then checks that
    /// every truncation and one trailing byte are refused without panics.
    fn round_trip<M: Message + PartialEq + Debug>(m: &M) {
        let mut payload = Vec::new();
        m.encode(&mut payload);
        assert!(
            payload.len() <= M::KIND.max_payload() as usize,
            "{} payload of {} bytes over its cap",
            M::KIND,
            payload.len()
        );
        assert_eq!(&M::decode(&payload).expect("decode"), m);

        let mut frame = Vec::new();
        m.encode_frame(&mut frame);
        let mut reader = FrameReader::new(&frame[..]);
        let (kind, got) = reader.read_frame().expect("frame");
        assert_eq!(kind, M::KIND);
        assert_eq!(got, &payload[..]);

        for cut in 0..payload.len() {
            assert!(
                M::decode(&payload[..cut]).is_err(),
                "{} cut at {cut} decoded",
                M::KIND
            );
        }
        payload.push(0);
        assert!(matches!(
            M::decode(&payload),
            Err(MsgError::Trailing { extra: 1, .. })
        ));
    }

    fn hello() -> Hello {
        Hello {
            version: 1,
            page_size: 4096,
            capabilities: CAP_LZ4 | CAP_VERIFY,
            role: Role::Source,
            nonce: [7; 32],
            authenticated: true,
        }
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&hello());
        round_trip(&Hello {
            role: Role::Destination,
            authenticated: false,
            capabilities: u64::MAX,
            page_size: 1 << 16,
            ..hello()
        });
        round_trip(&Auth { mac: [0xa5; 32] });
        round_trip(&Layout::default());
        round_trip(&Layout {
            vmas: vec![
                VmaDesc {
                    start: 0x40_0000,
                    end: 0x40_2000,
                    prot: 5,
                    flags: 2,
                    name: "/usr/bin/pagehop-workload".into(),
                },
                VmaDesc {
                    start: 0x7fff_0000_0000,
                    end: 0x7fff_0002_1000,
                    prot: 3,
                    flags: 0,
                    name: String::new(),
                },
                VmaDesc {
                    start: 0x1000,
                    end: 0x2000,
                    prot: 0,
                    flags: u32::MAX,
                    name: "é".repeat(MAX_VMA_NAME / 2),
                },
            ],
        });
        round_trip(&EndOfRound {
            round: 3,
            pages: 1234,
            bytes_raw: 1234 * 4096,
            bytes_wire: 99_999,
        });
        round_trip(&Switchover {
            final_round: 9,
            postcopy: false,
        });
        round_trip(&Switchover {
            final_round: 2,
            postcopy: true,
        });
        round_trip(&Attach {
            session: 0xdead_beef_0123,
            lane: Lane::Priority,
            epoch: 3,
        });
        round_trip(&Pending {
            ranges: vec![(0x1000, 0x3000), (0x7fff_0000_0000, 0x7fff_0001_0000)],
            last: true,
        });
        round_trip(&Pending::default());
        round_trip(&Done {
            pages_sent: u64::MAX,
        });
        round_trip(&ErrorMsg {
            code: 17,
            message: "target exited".into(),
        });
        round_trip(&ErrorMsg {
            code: 0,
            message: "x".repeat(MAX_ERROR_MESSAGE),
        });
        round_trip(&Stats {
            json: r#"{"rounds":4,"downtime_ms":12.5}"#.into(),
        });
        round_trip(&VerifyDigests {
            start: 0x7f00_0000_0000,
            hashes: vec![],
        });
        round_trip(&VerifyDigests {
            start: 0x7f00_0000_0000,
            hashes: (0..MAX_HASHES as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect(),
        });
        round_trip(&VerifyResult {
            mismatch: None,
            pages_checked: 5,
        });
        round_trip(&VerifyResult {
            mismatch: Some(0),
            pages_checked: 5,
        });
        round_trip(&VerifyResult {
            mismatch: Some(0x7f00_1234_5000),
            pages_checked: 5,
        });
        round_trip(&LayoutAck { vmas: 7 });
        round_trip(&PageRequest {
            addr: 0x7f00_1234_5000,
            pages: 16,
        });
    }

    #[test]
    fn hello_rejects_bad_fields() {
        let mut p = Vec::new();
        hello().encode(&mut p);
        assert_eq!(p.len(), 48);
        for (offset, value, field) in [(2, 0u8, "role"), (2, 3, "role"), (3, 2, "authenticated")] {
            let mut bad = p.clone();
            bad[offset] = value;
            match Hello::decode(&bad) {
                Err(MsgError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}={value}: {other:?}"),
            }
        }
        for page_size in [0u32, 3, 4097] {
            let mut bad = p.clone();
            bad[4..8].copy_from_slice(&page_size.to_le_bytes());
            assert!(matches!(
                Hello::decode(&bad),
                Err(MsgError::Invalid {
                    field: "page_size",
                    ..
                })
            ));
        }
    }

    fn layout_payload(vmas: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut p = Vec::new();
        put_count(&mut p, vmas.len());
        for (start, end, name) in vmas {
            put_u64(&mut p, *start);
            put_u64(&mut p, *end);
            put_u32(&mut p, 0);
            put_u32(&mut p, 0);
            put_count(&mut p, name.len());
            p.extend_from_slice(name);
        }
        p
    }

    #[test]
    fn layout_validation() {
        Layout::decode(&layout_payload(&[(0x1000, 0x3000, b"ok")])).expect("valid");
        for (start, end) in [
            (0x2000, 0x2000),
            (0x3000, 0x1000),
            (0x1001, 0x3000),
            (0x1000, 0x3001),
        ] {
            match Layout::decode(&layout_payload(&[(0x1000, 0x2000, b""), (start, end, b"")])) {
                Err(MsgError::Vma { index, .. }) => assert_eq!(index, 1),
                other => panic!("{start:#x}-{end:#x}: {other:?}"),
            }
        }
        assert!(matches!(
            Layout::decode(&layout_payload(&[(0x1000, 0x2000, b"\xff\xfe")])),
            Err(MsgError::Utf8 { field: "name", .. })
        ));
        let long = vec![b'a'; MAX_VMA_NAME + 1];
        assert!(matches!(
            Layout::decode(&layout_payload(&[(0x1000, 0x2000, &long)])),
            Err(MsgError::TooLong { field: "name", .. })
        ));
    }

    #[test]
    fn counts_are_checked_before_allocating() {
        // A huge count with no elements behind it.
        let mut p = Vec::new();
        put_u32(&mut p, MAX_VMAS as u32);
        assert!(matches!(
            Layout::decode(&p),
            Err(MsgError::Short {
                field: "vma count",
                ..
            })
        ));
        let mut p = Vec::new();
        put_u32(&mut p, u32::MAX);
        assert!(matches!(
            Layout::decode(&p),
            Err(MsgError::TooLong {
                field: "vma count",
                ..
            })
        ));
        let mut p = Vec::new();
        put_u64(&mut p, 0);
        put_u32(&mut p, MAX_HASHES as u32 + 1);
        assert!(matches!(
            VerifyDigests::decode(&p),
            Err(MsgError::TooLong { .. })
        ));
        let mut p = Vec::new();
        put_u32(&mut p, 1);
        put_u32(&mut p, u32::MAX);
        assert!(matches!(
            ErrorMsg::decode(&p),
            Err(MsgError::TooLong { .. })
        ));
    }

    #[test]
    fn long_strings_are_cut_at_char_boundaries() {
        let m = ErrorMsg {
            code: 1,
            message: "ü".repeat(MAX_ERROR_MESSAGE),
        };
        let mut p = Vec::new();
        m.encode(&mut p);
        assert!(p.len() <= FrameKind::Error.max_payload() as usize);
        let got = ErrorMsg::decode(&p).expect("decode");
        assert_eq!(got.message.len(), MAX_ERROR_MESSAGE);
        assert!(m.message.starts_with(&got.message));
    }

    #[test]
    fn verify_result_flag_is_canonical() {
        let mut p = Vec::new();
        VerifyResult {
            mismatch: None,
            pages_checked: 1,
        }
        .encode(&mut p);
        let mut bad = p.clone();
        bad[0] = 2;
        assert!(VerifyResult::decode(&bad).is_err());
        let mut bad = p;
        bad[1] = 1;
        assert!(VerifyResult::decode(&bad).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = Hello::decode(&bytes);
            let _ = Auth::decode(&bytes);
            let _ = Layout::decode(&bytes);
            let _ = EndOfRound::decode(&bytes);
            let _ = Switchover::decode(&bytes);
            let _ = Done::decode(&bytes);
            let _ = ErrorMsg::decode(&bytes);
            let _ = Stats::decode(&bytes);
            let _ = VerifyDigests::decode(&bytes);
            let _ = VerifyResult::decode(&bytes);
            let _ = PageRequest::decode(&bytes);
        }
    }
}
