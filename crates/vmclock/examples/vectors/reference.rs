//! The conformance vectors' reference: a page's reading at a counter value, computed from the
//! page's bytes with unbounded integers, following docs/PROTOCOL.md ("Conformance vectors")
//! step by step. It shares no code with the library: it decodes the bytes itself, uses
//! `BigInt` for every quantity, and places leap seconds with its own calendar.
use num_bigint::BigInt;
use num_traits::{One, Signed, Zero};

/// What a reading gives, or the C API's name of the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The reading.
    Ok(Expect),
    /// `VMCLOCK_E_*`.
    Err(&'static str),
}

/// A successful reading's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub timescale: &'static str,
    /// The page's own timescale, ns, floored.
    pub time_ns: BigInt,
    /// CLOCK_REALTIME scale, ns, floored (None: unbounded).
    pub earliest_ns: Option<BigInt>,
    /// CLOCK_REALTIME scale, ns, ceiled (None: unbounded).
    pub latest_ns: Option<BigInt>,
    pub status: u8,
    pub tai_minus_utc: Option<i64>,
}

fn int(v: u128) -> BigInt {
    BigInt::from(v)
}

fn pow2(n: u32) -> BigInt {
    BigInt::one() << n
}

/// floor(a / b) for b > 0.
fn div_floor(a: &BigInt, b: &BigInt) -> BigInt {
    let (q, r) = (a / b, a % b);
    if r.is_negative() {
        q - 1
    } else {
        q
    }
}

/// ceil(a / b) for b > 0.
fn div_ceil(a: &BigInt, b: &BigInt) -> BigInt {
    -div_floor(&-a, b)
}

struct Bytes<'a> {
    page: &'a [u8],
}

impl Bytes<'_> {
    /// Little-endian unsigned integer of `n` bytes at `off` (bytes beyond the page read 0; the
    /// caller checks presence first where it matters).
    fn uint(&self, off: usize, n: usize) -> u128 {
        (0..n).rev().fold(0u128, |v, i| v << 8 | u128::from(*self.page.get(off + i).unwrap_or(&0)))
    }
}

/// Days from 1970-01-01 to January 1st of `y` (proleptic Gregorian).
fn days_before_year(y: &BigInt) -> BigInt {
    let y1 = y - 1;
    let leaps = |n: &BigInt| {
        div_floor(n, &BigInt::from(4)) - div_floor(n, &BigInt::from(100)) + div_floor(n, &BigInt::from(400))
    };
    (y - 1970) * 365 + leaps(&y1) - leaps(&BigInt::from(1969))
}

fn is_leap_year(y: &BigInt) -> bool {
    let m = |d: u32| (y % d).is_zero();
    m(4) && (!m(100) || m(400))
}

