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
    assert_eq!(&f[4..6], &PROTOCOL_VERSION.to_le_bytes());
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
    assert!(FrameKind::from_u16(FrameKind::ALL.len() as u16 + 1).is_none());
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
    // An older peer (the previous version), a newer one, and nonsense.
    for got in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 0, u16::MAX] {
        // A frame as that peer would send it: its crc is valid.
        let mut f = frame(FrameKind::Hello, b"hi");
        f[4..6].copy_from_slice(&got.to_le_bytes());
        let crc = crc32fast::hash(&[&f[..12], b"hi"].concat());
        f[12..16].copy_from_slice(&crc.to_le_bytes());
        let err = FrameReader::new(&f[..])
            .read_frame()
            .expect_err("another version");
        match err {
            FrameError::Version {
                got: g,
                supported: PROTOCOL_VERSION,
            } if g == got => {}
            ref other => panic!("version {got}: {other:?}"),
        }
        // The non-blocking path refuses it the same way.
        let header: &[u8; HEADER_LEN] = f[..HEADER_LEN].try_into().expect("header");
        assert!(matches!(
            decode_header(header),
            Err(FrameError::Version { got: g, .. }) if g == got
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "peer speaks wire protocol version {got}, \
                 this build supports version {PROTOCOL_VERSION}"
            )
        );
    }
}

#[test]
fn bad_magic_and_kind() {
    let mut f = frame(FrameKind::Hello, b"");
    f[0] = b'X';
    assert!(matches!(
        FrameReader::new(&f[..]).read_frame(),
        Err(FrameError::Magic { .. })
    ));
    for kind in [0u16, FrameKind::ALL.len() as u16 + 1, 0xffff] {
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

/// Both ends' seals of one connection, keyed from a test token.
fn sealed_pair() -> (FrameSeal, FrameOpen) {
    use crate::seal::{Direction, Handshake, connection_keys};
    let token = crate::auth::Token::new(b"0123456789abcdef", "test").expect("token");
    let (ns, nd, t) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let hs = Handshake {
        source_nonce: &ns,
        destination_nonce: &nd,
        transcript: &t,
    };
    let (seal, _) = connection_keys(token.prk(), Direction::SourceToDestination, &hs);
    let (_, open) = connection_keys(token.prk(), Direction::DestinationToSource, &hs);
    (
        FrameSeal::Sealed(Box::new(seal)),
        FrameOpen::Sealed(Box::new(open)),
    )
}

fn sealed_frame(seal: &mut FrameSeal, kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(payload);
    seal.finish_vec(kind, &mut out, 0).expect("seal");
    out
}

#[test]
fn sealed_frames_read_back_encrypted_on_the_wire() {
    let (mut seal, open) = sealed_pair();
    let payload = vec![0x5a; 5000];
    let mut stream = sealed_frame(&mut seal, FrameKind::Pages, &payload);
    assert_eq!(stream.len(), HEADER_LEN + payload.len() + TAG_LEN);
    assert_eq!(&stream[12..16], &[0; 4], "no crc in a sealed frame");
    assert!(
        !stream[HEADER_LEN..]
            .windows(64)
            .any(|w| w == &payload[..64])
    );
    stream.extend(sealed_frame(&mut seal, FrameKind::Done, &[1, 2, 3]));
    let mut reader = FrameReader::with(&stream[..], open);
    assert_eq!(
        reader.read_frame().expect("pages"),
        (FrameKind::Pages, &payload[..])
    );
    assert_eq!(
        reader.read_frame().expect("done"),
        (FrameKind::Done, &[1u8, 2, 3][..])
    );
}

#[test]
fn a_sealed_frame_altered_anywhere_is_refused() {
    let (mut seal, _) = sealed_pair();
    let frame = sealed_frame(&mut seal, FrameKind::Pages, &[7u8; 300]);
    for at in (0..frame.len()).filter(|&i| !(8..12).contains(&i) && i >= 6) {
        let mut bad = frame.clone();
        bad[at] ^= 0x01;
        let (_, open) = sealed_pair();
        let err = FrameReader::with(&bad[..], open)
            .read_frame()
            .expect_err("altered");
        assert!(
            matches!(err, FrameError::Sealed { .. } | FrameError::Kind { .. }),
            "byte {at}: {err}"
        );
    }
    // A plain frame (a crc recomputed by an attacker) does not pass either.
    let (_, open) = sealed_pair();
    let plain = super::tests::frame(FrameKind::Done, &[0; 16]);
    assert!(FrameReader::with(&plain[..], open).read_frame().is_err());
}

#[test]
fn before_authentication_only_small_frames_are_read() {
    let big = frame(FrameKind::Layout, &vec![0u8; 5000]);
    let mut reader = FrameReader::new(&big[..]);
    reader.set_limit(Some(4096));
    assert!(matches!(
        reader.read_frame(),
        Err(FrameError::BeforeAuth {
            len: 5000,
            max: 4096,
            ..
        })
    ));
}
