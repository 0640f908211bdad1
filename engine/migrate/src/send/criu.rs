//! The CRIU switch on the source (`send --criu`): after the rounds, the
//! tree is stopped with SIGSTOP (so nothing CRIU does can make it run),
//! its last writes are collected and all tracking is removed; then
//!
//! 1. `criu dump --lazy-pages --leave-stopped` writes every image but the
//!    lazy pages ([`pagehop_criu::LazyDump`]);
//! 2. the lazy ranges of its pagemaps, less what the rounds sent and
//!    nothing dirtied since, are what the destination still needs: sent now
//!    (pre-copy) or left to post-copy (hybrid, post-copy);
//! 3. the images go over the control lane (`ImageChunk`, lz4 where it
//!    pays), then `Pending` and `Switchover { criu }`;
//! 4. the demand server starts at once (the restore may fault); the
//!    destination restores the tree stopped and says `Restored`; only then
//!    does the source commit: it holds the tree stopped for good and sends
//!    `Commit`, and the destination continues the tree ([`super::switch::commit`]);
//! 5. post-copy runs until the destination holds every page, then CRIU's
//!    page server is closed ([`pagehop_criu::LazyDump::finish`]).
//!
//! Until the commit, any failure leaves the source running as before:
//! CRIU's page server is closed (it leaves the tree stopped and untraced)
//! and then the freeze is released. From the commit on the tree stays
//! stopped, whatever happens.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pagehop_criu::{Criu, DumpError, DumpRequest, LazyDump};
use pagehop_mem::SpaceKey;
use pagehop_mem::pages::{Range, RangeSet};
use pagehop_source::cgroup::{Cgroup, CgroupError};
use pagehop_wire::batch::Compress;
use pagehop_wire::conn::Conn;
use pagehop_wire::criu::{DumpedTree, DumpedTreeError, is_image_file_name};
use pagehop_wire::msg::{ImageChunk, MAX_IMAGE_CHUNK};

use super::SendError;
use super::rounds::Spaces;

/// How long CRIU may take to dump the tree.
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// Image bytes per `ImageChunk`.
const CHUNK: usize = 1 << 20;

/// `send --criu`: which CRIU, and the operator's dump options.
#[derive(Clone, Debug)]
pub struct CriuSend {
    pub criu: Criu,
    /// Passed through to `criu dump` (`--tcp-close`, `--shell-job`, ...).
    pub dump_options: Vec<String>,
    /// Where CRIU writes its images (default: a fresh directory under the
    /// temporary directory, removed after a successful migration).
    pub images_dir: Option<PathBuf>,
    /// The container's cgroup, when the tree was named by it: at the freeze
    /// it must hold no process outside the tree.
    pub cgroup: Option<Cgroup>,
}

#[derive(Debug, thiserror::Error)]
pub enum CriuSendError {
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("reading CRIU's images")]
    Images(#[from] DumpedTreeError),
    #[error(
        "CRIU dumped process {vpid} of the tree, which pagehop did not follow: its memory \
         cannot be served"
    )]
    Unfollowed { vpid: u32 },
    #[error("reading the image {path}")]
    ReadImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the images directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// CRIU's dump, ready to serve: what the destination needs, and how long
/// the dump took.
pub struct Dumped {
    pub dump: LazyDump,
    pub dir: PathBuf,
    /// Whether pagehop made `dir` (and removes it after a success).
    pub own_dir: bool,
    pub dump_ms: f64,
    /// CRIU's tasks (zombies included).
    pub tasks: u32,
    /// The lazy pages the destination lacks, per address space.
    pub need: Spaces<RangeSet>,
    /// Lazy pages in all.
    pub lazy_pages: u64,
}

/// The frozen tree as the rounds left it.
pub struct TreeState<'a> {
    /// The root's host pid.
    pub root: i32,
    /// The migration's session id (names the default images directory).
    pub session: u64,
    /// The address spaces pagehop followed.
    pub spaces: &'a [SpaceKey],
    /// Every page the rounds sent, and those dirtied since.
    pub sent: &'a Spaces<RangeSet>,
    pub dirty: &'a Spaces<RangeSet>,
    pub page_size: u64,
}

