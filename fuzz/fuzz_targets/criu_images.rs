//! The CRIU image readers on arbitrary bytes: `pagehop_wire::criu`'s
//! `parse_inventory`, `parse_pstree`, `parse_pagemap`, `parse_mm` and
//! `parse_core`, and `is_image_file_name`.
//!
//! Input: any bytes. Each parser gets them as they are (the seeds are real
//! images, magics included), and again behind its own header (the magics
//! of its kind), so that every input reaches every record decoder. The
//! name check gets them if they are UTF-8.
//!
//! Oracles: nothing panics; an error names the kind of image its parser
//! reads and displays; whatever parses satisfies what the parsers promise:
//! pagemap entries page-aligned, non-empty, below 2^56, sorted and
//! disjoint, flags within PE_PARENT|PE_LAZY|PE_PRESENT, lazy ranges sorted,
//! merged and covering exactly the lazy entries; a pstree non-empty, rooted
//! at its first entry, pids unique and in range, each parent earlier; VMAs
//! page-aligned, non-empty, sorted and disjoint, no guard among them, each
//! found by `vma_at`; an inventory of version 2; an accepted file name
//! plain ASCII, no path, at most 255 bytes.
#![no_main]

use std::collections::HashSet;
use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use pagehop_wire::criu::{
    self, ADDR_LIMIT, COMMON_MAGIC, CriuImageError, IMG_VERSION, ImageKind, MmEntry, PAGE_SIZE,
    PE_LAZY, PE_PARENT, PE_PRESENT, Pagemap, PstreeEntry, vma_status,
};

/// `data` behind the magics of an image of `kind`.
fn framed(kind: ImageKind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    if kind != ImageKind::Inventory {
        out.extend_from_slice(&COMMON_MAGIC.to_le_bytes());
    }
    out.extend_from_slice(&kind.magic().to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Runs `parse` on `data` and on `data` behind `kind`'s magics; what parses
/// must pass `check`, a refusal must name `kind` and display.
fn run<T: Debug>(
    kind: ImageKind,
    data: &[u8],
    parse: fn(&[u8]) -> Result<T, CriuImageError>,
    check: fn(&T),
) {
    for bytes in [data.to_vec(), framed(kind, data)] {
        match parse(&bytes) {
            Ok(v) => check(&v),
            Err(e) => {
                assert_eq!(e.kind(), kind, "{e:?}");
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                assert!(!msg.is_empty());
            }
        }
    }
}

fn check_pagemap(pm: &Pagemap) {
    let mut prev_end = 0;
    let mut lazy_bytes = 0u64;
    for e in &pm.entries {
        assert!(e.nr_pages > 0 && e.vaddr % PAGE_SIZE == 0, "{e:?}");
        assert!(e.flags & !(PE_PARENT | PE_LAZY | PE_PRESENT) == 0, "{e:?}");
        let end = e
            .nr_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| e.vaddr.checked_add(len))
            .expect("no overflow");
        assert!(end <= ADDR_LIMIT && end == e.end(), "{e:?}");
        assert!(
            e.vaddr >= prev_end,
            "{e:?} overlaps or precedes {prev_end:#x}"
        );
        prev_end = end;
        if e.is_lazy() {
            lazy_bytes += end - e.vaddr;
        }
    }
    let ranges = pm.lazy_ranges();
    let mut prev: Option<(u64, u64)> = None;
    for &(start, end) in &ranges {
        assert!(start < end && start % PAGE_SIZE == 0 && end % PAGE_SIZE == 0);
        assert!(
            prev.is_none_or(|p| p.1 < start),
            "{prev:?} then {start:#x}: not merged"
        );
        prev = Some((start, end));
    }
    assert_eq!(ranges.iter().map(|r| r.1 - r.0).sum::<u64>(), lazy_bytes);
    for e in pm.entries.iter().filter(|e| e.is_lazy()) {
        assert!(
            ranges.iter().any(|r| r.0 <= e.vaddr && e.end() <= r.1),
            "{e:?}"
        );
    }
    let present: u64 = pm
        .entries
        .iter()
        .filter(|e| e.is_present())
        .map(|e| e.nr_pages)
        .sum();
    assert_eq!(pm.present_pages(), present);
}

fn check_pstree(tree: &[PstreeEntry]) {
    let is_pid = |p: u32| (1..=i32::MAX as u32).contains(&p);
    assert!(!tree.is_empty());
    assert_eq!(tree[0].ppid, 0);
    let mut pids = HashSet::new();
    for (i, e) in tree.iter().enumerate() {
        assert!(
            is_pid(e.pid) && e.threads.iter().all(|&t| is_pid(t)),
            "{e:?}"
        );
        assert!(
            i == 0 || pids.contains(&e.ppid),
            "{e:?}: parent not earlier"
        );
        assert!(pids.insert(e.pid), "{e:?}: pid twice");
    }
}

fn check_mm(mm: &MmEntry) {
    let mut prev_end = 0;
    for v in &mm.vmas {
        assert!(v.start < v.end && v.start >= prev_end, "{v:?}");
        assert!(v.start % PAGE_SIZE == 0 && v.end % PAGE_SIZE == 0, "{v:?}");
        assert!(v.status & vma_status::GUARD == 0, "{v:?}");
        assert_eq!(mm.vma_at(v.start), Some(v));
        assert_eq!(mm.vma_at(v.end - 1), Some(v));
        let _ = v.can_be_lazy();
        prev_end = v.end;
    }
}

fn check_inventory(inv: &criu::Inventory) {
    assert_eq!(inv.img_version, IMG_VERSION);
}

fn check_core(_: &criu::TaskCore) {}

fuzz_target!(|data: &[u8]| {
    run(
        ImageKind::Inventory,
        data,
        criu::parse_inventory,
        check_inventory,
    );
    run(ImageKind::Pstree, data, criu::parse_pstree, |t| {
        check_pstree(t)
    });
    run(ImageKind::Pagemap, data, criu::parse_pagemap, check_pagemap);
    run(ImageKind::Mm, data, criu::parse_mm, check_mm);
    run(ImageKind::Core, data, criu::parse_core, check_core);
    let name = std::str::from_utf8(data).ok();
    if let Some(name) = name.filter(|n| criu::is_image_file_name(n)) {
        assert!(name.len() <= 255 && name.is_ascii(), "{name:?}");
        assert!(!name.contains('/') && !name.contains("..") && !name.starts_with('.'));
    }
});
