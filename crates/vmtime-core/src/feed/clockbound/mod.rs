//! ClockBound 2.x's shared-memory segment (`/var/run/clockbound/shm0`), as its published
//! crates (clock-bound-shm 2.0) define it, native-endian, C layout:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | magic: [u32; 2] | 0x414D5A4E, 0x43420200 |
//! | 8 | segsize: u32 | 80 |
//! | 12 | version: u16 | 2 |
//! | 14 | generation: u16 | odd while written, never 0 once written |
//! | 16 | as_of: timespec | CLOCK_MONOTONIC_COARSE when the bound was computed |
//! | 32 | void_after: timespec | CLOCK_MONOTONIC_COARSE after which nothing holds |
//! | 48 | bound_nsec: i64 | bound on |CLOCK_REALTIME − true time| at as_of |
//! | 56 | disruption_marker: u64 | |
//! | 64 | max_drift_ppb: u32 | growth of the bound per second since as_of |
//! | 68 | clock_status: i32 | 0 Unknown, 1 Synchronized, 2 FreeRunning, 3 Disrupted |
//! | 72 | clock_disruption_support_enabled: bool | the client compares the marker with /dev/vmclock0's |
//! | 73 | padding [u8; 7] | |
//!
//! The client's `now()` returns CLOCK_REALTIME ± (bound_nsec + max_drift_ppb × (now − as_of)),
//! keeps the written status for 5 s after as_of, then says FreeRunning until void_after and
//! Unknown after it.
use super::*;

/// The segment's magic.
pub const MAGIC: [u32; 2] = [0x414D_5A4E, 0x4342_0200];
/// The layout version.
pub const VERSION: u16 = 2;
/// The header's size.
pub const HEADER_SIZE: usize = 16;
/// The ClockErrorBound's size.
pub const BODY_SIZE: usize = 64;
/// The segment's size.
pub const SEGMENT_SIZE: usize = HEADER_SIZE + BODY_SIZE;
/// The client refuses a drift at or beyond this.
pub const MAX_DRIFT_PPB: u64 = 1_000_000_000;

/// ClockBound's clock status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum CbStatus {
    /// Nothing may be trusted.
    Unknown = 0,
    /// Kept accurate.
    Synchronized = 1,
    /// Free running, still bounded.
    FreeRunning = 2,
    /// Disrupted: nothing may be trusted.
    Disrupted = 3,
}

/// The segment's body (`ClockErrorBound`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorBound {
    /// CLOCK_MONOTONIC_COARSE when the bound was computed, ns.
    pub as_of_ns: i128,
    /// CLOCK_MONOTONIC_COARSE after which the segment is void, ns.
    pub void_after_ns: i128,
    /// Bound on CLOCK_REALTIME's error at as_of, ns.
    pub bound_ns: i64,
    /// The page's disruption marker.
    pub disruption_marker: u64,
    /// Growth of the bound, ppb.
    pub max_drift_ppb: u32,
    /// The status.
    pub status: CbStatus,
    /// Whether clients compare the marker with their vmclock device's.
    pub disruption_support: bool,
}

fn timespec(ns: i128, out: &mut [u8]) {
    out[0..8].copy_from_slice(&(ns.div_euclid(NS) as i64).to_ne_bytes());
    out[8..16].copy_from_slice(&(ns.rem_euclid(NS) as i64).to_ne_bytes());
}

impl ErrorBound {
    /// The body's bytes (native byte order, C layout).
    pub fn to_bytes(&self) -> [u8; BODY_SIZE] {
        let mut b = [0u8; BODY_SIZE];
        timespec(self.as_of_ns, &mut b[0..16]);
        timespec(self.void_after_ns, &mut b[16..32]);
        b[32..40].copy_from_slice(&self.bound_ns.to_ne_bytes());
        b[40..48].copy_from_slice(&self.disruption_marker.to_ne_bytes());
        b[48..52].copy_from_slice(&self.max_drift_ppb.to_ne_bytes());
        b[52..56].copy_from_slice(&(self.status as i32).to_ne_bytes());
        b[56] = self.disruption_support as u8;
        b
    }
}

