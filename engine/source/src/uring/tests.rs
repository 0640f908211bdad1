//! Loopback tests of the sender. They need io_uring (not root).
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;

/// A connected loopback pair: (sending side, receiving side).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tx = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (rx, _) = listener.accept().expect("accept");
    (tx, rx)
}

fn pairs(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    (0..n).map(|_| pair()).unzip()
}

/// Deterministic pseudo-random bytes (xorshift64).
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_ne_bytes()[..chunk.len()]);
    }
}

/// Reads until EOF on another thread.
fn drain(mut rx: TcpStream) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut all = Vec::new();
        rx.read_to_end(&mut all).expect("receiver read");
        all
    })
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`
/// (a hang is the failure these tests look for).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, wait) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(f());
    });
    wait.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}"))
}

fn supported_or_skip(mode: SendMode) -> bool {
    let support = probe().expect("io_uring probe");
    if mode == SendMode::ZeroCopy && !support.send_zc {
        eprintln!("skipped: this kernel has no IORING_OP_SEND_ZC");
        return false;
    }
    true
}

fn bulk_in_order(mode: SendMode) {
    if !supported_or_skip(mode) {
        return;
    }
    const BUFFERS: usize = 8;
    const SIZE: usize = 256 << 10;
    const SENDS: usize = 96;
    let (tx, rx) = pair();
    let receiver = drain(rx);
    let mut sender = UringSender::new(vec![tx], BUFFERS, SIZE, mode).expect("sender");
    assert_eq!(sender.mode(), mode);

    let mut expected = Vec::new();
    for i in 0..SENDS {
        // Vary the length, including lengths that are not whole pages.
        let len = SIZE - (i * 4093) % (SIZE / 2);
        let id = sender.acquire().expect("acquire");
        let buf = sender.buffer_mut(id);
        fill(&mut buf[..len], i as u64);
        expected.extend_from_slice(&buf[..len]);
        sender.send(id, len, 0).expect("send");
    }
    sender.flush().expect("flush");
    assert_eq!(sender.in_flight(), 0);
    let stats = sender.stats();
    eprintln!("{mode:?}: {stats:?}");
    assert_eq!(stats.bytes_sent, expected.len() as u64);
    assert_eq!(stats.sends, SENDS as u64);
    if mode == SendMode::ZeroCopy {
        assert_eq!(
            stats.zc_notifs, stats.submissions,
            "one notification per SEND_ZC"
        );
    }
    drop(sender); // closes the socket: EOF for the receiver

    let got = receiver.join().expect("receiver");
    assert_eq!(got.len(), expected.len());
    if let Some(at) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("first differing byte at {at}");
    }
}

#[test]
fn probe_reports_send() {
    let support = probe().expect("io_uring probe");
    eprintln!("{support:?}");
    assert!(support.send, "IORING_OP_SEND exists since Linux 5.6");
}

#[test]
fn copy_mode_delivers_every_byte_in_order() {
    within(Duration::from_secs(60), || bulk_in_order(SendMode::Copy));
}

#[test]
fn zero_copy_mode_delivers_every_byte_in_order() {
    within(Duration::from_secs(60), || {
        bulk_in_order(SendMode::ZeroCopy)
    });
}

/// Small frames: stream id, sequence number, then `seq % 61` filler bytes.
fn small_frames_keep_stream_order(mode: SendMode) {
    if !supported_or_skip(mode) {
        return;
    }
    const STREAMS: usize = 3;
    const FRAMES: u32 = 2000;
    let (txs, rxs) = pairs(STREAMS);
    for tx in &txs {
        tx.set_nodelay(true).expect("nodelay");
    }
    let receivers: Vec<_> = rxs.into_iter().map(drain).collect();
    let mut sender = UringSender::new(txs, 4, 4096, mode).expect("sender");

    let frame = |stream: usize, seq: u32| {
        let mut f = vec![stream as u8];
        f.extend_from_slice(&seq.to_le_bytes());
        f.extend(std::iter::repeat_n(seq as u8, (seq % 61) as usize));
        f
    };
    for seq in 0..FRAMES {
        for stream in 0..STREAMS {
            // Interleave the two ways of sending.
            let bytes = frame(stream, seq);
            if seq % 2 == 0 {
                sender.send_bytes(stream, &bytes).expect("send_bytes");
            } else {
                let id = sender.acquire().expect("acquire");
                sender.buffer_mut(id)[..bytes.len()].copy_from_slice(&bytes);
                sender.send(id, bytes.len(), stream).expect("send");
            }
        }
    }
    sender.flush().expect("flush");
    assert_eq!(sender.stats().sends, u64::from(FRAMES) * STREAMS as u64);
    drop(sender);

    for (stream, receiver) in receivers.into_iter().enumerate() {
        let got = receiver.join().expect("receiver");
        let expected: Vec<u8> = (0..FRAMES).flat_map(|seq| frame(stream, seq)).collect();
        assert_eq!(got.len(), expected.len(), "stream {stream} length");
        if let Some(at) = got.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!("stream {stream}: first differing byte at {at}");
        }
    }
}

#[test]
fn small_sends_on_three_streams_keep_order_copy() {
    within(Duration::from_secs(60), || {
        small_frames_keep_stream_order(SendMode::Copy)
    });
}

#[test]
fn small_sends_on_three_streams_keep_order_zero_copy() {
    within(Duration::from_secs(60), || {
        small_frames_keep_stream_order(SendMode::ZeroCopy)
    });
}

/// The peer reads a little, then closes: the sender must fail with a send
/// error naming the stream, not hang.
fn peer_close(mode: SendMode) {
    if !supported_or_skip(mode) {
        return;
    }
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let healthy = drain(rx1);
    let closer = thread::spawn(move || {
        let mut rx0 = rx0;
        let mut buf = vec![0u8; 64 << 10];
        rx0.read_exact(&mut buf).expect("first bytes");
        // Dropping with unread data makes the kernel send a RST.
    });
    let mut sender = UringSender::new(vec![tx0, tx1], 4, 256 << 10, mode).expect("sender");
    let mut chunk = vec![0u8; 256 << 10];
    fill(&mut chunk, 99);

    let err = loop {
        let id = match sender.acquire() {
            Ok(id) => id,
            Err(e) => break e,
        };
        let n = chunk.len();
        sender.buffer_mut(id)[..n].copy_from_slice(&chunk);
        if let Err(e) = sender.send(id, n, 0) {
            break e;
        }
    };
    closer.join().expect("closer");
    eprintln!("{mode:?}: {err}: {:?}", err.errno());
    match &err {
        UringError::Send { stream: 0, source } => assert!(
            matches!(source.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)),
            "unexpected errno: {source}"
        ),
        other => panic!("unexpected error: {other}"),
    }
    assert!(sender.stream_failed(0));
    // Reported once; later sends on the dead stream fail at once and give
    // the buffer back.
    let id = sender.acquire().expect("acquire after the error");
    assert!(matches!(
        sender.send(id, 10, 0),
        Err(UringError::Send { stream: 0, .. })
    ));
    // The other stream is unaffected.
    sender.send_bytes(1, b"still here").expect("healthy stream");
    sender.flush().expect("flush after the error was reported");
    drop(sender);
    assert_eq!(healthy.join().expect("receiver"), b"still here");
}

#[test]
fn peer_close_is_an_error_copy() {
    within(Duration::from_secs(30), || peer_close(SendMode::Copy));
}

#[test]
fn peer_close_is_an_error_zero_copy() {
    within(Duration::from_secs(30), || peer_close(SendMode::ZeroCopy));
}

/// A peer that stays connected but never reads: dropping the sender with
/// sends stuck in flight must cancel them and return.
fn drop_with_stuck_sends(mode: SendMode) {
    if !supported_or_skip(mode) {
        return;
    }
    let (tx, rx) = pair();
    let mut sender = UringSender::new(vec![tx], 4, 8 << 20, mode).expect("sender");
    for _ in 0..4 {
        let id = sender.acquire().expect("acquire");
        sender.buffer_mut(id).fill(0xa5);
        sender.send(id, 8 << 20, 0).expect("send");
    }
    // 32 MiB is more than loopback socket buffers hold.
    thread::sleep(Duration::from_millis(100));
    assert!(sender.in_flight() > 0, "{:?}", sender.stats());
    drop(sender);
    drop(rx);
}

#[test]
fn drop_cancels_stuck_sends_copy() {
    within(Duration::from_secs(20), || {
        drop_with_stuck_sends(SendMode::Copy)
    });
}

#[test]
fn drop_cancels_stuck_sends_zero_copy() {
    within(Duration::from_secs(20), || {
        drop_with_stuck_sends(SendMode::ZeroCopy)
    });
}

#[test]
fn switching_modes_mid_stream_keeps_order() {
    if !supported_or_skip(SendMode::ZeroCopy) {
        return;
    }
    within(Duration::from_secs(60), || {
        let (tx, rx) = pair();
        let receiver = drain(rx);
        let mut sender =
            UringSender::new(vec![tx], 4, 64 << 10, SendMode::ZeroCopy).expect("sender");
        let mut expected = Vec::new();
        for i in 0..64u64 {
            if i % 8 == 0 {
                let mode = if i % 16 == 0 {
                    SendMode::Copy
                } else {
                    SendMode::ZeroCopy
                };
                assert_eq!(sender.set_mode(mode), mode);
            }
            let id = sender.acquire().expect("acquire");
            let buf = sender.buffer_mut(id);
            fill(buf, i);
            expected.extend_from_slice(buf);
            sender.send(id, 64 << 10, 0).expect("send");
        }
        sender.flush().expect("flush");
        let stats = sender.stats();
        assert_eq!(stats.zc_notifs, 32, "{stats:?}");
        drop(sender);
        assert!(
            receiver.join().expect("receiver") == expected,
            "bytes differ"
        );
    });
}

#[test]
fn buffer_rules() {
    let (tx, _rx) = pair();
    let mut sender = UringSender::new(vec![tx], 2, 1000, SendMode::Copy).expect("sender");
    let a = sender.acquire().expect("first");
    assert_eq!(sender.buffer_mut(a).len(), 1000);
    let b = sender.acquire().expect("second");
    assert!(matches!(
        sender.acquire(),
        Err(UringError::Exhausted { count: 2 })
    ));
    // Bad stream and oversized sends give the buffer back.
    assert!(matches!(
        sender.send(b, 10, 5),
        Err(UringError::NoSuchStream {
            stream: 5,
            streams: 1
        })
    ));
    assert!(matches!(
        sender.send(b, 10, 0),
        Err(UringError::NotHeld { index: 1 })
    ));
    let b = sender.acquire().expect("returned buffer");
    assert!(matches!(
        sender.send(b, 1001, 0),
        Err(UringError::TooLong {
            len: 1001,
            size: 1000
        })
    ));
    let b = sender.acquire().expect("returned buffer");
    sender.release(b).expect("release");
    assert!(matches!(sender.release(b), Err(UringError::NotHeld { .. })));
    assert!(UringSender::new(Vec::new(), 2, 1000, SendMode::Copy).is_err());
    assert!(BufferPool::new(0, 4096).is_err());
    assert!(BufferPool::new(1, 0).is_err());
}

#[test]
#[should_panic(expected = "not held")]
fn buffer_mut_after_send_panics() {
    let (tx, rx) = pair();
    let _receiver = drain(rx);
    let mut sender = UringSender::new(vec![tx], 2, 4096, SendMode::Copy).expect("sender");
    let id = sender.acquire().expect("acquire");
    sender.send(id, 100, 0).expect("send");
    sender.buffer_mut(id);
}
