//! Resume mode (`pagehop-workload --resume`): carry on a migrated workload.
//!
//! 1. Map the arena empty at the source's address ([`Arena::map_empty`]).
//! 2. Create a userfaultfd, register the whole arena in MISSING mode, and hand
//!    it to pagehop with our pid over the socket named by
//!    [`handoff::SOCKET_ENV`] ([`handoff::send_uffd`]); close our copy.
//! 3. Read the header: the read blocks in its page fault until pagehop
//!    installs the page. Check it against the command line, redo the page
//!    writes that the freeze interrupted ([`Arena::finish_interrupted_writes`]),
//!    then check every page ([`Arena::check_invariants`]), which faults in
//!    the rest.
//! 4. Send the restore-finished marker; the caller starts the writers from
//!    the per-thread state in the header.
//!
//! The arena's shape (`--size-mib`, `--threads`, `--arena-addr`) and its
//! `--seed`, `--pattern` and `--fill` must be those of the source run; the
//! header records them and a mismatch is an error. Pacing options
//! (`--write-mbps`, `--tick-ms`, `--report-ms`) may differ.
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::arena::{Arena, LAYOUT_VERSION, MAGIC};
use super::check::InvariantViolation;
use super::{WorkloadConfig, sys};
use crate::handoff::{self, HandoffError};
use crate::sys::uffd;

/// Errors of resuming a migrated arena.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("creating a userfaultfd")]
    Userfaultfd(#[source] io::Error),
    #[error("UFFDIO_API handshake")]
    Api(#[source] io::Error),
    #[error("registering the arena {start:#x}+{len:#x} with the userfaultfd (MISSING mode)")]
    Register {
        start: usize,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("handing the userfaultfd over")]
    Handoff(#[from] HandoffError),
    #[error(
        "the source's arena has {field} {source_value}, this run has {ours}: resume with the source run's --size-mib, --threads, --seed, --pattern and --fill"
    )]
    Mismatch {
        field: &'static str,
        source_value: u64,
        ours: u64,
    },
}

/// Registers `arena` with a new userfaultfd and hands it to pagehop at
/// `socket`. Returns the handoff connection; our copy of the uffd is closed.
pub(super) fn hand_over(arena: &Arena, socket: &Path) -> Result<UnixStream, ResumeError> {
    // Without privileges (vm.unprivileged_userfaultfd = 0) only a
    // user-mode-only uffd may be created; it suffices, as the workload never
    // makes the kernel touch the arena.
    let fd = uffd::userfaultfd(libc::O_CLOEXEC)
        .or_else(|_| uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY))
        .map_err(ResumeError::Userfaultfd)?;
    uffd::api(fd.as_fd(), 0).map_err(ResumeError::Api)?;
    let (start, len) = (arena.start(), arena.layout().size());
    uffd::register(
        fd.as_fd(),
        start as u64,
        len as u64,
        uffd::UFFDIO_REGISTER_MODE_MISSING,
    )
    .map_err(|source| ResumeError::Register { start, len, source })?;
    let stream = handoff::send_uffd(socket, sys::getpid(), fd.as_fd())?;
    drop(fd);
    Ok(stream)
}

/// Checks the installed arena: the header first (which blocks until pagehop
/// has installed it), against `config`, then every page. The outer error is
/// a command line that does not match the source; the inner one a bad page.
pub(super) fn check(
    arena: &Arena,
    config: &WorkloadConfig,
) -> Result<Result<(), InvariantViolation>, ResumeError> {
    let header = arena.header();
    if header.magic != MAGIC || header.version != LAYOUT_VERSION {
        let field = if header.magic != MAGIC {
            "magic"
        } else {
            "version"
        };
        return Ok(Err(InvariantViolation::Header {
            addr: arena.start(),
            field,
        }));
    }
    let layout = arena.layout();
    let fields = [
        (
            "page size",
            u64::from(header.page_size),
            layout.page_size as u64,
        ),
        ("size in bytes", header.size, layout.size() as u64),
        ("threads", u64::from(header.threads), layout.threads as u64),
        ("seed", header.seed, config.seed),
        ("pattern", u64::from(header.pattern), config.pattern as u64),
        ("fill", u64::from(header.fill), config.fill as u64),
    ];
    if let Some(&(field, source_value, ours)) = fields.iter().find(|(_, a, b)| a != b) {
        return Err(ResumeError::Mismatch {
            field,
            source_value,
            ours,
        });
    }
    // A writer frozen mid-page left that page half written: redo it from
    // its table entry, as the writer would have finished it.
    if arena.finish_interrupted_writes().is_err() {
        return Ok(Err(InvariantViolation::Header {
            addr: arena.start(),
            field: "slot in_flight",
        }));
    }
    Ok(arena.check_invariants())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Fill, Layout, Pattern};

    #[test]
    fn checks_the_header_against_the_command_line() {
        let layout = Layout::new(1 << 20, crate::sys::page_size(), 2).expect("layout");
        let arena = Arena::create(
            0x6300_0000_0000,
            layout,
            5,
            Pattern::Skew,
            Fill::Compressible,
        )
        .expect("create arena");
        let config = WorkloadConfig {
            seed: 5,
            pattern: Pattern::Skew,
            fill: Fill::Compressible,
            threads: 2,
            ..WorkloadConfig::default()
        };
        assert_eq!(check(&arena, &config).expect("matching options"), Ok(()));

        let other_seed = WorkloadConfig {
            seed: 6,
            ..config.clone()
        };
        let err = check(&arena, &other_seed).expect_err("seed differs");
        assert!(
            matches!(
                err,
                ResumeError::Mismatch {
                    field: "seed",
                    source_value: 5,
                    ours: 6
                }
            ),
            "{err}"
        );
        let other_pattern = WorkloadConfig {
            pattern: Pattern::Seq,
            ..config.clone()
        };
        let err = check(&arena, &other_pattern).expect_err("pattern differs");
        assert!(
            matches!(
                err,
                ResumeError::Mismatch {
                    field: "pattern",
                    ..
                }
            ),
            "{err}"
        );
        let other_fill = WorkloadConfig {
            fill: Fill::Random,
            ..config.clone()
        };
        let err = check(&arena, &other_fill).expect_err("fill differs");
        assert!(
            matches!(
                err,
                ResumeError::Mismatch {
                    field: "fill",
                    source_value: 1,
                    ours: 0
                }
            ),
            "{err}"
        );

        // A header that is not an arena's is a bad page, not a mismatch.
        // SAFETY: the magic is a plain u64 of our own header; no writer exists.
        unsafe { (arena.start() as *mut u64).write_volatile(0) };
        let bad = check(&arena, &config).expect("no mismatch to report");
        assert!(
            matches!(bad, Err(InvariantViolation::Header { field: "magic", .. })),
            "{bad:?}"
        );
    }
}
