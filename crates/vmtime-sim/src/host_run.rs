//! Runs the real host publisher ([`vmtime_core::host::Publisher`]) against a [`SimHost`] and
//! judges every page: TIME_MONOTONIC at each update, the old page's bounds for earlier counter
//! values, true time inside the bounds, and the page's error against the kernel clock.

use crate::host::{Clock, SimHost};
use vmclock::{abi::flags, Snapshot};
use vmtime_core::host::{HostAction, HostConfig, Observation, PollSchedule, Publisher, Reason, Sampled};

const NS: i128 = 1_000_000_000;

/// Violations found; all must be 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// A new page flagged TIME_MONOTONIC gave an earlier time than the old one at the update.
    pub monotonic: u64,
    /// Without a marker change, a new page left the old page's bounds at an earlier counter.
    pub bound_consistency: u64,
    /// True time lay outside the page's [earliest, latest].
    pub truth_outside: u64,
}

/// One page published during a run.
#[derive(Clone, Debug)]
pub struct Published {
    /// True time of the update, ns.
    pub at_ns: i128,
    /// Why.
    pub reason: Reason,
    /// Whether the marker changed.
    pub disrupted: bool,
    /// The page.
    pub snap: Snapshot,
}

/// A host, its publisher, and what was seen.
#[derive(Debug)]
pub struct HostRun {
    /// The simulated host (the scenario changes its kernel).
    pub host: SimHost,
    /// The publisher under test.
    pub publisher: Publisher,
    /// Which clock is sampled: CLOCK_TAI when the kernel's TAI offset is set.
    pub sampled: Sampled,
    /// The page readers see.
    pub current: Option<Snapshot>,
    /// Every page published.
    pub pages: Vec<Published>,
    /// Violations.
    pub violations: Violations,
    /// Page − kernel clock at each poll, ns (after the first page).
    pub page_vs_kernel_ns: Vec<f64>,
    /// Truth checks made.
    pub truth_checks: u64,
    /// What each violation was, for diagnosis.
    pub violation_log: Vec<String>,
    /// Polls where the kernel clock lay outside the page's maxerror bounds (the page's bounds
    /// are about true time; this checks they also hold the kernel clock itself, unseen changes
    /// included).
    pub kernel_outside: u64,
    /// Largest |page − kernel| / maxerror seen at a poll.
    pub kernel_worst_fraction: f64,
    /// With UTC sampling: the leap-second list the daemon reads TAI − UTC from, looked up at
    /// the kernel's REALTIME second of each observation.
    pub leap_list: Option<vmtime_core::leapsecs::LeapSeconds>,
    /// Give the publisher the kernel's own page (the RFC's /dev/vmclock_host).
    pub use_kernel_page: bool,
    /// The daemon cannot read the kernel's NTP state (a seccomp filter refuses adjtimex): the
    /// publisher is given `KernelTimex::unreadable()` instead of the host's state.
    pub kernel_unreadable: bool,
    /// A kernel page that stopped following the clock (the RFC's revision 1 after a step): given
    /// instead of the live one while set.
    pub stale_kernel_page: Option<Snapshot>,
    last_observation: i128,
    next_poll: i128,
}

impl HostRun {
    /// A run on `host` with `cfg`.
    pub fn new(host: SimHost, cfg: HostConfig, sampled: Sampled) -> Self {
        HostRun {
            host,
            publisher: Publisher::new(cfg),
            sampled,
            current: None,
            pages: Vec::new(),
            violations: Violations::default(),
            page_vs_kernel_ns: Vec::new(),
            truth_checks: 0,
            violation_log: Vec::new(),
            kernel_outside: 0,
            kernel_worst_fraction: 0.0,
            leap_list: None,
            use_kernel_page: false,
            kernel_unreadable: false,
            stale_kernel_page: None,
            last_observation: i128::MIN / 2,
            next_poll: i128::MIN / 2,
        }
    }

    fn clock(&self) -> Clock {
        match self.sampled {
            Sampled::Tai => Clock::Tai,
            Sampled::Utc { .. } => Clock::Realtime,
        }
    }

    /// The kernel state as the daemon reads it.
    fn timex(&self) -> vmtime_core::kernel::KernelTimex {
        if self.kernel_unreadable {
            vmtime_core::kernel::KernelTimex::unreadable()
        } else {
            self.host.timex()
        }
    }

    /// One full observation, as the daemon makes it.
    pub fn observe(&mut self) {
        if let Some(list) = &self.leap_list {
            let second = self.host.kernel_realtime_ns().div_euclid(NS) as i64;
            let tai_minus_utc = match list.offset_at(second) {
                vmtime_core::leapsecs::TaiOffset::Known(o) => Some(o),
                vmtime_core::leapsecs::TaiOffset::Expired { .. } => None,
            };
            self.sampled = Sampled::Utc { tai_minus_utc };
        }
        let raw = self.host.tightest(Clock::Raw, 8);
        let samples = self.host.burst(self.clock(), 64);
        let kernel = self.timex();
        self.last_observation = self.host.now();
        let kernel_page =
            self.use_kernel_page.then(|| self.stale_kernel_page.unwrap_or_else(|| self.host.kernel_page()));
        let obs = Observation { raw, clock: self.sampled, samples: &samples, kernel, kernel_page };
        if let Some(HostAction::Publish { page, reason, disrupted }) = self.publisher.handle_observation(&obs) {
            // The write lands a few µs after the burst.
            self.host.advance(5_000);
            let snap = Snapshot::new(page, 4096).expect("valid page");
            if let Some(old) = self.current {
                self.judge_update(&old, &snap);
            }
            self.pages.push(Published { at_ns: self.host.now(), reason, disrupted, snap });
            self.current = Some(snap);
        }
    }

