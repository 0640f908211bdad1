//! File-system probes (`statfs` kinds) and advisory locks (`flock`).
use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::FlockOperation;

/// `TMPFS_MAGIC` and `CGROUP2_SUPER_MAGIC` from `<linux/magic.h>`.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

fn has_magic(path: &Path, magic: u64) -> io::Result<bool> {
    Ok(rustix::fs::statfs(path)?.f_type as u64 == magic)
}

/// Whether `path` lies on a tmpfs.
pub fn is_tmpfs(path: &Path) -> io::Result<bool> {
    has_magic(path, TMPFS_MAGIC)
}

/// Whether `path` lies on a cgroup v2 file system.
pub fn is_cgroup2(path: &Path) -> io::Result<bool> {
    has_magic(path, CGROUP2_SUPER_MAGIC)
}

/// `flock(LOCK_SH)`, waiting.
pub fn lock_shared(file: &File) -> io::Result<()> {
    Ok(rustix::fs::flock(file, FlockOperation::LockShared)?)
}

/// `flock(LOCK_EX | LOCK_NB)`: false when another holder has it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_system_kinds_are_told_apart() {
        assert!(!is_tmpfs(Path::new("/proc")).unwrap());
        assert!(!is_cgroup2(Path::new("/proc")).unwrap());
        if Path::new("/dev/shm").exists() {
            assert!(is_tmpfs(Path::new("/dev/shm")).unwrap());
        }
        assert!(is_cgroup2(Path::new("/nonexistent-pagehop")).is_err());
    }

    #[test]
    fn a_second_exclusive_lock_is_refused_while_one_is_shared() {
        let path = std::env::temp_dir().join(format!("pagehop-flock-{}", std::process::id()));
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        lock_shared(&a).unwrap();
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
