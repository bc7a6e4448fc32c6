//! Typed, fixed-point time.
//!
//! An instant is a [`Timestamp<S>`]: seconds since the epoch of timescale `S` in 64.64 fixed
//! point (the page's own unit, 2^-64 s), never a float. A difference is a [`Span`], signed, in the
//! same unit. TAI and UTC are distinct types, converted only with a known TAI−UTC offset.

use core::fmt;
use core::marker::PhantomData;

/// 2^64: one second in the page's fraction unit.
pub const ONE_SEC: u128 = 1 << 64;
const NS_PER_SEC: u128 = 1_000_000_000;

/// A timescale: which clock an instant belongs to.
pub trait Timescale: Copy + Clone + fmt::Debug + Ord + core::hash::Hash + 'static {
    /// Its short name ("TAI", "UTC", "MONOTONIC").
    const NAME: &'static str;
    /// The page's `time_type` value for it.
    const TIME_TYPE: u8;
}

/// International Atomic Time; its epoch is 1970-01-01T00:00:00 TAI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tai;
/// UTC as POSIX counts it (no leap seconds in the count); epoch 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utc;
/// A monotonic clock whose epoch is undefined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Monotonic;

impl Timescale for Tai {
    const NAME: &'static str = "TAI";
    const TIME_TYPE: u8 = crate::abi::time_type::TAI;
}
impl Timescale for Utc {
    const NAME: &'static str = "UTC";
    const TIME_TYPE: u8 = crate::abi::time_type::UTC;
}
impl Timescale for Monotonic {
    const NAME: &'static str = "MONOTONIC";
    const TIME_TYPE: u8 = crate::abi::time_type::MONOTONIC;
}

/// A signed length of time in units of 2^-64 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub i128);

impl Span {
    /// Zero.
    pub const ZERO: Span = Span(0);

    /// From whole nanoseconds (exact up to the 2^-64 s unit, rounded to nearest).
    pub fn from_nanos(ns: i64) -> Span {
        let mag = ns.unsigned_abs() as u128;
        let whole = (mag / NS_PER_SEC) << 64;
        let frac = (((mag % NS_PER_SEC) << 64) + NS_PER_SEC / 2) / NS_PER_SEC;
        let v = (whole + frac) as i128;
        Span(if ns < 0 { -v } else { v })
    }

    /// From whole seconds.
    #[inline]
    pub fn from_secs(s: i64) -> Span {
        Span((s as i128) << 64)
    }

    /// Nanoseconds, rounded towards negative infinity.
    pub fn as_nanos_floor(self) -> i128 {
        // i128 * 1e9 could overflow for spans beyond ~2^33 s; split whole seconds first.
        let secs = self.0 >> 64;
        let frac = (self.0 & (ONE_SEC as i128 - 1)) as u128;
        secs * NS_PER_SEC as i128 + ((frac * NS_PER_SEC) >> 64) as i128
    }

    /// Nanoseconds, rounded to nearest (halves up).
    pub fn as_nanos_round(self) -> i128 {
        let secs = self.0 >> 64;
        let frac = (self.0 & (ONE_SEC as i128 - 1)) as u128;
        secs * NS_PER_SEC as i128 + ((frac * NS_PER_SEC + (1 << 63)) >> 64) as i128
    }

    /// Nanoseconds as a float, for statistics and display only (never for instants).
    pub fn as_nanos_f64(self) -> f64 {
        self.0 as f64 * 1e9 / ONE_SEC as f64
    }

    /// The absolute value as an unsigned span.
    pub fn unsigned_abs(self) -> u128 {
        self.0.unsigned_abs()
    }
}

impl core::ops::Neg for Span {
    type Output = Span;
    fn neg(self) -> Span {
        Span(-self.0)
    }
}

/// floor(2^128 / 10^9): one nanosecond in 2^-64 s units, as 64.64 fixed point.
const NS_IN_FRAC_Q64: u128 = u128::MAX / NS_PER_SEC;

/// Converts whole nanoseconds into 2^-64 s units, never rounding down: the result is at least
/// the exact value and at most 2 units (1.1e-19 s) above it. Bounds are widened, never
/// narrowed; multiplications only (no 128-bit division on the read path).
#[inline]
pub fn nanos_to_frac_ceil(ns: u64) -> u128 {
    let (hi, lo) = ((NS_IN_FRAC_Q64 >> 64) as u64, NS_IN_FRAC_Q64 as u64);
    // ns · Q / 2^64 = ns·hi + (ns·lo) / 2^64; each floor loses < 1 unit, Q itself < 1 unit·ns/2^64.
    (ns as u128 * hi as u128) + ((ns as u128 * lo as u128) >> 64) + 2
}

/// An instant in timescale `S`: 64.64 fixed-point seconds since the timescale's epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp<S: Timescale> {
    raw: u128,
    _scale: PhantomData<S>,
}

impl<S: Timescale> Timestamp<S> {
    /// From the raw 64.64 value (seconds in the high half, 2^-64 s fraction in the low half).
    #[inline]
    pub const fn from_raw(raw: u128) -> Self {
        Timestamp { raw, _scale: PhantomData }
    }

    /// From whole seconds and a 2^-64 s fraction, as in the page.
    pub const fn from_parts(sec: u64, frac: u64) -> Self {
        Self::from_raw(((sec as u128) << 64) | frac as u128)
    }

