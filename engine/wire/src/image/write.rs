//! Writing an image: [`ImageWriter`], a [`PageSink`] that streams pages to
//! `pages.bin` and writes `image.json` when finished.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use pagehop_mem::pages::Range;
use pagehop_mem::{PageSink, SpaceKey};

use super::{FORMAT, ImageError, VERSION};

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

/// A run being built: consecutive pages, all data or all zero.
struct OpenRun {
    addr: u64,
    pages: u64,
    data: bool,
    offset: u64,
}

/// Streams an image to a directory: pages go to `pages.bin` as they come
/// (ascending addresses), and [`PageSink::finish`] syncs it and writes
/// `image.json` last, so that a directory with an `image.json` holds a
/// whole image.
pub struct ImageWriter {
    dir: PathBuf,
    page_size: u64,
    pages_path: PathBuf,
    pages: Option<BufWriter<File>>,
    ranges: Vec<Range>,
    runs: Vec<Run>,
    open: Option<OpenRun>,
    offset: u64,
    count: u64,
    last: Option<u64>,
}

impl ImageWriter {
    /// Creates `dir` (if needed, mode 0700) and a new `pages.bin` in it.
    /// An `image.json` already there goes first, so that a crash can never
    /// pair it with the new pages; an old `pages.bin` is unlinked, not
    /// followed (root must not write through a planted symlink). Files are
    /// created 0600: they hold a process's memory.
    pub fn create(dir: &Path, page_size: usize) -> Result<Self, ImageError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_error(dir))?;
        let json_path = dir.join("image.json");
        remove_if_there(&json_path)?;
        let pages_path = dir.join("pages.bin");
        remove_if_there(&pages_path)?;
        let file = create_private(&pages_path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            page_size: page_size as u64,
            pages: Some(BufWriter::with_capacity(1 << 20, file)),
            pages_path,
            ranges: Vec::new(),
            runs: Vec::new(),
            open: None,
            offset: 0,
            count: 0,
            last: None,
        })
    }

    fn close_run(&mut self) {
        if let Some(run) = self.open.take() {
            self.runs.push(Run {
                addr: format!("{:x}", run.addr),
                pages: run.pages,
                kind: if run.data { "data" } else { "zero" },
                offset: run.data.then_some(run.offset),
            });
        }
    }

    fn put_page(&mut self, addr: u64, page: Option<&[u8]>) -> Result<(), ImageError> {
        if self.last.is_some_and(|last| addr <= last) {
            return Err(ImageError::OutOfOrder {
                addr,
                after: self.last.unwrap_or(0),
            });
        }
        self.last = Some(addr);
        let is_data = page.is_some();
        match &mut self.open {
            Some(run) if run.data == is_data && run.addr + run.pages * self.page_size == addr => {
                run.pages += 1;
            }
            _ => {
                self.close_run();
                self.open = Some(OpenRun {
                    addr,
                    pages: 1,
                    data: is_data,
                    offset: self.offset,
                });
            }
        }
        if let Some(data) = page {
            let out = self.pages.as_mut().ok_or(ImageError::Finished)?;
            out.write_all(data).map_err(write_error(&self.pages_path))?;
            self.offset += self.page_size;
        }
        self.count += 1;
        Ok(())
    }
}

/// Unlinks `path` if it exists (a symlink itself, never its target).
fn remove_if_there(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(write_error(path)(e)),
        _ => Ok(()),
    }
}

/// A new file only its owner can read, refused if anything is at `path`.
fn create_private(path: &Path) -> Result<File, ImageError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error(path))
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl PageSink for ImageWriter {
    type Error = ImageError;

    /// The image records the last layout it was given.
    fn set_layout(&mut self, space: SpaceKey, ranges: &[Range]) -> Result<(), ImageError> {
        check(space)?;
        self.ranges = ranges.to_vec();
        Ok(())
    }

    fn put(&mut self, space: SpaceKey, pages: &[(u64, Option<&[u8]>)]) -> Result<(), ImageError> {
        check(space)?;
        for &(addr, page) in pages {
            self.put_page(addr, page)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<u64, ImageError> {
        self.close_run();
        let pages = self.pages.take().ok_or(ImageError::Finished)?;
        pages
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(write_error(&self.pages_path))?;
        let manifest = Manifest {
            format: FORMAT,
            version: VERSION,
            page_size: self.page_size as usize,
            ranges: self
                .ranges
                .iter()
                .map(|r| RangeEntry {
                    start: format!("{:x}", r.start),
                    end: format!("{:x}", r.end),
                })
                .collect(),
            runs: std::mem::take(&mut self.runs),
        };
        // image.json appears whole or not at all: written aside, synced,
        // renamed into place, and the directory synced.
        let json_path = self.dir.join("image.json");
        let tmp_path = self.dir.join("image.json.tmp");
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        remove_if_there(&tmp_path)?;
        let mut tmp = create_private(&tmp_path)?;
        tmp.write_all(&json)
            .and_then(|()| tmp.sync_all())
            .map_err(write_error(&tmp_path))?;
        fs::rename(&tmp_path, &json_path).map_err(write_error(&json_path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(write_error(&self.dir))?;
        Ok(self.count)
    }
}

fn check(space: SpaceKey) -> Result<(), ImageError> {
    if space == SpaceKey::ROOT {
        Ok(())
    } else {
        Err(ImageError::UnknownSpace { space })
    }
}

/// Writes an image of `received` (pages in address order: its address and
/// `None` for a zero page or its data) over the mappings `ranges` to `dir`;
/// returns the number of pages written (data and zero).
pub fn write<'a>(
    dir: &Path,
    page_size: usize,
    ranges: impl IntoIterator<Item = Range>,
    received: impl IntoIterator<Item = (u64, Option<&'a [u8]>)>,
) -> Result<u64, ImageError> {
    let mut writer = ImageWriter::create(dir, page_size)?;
    let ranges: Vec<Range> = ranges.into_iter().collect();
    writer.set_layout(SpaceKey::ROOT, &ranges)?;
    pagehop_mem::sink::drain(SpaceKey::ROOT, received, &mut writer)?;
    writer.finish()
}
