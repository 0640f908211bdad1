//! Wire protocol micro-benchmarks: frames (header crc, encode, read and
//! check; sealing in place and sealing plus opening, AES-256-GCM, beside
//! the crc), typed messages (encode, decode) and `Pages` batches (encode with
//! and without lz4, decode and iterate), with byte throughput.
//!
//! `cargo bench --bench micro_wire` (no root needed); criterion options
//! after `--`, e.g. `-- pages_batch` or `-- --measurement-time 5`.
use std::hint::black_box;
use std::io::Read;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagehop::wire::auth::Token;
use pagehop::wire::batch::{self, Compress};
use pagehop::wire::frame::{
    FrameKind, FrameOpen, FrameSeal, HEADER_LEN, encode_frame, frame_header,
};
use pagehop::wire::msg::{
    CAP_LZ4, CAP_VERIFY, EndOfRound, Hello, Layout, PageRequest, Role, VerifyDigests, VmaDesc,
};
use pagehop::wire::seal::{Direction, Handshake, TAG_LEN, connection_keys};
use pagehop::wire::{FrameReader, SpaceKey};

mod micro_common;
use micro_common::{PAGE, Texture, config, pages};

/// Pages per batch, as the sender builds them (`migrate::stream::BATCH_PAGES`).
const BATCH_PAGES: usize = 256;

/// An endless byte stream repeating one buffer: a socket that always has
/// the next frame ready.
struct Repeat {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Repeat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.data.len();
        Ok(n)
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for (label, kind, len) in [
        ("48B", FrameKind::Hello, 48usize),
        ("4KiB", FrameKind::Stats, 4096),
        ("1MiB", FrameKind::Pages, BATCH_PAGES * PAGE),
    ] {
        let payload = pages(Texture::Random, len.div_ceil(PAGE));
        let payload = &payload[..len];
        g.throughput(Throughput::Bytes((HEADER_LEN + len) as u64));
        // What a vectored sender does: the header's crc over the payload.
        g.bench_function(BenchmarkId::new("header_crc", label), |b| {
            b.iter(|| frame_header(kind, &[black_box(payload)]))
        });
        // Header and payload copied into one buffer.
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        g.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| {
                out.clear();
                encode_frame(kind, black_box(payload), &mut out);
                out.len()
            })
        });
        // Read from a stream into the reader's buffer, header and crc checked.
        let mut stream = Vec::new();
        encode_frame(kind, payload, &mut stream);
        let mut reader = FrameReader::new(Repeat {
            data: stream,
            pos: 0,
        });
        g.bench_function(BenchmarkId::new("read", label), |b| {
            b.iter(|| reader.read_frame().expect("frame").1.len())
        });
        // What a sealed lane's sender does instead of the crc: encrypt the
        // payload in place and write the tag (the same buffer each time).
        let (mut seal, mut open) = sealed_pair();
        let mut buf = vec![0u8; HEADER_LEN + len + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(payload);
        g.bench_function(BenchmarkId::new("seal", label), |b| {
            b.iter(|| seal.finish(kind, black_box(&mut buf), len).expect("seal"))
        });
        // Both ends: seal, then check and decrypt (keys in lockstep).
        let (mut seal, _) = sealed_pair();
        g.bench_function(BenchmarkId::new("seal_open", label), |b| {
            b.iter(|| {
                let n = seal.finish(kind, &mut buf, len).expect("seal");
                let (head, rest) = buf[..n].split_at_mut(HEADER_LEN);
                let header: &[u8; HEADER_LEN] = (&*head).try_into().expect("16 bytes");
                open.open(header, rest).expect("open").1
            })
        });
    }
    g.finish();
}

/// The two ends of one direction of a sealed connection.
fn sealed_pair() -> (FrameSeal, FrameOpen) {
    let token = Token::new(b"micro-benchmark-token-0123", "bench").expect("token");
    let (s, d, t) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let hs = Handshake {
        source_nonce: &s,
        destination_nonce: &d,
        transcript: &t,
    };
    let (seal, _) = connection_keys(token.prk(), Direction::SourceToDestination, &hs);
    let (_, open) = connection_keys(token.prk(), Direction::DestinationToSource, &hs);
    (
        FrameSeal::Sealed(Box::new(seal)),
        FrameOpen::Sealed(Box::new(open)),
    )
}

