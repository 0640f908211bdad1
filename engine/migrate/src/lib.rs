//! pagehop: live migration of the memory of running Linux processes.
//!
//! This crate drives a migration: [`send`] on the source host, [`recv`] on
//! the destination, over the protocol of [`wire`]. The pieces they drive
//! live in their own crates, one per side of the wire:
//!
//! - [`sys`] (`pagehop-sys`): every syscall and ioctl, behind safe wrappers.
//! - [`mem`] (`pagehop-mem`): pages, ranges, layouts, and the
//!   `PageProvider` / `PageSink` interfaces.
//! - [`source`] (`pagehop-source`): the live process: validation, ptrace,
//!   eBPF and uffd-wp dirty tracking, freezing, the page stream, post-copy's
//!   demand server and push.
//! - [`wire`] (`pagehop-wire`): frames, messages, page batches,
//!   authentication, connections, the image format.
//! - [`criu`] (`pagehop-criu`): running CRIU's dump and restore under
//!   pagehop (`send --criu`, `recv --criu`).
//! - [`dest`] (`pagehop-dest`): the page store, the data lanes' intake, the
//!   userfaultfd handoff, installs, the post-copy fault loop.
//!
//! Here: the drivers ([`send`], [`recv`]), their [`phase`] and [`report`]s,
//! and post-copy [`working_set`] files. See ARCHITECTURE.md for the data
//! flow.
pub mod phase;
pub mod recv;
pub mod report;
pub mod send;
pub mod working_set;

pub use pagehop_criu as criu;
pub use pagehop_dest as dest;
pub use pagehop_mem as mem;
pub use pagehop_source as source;
pub use pagehop_sys as sys;
pub use pagehop_wire as wire;

pub use pagehop_source::stream::ZeroCopy;
pub use phase::{Phase, PhaseWatch};
pub use report::{
    CriuProcess, CriuRecvReport, CriuReport, CriuTaskReport, Mode, Progress, Quiet, RecvReport,
    Report, RoundReport, SwitchKind, Verify,
};
