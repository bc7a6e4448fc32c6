//! The host publisher, sans-IO: kernel clock observations in, vmclock pages out.
//!
//! Each [`Observation`] carries a (RAW, counter, RAW) sample, a burst of (clock, counter, clock)
//! samples of the kernel's TAI or UTC clock, and the kernel's NTP state. From them:
//!
//! * **Period**: the counter is calibrated against CLOCK_MONOTONIC_RAW (linear in the counter)
//!   over an ever longer baseline, then scaled by the kernel's second length from adjtimex
//!   (tick, freq, and the PLL's chunk of the offset it is still slewing): see [`crate::kernel`].
//! * **Reference**: the intersection of every sample's window, moved to one counter value with
//!   that period; its midpoint is the reference time, its half-width the pairing error.
//! * **Updates** only when something meaningful changes (rate, status, TAI offset, leap state, a
//!   step, the counter) or when the self-check finds the page more than `threshold_ns` off.
//! * **TIME_MONOTONIC**: a new page never gives, at the update, an earlier time than the old one.
//!   When the kernel clock is *behind* the page, the new page keeps continuity at the update
//!   point and closes the gap through its period (a linear slew, at most `max_slew_ppb`, sized
//!   to finish by the next observation); beyond `step_ns` it is a step: the page follows the
//!   kernel, TIME_MONOTONIC is clear on that page, and the disruption marker changes.
//! * **Disruption marker** changes on a step, a counter/clocksource change, an update that would
//!   leave the old page's advertised bounds, and a restart that cannot prove continuity.

use crate::kernel::{KernelTimex, STA_DEL, STA_INS, TIME_DEL, TIME_INS, TIME_OK, TIME_OOP};
use crate::AbaSample;
use serde::Serialize;
use vmclock::abi::{self, flags, leap, status, VmclockAbi};
use vmclock::{PageBuilder, Period, Reference, Snapshot, Tai, Timestamp, Utc};

/// 2^64, one second in the page's fraction unit.
const UNIT: i128 = 1 << 64;
const NS: i128 = 1_000_000_000;

/// Settings of the publisher.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostConfig {
    /// The page's counter (this CPU's; INVALID publishes markers only).
    pub counter_id: u8,
    /// Self-check threshold: republish when the page is this far off the kernel clock, ns.
    pub threshold_ns: u64,
    /// `leap_second_smearing_hint` to publish.
    pub smearing_hint: u8,
    /// Frequency tolerance of the kernel clock against true time, ppb: the period's maximum
    /// error rate. The default is the kernel's own MAXFREQ (500 ppm), the rate at which it grows
    /// its maxerror, so the page's bounds hold whenever the kernel's do, whatever the NTP daemon
    /// does to the frequency (slews included). A host whose NTP daemon never moves the frequency
    /// faster may lower it (RFC 5905's PHI is 15 ppm).
    pub tolerance_ppb: u64,
    /// Fastest slew used to close a backward gap, ppb.
    pub max_slew_ppb: u64,
    /// A backward gap beyond this is a step (the page follows, flagged non-monotonic), ns.
    pub step_ns: u64,
    /// RAW baseline before the calibration is trusted (INITIALIZING until then), ns.
    pub calibration_ns: i128,
    /// The interval to the next observation, ns: slews are sized to end by then.
    pub interval_ns: i128,
    /// Worst delay between an observation and the page write, in counter ticks (monotonic
    /// margin when the period shrinks).
    pub latency_ticks: u64,
    /// The first disruption marker (a fresh random value: markers must not repeat).
    pub marker_seed: u64,
    /// Whether subscribers are notified of updates (NOTIFICATION_PRESENT).
    pub notify: bool,
    /// The page's `time_type`, a constant field (readers take it once, as the Linux driver does
    /// at probe): TAI when TAI − UTC is known when the page is created, else UTC, whose
    /// `tai_offset_sec` is filled in later (a dynamic field). `None`: decided by the first
    /// observation. A page taken over on restart keeps its own.
    pub time_type: Option<u8>,
    /// TAI − UTC (positive: 37) when known at start: the placeholder page carries it
    /// (TAI_OFFSET_VALID), so a guest driver probing before the first calibrated page registers
    /// its PTP clock.
    pub tai_minus_utc: Option<i16>,
    /// The longest gap between two `adjtimex` polls ([`PollSchedule::longest_gap_ns`]), ns:
    /// what a change not yet seen can do meanwhile is added to every page's maxerror
    /// ([`unseen_change_ns`]).
    pub longest_poll_gap_ns: i128,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            counter_id: abi::counter_id::X86_TSC,
            threshold_ns: 20,
            smearing_hint: abi::smearing::STRICT,
            tolerance_ppb: 500_000,
            max_slew_ppb: 500_000,
            step_ns: 1_000_000,
            calibration_ns: NS,
            interval_ns: NS,
            latency_ticks: 50_000_000,
            marker_seed: 1,
            notify: true,
            time_type: None,
            tai_minus_utc: None,
            longest_poll_gap_ns: DEFAULT_IDLE_POLL_NS,
        }
    }
}

/// The largest change of the kernel clock's rate one `adjtimex` write can make through the
/// frequency (ADJ_FREQUENCY, what chrony and ntpd slew and steer with), ppb: the kernel clamps
/// `freq` to ±MAXFREQ (500 ppm), so a change spans at most 2 × 500 ppm.
pub const UNSEEN_RATE_PPB: u64 = 1_000_000;
/// The poll while the kernel's NTP state is changing (and the default `poll_ms`), ns.
pub const DEFAULT_ACTIVE_POLL_NS: i128 = 10_000_000;
/// The poll once it has been still for [`SETTLE_NS`] (the default `idle_poll_ms`), ns.
pub const DEFAULT_IDLE_POLL_NS: i128 = 100_000_000;
/// How long the kernel's NTP state must stay unchanged before the poll lengthens, ns. A slew's
/// end (chrony restores the frequency when the slew is done) then comes within one short poll
/// for slews up to this long.
pub const SETTLE_NS: i128 = 10_000_000_000;

