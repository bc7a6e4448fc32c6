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
    /// Interval between observations, ns (the shortest, after start-up).
    pub interval_ns: i128,
    /// The longest interval between observations at rest, ns: it doubles from `interval_ns` up
    /// to this after each quiet update ([`REST_OFFSET_NS`]). At most `interval_ns` means never.
    pub max_interval_ns: i128,
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
            max_interval_ns: DEFAULT_MAX_INTERVAL_NS,
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
/// The default longest interval between observations at rest, ns (16 s). The kernel's own
/// maxerror grows by 500 µs per second between updates (its MAXFREQ), so at this interval it
/// reads at most 8 ms above the page's bound just before an update; `vmtime_sync_last_good_`
/// `observation_age_seconds` stays below the 30 s alert.
pub const DEFAULT_MAX_INTERVAL_NS: i128 = 16 * NS;
/// An update is quiet, and the next interval may double, when the offset it measured is within
/// this much beyond its own pairing half-width, ns (50 µs: 5 % of the 1 ms a guest aims for).
pub const REST_OFFSET_NS: f64 = 50_000.0;
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
    /// The interval until the next observation, s: `interval_ms` after start-up, a disruption,
    /// a holdover or an update that was not quiet, doubling after each quiet one up to
    /// `max_interval_ms`.
    pub interval_s: f64,
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
    /// The interval in force after start-up, ns (between `interval_ns` and `max_interval_ns`).
    rest_ns: i128,
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
            raw_base: None,
            marker: None,
            generation: None,
            ff_ppb: None,
            status: SyncStatus { state: "starting", interval_s: cfg_interval(&cfg) as f64 / 1e9, ..Default::default() },
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
            rest_ns: cfg_interval(&cfg),
            cfg,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// Changes the settings live (SIGHUP): the step policy, the limits and the interval. The
    /// calibration, the markers and the counts are kept.
    pub fn reconfigure(&mut self, cfg: SyncConfig) {
        self.rest_ns = cfg_interval(&cfg);
        self.status.interval_s = self.rest_ns as f64 / 1e9;
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
    /// calibrated (the first second), then the configured interval, doubled after each quiet
    /// update up to the longest ([`SyncConfig::max_interval_ns`]).
    pub fn poll_interval_ns(&self) -> i128 {
        if self.calibrating() {
            (self.cfg.interval_ns / 10).max(1)
        } else {
            self.rest_ns
        }
    }

    /// Whether the frequency is still being calibrated (the first second).
    fn calibrating(&self) -> bool {
        self.ff_ppb.is_none() || self.status.baseline_s < 1.0
    }

    /// Whether the interval has grown beyond the configured one: the follower then observes a
    /// new page (`seq_count`) at once instead of at the interval, which may be far.
    pub fn resting(&self) -> bool {
        self.rest_ns > cfg_interval(&self.cfg)
    }

    /// The next interval after an update: back to the shortest unless it was `quiet`, else
    /// doubled up to the longest.
    fn next_rest(&mut self, quiet: bool) {
        let base = cfg_interval(&self.cfg);
        self.rest_ns =
            if quiet { self.rest_ns.saturating_mul(2).clamp(base, self.cfg.max_interval_ns.max(base)) } else { base };
        self.status.interval_s = self.rest_ns as f64 / 1e9;
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
        self.next_rest(false);
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

    /// A page read whole that gives no time for this machine's counter (no time fields, no
    /// counter, another CPU's counter): its markers still count. A new
    /// marker makes the disruption pending ([`Discipline::disruption_pending`]), so the page
    /// that follows with time is observed at once and stepped from, and a new VM generation
    /// runs the hook; then the holdover of [`Discipline::handle_source_lost`].
    pub fn handle_timeless_page(&mut self, page: &Snapshot, kernel: &KernelTimex) -> Vec<SyncAction> {
        let mut out = Vec::new();
        self.note_markers(page, &mut out);
        self.lost = true;
        self.holdover(kernel, &mut out);
        out
    }

    /// The page's markers against those seen last: a new disruption marker or VM generation
    /// allows a step of any size until the next update, and a new generation runs the hook.
    fn note_markers(&mut self, page: &Snapshot, out: &mut Vec<SyncAction>) {
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
        self.note_markers(page, &mut out);
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
        // The next interval (before the slew, which must end within half of it): longer only
        // after a quiet update of a settled clock, back to the shortest after anything else.
        let quiet = !step
            && !self.calibrating()
            && !new_markers
            && !after_holdover
            && self.cross_widen_ns.is_none()
            && self.status.updates >= u64::from(self.cfg.step_updates)
            && offset_ns.abs() <= self.status.pairing_ns + REST_OFFSET_NS;
        self.next_rest(quiet);
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
        // What the daemon waits now (the calibration's shorter interval included).
        self.status.interval_s = self.poll_interval_ns() as f64 / 1e9;
        out
    }
}

/// The configured shortest interval, at least 1 ns.
fn cfg_interval(cfg: &SyncConfig) -> i128 {
    cfg.interval_ns.max(1)
}

/// A bound for the kernel, µs: `ns` rounded up plus `extra` µs, saturating at the kernel's 16 s
/// limit (a page's bound at a counter far from its reference can be any size, even beyond i64).
pub fn kernel_bound_us(ns: f64, extra: i64) -> i64 {
    if ns.is_nan() {
        return KERNEL_MAX_ERROR_US;
    }
    ((ns / 1000.0).ceil() as i64).saturating_add(extra).clamp(0, KERNEL_MAX_ERROR_US)
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

mod page;
pub use page::{
    gives_time, sample_under_page, MarkerChange, MarkerWatch, NotifyCheck, Rearm, RearmStep, Silence, Wakeup,
};

#[cfg(test)]
mod tests;