/// Runs CRIU's dump on the stopped tree and works out which lazy pages the
/// destination lacks: those the rounds never sent, or sent and dirtied
/// since. `started_dump` sees the dump as soon as CRIU runs.
pub fn dump(
    c: &CriuSend,
    t: &TreeState<'_>,
    started_dump: &mut dyn FnMut(&LazyDump),
) -> Result<Dumped, CriuSendError> {
    let TreeState {
        root,
        session,
        spaces,
        sent,
        dirty,
        page_size,
    } = *t;
    let (dir, own_dir) = match &c.images_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("pagehop-criu-{root}-{session:016x}")),
            true,
        ),
    };
    if own_dir {
        std::fs::create_dir(&dir).map_err(|source| CriuSendError::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    let started = Instant::now();
    let mut dump = LazyDump::start(
        &c.criu,
        &DumpRequest {
            root,
            dir: &dir,
            extra: &c.dump_options,
        },
    )?;
    started_dump(&dump);
    dump.wait_ready(DUMP_TIMEOUT)?;
    let dump_ms = started.elapsed().as_secs_f64() * 1e3;
    let tree = DumpedTree::read(&dir)?;
    let mut need = Spaces::new();
    let mut lazy_pages = 0;
    for task in &tree.tasks {
        if task.lazy.is_empty() {
            continue;
        }
        let space = SpaceKey(task.vpid);
        if !spaces.contains(&space) {
            return Err(CriuSendError::Unfollowed { vpid: task.vpid });
        }
        let lazy =
            RangeSet::from_ranges(task.lazy.iter().map(|&(a, b)| Range::new(a, b)).collect());
        lazy_pages += lazy.pages(page_size);
        let none = RangeSet::new();
        let clean = sent
            .get(&space)
            .unwrap_or(&none)
            .difference(dirty.get(&space).unwrap_or(&none));
        need.insert(space, lazy.difference(&clean));
    }
    log::info!(
        "criu dump: {} tasks in {dump_ms:.1} ms; {lazy_pages} lazy pages, {} not at the destination yet",
        tree.tasks.len(),
        need.values().map(|r| r.pages(page_size)).sum::<u64>()
    );
    Ok(Dumped {
        dump,
        dir,
        own_dir,
        dump_ms,
        tasks: tree.tasks.len() as u32,
        need,
        lazy_pages,
    })
}

/// What shipping the images took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shipped {
    pub files: usize,
    pub bytes: u64,
    pub wire_bytes: u64,
    pub ms: f64,
}

/// Sends every image file of `dir` as `ImageChunk`s, lz4-compressed where
/// that shrinks a chunk by at least an eighth.
pub fn ship_images(
    control: &mut Conn,
    dir: &Path,
    compress: Compress,
) -> Result<Shipped, SendError> {
    let started = Instant::now();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| CriuSendError::Dir {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            (e.file_type().ok()?.is_file() && is_image_file_name(&name)).then_some(name)
        })
        .collect();
    names.sort();
    let mut shipped = Shipped::default();
    let mut buf = vec![0u8; CHUNK.min(MAX_IMAGE_CHUNK)];
    for name in names {
        let path = dir.join(&name);
        let read_err = |source| CriuSendError::ReadImage {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(read_err)?;
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf).map_err(read_err)?;
            let last = n < buf.len();
            let raw = &buf[..n];
            let packed = (compress != Compress::Off && n > 0)
                .then(|| lz4_flex::block::compress(raw))
                .filter(|p| p.len() < n - n / 8);
            let chunk = ImageChunk {
                name: name.clone(),
                offset,
                lz4: packed.is_some(),
                last,
                raw_len: n as u32,
                data: packed.unwrap_or_else(|| raw.to_vec()),
            };
            shipped.wire_bytes += chunk.data.len() as u64;
            control.send(&chunk)?;
            offset += n as u64;
            if last {
                break;
            }
        }
        shipped.files += 1;
        shipped.bytes += offset;
    }
    shipped.ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(shipped)
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
