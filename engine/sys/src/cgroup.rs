//! cgroup v2 probes.
use std::io;
use std::path::Path;

/// `CGROUP2_SUPER_MAGIC` from `<linux/magic.h>`.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Whether `path` lies on a cgroup v2 file system (`statfs`).
pub fn is_cgroup2(path: &Path) -> io::Result<bool> {
    let fs = rustix::fs::statfs(path)?;
    Ok(fs.f_type as u64 == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_no_cgroup() {
        assert!(!is_cgroup2(Path::new("/proc")).unwrap());
        assert!(is_cgroup2(Path::new("/nonexistent-pagehop")).is_err());
    }
}
