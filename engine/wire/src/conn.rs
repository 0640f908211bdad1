//! One framed TCP connection between source and destination, protected as
//! both ends agreed ([`Security`]).
//!
//! Handshake: both sides send `Hello` (version, page size, capabilities, role,
//! a fresh nonce, the protection it wants); each checks the other's. With a
//! token, both then send `Auth` (HMAC over both nonces and both `Hello`s,
//! see [`crate::auth`]) and verify the peer's; with [`Protection::Sealed`]
//! every later frame in either direction is sealed under the connection's
//! own keys ([`crate::seal`]). Nothing else is read or installed before the
//! handshake succeeds, frames read before it are capped at
//! [`PRE_AUTH_LIMIT`] bytes, and the whole handshake has one deadline (a
//! peer that dribbles bytes does not get a fresh timeout per byte).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::auth::{self, AuthError, Challenge, Token};
use crate::frame::{FrameOpen, FrameSeal};
use crate::msg::{
    Auth, ErrorMsg, Hello, MAX_PENDING_RANGES, Message, MsgError, Pending, Protection, Role,
};
use crate::seal::{self, Direction};
use crate::{FrameError, FrameKind, FrameReader, PROTOCOL_VERSION};
use std::collections::BTreeMap;

use pagehop_mem::SpaceKey;
use pagehop_mem::pages::{Range, RangeSet};

/// The largest frame read before the handshake is done (`Hello`, `Auth`,
/// an `Error` explaining a refusal).
pub const PRE_AUTH_LIMIT: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("network I/O")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Msg(#[from] MsgError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("peer speaks protocol version {peer}, this pagehop speaks {ours}")]
    Version { peer: u16, ours: u16 },
    #[error("peer is a {peer:?}, expected a {expected:?}")]
    Role { peer: Role, expected: Role },
    #[error("peer uses {peer}-byte pages, this host {ours}")]
    PageSize { peer: u32, ours: u32 },
    #[error("peer requires a token (use --token-file or PAGEHOP_TOKEN)")]
    PeerWantsToken,
    #[error("peer has no token configured, but this side requires one")]
    PeerHasNoToken,
    #[error("peer wants {peer} frames, this side {ours}: give both ends --plaintext, or neither")]
    Protection {
        peer: &'static str,
        ours: &'static str,
    },
    #[error("the handshake took longer than {secs:.1} s")]
    HandshakeTimeout { secs: f64 },
    #[error("expected a {expected} frame, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("peer reported an error: {message} (code {code})")]
    Peer { code: u32, message: String },
}

/// Error codes carried in `Error` frames.
pub mod codes {
    pub const AUTH: u32 = 1;
    pub const PROTOCOL: u32 = 2;
    pub const SOURCE: u32 = 3;
    pub const DESTINATION: u32 = 4;
    /// The destination gave the switch up and killed its copy before it
    /// ran: a source that committed may run on.
    pub const ABORTED: u32 = 5;
}

/// How this end protects its connections: a token and whether frames are
/// sealed, or (loopback only, checked by the caller) no token at all.
#[derive(Clone, Debug)]
pub struct Security {
    token: Option<Token>,
    protection: Protection,
}

impl Security {
    /// Authenticated handshake, sealed frames: the default.
    pub fn sealed(token: Token) -> Self {
        Self {
            token: Some(token),
            protection: Protection::Sealed,
        }
    }

    /// Authenticated handshake, crc-checked frames (`--plaintext`).
    pub fn plaintext(token: Token) -> Self {
        Self {
            token: Some(token),
            protection: Protection::Plaintext,
        }
    }

    /// No token: whoever connects is the peer (`--unauthenticated`).
    pub fn unauthenticated() -> Self {
        Self {
            token: None,
            protection: Protection::None,
        }
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    pub fn protection(&self) -> Protection {
        self.protection
    }
}

/// The read half of a connection during the handshake: every read gets
/// only what is left of the deadline.
struct Timed {
    stream: TcpStream,
    deadline: Option<Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

/// The sending half of a connection: frames finished by its [`FrameSeal`].
pub struct FrameWriter {
    stream: TcpStream,
    seal: FrameSeal,
    out: Vec<u8>,
    pub bytes_sent: u64,
}

impl FrameWriter {
    pub fn new(stream: TcpStream, seal: FrameSeal) -> Self {
        Self {
            stream,
            seal,
            out: Vec::new(),
            bytes_sent: 0,
        }
    }

