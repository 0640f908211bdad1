//! Resume mode (`pagehop-workload --resume`): carry on a migrated workload.
//!
//! 1. Map the arena empty at the source's address ([`Arena::map_empty`]).
//! 2. Create a userfaultfd with the features of post-copy's fault loop
//!    ([`faults::FEATURES`]: fork, remap, remove and unmap events, thread
//!    ids; without them if the kernel refuses), register the whole arena in
//!    MISSING mode, and hand it to pagehop with our pid over the socket
//!    named by [`handoff::SOCKET_ENV`] ([`handoff::send_uffd`]); close our
//!    copy. From here on the arena is never unmapped by us
//!    ([`Arena::keep_mapped`]).
//! 3. Read the header: the read blocks in its page fault until pagehop
//!    installs the page. Check it against the command line, redo the page
//!    writes that the freeze interrupted ([`Arena::finish_interrupted_writes`])
//!    and check the header's own sanity ([`prepare`]). Then, unless lazy
//!    (`--resume-lazy`), check every page ([`check`], on several threads),
//!    which faults in the rest concurrently.
//! 4. Send the restore-finished marker; the caller starts the writers from
//!    the per-thread state in the header. A lazy resume's pages fault in as
//!    the writers (and a forked child) touch them, served by pagehop's fault
//!    loop.
//!
//! The arena's shape (`--size-mib`, `--threads`, `--arena-addr`) and its
//! `--seed`, `--pattern` and `--fill` must be those of the source run; the
//! header records them and a mismatch is an error. Pacing options
//! (`--write-mbps`, `--tick-ms`, `--report-ms`) may differ.
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::arena::{Arena, LAYOUT_VERSION, MAGIC};
use super::check::InvariantViolation;
use super::{WorkloadConfig, sys};
use pagehop_dest::faults;
use pagehop_dest::handoff::{self, HandoffError};
use pagehop_sys::uffd;

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
    let fd = negotiated_userfaultfd()?;
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

/// A new userfaultfd on which `UFFDIO_API` has negotiated
/// [`faults::FEATURES`], or no features if the kernel refuses them (noted on
/// stderr; the refused fd is dropped, as a failed `UFFDIO_API` may leave it
/// unusable).
fn negotiated_userfaultfd() -> Result<OwnedFd, ResumeError> {
    let fd = new_userfaultfd()?;
    let refused = match uffd::api(fd.as_fd(), faults::FEATURES) {
        Ok(_) => return Ok(fd),
        Err(refused) => refused,
    };
    drop(fd);
    let hint = if refused.raw_os_error() == Some(libc::EPERM) {
        " (UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE)"
    } else {
        ""
    };
    eprintln!(
        "pagehop-workload: the kernel refused userfaultfd features {:#x}: {refused}{hint}; \
         going on without them: pagehop will not see this process's forks, mremaps, \
         munmaps and MADV_DONTNEEDs in the arena",
        faults::FEATURES
    );
    let fd = new_userfaultfd()?;
    uffd::api(fd.as_fd(), 0).map_err(ResumeError::Api)?;
    Ok(fd)
}

/// A new userfaultfd, before `UFFDIO_API`.
fn new_userfaultfd() -> Result<OwnedFd, ResumeError> {
    // Without privileges (vm.unprivileged_userfaultfd = 0) only a
    // user-mode-only uffd may be created; it suffices, as the workload never
    // makes the kernel touch the arena.
    uffd::userfaultfd(libc::O_CLOEXEC)
        .or_else(|_| uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY))
        .map_err(ResumeError::Userfaultfd)
}

/// Checks the installed arena: [`prepare`], then every data page, on
/// `threads` threads ([`Arena::check_invariants_parallel`]). The outer error
/// is a command line that does not match the source; the inner one a bad
/// page.
pub(super) fn check(
    arena: &Arena,
    config: &WorkloadConfig,
    threads: usize,
) -> Result<Result<(), InvariantViolation>, ResumeError> {
    if let Err(bad) = prepare(arena, config)? {
        return Ok(Err(bad));
    }
    Ok(arena.check_invariants_parallel(threads))
}

