//! SVG plots of a bench run (plotters, SVG backend, built-in font metrics):
//! medians with min–max error bars per mode, grouped bars, and a
//! fault-latency distribution over log2 buckets.
use std::path::Path;

use plotters::prelude::*;

use super::summary::Spread;

#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

fn failed<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

const SIZE: (u32, u32) = (860, 520);

/// A chart with the title and the axis-label room every plot here uses.
fn builder<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64);
    b
}

/// The colour of a mode (any other label gets one by its position).
fn colour(label: &str, index: usize) -> RGBColor {
    match label {
        "stop-and-copy" => RGBColor(60, 60, 60),
        "precopy" => RGBColor(31, 119, 180),
        "postcopy" => RGBColor(214, 39, 40),
        "hybrid" => RGBColor(44, 160, 44),
        "iperf3" => RGBColor(148, 103, 189),
        _ => {
            let (r, g, b) = Palette99::pick(index).to_rgba().rgb();
            RGBColor(r, g, b)
        }
    }
}

/// One line: x and the spread of y at it.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, Spread)>,
}

/// Medians joined by lines, min–max as error bars, y on a log scale.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let err = failed(path);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x_min, x_max) = bounds(all().map(|p| p.0));
    let (y_min, y_max) = bounds(all().flat_map(|p| [p.1.min, p.1.max]));
    let x_pad = ((x_max - x_min) * 0.05).max(0.5);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = builder(&root, title)
        .build_cartesian_2d(
            (x_min - x_pad)..(x_max + x_pad),
            ((y_min * 0.7).max(1e-3)..(y_max * 1.5).max(1e-2)).log_scale(),
        )
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(&err)?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(&s.label, i);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|(x, y)| (*x, y.median)),
                c.stroke_width(2),
            ))
            .map_err(&err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|(x, y)| ErrorBar::new_vertical(*x, y.min, y.median, y.max, c, 8)),
            )
            .map_err(&err)?;
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(&err)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// Bars of each series side by side within each group (medians; min–max
/// as error bars).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(String, Vec<Option<Spread>>)],
) -> Result<(), PlotError> {
    let err = failed(path);
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().map(|s| s.max))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let n = groups.len().max(1) as f64;
    let mut chart = builder(&root, title)
        .build_cartesian_2d(-0.5..(n - 0.5), 0.0..(y_max * 1.2))
        .map_err(&err)?;
    let labels = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(&err)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (i, (label, values)) in series.iter().enumerate() {
        let c = colour(label, i);
        let left = |g: usize| g as f64 - 0.4 + i as f64 * width;
        chart
            .draw_series(values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                Some(Rectangle::new(
                    [(left(g), 0.0), (left(g) + width * 0.9, v.median)],
                    c.filled(),
                ))
            }))
            .map_err(&err)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart
            .draw_series(values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                let mid = left(g) + width * 0.45;
                Some(ErrorBar::new_vertical(
                    mid, v.min, v.median, v.max, BLACK, 6,
                ))
            }))
            .map_err(&err)?;
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(&err)
}

/// A latency distribution per series: the share (%) of samples in each
/// log2 bucket; `buckets[k]` holds the count of values below `bounds[k]` µs.
pub struct Distribution {
    pub label: String,
    pub buckets: Vec<Bucket>,
}

/// (exclusive upper bound in µs, count); the bound is `None` for overflow.
pub type Bucket = (Option<u64>, u64);

pub fn distribution(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[Distribution],
) -> Result<(), PlotError> {
    let err = failed(path);
    let buckets = series.iter().map(|s| s.buckets.len()).max().unwrap_or(1);
    let bound_of = series
        .iter()
        .max_by_key(|s| s.buckets.len())
        .map(|s| s.buckets.iter().map(|b| b.0).collect::<Vec<_>>())
        .unwrap_or_default();
    let shares: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let total = s.buckets.iter().map(|b| b.1).sum::<u64>().max(1) as f64;
            s.buckets
                .iter()
                .map(|b| b.1 as f64 * 100.0 / total)
                .collect()
        })
        .collect();
    let y_max = shares.iter().flatten().copied().fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = builder(&root, title)
        .build_cartesian_2d(-0.5..(buckets as f64 - 0.5), 0.0..(y_max * 1.15))
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_labels(buckets.min(24))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            // Every other bound when there are many, so that labels do not collide.
            if buckets > 12 && i as usize % 2 == 1 {
                return String::new();
            }
            match bound_of.get(i as usize) {
                Some(Some(us)) if *us >= 1000 => format!("<{}ms", us / 1000),
                Some(Some(us)) => format!("<{us}µs"),
                Some(None) => "more".into(),
                None => String::new(),
            }
        })
        .x_desc(x_desc)
        .y_desc("% of faults")
        .draw()
        .map_err(&err)?;
    for (i, (s, share)) in series.iter().zip(&shares).enumerate() {
        let c = colour(s.label.split_whitespace().next().unwrap_or(""), i);
        let style = if s.label.contains("remote") {
            c.stroke_width(1)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(
                share.iter().enumerate().map(|(k, v)| (k as f64, *v)),
                style,
            ))
            .map_err(&err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(
                share
                    .iter()
                    .enumerate()
                    .map(|(k, v)| Circle::new((k as f64, *v), 3, c.filled())),
            )
            .map_err(&err)?;
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(&err)
}
