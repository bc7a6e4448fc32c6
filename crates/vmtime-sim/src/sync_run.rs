//! Runs the real guest discipline ([`vmtime_core::sync::Discipline`]) against a simulated guest:
//! its kernel is a [`SimHost`] kernel (adjtimex semantics), its source a vmclock page made from
//! true time (with a host error and bounds, as a relayed host page would be).

use crate::host::{Clock, SimHost};
use vmclock::abi::{counter_id, flags, status};
use vmclock::{PageBuilder, Snapshot, Tai, Timestamp};
use vmtime_core::sync::{Discipline, SyncAction, SyncConfig, SyncObservation};

const NS: i128 = 1_000_000_000;

/// What the page says, as a host would publish it.
#[derive(Clone, Copy, Debug)]
pub struct PageSpec {
    /// The host's error against truth, ns.
    pub host_error_ns: i128,
    /// time_maxerror_nanosec.
    pub maxerror_ns: u64,
    /// clock_status.
    pub status: u8,
    /// leap_indicator.
    pub leap: u8,
    /// TAI − UTC (positive: 37).
    pub tai_minus_utc: i16,
    /// disruption_marker.
    pub marker: u64,
    /// vm_generation_counter.
    pub generation: u64,
    /// A leap second at this midnight UTC (ns), +1 inserted or −1 deleted: TAI − UTC and the
    /// leap indicator then follow true time (announced from a day before, POST_* for a day after).
    pub leap_at: Option<(i128, i8)>,
    /// The page's counter period against the true one, ppb (0: exact; a mis-scaled or hostile
    /// page has more).
    pub period_error_ppb: i64,
}

impl Default for PageSpec {
    fn default() -> Self {
        PageSpec {
            host_error_ns: 3,
            maxerror_ns: 200,
            status: status::SYNCHRONIZED,
            leap: 0,
            tai_minus_utc: 37,
            marker: 1,
            generation: 1,
            leap_at: None,
            period_error_ppb: 0,
        }
    }
}

/// A guest, its discipline and what was seen.
#[derive(Debug)]
pub struct SyncRun {
    /// The guest machine (its kernel is the guest kernel).
    pub guest: SimHost,
    /// The discipline under test.
    pub discipline: Discipline,
    /// The page the host publishes.
    pub spec: PageSpec,
    /// Whether the source can be read.
    pub source_up: bool,
    /// (true time ns, kernel error against truth ns, kernel maxerror µs) at each poll.
    pub trace: Vec<(i128, i128, i64)>,
    /// Actions applied.
    pub actions: Vec<(i128, SyncAction)>,
    /// Hook runs.
    pub hooks: u32,
    last_observation: i128,
}

impl SyncRun {
    /// A run.
    pub fn new(guest: SimHost, cfg: SyncConfig) -> Self {
        SyncRun {
            guest,
            discipline: Discipline::new(cfg),
            spec: PageSpec::default(),
            source_up: true,
            trace: Vec::new(),
            actions: Vec::new(),
            hooks: 0,
            last_observation: i128::MIN / 2,
        }
    }

    /// The world's leap second: (the true TAI instant, TAI − UTC from then on).
    fn world_leap(&self) -> Option<(i128, i64)> {
        let (midnight, sign) = self.spec.leap_at?;
        let before = self.spec.tai_minus_utc as i128;
        let switch = if sign > 0 { midnight + before * NS } else { midnight - NS + before * NS };
        Some((switch, (before + sign as i128) as i64))
    }

    /// TAI − UTC and the leap indicator at true TAI time `t`.
    fn leap_state(&self, t: i128) -> (i16, u8) {
        let Some((midnight, sign)) = self.spec.leap_at else { return (self.spec.tai_minus_utc, self.spec.leap) };
        let before = self.spec.tai_minus_utc as i128;
        // The instant (TAI) the new offset takes effect: the start of 23:59:60 for an insertion,
        // the start of the skipped 23:59:59 for a deletion.
        let switch = if sign > 0 { midnight + before * NS } else { midnight - NS + before * NS };
        let after = before + sign as i128;
        match t {
            t if t < switch - 86_400 * NS => (before as i16, vmclock::abi::leap::NONE),
            t if t < switch => {
                (before as i16, if sign > 0 { vmclock::abi::leap::PRE_POS } else { vmclock::abi::leap::PRE_NEG })
            }
            t if sign > 0 && t < switch + NS => (after as i16, vmclock::abi::leap::POS),
            t if t < switch + 86_400 * NS => {
                (after as i16, if sign > 0 { vmclock::abi::leap::POST_POS } else { vmclock::abi::leap::POST_NEG })
            }
            _ => (after as i16, vmclock::abi::leap::NONE),
        }
    }

