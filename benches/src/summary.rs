//! Turns the run records into figures: per (scenario, point, mode) the
//! median and spread (min..max) of each metric, each set next to its
//! baselines from the same run (stop-and-copy at the same point, iperf3 on
//! the same link). Written as `summary.csv` and `summary.md`.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::run::{Line, Record};
use super::scenario::{MODE_ORDER, Mode, Scenario};

/// Median and spread of one metric over the successful repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Over the finite values; `None` if there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The metrics the summary reports, in column order.
pub const METRICS: [Metric; 11] = [
    Metric::DowntimeMs,
    Metric::WorkloadDowntimeMs,
    Metric::TotalMs,
    Metric::WireMib,
    Metric::ThroughputMbps,
    Metric::Rounds,
    Metric::FaultP50Us,
    Metric::RemoteFaultP50Us,
    Metric::BlockedMs,
    Metric::SendCpuSPerGb,
    Metric::RecvCpuSPerGb,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    DowntimeMs,
    WorkloadDowntimeMs,
    TotalMs,
    WireMib,
    ThroughputMbps,
    Rounds,
    FaultP50Us,
    RemoteFaultP50Us,
    BlockedMs,
    /// pagehop send's CPU seconds per GB of page data moved.
    SendCpuSPerGb,
    /// pagehop recv's.
    RecvCpuSPerGb,
}

impl Metric {
    pub fn column(self) -> &'static str {
        match self {
            Metric::DowntimeMs => "downtime_ms",
            Metric::WorkloadDowntimeMs => "workload_downtime_ms",
            Metric::TotalMs => "total_ms",
            Metric::WireMib => "wire_mib",
            Metric::ThroughputMbps => "throughput_mb_per_s",
            Metric::Rounds => "rounds",
            Metric::FaultP50Us => "fault_p50_us",
            Metric::RemoteFaultP50Us => "remote_fault_p50_us",
            Metric::BlockedMs => "blocked_ms",
            Metric::SendCpuSPerGb => "send_cpu_s_per_gb",
            Metric::RecvCpuSPerGb => "recv_cpu_s_per_gb",
        }
    }

    pub fn of(self, r: &Record) -> f64 {
        let latency = |key: &str| r.send[key]["p50_us"].as_f64().unwrap_or(f64::NAN);
        match self {
            Metric::DowntimeMs => r.send_f64("downtime_ms"),
            Metric::WorkloadDowntimeMs => r.workload_downtime_ms.unwrap_or(f64::NAN),
            Metric::TotalMs => r.send_f64("total_ms"),
            Metric::WireMib => r.send_f64("bytes_wire") / (1u64 << 20) as f64,
            Metric::ThroughputMbps => r.send_f64("throughput_bytes_per_sec") / 1e6,
            Metric::Rounds => r.send_f64("rounds"),
            Metric::FaultP50Us => latency("fault_latency_us"),
            Metric::RemoteFaultP50Us => latency("remote_fault_latency_us"),
            Metric::BlockedMs => r.send_f64("blocked_ms"),
            Metric::SendCpuSPerGb => r.send_f64("engine_cpu_ms") / r.send_f64("bytes_raw") * 1e6,
            Metric::RecvCpuSPerGb => {
                r.recv["engine_cpu_ms"].as_f64().unwrap_or(f64::NAN) / r.send_f64("bytes_raw") * 1e6
            }
        }
    }
}

/// The figures of one (scenario, point, mode).
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub network: String,
    pub size_mib: u64,
    pub write_mbps: f64,
    pub mode: String,
    pub runs: usize,
    pub failed: usize,
    pub metrics: Vec<(Metric, Option<Spread>)>,
    /// Stop-and-copy's median downtime and total time at the same point.
    pub baseline_downtime_ms: Option<f64>,
    pub baseline_total_ms: Option<f64>,
    /// iperf3 on the same link, MB/s.
    pub iperf3_mbps: Option<f64>,
}

impl Row {
    pub fn get(&self, metric: Metric) -> Option<Spread> {
        self.metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .and_then(|(_, s)| *s)
    }

    fn ratio(&self, metric: Metric, baseline: Option<f64>) -> Option<f64> {
        Some(self.get(metric)?.median / baseline.filter(|b| *b > 0.0)?)
    }

    pub fn downtime_vs_baseline(&self) -> Option<f64> {
        self.ratio(Metric::DowntimeMs, self.baseline_downtime_ms)
    }

    pub fn total_vs_baseline(&self) -> Option<f64> {
        self.ratio(Metric::TotalMs, self.baseline_total_ms)
    }

    pub fn throughput_vs_iperf3(&self) -> Option<f64> {
        self.ratio(Metric::ThroughputMbps, self.iperf3_mbps)
    }
}

