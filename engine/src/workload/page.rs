//! Content of a data page: a pure function of its index and generation.
//!
//! Word `w` of data page `i` at generation `g` is
//! `mix(mix(i, g) + w * GOLDEN)`, with splitmix64's finaliser as `mix`: cheap,
//! and random-looking enough that pages do not compress to nothing.

/// splitmix64's increment (2^64 / golden ratio).
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn page_base(index: u64, generation: u32) -> u64 {
    mix64(index.wrapping_mul(GOLDEN) ^ mix64(u64::from(generation).wrapping_add(GOLDEN)))
}

/// Word `word` of data page `index` at `generation`.
pub fn page_word(index: u64, generation: u32, word: u64) -> u64 {
    mix64(page_base(index, generation).wrapping_add(word.wrapping_mul(GOLDEN)))
}

/// Fills `page` with the content of data page `index` at `generation`.
pub fn fill_page(page: &mut [u64], index: u64, generation: u32) {
    let base = page_base(index, generation);
    for (w, slot) in page.iter_mut().enumerate() {
        *slot = mix64(base.wrapping_add((w as u64).wrapping_mul(GOLDEN)));
    }
}

/// The first word of `page` that differs from data page `index` at
/// `generation`, if any.
pub fn first_bad_word(page: &[u64], index: u64, generation: u32) -> Option<usize> {
    let base = page_base(index, generation);
    page.iter()
        .enumerate()
        .position(|(w, &v)| v != mix64(base.wrapping_add((w as u64).wrapping_mul(GOLDEN))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDS: usize = 512;

    #[test]
    fn fill_then_check_roundtrips() {
        let mut page = vec![0u64; WORDS];
        for (index, generation) in [(0, 0), (1, 0), (7, 1), (12345, 99), (u64::MAX, u32::MAX)] {
            fill_page(&mut page, index, generation);
            assert_eq!(first_bad_word(&page, index, generation), None);
            assert_eq!(page[3], page_word(index, generation, 3));
        }
    }

    #[test]
    fn detects_a_corrupted_byte() {
        let mut page = vec![0u64; WORDS];
        fill_page(&mut page, 42, 3);
        let byte = 1001;
        let mut word = page[byte / 8].to_ne_bytes();
        word[byte % 8] ^= 0x40;
        page[byte / 8] = u64::from_ne_bytes(word);
        assert_eq!(first_bad_word(&page, 42, 3), Some(byte / 8));
    }

    #[test]
    fn content_depends_on_index_and_generation() {
        let mut page = vec![0u64; WORDS];
        fill_page(&mut page, 5, 2);
        assert!(first_bad_word(&page, 5, 1).is_some());
        assert!(first_bad_word(&page, 5, 3).is_some());
        assert!(first_bad_word(&page, 4, 2).is_some());
        assert!(first_bad_word(&page, 6, 2).is_some());
        // Not trivially compressible: no repeated words within the page.
        let mut sorted = page.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), WORDS);
    }
}
