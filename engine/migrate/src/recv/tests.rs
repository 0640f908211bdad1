//! recv against a scripted source over real loopback sockets: frames out
//! of order are refused with a protocol error, and the source is told.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use pagehop_wire::FrameKind;
use pagehop_wire::auth::Token;
use pagehop_wire::batch::{Compress, encode_batch, entry};
use pagehop_wire::conn::{Conn, ConnError, Security, codes};
use pagehop_wire::msg::{
    self, Attach, Commit, Done, EndOfRound, Lane, LayoutAck, Restored, Role, Switchover,
};

use super::*;

/// Both ends' protection: a token, sealed frames.
fn security() -> Security {
    Security::sealed(Token::new(b"recv-unit-test-token-0123", "test").expect("token"))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pagehop-recv-{tag}-{}-{:x}",
            std::process::id(),
            pagehop_sys::monotonic_ns()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// recv in a thread, writing an image; returns its address and its result.
fn start_recv(
    dir: &TempDir,
) -> (
    SocketAddr,
    std::thread::JoinHandle<Result<RecvReport, RecvError>>,
) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let opts = RecvOptions {
        listen: addr,
        security: security(),
        output: Output::ImageDir(dir.0.join("image")),
        handshake_timeout: Duration::from_secs(5),
        reconnect_timeout: Duration::ZERO,
    };
    let handle = std::thread::spawn(move || recv(opts));
    (addr, handle)
}

/// A connection to recv, retried while it starts listening.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connecting to recv: {e}"),
        }
    }
}

/// One authenticated lane of session 7 at epoch 0, as a source opens it.
fn lane(addr: SocketAddr, lane: Lane) -> Conn {
    let stream = connect(addr);
    let caps = msg::CAP_LZ4 | msg::CAP_ZEROCOPY | msg::CAP_VERIFY;
    let mut conn = Conn::handshake(
        stream,
        Role::Source,
        &security(),
        pagehop_sys::page_size() as u32,
        caps,
        Duration::from_secs(5),
    )
    .expect("handshake");
    conn.send(&Attach {
        session: 7,
        lane,
        epoch: 0,
    })
    .expect("attach");
    conn
}

fn empty_layout(control: &mut Conn) {
    control
        .send(&msg::Layout {
            space: SpaceKey::ROOT,
            vmas: Vec::new(),
        })
        .expect("layout");
    let ack: LayoutAck = control.recv_msg().expect("layout ack");
    assert_eq!(ack.vmas, 0);
}

/// The next frame must be an `Error` with the protocol code.
fn expect_protocol_error(control: &mut Conn) -> String {
    match control.recv() {
        Err(ConnError::Peer { code, message }) => {
            assert_eq!(code, codes::PROTOCOL, "{message}");
            message
        }
        other => panic!("expected a protocol error, got {:?}", other.map(|(k, _)| k)),
    }
}

/// A source's control lane that sends `Done` before any switch: recv
/// answers with a protocol error and fails.
fn send_done_early(addr: SocketAddr, recv: std::thread::JoinHandle<Result<RecvReport, RecvError>>) {
    let mut control = lane(addr, Lane::Control);
    empty_layout(&mut control);
    control.send(&Done { pages_sent: 0 }).expect("send");
    let told = expect_protocol_error(&mut control);
    assert!(told.contains("Done arrived before the switch"), "{told}");
    let err = recv.join().expect("recv thread").expect_err("refused");
    assert!(matches!(err, RecvError::Protocol(_)), "{err}");
}

/// The source's half of the commit: `Restored` in, `Commit` out, `Done` in.
fn commit(control: &mut Conn) -> Done {
    let restored: Restored = control.recv_msg().expect("restored");
    assert_eq!(restored.tasks, 1);
    control.send(&Commit { tasks: 1 }).expect("commit");
    control.recv_msg().expect("done")
}

/// An empty layout, then the pre-copy `Switchover`.
fn switch_precopy(control: &mut Conn) {
    empty_layout(control);
    control
        .send(&Switchover {
            final_round: 0,
            postcopy: false,
            criu: false,
        })
        .expect("switch");
}

/// An empty pre-copy migration up to the destination's `Restored`.
fn switch_to_restored(addr: SocketAddr) -> Conn {
    let mut control = lane(addr, Lane::Control);
    switch_precopy(&mut control);
    let _: Restored = control.recv_msg().expect("restored");
    control
}

