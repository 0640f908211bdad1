//! Types shared by pagehop's eBPF programs (kernel side) and the engine (userspace).
//!
//! Everything here crosses the kernel boundary through BPF maps and ring buffers,
//! so every type is `#[repr(C)]`, `Copy`, padded explicitly and size-checked at
//! compile time. With the `user` feature the types implement `aya::Pod`.
#![no_std]

use core::mem::size_of;

/// Names of the maps and programs in the eBPF object, shared so that a rename
/// on one side cannot silently break the other.
pub mod names {
    pub const TRACKED: &str = "TRACKED";
    pub const FAULTS: &str = "FAULTS";
    pub const MM_EVENTS: &str = "MM_EVENTS";
    pub const STATS: &str = "STATS";
    pub const PROG_FAULT_USER: &str = "page_fault_user";
    pub const PROG_FAULT_KERNEL: &str = "page_fault_kernel";
    pub const PROG_SYS_EXIT: &str = "sys_exit";
    pub const PROG_NEWTASK: &str = "task_newtask";
    pub const PROG_EXEC: &str = "sched_process_exec";
    pub const PROG_EXIT: &str = "sched_process_exit";
}

/// Byte offsets of the tracepoint fields the programs read. Userspace checks
/// them against `/sys/kernel/tracing/events/*/*/format` before loading, so a
/// kernel with another layout is refused with a clear error instead of
/// producing wrong addresses.
pub mod tp_offsets {
    /// `exceptions:page_fault_{user,kernel}`: `unsigned long address`.
    pub const FAULT_ADDRESS: usize = 8;
    /// `exceptions:page_fault_{user,kernel}`: `unsigned long error_code`.
    pub const FAULT_ERROR_CODE: usize = 24;
    /// `task:task_newtask`: `pid_t pid` of the new task.
    pub const NEWTASK_PID: usize = 8;
    /// `task:task_newtask`: `u64 clone_flags`.
    pub const NEWTASK_CLONE_FLAGS: usize = 32;
    /// `sched:sched_process_exit`: `bool group_dead`.
    pub const EXIT_GROUP_DEAD: usize = 32;
}

/// Bit 1 of the x86 page-fault error code: the access was a write.
pub const FAULT_ERROR_WRITE: u64 = 1 << 1;
/// Addresses at or above this are kernel addresses (x86_64, 4-level paging user limit).
pub const USER_ADDRESS_LIMIT: u64 = 0x0000_8000_0000_0000;
/// `CLONE_THREAD`: the new task joins the parent's thread group.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// `FaultEvent::flags`: the fault came from kernel mode (copy_to_user and friends).
pub const FAULT_FLAG_KERNEL: u32 = 1;

/// One write fault by a thread of a tracked process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultEvent {
    /// Thread-group id (process id) of the faulting thread.
    pub tgid: u32,
    /// `FAULT_FLAG_*` bits.
    pub flags: u32,
    /// Faulting virtual address (not page-aligned).
    pub addr: u64,
}
const _: () = assert!(size_of::<FaultEvent>() == 16);

/// What an [`MmEvent`] reports. Zero is invalid so that a zeroed record is never
/// mistaken for an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmEventKind {
    Invalid = 0,
    /// `addr`, `len` of the new mapping; `arg0` = prot, `arg1` = flags.
    Mmap = 1,
    /// `addr`, `len` unmapped.
    Munmap = 2,
    /// `addr`, `len` = old range; `arg0` = new address, `arg1` = new length.
    Mremap = 3,
    /// `addr` = new program break; `len` = 0.
    Brk = 4,
    /// `addr`, `len`; `arg0` = advice.
    Madvise = 5,
    /// `addr`, `len`; `arg0` = new prot.
    Mprotect = 6,
    /// `arg0` = the child's tgid (now tracked too).
    Fork = 7,
    /// The process executed a new program: its address space was replaced.
    Exec = 8,
    /// The whole thread group exited.
    Exit = 9,
}

impl MmEventKind {
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Mmap,
            2 => Self::Munmap,
            3 => Self::Mremap,
            4 => Self::Brk,
            5 => Self::Madvise,
            6 => Self::Mprotect,
            7 => Self::Fork,
            8 => Self::Exec,
            9 => Self::Exit,
            _ => Self::Invalid,
        }
    }
}

/// An address-space or process event of a tracked process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmEvent {
    /// An [`MmEventKind`] as u32.
    pub kind: u32,
    pub tgid: u32,
    pub addr: u64,
    pub len: u64,
    pub arg0: u64,
    pub arg1: u64,
}
const _: () = assert!(size_of::<MmEvent>() == 40);

/// Indices of the per-CPU `STATS` counters.
pub mod stats {
    /// Write faults of tracked processes seen.
    pub const FAULTS_SEEN: u32 = 0;
    /// Write faults that could not be delivered (ring buffer full).
    pub const FAULTS_DROPPED: u32 = 1;
    /// Address-space events that could not be delivered.
    pub const MM_DROPPED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Value stored in `TRACKED` for a tracked tgid.
pub const TRACKED_ON: u32 = 1;

// madvise advice values that zap pages (their contents become zero or are refetched).
pub const MADV_DONTNEED: u64 = 4;
pub const MADV_FREE: u64 = 8;
pub const MADV_REMOVE: u64 = 9;

#[cfg(feature = "user")]
mod user {
    // SAFETY: both types are repr(C), Copy, have no padding (checked by the size
    // asserts above) and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FaultEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MmEvent {}
}
