//! Privileged integration tests: real eBPF programs, real ptrace, real
//! userfaultfds, against the real `pagehop-workload` process.
//!
//! Most need root: those are `#[ignore = "needs root"]`, so that a plain
//! `cargo test` lists them as ignored, and fail (never skip) when run without
//! root. `cargo xtask test` runs them all as root (`--include-ignored`). Run
//! them one at a time (`--test-threads=1`): they share kernel state.
mod bench;
mod common;
mod criu;
mod faults;
mod inject;
mod migrate;
mod postcopy;
mod resume;
mod track;
