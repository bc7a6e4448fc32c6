//! ClockBound 3.x's segment (`/var/run/clockbound/shm1`), as the published crate
//! clock-bound 3.0.0-rc.0 defines it (src/shm.rs `ClockErrorBoundV3`, src/shm/shm_header.rs,
//! src/shm/reader.rs), native-endian, C layout. The header is 2.x's with segsize 104 and
//! the version word 0x0303 (minimum version 3 in the high byte, current version 3 in the
//! low byte); the 3.x client refuses any segment whose range does not include 3, so it
//! reads `shm1` only, and a 2.x client refuses `shm1`.
//!
//! | offset | field | |
//! |---|---|---|
//! | 16 | as_of_tsc: u64 | counter value of the update |
//! | 24 | as_of: timespec | UTC (POSIX) at as_of_tsc |
//! | 40 | void_after: timespec | UTC after which nothing holds |
//! | 56 | period_frac: u64 | period = period_frac / 2^(64 + period_shift) s per tick |
//! | 64 | period_err_frac: u64 | relative period error = period_err_frac / 2^(64 + period_err_shift) |
//! | 72 | bound_nsec: i64 | bound on the error of the time at as_of_tsc |
//! | 80 | disruption_marker: u64 | |
//! | 88 | max_drift_ppb: u32 | growth of the bound per second (the client refuses ≥ 1e9) |
//! | 92 | clock_status: i32 | 0 Unknown, 1 Synchronized, 2 FreeRunning, 3 Disrupted |
//! | 96 | clock_disruption_support_enabled: bool | |
//! | 97 | period_shift: u8 | |
//! | 98 | period_err_shift: u8 | |
//! | 99 | padding [u8; 5] | |
//!
//! The client never reads CLOCK_REALTIME: it reads the counter (LFENCE; RDTSC; LFENCE on
//! x86_64, ISB; CNTVCT_EL0 on arm64), Δ = counter − as_of_tsc (0 if negative), and in
//! f64 computes t = as_of + Δ·period (truncated to ns) and the bound
//! bound_nsec + Δ·period·max_drift_ppb + Δ·period·period_err (truncated). It keeps an
//! Unknown or Disrupted status; otherwise it says Unknown once t > void_after,
//! FreeRunning once t > as_of + 60 s, else the status written.
//!
//! vmtime writes the page's own counter→UTC map, anchored at the pairing's counter: the
//! page's UTC there (`as_of`, floored to the ns), its period (the same fixed-point format
//! as vmclock's, copied as is) and its period maximum error as `period_err`. The bound is
//! the 2.x segment's (the page's maxerror at that counter + |page − CLOCK_REALTIME| + the
//! pairing's half-width + the burst's span × drift + the safety margin) and grows at
//! least as fast; see [`claimed`] for why the window then holds both the page's interval
//! and CLOCK_REALTIME.
use super::*;

/// The version word: minimum 3, current 3.
pub const VERSION: u16 = 0x0303;
/// The body's size.
pub const BODY_SIZE: usize = 88;
/// The segment's size.
pub const SEGMENT_SIZE: usize = HEADER_SIZE + BODY_SIZE;
/// The layout.
pub const LAYOUT: Layout = Layout { version: VERSION, body_size: BODY_SIZE, name: "ClockBound 3 segment" };
/// The client says FreeRunning this long after as_of (clock-bound src/shm.rs).
pub const FREE_RUNNING_GRACE_NS: i128 = 60 * NS;
/// Added to the bound for the client's roundings: as_of floored to the ns (< 1 ns), its
/// time truncated to the ns (< 1 ns), its bound truncated to the ns (< 1 ns), and f64
/// products (relative 2^-50 at most: < 0.01 ns over an hour).
pub const ROUNDING_NS: u128 = 4;
/// The latest as_of written: the client computes in i64 ns (it would overflow in 2262);
/// a page further out gives Unknown.
pub const MAX_AS_OF_NS: i128 = i64::MAX as i128 - 2 * 3600 * NS;

/// The counter→UTC map of a body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Map {
    /// Counter value at as_of.
    pub as_of_counter: u64,
    /// UTC at that counter, ns since the epoch.
    pub as_of_ns: i128,
    /// The period, 2^-(64 + period_shift) s per tick.
    pub period_frac: u64,
    /// Its shift.
    pub period_shift: u8,
}

/// The segment's body (`ClockErrorBoundV3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorBound {
    /// The map.
    pub map: Map,
    /// UTC after which the segment is void, ns.
    pub void_after_ns: i128,
    /// The period's relative error, 2^-(64 + period_err_shift).
    pub period_err_frac: u64,
    /// Its shift.
    pub period_err_shift: u8,
    /// Bound at as_of, ns.
    pub bound_ns: i64,
    /// The page's disruption marker.
    pub disruption_marker: u64,
    /// Growth of the bound beyond the period error, ppb.
    pub max_drift_ppb: u32,
    /// The status.
    pub status: CbStatus,
    /// Whether clients compare the marker with their vmclock device's.
    pub disruption_support: bool,
}

