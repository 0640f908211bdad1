//! The variable-length messages: strings and vectors behind a count, read
//! with the length-checked [`Cursor`]; fixed runs of fields inside them
//! (a `VmaDesc`'s integers, a `Pending` range) are wire structs.

use zerocopy::byteorder::little_endian::{U32, U64};

use pagehop_mem::SpaceKey;

use super::codec::{Cursor, message, put, put_count, put_str, wire_struct};
use super::{
    ErrorMsg, ImageChunk, Layout, MAX_ERROR_MESSAGE, MAX_HASHES, MAX_IMAGE_CHUNK, MAX_IMAGE_NAME,
    MAX_PENDING_RANGES, MAX_STATS_JSON, MAX_USER_ADDRESS, MAX_VMA_NAME, MAX_VMAS, MsgError,
    Pending, Stats, VerifyDigests, VmaDesc,
};
use crate::frame::FrameKind;

/// VMA addresses must be aligned to at least this.
const VMA_ALIGN: u64 = 4096;

/// Whether `[start, end)` is a non-empty range of whole 4 KiB pages.
fn is_page_range(start: u64, end: u64) -> bool {
    start < end
        && end <= MAX_USER_ADDRESS
        && start.is_multiple_of(VMA_ALIGN)
        && end.is_multiple_of(VMA_ALIGN)
}

wire_struct! {
    /// A `VmaDesc` up to its name.
    struct VmaWire (24 bytes) {
        start: U64,
        end: U64,
        prot: U32,
        flags: U32,
    }
}

/// Smallest encoded VmaDesc: four integers and an empty name.
const VMA_MIN_LEN: usize = size_of::<VmaWire>() + 4;

impl Layout {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put(out, &U32::new(self.space.0));
        put_count(out, self.vmas.len());
        for vma in &self.vmas {
            put(
                out,
                &VmaWire {
                    start: U64::new(vma.start),
                    end: U64::new(vma.end),
                    prot: U32::new(vma.prot),
                    flags: U32::new(vma.flags),
                },
            );
            put_str(out, &vma.name, MAX_VMA_NAME);
        }
    }

    /// Refuses a VMA that is empty, inverted or not 4 KiB aligned.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        Cursor::whole(FrameKind::Layout, payload, |c| {
            let space = SpaceKey(c.scalar::<U32>("space")?.get());
            let count = c.count("vma count", MAX_VMAS, VMA_MIN_LEN)?;
            let mut vmas = Vec::with_capacity(count);
            for index in 0..count {
                let vma: &VmaWire = c.fixed()?;
                let (start, end) = (vma.start.get(), vma.end.get());
                if !is_page_range(start, end) {
                    return Err(MsgError::Vma { index, start, end });
                }
                vmas.push(VmaDesc {
                    start,
                    end,
                    prot: vma.prot.get(),
                    flags: vma.flags.get(),
                    name: c.string("name", MAX_VMA_NAME)?,
                });
            }
            Ok(Self { space, vmas })
        })
    }
}
message!(Layout, FrameKind::Layout);

impl ErrorMsg {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put(out, &U32::new(self.code));
        put_str(out, &self.message, MAX_ERROR_MESSAGE);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        Cursor::whole(FrameKind::Error, payload, |c| {
            Ok(Self {
                code: c.scalar::<U32>("code")?.get(),
                message: c.string("message", MAX_ERROR_MESSAGE)?,
            })
        })
    }
}
message!(ErrorMsg, FrameKind::Error);

impl Stats {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.json, MAX_STATS_JSON);
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        Cursor::whole(FrameKind::Stats, payload, |c| {
            Ok(Self {
                json: c.string("json", MAX_STATS_JSON)?,
            })
        })
    }
}
message!(Stats, FrameKind::Stats);

