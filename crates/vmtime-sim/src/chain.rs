//! The whole chain, host to guest: a host machine whose kernel an NTP-like model disciplines, the
//! real host publisher on it, the real relay to each guest, and the real guest discipline on each
//! guest's kernel. Guests run on the host's oscillator through their KVM counter map.

use crate::host::{Clock, SimHost};
use crate::host_run::HostRun;
use vmclock::Snapshot;
use vmtime_core::cadence::{Cadence, Look, Markers};
use vmtime_core::host::{HostConfig, HostEvent, Sampled};
use vmtime_core::relay::{CounterMap, GuestRelay};
use vmtime_core::sync::{Discipline, SyncAction, SyncConfig, SyncObservation};

const NS: i128 = 1_000_000_000;
const MS: i128 = 1_000_000;

/// One guest of the chain.
#[derive(Debug)]
pub struct ChainGuest {
    /// The guest machine (its kernel is the guest kernel).
    pub sim: SimHost,
    /// The relay's state for it.
    pub relay: GuestRelay,
    /// vmtime sync in it.
    pub discipline: Discipline,
    /// Its page, as last relayed.
    pub page: Option<Snapshot>,
    /// Whether it can read its page.
    pub source_up: bool,
    last_host: Option<Snapshot>,
    last_observation: i128,
    /// A check found a new page while the interval had grown.
    page_news: bool,
    /// Steps vmtime sync took.
    pub steps: u32,
    /// Times true time lay outside the guest page's bounds at the guest's counter.
    pub page_bound_violations: u64,
    /// Times true time lay outside the guest kernel's maxerror while synchronised.
    pub kernel_bound_violations: u64,
    /// Hook runs.
    pub hooks: u32,
    /// The guest counter up to which application reads were judged (`None` after a counter jump).
    read_from: Option<u64>,
    /// Without notification: vmtime sync's checks of the page's markers.
    pub cadence: Option<Cadence>,
    /// When the relay wrote a page with a new disruption marker that vmtime sync has not seen
    /// yet (true ns), and the delays from such a write to the observation that saw it, ns.
    disrupted_at: Option<i128>,
    /// Delays from a new marker's page to vmtime sync's observation of it, ns.
    pub detection_ns: Vec<i128>,
}

/// A histogram of ns values, log-linear (32 steps per power of two above 64 ns): quantiles
/// within 3 %, merged by adding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hist(pub Vec<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(vec![0; 64 + 58 * 32])
    }
}

impl Hist {
    fn bucket(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // ≥ 6
        64 + (e - 6) * 32 + ((v >> (e - 5)) & 31) as usize
    }

    fn lower(b: usize) -> u64 {
        if b < 64 {
            return b as u64;
        }
        let (e, sub) = ((b - 64) / 32 + 6, (b - 64) % 32);
        (32 + sub as u64) << (e - 5)
    }

    /// Counts `v`.
    #[inline]
    pub fn add(&mut self, v: u64) {
        self.0[Self::bucket(v)] += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, o: &Hist) {
        self.0.iter_mut().zip(&o.0).for_each(|(a, b)| *a += b);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0..=1): the lower edge of its bucket (within 3 % below the value).
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((n - 1) as f64 * q).round() as u64;
        let mut seen = 0;
        for (b, &c) in self.0.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::lower(b);
            }
        }
        Self::lower(self.0.len() - 1)
    }
}

/// Application reads of the guests' pages, each judged against true time at its counter value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Reads judged.
    pub reads: u64,
    /// Reads whose true time lay outside the page's bounds.
    pub violations: u64,
    /// Each read's bound (the page's maximum error at its counter), ns.
    pub bound_ns: Hist,
    /// Each read's actual error |page time − truth|, ns.
    pub error_ns: Hist,
}

impl Reads {
    /// Adds another run's reads.
    pub fn merge(&mut self, o: &Reads) {
        self.reads += o.reads;
        self.violations += o.violations;
        self.bound_ns.merge(&o.bound_ns);
        self.error_ns.merge(&o.error_ns);
    }
}