/// What a frequency change not yet seen can do to the page's bounds before the next poll, ns.
///
/// A page extrapolates the kernel clock at the rate it had at the page's reference t0. A change
/// made at t_c after the last poll is seen at the next one, at most `longest_gap_ns` later, and
/// a new page follows. Meanwhile the kernel clock leaves the page at up to Δ · (t − t_c), while
/// the page's maxerror grows by `tolerance_ppb` · (t − t0) ≥ `tolerance_ppb` · (t − t_c). Δ is
/// at most [`UNSEEN_RATE_PPB`] (the kernel's limit on `freq`), and at most 2 · `tolerance_ppb`
/// (the page's rate term assumes the kernel's rate within the tolerance of true time, before
/// and after the change). What the growth does not cover, (Δ − `tolerance_ppb`) ·
/// `longest_gap_ns`, is added to every page's maxerror, so the page's bounds hold the kernel
/// clock itself through any frequency change, seen or not. At the defaults (500 ppm, 100 ms
/// idle poll): 50 µs; at 1 ppm: 100 ns. Rounded up.
pub fn unseen_change_ns(longest_gap_ns: i128, tolerance_ppb: u64) -> u64 {
    let rate = UNSEEN_RATE_PPB.min(tolerance_ppb.saturating_mul(2));
    let ppb = rate.saturating_sub(tolerance_ppb) as u128;
    (longest_gap_ns.max(0) as u128 * ppb).div_ceil(1_000_000_000) as u64
}

/// The host's wake-up schedule (the daemon and the simulator both follow it): one cheap
/// `adjtimex` read per wake-up, every `active_ns` while the kernel's NTP state (tick, freq,
/// PLL offset, status, leap state, TAI offset, time constant) is changing, and every `idle_ns`
/// once it has been unchanged for [`SETTLE_NS`]. A PLL offset being slewed changes every
/// second, so the short poll lasts as long as the slew. The first change after a still period
/// is seen within `idle_ns`; what it can do meanwhile is in every page's maxerror
/// ([`HostConfig::unseen_ns`]).
#[derive(Clone, Debug)]
pub struct PollSchedule {
    active_ns: i128,
    idle_ns: i128,
    key: Option<(i64, i64, i64, i32, i32, i32, i64)>,
    last_change_ns: Option<i128>,
}

impl PollSchedule {
    /// A schedule polling every `active_ns` while the kernel changes and `idle_ns` when still
    /// (`idle_ns` at least `active_ns`). It starts active.
    pub fn new(active_ns: i128, idle_ns: i128) -> Self {
        PollSchedule {
            active_ns: active_ns.max(1),
            idle_ns: idle_ns.max(active_ns).max(1),
            key: None,
            last_change_ns: None,
        }
    }

    /// Changes the two polls (SIGHUP).
    pub fn retune(&mut self, active_ns: i128, idle_ns: i128) {
        self.active_ns = active_ns.max(1);
        self.idle_ns = idle_ns.max(active_ns).max(1);
    }

    /// The longest gap between two polls: what [`unseen_change_ns`] is taken over.
    pub fn longest_gap_ns(&self) -> i128 {
        self.idle_ns
    }

    /// After a poll at `now_ns` that read `tx`: the delay to the next poll, ns.
    pub fn after_poll(&mut self, tx: &KernelTimex, now_ns: i128) -> i128 {
        let key = (tx.tick, tx.freq, tx.offset_ns, tx.status, tx.state, tx.tai, tx.constant);
        if self.key != Some(key) {
            self.key = Some(key);
            self.last_change_ns = Some(now_ns);
        }
        if self.active(now_ns) {
            self.active_ns
        } else {
            self.idle_ns
        }
    }

    /// Whether the short poll is in force at `now_ns` (a change within [`SETTLE_NS`]).
    pub fn active(&self, now_ns: i128) -> bool {
        self.last_change_ns.is_none_or(|t| now_ns - t < SETTLE_NS)
    }
}

/// Which kernel clock the samples are of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Sampled {
    /// CLOCK_TAI, with the kernel's TAI offset set.
    Tai,
    /// CLOCK_REALTIME; TAI − UTC from elsewhere (leap-second list), `None` if unknown.
    Utc {
        /// TAI − UTC (positive: 37) at the samples (outside a leap second).
        tai_minus_utc: Option<i16>,
    },
}

/// One observation of the host clock.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The tightest (RAW, counter, RAW) sample.
    pub raw: AbaSample,
    /// Which clock `samples` are of.
    pub clock: Sampled,
    /// A burst of (clock, counter, clock) samples.
    pub samples: &'a [AbaSample],
    /// The kernel's NTP state.
    pub kernel: KernelTimex,
    /// The kernel's own page (`/dev/vmclock_host`, from the RFC patch), when it has one: its
    /// counter-to-clock relation replaces the sampled one. It carries no bounds, leap state or
    /// disruption marker; those still come from the kernel state and this publisher. The RFC
    /// labels CLOCK_TAI as TAI, which is REALTIME when the kernel's TAI offset is unset: its time
    /// is taken to be of the clock `clock` says was sampled.
    pub kernel_page: Option<Snapshot>,
}

/// Something seen outside the observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// The kernel clock was set (timerfd TFD_TIMER_CANCEL_ON_SET fired): settimeofday,
    /// ADJ_SETOFFSET, or a leap second.
    Stepped,
    /// The clocksource changed; `usable` says whether the counter still drives it.
    CounterChanged {
        /// The counter drives the new clocksource.
        usable: bool,
    },
}

/// Why a page was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// The first page (or the first after a counter change).
    Initial,
    /// The calibration baseline reached `calibration_ns`.
    Calibrated,
    /// The kernel clock's rate changed.
    Rate,
    /// `clock_status` changed.
    Status,
    /// The leap indicator changed.
    Leap,
    /// The TAI offset (or its validity) changed.
    TaiOffset,
    /// The self-check found the page off by more than the threshold.
    Drift,
    /// A slew reached its end.
    SlewDone,
    /// The kernel clock was stepped.
    Step,
    /// A restart whose continuity with the page found could not be proven.
    Restart,
}

impl std::fmt::Display for Reason {
    /// Why a page was published, in words (for logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Initial => "first page",
            Reason::Calibrated => "calibrated",
            Reason::Rate => "the kernel clock's rate changed",
            Reason::Status => "the clock status changed",
            Reason::Leap => "the leap second state changed",
            Reason::TaiOffset => "the TAI offset changed",
            Reason::Drift => "drift correction",
            Reason::SlewDone => "slew complete",
            Reason::Step => "the kernel clock was stepped",
            Reason::Restart => "restart without proven continuity",
        })
    }
}

/// What to do.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Write this page (under the seqlock) and notify subscribers.
    Publish {
        /// The structure.
        page: VmclockAbi,
        /// Why.
        reason: Reason,
        /// Whether the disruption marker changed with it.
        disrupted: bool,
    },
}

