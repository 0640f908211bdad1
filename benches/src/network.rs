//! The link of a scenario: two network namespaces joined by a veth pair,
//! shaped as the scenario says, and the raw-path baseline over it (one
//! iperf3 TCP stream, source namespace to destination namespace).
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cleanup::{self, Namespaces};
use super::scenario::Network;
use crate::netns::{NetnsError, NetnsPair};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("creating the namespaces")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Invalid(String),
    #[error("iperf3 baseline: {0}")]
    Iperf(String),
    #[error(transparent)]
    Cleanup(#[from] cleanup::CleanupError),
}

/// Default prefix of the namespaces (`phbench-a`, `phbench-b`); a run
/// interrupted beyond catching (SIGKILL) leaves them, and the next run with
/// the same prefix deletes them.
pub const DEFAULT_PREFIX: &str = "phbench";
/// Subnet index of the pair (see [`NetnsPair::create`]).
const SUBNET: u8 = 60;
const IPERF_PORT: &str = "5301";

/// A shaped link between two namespaces, deleted on drop.
pub struct Link {
    pub pair: NetnsPair,
    _registered: Namespaces,
}

impl Link {
    /// `prefix` names the namespaces (see [`check_prefix`]).
    pub fn create(prefix: &str, network: &Network) -> Result<Self, NetworkError> {
        check_prefix(prefix)?;
        // Registered first: a signal while they are being built deletes them too.
        let registered = Namespaces::register(&[&format!("{prefix}-a"), &format!("{prefix}-b")]);
        let pair = NetnsPair::create(prefix, SUBNET)?;
        let rate = network.rate_bits().map_err(NetworkError::Invalid)?;
        if network.needs_netem() {
            pair.impair_both(
                network.delay_ms,
                network.jitter_ms,
                network.loss_percent,
                rate,
            )?;
        } else if let Some(bits) = rate {
            pair.shape_both(bits)?;
        }
        Ok(Self {
            pair,
            _registered: registered,
        })
    }

    /// One iperf3 TCP stream from the source namespace to the destination
    /// namespace for `seconds`: the throughput (MB/s) the raw path gives.
    pub fn iperf3_mbps(&self, seconds: u32) -> Result<f64, NetworkError> {
        let _server = cleanup::spawn(
            NetnsPair::command(&self.pair.b, "iperf3")
                .args(["-s", "-1", "-p", IPERF_PORT])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        // The server listens within milliseconds; retry the client briefly.
        let mut last = String::new();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            let mut client = cleanup::spawn(&mut client(&self.pair, seconds))?;
            let text = super::run::read_all(client.child.stdout.take());
            let limit = Duration::from_secs(u64::from(seconds) + 15);
            // A client that does not finish is killed; its text then fails to parse.
            let _ = client.wait_within(limit);
            let text = text.recv().unwrap_or_default();
            let report: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) => {
                    last = "iperf3 printed no report".into();
                    continue;
                }
            };
            if let Some(bits) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bits / 8.0 / 1e6);
            }
            last = report["error"].as_str().unwrap_or("no result").to_string();
        }
        Err(NetworkError::Iperf(last))
    }
}

/// A namespace prefix: 1-12 characters of a-z, 0-9 and - (device names
/// derived from it must fit the kernel's 15).
pub fn check_prefix(prefix: &str) -> Result<(), NetworkError> {
    let valid = !prefix.is_empty()
        && prefix.len() <= 12
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(NetworkError::Invalid(format!(
            "namespace prefix {prefix:?}: 1-12 characters of a-z, 0-9 and -"
        )));
    }
    Ok(())
}

fn client(pair: &NetnsPair, seconds: u32) -> Command {
    let mut cmd = NetnsPair::command(&pair.a, "iperf3");
    cmd.args(["-c", &pair.addr_b, "-p", IPERF_PORT, "-J"])
        .args(["--connect-timeout", "3000", "-t"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}
