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
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub use pagehop_mem::PageState;
use pagehop_mem::pages::Range;

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

#[derive(serde::Serialize)]
struct Run {
    addr: String,
    pages: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

#[derive(serde::Serialize)]
struct RangeEntry {
    start: String,
    end: String,
}

#[derive(serde::Serialize)]
struct Manifest {
    format: &'static str,
    version: u32,
    page_size: usize,
    ranges: Vec<RangeEntry>,
    runs: Vec<Run>,
}

/// Writes an image of `pages` (every received page in address order: its
/// address and `None` for a zero page or its data) over the mappings
/// `ranges` to `dir`; returns the number of pages written (data and zero).
pub fn write<'a>(
    dir: &Path,
    page_size: usize,
    ranges: impl IntoIterator<Item = Range>,
    received: impl IntoIterator<Item = (u64, Option<&'a [u8]>)>,
) -> Result<u64, ImageError> {
    let err = |path: PathBuf| {
        move |source| ImageError::Write {
            path: path.clone(),
            source,
        }
    };
    fs::create_dir_all(dir).map_err(err(dir.to_path_buf()))?;
    let pages_path = dir.join("pages.bin");
    let mut pages = BufWriter::with_capacity(
        1 << 20,
        File::create(&pages_path).map_err(err(pages_path.clone()))?,
    );
    let ps = page_size as u64;
    let mut runs: Vec<Run> = Vec::new();
    let mut offset = 0u64;
    let mut count = 0u64;
    // The run being built: (start, pages, is_data, offset).
    let mut open: Option<(u64, u64, bool, u64)> = None;
    let close = |open: &mut Option<(u64, u64, bool, u64)>, runs: &mut Vec<Run>| {
        if let Some((addr, n, data, off)) = open.take() {
            runs.push(Run {
                addr: format!("{addr:x}"),
                pages: n,
                kind: if data { "data" } else { "zero" },
                offset: data.then_some(off),
            });
        }
    };
    for (addr, page) in received {
        let is_data = page.is_some();
        match &mut open {
            Some((start, n, data, _)) if *data == is_data && *start + *n * ps == addr => *n += 1,
            _ => {
                close(&mut open, &mut runs);
                open = Some((addr, 1, is_data, offset));
            }
        }
        if let Some(data) = page {
            pages.write_all(data).map_err(err(pages_path.clone()))?;
            offset += ps;
        }
        count += 1;
    }
    close(&mut open, &mut runs);
    pages
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(err(pages_path))?;
    let manifest = Manifest {
        format: FORMAT,
        version: VERSION,
        page_size,
        ranges: ranges
            .into_iter()
            .map(|r| RangeEntry {
                start: format!("{:x}", r.start),
                end: format!("{:x}", r.end),
            })
            .collect(),
        runs,
    };
    let json_path = dir.join("image.json");
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    fs::write(&json_path, json).map_err(err(json_path))?;
    Ok(count)
}

// ---- reading ----

/// How a run's pages are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Data pages at this byte offset of `pages.bin`.
    Data { offset: u64 },
    /// Zero pages (no data).
    Zero,
}

/// `pages` consecutive pages from `addr`, all data or all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRun {
    pub addr: u64,
    pub pages: u64,
    pub kind: RunKind,
}

/// An image loaded by [`read`] or [`parse`]: validated, with its pages in memory.
#[derive(Debug)]
pub struct Image {
    page_size: u64,
    ranges: Vec<Range>,
    runs: Vec<ImageRun>,
    pages: Vec<u8>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    start: String,
    end: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Data,
    Zero,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    addr: String,
    pages: u64,
    kind: RawKind,
    offset: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format: String,
    version: u64,
    page_size: u64,
    ranges: Vec<RawRange>,
    runs: Vec<RawRun>,
}

/// An address as the writer formats it: lowercase hex, no `0x`, no sign,
/// below [`ADDR_LIMIT`].
fn parse_addr(field: impl FnOnce() -> String, value: &str) -> Result<u64, ImageError> {
    let bad = || ImageError::Address {
        field: field(),
        value: value.chars().take(40).collect(),
    };
    if value.is_empty()
        || value.len() > 16
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad());
    }
    match u64::from_str_radix(value, 16) {
        Ok(addr) if addr < ADDR_LIMIT => Ok(addr),
        _ => Err(bad()),
    }
}

