//! Scenario files: what `pagehop bench` runs, parsed from TOML and checked
//! before anything starts.
//!
//! A file holds one or more `[[scenario]]` tables; `builtin.toml` (next to
//! this module) is the built-in set and the reference for the format.
//! `size_mib` and `write_mbps` take one value or a list: a scenario runs
//! every combination of them (its *points*), each in every mode, with
//! stop-and-copy always added as the baseline, `repetitions` times.
use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use pagehop::Mode;

/// The order modes are run and reported in: the baseline first.
pub const MODE_ORDER: [Mode; 4] = [
    Mode::StopAndCopy,
    Mode::Precopy,
    Mode::Postcopy,
    Mode::Hybrid,
];

/// The built-in scenario set.
pub const BUILTIN: &str = include_str!("builtin.toml");

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{origin}: not a valid scenario file: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: scenario {scenario:?}: {message}")]
    Invalid {
        origin: String,
        scenario: String,
        message: String,
    },
    #[error("{origin}: no scenario in the file (it needs at least one [[scenario]] table)")]
    Empty { origin: String },
}

/// One value or a list of them (`size_mib = 64` or `size_mib = [64, 256]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            One(T),
            Many(Vec<T>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(v) => OneOrMany(vec![v]),
            Raw::Many(v) => OneOrMany(v),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Arena size(s) in MiB.
    pub size_mib: OneOrMany<u64>,
    /// Write rate(s) in MB/s of distinct pages.
    #[serde(default = "default_write_mbps")]
    pub write_mbps: OneOrMany<f64>,
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// uniform, skew or seq.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// random or compressible.
    #[serde(default = "default_fill")]
    pub fill: String,
}

fn default_write_mbps() -> OneOrMany<f64> {
    OneOrMany(vec![0.0])
}
fn default_threads() -> u32 {
    2
}
fn default_pattern() -> String {
    "uniform".into()
}
fn default_fill() -> String {
    "random".into()
}

/// The link between the two namespaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// "unshaped", or a tc rate such as "5mbit", "20mbit", "1gbit".
    #[serde(default = "default_rate")]
    pub rate: String,
    /// One-way delay added in each direction (needs the netem qdisc).
    #[serde(default)]
    pub delay_ms: f64,
    /// Delay variation (needs netem).
    #[serde(default)]
    pub jitter_ms: f64,
    /// Packet loss in percent (needs netem).
    #[serde(default)]
    pub loss_percent: f64,
}

fn default_rate() -> String {
    "unshaped".into()
}

impl Default for Network {
    fn default() -> Self {
        Self {
            rate: default_rate(),
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss_percent: 0.0,
        }
    }
}

impl Network {
    /// The rate in bits per second; `None` when unshaped.
    pub fn rate_bits(&self) -> Result<Option<u64>, String> {
        parse_rate(&self.rate)
    }

    /// Whether the scenario needs netem (delay, jitter or loss).
    pub fn needs_netem(&self) -> bool {
        self.delay_ms > 0.0 || self.jitter_ms > 0.0 || self.loss_percent > 0.0
    }

    /// A short label: "unshaped", "20mbit", "1gbit +10ms 0.5% loss".
    pub fn label(&self) -> String {
        let mut s = self.rate.clone();
        if self.delay_ms > 0.0 {
            s += &format!(" +{}ms", self.delay_ms);
        }
        if self.jitter_ms > 0.0 {
            s += &format!(" ±{}ms", self.jitter_ms);
        }
        if self.loss_percent > 0.0 {
            s += &format!(" {}% loss", self.loss_percent);
        }
        s
    }
}

/// Parses a tc-style rate: "unshaped", or a number with kbit, mbit or gbit.
pub fn parse_rate(rate: &str) -> Result<Option<u64>, String> {
    let rate = rate.trim().to_ascii_lowercase();
    if rate == "unshaped" {
        return Ok(None);
    }
    let (number, unit) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)]
        .iter()
        .find_map(|(suffix, unit)| rate.strip_suffix(suffix).map(|n| (n, *unit)))
        .ok_or_else(|| {
            format!("rate {rate:?}: use \"unshaped\" or a number with kbit, mbit or gbit")
        })?;
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("rate {rate:?}: {number:?} is not a number"))?;
    let bits = value * unit;
    if !(1e5..=1e11).contains(&bits) {
        return Err(format!(
            "rate {rate:?} is outside 100kbit..100gbit, which tc shapes reliably"
        ));
    }
    Ok(Some(bits as u64))
}

