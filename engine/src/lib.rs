//! pagehop: live migration of the memory of running Linux processes.
//!
//! Module map (source side first):
//! - [`target`]: a process to track or migrate, validated (exists, is not a kernel thread, may be traced).
//! - [`inject`]: runs syscalls inside a target with ptrace; takes a userfaultfd out of it.
//! - [`wp`]: the write-protect session on a target's userfaultfd (register, protect, unregister).
//! - [`layout`]: the target's address space (VMAs from /proc/PID/maps) and which ranges are tracked.
//! - [`pagemap`]: PAGEMAP_SCAN queries on a target (written-and-re-protect, present).
//! - [`freeze`]: stops a source (ptrace every thread, or a cgroup v2 freeze) and lets it go.
//! - [`bpf`]: loads the eBPF programs and drains their fault and address-space event rings.
//! - [`tracker`]: the dirty-page tracking backends behind one trait.
//! - [`track`]: the `pagehop track` loop: intervals, events, reports.
//! - [`heat`]: per-page write heat (consecutive and total dirty intervals).
//! - [`pages`]: page sets and their conversion to merged ranges.
//! - [`page_bits`]: one bit per page over fixed ranges (post-copy's sent and arrived sets).
//! - [`workload`]: the built-in workload used by tests, demos and benchmarks.
//! - [`netns`]: two network namespaces joined by veth, for tests, demo and benchmarks.
//! - [`bench`]: `pagehop bench`, the research harness: scenarios, baselines, results, plots.
//! - [`migrate`]: `pagehop send` / `recv`: connections, rounds, switchover, verification.
//! - [`reader`]: reads another process's pages (`process_vm_readv`) into caller buffers.
//! - [`uring`]: the io_uring sender: registered buffers, send or send_zc, per-stream order.
//! - [`wire`]: the versioned, checksummed wire protocol and its authentication.
//! - [`handoff`]: the CRIU lazy-pages convention for passing a userfaultfd over a Unix socket.
//! - [`install`]: puts pages into a process through its userfaultfd (UFFDIO_COPY / ZEROPAGE).
//! - [`faults`]: the destination's userfaultfd fault loop (post-copy's demand paging).
//! - [`store`]: the destination's page store (memfd-backed, following the source layout).
//! - [`sys`]: raw syscalls and ioctls with their `#[repr(C)]` structs.
pub mod bench;
pub mod bpf;
pub mod faults;
pub mod freeze;
pub mod handoff;
pub mod heat;
pub mod inject;
pub mod install;
pub mod layout;
pub mod migrate;
pub mod netns;
pub mod page_bits;
pub mod pagemap;
pub mod pages;
pub mod reader;
pub mod store;
pub mod sys;
pub mod target;
pub mod track;
pub mod tracker;
pub mod uring;
pub mod wire;
pub mod workload;
pub mod wp;
