//! Helpers shared by the criterion micro-benchmarks (`micro_*.rs`); not a
//! benchmark itself.
#![allow(dead_code)] // each benchmark uses part of it

use std::time::Duration;

use criterion::Criterion;
use pagehop_workload::Fill;
use pagehop_workload::page::fill_page;

pub const PAGE: usize = 4096;

/// Short runs by default (the machine is small and shared): 20 samples,
/// 0.5 s warm-up, 2 s of measurement per benchmark. Command-line options
/// (`--sample-size`, `--warm-up-time`, `--measurement-time`) override them.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// What a page holds, from most to least compressible.
#[derive(Clone, Copy, Debug)]
pub enum Texture {
    /// Zeros but for one non-zero byte every 512 bytes (a mostly empty
    /// heap page, a sparse array).
    ZeroIsh,
    /// Log-like ASCII lines whose numbers change from line to line.
    Text,
    /// The workload's `--fill compressible` pages: 1 KiB of random words,
    /// then a repeated 64-byte block (lz4: about 3.7x).
    Compressible,
    /// The workload's default `--fill random` pages: incompressible.
    Random,
}

impl Texture {
    pub const ALL: [Texture; 4] = [
        Texture::ZeroIsh,
        Texture::Text,
        Texture::Compressible,
        Texture::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Texture::ZeroIsh => "zero-ish",
            Texture::Text => "text",
            Texture::Compressible => "compressible",
            Texture::Random => "random",
        }
    }
}

/// `n` pages of `texture`, back to back; page `i` differs from page `j`.
pub fn pages(texture: Texture, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * PAGE];
    for (i, page) in out.chunks_exact_mut(PAGE).enumerate() {
        match texture {
            Texture::ZeroIsh => {
                for (k, b) in page.iter_mut().step_by(512).enumerate() {
                    *b = (i + k) as u8 | 1;
                }
            }
            Texture::Text => {
                let mut text = String::with_capacity(PAGE + 128);
                let mut line = 0usize;
                while text.len() < PAGE {
                    let n = i * 64 + line;
                    text.push_str(&format!(
                        "2026-11-22T09:{:02}:{:02}.{:03}Z INFO pagehop::migrate round={} pages={} bytes={} peer=10.213.42.{}\n",
                        (n / 60) % 60,
                        n % 60,
                        (n * 37) % 1000,
                        n % 7,
                        (n * 131) % 4096,
                        (n * 131 % 4096) * 4096,
                        n % 250
                    ));
                    line += 1;
                }
                page.copy_from_slice(&text.as_bytes()[..PAGE]);
            }
            Texture::Compressible | Texture::Random => {
                let fill = if matches!(texture, Texture::Random) {
                    Fill::Random
                } else {
                    Fill::Compressible
                };
                let mut words = [0u64; PAGE / 8];
                fill_page(&mut words, i as u64, 1, fill);
                for (dst, w) in page.chunks_exact_mut(8).zip(words) {
                    dst.copy_from_slice(&w.to_ne_bytes());
                }
            }
        }
    }
    out
}
