//! The destination process hands its userfaultfd to pagehop over a Unix
//! stream socket, following CRIU's lazy-pages convention (`criu/uffd.c`:
//! `send_uffd`, `ud_open`, `lazy_pages_finish_restore`, `lazy_sk_read_event`),
//! so that pagehop can later sit under `criu restore --lazy-pages`.
//!
//! One connection per restore; the restored process (client) writes:
//!
//! ```text
//! send()      pid               i32, native endian, 4 bytes
//! sendmsg()   1 byte (0)        + SCM_RIGHTS { uffd }     (CRIU's send_fd)
//!             ... pagehop installs pages; the process faults them in ...
//! send()      RESTORE_FINISHED  u32 0x52535446 "FTSR", native endian, 4 bytes
//! ```
//!
//! The pid and the descriptor go in two calls, as CRIU does. A negative pid
//! is CRIU's mark of a zombie, which has no memory and sends no descriptor.
//! CRIU may send several pid/uffd pairs (one per restored task) on the same
//! connection before the marker; [`Handoff::next_uffd`] reads the next one.
//!
//! The process finds the socket through the [`SOCKET_ENV`] environment variable.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pagehop_sys::unix as sys;

mod private_dir;
pub use private_dir::PrivateDir;

/// Environment variable that carries the handoff socket path to a restored process.
pub const SOCKET_ENV: &str = "PAGEHOP_UFFD_SOCKET";
/// CRIU's `LAZY_PAGES_RESTORE_FINISHED` ("ReSTore Finished"), a `uint32_t`
/// sent in native byte order once the restored process runs.
pub const RESTORE_FINISHED: u32 = 0x5253_5446;
/// Mode of the socket file: only the owner (normally root) may connect.
pub const SOCKET_MODE: u32 = 0o600;
/// Longest socket path a `sockaddr_un` holds.
pub const MAX_SOCKET_PATH: usize = sys::MAX_PATH;

/// Errors of the uffd handoff.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("socket path {path} is empty, too long (max {MAX_SOCKET_PATH} bytes) or has a NUL")]
    BadPath { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("removing stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listening on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("accepting a connection on {path}")]
    Accept {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no process connected to {path} within {timeout:?}")]
    AcceptTimeout { path: PathBuf, timeout: Duration },
    #[error("sending the {what}")]
    Send {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("receiving the {what}")]
    Recv {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {timeout:?} waiting for the {what} ({got} of {want} bytes received)")]
    Timeout {
        what: &'static str,
        timeout: Duration,
        got: usize,
        want: usize,
    },
    #[error(
        "peer closed the connection before sending the {what} ({got} of {want} bytes received)"
    )]
    PeerClosed {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("process {pid} sent data without a file descriptor where its userfaultfd was expected")]
    NoFd { pid: i32 },
    #[error("process {pid} sent too many descriptors; the kernel truncated them")]
    TooManyFds { pid: i32 },
    #[error("process {pid} sent a descriptor that is not a userfaultfd ({kind})")]
    NotUserfaultfd { pid: i32, kind: String },
    #[error("process {} is a zombie (CRIU sends -pid and no userfaultfd)", .pid.wrapping_neg())]
    Zombie { pid: i32 },
    #[error("expected the restore-finished marker {RESTORE_FINISHED:#x}, got {got:#x}")]
    BadMarker { got: u32 },
}

type Result<T, E = HandoffError> = std::result::Result<T, E>;

/// pagehop's end: a listening socket that restored processes connect to.
/// Dropping it removes the socket file (if it is still the one bound here).
#[derive(Debug)]
pub struct HandoffListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file bound here.
    file_id: (u64, u64),
}