fn layout(vmas: usize) -> Layout {
    Layout {
        space: SpaceKey::ROOT,
        vmas: (0..vmas as u64)
            .map(|i| VmaDesc {
                start: 0x5555_0000_0000 + i * 0x20_0000,
                end: 0x5555_0000_0000 + i * 0x20_0000 + 0x1_0000,
                prot: 3,
                flags: 1,
                name: if i % 4 == 0 {
                    format!("/usr/lib/x86_64-linux-gnu/libexample-{i}.so.1")
                } else {
                    String::new()
                },
            })
            .collect(),
    }
}

fn messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg");
    macro_rules! bench_msg {
        ($label:expr, $ty:ty, $msg:expr) => {{
            let msg: $ty = $msg;
            let mut payload = Vec::new();
            msg.encode(&mut payload);
            g.throughput(Throughput::Bytes(payload.len() as u64));
            let mut out = Vec::with_capacity(payload.len());
            g.bench_function(BenchmarkId::new("encode", $label), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(&msg).encode(&mut out);
                    out.len()
                })
            });
            g.bench_function(BenchmarkId::new("decode", $label), |b| {
                b.iter(|| <$ty>::decode(black_box(&payload)).expect("decode"))
            });
        }};
    }
    bench_msg!(
        "Hello",
        Hello,
        Hello {
            version: 1,
            page_size: 4096,
            capabilities: CAP_LZ4 | CAP_VERIFY,
            role: Role::Source,
            nonce: [7; 32],
            protection: pagehop::wire::msg::Protection::Sealed,
        }
    );
    bench_msg!(
        "EndOfRound",
        EndOfRound,
        EndOfRound {
            round: 3,
            pages: 1234,
            bytes_raw: 1234 * 4096,
            bytes_wire: 99_999,
        }
    );
    bench_msg!(
        "PageRequest",
        PageRequest,
        PageRequest {
            space: SpaceKey::ROOT,
            addr: 0x7f00_1234_5000,
            pages: 16,
        }
    );
    bench_msg!("Layout-256vmas", Layout, layout(256));
    bench_msg!(
        "VerifyDigests-65536",
        VerifyDigests,
        VerifyDigests {
            space: SpaceKey::ROOT,
            start: 0x7f00_0000_0000,
            hashes: (0..65536u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect(),
        }
    );
    g.finish();
}

/// A batch of `BATCH_PAGES` pages at consecutive addresses, every eighth a
/// zero page: entries and the non-zero pages' data.
fn batch_input(texture: Texture) -> (Vec<u64>, Vec<u8>) {
    let data_pages = BATCH_PAGES - BATCH_PAGES / 8;
    let entries = (0..BATCH_PAGES as u64)
        .map(|i| batch::entry(0x6000_0000_0000 + i * PAGE as u64, i % 8 == 7))
        .collect();
    (entries, pages(texture, data_pages))
}

fn page_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("pages_batch");
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    for texture in [Texture::Compressible, Texture::Random] {
        let (entries, data) = batch_input(texture);
        g.throughput(Throughput::Bytes(data.len() as u64));
        for (mode_name, mode) in [("off", Compress::Off), ("lz4", Compress::Lz4)] {
            g.bench_function(
                BenchmarkId::new(format!("encode-{mode_name}"), texture.name()),
                |b| {
                    b.iter(|| {
                        out.clear();
                        batch::encode_batch(
                            SpaceKey::ROOT,
                            1,
                            &entries,
                            black_box(&data),
                            mode,
                            &mut scratch,
                            &mut out,
                        );
                        out.len()
                    })
                },
            );
            let mut payload = Vec::new();
            batch::encode_batch(
                SpaceKey::ROOT,
                1,
                &entries,
                &data,
                mode,
                &mut Vec::new(),
                &mut payload,
            );
            let mut dscratch = Vec::new();
            let compressed = batch::decode_batch(&payload, PAGE, &mut dscratch)
                .expect("decode")
                .was_compressed();
            if mode == Compress::Lz4 && !compressed {
                // lz4 did not pay off (random pages): the batch went raw,
                // and decoding it is the decode-off case.
                continue;
            }
            g.bench_function(
                BenchmarkId::new(format!("decode-{mode_name}"), texture.name()),
                |b| {
                    b.iter(|| {
                        let batch = batch::decode_batch(black_box(&payload), PAGE, &mut dscratch)
                            .expect("decode");
                        batch.iter().filter(|(_, p)| p.is_some()).count()
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = frames, messages, page_batches
}
criterion_main!(benches);
