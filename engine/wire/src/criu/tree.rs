//! A dump directory as pagehop uses it: every task of `pstree.img`, its
//! state (from its core image) and its lazy ranges (from its pagemap),
//! checked against its mm image: every lazy range lies inside one VMA
//! CRIU will register (private anonymous, not locked, not hugetlb, not a
//! vDSO), so an install there can only land where the restore expects it.
use std::path::{Path, PathBuf};

use super::{
    CriuImageError, INVENTORY_FILE, PSTREE_FILE, TaskState, core_file, mm_file, pagemap_file,
    parse_core, parse_inventory, parse_mm, parse_pagemap, parse_pstree,
};

/// Largest image file read here (pagemaps and mm images of huge trees stay
/// far below it; the page data is not read).
const MAX_FILE: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DumpedTreeError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes, over the {MAX_FILE}-byte cap")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("{path}")]
    Image {
        path: PathBuf,
        #[source]
        source: CriuImageError,
    },
    #[error(
        "task {vpid}: lazy pages {start:#x}-{end:#x} are not inside one VMA CRIU registers lazily"
    )]
    LazyOutsideVma { vpid: u32, start: u64, end: u64 },
}

/// One task of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedTask {
    /// Its pid in the tree's namespace (`pstree_entry.pid`).
    pub vpid: u32,
    pub ppid: u32,
    pub state: TaskState,
    /// Its lazy pages, `[start, end)`, ascending, each inside one VMA.
    pub lazy: Vec<(u64, u64)>,
}

/// The tree of a dump directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedTree {
    /// In `pstree.img` order: the root first, parents before children.
    pub tasks: Vec<DumpedTask>,
}

impl DumpedTree {
    /// Reads and checks the tree of the dump in `dir`.
    pub fn read(dir: &Path) -> Result<DumpedTree, DumpedTreeError> {
        let inventory = dir.join(INVENTORY_FILE);
        parse_inventory(&read(&inventory)?).map_err(|source| DumpedTreeError::Image {
            path: inventory,
            source,
        })?;
        let pstree = dir.join(PSTREE_FILE);
        let entries = parse_pstree(&read(&pstree)?).map_err(|source| DumpedTreeError::Image {
            path: pstree,
            source,
        })?;
        let mut tasks = Vec::with_capacity(entries.len());
        for entry in entries {
            let vpid = entry.pid;
            let core = dir.join(core_file(vpid));
            let state = parse_core(&read(&core)?)
                .map_err(|source| DumpedTreeError::Image { path: core, source })?
                .task_state;
            let lazy = if state == TaskState::Dead {
                Vec::new()
            } else {
                lazy_ranges(dir, vpid)?
            };
            tasks.push(DumpedTask {
                vpid,
                ppid: entry.ppid,
                state,
                lazy,
            });
        }
        Ok(DumpedTree { tasks })
    }

    /// Tasks that hand over a userfaultfd (not zombies).
    pub fn live_tasks(&self) -> impl Iterator<Item = &DumpedTask> {
        self.tasks.iter().filter(|t| t.state != TaskState::Dead)
    }
}

/// The lazy ranges of task `vpid`, split at VMA ends, each checked to lie in
/// a VMA that can be lazy.
fn lazy_ranges(dir: &Path, vpid: u32) -> Result<Vec<(u64, u64)>, DumpedTreeError> {
    let pagemap = dir.join(pagemap_file(vpid));
    let map = parse_pagemap(&read(&pagemap)?).map_err(|source| DumpedTreeError::Image {
        path: pagemap,
        source,
    })?;
    let ranges = map.lazy_ranges();
    if ranges.is_empty() {
        return Ok(ranges);
    }
    let mm_path = dir.join(mm_file(vpid));
    let mm = parse_mm(&read(&mm_path)?).map_err(|source| DumpedTreeError::Image {
        path: mm_path,
        source,
    })?;
    let mut out = Vec::with_capacity(ranges.len());
    for (mut start, end) in ranges {
        while start < end {
            let vma = mm
                .vma_at(start)
                .filter(|v| v.can_be_lazy())
                .ok_or(DumpedTreeError::LazyOutsideVma { vpid, start, end })?;
            let piece_end = end.min(vma.end);
            out.push((start, piece_end));
            start = piece_end;
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, DumpedTreeError> {
    let err = |source| DumpedTreeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_FILE {
        return Err(DumpedTreeError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    std::fs::read(path).map_err(err)
}
