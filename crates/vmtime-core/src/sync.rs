//! Guest discipline, sans-IO: keeps the guest kernel's CLOCK_REALTIME locked to a vmclock page.
//!
//! Each [`SyncObservation`] carries a consistent copy of the page, (REALTIME, counter, REALTIME)
//! samples of the guest kernel, a (RAW, counter, RAW) sample and the kernel's NTP state. The
//! discipline answers with [`SyncAction`]s for the caller to apply with adjtimex (or to print,
//! with `--dry-run`):
//!
//! * **Feed-forward frequency.** CLOCK_MONOTONIC_RAW is linear in the counter; its ns per tick
//!   is calibrated over an ever longer baseline. The page gives the true seconds per tick. The
//!   kernel must therefore run at `page period / raw period` times RAW: that rate is set with
//!   ADJ_TICK (steps of 100 ppm) and ADJ_FREQUENCY (the rest), and set again when the page changes.
//! * **Phase** by linear slews: a temporary frequency offset for a computed time (the offset
//!   divided by the slew rate, at most half an interval), never the kernel PLL.
//! * **Steps**: at start-up when the offset exceeds `step_threshold_ns` (chrony's makestep), and
//!   at once when the page's disruption marker changes; a changed VM generation also runs the hook.
//! * **Kernel state**: ADJ_TAI from the page, STA_INS / STA_DEL armed on the last day of the month
//!   of an announced leap second, maxerror / esterror from the page's bounds plus the measurement,
//!   STA_UNSYNC cleared while the source is SYNCHRONIZED.
//! * **A FREERUNNING source** (a host that lost its own reference) is followed all the same, as the
//!   ABI allows: its time and bounds are still the best the guest has (the guest runs on the same
//!   oscillator, so holding over would drift from the host for nothing, and a guest booting with a
//!   wrong clock must still be set), but STA_UNSYNC stays set.
//! * **Sanity limits** (like chrony's `maxchange` and the kernel's own): a source whose rate
//!   against RAW lies beyond what the kernel can be set to (ADJ_TICK's ±10 % plus ADJ_FREQUENCY's
//!   ±500 ppm, less the largest slew) is unusable. An offset larger than `max_step_ns` is never
//!   acted on, by step or slew, except where a large offset is expected: at start-up (the first
//!   `max(step_updates, 1)` updates), after the page's `disruption_marker` or
//!   `vm_generation_counter` changed (the page says the counter's calibration broke: migration,
//!   restore, host step), until an update is made; and after a holdover caused by losing the
//!   source, by as much as the kernel may have drifted meanwhile (its MAXFREQ, 500 ppm of the
//!   holdover's length). Both refusals mean holdover, with one [`SyncNotice`] per episode for the
//!   log. Bounds given to the kernel saturate at its 16 s limit.
//! * **Holdover** (source lost, or a page that is UNRELIABLE, not bounded or without a counter):
//!   the last frequency is kept, no step, STA_UNSYNC set; the kernel grows maxerror by 500 µs per
//!   second (its MAXFREQ), which is the rate at which the bound widens.

use crate::host::kernel_reference;
use crate::kernel::KernelTimex;
use crate::AbaSample;
use serde::Serialize;
use vmclock::abi::{leap, status};
use vmclock::{Period, Snapshot};

const NS: i128 = 1_000_000_000;
const UNIT: i128 = 1 << 64;

/// Settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncConfig {
    /// Step when the offset exceeds this during start-up, ns.
    pub step_threshold_ns: i64,
    /// How many first updates may step (chrony's makestep limit); disruptions always step.
    pub step_updates: u32,
    /// Interval between observations, ns.
    pub interval_ns: i128,
    /// Fastest phase slew, ppb (on top of the feed-forward frequency).
    pub max_slew_ppb: i64,
    /// Outside start-up, disruptions and the return from holdover, an offset beyond this is
    /// refused (holdover), ns.
    pub max_step_ns: i64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            step_threshold_ns: 1_000_000,
            step_updates: 3,
            interval_ns: NS,
            max_slew_ppb: 200_000,
            max_step_ns: DEFAULT_MAX_STEP_NS,
        }
    }
}

/// One observation.
#[derive(Clone, Copy, Debug)]
pub struct SyncObservation<'a> {
    /// A consistent copy of the source page.
    pub page: Snapshot,
    /// The tightest (RAW, counter, RAW) sample.
    pub raw: AbaSample,
    /// A burst of (REALTIME, counter, REALTIME) samples.
    pub samples: &'a [AbaSample],
    /// The kernel's NTP state.
    pub kernel: KernelTimex,
}

/// What to do to the kernel clock.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SyncAction {
    /// ADJ_SETOFFSET | ADJ_NANO: step CLOCK_REALTIME by this much.
    Step {
        /// ns to add.
        delta_ns: i64,
    },
    /// ADJ_TICK and ADJ_FREQUENCY.
    SetFrequency {
        /// µs per 1/USER_HZ s.
        tick: i64,
        /// 2^-16 ppm.
        freq: i64,
    },
    /// ADJ_TAI.
    SetTai(i32),
    /// ADJ_STATUS: STA_INS / STA_DEL / STA_UNSYNC, and ADJ_MAXERROR | ADJ_ESTERROR.
    SetState {
        /// Arm a leap second insertion at the next midnight UTC.
        insert: bool,
        /// Arm a leap second deletion.
        delete: bool,
        /// Clear STA_UNSYNC.
        synchronized: bool,
        /// µs.
        maxerror_us: i64,
        /// µs.
        esterror_us: i64,
    },
    /// Run the configured hook (the VM was restored or cloned).
    RunHook,
}