    pub fn send<M: Message>(&mut self, msg: &M) -> Result<(), ConnError> {
        self.out.clear();
        msg.encode_frame(&mut self.seal, &mut self.out)?;
        self.flush_out()
    }

    /// Sends one frame of `kind` whose payload is `payload` (a page batch);
    /// returns the frame's length on the wire.
    pub fn send_payload(&mut self, kind: FrameKind, payload: &[u8]) -> Result<usize, ConnError> {
        self.out.clear();
        self.out.resize(crate::HEADER_LEN, 0);
        self.out.extend_from_slice(payload);
        self.seal.finish_vec(kind, &mut self.out, 0)?;
        self.flush_out()?;
        Ok(self.out.len())
    }

    fn flush_out(&mut self) -> Result<(), ConnError> {
        self.stream.write_all(&self.out)?;
        self.bytes_sent += self.out.len() as u64;
        Ok(())
    }

    /// The socket (for options and shutdown).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket and the seal, for a sender that builds frames in its own
    /// buffers.
    pub fn into_parts(self) -> (TcpStream, FrameSeal) {
        (self.stream, self.seal)
    }
}

/// Both halves of a connection, to be used by different threads.
pub struct Halves {
    pub reader: FrameReader<TcpStream>,
    pub writer: FrameWriter,
}

pub struct Conn {
    reader: FrameReader<Timed>,
    writer: FrameWriter,
    pub peer: Hello,
}

impl Conn {
    /// Runs the handshake on a fresh connection, all of it within `timeout`.
    pub fn handshake(
        stream: TcpStream,
        role: Role,
        security: &Security,
        page_size: u32,
        capabilities: u64,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let nonce = auth::try_new_nonce()?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            page_size,
            capabilities,
            role,
            nonce,
            protection: security.protection,
        };
        let mut reader = FrameReader::new(Timed {
            stream,
            deadline: Some(Instant::now() + timeout),
        });
        reader.set_limit(Some(PRE_AUTH_LIMIT));
        let mut conn = Self {
            reader,
            writer: FrameWriter::new(writer, FrameSeal::Crc),
            peer: hello.clone(),
        };
        let timed_out = |e: ConnError| match e {
            ConnError::Frame(FrameError::Io { source })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                ConnError::HandshakeTimeout {
                    secs: timeout.as_secs_f64(),
                }
            }
            e => e,
        };
        conn.send(&hello)?;
        let peer: Hello = conn.recv_msg().map_err(timed_out)?;
        if let Err(e) = check_hello(&hello, &peer) {
            conn.send_error(codes::PROTOCOL, &e.to_string());
            return Err(e);
        }
        conn.peer = peer.clone();
        if let Some(token) = &security.token {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            hello.encode(&mut ours);
            peer.encode(&mut theirs);
            let transcript = match role {
                Role::Source => auth::transcript(&ours, &theirs),
                Role::Destination => auth::transcript(&theirs, &ours),
            };
            let challenge = Challenge {
                peer_nonce: &peer.nonce,
                own_nonce: &nonce,
                transcript: &transcript,
            };
            conn.send(&Auth {
                mac: auth::mac(token, role, &challenge),
            })?;
            let their_auth: Auth = conn.recv_msg().map_err(timed_out)?;
            if let Err(e) = auth::verify(token, role.peer(), &challenge, &their_auth.mac) {
                conn.send_error(codes::AUTH, "authentication failed: wrong token");
                return Err(e.into());
            }
            if security.protection == Protection::Sealed {
                let (source_nonce, destination_nonce, sends) = match role {
                    Role::Source => (&nonce, &peer.nonce, Direction::SourceToDestination),
                    Role::Destination => (&peer.nonce, &nonce, Direction::DestinationToSource),
                };
                let hs = seal::Handshake {
                    source_nonce,
                    destination_nonce,
                    transcript: &transcript,
                };
                let (sealing, opening) = seal::connection_keys(token.prk(), sends, &hs);
                conn.writer.seal = FrameSeal::Sealed(Box::new(sealing));
                conn.reader.set_open(FrameOpen::Sealed(Box::new(opening)));
            }
        }
        conn.reader.set_limit(None);
        conn.reader.get_mut().deadline = None;
        conn.reader.get_ref().stream.set_read_timeout(None)?;
        Ok(conn)
    }

