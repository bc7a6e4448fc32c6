//! A simulated host: oscillator, counter, RAW clock and a Linux-like kernel clock.

use crate::Rng;
use vmtime_core::kernel::{
    KernelTimex, STA_DEL, STA_INS, STA_NANO, STA_PLL, STA_UNSYNC, TIME_DEL, TIME_INS, TIME_OK, TIME_OOP, TIME_WAIT,
};
use vmtime_core::AbaSample;

const NS: i128 = 1_000_000_000;
/// Fixed-point fraction bits of the kernel's ns-per-tick.
const Q: u32 = 48;

/// Which clock to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// CLOCK_REALTIME.
    Realtime,
    /// CLOCK_TAI (REALTIME + the kernel's tai).
    Tai,
    /// CLOCK_MONOTONIC_RAW.
    Raw,
}

/// The simulated host.
#[derive(Clone, Debug)]
pub struct SimHost {
    /// True time, TAI ns since 1970.
    t: i128,
    /// TAI − UTC of the real world (before [`SimHost::world_leap`], if one is set).
    pub true_tai_minus_utc: i64,
    /// A leap second of the real world: from this true TAI instant (ns) on, TAI − UTC is this.
    /// Truth is judged against [`SimHost::world_tai_minus_utc`], a function of true time, so a
    /// leap second counts from its exact instant, whatever step the simulation takes across it.
    pub world_leap: Option<(i128, i64)>,
    /// Counter ticks per second × 2^16 (nominal × (1 + error)).
    hz_q16: i128,
    /// Nominal counter frequency (the kernel's idea), Hz.
    pub nominal_hz: i128,
    c0: i128,
    raw_q: i128,
    // Kernel clock segment: at counter `seg_c` its REALTIME is `seg_k` (ns << Q); ns per tick `kq`.
    seg_c: i128,
    seg_k: i128,
    kq: i128,
    /// The PLL's correction applied during the current second, ns.
    chunk: i64,
    /// The kernel's NTP state.
    pub tx: KernelTimex,
    /// Sampling noise generator.
    pub rng: Rng,
    /// Sampling window, ns (each side drawn from this range).
    pub window_ns: (u64, u64),
    /// Per-mille of samples that get a long window (preemption).
    pub outlier_permille: u64,
    /// Counts of leap seconds the kernel applied (+1 inserted, −1 deleted).
    pub leaps_applied: Vec<(i128, i8)>,
    /// Random-walk wander of the oscillator: each second its frequency error moves by up to
    /// ± this many ppb (uniform).
    pub wander_ppb: i64,
    /// Temperature-like drift: a sinusoid of this amplitude (ppb) on the frequency error…
    pub temperature_ppb: i64,
    /// …with this period, s.
    pub temperature_period_s: i64,
    /// The error without the temperature term (base + wander so far), ppb.
    walk_ppb: i64,
    err_ppb: i64,
    /// For a guest: its counter is this map of the host's (the oscillator fields are the host's,
    /// copied by [`SimHost::follow`]).
    map: Option<vmtime_core::relay::CounterMap>,
}

impl SimHost {
    /// A host at true TAI time `t_tai_ns`, counter at `hz` nominal with `ppm_err` (×1000 = ppb),
    /// kernel REALTIME set to truth − `tai_minus_utc` + `kernel_err_ns`.
    pub fn new(seed: u64, t_tai_ns: i128, hz: i128, err_ppb: i64, tai_minus_utc: i64, kernel_err_ns: i128) -> Self {
        let hz_q16 = (hz << 16) + (hz << 16) * err_ppb as i128 / NS;
        let raw_q = (NS << Q) / hz;
        let mut h = SimHost {
            t: t_tai_ns,
            true_tai_minus_utc: tai_minus_utc,
            world_leap: None,
            hz_q16,
            nominal_hz: hz,
            c0: 1_000_000_007,
            raw_q,
            seg_c: 0,
            seg_k: 0,
            kq: raw_q,
            chunk: 0,
            tx: KernelTimex {
                tick: 10_000,
                constant: 2,
                status: STA_UNSYNC | STA_NANO | STA_PLL,
                maxerror_us: 16_000_000,
                esterror_us: 16_000_000,
                ..Default::default()
            },
            rng: Rng::new(seed),
            window_ns: (8, 30),
            outlier_permille: 5,
            leaps_applied: Vec::new(),
            wander_ppb: 0,
            temperature_ppb: 0,
            temperature_period_s: 3600,
            walk_ppb: err_ppb,
            err_ppb,
            map: None,
        };
        h.seg_c = h.counter_at(h.t);
        h.seg_k = (t_tai_ns - tai_minus_utc as i128 * NS + kernel_err_ns) << Q;
        h.recompute_rate();
        h
    }