/// Groups the records into rows, in scenario, point and mode order.
pub fn rows(lines: &[Line]) -> Vec<Row> {
    let mut iperf = BTreeMap::new();
    let mut groups: BTreeMap<(String, u64, u64, String), Vec<&Record>> = BTreeMap::new();
    let mut order = Vec::new();
    for line in lines {
        match line {
            Line::Iperf3 { scenario, mbps, .. } => {
                iperf.insert(scenario.clone(), *mbps);
            }
            Line::App(_) => {}
            Line::Migration(r) => {
                let key = (
                    r.scenario.clone(),
                    r.size_mib,
                    r.write_mbps.to_bits(),
                    r.mode.clone(),
                );
                if !groups.contains_key(&key) {
                    order.push(key.clone());
                }
                groups.entry(key).or_default().push(r);
            }
        }
    }
    let median_of = |key: &(String, u64, u64, String), metric: Metric| {
        let ok = groups
            .get(key)?
            .iter()
            .filter(|r| r.ok)
            .map(|r| metric.of(r));
        Spread::of(ok).map(|s| s.median)
    };
    // Rows sorted by scenario (first seen), size, rate, mode rank.
    let rank = |mode: &str| {
        MODE_ORDER
            .iter()
            .position(|m| m.name() == mode)
            .unwrap_or(MODE_ORDER.len())
    };
    let scenario_rank = |name: &str| order.iter().position(|k| k.0 == name).unwrap_or(0);
    let mut keys = order.clone();
    keys.sort_by(|a, b| {
        (scenario_rank(&a.0), a.1, f64::from_bits(a.2), rank(&a.3))
            .partial_cmp(&(scenario_rank(&b.0), b.1, f64::from_bits(b.2), rank(&b.3)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    keys.into_iter()
        .map(|key| {
            let records = &groups[&key];
            let ok: Vec<&Record> = records.iter().copied().filter(|r| r.ok).collect();
            let baseline = (
                key.0.clone(),
                key.1,
                key.2,
                Mode::StopAndCopy.name().to_string(),
            );
            Row {
                scenario: key.0.clone(),
                network: records[0].network.clone(),
                size_mib: key.1,
                write_mbps: f64::from_bits(key.2),
                mode: key.3.clone(),
                runs: records.len(),
                failed: records.len() - ok.len(),
                metrics: METRICS
                    .iter()
                    .map(|&m| (m, Spread::of(ok.iter().map(|r| m.of(r)))))
                    .collect(),
                baseline_downtime_ms: median_of(&baseline, Metric::DowntimeMs),
                baseline_total_ms: median_of(&baseline, Metric::TotalMs),
                iperf3_mbps: iperf.get(&key.0).copied().flatten(),
            }
        })
        .collect()
}

fn num(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.6}"))
}

/// `summary.csv`: one row per (scenario, point, mode).
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from("scenario,network,size_mib,write_mbps,mode,runs,failed");
    for m in METRICS {
        let c = m.column();
        let _ = write!(out, ",{c}_median,{c}_min,{c}_max");
    }
    out += ",stop_and_copy_downtime_ms,downtime_vs_stop_and_copy,stop_and_copy_total_ms,\
             total_vs_stop_and_copy,iperf3_mb_per_s,throughput_vs_iperf3\n";
    for r in rows {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{}",
            r.scenario, r.network, r.size_mib, r.write_mbps, r.mode, r.runs, r.failed
        );
        for m in METRICS {
            let s = r.get(m);
            let _ = write!(
                out,
                ",{},{},{}",
                num(s.map(|s| s.median)),
                num(s.map(|s| s.min)),
                num(s.map(|s| s.max))
            );
        }
        let _ = writeln!(
            out,
            ",{},{},{},{},{},{}",
            num(r.baseline_downtime_ms),
            num(r.downtime_vs_baseline()),
            num(r.baseline_total_ms),
            num(r.total_vs_baseline()),
            num(r.iperf3_mbps),
            num(r.throughput_vs_iperf3())
        );
    }
    out
}

/// "12.3 (11.0–14.1)" with `digits` decimals; "–" when there is nothing.
pub(crate) fn cell(s: Option<Spread>, scale: f64, digits: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 || s.min == s.max => format!("{:.digits$}", s.median * scale),
        Some(s) => format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            s.median * scale,
            s.min * scale,
            s.max * scale
        ),
    }
}

/// A ratio with two significant digits below 1 (0.0034x), two decimals up to 10.
pub(crate) fn ratio(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 10.0 => format!("{v:.0}x"),
        Some(v) if v >= 0.1 || v == 0.0 => format!("{v:.2}x"),
        Some(v) => {
            let digits = (1 - v.log10().floor() as i32).max(2) as usize;
            format!("{v:.digits$}x")
        }
    }
}