    pub fn send<M: Message>(&mut self, msg: &M) -> Result<(), ConnError> {
        self.writer.send(msg)
    }

    /// Bytes this connection has sent.
    pub fn bytes_sent(&self) -> u64 {
        self.writer.bytes_sent
    }

    /// Best effort: tells the peer why we stop.
    pub fn send_error(&mut self, code: u32, message: &str) {
        let _ = self.send(&ErrorMsg {
            code,
            message: message.to_string(),
        });
    }

    /// The next frame; an `Error` frame from the peer becomes [`ConnError::Peer`].
    pub fn recv(&mut self) -> Result<(FrameKind, &[u8]), ConnError> {
        let (kind, payload) = self.reader.read_frame()?;
        if kind == FrameKind::Error {
            let e = ErrorMsg::decode(payload)?;
            return Err(ConnError::Peer {
                code: e.code,
                message: e.message,
            });
        }
        Ok((kind, payload))
    }

    /// The next frame, which must be an `M`.
    pub fn recv_msg<M: Message>(&mut self) -> Result<M, ConnError> {
        let (kind, payload) = self.recv()?;
        if kind != M::KIND {
            return Err(ConnError::Unexpected {
                expected: M::KIND.name(),
                got: kind.name(),
            });
        }
        Ok(M::decode(payload)?)
    }

    /// Sends the pages each address space still needs as `Pending` frames,
    /// the last one flagged (one empty frame when there are none).
    pub fn send_pending(
        &mut self,
        pending: &BTreeMap<SpaceKey, RangeSet>,
    ) -> Result<(), ConnError> {
        let mut frames: Vec<Pending> = Vec::new();
        for (&space, ranges) in pending {
            let all: Vec<(u64, u64)> = ranges.ranges().iter().map(|r| (r.start, r.end)).collect();
            for chunk in all.chunks(MAX_PENDING_RANGES) {
                frames.push(Pending {
                    space,
                    ranges: chunk.to_vec(),
                    last: false,
                });
            }
        }
        match frames.last_mut() {
            Some(last) => last.last = true,
            None => frames.push(Pending {
                space: SpaceKey::ROOT,
                ranges: Vec::new(),
                last: true,
            }),
        }
        for frame in &frames {
            self.send(frame)?;
        }
        Ok(())
    }