/// The header's bytes for a generation.
pub fn header_bytes(generation: u16) -> [u8; HEADER_SIZE] {
    LAYOUT_V2.header_bytes(generation)
}

/// A segment layout: what the OS side needs to create, recognise and write a segment (the
/// header is the same in both: magic, segsize, version word, generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The header's version word.
    pub version: u16,
    /// The body's size (a multiple of 8: written as 64-bit words).
    pub body_size: usize,
    /// Its name in messages.
    pub name: &'static str,
}

impl Layout {
    /// Header and body.
    pub const fn segment_size(&self) -> usize {
        HEADER_SIZE + self.body_size
    }

    /// The header's bytes for a generation.
    pub fn header_bytes(&self, generation: u16) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC[0].to_ne_bytes());
        b[4..8].copy_from_slice(&MAGIC[1].to_ne_bytes());
        b[8..12].copy_from_slice(&(self.segment_size() as u32).to_ne_bytes());
        b[12..14].copy_from_slice(&self.version.to_ne_bytes());
        b[14..16].copy_from_slice(&generation.to_ne_bytes());
        b
    }
}

/// ClockBound 2.x's layout (`shm0`).
pub const LAYOUT_V2: Layout = Layout { version: VERSION, body_size: BODY_SIZE, name: "ClockBound 2 segment" };

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockBoundConfig {
    /// How long a segment stays valid if it is not rewritten, ns.
    pub life_ns: i128,
    /// Drift allowed to CLOCK_REALTIME against the page beyond the rate last measured, ppb
    /// (ClockBound's own daemon assumes 15 ppm for the system clock).
    pub drift_margin_ppb: u64,
    /// Whether clients compare the marker with their vmclock device's.
    pub disruption_support: bool,
    /// Hold-off after a disruption when the page is not updated again, ns.
    pub holdoff_ns: i128,
    /// CLOCK_MONOTONIC_COARSE's resolution (one tick), ns: the unit of the allowance for
    /// the clients' coarse clock (see [`ClockBoundFeed::coarse_allowance_ns`]).
    pub coarse_tick_ns: i128,
}

impl Default for ClockBoundConfig {
    fn default() -> Self {
        ClockBoundConfig {
            life_ns: 5 * NS,
            drift_margin_ppb: 15_000,
            disruption_support: false,
            holdoff_ns: 2 * NS,
            coarse_tick_ns: 4_000_000,
        }
    }
}

impl ClockBoundFeed {
    /// New settings (SIGHUP: the interval, the life, the drift margin); the next segment
    /// carries them. The measured rate and a pending disruption are kept.
    pub fn set_config(&mut self, cfg: ClockBoundConfig) {
        self.cfg = cfg;
        self.gate.set_holdoff_ns(cfg.holdoff_ns);
    }

    /// The settings in force.
    pub fn config(&self) -> ClockBoundConfig {
        self.cfg
    }
}

/// Added to every bound for whole-ns readings, ns: the client's CLOCK_REALTIME reading is
/// the clock truncated to the ns (up to 1 ns behind it), and the client truncates the
/// bound's growth (`max_drift_ppb` × age) to whole ns. (The pairing's own truncation is in
/// its windows: [`crate::host::kernel_reference`].)
pub const ROUNDING_NS: u128 = 2;

/// However little lag of the coarse clock is observed, it is assumed to reach this many
/// ticks. Measured on a loaded 2-vCPU KVM guest with HZ=250: 4 to 8 ms usually, beyond 8 ms
/// in about 0.06 % of looks, 12.9 ms at most; such rare lags take the feed's few looks per
/// interval minutes to see.
pub const ASSUMED_COARSE_LAG_TICKS: i128 = 3;

/// A coarse lag beyond this is not kept, ns. Right after this machine resumes (a VM paused,
/// migrated or restored), the fine clock has moved on and the coarse one waits for the next
/// tick: a look then sees the pause as a lag. Kept as the largest, it would push every later
/// `as_of` back by the pause, and a pause longer than the segment's life would leave every
/// segment void. The feed measures again after a resume, and a vmclock page says so by its
/// disruption marker.
pub const MAX_COARSE_LAG_NS: i128 = 100_000_000;

