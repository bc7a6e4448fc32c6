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
    /// The page's UTC is before 1970, or 2^32 s (136 years) or more from CLOCK_REALTIME.
    OutOfRange,
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
            Hold::OutOfRange => "the page's UTC is before 1970 or 136 years or more from CLOCK_REALTIME",
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
    /// (seq_count that carried the new marker, when it was first seen).
    disrupted: Option<(u32, i128)>,
    holdoff_ns: i128,
}

impl PageGate {
    /// A gate; `holdoff_ns` is how long a page that carried a new marker and was not updated
    /// again must stay unchanged before it is taken as current.
    pub fn new(holdoff_ns: i128) -> Self {
        PageGate { marker: None, disrupted: None, holdoff_ns }
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
        if page_utc < 0 || !in_range(page_utc.checked_sub(k.time)) || !(0..MAX_OFFSET).contains(&k.half) {
            return Err(Hold::OutOfRange);
        }
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
            rate_maxerror_ppb,
        })
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
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC[0].to_ne_bytes());
        b[4..8].copy_from_slice(&MAGIC[1].to_ne_bytes());
        b[8..12].copy_from_slice(&(SEGMENT_SIZE as u32).to_ne_bytes());
        b[12..14].copy_from_slice(&VERSION.to_ne_bytes());
        b[14..16].copy_from_slice(&generation.to_ne_bytes());
        b
    }

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
        /// CLOCK_MONOTONIC_COARSE's resolution (one tick), ns. The client ages the bound with
        /// its own coarse reading, which lags the true instant by up to a tick just as the
        /// feed's `as_of` reading may not: `as_of` is written one tick early so that the age
        /// the client computes is never less than the time elapsed since the pairing.
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

    /// Added to every bound, ns. Under heavy load the honesty test against a live, recalibrating
    /// host page (crates/vmtime/tests/clockbound.rs, ignored: see docs/INTEROP.md, "Open defect")
    /// found the segment a few ns short in about one run in six, beyond every term above; the
    /// cause is not yet found, and once it was short even with this margin. 1 µs is small beside
    /// any real page's maxerror (µs to ms).
    pub const SAFETY_MARGIN_NS: u128 = 1_000;

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
    }

    impl ClockBoundFeed {
        /// A feed.
        pub fn new(cfg: ClockBoundConfig) -> Self {
            ClockBoundFeed { cfg, gate: PageGate::new(cfg.holdoff_ns), last: None, rate_ppb: None, last_hold: None }
        }

        /// Continues from the body a previous run left in the segment (a feed restarted, or
        /// killed and started again): its marker is the last one clients were given, so a page
        /// whose marker changed while no feed ran is a disruption, as it would have been had
        /// the feed kept running. A body that claims nothing (Unknown) carries no marker.
        /// Returns the marker taken.
        pub fn resume(&mut self, previous: &[u8; BODY_SIZE]) -> Option<u64> {
            let status = i32::from_ne_bytes(previous[52..56].try_into().expect("4 bytes"));
            let marker = u64::from_ne_bytes(previous[40..48].try_into().expect("8 bytes"));
            let claimed = [CbStatus::Synchronized, CbStatus::FreeRunning, CbStatus::Disrupted];
            claimed.iter().any(|&c| c as i32 == status).then(|| {
                self.gate.expect_marker(marker);
                marker
            })
        }

        /// The segment for an observation; `as_of_ns` is CLOCK_MONOTONIC_COARSE read *before*
        /// the burst (coarse is never ahead of the instant it stands for, so the bound's age is
        /// never understated, and the client's coarse clock never sees an as_of in its future).
        pub fn handle(&mut self, obs: &Observation<'_>, as_of_ns: i128) -> ErrorBound {
            let as_of_ns = as_of_ns - self.cfg.coarse_tick_ns.max(0);
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
            let (Some(maxerror), Some(rate)) = (p.maxerror, p.rate_maxerror_ppb) else {
                self.last_hold = Some(Hold::NoMaxError);
                return eb;
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
            let bound = frac_to_ns_ceil(maxerror)
                + frac_to_ns_ceil(p.offset().unsigned_abs() + p.half as u128)
                + (span.saturating_mul(drift)).div_ceil(1_000_000_000)
                + SAFETY_MARGIN_NS;
            if bound > i64::MAX as u128 / 2 || drift >= MAX_DRIFT_PPB as u128 {
                self.last_hold = Some(Hold::Unbounded);
                return eb;
            }
            self.last_hold = None;
            eb.bound_ns = bound as i64;
            eb.max_drift_ppb = drift as u32;
            eb.status = if p.status == status::SYNCHRONIZED { CbStatus::Synchronized } else { CbStatus::FreeRunning };
            eb
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
        assert!(eb.bound_ns >= 41_000 + SAFETY_MARGIN_NS as i64, "bound {}", eb.bound_ns);
        assert!(eb.bound_ns <= 41_030 + SAFETY_MARGIN_NS as i64, "bound {} is not tight", eb.bound_ns);
        let tick = ClockBoundConfig::default().coarse_tick_ns;
        assert_eq!(eb.as_of_ns, 100 - tick);
        assert_eq!(eb.void_after_ns, 100 - tick + 5 * NS);
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

    #[test]
    fn as_of_is_one_coarse_tick_early() {
        if vmclock::counter::NATIVE == counter_id::INVALID {
            return;
        }
        // The client's coarse clock may lag the true instant by a tick more than the feed's
        // reading did: an as_of written as read could make the client's age (and so the bound's
        // growth) fall short of the true time since the pairing by up to a tick.
        let cfg = ClockBoundConfig { coarse_tick_ns: 4_000_000, ..ClockBoundConfig::default() };
        let mut f = ClockBoundFeed::new(cfg);
        let s = samples();
        let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), 10 * NS);
        assert_eq!(eb.status, CbStatus::Synchronized);
        assert_eq!(eb.as_of_ns, 10 * NS - 4_000_000);
        assert_eq!(eb.void_after_ns, eb.as_of_ns + cfg.life_ns);
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
        let far = page(1, 7, status::SYNCHRONIZED, (1i128 << 32) * NS, 0);
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
        assert_eq!(next.resume(&left.to_bytes()), Some(7));
        let p8 = page(1, 8, status::SYNCHRONIZED, 0, 0);
        assert_eq!(next.handle(&obs(p8, &s, 10 * NS), 10 * NS).status, CbStatus::Disrupted);
        // Current once updated again (or after the hold-off).
        assert_eq!(
            next.handle(&obs(page(2, 8, status::SYNCHRONIZED, 0, 0), &s, 11 * NS), 11 * NS).status,
            CbStatus::Synchronized
        );
        // The same marker: no disruption. A body that claimed nothing gives no marker.
        let mut same = ClockBoundFeed::new(ClockBoundConfig::default());
        same.resume(&left.to_bytes());
        assert_eq!(same.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), NS).status, CbStatus::Synchronized);
        let unknown = ErrorBound { status: CbStatus::Unknown, ..left };
        assert_eq!(ClockBoundFeed::new(ClockBoundConfig::default()).resume(&unknown.to_bytes()), None);
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