    /// True time (TAI ns).
    pub fn now(&self) -> i128 {
        self.t
    }

    /// The real world's TAI − UTC at true TAI time `t`, s.
    pub fn world_tai_minus_utc_at(&self, t: i128) -> i64 {
        match self.world_leap {
            Some((at, after)) if t >= at => after,
            _ => self.true_tai_minus_utc,
        }
    }

    /// The real world's TAI − UTC now, s.
    pub fn world_tai_minus_utc(&self) -> i64 {
        self.world_tai_minus_utc_at(self.t)
    }

    /// The counter now.
    pub fn counter(&self) -> u64 {
        self.counter_at(self.t) as u64
    }

    fn counter_at(&self, t: i128) -> i128 {
        let c = self.c0 + t * self.hz_q16 / (NS << 16);
        match self.map {
            None => c,
            Some(m) => m.guest(c as u64) as i128,
        }
    }

    /// True TAI at counter `c` (inverse of the oscillator, and of the map for a guest), ns.
    pub fn truth_at_counter(&self, c: u64) -> i128 {
        let c = match self.map {
            None => c as i128,
            Some(m) => ((((c.wrapping_sub(m.offset)) as u128) << m.frac_bits) / m.ratio as u128) as i128,
        };
        ((c - self.c0) * (NS << 16)) / self.hz_q16
    }

    /// The first true time at which the counter reads at least `c` (through the map for a
    /// guest), ns.
    fn time_at_counter_ceil(&self, c: i128) -> i128 {
        let c_host = match self.map {
            None => c,
            Some(m) => {
                let d = (c as u64).wrapping_sub(m.offset) as u128;
                (d << m.frac_bits).div_ceil(m.ratio as u128) as i128
            }
        };
        ((c_host - self.c0) * (NS << 16) + self.hz_q16 - 1) / self.hz_q16
    }

    /// A guest machine on `host`'s oscillator, seeing its counter through `map` (KVM's TSC
    /// offset and scaling), with its own kernel `kernel_err_ns` off truth, unsynchronised.
    pub fn guest_of(host: &SimHost, map: vmtime_core::relay::CounterMap, seed: u64, kernel_err_ns: i128) -> SimHost {
        let ratio = map.ratio as f64 / 2f64.powi(map.frac_bits as i32);
        let nominal = (host.nominal_hz as f64 * ratio).round() as i128;
        let mut g = SimHost::new(seed, host.t, nominal, 0, host.world_tai_minus_utc(), kernel_err_ns);
        g.world_leap = host.world_leap;
        g.map = Some(map);
        g.follow(host);
        g.seg_c = g.counter_at(g.t);
        g.seg_k = (host.t - host.world_tai_minus_utc() as i128 * NS + kernel_err_ns) << Q;
        g.recompute_rate();
        g
    }

    /// A guest takes over its host's oscillator state (after the host's wander or a change)
    /// and moves on to the host's time if it is behind.
    pub fn follow(&mut self, host: &SimHost) {
        if self.map.is_none() {
            return;
        }
        self.rebase();
        self.c0 = host.c0;
        self.hz_q16 = host.hz_q16;
        self.err_ppb = host.err_ppb;
        // The counter is continuous by construction (the host rebased at its change); the
        // kernel segment keeps its origin.
        if host.t > self.t {
            self.advance(host.t - self.t);
        }
    }