/// Validates a manifest for a `pages.bin` of `pages_len` bytes; returns the
/// page size, the ranges and the runs.
fn validate(json: &[u8], pages_len: u64) -> Result<(u64, Vec<Range>, Vec<ImageRun>), ImageError> {
    let raw: RawManifest =
        serde_json::from_slice(json).map_err(|source| ImageError::Json { source })?;
    if raw.format != FORMAT {
        return Err(ImageError::Format {
            got: raw.format.chars().take(64).collect(),
        });
    }
    if raw.version != u64::from(VERSION) {
        return Err(ImageError::Version { got: raw.version });
    }
    let ps = raw.page_size;
    if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
        return Err(ImageError::PageSize { page_size: ps });
    }
    let mask = ps - 1;

    let mut ranges: Vec<Range> = Vec::with_capacity(raw.ranges.len());
    for (index, r) in raw.ranges.iter().enumerate() {
        let start = parse_addr(|| format!("ranges[{index}].start"), &r.start)?;
        let end = parse_addr(|| format!("ranges[{index}].end"), &r.end)?;
        if start >= end || start & mask != 0 || end & mask != 0 {
            return Err(ImageError::Range { index, start, end });
        }
        if let Some(prev) = ranges.last()
            && start < prev.end
        {
            return Err(ImageError::RangeOrder {
                index,
                start,
                prev_end: prev.end,
            });
        }
        ranges.push(Range { start, end });
    }
    // The writer merges runs across adjacent ranges, so a run must lie
    // inside the ranges with adjacent ones joined.
    let mut joined: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in &ranges {
        match joined.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => joined.push(*r),
        }
    }

    let mut runs: Vec<ImageRun> = Vec::with_capacity(raw.runs.len());
    let mut prev_end = 0u64;
    let mut data_end = 0u64;
    for (index, r) in raw.runs.iter().enumerate() {
        let addr = parse_addr(|| format!("runs[{index}].addr"), &r.addr)?;
        let fail = |problem| ImageError::Run {
            index,
            addr,
            pages: r.pages,
            problem,
        };
        if r.pages == 0 {
            return Err(fail(RunProblem::Empty));
        }
        if addr & mask != 0 {
            return Err(fail(RunProblem::Unaligned));
        }
        let len = r
            .pages
            .checked_mul(ps)
            .filter(|len| *len <= ADDR_LIMIT - addr)
            .ok_or_else(|| fail(RunProblem::TooLong))?;
        let end = addr + len;
        if index > 0 && addr < prev_end {
            return Err(fail(RunProblem::Order));
        }
        let inside = joined.partition_point(|j| j.end < end);
        if !joined
            .get(inside)
            .is_some_and(|j| j.start <= addr && end <= j.end)
        {
            return Err(fail(RunProblem::OutsideRanges));
        }
        let kind = match (&r.kind, r.offset) {
            (RawKind::Data, None) => return Err(fail(RunProblem::NoOffset)),
            (RawKind::Zero, Some(_)) => return Err(fail(RunProblem::ZeroWithOffset)),
            (RawKind::Zero, None) => RunKind::Zero,
            (RawKind::Data, Some(offset)) => {
                if offset != data_end {
                    return Err(fail(RunProblem::Offset {
                        got: offset,
                        expected: data_end,
                    }));
                }
                // Runs are disjoint and below 2^56, so their lengths add up
                // to less than 2^56: no overflow.
                data_end += len;
                RunKind::Data { offset }
            }
        };
        prev_end = end;
        runs.push(ImageRun {
            addr,
            pages: r.pages,
            kind,
        });
    }
    if data_end != pages_len {
        return Err(ImageError::PagesLen {
            len: pages_len,
            expected: data_end,
        });
    }
    Ok((ps, ranges, runs))
}

/// Loads an image from the contents of its two files, validating everything
/// (see the module documentation). Does not touch the filesystem.
pub fn parse(json: &[u8], pages: Vec<u8>) -> Result<Image, ImageError> {
    let (page_size, ranges, runs) = validate(json, pages.len() as u64)?;
    Ok(Image {
        page_size,
        ranges,
        runs,
        pages,
    })
}

/// Loads the image in `dir`. `image.json` is size-checked before it is read
/// and validated before `pages.bin` is; `pages.bin` must have exactly the
/// size the manifest implies, and only that much is allocated for it.
pub fn read(dir: &Path) -> Result<Image, ImageError> {
    let json_path = dir.join("image.json");
    let pages_path = dir.join("pages.bin");
    let json = read_capped(&json_path, |len| {
        (len > MAX_MANIFEST_LEN).then(|| ImageError::ManifestTooLarge {
            path: json_path.clone(),
            len,
            max: MAX_MANIFEST_LEN,
        })
    })?;
    let mut checked = None;
    let pages = read_capped(&pages_path, |len| match validate(&json, len) {
        Ok(v) => {
            checked = Some(v);
            None
        }
        Err(e) => Some(e),
    })?;
    let (page_size, ranges, runs) = checked.expect("validated before reading");
    Ok(Image {
        page_size,
        ranges,
        runs,
        pages,
    })
}

