//! Order statistics for reports.

use serde::Serialize;

/// min / median / p99 / max of a set of values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Smallest.
    pub min: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (sorted in place). `None` when empty.
    pub fn of(values: &mut [f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp); // in place: no allocation
        let rank = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Some(Summary { min: values[0], p50: rank(0.5), p99: rank(0.99), max: values[values.len() - 1] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Summary::of(&mut v).unwrap();
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 51.0, 99.0, 100.0));
        assert_eq!(Summary::of(&mut []), None);
    }
}