/// In words, as `vmtime sync` logs and prints it (`dry run: would …`).
impl std::fmt::Display for SyncAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SyncAction::Step { delta_ns } => write!(f, "step CLOCK_REALTIME by {:+.3} µs", delta_ns as f64 / 1e3),
            SyncAction::SetFrequency { tick, freq } => {
                write!(f, "set tick {tick} and frequency {:+.6} ppm", freq as f64 / 65536.0)
            }
            SyncAction::SetTai(t) => write!(f, "set the TAI offset to {t} s"),
            SyncAction::SetState { insert, delete, synchronized, maxerror_us, esterror_us } => write!(
                f,
                "set {}{}{}, maxerror {maxerror_us} µs, esterror {esterror_us} µs",
                if synchronized { "synchronised (STA_UNSYNC clear)" } else { "unsynchronised (STA_UNSYNC)" },
                if insert { ", STA_INS (leap second at midnight)" } else { "" },
                if delete { ", STA_DEL (leap second deleted at midnight)" } else { "" }
            ),
            SyncAction::RunHook => f.write_str("run the generation hook"),
        }
    }
}

/// The kernel's frequency range: ADJ_TICK moves ±10 % (9000–11000 µs per 1/100 s, refused
/// outside), ADJ_FREQUENCY adds ±500 ppm (MAXFREQ, clamped); ppb.
pub const KERNEL_MAX_PPB: i64 = KERNEL_MAX_TICK_PPB + KERNEL_MAX_FREQ_PPB;
/// ADJ_TICK's range: ±1000 µs per 10 000 µs tick, ppb.
pub const KERNEL_MAX_TICK_PPB: i64 = 100_000_000;
/// ADJ_FREQUENCY's range (MAXFREQ), ppb; also the rate at which the kernel grows maxerror.
pub const KERNEL_MAX_FREQ_PPB: i64 = 500_000;
/// The default step limit, ns: 2 s. A missed leap second (1 s) or a guest clock set from a
/// 1 s-resolution RTC after a suspend is still corrected; anything larger needs a disruption
/// marker, start-up or holdover to explain it.
pub const DEFAULT_MAX_STEP_NS: i64 = 2_000_000_000;
/// The kernel's limit on maxerror and esterror (NTP_PHASE_LIMIT, 16 s), µs.
pub const KERNEL_MAX_ERROR_US: i64 = 16_000_000;

/// Something the daemon should log: the discipline refused what the source proposed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum SyncNotice {
    /// The source's rate against RAW is beyond what the kernel can follow: holdover.
    RateOutOfRange {
        /// The rate the source implies, ppb.
        ppb: f64,
        /// The largest usable, ppb.
        limit_ppb: i64,
    },
    /// Outside start-up and without a disruption, the source is further off than the step
    /// limit: holdover.
    StepRefused {
        /// Kernel − source, ns.
        offset_ns: f64,
        /// The limit in force (the step limit plus any drift allowed after a holdover), ns.
        limit_ns: i64,
    },
    /// The source's time is outside the believable range (before this program was written, or
    /// beyond what Linux can be set to): holdover, even right after a disruption.
    Implausible(crate::sanity::Implausible),
    /// The source is usable again.
    Recovered,
}

impl std::fmt::Display for SyncNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SyncNotice::RateOutOfRange { ppb, limit_ppb } => write!(
                f,
                "the source implies a rate of {:+.3} ppm against CLOCK_MONOTONIC_RAW, beyond the kernel's ±{} ppm: holding over (is the page's counter period wrong?)",
                ppb / 1e3,
                limit_ppb / 1000
            ),
            SyncNotice::StepRefused { offset_ns, limit_ns } => write!(
                f,
                "the source is {:+.3} s away from this clock, more than the step limit of {} s, and its disruption_marker and vm_generation_counter did not change: holding over; if the source is right, raise max_step_s and send SIGHUP, or restart vmtime sync",
                -offset_ns / 1e9,
                limit_ns as f64 / 1e9
            ),
            SyncNotice::Implausible(why) => write!(f, "{why}: holding over, no step"),
            SyncNotice::Recovered => f.write_str("the source is usable again"),
        }
    }
}

/// The discipline's state, for `vmtime status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SyncStatus {
    /// "starting", "synchronised", "following a free-running source", "holdover".
    pub state: &'static str,
    /// Kernel − source at the last observation, ns.
    pub offset_ns: f64,
    /// Half-width of the pairing intersection, ns.
    pub pairing_ns: f64,
    /// The feed-forward frequency, ppb against RAW.
    pub frequency_ppb: f64,
    /// The slew in force, ppb.
    pub slew_ppb: f64,
    /// The page's maximum error at the last observation, ns.
    pub source_maxerror_ns: Option<f64>,
    /// Steps taken.
    pub steps: u32,
    /// Disruptions seen (marker changes).
    pub disruptions: u32,
    /// Updates made.
    pub updates: u64,
    /// The RAW calibration baseline, s.
    pub baseline_s: f64,
}

/// The discipline.
#[derive(Debug)]
pub struct Discipline {
    cfg: SyncConfig,
    raw_base: Option<AbaSample>,
    marker: Option<u64>,
    generation: Option<u64>,
    ff_ppb: Option<f64>,
    status: SyncStatus,
    slew_end_raw_ns: Option<i128>,
    last_freq: Option<(i64, i64)>,
    last_state: Option<(bool, bool, bool)>,
    notices: Vec<SyncNotice>,
    refusing: bool,
    /// The markers changed and no update has been made since: any step is allowed.
    disrupted: bool,
    /// The disruption marker changed and no update has been made since: step.
    marker_pending: bool,
    /// The source was lost or unusable since the last update.
    lost: bool,
    /// RAW at the last update, ns.
    last_update_raw_ns: Option<i128>,
    /// After a holdover: how far the kernel may have drifted meanwhile, ns (added to the limit
    /// until an update is made).
    drift_allowance_ns: f64,
    /// A second opinion disagrees with the page ([`crate::crosscheck`]): what the kernel's
    /// maxerror must cover, ns; the clock is left unsynchronised meanwhile.
    cross_widen_ns: Option<f64>,
}

/// The kernel's (tick, freq) for a rate `ppb` away from RAW.
pub fn tick_freq(ppb: f64) -> (i64, i64) {
    let ppb = if ppb.is_nan() { 0.0 } else { ppb.clamp(-(KERNEL_MAX_PPB as f64), KERNEL_MAX_PPB as f64) };
    let tick = 10_000 + ((ppb / 100_000.0).round() as i64).clamp(-1_000, 1_000);
    let max_rest = KERNEL_MAX_FREQ_PPB as f64;
    let rest = (ppb - (tick - 10_000) as f64 * 100_000.0).clamp(-max_rest, max_rest);
    (tick, (rest * 65.536).round() as i64)
}

