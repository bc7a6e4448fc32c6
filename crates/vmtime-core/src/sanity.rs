//! The sanity gate every consumer of a page applies before it acts on the page's time: `vmtime
//! sync` (steps and slews), the chrony and ClockBound feeds (samples and bounds) and the relay
//! (guest pages).
//!
//! * **Range.** A time before [`EARLIEST_UNIX_S`] cannot be true: this code did not exist then,
//!   so no binary built from it can be running earlier (a page claiming 1970 is a page gone
//!   wrong, whatever its status and markers say). A time after [`LATEST_UNIX_S`] cannot be set
//!   into Linux's clock (`settimeofday` refuses it) and is far outside any page a host writes.
//!   A disruption (a new marker, a restore from an old snapshot) may move time by any amount,
//!   years included, but never outside this range.
//! * **Continuity** ([`Continuity`]). Without a change of `disruption_marker` or
//!   `vm_generation_counter`, an update may not move the time the page gives for a counter value
//!   by more than the bound the previous update advertised there (counted up to the step limit)
//!   plus the step limit (the ABI requires a later update to stay inside the earlier bounds; the
//!   step limit is the slack for publishers that do not bound, and a loose bound earns no more).
//!   A jump beyond that without a marker change is held until the page comes back, or its
//!   markers change.

use vmclock::Snapshot;

/// The earliest believable UTC, Unix s: 2026-09-01T00:00:00Z, before any line of this gate was
/// written (so before any binary containing it was built).
pub const EARLIEST_UNIX_S: i64 = 1_788_220_800;

/// The latest believable UTC, Unix s: Linux's `TIME_SETTOD_SEC_MAX` (`KTIME_SEC_MAX` less 30
/// years of uptime, 2232-04-18), the last time `settimeofday` and `ADJ_SETOFFSET` accept.
pub const LATEST_UNIX_S: i64 = 9_223_372_036 - 30 * 365 * 86_400;

/// The default continuity limit beyond the page's own bound, ns (sync's default step limit).
pub const DEFAULT_MAX_JUMP_NS: i64 = crate::sync::DEFAULT_MAX_STEP_NS;

/// Why a page's time is not believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Implausible {
    /// The time is before [`EARLIEST_UNIX_S`].
    BeforeBuild {
        /// The page's UTC, whole s (rounded down).
        utc_s: i64,
    },
    /// The time is after [`LATEST_UNIX_S`].
    BeyondRange {
        /// The page's UTC, whole s (rounded down; saturated).
        utc_s: i64,
    },
}

impl std::fmt::Display for Implausible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Implausible::BeforeBuild { utc_s } => write!(
                f,
                "the page's time ({}) is before this program was written ({}): the page is wrong",
                civil(utc_s),
                civil(EARLIEST_UNIX_S)
            ),
            Implausible::BeyondRange { utc_s } => write!(
                f,
                "the page's time ({}) is beyond the last time Linux can be set to ({}): the page is wrong",
                civil(utc_s),
                civil(LATEST_UNIX_S)
            ),
        }
    }
}

/// `YYYY-MM-DDThh:mm:ssZ` for Unix s (years outside 0..=9999 are printed as they come).
pub fn civil(unix_s: i64) -> String {
    let (y, m, d) = vmclock::time::civil_from_days(unix_s.div_euclid(86_400));
    let s = unix_s.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Checks a UTC instant (64.64 s since the Unix epoch) against the range.
pub fn check_utc(utc: i128) -> Result<(), Implausible> {
    let s = (utc >> 64).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    if s < EARLIEST_UNIX_S {
        Err(Implausible::BeforeBuild { utc_s: s })
    } else if s >= LATEST_UNIX_S {
        Err(Implausible::BeyondRange { utc_s: s })
    } else {
        Ok(())
    }
}

/// Checks UTC given in ns since the Unix epoch.
pub fn check_utc_ns(ns: i128) -> Result<(), Implausible> {
    check_utc(crate::ns_to_frac(ns, false))
}

/// An update moved the page's time without a marker change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Jump {
    /// New − predicted by the last accepted update, at the same counter value, ns (saturated).
    pub jump_ns: i64,
    /// The limit in force: the last update's bound there plus the step limit, ns (saturated).
    pub limit_ns: i64,
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the page's time jumped by {:+.3} s without a change of disruption_marker or vm_generation_counter (more than the {:.3} s its previous update and the step limit allow): held until it comes back or its markers change",
            self.jump_ns as f64 / 1e9,
            self.limit_ns as f64 / 1e9
        )
    }
}

/// Follows a page's updates and refuses one that moves time without a marker change (see the
/// module's documentation).
#[derive(Clone, Debug)]
pub struct Continuity {
    last: Option<Snapshot>,
    max_jump_ns: i64,
}

