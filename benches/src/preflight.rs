//! Checks made before a bench run starts anything: root, the tools, the
//! kernel features the scenarios need, and memory for the largest arena.
//! A scenario that cannot run as written is refused, never run differently
//! (no delay silently dropped, no unshaped link instead of a shaped one).
use std::process::{Command, Stdio};

use super::scenario::{Kind, Scenario};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "pagehop bench needs root (network namespaces, tc, ptrace and userfaultfd of another process)"
    )]
    NotRoot,
    #[error("{tool} is not installed or does not run ({why}); {hint}")]
    MissingTool {
        tool: &'static str,
        why: String,
        hint: &'static str,
    },
    #[error(
        "scenario {scenario:?} asks for {what}, which needs the netem qdisc, and this kernel does not have it \
         (tc said: {tc}); remove delay_ms, jitter_ms and loss_percent, or run it on a kernel with CONFIG_NET_SCH_NETEM"
    )]
    NoNetem {
        scenario: String,
        what: String,
        tc: String,
    },
    #[error("scenario {scenario:?} migrates redis under CRIU: {why}; run `cargo xtask setup`")]
    NoCriu { scenario: String, why: String },
    #[error(
        "scenario {scenario:?} needs about {need_mib} MiB (a {size_mib} MiB arena on the source, the destination \
         and in transit) but only {available_mib} MiB are available"
    )]
    Memory {
        scenario: String,
        size_mib: u64,
        need_mib: u64,
        available_mib: u64,
    },
}

/// Everything the scenarios need, checked in the order a user would fix it.
pub fn check(scenarios: &[Scenario]) -> Result<(), PreflightError> {
    if pagehop::sys::effective_uid() != 0 {
        return Err(PreflightError::NotRoot);
    }
    let apt = "apt-get install iproute2 iperf3, or `cargo xtask setup`";
    tool("ip", &["-V"], apt)?;
    tool("tc", &["-V"], apt)?;
    tool("iperf3", &["--version"], apt)?;
    if let Some(s) = scenarios.iter().find(|s| s.network.needs_netem())
        && let Err(e) = crate::netns::netem_available()
    {
        let n = &s.network;
        let what = [
            (n.delay_ms > 0.0).then(|| format!("{} ms of delay", n.delay_ms)),
            (n.jitter_ms > 0.0).then(|| format!("{} ms of jitter", n.jitter_ms)),
            (n.loss_percent > 0.0).then(|| format!("{}% loss", n.loss_percent)),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ");
        return Err(PreflightError::NoNetem {
            scenario: s.name.clone(),
            what,
            tc: pagehop::mem::error_chain(&e),
        });
    }
    if let Some(s) = scenarios.iter().find(|s| s.kind == Kind::Redis) {
        let setup = "run `cargo xtask setup` (it installs Debian's redis-server and python3)";
        tool("redis-server", &["--version"], setup)?;
        tool("python3", &["--version"], setup)?;
        tool("nsenter", &["--version"], setup)?;
        pagehop::criu::Criu::find(None).map_err(|e| PreflightError::NoCriu {
            scenario: s.name.clone(),
            why: pagehop::mem::error_chain(&e),
        })?;
    }
    let available_mib = available_mib();
    for s in scenarios {
        let size_mib = s.max_size_mib();
        // Source arena, destination arena, and the destination's store of
        // pages not yet installed; plus room for everything else. A redis
        // run also holds CRIU's images on both sides (in the temporary
        // directory, memory when it is a tmpfs).
        let copies = match s.kind {
            Kind::Workload => 3,
            Kind::Redis => 5,
        };
        let need_mib = size_mib * copies + 256;
        if need_mib > available_mib {
            return Err(PreflightError::Memory {
                scenario: s.name.clone(),
                size_mib,
                need_mib,
                available_mib,
            });
        }
    }
    Ok(())
}

fn tool(name: &'static str, args: &[&str], hint: &'static str) -> Result<(), PreflightError> {
    let missing = |why: String| PreflightError::MissingTool {
        tool: name,
        why,
        hint,
    };
    let status = Command::new(name)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| missing(e.to_string()))?;
    if !status.success() {
        return Err(missing(format!(
            "`{name} {}` exited with {status}",
            args.join(" ")
        )));
    }
    Ok(())
}

/// MemAvailable in MiB (0 if unreadable, which refuses every scenario).
fn available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