impl VerifyDigests {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put(out, &U32::new(self.space.0));
        put(out, &U64::new(self.start));
        put_count(out, self.hashes.len());
        out.reserve(self.hashes.len() * 8);
        for &h in &self.hashes {
            put(out, &U64::new(h));
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        Cursor::whole(FrameKind::VerifyDigests, payload, |c| {
            let space = SpaceKey(c.scalar::<U32>("space")?.get());
            let start = c.scalar::<U64>("start")?.get();
            if !start.is_multiple_of(VMA_ALIGN) || start >= MAX_USER_ADDRESS {
                return Err(c.invalid("start", start));
            }
            let count = c.count("hash count", MAX_HASHES, size_of::<U64>())?;
            let hashes = c.slice::<U64>("hashes", count)?;
            Ok(Self {
                space,
                start,
                hashes: hashes.iter().map(|h| h.get()).collect(),
            })
        })
    }
}
message!(VerifyDigests, FrameKind::VerifyDigests);

wire_struct! {
    /// One `Pending` range.
    struct RangeWire (16 bytes) {
        start: U64,
        end: U64,
    }
}

impl Pending {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put(out, &U32::new(self.space.0));
        put(out, &u8::from(self.last));
        put_count(out, self.ranges.len());
        out.reserve(self.ranges.len() * size_of::<RangeWire>());
        for &(start, end) in &self.ranges {
            put(
                out,
                &RangeWire {
                    start: U64::new(start),
                    end: U64::new(end),
                },
            );
        }
    }

    /// Refuses an empty, inverted or unaligned range.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        Cursor::whole(FrameKind::Pending, payload, |c| {
            let space = SpaceKey(c.scalar::<U32>("space")?.get());
            let last = c.bool("last")?;
            let count = c.count("range count", MAX_PENDING_RANGES, size_of::<RangeWire>())?;
            let ranges = c.slice::<RangeWire>("ranges", count)?;
            let ranges = ranges
                .iter()
                .map(|r| match (r.start.get(), r.end.get()) {
                    (start, end) if is_page_range(start, end) => Ok((start, end)),
                    (start, _) => Err(c.invalid("range start", start)),
                })
                .collect::<Result<_, _>>()?;
            Ok(Self {
                space,
                ranges,
                last,
            })
        })
    }
}
message!(Pending, FrameKind::Pending);

/// `ImageChunk` flag bits.
const CHUNK_LZ4: u8 = 1;
const CHUNK_LAST: u8 = 2;

impl ImageChunk {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.name, MAX_IMAGE_NAME);
        put(out, &U64::new(self.offset));
        let flags = if self.lz4 { CHUNK_LZ4 } else { 0 } | if self.last { CHUNK_LAST } else { 0 };
        put(out, &flags);
        put(out, &U32::new(self.raw_len));
        put_count(out, self.data.len());
        out.extend_from_slice(&self.data);
    }

    /// Refuses unknown flags, an empty name, data over its cap, and raw
    /// data whose `raw_len` is not its length.
    pub fn decode(payload: &[u8]) -> Result<Self, MsgError> {
        Cursor::whole(FrameKind::ImageChunk, payload, |c| {
            let name = c.string("name", MAX_IMAGE_NAME)?;
            if name.is_empty() {
                return Err(c.invalid("name length", 0));
            }
            let offset = c.scalar::<U64>("offset")?.get();
            let flags: u8 = c.scalar::<u8>("flags")?;
            if flags & !(CHUNK_LZ4 | CHUNK_LAST) != 0 {
                return Err(c.invalid("flags", flags.into()));
            }
            let raw_len = c.scalar::<U32>("raw_len")?.get();
            if raw_len as usize > MAX_IMAGE_CHUNK {
                return Err(c.invalid("raw_len", raw_len.into()));
            }
            let count = c.count("data length", MAX_IMAGE_CHUNK, 1)?;
            let data = c.slice::<u8>("data", count)?.to_vec();
            let lz4 = flags & CHUNK_LZ4 != 0;
            if !lz4 && raw_len as usize != data.len() {
                return Err(c.invalid("raw_len", raw_len.into()));
            }
            Ok(Self {
                name,
                offset,
                lz4,
                last: flags & CHUNK_LAST != 0,
                raw_len,
                data,
            })
        })
    }
}
message!(ImageChunk, FrameKind::ImageChunk);
