//! Pages the tests and benchmarks of vmclock and libvmclock (vmclock-ffi) share, so that each
//! is written once. Not part of the API: hidden from the documentation, and may change at any
//! time.
use crate::abi::{self, flags};
use crate::{PageBuilder, Period, Tai, Timestamp, Utc};

/// A SYNCHRONIZED page on counter `counter_id` whose reference is `counter` at 1_795_000_037 s
/// TAI (2026-11-18, TAI − UTC 37 s), a `hz` counter, maxerror 1 µs and 100 · 2^-64 s a tick,
/// TIME_MONOTONIC. A case adds what it needs (an estimated error, another status).
///
/// # Panics
/// When `hz` is 0.
pub fn synchronized_tai(counter_id: u8, counter: u64, hz: u64) -> PageBuilder {
    PageBuilder::new()
        .reference(counter_id, counter, Timestamp::<Tai>::from_parts(1_795_000_037, 0), Period::from_hz(hz).unwrap())
        .tai_minus_utc(37)
        .maxerror(1_000, 100)
        .status(abi::status::SYNCHRONIZED)
        .flag(flags::TIME_MONOTONIC, true)
}

/// A whole page from random fields on the native counter: either timescale (`utc`), any
/// period and shift, both bounds (`bounds`: maxerror time and rate, esterror time and rate)
/// with their flags on or off (`valid`'s bits 0 to 3), any stored TAI offset with its flag on
/// or off (bit 4), any leap indicator. The status and the rest are the caller's.
#[allow(clippy::too_many_arguments)]
pub fn random_page(
    utc: bool,
    sec: u64,
    frac: u64,
    cv: u64,
    period: Period,
    bounds: [u64; 4],
    valid: u8,
    tai_raw: i16,
    leap: u8,
) -> PageBuilder {
    let b = PageBuilder::new();
    let b = if utc {
        b.reference(crate::counter::NATIVE, cv, Timestamp::<Utc>::from_parts(sec, frac), period)
    } else {
        b.reference(crate::counter::NATIVE, cv, Timestamp::<Tai>::from_parts(sec, frac), period)
    };
    b.maxerror(bounds[0], bounds[1])
        .esterror(bounds[2], bounds[3])
        .flag(flags::TIME_MAXERROR_VALID, valid & 1 != 0)
        .flag(flags::PERIOD_MAXERROR_VALID, valid & 2 != 0)
        .flag(flags::TIME_ESTERROR_VALID, valid & 4 != 0)
        .flag(flags::PERIOD_ESTERROR_VALID, valid & 8 != 0)
        .tai_offset_raw(tai_raw)
        .flag(flags::TAI_OFFSET_VALID, valid & 16 != 0)
        .leap(leap)
}
