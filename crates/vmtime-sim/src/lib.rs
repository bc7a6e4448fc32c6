//! Deterministic simulation of the clocks vmtime works with. Everything is integer arithmetic
//! driven by a seeded generator: the same seed gives the same run, bit for bit.
//!
//! * [`Rng`], splitmix64.
//! * [`SimHost`], true time (TAI, ns), the CPU counter of an oscillator with a frequency error,
//!   CLOCK_MONOTONIC_RAW (the counter at its nominal rate), and a kernel clock with the
//!   adjtimex semantics of `kernel/time/ntp.c`: a second length from tick and freq, the PLL
//!   taking `offset >> (2 + constant)` of its remaining offset each second, ADJ_SETOFFSET steps,
//!   leap seconds inserted or deleted at midnight UTC through the TIME_* state machine, maxerror
//!   growing 500 µs per second and STA_UNSYNC beyond 16 s. Samples of (clock, counter, clock) get
//!   random windows like a real `clock_gettime` pair.
//!
//! What it leaves out: the kernel's per-tick mult adjustment (its clock here is exactly
//! piecewise linear in the counter), NTP_INTERVAL granularity within a second, adjtime()'s
//! singleshot slew, and scheduling delays other than the sampling windows.
#![forbid(unsafe_code)]

pub mod chain;
pub mod host;
pub mod host_run;
pub mod phc;
pub mod plot;
pub mod scenario;
pub mod sync_run;

pub use host::{Clock, SimHost};

/// splitmix64: small, fast, and good enough for simulation noise.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }
}