/// Engine options passed to `pagehop send`; unset ones keep send's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_target_ms: Option<u64>,
    /// auto, lz4 or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// auto, on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zerocopy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_after: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postcopy_below_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch_pages: Option<u32>,
    /// Frames authenticated but not encrypted (`--plaintext` on both ends),
    /// to measure what sealing costs; sealed when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<bool>,
}

impl Engine {
    /// The `pagehop send` flags for these options.
    pub fn send_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(format!("--{name}"));
                args.push(v);
            }
        };
        flag("max-rounds", self.max_rounds.map(|v| v.to_string()));
        flag(
            "downtime-target",
            self.downtime_target_ms.map(|v| v.to_string()),
        );
        flag("compress", self.compress.clone());
        flag("zerocopy", self.zerocopy.clone());
        flag("streams", self.streams.map(|v| v.to_string()));
        flag("hot-after", self.hot_after.map(|v| v.to_string()));
        flag(
            "postcopy-below-mib",
            self.postcopy_below_mib.map(|v| v.to_string()),
        );
        flag("prefetch-pages", self.prefetch_pages.map(|v| v.to_string()));
        args.extend(self.wire_args());
        args
    }

    /// The flags both ends need alike (how the wire is protected).
    pub fn wire_args(&self) -> Vec<String> {
        match self.plaintext {
            Some(true) => vec!["--plaintext".into()],
            _ => Vec::new(),
        }
    }
}

/// What a scenario migrates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// pagehop's own workload (`pagehop-workload`), restored with
    /// `recv --restore-cmd`.
    #[default]
    Workload,
    /// Debian's unmodified redis-server under CRIU (`send --criu`), with
    /// CRIU's own stop-and-copy and lazy migration as the baselines.
    Redis,
}

impl Kind {
    fn is_default(&self) -> bool {
        *self == Kind::Workload
    }
}

/// One scenario as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// workload (default) or redis.
    #[serde(default, skip_serializing_if = "Kind::is_default")]
    pub kind: Kind,
    #[serde(default = "default_repetitions")]
    pub repetitions: u32,
    /// Modes to compare; stop-and-copy is added as the baseline.
    #[serde(default = "default_modes")]
    pub modes: Vec<Mode>,
    pub workload: Workload,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub engine: Engine,
}

fn default_repetitions() -> u32 {
    3
}
fn default_modes() -> Vec<Mode> {
    vec![Mode::Precopy, Mode::Postcopy, Mode::Hybrid]
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    scenario: Vec<Scenario>,
}

/// `scenarios` as a scenario file (what a run records of what it ran).
pub fn to_toml(scenarios: &[Scenario]) -> String {
    toml::to_string(&File {
        scenario: scenarios.to_vec(),
    })
    .expect("scenarios serialize")
}

/// One workload configuration of a scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub size_mib: u64,
    pub write_mbps: f64,
}

impl Scenario {
    /// Every (size, rate) combination, sizes outermost.
    pub fn points(&self) -> Vec<Point> {
        let mut points = Vec::new();
        for &size_mib in &self.workload.size_mib.0 {
            for &write_mbps in &self.workload.write_mbps.0 {
                points.push(Point {
                    size_mib,
                    write_mbps,
                });
            }
        }
        points
    }

    /// The modes to run, baseline first, each once.
    pub fn modes_with_baseline(&self) -> Vec<Mode> {
        MODE_ORDER
            .into_iter()
            .filter(|m| *m == Mode::StopAndCopy || self.modes.contains(m))
            .collect()
    }

    /// Migrations this scenario runs.
    pub fn runs(&self) -> usize {
        let per_point = match self.kind {
            Kind::Workload => self.modes_with_baseline().len(),
            Kind::Redis => crate::app::methods(self).len(),
        };
        self.points().len() * per_point * self.repetitions as usize
    }

    /// The largest arena, for the memory check.
    pub fn max_size_mib(&self) -> u64 {
        self.workload.size_mib.0.iter().copied().max().unwrap_or(0)
    }

