//! Reading an image back: [`read`] (a directory) and [`parse`] (the two
//! files' bytes), both validating everything, and [`Image`], which is a
//! [`PageProvider`].
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use pagehop_mem::pages::Range;

use super::{
    ADDR_LIMIT, FORMAT, ImageError, MAX_MANIFEST_LEN, MAX_PAGE_SIZE, MIN_PAGE_SIZE, PageState,
    RunProblem, VERSION,
};

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

/// An image is a page provider: its layout is its ranges (as anonymous
/// read-write mappings), its populated pages are its runs, and a page in no
/// run reads as absent.
impl pagehop_mem::PageProvider for Image {
    fn page_size(&self) -> usize {
        self.page_size as usize
    }

    fn layout(
        &self,
        space: pagehop_mem::SpaceKey,
    ) -> Result<pagehop_mem::layout::Layout, pagehop_mem::ProvideError> {
        check(space)?;
        Ok(pagehop_mem::layout::Layout {
            vmas: self
                .ranges
                .iter()
                .map(|&range| pagehop_mem::layout::Vma::anonymous(range, ""))
                .collect(),
        })
    }

    fn populated(
        &self,
        space: pagehop_mem::SpaceKey,
        _layout: &pagehop_mem::layout::Layout,
    ) -> Result<pagehop_mem::pages::RangeSet, pagehop_mem::ProvideError> {
        check(space)?;
        Ok(pagehop_mem::pages::RangeSet::from_ranges(
            self.runs
                .iter()
                .map(|r| Range::new(r.addr, r.addr + r.pages * self.page_size))
                .collect(),
        ))
    }

    fn read(
        &self,
        space: pagehop_mem::SpaceKey,
        runs: &[(u64, usize)],
        buf: &mut [u8],
        present: &mut Vec<bool>,
    ) -> Result<(), pagehop_mem::ProvideError> {
        check(space)?;
        let ps = self.page_size as usize;
        let need = pagehop_mem::provider::run_bytes(runs, ps);
        if buf.len() < need {
            return Err(pagehop_mem::ProvideError::BadRead {
                space,
                why: format!("{need} bytes of pages into a {}-byte buffer", buf.len()),
            });
        }
        present.clear();
        let mut at = 0;
        for &(start, pages) in runs {
            for i in 0..pages as u64 {
                let page = &mut buf[at..at + ps];
                match self.get(start.wrapping_add(i * self.page_size)) {
                    PageState::Data(data) => {
                        page.copy_from_slice(data);
                        present.push(true);
                    }
                    PageState::Zero => {
                        page.fill(0);
                        present.push(true);
                    }
                    PageState::Absent => present.push(false),
                }
                at += ps;
            }
        }
        Ok(())
    }
}

fn check(space: pagehop_mem::SpaceKey) -> Result<(), pagehop_mem::ProvideError> {
    if space == pagehop_mem::SpaceKey::ROOT {
        Ok(())
    } else {
        Err(pagehop_mem::ProvideError::UnknownSpace { space })
    }
}