/// Reads the whole file at `path` after `check` accepted its size; a file
/// that grows or shrinks in between is refused.
fn read_capped(
    path: &Path,
    check: impl FnOnce(u64) -> Option<ImageError>,
) -> Result<Vec<u8>, ImageError> {
    let read_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ImageError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ImageError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    if let Some(e) = check(len) {
        return Err(e);
    }
    let cap = usize::try_from(len).map_err(|_| ImageError::Read {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::OutOfMemory),
    })?;
    let mut buf = Vec::with_capacity(cap);
    // One byte more than expected tells a file that grew.
    file.take(len + 1).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() as u64 != len {
        return Err(ImageError::ChangedWhileReading {
            path: path.to_path_buf(),
            expected: len,
            got: buf.len() as u64,
        });
    }
    Ok(buf)
}

impl Image {
    pub fn page_size(&self) -> usize {
        self.page_size as usize
    }

    /// The layout ranges of the source at the end of the migration.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// The runs, in address order.
    pub fn runs(&self) -> &[ImageRun] {
        &self.runs
    }

    /// Pages stored as data and as zero pages.
    pub fn counts(&self) -> (u64, u64) {
        self.runs.iter().fold((0, 0), |(d, z), r| match r.kind {
            RunKind::Data { .. } => (d + r.pages, z),
            RunKind::Zero => (d, z + r.pages),
        })
    }

    /// The run holding `addr`, if any.
    fn run_of(&self, addr: u64) -> Option<&ImageRun> {
        let i = self.runs.partition_point(|r| r.addr <= addr);
        let run = self.runs.get(i.checked_sub(1)?)?;
        (addr - run.addr < run.pages * self.page_size).then_some(run)
    }

