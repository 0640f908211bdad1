//! The files of a results directory besides `runs.jsonl`: `summary.csv`,
//! `summary.md` and the SVG plots, all derived from the run records alone
//! (so `pagehop bench --summarize DIR` can redo them).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::app::{self, AppRecord};
use super::plot::{self, Bucket, Distribution, PlotError, Series};
use super::run::{Line, Record};
use super::scenario::{Mode, Scenario};
use super::summary::{self, Metric, Row, Spread};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Plot(#[from] PlotError),
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, OutputError> {
    std::fs::write(&path, text).map_err(|source| OutputError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes the summary and the plots into `dir`; returns the files written.
pub fn write_all(
    dir: &Path,
    lines: &[Line],
    scenarios: &[Scenario],
) -> Result<Vec<PathBuf>, OutputError> {
    let rows = summary::rows(lines);
    let mut files = vec![write(dir.join("summary.csv"), &summary::csv(&rows))?];
    let mut plots = Vec::new();
    let mut names: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    names.dedup();
    for name in names {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.scenario == name).collect();
        let records: Vec<&Record> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Migration(r) if r.scenario == name && r.ok => Some(&**r),
                _ => None,
            })
            .collect();
        plots.extend(scenario_plots(dir, name, &mine, &records)?);
    }
    let mut md = summary::markdown(&rows, scenarios);
    let apps: Vec<AppRecord> = lines
        .iter()
        .filter_map(|l| match l {
            Line::App(r) => Some((**r).clone()),
            _ => None,
        })
        .collect();
    md += &app::table::markdown(&apps);
    if !plots.is_empty() {
        md += "\n### Plots\n\n";
        for p in &plots {
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            md += &format!("![{file}]({file})\n\n");
        }
    }
    files.push(write(dir.join("summary.md"), &md)?);
    files.extend(plots);
    Ok(files)
}

fn distinct<T: PartialOrd + Copy>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    out
}

fn modes_of(rows: &[&Row]) -> Vec<String> {
    let mut modes: Vec<String> = Vec::new();
    for r in rows {
        if !modes.contains(&r.mode) {
            modes.push(r.mode.clone());
        }
    }
    modes
}

/// One series per mode (and per value of the other axis, if it varies too).
fn sweep(
    rows: &[&Row],
    metric: Metric,
    scale: f64,
    x_of: impl Fn(&Row) -> f64,
    other_of: impl Fn(&Row) -> String,
) -> Vec<Series> {
    let mut others: Vec<String> = rows.iter().map(|r| other_of(r)).collect();
    others.sort();
    others.dedup();
    let mut series = Vec::new();
    for mode in modes_of(rows) {
        for other in &others {
            let points: Vec<(f64, Spread)> = rows
                .iter()
                .filter(|r| r.mode == mode && other_of(r) == *other)
                .filter_map(|r| {
                    let s = r.get(metric)?;
                    Some((
                        x_of(r),
                        Spread {
                            median: s.median * scale,
                            min: s.min * scale,
                            max: s.max * scale,
                            ..s
                        },
                    ))
                })
                .collect();
            if points.is_empty() {
                continue;
            }
            let label = if others.len() > 1 {
                format!("{mode} {other}")
            } else {
                mode.clone()
            };
            series.push(Series { label, points });
        }
    }
    series
}

fn scenario_plots(
    dir: &Path,
    name: &str,
    rows: &[&Row],
    records: &[&Record],
) -> Result<Vec<PathBuf>, OutputError> {
    let mut files = Vec::new();
    let network = rows.first().map(|r| r.network.clone()).unwrap_or_default();
    let rates = distinct(rows.iter().map(|r| r.write_mbps));
    let sizes = distinct(rows.iter().map(|r| r.size_mib));
    if rates.len() > 1 {
        let path = dir.join(format!("{name}-downtime-vs-write-rate.svg"));
        let series = sweep(
            rows,
            Metric::DowntimeMs,
            1.0,
            |r| r.write_mbps,
            |r| format!("{} MiB", r.size_mib),
        );
        plot::lines(
            &path,
            &format!("{name}: downtime vs write rate ({network})"),
            "write rate (MB/s)",
            "downtime (ms, log scale)",
            &series,
        )?;
        files.push(path);
    }
    if sizes.len() > 1 {
        let path = dir.join(format!("{name}-total-time-vs-arena-size.svg"));
        let series = sweep(
            rows,
            Metric::TotalMs,
            1e-3,
            |r| r.size_mib as f64,
            |r| format!("{} MB/s", r.write_mbps),
        );
        plot::lines(
            &path,
            &format!("{name}: total migration time vs arena size ({network})"),
            "arena (MiB)",
            "total time (s, log scale)",
            &series,
        )?;
        files.push(path);
    }
    // Bytes on the wire: a group per point, a bar per mode.
    let points = distinct(rows.iter().map(|r| (r.size_mib as f64, r.write_mbps)));
    let groups: Vec<String> = points
        .iter()
        .map(|(s, w)| format!("{s} MiB, {w} MB/s"))
        .collect();
    let bars: Vec<(String, Vec<Option<Spread>>)> = modes_of(rows)
        .into_iter()
        .map(|mode| {
            let values = points
                .iter()
                .map(|(s, w)| {
                    rows.iter()
                        .find(|r| r.mode == mode && r.size_mib as f64 == *s && r.write_mbps == *w)
                        .and_then(|r| r.get(Metric::WireMib))
                })
                .collect();
            (mode, values)
        })
        .collect();
    let path = dir.join(format!("{name}-wire-bytes.svg"));
    plot::grouped_bars(
        &path,
        &format!("{name}: bytes on the wire per mode ({network})"),
        "MiB on the wire",
        &groups,
        &bars,
    )?;
    files.push(path);
    let latency = latency_distributions(records);
    if !latency.is_empty() {
        let path = dir.join(format!("{name}-fault-latency.svg"));
        plot::distribution(
            &path,
            &format!("{name}: destination fault latency, all runs ({network})"),
            "fault → page installed (log2 buckets)",
            &latency,
        )?;
        files.push(path);
    }
    Ok(files)
}