/// How the last claimed bound was made, ns and ppb (for the debug log and diagnosis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundTerms {
    /// The page's `seq_count`.
    pub seq: u32,
    /// The counter value of the pairing.
    pub counter: u64,
    /// The page's maxerror at the pairing.
    pub maxerror_ns: u128,
    /// page − CLOCK_REALTIME at the pairing (signed, rounded toward zero).
    pub offset_ns: i128,
    /// |offset| + the pairing's half-width, rounded up.
    pub pairing_ns: u128,
    /// The burst's span × the drift, rounded up.
    pub span_ns: u128,
    /// The page's rate error.
    pub page_rate_ppb: u64,
    /// CLOCK_REALTIME's rate against the page, as measured.
    pub realtime_rate_ppb: u64,
}

/// The ClockBound feed: one segment per update.
#[derive(Clone, Debug)]
pub struct ClockBoundFeed {
    cfg: ClockBoundConfig,
    gate: PageGate,
    /// The last pairing with its marker, to measure CLOCK_REALTIME's rate against the page.
    last: Option<Pairing>,
    /// The last rate measured, ppb (page against CLOCK_REALTIME, absolute, rounded up).
    pub rate_ppb: Option<u64>,
    /// The last reason for Unknown/Disrupted.
    pub last_hold: Option<Hold>,
    /// What the last `handle` claimed (its as_of, pairing and bound), for the 3.x body.
    claimed: Option<(i128, Pairing, Claim, Snapshot)>,
    /// The 3.x counter→UTC map last claimed, kept (with a status that says it may not be
    /// trusted) while the feed holds, as ClockBound's own daemon keeps its last parameters.
    last_map: Option<v3::Map>,
    /// How the last claimed bound was made (`None` after a segment that claims nothing).
    pub last_terms: Option<BoundTerms>,
    /// The largest lag of CLOCK_MONOTONIC_COARSE behind CLOCK_MONOTONIC observed, ns.
    coarse_lag_ns: i128,
    /// A second opinion disagrees with the page ([`crate::crosscheck`]): |server − page| +
    /// the server's bound, ns; the bound covers it and the status is FreeRunning meanwhile.
    cross_widen_ns: Option<f64>,
}

/// The bound one pairing supports, shared by both layouts: `bound_ns` at the pairing's
/// instant, growing by `drift_ppb` (of which `page_rate_ppb` is the page's own period error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// ns, rounded up.
    pub bound_ns: u128,
    /// ppb, rounded up: the page's rate error + CLOCK_REALTIME's measured rate against the
    /// page + the margin.
    pub drift_ppb: u128,
    /// The page's rate error, ppb rounded up (part of `drift_ppb`).
    pub page_rate_ppb: u128,
}

impl ClockBoundFeed {
    /// Whether a disruption is pending (the page is not current yet): the next page is
    /// urgent ([`crate::cadence::Look::observe_now`]).
    pub fn disruption_pending(&self) -> bool {
        self.gate.disrupted()
    }

    /// A feed.
    pub fn new(cfg: ClockBoundConfig) -> Self {
        ClockBoundFeed {
            cfg,
            gate: PageGate::new(cfg.holdoff_ns),
            last: None,
            rate_ppb: None,
            last_hold: None,
            claimed: None,
            last_map: None,
            last_terms: None,
            coarse_lag_ns: ASSUMED_COARSE_LAG_TICKS * cfg.coarse_tick_ns.max(0),
            cross_widen_ns: None,
        }
    }

    /// The cross-check's verdict ([`crate::crosscheck::CrossCheck::widen_ns`]): while a
    /// second opinion disagrees with the page beyond both bounds, every bound written covers
    /// the disagreement (true time may be anywhere the server allows) and the status is
    /// FreeRunning, never Synchronized.
    pub fn set_cross_check(&mut self, widen_ns: Option<f64>) {
        self.cross_widen_ns = widen_ns;
    }