impl HandoffListener {
    /// Binds a socket at `path` with mode [`SOCKET_MODE`]. A stale socket file
    /// left at `path` is removed first; any other kind of file is an error.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let bytes = path.as_os_str().len();
        if bytes == 0 || bytes > MAX_SOCKET_PATH {
            return Err(HandoffError::BadPath { path });
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(|source| HandoffError::RemoveStale {
                    path: path.clone(),
                    source,
                })?
            }
            Ok(_) => return Err(HandoffError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(HandoffError::Listen { path, source }),
        }
        let listen_err = |source: io::Error| match source.kind() {
            io::ErrorKind::InvalidInput => HandoffError::BadPath { path: path.clone() },
            _ => HandoffError::Listen {
                path: path.clone(),
                source,
            },
        };
        let fd = sys::listen_unix(&path, SOCKET_MODE, 16).map_err(listen_err)?;
        let listener = UnixListener::from(fd);
        listener.set_nonblocking(true).map_err(listen_err)?;
        // The mode was set before bind; this also covers filesystems that
        // ignore it, and the metadata identifies our file for Drop.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(listen_err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(listen_err)?;
        Ok(Self {
            listener,
            path,
            file_id: (meta.dev(), meta.ino()),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one process and receives its pid and userfaultfd, all within
    /// `timeout`.
    pub fn accept_uffd(&self, timeout: Duration) -> Result<Handoff> {
        let deadline = Instant::now() + timeout;
        let stream = self.accept_stream(deadline, timeout)?;
        let mut reader = Reader {
            stream: &stream,
            deadline,
            timeout,
        };
        let (pid, uffd) = reader.pid_and_uffd()?;
        Ok(Handoff { pid, uffd, stream })
    }

    /// Accepts `criu restore --lazy-pages`, within `timeout`: the tasks it
    /// restores send their items ([`LazyItem`]) on this one connection.
    pub fn accept_lazy(&self, timeout: Duration) -> Result<LazyClient> {
        let stream = self.accept_stream(Instant::now() + timeout, timeout)?;
        let peer_pid = sys::peer_pid(stream.as_fd()).map_err(|source| HandoffError::Accept {
            path: self.path.clone(),
            source,
        })?;
        Ok(LazyClient { stream, peer_pid })
    }

    fn accept_stream(&self, deadline: Instant, timeout: Duration) -> Result<UnixStream> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(HandoffError::Accept {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(HandoffError::AcceptTimeout {
                    path: self.path.clone(),
                    timeout,
                });
            };
            pagehop_sys::poll::poll_readable(self.listener.as_fd(), left).map_err(|source| {
                HandoffError::Accept {
                    path: self.path.clone(),
                    source,
                }
            })?;
        }
    }
}

/// What `criu restore --lazy-pages` sends, one item at a time.
#[derive(Debug)]
pub enum LazyItem {
    /// A restored task (its pid in the tree's namespace) and its userfaultfd.
    Task { vpid: i32, uffd: OwnedFd },
    /// A zombie of the tree: no memory, no descriptor.
    Zombie { vpid: i32 },
    /// Every task is restored and its memory registered.
    Finished,
}

/// CRIU's connection to the lazy-pages daemon.
#[derive(Debug)]
pub struct LazyClient {
    stream: UnixStream,
    peer_pid: i32,
}

impl LazyClient {
    /// The pid of the process that connected (SO_PEERCRED), in our namespace.
    pub fn peer_pid(&self) -> i32 {
        self.peer_pid
    }

    /// Whether the next item has begun to arrive (or the peer closed)
    /// within `wait`.
    pub fn readable(&self, wait: Duration) -> bool {
        pagehop_sys::poll::poll_readable(self.stream.as_fd(), wait).unwrap_or(false)
    }

    /// The next item, all of it within `timeout`: a pid (i32) and, for a
    /// live task, a 1-byte message with its uffd; or the marker.
    pub fn next_item(&mut self, timeout: Duration) -> Result<LazyItem> {
        let mut reader = Reader {
            stream: &self.stream,
            deadline: Instant::now() + timeout,
            timeout,
        };
        let mut fds = Vec::new();
        let mut word = [0u8; 4];
        let mut truncated = reader.read_exact(&mut word, "task pid", &mut fds)?;
        if u32::from_ne_bytes(word) == RESTORE_FINISHED && fds.is_empty() {
            return Ok(LazyItem::Finished);
        }
        let vpid = i32::from_ne_bytes(word);
        if vpid < 0 {
            if !fds.is_empty() {
                return Err(HandoffError::TooManyFds { pid: vpid });
            }
            return Ok(LazyItem::Zombie {
                vpid: vpid.wrapping_neg(),
            });
        }
        if fds.is_empty() {
            let mut byte = [0u8; 1];
            truncated |= reader.read_exact(&mut byte, "userfaultfd", &mut fds)?;
        }
        if truncated || fds.len() > 1 {
            return Err(HandoffError::TooManyFds { pid: vpid });
        }
        let uffd = fds.pop().ok_or(HandoffError::NoFd { pid: vpid })?;
        check_userfaultfd(vpid, uffd.as_fd())?;
        Ok(LazyItem::Task { vpid, uffd })
    }
}

impl Drop for HandoffListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file_id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A process's userfaultfd, received by [`HandoffListener::accept_uffd`].
#[derive(Debug)]
pub struct Handoff {
    /// The pid the process sent (in its own pid namespace).
    pub pid: i32,
    /// Its userfaultfd (close-on-exec in our table).
    pub uffd: OwnedFd,
    /// The connection; the restore-finished marker arrives on it.
    pub stream: UnixStream,
}

impl Handoff {
    /// Waits up to `timeout` for the 4-byte restore-finished marker.
    pub fn wait_restore_finished(&mut self, timeout: Duration) -> Result<()> {
        let mut reader = Reader {
            stream: &self.stream,
            deadline: Instant::now() + timeout,
            timeout,
        };
        let mut word = [0u8; 4];
        reader.read_exact(&mut word, "restore-finished marker", &mut Vec::new())?;
        match u32::from_ne_bytes(word) {
            RESTORE_FINISHED => Ok(()),
            got => Err(HandoffError::BadMarker { got }),
        }
    }

