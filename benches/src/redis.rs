//! An unmodified redis-server (Debian's) for the CRIU demo and benchmarks:
//! started in its own pid namespace inside a network namespace, loaded with
//! keys to a resident size, read by a client that follows it from the
//! source address to the destination's, and checked key by key afterwards.
//! The client side is `tests/apps/redis_tool.py` (standard library only).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port redis listens on, in both namespaces.
pub const PORT: &str = "6379";
/// Bytes of each value.
pub const VALUE_SIZE: usize = 512;
/// Resident bytes per key of VALUE_SIZE, measured with Debian's redis 7
/// (value, key, dict entry and allocator slack; 507k keys made 362 MiB).
const BYTES_PER_KEY: u64 = 750;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("running {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
    #[error("redis-server did not answer in {ns} within {secs} s")]
    NoAnswer { ns: String, secs: u64 },
}

/// Where the test applications live (in the source tree).
pub fn apps_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/apps"))
}

/// `program` in network namespace `ns` only (`nsenter --net`): no mount
/// namespace of its own, unlike `ip netns exec`, so that a tree started
/// this way and the CRIU that dumps it see the same mounts.
pub fn in_netns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    cmd
}

/// How many keys of [`VALUE_SIZE`] make about `mib` MiB resident.
pub fn keys_for_mib(mib: u64) -> usize {
    ((mib << 20) / BYTES_PER_KEY) as usize
}

/// A redis-server in its own pid namespace; killed with its tree on drop.
pub struct RedisTree {
    unshare: Child,
    root: i32,
}

impl RedisTree {
    /// Starts redis in `ns` and waits until it answers on `addr`.
    pub fn start(ns: &str, addr: &str) -> Result<RedisTree, RedisError> {
        let spawn = |source| RedisError::Spawn {
            what: "redis-server".into(),
            source,
        };
        let unshare = in_netns(ns, "unshare")
            .args(["-p", "-f", "setsid", "redis-server", "--port", PORT])
            .args(["--bind", "0.0.0.0", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(spawn)?;
        let mut tree = RedisTree { unshare, root: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tree.root == 0 {
                // nsenter execs unshare, which forks the root.
                let below = pagehop::sys::process::descendants(tree.unshare.id() as i32);
                tree.root = below.get(1).copied().unwrap_or(0);
            }
            let pong = in_netns(ns, "redis-cli")
                .args(["-h", addr, "-p", PORT, "ping"])
                .output()
                .map_err(|source| RedisError::Spawn {
                    what: "redis-cli".into(),
                    source,
                })?;
            if tree.root != 0 && String::from_utf8_lossy(&pong.stdout).contains("PONG") {
                return Ok(tree);
            }
            if Instant::now() >= deadline {
                return Err(RedisError::NoAnswer {
                    ns: ns.into(),
                    secs: 10,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tree's root (a host pid): what `send --criu --pid` takes.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// The root's resident memory, in MiB.
    pub fn rss_mib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.root)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    }
}

impl Drop for RedisTree {
    fn drop(&mut self) {
        for pid in pagehop::sys::process::descendants(self.unshare.id() as i32)
            .into_iter()
            .rev()
        {
            let _ = pagehop::sys::process::kill(pid, libc::SIGKILL);
        }
        let _ = self.unshare.wait();
    }
}

fn tool(ns: &str) -> Command {
    let mut cmd = in_netns(ns, "python3");
    cmd.arg(apps_dir().join("redis_tool.py"));
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<String, RedisError> {
    let out = cmd.output().map_err(|source| RedisError::Spawn {
        what: what.into(),
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(RedisError::Failed {
            what: what.into(),
            output: format!("{text} {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(text)
}

/// `SET key:i` for every i < `keys`, from namespace `ns`.
pub fn load(ns: &str, addr: &str, keys: usize) -> Result<(), RedisError> {
    let mut cmd = tool(ns);
    cmd.args([
        "load",
        addr,
        PORT,
        &keys.to_string(),
        &VALUE_SIZE.to_string(),
    ]);
    run(cmd, "loading redis").map(drop)
}

/// Every key (and every write acknowledged in `acked`) has its value at
/// `addr`, and redis takes a write and a read; returns the tool's summary.
pub fn check(ns: &str, addr: &str, keys: usize, acked: &Path) -> Result<String, RedisError> {
    let mut cmd = tool(ns);
    cmd.args([
        "check",
        addr,
        PORT,
        &keys.to_string(),
        &VALUE_SIZE.to_string(),
    ])
    .arg(acked);
    run(cmd, "checking redis")
}

/// A client reading keys continuously, from the first of `hosts` that
/// answers, switching to the next when one stops (the source freezing).
pub struct Reader {
    child: Child,
    out: PathBuf,
}

impl Reader {
    pub fn start(
        ns: &str,
        hosts: &[&str],
        keys: usize,
        seconds: f64,
        out: &Path,
    ) -> Result<Reader, RedisError> {
        let mut cmd = tool(ns);
        cmd.args(["read", &hosts.join(","), PORT, &keys.to_string()])
            .arg(VALUE_SIZE.to_string())
            .arg(format!("{seconds:.1}"))
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| RedisError::Spawn {
            what: "the redis reader".into(),
            source,
        })?;
        Ok(Reader {
            child,
            out: out.to_path_buf(),
        })
    }

    /// Waits for the reader's end; its JSON summary (`longest_gap_ms`,
    /// `answers` per host, `bad_values`, `first_seconds_latency_us`).
    pub fn finish(mut self) -> Result<serde_json::Value, RedisError> {
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::from_str(&text).map_err(|_| RedisError::Failed {
            what: "the redis reader".into(),
            output: text,
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