    /// A live migration of this guest onto `host`, whose oscillator and counter differ, with the
    /// new counter map `map` (KVM's offset on the destination): the guest's counter goes on from
    /// where `map` puts it and its kernel clock follows the counter, as a TSC clocksource does
    /// (a map that keeps the counter continuous keeps the kernel clock continuous too).
    pub fn migrate_to(&mut self, host: &SimHost, map: vmtime_core::relay::CounterMap) {
        self.rebase();
        self.c0 = host.c0;
        self.hz_q16 = host.hz_q16;
        self.err_ppb = host.err_ppb;
        self.map = Some(map);
        if host.t > self.t {
            self.advance(host.t - self.t);
        }
    }

    /// A guest's counter map changes (a migration to a host with another TSC offset, or a
    /// restore): its counter jumps accordingly; the kernel clock follows the counter.
    pub fn set_map(&mut self, map: vmtime_core::relay::CounterMap) {
        self.rebase();
        let before = self.counter_at(self.t);
        self.map = Some(map);
        let after = self.counter_at(self.t);
        self.seg_c += after - before;
    }

    /// The guest's counter map.
    pub fn map(&self) -> Option<vmtime_core::relay::CounterMap> {
        self.map
    }

    /// Changes the oscillator's frequency error (a migration or a temperature step), keeping the
    /// counter continuous.
    pub fn set_oscillator_error(&mut self, err_ppb: i64) {
        self.err_ppb = err_ppb;
        self.walk_ppb = err_ppb;
        let c = self.counter_at(self.t);
        let hz = self.nominal_hz;
        self.hz_q16 = (hz << 16) + (hz << 16) * err_ppb as i128 / NS;
        self.c0 = c - self.t * self.hz_q16 / (NS << 16);
    }

    /// RAW at counter `c`, ns.
    fn raw_at(&self, c: i128) -> i128 {
        (c * self.raw_q) >> Q
    }

    /// REALTIME at counter `c` (ns << Q), within the current segment.
    fn k_at(&self, c: i128) -> i128 {
        self.seg_k + (c - self.seg_c) * self.kq
    }

    fn recompute_rate(&mut self) {
        // ns per tick = raw ns per tick × second length / 1e9, the second length being the
        // kernel's tick_length: tick and freq, plus the PLL chunk fixed at the last second.
        let len =
            ((self.tx.tick as i128 * 100 * 1000) << 16) + self.tx.freq as i128 * 1000 + ((self.chunk as i128) << 16);
        self.kq = self.raw_q * len / (NS << 16);
    }

    /// Advances true time by `dt_ns`, running the kernel's once-a-second work on the way.
    pub fn advance(&mut self, dt_ns: i128) {
        let target = self.t + dt_ns;
        loop {
            // The next REALTIME second boundary, as a counter value.
            // (Never behind the segment start, so every boundary is processed once.)
            let k = self.k_at(self.counter_at(self.t).max(self.seg_c)) >> Q;
            let next = (k.div_euclid(NS) + 1) * NS;
            let c_b = self.seg_c + (((next << Q) - self.seg_k) + self.kq - 1) / self.kq;
            if c_b > self.counter_at(target) {
                break;
            }
            // Move to the boundary and run second_overflow there.
            self.seg_k = self.k_at(c_b);
            self.seg_c = c_b;
            self.t = self.time_at_counter_ceil(c_b).max(self.t);
            self.second_overflow(next / NS);
        }
        self.t = target;
    }

