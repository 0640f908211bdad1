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
//! Senders that keep page data in their own buffers build the header with
//! [`frame_header`] from the payload's parts and send header and parts as one
//! vectored write. Blocking receivers use [`FrameReader`]; non-blocking ones
//! use [`decode_header`] and [`check_crc`] on bytes they buffered themselves.

use std::io::{self, Read};

/// The header's first four bytes.
pub const MAGIC: [u8; 4] = *b"PHOP";
/// The only wire protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// Bytes of the header covered by the crc (everything before the crc field).
const CRC_COVERED: usize = 12;

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
}

const KIB: u32 = 1024;
const MIB: u32 = 1024 * KIB;

impl FrameKind {
    /// Every kind, in wire-value order.
    pub const ALL: [FrameKind; 15] = [
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
            | FrameKind::Attach => 4 * KIB,
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

/// The header of a frame whose payload is the concatenation of `parts`.
///
/// The payload must not exceed `kind.max_payload()`; a longer one (or one
/// longer than `u32::MAX`) gets a length the receiver refuses with
/// [`FrameError::TooLong`].
pub fn frame_header(kind: FrameKind, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).unwrap_or(u32::MAX);
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    header[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    header[8..12].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..CRC_COVERED]);
    for part in parts {
        crc.update(part);
    }
    header[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
    header
}

/// Appends a whole frame (header and payload) to `out`.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&frame_header(kind, &[payload]));
    out.extend_from_slice(payload);
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Validates a header: magic, version, kind and length cap, in that order.
/// Returns the kind, the payload length and the crc the payload must match.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<(FrameKind, u32, u32), FrameError> {
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(FrameError::Magic { got: magic });
    }
    let version = le_u16(header, 4);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let kind = FrameKind::try_from(le_u16(header, 6))?;
    let len = le_u32(header, 8);
    let max = kind.max_payload();
    if len > max {
        return Err(FrameError::TooLong { kind, len, max });
    }
    Ok((kind, len, le_u32(header, 12)))
}

