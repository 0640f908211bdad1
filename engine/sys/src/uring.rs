//! io_uring ABI constants that the io-uring crate uses internally but does not
//! export (values from include/uapi/linux/io_uring.h).

/// `sqe.ioprio` flag of `IORING_OP_SEND_ZC`: the notification CQE's `res`
/// reports whether the kernel had to copy the data (Linux 6.2).
pub const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// Bit in a zero-copy notification's `res`: at least part of the data was
/// copied instead of sent from the user pages.
pub const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// Flags of every send: no SIGPIPE on a closed peer (EPIPE instead), and let
/// the kernel retry partial sends on stream sockets.
pub const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
