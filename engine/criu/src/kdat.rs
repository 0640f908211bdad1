//! CRIU's kernel-feature cache, `/run/criu.kdat`, in place before the
//! freeze. Without it every CRIU run probes the kernel first: about 50 ms
//! per `criu dump` and per `criu restore` on this VM, both inside the
//! migration's freeze. CRIU saves the cache itself, but only on a tmpfs
//! `/run`, so that a reboot (perhaps into another kernel) clears it.
//!
//! - `/run` is a tmpfs (systemd hosts): one `criu check` before the freeze
//!   leaves CRIU's own cache there, and it stays CRIU's.
//! - `/run` is not (this VM): `criu check` runs in a mount namespace of
//!   its own whose `/run` is a fresh directory on `/dev/shm` (a tmpfs), so
//!   that CRIU saves its cache there; pagehop installs that file as
//!   `/run/criu.kdat` while it runs and removes it after, since on a
//!   persistent `/run` it would outlive a reboot. A lock file next to it,
//!   `/run/pagehop-criu-kdat.lock`, holds the boot id and the inode of the
//!   installed file; every pagehop using the cache holds it shared, and
//!   the last one out removes the cache.
//!
//! The cache only saves time: any failure here is logged and the
//! migration goes on, with CRIU probing as it would anyway.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use pagehop_sys::{fs as fs_sys, mount_ns};

use crate::Criu;

const RUN: &str = "/run";
const CACHE: &str = "/run/criu.kdat";
const LOCK: &str = "/run/pagehop-criu-kdat.lock";
const SCRATCH_ROOT: &str = "/dev/shm";

/// CRIU's cache, kept in place until this is dropped.
pub struct KdatCache {
    /// Set when pagehop installed (or shares) the cache on a persistent /run.
    installed: Option<File>,
}

#[derive(Debug, thiserror::Error)]
enum KdatError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`criu check` ({0}) saved no cache")]
    NoCache(String),
    #[error("another pagehop is installing the cache")]
    Busy,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KdatError {
    let path = path.to_path_buf();
    move |source| KdatError::Io { what, path, source }
}

impl KdatCache {
    /// Puts CRIU's cache in place (see the module docs). Never fails: a
    /// missing cache only costs CRIU its probe.
    pub fn prepare(criu: &Criu) -> KdatCache {
        match Self::try_prepare(criu) {
            Ok(cache) => cache,
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                log::info!(
                    "CRIU's kernel-feature cache is not in place ({why}): each CRIU run probes the kernel"
                );
                KdatCache { installed: None }
            }
        }
    }

    fn try_prepare(criu: &Criu) -> Result<KdatCache, KdatError> {
        let run = Path::new(RUN);
        if fs_sys::is_tmpfs(run).map_err(io("probing", run))? {
            if !Path::new(CACHE).exists() {
                let status = check(criu, None)?;
                if !Path::new(CACHE).exists() {
                    return Err(KdatError::NoCache(status));
                }
            }
            return Ok(KdatCache { installed: None });
        }
        let lock_path = Path::new(LOCK);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(lock_path)
            .map_err(io("opening", lock_path))?;
        fs_sys::lock_shared(&lock).map_err(io("locking", lock_path))?;
        if read_record(&mut lock).is_some_and(|r| r == current_record(None)) {
            return Ok(KdatCache {
                installed: Some(lock),
            });
        }
        // Stale or missing: make it anew, alone.
        if !fs_sys::try_lock_exclusive(&lock).map_err(io("locking", lock_path))? {
            return Err(KdatError::Busy);
        }
        let inode = install(criu)?;
        let record = current_record(Some(inode));
        lock.set_len(0).map_err(io("writing", lock_path))?;
        lock.rewind().map_err(io("writing", lock_path))?;
        lock.write_all(record.as_bytes())
            .map_err(io("writing", lock_path))?;
        fs_sys::lock_shared(&lock).map_err(io("locking", lock_path))?;
        log::info!("CRIU's kernel-feature cache installed at {CACHE} for this migration");
        Ok(KdatCache {
            installed: Some(lock),
        })
    }
}

impl Drop for KdatCache {
    fn drop(&mut self) {
        let Some(mut lock) = self.installed.take() else {
            return;
        };
        // The last user out removes the cache; others still hold the lock.
        if !fs_sys::try_lock_exclusive(&lock).unwrap_or(false) {
            return;
        }
        if let Some(record) = read_record(&mut lock)
            && record == current_record(None)
        {
            let _ = fs::remove_file(CACHE);
        }
        let _ = lock.set_len(0);
    }
}

/// "boot-id inode" of the cache file as it is now (`inode` given: as it
/// will be recorded).
fn current_record(inode: Option<u64>) -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let inode = inode.or_else(|| {
        fs::symlink_metadata(CACHE)
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| m.ino())
    });
    format!("{} {}", boot.trim(), inode.unwrap_or(0))
}

/// What the lock file records, if it records a cache.
fn read_record(lock: &mut File) -> Option<String> {
    let mut text = String::new();
    lock.rewind().ok()?;
    lock.read_to_string(&mut text).ok()?;
    let record = text.trim().to_string();
    (!record.is_empty() && !record.ends_with(" 0")).then_some(record)
}

/// Runs `criu check` in a private mount namespace whose /run is a scratch
/// directory on a tmpfs, then moves the cache CRIU saved there to /run.
/// Returns the installed file's inode.
fn install(criu: &Criu) -> Result<u64, KdatError> {
    let scratch = Path::new(SCRATCH_ROOT).join(format!("pagehop-kdat-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir(&scratch).map_err(io("creating", &scratch))?;
    let result = (|| {
        let status = check(criu, Some(&scratch))?;
        let saved = scratch.join("criu.kdat");
        let bytes = match fs::read(&saved) {
            Ok(bytes) if !bytes.is_empty() => bytes,
            _ => return Err(KdatError::NoCache(status)),
        };
        let tmp = Path::new(RUN).join(format!("criu.kdat.pagehop-{}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        file.write_all(&bytes).map_err(io("writing", &tmp))?;
        let inode = file.metadata().map_err(io("writing", &tmp))?.ino();
        fs::rename(&tmp, CACHE).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io("installing", Path::new(CACHE))(e)
        })?;
        Ok(inode)
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// `criu check`, with /run bound to `scratch` when given; returns its exit
/// status (a failed check of some feature still saves the cache).
fn check(criu: &Criu, scratch: Option<&Path>) -> Result<String, KdatError> {
    let mut cmd = criu.command();
    cmd.arg("check")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(scratch) = scratch {
        mount_ns::bind_in_child(&mut cmd, scratch, Path::new(RUN))
            .map_err(io("binding", scratch))?;
    }
    let status = cmd.status().map_err(io("running", criu.path()))?;
    Ok(status.to_string())
}
