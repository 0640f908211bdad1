//! Page batches: the payload of a `Pages` frame.
//!
//! ```text
//!  0       4       6       8       12        16        20        24
//!  +-------+-------+-------+-------+---------+---------+---------+
//!  | round | flags | rsvd  | count | data_len| raw_len |  rsvd   |   batch header, LE
//!  +-------+-------+-------+-------+---------+---------+---------+
//!    u32     u16     u16=0   u32     u32       u32       u32=0
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
//!
//! A sender builds the prefix with [`batch_prefix`] and sends it, then the
//! page data (its own buffer, or the [`compress_pages`] output) as a
//! separate slice; [`encode_batch`] does both into one buffer. A receiver
//! calls [`decode_batch`] and iterates the pages.

use std::borrow::Cow;

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
    #[error("batch has non-zero reserved fields ({first:#x}, {second:#x})")]
    Reserved { first: u16, second: u32 },
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
    round: u32,
    lz4: bool,
    entries: &[u64],
    data_len: u32,
    raw_len: u32,
    out: &mut Vec<u8>,
) {
    out.reserve(BATCH_HEADER_LEN + entries.len() * 8);
    out.extend_from_slice(&round.to_le_bytes());
    out.extend_from_slice(&(if lz4 { FLAG_LZ4 } else { 0 }).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len_u32(entries.len()).to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.to_le_bytes());
    }
}

/// Appends a whole batch payload to `out`: the prefix, then `data` (the
/// non-zero pages in entry order) compressed as `mode` says. `scratch`
/// holds the compressed data in between.
pub fn encode_batch(
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
    pub round: u32,
    /// `count` × 8 bytes of little-endian entries.
    entries: &'a [u8],
    /// The non-zero pages, decompressed.
    data: Cow<'a, [u8]>,
    page_size: usize,
    compressed: bool,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
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
    if payload.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Short {
            len: payload.len(),
            need: BATCH_HEADER_LEN,
        });
    }
    let round = le_u32(payload, 0);
    let flags = le_u16(payload, 4);
    if flags & !FLAG_LZ4 != 0 {
        return Err(BatchError::Flags { flags });
    }
    let compressed = flags & FLAG_LZ4 != 0;
    let (reserved1, reserved2) = (le_u16(payload, 6), le_u32(payload, 20));
    if reserved1 != 0 || reserved2 != 0 {
        return Err(BatchError::Reserved {
            first: reserved1,
            second: reserved2,
        });
    }
    let count = le_u32(payload, 8);
    if count as usize > MAX_BATCH_PAGES {
        return Err(BatchError::TooManyPages {
            count,
            max: MAX_BATCH_PAGES,
        });
    }
    let data_len = le_u32(payload, 12);
    let raw_len = le_u32(payload, 16);
    let entries_len = count as usize * 8;
    let expected = BATCH_HEADER_LEN as u64 + entries_len as u64 + u64::from(data_len);
    if payload.len() as u64 != expected {
        return Err(BatchError::Length {
            len: payload.len(),
            expected,
        });
    }
    let entries = &payload[BATCH_HEADER_LEN..BATCH_HEADER_LEN + entries_len];
    let data = &payload[BATCH_HEADER_LEN + entries_len..];

    let offset_mask = page_size as u64 - 1;
    let mut prev: Option<u64> = None;
    let mut data_pages = 0usize;
    for (index, e) in entries.chunks_exact(8).enumerate() {
        let entry = le_u64(e);
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
        self.entries.len() / 8
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
            entries: self.entries.chunks_exact(8),
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
    entries: std::slice::ChunksExact<'b, u8>,
    /// Data not yet handed out.
    data: &'b [u8],
    page_size: usize,
}

