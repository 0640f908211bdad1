//! The receive path of the wire protocol on arbitrary bytes: `FrameReader`,
//! every message decoder, and `decode_batch` for `Pages` payloads.
//!
//! The first input byte picks how the rest is used:
//! - bit 0 clear: the rest is a byte stream read frame by frame, as from a
//!   socket (headers, caps and crcs checked on whatever arrives);
//! - bit 0 set: the rest is a list of `kind u8 | len u16 LE | payload`
//!   chunks, sent as frames with valid headers and crcs, so that the
//!   message decoders see arbitrary payloads (a random stream almost never
//!   gets past the crc).
//!
//! Bits 1-6 pick a second page size `decode_batch` is tried with (2^bits,
//! any power of two a caller could pass), besides 4096.
//!
//! Oracles: nothing panics, and whatever decodes re-encodes to the same
//! bytes (encodings are canonical) and decodes again to the same value; an
//! lz4 batch rebuilt raw decodes to the same space, round and pages.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use pagehop_wire::FrameReader;
use pagehop_wire::batch::{self, decode_batch};
use pagehop_wire::frame::{FrameKind, encode_frame};
use pagehop_wire::msg::{
    Attach, Auth, Commit, Done, EndOfRound, ErrorMsg, Hello, ImageChunk, Layout, LayoutAck,
    Message, PageRequest, Pending, Restored, Stats, Switchover, VerifyDigests, VerifyResult,
};

/// Most frames read from one input (the stream is finite anyway).
const MAX_FRAMES: usize = 64;
/// Largest decompressed batch data copied into a raw rebuild.
const MAX_RAW_COPY: usize = 1 << 20;

fn round_trip<M: Message + PartialEq + Debug>(payload: &[u8]) {
    if let Ok(m) = M::decode(payload) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(out, payload, "{}: {m:?} re-encodes differently", M::KIND);
        assert_eq!(M::decode(&out).expect("re-decode"), m);
    }
}

fn pages(payload: &[u8], page_size: usize, scratch: &mut Vec<u8>) {
    let Ok(b) = decode_batch(payload, page_size, scratch) else {
        return;
    };
    let (mut zero, mut data, mut prev) = (0usize, 0usize, None);
    let mut entries = Vec::with_capacity(b.len());
    for (addr, page) in b.iter() {
        assert_eq!(addr % page_size as u64, 0);
        assert!(addr < batch::ADDR_LIMIT);
        assert!(prev.is_none_or(|p| p < addr), "addresses not increasing");
        prev = Some(addr);
        match page {
            None => zero += 1,
            Some(p) => {
                assert_eq!(p.len(), page_size);
                data += 1;
            }
        }
        entries.push(batch::entry(addr, page.is_none()));
    }
    assert_eq!(zero + data, b.len());
    assert_eq!(b.zero_pages(), zero);
    assert_eq!(b.data().len(), data * page_size);
    // Rebuilt raw (space, round, entries and data as decoded): a raw batch
    // gives the same bytes (raw batches are canonical); an lz4 one (while
    // its copy stays small) decodes to the same space, round and pages.
    if b.was_compressed() && b.data().len() > MAX_RAW_COPY {
        return;
    }
    let mut out = Vec::new();
    let len = b.data().len() as u32;
    batch::batch_prefix(b.space, b.round, false, &entries, len, len, &mut out);
    out.extend_from_slice(b.data());
    if !b.was_compressed() {
        assert_eq!(out, payload, "raw batch re-encodes differently");
    } else {
        let mut raw_scratch = Vec::new();
        let again = decode_batch(&out, page_size, &mut raw_scratch).expect("raw rebuild");
        assert_eq!((again.space, again.round), (b.space, b.round));
        assert!(again.iter().eq(b.iter()), "raw rebuild has other pages");
    }
}

fn decode(kind: FrameKind, payload: &[u8], page_size: usize, scratch: &mut Vec<u8>) {
    match kind {
        FrameKind::Hello => round_trip::<Hello>(payload),
        FrameKind::Auth => round_trip::<Auth>(payload),
        FrameKind::Layout => round_trip::<Layout>(payload),
        FrameKind::Pages => {
            pages(payload, 4096, scratch);
            pages(payload, page_size, scratch);
        }
        FrameKind::EndOfRound => round_trip::<EndOfRound>(payload),
        FrameKind::Switchover => round_trip::<Switchover>(payload),
        FrameKind::Done => round_trip::<Done>(payload),
        FrameKind::Error => round_trip::<ErrorMsg>(payload),
        FrameKind::Stats => round_trip::<Stats>(payload),
        FrameKind::VerifyDigests => round_trip::<VerifyDigests>(payload),
        FrameKind::VerifyResult => round_trip::<VerifyResult>(payload),
        FrameKind::PageRequest => round_trip::<PageRequest>(payload),
        FrameKind::LayoutAck => round_trip::<LayoutAck>(payload),
        FrameKind::Attach => round_trip::<Attach>(payload),
        FrameKind::Pending => round_trip::<Pending>(payload),
        FrameKind::ImageChunk => round_trip::<ImageChunk>(payload),
        FrameKind::Restored => round_trip::<Restored>(payload),
        FrameKind::Commit => round_trip::<Commit>(payload),
    }
}

/// Valid frames from `kind u8 | len u16 | payload` chunks (payloads cut to
/// what is left and to the kind's cap; unknown kinds wrap around).
fn reframe(mut data: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    while data.len() >= 3 {
        let kind = FrameKind::ALL[data[0] as usize % FrameKind::ALL.len()];
        let len = u16::from_le_bytes([data[1], data[2]]) as usize;
        let len = len.min(data.len() - 3).min(kind.max_payload() as usize);
        encode_frame(kind, &data[3..3 + len], &mut stream);
        data = &data[3 + len..];
    }
    stream
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let page_size = 1usize << ((mode >> 1) & 0x3f);
    let stream;
    let bytes = if mode & 1 == 0 {
        rest
    } else {
        stream = reframe(rest);
        &stream[..]
    };
    let mut reader = FrameReader::new(bytes);
    let mut scratch = Vec::new();
    for _ in 0..MAX_FRAMES {
        let Ok((kind, payload)) = reader.read_frame() else {
            break;
        };
        assert!(payload.len() <= kind.max_payload() as usize);
        decode(kind, payload, page_size, &mut scratch);
    }
});