    fn second_overflow(&mut self, secs: i128) {
        if (self.wander_ppb > 0 || self.temperature_ppb != 0) && self.map.is_none() {
            if self.wander_ppb > 0 {
                self.walk_ppb += self.rng.range(0, 2 * self.wander_ppb as u64) as i64 - self.wander_ppb;
            }
            // The phase of the temperature cycle from whole seconds of true time (deterministic).
            let phase = (self.t / NS).rem_euclid(self.temperature_period_s.max(1) as i128) as f64
                / self.temperature_period_s.max(1) as f64;
            let temp = (self.temperature_ppb as f64 * (phase * std::f64::consts::TAU).sin()).round() as i64;
            let walk = self.walk_ppb;
            self.set_oscillator_error(walk + temp);
            self.walk_ppb = walk;
        }
        let tx = &mut self.tx;
        let mut leap = 0i128;
        match tx.state {
            TIME_OK => {
                if tx.status & STA_INS != 0 {
                    tx.state = TIME_INS;
                } else if tx.status & STA_DEL != 0 {
                    tx.state = TIME_DEL;
                }
            }
            TIME_INS => {
                if tx.status & STA_INS == 0 {
                    tx.state = TIME_OK;
                } else if secs % 86_400 == 0 {
                    leap = -1;
                    tx.state = TIME_OOP;
                }
            }
            TIME_DEL => {
                if tx.status & STA_DEL == 0 {
                    tx.state = TIME_OK;
                } else if (secs + 1) % 86_400 == 0 {
                    leap = 1;
                    tx.state = TIME_WAIT;
                }
            }
            TIME_OOP => tx.state = TIME_WAIT,
            _ => {
                if tx.status & (STA_INS | STA_DEL) == 0 {
                    tx.state = TIME_OK;
                }
            }
        }
        if leap != 0 {
            self.seg_k += (leap * NS) << Q;
            if tx.tai != 0 {
                tx.tai -= leap as i32;
            }
            self.leaps_applied.push((secs, -leap as i8));
        }
        tx.maxerror_us += 500;
        if tx.maxerror_us > 16_000_000 {
            tx.maxerror_us = 16_000_000;
            tx.status |= STA_UNSYNC;
        }
        // The PLL: this second takes offset >> (SHIFT_PLL + constant) of the remaining offset.
        self.chunk = tx.offset_ns >> (2 + tx.constant.clamp(0, 32));
        tx.offset_ns -= self.chunk;
        self.recompute_rate();
    }

    // --- adjtimex writes (only ever on this simulated kernel) ---

    /// ADJ_FREQUENCY, in ppb.
    pub fn set_freq_ppb(&mut self, ppb: i64) {
        self.rebase();
        self.tx.freq = ppb * 65_536 / 1000;
        self.recompute_rate();
    }

    /// Applies one `vmtime sync` action as adjtimex would (the simulator's counterpart of
    /// `vmtime_sys::timex::apply`). Returns true for `RunHook`, which is the caller's.
    pub fn apply(&mut self, a: &vmtime_core::sync::SyncAction) -> bool {
        use vmtime_core::kernel::STA_UNSYNC;
        use vmtime_core::sync::SyncAction;
        match *a {
            SyncAction::Step { delta_ns } => self.step(delta_ns as i128),
            SyncAction::SetFrequency { tick, freq } => {
                self.set_tick(tick);
                self.set_freq_scaled(freq);
            }
            SyncAction::SetTai(t) => self.set_kernel_tai(t),
            SyncAction::SetState { insert, delete, synchronized, maxerror_us, esterror_us } => {
                self.set_status(STA_INS, insert);
                self.set_status(STA_DEL, delete);
                self.set_status(STA_UNSYNC, !synchronized);
                self.tx.maxerror_us = maxerror_us;
                self.tx.esterror_us = esterror_us;
            }
            SyncAction::RunHook => return true,
        }
        false
    }

    /// ADJ_FREQUENCY in the kernel's unit (2^-16 ppm), clamped to ±500 ppm as the kernel does.
    pub fn set_freq_scaled(&mut self, freq: i64) {
        self.rebase();
        self.tx.freq = freq.clamp(-500 << 16, 500 << 16);
        self.recompute_rate();
    }

    /// The oscillator's frequency error, ppb.
    pub fn oscillator_error_ppb(&self) -> i64 {
        self.err_ppb
    }

    /// CLOCK_MONOTONIC_RAW now, ns.
    pub fn raw_now(&self) -> i128 {
        self.raw_at(self.counter_at(self.t))
    }

