//! Message-specific checks: exact layouts, error fields and string cuts.
//! Every kind's round trip, truncations, trailing bytes and corruptions are
//! in `decoder_tests`.

use super::*;
use pagehop_mem::SpaceKey;

fn encoded<M: Message>(m: &M) -> Vec<u8> {
    let mut p = Vec::new();
    m.encode(&mut p);
    p
}

/// Concatenated little-endian fields.
macro_rules! le {
    ($($v:expr),* $(,)?) => {{
        let mut p: Vec<u8> = Vec::new();
        $(p.extend_from_slice(&$v.to_le_bytes());)*
        p
    }};
}

/// The fixed-size messages byte for byte, as the module docs draw them.
#[test]
fn fixed_layouts_match_the_docs() {
    let hello = Hello {
        version: 0x0102,
        page_size: 0x1000,
        capabilities: 0x0807_0605_0403_0201,
        role: Role::Destination,
        nonce: [0xee; 32],
        protection: crate::msg::Protection::Sealed,
    };
    let mut expected = le!(0x0102u16, 2u8, 3u8, 0x1000u32, 0x0807_0605_0403_0201u64);
    expected.extend_from_slice(&[0xee; 32]);
    assert_eq!(encoded(&hello), expected);
    assert_eq!(encoded(&Auth { mac: [9; 32] }), [9; 32]);
    let end = EndOfRound {
        round: 3,
        pages: 4,
        bytes_raw: 5,
        bytes_wire: 6,
    };
    assert_eq!(encoded(&end), le!(3u32, 4u64, 5u64, 6u64));
    let switchover = Switchover {
        final_round: 7,
        postcopy: true,
        criu: false,
    };
    assert_eq!(encoded(&switchover), le!(7u32, 1u8, 0u8));
    assert_eq!(encoded(&Restored { tasks: 3 }), le!(3u32));
    assert_eq!(encoded(&Commit { tasks: 4 }), le!(4u32));
    assert_eq!(encoded(&Done { pages_sent: 8 }), le!(8u64));
    let result = VerifyResult {
        mismatch: Some(0x5000),
        pages_checked: 9,
    };
    assert_eq!(encoded(&result), le!(1u8, 0x5000u64, 9u64));
    let request = PageRequest {
        space: SpaceKey(7),
        addr: 0x6000,
        pages: 10,
    };
    assert_eq!(encoded(&request), le!(7u32, 0x6000u64, 10u32));
    assert_eq!(encoded(&request).len(), 16);
    assert_eq!(encoded(&LayoutAck { vmas: 11 }), le!(11u32));
    let attach = Attach {
        session: 12,
        lane: Lane::Data,
        epoch: 13,
    };
    assert_eq!(encoded(&attach), le!(12u64, 2u8, 13u32));
}

/// The variable-length messages byte for byte.
#[test]
fn variable_layouts_match_the_docs() {
    let layout = Layout {
        space: SpaceKey(7),
        vmas: vec![VmaDesc {
            start: 0x1000,
            end: 0x3000,
            prot: 5,
            flags: 6,
            name: "ab".into(),
        }],
    };
    let mut expected = le!(7u32, 1u32, 0x1000u64, 0x3000u64, 5u32, 6u32, 2u32);
    expected.extend_from_slice(b"ab");
    assert_eq!(encoded(&layout), expected);
    let error = ErrorMsg {
        code: 7,
        message: "no".into(),
    };
    assert_eq!(encoded(&error), [le!(7u32, 2u32), b"no".to_vec()].concat());
    let stats = Stats { json: "{}".into() };
    assert_eq!(encoded(&stats), [le!(2u32), b"{}".to_vec()].concat());
    let digests = VerifyDigests {
        space: SpaceKey(7),
        start: 0x8000,
        hashes: vec![1, 2],
    };
    assert_eq!(encoded(&digests), le!(7u32, 0x8000u64, 2u32, 1u64, 2u64));
    let pending = Pending {
        space: SpaceKey(7),
        ranges: vec![(0x1000, 0x2000)],
        last: true,
    };
    assert_eq!(
        encoded(&pending),
        le!(7u32, 1u8, 1u32, 0x1000u64, 0x2000u64)
    );
}

