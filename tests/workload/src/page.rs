//! Content of a data page: a pure function of its index, generation and
//! [`Fill`].
//!
//! With [`Fill::Random`], word `w` of data page `i` at generation `g` is
//! `mix(base + w * GOLDEN)` with `base = mix(i, g)` and splitmix64's
//! finaliser as `mix`: cheap, and random-looking enough that pages do not
//! compress. [`Fill::Compressible`] keeps those words for the first 1 KiB
//! and repeats a 64-byte block after it, which lz4 shrinks about 3.7 times
//! on 4 KiB pages:
//!
//! ```text
//! 0                 1 KiB          +64 B          +128 B              page end
//! +-----------------+--------------+--------------+-----+--------------+
//! | random words    | text | tag   | text | tag   | ... | text | tag   |
//! | (as Random)     | 56 B | 8 B   |              |     |              |
//! +-----------------+--------------+--------------+-----+--------------+
//! ```
//!
//! `text` is a fixed sentence and `tag` is `mix(base)`, so every word still
//! depends on (index, generation).
use std::fmt;
use std::str::FromStr;

use super::pattern::ParseError;

/// splitmix64's increment (2^64 / golden ratio).
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What data pages are filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum Fill {
    /// Random-looking words throughout: incompressible.
    #[default]
    Random = 0,
    /// Random-looking words for the first 1 KiB, then a repeated 64-byte
    /// block of text and one page-specific word: compresses about 3.7x (4 KiB pages).
    Compressible = 1,
}

impl FromStr for Fill {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Self::Random),
            "compressible" => Ok(Self::Compressible),
            _ => Err(ParseError::Fill(s.to_owned())),
        }
    }
}

impl fmt::Display for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Random => "random",
            Self::Compressible => "compressible",
        })
    }
}

/// Random-looking words at the start of a [`Fill::Compressible`] page (1 KiB).
const RANDOM_WORDS: usize = 1024 / size_of::<u64>();
/// Words of the repeated block of a [`Fill::Compressible`] page (64 bytes).
const BLOCK_WORDS: usize = 8;
/// The fixed part of the repeated block: all of it but its last word.
const TEXT: &[u8; (BLOCK_WORDS - 1) * size_of::<u64>()] =
    b"The quick brown fox jumps over the lazy dog, twice over.";
/// [`TEXT`] as words, laid out in memory as the text.
const TEXT_WORDS: [u64; BLOCK_WORDS - 1] = {
    let mut words = [0; BLOCK_WORDS - 1];
    let mut i = 0;
    while i < words.len() {
        let mut bytes = [0; size_of::<u64>()];
        let mut b = 0;
        while b < bytes.len() {
            bytes[b] = TEXT[i * size_of::<u64>() + b];
            b += 1;
        }
        words[i] = u64::from_ne_bytes(bytes);
        i += 1;
    }
    words
};
const _: () = assert!(RANDOM_WORDS.is_multiple_of(BLOCK_WORDS));

/// The content of one data page at one generation, word by word.
#[derive(Debug, Clone, Copy)]
struct Content {
    base: u64,
    /// Words from the start that are random-looking; the rest repeat the block.
    random_words: usize,
    /// The page-specific last word of the repeated block.
    tag: u64,
}

impl Content {
    fn new(index: u64, generation: u32, fill: Fill) -> Self {
        let base =
            mix64(index.wrapping_mul(GOLDEN) ^ mix64(u64::from(generation).wrapping_add(GOLDEN)));
        let random_words = match fill {
            Fill::Random => usize::MAX,
            Fill::Compressible => RANDOM_WORDS,
        };
        Self {
            base,
            random_words,
            tag: mix64(base),
        }
    }

    fn word(&self, w: usize) -> u64 {
        if w < self.random_words {
            mix64(self.base.wrapping_add((w as u64).wrapping_mul(GOLDEN)))
        } else {
            TEXT_WORDS.get(w % BLOCK_WORDS).copied().unwrap_or(self.tag)
        }
    }
}

/// Word `word` of data page `index` at `generation` filled with `fill`.
pub fn page_word(index: u64, generation: u32, fill: Fill, word: u64) -> u64 {
    Content::new(index, generation, fill).word(word as usize)
}

/// Fills `page` with the content of data page `index` at `generation`
/// filled with `fill`.
pub fn fill_page(page: &mut [u64], index: u64, generation: u32, fill: Fill) {
    let content = Content::new(index, generation, fill);
    for (w, slot) in page.iter_mut().enumerate() {
        *slot = content.word(w);
    }
}

