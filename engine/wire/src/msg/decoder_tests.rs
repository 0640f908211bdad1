//! Every frame kind's payload decoder (the typed messages, and
//! `decode_batch` for `Pages`) on valid, truncated, extended, corrupted and
//! random payloads.
//!
//! [`case`] matches on the kind without a wildcard, so a new `FrameKind`
//! does not compile until it has a case here.

use super::*;
use crate::PROTOCOL_VERSION;
use crate::batch::{self, Compress, decode_batch};
use crate::frame::FrameReader;
use pagehop_mem::SpaceKey;
use std::fmt::Debug;

const PAGE: usize = 4096;

/// Decodes a payload and re-encodes what it got; an error as its message.
type Reencode = fn(&[u8]) -> Result<Vec<u8>, String>;

fn reencode<M: Message>(payload: &[u8]) -> Result<Vec<u8>, String> {
    let m = M::decode(payload).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    m.encode(&mut out);
    Ok(out)
}

fn reencode_pages(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut scratch = Vec::new();
    let b = decode_batch(payload, PAGE, &mut scratch).map_err(|e| e.to_string())?;
    let entries: Vec<u64> = b
        .iter()
        .map(|(addr, page)| batch::entry(addr, page.is_none()))
        .collect();
    let mode = if b.was_compressed() {
        Compress::Lz4
    } else {
        Compress::Off
    };
    let mut out = Vec::new();
    batch::encode_batch(
        b.space,
        b.round,
        &entries,
        b.data(),
        mode,
        &mut Vec::new(),
        &mut out,
    );
    Ok(out)
}

/// One kind's decoder and the payloads it is tried on.
struct Case {
    reencode: Reencode,
    /// Valid payloads; the first is the one `bad` corrupts.
    valid: Vec<Vec<u8>>,
    /// What the error for one trailing byte says.
    trailing: &'static str,
    /// Corrupted payloads: what was done, the payload, what the error says.
    bad: Vec<(&'static str, Vec<u8>, &'static str)>,
}

/// `p` with `bytes` written at `at`.
fn with(p: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut p = p.to_vec();
    p[at..at + bytes.len()].copy_from_slice(bytes);
    p
}

/// The case for a message kind: each value is encoded, checked to decode
/// to itself and to travel in a frame; `bad` corrupts the first encoding.
fn messages<M: Message + PartialEq + Debug>(
    kind: FrameKind,
    values: &[M],
    bad: impl FnOnce(&[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)>,
) -> Case {
    assert_eq!(M::KIND, kind);
    let valid: Vec<Vec<u8>> = values
        .iter()
        .map(|m| {
            let mut payload = Vec::new();
            m.encode(&mut payload);
            assert_eq!(&M::decode(&payload).expect("decode"), m);
            let mut frame = Vec::new();
            m.encode_frame(&mut crate::frame::FrameSeal::Crc, &mut frame)
                .expect("frame");
            let mut reader = FrameReader::new(&frame[..]);
            assert_eq!(reader.read_frame().expect("frame"), (kind, &payload[..]));
            payload
        })
        .collect();
    Case {
        reencode: reencode::<M>,
        bad: bad(&valid[0]),
        valid,
        trailing: "1 unexpected bytes after the message",
    }
}

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        page_size: 4096,
        capabilities: CAP_LZ4 | CAP_VERIFY,
        role: Role::Source,
        nonce: [7; 32],
        protection: crate::msg::Protection::Sealed,
    }
}

fn vma(start: u64, end: u64, prot: u32, flags: u32, name: &str) -> VmaDesc {
    VmaDesc {
        start,
        end,
        prot,
        flags,
        name: name.into(),
    }
}

/// Three pages of `space` at 0x1000 (data), 0x2000 (zero) and 0x5000
/// (data).
fn batch_payload(space: SpaceKey, mode: Compress) -> Vec<u8> {
    let entries = [
        batch::entry(0x1000, false),
        batch::entry(0x2000, true),
        batch::entry(0x5000, false),
    ];
    let data: Vec<u8> = (0..2 * PAGE).map(|i| (i % 7) as u8).collect();
    let mut payload = Vec::new();
    batch::encode_batch(
        space,
        7,
        &entries,
        &data,
        mode,
        &mut Vec::new(),
        &mut payload,
    );
    payload
}

fn u32_le(v: usize) -> [u8; 4] {
    u32::try_from(v).expect("u32").to_le_bytes()
}