/// `space` is the first field (bytes 0..4) of every message about an
/// address space, and any u32 there decodes to that space, the rest of the
/// message unchanged.
#[test]
fn space_leads_and_round_trips() {
    fn check<M: Message + PartialEq + std::fmt::Debug>(
        make: impl Fn(SpaceKey) -> M,
        space: impl Fn(&M) -> SpaceKey,
    ) {
        let p = encoded(&make(SpaceKey(7)));
        assert_eq!(p[..4], 7u32.to_le_bytes(), "{}", M::KIND);
        for key in [
            SpaceKey::ROOT,
            SpaceKey(1),
            SpaceKey(0x8000_0001),
            SpaceKey(u32::MAX),
        ] {
            let mut p = p.clone();
            p[..4].copy_from_slice(&key.0.to_le_bytes());
            let m = M::decode(&p).expect("decode");
            assert_eq!(space(&m), key, "{}", M::KIND);
            assert_eq!(m, make(key), "{}", M::KIND);
            assert_eq!(encoded(&m), p, "{}", M::KIND);
        }
    }
    check(
        |space| Layout {
            space,
            vmas: vec![VmaDesc {
                start: 0x1000,
                end: 0x3000,
                prot: 3,
                flags: 0,
                name: "[heap]".into(),
            }],
        },
        |m| m.space,
    );
    check(
        |space| Layout {
            space,
            vmas: vec![],
        },
        |m| m.space,
    );
    check(
        |space| VerifyDigests {
            space,
            start: 0x8000,
            hashes: vec![5, 6, 7],
        },
        |m| m.space,
    );
    check(
        |space| Pending {
            space,
            ranges: vec![(0x1000, 0x2000)],
            last: false,
        },
        |m| m.space,
    );
    check(
        |space| PageRequest {
            space,
            addr: 0x7f00_0000_0000,
            pages: 1,
        },
        |m| m.space,
    );
}

/// A payload too short for a fixed run of fields names the first field it
/// does not hold, where that field starts and how long it is.
#[test]
fn short_payloads_name_the_missing_field() {
    let hello = encoded(&Hello {
        version: 1,
        page_size: 4096,
        capabilities: 0,
        role: Role::Source,
        nonce: [0; 32],
        protection: crate::msg::Protection::None,
    });
    for (cut, expected) in [
        (0, "Hello: version needs 2 bytes at offset 0, payload has 0"),
        (1, "Hello: version needs 2 bytes at offset 0, payload has 1"),
        (
            3,
            "Hello: protection needs 1 bytes at offset 3, payload has 3",
        ),
        (
            20,
            "Hello: nonce needs 32 bytes at offset 16, payload has 20",
        ),
        (
            47,
            "Hello: nonce needs 32 bytes at offset 16, payload has 47",
        ),
    ] {
        let e = Hello::decode(&hello[..cut]).expect_err("short");
        assert_eq!(e.to_string(), expected);
    }
    let attach = encoded(&Attach {
        session: 1,
        lane: Lane::Control,
        epoch: 2,
    });
    let e = Attach::decode(&attach[..8]).expect_err("short");
    assert_eq!(
        e.to_string(),
        "Attach: lane needs 1 bytes at offset 8, payload has 8"
    );
    // The space, before anything else.
    for (e, expected) in [
        (
            Layout::decode(&[7, 0]).expect_err("short"),
            "Layout: space needs 4 bytes at offset 0, payload has 2",
        ),
        (
            VerifyDigests::decode(&[7, 0, 0]).expect_err("short"),
            "VerifyDigests: space needs 4 bytes at offset 0, payload has 3",
        ),
        (
            Pending::decode(&[7, 0, 0, 0]).expect_err("short"),
            "Pending: last needs 1 bytes at offset 4, payload has 4",
        ),
        (
            PageRequest::decode(&[7]).expect_err("short"),
            "PageRequest: space needs 4 bytes at offset 0, payload has 1",
        ),
        (
            PageRequest::decode(&le!(7u32, 0x1000u64)).expect_err("short"),
            "PageRequest: pages needs 4 bytes at offset 12, payload has 12",
        ),
    ] {
        assert_eq!(e.to_string(), expected);
    }
    // Inside a vector: the second VMA's `prot`.
    let layout = encoded(&Layout {
        space: SpaceKey(7),
        vmas: vec![
            VmaDesc {
                start: 0x1000,
                end: 0x2000,
                prot: 0,
                flags: 0,
                name: "x".repeat(40),
            };
            2
        ],
    });
    let e = Layout::decode(&layout[..8 + 68 + 18]).expect_err("short");
    assert_eq!(
        e.to_string(),
        "Layout: prot needs 4 bytes at offset 92, payload has 94"
    );
    let e = ErrorMsg::decode(&[1, 0]).expect_err("short");
    assert_eq!(
        e.to_string(),
        "Error: code needs 4 bytes at offset 0, payload has 2"
    );
}

