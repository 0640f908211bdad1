//! The command line's logger: the library crates log through `log`; this
//! prints each record to stderr as `pagehop <command>: <message>`.
//! `PAGEHOP_LOG` sets the level (`error`, `warn`, `info` (default), `debug`,
//! `trace`, or `off`).
use log::{LevelFilter, Log, Metadata, Record};

struct Stderr {
    command: &'static str,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("pagehop {}: {}", self.command, record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger for `command` (once per process).
pub fn init(command: &'static str) {
    let level = std::env::var("PAGEHOP_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let logger: &'static Stderr = Box::leak(Box::new(Stderr { command }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
