//! Running CRIU under pagehop. CRIU recreates a process tree (threads,
//! registers, files, sockets, namespaces); pagehop moves its memory.
//!
//! - [`Criu`]: the binary (`--criu PATH`, `$PAGEHOP_CRIU`, the setup's
//!   wrapper, or `criu` on `PATH`), refused below [`MIN_VERSION`].
//! - [`LazyDump`]: `criu dump --lazy-pages --leave-stopped` on a tree pagehop
//!   already stopped. CRIU writes every image except the lazy pages, then
//!   serves pages on a socket pair pagehop holds (`--ps-socket`: no TCP port
//!   that anyone on the host could read memory from). pagehop never asks it
//!   for a page (it reads the frozen tree itself) and ends it with
//!   `PS_IOV_CLOSE`; CRIU then leaves the tree stopped and untraced, and
//!   pagehop alone decides whether it dies or runs on.
//! - [`LazyRestore`]: `criu restore --lazy-pages -d` in an image directory,
//!   whose tasks hand their userfaultfds to the lazy-pages daemon listening
//!   in that directory (pagehop's, see `pagehop_dest::handoff`).
//!
//! - [`KdatCache`]: CRIU's kernel-feature cache in place before the freeze,
//!   so that neither the dump nor the restore probes the kernel inside it.
//!
//! CRIU's own reason for a failure is taken from its log ([`log_reason`]).
mod dump;
mod kdat;
mod log;
mod options;
mod restore;
mod tool;

pub use dump::{DUMP_LOG, DumpError, DumpRequest, LazyDump};
pub use kdat::KdatCache;
pub use log::log_reason;
pub use options::{OptionsError, check_user_options};
pub use restore::{LazyRestore, RESTORE_LOG, RESTORE_PIDFILE, RestoreError, RestoreRequest};
pub use tool::{CRIU_ENV, Criu, DEFAULT_CRIU, MIN_VERSION, ToolError, Version};