/// One row of the trace (guest 0), every second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    /// Seconds since the start.
    pub t_s: f64,
    /// Host kernel clock − truth, ns.
    pub host_ns: f64,
    /// Host page (at the host counter) − truth, ns.
    pub page_ns: f64,
    /// Guest kernel clock − truth, ns.
    pub guest_ns: f64,
    /// The guest page's maximum error at the guest counter, ns.
    pub page_maxerror_ns: f64,
    /// The guest kernel's maxerror, ns.
    pub kernel_maxerror_ns: f64,
    /// The host kernel's frequency, ppm.
    pub host_freq_ppm: f64,
    /// The guest kernel's frequency, ppm.
    pub guest_freq_ppm: f64,
}

/// The host's NTP daemon, simplified: every `poll_s` it sets the kernel frequency to cancel
/// the oscillator's error (within `freq_noise_ppb`) and slews away its offset with the PLL, and
/// reports an honest maxerror.
#[derive(Clone, Copy, Debug)]
pub struct NtpModel {
    /// Seconds between updates.
    pub poll_s: i128,
    /// Error of its frequency estimate, ± ppb.
    pub freq_noise_ppb: i64,
    /// Whether it corrects the phase with PLL offsets (host slews).
    pub slews: bool,
    /// Whether it is synchronised at all (false: the host is FREERUNNING).
    pub synced: bool,
    /// Its offset measurements are off truth by up to ± this, uniformly (network asymmetry),
    /// ns. With 0 it measures exactly and claims its error + 100 µs; otherwise it corrects the
    /// offset it measured and claims, honestly, what it knows: |measured| + this + 1 µs.
    pub offset_noise_ns: i64,
}

impl Default for NtpModel {
    fn default() -> Self {
        NtpModel { poll_s: 16, freq_noise_ppb: 20, slews: true, synced: true, offset_noise_ns: 0 }
    }
}

/// The chain.
#[derive(Debug)]
pub struct Chain {
    /// The host and its publisher.
    pub host: HostRun,
    /// The guests.
    pub guests: Vec<ChainGuest>,
    /// The host's NTP.
    pub ntp: NtpModel,
    /// Events, (seconds since the start, what).
    pub events: Vec<(f64, String)>,
    /// The trace of guest 0.
    pub rows: Vec<Row>,
    /// A leap second at this midnight UTC (ns), +1 / −1: the world's TAI − UTC follows.
    pub leap_at: Option<(i128, i8)>,
    /// Guest pages the relay wrote (every host page, for every guest).
    pub relayed: u64,
    /// Application reads per guest per 10 ms step, spread evenly over the counter values the
    /// step covered (0: none).
    pub reads_per_step: u32,
    /// The application reads judged so far.
    pub reads: Reads,
    /// The relay (the page's writer) is stalled until then (true ns): the guests keep their page.
    pub stalled_until: Option<i128>,
    /// The host publisher's rate tolerance (`--tolerance-ppm`), ppb: the default 500 ppm when
    /// `None`. A migration's destination host gets the same.
    pub host_tolerance_ppb: Option<u64>,
    start: i128,
    next_ntp: i128,
    next_row: i128,
    seed: u64,
}