/// Per post-copy mode: all faults and remote faults, merged over the runs.
fn latency_distributions(records: &[&Record]) -> Vec<Distribution> {
    let mut merged: BTreeMap<(usize, &str, &str), Vec<Bucket>> = BTreeMap::new();
    for r in records {
        let rank = [Mode::Postcopy, Mode::Hybrid]
            .iter()
            .position(|m| m.name() == r.mode);
        let Some(rank) = rank else { continue };
        for (key, what) in [
            ("fault_latency_us", "all faults"),
            ("remote_fault_latency_us", "remote"),
        ] {
            let Some(buckets) = r.send[key]["buckets"].as_array() else {
                continue;
            };
            let into = merged.entry((rank, &r.mode, what)).or_default();
            for (i, b) in buckets.iter().enumerate() {
                let bound = b["lt_us"].as_u64();
                let count = b["count"].as_u64().unwrap_or(0);
                match into.get_mut(i) {
                    Some(slot) => slot.1 += count,
                    None => into.push((bound, count)),
                }
            }
        }
    }
    // Up to one bucket past the slowest fault of any series.
    let last = merged
        .values()
        .filter_map(|b| b.iter().rposition(|(_, c)| *c > 0))
        .max()
        .unwrap_or(0);
    merged
        .into_iter()
        .filter(|(_, b)| b.iter().any(|(_, c)| *c > 0))
        .map(|((_, mode, what), mut buckets)| {
            buckets.truncate(last + 2);
            Distribution {
                label: format!("{mode} {what}"),
                buckets,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Record;

    fn record(mode: &str, size_mib: u64, write_mbps: f64, rep: u32) -> Line {
        let latency = serde_json::json!({
            "count": 10, "mean_us": 50.0, "p50_us": 32, "p99_us": 256, "max_us": 300,
            "buckets": [{"lt_us": 2, "count": 1}, {"lt_us": 4, "count": 6}, {"lt_us": null, "count": 3}]
        });
        Line::Migration(Box::new(Record {
            scenario: "sweep".into(),
            network: "1gbit".into(),
            size_mib,
            write_mbps,
            mode: mode.into(),
            rep,
            ok: true,
            error: None,
            workload_downtime_ms: Some(12.0),
            invariant: Some("ok".into()),
            send: serde_json::json!({
                "downtime_ms": 10.0 + rep as f64 + write_mbps, "total_ms": 1000.0 * size_mib as f64,
                "bytes_wire": size_mib << 20, "throughput_bytes_per_sec": 1e8, "rounds": 2,
                "fault_latency_us": if mode == "postcopy" { latency.clone() } else { serde_json::Value::Null },
                "remote_fault_latency_us": if mode == "postcopy" { latency } else { serde_json::Value::Null },
            }),
            recv: serde_json::Value::Null,
        }))
    }

    #[test]
    fn every_output_is_written_from_records_alone() {
        let dir = std::env::temp_dir().join(format!("pagehop-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines = vec![Line::Iperf3 {
            scenario: "sweep".into(),
            network: "1gbit".into(),
            mbps: Some(117.0),
            error: None,
        }];
        for rep in 0..2 {
            for size in [16, 64] {
                for rate in [0.0, 50.0] {
                    for mode in ["stop-and-copy", "precopy", "postcopy"] {
                        lines.push(record(mode, size, rate, rep));
                    }
                }
            }
        }
        let files = write_all(&dir, &lines, &[]).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "summary.csv",
            "summary.md",
            "sweep-downtime-vs-write-rate.svg",
            "sweep-total-time-vs-arena-size.svg",
            "sweep-wire-bytes.svg",
            "sweep-fault-latency.svg",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let svg = std::fs::read_to_string(dir.join("sweep-downtime-vs-write-rate.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("postcopy 16 MiB"),
            "{svg}"
        );
        let latency = std::fs::read_to_string(dir.join("sweep-fault-latency.svg")).unwrap();
        assert!(latency.contains("postcopy all faults") && latency.contains("postcopy remote"));
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("![sweep-wire-bytes.svg](sweep-wire-bytes.svg)"));
        let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 2 * 2 * 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
