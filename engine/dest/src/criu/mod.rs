//! The destination's side of CRIU mode (`recv --criu DIR`): the images as
//! they arrive ([`images`]), and the restored tree found on this host
//! ([`host`]): CRIU names tasks by their pid in the tree's own pid
//! namespace, and those are never taken as host pids.
pub mod host;
pub mod images;