/// The publisher's view of itself, for `vmtime status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostStats {
    /// Pages published.
    pub published: u64,
    /// The last reason.
    pub last_reason: Option<Reason>,
    /// Disruptions (marker changes).
    pub disruptions: u64,
    /// Page − kernel clock at the last observation, ns.
    pub last_error_ns: f64,
    /// Half-width of the last pairing intersection, ns.
    pub pairing_ns: f64,
    /// RAW calibration baseline, s.
    pub baseline_s: f64,
    /// The kernel clock's rate against RAW, ppb.
    pub kernel_rate_ppb: f64,
    /// Whether a slew is in progress.
    pub slewing: bool,
    /// The kernel's own page against the samples.
    pub kernel_page: KernelPageCheck,
}

#[derive(Clone, Copy, Debug)]
struct Last {
    snap: Snapshot,
    /// The model period the page was made from (before any slew).
    model: Period,
    status: u8,
    leap: u8,
    tai: Option<i16>,
    time_type: u8,
    slewing: bool,
}

/// Slack beyond the samples' pairing window before the kernel's page is said to disagree with
/// the clock, ns (the RFC page's time includes the NTP error term, a few ns).
pub const KERNEL_PAGE_SLACK_NS: i128 = 1_000;
/// The largest difference between the kernel page's period and the host's own model before the
/// page is said to disagree, ppb (the model is calibrated to a few ppm within a second).
pub const KERNEL_PAGE_MAX_RATE_PPB: f64 = 1_000_000.0;
/// Observations in a row disagreeing that make the kernel's page unusable.
pub const KERNEL_PAGE_UNUSABLE_AFTER: u64 = 3;
/// Observations in a row agreeing that make an unusable kernel page usable again.
pub const KERNEL_PAGE_RECOVERY: u64 = 10;

/// How the kernel's own page (`/dev/vmclock_host`) has fared against the samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KernelPageCheck {
    /// Observations of the page checked.
    pub checked: u64,
    /// Observations where it disagreed (the samples were used instead).
    pub rejected: u64,
    /// Disagreeing observations in a row.
    pub disagreeing: u64,
    /// Agreeing observations in a row while unusable.
    pub agreeing: u64,
    /// Persistent disagreement: not used until it agrees again for a while.
    pub unusable: bool,
    /// Page − samples at the last disagreement, ns.
    pub last_disagreement_ns: f64,
}

/// Something the daemon should log.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum HostNotice {
    /// The kernel's page disagrees with the clock beyond the pairing window: sampling instead.
    KernelPageDisagrees {
        /// Page − clock, ns.
        diff_ns: f64,
        /// The window, ns.
        window_ns: f64,
    },
    /// It kept disagreeing: unusable.
    KernelPageUnusable {
        /// Observations in a row.
        observations: u64,
    },
    /// It agrees again (after being unusable): used again.
    KernelPageAgrees,
}

impl std::fmt::Display for HostNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            HostNotice::KernelPageDisagrees { diff_ns, window_ns } => write!(
                f,
                "the kernel's page is {:+.3} µs off the kernel clock (more than the ±{:.3} µs the samples allow; did it miss a clock step?): sampling the clock instead",
                diff_ns / 1e3,
                window_ns / 1e3
            ),
            HostNotice::KernelPageUnusable { observations } => write!(
                f,
                "the kernel's page disagreed with the kernel clock {observations} times in a row: unusable, sampling the clock until it agrees again"
            ),
            HostNotice::KernelPageAgrees => {
                f.write_str("the kernel's page agrees with the kernel clock again: using it")
            }
        }
    }
}

/// The publisher.
#[derive(Debug)]
pub struct Publisher {
    cfg: HostConfig,
    raw_base: Option<AbaSample>,
    counter_usable: bool,
    marker: u64,
    pending: Option<Reason>,
    stepped: bool,
    resumed: Option<Snapshot>,
    /// The next page cannot promise TIME_MONOTONIC (a restart onto a page it may be behind).
    not_monotonic: bool,
    last: Option<Last>,
    prev_state: i32,
    post_leap: Option<(u8, u128)>,
    stats: HostStats,
    last_key: Option<(i64, i64, i32, i32, i32, i64)>,
    last_offset: i64,
    /// The page's time type, fixed for its life once known.
    time_type: Option<u8>,
    /// The last TAI − UTC known (to keep a TAI page in TAI when the offset stops being known).
    last_known_tai: Option<i16>,
    notices: Vec<HostNotice>,
    /// The kernel's maxerror at the last observation (RAW ns, µs).
    last_max: Option<(i128, i64)>,
    /// The NTP daemon's last statement of its maxerror (RAW ns when seen, µs).
    ntp_claim: Option<(i128, i64)>,
}

/// The kernel clock at one counter value, from a burst of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRef {
    /// The counter value.
    pub counter: u64,
    /// Its time, 64.64 in the page's timescale.
    pub time: i128,
    /// Half-width of the intersection, 2^-64 s.
    pub half: i128,
}

fn frac_to_ns_f64(x: i128) -> f64 {
    x as f64 * 1e9 / UNIT as f64
}

/// The kernel clock at the tightest sample's counter: every sample's window, moved along the
/// period to that counter, is intersected. With an empty intersection (the rate moved mid-burst)
/// the tightest window alone is used.
///
/// A window is `[before, after + 1 ns)`: clock_gettime truncates the kernel's clock (which keeps
/// fractions of a ns) to whole ns, so the clock at the counter read is at least `before` but may
/// be up to 1 ns past `after`.
///
/// `None` also when a window is negative: the clock was stepped back during the burst, and the
/// samples on either side of the step describe two different clocks.
pub fn kernel_reference(samples: &[AbaSample], period: Period, offset_s: i64) -> Option<KernelRef> {
    if samples.iter().any(|s| s.after_ns < s.before_ns) {
        return None;
    }
    let best = samples.iter().min_by_key(|s| s.window_ns())?;
    let r = Reference {
        counter_id: 0,
        time_type: 0,
        counter_value: best.counter,
        period: period.frac,
        shift: period.shift,
        time: 0,
        maxerror: vmclock::snapshot::ErrorModel { time_ns: None, rate: None },
        esterror: vmclock::snapshot::ErrorModel { time_ns: None, rate: None },
    };
    let anchor = best.before_ns;
    let (mut lo, mut hi) = (i128::MIN, i128::MAX);
    for s in samples {
        let e = r.elapsed(s.counter).0;
        lo = lo.max(crate::ns_to_frac(s.before_ns - anchor, false) - e);
        hi = hi.min(crate::ns_to_frac(s.after_ns + 1 - anchor, false) - e);
    }
    if lo > hi {
        lo = 0;
        hi = crate::ns_to_frac(best.window_ns() + 1, false);
    }
    let base = crate::ns_to_frac(anchor + offset_s as i128 * NS, false);
    Some(KernelRef { counter: best.counter, time: base + (lo + hi) / 2, half: (hi - lo + 1) / 2 })
}

