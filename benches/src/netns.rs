//! Two network namespaces joined by a veth pair: the "two hosts" that tests,
//! the demo and the benchmark harness migrate between.
//!
//! Created with iproute2 (`ip netns`, `ip link`), torn down on drop, so that
//! an interrupted run leaves nothing behind. Addresses are in a /30 of the
//! namespaces' own; nothing outside them is ever addressed.
use std::io;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("running `{command}` (is iproute2 installed? scripts/setup.sh installs it)")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// Two namespaces `<prefix>-a` and `<prefix>-b` joined by a veth pair.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub addr_a: String,
    pub addr_b: String,
    pub dev_a: String,
    pub dev_b: String,
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl NetnsPair {
    /// Creates the pair; `index` (0..=63) picks the subnet so that several
    /// pairs can coexist.
    pub fn create(prefix: &str, index: u8) -> Result<Self, NetnsError> {
        let pair = Self {
            a: format!("{prefix}-a"),
            b: format!("{prefix}-b"),
            addr_a: format!("10.213.{index}.1"),
            addr_b: format!("10.213.{index}.2"),
            dev_a: format!("{prefix}-va"),
            dev_b: format!("{prefix}-vb"),
        };
        // Leftovers of an interrupted run go first.
        pair.destroy();
        let build = || -> Result<(), NetnsError> {
            ip(&["netns", "add", &pair.a])?;
            ip(&["netns", "add", &pair.b])?;
            ip(&[
                "link",
                "add",
                &pair.dev_a,
                "netns",
                &pair.a,
                "type",
                "veth",
                "peer",
                "name",
                &pair.dev_b,
                "netns",
                &pair.b,
            ])?;
            for (ns, dev, addr) in [
                (&pair.a, &pair.dev_a, &pair.addr_a),
                (&pair.b, &pair.dev_b, &pair.addr_b),
            ] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        if let Err(e) = build() {
            pair.destroy();
            return Err(e);
        }
        Ok(pair)
    }

    /// Limits the a → b direction to `rate` (a tc rate such as `20mbit`) with
    /// a token-bucket filter.
    pub fn shape(&self, rate: &str) -> Result<(), NetnsError> {
        tbf(&self.a, &self.dev_a, rate, "64kb")
    }

    /// Shapes both directions to `rate_bits` per second with tbf: a burst
    /// of 10 ms at that rate (at least 64 KiB, so that the bucket refills
    /// between timer ticks) and up to 400 ms of queue.
    pub fn shape_both(&self, rate_bits: u64) -> Result<(), NetnsError> {
        let burst = (rate_bits / 8 / 100).max(64 << 10).to_string();
        let rate = format!("{rate_bits}bit");
        tbf(&self.a, &self.dev_a, &rate, &burst)?;
        tbf(&self.b, &self.dev_b, &rate, &burst)
    }

    /// Delay, jitter, loss and (optionally) a rate limit in both directions
    /// with netem (see [`netem_available`]). Its queue holds the delay plus
    /// 400 ms at the rate (as [`Self::shape_both`] does), at least 1000
    /// packets, so that netem itself drops nothing it was not asked to.
    pub fn impair_both(
        &self,
        delay_ms: f64,
        jitter_ms: f64,
        loss_percent: f64,
        rate_bits: Option<u64>,
    ) -> Result<(), NetnsError> {
        let queue_s = (delay_ms + jitter_ms) / 1e3 + 0.4;
        let limit = rate_bits.map_or(10_000, |bits| {
            ((bits as f64 / 8.0 * queue_s / 1500.0) as u64).max(1000)
        });
        let mut netem = vec![
            "limit".to_string(),
            limit.to_string(),
            "delay".to_string(),
            format!("{delay_ms}ms"),
            format!("{jitter_ms}ms"),
            "loss".to_string(),
            format!("{loss_percent}%"),
        ];
        if let Some(bits) = rate_bits {
            netem.extend(["rate".to_string(), format!("{bits}bit")]);
        }
        for (ns, dev) in [(&self.a, &self.dev_a), (&self.b, &self.dev_b)] {
            let mut args = vec![
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
            ];
            args.extend(netem.iter().map(String::as_str));
            ip(&args)?;
        }
        Ok(())
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    fn destroy(&self) {
        for ns in [&self.a, &self.b] {
            remove(ns);
        }
    }
}

/// A token-bucket filter as the root qdisc of `dev` in `ns`, with 400 ms of queue.
fn tbf(ns: &str, dev: &str, rate: &str, burst: &str) -> Result<(), NetnsError> {
    ip(&[
        "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
        "burst", burst, "latency", "400ms",
    ])
}

/// Deletes namespace `ns` if it exists (for cleanup paths that cannot hold
/// a [`NetnsPair`], such as a signal handler).
/// Deletes namespace `ns` and kills what still runs in it (a restored
/// service, a CRIU that did not end: they are not in any group the bench
/// started).
pub fn remove(ns: &str) {
    kill_processes(ns);
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// Kills every process in network namespace `ns`.
pub fn kill_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse() {
            let _ = pagehop::sys::process::kill(pid, libc::SIGKILL);
        }
    }
}

/// Whether this kernel has the netem qdisc (delay, jitter, loss): tried on
/// the loopback device of a scratch namespace. The error is tc's own words.
pub fn netem_available() -> Result<(), NetnsError> {
    // A fixed name: a probe killed midway is deleted by the next one.
    let ns = "phnetem-probe";
    remove(ns);
    ip(&["netns", "add", ns])?;
    let tried = ip(&[
        "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
    ]);
    remove(ns);
    tried
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        self.destroy();
    }
}