impl ErrorBound {
    /// The body's bytes (native byte order, C layout).
    pub fn to_bytes(&self) -> [u8; BODY_SIZE] {
        let mut b = [0u8; BODY_SIZE];
        b[0..8].copy_from_slice(&self.map.as_of_counter.to_ne_bytes());
        timespec(self.map.as_of_ns, &mut b[8..24]);
        timespec(self.void_after_ns, &mut b[24..40]);
        b[40..48].copy_from_slice(&self.map.period_frac.to_ne_bytes());
        b[48..56].copy_from_slice(&self.period_err_frac.to_ne_bytes());
        b[56..64].copy_from_slice(&self.bound_ns.to_ne_bytes());
        b[64..72].copy_from_slice(&self.disruption_marker.to_ne_bytes());
        b[72..76].copy_from_slice(&self.max_drift_ppb.to_ne_bytes());
        b[76..80].copy_from_slice(&(self.status as i32).to_ne_bytes());
        b[80] = self.disruption_support as u8;
        b[81] = self.map.period_shift;
        b[82] = self.period_err_shift;
        b
    }
}

/// 64.64 s → ns, floored.
fn floor_ns(x: i128) -> i128 {
    (x >> 64) * NS + (((x & (UNIT - 1)) * NS) >> 64)
}

/// num / den (< 1) rounded up, as frac / 2^(64 + shift) with the largest shift that keeps
/// frac in a u64 (the significant bits kept, as ClockBound's own `PeriodFrac` does).
pub fn ratio_ceil(num: u64, den: u64) -> Option<(u64, u8)> {
    if num >= den {
        return None;
    }
    if num == 0 {
        return Some((0, 0));
    }
    // num/den ≥ 2^-(d+1) with d = lz(num) − lz(den): a shift of d − 1 keeps it below 1 and
    // (num << (64 + shift)) below 2^(127 − lz(den)), within a u128.
    let mut shift = (num.leading_zeros() - den.leading_zeros()).saturating_sub(1);
    loop {
        let frac = ((num as u128) << (64 + shift)).div_ceil(den as u128);
        match u64::try_from(frac) {
            Ok(f) => return Some((f, shift as u8)),
            Err(_) if shift > 0 => shift -= 1,
            Err(_) => return None,
        }
    }
}

/// The body for a claimed pairing `p` (bound `c`) of `page`, or `None` when the layout
/// cannot express it (no period or a period error ≥ 1, a time beyond i64 ns, a drift
/// the client refuses).
///
/// Why it is honest for what the 3.x client computes: at a counter C ≥ as_of_tsc the
/// page says true UTC lies within page(C) ± (maxerror(Cp) + Pm·(C − Cp)) (the spec's
/// bound, grown from the pairing's counter Cp by the period's maximum error Pm). The
/// client's t is page(C) itself (the same period from the same point; its roundings
/// are in `ROUNDING_NS`), and its bound is bound_nsec + (C − Cp)·P·(period_err +
/// max_drift): with period_err ≥ Pm/P and bound_nsec ≥ maxerror(Cp), the page's whole
/// interval is inside. CLOCK_REALTIME is inside too, as in the 2.x segment: at Cp,
/// |page − REALTIME| ≤ |offset| + half-width + span term ≤ bound_nsec − maxerror, and
/// it moves apart by at most the measured rate + the margin, which `max_drift_ppb`
/// carries (the page's own rate error is in `period_err` instead, so the total growth
/// equals the 2.x segment's; 1 ppb and drift² are added for the client measuring
/// elapsed time with the page's period rather than CLOCK_REALTIME's). A leap second
/// the page announces would step UTC where the client's linear map does not: the
/// segment is void from a second before the edge to a second after.
pub fn claimed(p: &Pairing, c: &Claim, page: &Snapshot, life_ns: i128, status: CbStatus) -> Option<ErrorBound> {
    let r = page.reference().ok()?;
    let pm = r.maxerror.rate?;
    if r.period == 0 || pm >= r.period {
        return None;
    }
    let (period_err_frac, period_err_shift) = ratio_ceil(pm, r.period)?;
    let as_of_ns = floor_ns(p.page_utc);
    if !(0..=MAX_AS_OF_NS).contains(&as_of_ns) || !(0..=3600 * NS).contains(&life_ns) {
        return None;
    }
    let mut void_after_ns = as_of_ns + life_ns;
    if let Some(e) = page.leap_edge() {
        let edge = e.at_sec as i128 * NS;
        if void_after_ns > edge - NS && as_of_ns < edge + NS {
            void_after_ns = as_of_ns.max(edge - NS);
        }
    }
    let drift =
        c.drift_ppb - c.page_rate_ppb.min(c.drift_ppb) + (c.drift_ppb * c.drift_ppb).div_ceil(1_000_000_000) + 1;
    if drift >= MAX_DRIFT_PPB as u128 || c.bound_ns + ROUNDING_NS > i64::MAX as u128 / 2 {
        return None;
    }
    Some(ErrorBound {
        map: Map { as_of_counter: p.counter, as_of_ns, period_frac: r.period, period_shift: r.shift },
        void_after_ns,
        period_err_frac,
        period_err_shift,
        bound_ns: (c.bound_ns + ROUNDING_NS) as i64,
        disruption_marker: p.marker,
        max_drift_ppb: drift as u32,
        status,
        disruption_support: false,
    })
}

/// A body that claims nothing (`status` Unknown or Disrupted), on the last map if any
/// (as ClockBound's daemon keeps its last parameters when it marks them Disrupted).
pub fn held(map: Option<Map>, status: CbStatus, disruption_marker: u64, disruption_support: bool) -> ErrorBound {
    let map = map.unwrap_or_default();
    ErrorBound {
        map,
        void_after_ns: map.as_of_ns,
        period_err_frac: 0,
        period_err_shift: 0,
        bound_ns: 0,
        disruption_marker,
        max_drift_ppb: 0,
        status,
        disruption_support,
    }
}