impl Chain {
    /// A host (oscillator `err_ppb`, kernel `kernel_err_ns` off) at true TAI `t0`, with guests
    /// under `maps`, each starting `guest_err_ns` off.
    pub fn new(
        seed: u64,
        t0: i128,
        err_ppb: i64,
        wander_ppb: i64,
        kernel_err_ns: i128,
        maps: &[CounterMap],
        guest_err_ns: i128,
    ) -> Chain {
        let mut h = SimHost::new(seed, t0, 2_500_000_000, err_ppb, 37, kernel_err_ns);
        h.wander_ppb = wander_ppb;
        h.set_kernel_tai(37);
        let host = HostRun::new(h, HostConfig { marker_seed: seed ^ 0x5eed, ..HostConfig::default() }, Sampled::Tai);
        let guests = maps
            .iter()
            .enumerate()
            .map(|(i, &m)| ChainGuest {
                sim: SimHost::guest_of(&host.host, m, seed.wrapping_add(1 + i as u64), guest_err_ns),
                relay: GuestRelay::new(m, seed.rotate_left(17) ^ i as u64, true),
                discipline: Discipline::new(SyncConfig::default()),
                page: None,
                source_up: true,
                last_host: None,
                last_observation: i128::MIN / 2,
                page_news: false,
                steps: 0,
                page_bound_violations: 0,
                kernel_bound_violations: 0,
                hooks: 0,
                read_from: None,
                cadence: None,
                disrupted_at: None,
                detection_ns: Vec::new(),
            })
            .collect();
        Chain {
            host,
            guests,
            ntp: NtpModel::default(),
            events: Vec::new(),
            rows: Vec::new(),
            leap_at: None,
            relayed: 0,
            reads_per_step: 0,
            reads: Reads::default(),
            stalled_until: None,
            host_tolerance_ppb: None,
            start: t0,
            next_ntp: t0,
            next_row: t0,
            seed,
        }
    }

    /// Seconds since the start.
    pub fn elapsed_s(&self) -> f64 {
        (self.host.host.now() - self.start) as f64 / 1e9
    }

    /// Notes an event.
    pub fn event(&mut self, what: impl Into<String>) {
        let t = self.elapsed_s();
        self.events.push((t, what.into()));
    }

    /// The world's leap second as a (true TAI instant, TAI − UTC from then on) schedule.
    fn world_leap(&self) -> Option<(i128, i64)> {
        self.leap_at.map(|(midnight, sign)| {
            let switch = if sign > 0 { midnight + 37 * NS } else { midnight - NS + 37 * NS };
            (switch, 37 + sign as i64)
        })
    }

    fn world_tai_minus_utc(&self, t: i128) -> i64 {
        match self.world_leap() {
            Some((switch, after)) if t >= switch => after,
            _ => 37,
        }
    }

    fn ntp_update(&mut self) {
        let h = &mut self.host.host;
        if !self.ntp.synced {
            return;
        }
        let noise = h.rng.range(0, 2 * self.ntp.freq_noise_ppb as u64) as i64 - self.ntp.freq_noise_ppb;
        let err = h.oscillator_error_ppb();
        h.set_freq_ppb(-err + noise);
        let e = h.kernel_error_ns();
        let u = self.ntp.offset_noise_ns.max(0);
        if u == 0 {
            if self.ntp.slews {
                h.set_offset_ns(-e as i64);
            }
            // An honest maxerror: the error now, plus what it may drift before the next update.
            h.ntp_sync((e.unsigned_abs() / 1000) as i64 + 100, 20);
        } else {
            // It measures the offset within ±u, corrects what it measured (the error left is
            // within ±u, reached monotonically by the PLL) and says what it knows: the error now
            // is within |measured| + u; the drift until the next update is the host's own claim
            // to grow (its rate tolerance).
            let measured = e + h.rng.range(0, 2 * u as u64 + 1) as i128 - u as i128;
            if self.ntp.slews {
                h.set_offset_ns(-measured as i64);
            }
            let max_us = (measured.unsigned_abs() + u as u128).div_ceil(1000) as i64 + 1;
            h.ntp_sync(max_us, (u + 999) / 1000);
        }
    }

    /// Every guest judges its application reads from now on (after a counter jump).
    fn restart_reads(&mut self) {
        self.guests.iter_mut().for_each(|g| g.read_from = None);
    }