    /// The page now: the true counter→TAI relation at the current counter, plus the host's error.
    pub fn page(&self) -> Snapshot {
        let c = self.guest.counter();
        let t = (self.guest.truth_at_counter(c) + self.spec.host_error_ns) as u128;
        let (tai_minus_utc, leap) = self.leap_state(t as i128);
        let p = self.guest.true_period();
        let period = if self.spec.period_error_ppb == 0 {
            p
        } else {
            let num = p.frac as u128 * (1_000_000_000 + self.spec.period_error_ppb) as u128;
            vmclock::Period::from_ratio(num, 1_000_000_000u128 << (64 + p.shift as u32)).expect("a period")
        };
        let abi = PageBuilder::new()
            .reference(counter_id::X86_TSC, c, Timestamp::<Tai>::from_nanos(t), period)
            .tai_minus_utc(tai_minus_utc)
            .status(self.spec.status)
            .leap(leap)
            .maxerror(self.spec.maxerror_ns, 1 << 24)
            .esterror(self.spec.maxerror_ns / 4, 1 << 20)
            .disruption_marker(self.spec.marker)
            .vm_generation(self.spec.generation)
            .flag(flags::TIME_MONOTONIC, true)
            .build();
        Snapshot::new(abi, 4096).expect("valid")
    }

    fn apply(&mut self, actions: Vec<SyncAction>) {
        for a in actions {
            self.hooks += u32::from(self.guest.apply(&a));
            self.actions.push((self.guest.now(), a));
        }
    }

    /// One observation, as the daemon makes it.
    pub fn observe(&mut self) {
        self.last_observation = self.guest.now();
        let kernel = self.guest.timex();
        if !self.source_up {
            let a = self.discipline.handle_source_lost(&kernel);
            self.apply(a);
            return;
        }
        let page = self.page();
        let raw = self.guest.tightest(Clock::Raw, 8);
        let samples = self.guest.burst(Clock::Realtime, 64);
        let a = self.discipline.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel });
        self.apply(a);
    }

    /// Runs for `dur_ns`: an observation every interval the discipline asks for (at most
    /// `interval_ns`), slews ended on time, the kernel checked every `poll_ns`.
    pub fn run_for(&mut self, dur_ns: i128, interval_ns: i128, poll_ns: i128) {
        let end = self.guest.now() + dur_ns;
        while self.guest.now() < end {
            if self.guest.now() - self.last_observation >= interval_ns.min(self.discipline.poll_interval_ns()) {
                self.observe();
            }
            let a = self.discipline.handle_tick(self.guest.raw_now());
            self.apply(a);
            // The world's TAI − UTC (for judging the kernel) follows true time too.
            self.guest.world_leap = self.world_leap();
            self.trace.push((self.guest.now(), self.guest.kernel_error_ns(), self.guest.tx.maxerror_us));
            let step = match self.discipline.next_deadline() {
                Some(d) => (d - self.guest.raw_now()).clamp(1, poll_ns),
                None => poll_ns,
            };
            self.guest.advance(step);
        }
    }

    /// An update the host announces by notification: observe now.
    pub fn notify(&mut self) {
        self.observe();
    }

    /// The first true time after `from` from which |kernel error| stays within `within_ns`.
    pub fn converged_at(&self, from: i128, within_ns: i128) -> Option<i128> {
        let mut at = None;
        for &(t, e, _) in self.trace.iter().filter(|(t, _, _)| *t >= from) {
            if e.abs() <= within_ns {
                at.get_or_insert(t);
            } else {
                at = None;
            }
        }
        at
    }
}

/// |x| at the 99th percentile.
pub fn p99_abs(v: impl Iterator<Item = i128>) -> i128 {
    let mut a: Vec<i128> = v.map(|x| x.abs()).collect();
    a.sort();
    a.get(((a.len().max(1) - 1) as f64 * 0.99) as usize).copied().unwrap_or(0)
}

/// True time, ns, for scenario set-up.
pub fn ns(s: i128) -> i128 {
    s * NS
}