fn layout_payload(vmas: &[(u64, u64, &[u8])]) -> Vec<u8> {
    let mut p = le!(7u32, vmas.len() as u32);
    for (start, end, name) in vmas {
        p.extend(le!(*start, *end, 0u32, 0u32, name.len() as u32));
        p.extend_from_slice(name);
    }
    p
}

#[test]
fn layout_validation() {
    let valid = Layout::decode(&layout_payload(&[(0x1000, 0x3000, b"ok")])).expect("valid");
    assert_eq!(valid.space, SpaceKey(7));
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
    assert!(matches!(
        Layout::decode(&le!(0u32, MAX_VMAS as u32)),
        Err(MsgError::Short {
            field: "vma count",
            ..
        })
    ));
    assert!(matches!(
        Layout::decode(&le!(0u32, u32::MAX)),
        Err(MsgError::TooLong {
            field: "vma count",
            ..
        })
    ));
    assert!(matches!(
        VerifyDigests::decode(&le!(0u32, 0u64, MAX_HASHES as u32 + 1)),
        Err(MsgError::TooLong {
            field: "hash count",
            ..
        })
    ));
    assert!(matches!(
        Pending::decode(&le!(0u32, 0u8, MAX_PENDING_RANGES as u32)),
        Err(MsgError::Short {
            field: "range count",
            ..
        })
    ));
    assert!(matches!(
        ErrorMsg::decode(&le!(1u32, u32::MAX)),
        Err(MsgError::TooLong { .. })
    ));
}

#[test]
fn long_strings_are_cut_at_char_boundaries() {
    let m = ErrorMsg {
        code: 1,
        message: "ü".repeat(MAX_ERROR_MESSAGE),
    };
    let p = encoded(&m);
    assert!(p.len() <= FrameKind::Error.max_payload() as usize);
    let got = ErrorMsg::decode(&p).expect("decode");
    assert_eq!(got.message.len(), MAX_ERROR_MESSAGE);
    assert!(m.message.starts_with(&got.message));
}

#[test]
fn addresses_beyond_user_space_are_refused_before_any_arithmetic() {
    use crate::msg::{MAX_USER_ADDRESS, PageRequest, Pending, VerifyDigests};
    let top = MAX_USER_ADDRESS;
    let req = |addr| {
        encoded(&PageRequest {
            space: SpaceKey::ROOT,
            addr,
            pages: 1,
        })
    };
    assert!(PageRequest::decode(&req(top - 4096)).is_ok());
    for bad in [top, !4095, 0x1001] {
        let e = PageRequest::decode(&req(bad)).expect_err("refused");
        assert!(e.to_string().contains("addr"), "{e}");
    }
    let digests = |start| {
        encoded(&VerifyDigests {
            space: SpaceKey::ROOT,
            start,
            hashes: vec![1, 2],
        })
    };
    assert!(VerifyDigests::decode(&digests(0x1000)).is_ok());
    for bad in [top, u64::MAX - 4095, 0x1234] {
        assert!(VerifyDigests::decode(&digests(bad)).is_err(), "{bad:#x}");
    }
    let pending = |end| {
        encoded(&Pending {
            space: SpaceKey::ROOT,
            ranges: vec![(0x1000, end)],
            last: true,
        })
    };
    assert!(Pending::decode(&pending(top)).is_ok());
    assert!(Pending::decode(&pending(top + 4096)).is_err());
}