    fn guest_step(&mut self, i: usize) {
        let host_page = self.host.current;
        let stalled = self.stalled_until.is_some_and(|t| self.host.host.now() < t);
        let per_step = self.reads_per_step;
        let g = &mut self.guests[i];
        g.sim.follow(&self.host.host);
        g.sim.world_leap = self.host.host.world_leap;
        // The application's reads since the last step, on the page it had meanwhile.
        let c_now = g.sim.counter();
        if let (Some(from), Some(page), true, true) = (g.read_from, g.page, g.source_up, per_step > 0) {
            judge_reads(&g.sim, &page, from, c_now, per_step, &mut self.reads);
        }
        g.read_from = Some(c_now);
        let mut notified = false;
        if let (Some(hp), false) = (host_page, stalled) {
            if g.last_host != Some(hp) {
                g.last_host = Some(hp);
                if let Ok(p) = g.relay.guest_page(&hp) {
                    let new = Snapshot::new(p, 4096).ok();
                    if new.is_some_and(|n| g.page.is_some_and(|o| o.disruption_marker() != n.disruption_marker())) {
                        g.disrupted_at.get_or_insert(g.sim.now());
                    }
                    g.page = new;
                    self.relayed += 1;
                }
                notified = true;
            }
        }
        // Notified (the default): a new page is observed at once. Otherwise vmtime sync's checks
        // of the markers decide (vmtime_core::cadence), as on a 6.13–6.19 driver or a BAR.
        let now = g.sim.now();
        let urgent = match &mut g.cadence {
            None => notified,
            Some(c) if c.due(now) => {
                let m = g.page.filter(|_| g.source_up).map(|p| Markers::of(&p));
                let pending = g.discipline.disruption_pending();
                let look = c.look(now, m, pending);
                // A new page while the interval has grown: observed within the shortest one.
                g.page_news |= look == Look::Updated && g.discipline.resting();
                look.observe_now(pending)
            }
            Some(_) => false,
        };
        if urgent {
            g.last_observation = i128::MIN / 2;
        }
        // The discipline's own interval (it grows at rest up to SyncConfig::max_interval_ns), as
        // vmtime sync follows it.
        let interval = g.discipline.poll_interval_ns();
        let interval = if g.page_news { interval.min(g.discipline.config().interval_ns) } else { interval };
        let due = g.sim.now() - g.last_observation >= interval;
        if due {
            if let (Some(c), Some(p), true) = (&mut g.cadence, g.page, g.source_up) {
                c.seen(Markers::of(&p));
            }
            if let (Some(t), true, true) = (g.disrupted_at, g.source_up, g.page.is_some()) {
                g.detection_ns.push(g.sim.now() - t);
                g.disrupted_at = None;
            }
            g.last_observation = g.sim.now();
            g.page_news = false;
            let kernel = g.sim.timex();
            let actions = match (g.source_up, g.page) {
                (true, Some(page)) => {
                    let raw = g.sim.tightest(Clock::Raw, 8);
                    let samples = g.sim.burst(Clock::Realtime, 64);
                    g.discipline.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel })
                }
                _ => g.discipline.handle_source_lost(&kernel),
            };
            apply(g, actions);
        }
        let a = g.discipline.handle_tick(g.sim.raw_now());
        apply(g, a);
        // Judge: the page's bounds and the kernel's maxerror against the truth.
        let c = g.sim.counter();
        let truth = g.sim.truth_at_counter(c);
        if let Some(p) = g.page {
            if let Ok(t) = p.tai_at(c) {
                if let Some(m) = t.maxerror_ns() {
                    if (t.time.as_nanos() as i128 - truth).unsigned_abs() > m + 1 {
                        g.page_bound_violations += 1;
                    }
                }
            }
        }
        let synced = g.sim.tx.status & vmtime_core::kernel::STA_UNSYNC == 0;
        let bound = g.sim.tx.maxerror_us as u128 * 1000;
        if synced
            && (g.sim.kernel_error_ns().unsigned_abs() > bound || g.sim.leap_disagreement_ns().unsigned_abs() > bound)
        {
            g.kernel_bound_violations += 1;
        }
    }

    /// Runs for `dur_ns` with the host's 10 ms poll.
    pub fn run_for(&mut self, dur_ns: i128) {
        let end = self.host.host.now() + dur_ns;
        while self.host.host.now() < end {
            let now = self.host.host.now();
            // The truth's TAI − UTC is a function of true time, judged at the instant of each
            // comparison (not at the start of this 10 ms step: a kernel a few ns ahead of truth
            // has applied the leap second by the step's end).
            self.host.host.world_leap = self.world_leap();
            if now >= self.next_ntp {
                self.ntp_update();
                self.next_ntp = now + self.ntp.poll_s * NS;
            }
            self.host.run_for(10 * MS, 10 * MS);
            for i in 0..self.guests.len() {
                self.guest_step(i);
            }
            if self.host.host.now() >= self.next_row {
                self.next_row += NS;
                self.record();
            }
        }
    }

    fn record(&mut self) {
        let Some(g) = self.guests.first() else { return };
        let h = &self.host.host;
        let page_ns = self
            .host
            .current
            .and_then(|p| p.tai_at(h.counter()).ok())
            .map_or(f64::NAN, |t| (t.time.as_nanos() as i128 - h.truth_at_counter(h.counter())) as f64);
        let c = g.sim.counter();
        let pm = g.page.and_then(|p| p.tai_at(c).ok()).and_then(|t| t.maxerror_ns()).map_or(f64::NAN, |m| m as f64);
        let freq = |s: &SimHost| ((s.tx.tick - 10_000) as f64 * 100.0) + s.tx.freq as f64 / 65536.0;
        self.rows.push(Row {
            t_s: self.elapsed_s(),
            host_ns: h.kernel_error_ns() as f64,
            page_ns,
            guest_ns: g.sim.kernel_error_ns() as f64,
            page_maxerror_ns: pm,
            kernel_maxerror_ns: g.sim.tx.maxerror_us as f64 * 1000.0,
            host_freq_ppm: freq(h),
            guest_freq_ppm: freq(&g.sim),
        });
    }

    /// Live migration of every guest to another host: a different oscillator and clock error,
    /// and a TSC offset that makes the guest counter step by `counter_step` ticks.
    pub fn migrate(&mut self, err_ppb: i64, kernel_err_ns: i128, counter_step: i64) {
        let now = self.host.host.now();
        self.seed = self.seed.wrapping_add(0x9e37);
        // The destination host has been running for a while: warm it up a minute in the past.
        let mut h = SimHost::new(
            self.seed,
            now - 60 * NS,
            2_500_000_000,
            err_ppb,
            self.world_tai_minus_utc(now - 60 * NS),
            kernel_err_ns,
        );
        h.world_leap = self.world_leap();
        h.set_kernel_tai(37);
        h.set_freq_ppb(-err_ppb);
        h.ntp_sync((kernel_err_ns.unsigned_abs() / 1000) as i64 + 100, 20);
        h.wander_ppb = self.host.host.wander_ppb;
        let mut dest = HostRun::new(h, HostConfig { marker_seed: self.seed, ..HostConfig::default() }, Sampled::Tai);
        if let Some(t) = self.host_tolerance_ppb {
            let c = dest.publisher.config().clone();
            dest.publisher.retune(c.threshold_ns, t, c.interval_ns, c.longest_poll_gap_ns);
        }
        dest.run_for(now - dest.host.now(), 10 * MS);
        self.host = dest;
        self.next_ntp = self.host.host.now() + self.ntp.poll_s * NS;
        for g in &mut self.guests {
            let old = g.sim.map().expect("a guest");
            // KVM on the destination: offset so the guest counter continues (plus the step).
            let g_now = g.sim.counter();
            let scaled = ((self.host.host.counter() as u128 * old.ratio as u128) >> old.frac_bits) as u64;
            let map = CounterMap { offset: g_now.wrapping_sub(scaled).wrapping_add(counter_step as u64), ..old };
            // One change, not set_map then follow: set_map with the source host's counter would
            // move the guest's kernel clock by the two hosts' counter difference (their
            // oscillators differ by tens of ppm over the decades since the counters' origin,
            // about 25 h), which no real migration does.
            g.sim.migrate_to(&self.host.host, map);
            g.relay.migrated_in(map);
        }
        self.restart_reads();
        self.event("migration");
    }

    /// The VM is snapshotted now and restored after `pause_ns`: its clock stood still meanwhile.
    pub fn restore_after(&mut self, pause_ns: i128) {
        self.host.run_for(pause_ns, 10 * MS);
        for g in &mut self.guests {
            let old = g.sim.map().expect("a guest");
            // The guest kernel stood still; on restore the VMM keeps its counter where it was.
            let before = g.sim.counter();
            g.sim.follow(&self.host.host);
            g.sim.step(-pause_ns);
            let ticks = g.sim.counter().wrapping_sub(before);
            let map = CounterMap { offset: old.offset.wrapping_sub(ticks), ..old };
            g.sim.set_map(map);
            g.relay.migrated_in(map);
            g.relay.restored_from_snapshot();
        }
        self.restart_reads();
        self.next_row = self.host.host.now();
        self.event(format!("restore after {} s", pause_ns / NS));
    }

    /// Sets the host publisher's rate tolerance, ppb (and that of any later destination).
    pub fn set_host_tolerance(&mut self, ppb: u64) {
        self.host_tolerance_ppb = Some(ppb);
        let c = self.host.publisher.config().clone();
        self.host.publisher.retune(c.threshold_ns, ppb, c.interval_ns, c.longest_poll_gap_ns);
    }

    /// Steps the host clock (an operator's settimeofday: like the kernel's, it clears the NTP
    /// state: maxerror 16 s, STA_UNSYNC, until the NTP daemon's next update).
    pub fn host_step(&mut self, ns: i128) {
        self.host.host.step(ns);
        self.host.host.tx.maxerror_us = 16_000_000;
        self.host.host.set_status(vmtime_core::kernel::STA_UNSYNC, true);
        self.host.publisher.handle_event(HostEvent::Stepped);
        self.event(format!("host step {:+} µs", ns / 1000));
    }
}

