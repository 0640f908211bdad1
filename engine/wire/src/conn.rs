//! One authenticated, framed TCP connection between source and destination.
//!
//! Handshake: both sides send `Hello` (version, page size, capabilities, role,
//! a fresh nonce, whether a token is configured); each checks the other's.
//! With a token, both then send `Auth` (HMAC over both nonces, see
//! [`crate::auth`]) and verify the peer's. Nothing else is read or
//! installed before the handshake succeeds.
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::auth::{self, AuthError, Token};
use crate::msg::{Auth, ErrorMsg, Hello, MAX_PENDING_RANGES, Message, MsgError, Pending, Role};
use crate::{FrameError, FrameKind, FrameReader, PROTOCOL_VERSION};
use std::collections::BTreeMap;

use pagehop_mem::SpaceKey;
use pagehop_mem::pages::{Range, RangeSet};

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
}

pub struct Conn {
    reader: FrameReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
    pub peer: Hello,
    pub bytes_sent: u64,
}

impl Conn {
    /// Runs the handshake on a fresh connection.
    pub fn handshake(
        stream: TcpStream,
        role: Role,
        token: Option<&Token>,
        page_size: u32,
        capabilities: u64,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let nonce = auth::try_new_nonce()?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            page_size,
            capabilities,
            role,
            nonce,
            authenticated: token.is_some(),
        };
        let placeholder = hello.clone();
        let mut conn = Self {
            reader: FrameReader::new(stream),
            writer,
            out: Vec::new(),
            peer: placeholder,
            bytes_sent: 0,
        };
        conn.send(&hello)?;
        let peer: Hello = conn.recv_msg()?;
        let checked = check_hello(&hello, &peer);
        if let Err(e) = checked {
            conn.send_error(codes::PROTOCOL, &e.to_string());
            return Err(e);
        }
        conn.peer = peer.clone();
        if let Some(token) = token {
            conn.send(&Auth {
                mac: auth::mac(token, role, &peer.nonce, &nonce),
            })?;
            let theirs: Auth = conn.recv_msg()?;
            if let Err(e) = auth::verify(token, role.peer(), &nonce, &peer.nonce, &theirs.mac) {
                conn.send_error(codes::AUTH, "authentication failed: wrong token");
                return Err(e.into());
            }
        }
        conn.reader.get_ref().set_read_timeout(None)?;
        Ok(conn)
    }

    pub fn send<M: Message>(&mut self, msg: &M) -> Result<(), ConnError> {
        self.out.clear();
        msg.encode_frame(&mut self.out);
        self.writer.write_all(&self.out)?;
        self.bytes_sent += self.out.len() as u64;
        Ok(())
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
        Ok(self.reader.get_ref().set_read_timeout(timeout)?)
    }

    /// Whether a frame (or the end of the connection) is waiting to be read.
    pub fn readable(&self, timeout: Duration) -> Result<bool, ConnError> {
        use std::os::fd::AsFd;
        Ok(pagehop_sys::poll::poll_readable(
            self.writer.as_fd(),
            timeout,
        )?)
    }

    /// Gives up the connection as a plain stream (for a data stream).
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    /// Another handle to the underlying socket (to shut it down from elsewhere).
    pub fn try_clone_stream(&self) -> std::io::Result<TcpStream> {
        self.writer.try_clone()
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.writer.peer_addr().ok()
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
    match (ours.authenticated, peer.authenticated) {
        (false, true) => Err(ConnError::PeerWantsToken),
        (true, false) => Err(ConnError::PeerHasNoToken),
        _ => Ok(()),
    }
}
