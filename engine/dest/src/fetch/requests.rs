//! The fault loop's page source during post-copy: pages still on the source
//! are asked for on the priority lane; the rest are installed from the store.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pagehop_mem::SpaceKey;
use pagehop_sys::monotonic_ns;
use pagehop_wire::conn::FrameWriter;
use pagehop_wire::msg::PageRequest;

use super::Arrivals;
use crate::faults::{FaultError, LatencyHistogram, PageSource};

/// The fault loop's [`PageSource`]: pages still on the source are asked for
/// on the priority lane; the rest are queued to be installed from the store.
pub(super) struct Requests {
    pub(super) arrivals: Arc<Arrivals>,
    pub(super) priority: Option<FrameWriter>,
    /// Runs to install from the store after this turn.
    pub(super) local: Vec<(SpaceKey, u64, u32)>,
    /// When each page still awaited was asked for.
    pub(super) requested_at: HashMap<(SpaceKey, u64), u64>,
    pub(super) sent: u64,
    pub(super) page_size: u64,
}

impl Requests {
    /// Asks on `priority`; without one (the source is away) it only queues.
    pub(super) fn new(
        arrivals: &Arc<Arrivals>,
        priority: Option<FrameWriter>,
        page_size: u64,
    ) -> Self {
        Self {
            arrivals: Arc::clone(arrivals),
            priority,
            local: Vec::new(),
            requested_at: HashMap::new(),
            sent: 0,
            page_size,
        }
    }

    /// After a reconnect: the new priority lane, and the pages still awaited
    /// asked for again on it.
    pub(super) fn rearm(&mut self, priority: Option<FrameWriter>, in_flight: &[(SpaceKey, u64)]) {
        self.priority = priority;
        for &(space, page) in in_flight {
            self.ask(space, page, 1);
        }
    }

    /// `page` was installed: records its request-to-install latency if it
    /// was asked for.
    pub(super) fn answered(&mut self, space: SpaceKey, page: u64, latency: &mut LatencyHistogram) {
        if let Some(at) = self.requested_at.remove(&(space, page)) {
            latency.record(monotonic_ns().saturating_sub(at));
        }
    }

    /// Sends one request; a broken lane is reported as a lost connection.
    fn ask(&mut self, space: SpaceKey, addr: u64, pages: u32) {
        let now = monotonic_ns();
        for i in 0..pages as u64 {
            self.requested_at
                .entry((space, addr + i * self.page_size))
                .or_insert(now);
        }
        let Some(lane) = self.priority.as_mut() else {
            return;
        };
        if lane.send(&PageRequest { space, addr, pages }).is_err() {
            self.priority = None;
            self.arrivals.lost.store(true, Ordering::SeqCst);
        } else {
            self.sent += 1;
        }
    }
}

impl PageSource for Requests {
    fn request(&mut self, space: SpaceKey, addr: u64, pages: u32) -> Result<(), FaultError> {
        let ps = self.page_size;
        let mut remote: Vec<(SpaceKey, u64, u32)> = Vec::new();
        {
            let outstanding = self.arrivals.outstanding.lock().expect("lock");
            for i in 0..pages as u64 {
                let page = addr + i * ps;
                let runs = if outstanding.get(space, page) {
                    &mut remote
                } else {
                    &mut self.local
                };
                match runs.last_mut() {
                    Some((s, start, n)) if *s == space && *start + *n as u64 * ps == page => {
                        *n += 1
                    }
                    _ => runs.push((space, page, 1)),
                }
            }
        }
        for (space, addr, pages) in remote {
            self.ask(space, addr, pages);
        }
        Ok(())
    }
}