/// The first word of `page` that differs from data page `index` at
/// `generation` filled with `fill`, if any.
pub fn first_bad_word(page: &[u64], index: u64, generation: u32, fill: Fill) -> Option<usize> {
    let content = Content::new(index, generation, fill);
    page.iter()
        .enumerate()
        .position(|(w, &v)| v != content.word(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDS: usize = 512;
    const FILLS: [Fill; 2] = [Fill::Random, Fill::Compressible];

    fn page(index: u64, generation: u32, fill: Fill) -> Vec<u64> {
        let mut page = vec![0u64; WORDS];
        fill_page(&mut page, index, generation, fill);
        page
    }

    fn as_bytes(page: &[u64]) -> Vec<u8> {
        page.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn fill_then_check_roundtrips() {
        for fill in FILLS {
            for (index, generation) in [(0, 0), (1, 0), (7, 1), (12345, 99), (u64::MAX, u32::MAX)] {
                let page = page(index, generation, fill);
                assert_eq!(first_bad_word(&page, index, generation, fill), None);
                for w in [3, 200, 511] {
                    assert_eq!(page[w], page_word(index, generation, fill, w as u64));
                }
            }
        }
    }

    #[test]
    fn random_content_is_the_version_2_content() {
        // Word 5 of data page 3 at generation 2, as it was before fills.
        let base = mix64(3u64.wrapping_mul(GOLDEN) ^ mix64(2u64.wrapping_add(GOLDEN)));
        let old = mix64(base.wrapping_add(5u64.wrapping_mul(GOLDEN)));
        assert_eq!(page_word(3, 2, Fill::Random, 5), old);
        assert_eq!(page_word(3, 2, Fill::Compressible, 5), old, "first 1 KiB");
        assert_ne!(
            page_word(3, 2, Fill::Compressible, 300),
            page_word(3, 2, Fill::Random, 300)
        );
    }

    #[test]
    fn detects_a_corrupted_byte() {
        for fill in FILLS {
            for byte in [1001, 3000] {
                let mut page = page(42, 3, fill);
                let mut word = page[byte / 8].to_ne_bytes();
                word[byte % 8] ^= 0x40;
                page[byte / 8] = u64::from_ne_bytes(word);
                assert_eq!(first_bad_word(&page, 42, 3, fill), Some(byte / 8), "{fill}");
            }
        }
    }

    #[test]
    fn content_depends_on_index_generation_and_fill() {
        for fill in FILLS {
            let page = page(5, 2, fill);
            assert!(first_bad_word(&page, 5, 1, fill).is_some());
            assert!(first_bad_word(&page, 5, 3, fill).is_some());
            assert!(first_bad_word(&page, 4, 2, fill).is_some());
            assert!(first_bad_word(&page, 6, 2, fill).is_some());
            // Every 64-byte block, also of the compressible tail, differs
            // between generations.
            let next = self::page(5, 3, fill);
            for (block, (a, b)) in page.chunks(8).zip(next.chunks(8)).enumerate() {
                assert_ne!(a, b, "{fill}: block {block}");
            }
        }
        let random = page(5, 2, Fill::Random);
        assert_eq!(
            first_bad_word(&random, 5, 2, Fill::Compressible),
            Some(RANDOM_WORDS)
        );
        // Random pages are not trivially compressible: no repeated words.
        let mut sorted = random.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), WORDS);
    }

    #[test]
    fn compressible_pages_compress_and_random_ones_do_not() {
        let size = (WORDS * size_of::<u64>()) as f64;
        for (index, generation) in [(0, 0), (9, 1), (123_456, 77)] {
            let compressible = as_bytes(&page(index, generation, Fill::Compressible));
            let packed = lz4_flex::block::compress(&compressible).len();
            let ratio = size / packed as f64;
            assert!(
                ratio >= 2.5,
                "compressible page: {size} -> {packed} bytes ({ratio:.2}x)"
            );
            let random = as_bytes(&page(index, generation, Fill::Random));
            let packed = lz4_flex::block::compress(&random).len();
            assert!(
                packed as f64 >= 0.95 * size,
                "random page: {size} -> {packed} bytes"
            );
        }
    }

    #[test]
    fn fill_names_roundtrip() {
        for fill in FILLS {
            assert_eq!(fill.to_string().parse::<Fill>().expect("parse"), fill);
        }
        assert_eq!(Fill::default(), Fill::Random);
        assert!("zeros".parse::<Fill>().is_err());
    }
}
