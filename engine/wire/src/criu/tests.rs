use super::image::records;
use super::*;

const PS: u64 = PAGE_SIZE;
const ANON_PRIVATE: u32 = map::ANONYMOUS | map::PRIVATE;

// ---- a tiny protobuf encoder, for the tests only ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A message under construction, fields in call order.
#[derive(Clone, Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn new() -> Self {
        Self::default()
    }

    fn key(mut self, tag: u32, wire_type: u8) -> Self {
        put_varint(&mut self.0, u64::from(tag) << 3 | u64::from(wire_type));
        self
    }

    fn varint(self, tag: u32, v: u64) -> Self {
        let mut m = self.key(tag, 0);
        put_varint(&mut m.0, v);
        m
    }

    fn sint(self, tag: u32, v: i64) -> Self {
        self.varint(tag, ((v << 1) ^ (v >> 63)) as u64)
    }

    fn bytes(self, tag: u32, b: &[u8]) -> Self {
        let mut m = self.key(tag, 2);
        put_varint(&mut m.0, b.len() as u64);
        m.0.extend_from_slice(b);
        m
    }

    fn msg(self, tag: u32, inner: Msg) -> Self {
        self.bytes(tag, &inner.0)
    }

    fn packed(self, tag: u32, vals: &[u64]) -> Self {
        let mut body = Vec::new();
        for &v in vals {
            put_varint(&mut body, v);
        }
        self.bytes(tag, &body)
    }

    fn fixed64(self, tag: u32, v: u64) -> Self {
        let mut m = self.key(tag, 1);
        m.0.extend_from_slice(&v.to_le_bytes());
        m
    }

    fn fixed32(self, tag: u32, v: u32) -> Self {
        let mut m = self.key(tag, 5);
        m.0.extend_from_slice(&v.to_le_bytes());
        m
    }

    /// Raw bytes, for malformed input.
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    /// One unknown field of every supported wire type.
    fn unknowns(self, from: u32) -> Self {
        self.varint(from, u64::MAX)
            .fixed64(from + 1, 7)
            .bytes(from + 2, b"ignored")
            .fixed32(from + 3, 9)
    }
}