    /// Reads `Pending` frames up to the last one: the pages each address
    /// space still needs (a space with none may be missing).
    pub fn recv_pending(&mut self) -> Result<BTreeMap<SpaceKey, RangeSet>, ConnError> {
        let mut ranges: BTreeMap<SpaceKey, Vec<Range>> = BTreeMap::new();
        loop {
            let p: Pending = self.recv_msg()?;
            ranges
                .entry(p.space)
                .or_default()
                .extend(p.ranges.iter().map(|&(a, b)| Range::new(a, b)));
            if p.last {
                return Ok(ranges
                    .into_iter()
                    .map(|(space, r)| (space, RangeSet::from_ranges(r)))
                    .collect());
            }
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ConnError> {
        Ok(self.reader.get_ref().stream.set_read_timeout(timeout)?)
    }

    /// Whether a frame (or the end of the connection) is waiting to be read.
    pub fn readable(&self, timeout: Duration) -> Result<bool, ConnError> {
        use std::os::fd::AsFd;
        Ok(pagehop_sys::poll::poll_readable(
            self.writer.stream.as_fd(),
            timeout,
        )?)
    }

    /// Splits the connection into a reader and a writer that keep its
    /// protection (for a data or priority lane).
    pub fn into_halves(self) -> Halves {
        let (timed, open) = self.reader.into_parts();
        Halves {
            reader: FrameReader::with(timed.stream, open),
            writer: self.writer,
        }
    }

    /// Another handle to the underlying socket (to shut it down from elsewhere).
    pub fn try_clone_stream(&self) -> std::io::Result<TcpStream> {
        self.writer.stream.try_clone()
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.writer.stream.peer_addr().ok()
    }
}

fn check_hello(ours: &Hello, peer: &Hello) -> Result<(), ConnError> {
    if peer.version != PROTOCOL_VERSION {
        return Err(ConnError::Version {
            peer: peer.version,
            ours: PROTOCOL_VERSION,
        });
    }
    if peer.role != ours.role.peer() {
        return Err(ConnError::Role {
            peer: peer.role,
            expected: ours.role.peer(),
        });
    }
    if peer.page_size != ours.page_size {
        return Err(ConnError::PageSize {
            peer: peer.page_size,
            ours: ours.page_size,
        });
    }
    match (ours.protection, peer.protection) {
        (a, b) if a == b => Ok(()),
        (Protection::None, _) => Err(ConnError::PeerWantsToken),
        (_, Protection::None) => Err(ConnError::PeerHasNoToken),
        (a, b) => Err(ConnError::Protection {
            peer: b.name(),
            ours: a.name(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn token(s: &[u8]) -> Token {
        Token::new(s, "test").expect("token")
    }

    /// Both ends of a handshake over loopback; returns their outcomes.
    fn pair(
        source: Security,
        destination: Security,
    ) -> (Result<Conn, ConnError>, Result<Conn, ConnError>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let dest = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            Conn::handshake(
                s,
                Role::Destination,
                &destination,
                4096,
                0,
                Duration::from_secs(5),
            )
        });
        let s = TcpStream::connect(addr).expect("connect");
        let src = Conn::handshake(s, Role::Source, &source, 4096, 0, Duration::from_secs(5));
        (src, dest.join().expect("destination"))
    }

    #[test]
    fn sealed_ends_exchange_messages_both_ways() {
        let t = token(b"0123456789abcdef");
        let (src, dst) = pair(Security::sealed(t.clone()), Security::sealed(t));
        let (mut src, mut dst) = (src.expect("source"), dst.expect("destination"));
        assert_eq!(src.peer.protection, Protection::Sealed);
        src.send(&crate::msg::Done { pages_sent: 42 })
            .expect("send");
        let done: crate::msg::Done = dst.recv_msg().expect("recv");
        assert_eq!(done.pages_sent, 42);
        dst.send(&crate::msg::Done { pages_sent: 7 })
            .expect("send back");
        let back: crate::msg::Done = src.recv_msg().expect("recv back");
        assert_eq!(back.pages_sent, 7);
        // 16 header bytes, 8 payload, 16 tag.
        assert_eq!(src.bytes_sent(), 48 + 16 + 32 + 16 + 40);
    }

    #[test]
    fn mismatched_protection_is_refused_naming_both() {
        let t = token(b"0123456789abcdef");
        let (src, _) = pair(Security::sealed(t.clone()), Security::plaintext(t.clone()));
        let e = src.err().expect("refused");
        assert!(e.to_string().contains("--plaintext"), "{e}");
        let (src, _) = pair(Security::unauthenticated(), Security::sealed(t));
        assert!(matches!(
            src.err().expect("refused"),
            ConnError::PeerWantsToken
        ));
        let (src, _) = pair(
            Security::sealed(token(b"0123456789abcdef")),
            Security::sealed(token(b"0123456789abcdeX")),
        );
        assert!(src.is_err());
    }

    #[test]
    fn a_dribbling_peer_runs_out_of_handshake_time() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let dribbler = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            // A byte every 200 ms: each read is quick, the whole is not.
            for _ in 0..40 {
                if s.write_all(b"P").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let (s, _) = listener.accept().expect("accept");
        let t = token(b"0123456789abcdef");
        let e = Conn::handshake(
            s,
            Role::Destination,
            &Security::sealed(t),
            4096,
            0,
            Duration::from_millis(700),
        )
        .err()
        .expect("timed out");
        assert!(matches!(e, ConnError::HandshakeTimeout { .. }), "{e}");
        drop(dribbler);
    }
}