/// 64.64 s → ns, saturated (to within a ns: the low 32 bits are dropped first).
fn to_ns(x: i128) -> i64 {
    (((x >> 32) * 1_000_000_000) >> 32).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Continuity {
    /// A tracker allowing `max_jump_ns` beyond the previous update's own bound.
    pub fn new(max_jump_ns: i64) -> Self {
        Continuity { last: None, max_jump_ns: max_jump_ns.max(0) }
    }

    /// A new limit (SIGHUP); the page last accepted is kept.
    pub fn set_max_jump_ns(&mut self, max_jump_ns: i64) {
        self.max_jump_ns = max_jump_ns.max(0);
    }

    /// Forgets the page last accepted: the next one is taken as it comes (a restart would).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Whether `page` may be believed after the ones accepted before, judged at `counter` (the
    /// counter value the caller is about to use). An accepted page becomes the reference; a
    /// refused one does not (the next update is judged against the last good one).
    pub fn check(&mut self, page: &Snapshot, counter: u64) -> Result<(), Jump> {
        let Some(last) = self.last else {
            self.last = Some(*page);
            return Ok(());
        };
        let same_markers = last.disruption_marker() == page.disruption_marker()
            && (page.vm_generation_counter().is_none()
                || last.vm_generation_counter().is_none()
                || last.vm_generation_counter() == page.vm_generation_counter());
        if !same_markers || last.seq_count() == page.seq_count() && last.raw() == page.raw() {
            self.last = Some(*page);
            return Ok(());
        }
        let (Ok(new), Ok(old)) = (page.utc_at(counter), last.utc_at(counter)) else {
            // No UTC on one side: nothing to compare (the caller's other checks hold such a page).
            self.last = Some(*page);
            return Ok(());
        };
        let jump = new.time.raw() as i128 - old.time.raw() as i128;
        // The previous bound counts up to the step limit: a page claiming ±584 years earns no
        // licence to jump by centuries.
        let step = crate::ns_to_frac(self.max_jump_ns as i128, false);
        let bound = old.maxerror.map_or(0, |m| m.min(step as u128) as i128);
        let limit = bound + step;
        if jump.abs() > limit {
            return Err(Jump { jump_ns: to_ns(jump), limit_ns: to_ns(limit) });
        }
        self.last = Some(*page);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmclock::abi::{counter_id, status};
    use vmclock::{PageBuilder, Period, Tai, Timestamp};

    fn page(seq: u32, tai_s: u64, marker: u64, generation: u64) -> Snapshot {
        let mut abi = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                1000,
                Timestamp::<Tai>::from_parts(tai_s, 0),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .tai_minus_utc(37)
            .status(status::SYNCHRONIZED)
            .maxerror(1_000, 0)
            .disruption_marker(marker)
            .vm_generation(generation)
            .build();
        abi.seq_count.set(seq);
        Snapshot::new(abi, 4096).unwrap()
    }

    #[test]
    fn the_range_is_the_build_and_the_kernel() {
        assert_eq!(civil(EARLIEST_UNIX_S), "2026-09-01T00:00:00Z");
        assert_eq!(civil(LATEST_UNIX_S), "2232-04-18T23:47:16Z");
        assert_eq!(check_utc(0), Err(Implausible::BeforeBuild { utc_s: 0 }));
        assert_eq!(check_utc(-1), Err(Implausible::BeforeBuild { utc_s: -1 }));
        assert!(check_utc((EARLIEST_UNIX_S as i128) << 64).is_ok());
        assert!(check_utc(((EARLIEST_UNIX_S as i128) << 64) - 1).is_err());
        assert!(check_utc_ns(1_796_644_731 * 1_000_000_000).is_ok());
        assert_eq!(check_utc((LATEST_UNIX_S as i128) << 64), Err(Implausible::BeyondRange { utc_s: LATEST_UNIX_S }));
        assert!(matches!(check_utc(i128::MAX), Err(Implausible::BeyondRange { .. })));
        assert!(Implausible::BeforeBuild { utc_s: 0 }.to_string().contains("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn a_jump_needs_a_marker_change() {
        let mut c = Continuity::new(2_000_000_000);
        let t = 1_796_000_037;
        assert!(c.check(&page(2, t, 1, 1), 2000).is_ok(), "the first page is taken");
        assert!(c.check(&page(4, t + 1, 1, 1), 2000).is_ok(), "1 s: within the step limit");
        let j = c.check(&page(6, t + 3600, 1, 1), 2000).unwrap_err();
        assert_eq!(j.jump_ns, 3_599_000_000_000);
        assert!((j.limit_ns - 2_000_001_000).abs() <= 1, "{j:?}");
        assert!(c.check(&page(8, t + 3600, 1, 1), 2000).is_err(), "still held: judged against the last good page");
        assert!(c.check(&page(10, t + 1, 1, 1), 2000).is_ok(), "the page came back");
        assert!(c.check(&page(12, t - 3600, 2, 1), 2000).is_ok(), "a new marker allows any move");
        assert!(c.check(&page(14, t + 7200, 2, 2), 2000).is_ok(), "so does a new generation");
        assert!(c.check(&page(16, t + 7200 + 3, 2, 2), 2000).is_err(), "3 s > 2 s + 1 µs");
    }
}
