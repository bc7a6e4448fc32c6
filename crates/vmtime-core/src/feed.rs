//! Feeds for other time software, sans-IO: what to send to chrony's SOCK refclock and what to
//! write into ClockBound's shared-memory segment, from a page and a burst of
//! (CLOCK_REALTIME, counter, CLOCK_REALTIME) samples.
//!
//! Both feeds share one gate ([`PageGate`]): nothing is measured from a page that is not
//! SYNCHRONIZED or FREERUNNING, gives no UTC (a TAI page needs its TAI offset), or is not for this
//! CPU's counter; a page that changed during the measurement is not used; and after a disruption
//! (the marker changed) the feeds wait until the page is *current*: a later update than the one
//! that carried the new marker, or the page left unchanged for a hold-off (a publisher that
//! writes its new calibration together with the new marker and then only on changes).

use crate::host::kernel_reference;
use crate::AbaSample;
use vmclock::abi::{leap, status};
use vmclock::{Period, Snapshot};

const NS: i128 = 1_000_000_000;
const UNIT: i128 = 1 << 64;

/// One measurement: the page before and after a burst of (REALTIME, counter, REALTIME) samples.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// A consistent copy of the page taken before the burst.
    pub before: Snapshot,
    /// A consistent copy taken after it (the same `seq_count`, or the measurement is void).
    pub after: Snapshot,
    /// The burst (the tightest windows are intersected along the page's period).
    pub samples: &'a [AbaSample],
    /// A monotonic time for the hold-off, ns (any monotonic clock; CLOCK_MONOTONIC here).
    pub mono_ns: i128,
}

/// Why nothing is measured now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The page's status is not SYNCHRONIZED or FREERUNNING (or absent).
    Unreliable,
    /// The page gives no UTC for this CPU's counter (no counter, another counter, a TAI page
    /// without its offset, a MONOTONIC page, or an overflow).
    NoTime,
    /// The page was updated during the measurement.
    ChangedDuringMeasurement,
    /// The disruption marker changed and the new page is not current yet.
    Disrupted,
    /// No samples.
    NoSamples,
    /// The page's UTC is outside the believable range ([`crate::sanity`]: before this program was
    /// written, or beyond what Linux can be set to), or 2^32 s (136 years) or more from
    /// CLOCK_REALTIME.
    OutOfRange,
    /// The page's time jumped beyond its previous bound plus the step limit without a change of
    /// its markers ([`crate::sanity::Continuity`]).
    Jump,
    /// The page cannot be read (missing, short, junk, or its writer is stuck mid-update).
    Unreadable,
    /// CLOCK_REALTIME went backwards inside a sample (stepped back during the measurement).
    RealtimeStepped,
    /// The page gives no maximum error (of its time or of its period): nothing to bound.
    NoMaxError,
    /// The bound would exceed what ClockBound can hold (73 years, or a drift of 100 %).
    Unbounded,
}

impl Hold {
    /// A short description for logs and status.
    pub fn describe(self) -> &'static str {
        match self {
            Hold::Unreliable => "the page is not SYNCHRONIZED or FREERUNNING",
            Hold::NoTime => "the page gives no UTC time for this CPU's counter",
            Hold::ChangedDuringMeasurement => "the page changed during the measurement",
            Hold::Disrupted => "disruption: waiting for the new page to be current",
            Hold::NoSamples => "no samples",
            Hold::OutOfRange => "the page's UTC is before this program was written, beyond what Linux can be set to, or 136 years or more from CLOCK_REALTIME",
            Hold::Jump => "the page's time jumped without a change of its markers",
            Hold::Unreadable => "the page cannot be read",
            Hold::RealtimeStepped => "CLOCK_REALTIME was stepped back during the measurement",
            Hold::NoMaxError => "the page gives no maximum error (of its time and its period) to bound",
            Hold::Unbounded => "the page's maximum error is beyond what a ClockBound segment can hold",
        }
    }
}

/// The page against CLOCK_REALTIME at one counter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pairing {
    /// The counter value.
    pub counter: u64,
    /// CLOCK_REALTIME at the counter, 64.64 s since the epoch (the middle of the intersection).
    pub realtime: i128,
    /// Half-width of the intersection of the windows, 2^-64 s.
    pub half: i128,
    /// The page's UTC at the counter, 64.64 s since the epoch.
    pub page_utc: i128,
    /// The page's maximum error at the counter, 2^-64 s (`None`: the page does not bound it).
    pub maxerror: Option<u128>,
    /// The page's leap indicator.
    pub leap: u8,
    /// The page's status.
    pub status: u8,
    /// The page's disruption marker.
    pub marker: u64,
    /// The page's `seq_count` (which version of the page was measured).
    pub seq: u32,
    /// The page's period maximum error as a rate, ppb rounded up (`None`: not given).
    pub rate_maxerror_ppb: Option<u64>,
}

impl Pairing {
    /// page − CLOCK_REALTIME, 2^-64 s.
    pub fn offset(&self) -> i128 {
        self.page_utc - self.realtime
    }
}

/// The gate both feeds pass through (see the module's documentation).
#[derive(Clone, Debug)]
pub struct PageGate {
    marker: Option<u64>,
    continuity: crate::sanity::Continuity,
    /// (seq_count that carried the new marker, when it was first seen).
    disrupted: Option<(u32, i128)>,
    holdoff_ns: i128,
}

impl PageGate {
    /// A gate; `holdoff_ns` is how long a page that carried a new marker and was not updated
    /// again must stay unchanged before it is taken as current.
    pub fn new(holdoff_ns: i128) -> Self {
        PageGate {
            marker: None,
            continuity: crate::sanity::Continuity::new(crate::sanity::DEFAULT_MAX_JUMP_NS),
            disrupted: None,
            holdoff_ns,
        }
    }

    /// Takes `marker` as the last one seen (from a previous run): a page that comes with
    /// another is a disruption, held until it is current.
    pub fn expect_marker(&mut self, marker: u64) {
        self.marker = Some(marker);
    }

    /// Whether a disruption is pending.
    pub fn disrupted(&self) -> bool {
        self.disrupted.is_some()
    }

    /// Passes an observation through the gate: the pairing, or why not.
    pub fn pass(&mut self, obs: &Observation<'_>) -> Result<Pairing, Hold> {
        let page = &obs.before;
        let marker = page.disruption_marker();
        if self.marker.is_some_and(|m| m != marker) {
            self.disrupted = Some((page.seq_count(), obs.mono_ns));
        }
        self.marker = Some(marker);
        if let Some((seq, since)) = self.disrupted {
            if page.seq_count() == seq && obs.mono_ns - since < self.holdoff_ns {
                return Err(Hold::Disrupted);
            }
            self.disrupted = None;
        }
        if obs.after.seq_count() != page.seq_count() || obs.after.disruption_marker() != marker {
            return Err(Hold::ChangedDuringMeasurement);
        }
        let st = page.clock_status().unwrap_or(status::UNKNOWN);
        if !matches!(st, status::SYNCHRONIZED | status::FREERUNNING) {
            return Err(Hold::Unreliable);
        }
        if page.counter_id() != vmclock::counter::NATIVE {
            return Err(Hold::NoTime);
        }
        let r = page.reference().map_err(|_| Hold::NoTime)?;
        // A sample whose second CLOCK_REALTIME reading is earlier than its first straddles a
        // step back (chronyd's makestep, an administrator): its window is negative, and it and
        // the samples on either side of the step describe two different clocks.
        if obs.samples.iter().any(|s| s.after_ns < s.before_ns) {
            return Err(Hold::RealtimeStepped);
        }
        let k = kernel_reference(obs.samples, Period { frac: r.period, shift: r.shift }, 0).ok_or(Hold::NoSamples)?;
        let utc = page.utc_at(k.counter).map_err(|_| Hold::NoTime)?;
        let page_utc = i128::try_from(utc.time.raw()).map_err(|_| Hold::NoTime)?;
        // chrony drops a sample whose offset is 2^32 s or more or whose time is before 1970
        // (util.c, UTI_IsTimeOffsetSane) without a word, and no ClockBound bound could hold such
        // an offset: a page that far off is held, never sent. This also keeps the feeds' sums
        // of |offset| and the pairing's half-width far from overflowing.
        const MAX_OFFSET: i128 = 1 << 96; // 2^32 s, 64.64
        let in_range = |x: Option<i128>| x.is_some_and(|x| x.abs() < MAX_OFFSET);
        if crate::sanity::check_utc(page_utc).is_err()
            || !in_range(page_utc.checked_sub(k.time))
            || !(0..MAX_OFFSET).contains(&k.half)
        {
            return Err(Hold::OutOfRange);
        }
        // An update that moves time without a marker change is not believed (the same limit as
        // vmtime sync's step limit, beyond the page's own previous bound).
        self.continuity.check(page, k.counter).map_err(|_| Hold::Jump)?;
        let rate_maxerror_ppb = page.period_maxerror().map(|m| {
            // (m / 2^(64+shift)) / (P / 2^(64+shift)) = m / P, in ppb, rounded up.
            if r.period == 0 {
                u64::MAX
            } else {
                (m as u128 * 1_000_000_000).div_ceil(r.period as u128).min(u64::MAX as u128) as u64
            }
        });
        Ok(Pairing {
            counter: k.counter,
            realtime: k.time,
            half: k.half,
            page_utc,
            maxerror: utc.maxerror,
            leap: page.leap_indicator().unwrap_or(leap::NONE),
            status: st,
            marker,
            seq: page.seq_count(),
            rate_maxerror_ppb,
        })
    }
}