/// `period · (1e9 − slew_ppb) / 1e9`.
fn slowed(p: Period, slew_ppb: u64) -> Period {
    let frac = p.frac as u128 * (1_000_000_000 - slew_ppb.min(999_999_999) as u128) / 1_000_000_000;
    Period { frac: frac as u64, shift: p.shift }
}

/// Reduces num/den (both shifted right together) until both are below 2^125.
fn fit(mut num: u128, mut den: u128) -> (u128, u128) {
    while num >> 125 != 0 || den >> 125 != 0 {
        num >>= 1;
        den >>= 1;
    }
    (num, den)
}

impl Publisher {
    /// A publisher starting from nothing.
    pub fn new(cfg: HostConfig) -> Self {
        let time_type = cfg.time_type;
        Publisher {
            marker: cfg.marker_seed,
            raw_base: None,
            counter_usable: true,
            pending: Some(Reason::Initial),
            stepped: false,
            resumed: None,
            not_monotonic: false,
            last: None,
            prev_state: 0,
            post_leap: None,
            stats: HostStats::default(),
            last_key: None,
            last_offset: 0,
            time_type,
            last_known_tai: cfg.tai_minus_utc,
            notices: Vec::new(),
            last_max: None,
            ntp_claim: None,
            cfg,
        }
    }

    /// The page's time bound from the kernel's maxerror. The kernel grows maxerror by 500 µs
    /// each second (its MAXFREQ) from what the NTP daemon last set; with a rate tolerance below
    /// that (`tolerance_ppb`, the rate the page itself declares for its period's maximum error),
    /// the bound grows at the declared rate instead, from the daemon's last statement, and is
    /// never above the kernel's. The daemon's statement is found as a change of maxerror that
    /// is not the kernel's growth (a whole number of 500 µs steps, one per second elapsed, ±1).
    /// At 500 ppm or more, or from an unsynchronised kernel (16 s), the kernel's value is used.
    fn claimed_maxerror_us(&mut self, raw_ns: i128, kernel_us: i64) -> i64 {
        const STEP_US: i64 = 500;
        let set = match self.last_max {
            None => true,
            Some((t, prev)) => {
                let secs = ((raw_ns - t).max(0) / NS) as i64;
                let grew = kernel_us - prev;
                !(grew >= 0 && grew % STEP_US == 0 && (secs - 1..=secs + 1).contains(&(grew / STEP_US)))
            }
        };
        self.last_max = Some((raw_ns, kernel_us));
        if set {
            self.ntp_claim = Some((raw_ns, kernel_us));
        }
        if self.cfg.tolerance_ppb >= crate::sync::KERNEL_MAX_FREQ_PPB as u64 || kernel_us >= 16_000_000 {
            return kernel_us;
        }
        match self.ntp_claim {
            Some((t0, m0)) => {
                let grown =
                    (self.cfg.tolerance_ppb as i128 * (raw_ns - t0).max(0) + 999_999_999_999) / 1_000_000_000_000;
                kernel_us.min(m0.saturating_add(grown.min(i64::MAX as i128) as i64))
            }
            None => kernel_us,
        }
    }

    /// Changes what may change live (SIGHUP): the republish threshold, the rate tolerance, the
    /// longest interval between observations and the longest gap between polls. The page's
    /// constant fields and the marker stay; the next page uses the new values.
    pub fn retune(&mut self, threshold_ns: u64, tolerance_ppb: u64, interval_ns: i128, longest_poll_gap_ns: i128) {
        self.cfg.threshold_ns = threshold_ns;
        self.cfg.tolerance_ppb = tolerance_ppb;
        self.cfg.interval_ns = interval_ns;
        self.cfg.longest_poll_gap_ns = longest_poll_gap_ns;
    }

    /// The settings in force.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// A publisher restarting over a page it published before: it keeps the page's marker and
    /// continuity if its first measurement lies within the page's advertised bounds, and changes
    /// the marker otherwise.
    pub fn resume(cfg: HostConfig, prev: Snapshot) -> Self {
        let mut p = Self::new(cfg);
        p.marker = prev.disruption_marker();
        // The same page (same counter) keeps its constant fields: its time type too.
        if prev.counter_id() == p.cfg.counter_id
            && matches!(prev.time_type(), abi::time_type::TAI | abi::time_type::UTC)
        {
            p.time_type = Some(prev.time_type());
        }
        p.last_known_tai = prev.tai_minus_utc();
        p.resumed = Some(prev);
        p.pending = None;
        p
    }

    /// The page's time type, once fixed.
    pub fn time_type(&self) -> Option<u8> {
        self.time_type
    }

    /// The page to write before the first publish: its constant fields (counter_id, time_type)
    /// as they will stay, the marker, and no time yet. Its status is INITIALIZING (UNKNOWN with
    /// counter INVALID): not to be relied upon until the first publish. `None` until the time
    /// type is fixed ([`HostConfig::time_type`]).
    pub fn placeholder(&self) -> Option<PageBuilder> {
        let time_type = self.time_type?;
        let b = match self.cfg.tai_minus_utc.or(self.last_known_tai) {
            Some(o) if self.cfg.counter_id != abi::counter_id::INVALID => PageBuilder::new().tai_minus_utc(o),
            _ => PageBuilder::new(),
        };
        Some(
            b.constants(self.cfg.counter_id, time_type)
                // INITIALIZING: no time yet, the publisher is starting ("not yet calibrated" to
                // `vmtime check`); like UNRELIABLE, a reader must not use it.
                .status(if self.cfg.counter_id == abi::counter_id::INVALID {
                    status::UNKNOWN
                } else {
                    status::INITIALIZING
                })
                .smearing(self.cfg.smearing_hint)
                .disruption_marker(self.marker)
                .flag(flags::NOTIFICATION_PRESENT, self.cfg.notify),
        )
    }

    /// The current disruption marker.
    pub fn marker(&self) -> u64 {
        self.marker
    }

