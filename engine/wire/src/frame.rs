//! Frames: a fixed 16-byte header and a checksummed payload.
//!
//! ```text
//!  0       4       6       8          12         16
//!  +-------+-------+-------+----------+----------+---- payload (len bytes) ----+
//!  | magic |version| kind  |   len    |  crc32   |                             |
//!  +-------+-------+-------+----------+----------+-----------------------------+
//!   b"PHOP"  u16 LE  u16 LE   u32 LE     u32 LE
//! ```
//!
//! - `magic` is the four bytes `PHOP` (0x504f4850 read as a little-endian u32).
//! - `version` is [`PROTOCOL_VERSION`]; any other value is refused.
//! - `kind` is a [`FrameKind`]; 0 and unknown values are refused.
//! - `len` is the payload length, at most [`FrameKind::max_payload`] for the
//!   kind. A reader checks it before it allocates anything.
//! - `crc32` (IEEE, as computed by crc32fast) covers header bytes 0..12
//!   followed by the payload.
//!
//! After an authenticated handshake frames are sealed instead ([`crate::seal`]):
//! `len` counts the ciphertext and its 16-byte tag, `crc32` is zero, and the
//! AEAD's tag, with the whole header as associated data, replaces the crc.
//! [`FrameSeal`] finishes frames of either kind on the sending end,
//! [`FrameOpen`] checks them on the receiving end.
//!
//! Senders that keep page data in their own buffers build the header with
//! [`frame_header`] from the payload's parts and send header and parts as one
//! vectored write. Blocking receivers use [`FrameReader`]; non-blocking ones
//! use [`decode_header`] and [`check_crc`] on bytes they buffered themselves.

use std::io::{self, Read};

use crate::seal::{OpeningKey, SealError, SealingKey, TAG_LEN};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The header's first four bytes.
pub const MAGIC: [u8; 4] = *b"PHOP";
/// The only wire protocol version this build speaks.
/// Version 2: every page batch, layout, pending list, page request and
/// verify digest names its address space (multi-process migrations).
/// Version 3: frames after the handshake are sealed (AES-256-GCM), `Hello`
/// says how a connection is protected, and `Auth` covers both `Hello`s.
/// Version 4: every switch commits (`Restored`, `Commit`, then `Done`), not
/// only CRIU's.
pub const PROTOCOL_VERSION: u16 = 4;
/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the connection")]
    Closed,
    #[error("connection closed mid-frame: got {got} of {expected} bytes")]
    Truncated { got: usize, expected: usize },
    #[error("bad frame magic {got:02x?}: peer is not speaking the pagehop protocol")]
    Magic { got: [u8; 4] },
    #[error("peer speaks wire protocol version {got}, this build supports version {supported}")]
    Version { got: u16, supported: u16 },
    #[error("unknown frame kind {kind}")]
    Kind { kind: u16 },
    #[error("{kind} frame of {len} bytes exceeds its cap of {max} bytes")]
    TooLong { kind: FrameKind, len: u32, max: u32 },
    #[error(
        "{kind} frame of {len} bytes: crc {actual:#010x} does not match header crc {expected:#010x}"
    )]
    Crc {
        kind: FrameKind,
        len: u32,
        expected: u32,
        actual: u32,
    },
    #[error("{kind} frame header says {expected} payload bytes, got {got}")]
    PayloadLen {
        kind: FrameKind,
        expected: u32,
        got: usize,
    },
    #[error("{kind} frame refused")]
    Sealed {
        kind: FrameKind,
        #[source]
        source: SealError,
    },
    #[error(
        "{kind} frame of {len} bytes before the handshake finished: at most {max} are read then"
    )]
    BeforeAuth { kind: FrameKind, len: u32, max: u32 },
    #[error("reading frame")]
    Io {
        #[source]
        source: io::Error,
    },
}

/// What a frame carries. Zero is not a kind; unknown values are refused.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Hello = 1,
    Auth = 2,
    Layout = 3,
    Pages = 4,
    EndOfRound = 5,
    Switchover = 6,
    Done = 7,
    Error = 8,
    Stats = 9,
    VerifyDigests = 10,
    VerifyResult = 11,
    PageRequest = 12,
    LayoutAck = 13,
    Attach = 14,
    Pending = 15,
    ImageChunk = 16,
    Restored = 17,
    Commit = 18,
}