/// Corruptions of a u32 count at `at`: one more element than there is,
/// and one more than the cap.
fn counts(
    p: &[u8],
    at: usize,
    max: usize,
    over_left: &'static str,
    over_cap: &'static str,
) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let count = u32::from_le_bytes(p[at..at + 4].try_into().expect("count"));
    vec![
        (
            "count over what is left",
            with(p, at, &u32_le(count as usize + 1)),
            over_left,
        ),
        (
            "count over the cap",
            with(p, at, &u32_le(max + 1)),
            over_cap,
        ),
    ]
}

/// Corruptions of a string whose u32 length is at `at`: a length of the
/// whole payload, one over the cap, and a first byte that is not UTF-8.
fn string(
    p: &[u8],
    at: usize,
    max: usize,
    over_left: &'static str,
    over_cap: &'static str,
    utf8: &'static str,
) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "length over what is left",
            with(p, at, &u32_le(p.len())),
            over_left,
        ),
        (
            "length over the cap",
            with(p, at, &u32_le(max + 1)),
            over_cap,
        ),
        ("not UTF-8", with(p, at + 4, &[0xff]), utf8),
    ]
}

fn case(kind: FrameKind) -> Case {
    match kind {
        FrameKind::Hello => messages(
            kind,
            &[
                hello(),
                Hello {
                    role: Role::Destination,
                    protection: crate::msg::Protection::None,
                    capabilities: u64::MAX,
                    page_size: 1 << 16,
                    ..hello()
                },
            ],
            |p| {
                vec![
                    ("role 0", with(p, 2, &[0]), "Hello: invalid role 0x0"),
                    ("role 3", with(p, 2, &[3]), "Hello: invalid role 0x3"),
                    ("protection 4", with(p, 3, &[4]), "invalid protection 0x4"),
                    ("protection 0", with(p, 3, &[0]), "invalid protection 0x0"),
                    (
                        "page size 0",
                        with(p, 4, &[0, 0, 0, 0]),
                        "invalid page_size 0x0",
                    ),
                    ("page size 3", with(p, 4, &[3, 0]), "invalid page_size 0x3"),
                    (
                        "page size 4097",
                        with(p, 4, &[1]),
                        "invalid page_size 0x1001",
                    ),
                ]
            },
        ),
        // Any 32 bytes are a well-formed MAC: only its length is checked.
        FrameKind::Auth => messages(kind, &[Auth { mac: [0xa5; 32] }], |_| vec![]),
        FrameKind::Layout => messages(
            kind,
            &[
                Layout {
                    space: SpaceKey(7),
                    vmas: vec![
                        vma(0x40_0000, 0x40_2000, 5, 2, "/usr/bin/pagehop-workload"),
                        vma(0x7fff_0000_0000, 0x7fff_0002_1000, 3, 0, ""),
                    ],
                },
                Layout::default(),
                Layout {
                    space: SpaceKey(u32::MAX),
                    vmas: vec![vma(0x1000, 0x2000, 0, u32::MAX, &"é".repeat(2048))],
                },
                // A process that is gone.
                Layout {
                    space: SpaceKey(42),
                    vmas: vec![],
                },
            ],
            |p| {
                // space 0..4, count 4..8, the first VMA from 8.
                let mut bad = counts(
                    p,
                    4,
                    MAX_VMAS,
                    "vma count needs 84 bytes at offset 8",
                    "vma count of 65537 exceeds the cap of 65536",
                );
                bad.extend(string(
                    p,
                    32,
                    MAX_VMA_NAME,
                    "Layout: name needs 89 bytes at offset 36, payload has 89",
                    "name of 4097 exceeds the cap of 4096",
                    "Layout: name is not valid UTF-8",
                ));
                bad.extend([
                    (
                        "unaligned start",
                        with(p, 8, &[1]),
                        "vma 0 0x400001-0x402000 is empty or not 4 KiB aligned",
                    ),
                    (
                        "empty",
                        with(p, 16, &0x40_0000u64.to_le_bytes()),
                        "vma 0 0x400000-0x400000",
                    ),
                    (
                        "inverted",
                        with(p, 61, &0x7fff_0003_0000u64.to_le_bytes()),
                        "vma 1 0x7fff00030000-0x7fff00021000",
                    ),
                ]);
                bad
            },
        ),
        FrameKind::Pages => {
            let raw = batch_payload(SpaceKey(7), Compress::Off);
            let lz4 = batch_payload(SpaceKey(7), Compress::Lz4);
            assert_ne!(raw, lz4, "the test data compresses");
            assert_eq!(raw[20..24], 7u32.to_le_bytes(), "space at 20..24");
            let mut empty = Vec::new();
            batch::batch_prefix(SpaceKey::ROOT, 0, false, &[], 0, 0, &mut empty);
            let top = batch_payload(SpaceKey(u32::MAX), Compress::Off);
            let bad = vec![
                ("unknown flag", with(&raw, 4, &[2]), "unknown flags 0x0002"),
                (
                    "reserved u16",
                    with(&raw, 6, &[1]),
                    "non-zero reserved field (0x1)",
                ),
                (
                    "reserved u16 high byte",
                    with(&raw, 7, &[0x80]),
                    "non-zero reserved field (0x8000)",
                ),
                (
                    "count over the cap",
                    with(&raw, 8, &u32_le(2049)),
                    "batch of 2049 pages exceeds the cap of 2048",
                ),
                (
                    "count over what is left",
                    with(&raw, 8, &u32_le(4)),
                    "header and entries say 8248",
                ),
                (
                    "data_len over what is left",
                    with(&raw, 12, &u32_le(3 * PAGE)),
                    "header and entries say 12336",
                ),
                (
                    "raw_len",
                    with(&raw, 16, &u32_le(3 * PAGE)),
                    "raw_len 12288 does not match 2",
                ),
                (
                    "unaligned entry",
                    with(&raw, 25, &[0x18]),
                    "entry 0 (0x1800): address not page-aligned",
                ),
                (
                    "entry out of order",
                    with(&raw, 41, &[0x10]),
                    "address 0x1000 does not follow 0x2000",
                ),
                (
                    "lz4 flag on raw data",
                    with(&raw, 4, &[1]),
                    "lz4 batch data",
                ),
                (
                    "lz4 data cut",
                    with(&lz4, 12, &u32_le(lz4.len() - 24 - 24 - 1)),
                    "header and entries say",
                ),
            ];
            Case {
                reencode: reencode_pages,
                valid: vec![raw, lz4, empty, top],
                trailing: "header and entries say",
                bad,
            }
        }
        // Any integers are a well-formed round summary.
        FrameKind::EndOfRound => messages(
            kind,
            &[EndOfRound {
                round: 3,
                pages: 1234,
                bytes_raw: 1234 * 4096,
                bytes_wire: 99_999,
            }],
            |_| vec![],
        ),
        FrameKind::Switchover => messages(
            kind,
            &[
                Switchover {
                    final_round: 9,
                    postcopy: false,
                    criu: false,
                },
                Switchover {
                    final_round: 2,
                    postcopy: true,
                    criu: true,
                },
            ],
            |p| {
                vec![
                    (
                        "bool 2",
                        with(p, 4, &[2]),
                        "Switchover: invalid postcopy 0x2",
                    ),
                    ("bool 0xff", with(p, 4, &[0xff]), "invalid postcopy 0xff"),
                    (
                        "criu bool 3",
                        with(p, 5, &[3]),
                        "Switchover: invalid criu 0x3",
                    ),
                ]
            },
        ),
        FrameKind::Done => messages(
            kind,
            &[
                Done { pages_sent: 0 },
                Done {
                    pages_sent: u64::MAX,
                },
            ],
            |_| vec![],
        ),
        FrameKind::Error => messages(
            kind,
            &[
                ErrorMsg {
                    code: 17,
                    message: "target exited".into(),
                },
                ErrorMsg {
                    code: 0,
                    message: "x".repeat(MAX_ERROR_MESSAGE),
                },
            ],
            |p| {
                string(
                    p,
                    4,
                    MAX_ERROR_MESSAGE,
                    "Error: message needs 21 bytes at offset 8, payload has 21",
                    "message of 65529 exceeds the cap of 65528",
                    "Error: message is not valid UTF-8",
                )
            },
        ),
        FrameKind::Stats => messages(
            kind,
            &[
                Stats {
                    json: r#"{"rounds":4,"downtime_ms":12.5}"#.into(),
                },
                Stats {
                    json: String::new(),
                },
            ],
            |p| {
                string(
                    p,
                    0,
                    MAX_STATS_JSON,
                    "Stats: json needs 35 bytes at offset 4, payload has 35",
                    "json of 65533 exceeds the cap of 65532",
                    "Stats: json is not valid UTF-8",
                )
            },
        ),
        FrameKind::VerifyDigests => messages(
            kind,
            &[
                VerifyDigests {
                    space: SpaceKey(7),
                    start: 0x7f00_0000_0000,
                    hashes: vec![1, u64::MAX, 0x9e37_79b9_7f4a_7c15],
                },
                VerifyDigests {
                    space: SpaceKey(u32::MAX),
                    start: 0x7f00_0000_0000,
                    hashes: vec![],
                },
                VerifyDigests {
                    space: SpaceKey::ROOT,
                    start: 0,
                    hashes: (0..MAX_HASHES as u64)
                        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                        .collect(),
                },
            ],
            |p| {
                // space 0..4, start 4..12, count 12..16.
                counts(
                    p,
                    12,
                    MAX_HASHES,
                    "hash count needs 32 bytes at offset 16",
                    "hash count of 65537 exceeds the cap of 65536",
                )
            },
        ),
        FrameKind::VerifyResult => messages(
            kind,
            &[
                VerifyResult {
                    mismatch: None,
                    pages_checked: 5,
                },
                VerifyResult {
                    mismatch: Some(0),
                    pages_checked: 5,
                },
                VerifyResult {
                    mismatch: Some(0x7f00_1234_5000),
                    pages_checked: 5,
                },
            ],
            |p| {
                vec![
                    ("bool 2", with(p, 0, &[2]), "invalid has_mismatch 0x2"),
                    (
                        "address without the flag",
                        with(p, 1, &[1]),
                        "invalid mismatch address without the flag 0x1",
                    ),
                ]
            },
        ),
        // A page-aligned user address and any count are well-formed; the
        // server checks the count.
        FrameKind::PageRequest => messages(
            kind,
            &[
                PageRequest {
                    space: SpaceKey(7),
                    addr: 0x7f00_1234_5000,
                    pages: 16,
                },
                PageRequest {
                    space: SpaceKey::ROOT,
                    addr: 0,
                    pages: 0,
                },
                PageRequest {
                    space: SpaceKey(u32::MAX),
                    addr: crate::msg::MAX_USER_ADDRESS - 4096,
                    pages: u32::MAX,
                },
            ],
            |p| {
                vec![
                    (
                        "unaligned addr",
                        with(p, 4, &[1]),
                        "invalid addr 0x7f0012345001",
                    ),
                    (
                        "addr beyond user space",
                        with(p, 4, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
                        "invalid addr",
                    ),
                ]
            },
        ),
        FrameKind::LayoutAck => messages(kind, &[LayoutAck { vmas: 7 }], |_| vec![]),
        FrameKind::Restored => messages(kind, &[Restored { tasks: 3 }], |_| vec![]),
        FrameKind::Commit => messages(kind, &[Commit { tasks: u32::MAX }], |_| vec![]),
        FrameKind::ImageChunk => messages(
            kind,
            &[
                ImageChunk {
                    name: "pagemap-1.img".into(),
                    offset: 4096,
                    lz4: false,
                    last: true,
                    raw_len: 3,
                    data: vec![1, 2, 3],
                },
                ImageChunk {
                    name: "x".repeat(MAX_IMAGE_NAME),
                    offset: u64::MAX,
                    lz4: true,
                    last: false,
                    raw_len: 4096,
                    data: vec![0x1f, 0, 1],
                },
            ],
            |p| {
                // name "pagemap-1.img" (4 + 13), offset 8, flags 1, raw_len 4, count 4.
                let mut out = string(
                    p,
                    0,
                    MAX_IMAGE_NAME,
                    "ImageChunk: name needs",
                    "name of 256 exceeds the cap of 255",
                    "ImageChunk: name is not valid UTF-8",
                );
                out.extend([
                    (
                        "empty name",
                        with(p, 0, &u32_le(0)),
                        "ImageChunk: invalid name length",
                    ),
                    (
                        "unknown flag",
                        with(p, 25, &[4]),
                        "ImageChunk: invalid flags 0x4",
                    ),
                    (
                        "raw_len not the data's",
                        with(p, 26, &u32_le(4)),
                        "ImageChunk: invalid raw_len 0x4",
                    ),
                    (
                        "raw_len over the cap",
                        with(p, 26, &u32_le(MAX_IMAGE_CHUNK + 1)),
                        "ImageChunk: invalid raw_len",
                    ),
                    (
                        "data over what is left",
                        with(p, 30, &u32_le(1000)),
                        "ImageChunk: data length needs",
                    ),
                ]);
                out
            },
        ),
        FrameKind::Attach => messages(
            kind,
            &[
                Attach {
                    session: 0xdead_beef_0123,
                    lane: Lane::Priority,
                    epoch: 3,
                },
                Attach {
                    session: 0,
                    lane: Lane::Control,
                    epoch: u32::MAX,
                },
            ],
            |p| {
                vec![
                    ("lane 0", with(p, 8, &[0]), "Attach: invalid lane 0x0"),
                    ("lane 4", with(p, 8, &[4]), "Attach: invalid lane 0x4"),
                ]
            },
        ),
        FrameKind::Pending => messages(
            kind,
            &[
                Pending {
                    space: SpaceKey(7),
                    ranges: vec![(0x1000, 0x3000), (0x7fff_0000_0000, 0x7fff_0001_0000)],
                    last: true,
                },
                Pending::default(),
                Pending {
                    space: SpaceKey(u32::MAX),
                    ranges: vec![(0x1000, 0x2000)],
                    last: false,
                },
            ],
            |p| {
                // space 0..4, last 4, count 5..9, the ranges from 9.
                let mut bad = counts(
                    p,
                    5,
                    MAX_PENDING_RANGES,
                    "range count needs 48 bytes at offset 9",
                    "range count of 65537 exceeds the cap of 65536",
                );
                bad.extend([
                    ("bool 2", with(p, 4, &[2]), "Pending: invalid last 0x2"),
                    ("unaligned", with(p, 9, &[1]), "invalid range start 0x1001"),
                    ("empty", with(p, 10, &[0x30]), "invalid range start 0x3000"),
                    (
                        "inverted",
                        with(p, 27, &[0x10]),
                        "invalid range start 0x7fff00100000",
                    ),
                ]);
                bad
            },
        ),
    }
}

/// Every kind there is, found through its wire value.
fn every_kind() -> Vec<FrameKind> {
    let kinds: Vec<FrameKind> = (0..=u16::MAX).filter_map(FrameKind::from_u16).collect();
    assert_eq!(kinds, FrameKind::ALL);
    kinds
}

#[test]
fn every_kind_decodes_strictly() {
    for kind in every_kind() {
        let case = case(kind);
        let decode = case.reencode;
        for (i, p) in case.valid.iter().enumerate() {
            assert!(
                p.len() <= kind.max_payload() as usize,
                "{kind} #{i} over its cap"
            );
            match decode(p) {
                Ok(again) => assert!(again == *p, "{kind} #{i} re-encodes differently"),
                Err(e) => panic!("{kind} #{i}: {e}"),
            }
            for cut in 0..p.len() {
                assert!(
                    decode(&p[..cut]).is_err(),
                    "{kind} #{i} cut at {cut} decoded"
                );
            }
            let mut long = p.clone();
            long.push(0);
            match decode(&long) {
                Err(e) => assert!(e.contains(case.trailing), "{kind} #{i} + 1 byte: {e}"),
                Ok(_) => panic!("{kind} #{i} with a trailing byte decoded"),
            }
        }
        for (what, p, expected) in &case.bad {
            match decode(p) {
                Err(e) => assert!(e.contains(expected), "{kind} {what}: {e}"),
                Ok(_) => panic!("{kind} {what}: decoded"),
            }
        }
    }
}

/// Decodes `p` as `kind`; what decodes must re-encode to the same bytes,
/// but for lz4 batches (other blocks decompress to the same pages).
fn decodes_canonically(kind: FrameKind, case: &Case, p: &[u8]) {
    if let Ok(again) = (case.reencode)(p) {
        let lz4 = kind == FrameKind::Pages && p[4] & batch::FLAG_LZ4 as u8 != 0;
        assert!(lz4 || again == p, "{kind}: {p:02x?} re-encodes differently");
    }
}

/// Random bytes, and random flips in valid payloads, through every
/// decoder: no panic, and what decodes re-encodes to the same bytes.
#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cases: Vec<(FrameKind, Case)> = every_kind().into_iter().map(|k| (k, case(k))).collect();
    for _ in 0..20_000 {
        let len = (next() % 80) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        for (kind, case) in &cases {
            decodes_canonically(*kind, case, &bytes);
            let valid = &case.valid[(next() % case.valid.len() as u64) as usize];
            if valid.is_empty() || valid.len() > 1 << 16 {
                continue;
            }
            let mut p = valid.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % p.len() as u64) as usize;
                p[at] ^= next() as u8 | 1;
            }
            decodes_canonically(*kind, case, &p);
        }
    }
}