    /// Statistics for status reports.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// Whether a full observation is due: the kernel's NTP state changed in a way that matters
    /// (tick, freq, status bits, leap state, TAI offset, PLL time constant, a new offset), an
    /// event is pending, or `interval_ns` has passed since the last one. The daemon asks this
    /// after every cheap `adjtimex` read ([`PollSchedule`]: every 10 ms while the kernel's state
    /// changes, every 100 ms once still), so a frequency change reaches the page within one
    /// poll.
    pub fn wants_observation(&mut self, tx: &KernelTimex, since_last_ns: i128) -> bool {
        let key = (tx.tick, tx.freq, tx.status, tx.state, tx.tai, tx.constant);
        let changed = self.last_key.is_some_and(|k| k != key);
        // A new ADJ_OFFSET shows as the offset growing in magnitude (the PLL only shrinks it).
        let new_offset = tx.offset_ns.unsigned_abs() > self.last_offset.unsigned_abs();
        self.last_key = Some(key);
        self.last_offset = tx.offset_ns;
        changed || new_offset || self.stepped || self.pending.is_some() || since_last_ns >= self.cfg.interval_ns
    }

    /// Handles an event; the next observation acts on it.
    pub fn handle_event(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Stepped => self.stepped = true,
            HostEvent::CounterChanged { usable } => {
                self.raw_base = None;
                self.counter_usable = usable;
                self.pending = Some(Reason::Step);
            }
        }
    }

    /// What the daemon should log since the last call.
    pub fn take_notices(&mut self) -> Vec<HostNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Judges one observation of the kernel's page against the samples; whether to use it.
    fn kernel_page_check(&mut self, agrees: bool, diff_ns: f64, window_ns: f64) -> bool {
        let kp = &mut self.stats.kernel_page;
        kp.checked += 1;
        if agrees {
            kp.disagreeing = 0;
            if !kp.unusable {
                return true;
            }
            kp.agreeing += 1;
            if kp.agreeing >= KERNEL_PAGE_RECOVERY {
                kp.unusable = false;
                kp.agreeing = 0;
                self.notices.push(HostNotice::KernelPageAgrees);
                return true;
            }
            return false;
        }
        kp.agreeing = 0;
        kp.rejected += 1;
        kp.disagreeing += 1;
        kp.last_disagreement_ns = diff_ns;
        if kp.disagreeing == 1 && !kp.unusable {
            self.notices.push(HostNotice::KernelPageDisagrees { diff_ns, window_ns });
        }
        if kp.disagreeing == KERNEL_PAGE_UNUSABLE_AFTER && !kp.unusable {
            kp.unusable = true;
            self.notices.push(HostNotice::KernelPageUnusable { observations: KERNEL_PAGE_UNUSABLE_AFTER });
        }
        false
    }

    fn disrupt(&mut self) {
        self.marker = self.marker.wrapping_add(1);
        self.stats.disruptions += 1;
    }

    /// The model period: RAW calibration scaled by the kernel's second length.
    fn model(&self, raw: AbaSample, kernel: &KernelTimex) -> Option<(Period, i128)> {
        let base = self.raw_base?;
        let d_raw = raw.mid_ns() - base.mid_ns();
        let d_c = raw.counter.wrapping_sub(base.counter) as u128;
        if d_raw < 10_000_000 || d_c == 0 {
            return None;
        }
        // seconds per tick = d_raw·L / (d_c · 1e9 · 1e9 · 2^16), L in 2^-16 ns per second.
        let l = kernel.second_length_q16();
        if l <= 0 {
            return None;
        }
        let (num, den) = fit(d_raw as u128 * l as u128, d_c * 1_000_000_000 * (1_000_000_000u128 << 16));
        Period::from_ratio(num, den).map(|p| (p, d_raw))
    }

    fn leap_state(&mut self, kernel: &KernelTimex, now: i128) -> u8 {
        let was = self.prev_state;
        self.prev_state = kernel.state;
        let day = 86_400 * UNIT as u128;
        match kernel.state {
            TIME_OOP => return leap::POS,
            TIME_INS => return leap::PRE_POS,
            TIME_DEL => return leap::PRE_NEG,
            _ => {}
        }
        if matches!(was, TIME_OOP | TIME_INS) && !matches!(kernel.state, TIME_INS | TIME_OOP) {
            self.post_leap = Some((leap::POST_POS, now as u128 + day));
        } else if was == TIME_DEL && kernel.state != TIME_DEL {
            self.post_leap = Some((leap::POST_NEG, now as u128 + day));
        }
        // STA_INS/STA_DEL stay set after the leap (TIME_WAIT) until the NTP daemon clears them.
        if kernel.state == TIME_OK && kernel.status & STA_INS != 0 {
            return leap::PRE_POS;
        }
        if kernel.state == TIME_OK && kernel.status & STA_DEL != 0 {
            return leap::PRE_NEG;
        }
        match self.post_leap {
            Some((l, until)) if (now as u128) < until => l,
            _ => {
                self.post_leap = None;
                leap::NONE
            }
        }
    }

    /// Handles one observation; returns the page to publish, if any.
    pub fn handle_observation(&mut self, obs: &Observation<'_>) -> Option<HostAction> {
        if self.raw_base.is_none() {
            self.raw_base = Some(obs.raw);
            return None;
        }
        let (model, baseline) = self.model(obs.raw, &obs.kernel)?;
        self.stats.baseline_s = baseline as f64 / 1e9;
        self.stats.kernel_rate_ppb = obs.kernel.rate_ppb();
        // TAI − UTC at the samples, if known, and the clock they are of.
        let (known, sampled_tai) = match obs.clock {
            Sampled::Tai => (Some(obs.kernel.tai as i16), true),
            // During an inserted second CLOCK_REALTIME repeats 23:59:59: TAI − UTC is one more.
            Sampled::Utc { tai_minus_utc } => {
                (tai_minus_utc.map(|o| o + i16::from(obs.kernel.state == TIME_OOP)), false)
            }
        };
        if known.is_some() {
            self.last_known_tai = known;
        }
        // The page's time type is a constant field (readers take it once): fixed by the first
        // page. A TAI page whose offset stops being known (an expired leap-second list) stays
        // TAI, with the last offset known, TAI_OFFSET_VALID clear and a second more of maxerror
        // (a leap second may have been missed). A UTC page (TAI − UTC unknown at start) becomes
        // TAI once the offset is known, as a disruption: a new marker tells readers to take
        // the page afresh (TAI is what the ABI recommends, and a guest driver that probed a UTC
        // page without an offset registered no PTP clock).
        let mut time_type =
            *self.time_type.get_or_insert(if known.is_some() { abi::time_type::TAI } else { abi::time_type::UTC });
        let upgraded =
            time_type == abi::time_type::UTC && known.is_some() && self.cfg.counter_id != abi::counter_id::INVALID;
        if upgraded {
            time_type = abi::time_type::TAI;
            self.time_type = Some(time_type);
        }
        let (tai, offset_s, unsure_s) = match (time_type, sampled_tai) {
            (abi::time_type::TAI, true) => (known, 0, 0),
            (abi::time_type::TAI, false) => match known {
                Some(o) => (Some(o), o as i64, 0),
                None => (None, self.last_known_tai? as i64, 1),
            },
            // A UTC page: UTC samples as they are, TAI samples less TAI − UTC.
            (_, true) => (known, -(obs.kernel.tai as i64), 0),
            (_, false) => (known, 0, 0),
        };
        // The kernel's own page, if any, gives the relation exactly: its period and its time at
        // the newest counter value seen.
        let from_page = obs.kernel_page.and_then(|p| {
            let r = p.reference().ok()?;
            let c = obs.samples.iter().map(|s| s.counter).max().unwrap_or(obs.raw.counter);
            Some((
                Period { frac: r.period, shift: r.shift },
                KernelRef { counter: c, time: r.raw_time_at(c).ok()? as i128 + offset_s as i128 * UNIT, half: 0 },
                r,
            ))
        });
        // The kernel's page is never trusted blindly (the RFC's revision 1 does not republish
        // after a clock step): each observation is checked against this observation's own
        // samples of the clock, and a page outside their pairing window is not used.
        let sampled = kernel_reference(obs.samples, model, offset_s);
        let from_page = match (from_page, sampled) {
            (Some((period, kref, r)), Some(ks)) => {
                let at = r.raw_time_at(ks.counter).ok().map(|t| t as i128 + offset_s as i128 * UNIT);
                let diff = at.map(|t| t - ks.time);
                let window = ks.half + crate::ns_to_frac(KERNEL_PAGE_SLACK_NS, false);
                // Its rate too: a page right at this counter with a wrong period would be wrong
                // a second later. The host's own model (RAW calibrated, scaled by the kernel's
                // second length) is good to well within KERNEL_PAGE_MAX_RATE_PPB.
                let rate_ppb = (model.hz() / period.hz() - 1.0) * 1e9;
                let agrees = diff.is_some_and(|d| d.abs() <= window) && rate_ppb.abs() <= KERNEL_PAGE_MAX_RATE_PPB;
                self.kernel_page_check(agrees, diff.map_or(f64::INFINITY, frac_to_ns_f64), frac_to_ns_f64(window))
                    .then_some((period, kref))
            }
            (Some((period, kref, _)), None) => Some((period, kref)),
            (None, _) => None,
        };
        let (model, k) = match from_page {
            Some(found) => found,
            None => (model, sampled?),
        };
        self.stats.pairing_ns = frac_to_ns_f64(k.half);
        let st = if !self.counter_usable {
            status::UNRELIABLE
        } else if baseline < self.cfg.calibration_ns
            && self.resumed.is_none()
            && self.last.is_none_or(|l| l.status == status::INITIALIZING)
        {
            status::INITIALIZING
        } else if obs.kernel.synchronized() {
            status::SYNCHRONIZED
        } else {
            status::FREERUNNING
        };
        let lp = self.leap_state(&obs.kernel, k.time);
        let stepped = std::mem::take(&mut self.stepped);
        let base = self.raw_base.expect("set above");
        let calib_ppb =
            (((base.window_ns() + obs.raw.window_ns()) as f64 / 2.0 / baseline as f64 * 1e9).ceil() as u64).max(1);
        let mut kernel = obs.kernel;
        kernel.maxerror_us = self.claimed_maxerror_us(obs.raw.mid_ns(), obs.kernel.maxerror_us);
        let n = Next { k, model, status: st, leap: lp, tai, time_type, kernel, calib_ppb, unsure_s };

        // A restart: continuity is proven when the kernel now lies within the old page's bounds.
        if let Some(prev) = self.resumed.take() {
            // A page left with an odd seq_count was being written when its writer died: its
            // body may be torn, so nothing about it can be proven.
            let whole = prev.seq_count() % 2 == 0;
            let ok = whole
                && prev.counter_id() == self.cfg.counter_id
                && prev.time_type() == time_type
                && prev
                    .reference()
                    .ok()
                    .and_then(|r| Some((r.raw_time_at(k.counter).ok()?, r.maxerror_at(k.counter)?)))
                    .is_some_and(|(t, m)| (t as i128 - k.time).unsigned_abs() <= m);
            self.last = Some(Last {
                snap: prev,
                model,
                status: prev.clock_status().unwrap_or(0),
                leap: prev.leap_indicator().unwrap_or(0),
                tai: prev.tai_minus_utc(),
                time_type: prev.time_type(),
                slewing: false,
            });
            if !ok {
                // The new page is monotonic with the old one only if it is provably not behind it.
                let behind_or_unknown = !whole
                    || prev.time_type() != time_type
                    || prev
                        .reference()
                        .ok()
                        .and_then(|r| r.raw_time_at(k.counter).ok())
                        .is_none_or(|o| k.time < o as i128);
                self.not_monotonic = behind_or_unknown;
                self.disrupt();
                self.last = None;
                return Some(self.publish(Reason::Restart, &n, true));
            }
            // Continuity holds: keep the marker, refresh the page once so readers see a live
            // publisher.
            self.pending = Some(Reason::Restart);
        }

        let Some(last) = self.last else {
            let reason = self.pending.take().unwrap_or(Reason::Initial);
            if upgraded {
                // The placeholder said UTC: readers that took its constants must look again.
                self.disrupt();
            }
            return Some(self.publish(reason, &n, false));
        };
        if upgraded || last.time_type != time_type {
            self.pending = None;
            return Some(self.publish(Reason::TaiOffset, &n, true));
        }
        let r = last.snap.reference().ok()?;
        let err = r.raw_time_at(k.counter).ok()? as i128 - k.time;
        self.stats.last_error_ns = frac_to_ns_f64(err);
        let threshold = crate::ns_to_frac(self.cfg.threshold_ns as i128, false);
        // How far the last model and the new one drift apart over one interval.
        let ticks = (self.cfg.interval_ns as f64 / 1e9 * model.hz()) as u64;
        let over = |p: Period| Reference { counter_value: 0, period: p.frac, shift: p.shift, ..r }.elapsed(ticks).0;
        let drift_next = (over(last.model) - over(model)).abs();

        let reason = if let Some(p) = self.pending.take() {
            Some(p)
        } else if stepped && err.abs() > threshold {
            Some(Reason::Step)
        } else if last.tai != tai {
            Some(Reason::TaiOffset)
        } else if last.status != st {
            Some(if last.status == status::INITIALIZING { Reason::Calibrated } else { Reason::Status })
        } else if last.leap != lp {
            Some(Reason::Leap)
        } else if drift_next > threshold / 2 {
            Some(Reason::Rate)
        } else if last.slewing {
            // A slew ends when the gap has closed; otherwise it is planned again.
            Some(if err.abs() <= threshold { Reason::SlewDone } else { Reason::Drift })
        } else if err.abs() > threshold {
            Some(Reason::Drift)
        } else {
            None
        };
        let reason = reason?;
        Some(self.publish(reason, &n, reason == Reason::Step))
    }

    /// Builds the next page, keeping TIME_MONOTONIC and the old page's bounds where it can.
    fn publish(&mut self, reason: Reason, n: &Next, mut disrupted: bool) -> HostAction {
        let k = n.k;
        let mut time = k.time;
        let mut period = n.model;
        let mut slew_ppb = 0u64;
        let mut monotonic = !std::mem::take(&mut self.not_monotonic);
        let mut gap_frac = 0i128;
        let same_scale = self.last.filter(|l| l.time_type == n.time_type);
        if let (true, Some(last)) = (disrupted, same_scale) {
            // A forced step follows the kernel; going back, it cannot promise monotonic time.
            let old = last.snap.reference().expect("published pages have a reference");
            monotonic = old.raw_time_at(k.counter).is_ok_and(|o| k.time >= o as i128);
        }
        let prev = same_scale.filter(|_| !disrupted);
        if let Some(last) = prev {
            let old = last.snap.reference().expect("published pages have a reference");
            let o = old.raw_time_at(k.counter).map(|t| t as i128).unwrap_or(k.time);
            let gap = k.time - o; // kernel − old page
                                  // If the period shrinks, keep the new page ahead of the old one until it is written.
                                  // Over the write latency, how far the old page would run ahead of a new one with
                                  // period `p` (0 if the new one runs faster).
            let later = k.counter.wrapping_add(self.cfg.latency_ticks);
            let over_latency = |frac: u64, shift: u8| {
                Reference { counter_value: k.counter, period: frac, shift, ..old }.elapsed(later).0
            };
            // Plus 2 units (1e-19 s): floor(a) + floor(b) can fall 1 short of floor(a + b), so the
            // old page evaluated over its whole span may lead the new one by a unit.
            let margin_for =
                |p: Period| (over_latency(old.period, old.shift) - over_latency(p.frac, p.shift)).max(0) + 2;
            if gap >= 0 {
                let margin = margin_for(period);
                time = k.time.max(o + margin);
                if old.maxerror_at(k.counter).is_some_and(|m| gap as u128 > m) {
                    disrupted = true; // the old page's bounds did not hold
                }
            } else if gap.unsigned_abs() <= crate::ns_to_frac(self.cfg.step_ns as i128, false) as u128 {
                // Continuity at the update point; the gap closes through the period by the next
                // observation.
                gap_frac = -gap;
                let ns = frac_to_ns_f64(-gap);
                slew_ppb = ((ns / self.cfg.interval_ns as f64 * 1e9).ceil() as u64).clamp(1, self.cfg.max_slew_ppb);
                period = slowed(n.model, slew_ppb);
                time = o + margin_for(period);
            } else {
                monotonic = false;
                disrupted = true;
            }
            // For every counter value since the old reference, the new page must stay inside the
            // bounds the old page advertised; otherwise the marker changes. The difference of
            // the two pages is linear in the counter and the bound is linear too, so checking
            // both ends is exact.
            if !disrupted {
                let new_ref = Reference {
                    counter_value: k.counter,
                    period: period.frac,
                    shift: period.shift,
                    time: time.max(0) as u128,
                    ..old
                };
                for c in [old.counter_value, k.counter] {
                    let inside = match (old.raw_time_at(c), new_ref.raw_time_at(c), old.maxerror_at(c)) {
                        (Ok(to), Ok(tn), Some(m)) => tn.abs_diff(to) <= m,
                        _ => false,
                    };
                    disrupted |= !inside;
                }
            }
        }
        if disrupted && self.last.is_some() {
            self.disrupt();
        }
        let half_ns = frac_to_ns_f64(k.half).ceil() as u64;
        let gap_ns = frac_to_ns_f64(gap_frac).ceil() as u64;
        let kernel_ns = |us: i64| (us.max(0) as u64).saturating_mul(1000);
        let maxerror_ns = kernel_ns(n.kernel.maxerror_us)
            .saturating_add(half_ns)
            .saturating_add(gap_ns)
            .saturating_add(1)
            .saturating_add(unseen_change_ns(self.cfg.longest_poll_gap_ns, self.cfg.tolerance_ppb))
            .saturating_add(n.unsure_s.saturating_mul(NS as u64));
        let esterror_ns = kernel_ns(n.kernel.esterror_us).saturating_add(half_ns);
        let rate = |ppb: u64| (period.frac as u128 * ppb as u128).div_ceil(1_000_000_000) as u64;
        let mut b = PageBuilder::new();
        if self.cfg.counter_id == abi::counter_id::INVALID {
            b = b.status(status::UNKNOWN);
        } else {
            let t = time.max(0) as u128;
            let id = self.cfg.counter_id;
            b = match n.time_type {
                abi::time_type::TAI => b.reference(id, k.counter, Timestamp::<Tai>::from_raw(t), period),
                _ => b.reference(id, k.counter, Timestamp::<Utc>::from_raw(t), period),
            };
            b = b
                .status(n.status)
                .leap(n.leap)
                .maxerror(maxerror_ns, rate(self.cfg.tolerance_ppb + slew_ppb))
                .esterror(esterror_ns, rate(n.calib_ppb))
                .flag(flags::TIME_MONOTONIC, monotonic);
            if let Some(o) = n.tai {
                b = b.tai_minus_utc(o);
            }
        }
        let page = b
            .smearing(self.cfg.smearing_hint)
            .disruption_marker(self.marker)
            .flag(flags::NOTIFICATION_PRESENT, self.cfg.notify)
            .build();
        let snap = Snapshot::new(page, vmclock::abi::PAGE_SIZE).expect("the builder makes valid pages");
        self.last = Some(Last {
            snap,
            model: n.model,
            status: n.status,
            leap: n.leap,
            tai: n.tai,
            time_type: n.time_type,
            slewing: slew_ppb > 0,
        });
        self.stats.published += 1;
        self.stats.last_reason = Some(reason);
        self.stats.slewing = slew_ppb > 0;
        HostAction::Publish { page, reason, disrupted }
    }
}

