//! The stall watchdog of the page stream.
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StreamError;

/// Shuts the data streams down when a round makes no progress for the stall
/// timeout (so that a peer that stays connected but stops reading cannot hold
/// the source, and its tracking, forever); the blocked sends then fail and
/// the migration aborts.
pub(super) struct Watchdog {
    state: Arc<WatchdogState>,
    pub(super) timeout: Duration,
}

#[derive(Default)]
struct WatchdogState {
    /// Batches handed to the kernel so far.
    progress: AtomicU64,
    /// A round is being sent.
    busy: AtomicBool,
    stalled: AtomicBool,
    done: AtomicBool,
}

impl Watchdog {
    pub(super) fn start(streams: Vec<TcpStream>, timeout: Duration) -> Self {
        let state = Arc::new(WatchdogState::default());
        let watched = Arc::clone(&state);
        std::thread::spawn(move || {
            let mut last = (0, Instant::now());
            while !watched.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let progress = watched.progress.load(Ordering::Relaxed);
                if progress != last.0 || !watched.busy.load(Ordering::Relaxed) {
                    last = (progress, Instant::now());
                } else if last.1.elapsed() >= timeout {
                    watched.stalled.store(true, Ordering::SeqCst);
                    for s in &streams {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
            }
        });
        Self { state, timeout }
    }

    pub(super) fn tick(&self) {
        self.state.progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_busy(&self, busy: bool) {
        self.state.busy.store(busy, Ordering::Relaxed);
    }

    /// The error to report: a stall explains the failed sends it caused.
    pub(super) fn explain(&self, e: StreamError) -> StreamError {
        if self.state.stalled.load(Ordering::SeqCst) {
            StreamError::Stalled {
                secs: self.timeout.as_secs_f64(),
            }
        } else {
            e
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.done.store(true, Ordering::Relaxed);
    }
}
