//! The redis scenarios in `summary.md`: per scenario and size, one row per
//! method (medians over the successful repetitions, min–max), then
//! pagehop's ratios against CRIU's baselines next to the targets, met or
//! not.
use std::fmt::Write as _;

use super::AppRecord;
use crate::summary::{Spread, cell, ratio};

/// The targets: (what, pagehop's metric over the baseline's, baseline, at most).
const TARGETS: [(&str, Metric, &str, f64); 4] = [
    ("unavailability", Metric::Unavailable, "criu-lazy", 1.0),
    (
        "unavailability",
        Metric::Unavailable,
        "criu-stop-and-copy",
        0.5,
    ),
    ("every page local", Metric::AllLocal, "criu-lazy", 0.5),
    ("remote faults", Metric::RemoteFaults, "criu-lazy", 0.1),
];

#[derive(Debug, Clone, Copy)]
enum Metric {
    Unavailable,
    FreezeToRunning,
    AllLocal,
    WireMib,
    RemoteFaults,
    ReadP50,
    ReadP99,
}

impl Metric {
    fn of(self, r: &AppRecord) -> Option<f64> {
        match self {
            Metric::Unavailable => r.unavailable_ms,
            Metric::FreezeToRunning => r.freeze_to_running_ms,
            Metric::AllLocal => r.all_local_ms,
            Metric::WireMib => r.bytes_wire.map(|b| b as f64 / (1u64 << 20) as f64),
            Metric::RemoteFaults => r.remote_faults.map(|f| f as f64),
            Metric::ReadP50 => r.read_p50_us,
            Metric::ReadP99 => r.read_p99_us,
        }
    }
}

fn spread(records: &[&AppRecord], metric: Metric) -> Option<Spread> {
    Spread::of(records.iter().filter(|r| r.ok).filter_map(|r| metric.of(r)))
}