    /// Checks every value; the message names the field and the allowed range.
    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err("name must be 1-40 characters of a-z, 0-9, - and _".into());
        }
        if !(1..=50).contains(&self.repetitions) {
            return Err(format!(
                "repetitions = {}: must be 1..=50",
                self.repetitions
            ));
        }
        let w = &self.workload;
        if w.size_mib.0.is_empty() || w.write_mbps.0.is_empty() {
            return Err("workload.size_mib and workload.write_mbps need at least one value".into());
        }
        if let Some(bad) = w.size_mib.0.iter().find(|&&s| !(1..=65536).contains(&s)) {
            return Err(format!("workload.size_mib = {bad}: must be 1..=65536"));
        }
        if let Some(bad) = w
            .write_mbps
            .0
            .iter()
            .find(|&&r| !(r.is_finite() && (0.0..=100_000.0).contains(&r)))
        {
            return Err(format!(
                "workload.write_mbps = {bad}: must be 0..=100000 (MB/s)"
            ));
        }
        if !(1..=64).contains(&w.threads) {
            return Err(format!("workload.threads = {}: must be 1..=64", w.threads));
        }
        if !["uniform", "skew", "seq"].contains(&w.pattern.as_str()) {
            return Err(format!(
                "workload.pattern = {:?}: must be uniform, skew or seq",
                w.pattern
            ));
        }
        if !["random", "compressible"].contains(&w.fill.as_str()) {
            return Err(format!(
                "workload.fill = {:?}: must be random or compressible",
                w.fill
            ));
        }
        let n = &self.network;
        n.rate_bits().map_err(|e| format!("network.{e}"))?;
        // Beyond these, connections time out (10 s handshakes) rather than
        // measure anything.
        for (field, value, max) in [
            ("delay_ms", n.delay_ms, 1_000.0),
            ("jitter_ms", n.jitter_ms, 1_000.0),
            ("loss_percent", n.loss_percent, 50.0),
        ] {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                return Err(format!("network.{field} = {value}: must be 0..={max}"));
            }
        }
        if self.modes.is_empty() {
            return Err("modes is empty".into());
        }
        if self.kind == Kind::Redis {
            if w.write_mbps.0 != [0.0] {
                return Err(
                    "workload.write_mbps: a redis scenario has no writer (leave it out)".into(),
                );
            }
            if self.modes.contains(&Mode::StopAndCopy) {
                return Err(
                    "modes: a redis scenario runs CRIU's own stop-and-copy as its baseline; \
                     list pagehop's precopy, postcopy or hybrid"
                        .into(),
                );
            }
        }
        let e = &self.engine;
        for (field, value, allowed) in [
            ("compress", &e.compress, &["auto", "lz4", "off"][..]),
            ("zerocopy", &e.zerocopy, &["auto", "on", "off"][..]),
        ] {
            if let Some(v) = value
                && !allowed.contains(&v.as_str())
            {
                return Err(format!(
                    "engine.{field} = {v:?}: must be one of {}",
                    allowed.join(", ")
                ));
            }
        }
        if e.max_rounds == Some(0) || e.hot_after == Some(0) {
            return Err("engine.max_rounds and engine.hot_after must be at least 1".into());
        }
        if let Some(s) = e.streams
            && !(1..=16).contains(&s)
        {
            return Err(format!("engine.streams = {s}: must be 1..=16"));
        }
        Ok(())
    }
}