    fn judge_update(&mut self, old: &Snapshot, new: &Snapshot) {
        let c = self.host.counter();
        let (Ok(o), Ok(n)) = (old.reference(), new.reference()) else { return };
        if new.has(flags::TIME_MONOTONIC)
            && old.time_type() == new.time_type()
            && n.raw_time_at(c).ok() < o.raw_time_at(c).ok()
        {
            self.violations.monotonic += 1;
            let back = o.raw_time_at(c).unwrap_or(0) as i128 - n.raw_time_at(c).unwrap_or(0) as i128;
            self.violation_log.push(format!(
                "monotonic at {}: back {:.3} ns, reason {:?}, period {} -> {}, status {:?}",
                self.host.now(),
                back as f64 * 1e9 / 18446744073709551616.0,
                self.publisher.stats().last_reason,
                o.period,
                n.period,
                new.clock_status()
            ));
        }
        if new.disruption_marker() == old.disruption_marker() && old.time_type() == new.time_type() {
            let cv = o.counter_value;
            for probe in [cv, cv.wrapping_add(c.wrapping_sub(cv) / 2), c] {
                let (Ok(to), Ok(tn), Some(m)) = (o.raw_time_at(probe), n.raw_time_at(probe), o.maxerror_at(probe))
                else {
                    continue;
                };
                if tn.abs_diff(to) > m {
                    self.violations.bound_consistency += 1;
                }
            }
        }
    }

    /// True time inside the current page's bounds, and the page against the kernel clock.
    pub fn check_now(&mut self) {
        let Some(snap) = self.current else { return };
        let Ok(r) = snap.reference() else { return };
        let c = self.host.counter();
        let Ok(t) = r.raw_time_at(c) else { return };
        let truth_tai = self.host.truth_at_counter(c);
        let truth = if snap.time_type() == vmclock::abi::time_type::TAI {
            truth_tai
        } else {
            truth_tai - self.host.world_tai_minus_utc_at(truth_tai) as i128 * NS
        };
        let t_ns = vmclock::Timestamp::<vmclock::Tai>::from_raw(t).as_nanos() as i128;
        if let Some(m) = r.maxerror_at(c) {
            self.truth_checks += 1;
            let m_ns = vmclock::snapshot::frac_to_nanos_ceil(m) as i128;
            if (t_ns - truth).abs() > m_ns + 1 {
                self.violations.truth_outside += 1;
                self.violation_log.push(format!(
                    "truth outside at {}: page − truth {} ns, maxerror {} ns, kernel error {} ns, kernel maxerror {} µs, page age {} s, last {:?}",
                    self.host.now(),
                    t_ns - truth,
                    m_ns,
                    self.host.kernel_error_ns(),
                    self.host.tx.maxerror_us,
                    (c.wrapping_sub(r.counter_value) as f64) / self.host.nominal_hz as f64,
                    self.publisher.stats().last_reason
                ));
            }
        }
        let kernel = self.host.kernel_realtime_ns()
            + match (snap.time_type(), self.sampled) {
                (vmclock::abi::time_type::TAI, Sampled::Tai) => self.host.tx.tai as i128 * NS,
                (vmclock::abi::time_type::TAI, _) => snap.tai_minus_utc().unwrap_or(0) as i128 * NS,
                _ => 0,
            };
        self.page_vs_kernel_ns.push((t_ns - kernel) as f64);
        if let Some(m) = r.maxerror_at(c) {
            let m_ns = vmclock::snapshot::frac_to_nanos_ceil(m) as f64;
            let off = (t_ns - kernel).abs() as f64;
            self.kernel_worst_fraction = self.kernel_worst_fraction.max(off / m_ns.max(1.0));
            if off > m_ns + 1.0 {
                self.kernel_outside += 1;
            }
        }
    }

    /// When the next poll is due (true time, ns).
    pub fn next_poll_at(&self) -> i128 {
        self.next_poll
    }

    /// Runs for `dur_ns` on the daemon's wake-up schedule (the same [`PollSchedule`] as
    /// `vmtime host`: short while the kernel's NTP state changes, long once still).
    pub fn run_scheduled(&mut self, dur_ns: i128, schedule: &mut PollSchedule) {
        let end = self.host.now() + dur_ns;
        loop {
            if self.host.now() >= self.next_poll {
                // The page as readers find it just before the poll (the last moment an unseen
                // change has acted on it), then after.
                self.check_now();
                let tx = self.timex();
                let since = self.host.now() - self.last_observation;
                if self.publisher.wants_observation(&tx, since) {
                    self.observe();
                    self.check_now();
                }
                self.next_poll = self.host.now() + schedule.after_poll(&tx, self.host.now());
            }
            if self.host.now() >= end {
                break;
            }
            let step = (self.next_poll.min(end) - self.host.now()).max(1);
            self.host.advance(step);
        }
    }

    /// Runs for `dur_ns`, polling the kernel state every `poll_ns` as the daemon does (the poll
    /// schedule carries over from one call to the next, so a change made between calls waits
    /// for the next scheduled poll).
    pub fn run_for(&mut self, dur_ns: i128, poll_ns: i128) {
        let end = self.host.now() + dur_ns;
        loop {
            if self.host.now() >= self.next_poll {
                let tx = self.timex();
                let since = self.host.now() - self.last_observation;
                if self.publisher.wants_observation(&tx, since) {
                    self.observe();
                }
                self.check_now();
                self.next_poll += poll_ns;
                if self.next_poll <= self.host.now() {
                    self.next_poll = self.host.now() + poll_ns;
                }
            }
            let step = (self.next_poll.min(end) - self.host.now()).max(0);
            if self.host.now() >= end {
                break;
            }
            self.host.advance(step.max(1));
        }
    }
}