/// The parts of freeze → running, as "name median" in the order they happened.
fn parts(records: &[&AppRecord]) -> String {
    let Some(first) = records.iter().find(|r| r.ok) else {
        return "–".into();
    };
    first
        .parts_ms
        .keys()
        .filter_map(|key| {
            let s = Spread::of(
                records
                    .iter()
                    .filter(|r| r.ok)
                    .filter_map(|r| r.parts_ms.get(key).copied()),
            )?;
            let name = key.split_once('_').map_or(key.as_str(), |(_, n)| n);
            Some(format!("{name} {:.0}", s.median))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn distinct<T: PartialEq + Clone>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The redis part of `summary.md` (empty without redis records).
pub fn markdown(records: &[AppRecord]) -> String {
    let mut out = String::new();
    if records.is_empty() {
        return out;
    }
    out += "\n## Unmodified redis under CRIU\n\n\
        Medians over the successful repetitions, (min–max) across them. \
        Unavailable: the longest gap between two answers a client reading keys continuously saw. \
        Freeze → running and its parts (ms): from the source stopping to the destination's copy running. \
        All local: from the freeze until every page is at the destination. \
        Remote faults: requests the destination sent the source after the restore \
        (CRIU lazy: its daemon's #PF log lines, an upper bound). \
        Read latency: the client's GETs in its first 3 s at the destination. \
        Keys: runs whose every key came back with its value.\n";
    for scenario in distinct(records.iter().map(|r| r.scenario.clone())) {
        let mine: Vec<&AppRecord> = records.iter().filter(|r| r.scenario == scenario).collect();
        let _ = writeln!(out, "\n### {scenario}: {}\n", mine[0].network);
        out += "| redis | method | unavailable ms | freeze → running ms | parts ms | all local ms | MiB on wire | remote faults | read p50 / p99 µs | keys intact |\n";
        out += "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|\n";
        let sizes = distinct(mine.iter().map(|r| r.size_mib));
        for &size in &sizes {
            let at: Vec<&AppRecord> = mine
                .iter()
                .copied()
                .filter(|r| r.size_mib == size)
                .collect();
            for method in distinct(at.iter().map(|r| r.method.clone())) {
                let runs: Vec<&AppRecord> =
                    at.iter().copied().filter(|r| r.method == method).collect();
                let rss = runs.iter().map(|r| r.rss_mib).max().unwrap_or(0);
                let ok = runs.iter().filter(|r| r.ok).count();
                let _ = writeln!(
                    out,
                    "| {size} MiB ({rss} MiB RSS) | {method} | {} | {} | {} | {} | {} | {} | {} / {} | {ok}/{} |",
                    cell(spread(&runs, Metric::Unavailable), 1.0, 0),
                    cell(spread(&runs, Metric::FreezeToRunning), 1.0, 0),
                    parts(&runs),
                    cell(spread(&runs, Metric::AllLocal), 1.0, 0),
                    cell(spread(&runs, Metric::WireMib), 1.0, 1),
                    cell(spread(&runs, Metric::RemoteFaults), 1.0, 0),
                    cell(spread(&runs, Metric::ReadP50), 1.0, 0),
                    cell(spread(&runs, Metric::ReadP99), 1.0, 0),
                    runs.len(),
                );
            }
        }
        out += &targets(&mine, &sizes);
    }
    out
}

/// pagehop's medians over the baselines', next to each target.
fn targets(records: &[&AppRecord], sizes: &[u64]) -> String {
    let mut out = String::from(
        "\n| redis | pagehop | target | ratio | limit | met |\n|---:|---|---|---:|---:|---|\n",
    );
    for &size in sizes {
        let of = |method: &str, metric: Metric| {
            let runs: Vec<&AppRecord> = records
                .iter()
                .copied()
                .filter(|r| r.size_mib == size && r.method == method)
                .collect();
            spread(&runs, metric).map(|s| s.median)
        };
        let methods = distinct(
            records
                .iter()
                .filter(|r| r.size_mib == size && r.method.starts_with("pagehop-"))
                .map(|r| r.method.clone()),
        );
        for method in methods {
            for (what, metric, baseline, limit) in TARGETS {
                let value = match (of(&method, metric), of(baseline, metric)) {
                    (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                    (Some(v), Some(_)) => Some(if v == 0.0 { 0.0 } else { f64::INFINITY }),
                    _ => None,
                };
                let met = match value {
                    Some(v) if v <= limit => "yes",
                    Some(_) => "**no**",
                    None => "not measured",
                };
                let _ = writeln!(
                    out,
                    "| {size} MiB | {method} | {what} vs {baseline} | {} | ≤ {limit}x | {met} |",
                    ratio(value.filter(|v| v.is_finite()))
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(method: &str, unavailable: f64, local: f64, faults: u64) -> AppRecord {
        AppRecord {
            scenario: "redis".into(),
            network: "unshaped".into(),
            size_mib: 256,
            method: method.into(),
            ok: true,
            unavailable_ms: Some(unavailable),
            freeze_to_running_ms: Some(unavailable),
            all_local_ms: Some(local),
            remote_faults: Some(faults),
            parts_ms: [("0_criu_dump".to_string(), 100.0)].into(),
            ..AppRecord::default()
        }
    }

    #[test]
    fn targets_are_judged_against_the_baselines_of_the_same_size() {
        let records = vec![
            record("criu-stop-and-copy", 600.0, 600.0, 0),
            record("criu-lazy", 200.0, 1400.0, 1000),
            record("pagehop-hybrid", 250.0, 500.0, 50),
        ];
        let md = markdown(&records);
        assert!(
            md.contains("| pagehop-hybrid | unavailability vs criu-lazy | 1.25x | ≤ 1x | **no** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| pagehop-hybrid | unavailability vs criu-stop-and-copy | 0.42x | ≤ 0.5x | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| pagehop-hybrid | every page local vs criu-lazy | 0.36x | ≤ 0.5x | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| pagehop-hybrid | remote faults vs criu-lazy | 0.050x | ≤ 0.1x | yes |"),
            "{md}"
        );
        assert!(md.contains("criu_dump 100"), "{md}");
        assert!(markdown(&[]).is_empty());
    }
}
