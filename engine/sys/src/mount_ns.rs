//! A child in a private mount namespace, and the file-system probes and
//! locks that go with keeping a file on the host: `statfs` kinds and
//! `flock`.
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use rustix::fs::FlockOperation;
use rustix::mount::MountPropagationFlags;
use rustix::thread::UnshareFlags;

/// Whether `path` lies on a tmpfs (`statfs`).
pub fn is_tmpfs(path: &Path) -> io::Result<bool> {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    Ok(rustix::fs::statfs(path)?.f_type as u64 == TMPFS_MAGIC)
}

/// Makes `cmd`'s child run in a mount namespace of its own (every mount
/// private to it) with `source` bind-mounted on `target`: what it writes
/// to `target` lands in `source`, and nothing else sees the change.
pub fn bind_in_child(
    cmd: &mut std::process::Command,
    source: &Path,
    target: &Path,
) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (source, target) = (c(source)?, c(target)?);
    // SAFETY: the closure runs between fork and exec in the single-threaded
    // child and makes only raw syscalls (unshare, mount) on C strings built
    // before the fork: no allocation, no locks. CLONE_NEWNS does not split
    // the descriptor table, so no thread can see descriptors it lacks.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::unshare_unsafe(UnshareFlags::NEWNS)?;
            rustix::mount::mount_change(
                c"/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )?;
            rustix::mount::mount_bind(source.as_c_str(), target.as_c_str())?;
            Ok(())
        });
    }
    Ok(())
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
    fn dev_shm_is_tmpfs_and_proc_is_not() {
        assert!(!is_tmpfs(Path::new("/proc")).unwrap());
        if Path::new("/dev/shm").exists() {
            assert!(is_tmpfs(Path::new("/dev/shm")).unwrap());
        }
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