impl<'b> Iterator for BatchIter<'b> {
    type Item = (u64, Option<&'b [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let entry = le_u64(self.entries.next()?);
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
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A page of one of several textures: zero, compressible, random.
    fn make_page(rng: &mut XorShift) -> Vec<u8> {
        match rng.below(4) {
            0 => vec![0; PAGE],
            1 => {
                let b = rng.next() as u8 | 1;
                (0..PAGE).map(|i| if i % 64 == 0 { b } else { 0 }).collect()
            }
            2 => (0..PAGE).map(|i| (i / 16) as u8).collect(),
            _ => (0..PAGE).map(|_| rng.next() as u8).collect(),
        }
    }

    /// Reference pages: address and contents, `None` for a zero page.
    type Pages = Vec<(u64, Option<Vec<u8>>)>;

    /// `n` random pages at increasing addresses: the naive reference list,
    /// their entries and their concatenated non-zero data.
    fn build(rng: &mut XorShift, n: usize) -> (Pages, Vec<u64>, Vec<u8>) {
        let mut addr = rng.below(1 << 20) * PAGE as u64;
        let mut pages = Vec::new();
        let mut entries = Vec::new();
        let mut data = Vec::new();
        for _ in 0..n {
            addr += (1 + rng.below(4)) * PAGE as u64;
            let page = make_page(rng);
            if is_zero_page(&page) {
                entries.push(entry(addr, true));
                pages.push((addr, None));
            } else {
                entries.push(entry(addr, false));
                data.extend_from_slice(&page);
                pages.push((addr, Some(page)));
            }
        }
        (pages, entries, data)
    }

    #[test]
    fn random_batches_round_trip() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut scratch = Vec::new();
        let mut dscratch = Vec::new();
        for iter in 0..200 {
            let n = match iter {
                0 => 0,
                1 => MAX_BATCH_PAGES,
                _ => rng.below(64) as usize,
            };
            let (pages, entries, data) = build(&mut rng, n);
            for mode in [Compress::Off, Compress::Lz4, Compress::Auto] {
                let mut payload = Vec::new();
                encode_batch(iter, &entries, &data, mode, &mut scratch, &mut payload);
                assert!(payload.len() <= super::super::FrameKind::Pages.max_payload() as usize);
                let batch = decode_batch(&payload, PAGE, &mut dscratch).expect("decode");
                assert_eq!(batch.round, iter);
                assert_eq!(batch.len(), n);
                if mode == Compress::Off || data.is_empty() {
                    assert!(!batch.was_compressed());
                }
                let got: Pages = batch
                    .iter()
                    .map(|(a, p)| (a, p.map(|p| p.to_vec())))
                    .collect();
                assert_eq!(got, pages, "iteration {iter}, {mode:?}");
                assert_eq!(
                    batch.zero_pages(),
                    pages.iter().filter(|p| p.1.is_none()).count()
                );
            }
        }
    }

    #[test]
    fn auto_needs_an_eighth_saved() {
        let mut out = Vec::new();
        let zeros = vec![0u8; 8 * PAGE];
        assert!(compress_pages(&zeros, Compress::Auto, &mut out));
        assert!(out.len() < zeros.len() / 8);
        assert!(!compress_pages(&zeros, Compress::Off, &mut out));
        let mut rng = XorShift(7);
        let noise: Vec<u8> = (0..8 * PAGE).map(|_| rng.next() as u8).collect();
        assert!(!compress_pages(&noise, Compress::Auto, &mut out));
        assert!(!compress_pages(&noise, Compress::Lz4, &mut out));
        // Half noise, half zeros: saves about half.
        let mut mixed = noise[..4 * PAGE].to_vec();
        mixed.resize(8 * PAGE, 0);
        assert!(compress_pages(&mixed, Compress::Auto, &mut out));
        // About 1/16 zeros: lz4 wins a little, Auto declines.
        let mut slight = noise[..(8 * PAGE - PAGE / 2)].to_vec();
        slight.resize(8 * PAGE, 0);
        assert!(compress_pages(&slight, Compress::Lz4, &mut out));
        assert!(!compress_pages(&slight, Compress::Auto, &mut out));
        assert!(!compress_pages(&[], Compress::Lz4, &mut out));
    }

    #[test]
    fn zero_page_detection() {
        assert!(is_zero_page(&[]));
        assert!(is_zero_page(&[0; PAGE]));
        assert!(is_zero_page(&[0; 300]));
        for pos in [0, 1, 15, 16, 255, 256, 2049, PAGE - 1] {
            let mut page = vec![0u8; PAGE];
            page[pos] = 0x80;
            assert!(!is_zero_page(&page), "byte {pos}");
        }
        let mut odd = vec![0u8; 300];
        odd[299] = 1;
        assert!(!is_zero_page(&odd));
    }

    fn valid_payload(lz4: bool) -> Vec<u8> {
        let entries = [
            entry(0x1000, false),
            entry(0x2000, true),
            entry(0x5000, false),
        ];
        let data: Vec<u8> = (0..2 * PAGE).map(|i| (i % 7) as u8).collect();
        let mut payload = Vec::new();
        let mode = if lz4 { Compress::Lz4 } else { Compress::Off };
        encode_batch(7, &entries, &data, mode, &mut Vec::new(), &mut payload);
        payload
    }