    /// From nanoseconds since the epoch (exact: rounded up to the next 2^-64 s unit).
    pub fn from_nanos(ns: u128) -> Self {
        let sec = ns / NS_PER_SEC;
        let frac = ((ns % NS_PER_SEC) << 64).div_ceil(NS_PER_SEC);
        Self::from_raw((sec << 64) + frac)
    }

    /// The raw 64.64 value.
    #[inline]
    pub const fn raw(self) -> u128 {
        self.raw
    }

    /// Whole seconds since the epoch.
    pub const fn sec(self) -> u64 {
        (self.raw >> 64) as u64
    }

    /// The fraction of the second in 2^-64 s.
    pub const fn frac(self) -> u64 {
        self.raw as u64
    }

    /// Nanoseconds within the second, rounded down.
    pub const fn subsec_nanos(self) -> u32 {
        ((self.frac() as u128 * NS_PER_SEC) >> 64) as u32
    }

    /// Nanoseconds since the epoch, rounded down.
    pub const fn as_nanos(self) -> u128 {
        self.sec() as u128 * NS_PER_SEC + self.subsec_nanos() as u128
    }

    /// `self − earlier`, or `None` if it does not fit a [`Span`].
    pub fn checked_sub(self, earlier: Self) -> Option<Span> {
        let a = i128::try_from(self.raw).ok()?;
        let b = i128::try_from(earlier.raw).ok()?;
        a.checked_sub(b).map(Span)
    }

    /// `self + span`, or `None` if the result is before the epoch or beyond `u64` seconds.
    #[inline]
    pub fn checked_add(self, span: Span) -> Option<Self> {
        let raw = if span.0 >= 0 {
            self.raw.checked_add(span.0 as u128)?
        } else {
            self.raw.checked_sub(span.0.unsigned_abs())?
        };
        Some(Self::from_raw(raw))
    }

    /// Re-labels the timescale after adding `offset_sec` seconds (the one place where one
    /// timescale becomes another).
    #[inline]
    fn shifted<T: Timescale>(self, offset_sec: i64) -> Option<Timestamp<T>> {
        self.checked_add(Span::from_secs(offset_sec)).map(|t| Timestamp::from_raw(t.raw))
    }
}

impl Timestamp<Utc> {
    /// TAI = UTC + (TAI − UTC).
    #[inline]
    pub fn to_tai(self, tai_minus_utc: i16) -> Option<Timestamp<Tai>> {
        self.shifted(tai_minus_utc as i64)
    }
}

impl Timestamp<Tai> {
    /// UTC = TAI − (TAI − UTC).
    #[inline]
    pub fn to_utc(self, tai_minus_utc: i16) -> Option<Timestamp<Utc>> {
        self.shifted(-(tai_minus_utc as i64))
    }
}

impl<S: Timescale> fmt::Debug for Timestamp<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}.{:09})", S::NAME, self.sec(), self.subsec_nanos())
    }
}

impl<S: Timescale> fmt::Display for Timestamp<S> {
    /// `2026-11-22T22:14:07.123456789 TAI` for TAI/UTC (the proleptic Gregorian calendar of
    /// POSIX time), `12345.678901234 MONOTONIC` for a monotonic clock.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if S::TIME_TYPE == crate::abi::time_type::MONOTONIC {
            return write!(f, "{}.{:09} {}", self.sec(), self.subsec_nanos(), S::NAME);
        }
        let days = self.sec() / 86_400;
        let rem = self.sec() % 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09} {}",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            self.subsec_nanos(),
            S::NAME
        )
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian), using the
/// era-of-400-years method.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanos_round_trip() {
        for ns in [0u128, 1, 999_999_999, 1_000_000_000, 1_795_000_000_123_456_789] {
            assert_eq!(Timestamp::<Tai>::from_nanos(ns).as_nanos(), ns);
        }
    }

    #[test]
    fn tai_is_utc_plus_offset() {
        let utc = Timestamp::<Utc>::from_parts(1_795_000_000, 7);
        let tai = utc.to_tai(37).unwrap();
        assert_eq!(tai.sec(), 1_795_000_037);
        assert_eq!(tai.frac(), 7);
        assert_eq!(tai.to_utc(37).unwrap(), utc);
    }

    #[test]
    fn calendar() {
        // 2026-11-22 is day 20_779 since 1970-01-01.
        assert_eq!(days_from_civil(2026, 11, 22), 20_779);
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for d in (-800_000..800_000).step_by(997) {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        let t = Timestamp::<Utc>::from_parts(20_779 * 86_400 + 3600 + 61, 1 << 63);
        assert_eq!(t.to_string(), "2026-11-22T01:01:01.500000000 UTC");
    }

    #[test]
    fn span_nanos() {
        for ns in [-2_500_000_001i64, -1, 0, 1, 1_500_000_000, i64::MAX / 2] {
            assert_eq!(Span::from_nanos(ns).as_nanos_round(), ns as i128);
        }
        // Floor of a hair under -1 ns is -2 ns.
        assert_eq!(Span(-(ONE_SEC as i128) / 1_000_000_000 - 1).as_nanos_floor(), -2);
        assert_eq!(Span::from_secs(-3).as_nanos_floor(), -3_000_000_000);
        for ns in [0u64, 1, 999, 1_000_000_000, u64::MAX] {
            let exact = ((ns as u128) << 64).div_ceil(NS_PER_SEC);
            let got = nanos_to_frac_ceil(ns);
            assert!(got >= exact && got <= exact + 2, "{ns}: {got} vs {exact}");
        }
    }
}
