//! Page batches: the payload of a `Pages` frame.
//!
//! ```text
//!  0       4       6       8       12        16        20        24
//!  +-------+-------+-------+-------+---------+---------+---------+
//!  | round | flags | rsvd  | count | data_len| raw_len |  space  |   batch header, LE
//!  +-------+-------+-------+-------+---------+---------+---------+
//!    u32     u16     u16=0   u32     u32       u32       u32
//!  +------------------------------------------------------------+
//!  | count × u64 entry: page address | ZERO_PAGE (bit 0)         |
//!  +------------------------------------------------------------+
//!  | data_len bytes: the non-zero pages, in entry order,        |
//!  | raw (data_len == raw_len) or one lz4 block (flags bit 0)   |
//!  +------------------------------------------------------------+
//! ```
//!
//! - `flags` bit 0 ([`FLAG_LZ4`]): the data is one `lz4_flex::block` block
//!   that decompresses to exactly `raw_len` bytes. Other bits must be 0.
//! - `count` is at most [`MAX_BATCH_PAGES`]; entries are strictly increasing,
//!   page-aligned and below 2^56. A page with [`ZERO_PAGE`] set has no data.
//! - `raw_len` is (entries without `ZERO_PAGE`) × page size.
//! - `space` names the address space the pages belong to (a
//!   `pagehop_mem::SpaceKey`: 0 for a single process, the pid in the tree's
//!   pid namespace for a process tree).
//!
//! A sender builds the prefix with [`batch_prefix`] and sends it, then the
//! page data (its own buffer, or the [`compress_pages`] output) as a
//! separate slice; [`encode_batch`] does both into one buffer. A receiver
//! calls [`decode_batch`] and iterates the pages.

use std::borrow::Cow;

use pagehop_mem::SpaceKey;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Batch header length in bytes.
pub const BATCH_HEADER_LEN: usize = 24;
/// Most pages in one batch.
pub const MAX_BATCH_PAGES: usize = 2048;
/// Entry flag: the page is all zeroes and has no data.
pub const ZERO_PAGE: u64 = 1;
/// Header flag: the data is one lz4 block.
pub const FLAG_LZ4: u16 = 1;
/// Page addresses are below this.
pub const ADDR_LIMIT: u64 = 1 << 56;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("page size {page_size} is not a power of two of at least 8")]
    PageSize { page_size: usize },
    #[error("batch of {len} bytes is shorter than its {need}-byte header")]
    Short { len: usize, need: usize },
    #[error("batch has unknown flags {flags:#06x}")]
    Flags { flags: u16 },
    #[error("batch has a non-zero reserved field ({value:#x})")]
    Reserved { value: u16 },
    #[error("batch of {count} pages exceeds the cap of {max}")]
    TooManyPages { count: u32, max: usize },
    #[error("batch payload is {len} bytes, header and entries say {expected}")]
    Length { len: usize, expected: u64 },
    #[error("batch entry {index} ({entry:#x}): address not page-aligned or above 2^56")]
    Address { index: usize, entry: u64 },
    #[error("batch entry {index}: address {addr:#x} does not follow {prev:#x}")]
    Order { index: usize, addr: u64, prev: u64 },
    #[error("batch raw_len {raw_len} does not match {pages} non-zero pages of {page_size} bytes")]
    RawLen {
        raw_len: u32,
        pages: usize,
        page_size: usize,
    },
    #[error("uncompressed batch has data_len {data_len} but raw_len {raw_len}")]
    DataLen { data_len: u32, raw_len: u32 },
    #[error("lz4 batch data does not decompress")]
    Lz4 {
        #[source]
        source: lz4_flex::block::DecompressError,
    },
    #[error("lz4 batch data decompresses to {got} bytes, expected {expected}")]
    Lz4Size { got: usize, expected: usize },
    #[error(
        "lz4 batch data of {data_len} bytes cannot decompress to {raw_len} bytes (lz4 expands at most {LZ4_MAX_RATIO}x)"
    )]
    Lz4Ratio { data_len: u32, raw_len: u32 },
}

/// The batch header as it is on the wire.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
struct BatchHeader {
    round: U32,
    flags: U16,
    reserved1: U16,
    count: U32,
    data_len: U32,
    raw_len: U32,
    space: U32,
}

const _: () = assert!(size_of::<BatchHeader>() == BATCH_HEADER_LEN);

/// lz4 turns one input byte into at most 255 output bytes (a match length
/// extension byte), so a block of `n` bytes decompresses to at most `255 n`.
const LZ4_MAX_RATIO: u64 = 255;