/// Days from 1970-01-01 to the first of month `m` (1..=12) of year `y`.
fn days_to_month(y: &BigInt, m: u32) -> BigInt {
    let lengths = [31, if is_leap_year(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    days_before_year(y) + lengths[..(m - 1) as usize].iter().sum::<u32>()
}

/// The (year, month) holding day `d` since 1970-01-01.
fn year_month(d: &BigInt) -> (BigInt, u32) {
    let mut y = div_floor(&(d * 400), &BigInt::from(146_097)) + 1970;
    while days_before_year(&y) > *d {
        y -= 1;
    }
    while days_before_year(&(&y + 1)) <= *d {
        y += 1;
    }
    let m = (1..=12u32).rev().find(|&m| days_to_month(&y, m) <= *d).unwrap_or(1);
    (y, m)
}

/// The first second of the month holding UTC second `u`, and of the next month.
fn month_bounds(u: &BigInt) -> (BigInt, BigInt) {
    let (y, m) = year_month(&div_floor(u, &BigInt::from(86_400)));
    let start = days_to_month(&y, m) * 86_400;
    let next = if m == 12 { days_to_month(&(&y + 1), 1) } else { days_to_month(&y, m + 1) } * 86_400;
    (start, next)
}

/// The reading of `page` (all its bytes available) at `counter`.
pub fn evaluate(page: &[u8], counter: u64) -> Outcome {
    match evaluate_inner(page, counter) {
        Ok(e) => Outcome::Ok(e),
        Err(code) => Outcome::Err(code),
    }
}

const INVALID: &str = "VMCLOCK_E_INVALID";
const NO_TIME: &str = "VMCLOCK_E_NO_TIME";
const NO_UTC: &str = "VMCLOCK_E_NO_UTC";
const OVERFLOW: &str = "VMCLOCK_E_OVERFLOW";

fn evaluate_inner(page: &[u8], counter: u64) -> Result<Expect, &'static str> {
    let b = Bytes { page };
    // Step 1: the header.
    let size = b.uint(0x04, 4);
    if page.len() < 0x20 || b.uint(0x00, 4) != 0x4b4c_4356 || b.uint(0x08, 2) != 1 || size < 0x20 {
        return Err(INVALID);
    }
    let present = size.min(page.len() as u128);
    let has = |off: u128, len: u128| off + len <= present;
    let flags = b.uint(0x18, 8);
    let flag = |bit: u32| flags >> bit & 1 == 1;
    // Step 2: a time relation.
    if b.uint(0x0a, 1) == 0xff || !has(0x50, 8) {
        return Err(NO_TIME);
    }
    let time_type = b.uint(0x0b, 1);
    let timescale = match time_type {
        0 => "UTC",
        1 => "TAI",
        2 => "MONOTONIC",
        _ => return Err(NO_TIME),
    };
    let shift = b.uint(0x27, 1) as u32;
    if shift >= 128 {
        return Err(INVALID);
    }
    // Step 3: the time at the counter, 2^-64 s.
    let c1 = b.uint(0x28, 8);
    let period = int(b.uint(0x30, 8));
    let mut delta = (int(counter as u128) - int(c1)) % pow2(64);
    if delta.is_negative() {
        delta += pow2(64);
    }
    if delta >= pow2(63) {
        delta -= pow2(64);
    }
    let t1 = int(b.uint(0x48, 8)) * pow2(64) + int(b.uint(0x50, 8));
    let t = &t1 + div_floor(&(&delta * &period), &pow2(shift));
    let limit = pow2(128);
    if t.is_negative() || t >= limit {
        return Err(OVERFLOW);
    }
    let ns = |x: &BigInt| x * 1_000_000_000;
    let page_ns = div_floor(&ns(&t), &pow2(64));
    // Step 4: the maximum error.
    let max_time = (has(0x60, 8) && flag(6)).then(|| b.uint(0x60, 8));
    let max_rate = (has(0x40, 8) && flag(4)).then(|| b.uint(0x40, 8));
    let error = match (max_time, max_rate) {
        (None, _) => None,
        (Some(m), rate) => {
            // The time term: floor(m · floor(2^128 / 10^9) / 2^64) + 2.
            let q = div_floor(&pow2(128), &BigInt::from(1_000_000_000u64));
            let time_term: BigInt = div_floor(&(int(m) * q), &pow2(64)) + 2;
            if delta.is_zero() {
                Some(time_term)
            } else {
                rate.map(|r| time_term + div_ceil(&(int(r) * delta.abs()), &pow2(shift)))
            }
        }
    }
    .map(|e: BigInt| e.min(&limit - 1));
    // Step 5: TAI − UTC.
    let raw_off = b.uint(0x24, 2) as u16 as i16 as i64;
    let tai_minus_utc = if has(0x24, 2) && flag(0) && raw_off != -32768 { Some(raw_off.abs()) } else { None };
    // Step 6: linear UTC.
    let u = match time_type {
        0 => t.clone(),
        1 => match tai_minus_utc {
            Some(off) => &t - BigInt::from(off) * pow2(64),
            None => return Err(NO_UTC),
        },
        _ => return Err(NO_UTC),
    };
    if u.is_negative() || u >= limit {
        return Err(OVERFLOW);
    }
    // Step 7: the leap second.
    let indicator = b.uint(0x26, 1);
    let mut step = 0i64;
    if matches!(indicator, 1 | 2 | 4 | 5) && b.uint(0x48, 8) < 1 << 63 {
        // The reference's UTC second: time_sec (minus the offset for a TAI page).
        let u1 = BigInt::from(b.uint(0x48, 8))
            - if time_type == 1 { BigInt::from(tai_minus_utc.unwrap_or(0)) } else { BigInt::zero() };
        let (start, next) = month_bounds(&u1);
        if next < pow2(63) {
            let (at, before, s) = match indicator {
                1 => (next.clone(), false, 1),
                2 => (&next - 1, false, -1),
                4 => (&start - 1, true, -1),
                _ => (start.clone(), true, 1),
            };
            let edge = &at * pow2(64);
            let beyond = if before { u < edge } else { u >= edge };
            if !at.is_negative() && beyond {
                step = s;
            }
        }
    }
    let u = u - BigInt::from(step) * pow2(64);
    if u.is_negative() || u >= limit {
        return Err(OVERFLOW);
    }
    // Step 8: nanoseconds, rounded outwards, each within a signed 64-bit integer.
    let i64_max = BigInt::from(i64::MAX);
    let fit = |v: BigInt| if v > i64_max { Err(OVERFLOW) } else { Ok(v) };
    fit(div_floor(&ns(&u), &pow2(64)))?;
    let (earliest_ns, latest_ns) = match &error {
        None => (None, None),
        Some(e) => {
            let lo = (&u - e).max(BigInt::zero());
            let hi = (&u + e).min(&limit - 1);
            let earliest = fit(div_floor(&ns(&lo), &pow2(64)))?;
            let latest = fit(div_ceil(&ns(&hi), &pow2(64)))?;
            fit(div_ceil(&ns(e), &pow2(64)))?;
            (Some(earliest), Some(latest))
        }
    };
    let status = if has(0x22, 1) { b.uint(0x22, 1) as u8 } else { 0 };
    Ok(Expect { timescale, time_ns: page_ns, earliest_ns, latest_ns, status, tai_minus_utc })
}