    /// The counter jumps by `ticks` (a restore or a migration without TSC offset compensation);
    /// the kernel clock follows the counter, as a TSC clocksource does.
    pub fn jump_counter(&mut self, ticks: i128) {
        self.rebase();
        self.c0 += ticks;
        let c = self.counter_at(self.t);
        self.seg_c = c;
    }

    /// True seconds per counter tick, as a vmclock period.
    pub fn true_period(&self) -> vmclock::Period {
        vmclock::Period::from_ratio(1 << 16, self.hz_q16 as u128).expect("a sane counter")
    }

    /// ADJ_TICK.
    pub fn set_tick(&mut self, tick: i64) {
        self.rebase();
        self.tx.tick = tick;
        self.recompute_rate();
    }

    /// ADJ_OFFSET (PLL mode, ns): slewed by the kernel from the next second on.
    pub fn set_offset_ns(&mut self, ns: i64) {
        self.tx.offset_ns = ns;
    }

    /// ADJ_SETOFFSET: steps REALTIME by `ns`.
    pub fn step(&mut self, ns: i128) {
        self.rebase();
        self.seg_k += ns << Q;
    }

    /// ADJ_STATUS bits on/off.
    pub fn set_status(&mut self, bits: i32, on: bool) {
        if on {
            self.tx.status |= bits;
        } else {
            self.tx.status &= !bits;
        }
    }

    /// ADJ_TAI.
    pub fn set_kernel_tai(&mut self, tai: i32) {
        self.tx.tai = tai;
    }

    /// What an NTP daemon does when it is synchronised: maxerror and esterror from its error
    /// estimate, STA_UNSYNC cleared.
    pub fn ntp_sync(&mut self, maxerror_us: i64, esterror_us: i64) {
        self.tx.maxerror_us = maxerror_us;
        self.tx.esterror_us = esterror_us;
        self.tx.status &= !STA_UNSYNC;
    }

    fn rebase(&mut self) {
        let c = self.counter_at(self.t);
        self.seg_k = self.k_at(c);
        self.seg_c = c;
    }

    // --- reads ---

    /// The kernel's REALTIME now, ns (exact, for the checks).
    pub fn kernel_realtime_ns(&self) -> i128 {
        self.k_at(self.counter_at(self.t)) >> Q
    }

    /// The kernel's error against true time, ns, on a scale without leap seconds: its
    /// REALTIME plus TAI − UTC as the kernel keeps it (the world's at the start plus the leap
    /// seconds this kernel has applied), minus true TAI.
    ///
    /// UTC is discontinuous at a leap second, so comparing REALTIME with the world's UTC would
    /// charge a kernel a few ns ahead of (or behind) truth a whole second for those few ns on
    /// either side of the instant. Whether the kernel applied the leap at the right time is
    /// judged apart, by [`SimHost::leap_disagreement_ns`].
    pub fn kernel_error_ns(&self) -> i128 {
        let kernel_leaps: i64 = self.leaps_applied.iter().map(|&(_, l)| l as i64).sum();
        self.kernel_realtime_ns() + (self.true_tai_minus_utc + kernel_leaps) as i128 * NS - self.t
    }

    /// 0 while this kernel and the world agree on how many leap seconds have happened;
    /// otherwise how far true time is from the world's leap second (ns), or `i128::MAX` when
    /// the world has none to explain the difference. A kernel whose clock is within its
    /// maxerror of truth applies a leap second within maxerror of the true instant, so a bound
    /// check compares this with maxerror too.
    pub fn leap_disagreement_ns(&self) -> i128 {
        let kernel_leaps: i64 = self.leaps_applied.iter().map(|&(_, l)| l as i64).sum();
        if self.true_tai_minus_utc + kernel_leaps == self.world_tai_minus_utc() {
            return 0;
        }
        match self.world_leap {
            Some((at, _)) => (self.t - at).abs(),
            None => i128::MAX,
        }
    }

