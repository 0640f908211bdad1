//! Sections that a termination signal must not cut short.
//!
//! `pagehop send` ends on SIGINT/SIGTERM/SIGHUP from a signal thread that
//! decides what the source needs and then exits the process. Some work must
//! never be cut in the middle by that exit: a syscall injected into the
//! target (its registers are borrowed until the injector puts them back),
//! or the commit of a switchover (the phase and the `Commit` frame go
//! together). Such work runs [`shielded`](enter); the signal thread calls
//! [`close`] first, which waits until no shielded section runs and keeps
//! new ones from starting, so the signal is acted on only between them.
//!
//! Sections do not nest: a thread must not [`enter`] while it holds a
//! [`Shielded`] (a waiting [`close`] would deadlock it).
use std::sync::{RwLock, RwLockReadGuard};

static SHIELD: RwLock<()> = RwLock::new(());

/// A running shielded section; it ends when this is dropped.
#[must_use = "the section ends when this is dropped"]
pub struct Shielded {
    _guard: RwLockReadGuard<'static, ()>,
}

impl std::fmt::Debug for Shielded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shielded")
    }
}

/// Starts a shielded section; waits while [`close`] holds the shield (the
/// process is about to exit then, so the wait does not end).
pub fn enter() -> Shielded {
    Shielded {
        _guard: SHIELD.read().unwrap_or_else(|e| e.into_inner()),
    }
}

/// Waits until every shielded section has ended and keeps new ones from
/// starting for the rest of the process's life. For a thread about to end
/// the process.
pub fn close() {
    std::mem::forget(SHIELD.write().unwrap_or_else(|e| e.into_inner()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn close_waits_for_a_running_section() {
        let section = enter();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        let closer = std::thread::spawn(move || {
            close();
            flag.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closed.load(Ordering::SeqCst), "closed during a section");
        drop(section);
        closer.join().expect("closer");
        assert!(closed.load(Ordering::SeqCst));
        // Closed for good: a new section would wait forever.
        assert!(SHIELD.try_read().is_err());
    }
}
