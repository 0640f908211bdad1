//! pagehop's destination side: everything that fills the new process.
//!
//! - [`store`]: the page store (memfd-backed, following the source layout).
//! - [`intake`]: the data lanes' receiving end: frames into the store, per round.
//! - [`handoff`]: the CRIU lazy-pages convention for passing a userfaultfd over a Unix socket.
//! - [`uffd_sink`]: a restored process's userfaultfd as a page sink.
//! - [`install`]: puts pages into a process through its userfaultfd (UFFDIO_COPY / ZEROPAGE).
//! - [`faults`]: the userfaultfd fault loop (post-copy's demand paging).
//! - [`restore`]: starts the destination process and takes its userfaultfd.
//! - [`tree`]: the restored process tree, signalled through pidfds.
//! - [`criu`]: CRIU mode: the images as they arrive, the restored tree on this host.
//! - [`fetch`]: post-copy's destination side: faults, requests, background installs, reconnects.
pub mod criu;
pub mod faults;
pub mod fetch;
pub mod handoff;
pub mod install;
pub mod intake;
pub mod restore;
pub mod store;
pub mod tree;
pub mod uffd_sink;