/// An image of `kind` holding `records`, as CRIU frames it.
fn image(kind: ImageKind, records: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    if kind != ImageKind::Inventory {
        out.extend_from_slice(&COMMON_MAGIC.to_le_bytes());
    }
    out.extend_from_slice(&kind.magic().to_le_bytes());
    for r in records {
        out.extend_from_slice(&(r.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.0);
    }
    out
}

/// Where each record of `image(kind, records)` ends, the header's end first.
fn boundaries(kind: ImageKind, records: &[Msg]) -> Vec<usize> {
    let mut at = if kind == ImageKind::Inventory { 4 } else { 8 };
    let mut out = vec![at];
    for r in records {
        at += 4 + r.0.len();
        out.push(at);
    }
    out
}

/// Every cut of the image that is not at a record boundary is refused as a
/// short header or a truncated record; a cut at a boundary is not refused
/// for truncation (it is a shorter, well-framed image).
fn assert_truncations_refused<T: std::fmt::Debug>(
    kind: ImageKind,
    records: &[Msg],
    parse: impl Fn(&[u8]) -> Result<T, CriuImageError>,
) {
    let bytes = image(kind, records);
    let cuts = boundaries(kind, records);
    for len in 0..bytes.len() {
        let r = parse(&bytes[..len]);
        if cuts.contains(&len) {
            assert!(
                !matches!(
                    r,
                    Err(CriuImageError::TooShort { .. } | CriuImageError::TruncatedRecord { .. })
                ),
                "{kind}: cut at boundary {len}: {r:?}"
            );
        } else {
            assert!(
                matches!(
                    r,
                    Err(CriuImageError::TooShort { .. } | CriuImageError::TruncatedRecord { .. })
                ),
                "{kind}: cut at {len} of {}: {r:?}",
                bytes.len()
            );
        }
    }
    parse(&bytes).expect("the whole image parses");
}

/// The protobuf error inside a refused image.
fn proto_err<T: std::fmt::Debug>(r: Result<T, CriuImageError>) -> ProtoError {
    match r {
        Err(CriuImageError::Protobuf { source, .. }) => source,
        other => panic!("expected a protobuf error, got {other:?}"),
    }
}

/// The innermost error of a nested one.
fn innermost(e: ProtoError) -> ProtoError {
    match e {
        ProtoError::Nested { source, .. } | ProtoError::Element { source, .. } => {
            innermost(*source)
        }
        e => e,
    }
}

// ---- message builders ----

fn head(pages_id: u32) -> Msg {
    Msg::new().varint(1, pages_id.into())
}

/// A pagemap entry as CRIU 4.2 writes it: field 2 is 0, the count in 5.
fn entry(vaddr: u64, nr_pages: u64, flags: u32) -> Msg {
    Msg::new()
        .varint(1, vaddr)
        .varint(2, 0)
        .varint(4, flags.into())
        .varint(5, nr_pages)
}

fn pagemap_image(pages_id: u32, entries: &[Msg]) -> (Vec<Msg>, Vec<u8>) {
    let mut recs = vec![head(pages_id)];
    recs.extend_from_slice(entries);
    let bytes = image(ImageKind::Pagemap, &recs);
    (recs, bytes)
}

fn pstree_entry(pid: u32, ppid: u32, threads: &[u64]) -> Msg {
    let mut m = Msg::new()
        .varint(1, pid.into())
        .varint(2, ppid.into())
        .varint(3, pid.into())
        .varint(4, 1);
    for &t in threads {
        m = m.varint(5, t);
    }
    m
}

fn vma(start: u64, end: u64, flags: u32, status: u32) -> Msg {
    Msg::new()
        .varint(1, start)
        .varint(2, end)
        .varint(3, 0)
        .varint(4, 0)
        .varint(5, 3)
        .varint(6, flags.into())
        .varint(7, status.into())
        .sint(8, -1)
}

/// A VMA of one page at 0, but for its required `fd`.
fn vma_without_fd() -> Msg {
    (1..=7).fold(Msg::new(), |m, tag| {
        m.varint(tag, if tag == 2 { PS } else { 0 })
    })
}

/// mm_entry's required fields 1-12, then `vmas`.
fn mm_msg(vmas: &[Msg]) -> Msg {
    let mut m = Msg::new();
    for tag in 1..=12 {
        m = m.varint(tag, 0x1000 * u64::from(tag));
    }
    m = m.varint(13, 33).varint(13, 0x1234);
    for v in vmas {
        m = m.msg(14, v.clone());
    }
    m.varint(15, 1)
}

fn inventory_msg(version: u32, tcp_close: Option<bool>) -> Msg {
    let mut m = Msg::new()
        .varint(1, version.into())
        .varint(2, 1)
        .bytes(3, &[8, 1]);
    if let Some(t) = tcp_close {
        m = m.varint(10, t.into());
    }
    m.bytes(13, b"e02a56c4-3fa5-4a39-9dbf-b071e449cac8")
}

fn task_core(state: u32, stop_signo: Option<u32>) -> Msg {
    let mut tc = Msg::new()
        .varint(1, state.into())
        .varint(2, 0)
        .varint(3, 0)
        .varint(4, 0x40_0000)
        .varint(5, 0)
        .bytes(6, b"sleep")
        .bytes(7, &[1, 2, 3]);
    if let Some(s) = stop_signo {
        tc = tc.varint(21, s.into());
    }
    tc
}

fn core_msg(tc: Msg) -> Msg {
    Msg::new()
        .varint(1, 1)
        .bytes(2, &[0; 40])
        .msg(3, tc)
        .bytes(5, &[8, 0])
}

// ---- framing and protobuf ----

#[test]
fn bad_magics_are_refused_naming_the_image() {
    let mut bytes = image(ImageKind::Pstree, &[pstree_entry(1, 0, &[1])]);
    assert_eq!(
        parse_pagemap(&bytes),
        Err(CriuImageError::BadMagic {
            kind: ImageKind::Pagemap,
            which: MagicKind::Type,
            expected: ImageKind::Pagemap.magic(),
            got: ImageKind::Pstree.magic(),
        })
    );
    bytes[0] ^= 1;
    let err = parse_pstree(&bytes).unwrap_err();
    assert!(matches!(
        err,
        CriuImageError::BadMagic {
            kind: ImageKind::Pstree,
            which: MagicKind::Common,
            ..
        }
    ));
    assert!(err.to_string().starts_with("pstree.img: bad common magic"));
    // inventory.img has no common magic: one in front is a bad type magic.
    let mut inv = COMMON_MAGIC.to_le_bytes().to_vec();
    inv.extend_from_slice(&image(ImageKind::Inventory, &[inventory_msg(2, None)]));
    assert!(matches!(
        parse_inventory(&inv),
        Err(CriuImageError::BadMagic {
            kind: ImageKind::Inventory,
            which: MagicKind::Type,
            got: COMMON_MAGIC,
            ..
        })
    ));
    // An ordinary image without the common magic.
    let bare = &image(ImageKind::Mm, &[mm_msg(&[])])[4..];
    assert_eq!(
        parse_mm(bare),
        Err(CriuImageError::BadMagic {
            kind: ImageKind::Mm,
            which: MagicKind::Common,
            expected: COMMON_MAGIC,
            got: 0x5749_2820,
        })
    );
    assert_eq!(
        parse_core(&[0x19, 0x43]),
        Err(CriuImageError::TooShort {
            kind: ImageKind::Core,
            len: 2,
            need: 8,
        })
    );
}

#[test]
fn record_framing_caps_and_errors() {
    let kind = ImageKind::Pstree;
    let mut bytes = image(kind, &[]);
    bytes.extend_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
    assert_eq!(
        parse_pstree(&bytes),
        Err(CriuImageError::RecordTooLarge {
            kind,
            index: 0,
            offset: 8,
            len: MAX_RECORD_LEN + 1,
        })
    );
    let mut bytes = image(kind, &[]);
    bytes.extend_from_slice(&10u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 3]);
    assert_eq!(
        parse_pstree(&bytes),
        Err(CriuImageError::TruncatedRecord {
            kind,
            index: 0,
            offset: 8,
            need: 14,
            have: 7,
        })
    );
    // MAX_RECORDS empty records are fine, one more is refused.
    let mut bytes = image(kind, &[]);
    bytes.resize(8 + 4 * MAX_RECORDS, 0);
    assert_eq!(records(kind, &bytes).unwrap().count(), MAX_RECORDS);
    bytes.extend_from_slice(&[0; 4]);
    let last = records(kind, &bytes).unwrap().last().unwrap();
    assert_eq!(last.unwrap_err(), CriuImageError::TooManyRecords { kind });
    // A record at the cap is read.
    let mut bytes = image(kind, &[]);
    bytes.extend_from_slice(&MAX_RECORD_LEN.to_le_bytes());
    bytes.resize(bytes.len() + MAX_RECORD_LEN as usize, 0);
    let r = records(kind, &bytes).unwrap().next().unwrap().unwrap();
    assert_eq!(r.bytes.len(), MAX_RECORD_LEN as usize);
}