/// Judges `n` application reads at counter values spread evenly over `(from, to]` on `page`
/// against true time, in integer arithmetic: the page's time and bound at each counter (the
/// ABI's formula, as `vmclock::Clock::now` computes it), truth interpolated in fixed point
/// between its values at the two ends (it is linear in the counter within a step). Both are
/// rounded down to whole ns, so the judge allows 1 ns.
fn judge_reads(sim: &SimHost, page: &Snapshot, from: u64, to: u64, n: u32, out: &mut Reads) {
    let span = to.wrapping_sub(from);
    if span == 0 || span > 1 << 40 {
        return; // no time passed, or the counter went back: nothing read in between
    }
    let Ok(r) = page.reference() else { return };
    let tai = r.time_type == vmclock::abi::time_type::TAI;
    let (t0, t1) = (sim.truth_at_counter(from), sim.truth_at_counter(to));
    let slope_q32 = ((t1 - t0) << 32) / span as i128;
    const NS: u128 = 1_000_000_000;
    for i in 1..=n as u64 {
        let d = span * i / n as u64;
        let c = from.wrapping_add(d);
        let truth = t0 + ((d as i128 * slope_q32) >> 32);
        let (time_ns, max_ns) = if tai {
            let (Ok(raw), Some(m)) = (r.raw_time_at(c), r.maxerror_at(c)) else { continue };
            ((raw.wrapping_mul(NS) >> 64) as i128, m.saturating_mul(NS).saturating_add(u64::MAX as u128) >> 64)
        } else {
            let Some((t, m)) = page.tai_at(c).ok().and_then(|t| Some((t.time.as_nanos() as i128, t.maxerror_ns()?)))
            else {
                continue;
            };
            (t, m)
        };
        let err = (time_ns - truth).unsigned_abs();
        out.reads += 1;
        if err > max_ns + 1 {
            out.violations += 1;
        }
        out.bound_ns.add(max_ns.min(u64::MAX as u128) as u64);
        out.error_ns.add(err.min(u64::MAX as u128) as u64);
    }
}

fn apply(g: &mut ChainGuest, actions: Vec<SyncAction>) {
    for a in actions {
        g.steps += u32::from(matches!(a, SyncAction::Step { .. }));
        g.hooks += u32::from(g.sim.apply(&a));
    }
}
