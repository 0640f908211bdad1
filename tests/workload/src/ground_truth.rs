//! The ground-truth file: which pages the workload wrote, and when.
//!
//! One text line per writer per tick in which it wrote (and per churn step):
//!
//! ```text
//! <tgid> <start_ns> <end_ns> <addr> <addr> ...
//! ```
//!
//! `start_ns`/`end_ns` are CLOCK_MONOTONIC just before the first and just
//! after the last write; each `addr` is a page address in lowercase hex
//! without `0x`.
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Errors of the ground-truth file.
#[derive(Debug, thiserror::Error)]
pub enum GroundTruthError {
    #[error("creating ground-truth file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing ground-truth file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Appends `<tgid> <start_ns> <end_ns> <addr>...` and a newline to `line`.
pub fn format_line(line: &mut String, tgid: i32, start_ns: u64, end_ns: u64, addrs: &[usize]) {
    // Writing to a String cannot fail.
    let _ = write!(line, "{tgid} {start_ns} {end_ns}");
    for addr in addrs {
        let _ = write!(line, " {addr:x}");
    }
    line.push('\n');
}

#[derive(Debug)]
struct Inner {
    out: BufWriter<File>,
    /// First write error; reported by the next flush.
    error: Option<io::Error>,
}

/// A ground-truth file shared by all writer threads.
#[derive(Debug)]
pub struct GroundTruth {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl GroundTruth {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self, GroundTruthError> {
        let file = File::create(path).map_err(|source| GroundTruthError::Create {
            path: path.to_owned(),
            source,
        })?;
        let inner = Inner {
            out: BufWriter::with_capacity(1 << 20, file),
            error: None,
        };
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(inner),
        })
    }

    /// Appends one line (formatted outside the lock).
    pub fn record(&self, tgid: i32, start_ns: u64, end_ns: u64, addrs: &[usize]) {
        let mut line = String::with_capacity(32 + addrs.len() * 13);
        format_line(&mut line, tgid, start_ns, end_ns, addrs);
        let mut inner = self.lock();
        if inner.error.is_none() {
            if let Err(e) = inner.out.write_all(line.as_bytes()) {
                inner.error = Some(e);
            }
        }
    }

    /// Writes buffered lines to the file; reports the first error since creation.
    pub fn flush(&self) -> Result<(), GroundTruthError> {
        let mut inner = self.lock();
        let result = match inner.error.take() {
            Some(e) => Err(e),
            None => inner.out.flush(),
        };
        result.map_err(|source| GroundTruthError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking writer thread leaves whole lines behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines() {
        let mut line = String::new();
        format_line(
            &mut line,
            4242,
            100,
            250,
            &[0x6000_0000_1000, 0x7f00_dead_b000, 0x6000_0000_0000],
        );
        assert_eq!(
            line,
            "4242 100 250 600000001000 7f00deadb000 600000000000\n"
        );
        format_line(&mut line, 7, 1, 2, &[]);
        assert_eq!(line.lines().nth(1), Some("7 1 2"));
    }

    #[test]
    fn writes_lines_to_the_file() {
        let path = std::env::temp_dir().join(format!("pagehop-gt-test-{}", std::process::id()));
        let gt = GroundTruth::create(&path).expect("create");
        gt.record(1, 2, 3, &[0x1000]);
        gt.record(1, 4, 5, &[0x2000, 0x3000]);
        gt.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(text, "1 2 3 1000\n1 4 5 2000 3000\n");
    }
}