/// Everything a new page is made from.
#[derive(Clone, Copy, Debug)]
struct Next {
    k: KernelRef,
    model: Period,
    status: u8,
    leap: u8,
    tai: Option<i16>,
    time_type: u8,
    kernel: KernelTimex,
    calib_ppb: u64,
    /// Seconds of doubt in the time (TAI from UTC with an offset no longer known).
    unsure_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(freq: i64, offset_ns: i64) -> KernelTimex {
        KernelTimex { tick: 10_000, freq, offset_ns, ..KernelTimex::default() }
    }

    #[test]
    fn the_poll_is_short_while_the_kernel_changes_and_long_once_still() {
        let mut s = PollSchedule::new(DEFAULT_ACTIVE_POLL_NS, DEFAULT_IDLE_POLL_NS);
        let mut t = 0i128;
        // Starts short; stays short for SETTLE_NS after the last change.
        assert_eq!(s.after_poll(&tx(0, 0), t), DEFAULT_ACTIVE_POLL_NS);
        while t < SETTLE_NS - DEFAULT_ACTIVE_POLL_NS {
            t += DEFAULT_ACTIVE_POLL_NS;
            assert_eq!(s.after_poll(&tx(0, 0), t), DEFAULT_ACTIVE_POLL_NS, "at {t}");
        }
        t += DEFAULT_ACTIVE_POLL_NS;
        assert_eq!(s.after_poll(&tx(0, 0), t), DEFAULT_IDLE_POLL_NS);
        assert_eq!(s.longest_gap_ns(), DEFAULT_IDLE_POLL_NS);
        // A new frequency: short at once.
        t += DEFAULT_IDLE_POLL_NS;
        assert_eq!(s.after_poll(&tx(65_536, 0), t), DEFAULT_ACTIVE_POLL_NS);
        // A PLL offset being slewed changes every second: short for as long as it runs.
        for i in 1..30 {
            t += 1_000_000_000;
            assert_eq!(s.after_poll(&tx(65_536, 1_000_000 >> i), t), DEFAULT_ACTIVE_POLL_NS);
        }
        // maxerror alone grows every second: not a change.
        t += SETTLE_NS;
        let mut quiet = tx(65_536, 1_000_000 >> 29);
        quiet.maxerror_us = 12_345;
        assert_eq!(s.after_poll(&quiet, t), DEFAULT_IDLE_POLL_NS);
    }

