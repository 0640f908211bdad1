use super::*;
use pagehop_mem::SpaceKey;

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
        // The root, small pids, and any u32 at all.
        let space = SpaceKey(match iter % 3 {
            0 => 0,
            1 => iter,
            _ => rng.next() as u32,
        });
        for mode in [Compress::Off, Compress::Lz4, Compress::Auto] {
            let mut payload = Vec::new();
            encode_batch(
                space,
                iter,
                &entries,
                &data,
                mode,
                &mut scratch,
                &mut payload,
            );
            assert!(payload.len() <= super::super::FrameKind::Pages.max_payload() as usize);
            let batch = decode_batch(&payload, PAGE, &mut dscratch).expect("decode");
            assert_eq!(batch.space, space);
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

/// Three pages of space 9 at 0x1000 (data), 0x2000 (zero) and 0x5000
/// (data), in round 7.
fn valid_payload(lz4: bool) -> Vec<u8> {
    let entries = [
        entry(0x1000, false),
        entry(0x2000, true),
        entry(0x5000, false),
    ];
    let data: Vec<u8> = (0..2 * PAGE).map(|i| (i % 7) as u8).collect();
    let mut payload = Vec::new();
    let mode = if lz4 { Compress::Lz4 } else { Compress::Off };
    encode_batch(
        SpaceKey(9),
        7,
        &entries,
        &data,
        mode,
        &mut Vec::new(),
        &mut payload,
    );
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
        assert_eq!(b.space, SpaceKey(9));
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
        // The u16 at 6..8 is the only reserved field.
        for (at, byte, value) in [(6, 1, 1), (7, 0x80, 0x8000), (6, 0xff, 0xff)] {
            let mut p = good.clone();
            p[at] = byte;
            match expect_err(&p, "rsvd") {
                BatchError::Reserved { value: v } => assert_eq!(v, value),
                other => panic!("byte {at} = {byte:#x}: {other:?}"),
            }
        }
        // Bytes 20..24 (reserved in version 1) are the space: any value is
        // well-formed.
        let mut p = good.clone();
        p[23] = 1;
        let b = decode_batch(&p, PAGE, &mut scratch).expect("space 0x0100_0009");
        assert_eq!((b.space, b.len()), (SpaceKey(0x0100_0009), 3));
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

/// The header byte for byte, as the module docs draw it.
#[test]
fn header_layout_matches_the_docs() {
    let entries = [entry(0x1000, false), entry(0x2000, true)];
    let mut p = Vec::new();
    batch_prefix(SpaceKey(7), 3, true, &entries, 100, PAGE as u32, &mut p);
    let mut expected = Vec::new();
    expected.extend_from_slice(&3u32.to_le_bytes()); // round
    expected.extend_from_slice(&FLAG_LZ4.to_le_bytes()); // flags
    expected.extend_from_slice(&0u16.to_le_bytes()); // reserved
    expected.extend_from_slice(&2u32.to_le_bytes()); // count
    expected.extend_from_slice(&100u32.to_le_bytes()); // data_len
    expected.extend_from_slice(&(PAGE as u32).to_le_bytes()); // raw_len
    expected.extend_from_slice(&7u32.to_le_bytes()); // space
    assert_eq!(expected.len(), BATCH_HEADER_LEN);
    expected.extend_from_slice(&0x1000u64.to_le_bytes());
    expected.extend_from_slice(&(0x2000 | ZERO_PAGE).to_le_bytes());
    assert_eq!(p, expected);
}

/// The space travels in bytes 20..24, raw or lz4, for any u32, and the
/// pages come out the same whatever it is.
#[test]
fn space_round_trips() {
    let entries = [entry(0x1000, false), entry(0x3000, true)];
    let data = vec![5u8; PAGE];
    for space in [
        SpaceKey::ROOT,
        SpaceKey(1),
        SpaceKey(7),
        SpaceKey(0x8000_0000),
        SpaceKey(u32::MAX),
    ] {
        for mode in [Compress::Off, Compress::Lz4] {
            let mut p = Vec::new();
            encode_batch(space, 2, &entries, &data, mode, &mut Vec::new(), &mut p);
            assert_eq!(p[20..24], space.0.to_le_bytes(), "{space:?} {mode:?}");
            let mut scratch = Vec::new();
            let b = decode_batch(&p, PAGE, &mut scratch).expect("decode");
            assert_eq!((b.space, b.round), (space, 2), "{mode:?}");
            assert_eq!(b.was_compressed(), mode == Compress::Lz4);
            let pages: Vec<_> = b.iter().collect();
            assert_eq!(pages, [(0x1000, Some(&data[..])), (0x3000, None)]);
        }
    }
    // An empty batch names its space too.
    let mut scratch = Vec::new();
    let mut p = Vec::new();
    batch_prefix(SpaceKey(42), 0, false, &[], 0, 0, &mut p);
    let b = decode_batch(&p, PAGE, &mut scratch).expect("empty");
    assert_eq!((b.space, b.len()), (SpaceKey(42), 0));
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
        SpaceKey::ROOT,
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
        SpaceKey::ROOT,
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
    batch_prefix(
        SpaceKey::ROOT,
        0,
        true,
        &[entry(0x1000, true)],
        0,
        0,
        &mut p,
    );
    decode_batch(&p, PAGE, &mut Vec::new()).expect("empty lz4");
    let mut p = Vec::new();
    batch_prefix(
        SpaceKey::ROOT,
        0,
        true,
        &[entry(0x1000, true)],
        1,
        0,
        &mut p,
    );
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
    batch_prefix(SpaceKey::ROOT, 0, true, &entries, 1, 3 << 30, &mut p);
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
        SpaceKey::ROOT,
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
        SpaceKey::ROOT,
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
        batch_prefix(
            SpaceKey::ROOT,
            0,
            true,
            &entries,
            len as u32,
            2 * PAGE as u32,
            &mut p,
        );
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
