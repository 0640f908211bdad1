//! `process_vm_readv`: reading another process's memory into ours.
use std::io;
use std::mem::{align_of, offset_of, size_of};

/// One remote range, laid out like `struct iovec` so a slice of them is
/// passed to the kernel as is, without raw pointers into another address
/// space floating around the safe code.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct RemoteIov {
    pub addr: u64,
    pub len: usize,
}

const _: () = assert!(size_of::<RemoteIov>() == size_of::<libc::iovec>());
const _: () = assert!(align_of::<RemoteIov>() == align_of::<libc::iovec>());
const _: () = assert!(offset_of!(RemoteIov, addr) == offset_of!(libc::iovec, iov_base));
const _: () = assert!(offset_of!(RemoteIov, len) == offset_of!(libc::iovec, iov_len));

/// Reads the remote ranges of `pid` into `local`, in order. Returns the
/// bytes read, which is less than `local.len()` if a remote page could not
/// be read part way. The remote lengths must add up to `local.len()`.
pub fn process_vm_readv(pid: i32, local: &mut [u8], remote: &[RemoteIov]) -> io::Result<usize> {
    debug_assert_eq!(remote.iter().map(|r| r.len).sum::<usize>(), local.len());
    debug_assert!(remote.len() <= IOV_MAX);
    let local_iov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    // SAFETY: `local_iov` describes `local`, which is live and exclusively
    // borrowed for the whole call, so the kernel may write up to
    // `local.len()` bytes into it. `RemoteIov` has the layout of
    // `struct iovec` (checked above), so `remote` is a valid iovec array
    // of `remote.len()` entries; those only name addresses in the other
    // process, which the kernel checks and never dereferences in ours.
    let ret = unsafe {
        libc::process_vm_readv(
            pid,
            &local_iov,
            1,
            remote.as_ptr().cast::<libc::iovec>(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Most remote iovecs one `process_vm_readv` accepts (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;
