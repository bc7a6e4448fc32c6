//! The accuracy self-test of a page against the kernel clock (the RFC's `/dev/vmclock_host`
//! selftest, done better): for each (clock, counter, clock) sample the page's time at the counter
//! must lie inside the window the kernel clock gives, widened by a tolerance.

use crate::stats::Summary;
use crate::AbaSample;
use serde::Serialize;
use thiserror::Error;
use vmclock::abi::time_type;
use vmclock::{Snapshot, TimeError};

/// How the kernel's CLOCK_REALTIME is put into the page's timescale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scale {
    /// The page is UTC: compare with CLOCK_REALTIME directly.
    Utc,
    /// The page is TAI: compare with CLOCK_REALTIME + this offset (s), and where it came from.
    Tai {
        /// TAI − UTC used.
        tai_minus_utc: i16,
        /// "page" (TAI_OFFSET_VALID) or "kernel" (adjtimex tai).
        source: &'static str,
    },
}

/// Why a page cannot be checked.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckError {
    /// The page gives no time.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// A TAI page without an offset, on a kernel whose TAI offset is unset.
    #[error("the page is TAI without a valid TAI offset and the kernel's TAI offset is unset: nothing to compare CLOCK_REALTIME with")]
    NoTaiOffset,
    /// A monotonic page has no wall-clock relation.
    #[error("the page is MONOTONIC: it cannot be compared with CLOCK_REALTIME")]
    Monotonic,
    /// No samples.
    #[error("no samples")]
    NoSamples,
    /// The memory for the figures of this many samples could not be had.
    #[error("not enough memory for the figures of {samples} samples ({bytes} bytes): give fewer --samples")]
    OutOfMemory {
        /// The samples.
        samples: usize,
        /// The bytes asked for.
        bytes: usize,
    },
}

/// A vector of `n` f64 figures, or the error naming what could not be had.
fn figures(n: usize) -> Result<Vec<f64>, CheckError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| CheckError::OutOfMemory { samples: n, bytes: n.saturating_mul(std::mem::size_of::<f64>()) })?;
    Ok(v)
}

/// Decides how to compare: the page's own TAI offset first, else the kernel's (`kernel_tai` from
/// adjtimex, 0 meaning unset).
pub fn scale_for(snap: &Snapshot, kernel_tai: i32) -> Result<Scale, CheckError> {
    snap.reference()?;
    match snap.time_type() {
        time_type::UTC => Ok(Scale::Utc),
        time_type::TAI => match snap.tai_minus_utc() {
            Some(tai_minus_utc) => Ok(Scale::Tai { tai_minus_utc, source: "page" }),
            None if kernel_tai != 0 => Ok(Scale::Tai { tai_minus_utc: kernel_tai as i16, source: "kernel" }),
            None => Err(CheckError::NoTaiOffset),
        },
        _ => Err(CheckError::Monotonic),
    }
}

/// The result of a check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    /// How the kernel clock was put into the page's timescale.
    pub scale: Scale,
    /// Samples taken.
    pub samples: usize,
    /// Samples whose page time lay inside [before − tolerance, after + tolerance].
    pub inside: usize,
    /// The tolerance, ns.
    pub tolerance_ns: u64,
    /// Page time − window midpoint, ns.
    pub error_ns: Summary,
    /// How far outside the window (0 when inside), ns.
    pub outside_ns: Summary,
    /// Window widths, ns.
    pub window_ns: Summary,
    /// Samples where the page advertised a maximum error.
    pub bounded: usize,
    /// Of those, samples whose window overlapped the page's [earliest, latest].
    pub within_bounds: usize,
    /// The advertised maximum error at the samples, ns (when given).
    pub maxerror_ns: Option<Summary>,
}

impl CheckReport {
    /// Every sample inside the widened window, and the kernel clock inside the page's own
    /// bounds wherever it gives them.
    pub fn passed(&self) -> bool {
        self.inside == self.samples && self.within_bounds == self.bounded
    }
}

/// What a check concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The page agrees with the kernel clock.
    Pass,
    /// It does not.
    Fail,
    /// The page is INITIALIZING: its publisher is still calibrating, so it promises nothing yet.
    NotYetCalibrated,
}

impl Verdict {
    /// The verdict for a report on a page with this clock_status.
    pub fn of(report: &CheckReport, clock_status: Option<u8>) -> Verdict {
        if clock_status == Some(vmclock::abi::status::INITIALIZING) {
            Verdict::NotYetCalibrated
        } else if report.passed() {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotYetCalibrated => "not yet calibrated (the page is INITIALIZING)",
        })
    }
}

const UNIT: i128 = 1 << 64;
const NS: i128 = 1_000_000_000;