    fn expect_err(payload: &[u8], what: &str) -> BatchError {
        match decode_batch(payload, PAGE, &mut Vec::new()) {
            Err(e) => e,
            Ok(b) => panic!("{what}: decoded {} pages", b.len()),
        }
    }

    fn set_u32(p: &mut [u8], at: usize, v: u32) {
        p[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_entry(p: &mut [u8], index: usize, v: u64) {
        let at = BATCH_HEADER_LEN + index * 8;
        p[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn validation() {
        for lz4 in [false, true] {
            let good = valid_payload(lz4);
            let mut scratch = Vec::new();
            let b = decode_batch(&good, PAGE, &mut scratch).expect("valid");
            assert_eq!((b.round, b.len(), b.zero_pages()), (7, 3, 1));
            assert_eq!(b.was_compressed(), lz4);

            for cut in 0..good.len() {
                expect_err(&good[..cut], "truncated");
            }
            let mut long = good.clone();
            long.push(0);
            assert!(matches!(
                expect_err(&long, "long"),
                BatchError::Length { .. }
            ));

            let mut p = good.clone();
            p[4] |= 2;
            assert!(matches!(expect_err(&p, "flags"), BatchError::Flags { .. }));
            let mut p = good.clone();
            p[6] = 1;
            assert!(matches!(
                expect_err(&p, "rsvd"),
                BatchError::Reserved { .. }
            ));
            let mut p = good.clone();
            p[23] = 1;
            assert!(matches!(
                expect_err(&p, "rsvd2"),
                BatchError::Reserved { .. }
            ));
            let mut p = good.clone();
            set_u32(&mut p, 8, MAX_BATCH_PAGES as u32 + 1);
            assert!(matches!(
                expect_err(&p, "count"),
                BatchError::TooManyPages { .. }
            ));
            let mut p = good.clone();
            set_u32(&mut p, 8, u32::MAX);
            assert!(matches!(
                expect_err(&p, "count"),
                BatchError::TooManyPages { .. }
            ));
            let mut p = good.clone();
            set_u32(&mut p, 12, u32::MAX);
            assert!(matches!(
                expect_err(&p, "data_len"),
                BatchError::Length { .. }
            ));

            for (index, bad) in [(0, 0x1800u64), (0, 0x1002), (0, ADDR_LIMIT), (2, !1)] {
                let mut p = good.clone();
                set_entry(&mut p, index, bad);
                assert!(
                    matches!(expect_err(&p, "addr"), BatchError::Address { index: i, .. } if i == index),
                    "{bad:#x}"
                );
            }
            for (index, bad) in [(1, entry(0x1000, true)), (2, entry(0x1000, false))] {
                let mut p = good.clone();
                set_entry(&mut p, index, bad);
                assert!(matches!(expect_err(&p, "order"), BatchError::Order { .. }));
            }
            // Turning a data page into a zero page breaks raw_len.
            let mut p = good.clone();
            set_entry(&mut p, 0, entry(0x1000, true));
            assert!(matches!(expect_err(&p, "raw"), BatchError::RawLen { .. }));
            let mut p = good.clone();
            set_u32(&mut p, 16, 3 * PAGE as u32);
            assert!(matches!(expect_err(&p, "raw"), BatchError::RawLen { .. }));
            // A different page size makes raw_len or alignment wrong.
            assert!(decode_batch(&good, 2 * PAGE, &mut Vec::new()).is_err());
            for page_size in [0, 3, 4095] {
                assert!(matches!(
                    decode_batch(&good, page_size, &mut Vec::new()),
                    Err(BatchError::PageSize { .. })
                ));
            }
        }

        // Uncompressed data must be exactly raw_len.
        let mut p = valid_payload(false);
        p[BATCH_HEADER_LEN + 24..].fill(1);
        decode_batch(&p, PAGE, &mut Vec::new()).expect("any data bytes");

        // The lz4 flag on raw data: decompression fails or gives the wrong size.
        let mut p = valid_payload(false);
        p[4] = 1;
        assert!(matches!(
            expect_err(&p, "lz4 flag on raw"),
            BatchError::Lz4 { .. } | BatchError::Lz4Size { .. }
        ));
    }

    #[test]
    fn lz4_size_must_match_exactly() {
        // Compressible, but not so much that a one-page block could not
        // hold two pages (see the lz4 ratio check).
        let mut rng = XorShift(11);
        let data: Vec<u8> = (0..2 * PAGE)
            .map(|i| {
                if i % PAGE < PAGE / 4 {
                    rng.next() as u8
                } else {
                    3
                }
            })
            .collect();
        let mut block = Vec::new();
        assert!(compress_pages(&data[..PAGE], Compress::Lz4, &mut block));
        // A block of one page claimed as two pages.
        let mut p = Vec::new();
        let entries = [entry(0x1000, false), entry(0x2000, false)];
        batch_prefix(
            0,
            true,
            &entries,
            block.len() as u32,
            2 * PAGE as u32,
            &mut p,
        );
        p.extend_from_slice(&block);
        assert!(matches!(
            expect_err(&p, "short block"),
            BatchError::Lz4Size { got, expected } if got == PAGE && expected == 2 * PAGE
        ));
        // A block of two pages claimed as one page.
        assert!(compress_pages(&data, Compress::Lz4, &mut block));
        let mut p = Vec::new();
        batch_prefix(
            0,
            true,
            &entries[..1],
            block.len() as u32,
            PAGE as u32,
            &mut p,
        );
        p.extend_from_slice(&block);
        assert!(matches!(
            expect_err(&p, "long block"),
            BatchError::Lz4 { .. }
        ));
        // lz4 flag with no pages at all.
        let mut p = Vec::new();
        batch_prefix(0, true, &[entry(0x1000, true)], 0, 0, &mut p);
        decode_batch(&p, PAGE, &mut Vec::new()).expect("empty lz4");
        let mut p = Vec::new();
        batch_prefix(0, true, &[entry(0x1000, true)], 1, 0, &mut p);
        p.push(0);
        expect_err(&p, "data with no pages");
    }

    /// Found with the `frame_decoder` fuzz target: a 1-byte lz4 block
    /// claiming three 1 GiB pages made the decoder allocate 3 GiB before
    /// finding out that the block does not decompress.
    #[test]
    fn fuzz_regression_lz4_raw_len_beyond_any_block_is_refused_before_allocating() {
        let gib = 1u64 << 30;
        let mut p = Vec::new();
        let entries = [entry(0, false), entry(gib, false), entry(2 * gib, false)];
        batch_prefix(0, true, &entries, 1, 3 << 30, &mut p);
        p.push(0);
        let mut scratch = Vec::new();
        match decode_batch(&p, 1 << 30, &mut scratch) {
            Err(BatchError::Lz4Ratio {
                data_len: 1,
                raw_len,
            }) => assert_eq!(raw_len, 3 << 30),
            other => panic!("{other:?}"),
        }
        assert_eq!(scratch.capacity(), 0);
        // The bound is lz4's own: the most compressible block still decodes.
        let zeros = vec![0u8; 2048 * PAGE];
        let mut block = Vec::new();
        assert!(compress_pages(&zeros, Compress::Lz4, &mut block));
        assert!((block.len() as u64) * LZ4_MAX_RATIO >= zeros.len() as u64);
        let entries: Vec<u64> = (0..2048u64)
            .map(|i| entry(i * PAGE as u64, false))
            .collect();
        let mut p = Vec::new();
        batch_prefix(
            0,
            true,
            &entries,
            block.len() as u32,
            zeros.len() as u32,
            &mut p,
        );
        p.extend_from_slice(&block);
        let b = decode_batch(&p, PAGE, &mut scratch).expect("max ratio");
        assert_eq!(b.data(), &zeros[..]);
    }

    #[test]
    fn scratch_is_reused_and_bounded() {
        let mut scratch = Vec::new();
        let big = valid_payload(true);
        decode_batch(&big, PAGE, &mut scratch).expect("big");
        assert_eq!(scratch.len(), 2 * PAGE);
        let mut small = Vec::new();
        encode_batch(
            1,
            &[entry(0x1000, false)],
            &[9u8; PAGE],
            Compress::Lz4,
            &mut Vec::new(),
            &mut small,
        );
        let b = decode_batch(&small, PAGE, &mut scratch).expect("small");
        assert_eq!(b.data(), &[9u8; PAGE][..]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        let mut scratch = Vec::new();
        let entries = [entry(0x1000, false), entry(0x3000, false)];
        for _ in 0..5000 {
            // Valid header and entries, random lz4 stream.
            let len = rng.below(300) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut p = Vec::new();
            batch_prefix(0, true, &entries, len as u32, 2 * PAGE as u32, &mut p);
            p.extend_from_slice(&junk);
            let _ = decode_batch(&p, PAGE, &mut scratch);
            // Random flips in a valid compressed batch.
            let mut p = valid_payload(true);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(p.len() as u64) as usize;
                p[at] ^= rng.next() as u8 | 1;
            }
            if let Ok(b) = decode_batch(&p, PAGE, &mut scratch) {
                assert_eq!(b.iter().count(), b.len());
            }
        }
    }
}