const KIB: u32 = 1024;
const MIB: u32 = 1024 * KIB;

impl FrameKind {
    /// Every kind, in wire-value order.
    pub const ALL: [FrameKind; 18] = [
        FrameKind::Hello,
        FrameKind::Auth,
        FrameKind::Layout,
        FrameKind::Pages,
        FrameKind::EndOfRound,
        FrameKind::Switchover,
        FrameKind::Done,
        FrameKind::Error,
        FrameKind::Stats,
        FrameKind::VerifyDigests,
        FrameKind::VerifyResult,
        FrameKind::PageRequest,
        FrameKind::LayoutAck,
        FrameKind::Attach,
        FrameKind::Pending,
        FrameKind::ImageChunk,
        FrameKind::Restored,
        FrameKind::Commit,
    ];

    /// The kind with wire value `value`, if there is one.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u16 == value)
    }

    /// Largest payload a frame of this kind may carry.
    pub fn max_payload(self) -> u32 {
        match self {
            // A full batch of 4 KiB pages plus its header and entries.
            FrameKind::Pages => 8 * MIB + 64 * KIB,
            FrameKind::Layout => 4 * MIB,
            // A chunk of an image file plus its name and header.
            FrameKind::ImageChunk => 4 * MIB + 4 * KIB,
            FrameKind::VerifyDigests | FrameKind::Pending => MIB,
            FrameKind::Stats | FrameKind::Error => 64 * KIB,
            FrameKind::Hello
            | FrameKind::Auth
            | FrameKind::EndOfRound
            | FrameKind::Switchover
            | FrameKind::Done
            | FrameKind::VerifyResult
            | FrameKind::PageRequest
            | FrameKind::LayoutAck
            | FrameKind::Attach
            | FrameKind::Restored
            | FrameKind::Commit => 4 * KIB,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "Hello",
            FrameKind::Auth => "Auth",
            FrameKind::Layout => "Layout",
            FrameKind::Pages => "Pages",
            FrameKind::EndOfRound => "EndOfRound",
            FrameKind::Switchover => "Switchover",
            FrameKind::Done => "Done",
            FrameKind::Error => "Error",
            FrameKind::Stats => "Stats",
            FrameKind::VerifyDigests => "VerifyDigests",
            FrameKind::VerifyResult => "VerifyResult",
            FrameKind::PageRequest => "PageRequest",
            FrameKind::LayoutAck => "LayoutAck",
            FrameKind::Attach => "Attach",
            FrameKind::Pending => "Pending",
            FrameKind::ImageChunk => "ImageChunk",
            FrameKind::Restored => "Restored",
            FrameKind::Commit => "Commit",
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u16> for FrameKind {
    type Error = FrameError;

    fn try_from(kind: u16) -> Result<Self, FrameError> {
        Self::from_u16(kind).ok_or(FrameError::Kind { kind })
    }
}

/// The header as it is on the wire.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
struct FrameHeader {
    magic: [u8; 4],
    version: U16,
    kind: U16,
    len: U32,
    crc: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == HEADER_LEN);

/// Bytes of the header covered by the crc (everything before the crc field).
const CRC_COVERED: usize = std::mem::offset_of!(FrameHeader, crc);

const _: () = assert!(CRC_COVERED == 12);

/// The crc of a frame: header bytes 0..12, then the payload.
fn frame_crc(header: &[u8], parts: &[&[u8]]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..CRC_COVERED]);
    for part in parts {
        crc.update(part);
    }
    crc.finalize()
}

/// The header of a frame whose payload is the concatenation of `parts`.
///
/// The payload must not exceed `kind.max_payload()`; a longer one (or one
/// longer than `u32::MAX`) gets a length the receiver refuses with
/// [`FrameError::TooLong`].
pub fn frame_header(kind: FrameKind, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = header_without_crc(kind, total);
    header.crc = U32::new(frame_crc(header.as_bytes(), parts));
    zerocopy::transmute!(header)
}

