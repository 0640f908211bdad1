//! CRIU's reason for a failure, from its log.
use std::path::Path;

/// Error lines CRIU logs on every run where root lacks CAP_SYS_RESOURCE
/// (containers, this VM kind), whatever the outcome: not a reason.
const HARMLESS: &[&str] = &["rlimit: Can't setup RLIMIT_NOFILE for self"];
/// Error lines CRIU's reason is made of, at most.
const REASON_LINES: usize = 4;

/// CRIU's own words for why a run failed: the last few `Error` lines of
/// its log (`(00.012345) Error (criu/sk-inet.c:193): ...`), without the
/// timestamps; else the log's last lines; else a note that there is none.
pub fn log_reason(log: &Path) -> String {
    let Ok(text) = std::fs::read(log) else {
        return format!("no CRIU log at {}", log.display());
    };
    let text = String::from_utf8_lossy(&text);
    let strip = |line: &str| -> String {
        let line = line.trim();
        let line = match line.strip_prefix('(') {
            Some(rest) => rest.split_once(')').map_or(line, |(_, r)| r.trim_start()),
            None => line,
        };
        line.chars().take(300).collect()
    };
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .filter(|l| !HARMLESS.iter().any(|h| l.contains(h)))
        .map(strip)
        .collect();
    let picked: Vec<String> = if errors.is_empty() {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(strip)
            .collect()
    } else {
        errors
    };
    let tail = &picked[picked.len().saturating_sub(REASON_LINES)..];
    if tail.is_empty() {
        return format!("CRIU's log {} is empty", log.display());
    }
    tail.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_criu_s_error_lines() {
        let dir = std::env::temp_dir().join(format!("pagehop-criu-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("dump.log");
        std::fs::write(
            &log,
            "(00.000010) Version: 4.2.1\n(00.000020) Error (criu/util.c:1534): rlimit: Can't setup \
             RLIMIT_NOFILE for self: Operation not permitted\n(00.003000) Error (criu/sk-unix.c:919): sk unix: \
             Can't dump external socket\n(00.003100) Error (criu/cr-dump.c:2099): Dumping FAILED.\n",
        )
        .expect("write");
        let reason = log_reason(&log);
        assert_eq!(
            reason,
            "Error (criu/sk-unix.c:919): sk unix: Can't dump external socket; \
             Error (criu/cr-dump.c:2099): Dumping FAILED."
        );
        std::fs::write(&log, "(00.1) one\n(00.2) two\n").expect("write");
        assert_eq!(log_reason(&log), "one; two");
        std::fs::write(&log, "").expect("write");
        assert!(log_reason(&log).contains("empty"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(log_reason(&log).contains("no CRIU log"));
    }
}