/// `summary.md`: per scenario, a table with every figure next to its baseline.
pub fn markdown(rows: &[Row], scenarios: &[Scenario]) -> String {
    let mut out = String::from(
        "Medians over the successful repetitions, (min–max) across them. \
         × s&c: the median over stop-and-copy's median at the same point. \
         % iperf3: pagehop's throughput over one iperf3 stream on the same link. \
         Fault p50: the median fault-to-install latency of every fault at the destination (hdrhistogram, exact to 3 significant digits).\n",
    );
    let mut names: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    names.dedup();
    for name in names {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.scenario == name).collect();
        let first = mine[0];
        let _ = write!(out, "\n### {name}: {}", first.network);
        if let Some(s) = scenarios.iter().find(|s| s.name == name) {
            let _ = write!(
                out,
                ", {} writer thread(s), {} pattern, {} pages, {} repetition(s)",
                s.workload.threads, s.workload.pattern, s.workload.fill, s.repetitions,
            );
            if !s.description.is_empty() {
                let _ = write!(out, "\n\n{}", s.description);
            }
        }
        let _ = writeln!(
            out,
            "\n\nRaw path (iperf3, one TCP stream): {}\n",
            first
                .iperf3_mbps
                .map_or("not measured".into(), |v| format!("{v:.1} MB/s"))
        );
        out += "| arena | writes | mode | downtime ms | × s&c | workload saw ms | total s | × s&c | MiB on wire | MB/s | % iperf3 | rounds | fault p50 µs | failed |\n";
        out += "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in mine {
            let _ = writeln!(
                out,
                "| {} MiB | {} MB/s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
                r.size_mib,
                r.write_mbps,
                r.mode,
                cell(r.get(Metric::DowntimeMs), 1.0, 1),
                ratio(r.downtime_vs_baseline()),
                cell(r.get(Metric::WorkloadDowntimeMs), 1.0, 1),
                cell(r.get(Metric::TotalMs), 1e-3, 2),
                ratio(r.total_vs_baseline()),
                cell(r.get(Metric::WireMib), 1.0, 0),
                cell(r.get(Metric::ThroughputMbps), 1.0, 0),
                r.throughput_vs_iperf3()
                    .map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                cell(r.get(Metric::Rounds), 1.0, 0),
                cell(r.get(Metric::FaultP50Us), 1.0, 0),
                r.failed,
                r.runs
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scenario: &str, mode: &str, rep: u32, downtime: f64, total: f64) -> Line {
        Line::Migration(Box::new(Record {
            scenario: scenario.into(),
            network: "1gbit".into(),
            size_mib: 64,
            write_mbps: 10.0,
            mode: mode.into(),
            rep,
            ok: true,
            error: None,
            workload_downtime_ms: Some(downtime + 5.0),
            invariant: Some("ok".into()),
            send: serde_json::json!({
                "downtime_ms": downtime, "total_ms": total,
                "bytes_wire": 64u64 << 20, "throughput_bytes_per_sec": 50e6, "rounds": 3
            }),
            recv: serde_json::Value::Null,
        }))
    }

    #[test]
    fn spread_is_median_min_max_of_finite_values() {
        let s = Spread::of([3.0, f64::NAN, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (4, 2.5, 1.0, 10.0));
        assert_eq!(Spread::of([f64::NAN]), None);
    }

    #[test]
    fn rows_carry_baselines_and_ratios() {
        let mut lines = vec![Line::Iperf3 {
            scenario: "s".into(),
            network: "1gbit".into(),
            mbps: Some(100.0),
            error: None,
        }];
        for rep in 0..3 {
            lines.push(record(
                "s",
                "stop-and-copy",
                rep,
                500.0 + rep as f64,
                1000.0,
            ));
            lines.push(record("s", "hybrid", rep, 10.0 * (rep + 1) as f64, 3000.0));
        }
        let mut failed = record("s", "hybrid", 3, 1.0, 1.0);
        if let Line::Migration(r) = &mut failed {
            r.ok = false;
        }
        lines.push(failed);
        let rows = rows(&lines);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].mode, "stop-and-copy");
        let hybrid = &rows[1];
        assert_eq!((hybrid.runs, hybrid.failed), (4, 1));
        assert_eq!(hybrid.get(Metric::DowntimeMs).unwrap().median, 20.0);
        assert_eq!(hybrid.baseline_downtime_ms, Some(501.0));
        assert!((hybrid.downtime_vs_baseline().unwrap() - 20.0 / 501.0).abs() < 1e-9);
        assert_eq!(hybrid.total_vs_baseline(), Some(3.0));
        assert_eq!(hybrid.throughput_vs_iperf3(), Some(0.5));
        let csv = csv(&rows);
        assert_eq!(csv.lines().count(), 3);
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let hybrid_line: Vec<&str> = csv.lines().nth(2).unwrap().split(',').collect();
        assert_eq!(header.len(), hybrid_line.len());
        let md = markdown(&rows, &[]);
        assert!(
            md.contains("| 64 MiB | 10 MB/s | hybrid | 20.0 (10.0–30.0) | 0.040x |"),
            "{md}"
        );
        assert_eq!(ratio(Some(0.0034)), "0.0034x");
        assert_eq!(ratio(Some(1.5)), "1.50x");
        assert_eq!(ratio(Some(12.3)), "12x");
        assert!(md.contains("100.0 MB/s"));
    }
}
