//! Accepting a migration's connections. Every connection is handshaken on
//! its own thread, at most [`MAX_HANDSHAKES`] at a time, each within one
//! deadline: a peer that connects and dribbles bytes holds one slot for at
//! most the handshake timeout and delays nobody. The first authenticated
//! control lane of epoch 0 starts the migration (refused peers are logged
//! and the listener keeps waiting); after that a background thread accepts
//! the data and priority lanes of the same session, and a reconnecting
//! source's lanes of later epochs.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use pagehop_dest::fetch::Lanes;
use pagehop_dest::intake::Intake;
use pagehop_wire::conn::{Conn, ConnError, Security};
use pagehop_wire::msg::{Attach, Lane, Role};

use super::RecvError;

/// Handshakes in progress at once; a connection beyond them is closed at
/// once (and logged).
pub const MAX_HANDSHAKES: usize = 16;

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

/// Runs handshakes on their own threads, a bounded number at a time.
#[derive(Clone)]
struct Gate {
    handshake: Arc<Handshake>,
    running: Arc<AtomicUsize>,
}

type Handshaken = Result<(Conn, Attach), ConnError>;

impl Gate {
    fn new(handshake: Handshake) -> Self {
        Self {
            handshake: Arc::new(handshake),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Handshakes `stream` on a thread of its own and hands the outcome to
    /// `then`; closes it at once when [`MAX_HANDSHAKES`] are running.
    fn admit(
        &self,
        stream: TcpStream,
        peer: Option<SocketAddr>,
        then: impl FnOnce(Handshaken) + Send + 'static,
    ) {
        if self.running.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
            self.running.fetch_sub(1, Ordering::SeqCst);
            log::warn!("refused {peer:?}: {MAX_HANDSHAKES} handshakes are already in progress");
            return;
        }
        let gate = self.clone();
        let spawned = std::thread::Builder::new()
            .name("handshake".into())
            .spawn(move || {
                let outcome = gate.handshake.run(stream);
                gate.running.fetch_sub(1, Ordering::SeqCst);
                then(outcome);
            });
        if let Err(e) = spawned {
            self.running.fetch_sub(1, Ordering::SeqCst);
            log::warn!("refused {peer:?}: no thread for its handshake: {e}");
        }
    }
}

/// What the accepting thread reports.
enum Accepted {
    Handshaken(Option<SocketAddr>, Box<Handshaken>),
    /// `accept` failed; nothing more comes.
    Failed(std::io::Error),
}

/// Accepts connections on a thread of its own for the whole of a recv,
/// handshaking each through a [`Gate`]; the outcomes, in the order the
/// handshakes finish, go to one channel, so none is lost between the
/// control lane and the lanes after it.
pub struct Acceptor {
    accepted: mpsc::Receiver<Accepted>,
    page_size: usize,
    /// Lanes whose handshake finished before their control lane's did
    /// (handshakes run in parallel); at most [`MAX_EARLY_LANES`].
    early: Vec<(Option<SocketAddr>, Conn, Attach)>,
}

/// Lanes kept while no migration has started.
const MAX_EARLY_LANES: usize = 64;

impl Acceptor {
    pub fn start(listener: TcpListener, handshake: Handshake) -> Self {
        let page_size = handshake.page_size as usize;
        let gate = Gate::new(handshake);
        let (tx, accepted) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let (stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        let _ = tx.send(Accepted::Failed(e));
                        return;
                    }
                };
                let tx = tx.clone();
                gate.admit(stream, Some(peer), move |outcome| {
                    let _ = tx.send(Accepted::Handshaken(Some(peer), Box::new(outcome)));
                });
            }
        });
        Self {
            accepted,
            page_size,
            early: Vec::new(),
        }
    }

    /// Waits for a new migration's control lane; returns it with its
    /// session id.
    pub fn control(&mut self, addr: SocketAddr) -> Result<(Conn, u64), RecvError> {
        loop {
            let (peer, outcome) = match self.accepted.recv() {
                Ok(Accepted::Handshaken(peer, outcome)) => (peer, outcome),
                Ok(Accepted::Failed(source)) => return Err(RecvError::Listen { addr, source }),
                Err(_) => {
                    return Err(RecvError::Listen {
                        addr,
                        source: std::io::Error::other("the accepting thread ended"),
                    });
                }
            };
            match *outcome {
                Ok((conn, attach)) if attach.lane == Lane::Control && attach.epoch == 0 => {
                    return Ok((conn, attach.session));
                }
                Ok((conn, attach))
                    if attach.lane != Lane::Control && self.early.len() < MAX_EARLY_LANES =>
                {
                    self.early.push((peer, conn, attach));
                }
                Ok((_, attach)) => log::warn!(
                    "refused {peer:?}: expected a new migration's control connection, got a {:?} lane of epoch {}",
                    attach.lane,
                    attach.epoch
                ),
                Err(e) => log::warn!("refused {peer:?}: {}", pagehop_mem::error_chain(&e)),
            }
        }
    }

    /// From now on, in the background: data and priority lanes of
    /// `session` go to receiver threads feeding `intake`, reconnecting
    /// control lanes to `lanes`.
    pub fn spawn_lanes(self, session: u64, intake: Arc<Intake>, lanes: Arc<Lanes>) {
        std::thread::spawn(move || {
            let early = self
                .early
                .into_iter()
                .map(|(peer, conn, attach)| (peer, Ok((conn, attach))));
            let later = std::iter::from_fn(|| match self.accepted.recv() {
                Ok(Accepted::Handshaken(peer, outcome)) => Some((peer, *outcome)),
                Ok(Accepted::Failed(e)) => {
                    log::warn!("no more connections accepted: {e}");
                    None
                }
                Err(_) => None,
            });
            for (peer, outcome) in early.chain(later) {
                match outcome {
                    Ok((conn, attach)) if attach.session == session => {
                        if let Err(e) = attach_lane(&intake, &lanes, conn, &attach, self.page_size)
                        {
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
}

/// Hands a freshly attached lane to its user.
fn attach_lane(
    intake: &Arc<Intake>,
    lanes: &Lanes,
    conn: Conn,
    attach: &Attach,
    page_size: usize,
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
            let reader = halves.reader;
            std::thread::spawn(move || intake.receive(reader, page_size, epoch, priority));
        }
    }
    Ok(())
}