    /// The kernel's own vmclock page, as the RFC's `/dev/vmclock_host` publishes it: the
    /// current segment of the kernel clock (counter value, CLOCK_TAI time, period), no bounds.
    pub fn kernel_page(&self) -> vmclock::Snapshot {
        let c = self.counter_at(self.t);
        let k = self.k_at(c) + ((self.tx.tai as i128 * NS) << Q); // ns << Q, CLOCK_TAI
        let ns = k >> Q;
        let sub = k & ((1 << Q) - 1); // fraction of a ns, 2^-Q
        let frac_ns = ((ns % NS) as u128) << 64;
        let time = ((ns / NS) as u128) << 64 | (frac_ns / NS as u128 + ((sub as u128) << (64 - Q)) / NS as u128);
        let period = vmclock::Period::from_ratio(self.kq as u128, (NS as u128) << Q).expect("a sane period");
        let abi = vmclock::PageBuilder::new()
            .reference(
                vmclock::abi::counter_id::X86_TSC,
                c as u64,
                vmclock::Timestamp::<vmclock::Tai>::from_raw(time),
                period,
            )
            .build();
        vmclock::Snapshot::new(abi, 4096).expect("valid")
    }

    /// `adjtimex` (modes 0).
    pub fn timex(&self) -> KernelTimex {
        self.tx
    }

    /// One (clock, counter, clock) sample now, with random windows; time moves on by the
    /// sample's length.
    pub fn sample(&mut self, clock: Clock) -> AbaSample {
        let (lo, hi) = self.window_ns;
        let mut d1 = self.rng.range(lo, hi) as i128;
        let d2 = self.rng.range(lo, hi) as i128;
        if self.rng.chance(self.outlier_permille, 1000) {
            d1 += self.rng.range(100, 5_000) as i128;
        }
        let t = self.t;
        let c_before = self.counter_at(t);
        let c = self.counter_at(t + d1);
        let c_after = self.counter_at(t + d1 + d2);
        let read = |h: &SimHost, c: i128| match clock {
            Clock::Raw => h.raw_at(c),
            Clock::Realtime => h.k_at(c) >> Q,
            Clock::Tai => (h.k_at(c) >> Q) + h.tx.tai as i128 * NS,
        };
        let s = AbaSample { before_ns: read(self, c_before), counter: c as u64, after_ns: read(self, c_after) };
        self.t = t + d1 + d2;
        s
    }

    /// The tightest of `n` samples.
    pub fn tightest(&mut self, clock: Clock, n: usize) -> AbaSample {
        (0..n).map(|_| self.sample(clock)).min_by_key(|s| s.window_ns()).expect("n > 0")
    }

