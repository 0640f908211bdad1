//! The completion side of [`UringSender`]: reaps CQEs and moves each
//! buffer on (short sends resubmitted, zero-copy notifications counted,
//! stream errors recorded, buffers freed), and on drop cancels what is in
//! flight and collects the completions before the pool may go away.
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode};

use super::{Slot, UringSender};
use crate::uring::sys::IORING_NOTIF_USAGE_ZC_COPIED;

/// user_data of operations that are not sends (cancellations): beyond any
/// buffer index.
const CANCEL: u64 = 1 << 32;

/// How long `Drop` waits for cancelled sends to complete.
const DROP_RESULTS_TIMEOUT: Duration = Duration::from_secs(5);

impl UringSender {
    /// Handles every completion available now, without blocking. Send errors
    /// are recorded on their stream (see `take_error`).
    pub(super) fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            for &(user_data, res, flags) in &cqes {
                self.complete(user_data, res, flags);
            }
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        if user_data >= CANCEL {
            return;
        }
        let index = user_data as u16;
        let Slot::Busy {
            stream,
            len,
            mut done,
            mut in_flight,
            mut notifs,
        } = self.slots[index as usize]
        else {
            unreachable!(
                "completion for buffer {index} in state {:?}",
                self.slots[index as usize]
            );
        };
        if cqueue::notif(flags) {
            // The kernel no longer references the data of one SEND_ZC.
            notifs -= 1;
            self.stats.zc_notifs += 1;
            if res as u32 & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                self.stats.zc_copied += 1;
            }
        } else {
            in_flight = false;
            if cqueue::more(flags) {
                notifs += 1;
            }
            let s = &mut self.streams[stream];
            if res < 0 {
                s.error.get_or_insert(-res);
            } else if res == 0 && done < len {
                s.error.get_or_insert(0);
            } else {
                done += res as usize;
                self.stats.bytes_sent += res as u64;
            }
            if s.error.is_none() && done < len {
                self.stats.short_sends += 1;
                in_flight = true;
            } else if s.error.is_none() {
                self.stats.sends += 1;
            }
        }
        self.slots[index as usize] = Slot::Busy {
            stream,
            len,
            done,
            in_flight,
            notifs,
        };
        if cqueue::notif(flags) {
            // Nothing else changes for the stream.
        } else if in_flight {
            self.push_send(index);
        } else {
            self.streams[stream].active = None;
            self.start_next(stream);
        }
        if !in_flight && notifs == 0 {
            self.slots[index as usize] = Slot::Free;
            self.free.push(index);
            self.busy -= 1;
        }
    }

    /// Cancels all sends and collects their completions; false if the kernel
    /// did not complete every send within the timeout.
    fn shut_down(&mut self) -> bool {
        for s in &mut self.streams {
            // Stops new submissions and releases queued buffers.
            s.error.get_or_insert(libc::ECANCELED);
        }
        for stream in 0..self.streams.len() {
            if self.streams[stream].active.is_none() {
                self.start_next(stream);
            }
        }
        let in_flight: Vec<u16> = self.streams.iter().filter_map(|s| s.active).collect();
        if self.support.async_cancel {
            for index in in_flight {
                let entry = opcode::AsyncCancel::new(u64::from(index))
                    .build()
                    .user_data(CANCEL);
                // SAFETY: a cancellation names no buffer or fd.
                unsafe { self.push(&entry) };
            }
        }
        let start = Instant::now();
        while self.streams.iter().any(|s| s.active.is_some()) {
            let left = DROP_RESULTS_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() || !matches!(self.wait(Some(left)), Ok(true)) {
                return false;
            }
            self.reap();
        }
        // Outstanding zero-copy notifications are not waited for: they come
        // when the skbs are freed, which a peer that stopped reading can
        // delay indefinitely, and the ring pins the registered pages until
        // then, so unmapping our view of them is safe and the bytes queued
        // for the wire stay intact.
        true
    }
}

impl Drop for UringSender {
    fn drop(&mut self) {
        if self.busy > 0 && !self.shut_down() {
            // A send may still read from the pool by address: never unmap it.
            self.pool.leak();
        }
    }
}
