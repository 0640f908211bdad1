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
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::store::PageStore;

pub const FORMAT: &str = "pagehop-image";
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

/// Writes the store to `dir`; returns the number of pages written (data and zero).
pub fn write(dir: &Path, store: &PageStore) -> Result<u64, ImageError> {
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
    let ps = store.page_size() as u64;
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
    for (addr, page) in store.iter() {
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
        page_size: store.page_size(),
        ranges: store
            .ranges()
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
