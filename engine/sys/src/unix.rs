//! Socket calls of the handoff, on rustix: a listening Unix socket whose
//! file is created with restricted permissions, `send` without SIGPIPE, and
//! `sendmsg`/`recvmsg` carrying descriptors (`SCM_RIGHTS`).
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::{MaybeUninit, offset_of, size_of};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Most descriptors taken from one message; a well-behaved peer sends one.
const MAX_FDS: usize = 4;
/// Control buffer size for [`MAX_FDS`] descriptors. It includes slack for
/// aligning the buffer, so the kernel may fit a few more; [`recv_with_fds`]
/// closes those and reports truncation.
const CMSG_BUF_LEN: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));

/// The address for `path`: non-empty, without NUL and short enough to be
/// stored *with* its terminating NUL (rustix would also take a 108-byte path
/// without one; we keep the portable limit, [`MAX_PATH`]).
fn sockaddr(path: &Path) -> io::Result<SocketAddrUnix> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATH || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    Ok(SocketAddrUnix::new(path)?)
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
    let addr = sockaddr(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// `send(fd, bytes, MSG_NOSIGNAL)` until all of `bytes` went out. A closed
/// peer gives `EPIPE` instead of SIGPIPE.
pub fn send_all(sock: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(sock, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends one byte of regular data with `fd` attached as `SCM_RIGHTS`.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    let data = [byte];
    let iov = [IoSlice::new(&data)];
    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        // The buffer is sized for exactly this message.
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
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

/// The pid of the process that connected a Unix stream socket
/// (SO_PEERCRED), in the caller's pid namespace; 0 when it is outside it.
pub fn peer_pid(sock: BorrowedFd<'_>) -> io::Result<i32> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    Ok(cred.pid.as_raw_nonzero().get())
}

/// One non-blocking `recvmsg` into `buf` that also takes any descriptors
/// (`MSG_CMSG_CLOEXEC`). `WouldBlock` when nothing is queued.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_BUF_LEN];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let msg = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, flags) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    let mut truncated = msg.flags.contains(ReturnFlags::CTRUNC);
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            for fd in received {
                if fds.len() < MAX_FDS {
                    fds.push(fd);
                } else {
                    // Beyond the limit: closed here, as the kernel would have.
                    truncated = true;
                    drop(fd);
                }
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::net::UnixStream;

    #[test]
    fn socket_paths_must_fit() {
        assert!(sockaddr(Path::new("/tmp/x.sock")).is_ok());
        assert!(sockaddr(Path::new("")).is_err());
        assert!(sockaddr(Path::new(&"a".repeat(MAX_PATH))).is_ok());
        assert!(sockaddr(Path::new(&"a".repeat(MAX_PATH + 1))).is_err());
    }

    #[test]
    fn listener_file_has_the_mode_and_accepts() {
        let dir = std::env::temp_dir().join(format!("pagehop-sys-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let listener = listen_unix(&path, 0o600, 4).expect("listen");
        let meta = std::fs::metadata(&path).expect("socket file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let cloexec = rustix::io::fcntl_getfd(&listener).expect("getfd");
        assert!(cloexec.contains(rustix::io::FdFlags::CLOEXEC));
        let _client = UnixStream::connect(&path).expect("connect");
        assert!(
            crate::poll::poll_readable(listener.as_fd(), std::time::Duration::from_secs(5))
                .expect("poll")
        );
        // The old path still works.
        assert!(
            crate::poll::poll_readable(listener.as_fd(), std::time::Duration::ZERO).expect("poll")
        );
        // Binding again at the same path fails (the file exists).
        assert!(listen_unix(&path, 0o600, 4).is_err());
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn descriptors_cross_with_their_byte() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        send_all(a.as_fd(), b"hello").expect("send_all");
        let mut got = [0u8; 5];
        b.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");

        // Nothing queued: WouldBlock.
        let mut buf = [0u8; 8];
        let err = recv_with_fds(b.as_fd(), &mut buf).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        let file = std::fs::File::open("/proc/self/stat").expect("open");
        send_fd(a.as_fd(), file.as_fd(), 7).expect("send_fd");
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(got.len, 1);
        assert_eq!(buf[0], 7);
        assert!(!got.truncated);
        assert_eq!(got.fds.len(), 1);
        let fd = &got.fds[0];
        assert_ne!(fd.as_raw_fd(), file.as_raw_fd());
        let flags = rustix::io::fcntl_getfd(fd).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let same = std::fs::File::from(fd.try_clone().expect("dup"));
        assert_eq!(
            same.metadata().expect("stat").ino(),
            file.metadata().expect("stat").ino()
        );

        // Plain data comes without descriptors; end of stream is len 0.
        (&a).write_all(b"z").expect("write");
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((got.len, got.fds.len()), (1, 0));
        drop(a);
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("eof");
        assert_eq!(got.len, 0);

        // A closed peer is EPIPE, not SIGPIPE.
        let (c, d) = UnixStream::pair().expect("pair");
        drop(d);
        let err = send_all(c.as_fd(), b"x").expect_err("closed");
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn at_most_max_fds_are_taken() {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        for (count, truncated) in [(MAX_FDS, false), (MAX_FDS + 1, true), (4 * MAX_FDS, true)] {
            let (a, b) = UnixStream::pair().expect("pair");
            let fds = vec![file.as_fd(); count];
            let mut space =
                vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(count))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(&a, &[IoSlice::new(b"m")], &mut control, SendFlags::NOSIGNAL)
                .expect("sendmsg");
            let mut buf = [0u8; 1];
            let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
            assert_eq!(got.len, 1);
            assert_eq!(got.truncated, truncated, "{count} descriptors");
            assert_eq!(got.fds.len(), MAX_FDS, "{count} descriptors");
        }
    }
}
