//! A fresh directory that only its owner may enter, to hold the handoff
//! socket: with the socket at a predictable path in a shared directory, a
//! local user could plant a file there first and make the switchover fail
//! after the source froze, or race the bind. Inside a new 0700 directory
//! with a random name, nobody else can create anything.
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the directory.
const DIR_MODE: u32 = 0o700;
/// Names tried before giving up (each one random).
const ATTEMPTS: usize = 16;

/// The directory, removed with what it holds when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `parent/prefix-<random>` with mode 0700; never reuses a
    /// directory (or a symlink) that is already there.
    pub fn create(parent: &Path, prefix: &str) -> io::Result<Self> {
        for _ in 0..ATTEMPTS {
            let nonce = pagehop_wire::auth::try_new_nonce().map_err(io::Error::other)?;
            let tag = u64::from_le_bytes(nonce[..8].try_into().expect("8 bytes"));
            let path = parent.join(format!("{prefix}-{tag:016x}"));
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(&path) {
                Ok(()) => {
                    // The umask can only have narrowed it; make it exact.
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(DIR_MODE))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{ATTEMPTS} random names under {} were all taken",
                parent.display()
            ),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks inside.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn each_directory_is_new_private_and_removed_after() {
        let parent = std::env::temp_dir();
        let a = PrivateDir::create(&parent, "pagehop-test-private").expect("a");
        let b = PrivateDir::create(&parent, "pagehop-test-private").expect("b");
        assert_ne!(a.path(), b.path());
        let meta = std::fs::symlink_metadata(a.path()).expect("meta");
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, DIR_MODE);
        std::fs::write(a.path().join("uffd.sock"), b"x").expect("write inside");
        let kept = a.path().to_owned();
        drop(a);
        assert!(!kept.exists(), "removed with its contents");
    }
}
