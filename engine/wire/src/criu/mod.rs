//! The few CRIU 4.2 images pagehop reads: `inventory.img`, `pstree.img`,
//! `pagemap-N.img`, `mm-N.img` and `core-N.img`, where N is a task's pid in
//! the dumped tree's own pid namespace (its vpid, `pstree_entry.pid`).
//!
//! They come from the peer over the network, so they are read as hostile
//! input: nothing here panics, every length is checked against what is left
//! before anything is taken, no allocation is sized by the input, and an
//! image that CRIU would not have written (or that would make a consumer go
//! wrong: unsorted or overlapping ranges, an unknown parent) is refused with
//! an error naming the image kind, the record and what is wrong.
//!
//! Framing: an image is a u32 common magic [`COMMON_MAGIC`] and a u32
//! per-type magic ([`ImageKind::magic`]), then records, each a u32 length
//! and that many bytes of a protobuf message; `inventory.img` has only its
//! own magic. Everything is little-endian. Caps: a record is at
//! most [`MAX_RECORD_LEN`] bytes, a file at most [`MAX_RECORDS`] records, a
//! repeated field at most [`MAX_REPEATED`] elements.
//!
//! Parsers: [`parse_inventory`], [`parse_pstree`], [`parse_pagemap`],
//! [`parse_mm`], [`parse_core`]. File names: [`pagemap_file`], [`mm_file`],
//! [`core_file`], [`pages_file`], [`PSTREE_FILE`], [`INVENTORY_FILE`], and
//! [`is_image_file_name`] for a name the peer sends. A whole dump
//! directory: [`DumpedTree::read`] (tasks, states, lazy ranges).
use std::fmt;

mod image;
mod inventory;
mod mm;
mod names;
mod pagemap;
mod protobuf;
mod pstree;
mod task;
mod tree;

pub use self::image::{COMMON_MAGIC, MAX_RECORD_LEN, MAX_RECORDS};
pub use self::inventory::{IMG_VERSION, Inventory, parse_inventory};
pub use self::mm::{MmEntry, Vma, map, parse_mm, vma_status};
pub use self::names::{
    INVENTORY_FILE, PSTREE_FILE, core_file, is_image_file_name, mm_file, pagemap_file, pages_file,
};
pub use self::pagemap::{
    ADDR_LIMIT, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT, Pagemap, PagemapEntry, parse_pagemap,
};
pub use self::protobuf::{FieldId, MAX_REPEATED, ProtoError};
pub use self::pstree::{PstreeEntry, parse_pstree};
pub use self::task::{TaskCore, TaskState, parse_core};
pub use self::tree::{DumpedTask, DumpedTree, DumpedTreeError};

/// The kinds of image this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    Inventory,
    Pstree,
    Pagemap,
    Mm,
    Core,
}

impl ImageKind {
    /// The type magic (CRIU's `INVENTORY_MAGIC`, `PSTREE_MAGIC`, ...; shmem
    /// pagemaps share the task pagemap's) and the name in errors.
    fn info(self) -> (u32, &'static str) {
        match self {
            ImageKind::Inventory => (0x5831_3116, "inventory.img"),
            ImageKind::Pstree => (0x5027_3030, "pstree.img"),
            ImageKind::Pagemap => (0x5608_4025, "pagemap image"),
            ImageKind::Mm => (0x5749_2820, "mm image"),
            ImageKind::Core => (0x5505_3847, "core image"),
        }
    }

    /// The image type's own magic.
    pub fn magic(self) -> u32 {
        self.info().0
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().1)
    }
}

/// Which of an image's two magics is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagicKind {
    /// [`COMMON_MAGIC`], first in every image but `inventory.img`.
    Common,
    /// The image type's own magic.
    Type,
}

impl fmt::Display for MagicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MagicKind::Common => "common",
            MagicKind::Type => "image-type",
        })
    }
}