/// A header for `len` payload bytes with its crc field zero (a length past
/// `u32::MAX` saturates, for the receiver to refuse).
fn header_without_crc(kind: FrameKind, len: usize) -> FrameHeader {
    FrameHeader {
        magic: MAGIC,
        version: U16::new(PROTOCOL_VERSION),
        kind: U16::new(kind as u16),
        len: U32::new(u32::try_from(len).unwrap_or(u32::MAX)),
        crc: U32::ZERO,
    }
}

/// Appends a whole frame (header and payload) to `out`.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&frame_header(kind, &[payload]));
    out.extend_from_slice(payload);
}

/// Validates a plain frame's header: magic, version, kind and length cap,
/// in that order. Returns the kind, the payload length and the crc the
/// payload must match.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<(FrameKind, u32, u32), FrameError> {
    decode_header_with(header, 0)
}

/// [`decode_header`] for frames that carry `trailer` bytes (a tag) beyond
/// their kind's payload cap.
fn decode_header_with(
    header: &[u8; HEADER_LEN],
    trailer: usize,
) -> Result<(FrameKind, u32, u32), FrameError> {
    let h: &FrameHeader = zerocopy::transmute_ref!(header);
    if h.magic != MAGIC {
        return Err(FrameError::Magic { got: h.magic });
    }
    if h.version.get() != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            got: h.version.get(),
            supported: PROTOCOL_VERSION,
        });
    }
    let kind = FrameKind::try_from(h.kind.get())?;
    let (len, max) = (h.len.get(), kind.max_payload() + trailer as u32);
    if len > max {
        return Err(FrameError::TooLong { kind, len, max });
    }
    Ok((kind, len, h.crc.get()))
}

/// Checks a received payload against its (already decoded) header: its
/// length and its crc. Returns the frame's kind.
pub fn check_crc(header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<FrameKind, FrameError> {
    let (kind, len, expected) = decode_with_payload(header, payload.len(), 0)?;
    let actual = frame_crc(header, &[payload]);
    if actual != expected {
        return Err(FrameError::Crc {
            kind,
            len,
            expected,
            actual,
        });
    }
    Ok(kind)
}

/// [`decode_header_with`], and the payload received must be as long as
/// the header says.
fn decode_with_payload(
    header: &[u8; HEADER_LEN],
    payload_len: usize,
    trailer: usize,
) -> Result<(FrameKind, u32, u32), FrameError> {
    let (kind, len, crc) = decode_header_with(header, trailer)?;
    if payload_len != len as usize {
        return Err(FrameError::PayloadLen {
            kind,
            expected: len,
            got: payload_len,
        });
    }
    Ok((kind, len, crc))
}

/// Reads into `buf` until it is full or the reader reports end of file.
/// Returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(FrameError::Io { source }),
        }
    }
    Ok(got)
}

/// How one end finishes the frames it sends on a connection.
#[derive(Debug)]
pub enum FrameSeal {
    /// A crc32 over header and payload: integrity against accidents only.
    Crc,
    /// AES-256-GCM under the connection's key ([`crate::seal`]).
    Sealed(Box<SealingKey>),
}

impl FrameSeal {
    /// Bytes a frame carries after its payload: [`TAG_LEN`] when sealed.
    pub fn trailer_len(&self) -> usize {
        match self {
            FrameSeal::Crc => 0,
            FrameSeal::Sealed(_) => TAG_LEN,
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, FrameSeal::Sealed(_))
    }

