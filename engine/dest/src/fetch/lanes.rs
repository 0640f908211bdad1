//! Connections the acceptor hands over during post-copy: reconnected
//! control lanes, priority lanes, and every connection by epoch (to cut
//! them on a break).
use std::net::TcpStream;
use std::sync::Mutex;

use pagehop_wire::conn::{Conn, FrameWriter};

/// Connections the acceptor hands over during a migration: reconnected
/// control lanes, priority lanes, and every connection by epoch (to cut them).
#[derive(Default)]
pub struct Lanes {
    priority: Mutex<Option<(u32, FrameWriter)>>,
    controls: Mutex<Vec<(u32, Conn)>>,
    links: Mutex<Vec<(u32, TcpStream)>>,
}

impl Lanes {
    /// Remembers a connection so that a break can cut it.
    pub fn register(&self, epoch: u32, stream: &TcpStream) {
        if let Ok(s) = stream.try_clone() {
            self.links.lock().expect("lock").push((epoch, s));
        }
    }

    /// A priority lane (its write half); the newest epoch wins.
    pub fn attach_priority(&self, epoch: u32, stream: FrameWriter) {
        let mut slot = self.priority.lock().expect("lock");
        if slot.as_ref().is_none_or(|(e, _)| *e <= epoch) {
            *slot = Some((epoch, stream));
        }
    }

    /// A control lane of a reconnecting source.
    pub fn attach_control(&self, epoch: u32, conn: Conn) {
        self.controls.lock().expect("lock").push((epoch, conn));
    }

    pub(super) fn take_priority(&self, min_epoch: u32) -> Option<FrameWriter> {
        let mut slot = self.priority.lock().expect("lock");
        match slot.take() {
            Some((e, s)) if e >= min_epoch => Some(s),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// The control lane of the newest epoch from `min_epoch` on (the last
    /// attached, if an epoch came twice); older ones are dropped: they
    /// belong to attempts the source gave up.
    pub(super) fn take_control(&self, min_epoch: u32) -> Option<(u32, Conn)> {
        let mut controls = self.controls.lock().expect("lock");
        let newest = controls
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| *e >= min_epoch)
            .max_by_key(|&(at, (e, _))| (*e, at))
            .map(|(at, _)| at)?;
        let taken = controls.swap_remove(newest);
        controls.retain(|(e, _)| *e > taken.0);
        Some(taken)
    }

    /// Cuts every connection of `epoch` or older.
    pub(super) fn cut_upto(&self, epoch: u32) {
        let mut links = self.links.lock().expect("lock");
        links.retain(|(e, s)| {
            if *e <= epoch {
                let _ = s.shutdown(std::net::Shutdown::Both);
                false
            } else {
                true
            }
        });
    }
}
