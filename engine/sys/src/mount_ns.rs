//! A child in a mount namespace of its own.
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use rustix::mount::MountPropagationFlags;
use rustix::thread::UnshareFlags;

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
