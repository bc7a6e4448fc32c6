//! When a follower of a page (`vmtime sync`, the feeds) next looks at it, sans-IO.
//!
//! A disruption (live migration, restore, a clone) must be seen within tens of milliseconds of
//! the resume, while a follower at rest must cost next to nothing. The page says everything
//! itself: `disruption_marker`, `vm_generation_counter` and `seq_count` are three loads from the
//! mapped page (no system call). So between its full observations (every interval) a follower
//! *checks* the markers every [`DEFAULT_CHECK_NS`], and reacts at once to what the check finds:
//!
//! * a new `disruption_marker` or `vm_generation_counter`: observe now ([`Look::Disrupted`]);
//! * a new `seq_count` only (an ordinary update): observe now only while a disruption is still
//!   pending (the page that carried the new marker was not usable yet, and the one that follows
//!   is the first the follower can act on), else wait for the interval ([`Look::Updated`]);
//! * nothing new: nothing ([`Look::Same`]).
//!
//! Where the source itself wakes the follower on every new `seq_count` (the 7.0+ driver's
//! `poll()` on `/dev/vmclockN`, or a publisher's socket), the checks are not needed and
//! [`Cadence::next_check_ns`] says so ([`Cadence::set_notified`]); a driver whose `poll()` is
//! always readable (6.13–6.19) is found out by [`crate::sync::NotifyCheck`] and the checks resume.
//!
//! After a disruption the page that carries the new marker is often not usable yet (a relay
//! rewrote it UNRELIABLE because the counter map has to be confirmed, a host that publishes
//! the new map a little after the resume): the page that follows is the one the guest waits
//! for. So for [`URGENT_FOR_NS`] after a check or an observation finds a new marker, and until
//! a check finds an update while no disruption is pending, the checks come every
//! [`URGENT_CHECK_NS`] instead: a few
//! hundred loads per disruption, none at rest.
//!
//! Times are a monotonic clock's ns (any epoch); the caller reads the clock and the page.

use vmclock::Snapshot;

/// The default time between two checks of the markers, ns (40 ms): a disruption is seen within
/// 40 ms of the resume, plus the time to be scheduled (the aim is 50 ms at p99); at rest that is
/// 25 wake-ups a second, each a few loads from the page (docs/BENCHMARKS.md, "Idle cost").
pub const DEFAULT_CHECK_NS: i128 = 40_000_000;

/// The shortest check interval accepted, ns (1 ms).
pub const MIN_CHECK_NS: i128 = 1_000_000;

/// The time between two checks while a disruption waits for the page that follows it, ns (1 ms).
pub const URGENT_CHECK_NS: i128 = 1_000_000;

/// How long after a new marker the checks stay urgent at most, ns (1 s).
pub const URGENT_FOR_NS: i128 = 1_000_000_000;

/// The words of a page that say whether it changed and whether it was disrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Markers {
    /// `seq_count`: every update changes it.
    pub seq_count: u32,
    /// `disruption_marker`: a change means the counter's calibration broke.
    pub disruption_marker: u64,
    /// `vm_generation_counter`, where the page has one: a change means a restore or a clone.
    pub vm_generation_counter: Option<u64>,
}

impl Markers {
    /// The markers of a consistent copy of a page.
    pub fn of(page: &Snapshot) -> Markers {
        Markers {
            seq_count: page.seq_count(),
            disruption_marker: page.disruption_marker(),
            vm_generation_counter: page.vm_generation_counter(),
        }
    }

    /// Whether `self` carries other markers than `before` (the sequence count aside). A
    /// generation counter that appears or disappears counts as a change only when both have one:
    /// a page that starts to carry one is not a restore.
    pub fn disrupted_since(&self, before: &Markers) -> bool {
        let generation = matches!(
            (before.vm_generation_counter, self.vm_generation_counter),
            (Some(a), Some(b)) if a != b
        );
        self.disruption_marker != before.disruption_marker || generation
    }
}

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Nothing new (or the page could not be read: the next full observation says why).
    Same,
    /// A new `seq_count` with the same markers: an ordinary update.
    Updated,
    /// A new `disruption_marker` or `vm_generation_counter`.
    Disrupted,
}

