//! Opening a migration's connections: the control lane, the data lanes, and
//! (for post-copy) the priority lane, each authenticated and attached to the
//! migration's session at an epoch (0 at the start, the next one after each
//! post-copy reconnect).
use std::net::TcpStream;

use pagehop_wire::conn::{Conn, FrameWriter, Halves};
use pagehop_wire::msg::{self, Attach, Lane, Role};

use super::{SendError, SendOptions};

/// The source's connections to the destination.
pub struct Links {
    pub control: Conn,
    pub data: Vec<FrameWriter>,
    /// Post-copy only.
    pub priority: Option<Halves>,
}

/// Opens every lane of `session` at `epoch`.
pub fn connect(
    opts: &SendOptions,
    page_size: u32,
    session: u64,
    epoch: u32,
) -> Result<Links, SendError> {
    // A CRIU restore is always lazy: its faults need the priority lane.
    let criu = opts.criu.is_some();
    let postcopy = opts.mode.is_postcopy() || criu;
    let mut caps = msg::CAP_LZ4 | msg::CAP_ZEROCOPY | msg::CAP_VERIFY;
    if postcopy {
        caps |= msg::CAP_POSTCOPY;
    }
    if criu {
        caps |= msg::CAP_CRIU;
    }
    let open = |lane: Lane| -> Result<Conn, SendError> {
        let stream =
            TcpStream::connect_timeout(&opts.to, opts.connect_timeout).map_err(|source| {
                SendError::Connect {
                    addr: opts.to,
                    source,
                }
            })?;
        let mut conn = Conn::handshake(
            stream,
            Role::Source,
            &opts.security,
            page_size,
            caps,
            opts.connect_timeout,
        )?;
        conn.send(&Attach {
            session,
            lane,
            epoch,
        })?;
        Ok(conn)
    };
    let control = open(Lane::Control)?;
    if criu && control.peer.capabilities & msg::CAP_CRIU == 0 {
        return Err(SendError::NoCriu);
    }
    if postcopy && control.peer.capabilities & msg::CAP_POSTCOPY == 0 {
        return Err(SendError::NoPostcopy { mode: opts.mode });
    }
    let data = (0..opts.streams.max(1))
        .map(|_| Ok(open(Lane::Data)?.into_halves().writer))
        .collect::<Result<Vec<_>, SendError>>()?;
    let priority = if postcopy {
        Some(open(Lane::Priority)?.into_halves())
    } else {
        None
    };
    Ok(Links {
        control,
        data,
        priority,
    })
}

/// A fresh random session id.
pub fn new_session_id() -> Result<u64, SendError> {
    let nonce = pagehop_wire::auth::try_new_nonce().map_err(pagehop_wire::conn::ConnError::from)?;
    Ok(u64::from_le_bytes(nonce[..8].try_into().expect("8 bytes")))
}