#[test]
fn malformed_protobuf_is_refused() {
    let parse = |m: Msg| parse_pagemap(&image(ImageKind::Pagemap, &[head(1), m]));
    // Truncated varints: a key, a value.
    assert_eq!(
        proto_err(parse(Msg::new().raw(&[0x88]))),
        ProtoError::TruncatedVarint { offset: 0 }
    );
    assert_eq!(
        proto_err(parse(Msg::new().varint(1, 0).raw(&[0x10, 0xff, 0xff]))),
        ProtoError::TruncatedVarint { offset: 3 }
    );
    // Over 64 bits: 11 bytes, or a tenth byte over 1.
    for (nines, last) in [(10, 0x00), (9, 0x02)] {
        let mut v = vec![0x08];
        v.resize(1 + nines, 0xff);
        v.push(last);
        assert_eq!(
            proto_err(parse(Msg::new().raw(&v))),
            ProtoError::VarintOverflow { offset: 1 }
        );
    }
    // u64::MAX itself is fine (tenth byte 1).
    let e = parse_pagemap(&image(
        ImageKind::Pagemap,
        &[
            head(1),
            Msg::new().varint(1, 0).varint(2, 1).varint(9, u64::MAX),
        ],
    ))
    .unwrap();
    assert_eq!(e.entries.len(), 1);
    // Field number 0.
    assert_eq!(
        proto_err(parse(Msg::new().raw(&[0x00, 0x01]))),
        ProtoError::BadKey { offset: 0, key: 0 }
    );
    // Groups and wire types 6, 7.
    for wt in [3u8, 4, 6, 7] {
        assert_eq!(
            proto_err(parse(Msg::new().varint(1, 0).key(9, wt))),
            ProtoError::UnsupportedWireType {
                offset: 2,
                tag: 9,
                wire_type: wt,
            }
        );
    }
    // Length past the end, fixed values cut short.
    assert!(matches!(
        proto_err(parse(Msg::new().key(9, 2).raw(&[5, 1, 2]))),
        ProtoError::TruncatedField {
            tag: 9,
            need: 5,
            have: 2,
            ..
        }
    ));
    assert!(matches!(
        proto_err(parse(Msg::new().key(9, 2).raw(&[0xff; 9]).raw(&[0x01]))),
        ProtoError::TruncatedField { need: u64::MAX, .. }
    ));
    assert!(matches!(
        proto_err(parse(Msg::new().key(9, 1).raw(&[0; 7]))),
        ProtoError::TruncatedField { need: 8, .. }
    ));
    assert!(matches!(
        proto_err(parse(Msg::new().key(9, 5).raw(&[0; 3]))),
        ProtoError::TruncatedField { need: 4, .. }
    ));
    // A known field of the wrong type, values out of range, a field twice.
    let field = |name, tag| FieldId::new("pagemap_entry", name, tag);
    for (m, want) in [
        (
            Msg::new().fixed64(1, 0).varint(2, 1),
            ProtoError::WireType {
                field: field("vaddr", 1),
                got: 1,
                expected: 0,
            },
        ),
        (
            Msg::new().varint(1, 0).varint(2, 1 << 32),
            ProtoError::OutOfRange {
                field: field("compat_nr_pages", 2),
                value: 1 << 32,
            },
        ),
        (
            entry(0, 1, 0).varint(3, 2),
            ProtoError::OutOfRange {
                field: field("in_parent", 3),
                value: 2,
            },
        ),
        (
            entry(0, 1, 0).varint(2, 1),
            ProtoError::DuplicateField {
                field: field("compat_nr_pages", 2),
            },
        ),
    ] {
        assert_eq!(proto_err(parse(m)), want);
    }
    // Every prefix of an entry's protobuf, framed as a whole record: refused
    // unless it ends after a field and has both required fields.
    let f1 = Msg::new().varint(1, 0x7f00_0000_0000);
    let f2 = f1.clone().varint(2, 300);
    let full = f2.clone().varint(4, 2);
    for len in 0..=full.0.len() {
        let r = parse(Msg::new().raw(&full.0[..len]));
        if len == f2.0.len() || len == full.0.len() {
            assert!(r.is_ok(), "prefix {len}: {r:?}");
            continue;
        }
        match proto_err(r) {
            ProtoError::MissingField { field } => {
                let want = if len == 0 { "vaddr" } else { "compat_nr_pages" };
                assert!(len == 0 || len == f1.0.len(), "prefix {len}");
                assert_eq!(field.name, want);
            }
            ProtoError::TruncatedVarint { .. } => {}
            e => panic!("prefix {len}: {e:?}"),
        }
    }
}