impl Look {
    /// Whether the follower should observe now: always after a disruption; after an ordinary
    /// update only while a disruption is `pending` (seen, but not acted on yet).
    pub fn observe_now(self, pending: bool) -> bool {
        match self {
            Look::Disrupted => true,
            Look::Updated => pending,
            Look::Same => false,
        }
    }
}

/// The schedule of the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    check_ns: i128,
    notified: bool,
    seen: Option<Markers>,
    next_ns: Option<i128>,
    /// Until when checks are urgent (a new marker was found and no update has followed it).
    urgent_until_ns: Option<i128>,
    /// Checks made at the cadence (for status and tests): a look a notification asks for is
    /// not one.
    checks: u64,
}

impl Cadence {
    /// A schedule checking every `check_ns` (at least [`MIN_CHECK_NS`]); the first check is due
    /// at once.
    pub fn new(check_ns: i128) -> Cadence {
        Cadence {
            check_ns: check_ns.max(MIN_CHECK_NS),
            notified: false,
            seen: None,
            next_ns: None,
            urgent_until_ns: None,
            checks: 0,
        }
    }

    /// The time between two checks, ns.
    pub fn check_ns(&self) -> i128 {
        self.check_ns
    }

    /// The source wakes the follower on every new `seq_count` (`true`), or no longer does
    /// (`false`: checks resume at once).
    pub fn set_notified(&mut self, notified: bool) {
        if self.notified && !notified {
            self.next_ns = None;
        }
        self.notified = notified;
    }

    /// Whether the source notifies.
    pub fn notified(&self) -> bool {
        self.notified
    }

    /// The markers of a page the follower just read in full (an observation, a turn): later
    /// checks compare with them. New markers (a disruption the observation found before any
    /// check did) make the checks urgent from `now_ns`, as a check's finding would.
    pub fn seen_at(&mut self, now_ns: i128, m: Markers) {
        if self.seen.is_some_and(|b| m.disrupted_since(&b)) {
            self.urgent_until_ns = Some(now_ns + URGENT_FOR_NS);
            self.next_ns = Some(self.next_ns.map_or(now_ns, |n| n.min(now_ns + URGENT_CHECK_NS)));
        }
        self.seen = Some(m);
    }

    /// As [`Cadence::seen_at`], without the time: new markers do not make the checks urgent.
    pub fn seen(&mut self, m: Markers) {
        self.seen = Some(m);
    }

    /// Whether the checks are urgent at `now_ns` (a new marker found, no update since).
    pub fn urgent(&self, now_ns: i128) -> bool {
        self.urgent_until_ns.is_some_and(|u| now_ns < u)
    }

    /// The markers seen last.
    pub fn last_seen(&self) -> Option<Markers> {
        self.seen
    }

    /// When the next check is due (monotonic ns), `None` when the source notifies. Never later
    /// than one check interval after `now_ns`.
    pub fn next_check_ns(&self, now_ns: i128) -> Option<i128> {
        if self.notified {
            return None;
        }
        let every = if self.urgent(now_ns) { URGENT_CHECK_NS.min(self.check_ns) } else { self.check_ns };
        Some(self.next_ns.map_or(now_ns, |n| n.min(now_ns + every)))
    }

    /// Whether a check is due at `now_ns`.
    pub fn due(&self, now_ns: i128) -> bool {
        self.next_check_ns(now_ns).is_some_and(|n| now_ns >= n)
    }

