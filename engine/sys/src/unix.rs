//! Raw socket calls of the handoff: a listening Unix socket whose file is
//! created with restricted permissions, `poll`, `send` without SIGPIPE, and
//! `sendmsg`/`recvmsg` carrying descriptors (`SCM_RIGHTS`).
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::cvt;

/// Most descriptors taken from one message; a well-behaved peer sends one.
const MAX_FDS: usize = 4;
/// Bytes of descriptor payload in a full `SCM_RIGHTS` message.
const FDS_BYTES: u32 = (MAX_FDS * size_of::<RawFd>()) as u32;
/// Control buffer size for [`MAX_FDS`] descriptors.
// SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
const CMSG_BUF_LEN: usize = unsafe { libc::CMSG_SPACE(FDS_BYTES) } as usize;

/// A control-message buffer aligned for `struct cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

const _: () = assert!(std::mem::align_of::<CmsgBuf>() >= std::mem::align_of::<libc::cmsghdr>());

/// `struct sockaddr_un` for `path` and its length (path plus its NUL).
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is a valid value (empty path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Longest socket path `sockaddr_un` holds (without its NUL).
pub const MAX_PATH: usize = 107;
const _: () = assert!(
    size_of::<libc::sockaddr_un>() - offset_of!(libc::sockaddr_un, sun_path) == MAX_PATH + 1
);

/// A listening `AF_UNIX` stream socket bound at `path`, close-on-exec.
///
/// The socket's mode is set to `mode` *before* `bind`: Linux creates the
/// socket file with the socket inode's mode (minus the umask), so the file
/// never exists with wider permissions.
pub fn listen_unix(path: &Path, mode: libc::mode_t, backlog: i32) -> io::Result<OwnedFd> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: socket takes no pointers.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the call succeeded, so `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod takes a descriptor we own and a mode; no memory.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    // SAFETY: listen takes a descriptor we own and a number.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Waits until `fd` is readable (or hung up, or in error) for at most
/// `timeout`. Returns false on timeout or when a signal interrupted the wait.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so that a sub-millisecond remainder still waits.
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid, writable pollfd.
    let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
    match cvt(ret) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

/// `send(fd, bytes, MSG_NOSIGNAL)` until all of `bytes` went out. A closed
/// peer gives `EPIPE` instead of SIGPIPE.
pub fn send_all(sock: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes.
        let ret = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match cvt(ret) {
            Ok(n) => bytes = &bytes[n as usize..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends one byte of regular data with `fd` attached as `SCM_RIGHTS`.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    let mut data = [byte];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut buf = CmsgBuf([0; CMSG_BUF_LEN]);
    // SAFETY: an all-zero msghdr is a valid value (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as _;
    // SAFETY: `msg.msg_control` points at `buf`, which is aligned for cmsghdr
    // and large enough for one header with one descriptor (msg_controllen), so
    // the first header and its data lie inside `buf`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<RawFd>()
            .write_unaligned(fd.as_raw_fd());
    }
    loop {
        // SAFETY: `msg` points at `iov`/`data` and `buf`, all alive for the call.
        let ret = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match cvt(ret) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What one `recvmsg` returned.
#[derive(Debug)]
pub struct Received {
    /// Bytes of regular data (0 at end of stream).
    pub len: usize,
    /// Descriptors that came with them, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`).
    pub truncated: bool,
}

/// One non-blocking `recvmsg` into `buf` that also takes any descriptors
/// (`MSG_CMSG_CLOEXEC`). `WouldBlock` when nothing is queued.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; CMSG_BUF_LEN]);
    // SAFETY: an all-zero msghdr is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF_LEN as _;
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    let len = loop {
        // SAFETY: `msg` points at `iov` (over the live, exclusively borrowed
        // `buf`) and at `cbuf`, both alive for the call.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        match cvt(ret) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf` with
    // well-formed control messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside
    // them, and each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4`
    // descriptors that are now ours (installed in our table by recvmsg).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..payload / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_must_fit() {
        assert!(sockaddr(Path::new("/tmp/x.sock")).is_ok());
        assert!(sockaddr(Path::new("")).is_err());
        assert!(sockaddr(Path::new(&"a".repeat(MAX_PATH))).is_ok());
        assert!(sockaddr(Path::new(&"a".repeat(MAX_PATH + 1))).is_err());
    }
}
