//! The daemons: each one's decisions and wiring.

pub mod crosscheck;
pub mod feed;
pub mod host;
pub mod relay;
pub mod sync;

use std::time::{Duration, Instant};
use vmtime_core::cadence::Cadence;

/// CLOCK_MONOTONIC, ns (the marker checks' clock; vDSO, no system call).
pub(crate) fn mono_ns() -> std::io::Result<i128> {
    vmtime_sys::gettime(vmtime_sys::clock::ClockId::Monotonic)
}

/// When `cadence` next wants the page's markers checked, as an instant (None: no check due).
pub(crate) fn next_check(cadence: &Cadence) -> Option<Instant> {
    let mono = mono_ns().ok()?;
    let t = cadence.next_check_ns(mono)?;
    Some(Instant::now() + Duration::from_nanos((t - mono).max(0) as u64))
}