#[test]
fn a_source_that_gives_up_before_committing_leaves_the_image_unusable() {
    let dir = TempDir::new("no-commit");
    let (addr, recv) = start_recv(&dir);
    let mut control = switch_to_restored(addr);
    control.send_error(codes::SOURCE, "interrupted");
    let err = recv.join().expect("recv thread").expect_err("no commit");
    assert!(
        matches!(
            &err,
            RecvError::ImageNotCommitted {
                why: NoCommit::Aborted(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("do not start a process from it"),
        "{err}"
    );
}

#[test]
fn a_wrong_commit_is_refused_and_the_source_told_to_run_on() {
    let dir = TempDir::new("wrong-commit");
    let (addr, recv) = start_recv(&dir);
    let mut control = switch_to_restored(addr);
    control.send(&Commit { tasks: 2 }).expect("commit");
    match control.recv_msg::<Done>() {
        Err(ConnError::Peer { code, message }) => {
            assert_eq!(code, codes::ABORTED, "{message}");
            assert!(message.contains("killed before it ran"), "{message}");
        }
        other => panic!("expected the destination to give up, got {other:?}"),
    }
    let err = recv.join().expect("recv thread").expect_err("no commit");
    assert!(
        matches!(
            &err,
            RecvError::ImageNotCommitted {
                why: NoCommit::Tasks { tasks: 2, want: 1 },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn done_before_the_switch_is_a_protocol_error() {
    let dir = TempDir::new("early-done");
    let (addr, recv) = start_recv(&dir);
    send_done_early(addr, recv);
    assert!(!dir.0.join("image/image.json").exists(), "nothing written");
}

#[test]
fn a_second_switchover_is_a_protocol_error() {
    let dir = TempDir::new("second-switch");
    let (addr, recv) = start_recv(&dir);
    let mut control = lane(addr, Lane::Control);
    empty_layout(&mut control);
    let end = EndOfRound {
        round: 0,
        pages: 0,
        bytes_raw: 0,
        bytes_wire: 0,
    };
    control.send(&end).expect("end of round");
    let _: EndOfRound = control.recv_msg().expect("round ack");
    let switch = Switchover {
        final_round: 0,
        postcopy: false,
        criu: false,
    };
    control.send(&switch).expect("switch");
    let done = commit(&mut control);
    assert_eq!(done.pages_sent, 0);
    control.send(&switch).expect("switch again");
    let told = expect_protocol_error(&mut control);
    assert!(told.contains("a second Switchover"), "{told}");
    let err = recv.join().expect("recv thread").expect_err("refused");
    assert!(matches!(err, RecvError::Protocol(_)), "{err}");
}

#[test]
fn pages_after_the_switch_are_a_protocol_error() {
    let dir = TempDir::new("late-pages");
    let (addr, recv) = start_recv(&dir);
    let mut control = lane(addr, Lane::Control);
    let mut data = lane(addr, Lane::Data).into_halves().writer;
    switch_precopy(&mut control);
    commit(&mut control);
    // A late batch on the data lane: one zero page.
    let mut payload = Vec::new();
    encode_batch(
        SpaceKey::ROOT,
        1,
        &[entry(0x10_0000, true)],
        &[],
        Compress::Off,
        &mut Vec::new(),
        &mut payload,
    );
    data.send_payload(FrameKind::Pages, &payload)
        .expect("late pages");
    let err = recv.join().expect("recv thread").expect_err("refused");
    assert!(
        matches!(
            &err,
            RecvError::AfterSwitch {
                source: LaneFailure::OutOfOrder { .. }
            }
        ),
        "{err}"
    );
    assert!(
        pagehop_mem::error_chain(&err).contains("a Pages frame arrived after the pre-copy switch"),
        "{}",
        pagehop_mem::error_chain(&err)
    );
}

/// Peers that connect and then send nothing (or a byte now and then) do
/// not keep the source out: each handshake runs on its own, within its
/// deadline.
#[test]
fn silent_peers_do_not_block_the_source() {
    let dir = TempDir::new("silent-peers");
    let (addr, recv) = start_recv(&dir);
    let silent: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    std::io::Write::write_all(&mut &silent[0], b"PH").expect("a dribble");
    // recv's handshake timeout is 5 s, and so is this client's: one slow
    // peer handled before the source would make this handshake fail.
    send_done_early(addr, recv);
}