/// Parses and checks a scenario file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Scenario>, ScenarioError> {
    let file: File = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    if file.scenario.is_empty() {
        return Err(ScenarioError::Empty {
            origin: origin.to_string(),
        });
    }
    let mut names = BTreeSet::new();
    for s in &file.scenario {
        let invalid = |message: String| ScenarioError::Invalid {
            origin: origin.to_string(),
            scenario: s.name.clone(),
            message,
        };
        s.validate().map_err(invalid)?;
        if !names.insert(s.name.clone()) {
            return Err(invalid("a second scenario has this name".into()));
        }
    }
    Ok(file.scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Vec<Scenario>, ScenarioError> {
        parse(&format!("[[scenario]]\n{body}"), "test.toml")
    }

    #[test]
    fn builtin_set_parses() {
        let set = parse(BUILTIN, "builtin").unwrap();
        assert!(set.len() >= 3);
        for s in &set {
            assert_eq!(s.modes_with_baseline()[0], Mode::StopAndCopy);
        }
    }

    #[test]
    fn sweeps_expand_to_points_and_baseline_is_added() {
        let s = &one("name = \"x\"\nrepetitions = 2\nmodes = [\"hybrid\"]\n\
             workload = { size_mib = [16, 32], write_mbps = [0, 10, 20] }")
        .unwrap()[0];
        assert_eq!(s.points().len(), 6);
        assert_eq!(
            s.modes_with_baseline(),
            vec![Mode::StopAndCopy, Mode::Hybrid]
        );
        assert_eq!(s.runs(), 6 * 2 * 2);
        assert_eq!(s.network.rate_bits(), Ok(None));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        for (body, needle) in [
            ("name = \"x\"\nworkload = { size_mib = 0 }", "size_mib = 0"),
            (
                "name = \"x\"\nworkload = { size_mib = 8, write_mbps = -1 }",
                "write_mbps = -1",
            ),
            (
                "name = \"x\"\nworkload = { size_mib = 8, pattern = \"zigzag\" }",
                "pattern",
            ),
            (
                "name = \"x\"\nworkload = { size_mib = 8 }\nnetwork = { rate = \"fast\" }",
                "rate",
            ),
            (
                "name = \"x\"\nworkload = { size_mib = 8 }\nnetwork = { rate = \"1tbit\" }",
                "rate",
            ),
            (
                "name = \"x\"\nrepetitions = 0\nworkload = { size_mib = 8 }",
                "repetitions",
            ),
            (
                "name = \"x\"\nmodes = [\"teleport\"]\nworkload = { size_mib = 8 }",
                "teleport",
            ),
            (
                "name = \"x\"\nworkload = { size_mib = 8, colour = 1 }",
                "colour",
            ),
            (
                "name = \"a b\"\nworkload = { size_mib = 8 }",
                "name must be",
            ),
            (
                "name = \"x\"\nworkload = { size_mib = 8 }\nengine = { compress = \"zstd\" }",
                "compress",
            ),
        ] {
            let err = one(body).expect_err(body).to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let dup = "[[scenario]]\nname = \"x\"\nworkload = { size_mib = 8 }\n\
                   [[scenario]]\nname = \"x\"\nworkload = { size_mib = 8 }";
        assert!(parse(dup, "t").unwrap_err().to_string().contains("second"));
        assert!(matches!(parse("", "t"), Err(ScenarioError::Parse { .. })));
    }

    #[test]
    fn scenarios_round_trip_through_toml() {
        let set = parse(BUILTIN, "builtin").unwrap();
        assert_eq!(parse(&to_toml(&set), "written").unwrap(), set);
    }

    #[test]
    fn redis_scenarios_run_both_criu_baselines_and_have_no_writer() {
        let s = &one("name = \"r\"\nkind = \"redis\"\nrepetitions = 2\n\
             modes = [\"postcopy\", \"hybrid\"]\nworkload = { size_mib = [256, 1024] }")
        .unwrap()[0];
        assert_eq!(s.kind, Kind::Redis);
        assert_eq!(s.runs(), 2 * 4 * 2);
        for (body, needle) in [
            (
                "name = \"r\"\nkind = \"redis\"\nworkload = { size_mib = 8, write_mbps = 5 }",
                "no writer",
            ),
            (
                "name = \"r\"\nkind = \"redis\"\nmodes = [\"stop-and-copy\"]\nworkload = { size_mib = 8 }",
                "CRIU's own stop-and-copy",
            ),
            (
                "name = \"r\"\nkind = \"memcached\"\nworkload = { size_mib = 8 }",
                "memcached",
            ),
        ] {
            let err = one(body).expect_err(body).to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn rates_parse_like_tc() {
        assert_eq!(parse_rate("5mbit"), Ok(Some(5_000_000)));
        assert_eq!(parse_rate("1gbit"), Ok(Some(1_000_000_000)));
        assert_eq!(parse_rate("1.5Mbit"), Ok(Some(1_500_000)));
        assert_eq!(parse_rate("unshaped"), Ok(None));
        assert!(parse_rate("10").is_err());
    }

    #[test]
    fn engine_options_become_send_flags() {
        let e = Engine {
            max_rounds: Some(8),
            compress: Some("off".into()),
            ..Engine::default()
        };
        assert_eq!(
            e.send_args(),
            ["--max-rounds", "8", "--compress", "off"].map(String::from)
        );
    }

    #[test]
    fn netem_is_needed_only_for_delay_jitter_or_loss() {
        let mut n = Network::default();
        assert!(!n.needs_netem());
        n.loss_percent = 0.1;
        assert!(n.needs_netem());
        assert_eq!(n.label(), "unshaped 0.1% loss");
    }
}