/// Whether to compress page data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    Off,
    /// lz4 unless it makes the data larger.
    Lz4,
    /// lz4 only if it saves at least 1/8 of the bytes.
    Auto,
}

/// The entry for a page at `addr` (page-aligned).
pub fn entry(addr: u64, zero: bool) -> u64 {
    if zero { addr | ZERO_PAGE } else { addr }
}

/// Whether `page` is all zero bytes.
pub fn is_zero_page(page: &[u8]) -> bool {
    // OR 256-byte blocks of u128 lanes together (the compiler vectorises
    // this) and stop at the first non-zero block.
    let mut blocks = page.chunks_exact(256);
    for block in &mut blocks {
        let mut acc = 0u128;
        for lane in block.chunks_exact(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(lane);
            acc |= u128::from_ne_bytes(b);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Compresses `data` into `out` (replacing its contents) unless `mode` says
/// not to. Returns true if `out` holds an lz4 block worth sending instead of
/// `data`; false leaves `out` in an unspecified state.
pub fn compress_pages(data: &[u8], mode: Compress, out: &mut Vec<u8>) -> bool {
    let limit = match mode {
        Compress::Off => return false,
        Compress::Lz4 => data.len(),
        Compress::Auto => data.len() - data.len() / 8,
    };
    if data.is_empty() {
        return false;
    }
    out.clear();
    out.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
    match lz4_flex::block::compress_into(data, out) {
        Ok(n) if n <= limit => {
            out.truncate(n);
            true
        }
        _ => false,
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends the batch header and entries to `out`. The data (`data_len`
/// bytes, `raw_len` once decompressed) follows as a separate slice.
pub fn batch_prefix(
    space: SpaceKey,
    round: u32,
    lz4: bool,
    entries: &[u64],
    data_len: u32,
    raw_len: u32,
    out: &mut Vec<u8>,
) {
    out.reserve(BATCH_HEADER_LEN + entries.len() * 8);
    let header = BatchHeader {
        round: U32::new(round),
        flags: U16::new(if lz4 { FLAG_LZ4 } else { 0 }),
        reserved1: U16::ZERO,
        count: U32::new(len_u32(entries.len())),
        data_len: U32::new(data_len),
        raw_len: U32::new(raw_len),
        space: U32::new(space.0),
    };
    out.extend_from_slice(header.as_bytes());
    for &e in entries {
        out.extend_from_slice(U64::new(e).as_bytes());
    }
}

/// Appends a whole batch payload to `out`: the prefix, then `data` (the
/// non-zero pages in entry order) compressed as `mode` says. `scratch`
/// holds the compressed data in between.
pub fn encode_batch(
    space: SpaceKey,
    round: u32,
    entries: &[u64],
    data: &[u8],
    mode: Compress,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let lz4 = compress_pages(data, mode, scratch);
    let wire: &[u8] = if lz4 { scratch } else { data };
    batch_prefix(
        space,
        round,
        lz4,
        entries,
        len_u32(wire.len()),
        len_u32(data.len()),
        out,
    );
    out.extend_from_slice(wire);
}

/// A validated batch. Iterate it for `(address, Some(page) | None)`, where
/// `None` is a zero page.
#[derive(Debug)]
pub struct DecodedBatch<'a> {
    pub space: SpaceKey,
    pub round: u32,
    /// `count` little-endian entries.
    entries: &'a [U64],
    /// The non-zero pages, decompressed.
    data: Cow<'a, [u8]>,
    page_size: usize,
    compressed: bool,
}

/// Validates a `Pages` payload and, if it is lz4, decompresses its data into
/// `scratch` (grown as needed to exactly the expected size, never beyond
/// `MAX_BATCH_PAGES × page_size`, nor beyond what the lz4 block could
/// decompress to: 255 times its size).
pub fn decode_batch<'a>(
    payload: &'a [u8],
    page_size: usize,
    scratch: &'a mut Vec<u8>,
) -> Result<DecodedBatch<'a>, BatchError> {
    if !page_size.is_power_of_two() || page_size < 8 {
        return Err(BatchError::PageSize { page_size });
    }
    let Ok((header, rest)) = BatchHeader::ref_from_prefix(payload) else {
        return Err(BatchError::Short {
            len: payload.len(),
            need: BATCH_HEADER_LEN,
        });
    };
    let round = header.round.get();
    let flags = header.flags.get();
    if flags & !FLAG_LZ4 != 0 {
        return Err(BatchError::Flags { flags });
    }
    let compressed = flags & FLAG_LZ4 != 0;
    let reserved = header.reserved1.get();
    if reserved != 0 {
        return Err(BatchError::Reserved { value: reserved });
    }
    let space = SpaceKey(header.space.get());
    let count = header.count.get();
    if count as usize > MAX_BATCH_PAGES {
        return Err(BatchError::TooManyPages {
            count,
            max: MAX_BATCH_PAGES,
        });
    }
    let data_len = header.data_len.get();
    let raw_len = header.raw_len.get();
    // The entries, then exactly data_len bytes of data.
    let split = <[U64]>::ref_from_prefix_with_elems(rest, count as usize)
        .ok()
        .filter(|(_, data)| data.len() as u64 == u64::from(data_len));
    let Some((entries, data)) = split else {
        return Err(BatchError::Length {
            len: payload.len(),
            expected: BATCH_HEADER_LEN as u64 + u64::from(count) * 8 + u64::from(data_len),
        });
    };

    let offset_mask = page_size as u64 - 1;
    let mut prev: Option<u64> = None;
    let mut data_pages = 0usize;
    for (index, entry) in entries.iter().map(|e| e.get()).enumerate() {
        let addr = entry & !ZERO_PAGE;
        if addr & offset_mask != 0 || addr >= ADDR_LIMIT {
            return Err(BatchError::Address { index, entry });
        }
        match prev {
            Some(prev) if addr <= prev => {
                return Err(BatchError::Order { index, addr, prev });
            }
            _ => prev = Some(addr),
        }
        if entry & ZERO_PAGE == 0 {
            data_pages += 1;
        }
    }
    if data_pages as u64 * page_size as u64 != u64::from(raw_len) {
        return Err(BatchError::RawLen {
            raw_len,
            pages: data_pages,
            page_size,
        });
    }

    let raw_len = raw_len as usize;
    let data = if !compressed {
        if data.len() != raw_len {
            return Err(BatchError::DataLen {
                data_len,
                raw_len: raw_len as u32,
            });
        }
        Cow::Borrowed(data)
    } else if raw_len == 0 {
        // Nothing to decompress; an empty block is the only valid data.
        if !data.is_empty() {
            return Err(BatchError::Lz4Size {
                got: data.len(),
                expected: 0,
            });
        }
        Cow::Borrowed(data)
    } else {
        // Refused before the scratch buffer grows for it: a few bytes must
        // not make the decoder allocate up to 4 GiB (large page sizes).
        if raw_len as u64 > u64::from(data_len) * LZ4_MAX_RATIO {
            return Err(BatchError::Lz4Ratio {
                data_len,
                raw_len: raw_len as u32,
            });
        }
        if scratch.len() < raw_len {
            scratch.resize(raw_len, 0);
        }
        let out = &mut scratch[..raw_len];
        let got = lz4_flex::block::decompress_into(data, out)
            .map_err(|source| BatchError::Lz4 { source })?;
        if got != raw_len {
            return Err(BatchError::Lz4Size {
                got,
                expected: raw_len,
            });
        }
        Cow::Borrowed(&scratch[..raw_len])
    };

    Ok(DecodedBatch {
        space,
        round,
        entries,
        data,
        page_size,
        compressed,
    })
}

impl<'a> DecodedBatch<'a> {
    /// Number of pages (zero pages included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of zero pages.
    pub fn zero_pages(&self) -> usize {
        self.len() - self.data.len() / self.page_size
    }

    /// The non-zero pages, decompressed, in entry order.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether the data came as lz4 on the wire.
    pub fn was_compressed(&self) -> bool {
        self.compressed
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            entries: self.entries.iter(),
            data: &self.data,
            page_size: self.page_size,
        }
    }
}

impl<'b> IntoIterator for &'b DecodedBatch<'_> {
    type Item = (u64, Option<&'b [u8]>);
    type IntoIter = BatchIter<'b>;

    fn into_iter(self) -> BatchIter<'b> {
        self.iter()
    }
}

/// Pages of a [`DecodedBatch`]: `(address, Some(page))`, or `None` for a
/// zero page.
pub struct BatchIter<'b> {
    entries: std::slice::Iter<'b, U64>,
    /// Data not yet handed out.
    data: &'b [u8],
    page_size: usize,
}

impl<'b> Iterator for BatchIter<'b> {
    type Item = (u64, Option<&'b [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entries.next()?.get();
        let addr = entry & !ZERO_PAGE;
        if entry & ZERO_PAGE != 0 {
            return Some((addr, None));
        }
        // decode_batch checked that the data holds one page per non-zero
        // entry, so the split never comes up short.
        let (page, rest) = self
            .data
            .split_at_checked(self.page_size)
            .unwrap_or((self.data, &[]));
        self.data = rest;
        Some((addr, Some(page)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

#[cfg(test)]
mod tests;
