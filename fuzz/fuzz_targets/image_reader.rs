//! The image-directory reader on arbitrary bytes, without the filesystem:
//! `migrate::image::parse(image.json bytes, pages.bin bytes)`.
//!
//! Input: `json_len u16 LE | image.json (json_len bytes, cut to what is
//! left) | pages.bin (the rest)`.
//!
//! Oracles: nothing panics; an image that loads is consistent (runs sorted
//! and disjoint, inside the ranges, data runs covering pages.bin exactly,
//! `get` agreeing with `iter`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagehop_wire::image::{self, PageState, RunKind};

/// Pages looked at per input: zero runs may be very long.
const MAX_PAGES: usize = 1 << 14;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let json_len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (json, pages) = data[2..].split_at(json_len);
    let Ok(img) = image::parse(json, pages.to_vec()) else {
        return;
    };
    let ps = img.page_size() as u64;
    assert!(ps.is_power_of_two());
    for w in img.ranges().windows(2) {
        assert!(w[0].end <= w[1].start, "ranges overlap");
    }
    let mut data_bytes = 0u64;
    for w in img.runs().windows(2) {
        assert!(w[0].addr + w[0].pages * ps <= w[1].addr, "runs overlap");
    }
    for run in img.runs() {
        assert!(run.pages > 0 && run.addr % ps == 0);
        if let RunKind::Data { offset } = run.kind {
            assert_eq!(offset, data_bytes);
            data_bytes += run.pages * ps;
        }
        let last = run.addr + (run.pages - 1) * ps;
        for addr in [run.addr, last] {
            match (img.get(addr), run.kind) {
                (PageState::Zero, RunKind::Zero) => {}
                (PageState::Data(p), RunKind::Data { .. }) => assert_eq!(p.len() as u64, ps),
                (state, kind) => panic!("{addr:#x}: get says {state:?}, run is {kind:?}"),
            }
        }
    }
    assert_eq!(data_bytes, pages.len() as u64);
    let (data_pages, _) = img.counts();
    assert_eq!(data_pages * ps, pages.len() as u64);
    let mut prev = None;
    for (addr, page) in img.iter().take(MAX_PAGES) {
        assert!(prev.is_none_or(|p| p < addr));
        prev = Some(addr);
        match (page, img.get(addr)) {
            (None, PageState::Zero) => {}
            (Some(a), PageState::Data(b)) => assert_eq!(a.as_ptr(), b.as_ptr()),
            (page, state) => panic!("{addr:#x}: iter says {page:?}, get says {state:?}"),
        }
    }
});
