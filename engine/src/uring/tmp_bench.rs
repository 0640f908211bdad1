use super::*;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn run(mode: SendMode, streams: usize, bufsize: usize) {
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..streams {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        txs.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let (mut rx, _) = l.accept().unwrap();
        handles.push(std::thread::spawn(move || {
            let mut b = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = rx.read(&mut b).unwrap();
                if k == 0 {
                    break n;
                }
                n += k as u64;
            }
        }));
    }
    let mut s = UringSender::new(txs, 16, bufsize, mode).unwrap();
    let total: u64 = 4 << 30;
    let t = Instant::now();
    let mut sent = 0u64;
    let mut i = 0;
    while sent < total {
        let id = s.acquire().unwrap();
        s.buffer_mut(id)[0] = i as u8;
        s.send(id, bufsize, i % streams).unwrap();
        sent += bufsize as u64;
        i += 1;
    }
    s.flush().unwrap();
    let dt = t.elapsed().as_secs_f64();
    let st = s.stats();
    drop(s);
    let got: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(got, total);
    eprintln!(
        "{mode:?} wf={} streams={streams} buf={}KiB: {:.2} GB/s  {st:?}",
        std::env::var_os("TMP_WF").is_some(),
        bufsize >> 10,
        total as f64 / dt / 1e9
    );
}

#[test]
#[ignore]
fn tmp_bench() {
    for &(streams, buf) in &[(1, 1usize << 20), (2, 1 << 20), (1, 256 << 10)] {
        run(SendMode::Copy, streams, buf);
        run(SendMode::ZeroCopy, streams, buf);
    }
}
