//! Finding the CRIU binary and checking its version.
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `scripts/setup-criu.sh` installs its CRIU wrapper.
pub const DEFAULT_CRIU: &str = "/opt/pagehop/bin/criu";
/// Environment variable naming the CRIU binary when `--criu` is not given.
pub const CRIU_ENV: &str = "PAGEHOP_CRIU";
/// The oldest CRIU pagehop works with.
pub const MIN_VERSION: Version = Version {
    major: 4,
    minor: 2,
    patch: 0,
};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "no CRIU found (tried {}); install it with scripts/setup-criu.sh or name it with --criu PATH",
        .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error("running {path} --version")]
    Run {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} --version printed no \"Version: X.Y\" line: {output:?}")]
    NoVersion { path: PathBuf, output: String },
    #[error(
        "CRIU {version} at {path} is too old: pagehop needs {MIN_VERSION} or later. CRIU before \
         4.2 cannot dump a process holding an inet socket on kernels whose \
         getsockopt(SO_PASSCRED) on TCP sockets returns EOPNOTSUPP (6.x kernels such as \
         this one), and its dump fails with \"Can't get 1:16 opt\"; install 4.2.1 with \
         scripts/setup-criu.sh"
    )]
    TooOld { path: PathBuf, version: Version },
}

/// A CRIU version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// The `Version: X.Y[.Z]` line of `criu --version`.
    pub fn parse(output: &str) -> Option<Version> {
        let text = output
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))?
            .trim();
        // "4.2.1", "4.2", or with a suffix ("4.2-rc1"): digits and dots first.
        let numeric: String = text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

/// A CRIU binary pagehop can work with.
#[derive(Clone, Debug)]
pub struct Criu {
    path: PathBuf,
    version: Version,
}

impl Criu {
    /// `explicit` (`--criu`), else `$PAGEHOP_CRIU`, else [`DEFAULT_CRIU`],
    /// else `criu` on `PATH`; checked with `--version`.
    pub fn find(explicit: Option<&Path>) -> Result<Criu, ToolError> {
        if let Some(path) = explicit {
            return Criu::at(path);
        }
        if let Some(path) = std::env::var_os(CRIU_ENV).filter(|p| !p.is_empty()) {
            return Criu::at(Path::new(&path));
        }
        let mut tried = vec![PathBuf::from(DEFAULT_CRIU)];
        if Path::new(DEFAULT_CRIU).exists() {
            return Criu::at(Path::new(DEFAULT_CRIU));
        }
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join("criu");
            if candidate.is_file() {
                return Criu::at(&candidate);
            }
            tried.push(candidate);
        }
        Err(ToolError::NotFound { tried })
    }

    /// The CRIU at `path`, if it runs and is recent enough.
    pub fn at(path: &Path) -> Result<Criu, ToolError> {
        let out = Command::new(path)
            .arg("--version")
            .output()
            .map_err(|source| ToolError::Run {
                path: path.to_path_buf(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let version = Version::parse(&text).ok_or_else(|| ToolError::NoVersion {
            path: path.to_path_buf(),
            output: text.trim().chars().take(200).collect(),
        })?;
        if version < MIN_VERSION {
            return Err(ToolError::TooOld {
                path: path.to_path_buf(),
                version,
            });
        }
        Ok(Criu {
            path: path.to_path_buf(),
            version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// A command running this CRIU, with the termination signals unblocked
    /// (pagehop blocks them for its signal thread).
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        pagehop_sys::unblock_termination_signals_in_child(&mut cmd);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_criu_output() {
        let v = |s| Version::parse(s);
        assert_eq!(
            v("Version: 4.2.1\n"),
            Some(Version {
                major: 4,
                minor: 2,
                patch: 1
            })
        );
        assert_eq!(
            v("Version: 4.2\nGitID: v4.2\n").map(|v| v.to_string()),
            Some("4.2.0".into())
        );
        assert_eq!(v("Version: 4.3-rc1\n").map(|v| v.minor), Some(3));
        assert!(v("Version: 4.1.1").unwrap() < MIN_VERSION);
        assert!(v("Version: 3.17.1").unwrap() < MIN_VERSION);
        assert!(v("Version: 10.0").unwrap() > MIN_VERSION);
        assert_eq!(v("criu: unknown option"), None);
        assert_eq!(v("Version: x"), None);
        assert_eq!(v(""), None);
    }

    #[test]
    fn an_old_criu_is_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("pagehop-old-criu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fake = dir.join("criu");
        std::fs::write(&fake, "#!/bin/sh\necho 'Version: 4.1.1'\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = Criu::at(&fake).expect_err("4.1.1 is too old");
        let msg = err.to_string();
        assert!(
            msg.contains("4.1.1") && msg.contains("SO_PASSCRED"),
            "{msg}"
        );
        std::fs::write(&fake, "#!/bin/sh\necho 'Version: 4.2.1'\n").expect("write");
        assert_eq!(Criu::at(&fake).expect("4.2.1 works").version().patch, 1);
        std::fs::write(&fake, "#!/bin/sh\necho hello\n").expect("write");
        assert!(matches!(Criu::at(&fake), Err(ToolError::NoVersion { .. })));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            Criu::at(&dir.join("missing")),
            Err(ToolError::Run { .. })
        ));
    }
}
