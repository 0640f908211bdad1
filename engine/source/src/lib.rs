//! pagehop's source side: everything that touches the live process, and the
//! page stream that leaves it.
//!
//! - [`target`]: a process to track or migrate, validated.
//! - [`inject`]: runs syscalls inside a target with ptrace; takes a userfaultfd out of it.
//! - [`wp`]: the write-protect session on a target's userfaultfd.
//! - [`pagemap`]: PAGEMAP_SCAN queries on a target (written-and-re-protect, present).
//! - [`cgroup`]: a container's cgroup v2 directory as a process tree (its root, its processes).
//! - [`freeze`]: stops a source (ptrace every thread, or a cgroup v2 freeze) and lets it go.
//! - [`bpf`]: loads the eBPF programs and drains their fault and address-space event rings.
//! - [`tracker`]: the dirty-page tracking backends behind one trait.
//! - [`track`]: a tracking session: intervals, events, reports (`pagehop track`, and send's rounds).
//! - [`heat`]: per-page write heat.
//! - [`reader`]: reads another process's pages (`process_vm_readv`).
//! - [`uring`]: the io_uring sender: registered buffers, send or send_zc.
//! - [`provider`]: the live process and the frozen tree as page providers.
//! - [`stream`]: the page pipeline: read into registered buffers, zero pages as holes, lz4, send.
//! - [`postcopy`]: post-copy's source side: the demand server and the background push.
pub mod bpf;
pub mod cgroup;
pub mod freeze;
pub mod heat;
pub mod inject;
pub mod pagemap;
pub mod postcopy;
pub mod provider;
pub mod reader;
pub mod stream;
pub mod target;
pub mod track;
pub mod tracker;
pub mod uring;
pub mod wp;