    /// A check at `now_ns` found `markers` (`None`: the page could not be read, or a writer was
    /// mid-update: look again next time), while a disruption is `pending` or not (the
    /// follower's: seen, not acted on yet). Schedules the next check one interval later (a late
    /// check is not caught up: no burst after a pause). An update ends the urgency only when no
    /// disruption is pending: a relay may write more pages without time (another host update
    /// before it knows the counter map) before the one the follower can act on.
    /// While the source notifies, a look is the one its notification asked for (the feeds read
    /// the markers of the page they were woken for) and is not counted as a check.
    pub fn look(&mut self, now_ns: i128, markers: Option<Markers>, pending: bool) -> Look {
        if !self.notified {
            self.checks += 1;
        }
        let found = match (markers, self.seen) {
            (None, _) | (Some(_), None) => Look::Same, // the first look only sets the baseline
            (Some(m), Some(before)) if m.disrupted_since(&before) => Look::Disrupted,
            (Some(m), Some(before)) if m.seq_count != before.seq_count => Look::Updated,
            (Some(_), Some(_)) => Look::Same,
        };
        match found {
            Look::Disrupted => self.urgent_until_ns = Some(now_ns + URGENT_FOR_NS),
            Look::Updated if !pending => self.urgent_until_ns = None,
            Look::Updated => {}
            Look::Same => {}
        }
        let every = if self.urgent(now_ns) { URGENT_CHECK_NS.min(self.check_ns) } else { self.check_ns };
        self.next_ns = Some(now_ns + every);
        if let Some(m) = markers {
            self.seen = Some(m);
        }
        found
    }

    /// Checks made at the cadence so far (not the looks made while notified).
    pub fn checks(&self) -> u64 {
        self.checks
    }
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence::new(DEFAULT_CHECK_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u32, marker: u64, generation: Option<u64>) -> Markers {
        Markers { seq_count: seq, disruption_marker: marker, vm_generation_counter: generation }
    }

    #[test]
    fn checks_come_every_interval_and_a_late_one_is_not_caught_up() {
        let mut c = Cadence::new(20_000_000);
        assert!(c.due(5), "the first check is due at once");
        assert_eq!(c.look(5, Some(m(2, 1, None)), false), Look::Same);
        assert_eq!(c.next_check_ns(5), Some(20_000_005));
        assert!(!c.due(20_000_004) && c.due(20_000_005));
        // A check taken 10 s late (the machine was paused): the next is an interval after it.
        let late = 10_000_000_000;
        assert_eq!(c.look(late, Some(m(2, 1, None)), false), Look::Same);
        assert_eq!(c.next_check_ns(late), Some(late + 20_000_000));
        // A clock that went back (another epoch): never more than one interval away.
        assert_eq!(c.next_check_ns(0), Some(20_000_000));
        assert_eq!(c.checks(), 2);
    }

    #[test]
    fn markers_decide_what_a_check_means() {
        let mut c = Cadence::default();
        c.seen(m(2, 7, Some(1)));
        assert_eq!(c.look(0, Some(m(2, 7, Some(1))), false), Look::Same);
        assert_eq!(c.look(1, Some(m(4, 7, Some(1))), false), Look::Updated);
        assert_eq!(c.look(2, Some(m(6, 8, Some(1))), false), Look::Disrupted, "a new disruption marker");
        assert_eq!(c.look(3, Some(m(8, 8, Some(2))), false), Look::Disrupted, "a new generation");
        // The same seq but another marker (a page rewritten from scratch by someone else).
        assert_eq!(c.look(4, Some(m(8, 9, Some(2))), false), Look::Disrupted);
        // A generation that appears is not a restore; an unreadable page is nothing new.
        assert_eq!(c.look(5, Some(m(10, 9, None)), false), Look::Updated);
        assert_eq!(c.look(6, Some(m(12, 9, Some(5))), false), Look::Updated);
        assert_eq!(c.look(7, None, false), Look::Same);
        assert_eq!(c.last_seen(), Some(m(12, 9, Some(5))));
    }

    #[test]
    fn an_update_is_urgent_only_while_a_disruption_is_pending() {
        assert!(Look::Disrupted.observe_now(false));
        assert!(!Look::Updated.observe_now(false));
        assert!(Look::Updated.observe_now(true));
        assert!(!Look::Same.observe_now(true));
    }