/// Why a CRIU image was refused. Record indices count from 0 in file
/// order; byte offsets count from the start of the file (records) or of
/// the record ([`ProtoError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriuImageError {
    #[error("{kind}: {len} bytes, too short for its {need}-byte header")]
    TooShort {
        kind: ImageKind,
        len: usize,
        need: usize,
    },
    #[error("{kind}: bad {which} magic {got:#010x}, expected {expected:#010x}")]
    BadMagic {
        kind: ImageKind,
        which: MagicKind,
        expected: u32,
        got: u32,
    },
    #[error(
        "{kind}: record {index} at byte {offset} is truncated: it needs {need} bytes, {have} are left"
    )]
    TruncatedRecord {
        kind: ImageKind,
        index: usize,
        offset: usize,
        need: u64,
        have: usize,
    },
    #[error(
        "{kind}: record {index} at byte {offset} is {len} bytes, over the {MAX_RECORD_LEN}-byte cap"
    )]
    RecordTooLarge {
        kind: ImageKind,
        index: usize,
        offset: usize,
        len: u32,
    },
    #[error("{kind}: more than {MAX_RECORDS} records")]
    TooManyRecords { kind: ImageKind },
    #[error("{kind}: no {what} record")]
    MissingRecord { kind: ImageKind, what: &'static str },
    #[error("{kind}: {count} records, expected one")]
    ExtraRecords { kind: ImageKind, count: usize },
    #[error("{kind}: record {index} at byte {offset} does not decode")]
    Protobuf {
        kind: ImageKind,
        index: usize,
        offset: usize,
        #[source]
        source: ProtoError,
    },
    #[error("pagemap image: entry {index} ({vaddr:#x}, {nr_pages} pages): {problem}")]
    PagemapEntry {
        index: usize,
        vaddr: u64,
        nr_pages: u64,
        problem: PagemapProblem,
    },
    #[error("pstree.img: entry {index} (pid {pid}): {problem}")]
    PstreeEntry {
        index: usize,
        pid: u32,
        problem: PstreeProblem,
    },
    #[error("mm image: vma {index} ({start:#x}-{end:#x}): {problem}")]
    Vma {
        index: usize,
        start: u64,
        end: u64,
        problem: VmaProblem,
    },
    #[error("inventory.img: image version {got}, expected {IMG_VERSION}")]
    ImgVersion { got: u32 },
    #[error("core image: task state {got} is none of alive (1), dead (2) and stopped (3)")]
    TaskState { got: u32 },
}

impl CriuImageError {
    /// The kind of image that was refused.
    pub fn kind(&self) -> ImageKind {
        match self {
            CriuImageError::TooShort { kind, .. }
            | CriuImageError::BadMagic { kind, .. }
            | CriuImageError::TruncatedRecord { kind, .. }
            | CriuImageError::RecordTooLarge { kind, .. }
            | CriuImageError::TooManyRecords { kind }
            | CriuImageError::MissingRecord { kind, .. }
            | CriuImageError::ExtraRecords { kind, .. }
            | CriuImageError::Protobuf { kind, .. } => *kind,
            CriuImageError::PagemapEntry { .. } => ImageKind::Pagemap,
            CriuImageError::PstreeEntry { .. } => ImageKind::Pstree,
            CriuImageError::Vma { .. } => ImageKind::Mm,
            CriuImageError::ImgVersion { .. } => ImageKind::Inventory,
            CriuImageError::TaskState { .. } => ImageKind::Core,
        }
    }
}

/// What is wrong with a pagemap entry (see [`CriuImageError::PagemapEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PagemapProblem {
    #[error("it has no pages")]
    Empty,
    #[error("its address is not {PAGE_SIZE}-byte aligned")]
    Unaligned,
    #[error("it extends past 2^56")]
    TooLong,
    #[error("it overlaps or precedes the entry before it, which ends at {prev_end:#x}")]
    Order { prev_end: u64 },
    #[error("flags {flags:#x} have bits other than PE_PARENT, PE_LAZY and PE_PRESENT")]
    Flags { flags: u32 },
}

/// What is wrong with a pstree entry (see [`CriuImageError::PstreeEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PstreeProblem {
    #[error("{what} {value} is not a pid (1 to 2^31-1)")]
    NotAPid { what: &'static str, value: u32 },
    #[error("the first entry is the root, but it has parent {ppid}")]
    RootHasParent { ppid: u32 },
    #[error("its parent {ppid} is not an earlier entry")]
    UnknownParent { ppid: u32 },
    #[error("the pid appears twice")]
    DuplicatePid,
}

/// What is wrong with a VMA (see [`CriuImageError::Vma`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VmaProblem {
    #[error("it is empty or inverted")]
    Empty,
    #[error("it is not {PAGE_SIZE}-byte aligned")]
    Unaligned,
    #[error("it overlaps or precedes the VMA before it, which ends at {prev_end:#x}")]
    Order { prev_end: u64 },
}

#[cfg(test)]
mod tests;
