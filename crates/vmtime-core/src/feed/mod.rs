//! Feeds for other time software, sans-IO: what to send to chrony's SOCK refclock and what to
//! write into ClockBound's shared-memory segment, from a page and a burst of
//! (CLOCK_REALTIME, counter, CLOCK_REALTIME) samples.
//!
//! Both feeds share one gate ([`PageGate`]): nothing is measured from a page that is not
//! SYNCHRONIZED or FREERUNNING, gives no UTC (a TAI page needs its TAI offset), or is not for this
//! CPU's counter; a page that changed during the measurement is not used; and after a disruption
//! (the marker changed) the feeds wait until the page is *current*: a later update than the one
//! that carried the new marker, or the page left unchanged for a hold-off (a publisher that
//! writes its new calibration together with the new marker and then only on changes).

use crate::host::kernel_reference;
use crate::AbaSample;
use vmclock::abi::{leap, status};
use vmclock::{Period, Snapshot};

const NS: i128 = 1_000_000_000;
const UNIT: i128 = 1 << 64;

/// 64.64 seconds → ns, rounded up (for bounds).
fn frac_to_ns_ceil(x: u128) -> u128 {
    vmclock::snapshot::frac_to_nanos_ceil(x)
}

mod gate;
pub use gate::{Hold, Observation, PageGate, Pairing};

pub mod chrony;
pub mod clockbound;

#[cfg(test)]
mod tests;
