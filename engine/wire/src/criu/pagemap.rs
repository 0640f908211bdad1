//! `pagemap-N.img`: which pages of task N were dumped, and where their data
//! is.
//!
//! The first record is a `pagemap_head` (1 `pages_id` uint32, required:
//! the data is in `pages-<pages_id>.img`), each further one a
//! `pagemap_entry`: 1 `vaddr` uint64 (required), 2 `compat_nr_pages`
//! uint32 (required), 3 `in_parent` bool, 4 `flags` uint32, 5 `nr_pages`
//! uint64. CRIU 4.2 writes the count in field 5 and 0 in field 2; older
//! images have field 2 only, so field 5 wins when present. An entry without
//! `flags` is PE_PARENT if `in_parent` is set and PE_PRESENT otherwise (as
//! CRIU reads images of before the flags).
use super::image::{Record, records};
use super::protobuf::{FieldId, ProtoError, Reader, numbered, scan, skip};
use super::{CriuImageError, ImageKind, PagemapProblem};

/// CRIU's page size on x86-64: pagemap counts are in these.
pub const PAGE_SIZE: u64 = 4096;
/// Pagemap entries end at or below this (user addresses on x86-64 with
/// 5-level paging are below 2^56).
pub const ADDR_LIMIT: u64 = 1 << 56;

/// The pages' data is in the parent dump's images (pre-dump).
pub const PE_PARENT: u32 = 1;
/// The pages are served lazily (post-copy), by `criu lazy-pages` or a peer.
pub const PE_LAZY: u32 = 2;
/// The pages' data is in `pages-<pages_id>.img`.
pub const PE_PRESENT: u32 = 4;

/// A task's pagemap, validated: entries page-aligned, non-empty, sorted by
/// address and non-overlapping, all below [`ADDR_LIMIT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagemap {
    pub pages_id: u32,
    pub entries: Vec<PagemapEntry>,
}

/// `nr_pages` pages from `vaddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// [`PE_PARENT`], [`PE_LAZY`], [`PE_PRESENT`].
    pub flags: u32,
}

impl PagemapEntry {
    pub fn is_lazy(&self) -> bool {
        self.flags & PE_LAZY != 0
    }

    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }

    pub fn is_parent(&self) -> bool {
        self.flags & PE_PARENT != 0
    }

    /// The address after its last page (it cannot overflow in a parsed
    /// pagemap).
    pub fn end(&self) -> u64 {
        self.vaddr + self.nr_pages * PAGE_SIZE
    }
}

impl Pagemap {
    /// The address ranges `[start, end)` of the lazy pages, ascending,
    /// adjacent lazy entries merged. A range may span several VMAs: one
    /// UFFDIO_COPY must stay inside one, so split them at VMA ends.
    pub fn lazy_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for e in self.entries.iter().filter(|e| e.is_lazy()) {
            match out.last_mut() {
                Some(last) if last.1 == e.vaddr => last.1 = e.end(),
                _ => out.push((e.vaddr, e.end())),
            }
        }
        out
    }

    /// Pages with their data in `pages-<pages_id>.img`, where they are
    /// concatenated in entry order.
    pub fn present_pages(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.is_present())
            .map(|e| e.nr_pages)
            .sum()
    }
}

const HEAD: &str = "pagemap_head";
const ENTRY: &str = "pagemap_entry";
const HEAD_FIELDS: [FieldId; 1] = numbered(HEAD, ["pages_id"]);
const ENTRY_FIELDS: [FieldId; 5] = numbered(
    ENTRY,
    ["vaddr", "compat_nr_pages", "in_parent", "flags", "nr_pages"],
);

fn decode_head(bytes: &[u8]) -> Result<u32, ProtoError> {
    let [pages_id] = scan(Reader::new(bytes), &HEAD_FIELDS, skip)?;
    pages_id.uint32()
}

fn decode_entry(bytes: &[u8]) -> Result<PagemapEntry, ProtoError> {
    let [vaddr, compat, in_parent, flags, nr] = scan(Reader::new(bytes), &ENTRY_FIELDS, skip)?;
    let vaddr = vaddr.uint64()?;
    let compat = compat.uint32()?;
    let nr_pages = nr.opt_uint64()?.unwrap_or(compat.into());
    let flags = match (in_parent.opt_bool()?, flags.opt_uint32()?) {
        (Some(true), f) => f.unwrap_or(0) | PE_PARENT,
        (_, Some(f)) => f,
        (_, None) => PE_PRESENT,
    };
    Ok(PagemapEntry {
        vaddr,
        nr_pages,
        flags,
    })
}

fn check_entry(index: usize, e: &PagemapEntry, prev_end: u64) -> Result<(), CriuImageError> {
    let problem = if e.nr_pages == 0 {
        Some(PagemapProblem::Empty)
    } else if !e.vaddr.is_multiple_of(PAGE_SIZE) {
        Some(PagemapProblem::Unaligned)
    } else if e.flags & !(PE_PARENT | PE_LAZY | PE_PRESENT) != 0 {
        Some(PagemapProblem::Flags { flags: e.flags })
    } else if e
        .nr_pages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| e.vaddr.checked_add(len))
        .is_none_or(|end| end > ADDR_LIMIT)
    {
        Some(PagemapProblem::TooLong)
    } else if e.vaddr < prev_end {
        Some(PagemapProblem::Order { prev_end })
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(CriuImageError::PagemapEntry {
            index,
            vaddr: e.vaddr,
            nr_pages: e.nr_pages,
            problem,
        }),
    }
}

/// Parses and validates `pagemap-N.img`.
pub fn parse_pagemap(bytes: &[u8]) -> Result<Pagemap, CriuImageError> {
    let kind = ImageKind::Pagemap;
    let mut records = records(kind, bytes)?;
    let head: Record<'_> = records
        .next()
        .ok_or(CriuImageError::MissingRecord { kind, what: HEAD })??;
    let pages_id = decode_head(head.bytes).map_err(|e| head.error(e))?;
    let mut entries: Vec<PagemapEntry> = Vec::new();
    let mut prev_end = 0;
    for record in records {
        let record = record?;
        let e = decode_entry(record.bytes).map_err(|err| record.error(err))?;
        check_entry(entries.len(), &e, prev_end)?;
        prev_end = e.end();
        entries.push(e);
    }
    Ok(Pagemap { pages_id, entries })
}