/// Readies the installed arena for the writers without touching its data
/// pages (but the ones whose writes the freeze interrupted): checks the
/// header (which blocks until pagehop has installed it) against `config`,
/// finishes the interrupted writes, and checks the header's own sanity
/// (slot cursors and carries the writers will start from). The outer error
/// is a command line that does not match the source; the inner one a bad
/// header.
pub(super) fn prepare(
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
    Ok(arena.check_header_invariants())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::{Fill, Layout, Pattern};

    #[test]
    fn checks_the_header_against_the_command_line() {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 2).expect("layout");
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
        assert_eq!(check(&arena, &config, 3).expect("matching options"), Ok(()));
        assert_eq!(prepare(&arena, &config).expect("matching options"), Ok(()));

        let other_seed = WorkloadConfig {
            seed: 6,
            ..config.clone()
        };
        let err = check(&arena, &other_seed, 1).expect_err("seed differs");
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
        let err = prepare(&arena, &other_pattern).expect_err("pattern differs");
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
        let err = check(&arena, &other_fill, 2).expect_err("fill differs");
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

        // Only the full check reads the data pages.
        let addr = arena.data_page_addr(layout.data_pages - 1);
        // SAFETY: a word of a data page of our own arena; no writer exists.
        unsafe { (addr as *mut u64).write_volatile(!(addr as *const u64).read_volatile()) };
        assert_eq!(prepare(&arena, &config).expect("matching options"), Ok(()));
        let bad = check(&arena, &config, 4).expect("matching options");
        assert!(
            matches!(bad, Err(InvariantViolation::Page { addr: a, .. }) if a == addr),
            "{bad:?}"
        );
        // SAFETY: as above, undoing the corruption.
        unsafe { (addr as *mut u64).write_volatile(!(addr as *const u64).read_volatile()) };

        // A header that is not an arena's is a bad page, not a mismatch.
        // SAFETY: the magic is a plain u64 of our own header; no writer exists.
        unsafe { (arena.start() as *mut u64).write_volatile(0) };
        let bad = check(&arena, &config, 2).expect("no mismatch to report");
        assert!(
            matches!(bad, Err(InvariantViolation::Header { field: "magic", .. })),
            "{bad:?}"
        );
    }

    #[test]
    fn prepare_finishes_interrupted_writes_and_checks_the_slots() {
        let layout = Layout::new(1 << 20, pagehop_sys::page_size(), 2).expect("layout");
        let arena = Arena::create(0x6310_0000_0000, layout, 1, Pattern::Uniform, Fill::Random)
            .expect("create arena");
        let config = WorkloadConfig {
            threads: 2,
            ..WorkloadConfig::default()
        };
        // A write frozen half-way: the page is half zeros.
        let index = layout.shard(1).start + 1;
        let addr = arena.data_page_addr(index);
        // SAFETY: the second half of a data page of our own arena; no writer exists.
        unsafe { ((addr + layout.page_size / 2) as *mut u8).write_bytes(0, layout.page_size / 2) };
        let slot = &arena.header().slots[1];
        slot.in_flight.store(index + 1, Ordering::Relaxed);
        assert_eq!(prepare(&arena, &config).expect("matching"), Ok(()));
        assert_eq!(slot.in_flight(), None);
        arena.check_invariants().expect("the write was finished");

        // A cursor the writer could not start from is a bad header.
        slot.cursor.store(layout.data_pages, Ordering::Relaxed);
        let bad = prepare(&arena, &config).expect("matching");
        assert!(
            matches!(
                bad,
                Err(InvariantViolation::Header {
                    field: "slot cursor",
                    ..
                })
            ),
            "{bad:?}"
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn negotiates_a_usable_userfaultfd() {
        let fd = match negotiated_userfaultfd() {
            Ok(fd) => fd,
            Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
        };
        let ps = pagehop_sys::page_size();
        let base = sys::map_anywhere(ps).expect("map");
        uffd::register(
            fd.as_fd(),
            base.as_ptr() as u64,
            ps as u64,
            uffd::UFFDIO_REGISTER_MODE_MISSING,
        )
        .expect("register after UFFDIO_API");
        drop(fd);
        // SAFETY: ours, never touched, no longer used.
        unsafe { sys::unmap(base, ps) }.expect("unmap");
    }
}