    /// Reads a further pid and userfaultfd from the same connection (CRIU
    /// sends one pair per restored task before the marker), within `timeout`.
    pub fn next_uffd(&mut self, timeout: Duration) -> Result<(i32, OwnedFd)> {
        Reader {
            stream: &self.stream,
            deadline: Instant::now() + timeout,
            timeout,
        }
        .pid_and_uffd()
    }
}

/// Reads from a handoff connection against one deadline.
struct Reader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    timeout: Duration,
}

impl Reader<'_> {
    /// Fills `buf`, collecting any descriptors that arrive with the bytes.
    fn read_exact(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<bool> {
        let (mut got, want) = (0, buf.len());
        let mut truncated = false;
        while got < want {
            match sys::recv_with_fds(self.stream.as_fd(), &mut buf[got..]) {
                Ok(received) => {
                    if received.len == 0 {
                        return Err(HandoffError::PeerClosed { what, got, want });
                    }
                    got += received.len;
                    fds.extend(received.fds);
                    truncated |= received.truncated;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let Some(left) = self.deadline.checked_duration_since(Instant::now()) else {
                        return Err(HandoffError::Timeout {
                            what,
                            timeout: self.timeout,
                            got,
                            want,
                        });
                    };
                    pagehop_sys::poll::poll_readable(self.stream.as_fd(), left)
                        .map_err(|source| HandoffError::Recv { what, source })?;
                }
                Err(source) => return Err(HandoffError::Recv { what, source }),
            }
        }
        Ok(truncated)
    }

    /// The pid, then (for a live process) the uffd: a message of one byte
    /// with the descriptor attached. A descriptor that already came with the
    /// pid bytes (a client that sends both in one message) is accepted too.
    fn pid_and_uffd(&mut self) -> Result<(i32, OwnedFd)> {
        let mut fds = Vec::new();
        let mut word = [0u8; 4];
        let mut truncated = self.read_exact(&mut word, "pid", &mut fds)?;
        let pid = i32::from_ne_bytes(word);
        if pid < 0 {
            return Err(HandoffError::Zombie { pid });
        }
        if fds.is_empty() {
            let mut byte = [0u8; 1];
            truncated |= self.read_exact(&mut byte, "userfaultfd", &mut fds)?;
        }
        if truncated || fds.len() > 1 {
            return Err(HandoffError::TooManyFds { pid });
        }
        let uffd = fds.pop().ok_or(HandoffError::NoFd { pid })?;
        check_userfaultfd(pid, uffd.as_fd())?;
        Ok((pid, uffd))
    }
}

