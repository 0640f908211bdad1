//! Accepting a migration's connections. The first authenticated control
//! lane of epoch 0 starts the migration (refused peers are logged and the
//! listener keeps waiting); after that a background thread accepts the data
//! and priority lanes of the same session, and a reconnecting source's
//! lanes of later epochs.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use pagehop_dest::fetch::Lanes;
use pagehop_dest::intake::Intake;
use pagehop_wire::conn::{Conn, ConnError, Security};
use pagehop_wire::msg::{Attach, Lane, Role};

use super::RecvError;

/// How every connection is checked.
#[derive(Clone)]
pub struct Handshake {
    pub security: Security,
    pub page_size: u32,
    pub capabilities: u64,
    pub timeout: Duration,
}

impl Handshake {
    fn run(&self, stream: TcpStream) -> Result<(Conn, Attach), ConnError> {
        let mut conn = Conn::handshake(
            stream,
            Role::Destination,
            &self.security,
            self.page_size,
            self.capabilities,
            self.timeout,
        )?;
        conn.set_read_timeout(Some(self.timeout))?;
        let attach: Attach = conn.recv_msg()?;
        conn.set_read_timeout(None)?;
        Ok((conn, attach))
    }
}

/// Waits for a new migration's control lane; returns it with its session id.
pub fn control(
    listener: &TcpListener,
    addr: SocketAddr,
    handshake: &Handshake,
) -> Result<(Conn, u64), RecvError> {
    loop {
        let (stream, peer) = listener
            .accept()
            .map_err(|source| RecvError::Listen { addr, source })?;
        match handshake.run(stream) {
            Ok((conn, attach)) if attach.lane == Lane::Control && attach.epoch == 0 => {
                return Ok((conn, attach.session));
            }
            Ok((_, attach)) => log::warn!(
                "refused {peer}: expected a new migration's control connection, got a {:?} lane of epoch {}",
                attach.lane,
                attach.epoch
            ),
            Err(e) => log::warn!("refused {peer}: {}", pagehop_mem::error_chain(&e)),
        }
    }
}

/// Accepts the lanes of `session` in the background: data and priority
/// lanes go to receiver threads feeding `intake`, reconnecting control
/// lanes to `lanes`.
pub fn spawn_lanes(
    listener: TcpListener,
    handshake: Handshake,
    session: u64,
    intake: Arc<Intake>,
    lanes: Arc<Lanes>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let peer = stream.peer_addr().ok();
            match handshake.run(stream) {
                Ok((conn, attach)) if attach.session == session => {
                    if let Err(e) = attach_lane(&intake, &lanes, conn, &attach, &handshake) {
                        log::warn!(
                            "dropped a {:?} lane from {peer:?}: {}",
                            attach.lane,
                            pagehop_mem::error_chain(&e)
                        );
                    }
                }
                Ok(_) => log::warn!(
                    "refused a connection from {peer:?}: it belongs to another migration"
                ),
                Err(e) => log::warn!(
                    "refused a connection from {peer:?}: {}",
                    pagehop_mem::error_chain(&e)
                ),
            }
        }
    });
}

/// Hands a freshly attached lane to its user.
fn attach_lane(
    intake: &Arc<Intake>,
    lanes: &Lanes,
    conn: Conn,
    attach: &Attach,
    handshake: &Handshake,
) -> Result<(), ConnError> {
    let epoch = attach.epoch;
    match attach.lane {
        Lane::Control if epoch > 0 => {
            lanes.register(epoch, &conn.try_clone_stream()?);
            lanes.attach_control(epoch, conn);
        }
        Lane::Control => {
            return Err(ConnError::Unexpected {
                expected: "a reconnecting control lane",
                got: "a second control lane of epoch 0",
            });
        }
        Lane::Data | Lane::Priority => {
            let halves = conn.into_halves();
            lanes.register(epoch, halves.writer.stream());
            let priority = attach.lane == Lane::Priority;
            if priority {
                lanes.attach_priority(epoch, halves.writer);
            }
            let intake = Arc::clone(intake);
            let page_size = handshake.page_size as usize;
            let reader = halves.reader;
            std::thread::spawn(move || intake.receive(reader, page_size, epoch, priority));
        }
    }
    Ok(())
}
