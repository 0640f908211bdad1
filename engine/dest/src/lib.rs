//! pagehop's destination side: everything that fills the new process.
//!
//! - [`store`]: the page store (memfd-backed, following the source layout).
//! - [`handoff`]: the CRIU lazy-pages convention for passing a userfaultfd over a Unix socket.
//! - [`install`]: puts pages into a process through its userfaultfd (UFFDIO_COPY / ZEROPAGE).
//! - [`faults`]: the userfaultfd fault loop (post-copy's demand paging).
//! - [`fetch`]: post-copy's destination side: faults, requests, background installs, reconnects.
pub mod faults;
pub mod fetch;
pub mod handoff;
pub mod install;
pub mod store;