    /// One observation of CLOCK_MONOTONIC minus CLOCK_MONOTONIC_COARSE (the fine clock read
    /// just after the coarse one), ns; one beyond [`MAX_COARSE_LAG_NS`] (a resume) is not kept.
    pub fn observe_coarse_lag(&mut self, lag_ns: i128) {
        if lag_ns <= MAX_COARSE_LAG_NS {
            self.coarse_lag_ns = self.coarse_lag_ns.max(lag_ns);
        }
    }

    /// How far `as_of` is written before the true instant of the measurement, ns.
    ///
    /// The client ages the bound by its CLOCK_MONOTONIC_COARSE reading minus `as_of`. The
    /// coarse clock is the fine clock at the last timekeeping update, so it lags the true
    /// instant: by a tick or two usually, by more when timer interrupts come late (a
    /// loaded machine, a preempted vCPU). An `as_of` that is the true instant would let the
    /// client understate the age by that lag, and with it the bound's growth: writing
    /// `as_of` early by the largest lag seen plus one tick keeps the age the client computes
    /// at least the true time since the measurement, at a cost of `max_drift_ppb` × the
    /// allowance in the bound (hundreds of ns at ClockBound's 15 ppm).
    pub fn coarse_allowance_ns(&self) -> i128 {
        self.coarse_lag_ns + self.cfg.coarse_tick_ns.max(0)
    }

    /// Continues from the body a previous run left in the segment (a feed restarted, or
    /// killed and started again): its marker is the last one clients were given, so a page
    /// whose marker changed while no feed ran is a disruption, as it would have been had
    /// the feed kept running. A body that claims nothing (Unknown) carries no marker.
    /// Returns the marker taken.
    pub fn resume(&mut self, previous: &[u8], layout: Layout) -> Option<u64> {
        // (marker, status) offsets in the body of each layout.
        let (m, st) = if layout == v3::LAYOUT { (64, 76) } else { (40, 52) };
        let status = i32::from_ne_bytes(previous.get(st..st + 4)?.try_into().ok()?);
        let marker = u64::from_ne_bytes(previous.get(m..m + 8)?.try_into().ok()?);
        let claimed = [CbStatus::Synchronized, CbStatus::FreeRunning, CbStatus::Disrupted];
        claimed.iter().any(|&c| c as i32 == status).then(|| {
            self.gate.expect_marker(marker);
            marker
        })
    }

    /// The segment for an observation; `mono_ns` is CLOCK_MONOTONIC read *before* the burst,
    /// and `as_of` is written [`Self::coarse_allowance_ns`] earlier.
    pub fn handle(&mut self, obs: &Observation<'_>, mono_ns: i128) -> ErrorBound {
        self.claimed = None;
        self.last_terms = None;
        let as_of_ns = mono_ns - self.coarse_allowance_ns();
        let mut eb = ErrorBound {
            as_of_ns,
            void_after_ns: as_of_ns + self.cfg.life_ns,
            bound_ns: 0,
            disruption_marker: obs.before.disruption_marker(),
            max_drift_ppb: 0,
            status: CbStatus::Unknown,
            disruption_support: self.cfg.disruption_support,
        };
        let p = match self.gate.pass(obs) {
            Ok(p) => p,
            Err(h) => {
                self.last_hold = Some(h);
                if h == Hold::Disrupted || self.gate.disrupted() {
                    eb.status = CbStatus::Disrupted;
                }
                if h == Hold::Disrupted {
                    self.last = None;
                }
                return eb;
            }
        };
        // CLOCK_REALTIME's rate against the page since the last pairing on the same marker.
        if let Some(l) = self.last.filter(|l| l.marker == p.marker && p.realtime > l.realtime) {
            let dt = p.realtime - l.realtime;
            // |Δoffset| plus both pairings' half-widths, over the interval.
            let d = (p.offset() - l.offset()).abs() + p.half + l.half;
            self.rate_ppb = Some(((d as u128 * 1_000_000_000).div_ceil(dt as u128)).min(u64::MAX as u128) as u64);
        }
        self.last = Some(p);
        let (c, terms) = match self.claim(&p, obs) {
            Ok(x) => x,
            Err(h) => {
                self.last_hold = Some(h);
                return eb;
            }
        };
        self.last_hold = None;
        self.last_terms = Some(terms);
        eb.bound_ns = c.bound_ns as i64;
        eb.max_drift_ppb = c.drift_ppb as u32;
        self.claimed = Some((as_of_ns, p, c, obs.before));
        eb.status = if p.status == status::SYNCHRONIZED && self.cross_widen_ns.is_none() {
            CbStatus::Synchronized
        } else {
            CbStatus::FreeRunning
        };
        eb
    }