impl PageGate {
    /// A new hold-off (the feed's interval changed on SIGHUP); a pending disruption keeps the
    /// time it was first seen.
    pub fn set_holdoff_ns(&mut self, holdoff_ns: i128) {
        self.holdoff_ns = holdoff_ns;
    }
}

/// 64.64 seconds → ns, rounded up (for bounds).
fn frac_to_ns_ceil(x: u128) -> u128 {
    vmclock::snapshot::frac_to_nanos_ceil(x)
}

pub mod chrony {
    //! chrony's SOCK refclock.
    //!
    //! chronyd creates the socket (`refclock SOCK PATH` in chrony.conf) and reads datagrams of
    //! `struct sock_sample`: a `struct timeval` (the system time of the measurement), a `double`
    //! offset in seconds (reference − system time), `int pulse` (0 here), `int leap` (0 normal,
    //! 1 insert, 2 delete), an ignored `int` and `int magic` = 0x534f434b, native-endian with
    //! the C layout (40 bytes on LP64 Linux).
    use super::*;

    /// The magic number ("SOCK").
    pub const MAGIC: i32 = 0x534f_434b;
    /// The datagram's size on LP64 Linux.
    pub const SAMPLE_SIZE: usize = 40;

    /// One sample.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct SockSample {
        /// System time of the measurement, s.
        pub tv_sec: i64,
        /// Its µs.
        pub tv_usec: i64,
        /// Reference − system time, s.
        pub offset: f64,
        /// 0: the sample carries whole seconds.
        pub pulse: i32,
        /// 0 normal, 1 insert, 2 delete.
        pub leap: i32,
    }

    impl SockSample {
        /// The datagram (native byte order, C layout).
        pub fn to_bytes(&self) -> [u8; SAMPLE_SIZE] {
            let mut b = [0u8; SAMPLE_SIZE];
            b[0..8].copy_from_slice(&self.tv_sec.to_ne_bytes());
            b[8..16].copy_from_slice(&self.tv_usec.to_ne_bytes());
            b[16..24].copy_from_slice(&self.offset.to_ne_bytes());
            b[24..28].copy_from_slice(&self.pulse.to_ne_bytes());
            b[28..32].copy_from_slice(&self.leap.to_ne_bytes());
            // 32..36: padding, ignored.
            b[36..40].copy_from_slice(&MAGIC.to_ne_bytes());
            b
        }
    }

    /// chrony's leap value for a page's leap indicator: insert while a positive leap second is
    /// announced or under way, delete while a negative one is announced.
    pub fn leap_of(indicator: u8) -> i32 {
        match indicator {
            leap::PRE_POS | leap::POS => 1,
            leap::PRE_NEG => 2,
            _ => 0,
        }
    }

    /// The sample for a pairing: labelled with CLOCK_REALTIME at the counter (truncated to µs),
    /// offset = page UTC − CLOCK_REALTIME at the same counter.
    pub fn sample_of(p: &Pairing) -> SockSample {
        let sec = p.realtime >> 64;
        let usec = ((p.realtime & (UNIT - 1)) * 1_000_000) >> 64;
        SockSample {
            tv_sec: sec as i64,
            tv_usec: usec as i64,
            offset: p.offset() as f64 / UNIT as f64,
            pulse: 0,
            leap: leap_of(p.leap),
        }
    }

    /// What to do at a send slot.
    #[derive(Clone, Copy, Debug, PartialEq)]
    #[must_use]
    pub enum ChronyAction {
        /// Send this sample.
        Send(SockSample),
        /// Send nothing, for this reason.
        Hold(Hold),
    }

    /// The chrony feed: one decision per send slot (every `--interval-ms`).
    #[derive(Clone, Debug)]
    pub struct ChronyFeed {
        gate: PageGate,
        /// Samples sent.
        pub sent: u64,
        /// Slots held.
        pub held: u64,
        /// The last reason for holding.
        pub last_hold: Option<Hold>,
        /// The last offset sent, ns.
        pub last_offset_ns: Option<f64>,
    }

    impl ChronyFeed {
        /// A feed whose send interval is `interval_ns` (a page unchanged for two intervals after
        /// a disruption is taken as current).
        pub fn new(interval_ns: i128) -> Self {
            ChronyFeed { gate: PageGate::new(2 * interval_ns), sent: 0, held: 0, last_hold: None, last_offset_ns: None }
        }

        /// A new send interval (SIGHUP): the hold-off after a disruption follows it (two
        /// intervals).
        pub fn set_interval_ns(&mut self, interval_ns: i128) {
            self.gate.set_holdoff_ns(2 * interval_ns);
        }

        /// Whether a disruption is pending (the page is not current yet): the next page is
        /// urgent ([`crate::cadence::Look::observe_now`]).
        pub fn disruption_pending(&self) -> bool {
            self.gate.disrupted()
        }

        /// One send slot.
        pub fn handle(&mut self, obs: &Observation<'_>) -> ChronyAction {
            match self.gate.pass(obs) {
                Ok(p) => {
                    let s = sample_of(&p);
                    self.sent += 1;
                    self.last_offset_ns = Some(s.offset * 1e9);
                    ChronyAction::Send(s)
                }
                Err(h) => {
                    self.held += 1;
                    self.last_hold = Some(h);
                    ChronyAction::Hold(h)
                }
            }
        }
    }
}

