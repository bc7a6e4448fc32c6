//! The whole chain, host to guest: a host machine whose kernel an NTP-like model disciplines, the
//! real host publisher on it, the real relay to each guest, and the real guest discipline on each
//! guest's kernel. Guests run on the host's oscillator through their KVM counter map.

use crate::host::{Clock, SimHost};
use crate::host_run::HostRun;
use vmclock::Snapshot;
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
    /// Steps vmtime sync took.
    pub steps: u32,
    /// Times true time lay outside the guest page's bounds at the guest's counter.
    pub page_bound_violations: u64,
    /// Times true time lay outside the guest kernel's maxerror while synchronised.
    pub kernel_bound_violations: u64,
    /// Hook runs.
    pub hooks: u32,
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
}

impl Default for NtpModel {
    fn default() -> Self {
        NtpModel { poll_s: 16, freq_noise_ppb: 20, slews: true, synced: true }
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
    start: i128,
    next_ntp: i128,
    next_row: i128,
    seed: u64,
}

/// The guest-side interval.
const GUEST_INTERVAL: i128 = NS;

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
                steps: 0,
                page_bound_violations: 0,
                kernel_bound_violations: 0,
                hooks: 0,
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
        if self.ntp.slews {
            h.set_offset_ns(-e as i64);
        }
        // An honest maxerror: the error now, plus what it may drift before the next update.
        h.ntp_sync((e.unsigned_abs() / 1000) as i64 + 100, 20);
    }

    fn guest_step(&mut self, i: usize) {
        let host_page = self.host.current;
        let g = &mut self.guests[i];
        g.sim.follow(&self.host.host);
        g.sim.world_leap = self.host.host.world_leap;
        if let Some(hp) = host_page {
            if g.last_host != Some(hp) {
                g.last_host = Some(hp);
                if let Ok(p) = g.relay.guest_page(&hp) {
                    g.page = Snapshot::new(p, 4096).ok();
                    self.relayed += 1;
                }
                g.last_observation = i128::MIN / 2; // notified: observe now
            }
        }
        let due = g.sim.now() - g.last_observation >= GUEST_INTERVAL.min(g.discipline.poll_interval_ns());
        if due {
            g.last_observation = g.sim.now();
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
        self.next_row = self.host.host.now();
        self.event(format!("restore after {} s", pause_ns / NS));
    }

    /// Steps the host clock (an operator's settimeofday).
    pub fn host_step(&mut self, ns: i128) {
        self.host.host.step(ns);
        self.host.publisher.handle_event(HostEvent::Stepped);
        self.event(format!("host step {:+} µs", ns / 1000));
    }
}

fn apply(g: &mut ChainGuest, actions: Vec<SyncAction>) {
    for a in actions {
        g.steps += u32::from(matches!(a, SyncAction::Step { .. }));
        g.hooks += u32::from(g.sim.apply(&a));
    }
}
