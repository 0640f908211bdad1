//! lz4 on typical pages, side by side: zero-ish, text, the workload's
//! compressible fill, random. Compression as the sender does it
//! (`wire::batch::compress_pages` over a batch's data, `Compress::Lz4`),
//! decompression as the receiver does it (`lz4_flex::block::decompress_into`,
//! what `decode_batch` calls), and the zero-page check that runs on every
//! page before either. Throughput is in uncompressed bytes; the compression
//! ratio of each texture is printed once.
//!
//! `cargo bench --bench micro_lz4` (no root needed).
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagehop::wire::batch::{Compress, compress_pages, is_zero_page};

mod micro_common;
use micro_common::{PAGE, Texture, config, pages};

/// One page, and one sender batch of 256 pages (1 MiB).
const SIZES: [(&str, usize); 2] = [("1page", 1), ("256pages", 256)];

fn compress(c: &mut Criterion) {
    let mut g = c.benchmark_group("lz4_compress");
    let mut out = Vec::new();
    for (size_name, n) in SIZES {
        for texture in Texture::ALL {
            let data = pages(texture, n);
            if n > 1 {
                let shrank = compress_pages(&data, Compress::Lz4, &mut out);
                let wire = if shrank { out.len() } else { data.len() };
                eprintln!(
                    "lz4 {:>12}: {} -> {} bytes (x{:.2}{})",
                    texture.name(),
                    data.len(),
                    wire,
                    data.len() as f64 / wire as f64,
                    if shrank { "" } else { ", sent raw" }
                );
            }
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_function(BenchmarkId::new(texture.name(), size_name), |b| {
                b.iter(|| compress_pages(black_box(&data), Compress::Lz4, &mut out))
            });
        }
    }
    g.finish();
}

fn decompress(c: &mut Criterion) {
    let mut g = c.benchmark_group("lz4_decompress");
    for (size_name, n) in SIZES {
        for texture in Texture::ALL {
            let data = pages(texture, n);
            let mut block = Vec::new();
            if !compress_pages(&data, Compress::Lz4, &mut block) {
                continue; // never sent compressed
            }
            let mut out = vec![0u8; data.len()];
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_function(BenchmarkId::new(texture.name(), size_name), |b| {
                b.iter(|| {
                    lz4_flex::block::decompress_into(black_box(&block), &mut out)
                        .expect("decompress")
                })
            });
        }
    }
    g.finish();
}

fn zero_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("zero_page_check");
    g.throughput(Throughput::Bytes(PAGE as u64));
    let zero = vec![0u8; PAGE];
    g.bench_function("zero", |b| b.iter(|| is_zero_page(black_box(&zero))));
    // The worst case: zero up to the last byte.
    let mut last = vec![0u8; PAGE];
    last[PAGE - 1] = 1;
    g.bench_function("last-byte-set", |b| {
        b.iter(|| is_zero_page(black_box(&last)))
    });
    // The common case: a data page, non-zero in its first block.
    let random = pages(Texture::Random, 1);
    g.bench_function("random", |b| b.iter(|| is_zero_page(black_box(&random))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = compress, decompress, zero_check
}
criterion_main!(benches);