    /// Finishes the frame in `buf`, whose payload is
    /// `buf[HEADER_LEN..HEADER_LEN + len]` with [`FrameSeal::trailer_len`]
    /// spare bytes after it: writes the header and, when sealed, encrypts
    /// the payload in place and writes the tag. Returns the frame's length.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than the frame.
    pub fn finish(
        &mut self,
        kind: FrameKind,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, FrameError> {
        let total = HEADER_LEN + len + self.trailer_len();
        let (header, rest) = buf[..total].split_at_mut(HEADER_LEN);
        match self {
            FrameSeal::Crc => header.copy_from_slice(&frame_header(kind, &[&rest[..len]])),
            FrameSeal::Sealed(key) => {
                header.copy_from_slice(header_without_crc(kind, len + TAG_LEN).as_bytes());
                let (payload, tag) = rest.split_at_mut(len);
                let sealed_tag = key
                    .seal(header, payload)
                    .map_err(|source| FrameError::Sealed { kind, source })?;
                tag.copy_from_slice(&sealed_tag);
            }
        }
        Ok(total)
    }

    /// [`FrameSeal::finish`] for a frame built in a vector from `start`:
    /// header space, then the payload up to the end; the tag is appended.
    pub fn finish_vec(
        &mut self,
        kind: FrameKind,
        frame: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), FrameError> {
        let len = frame.len() - start - HEADER_LEN;
        frame.resize(frame.len() + self.trailer_len(), 0);
        self.finish(kind, &mut frame[start..], len)?;
        Ok(())
    }
}

/// How one end checks the frames it receives on a connection.
#[derive(Debug)]
pub enum FrameOpen {
    Crc,
    Sealed(Box<OpeningKey>),
}

impl FrameOpen {
    /// Checks a whole received frame and, when sealed, decrypts its payload
    /// in place. Returns the kind and the plaintext payload's length.
    pub fn open(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &mut [u8],
    ) -> Result<(FrameKind, usize), FrameError> {
        match self {
            FrameOpen::Crc => Ok((check_crc(header, payload)?, payload.len())),
            FrameOpen::Sealed(key) => {
                let (kind, _, _) = decode_with_payload(header, payload.len(), TAG_LEN)?;
                let plain = key
                    .open(header, payload)
                    .map_err(|source| FrameError::Sealed { kind, source })?;
                Ok((kind, plain))
            }
        }
    }

    fn trailer_len(&self) -> usize {
        match self {
            FrameOpen::Crc => 0,
            FrameOpen::Sealed(_) => TAG_LEN,
        }
    }
}

/// Reads frames from a blocking byte stream into one reusable buffer.
///
/// An I/O error (including `WouldBlock`) mid-frame loses the frame's
/// position in the stream: use [`decode_header`] and [`check_crc`] with your
/// own buffering on non-blocking sockets.
pub struct FrameReader<R: Read> {
    inner: R,
    open: FrameOpen,
    /// Before authentication: the largest frame read at all.
    limit: Option<u32>,
    /// Grows to the largest payload seen; never shrinks.
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of plain (crc-checked) frames.
    pub fn new(inner: R) -> Self {
        Self::with(inner, FrameOpen::Crc)
    }

    pub fn with(inner: R, open: FrameOpen) -> Self {
        Self {
            inner,
            open,
            limit: None,
            buf: Vec::new(),
        }
    }

    /// How the frames read from now on are checked.
    pub fn set_open(&mut self, open: FrameOpen) {
        self.open = open;
    }

    /// Refuses, before reading their payload, frames longer than `limit`
    /// (`None`: each kind's own cap).
    pub fn set_limit(&mut self, limit: Option<u32>) {
        self.limit = limit;
    }

    /// Reads the next frame. The payload borrows the reader's buffer until
    /// the next call.
    ///
    /// End of stream before the first header byte is [`FrameError::Closed`];
    /// anywhere later it is [`FrameError::Truncated`].
    pub fn read_frame(&mut self) -> Result<(FrameKind, &[u8]), FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Err(FrameError::Closed);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                got,
                expected: HEADER_LEN,
            });
        }
        let (kind, len, _) = decode_header_with(&header, self.open.trailer_len())?;
        if let Some(max) = self.limit
            && len > max
        {
            return Err(FrameError::BeforeAuth { kind, len, max });
        }
        let len = len as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let payload = &mut self.buf[..len];
        let got = read_full(&mut self.inner, payload)?;
        if got < len {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + got,
                expected: HEADER_LEN + len,
            });
        }
        let (kind, plain) = self.open.open(&header, payload)?;
        Ok((kind, &self.buf[..plain]))
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The stream and how its frames are checked.
    pub fn into_parts(self) -> (R, FrameOpen) {
        (self.inner, self.open)
    }
}

#[cfg(test)]
mod tests;