/// Checks `samples` (CLOCK_REALTIME windows) against the page.
pub fn check(
    snap: &Snapshot,
    scale: Scale,
    samples: &[AbaSample],
    tolerance_ns: u64,
) -> Result<CheckReport, CheckError> {
    if samples.is_empty() {
        return Err(CheckError::NoSamples);
    }
    let reference = snap.reference()?;
    let shift_ns = match scale {
        Scale::Utc => 0,
        Scale::Tai { tai_minus_utc, .. } => tai_minus_utc as i128 * NS,
    };
    let tol = crate::ns_to_frac(tolerance_ns as i128, true);
    // Allocated fallibly: a million samples under a tight memory limit is an error to report,
    // not an abort.
    let mut errors = figures(samples.len())?;
    let mut outside = figures(samples.len())?;
    let mut windows = figures(samples.len())?;
    let mut maxerrs = figures(samples.len())?;
    let (mut inside, mut within_bounds) = (0, 0);
    for s in samples {
        let t = reference.raw_time_at(s.counter)? as i128;
        let lo = crate::ns_to_frac(s.before_ns + shift_ns, false);
        let hi = crate::ns_to_frac(s.after_ns + shift_ns, true);
        let mid = lo + (hi - lo) / 2;
        errors.push((t - mid) as f64 * 1e9 / UNIT as f64);
        windows.push(s.window_ns() as f64);
        let out = if t < lo - tol {
            lo - tol - t
        } else if t > hi + tol {
            t - hi - tol
        } else {
            inside += 1;
            0
        };
        outside.push(out as f64 * 1e9 / UNIT as f64);
        if let Some(e) = reference.maxerror_at(s.counter) {
            let e = e.min(i128::MAX as u128) as i128;
            maxerrs.push(e as f64 * 1e9 / UNIT as f64);
            if t.saturating_sub(e) <= hi && t.saturating_add(e) >= lo {
                within_bounds += 1;
            }
        }
    }
    Ok(CheckReport {
        scale,
        samples: samples.len(),
        inside,
        tolerance_ns,
        error_ns: Summary::of(&mut errors).expect("non-empty"),
        outside_ns: Summary::of(&mut outside).expect("non-empty"),
        window_ns: Summary::of(&mut windows).expect("non-empty"),
        bounded: maxerrs.len(),
        within_bounds,
        maxerror_ns: Summary::of(&mut maxerrs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmclock::abi::counter_id;
    use vmclock::{PageBuilder, Period, Tai, Timestamp, Utc};

    /// A simulated 1 GHz counter that reads 0 at UTC 1_795_000_000 s: counter c ↔ that + c ns.
    const T0: i128 = 1_795_000_000 * NS;

    fn tai_page(offset_ns: i64) -> Snapshot {
        let ref_ns = (T0 + 37 * NS + offset_ns as i128) as u128;
        let abi = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                0,
                Timestamp::<Tai>::from_nanos(ref_ns),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .tai_minus_utc(37)
            .maxerror(100, 0)
            .build();
        Snapshot::new(abi, 4096).unwrap()
    }

    fn samples(window: i128) -> Vec<AbaSample> {
        (0..1000)
            .map(|i| {
                let c = 1_000 + i * 997;
                AbaSample {
                    before_ns: T0 + c as i128 - window / 2,
                    counter: c,
                    after_ns: T0 + c as i128 + window - window / 2,
                }
            })
            .collect()
    }

    #[test]
    fn an_exact_page_passes_with_zero_tolerance() {
        let snap = tai_page(0);
        let scale = scale_for(&snap, 0).unwrap();
        assert_eq!(scale, Scale::Tai { tai_minus_utc: 37, source: "page" });
        let r = check(&snap, scale, &samples(30), 0).unwrap();
        assert!(r.passed(), "{r:?}");
        assert!(r.error_ns.max.abs() <= 1.0 && r.error_ns.min.abs() <= 1.0);
        assert_eq!(r.window_ns.p50, 30.0);
        assert_eq!((r.bounded, r.within_bounds), (1000, 1000));
    }

    #[test]
    fn an_offset_page_fails_by_the_right_amount() {
        let snap = tai_page(50);
        let r = check(&snap, scale_for(&snap, 0).unwrap(), &samples(30), 0).unwrap();
        assert_eq!(r.inside, 0);
        assert!((r.error_ns.p50 - 50.0).abs() < 1.0, "{:?}", r.error_ns);
        assert!((r.outside_ns.p50 - 35.0).abs() < 1.0, "{:?}", r.outside_ns);
        // Its advertised ±100 ns still covers the truth.
        assert_eq!(r.within_bounds, 1000);
        // Tolerance widens the window.
        let r = check(&snap, scale_for(&snap, 0).unwrap(), &samples(30), 36).unwrap();
        assert!(r.passed());
    }

    #[test]
    fn tai_without_offset_uses_the_kernel_or_refuses() {
        let abi = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                0,
                Timestamp::<Tai>::from_nanos((T0 + 37 * NS) as u128),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .build();
        let snap = Snapshot::new(abi, 4096).unwrap();
        assert_eq!(scale_for(&snap, 0), Err(CheckError::NoTaiOffset));
        let scale = scale_for(&snap, 37).unwrap();
        assert_eq!(scale, Scale::Tai { tai_minus_utc: 37, source: "kernel" });
        assert!(check(&snap, scale, &samples(20), 0).unwrap().passed());
        let r = check(&snap, scale, &samples(20), 0).unwrap();
        assert_eq!(Verdict::of(&r, Some(vmclock::abi::status::SYNCHRONIZED)), Verdict::Pass);
        assert_eq!(Verdict::of(&r, Some(vmclock::abi::status::INITIALIZING)), Verdict::NotYetCalibrated);
    }

    #[test]
    fn utc_page_compares_directly() {
        let abi = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                0,
                Timestamp::<Utc>::from_nanos(T0 as u128),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .build();
        let snap = Snapshot::new(abi, 4096).unwrap();
        let r = check(&snap, scale_for(&snap, 0).unwrap(), &samples(10), 0).unwrap();
        assert!(r.passed());
        assert_eq!(r.bounded, 0, "no maxerror flag: no bound");
    }
}