/// Checks a received payload against its (already decoded) header: its
/// length and its crc.
pub fn check_crc(header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<(), FrameError> {
    let (kind, len, expected) = decode_header(header)?;
    if payload.len() != len as usize {
        return Err(FrameError::PayloadLen {
            kind,
            expected: len,
            got: payload.len(),
        });
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..CRC_COVERED]);
    crc.update(payload);
    let actual = crc.finalize();
    if actual != expected {
        return Err(FrameError::Crc {
            kind,
            len,
            expected,
            actual,
        });
    }
    Ok(())
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

/// Reads frames from a blocking byte stream into one reusable buffer.
///
/// An I/O error (including `WouldBlock`) mid-frame loses the frame's
/// position in the stream: use [`decode_header`] and [`check_crc`] with your
/// own buffering on non-blocking sockets.
pub struct FrameReader<R: Read> {
    inner: R,
    /// Grows to the largest payload seen; never shrinks.
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
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
        let (kind, len, _) = decode_header(&header)?;
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
        check_crc(&header, payload)?;
        Ok((kind, &self.buf[..len]))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(kind, payload, &mut out);
        out
    }

    #[test]
    fn layout_constants() {
        assert_eq!(u32::from_le_bytes(MAGIC), 0x504f_4850);
        let f = frame(FrameKind::Done, b"");
        assert_eq!(f.len(), HEADER_LEN);
        assert_eq!(&f[0..4], b"PHOP");
        assert_eq!(&f[4..6], &[1, 0]);
        assert_eq!(&f[6..8], &[7, 0]);
        assert_eq!(&f[8..12], &[0, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes([f[12], f[13], f[14], f[15]]),
            crc32fast::hash(&f[..12])
        );
    }

    #[test]
    fn kind_values_round_trip() {
        assert!(FrameKind::from_u16(0).is_none());
        assert!(FrameKind::from_u16(16).is_none());
        assert!(FrameKind::from_u16(u16::MAX).is_none());
        for (i, kind) in FrameKind::ALL.iter().enumerate() {
            assert_eq!(*kind as u16 as usize, i + 1);
            assert_eq!(FrameKind::from_u16(*kind as u16), Some(*kind));
            assert!(kind.max_payload() >= 4096, "{kind}");
        }
        assert_eq!(FrameKind::Pages.max_payload(), 8 * 1024 * 1024 + 64 * 1024);
        assert_eq!(FrameKind::Layout.max_payload(), 4 * 1024 * 1024);
        assert_eq!(FrameKind::VerifyDigests.max_payload(), 1024 * 1024);
        assert_eq!(FrameKind::Stats.max_payload(), 64 * 1024);
        assert_eq!(FrameKind::Error.max_payload(), 64 * 1024);
        assert_eq!(FrameKind::Hello.max_payload(), 4096);
    }

    #[test]
    fn every_kind_round_trips_in_one_stream() {
        let mut stream = Vec::new();
        for kind in FrameKind::ALL {
            let payload: Vec<u8> = (0..(kind as usize * 37)).map(|i| i as u8).collect();
            encode_frame(kind, &payload, &mut stream);
        }
        let mut reader = FrameReader::new(&stream[..]);
        for kind in FrameKind::ALL {
            let expected: Vec<u8> = (0..(kind as usize * 37)).map(|i| i as u8).collect();
            let (got_kind, payload) = reader.read_frame().expect("frame");
            assert_eq!(got_kind, kind);
            assert_eq!(payload, &expected[..]);
        }
        assert!(matches!(reader.read_frame(), Err(FrameError::Closed)));
    }

    #[test]
    fn header_from_parts_matches_contiguous() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let whole = frame_header(FrameKind::Pages, &[&payload]);
        let split = frame_header(
            FrameKind::Pages,
            &[&payload[..10], &[], &payload[10..500], &payload[500..]],
        );
        assert_eq!(whole, split);
        let (kind, len, _) = decode_header(&split).expect("header");
        assert_eq!((kind, len), (FrameKind::Pages, 1000));
        check_crc(&split, &payload).expect("crc");
        assert!(matches!(
            check_crc(&split, &payload[1..]),
            Err(FrameError::PayloadLen { .. })
        ));
    }

    #[test]
    fn every_single_byte_corruption_is_caught() {
        let original = frame(FrameKind::EndOfRound, b"round 3: 12 pages, 49152 bytes");
        for pos in 0..original.len() {
            for flip in 1..=255u8 {
                let mut bad = original.clone();
                bad[pos] ^= flip;
                let mut reader = FrameReader::new(&bad[..]);
                if let Ok((kind, payload)) = reader.read_frame() {
                    panic!("byte {pos} ^ {flip:#x} went unnoticed: {kind} {payload:?}");
                }
            }
        }
    }

    #[test]
    fn truncation_at_every_length() {
        let original = frame(FrameKind::Stats, b"{\"pages\": 12}");
        assert!(matches!(
            FrameReader::new(&original[..0]).read_frame(),
            Err(FrameError::Closed)
        ));
        for cut in 1..original.len() {
            match FrameReader::new(&original[..cut]).read_frame() {
                Err(FrameError::Truncated { got, expected }) => {
                    assert_eq!(got, cut);
                    assert!(expected > got);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        FrameReader::new(&original[..])
            .read_frame()
            .expect("whole frame");
    }

    /// Serves a header, then fails if asked for anything more.
    struct HeaderOnly {
        header: [u8; HEADER_LEN],
        pos: usize,
    }

    impl Read for HeaderOnly {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= HEADER_LEN {
                return Err(io::Error::other("reader asked for payload bytes"));
            }
            let n = buf.len().min(HEADER_LEN - self.pos);
            buf[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn oversized_len_is_rejected_before_reading_or_allocating() {
        for kind in FrameKind::ALL {
            for len in [kind.max_payload() + 1, u32::MAX] {
                let mut header = frame_header(kind, &[]);
                header[8..12].copy_from_slice(&len.to_le_bytes());
                let mut reader = FrameReader::new(HeaderOnly { header, pos: 0 });
                match reader.read_frame() {
                    Err(FrameError::TooLong {
                        kind: k,
                        len: l,
                        max,
                    }) => {
                        assert_eq!((k, l, max), (kind, len, kind.max_payload()));
                    }
                    other => panic!("{kind} len {len}: {other:?}"),
                }
                assert_eq!(reader.buf.capacity(), 0);
            }
        }
        // A length at the cap is accepted and the payload read.
        let payload = vec![0xabu8; FrameKind::Hello.max_payload() as usize];
        let f = frame(FrameKind::Hello, &payload);
        let mut reader = FrameReader::new(&f[..]);
        assert_eq!(reader.read_frame().expect("frame at cap").1.len(), 4096);
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let mut f = frame(FrameKind::Hello, b"hi");
        f[4..6].copy_from_slice(&2u16.to_le_bytes());
        let err = FrameReader::new(&f[..])
            .read_frame()
            .expect_err("version 2");
        assert!(matches!(
            err,
            FrameError::Version {
                got: 2,
                supported: 1
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("version 2") && msg.contains("version 1"),
            "{msg}"
        );
    }

    #[test]
    fn bad_magic_and_kind() {
        let mut f = frame(FrameKind::Hello, b"");
        f[0] = b'X';
        assert!(matches!(
            FrameReader::new(&f[..]).read_frame(),
            Err(FrameError::Magic { .. })
        ));
        for kind in [0u16, 16, 0xffff] {
            let mut f = frame(FrameKind::Hello, b"");
            f[6..8].copy_from_slice(&kind.to_le_bytes());
            match FrameReader::new(&f[..]).read_frame() {
                Err(FrameError::Kind { kind: k }) => assert_eq!(k, kind),
                other => panic!("kind {kind}: {other:?}"),
            }
        }
    }

    /// Hands out one byte per read, with interruptions in between.
    struct Trickle<'a> {
        data: &'a [u8],
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.data.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.data[0];
            self.data = &self.data[1..];
            Ok(1)
        }
    }

    #[test]
    fn short_reads_and_interrupts() {
        let mut stream = frame(FrameKind::Pages, &[5u8; 300]);
        encode_frame(FrameKind::Done, &[1, 2, 3], &mut stream);
        let mut reader = FrameReader::new(Trickle {
            data: &stream,
            interrupt: false,
        });
        assert_eq!(
            reader.read_frame().expect("pages"),
            (FrameKind::Pages, &[5u8; 300][..])
        );
        assert_eq!(
            reader.read_frame().expect("done"),
            (FrameKind::Done, &[1u8, 2, 3][..])
        );
        assert!(matches!(reader.read_frame(), Err(FrameError::Closed)));
    }

    #[test]
    fn buffer_is_reused_across_frames() {
        let mut stream = Vec::new();
        encode_frame(FrameKind::Stats, &[1u8; 1000], &mut stream);
        encode_frame(FrameKind::Stats, &[2u8; 10], &mut stream);
        let mut reader = FrameReader::new(&stream[..]);
        assert_eq!(reader.read_frame().expect("first").1, &[1u8; 1000][..]);
        assert_eq!(reader.read_frame().expect("second").1, &[2u8; 10][..]);
        assert_eq!(reader.buf.len(), 1000);
    }
}