    /// A burst of `n` samples.
    pub fn burst(&mut self, clock: Clock, n: usize) -> Vec<AbaSample> {
        (0..n).map(|_| self.sample(clock)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_follows_freq_and_pll() {
        let mut h = SimHost::new(1, 1_800_000_037 * NS, 2_500_000_000, 20_000, 37, 0);
        h.window_ns = (0, 0);
        h.outlier_permille = 0;
        let k0 = h.kernel_realtime_ns();
        h.advance(100 * NS);
        // Nominal kernel on a +20 ppm oscillator gains 20 ppm against truth.
        let gained = h.kernel_realtime_ns() - k0 - 100 * NS;
        assert!((gained - 2_000_000).abs() < 10, "{gained}");
        // Cancel it with freq −20 ppm.
        h.set_freq_ppb(-20_000);
        let k1 = h.kernel_realtime_ns();
        h.advance(100 * NS);
        assert!((h.kernel_realtime_ns() - k1 - 100 * NS).abs() < 100);
        // The PLL slews an offset away, a quarter-or-so each second (constant 2: 1/16).
        h.set_offset_ns(1_000_000);
        let e0 = h.kernel_error_ns();
        h.advance(100 * NS);
        let moved = h.kernel_error_ns() - e0;
        assert!((moved - 1_000_000).abs() < 2_000, "{moved}");
        assert!(h.timex().offset_ns.abs() < 2_000, "1 ms × (15/16)^100 ≈ 1.6 µs left");
    }

    #[test]
    fn leap_insertion_at_midnight() {
        // 10 s before midnight UTC of day 20_000.
        let midnight_utc = 20_000 * 86_400 * NS;
        let mut h = SimHost::new(2, midnight_utc - 10 * NS + 37 * NS, 1_000_000_000, 0, 37, 0);
        h.set_kernel_tai(37);
        h.set_status(STA_INS, true);
        h.advance(9 * NS + 500_000_000);
        assert_eq!(h.tx.state, TIME_INS);
        assert_eq!(h.kernel_realtime_ns(), midnight_utc - NS / 2);
        h.advance(NS); // into 23:59:60: REALTIME repeats 23:59:59
        assert_eq!(h.tx.state, TIME_OOP);
        assert_eq!(h.kernel_realtime_ns(), midnight_utc - NS / 2);
        assert_eq!(h.tx.tai, 38);
        // CLOCK_TAI is continuous.
        h.window_ns = (0, 0);
        h.outlier_permille = 0;
        let s = h.sample(Clock::Tai);
        assert_eq!(s.before_ns, midnight_utc + 38 * NS - NS / 2);
        h.advance(NS);
        assert_eq!(h.tx.state, TIME_WAIT);
        assert_eq!(h.leaps_applied, vec![(20_000 * 86_400, 1)]);
    }

    #[test]
    fn leap_judged_on_a_continuous_scale_and_at_its_instant() {
        let midnight_utc = 20_000 * 86_400 * NS;
        let switch = midnight_utc + 37 * NS;
        for (armed, kernel_err_ns) in [(true, 40), (true, -40), (false, 40)] {
            // A kernel `kernel_err_ns` off truth, 2 s before the leap second.
            let mut h = SimHost::new(3, switch - 2 * NS, 1_000_000_000, 0, 37, kernel_err_ns);
            h.world_leap = Some((switch, 38));
            h.set_status(STA_INS, armed);
            h.advance(2 * NS); // exactly the instant of the leap second
                               // Neither side of the instant charges the kernel a second for its few ns.
            assert!((h.kernel_error_ns() - kernel_err_ns).abs() <= 1, "{armed} {kernel_err_ns}");
            assert!(h.leap_disagreement_ns() <= 40, "{armed} {kernel_err_ns}");
            h.advance(NS / 2);
            if armed {
                assert_eq!(h.leap_disagreement_ns(), 0);
                assert!((h.kernel_error_ns() - kernel_err_ns).abs() <= 1);
            } else {
                // A kernel that missed the leap second is a second off UTC: the judge sees it.
                assert_eq!(h.leap_disagreement_ns(), NS / 2);
            }
        }
    }

    #[test]
    fn same_seed_same_samples() {
        let run = |seed| {
            let mut h = SimHost::new(seed, 1_800_000_037 * NS, 2_500_000_000, 5_000, 37, 1_000);
            (0..100).map(|_| h.sample(Clock::Realtime)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}

#[cfg(test)]
mod guest_tests {
    use super::*;
    use vmtime_core::relay::CounterMap;

    #[test]
    fn a_guest_counter_is_the_map_of_the_hosts() {
        let mut h = SimHost::new(1, 1_800_000_037 * NS, 2_500_000_000, 12_000, 37, 0);
        h.wander_ppb = 50;
        let map = CounterMap::new(0x1234_5678, (1u64 << 48) * 3 / 2, 48).unwrap();
        let mut g = SimHost::guest_of(&h, map, 2, 1_000);
        for _ in 0..100 {
            h.advance(NS / 3);
            g.follow(&h);
            assert_eq!(g.counter(), map.guest(h.counter()));
            // Truth through the guest's counter is the host's truth at the same instant.
            let tc = g.truth_at_counter(g.counter());
            assert!((tc - h.truth_at_counter(h.counter())).abs() <= 1, "{}", tc - h.now());
        }
        assert!(g.kernel_realtime_ns() != 0);
    }
}