impl Discipline {
    /// A discipline starting from nothing.
    pub fn new(cfg: SyncConfig) -> Self {
        Discipline {
            cfg,
            raw_base: None,
            marker: None,
            generation: None,
            ff_ppb: None,
            status: SyncStatus { state: "starting", ..Default::default() },
            slew_end_raw_ns: None,
            last_freq: None,
            last_state: None,
            notices: Vec::new(),
            refusing: false,
            disrupted: false,
            marker_pending: false,
            lost: false,
            last_update_raw_ns: None,
            drift_allowance_ns: 0.0,
            cross_widen_ns: None,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// Changes the settings live (SIGHUP): the step policy, the limits and the interval. The
    /// calibration, the markers and the counts are kept.
    pub fn reconfigure(&mut self, cfg: SyncConfig) {
        self.cfg = cfg;
    }

    /// The cross-check's verdict ([`crate::crosscheck::CrossCheck::widen_ns`]): while a second
    /// opinion disagrees with the page beyond both bounds, the kernel's maxerror covers the
    /// disagreement and STA_UNSYNC stays set. It never moves the clock.
    pub fn set_cross_check(&mut self, widen_ns: Option<f64>) {
        self.cross_widen_ns = widen_ns;
    }

    /// What happened that the daemon should log, since the last call.
    pub fn take_notices(&mut self) -> Vec<SyncNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Refuses the source (holdover), noting why once per episode.
    fn refuse(&mut self, why: SyncNotice, kernel: &KernelTimex, out: &mut Vec<SyncAction>) {
        if !self.refusing {
            self.refusing = true;
            self.notices.push(why);
        }
        self.holdover(kernel, out);
    }

    /// The state, for status reports.
    pub fn status(&self) -> &SyncStatus {
        &self.status
    }

    /// How long until the next observation: 100 ms while the frequency is still being
    /// calibrated (the first second), then the configured interval.
    pub fn poll_interval_ns(&self) -> i128 {
        if self.ff_ppb.is_none() || self.status.baseline_s < 1.0 {
            (self.cfg.interval_ns / 10).max(1)
        } else {
            self.cfg.interval_ns
        }
    }

    /// Whether the page's markers changed and no update has been made since (the page that
    /// carried the change was not usable yet): the next page is urgent
    /// ([`crate::cadence::Look::observe_now`]).
    pub fn disruption_pending(&self) -> bool {
        self.disrupted || self.marker_pending
    }

    /// When the running slew ends (RAW ns); the caller calls [`Discipline::handle_tick`] then.
    pub fn next_deadline(&self) -> Option<i128> {
        self.slew_end_raw_ns
    }

    fn set_rate(&mut self, slew_ppb: f64, out: &mut Vec<SyncAction>) {
        let Some(ff) = self.ff_ppb else { return };
        self.status.slew_ppb = slew_ppb;
        let (tick, freq) = tick_freq(ff + slew_ppb);
        if self.last_freq != Some((tick, freq)) {
            self.last_freq = Some((tick, freq));
            out.push(SyncAction::SetFrequency { tick, freq });
        }
    }

    /// Ends a slew whose time has come.
    pub fn handle_tick(&mut self, now_raw_ns: i128) -> Vec<SyncAction> {
        let mut out = Vec::new();
        if self.slew_end_raw_ns.is_some_and(|t| now_raw_ns >= t) {
            self.slew_end_raw_ns = None;
            self.set_rate(0.0, &mut out);
        }
        out
    }

    fn holdover(&mut self, kernel: &KernelTimex, out: &mut Vec<SyncAction>) {
        self.status.state = "holdover";
        self.slew_end_raw_ns = None;
        self.set_rate(0.0, out);
        if self.last_state.is_none_or(|(_, _, s)| s) {
            self.last_state = Some((false, false, false));
            // maxerror stays as the kernel has it and grows by 500 µs/s from there.
            out.push(SyncAction::SetState {
                insert: false,
                delete: false,
                synchronized: false,
                maxerror_us: kernel.maxerror_us,
                esterror_us: kernel.esterror_us,
            });
        }
    }

    /// The source is gone (no page, or no consistent read): holdover.
    pub fn handle_source_lost(&mut self, kernel: &KernelTimex) -> Vec<SyncAction> {
        let mut out = Vec::new();
        self.lost = true;
        self.holdover(kernel, &mut out);
        out
    }

    /// One observation.
    pub fn handle_observation(&mut self, obs: &SyncObservation<'_>) -> Vec<SyncAction> {
        let mut out = Vec::new();
        let page = &obs.page;
        // A usable, bounded source: synchronised, or free-running (followed, kernel left unsynchronised).
        let synchronized = page.clock_status() == Some(status::SYNCHRONIZED);
        let usable = (synchronized || page.clock_status() == Some(status::FREERUNNING))
            && page.reference().is_ok()
            && page.time_maxerror_ns().is_some();
        // Markers first: a disruption is acted on even in holdover.
        let marker_changed = self.marker.is_some_and(|m| m != page.disruption_marker());
        let generation_changed = page.vm_generation_counter().is_some()
            && self.generation.is_some_and(|g| Some(g) != page.vm_generation_counter());
        self.marker = Some(page.disruption_marker());
        self.generation = page.vm_generation_counter().or(self.generation);
        if marker_changed {
            self.status.disruptions += 1;
        }
        // A disruption allows a step of any size until the next update (the observation that
        // saw it may itself be unusable: the host is still settling).
        self.disrupted |= marker_changed || generation_changed;
        self.marker_pending |= marker_changed;
        if generation_changed {
            out.push(SyncAction::RunHook);
        }
        // Calibration of RAW against the counter (its slope survives counter jumps).
        let base = *self.raw_base.get_or_insert(obs.raw);
        let d_raw = obs.raw.mid_ns() - base.mid_ns();
        let d_c = obs.raw.counter.wrapping_sub(base.counter) as i64 as i128;
        self.status.baseline_s = d_raw as f64 / 1e9;
        if !usable {
            self.lost = true;
            self.holdover(&obs.kernel, &mut out);
            return out;
        }
        // Back from a holdover: the kernel may have drifted by up to MAXFREQ meanwhile.
        if std::mem::take(&mut self.lost) {
            let held_ns = self.last_update_raw_ns.map_or(0, |t| (obs.raw.mid_ns() - t).max(0));
            self.drift_allowance_ns = held_ns as f64 * KERNEL_MAX_FREQ_PPB as f64 / 1e9;
        }
        let r = page.reference().expect("checked");
        let period = Period { frac: r.period, shift: r.shift };
        // The guest kernel's REALTIME at one counter value, and the source's UTC there.
        let Some(k) = kernel_reference(obs.samples, period, 0) else { return out };
        let Ok(src) = page.utc_at(k.counter) else {
            self.lost = true;
            self.holdover(&obs.kernel, &mut out);
            return out;
        };
        // Never to a time before this program was written nor beyond what the kernel can hold,
        // whatever the markers say (a disruption allows any step inside that range only). A
        // time beyond i128 (time_sec near 2^64) is beyond the range too, and never subtracted.
        let src_time = i128::try_from(src.time.raw()).unwrap_or(i128::MAX);
        if let Err(why) = crate::sanity::check_utc(src_time) {
            self.lost = true;
            self.refuse(SyncNotice::Implausible(why), &obs.kernel, &mut out);
            return out;
        }
        let offset = k.time - src_time; // kernel − source, 2^-64 s
        let offset_ns = offset as f64 * 1e9 / UNIT as f64;
        self.status.offset_ns = offset_ns;
        self.status.pairing_ns = k.half as f64 * 1e9 / UNIT as f64;
        self.status.source_maxerror_ns = src.maxerror_ns().map(|m| m as f64);
        // Feed-forward: kernel rate against RAW = (page s/tick) / (RAW s/tick).
        if d_raw > 10_000_000 && d_c > 0 {
            let page_s_per_tick = r.period as f64 / 2f64.powi(64 + r.shift as i32);
            let raw_s_per_tick = d_raw as f64 / d_c as f64 / 1e9;
            let ppb = (page_s_per_tick / raw_s_per_tick - 1.0) * 1e9;
            let limit_ppb = KERNEL_MAX_PPB - self.cfg.max_slew_ppb.clamp(0, KERNEL_MAX_PPB);
            if ppb.is_nan() || ppb.abs() > limit_ppb as f64 {
                self.lost = true;
                self.refuse(SyncNotice::RateOutOfRange { ppb, limit_ppb }, &obs.kernel, &mut out);
                return out;
            }
            self.ff_ppb = Some(ppb);
            self.status.frequency_ppb = ppb;
        }
        // Outside start-up and disruptions, an offset beyond the step limit (plus the drift a
        // holdover allows) is neither stepped nor slewed.
        let starting = self.status.updates < u64::from(self.cfg.step_updates.max(1));
        let limit_ns = self.cfg.max_step_ns as f64 + self.drift_allowance_ns;
        if !starting && !self.disrupted && offset_ns.abs() > limit_ns {
            let limit_ns = limit_ns.min(i64::MAX as f64) as i64;
            self.refuse(SyncNotice::StepRefused { offset_ns, limit_ns }, &obs.kernel, &mut out);
            return out;
        }
        if std::mem::take(&mut self.refusing) {
            self.notices.push(SyncNotice::Recovered);
        }
        let new_markers = std::mem::take(&mut self.disrupted);
        let disrupted = std::mem::take(&mut self.marker_pending);
        let after_holdover = std::mem::take(&mut self.drift_allowance_ns) > 0.0;
        self.last_update_raw_ns = Some(obs.raw.mid_ns());
        // Phase: a disruption always steps; start-up, a new VM generation and the return from a
        // holdover step beyond the makestep threshold (like a restart would).
        let may_step = self.status.updates < self.cfg.step_updates as u64 || new_markers || after_holdover;
        let step = disrupted
            || (may_step && offset_ns.abs() > self.cfg.step_threshold_ns as f64)
            || self.status.updates == 0 && offset_ns.abs() > 1_000.0;
        if step {
            out.push(SyncAction::Step { delta_ns: (-offset_ns).round() as i64 });
            self.status.steps += 1;
            self.slew_end_raw_ns = None;
            self.set_rate(0.0, &mut out);
        } else if self.ff_ppb.is_some() {
            // A linear slew: a rate for a computed time, done within half an interval.
            let min_ppb = offset_ns.abs() / (self.poll_interval_ns() as f64 / 2.0) * 1e9;
            let rate = min_ppb.max(offset_ns.abs().min(1.0) * 1e3).min(self.cfg.max_slew_ppb as f64);
            if rate > 0.0 {
                let duration_ns = offset_ns.abs() / rate * 1e9;
                self.set_rate(-offset_ns.signum() * rate, &mut out);
                self.slew_end_raw_ns = Some(obs.raw.mid_ns() + duration_ns as i128);
            }
        }
        // Kernel state: TAI, leap, bounds, sync.
        if let Some(tai) = page.tai_minus_utc() {
            if obs.kernel.tai != tai as i32 {
                out.push(SyncAction::SetTai(tai as i32));
            }
        }
        let (insert, delete) = leap_arming(page, &src.time);
        let residual_ns = if step { self.status.pairing_ns } else { offset_ns.abs() + self.status.pairing_ns };
        let own_ns = src.maxerror_ns().unwrap_or(0) as f64 + residual_ns;
        let maxerror_us = kernel_bound_us(self.cross_widen_ns.map_or(own_ns, |w| own_ns.max(w + residual_ns)), 1);
        let esterror_us = kernel_bound_us(src.esterror_ns().unwrap_or(0) as f64 + self.status.pairing_ns, 0);
        let kernel_synchronized = synchronized && self.cross_widen_ns.is_none();
        self.last_state = Some((insert, delete, kernel_synchronized));
        out.push(SyncAction::SetState { insert, delete, synchronized: kernel_synchronized, maxerror_us, esterror_us });
        self.status.state = if synchronized { "synchronised" } else { "following a free-running source" };
        self.status.updates += 1;
        out
    }
}

/// A bound for the kernel, µs: `ns` rounded up plus `extra` µs, saturating at the kernel's 16 s
/// limit (a page's bound at a counter far from its reference can be any size, even beyond i64).
pub fn kernel_bound_us(ns: f64, extra: i64) -> i64 {
    if ns.is_nan() {
        return KERNEL_MAX_ERROR_US;
    }
    ((ns / 1000.0).ceil() as i64).saturating_add(extra).clamp(0, KERNEL_MAX_ERROR_US)
}

/// Takes an observation's samples under one page. `read` gives a consistent copy of the page,
/// `sample` the (clock, counter, clock) samples, `seq_after` the page's `seq_count` once they are
/// taken. The samples are paired with the page only if that page was current throughout: when
/// the `seq_count` changed (an update, or one in progress), the whole observation is taken again,
/// at most `tries` times; `Ok(None)` if the page never held still.
///
/// Pairing samples with the page that preceded an update would give them the old calibration
/// (and, around a migration or restore, the old disruption marker).
pub fn sample_under_page<S, E>(
    tries: u32,
    mut read: impl FnMut() -> Result<Snapshot, E>,
    mut sample: impl FnMut() -> Result<S, E>,
    mut seq_after: impl FnMut() -> u32,
) -> Result<Option<(Snapshot, S)>, E> {
    for _ in 0..tries {
        let page = read()?;
        let samples = sample()?;
        if seq_after() == page.seq_count() {
            return Ok(Some((page, samples)));
        }
    }
    Ok(None)
}

/// What a wake-up from the device's `poll()` turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The page changed: observe.
    Update,
    /// Readable, but the page has not changed since it was last read.
    Spurious,
    /// Readable again and again with nothing new: the driver has no `.poll` (Linux 6.13–6.19,
    /// whose `poll()` always says readable). Stop polling the device; observe on the interval.
    NoPoll,
}

/// Tells real notifications from a driver whose `poll()` is always readable. The newer driver
/// wakes a reader only when `seq_count` differs from the one that file last read, so a wake-up
/// with the `seq_count` unchanged cannot be a notification; [`NotifyCheck::LIMIT`] of them in a
/// row (none between them an update) mean the driver cannot poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyCheck {
    spurious: u32,
}

