//! Privileged integration tests: real eBPF programs, real ptrace, real
//! userfaultfds, against the real `pagehop-workload` process.
//!
//! They need root. Without it they skip with a printed reason, unless
//! `PAGEHOP_REQUIRE_PRIVILEGED` is set (as `cargo xtask test` and CI do), in
//! which case a skip is a failure. Run them one at a time
//! (`--test-threads=1`): they share kernel state.
mod bench;
mod common;
mod faults;
mod inject;
mod migrate;
mod postcopy;
mod resume;
mod track;
