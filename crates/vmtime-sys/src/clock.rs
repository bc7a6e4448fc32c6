//! `clock_gettime` and (clock, counter, clock) sampling.

use std::io;

/// The POSIX clocks vmtime reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockId {
    /// CLOCK_REALTIME: UTC as the kernel keeps it (NTP-disciplined).
    Realtime,
    /// CLOCK_TAI: CLOCK_REALTIME + the kernel's TAI offset (0 when nobody set it).
    Tai,
    /// CLOCK_MONOTONIC_RAW: the clocksource counter scaled by a fixed mult/shift.
    MonotonicRaw,
    /// CLOCK_MONOTONIC.
    Monotonic,
    /// CLOCK_MONOTONIC_COARSE (the clock ClockBound's clients age their bound with).
    MonotonicCoarse,
}

impl ClockId {
    fn raw(self) -> libc::clockid_t {
        match self {
            ClockId::Realtime => libc::CLOCK_REALTIME,
            ClockId::Tai => libc::CLOCK_TAI,
            ClockId::MonotonicRaw => libc::CLOCK_MONOTONIC_RAW,
            ClockId::Monotonic => libc::CLOCK_MONOTONIC,
            ClockId::MonotonicCoarse => libc::CLOCK_MONOTONIC_COARSE,
        }
    }
}

/// Reads a clock, in nanoseconds since its epoch (vDSO: no system call for these clocks).
#[inline]
pub fn gettime(clock: ClockId) -> io::Result<i128> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock.raw(), &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
}

/// A clock's resolution (`clock_getres`), ns: for CLOCK_MONOTONIC_COARSE, one tick.
pub fn getres(clock: ClockId) -> io::Result<i128> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_getres(clock.raw(), &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
}

pub use vmtime_core::AbaSample;

/// How far CLOCK_MONOTONIC_COARSE lags CLOCK_MONOTONIC now, ns: the fine clock read just after
/// the coarse one, minus it (an upper estimate, by at most the reads' 100 µs). `None` when the
/// reads were more than 100 µs apart (preempted: the lag cannot be told from the preemption).
pub fn coarse_lag_ns() -> io::Result<Option<i128>> {
    let before = gettime(ClockId::Monotonic)?;
    let coarse = gettime(ClockId::MonotonicCoarse)?;
    let after = gettime(ClockId::Monotonic)?;
    Ok((after - before <= 100_000).then_some(after - coarse))
}

/// Takes one (clock, counter, clock) sample. The counter read is fenced (LFENCE+RDTSC, or
/// ISB+CNTVCT), so it cannot move out of the window.
#[inline]
pub fn aba_sample(clock: ClockId) -> io::Result<AbaSample> {
    let before_ns = gettime(clock)?;
    let counter = vmclock::counter::read();
    let after_ns = gettime(clock)?;
    Ok(AbaSample { before_ns, counter, after_ns })
}

/// The tightest of `n` samples (smallest window).
pub fn tightest(clock: ClockId, n: usize) -> io::Result<AbaSample> {
    let mut best = aba_sample(clock)?;
    for _ in 1..n {
        let s = aba_sample(clock)?;
        if s.window_ns() < best.window_ns() {
            best = s;
        }
    }
    Ok(best)
}