    /// What the image holds for the page at `addr` (page-aligned).
    pub fn get(&self, addr: u64) -> PageState<'_> {
        let Some(run) = self.run_of(addr) else {
            return PageState::Absent;
        };
        match run.kind {
            RunKind::Zero => PageState::Zero,
            RunKind::Data { offset } => {
                let at = (offset + (addr - run.addr)) as usize & !(self.page_size as usize - 1);
                PageState::Data(&self.pages[at..at + self.page_size as usize])
            }
        }
    }

    /// Every page in the image in address order: (address, None for a
    /// zero page or the data). Zero runs may be long; the iterator is lazy.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> + '_ {
        let ps = self.page_size;
        self.runs.iter().flat_map(move |r| {
            (0..r.pages).map(move |i| {
                let addr = r.addr + i * ps;
                let data = match r.kind {
                    RunKind::Zero => None,
                    RunKind::Data { offset } => {
                        let at = (offset + i * ps) as usize;
                        Some(&self.pages[at..at + ps as usize])
                    }
                };
                (addr, data)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const PS: u64 = 4096;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "pagehop-image-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PS as usize]
    }

    /// Received pages over mappings, as a destination's store holds them.
    struct Store {
        ranges: Vec<Range>,
        pages: std::collections::BTreeMap<u64, Option<Vec<u8>>>,
    }

    impl Store {
        fn new() -> Self {
            Self {
                ranges: Vec::new(),
                pages: Default::default(),
            }
        }

        fn set_layout(&mut self, ranges: &[Range]) -> Result<(), ()> {
            self.ranges = ranges.to_vec();
            Ok(())
        }

        fn put(&mut self, addr: u64, page: Option<&[u8]>) -> Result<(), ()> {
            self.pages.insert(addr, page.map(<[u8]>::to_vec));
            Ok(())
        }

        fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
            self.ranges.iter().copied()
        }

        fn iter(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> + '_ {
            self.pages.iter().map(|(&a, p)| (a, p.as_deref()))
        }

        fn get(&self, addr: u64) -> PageState<'_> {
            match self.pages.get(&addr) {
                None => PageState::Absent,
                Some(None) => PageState::Zero,
                Some(Some(d)) => PageState::Data(d),
            }
        }

        fn write(&self, dir: &Path) -> Result<u64, ImageError> {
            write(dir, PS as usize, self.ranges(), self.iter())
        }
    }

    /// A store over three ranges, two of them adjacent, with data, zero and
    /// absent pages.
    fn sample_store() -> Store {
        let mut store = Store::new();
        let a = Range::new(0x10_0000, 0x10_0000 + 8 * PS);
        let b = Range::new(a.end, a.end + 4 * PS); // adjacent to a
        let c = Range::new(0x7f00_0000_0000, 0x7f00_0000_0000 + 16 * PS);
        store.set_layout(&[a, b, c]).expect("layout");
        for (i, byte) in [(0u64, 1u8), (1, 2), (2, 3), (7, 4), (8, 5), (9, 6)] {
            store.put(a.start + i * PS, Some(&page(byte))).expect("put");
        }
        store.put(a.start + 3 * PS, None).expect("zero");
        store.put(a.start + 4 * PS, None).expect("zero");
        store.put(b.start + 3 * PS, None).expect("zero");
        store.put(c.start + 15 * PS, Some(&page(9))).expect("put");
        store
    }

    fn written(tag: &str) -> (TempDir, Store) {
        let dir = TempDir::new(tag);
        let store = sample_store();
        assert_eq!(store.write(&dir.0).expect("write"), 10);
        (dir, store)
    }

    fn files(dir: &TempDir) -> (Vec<u8>, Vec<u8>) {
        (
            fs::read(dir.0.join("image.json")).expect("json"),
            fs::read(dir.0.join("pages.bin")).expect("pages"),
        )
    }

    #[test]
    fn round_trips_with_the_writer() {
        let (dir, store) = written("round-trip");
        let image = read(&dir.0).expect("read");
        assert_eq!(image.page_size(), PS as usize);
        assert_eq!(
            image.ranges(),
            store.ranges().collect::<Vec<_>>().as_slice()
        );
        let got: Vec<(u64, Option<Vec<u8>>)> = image
            .iter()
            .map(|(a, p)| (a, p.map(<[u8]>::to_vec)))
            .collect();
        let want: Vec<(u64, Option<Vec<u8>>)> = store
            .iter()
            .map(|(a, p)| (a, p.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(image.counts(), (7, 3));
        // Pages 7-9 of a and b's first page... the data run crosses from a
        // into b, which the writer merges into one run.
        assert!(
            image
                .runs()
                .iter()
                .any(|r| r.addr == 0x10_0000 + 7 * PS && r.pages == 3)
        );
        for r in store.ranges() {
            for addr in (r.start..r.end).step_by(PS as usize) {
                assert_eq!(image.get(addr), store.get(addr), "{addr:#x}");
                assert_eq!(image.get(addr + 17), store.get(addr), "{addr:#x}+17");
            }
        }
        assert_eq!(image.get(0), PageState::Absent);
        assert_eq!(image.get(u64::MAX), PageState::Absent);
        // parse() sees the same thing from bytes.
        let (json, pages) = files(&dir);
        let parsed = parse(&json, pages).expect("parse");
        assert_eq!(parsed.runs(), image.runs());
    }

    #[test]
    fn empty_store_round_trips() {
        let dir = TempDir::new("empty");
        assert_eq!(Store::new().write(&dir.0).expect("write"), 0);
        let image = read(&dir.0).expect("read");
        assert!(image.ranges().is_empty() && image.runs().is_empty());
        assert_eq!(image.iter().count(), 0);
    }

    #[test]
    fn missing_files_are_named() {
        let (dir, _) = written("missing");
        fs::remove_file(dir.0.join("pages.bin")).expect("rm");
        let err = read(&dir.0).expect_err("no pages.bin");
        assert!(matches!(&err, ImageError::Missing { path } if path.ends_with("pages.bin")));
        fs::remove_file(dir.0.join("image.json")).expect("rm");
        let err = read(&dir.0).expect_err("no image.json");
        assert!(matches!(&err, ImageError::Missing { path } if path.ends_with("image.json")));
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[test]
    fn pages_bin_of_the_wrong_size_is_refused() {
        let (dir, _) = written("pages-len");
        let pages_path = dir.0.join("pages.bin");
        let full = fs::read(&pages_path).expect("pages");
        for len in [0, full.len() - 1, full.len() - PS as usize, full.len() + 1] {
            let mut bytes = full.clone();
            bytes.resize(len, 0);
            fs::write(&pages_path, &bytes).expect("write");
            match read(&dir.0) {
                Err(ImageError::PagesLen { len: l, expected }) => {
                    assert_eq!((l, expected), (len as u64, full.len() as u64));
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn oversized_manifest_is_refused_before_reading() {
        let dir = TempDir::new("big");
        fs::create_dir_all(&dir.0).expect("mkdir");
        // Sparse: costs no disk space, and is never read.
        let f = File::create(dir.0.join("image.json")).expect("create");
        f.set_len(MAX_MANIFEST_LEN + 1).expect("set_len");
        let err = read(&dir.0).expect_err("too large");
        assert!(matches!(err, ImageError::ManifestTooLarge { .. }), "{err}");
    }

    #[test]
    fn truncated_manifests_are_refused() {
        let (dir, _) = written("truncated");
        let (json, pages) = files(&dir);
        for cut in 0..json.len() {
            // Cutting trailing whitespace leaves a valid document.
            if json[cut..].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse(&json[..cut], pages.clone()) {
                Err(ImageError::Json { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    /// The sample image's manifest as a JSON value, and its pages.
    fn sample() -> (Value, Vec<u8>) {
        let (dir, _) = written("sample");
        let (json, pages) = files(&dir);
        (serde_json::from_slice(&json).expect("json"), pages)
    }

    fn parse_value(v: &Value, pages: &[u8]) -> Result<Image, ImageError> {
        parse(&serde_json::to_vec(v).expect("serialize"), pages.to_vec())
    }

    #[test]
    fn corrupted_manifests_are_refused_with_clear_errors() {
        let (good, pages) = sample();
        parse_value(&good, &pages).expect("sample is valid");
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, &str)] = &[
            ("format", |v| v["format"] = json!("criu"), "format \"criu\""),
            ("version", |v| v["version"] = json!(2), "version 2"),
            ("version type", |v| v["version"] = json!("1"), "not a valid"),
            (
                "page size",
                |v| v["page_size"] = json!(4095),
                "page size 4095",
            ),
            ("page size 0", |v| v["page_size"] = json!(0), "page size 0"),
            (
                "page size big",
                |v| v["page_size"] = json!(1u64 << 31),
                "page size",
            ),
            ("negative", |v| v["page_size"] = json!(-4096), "not a valid"),
            ("unknown field", |v| v["extra"] = json!(1), "unknown field"),
            (
                "no runs",
                |v| drop(v.as_object_mut().unwrap().remove("runs")),
                "missing field",
            ),
            (
                "0x",
                |v| v["ranges"][0]["start"] = json!("0x100000"),
                "ranges[0].start",
            ),
            (
                "upper",
                |v| v["ranges"][0]["start"] = json!("10000A"),
                "ranges[0].start",
            ),
            (
                "sign",
                |v| v["ranges"][0]["end"] = json!("+108000"),
                "ranges[0].end",
            ),
            (
                "empty",
                |v| v["runs"][0]["addr"] = json!(""),
                "runs[0].addr",
            ),
            (
                "long",
                |v| v["runs"][0]["addr"] = json!("00000000000100000"),
                "runs[0].addr",
            ),
            (
                "2^56",
                |v| v["ranges"][2]["end"] = json!("100000000000000"),
                "ranges[2].end",
            ),
            (
                "inverted",
                |v| v["ranges"][0]["end"] = json!("f0000"),
                "range 0",
            ),
            (
                "unaligned",
                |v| v["ranges"][1]["end"] = json!("10c001"),
                "not page-aligned",
            ),
            (
                "overlap",
                |v| v["ranges"][1]["start"] = json!("107000"),
                "overlaps",
            ),
            (
                "zero pages",
                |v| v["runs"][1]["pages"] = json!(0),
                "no pages",
            ),
            (
                "run unaligned",
                |v| v["runs"][1]["addr"] = json!("103800"),
                "not page-aligned",
            ),
            (
                "run order",
                |v| v["runs"][1]["addr"] = json!("100000"),
                "overlaps or precedes",
            ),
            (
                "outside",
                |v| v["runs"][3]["addr"] = json!("10c000"),
                "not inside",
            ),
            (
                "overflow",
                |v| v["runs"][1]["pages"] = json!(u64::MAX),
                "past 2^56",
            ),
            (
                "no offset",
                |v| drop(v["runs"][0].as_object_mut().unwrap().remove("offset")),
                "needs an offset",
            ),
            (
                "zero offset",
                |v| v["runs"][1]["offset"] = json!(12288),
                "no offset",
            ),
            (
                "offset",
                |v| v["runs"][2]["offset"] = json!(4096),
                "offset 4096 is not 12288",
            ),
            (
                "kind",
                |v| v["runs"][0]["kind"] = json!("hole"),
                "unknown variant",
            ),
        ];
        for (what, edit, needle) in cases {
            let mut v = good.clone();
            edit(&mut v);
            let err = match parse_value(&v, &pages) {
                Err(e) => e,
                Ok(_) => panic!("{what}: accepted {v}"),
            };
            let msg = pagehop_mem::error_chain(&err);
            assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
        }
    }
}
