//! The gate both feeds share: when a page and a burst of samples may be measured, and the
//! (page time, REALTIME) pairing they give.
use super::*;

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