pub mod clockbound {
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
            let span =
                match (obs.samples.iter().map(|s| s.before_ns).min(), obs.samples.iter().map(|s| s.after_ns).max()) {
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

    pub mod v3 {
        //! ClockBound 3.x's segment (`/var/run/clockbound/shm1`), as the published crate
        //! clock-bound 3.0.0-rc.0 defines it (src/shm.rs `ClockErrorBoundV3`, src/shm/shm_header.rs,
        //! src/shm/reader.rs), native-endian, C layout. The header is 2.x's with segsize 104 and
        //! the version word 0x0303 (minimum version 3 in the high byte, current version 3 in the
        //! low byte); the 3.x client refuses any segment whose range does not include 3, so it
        //! reads `shm1` only, and a 2.x client refuses `shm1`.
        //!
        //! | offset | field | |
        //! |---|---|---|
        //! | 16 | as_of_tsc: u64 | counter value of the update |
        //! | 24 | as_of: timespec | UTC (POSIX) at as_of_tsc |
        //! | 40 | void_after: timespec | UTC after which nothing holds |
        //! | 56 | period_frac: u64 | period = period_frac / 2^(64 + period_shift) s per tick |
        //! | 64 | period_err_frac: u64 | relative period error = period_err_frac / 2^(64 + period_err_shift) |
        //! | 72 | bound_nsec: i64 | bound on the error of the time at as_of_tsc |
        //! | 80 | disruption_marker: u64 | |
        //! | 88 | max_drift_ppb: u32 | growth of the bound per second (the client refuses ≥ 1e9) |
        //! | 92 | clock_status: i32 | 0 Unknown, 1 Synchronized, 2 FreeRunning, 3 Disrupted |
        //! | 96 | clock_disruption_support_enabled: bool | |
        //! | 97 | period_shift: u8 | |
        //! | 98 | period_err_shift: u8 | |
        //! | 99 | padding [u8; 5] | |
        //!
        //! The client never reads CLOCK_REALTIME: it reads the counter (LFENCE; RDTSC; LFENCE on
        //! x86_64, ISB; CNTVCT_EL0 on arm64), Δ = counter − as_of_tsc (0 if negative), and in
        //! f64 computes t = as_of + Δ·period (truncated to ns) and the bound
        //! bound_nsec + Δ·period·max_drift_ppb + Δ·period·period_err (truncated). It keeps an
        //! Unknown or Disrupted status; otherwise it says Unknown once t > void_after,
        //! FreeRunning once t > as_of + 60 s, else the status written.
        //!
        //! vmtime writes the page's own counter→UTC map, anchored at the pairing's counter: the
        //! page's UTC there (`as_of`, floored to the ns), its period (the same fixed-point format
        //! as vmclock's, copied as is) and its period maximum error as `period_err`. The bound is
        //! the 2.x segment's (the page's maxerror at that counter + |page − CLOCK_REALTIME| + the
        //! pairing's half-width + the burst's span × drift + the safety margin) and grows at
        //! least as fast; see [`claimed`] for why the window then holds both the page's interval
        //! and CLOCK_REALTIME.
        use super::*;

        /// The version word: minimum 3, current 3.
        pub const VERSION: u16 = 0x0303;
        /// The body's size.
        pub const BODY_SIZE: usize = 88;
        /// The segment's size.
        pub const SEGMENT_SIZE: usize = HEADER_SIZE + BODY_SIZE;
        /// The layout.
        pub const LAYOUT: Layout = Layout { version: VERSION, body_size: BODY_SIZE, name: "ClockBound 3 segment" };
        /// The client says FreeRunning this long after as_of (clock-bound src/shm.rs).
        pub const FREE_RUNNING_GRACE_NS: i128 = 60 * NS;
        /// Added to the bound for the client's roundings: as_of floored to the ns (< 1 ns), its
        /// time truncated to the ns (< 1 ns), its bound truncated to the ns (< 1 ns), and f64
        /// products (relative 2^-50 at most: < 0.01 ns over an hour).
        pub const ROUNDING_NS: u128 = 4;
        /// The latest as_of written: the client computes in i64 ns (it would overflow in 2262);
        /// a page further out gives Unknown.
        pub const MAX_AS_OF_NS: i128 = i64::MAX as i128 - 2 * 3600 * NS;

        /// The counter→UTC map of a body.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Map {
            /// Counter value at as_of.
            pub as_of_counter: u64,
            /// UTC at that counter, ns since the epoch.
            pub as_of_ns: i128,
            /// The period, 2^-(64 + period_shift) s per tick.
            pub period_frac: u64,
            /// Its shift.
            pub period_shift: u8,
        }

        /// The segment's body (`ClockErrorBoundV3`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct ErrorBound {
            /// The map.
            pub map: Map,
            /// UTC after which the segment is void, ns.
            pub void_after_ns: i128,
            /// The period's relative error, 2^-(64 + period_err_shift).
            pub period_err_frac: u64,
            /// Its shift.
            pub period_err_shift: u8,
            /// Bound at as_of, ns.
            pub bound_ns: i64,
            /// The page's disruption marker.
            pub disruption_marker: u64,
            /// Growth of the bound beyond the period error, ppb.
            pub max_drift_ppb: u32,
            /// The status.
            pub status: CbStatus,
            /// Whether clients compare the marker with their vmclock device's.
            pub disruption_support: bool,
        }

        impl ErrorBound {
            /// The body's bytes (native byte order, C layout).
            pub fn to_bytes(&self) -> [u8; BODY_SIZE] {
                let mut b = [0u8; BODY_SIZE];
                b[0..8].copy_from_slice(&self.map.as_of_counter.to_ne_bytes());
                timespec(self.map.as_of_ns, &mut b[8..24]);
                timespec(self.void_after_ns, &mut b[24..40]);
                b[40..48].copy_from_slice(&self.map.period_frac.to_ne_bytes());
                b[48..56].copy_from_slice(&self.period_err_frac.to_ne_bytes());
                b[56..64].copy_from_slice(&self.bound_ns.to_ne_bytes());
                b[64..72].copy_from_slice(&self.disruption_marker.to_ne_bytes());
                b[72..76].copy_from_slice(&self.max_drift_ppb.to_ne_bytes());
                b[76..80].copy_from_slice(&(self.status as i32).to_ne_bytes());
                b[80] = self.disruption_support as u8;
                b[81] = self.map.period_shift;
                b[82] = self.period_err_shift;
                b
            }
        }

        /// 64.64 s → ns, floored.
        fn floor_ns(x: i128) -> i128 {
            (x >> 64) * NS + (((x & (UNIT - 1)) * NS) >> 64)
        }

        /// num / den (< 1) rounded up, as frac / 2^(64 + shift) with the largest shift that keeps
        /// frac in a u64 (the significant bits kept, as ClockBound's own `PeriodFrac` does).
        pub fn ratio_ceil(num: u64, den: u64) -> Option<(u64, u8)> {
            if num >= den {
                return None;
            }
            if num == 0 {
                return Some((0, 0));
            }
            // num/den ≥ 2^-(d+1) with d = lz(num) − lz(den): a shift of d − 1 keeps it below 1 and
            // (num << (64 + shift)) below 2^(127 − lz(den)), within a u128.
            let mut shift = (num.leading_zeros() - den.leading_zeros()).saturating_sub(1);
            loop {
                let frac = ((num as u128) << (64 + shift)).div_ceil(den as u128);
                match u64::try_from(frac) {
                    Ok(f) => return Some((f, shift as u8)),
                    Err(_) if shift > 0 => shift -= 1,
                    Err(_) => return None,
                }
            }
        }

        /// The body for a claimed pairing `p` (bound `c`) of `page`, or `None` when the layout
        /// cannot express it (no period or a period error ≥ 1, a time beyond i64 ns, a drift
        /// the client refuses).
        ///
        /// Why it is honest for what the 3.x client computes: at a counter C ≥ as_of_tsc the
        /// page says true UTC lies within page(C) ± (maxerror(Cp) + Pm·(C − Cp)) (the spec's
        /// bound, grown from the pairing's counter Cp by the period's maximum error Pm). The
        /// client's t is page(C) itself (the same period from the same point; its roundings
        /// are in `ROUNDING_NS`), and its bound is bound_nsec + (C − Cp)·P·(period_err +
        /// max_drift): with period_err ≥ Pm/P and bound_nsec ≥ maxerror(Cp), the page's whole
        /// interval is inside. CLOCK_REALTIME is inside too, as in the 2.x segment: at Cp,
        /// |page − REALTIME| ≤ |offset| + half-width + span term ≤ bound_nsec − maxerror, and
        /// it moves apart by at most the measured rate + the margin, which `max_drift_ppb`
        /// carries (the page's own rate error is in `period_err` instead, so the total growth
        /// equals the 2.x segment's; 1 ppb and drift² are added for the client measuring
        /// elapsed time with the page's period rather than CLOCK_REALTIME's). A leap second
        /// the page announces would step UTC where the client's linear map does not: the
        /// segment is void from a second before the edge to a second after.
        pub fn claimed(p: &Pairing, c: &Claim, page: &Snapshot, life_ns: i128, status: CbStatus) -> Option<ErrorBound> {
            let r = page.reference().ok()?;
            let pm = r.maxerror.rate?;
            if r.period == 0 || pm >= r.period {
                return None;
            }
            let (period_err_frac, period_err_shift) = ratio_ceil(pm, r.period)?;
            let as_of_ns = floor_ns(p.page_utc);
            if !(0..=MAX_AS_OF_NS).contains(&as_of_ns) || !(0..=3600 * NS).contains(&life_ns) {
                return None;
            }
            let mut void_after_ns = as_of_ns + life_ns;
            if let Some(e) = page.leap_edge() {
                let edge = e.at_sec as i128 * NS;
                if void_after_ns > edge - NS && as_of_ns < edge + NS {
                    void_after_ns = as_of_ns.max(edge - NS);
                }
            }
            let drift = c.drift_ppb - c.page_rate_ppb.min(c.drift_ppb)
                + (c.drift_ppb * c.drift_ppb).div_ceil(1_000_000_000)
                + 1;
            if drift >= MAX_DRIFT_PPB as u128 || c.bound_ns + ROUNDING_NS > i64::MAX as u128 / 2 {
                return None;
            }
            Some(ErrorBound {
                map: Map { as_of_counter: p.counter, as_of_ns, period_frac: r.period, period_shift: r.shift },
                void_after_ns,
                period_err_frac,
                period_err_shift,
                bound_ns: (c.bound_ns + ROUNDING_NS) as i64,
                disruption_marker: p.marker,
                max_drift_ppb: drift as u32,
                status,
                disruption_support: false,
            })
        }