    /// The bound a pairing supports, or why none: the page gives no bound (no maxerror or
    /// no rate error), or it is too large to write.
    fn claim(&self, p: &Pairing, obs: &Observation<'_>) -> Result<(Claim, BoundTerms), Hold> {
        let (Some(maxerror), Some(rate)) = (p.maxerror, p.rate_maxerror_ppb) else {
            return Err(Hold::NoMaxError);
        };
        // |true − REALTIME| ≤ page maxerror + |page − REALTIME| + half-width of the pairing
        // + the burst's span × the drift: the pairing intersects the burst's windows moved
        // along the page's period, which assumes CLOCK_REALTIME runs at the page's rate
        // across the burst (a preempted burst spans milliseconds; ppm × ms is nanoseconds).
        let drift = rate as u128 + self.rate_ppb.unwrap_or(0) as u128 + self.cfg.drift_margin_ppb as u128;
        let span = match (obs.samples.iter().map(|s| s.before_ns).min(), obs.samples.iter().map(|s| s.after_ns).max()) {
            (Some(a), Some(b)) if b > a => (b - a) as u128,
            _ => 0,
        };
        let terms = BoundTerms {
            seq: p.seq,
            counter: p.counter,
            maxerror_ns: frac_to_ns_ceil(maxerror),
            offset_ns: p.offset() * NS / UNIT,
            pairing_ns: frac_to_ns_ceil(p.offset().unsigned_abs() + p.half as u128),
            span_ns: (span.saturating_mul(drift)).div_ceil(1_000_000_000),
            page_rate_ppb: rate,
            realtime_rate_ppb: self.rate_ppb.unwrap_or(0),
        };
        let mut bound = terms.maxerror_ns + terms.pairing_ns + terms.span_ns + ROUNDING_NS;
        if let Some(w) = self.cross_widen_ns {
            // |true − REALTIME| ≤ |true − server| + |server − page| + |page − REALTIME|.
            let w = if w.is_finite() { w.max(0.0).ceil().min(i64::MAX as f64) as u128 } else { i64::MAX as u128 };
            bound = bound.max(w + terms.pairing_ns + terms.span_ns + ROUNDING_NS);
        }
        if bound > i64::MAX as u128 / 2 || drift >= MAX_DRIFT_PPB as u128 {
            return Err(Hold::Unbounded);
        }
        Ok((Claim { bound_ns: bound, drift_ppb: drift, page_rate_ppb: rate as u128 }, terms))
    }
}

impl ClockBoundFeed {
    /// The 3.x body (`shm1`) for the observation whose 2.x body `handle` just returned as
    /// `eb`: the same pairing and the same bound, on the page's counter→UTC map (see
    /// [`v3`]). A pairing the 3.x layout cannot express gives Unknown.
    pub fn v3(&mut self, eb: &ErrorBound) -> v3::ErrorBound {
        let claimable = matches!(eb.status, CbStatus::Synchronized | CbStatus::FreeRunning);
        if let Some((_, p, c, page)) = self.claimed.filter(|(as_of, ..)| claimable && *as_of == eb.as_of_ns) {
            if let Some(b) = v3::claimed(&p, &c, &page, self.cfg.life_ns, eb.status) {
                self.last_map = Some(b.map);
                return v3::ErrorBound {
                    disruption_marker: eb.disruption_marker,
                    disruption_support: eb.disruption_support,
                    ..b
                };
            }
        }
        let status = if eb.status == CbStatus::Disrupted { CbStatus::Disrupted } else { CbStatus::Unknown };
        v3::held(self.last_map, status, eb.disruption_marker, eb.disruption_support)
    }
}

pub mod v3;
