//! The sans-IO logic of vmtime. Inputs in, results and `#[must_use]` actions out; nothing here
//! reads a clock or touches the system.
#![forbid(unsafe_code)]

pub mod cadence;
pub mod check;
pub mod crosscheck;
pub mod feed;
pub mod host;
pub mod kernel;
pub mod leapsecs;
pub mod oneshot;
pub mod overwrite;
pub mod phc;
pub mod relay;
pub mod rival;
pub mod sanity;
pub mod stats;
pub mod sync;

/// ns since an epoch → 64.64 fixed-point seconds, rounded down or (`ceil`) up.
pub(crate) fn ns_to_frac(ns: i128, ceil: bool) -> i128 {
    const NS: i128 = 1_000_000_000;
    let (s, r) = (ns.div_euclid(NS), ns.rem_euclid(NS));
    let f = r << 64;
    (s << 64) + if ceil { (f + NS - 1) / NS } else { f / NS }
}

/// One (kernel clock, counter, kernel clock) reading: the counter was read at an instant
/// between `before_ns` and `after_ns` of the kernel clock (ns since its epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbaSample {
    /// The clock before the counter read, ns.
    pub before_ns: i128,
    /// The counter.
    pub counter: u64,
    /// The clock after the counter read, ns.
    pub after_ns: i128,
}

impl AbaSample {
    /// The width of the window, ns.
    pub fn window_ns(&self) -> i128 {
        self.after_ns - self.before_ns
    }
    /// The middle of the window, ns (rounded down).
    pub fn mid_ns(&self) -> i128 {
        self.before_ns + self.window_ns().div_euclid(2)
    }
}