impl NotifyCheck {
    /// Spurious wake-ups in a row that prove the driver has no `.poll`.
    pub const LIMIT: u32 = 3;

    /// The device said readable; `last_seq` is the `seq_count` last read, `seq_now` the current one.
    pub fn readable(&mut self, last_seq: Option<u32>, seq_now: u32) -> Wakeup {
        if last_seq != Some(seq_now) {
            self.spurious = 0;
            return Wakeup::Update;
        }
        self.spurious += 1;
        if self.spurious >= Self::LIMIT {
            Wakeup::NoPoll
        } else {
            Wakeup::Spurious
        }
    }
}

/// What changed in a page's markers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkerChange {
    /// `disruption_marker` changed: the counter's calibration is broken (migration, restore).
    pub disrupted: bool,
    /// `vm_generation_counter` changed: the VM was restored from a snapshot or cloned.
    pub new_generation: bool,
}

/// Watches a page's markers, for a page that carries nothing else (QEMU's and Firecracker's
/// devices: counter INVALID, status UNKNOWN) or next to another time source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkerWatch {
    marker: Option<u64>,
    generation: Option<u64>,
}

impl MarkerWatch {
    /// The markers of a new copy of the page; the first copy changes nothing.
    pub fn observe(&mut self, page: &Snapshot) -> MarkerChange {
        let disrupted = self.marker.is_some_and(|m| m != page.disruption_marker());
        let g = page.vm_generation_counter();
        let new_generation = g.is_some() && self.generation.is_some_and(|old| Some(old) != g);
        self.marker = Some(page.disruption_marker());
        self.generation = g.or(self.generation);
        MarkerChange { disrupted, new_generation }
    }