/// Checks that `fd` is a userfaultfd (`anon_inode:[userfaultfd]`).
fn check_userfaultfd(pid: i32, fd: BorrowedFd<'_>) -> Result<()> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let kind = std::fs::read_link(&link)
        .map(|target| target.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    if kind == "anon_inode:[userfaultfd]" {
        Ok(())
    } else {
        Err(HandoffError::NotUserfaultfd { pid, kind })
    }
}

/// The restored process's end: connects to `socket_path`, sends `pid` and
/// then `uffd` (a 1-byte message carrying it as `SCM_RIGHTS`), exactly as
/// CRIU's `send_uffd`. Returns the connection, on which
/// [`send_restore_finished`] goes later. The caller may close its `uffd`
/// once this returns: the receiver holds its own reference.
pub fn send_uffd(
    socket_path: impl AsRef<Path>,
    pid: i32,
    uffd: BorrowedFd<'_>,
) -> Result<UnixStream> {
    let path = socket_path.as_ref();
    let stream = UnixStream::connect(path).map_err(|source| HandoffError::Connect {
        path: path.to_owned(),
        source,
    })?;
    sys::send_all(stream.as_fd(), &pid.to_ne_bytes()).map_err(|source| HandoffError::Send {
        what: "pid",
        source,
    })?;
    sys::send_fd(stream.as_fd(), uffd, 0).map_err(|source| HandoffError::Send {
        what: "userfaultfd",
        source,
    })?;
    Ok(stream)
}

/// Sends the 4-byte restore-finished marker ([`RESTORE_FINISHED`]).
pub fn send_restore_finished(stream: &mut UnixStream) -> Result<()> {
    sys::send_all(stream.as_fd(), &RESTORE_FINISHED.to_ne_bytes()).map_err(|source| {
        HandoffError::Send {
            what: "restore-finished marker",
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use pagehop_sys::uffd;

    const WAIT: Duration = Duration::from_secs(5);

    /// A scratch directory for sockets, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("pagehop-handoff-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create test dir");
            Self(dir)
        }

        fn sock(&self) -> PathBuf {
            self.0.join("uffd.sock")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A userfaultfd of this process; user-mode-only works without privileges.
    fn test_uffd() -> OwnedFd {
        uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY)
            .or_else(|_| uffd::userfaultfd(libc::O_CLOEXEC))
            .expect("userfaultfd")
    }

    #[test]
    fn pid_uffd_and_marker_round_trip() {
        let dir = Dir::new("roundtrip");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        let mode = std::fs::metadata(dir.sock())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, SOCKET_MODE, "socket mode {mode:o}");
        let path = dir.sock();
        let client = std::thread::spawn(move || {
            let uffd = test_uffd();
            let mut stream = send_uffd(&path, 4242, uffd.as_fd()).expect("send_uffd");
            drop(uffd);
            send_restore_finished(&mut stream).expect("marker");
        });
        let mut handoff = listener.accept_uffd(WAIT).expect("accept");
        assert_eq!(handoff.pid, 4242);
        handoff
            .wait_restore_finished(WAIT)
            .expect("restore finished");
        client.join().expect("client");
        // The uffd still works after the sender closed its copy.
        uffd::api(handoff.uffd.as_fd(), 0).expect("UFFDIO_API on the received uffd");
    }

    #[test]
    fn byte_layout_is_criu_s() {
        let dir = Dir::new("layout");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        let path = dir.sock();
        let client = std::thread::spawn(move || {
            let uffd = test_uffd();
            let mut stream = send_uffd(&path, 7, uffd.as_fd()).expect("send_uffd");
            send_restore_finished(&mut stream).expect("marker");
        });
        // Read the raw stream ourselves: 4 pid bytes, 1 byte + fd, 4 marker bytes.
        let (stream, _) = loop {
            match listener.listener.accept() {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        client.join().expect("client");
        let mut buf = [0u8; 4];
        let first = sys::recv_with_fds(stream.as_fd(), &mut buf).expect("pid");
        assert_eq!((first.len, first.fds.len()), (4, 0));
        assert_eq!(buf, 7i32.to_ne_bytes());
        let mut byte = [0xffu8; 16];
        let second = sys::recv_with_fds(stream.as_fd(), &mut byte).expect("fd message");
        assert_eq!((second.len, second.fds.len(), byte[0]), (1, 1, 0));
        let third = sys::recv_with_fds(stream.as_fd(), &mut buf).expect("marker");
        assert_eq!((third.len, third.fds.len()), (4, 0));
        assert_eq!(buf, *b"FTSR", "0x52535446 in little-endian byte order");
    }

    #[test]
    fn peer_closing_early_is_reported() {
        let dir = Dir::new("early");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        // Connects and closes without a byte.
        drop(UnixStream::connect(dir.sock()).expect("connect"));
        let err = listener.accept_uffd(WAIT).expect_err("no pid");
        assert!(
            matches!(
                err,
                HandoffError::PeerClosed {
                    what: "pid",
                    got: 0,
                    want: 4
                }
            ),
            "{err}"
        );
        // Sends the pid, then closes without the descriptor.
        let mut stream = UnixStream::connect(dir.sock()).expect("connect");
        stream.write_all(&5i32.to_ne_bytes()).expect("pid");
        drop(stream);
        let err = listener.accept_uffd(WAIT).expect_err("no fd");
        assert!(
            matches!(
                err,
                HandoffError::PeerClosed {
                    what: "userfaultfd",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("closed the connection"), "{err}");
    }

    #[test]
    fn data_without_a_descriptor_is_reported() {
        let dir = Dir::new("nofd");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        let mut stream = UnixStream::connect(dir.sock()).expect("connect");
        stream.write_all(&9i32.to_ne_bytes()).expect("pid");
        stream.write_all(&[0]).expect("byte");
        let err = listener.accept_uffd(WAIT).expect_err("no fd");
        assert!(matches!(err, HandoffError::NoFd { pid: 9 }), "{err}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_uffd_is_refused() {
        let dir = Dir::new("notuffd");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        let file = std::fs::File::open("/proc/self/stat").expect("open a file");
        let _stream = send_uffd(dir.sock(), 3, file.as_fd()).expect("send");
        let err = listener.accept_uffd(WAIT).expect_err("not a uffd");
        assert!(
            matches!(err, HandoffError::NotUserfaultfd { pid: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn timeouts_and_zombies_and_bad_markers() {
        let dir = Dir::new("timeouts");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        let short = Duration::from_millis(50);
        let err = listener.accept_uffd(short).expect_err("nobody connects");
        assert!(matches!(err, HandoffError::AcceptTimeout { .. }), "{err}");

        let mut stream = UnixStream::connect(dir.sock()).expect("connect");
        stream.write_all(&[1, 2]).expect("half a pid");
        let err = listener.accept_uffd(short).expect_err("half a pid");
        assert!(
            matches!(
                err,
                HandoffError::Timeout {
                    what: "pid",
                    got: 2,
                    want: 4,
                    ..
                }
            ),
            "{err}"
        );

        let mut stream = UnixStream::connect(dir.sock()).expect("connect");
        stream
            .write_all(&(-77i32).to_ne_bytes())
            .expect("zombie pid");
        let err = listener.accept_uffd(WAIT).expect_err("zombie");
        assert!(matches!(err, HandoffError::Zombie { pid: -77 }), "{err}");
        assert!(err.to_string().contains("process 77"), "{err}");

        let uffd = test_uffd();
        let mut stream = send_uffd(dir.sock(), 11, uffd.as_fd()).expect("send");
        let mut handoff = listener.accept_uffd(WAIT).expect("accept");
        let err = handoff
            .wait_restore_finished(short)
            .expect_err("no marker yet");
        assert!(matches!(err, HandoffError::Timeout { .. }), "{err}");
        stream
            .write_all(&1234u32.to_ne_bytes())
            .expect("bad marker");
        let err = handoff.wait_restore_finished(WAIT).expect_err("bad marker");
        assert!(
            matches!(err, HandoffError::BadMarker { got: 1234 }),
            "{err}"
        );
        drop(stream);
        let err = handoff.wait_restore_finished(WAIT).expect_err("closed");
        assert!(matches!(err, HandoffError::PeerClosed { .. }), "{err}");
    }

    #[test]
    fn several_tasks_on_one_connection() {
        let dir = Dir::new("tasks");
        let listener = HandoffListener::bind(dir.sock()).expect("bind");
        let (a, b) = (test_uffd(), test_uffd());
        let stream = send_uffd(dir.sock(), 100, a.as_fd()).expect("first task");
        sys::send_all(stream.as_fd(), &101i32.to_ne_bytes()).expect("second pid");
        sys::send_fd(stream.as_fd(), b.as_fd(), 0).expect("second uffd");
        let mut handoff = listener.accept_uffd(WAIT).expect("accept");
        assert_eq!(handoff.pid, 100);
        let (pid, _uffd) = handoff.next_uffd(WAIT).expect("second task");
        assert_eq!(pid, 101);
    }

    #[test]
    fn stale_sockets_are_replaced_and_other_files_kept() {
        let dir = Dir::new("stale");
        let first = HandoffListener::bind(dir.sock()).expect("bind");
        // A leftover socket file (its listener leaked) is replaced.
        std::mem::forget(first);
        let second = HandoffListener::bind(dir.sock()).expect("rebind over a stale socket");
        drop(second);
        assert!(!dir.sock().exists(), "socket file removed on drop");

        let file = dir.0.join("plain");
        std::fs::write(&file, b"keep me").expect("write");
        let err = HandoffListener::bind(&file).expect_err("not a socket");
        assert!(matches!(err, HandoffError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");

        let long = dir.0.join("x".repeat(MAX_SOCKET_PATH));
        let err = HandoffListener::bind(long).expect_err("too long");
        assert!(matches!(err, HandoffError::BadPath { .. }), "{err}");
    }
}