        /// A body that claims nothing (`status` Unknown or Disrupted), on the last map if any
        /// (as ClockBound's daemon keeps its last parameters when it marks them Disrupted).
        pub fn held(
            map: Option<Map>,
            status: CbStatus,
            disruption_marker: u64,
            disruption_support: bool,
        ) -> ErrorBound {
            let map = map.unwrap_or_default();
            ErrorBound {
                map,
                void_after_ns: map.as_of_ns,
                period_err_frac: 0,
                period_err_shift: 0,
                bound_ns: 0,
                disruption_marker,
                max_drift_ppb: 0,
                status,
                disruption_support,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chrony::*;
    use super::clockbound::*;
    use super::*;
    use vmclock::abi::{counter_id, time_type};
    use vmclock::{PageBuilder, Timestamp, Utc};

    const HZ: u64 = 1_000_000_000;
    const T0: i128 = 1_790_000_000 * NS;

    /// A 1 GHz page on this CPU's counter: UTC `T0 + offset_ns` at counter 1e9.
    fn page(seq_bump: u32, marker: u64, st: u8, offset_ns: i128, leap_ind: u8) -> Snapshot {
        let t = Timestamp::<Utc>::from_raw(crate::ns_to_frac(T0 + offset_ns, false) as u128);
        let b = PageBuilder::new()
            .reference(vmclock::counter::NATIVE, 1_000_000_000, t, Period::from_hz(HZ).unwrap())
            .status(st)
            .leap(leap_ind)
            .maxerror(1_000, 1 << 20)
            .disruption_marker(marker)
            .build();
        let mut s = Snapshot::new(b, 4096).unwrap().to_bytes();
        s[12..16].copy_from_slice(&(2 * seq_bump).to_le_bytes());
        Snapshot::decode(&s, 4096).unwrap()
    }

    /// Samples whose REALTIME is T0 at counter 1e9 (± 10 ns windows).
    fn samples() -> Vec<AbaSample> {
        (0..8u64)
            .map(|i| {
                let c = 1_000_000_000 + i * 1000;
                let t = T0 + (i * 1000) as i128;
                AbaSample { before_ns: t - 10, counter: c, after_ns: t + 10 }
            })
            .collect()
    }

    fn obs<'a>(p: Snapshot, s: &'a [AbaSample], mono_ns: i128) -> Observation<'a> {
        Observation { before: p, after: p, samples: s, mono_ns }
    }

