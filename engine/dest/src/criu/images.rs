//! CRIU's images as they arrive from the source (`ImageChunk`s), written
//! into the image directory `criu restore` reads.
//!
//! The names come from the peer: only plain CRIU image file names are
//! taken ([`is_image_file_name`]), each file is created new (never over an
//! existing one), its chunks must come in order without gaps, and the whole
//! is capped in files and bytes before anything is written.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pagehop_wire::criu::is_image_file_name;
use pagehop_wire::msg::ImageChunk;

/// Most image files of one migration.
pub const MAX_FILES: usize = 1 << 16;
/// Most image bytes of one migration (the lazy pages are not in them).
pub const MAX_BYTES: u64 = 64 << 30;
/// Files the image directory may hold before the images arrive (CRIU's
/// logs of an earlier restore are not images).
const FOREIGN_OK: &[&str] = &["restore.log", "restored.pid", "lazy-pages.socket"];

#[derive(Debug, thiserror::Error)]
pub enum ImageIntakeError {
    #[error("the source sent an image named {name:?}, which is not a CRIU image file name")]
    BadName { name: String },
    #[error("image directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image directory {path} already holds {name}: give recv --criu an empty directory")]
    NotEmpty { path: PathBuf, name: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {name}: a chunk at offset {offset} where {expected} was next")]
    OutOfOrder {
        name: String,
        offset: u64,
        expected: u64,
    },
    #[error("image {name}: a chunk after its last one")]
    AfterLast { name: String },
    #[error("image {name}: a chunk that does not decompress to its {raw_len} bytes")]
    Decompress { name: String, raw_len: u32 },
    #[error("the images exceed {what}")]
    TooLarge { what: &'static str },
    #[error("images still incomplete at the switch: {names:?}")]
    Unfinished { names: Vec<String> },
    #[error("the source sent no {name}: not a CRIU dump")]
    Missing { name: &'static str },
}

enum FileState {
    Open { file: File, len: u64 },
    Done,
}

/// The images received so far.
pub struct ImageIntake {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    bytes: u64,
    wire_bytes: u64,
}

/// What arrived.
#[derive(Debug, Default, Clone, Copy)]
pub struct ImagesReceived {
    pub files: usize,
    pub bytes: u64,
    pub wire_bytes: u64,
}

impl ImageIntake {
    /// Images go into `dir` (created if missing; it must hold no images).
    pub fn new(dir: &Path) -> Result<ImageIntake, ImageIntakeError> {
        let err = |source| ImageIntakeError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let name = entry.map_err(err)?.file_name();
            let name = name.to_string_lossy();
            if !FOREIGN_OK.contains(&name.as_ref()) {
                return Err(ImageIntakeError::NotEmpty {
                    path: dir.to_path_buf(),
                    name: name.into_owned(),
                });
            }
        }
        Ok(ImageIntake {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            bytes: 0,
            wire_bytes: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one chunk.
    pub fn add(&mut self, chunk: &ImageChunk) -> Result<(), ImageIntakeError> {
        let name = &chunk.name;
        if !is_image_file_name(name) {
            return Err(ImageIntakeError::BadName { name: name.clone() });
        }
        self.wire_bytes += chunk.data.len() as u64;
        self.bytes += chunk.raw_len as u64;
        if self.bytes > MAX_BYTES {
            return Err(ImageIntakeError::TooLarge { what: "64 GiB" });
        }
        if !self.files.contains_key(name) {
            if self.files.len() >= MAX_FILES {
                return Err(ImageIntakeError::TooLarge {
                    what: "65536 files",
                });
            }
            let path = self.dir.join(name);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| ImageIntakeError::Write { path, source })?;
            self.files
                .insert(name.clone(), FileState::Open { file, len: 0 });
        }
        let path = self.dir.join(name);
        let state = self.files.get_mut(name).expect("inserted above");
        let FileState::Open { file, len } = state else {
            return Err(ImageIntakeError::AfterLast { name: name.clone() });
        };
        if chunk.offset != *len {
            return Err(ImageIntakeError::OutOfOrder {
                name: name.clone(),
                offset: chunk.offset,
                expected: *len,
            });
        }
        let data = if chunk.lz4 {
            let raw = lz4_flex::block::decompress(&chunk.data, chunk.raw_len as usize)
                .ok()
                .filter(|d| d.len() == chunk.raw_len as usize)
                .ok_or_else(|| ImageIntakeError::Decompress {
                    name: name.clone(),
                    raw_len: chunk.raw_len,
                })?;
            std::borrow::Cow::Owned(raw)
        } else {
            std::borrow::Cow::Borrowed(&chunk.data[..])
        };
        file.write_all(&data)
            .map_err(|source| ImageIntakeError::Write {
                path: path.clone(),
                source,
            })?;
        *len += data.len() as u64;
        if chunk.last {
            file.sync_data()
                .map_err(|source| ImageIntakeError::Write { path, source })?;
            *state = FileState::Done;
        }
        Ok(())
    }

    /// At the switch: every file ended, and the tree's images are there.
    pub fn finish(&self) -> Result<ImagesReceived, ImageIntakeError> {
        let open: Vec<String> = self
            .files
            .iter()
            .filter(|(_, s)| matches!(s, FileState::Open { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        if !open.is_empty() {
            return Err(ImageIntakeError::Unfinished { names: open });
        }
        for name in [
            pagehop_wire::criu::INVENTORY_FILE,
            pagehop_wire::criu::PSTREE_FILE,
        ] {
            if !self.files.contains_key(name) {
                return Err(ImageIntakeError::Missing { name });
            }
        }
        Ok(ImagesReceived {
            files: self.files.len(),
            bytes: self.bytes,
            wire_bytes: self.wire_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(name: &str, offset: u64, data: &[u8], last: bool) -> ImageChunk {
        ImageChunk {
            name: name.into(),
            offset,
            lz4: false,
            last,
            raw_len: data.len() as u32,
            data: data.to_vec(),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pagehop-images-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn images_are_written_in_order_and_checked_at_the_switch() {
        let dir = scratch("ok");
        let mut intake = ImageIntake::new(&dir).expect("new");
        intake
            .add(&chunk("inventory.img", 0, b"inv", true))
            .expect("inv");
        intake
            .add(&chunk("pstree.img", 0, b"ps", false))
            .expect("ps 1");
        assert!(matches!(
            intake.finish(),
            Err(ImageIntakeError::Unfinished { .. })
        ));
        let packed = lz4_flex::block::compress(&[7u8; 5000]);
        intake
            .add(&ImageChunk {
                name: "pstree.img".into(),
                offset: 2,
                lz4: true,
                last: true,
                raw_len: 5000,
                data: packed,
            })
            .expect("ps 2, compressed");
        let got = intake.finish().expect("complete");
        assert_eq!((got.files, got.bytes), (2, 5005));
        let ps = std::fs::read(dir.join("pstree.img")).expect("read");
        assert_eq!(&ps[..2], b"ps");
        assert!(ps[2..].iter().all(|&b| b == 7) && ps.len() == 5002);
        assert!(matches!(
            intake.add(&chunk("pstree.img", 5002, b"x", true)),
            Err(ImageIntakeError::AfterLast { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hostile_chunks_are_refused() {
        let dir = scratch("bad");
        let mut intake = ImageIntake::new(&dir).expect("new");
        for name in ["../etc/passwd", "a/b.img", "", ".img", "lazy-pages.socket"] {
            assert!(
                matches!(
                    intake.add(&chunk(name, 0, b"x", true)),
                    Err(ImageIntakeError::BadName { .. })
                ),
                "{name:?}"
            );
        }
        intake
            .add(&chunk("mm-1.img", 0, b"abc", false))
            .expect("first");
        assert!(matches!(
            intake.add(&chunk("mm-1.img", 5, b"d", true)),
            Err(ImageIntakeError::OutOfOrder { expected: 3, .. })
        ));
        let mut bad = chunk("core-1.img", 0, b"not lz4 at all", true);
        bad.lz4 = true;
        bad.raw_len = 100;
        assert!(matches!(
            intake.add(&bad),
            Err(ImageIntakeError::Decompress { .. })
        ));
        assert!(matches!(
            ImageIntake::new(&dir),
            Err(ImageIntakeError::NotEmpty { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let empty = scratch("empty");
        let intake = ImageIntake::new(&empty).expect("new");
        assert!(matches!(
            intake.finish(),
            Err(ImageIntakeError::Missing { .. })
        ));
        let _ = std::fs::remove_dir_all(&empty);
    }
}
