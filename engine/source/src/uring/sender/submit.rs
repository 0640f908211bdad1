//! The submission side of [`UringSender`]: starts the next queued send of a
//! stream, builds its SQE (copy or zero-copy, resuming a short send where
//! it stopped), pushes and submits SQEs, and waits for completions.
use std::io;
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use super::{Slot, UringSender};
use crate::uring::sys::{IORING_SEND_ZC_REPORT_USAGE, SEND_FLAGS};
use crate::uring::{SendMode, UringError};

impl UringSender {
    /// Starts the oldest queued buffer of an idle `stream`. On a dead stream,
    /// returns every queued buffer to the pool instead.
    pub(super) fn start_next(&mut self, stream: usize) {
        debug_assert!(self.streams[stream].active.is_none());
        if self.streams[stream].error.is_some() {
            while let Some(index) = self.streams[stream].queue.pop_front() {
                self.slots[index as usize] = Slot::Free;
                self.free.push(index);
                self.busy -= 1;
            }
            return;
        }
        let Some(index) = self.streams[stream].queue.pop_front() else {
            return;
        };
        let Slot::Queued { len, .. } = self.slots[index as usize] else {
            unreachable!(
                "queued buffer {index} in state {:?}",
                self.slots[index as usize]
            );
        };
        self.slots[index as usize] = Slot::Busy {
            stream,
            len,
            done: 0,
            in_flight: true,
            notifs: 0,
        };
        self.streams[stream].active = Some(index);
        self.push_send(index);
    }

    /// Pushes the SQE sending the unsent rest of Busy buffer `index`.
    pub(super) fn push_send(&mut self, index: u16) {
        let Slot::Busy {
            stream, len, done, ..
        } = self.slots[index as usize]
        else {
            unreachable!(
                "sending buffer {index} in state {:?}",
                self.slots[index as usize]
            );
        };
        let fd = types::Fd(self.streams[stream].fd);
        // SAFETY: done < len <= buffer_size, so the offset stays inside the
        // buffer.
        let ptr = unsafe { self.pool.ptr(index as usize).add(done) };
        let rest = (len - done) as u32;
        let entry = match self.mode {
            SendMode::Copy => opcode::Send::new(fd, ptr, rest).flags(SEND_FLAGS).build(),
            SendMode::ZeroCopy => opcode::SendZc::new(fd, ptr, rest)
                .buf_index(Some(index))
                .flags(SEND_FLAGS)
                .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                .build(),
        }
        .user_data(u64::from(index));
        // SAFETY: the SQE reads `rest` bytes at `ptr`, inside buffer `index`
        // of the pool (and of its fixed-buffer registration for SEND_ZC). The
        // slot is Busy, so nobody writes the buffer or hands it out until the
        // completion (and every notification) has been reaped; the pool
        // outlives all operations (`Drop` collects them or leaks the pool).
        // `fd` belongs to a stream owned by `self` that stays open as long.
        unsafe { self.push(&entry) };
        self.stats.submissions += 1;
    }

    /// Pushes an SQE.
    ///
    /// The submission queue holds two entries per stream, and at most one
    /// send and one cancellation per stream are ever waiting in it, so it
    /// cannot be full.
    ///
    /// # Safety
    /// Every buffer and fd the entry names must stay valid until its
    /// completion is reaped.
    pub(super) unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.submission().push(entry) }
            .expect("submission queue sized for one send and one cancel per stream");
    }

    /// Submits pushed SQEs.
    pub(super) fn submit(&mut self) -> Result<(), UringError> {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if retryable(&e) => self.reap(),
                Err(source) => return Err(UringError::Enter { source }),
            }
        }
        Ok(())
    }

    /// Submits and waits for at least one completion (or the timeout).
    /// Returns false on timeout.
    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, UringError> {
        let res = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(false),
            Err(e) if retryable(&e) => Ok(true),
            Err(source) => Err(UringError::Enter { source }),
        }
    }
}

/// io_uring_enter errors that go away by reaping or retrying.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}