    #[test]
    fn chrony_sample_layout_and_offset_sign() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ChronyFeed::new(NS);
        // The page is 250 µs ahead of CLOCK_REALTIME: chrony must be told reference − system = +250 µs.
        let ChronyAction::Send(x) = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 250_000, 0), &s, 0)) else {
            panic!("held")
        };
        assert!((x.offset - 250e-6).abs() < 20e-9, "offset {}", x.offset);
        // Labelled with CLOCK_REALTIME at the counter, truncated to the µs.
        let label = x.tv_sec as i128 * NS + x.tv_usec as i128 * 1000;
        assert!((T0 - 1_020..=T0).contains(&label), "label {label}");
        assert!((0..1_000_000).contains(&x.tv_usec));
        let b = x.to_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(i32::from_ne_bytes(b[36..40].try_into().unwrap()), 0x534f434b);
        assert_eq!(f64::from_ne_bytes(b[16..24].try_into().unwrap()), x.offset);
        assert_eq!(i64::from_ne_bytes(b[0..8].try_into().unwrap()), x.tv_sec);
        // Behind: negative.
        let ChronyAction::Send(y) = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, -3_000, 0), &s, 1)) else {
            panic!("held")
        };
        assert!((y.offset + 3e-6).abs() < 20e-9, "offset {}", y.offset);
    }

    #[test]
    fn chrony_leap_mapping() {
        assert_eq!(leap_of(leap::NONE), 0);
        assert_eq!(leap_of(leap::PRE_POS), 1);
        assert_eq!(leap_of(leap::POS), 1);
        assert_eq!(leap_of(leap::PRE_NEG), 2);
        assert_eq!(leap_of(leap::POST_POS), 0);
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ChronyFeed::new(NS);
        let ChronyAction::Send(x) = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, leap::PRE_POS), &s, 0)) else {
            panic!("held")
        };
        assert_eq!(x.leap, 1);
    }

    #[test]
    fn chrony_holds_while_unreliable_and_after_a_disruption() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ChronyFeed::new(NS);
        for st in [status::UNKNOWN, status::INITIALIZING, status::UNRELIABLE] {
            assert_eq!(f.handle(&obs(page(1, 7, st, 0, 0), &s, 0)), ChronyAction::Hold(Hold::Unreliable));
        }
        assert!(matches!(f.handle(&obs(page(1, 7, status::FREERUNNING, 0, 0), &s, 0)), ChronyAction::Send(_)));
        // The marker changes (seq 2): nothing until a later update …
        let disrupted = page(2, 8, status::SYNCHRONIZED, 0, 0);
        assert_eq!(f.handle(&obs(disrupted, &s, NS)), ChronyAction::Hold(Hold::Disrupted));
        assert_eq!(f.handle(&obs(disrupted, &s, 2 * NS)), ChronyAction::Hold(Hold::Disrupted));
        // … (seq 3) which is current.
        assert!(matches!(f.handle(&obs(page(3, 8, status::SYNCHRONIZED, 0, 0), &s, 2 * NS)), ChronyAction::Send(_)));
        // Another disruption on a page never updated again: current after the hold-off (2 intervals).
        let again = page(4, 9, status::SYNCHRONIZED, 0, 0);
        assert_eq!(f.handle(&obs(again, &s, 10 * NS)), ChronyAction::Hold(Hold::Disrupted));
        assert_eq!(f.handle(&obs(again, &s, 11 * NS)), ChronyAction::Hold(Hold::Disrupted));
        assert!(matches!(f.handle(&obs(again, &s, 12 * NS)), ChronyAction::Send(_)));
        // A page updated during the measurement is not used.
        let o = Observation {
            before: page(5, 9, status::SYNCHRONIZED, 0, 0),
            after: page(6, 9, status::SYNCHRONIZED, 0, 0),
            samples: &s,
            mono_ns: 13 * NS,
        };
        assert_eq!(f.handle(&o), ChronyAction::Hold(Hold::ChangedDuringMeasurement));
        assert_eq!(
            f.handle(&obs(page(6, 9, status::SYNCHRONIZED, 0, 0), &[], 13 * NS)),
            ChronyAction::Hold(Hold::NoSamples)
        );
    }

    /// Issue 20, item 6: the chrony feed hands chronyd no offset from a page claiming 1970, and
    /// none from a page whose time jumped an hour without a marker change.
    #[test]
    fn chrony_holds_a_page_outside_the_range_and_a_jump_without_a_marker_change() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ChronyFeed::new(NS);
        assert!(matches!(f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0)), ChronyAction::Send(_)));
        // SYNCHRONIZED, claiming 1970 (and within chrony's own 2^32 s limit).
        let at_1970 = page(2, 7, status::SYNCHRONIZED, -T0 + 5 * NS, 0);
        assert_eq!(f.handle(&obs(at_1970, &s, NS)), ChronyAction::Hold(Hold::OutOfRange));
        // Even with a new marker, once current.
        let at_1970 = page(3, 8, status::SYNCHRONIZED, -T0 + 5 * NS, 0);
        let _ = f.handle(&obs(at_1970, &s, 2 * NS));
        assert_eq!(f.handle(&obs(at_1970, &s, 5 * NS)), ChronyAction::Hold(Hold::OutOfRange));
        assert!(matches!(f.handle(&obs(page(4, 8, status::SYNCHRONIZED, 0, 0), &s, 6 * NS)), ChronyAction::Send(_)));
        // One hour ahead, the markers unchanged: held, update after update.
        for seq in 5..8 {
            let ahead = page(seq, 8, status::SYNCHRONIZED, 3600 * NS, 0);
            assert_eq!(f.handle(&obs(ahead, &s, seq as i128 * NS)), ChronyAction::Hold(Hold::Jump));
        }
        // 1 s (a missed leap second) is within the limit.
        assert!(matches!(f.handle(&obs(page(8, 8, status::SYNCHRONIZED, NS, 0), &s, 8 * NS)), ChronyAction::Send(_)));
        // The same hour with a new marker: sent once the page is current.
        let ahead = page(9, 9, status::SYNCHRONIZED, 3600 * NS, 0);
        assert_eq!(f.handle(&obs(ahead, &s, 9 * NS)), ChronyAction::Hold(Hold::Disrupted));
        let ChronyAction::Send(x) = f.handle(&obs(page(10, 9, status::SYNCHRONIZED, 3600 * NS, 0), &s, 10 * NS)) else {
            panic!("held")
        };
        assert!((x.offset - 3600.0).abs() < 1e-6, "{}", x.offset);
    }

    /// Issue 20, the adversarial pass over the feeds' gate: page sequences with time jumps with
    /// and without marker changes, status and time_type flips, extreme times: every sample sent
    /// is in the believable range, and none moves more than the step limit (plus the page's
    /// bound) from the last one sent unless the marker changed in between.
    #[test]
    fn hostile_page_sequences_never_reach_chrony() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut sent_total = 0;
        let mut held_jump = 0;
        for seed in 1..=8u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut f = ChronyFeed::new(NS);
            let (mut marker, mut off) = (7u64, 0i128);
            let mut last_sent: Option<(f64, u64)> = None;
            for i in 1..400u32 {
                let r = next();
                if r % 5 == 0 {
                    off = match next() % 5 {
                        0 => 3_600 * NS,
                        1 => -T0 + NS, // 1970
                        2 => (next() % 1_000_000) as i128 * 86_400 * NS,
                        3 => (next() % 4_000_000_000) as i128 - 2_000_000_000,
                        _ => 0,
                    };
                }
                if r % 9 == 0 {
                    marker += 1;
                }
                let mut b = page(i, marker, status::SYNCHRONIZED, off, 0).to_bytes();
                match next() % 8 {
                    0 => b[34] = next() as u8,       // clock_status
                    1 => b[11] = (next() % 6) as u8, // time_type
                    2 => b[39] = next() as u8,       // counter_period_shift
                    3 => b[72..80].fill(0xff),       // time_sec
                    4 => b[96..104].fill(0xff),      // time_maxerror_nanosec
                    _ => {}
                }
                let Ok(p) = Snapshot::decode(&b, 4096) else { continue };
                let got = f.handle(&obs(p, &s, i as i128 * NS));
                match got {
                    ChronyAction::Send(x) => {
                        sent_total += 1;
                        let utc_s = T0 / NS + x.offset as i128;
                        assert!(
                            (crate::sanity::EARLIEST_UNIX_S as i128..crate::sanity::LATEST_UNIX_S as i128)
                                .contains(&utc_s),
                            "seed {seed} step {i}: sent {x:?}"
                        );
                        if let Some((o, m)) = last_sent {
                            if m == p.disruption_marker() {
                                assert!(
                                    (x.offset - o).abs() <= 2.001,
                                    "seed {seed} step {i}: {o} -> {} without a marker change",
                                    x.offset
                                );
                            }
                        }
                        last_sent = Some((x.offset, p.disruption_marker()));
                    }
                    ChronyAction::Hold(Hold::Jump) => held_jump += 1,
                    ChronyAction::Hold(_) => {}
                }
            }
        }
        assert!(sent_total > 200 && held_jump > 20, "sent {sent_total}, held for a jump {held_jump}");
    }

    /// The cross-check reaches the ClockBound segment: while it disagrees, the bound covers the
    /// disagreement and the status is FreeRunning; then back to the page's own bound.
    #[test]
    fn a_disagreeing_cross_check_widens_the_clockbound_bound() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        let p = page(1, 7, status::SYNCHRONIZED, 0, 0);
        let eb = f.handle(&obs(p, &s, 0), 0);
        assert_eq!(eb.status, CbStatus::Synchronized);
        assert!(eb.bound_ns < 10_000, "{}", eb.bound_ns);
        f.set_cross_check(Some(50_100_000.0));
        let eb = f.handle(&obs(page(2, 7, status::SYNCHRONIZED, 0, 0), &s, NS), NS);
        assert_eq!(eb.status, CbStatus::FreeRunning);
        assert!((50_100_000..50_110_000).contains(&eb.bound_ns), "{}", eb.bound_ns);
        let v3 = f.v3(&eb);
        assert!(v3.bound_ns >= 50_100_000 && v3.status == CbStatus::FreeRunning, "shm1 too: {v3:?}");
        f.set_cross_check(None);
        let eb = f.handle(&obs(page(3, 7, status::SYNCHRONIZED, 0, 0), &s, 2 * NS), 2 * NS);
        assert_eq!(eb.status, CbStatus::Synchronized);
        assert!(eb.bound_ns < 10_000);
    }

    #[test]
    fn chrony_refuses_a_page_without_utc() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let t = Timestamp::<vmclock::Tai>::from_raw((T0 as u128) << 64);
        let b = PageBuilder::new()
            .reference(vmclock::counter::NATIVE, 0, t, Period::from_hz(HZ).unwrap())
            .status(status::SYNCHRONIZED)
            .build();
        let p = Snapshot::new(b, 4096).unwrap();
        assert_eq!(p.time_type(), time_type::TAI);
        let s = samples();
        assert_eq!(ChronyFeed::new(NS).handle(&obs(p, &s, 0)), ChronyAction::Hold(Hold::NoTime));
    }

    #[test]
    fn clockbound_layout() {
        let h = header_bytes(4);
        assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), 0x414D5A4E);
        assert_eq!(u32::from_ne_bytes(h[4..8].try_into().unwrap()), 0x43420200);
        assert_eq!(u32::from_ne_bytes(h[8..12].try_into().unwrap()), 80);
        assert_eq!(u16::from_ne_bytes(h[12..14].try_into().unwrap()), 2);
        assert_eq!(u16::from_ne_bytes(h[14..16].try_into().unwrap()), 4);
        let eb = ErrorBound {
            as_of_ns: 5 * NS + 7,
            void_after_ns: 10 * NS,
            bound_ns: 1234,
            disruption_marker: 0xdead,
            max_drift_ppb: 15_000,
            status: CbStatus::FreeRunning,
            disruption_support: true,
        };
        let b = eb.to_bytes();
        assert_eq!(i64::from_ne_bytes(b[0..8].try_into().unwrap()), 5);
        assert_eq!(i64::from_ne_bytes(b[8..16].try_into().unwrap()), 7);
        assert_eq!(i64::from_ne_bytes(b[16..24].try_into().unwrap()), 10);
        assert_eq!(i64::from_ne_bytes(b[32..40].try_into().unwrap()), 1234);
        assert_eq!(u64::from_ne_bytes(b[40..48].try_into().unwrap()), 0xdead);
        assert_eq!(u32::from_ne_bytes(b[48..52].try_into().unwrap()), 15_000);
        assert_eq!(i32::from_ne_bytes(b[52..56].try_into().unwrap()), 2);
        assert_eq!(b[56], 1);
    }

    #[test]
    fn clockbound_bound_is_honest_and_status_follows_the_page() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        // Page 40 µs ahead of REALTIME, maxerror 1 µs: the bound covers both and the window.
        let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 40_000, 0), &s, 0), 100);
        assert_eq!(eb.status, CbStatus::Synchronized);
        assert!(eb.bound_ns >= 41_000 + ROUNDING_NS as i64, "bound {}", eb.bound_ns);
        assert!(eb.bound_ns <= 41_030 + ROUNDING_NS as i64, "bound {} is not tight", eb.bound_ns);
        let allowance = 4 * ClockBoundConfig::default().coarse_tick_ns;
        assert_eq!(eb.as_of_ns, 100 - allowance);
        assert_eq!(eb.void_after_ns, 100 - allowance + 5 * NS);
        assert_eq!(eb.disruption_marker, 7);
        // Drift: the page's rate error (2^20 / 2^64·2^29… as ppb) + the 15 ppm margin.
        assert!(eb.max_drift_ppb >= 15_000);
        let fr = f.handle(&obs(page(2, 7, status::FREERUNNING, 40_000, 0), &s, 1), 200);
        assert_eq!(fr.status, CbStatus::FreeRunning);
        assert_eq!(f.handle(&obs(page(3, 7, status::UNKNOWN, 0, 0), &s, 2), 300).status, CbStatus::Unknown);
        // Disruption: Disrupted with the new marker, until the page is current.
        let d = f.handle(&obs(page(4, 8, status::SYNCHRONIZED, 0, 0), &s, 3), 400);
        assert_eq!((d.status, d.disruption_marker), (CbStatus::Disrupted, 8));
        let ok = f.handle(&obs(page(5, 8, status::SYNCHRONIZED, 0, 0), &s, 4), 500);
        assert_eq!((ok.status, ok.disruption_marker), (CbStatus::Synchronized, 8));
    }

    #[test]
    fn clockbound_measures_realtime_drift_against_the_page() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let mut f = ClockBoundFeed::new(ClockBoundConfig { drift_margin_ppb: 0, ..ClockBoundConfig::default() });
        let s = samples();
        f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), 0);
        // One second later REALTIME has gained 20 µs on the page (20 ppm).
        let later: Vec<AbaSample> = s
            .iter()
            .map(|x| AbaSample {
                before_ns: x.before_ns + NS + 20_000,
                counter: x.counter + HZ,
                after_ns: x.after_ns + NS + 20_000,
            })
            .collect();
        let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &later, 1), NS);
        let r = f.rate_ppb.unwrap();
        assert!((20_000..20_100).contains(&r), "rate {r}");
        assert!(eb.max_drift_ppb as u64 >= r);
        assert!(eb.bound_ns >= 21_000);
    }

    /// What the ClockBound 3.x client computes from a body at a counter value (clock-bound
    /// 3.0.0-rc.0, src/shm.rs, `compute_bound_at_tsc`): f64 arithmetic, truncations to the ns.
    fn client3_window(b: &v3::ErrorBound, counter: u64) -> (i128, i128) {
        let period = b.map.period_frac as f64 / 2f64.powi(64 + b.map.period_shift as i32);
        let period_err = b.period_err_frac as f64 / 2f64.powi(64 + b.period_err_shift as i32);
        let ticks = counter.saturating_sub(b.map.as_of_counter) as f64;
        let (dur_s, dur_ns) = (ticks * period, ticks * period * 1e9);
        let now = b.map.as_of_ns + dur_ns as i64 as i128;
        let bound = (b.bound_ns as f64 + dur_s * b.max_drift_ppb as f64 + dur_ns * period_err) as i64 as i128;
        (now - bound, now + bound)
    }

    #[test]
    fn clockbound3_layout() {
        let h = v3::LAYOUT.header_bytes(6);
        assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), 0x414D5A4E);
        assert_eq!(u32::from_ne_bytes(h[4..8].try_into().unwrap()), 0x43420200);
        assert_eq!(u32::from_ne_bytes(h[8..12].try_into().unwrap()), 104);
        assert_eq!(u16::from_ne_bytes(h[12..14].try_into().unwrap()), 0x0303);
        assert_eq!(u16::from_ne_bytes(h[14..16].try_into().unwrap()), 6);
        assert_eq!((v3::BODY_SIZE, v3::SEGMENT_SIZE, v3::LAYOUT.segment_size()), (88, 104, 104));
        assert_eq!(LAYOUT_V2.header_bytes(4), header_bytes(4));
        let b = v3::ErrorBound {
            map: v3::Map { as_of_counter: 0x1122_3344, as_of_ns: 5 * NS + 7, period_frac: 0xabcd, period_shift: 29 },
            void_after_ns: 10 * NS + 9,
            period_err_frac: 0x77,
            period_err_shift: 3,
            bound_ns: 1234,
            disruption_marker: 0xdead,
            max_drift_ppb: 15_000,
            status: CbStatus::Disrupted,
            disruption_support: true,
        }
        .to_bytes();
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u64_at(0), 0x1122_3344);
        assert_eq!((i64_at(8), i64_at(16)), (5, 7));
        assert_eq!((i64_at(24), i64_at(32)), (10, 9));
        assert_eq!((u64_at(40), u64_at(48)), (0xabcd, 0x77));
        assert_eq!(i64_at(56), 1234);
        assert_eq!(u64_at(64), 0xdead);
        assert_eq!(u32::from_ne_bytes(b[72..76].try_into().unwrap()), 15_000);
        assert_eq!(i32::from_ne_bytes(b[76..80].try_into().unwrap()), 3);
        assert_eq!((b[80], b[81], b[82]), (1, 29, 3));
        assert!(b[83..].iter().all(|&x| x == 0));
    }

    #[test]
    fn clockbound3_maps_the_page_with_the_2x_bound() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        // Page 40 µs ahead of REALTIME, maxerror 1 µs, period maxerror 2^20 (≈ 0.1 ppb).
        let pg = page(1, 7, status::SYNCHRONIZED, 40_000, 0);
        let eb = f.handle(&obs(pg, &s, 0), 100);
        let b = f.v3(&eb);
        assert_eq!((b.status, b.disruption_marker, b.disruption_support), (CbStatus::Synchronized, 7, false));
        // The map is the page's, anchored at one of the burst's counters.
        let r = pg.reference().unwrap();
        assert_eq!((b.map.period_frac, b.map.period_shift), (r.period, r.shift));
        let c = b.map.as_of_counter;
        assert!(s.iter().any(|x| x.counter == c), "as_of_tsc {c} is not a burst counter");
        let utc = pg.utc_at(c).unwrap();
        assert_eq!(b.map.as_of_ns, utc.time.as_nanos() as i128, "as_of is the page's UTC there, floored");
        let exact = T0 + 40_000 + (c - 1_000_000_000) as i128; // the fixed-point period is a hair short of 1 ns
        assert!((exact - 2..=exact).contains(&b.map.as_of_ns), "as_of {} vs {exact}", b.map.as_of_ns);
        // period_err = Pm / P, rounded up (never below).
        let pe = b.period_err_frac as f64 / 2f64.powi(64 + b.period_err_shift as i32);
        let want = (1u64 << 20) as f64 / r.period as f64;
        assert!(pe >= want * (1.0 - 1e-15) && pe < want * (1.0 + 1e-12), "period_err {pe} vs {want}");
        // The 2.x bound, plus the client's roundings; the growth is at least the 2.x drift.
        assert_eq!(b.bound_ns, eb.bound_ns + v3::ROUNDING_NS as i64);
        assert!(
            b.max_drift_ppb as f64 + pe * 1e9 >= eb.max_drift_ppb as f64,
            "{} {}",
            b.max_drift_ppb,
            eb.max_drift_ppb
        );
        assert!(b.max_drift_ppb <= eb.max_drift_ppb + 2, "{} {}", b.max_drift_ppb, eb.max_drift_ppb);
        assert_eq!(b.void_after_ns, b.map.as_of_ns + ClockBoundConfig::default().life_ns);
        // What the 3.x client computes holds the page's interval and CLOCK_REALTIME (T0 at
        // counter 1e9, 1 GHz, drifting at most the margin) from the pairing to an hour on.
        for dt in [0u64, 1, 1_000, 1_000_000, 1_000_000_000, 5_000_000_000, 3_600_000_000_000] {
            let at = c + dt;
            let (lo, hi) = client3_window(&b, at);
            let u = pg.utc_at(at).unwrap();
            let (t, e) = (u.time.as_nanos() as i128, u.maxerror_ns().unwrap() as i128);
            assert!(lo <= t - e && hi >= t + e, "+{dt}: [{lo}, {hi}] misses the page's [{}, {}]", t - e, t + e);
            let rt = T0 + (at - 1_000_000_000) as i128;
            let slack = (dt as i128 * 15_000).div_euclid(NS) + 20; // the margin's drift + the windows
            assert!(lo <= rt - slack && hi >= rt + slack, "+{dt}: [{lo}, {hi}] misses REALTIME {rt} ± {slack}");
        }
        // A page 0.1 ns wide still gives a window: the roundings are covered.
        assert!(client3_window(&b, c).1 - client3_window(&b, c).0 >= 2 * eb.bound_ns as i128);
    }

    #[test]
    fn clockbound3_status_follows_the_2x_segment_and_keeps_the_map() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        // Nothing claimed yet: Unknown, no map.
        let eb = f.handle(&obs(page(1, 7, status::UNKNOWN, 0, 0), &s, 0), 100);
        let b = f.v3(&eb);
        assert_eq!((b.status, b.bound_ns, b.max_drift_ppb, b.map), (CbStatus::Unknown, 0, 0, v3::Map::default()));
        let eb = f.handle(&obs(page(2, 7, status::FREERUNNING, 0, 0), &s, 1), 200);
        let fr = f.v3(&eb);
        assert_eq!(fr.status, CbStatus::FreeRunning);
        // Unknown keeps the last map (the client keeps an Unknown status whatever the map says).
        let eb = f.handle(&obs(page(3, 7, status::UNRELIABLE, 0, 0), &s, 2), 300);
        let u = f.v3(&eb);
        assert_eq!((u.status, u.map, u.max_drift_ppb), (CbStatus::Unknown, fr.map, 0));
        // Disruption: Disrupted with the new marker until the page is current.
        let eb = f.handle(&obs(page(4, 8, status::SYNCHRONIZED, 0, 0), &s, 3), 400);
        let d = f.v3(&eb);
        assert_eq!((d.status, d.disruption_marker), (CbStatus::Disrupted, 8));
        let eb = f.handle(&obs(page(5, 8, status::SYNCHRONIZED, 0, 0), &s, 4), 500);
        let ok = f.v3(&eb);
        assert_eq!((ok.status, ok.disruption_marker), (CbStatus::Synchronized, 8));
        // A 2.x body from elsewhere (the binary's own Unknown when the page cannot be read) never
        // picks up the last claim.
        let unread = ErrorBound { status: CbStatus::Synchronized, as_of_ns: 1, ..eb };
        assert_eq!(f.v3(&unread).status, CbStatus::Unknown);
    }

    #[test]
    fn clockbound3_is_void_around_an_announced_leap_second() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let edge = page(1, 7, status::SYNCHRONIZED, 0, leap::PRE_POS).leap_edge().unwrap().at_sec as i128 * NS;
        let s = samples();
        let cfg = ClockBoundConfig::default(); // 5 s of life
        for (before_edge, void_after) in [(10 * NS, None), (3 * NS, Some(edge - NS)), (NS / 2, Some(edge - NS / 2))] {
            let mut f = ClockBoundFeed::new(cfg);
            let pg = page(1, 7, status::SYNCHRONIZED, edge - before_edge - T0, leap::PRE_POS);
            let eb = f.handle(&obs(pg, &s, 0), 100);
            assert_eq!(eb.status, CbStatus::Synchronized);
            let b = f.v3(&eb);
            let want = void_after.unwrap_or(b.map.as_of_ns + cfg.life_ns);
            // The pairing's counter is a few µs past 1e9: as_of is that far past the page's time.
            assert!((0..10_000).contains(&(b.map.as_of_ns - (edge - before_edge))), "as_of {}", b.map.as_of_ns);
            if void_after.is_some_and(|v| v < b.map.as_of_ns) {
                assert_eq!(b.void_after_ns, b.map.as_of_ns, "{before_edge}");
            } else {
                assert_eq!(b.void_after_ns, want, "{before_edge} ns before the edge");
            }
        }
    }

    #[test]
    fn clockbound3_period_error_is_rounded_up_with_its_significant_bits() {
        use v3::ratio_ceil;
        assert_eq!(ratio_ceil(0, 7), Some((0, 0)));
        assert_eq!(ratio_ceil(7, 7), None);
        assert_eq!(ratio_ceil(8, 7), None);
        for (num, den) in [(1u64, 3u64), (1 << 20, 0x89705F4136B4A597), (1, u64::MAX), (u64::MAX - 1, u64::MAX), (3, 4)]
        {
            let (f, s) = ratio_ceil(num, den).unwrap();
            // f / 2^(64+s) ≥ num/den, by less than 2^-(64+s), and f uses its top bits.
            let (lhs, n) = ((f as u128) * den as u128, (num as u128) << (64 + s)); // exact, < 2^128
            assert!(lhs >= n, "{num}/{den}: {f} >> {s} is below");
            assert!(lhs < n + den as u128, "{num}/{den}: not the ceiling");
            assert!(f >= 1 << 62, "{num}/{den}: {f} with shift {s} loses bits");
        }
    }

    #[test]
    fn as_of_allows_for_the_largest_coarse_lag_seen() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        // The client ages the bound with CLOCK_MONOTONIC_COARSE, which lags the true instant
        // (by 4 to 13 ms with 4 ms ticks on a loaded machine): as_of is written early by the
        // largest lag seen (at least three ticks) plus a tick.
        let cfg = ClockBoundConfig { coarse_tick_ns: 4_000_000, ..ClockBoundConfig::default() };
        let mut f = ClockBoundFeed::new(cfg);
        assert_eq!(f.coarse_allowance_ns(), 16_000_000);
        let s = samples();
        let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), 10 * NS);
        assert_eq!(eb.status, CbStatus::Synchronized);
        assert_eq!(eb.as_of_ns, 10 * NS - 16_000_000);
        assert_eq!(eb.void_after_ns, eb.as_of_ns + cfg.life_ns);
        // Smaller lags change nothing; a larger one moves as_of for every later segment.
        f.observe_coarse_lag(5_000_000);
        assert_eq!(f.coarse_allowance_ns(), 16_000_000);
        f.observe_coarse_lag(12_900_000);
        f.observe_coarse_lag(1_000);
        assert_eq!(f.coarse_allowance_ns(), 16_900_000);
        // A resume after a 10 s pause looks like a 10 s lag: not kept, or every later segment
        // (life 5 s) would be void when written.
        f.observe_coarse_lag(10 * NS);
        assert_eq!(f.coarse_allowance_ns(), 16_900_000);
        let later = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 2), 20 * NS);
        assert!(later.void_after_ns > 20 * NS, "void when written");
        let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 1), 11 * NS);
        assert_eq!(eb.as_of_ns, 11 * NS - 16_900_000);
    }

    #[test]
    fn a_pairing_allows_for_the_truncated_clock() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        // clock_gettime truncates: a zero-width window [T, T] means the clock was in [T, T + 1 ns)
        // at the counter, so the page exactly at T is placed within the pairing's half-width of
        // that window's middle, never outside it.
        let exact: Vec<AbaSample> =
            (0..4u64).map(|i| AbaSample { before_ns: T0, counter: 1_000_000_000 + i, after_ns: T0 }).collect();
        let p = PageGate::new(NS).pass(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &exact, 0)).expect("a pairing");
        let half_ns = p.half * NS / UNIT;
        let realtime_ns = (p.realtime - (T0 << 64) / NS) * NS / UNIT;
        assert!(p.half >= UNIT / NS / 2, "half-width {half_ns} ns");
        assert!((0..=1).contains(&realtime_ns), "middle {realtime_ns} ns past T0");
    }

    /// A page built field by field with extreme values (raw, so nothing is tidied up).
    fn extreme_page(
        counter: u64,
        (sec, frac): (u64, u64),
        period: Period,
        (maxerr, rate): (u64, u64),
        (st, leap_ind): (u8, u8),
    ) -> Option<Snapshot> {
        let t = Timestamp::<Utc>::from_raw(((sec as u128) << 64) | frac as u128);
        let b = PageBuilder::new()
            .reference(vmclock::counter::NATIVE, counter, t, period)
            .status(st)
            .leap(leap_ind)
            .maxerror(maxerr, rate)
            .disruption_marker(7)
            .build();
        let mut s = Snapshot::new(b, 4096).ok()?.to_bytes();
        s[12..16].copy_from_slice(&2u32.to_le_bytes());
        Snapshot::decode(&s, 4096).ok()
    }

    #[test]
    fn extreme_pages_and_samples_never_panic_and_are_never_sent_absurd() {
        // A careless or hostile host: counters near the wrap, references in the far past or
        // future, periods of 0 or ~1 s per tick, maxerror and rates at u64::MAX, unknown leap
        // values and statuses flapping at every update; samples whose windows are inverted (the
        // clock stepped back mid-sample), empty, or at the ends of the counter. Both feeds must
        // decide without overflowing (debug builds check arithmetic), and whatever they send or
        // write must be finite and within what chrony and the client accept.
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let counters = [0u64, 1, 1 << 32, u64::MAX / 2, u64::MAX - 1_000_000, u64::MAX];
        let secs = [0u64, 1, 1_790_000_000, 1 << 40, i64::MAX as u64, u64::MAX];
        let periods = [(0u64, 0u8), (1, 0), (u64::MAX, 0), (1 << 63, 63), (u64::MAX, 255), (18_446_744_074, 0)];
        let errs = [(0u64, 0u64), (1_000, 1 << 20), (u64::MAX, u64::MAX), (i64::MAX as u64, 1)];
        let sample_sets: Vec<Vec<AbaSample>> = counters
            .iter()
            .flat_map(|&c| {
                let sane = vec![
                    AbaSample { before_ns: T0, counter: c, after_ns: T0 + 10 },
                    AbaSample { before_ns: T0 + 1_000, counter: c.wrapping_add(1_000), after_ns: T0 + 1_010 },
                ];
                let mut wide = sane.clone();
                wide.push(AbaSample {
                    before_ns: i64::MIN as i128,
                    counter: c.wrapping_sub(7),
                    after_ns: i64::MAX as i128,
                });
                let mut inverted = sane.clone();
                inverted.push(AbaSample {
                    before_ns: T0 + 2_050,
                    counter: c.wrapping_add(2_000),
                    after_ns: T0 + 2_020,
                });
                [sane, wide, inverted]
            })
            .chain([Vec::new()])
            .collect();
        let statuses = [status::SYNCHRONIZED, status::FREERUNNING, status::UNRELIABLE, 200];
        let mut chrony = ChronyFeed::new(NS);
        let mut cb = ClockBoundFeed::new(ClockBoundConfig::default());
        let (mut sent, mut written, mut n) = (0u32, 0u32, 0i128);
        for &c in &counters {
            for &sec in &secs {
                for &(period, shift) in &periods {
                    for &(maxerr, rate) in &errs {
                        for (k, samples) in sample_sets.iter().enumerate() {
                            n += 1;
                            // The status flaps at every observation.
                            let st = statuses[n as usize % statuses.len()];
                            let leap_ind = (n % 9) as u8;
                            let Some(p) = extreme_page(
                                c,
                                (sec, u64::MAX - k as u64),
                                Period { frac: period, shift },
                                (maxerr, rate),
                                (st, leap_ind),
                            ) else {
                                continue;
                            };
                            let o = obs(p, samples, n * NS);
                            if samples.iter().any(|s| s.after_ns < s.before_ns) {
                                assert!(!matches!(chrony.handle(&o), ChronyAction::Send(_)), "sent across a step back");
                                assert_eq!(
                                    cb.handle(&o, n * NS).status,
                                    CbStatus::Unknown,
                                    "a bound across a step back"
                                );
                                continue;
                            }
                            if let ChronyAction::Send(s) = chrony.handle(&o) {
                                sent += 1;
                                assert!(s.offset.is_finite(), "offset {}", s.offset);
                                assert!((0..1_000_000).contains(&s.tv_usec), "tv_usec {}", s.tv_usec);
                                assert!(matches!(s.leap, 0..=2), "chrony drops a sample with leap {}", s.leap);
                                assert_eq!(s.to_bytes().len(), SAMPLE_SIZE);
                            }
                            let eb = cb.handle(&o, n * NS);
                            if matches!(eb.status, CbStatus::Synchronized | CbStatus::FreeRunning) {
                                written += 1;
                                assert!(eb.bound_ns > 0, "a claimed bound of {}", eb.bound_ns);
                                assert!(
                                    (eb.max_drift_ppb as u64) < MAX_DRIFT_PPB,
                                    "the client refuses {}",
                                    eb.max_drift_ppb
                                );
                            }
                            assert!(eb.void_after_ns > eb.as_of_ns);
                            let _ = eb.to_bytes();
                        }
                    }
                }
            }
        }
        // Not vacuous: some of these pages are usable (sane period, 1 µs maxerror).
        assert!(sent > 0 && written > 0, "sent {sent}, written {written} of {n}");
    }

    #[test]
    fn a_step_back_during_the_burst_is_held() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        // CLOCK_REALTIME stepped back 1 ms inside the fourth sample (chronyd's makestep): before,
        // its window was negative, chosen as the "tightest", and the pairing's half-width came
        // out negative (an overflow in debug builds; in release a bound narrower than honest).
        let mut s = samples();
        s[3].after_ns = s[3].before_ns - 1_000_000;
        for x in &mut s[4..] {
            (x.before_ns, x.after_ns) = (x.before_ns - 1_000_000, x.after_ns - 1_000_000);
        }
        let p = page(1, 7, status::SYNCHRONIZED, 0, 0);
        let mut c = ChronyFeed::new(NS);
        assert_eq!(c.handle(&obs(p, &s, 0)), ChronyAction::Hold(Hold::RealtimeStepped));
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        assert_eq!(f.handle(&obs(p, &s, 0), NS).status, CbStatus::Unknown);
        assert_eq!(f.last_hold, Some(Hold::RealtimeStepped));
        // The next burst, on one clock again, is used.
        assert!(matches!(c.handle(&obs(p, &samples(), 1)), ChronyAction::Send(_)));
        assert_eq!(f.handle(&obs(p, &samples(), 1), NS).status, CbStatus::Synchronized);
    }

    #[test]
    fn a_page_too_far_from_realtime_is_held_not_sent() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        // 2^32 s ahead: chronyd would drop every sample without a word (UTI_IsTimeOffsetSane).
        let s = samples();
        let far = page(1, 7, status::SYNCHRONIZED, ((1i128 << 32) + 1) * NS, 0);
        let mut c = ChronyFeed::new(NS);
        assert_eq!(c.handle(&obs(far, &s, 0)), ChronyAction::Hold(Hold::OutOfRange));
        // Just under it is sent (chronyd decides what to do with a large offset: makestep).
        let near = page(1, 7, status::SYNCHRONIZED, ((1i128 << 32) - 2) * NS, 0);
        let ChronyAction::Send(x) = c.handle(&obs(near, &s, 1)) else { panic!("held") };
        assert!(x.offset > 4.29e9);
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        assert_eq!(f.handle(&obs(far, &s, 0), NS).status, CbStatus::Unknown);
        assert_eq!(f.last_hold, Some(Hold::OutOfRange));
        // Before 1970.
        let past = page(1, 7, status::SYNCHRONIZED, -T0 - NS, 0);
        assert!(matches!(c.handle(&obs(past, &s, 2)), ChronyAction::Hold(Hold::OutOfRange | Hold::NoTime)));
    }

    #[test]
    fn a_restarted_feed_holds_a_marker_that_changed_while_it_was_down() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        let s = samples();
        let mut first = ClockBoundFeed::new(ClockBoundConfig::default());
        let left = first.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), NS);
        assert_eq!(left.status, CbStatus::Synchronized);
        // The feed dies; the host moves to marker 8 meanwhile; a new feed finds the segment.
        let mut next = ClockBoundFeed::new(ClockBoundConfig::default());
        assert_eq!(next.resume(&left.to_bytes(), LAYOUT_V2), Some(7));
        let p8 = page(1, 8, status::SYNCHRONIZED, 0, 0);
        assert_eq!(next.handle(&obs(p8, &s, 10 * NS), 10 * NS).status, CbStatus::Disrupted);
        // Current once updated again (or after the hold-off).
        assert_eq!(
            next.handle(&obs(page(2, 8, status::SYNCHRONIZED, 0, 0), &s, 11 * NS), 11 * NS).status,
            CbStatus::Synchronized
        );
        // The same marker: no disruption. A body that claimed nothing gives no marker.
        let mut same = ClockBoundFeed::new(ClockBoundConfig::default());
        same.resume(&left.to_bytes(), LAYOUT_V2);
        assert_eq!(same.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), NS).status, CbStatus::Synchronized);
        let unknown = ErrorBound { status: CbStatus::Unknown, ..left };
        assert_eq!(ClockBoundFeed::new(ClockBoundConfig::default()).resume(&unknown.to_bytes(), LAYOUT_V2), None);
    }

    #[test]
    fn a_page_without_a_maximum_error_is_named_as_such() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        // `vmtime gen PAGE` without --maxerror-ns: the page gives UTC (chrony is fed) but no
        // bound. The feed said "the page gives no UTC time for this CPU's counter".
        let t = Timestamp::<Utc>::from_raw(crate::ns_to_frac(T0, false) as u128);
        let b = PageBuilder::new()
            .reference(vmclock::counter::NATIVE, 1_000_000_000, t, Period::from_hz(HZ).unwrap())
            .status(status::SYNCHRONIZED)
            .build();
        let p = Snapshot::new(b, 4096).unwrap();
        let s = samples();
        assert!(matches!(ChronyFeed::new(NS).handle(&obs(p, &s, 0)), ChronyAction::Send(_)));
        let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
        assert_eq!(f.handle(&obs(p, &s, 0), NS).status, CbStatus::Unknown);
        assert_eq!(f.last_hold, Some(Hold::NoMaxError));
        assert!(Hold::NoMaxError.describe().contains("no maximum error"));
        // A maximum error beyond what the segment holds.
        let b = PageBuilder::new()
            .reference(vmclock::counter::NATIVE, 1_000_000_000, t, Period::from_hz(HZ).unwrap())
            .status(status::SYNCHRONIZED)
            .maxerror(u64::MAX, u64::MAX)
            .build();
        let p = Snapshot::new(b, 4096).unwrap();
        assert_eq!(f.handle(&obs(p, &s, 1), NS).status, CbStatus::Unknown);
        assert_eq!(f.last_hold, Some(Hold::Unbounded));
    }
}
