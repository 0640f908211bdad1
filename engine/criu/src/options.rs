//! The CRIU options an operator passes through (`--criu-opt`,
//! `--criu-restore-opt`): anything CRIU takes, except what pagehop sets
//! itself or what would take the source's fate out of pagehop's hands.

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("CRIU option {option:?} cannot be passed through: {why}")]
    Refused { option: String, why: &'static str },
}

/// Options pagehop sets on every run, and why each is refused.
const OWNED: &[(&str, &str)] = &[
    ("-t", "pagehop names the tree's root itself"),
    ("--tree", "pagehop names the tree's root itself"),
    ("-D", "pagehop chooses the image directory"),
    ("--images-dir", "pagehop chooses the image directory"),
    ("-W", "pagehop runs CRIU in the image directory"),
    ("--work-dir", "pagehop runs CRIU in the image directory"),
    ("-o", "pagehop keeps CRIU's log in the image directory"),
    (
        "--log-file",
        "pagehop keeps CRIU's log in the image directory",
    ),
    ("--lazy-pages", "pagehop always runs CRIU lazily"),
    ("--ps-socket", "pagehop holds the page-server socket"),
    (
        "--page-server",
        "pagehop moves the memory, not CRIU's page server",
    ),
    ("--port", "pagehop holds the page-server socket"),
    ("--address", "pagehop holds the page-server socket"),
    ("--status-fd", "pagehop reads CRIU's status itself"),
    ("--pidfile", "pagehop reads the restored pid itself"),
    ("-d", "pagehop always restores detached"),
    ("--restore-detached", "pagehop always restores detached"),
    (
        "-R",
        "the source's fate is pagehop's decision: it is left stopped for pagehop",
    ),
    (
        "--leave-running",
        "the source's fate is pagehop's decision: it is left stopped for pagehop",
    ),
    ("-s", "pagehop always leaves the source stopped"),
    (
        "--leave-stopped",
        "pagehop always leaves the source stopped",
    ),
    ("--track-mem", "pagehop tracks memory itself"),
    (
        "--prev-images-dir",
        "pagehop moves the memory; there are no previous images",
    ),
    (
        "--pre-dump-mode",
        "pagehop moves the memory; there is no pre-dump",
    ),
    ("-v", "pagehop sets the log level"),
    ("-v0", "pagehop sets the log level"),
    ("-v1", "pagehop sets the log level"),
    ("-v2", "pagehop sets the log level"),
    ("-v3", "pagehop sets the log level"),
    ("-v4", "pagehop sets the log level"),
    ("--verbosity", "pagehop sets the log level"),
];

/// Refuses an option pagehop sets itself (as `--opt`, `--opt=value` or, for
/// a short option, `-oVALUE`).
pub fn check_user_options(options: &[String]) -> Result<(), OptionsError> {
    for option in options {
        let name = option.split_once('=').map_or(option.as_str(), |(n, _)| n);
        let hit = OWNED.iter().find(|(owned, _)| {
            name == *owned
                || (owned.len() == 2
                    && !owned.starts_with("--")
                    && name.starts_with(owned)
                    && !name.starts_with("--"))
        });
        if let Some((_, why)) = hit {
            return Err(OptionsError::Refused {
                option: option.clone(),
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn passed_through_options_are_kept() {
        check_user_options(&opts(&[
            "--tcp-close",
            "--shell-job",
            "--ext-unix-sk",
            "--external",
            "mnt[]:m",
            "--tcp-established",
        ]))
        .expect("ordinary options pass");
    }

    #[test]
    fn options_pagehop_owns_are_refused() {
        for bad in [
            "--leave-running",
            "-R",
            "--images-dir=/x",
            "-D/x",
            "--ps-socket",
            "--lazy-pages",
            "-v4",
            "--pidfile=/tmp/p",
        ] {
            let err = check_user_options(&opts(&[bad])).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
        // A long option that starts like a refused short one is fine.
        check_user_options(&opts(&["--display-stats"])).expect("not -d");
    }
}