#[test]
fn errors_name_the_image_kind_and_field() {
    let err = parse_pagemap(&image(
        ImageKind::Pagemap,
        &[head(1), Msg::new().varint(1, 0)],
    ))
    .unwrap_err();
    assert_eq!(err.kind(), ImageKind::Pagemap);
    assert_eq!(
        err.to_string(),
        "pagemap image: record 1 at byte 14 does not decode"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(
        source,
        "pagemap_entry.compat_nr_pages (field 2) is required but missing"
    );
    let err = parse_mm(&image(ImageKind::Mm, &[])).unwrap_err();
    assert_eq!(
        err,
        CriuImageError::MissingRecord {
            kind: ImageKind::Mm,
            what: "mm_entry",
        }
    );
    assert_eq!(err.to_string(), "mm image: no mm_entry record");
}

// ---- pagemap ----

#[test]
fn pagemap_round_trip_and_lazy_ranges() {
    let want = [
        PagemapEntry {
            vaddr: 0x5555_0000_0000,
            nr_pages: 1,
            flags: PE_PRESENT,
        },
        PagemapEntry {
            vaddr: 0x5555_0000_1000,
            nr_pages: 3,
            flags: PE_LAZY | PE_PRESENT,
        },
        // Adjacent, lazy: merged with the one before.
        PagemapEntry {
            vaddr: 0x5555_0000_4000,
            nr_pages: 2,
            flags: PE_LAZY,
        },
        // A gap, then lazy again.
        PagemapEntry {
            vaddr: 0x5555_0001_0000,
            nr_pages: 1,
            flags: PE_LAZY,
        },
        // Adjacent but not lazy: ends the run.
        PagemapEntry {
            vaddr: 0x5555_0001_1000,
            nr_pages: 1,
            flags: PE_PARENT,
        },
        PagemapEntry {
            vaddr: 0x5555_0001_2000,
            nr_pages: 4,
            flags: PE_LAZY | PE_PRESENT,
        },
    ];
    let msgs: Vec<Msg> = want
        .iter()
        .map(|e| entry(e.vaddr, e.nr_pages, e.flags))
        .collect();
    let (recs, bytes) = pagemap_image(7, &msgs);
    let pm = parse_pagemap(&bytes).unwrap();
    assert_eq!(pm.pages_id, 7);
    assert_eq!(pm.entries, want);
    assert_eq!(
        pm.lazy_ranges(),
        [
            (0x5555_0000_1000, 0x5555_0000_6000),
            (0x5555_0001_0000, 0x5555_0001_1000),
            (0x5555_0001_2000, 0x5555_0001_6000),
        ]
    );
    assert_eq!(pm.present_pages(), 1 + 3 + 4);
    let e = pm.entries[1];
    assert!(e.is_lazy() && e.is_present() && !e.is_parent());
    assert!(pm.entries[4].is_parent() && !pm.entries[4].is_lazy());
    assert_eq!(e.end(), 0x5555_0000_4000);
    assert_truncations_refused(ImageKind::Pagemap, &recs, parse_pagemap);
    // A pagemap of no entries (a task with no dumped pages).
    let (_, bytes) = pagemap_image(1, &[]);
    assert!(parse_pagemap(&bytes).unwrap().entries.is_empty());
    // No head.
    assert_eq!(
        parse_pagemap(&image(ImageKind::Pagemap, &[])),
        Err(CriuImageError::MissingRecord {
            kind: ImageKind::Pagemap,
            what: "pagemap_head",
        })
    );
    assert!(matches!(
        proto_err(parse_pagemap(&image(ImageKind::Pagemap, &[Msg::new()]))),
        ProtoError::MissingField {
            field: FieldId {
                name: "pages_id",
                ..
            }
        }
    ));
}

#[test]
fn pagemap_4_1_entries_are_read() {
    // 4.1: the count in field 2 only; flags absent means PE_PRESENT,
    // in_parent means PE_PARENT.
    let (_, bytes) = pagemap_image(
        2,
        &[
            Msg::new().varint(1, 0x1000).varint(2, 2),
            Msg::new().varint(1, 0x3000).varint(2, 1).varint(3, 1),
            Msg::new()
                .varint(1, 0x4000)
                .varint(2, 5)
                .varint(3, 0)
                .varint(4, 6),
            Msg::new()
                .varint(1, 0x9000)
                .varint(2, 1)
                .varint(3, 1)
                .varint(4, 2),
        ],
    );
    let pm = parse_pagemap(&bytes).unwrap();
    let got: Vec<(u64, u64, u32)> = pm
        .entries
        .iter()
        .map(|e| (e.vaddr, e.nr_pages, e.flags))
        .collect();
    assert_eq!(
        got,
        [
            (0x1000, 2, PE_PRESENT),
            (0x3000, 1, PE_PARENT),
            (0x4000, 5, PE_LAZY | PE_PRESENT),
            (0x9000, 1, PE_LAZY | PE_PARENT),
        ]
    );
    // Field 5 wins over field 2 whatever their order and value.
    let (_, bytes) = pagemap_image(2, &[Msg::new().varint(5, 3).varint(1, 0x1000).varint(2, 9)]);
    assert_eq!(parse_pagemap(&bytes).unwrap().entries[0].nr_pages, 3);
}

#[test]
fn bad_pagemap_entries_are_refused() {
    let refused = |entries: &[Msg]| match parse_pagemap(&pagemap_image(1, entries).1) {
        Err(CriuImageError::PagemapEntry { index, problem, .. }) => (index, problem),
        other => panic!("expected a pagemap entry error, got {other:?}"),
    };
    assert_eq!(refused(&[entry(0x1000, 0, 4)]), (0, PagemapProblem::Empty));
    assert_eq!(
        refused(&[entry(0x1000, 1, 4), entry(0x2800, 1, 4)]),
        (1, PagemapProblem::Unaligned)
    );
    assert_eq!(
        refused(&[entry(0x1000, 1, 8)]),
        (0, PagemapProblem::Flags { flags: 8 })
    );
    // Unsorted, overlapping, repeated.
    assert_eq!(
        refused(&[entry(0x5000, 1, 4), entry(0x1000, 1, 4)]),
        (1, PagemapProblem::Order { prev_end: 0x6000 })
    );
    assert_eq!(
        refused(&[entry(0x1000, 4, 4), entry(0x4000, 1, 2)]),
        (1, PagemapProblem::Order { prev_end: 0x5000 })
    );
    assert_eq!(
        refused(&[entry(0x1000, 1, 4), entry(0x1000, 1, 4)]),
        (1, PagemapProblem::Order { prev_end: 0x2000 })
    );
    // Past 2^56, overflowing the address space, overflowing the multiply.
    assert_eq!(
        refused(&[entry(ADDR_LIMIT - PS, 2, 4)]),
        (0, PagemapProblem::TooLong)
    );
    assert_eq!(
        refused(&[entry(u64::MAX - PS + 1, 1, 4)]),
        (0, PagemapProblem::TooLong)
    );
    assert_eq!(
        refused(&[entry(0, u64::MAX / 2, 4)]),
        (0, PagemapProblem::TooLong)
    );
    // Up to 2^56 exactly is fine.
    let (_, bytes) = pagemap_image(1, &[entry(ADDR_LIMIT - PS, 1, 4)]);
    assert_eq!(parse_pagemap(&bytes).unwrap().entries[0].end(), ADDR_LIMIT);
    // Adjacent entries are fine.
    let (_, bytes) = pagemap_image(1, &[entry(0, 1, 4), entry(PS, 1, 4)]);
    assert_eq!(parse_pagemap(&bytes).unwrap().entries.len(), 2);
}

#[test]
fn unknown_fields_are_skipped_everywhere() {
    let (_, bytes) = pagemap_image(3, &[entry(0x1000, 2, PE_LAZY).unknowns(6).unknowns(1000)]);
    assert_eq!(parse_pagemap(&bytes).unwrap().entries[0].nr_pages, 2);
    let pstree = image(
        ImageKind::Pstree,
        &[pstree_entry(10, 0, &[10]).unknowns(6).unknowns(536_870_900)],
    );
    assert_eq!(parse_pstree(&pstree).unwrap()[0].pid, 10);
    let mm = image(
        ImageKind::Mm,
        &[mm_msg(&[vma(0x1000, 0x2000, ANON_PRIVATE, 0).unknowns(11)]).unknowns(18)],
    );
    assert_eq!(parse_mm(&mm).unwrap().vmas.len(), 1);
    let inv = image(ImageKind::Inventory, &[inventory_msg(2, None).unknowns(15)]);
    assert_eq!(parse_inventory(&inv).unwrap().img_version, 2);
    let core = image(
        ImageKind::Core,
        &[core_msg(task_core(1, None).unknowns(22)).unknowns(11)],
    );
    assert_eq!(parse_core(&core).unwrap().task_state, TaskState::Alive);
}

// ---- pstree ----

#[test]
fn pstree_round_trip() {
    let recs = [
        pstree_entry(1, 0, &[1, 5]),
        pstree_entry(2, 1, &[2]),
        // Threads packed (CRIU writes them unpacked; both are proto2).
        Msg::new()
            .varint(1, 3)
            .varint(2, 2)
            .varint(3, 3)
            .varint(4, 1)
            .packed(5, &[3, 7, 8])
            .varint(5, 9),
        // A zombie may have no threads.
        pstree_entry(4, 1, &[]),
    ];
    let tree = parse_pstree(&image(ImageKind::Pstree, &recs)).unwrap();
    assert_eq!(
        tree,
        [
            PstreeEntry {
                pid: 1,
                ppid: 0,
                pgid: 1,
                sid: 1,
                threads: vec![1, 5],
            },
            PstreeEntry {
                pid: 2,
                ppid: 1,
                pgid: 2,
                sid: 1,
                threads: vec![2],
            },
            PstreeEntry {
                pid: 3,
                ppid: 2,
                pgid: 3,
                sid: 1,
                threads: vec![3, 7, 8, 9],
            },
            PstreeEntry {
                pid: 4,
                ppid: 1,
                pgid: 4,
                sid: 1,
                threads: vec![],
            },
        ]
    );
    assert_truncations_refused(ImageKind::Pstree, &recs, parse_pstree);
}

#[test]
fn bad_pstrees_are_refused() {
    let refused = |recs: &[Msg]| match parse_pstree(&image(ImageKind::Pstree, recs)) {
        Err(CriuImageError::PstreeEntry {
            index,
            pid,
            problem,
        }) => (index, pid, problem),
        other => panic!("expected a pstree entry error, got {other:?}"),
    };
    assert_eq!(
        parse_pstree(&image(ImageKind::Pstree, &[])),
        Err(CriuImageError::MissingRecord {
            kind: ImageKind::Pstree,
            what: "pstree_entry",
        })
    );
    assert_eq!(
        refused(&[pstree_entry(5, 1, &[5])]),
        (0, 5, PstreeProblem::RootHasParent { ppid: 1 })
    );
    assert_eq!(
        refused(&[pstree_entry(1, 0, &[1]), pstree_entry(3, 2, &[3])]),
        (1, 3, PstreeProblem::UnknownParent { ppid: 2 })
    );
    // A child before its parent, a second root.
    assert_eq!(
        refused(&[
            pstree_entry(1, 0, &[1]),
            pstree_entry(3, 2, &[3]),
            pstree_entry(2, 1, &[2]),
        ]),
        (1, 3, PstreeProblem::UnknownParent { ppid: 2 })
    );
    assert_eq!(
        refused(&[pstree_entry(1, 0, &[1]), pstree_entry(2, 0, &[2])]),
        (1, 2, PstreeProblem::UnknownParent { ppid: 0 })
    );
    assert_eq!(
        refused(&[pstree_entry(1, 0, &[1]), pstree_entry(1, 1, &[1])]),
        (1, 1, PstreeProblem::DuplicatePid)
    );
    assert_eq!(
        refused(&[pstree_entry(0, 0, &[])]),
        (
            0,
            0,
            PstreeProblem::NotAPid {
                what: "pid",
                value: 0,
            }
        )
    );
    assert_eq!(
        refused(&[pstree_entry(1 << 31, 0, &[])]),
        (
            0,
            1 << 31,
            PstreeProblem::NotAPid {
                what: "pid",
                value: 1 << 31,
            }
        )
    );
    assert_eq!(
        refused(&[pstree_entry(1, 0, &[1, 0])]),
        (
            0,
            1,
            PstreeProblem::NotAPid {
                what: "thread id",
                value: 0,
            }
        )
    );
    // Missing required fields.
    for (skip, name) in [(1, "pid"), (2, "ppid"), (3, "pgid"), (4, "sid")] {
        let mut m = Msg::new();
        for tag in (1..=4).filter(|&t| t != skip) {
            m = m.varint(tag, if tag == 2 { 0 } else { 1 });
        }
        let e = proto_err(parse_pstree(&image(ImageKind::Pstree, &[m])));
        assert!(
            matches!(e, ProtoError::MissingField { field } if field.name == name),
            "{e:?}"
        );
    }
    // A thread id over 32 bits, packed or not.
    for m in [
        pstree_entry(1, 0, &[1 << 32]),
        pstree_entry(1, 0, &[]).packed(5, &[1, 1 << 40]),
    ] {
        let e = proto_err(parse_pstree(&image(ImageKind::Pstree, &[m])));
        assert!(matches!(e, ProtoError::OutOfRange { .. }), "{e:?}");
    }
    // A truncated packed list.
    let e = proto_err(parse_pstree(&image(
        ImageKind::Pstree,
        &[pstree_entry(1, 0, &[]).bytes(5, &[1, 0x80])],
    )));
    assert!(matches!(e, ProtoError::TruncatedVarint { .. }), "{e:?}");
}

#[test]
fn repeated_fields_are_capped() {
    let at_cap = vec![1u64; MAX_REPEATED];
    let ok = image(
        ImageKind::Pstree,
        &[pstree_entry(1, 0, &[]).packed(5, &at_cap)],
    );
    assert_eq!(parse_pstree(&ok).unwrap()[0].threads.len(), MAX_REPEATED);
    let over = image(
        ImageKind::Pstree,
        &[pstree_entry(1, 0, &[1]).packed(5, &at_cap)],
    );
    let e = proto_err(parse_pstree(&over));
    assert!(
        matches!(e, ProtoError::TooManyElements { field } if field.name == "threads"),
        "{e:?}"
    );
}

// ---- mm ----

#[test]
fn mm_round_trip_skips_guards() {
    let vmas = [
        vma(0x5555_0000_0000, 0x5555_0000_2000, map::PRIVATE, 1 | 1 << 6),
        vma(0x5555_0000_2000, 0x5555_0002_0000, ANON_PRIVATE, 1 | 1 << 5)
            .varint(9, 1 << 14)
            .varint(10, 0o2),
        vma(
            0x7fff_0000_0000,
            0x7fff_0002_1000,
            ANON_PRIVATE | 0x100,
            1 | 1 << 1,
        ),
        vma(
            0x7fff_ffff_0000,
            0x7fff_ffff_2000,
            ANON_PRIVATE,
            1 | vma_status::VVAR,
        ),
        vma(
            0x7fff_ffff_2000,
            0x7fff_ffff_4000,
            ANON_PRIVATE,
            1 | vma_status::VDSO,
        ),
        vma(
            0xffff_ffff_ff60_0000,
            0xffff_ffff_ff60_1000,
            ANON_PRIVATE,
            vma_status::VSYSCALL,
        ),
        // Guards, at the end, out of order and overlapping.
        vma(
            0x5555_0000_4000,
            0x5555_0000_5000,
            ANON_PRIVATE,
            1 | vma_status::GUARD,
        ),
        vma(
            0x5555_0000_0000,
            0x5555_0000_1000,
            ANON_PRIVATE,
            1 | vma_status::GUARD,
        ),
    ];
    let recs = [mm_msg(&vmas)];
    let mm = parse_mm(&image(ImageKind::Mm, &recs)).unwrap();
    assert_eq!(mm.guards, 2);
    assert_eq!(mm.vmas.len(), 6);
    assert_eq!(
        mm.vmas[1],
        Vma {
            start: 0x5555_0000_2000,
            end: 0x5555_0002_0000,
            pgoff: 0,
            shmid: 0,
            prot: 3,
            flags: ANON_PRIVATE,
            status: 1 | 1 << 5,
            fd: -1,
            madv: Some(1 << 14),
            fdflags: Some(0o2),
        }
    );
    assert_eq!(mm.vmas[0].madv, None);
    assert_eq!(mm.vmas[0].fdflags, None);
    let lazy: Vec<bool> = mm.vmas.iter().map(Vma::can_be_lazy).collect();
    assert_eq!(lazy, [false, true, true, false, false, false]);
    assert_eq!(mm.vma_at(0x5555_0000_4000), Some(&mm.vmas[1]));
    assert_eq!(mm.vma_at(0x5555_0001_ffff), Some(&mm.vmas[1]));
    assert_eq!(mm.vma_at(0x5555_0002_0000), None);
    assert_eq!(mm.vma_at(0), None);
    assert_truncations_refused(ImageKind::Mm, &recs, parse_mm);
}

#[test]
fn can_be_lazy_follows_criu() {
    let v = |flags, status| Vma {
        start: 0,
        end: PS,
        pgoff: 0,
        shmid: 0,
        prot: 3,
        flags,
        status,
        fd: -1,
        madv: None,
        fdflags: None,
    };
    assert!(v(ANON_PRIVATE, 1).can_be_lazy());
    assert!(!v(map::ANONYMOUS | 0x01, 1 | 1 << 8).can_be_lazy()); // shared
    assert!(!v(map::PRIVATE, 1 | 1 << 6).can_be_lazy()); // file private
    assert!(!v(ANON_PRIVATE | map::LOCKED, 1).can_be_lazy());
    assert!(!v(ANON_PRIVATE | map::HUGETLB, 1).can_be_lazy());
    for status in [vma_status::VDSO, vma_status::VVAR, vma_status::VSYSCALL] {
        assert!(!v(ANON_PRIVATE, 1 | status).can_be_lazy());
    }
}

#[test]
fn bad_mms_are_refused() {
    let refused = |vmas: &[Msg]| match parse_mm(&image(ImageKind::Mm, &[mm_msg(vmas)])) {
        Err(CriuImageError::Vma { index, problem, .. }) => (index, problem),
        other => panic!("expected a vma error, got {other:?}"),
    };
    let anon = |s, e| vma(s, e, ANON_PRIVATE, 1);
    assert_eq!(
        refused(&[anon(0x3000, 0x4000), anon(0x1000, 0x2000)]),
        (1, VmaProblem::Order { prev_end: 0x4000 })
    );
    assert_eq!(
        refused(&[anon(0x1000, 0x4000), anon(0x3000, 0x5000)]),
        (1, VmaProblem::Order { prev_end: 0x4000 })
    );
    assert_eq!(refused(&[anon(0x2000, 0x2000)]), (0, VmaProblem::Empty));
    assert_eq!(refused(&[anon(0x3000, 0x2000)]), (0, VmaProblem::Empty));
    assert_eq!(refused(&[anon(0x1000, 0x2001)]), (0, VmaProblem::Unaligned));
    // The index counts guards too.
    assert_eq!(
        refused(&[
            vma(0x1000, 0x2000, ANON_PRIVATE, vma_status::GUARD),
            anon(0x1000, 0x1800)
        ]),
        (1, VmaProblem::Unaligned)
    );
    // A missing required mm field, vma field; a wrong-typed vma field.
    let mut m = Msg::new();
    for tag in 1..=11 {
        m = m.varint(tag, 0);
    }
    let e = proto_err(parse_mm(&image(ImageKind::Mm, &[m])));
    assert!(
        matches!(e, ProtoError::MissingField { field } if field.name == "exe_file_id" && field.tag == 12),
        "{e:?}"
    );
    let no_fd = vma_without_fd();
    let e = proto_err(parse_mm(&image(
        ImageKind::Mm,
        &[mm_msg(&[anon(0, PS), no_fd])],
    )));
    assert!(
        matches!(&e, ProtoError::Element { field, index: 1, .. } if field.name == "vmas"),
        "{e:?}"
    );
    assert!(matches!(innermost(e), ProtoError::MissingField { field } if field.name == "fd"),);
    let e = proto_err(parse_mm(&image(
        ImageKind::Mm,
        &[mm_msg(&[]).varint(14, 3)],
    )));
    assert!(
        matches!(
            innermost(e.clone()),
            ProtoError::WireType {
                got: 0,
                expected: 2,
                ..
            }
        ),
        "{e:?}"
    );
    // One record exactly.
    let two = image(ImageKind::Mm, &[mm_msg(&[]), mm_msg(&[])]);
    assert_eq!(
        parse_mm(&two),
        Err(CriuImageError::ExtraRecords {
            kind: ImageKind::Mm,
            count: 2,
        })
    );
    // A truncated second record is reported as such.
    let mut cut = two.clone();
    cut.truncate(two.len() - 1);
    assert!(matches!(
        parse_mm(&cut),
        Err(CriuImageError::TruncatedRecord { index: 1, .. })
    ));
}

#[test]
fn vma_fd_is_zigzag() {
    let m = vma_without_fd();
    for fd in [-1i64, 0, 5, -300, i64::MIN, i64::MAX] {
        let mm = parse_mm(&image(ImageKind::Mm, &[mm_msg(&[m.clone().sint(8, fd)])])).unwrap();
        assert_eq!(mm.vmas[0].fd, fd);
    }
}

// ---- inventory, core ----

#[test]
fn inventory_round_trip() {
    for (tcp_close, want) in [(None, false), (Some(false), false), (Some(true), true)] {
        let recs = [inventory_msg(2, tcp_close)];
        let inv = parse_inventory(&image(ImageKind::Inventory, &recs)).unwrap();
        assert_eq!(
            inv,
            Inventory {
                img_version: 2,
                tcp_close: want,
                allow_uprobes: false,
            }
        );
        assert_truncations_refused(ImageKind::Inventory, &recs, parse_inventory);
    }
    let inv = parse_inventory(&image(
        ImageKind::Inventory,
        &[inventory_msg(2, None).varint(14, 1)],
    ))
    .unwrap();
    assert!(inv.allow_uprobes);
}

#[test]
fn bad_inventories_are_refused() {
    assert_eq!(
        parse_inventory(&image(ImageKind::Inventory, &[inventory_msg(1, None)])),
        Err(CriuImageError::ImgVersion { got: 1 })
    );
    let e = proto_err(parse_inventory(&image(
        ImageKind::Inventory,
        &[Msg::new().varint(10, 1)],
    )));
    assert!(matches!(e, ProtoError::MissingField { field } if field.name == "img_version"));
    let e = proto_err(parse_inventory(&image(
        ImageKind::Inventory,
        &[inventory_msg(2, None).varint(10, 2)],
    )));
    assert!(matches!(e, ProtoError::OutOfRange { value: 2, .. }));
    assert_eq!(
        parse_inventory(&image(ImageKind::Inventory, &[])),
        Err(CriuImageError::MissingRecord {
            kind: ImageKind::Inventory,
            what: "inventory_entry",
        })
    );
    let two = [inventory_msg(2, None), inventory_msg(2, None)];
    assert!(matches!(
        parse_inventory(&image(ImageKind::Inventory, &two)),
        Err(CriuImageError::ExtraRecords { count: 2, .. })
    ));
}

#[test]
fn core_round_trip() {
    let cases = [
        (1, None, TaskState::Alive),
        (2, None, TaskState::Dead),
        (3, Some(19), TaskState::Stopped),
    ];
    for (state, stop_signo, want) in cases {
        let recs = [core_msg(task_core(state, stop_signo))];
        let core = parse_core(&image(ImageKind::Core, &recs)).unwrap();
        assert_eq!(
            core,
            TaskCore {
                task_state: want,
                exit_code: 0,
                stop_signo,
            }
        );
        assert_truncations_refused(ImageKind::Core, &recs, parse_core);
    }
}

#[test]
fn bad_cores_are_refused() {
    assert_eq!(
        parse_core(&image(ImageKind::Core, &[core_msg(task_core(6, None))])),
        Err(CriuImageError::TaskState { got: 6 })
    );
    // A thread's core (no tc), no mtype.
    let e = proto_err(parse_core(&image(
        ImageKind::Core,
        &[Msg::new().varint(1, 1).bytes(5, &[8, 0])],
    )));
    assert!(matches!(e, ProtoError::MissingField { field } if field.name == "tc"));
    let e = proto_err(parse_core(&image(
        ImageKind::Core,
        &[Msg::new().msg(3, task_core(1, None))],
    )));
    assert!(matches!(e, ProtoError::MissingField { field } if field.name == "mtype"));
    // tc without comm.
    let tc = Msg::new()
        .varint(1, 1)
        .varint(2, 0)
        .varint(3, 0)
        .varint(4, 0)
        .varint(5, 0);
    let e = proto_err(parse_core(&image(ImageKind::Core, &[core_msg(tc)])));
    assert!(matches!(&e, ProtoError::Nested { field, .. } if field.name == "tc"));
    assert!(matches!(innermost(e), ProtoError::MissingField { field } if field.name == "comm"));
    // tc twice.
    let twice = core_msg(task_core(1, None)).msg(3, task_core(3, None));
    let e = proto_err(parse_core(&image(ImageKind::Core, &[twice])));
    assert!(matches!(e, ProtoError::DuplicateField { field } if field.name == "tc"));
}

// ---- file names ----

#[test]
fn file_names() {
    assert_eq!(pagemap_file(42), "pagemap-42.img");
    assert_eq!(mm_file(42), "mm-42.img");
    assert_eq!(core_file(42), "core-42.img");
    assert_eq!(pages_file(1), "pages-1.img");
    for ok in [
        PSTREE_FILE,
        INVENTORY_FILE,
        "pagemap-42.img",
        "pages-1.img",
        "tmpfs-dev-63.tar.gz.img",
        "fdinfo-2.img",
        "ip6tables-9.img",
        "netns_ct-9.img",
        "stats-dump",
        "stats-restore",
        "irmap-cache",
        "x.img",
    ] {
        assert!(is_image_file_name(ok), "{ok:?} refused");
    }
    let long_ok = format!("{}.img", "a".repeat(251));
    assert!(is_image_file_name(&long_ok));
    let too_long = format!("{}.img", "a".repeat(252));
    for bad in [
        "",
        ".img",
        ".",
        "..",
        "../pstree.img",
        "a/b.img",
        "/pstree.img",
        "..img",
        "a..b.img",
        ".hidden.img",
        "-rf.img",
        "_x.img",
        "pstree.img/",
        "pstree.IMG",
        "pstree.img.tmp",
        "lazy-pages.socket",
        "dump.log",
        "stats-dumpx",
        "pstree img.img",
        "pstree\0.img",
        "pstree\n.img",
        "pägemap.img",
        too_long.as_str(),
    ] {
        assert!(!is_image_file_name(bad), "{bad:?} accepted");
    }
}

// ---- images CRIU 4.2.1 wrote (the fuzz seeds) ----

/// A seed of the `criu_images` fuzz target: images of `sleep` processes
/// dumped by CRIU 4.2.1 on x86-64, and two edited ones.
macro_rules! seed {
    ($name:literal) => {
        include_bytes!(concat!("../../../../fuzz/seeds/criu_images/", $name)).as_slice()
    };
}

#[test]
fn images_written_by_criu_4_2_1_parse() {
    let inv = parse_inventory(seed!("inventory")).unwrap();
    assert_eq!((inv.img_version, inv.tcp_close), (IMG_VERSION, false));

    // sh -c 'sleep & sleep & wait'.
    let tree = parse_pstree(seed!("pstree-tree")).unwrap();
    assert_eq!(tree.len(), 3);
    assert!(tree[1..].iter().all(|e| e.ppid == tree[0].pid));
    assert!(tree.iter().all(|e| e.threads == [e.pid]));

    // A normal dump: lazy-able pages are PE_LAZY|PE_PRESENT, all present.
    let pm = parse_pagemap(seed!("pagemap")).unwrap();
    assert!(pm.entries.iter().all(PagemapEntry::is_present));
    assert!(pm.entries.iter().any(PagemapEntry::is_lazy));
    // dump --lazy-pages: lazy pages are PE_LAZY alone.
    let lazy = parse_pagemap(seed!("pagemap-lazy")).unwrap();
    assert!(
        lazy.entries
            .iter()
            .all(|e| e.flags == PE_LAZY || e.flags == PE_PRESENT)
    );
    assert!(!lazy.lazy_ranges().is_empty());
    // Hand-written in 4.1's layout (count in field 2 only).
    let old = parse_pagemap(seed!("pagemap-4.1")).unwrap();
    let flags: Vec<u32> = old.entries.iter().map(|e| e.flags).collect();
    assert_eq!(
        flags,
        [PE_PRESENT, PE_PARENT, PE_LAZY | PE_PRESENT, PE_LAZY]
    );
    assert_eq!(old.entries[2].nr_pages, 16);

    let mm = parse_mm(seed!("mm")).unwrap();
    assert_eq!(mm.guards, 0);
    assert!(mm.vmas.iter().any(Vma::can_be_lazy));
    assert!(
        mm.vmas
            .iter()
            .any(|v| v.status & vma_status::VDSO != 0 && !v.can_be_lazy())
    );
    assert!(mm.vmas.iter().all(|v| v.fd == -1));
    // The same with a guard VMA appended, out of order.
    let guarded = parse_mm(seed!("mm-guard")).unwrap();
    assert_eq!((guarded.guards, &guarded.vmas), (1, &mm.vmas));

    let alive = parse_core(seed!("core-alive")).unwrap();
    assert_eq!(
        (alive.task_state, alive.stop_signo),
        (TaskState::Alive, None)
    );
    // Dumped while SIGSTOPped.
    let stopped = parse_core(seed!("core-stopped")).unwrap();
    assert_eq!(
        (stopped.task_state, stopped.stop_signo),
        (TaskState::Stopped, Some(19))
    );
}

// ---- a real CRIU dump ----

/// A `setsid sleep` child and the dump directory, both removed on drop.
struct DumpTarget {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for DumpTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root"]
fn a_real_criu_dump_parses() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let criu = std::env::var_os("PAGEHOP_CRIU_WRAPPER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/pagehop/bin/criu".into());
    assert!(
        criu.is_file(),
        "CRIU is not installed at {} (run scripts/setup-criu.sh, or set PAGEHOP_CRIU_WRAPPER)",
        criu.display()
    );
    assert_eq!(
        pagehop_sys::effective_uid(),
        0,
        "criu dump needs root: run this test as root (cargo xtask test)"
    );
    let dir = std::env::temp_dir().join(format!("pagehop-criu-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create the images dir");
    // Not a group leader, so setsid execs sleep in the same process.
    let child = Command::new("setsid")
        .arg("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn setsid sleep");
    let target = DumpTarget { child, dir };
    let pid = target.child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .as_deref()
        != Some("sleep\n")
    {
        assert!(Instant::now() < deadline, "{pid} did not become sleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(&criu)
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&target.dir)
        .args(["--shell-job", "--leave-running", "-v4", "-o", "dump.log"])
        .output()
        .expect("run criu");
    if !out.status.success() {
        let log = std::fs::read_to_string(target.dir.join("dump.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "criu dump failed ({}): {}\n--- dump.log (last lines, newest first) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        );
    }
    let read = |name: &str| {
        std::fs::read(target.dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    };

    let inv = parse_inventory(&read(INVENTORY_FILE)).expect("inventory.img");
    assert_eq!(inv.img_version, IMG_VERSION);
    assert!(!inv.tcp_close);

    let tree = parse_pstree(&read(PSTREE_FILE)).expect("pstree.img");
    assert_eq!(tree.len(), 1, "{tree:?}");
    // No pid namespace of its own: its vpid is its host pid.
    assert_eq!(tree[0].pid, pid);
    assert_eq!(tree[0].ppid, 0);
    assert_eq!((tree[0].pgid, tree[0].sid), (pid, pid), "setsid");
    assert_eq!(tree[0].threads, [pid]);

    let core = parse_core(&read(&core_file(pid))).expect("core image");
    assert_eq!(core.task_state, TaskState::Alive);

    let mm = parse_mm(&read(&mm_file(pid))).expect("mm image");
    assert!(mm.vmas.len() > 3, "{:?}", mm.vmas);
    assert!(mm.vmas.iter().any(Vma::can_be_lazy), "{:?}", mm.vmas);

    let pm = parse_pagemap(&read(&pagemap_file(pid))).expect("pagemap image");
    assert!(!pm.entries.is_empty());
    // Every page of every entry is in a VMA (an entry may span adjacent
    // VMAs); lazy pages (a normal dump flags lazy-able pages
    // PE_LAZY|PE_PRESENT) only in lazy-able VMAs, and there are some. (The
    // page holding a thread's stack pointer is not lazy, though in a
    // lazy-able VMA.)
    for e in &pm.entries {
        assert!(e.is_present(), "{e:x?}");
        let mut addr = e.vaddr;
        while addr < e.end() {
            let vma = mm
                .vma_at(addr)
                .unwrap_or_else(|| panic!("{addr:#x} of {e:x?} is in no VMA"));
            assert!(!e.is_lazy() || vma.can_be_lazy(), "{e:x?} in {vma:x?}");
            addr = vma.end;
        }
    }
    assert!(!pm.lazy_ranges().is_empty());
    let pages = read(&pages_file(pm.pages_id));
    assert_eq!(pages.len() as u64, pm.present_pages() * PS);

    // Every file CRIU wrote passes the name check (the log is ours).
    for name in std::fs::read_dir(&target.dir).expect("list the images dir") {
        let name = name.expect("dir entry").file_name();
        let name = name.to_str().expect("an ASCII name");
        if name != "dump.log" {
            assert!(is_image_file_name(name), "{name:?} refused");
        }
    }
}
