//! A recorded working set (`--record-working-set`, `--prefetch-from`): the
//! pages a migrated service touched first, so that a later migration of the
//! same service pushes them before anything else (REAP's idea).
//!
//! Addresses are kept relative to their mapping, so that a service whose
//! mappings land elsewhere (ASLR) still finds its pages: a mapping is named
//! by its path (empty for anonymous memory) and its ordinal among the
//! writable private mappings of that name, in address order. File format,
//! one run of pages per line, in the order the pages were first wanted:
//!
//! ```text
//! # pagehop working set v1
//! <ordinal> <first page offset> <pages> <name, may be empty or hold spaces>
//! ```
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use pagehop_mem::layout::{Layout, Vma};

const HEADER: &str = "# pagehop working set v1";
/// Longest file accepted (a working set of millions of runs is a mistake).
const MAX_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    #[error("reading the working set {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the working set {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}:{line}: {why}")]
    Parse {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
}

/// One run of pages inside one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    ordinal: u32,
    offset: u64,
    pages: u64,
    name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    runs: Vec<Run>,
}

/// The mappings a working set refers to, with their (name, ordinal) keys.
fn keyed(layout: &Layout) -> Vec<((&str, u32), &Vma)> {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    layout
        .vmas
        .iter()
        .filter(|v| v.is_writable_private_state())
        .map(|v| {
            let n = seen.entry(v.name.as_str()).or_default();
            let key = (v.name.as_str(), *n);
            *n += 1;
            (key, v)
        })
        .collect()
}

impl WorkingSet {
    /// The working set of `pages` (addresses in the order they were wanted;
    /// pages outside every writable mapping are left out).
    pub fn from_pages(layout: &Layout, pages: &[u64], page_size: u64) -> Self {
        let maps = keyed(layout);
        let mut runs: Vec<Run> = Vec::new();
        for &page in pages {
            let Some(((name, ordinal), vma)) = maps.iter().find(|(_, v)| v.range.contains(page))
            else {
                continue;
            };
            let offset = (page - vma.range.start) / page_size;
            match runs.last_mut() {
                Some(r)
                    if r.ordinal == *ordinal && r.name == *name && r.offset + r.pages == offset =>
                {
                    r.pages += 1
                }
                _ => runs.push(Run {
                    ordinal: *ordinal,
                    offset,
                    pages: 1,
                    name: name.to_string(),
                }),
            }
        }
        Self { runs }
    }

    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }

    /// The recorded pages at their addresses in `layout`, in recorded order;
    /// runs whose mapping is missing or smaller now are cut or skipped.
    pub fn resolve(&self, layout: &Layout, page_size: u64) -> Vec<u64> {
        let maps = keyed(layout);
        let mut out = Vec::new();
        for run in &self.runs {
            let Some((_, vma)) = maps
                .iter()
                .find(|((name, ordinal), _)| *name == run.name && *ordinal == run.ordinal)
            else {
                continue;
            };
            let len = vma.range.len() / page_size;
            let end = (run.offset + run.pages).min(len);
            out.extend((run.offset..end).map(|i| vma.range.start + i * page_size));
        }
        out
    }

    pub fn save(&self, path: &Path) -> Result<(), WorkingSetError> {
        let mut text = String::from(HEADER);
        text.push('\n');
        for r in &self.runs {
            text.push_str(&format!(
                "{} {} {} {}\n",
                r.ordinal,
                r.offset,
                r.pages,
                r.name.replace('\n', " ")
            ));
        }
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| WorkingSetError::Write {
                path: path.to_path_buf(),
                source,
            })
    }

    pub fn load(path: &Path) -> Result<Self, WorkingSetError> {
        let read_err = |source| WorkingSetError::Read {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::metadata(path).map_err(read_err)?.len() > MAX_FILE {
            return Err(WorkingSetError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text).map_err(|(line, why)| WorkingSetError::Parse {
            path: path.to_path_buf(),
            line,
            why,
        })
    }

    fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err((1, "not a pagehop working set (header line missing)")),
        }
        let mut runs = Vec::new();
        for (i, line) in lines {
            let mut parts = line.splitn(4, ' ');
            let mut number = |why| {
                parts
                    .next()
                    .and_then(|p| p.parse::<u64>().ok())
                    .ok_or((i + 1, why))
            };
            let ordinal = u32::try_from(number("bad mapping ordinal")?)
                .map_err(|_| (i + 1, "bad mapping ordinal"))?;
            let offset = number("bad page offset")?;
            let pages = number("bad page count")?;
            if pages == 0 || offset.checked_add(pages).is_none() {
                return Err((i + 1, "bad page count"));
            }
            let name = parts.next().unwrap_or("").to_string();
            runs.push(Run {
                ordinal,
                offset,
                pages,
                name,
            });
        }
        Ok(Self { runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehop_mem::pages::Range;

    const PS: u64 = 4096;

    fn vma(start: u64, end: u64, name: &str) -> Vma {
        Vma::anonymous(Range::new(start, end), name)
    }

    #[test]
    fn follows_mappings_that_moved() {
        let old = Layout {
            vmas: vec![
                vma(0x10000, 0x20000, ""),
                vma(0x40000, 0x50000, "/data/x"),
                vma(0x60000, 0x70000, ""),
            ],
        };
        let pages = [0x61000, 0x62000, 0x11000, 0x41000, 0x99000];
        let ws = WorkingSet::from_pages(&old, &pages, PS);
        assert_eq!(ws.pages(), 4, "the page outside every mapping is dropped");
        let dir = std::env::temp_dir().join(format!("pagehop-ws-{}", std::process::id()));
        ws.save(&dir).expect("save");
        let loaded = WorkingSet::load(&dir).expect("load");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(loaded, ws);
        // Everything moved by 1 MiB; the second anonymous mapping shrank.
        let new = Layout {
            vmas: vec![
                vma(0x110000, 0x120000, ""),
                vma(0x140000, 0x150000, "/data/x"),
                vma(0x160000, 0x162000, ""),
            ],
        };
        assert_eq!(loaded.resolve(&new, PS), vec![0x161000, 0x111000, 0x141000]);
    }

    #[test]
    fn refuses_garbage() {
        assert!(WorkingSet::parse("hello\n").is_err());
        assert_eq!(
            WorkingSet::parse(&format!("{HEADER}\n0 x 1 \n")),
            Err((2, "bad page offset"))
        );
        assert_eq!(
            WorkingSet::parse(&format!("{HEADER}\n0 1 0 name\n")),
            Err((2, "bad page count"))
        );
        let ok = WorkingSet::parse(&format!("{HEADER}\n2 5 3 a name with spaces\n")).expect("ok");
        assert_eq!(ok.runs[0].name, "a name with spaces");
    }
}
