//! `--verify`: page digests (xxh3-64) as the `VerifyDigests` frames carry
//! them. Both sides hash a page the same way; an absent page and a zero page
//! hash like a page of zeros.

/// The digest of a page as `--verify` compares it: absent and zero pages
/// hash like a page of zeros.
pub fn page_digest(page: Option<&[u8]>, page_size: usize) -> u64 {
    match page {
        Some(data) => xxhash_rust::xxh3::xxh3_64(data),
        None => xxhash_rust::xxh3::xxh3_64(&vec![0u8; page_size]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;

    #[test]
    fn digests_treat_absent_as_zero() {
        let zero = vec![0u8; PS];
        assert_eq!(page_digest(None, PS), page_digest(Some(&zero), PS));
        assert_ne!(page_digest(None, PS), page_digest(Some(&[1u8; PS]), PS));
    }
}