    /// The hook's action for a change, if any.
    pub fn actions(change: MarkerChange) -> Vec<SyncAction> {
        if change.new_generation {
            vec![SyncAction::RunHook]
        } else {
            Vec::new()
        }
    }
}

/// Whether a page gives time for this CPU's counter (`native`): its counter_id and the time
/// fields. A page without (counter INVALID, or no time fields) carries markers only.
pub fn gives_time(page: &Snapshot, native: u8) -> bool {
    page.counter_id() == native && page.reference().is_ok()
}

/// Arms the kernel's leap second on the last day of the month the page announces one for.
fn leap_arming(page: &Snapshot, utc: &vmclock::Timestamp<vmclock::Utc>) -> (bool, bool) {
    let li = page.leap_indicator().unwrap_or(leap::NONE);
    let day = (utc.sec() / 86_400) as i64;
    let last_day_of_month = vmclock::time::civil_from_days(day + 1).2 == 1;
    match li {
        leap::PRE_POS if last_day_of_month => (true, false),
        leap::PRE_NEG if last_day_of_month => (false, true),
        // During the inserted second the kernel is in TIME_OOP and needs STA_INS kept.
        leap::POS => (true, false),
        _ => (false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmclock::abi::{counter_id, flags};
    use vmclock::{PageBuilder, Period, Tai, Timestamp};

    fn page(seq: u32, marker: u64, generation: Option<u64>) -> Snapshot {
        let mut b = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                1000,
                Timestamp::<Tai>::from_parts(1_795_000_037, 0),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .status(status::SYNCHRONIZED)
            .disruption_marker(marker);
        if let Some(g) = generation {
            b = b.vm_generation(g);
        }
        let mut abi = b.build();
        abi.seq_count.set(seq);
        Snapshot::new(abi, 4096).unwrap()
    }

    #[test]
    fn samples_are_paired_with_the_page_current_during_them() {
        // The page is updated (seq 2 → 4, a new marker) while the first samples are taken: they
        // must not be paired with the old page.
        let pages = [page(2, 1, None), page(4, 2, None)];
        let mut reads = 0;
        let mut sampled = 0;
        let seq_after = [4u32, 4];
        let mut checks = 0;
        let got = sample_under_page::<u32, ()>(
            4,
            || {
                reads += 1;
                Ok(pages[(reads - 1).min(1)])
            },
            || {
                sampled += 1;
                Ok(sampled)
            },
            || {
                checks += 1;
                seq_after[checks - 1]
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (got.0.seq_count(), got.0.disruption_marker(), got.1),
            (4, 2, 2),
            "the second samples, the new page"
        );
        // A page that never holds still gives no observation (and no stale pairing).
        let none = sample_under_page::<(), ()>(3, || Ok(page(2, 1, None)), || Ok(()), || 5).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn a_poll_that_is_always_readable_is_found_out() {
        let mut n = NotifyCheck::default();
        assert_eq!(n.readable(None, 2), Wakeup::Update);
        assert_eq!(n.readable(Some(2), 4), Wakeup::Update);
        assert_eq!(n.readable(Some(4), 4), Wakeup::Spurious);
        assert_eq!(n.readable(Some(4), 6), Wakeup::Update, "an update in between starts the count again");
        assert_eq!(n.readable(Some(6), 6), Wakeup::Spurious);
        assert_eq!(n.readable(Some(6), 6), Wakeup::Spurious);
        assert_eq!(n.readable(Some(6), 6), Wakeup::NoPoll);
    }

    #[test]
    fn markers_only_pages_are_watched() {
        // QEMU/Firecracker: counter INVALID, status UNKNOWN, markers only.
        let mk = |marker, generation| {
            let abi =
                PageBuilder::new().status(status::UNKNOWN).disruption_marker(marker).vm_generation(generation).build();
            Snapshot::new(abi, 4096).unwrap()
        };
        let p = mk(5, 1);
        assert!(!gives_time(&p, counter_id::X86_TSC));
        assert!(p.has(flags::VM_GEN_COUNTER_PRESENT));
        let mut w = MarkerWatch::default();
        assert_eq!(w.observe(&p), MarkerChange::default());
        assert_eq!(w.observe(&mk(5, 1)), MarkerChange::default());
        let c = w.observe(&mk(6, 2));
        assert_eq!(c, MarkerChange { disrupted: true, new_generation: true });
        assert_eq!(MarkerWatch::actions(c), vec![SyncAction::RunHook]);
        let c = w.observe(&mk(7, 2));
        assert_eq!(c, MarkerChange { disrupted: true, new_generation: false });
        assert!(MarkerWatch::actions(c).is_empty());
        assert!(gives_time(&page(2, 1, None), counter_id::X86_TSC));
    }

    #[test]
    fn kernel_bounds_saturate() {
        assert_eq!(kernel_bound_us(1500.0, 1), 3);
        assert_eq!(kernel_bound_us(0.0, 0), 0);
        for huge in [1e30, f64::INFINITY, 9.3e21, f64::NAN] {
            assert_eq!(kernel_bound_us(huge, 1), KERNEL_MAX_ERROR_US, "{huge}");
        }
    }

    #[test]
    fn tick_and_freq_stay_in_the_kernels_range() {
        for ppb in [2e9, -2e9, f64::INFINITY, 1.2e9] {
            let (t, f) = tick_freq(ppb);
            assert!((9_000..=11_000).contains(&t) && f.abs() <= 500 << 16, "{ppb}: {t} {f}");
        }
    }

    /// A toy world: a 1 GHz counter, the page `page_off_ns` ahead of truth, the kernel
    /// `kernel_off_ns` ahead; one observation at `t_s` seconds.
    struct World {
        d: Discipline,
        kernel_off_ns: i128,
        page_off_ns: i128,
        marker: u64,
        generation: u64,
    }

    const C0: u64 = 10_000_000_000_000;
    const UTC0: i128 = 1_795_000_000 * NS;

    impl World {
        fn new() -> Self {
            World {
                d: Discipline::new(SyncConfig::default()),
                kernel_off_ns: 0,
                page_off_ns: 0,
                marker: 1,
                generation: 1,
            }
        }
        fn observe(&mut self, t_s: i128) -> Vec<SyncAction> {
            let ref_c = (C0 as i128 - self.page_off_ns) as u64;
            let abi = PageBuilder::new()
                .reference(
                    counter_id::X86_TSC,
                    ref_c,
                    Timestamp::<Tai>::from_parts(1_795_000_037, 0),
                    Period::from_hz(1_000_000_000).unwrap(),
                )
                .tai_minus_utc(37)
                .status(status::SYNCHRONIZED)
                .maxerror(1_000, 0)
                .disruption_marker(self.marker)
                .vm_generation(self.generation)
                .build();
            let page = Snapshot::new(abi, 4096).unwrap();
            let c = C0 + (t_s * NS) as u64;
            let k = UTC0 + t_s * NS + self.kernel_off_ns;
            let samples = [AbaSample { before_ns: k - 5, counter: c, after_ns: k + 5 }];
            let raw = AbaSample { before_ns: t_s * NS - 5, counter: c, after_ns: t_s * NS + 5 };
            let acts = self.d.handle_observation(&SyncObservation {
                page,
                raw,
                samples: &samples,
                kernel: KernelTimex::default(),
            });
            for a in &acts {
                if let SyncAction::Step { delta_ns } = a {
                    self.kernel_off_ns += *delta_ns as i128;
                }
            }
            acts
        }
    }

    fn stepped(acts: &[SyncAction]) -> Option<i64> {
        acts.iter().find_map(|a| match a {
            SyncAction::Step { delta_ns } => Some(*delta_ns),
            _ => None,
        })
    }

    #[test]
    fn the_step_limit_holds_unless_the_markers_change() {
        const HOUR: i128 = 3_600 * NS;
        let mut w = World::new();
        w.kernel_off_ns = -3 * HOUR; // start-up: any step
        assert_eq!(stepped(&w.observe(0)), Some(3 * HOUR as i64));
        for t in 1..5 {
            assert_eq!(stepped(&w.observe(t)), None);
        }
        // 1 h jump, markers unchanged: refused, one notice for the episode.
        w.page_off_ns = HOUR;
        for t in 5..8 {
            assert_eq!(stepped(&w.observe(t)), None);
            assert_eq!(w.d.status().state, "holdover");
        }
        assert!(matches!(w.d.take_notices()[..], [SyncNotice::StepRefused { limit_ns: 2_000_000_000, .. }]));
        // The same page with a new disruption marker: stepped.
        w.marker += 1;
        assert_eq!(stepped(&w.observe(8)), Some(HOUR as i64));
        assert_eq!(w.d.take_notices(), vec![SyncNotice::Recovered]);
        // A new VM generation alone (a clone) also allows a large step (with the hook).
        w.page_off_ns = -HOUR;
        w.generation += 1;
        let acts = w.observe(9);
        assert!(acts.contains(&SyncAction::RunHook));
        // Within the ns: the kernel's clock is read truncated, so it is placed half a ns late.
        assert!(stepped(&acts).is_some_and(|d| (d + 2 * HOUR as i64).abs() <= 1), "{acts:?}");
        // Within the limit: slewed, never stepped, after start-up.
        w.page_off_ns += NS;
        assert_eq!(stepped(&w.observe(10)), None);
        assert_eq!(w.d.status().state, "synchronised");
        // Live reconfiguration: a tighter limit refuses what was accepted.
        w.d.reconfigure(SyncConfig { max_step_ns: 100_000_000, ..w.d.config().clone() });
        w.page_off_ns += NS / 2;
        assert_eq!(stepped(&w.observe(11)), None);
        assert_eq!(w.d.status().state, "holdover");
    }

    /// Issue 20, item 5: a marker change allows a step of any size, years included, but never
    /// to a time before this program was written (a page claiming 1970) nor beyond what the
    /// kernel can be set to.
    #[test]
    fn a_disruption_never_steps_outside_the_believable_range() {
        use crate::sanity::{Implausible, LATEST_UNIX_S};
        const YEAR: i128 = 365 * 86_400 * NS;
        let mut w = World::new();
        for t in 0..4 {
            let _ = w.observe(t);
        }
        assert_eq!(w.d.status().state, "synchronised");
        // time_sec = 0 in place and the marker bumped: the page claims 1970.
        w.page_off_ns = -UTC0;
        w.marker += 1;
        for t in 4..7 {
            let acts = w.observe(t);
            assert_eq!(stepped(&acts), None, "{acts:?}");
            assert!(!acts.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: true, .. })), "{acts:?}");
            assert_eq!(w.d.status().state, "holdover");
        }
        assert_eq!(w.d.take_notices(), vec![SyncNotice::Implausible(Implausible::BeforeBuild { utc_s: 4 })]);
        // Beyond the kernel's range, with another marker: held too.
        w.page_off_ns = (LATEST_UNIX_S as i128 - 1_795_000_000 + 10) * NS;
        w.marker += 1;
        assert_eq!(stepped(&w.observe(7)), None);
        assert_eq!(w.d.status().state, "holdover");
        // A restore from an old snapshot: years are fine inside the range, and the pending
        // disruption still allows the step once the page is believable.
        w.page_off_ns = 5 * YEAR;
        let acts = w.observe(8);
        assert!(stepped(&acts).is_some_and(|d| (d as i128 - 5 * YEAR).abs() <= 1), "{acts:?}");
        assert_eq!(w.d.take_notices(), vec![SyncNotice::Recovered]);
    }

    /// The cross-check widens the kernel's maxerror and leaves the clock unsynchronised while
    /// it disagrees; it never steps or slews towards the server.
    #[test]
    fn a_disagreeing_second_opinion_widens_the_bound_and_never_steers() {
        let state = |acts: &[SyncAction]| {
            acts.iter().find_map(|a| match a {
                SyncAction::SetState { synchronized, maxerror_us, .. } => Some((*synchronized, *maxerror_us)),
                _ => None,
            })
        };
        let mut w = World::new();
        for t in 0..4 {
            let _ = w.observe(t);
        }
        let (sync0, max0) = state(&w.observe(4)).unwrap();
        assert!(sync0 && max0 < 10, "{max0}");
        w.d.set_cross_check(Some(50_000_000.0));
        let acts = w.observe(5);
        assert_eq!(stepped(&acts), None);
        assert!(!acts.iter().any(|a| matches!(a, SyncAction::SetFrequency { .. })), "{acts:?}");
        let (sync1, max1) = state(&acts).unwrap();
        assert!(!sync1, "unsynchronised while they disagree");
        assert!((50_000..50_010).contains(&max1), "{max1}");
        assert_eq!(w.d.status().state, "synchronised", "the page is still followed");
        w.d.set_cross_check(None);
        assert_eq!(state(&w.observe(6)), Some((true, max0)));
    }

    /// Issue 20, the adversarial pass: a page mutated at every observation (time jumps with and
    /// without marker changes, to 1970, to the end of u64, by years; status and time_type flips
    /// through every value; extreme shifts, periods and bounds; leap values) never makes the
    /// discipline step outside the believable range, step beyond the limit without start-up, a
    /// marker change or a holdover, or call the clock synchronised on a page that is not
    /// SYNCHRONIZED with a usable time type.
    #[test]
    fn hostile_page_sequences_never_step_wrong() {
        use crate::sanity::{EARLIEST_UNIX_S, LATEST_UNIX_S};
        use vmclock::abi::time_type;
        let mut worst_ok_step = 0i128;
        let mut steps_seen = 0;
        for seed in 1..=8u64 {
            let mut rng = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut d = Discipline::new(SyncConfig::default());
            let mut kernel_off: i128 = 0;
            let (mut marker, mut generation) = (1u64, 1u64);
            let mut page_off: i128 = 0; // page − truth, ns
            let mut since_update_markers_changed = false;
            let mut lost_since_update = false;
            for t in 0..400i128 {
                // The page of this observation: mostly good, often mutated.
                let r = next();
                if r % 7 == 0 {
                    page_off = match next() % 6 {
                        0 => 3_600 * NS,
                        1 => -UTC0, // 1970
                        2 => (next() % (300 * 365 * 86_400)) as i128 * NS,
                        3 => -((next() % 20) as i128) * 365 * 86_400 * NS,
                        4 => (next() % 3_000_000_000) as i128 - 1_500_000_000,
                        _ => 0,
                    };
                }
                if r % 11 == 0 {
                    marker = marker.wrapping_add(1);
                    since_update_markers_changed = true;
                }
                if r % 13 == 0 {
                    generation = generation.wrapping_add(1);
                    since_update_markers_changed = true;
                }
                let c = C0 + (t * NS) as u64;
                let ref_c = (C0 as i128 - page_off) as u64;
                let mut abi = PageBuilder::new()
                    .reference(
                        counter_id::X86_TSC,
                        ref_c,
                        Timestamp::<Tai>::from_parts(1_795_000_037, 0),
                        Period::from_hz(1_000_000_000).unwrap(),
                    )
                    .tai_minus_utc(37)
                    .status(status::SYNCHRONIZED)
                    .maxerror(1_000, 1 << 10)
                    .disruption_marker(marker)
                    .vm_generation(generation)
                    .build();
                match next() % 10 {
                    0 => abi.clock_status = next() as u8,
                    1 => abi.time_type = (next() % 6) as u8,
                    2 => abi.counter_period_shift = next() as u8,
                    3 => abi.counter_period_frac_sec.set(next()),
                    4 => abi.time_sec.set([0, 1, u64::MAX, i64::MAX as u64, 1 << 40][(next() % 5) as usize]),
                    5 => abi.time_maxerror_nanosec.set([0, u64::MAX, 1 << 40][(next() % 3) as usize]),
                    6 => abi.leap_indicator = next() as u8,
                    7 => abi.counter_period_maxerror_rate_frac_sec.set(u64::MAX),
                    _ => {}
                }
                let Ok(page) = Snapshot::new(abi, 4096) else { continue };
                let k = UTC0 + t * NS + kernel_off;
                let samples = [AbaSample { before_ns: k - 5, counter: c, after_ns: k + 5 }];
                let raw = AbaSample { before_ns: t * NS - 5, counter: c, after_ns: t * NS + 5 };
                let updates_before = d.status().updates;
                let acts = d.handle_observation(&SyncObservation {
                    page,
                    raw,
                    samples: &samples,
                    kernel: KernelTimex::default(),
                });
                let updated = d.status().updates > updates_before;
                let starting = updates_before < u64::from(SyncConfig::default().step_updates.max(1));
                for a in &acts {
                    match *a {
                        SyncAction::Step { delta_ns } => {
                            steps_seen += 1;
                            let to_s = (k + delta_ns as i128).div_euclid(NS) as i64;
                            assert!(
                                (EARLIEST_UNIX_S..LATEST_UNIX_S).contains(&to_s),
                                "seed {seed} t {t}: stepped to {to_s} ({:?})",
                                page.raw()
                            );
                            if (delta_ns as i128).abs() > DEFAULT_MAX_STEP_NS as i128 + 2 * NS {
                                assert!(
                                    starting || since_update_markers_changed || lost_since_update,
                                    "seed {seed} t {t}: a {delta_ns} ns step without start-up, marker change or holdover"
                                );
                            } else {
                                worst_ok_step = worst_ok_step.max((delta_ns as i128).abs());
                            }
                            kernel_off += delta_ns as i128;
                        }
                        SyncAction::SetState { synchronized: true, .. } => {
                            assert_eq!(page.clock_status(), Some(status::SYNCHRONIZED), "seed {seed} t {t}");
                            assert!(matches!(page.time_type(), time_type::TAI | time_type::UTC), "seed {seed} t {t}");
                        }
                        _ => {}
                    }
                }
                if updated {
                    since_update_markers_changed = false;
                    lost_since_update = false;
                } else {
                    lost_since_update = true;
                }
            }
        }
        // Not vacuous: steps of both kinds happened.
        assert!(steps_seen > 20, "{steps_seen}");
        assert!(worst_ok_step > 0);
    }

    #[test]
    fn the_whole_kernel_range_is_used_and_never_exceeded() {
        // ±10 % by ADJ_TICK plus ±500 ppm by ADJ_FREQUENCY: 100.5 ‰ either way, no more.
        assert_eq!(KERNEL_MAX_PPB, 100_500_000);
        assert_eq!(tick_freq(100_400_000.0), (11_000, 400 << 16));
        assert_eq!(tick_freq(-100_500_000.0), (9_000, -500 << 16));
        assert_eq!(tick_freq(100_600_000.0), (11_000, 500 << 16), "clamped");
        assert_eq!(tick_freq(f64::NAN), (10_000, 0));
        assert_eq!(SyncConfig::default().max_step_ns, 2_000_000_000);
        let n = SyncNotice::StepRefused { offset_ns: -3.6e12, limit_ns: 2_500_000_000 };
        assert_eq!(
            n.to_string(),
            "the source is +3600.000 s away from this clock, more than the step limit of 2.5 s, and its disruption_marker and vm_generation_counter did not change: holding over; if the source is right, raise max_step_s and send SIGHUP, or restart vmtime sync"
        );
    }

    #[test]
    fn tick_and_freq_split() {
        assert_eq!(tick_freq(0.0), (10_000, 0));
        assert_eq!(tick_freq(12_000.0), (10_000, 786_432)); // 12 ppm × 2^16
        let (t, f) = tick_freq(750_000.0); // 750 ppm: beyond ADJ_FREQUENCY's ±500
        assert_eq!(t, 10_008);
        assert!((f as f64 / 65.536 - -50_000.0).abs() < 1.0);
        let (t, f) = tick_freq(-1_234_567.0);
        assert_eq!(t, 9_988);
        assert!(((t - 10_000) as f64 * 100_000.0 + f as f64 / 65.536 - -1_234_567.0).abs() < 0.02);
    }
}
