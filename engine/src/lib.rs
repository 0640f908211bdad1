//! pagehop: live migration of the memory of running Linux processes.
//!
//! Module map (source side first):
//! - [`target`]: a process to track or migrate, validated (exists, is not a kernel thread, may be traced).
//! - [`inject`]: runs syscalls inside a target with ptrace; takes a userfaultfd out of it.
//! - [`wp`]: the write-protect session on a target's userfaultfd (register, protect, unregister).
//! - [`layout`]: the target's address space (VMAs from /proc/PID/maps) and which ranges are tracked.
//! - [`pagemap`]: PAGEMAP_SCAN queries on a target (written-and-re-protect, present).
//! - [`bpf`]: loads the eBPF programs and drains their fault and address-space event rings.
//! - [`tracker`]: the dirty-page tracking backends behind one trait.
//! - [`track`]: the `pagehop track` loop: intervals, events, reports.
//! - [`heat`]: per-page write heat (consecutive and total dirty intervals).
//! - [`pages`]: page sets and their conversion to merged ranges.
//! - [`workload`]: the built-in workload used by tests, demos and benchmarks.
//! - [`sys`]: raw syscalls and ioctls with their `#[repr(C)]` structs.
pub mod bpf;
pub mod heat;
pub mod inject;
pub mod layout;
pub mod pagemap;
pub mod pages;
pub mod sys;
pub mod target;
pub mod track;
pub mod tracker;
pub mod workload;
pub mod wp;
