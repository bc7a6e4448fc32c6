//! Figures: quantiles, distributions of errors, noise floors, and this machine's load.

use super::NOISE_CAP_NS;
use crate::echo::Echo;

pub(crate) fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap_or(&0.0))
}

pub(crate) fn us(ns: f64) -> String {
    format!("{:.1} µs", ns / 1e3)
}

/// p50, p99 and max of |values| (ns), and how many.
pub(super) struct Dist {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
    pub(super) n: usize,
}

pub(super) fn dist(v: impl Iterator<Item = i128>) -> Dist {
    let v: Vec<f64> = v.map(|x| x.unsigned_abs() as f64).collect();
    let n = v.len();
    let (p50, p99, max) = if n == 0 { (f64::NAN, f64::NAN, f64::NAN) } else { quantiles(v) };
    Dist { p50, p99, max, n }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {} p99 {} max {} (n {})", us(self.p50), us(self.p99), us(self.max), self.n)
    }
}

/// The noise floor of a set of echoes, and how many were set aside, in words.
pub(super) fn floor_of(e: &[Echo], noise: fn(&Echo) -> i128, aside: usize) -> String {
    let d = dist(e.iter().map(noise));
    format!("noise floor p50 {} p99 {}, {aside} set aside above {}", us(d.p50), us(d.p99), us(NOISE_CAP_NS as f64))
}

/// This machine's load average (1, 5, 15 min).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