    #[test]
    fn the_unseen_change_term_covers_the_rate_beyond_the_tolerance() {
        // 1000 ppm unseen for 100 ms is 100 µs; 500 ppm of it is in the page's rate already.
        assert_eq!(unseen_change_ns(100_000_000, 500_000), 50_000);
        assert_eq!(unseen_change_ns(10_000_000, 500_000), 5_000);
        // A tolerance of 15 ppm: the kernel's rate moves by at most 30 ppm, 15 of them covered.
        assert_eq!(unseen_change_ns(100_000_000, 15_000), 1_500);
        // Beyond 500 ppm the kernel's limit (1000 ppm) is below 2 × tolerance.
        assert_eq!(unseen_change_ns(100_000_000, 700_000), 30_000);
        assert_eq!(unseen_change_ns(100_000_000, 2_000_000), 0);
        assert_eq!(unseen_change_ns(1, 1), 1, "rounded up");
        // And every page carries it.
        assert_eq!(HostConfig::default().longest_poll_gap_ns, DEFAULT_IDLE_POLL_NS);
    }

    #[test]
    fn below_500_ppm_the_bound_grows_at_the_tolerance_from_the_daemons_last_statement() {
        let s = |x: f64| (x * 1e9) as i128;
        let mut p = Publisher::new(HostConfig { tolerance_ppb: 1_000, ..HostConfig::default() });
        // The daemon sets 20 µs; the kernel then adds 500 µs a second.
        assert_eq!(p.claimed_maxerror_us(s(10.0), 20), 20);
        assert_eq!(p.claimed_maxerror_us(s(11.5), 520), 22, "20 µs + 1 ppm of 1.5 s, rounded up");
        assert_eq!(p.claimed_maxerror_us(s(13.0), 1_520), 23);
        // The daemon says less: taken at once.
        assert_eq!(p.claimed_maxerror_us(s(13.2), 12), 12);
        // The daemon says more (not the kernel's 500 µs steps): taken at once, never hidden.
        assert_eq!(p.claimed_maxerror_us(s(13.4), 5_000), 5_000);
        assert_eq!(p.claimed_maxerror_us(s(14.6), 5_500), 5_002);
        // Never above the kernel's own value (400 ppm for 0.9 s is 360 µs; the kernel added none).
        let mut h = Publisher::new(HostConfig { tolerance_ppb: 400_000, ..HostConfig::default() });
        h.claimed_maxerror_us(s(0.0), 20);
        assert_eq!(h.claimed_maxerror_us(s(0.9), 20), 20);
        let mut q = Publisher::new(HostConfig { tolerance_ppb: 1_000, ..HostConfig::default() });
        q.claimed_maxerror_us(s(0.0), 1);
        assert_eq!(q.claimed_maxerror_us(s(0.5), 1), 1);
        // An unsynchronised kernel (16 s) is the kernel's value.
        assert_eq!(q.claimed_maxerror_us(s(1.0), 16_000_000), 16_000_000);
        // At 500 ppm (the default) the kernel's value, as before.
        let mut d = Publisher::new(HostConfig::default());
        d.claimed_maxerror_us(s(0.0), 20);
        assert_eq!(d.claimed_maxerror_us(s(1.1), 520), 520);
    }

    #[test]
    fn a_burst_across_a_step_back_gives_no_reference() {
        let p = Period::from_hz(1_000_000_000).unwrap();
        let ok: Vec<AbaSample> = (0..4i128)
            .map(|i| AbaSample { before_ns: i * 1000, counter: (i * 1000) as u64, after_ns: i * 1000 + 20 })
            .collect();
        assert!(kernel_reference(&ok, p, 0).is_some());
        // The clock is stepped back 1 ms inside the third sample: no reference from this burst.
        let mut stepped = ok.clone();
        stepped[2].after_ns -= 1_000_000;
        stepped[3].before_ns -= 1_000_000;
        stepped[3].after_ns -= 1_000_000;
        assert_eq!(kernel_reference(&stepped, p, 0), None);
    }
}