    #[test]
    fn after_a_new_marker_checks_are_urgent_until_the_next_update() {
        let mut c = Cadence::new(20_000_000);
        assert_eq!(c.look(0, Some(m(2, 1, None)), false), Look::Same);
        assert_eq!(c.next_check_ns(0), Some(20_000_000), "at rest: the interval");
        // A new marker on a page not usable yet: the next check comes in 1 ms, and again.
        let t = 20_000_000;
        assert_eq!(c.look(t, Some(m(4, 2, None)), false), Look::Disrupted);
        assert!(c.urgent(t));
        assert_eq!(c.next_check_ns(t), Some(t + URGENT_CHECK_NS));
        assert_eq!(c.look(t + URGENT_CHECK_NS, Some(m(4, 2, None)), false), Look::Same);
        assert_eq!(c.next_check_ns(t + URGENT_CHECK_NS), Some(t + 2 * URGENT_CHECK_NS));
        // The page that follows it ends the urgency: back to the interval.
        let u = t + 2 * URGENT_CHECK_NS;
        assert_eq!(c.look(u, Some(m(6, 2, None)), false), Look::Updated);
        assert!(!c.urgent(u));
        assert_eq!(c.next_check_ns(u), Some(u + 20_000_000));
        // With no update at all, the urgency ends by itself after URGENT_FOR_NS.
        let v = u + 100_000_000;
        assert_eq!(c.look(v, Some(m(8, 3, None)), false), Look::Disrupted);
        let late = v + URGENT_FOR_NS;
        assert_eq!(c.look(late, Some(m(8, 3, None)), false), Look::Same);
        assert_eq!(c.next_check_ns(late), Some(late + 20_000_000));
    }

    #[test]
    fn updates_while_a_disruption_is_pending_keep_the_checks_urgent() {
        let mut c = Cadence::new(40_000_000);
        assert_eq!(c.look(0, Some(m(2, 1, None)), false), Look::Same);
        let t = 40_000_000;
        assert_eq!(c.look(t, Some(m(4, 2, None)), false), Look::Disrupted);
        // A second page without time (the host's next update, the map still unknown): the
        // follower's disruption is still pending, so the page after it is looked for every 1 ms.
        let u = t + 5 * URGENT_CHECK_NS;
        assert_eq!(c.look(u, Some(m(6, 2, None)), true), Look::Updated);
        assert!(c.urgent(u));
        assert_eq!(c.next_check_ns(u), Some(u + URGENT_CHECK_NS));
        // The page it acted on was seen; the next update with nothing pending: at rest again.
        let v = u + 3 * URGENT_CHECK_NS;
        assert_eq!(c.look(v, Some(m(8, 2, None)), false), Look::Updated);
        assert!(!c.urgent(v));
        assert_eq!(c.next_check_ns(v), Some(v + 40_000_000));
    }

    #[test]
    fn an_observation_that_finds_a_new_marker_makes_the_checks_urgent() {
        let mut c = Cadence::new(20_000_000);
        c.seen_at(0, m(2, 1, None));
        assert!(!c.urgent(0), "the first page is no disruption");
        c.look(0, Some(m(2, 1, None)), false);
        c.seen_at(5_000_000, m(4, 2, None));
        assert!(c.urgent(5_000_000));
        assert_eq!(c.next_check_ns(5_000_000), Some(5_000_000 + URGENT_CHECK_NS));
        // An ordinary update seen by an observation changes nothing.
        let mut d = Cadence::new(20_000_000);
        d.seen_at(0, m(2, 1, None));
        d.look(0, Some(m(2, 1, None)), false);
        d.seen_at(5_000_000, m(4, 1, None));
        assert!(!d.urgent(5_000_000));
        assert_eq!(d.next_check_ns(5_000_000), Some(20_000_000));
    }

    #[test]
    fn a_notifying_source_needs_no_checks_until_it_stops() {
        let mut c = Cadence::new(20_000_000);
        c.look(0, Some(m(2, 1, None)), false);
        c.set_notified(true);
        assert_eq!(c.next_check_ns(100), None);
        assert!(!c.due(1 << 40));
        // The look a notification asks for still finds the disruption, and is not a check.
        assert_eq!(c.checks(), 1);
        assert_eq!(c.look(200, Some(m(4, 2, None)), false), Look::Disrupted);
        assert_eq!(c.checks(), 1, "a look while notified is not a check at the cadence");
        c.set_notified(false);
        assert_eq!(c.next_check_ns(100), Some(100), "checks resume at once");
        c.look(300, Some(m(4, 2, None)), false);
        assert_eq!(c.checks(), 2);
        // A tiny interval is raised to the minimum.
        assert_eq!(Cadence::new(5).check_ns(), MIN_CHECK_NS);
    }
}
