//! `pagehop recv --image-dir DIR`: received memory written to a directory,
//! for a process that another tool will restore later.
//!
//! Format (version 1):
//! - `DIR/pages.bin`: the data pages, concatenated, each run contiguous;
//! - `DIR/image.json`, written last (its presence means the image is whole):
//!
//! ```json
//! { "format": "pagehop-image", "version": 1, "page_size": 4096,
//!   "ranges": [ { "start": "600000000000", "end": "600020000000" } ],
//!   "runs":   [ { "addr": "600000000000", "pages": 16, "kind": "data", "offset": 0 },
//!               { "addr": "600000010000", "pages": 3,  "kind": "zero" } ] }
//! ```
//!
//! Addresses are lowercase hex without `0x`; `offset` is the byte offset of
//! the run's first page in `pages.bin`. Pages in no run were never sent
//! (the source never touched them): treat them as zero.
//!
//! [`read`] (a directory) and [`parse`] (the two files' bytes) load an image
//! back and refuse anything the writer would not have produced, with an
//! error naming what is wrong: ranges sorted, disjoint and page-aligned;
//! runs sorted, non-overlapping, inside the ranges; data runs laid out back
//! to back in `pages.bin` from offset 0 and covering it exactly. Sizes are
//! checked before anything is allocated for them.
use std::io;
use std::path::PathBuf;

pub use pagehop_mem::PageState;

pub const FORMAT: &str = "pagehop-image";
pub const VERSION: u32 = 1;

/// Largest `image.json` [`read`] accepts. A manifest takes well under 100
/// bytes per run, so this allows millions of runs.
pub const MAX_MANIFEST_LEN: u64 = 256 << 20;
/// Page sizes an image may have.
pub const MIN_PAGE_SIZE: u64 = 4096;
pub const MAX_PAGE_SIZE: u64 = 1 << 30;
/// Addresses in an image are below this (as on the wire).
pub const ADDR_LIMIT: u64 = crate::batch::ADDR_LIMIT;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("page {addr:#x} came after page {after:#x}: an image is written in address order")]
    OutOfOrder { addr: u64, after: u64 },
    #[error("{space} cannot be written to a single-process image")]
    UnknownSpace { space: pagehop_mem::SpaceKey },
    #[error("the image was already finished")]
    Finished,
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is missing: not a pagehop image, or an incomplete one (image.json is written last)"
    )]
    Missing { path: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {len} bytes, over the {max}-byte cap for an image manifest")]
    ManifestTooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("{path} changed size while being read: expected {expected} bytes, got {got}")]
    ChangedWhileReading {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("image.json is not a valid image manifest")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("image.json: format {got:?}, expected {FORMAT:?}")]
    Format { got: String },
    #[error("image.json: format version {got}, this build reads version {VERSION}")]
    Version { got: u64 },
    #[error(
        "image.json: page size {page_size} is not a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}"
    )]
    PageSize { page_size: u64 },
    #[error("image.json: {field} {value:?} is not an address (lowercase hex below 2^56, no 0x)")]
    Address { field: String, value: String },
    #[error(
        "image.json: range {index} ({start:#x}-{end:#x}) is empty, inverted or not page-aligned"
    )]
    Range { index: usize, start: u64, end: u64 },
    #[error(
        "image.json: range {index} ({start:#x}-) overlaps or precedes the range before it, which ends at {prev_end:#x}"
    )]
    RangeOrder {
        index: usize,
        start: u64,
        prev_end: u64,
    },
    #[error("image.json: run {index} at {addr:#x} ({pages} pages): {problem}")]
    Run {
        index: usize,
        addr: u64,
        pages: u64,
        problem: RunProblem,
    },
    #[error("pages.bin is {len} bytes, but the data runs of image.json cover {expected}")]
    PagesLen { len: u64, expected: u64 },
}

/// What is wrong with a run (see [`ImageError::Run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunProblem {
    #[error("it has no pages")]
    Empty,
    #[error("its address is not page-aligned")]
    Unaligned,
    #[error("it extends past 2^56")]
    TooLong,
    #[error("it overlaps or precedes the run before it")]
    Order,
    #[error("it is not inside one of the image's ranges")]
    OutsideRanges,
    #[error("a data run needs an offset")]
    NoOffset,
    #[error("a zero run has no data, so no offset")]
    ZeroWithOffset,
    #[error("offset {got} is not {expected}, where the previous data run ends in pages.bin")]
    Offset { got: u64, expected: u64 },
}

mod read;
mod write;

pub use read::{Image, ImageRun, RunKind, parse, read};
pub use write::{ImageWriter, write};

#[cfg(test)]
mod tests;
