//! Helpers shared by the benchmark harnesses (not a benchmark itself).

/// The median of `v` (NaN when empty): benchmarks report medians, since the
/// machine is shared and noisy.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}
