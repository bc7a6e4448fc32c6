//! Readings on CLOCK_REALTIME's scale, the error codes shared by every binding, and two
//! additions applications asked for: a caller's cap on the bound, and the bound of a
//! CLOCK_REALTIME timestamp taken a little earlier.
//!
//! * [`Reading`]: a reading in whole nanoseconds since 1970-01-01 UTC (POSIX, as CLOCK_REALTIME
//!   counts), the bounds rounded outwards (earliest down, latest up), the time rounded down. It is
//!   what libvmclock's `struct vmclock_now` and the Python package's reading hold.
//! * [`Code`]: the C API's `VMCLOCK_E_*` codes with their one-line texts (`vmclock_strerror`);
//!   the Python package raises exceptions with the same texts, and `testdata/vectors.json` names
//!   its errors by them.
//! * [`reading_at`]: a page given as bytes, read at a given counter value: what the conformance
//!   vectors check (docs/PROTOCOL.md, "Conformance vectors").
//! * [`now_within`]: a reading that fails unless the page is SYNCHRONIZED and the bound is at most
//!   a caller's width.
//! * [`bound_realtime`]: the interval holding the true time at the instant a CLOCK_REALTIME
//!   timestamp was taken, from the page now and the kernel clock's elapsed time since (see its
//!   documentation for the assumption and its cost).
//!
//! These are separate functions over [`Clock`]'s read path, which they do not change.

use crate::abi;
use crate::clock::{Clock, Now};
use crate::error::{ClockError, PageError, ReadError, TimeError};
use crate::seqlock::PageMemory;
use crate::snapshot::{Bounded, LeapEdge, Snapshot};
use crate::time::Utc;
use std::ffi::CStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The error codes of the C API (`VMCLOCK_E_*`), with their texts. The values are the C API's
/// and never change; new codes are only ever added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    /// A null pointer was passed.
    Null = -1,
    /// The page cannot be opened or mapped.
    Open = -2,
    /// Not a valid vmclock page.
    Invalid = -3,
    /// The writer held the seqlock for too long.
    Busy = -4,
    /// The page carries no time.
    NoTime = -5,
    /// The page's counter is not this CPU's.
    Counter = -6,
    /// The time cannot be given in UTC.
    NoUtc = -7,
    /// The time does not fit.
    Overflow = -8,
    /// The page file shrank or went away while mapped.
    Gone = -9,
    /// Too many page files are open.
    Limit = -10,
    /// [`now_within`]: the page's status is not SYNCHRONIZED.
    Unsynchronized = -11,
    /// [`now_within`]: the bound is wider than the caller's cap (or the page gives none).
    TooWide = -12,
    /// [`bound_realtime`]: the timestamp is older than [`PAST_MAX_AGE_NS`], or later than now.
    TooOld = -13,
    /// [`bound_realtime`]: a disruption or a leap second may lie between the timestamp and now.
    Disrupted = -14,
    /// [`bound_realtime`]: the kernel is correcting CLOCK_REALTIME's rate by more than
    /// [`PAST_SLEW_LIMIT_PPB`].
    Slewing = -15,
}

impl Code {
    /// Every code, from -1 down.
    pub const ALL: [Code; 15] = [
        Code::Null,
        Code::Open,
        Code::Invalid,
        Code::Busy,
        Code::NoTime,
        Code::Counter,
        Code::NoUtc,
        Code::Overflow,
        Code::Gone,
        Code::Limit,
        Code::Unsynchronized,
        Code::TooWide,
        Code::TooOld,
        Code::Disrupted,
        Code::Slewing,
    ];

    /// The code of a C API value, if it is one (0 is success, not a code).
    pub fn from_i32(v: i32) -> Option<Code> {
        Code::ALL.into_iter().find(|c| *c as i32 == v)
    }

    /// The C name (`VMCLOCK_E_INVALID`).
    pub fn name(self) -> &'static str {
        match self {
            Code::Null => "VMCLOCK_E_NULL",
            Code::Open => "VMCLOCK_E_OPEN",
            Code::Invalid => "VMCLOCK_E_INVALID",
            Code::Busy => "VMCLOCK_E_BUSY",
            Code::NoTime => "VMCLOCK_E_NO_TIME",
            Code::Counter => "VMCLOCK_E_COUNTER",
            Code::NoUtc => "VMCLOCK_E_NO_UTC",
            Code::Overflow => "VMCLOCK_E_OVERFLOW",
            Code::Gone => "VMCLOCK_E_GONE",
            Code::Limit => "VMCLOCK_E_LIMIT",
            Code::Unsynchronized => "VMCLOCK_E_UNSYNCHRONIZED",
            Code::TooWide => "VMCLOCK_E_TOO_WIDE",
            Code::TooOld => "VMCLOCK_E_TOO_OLD",
            Code::Disrupted => "VMCLOCK_E_DISRUPTED",
            Code::Slewing => "VMCLOCK_E_SLEWING",
        }
    }

    /// The one-line text (`vmclock_strerror`): the cause, then what to do.
    pub fn text_c(self) -> &'static CStr {
        match self {
            Code::Null => c"a null pointer was passed: pass a path, a handle from vmclock_open and a struct vmclock_now to fill",
            Code::Open => c"cannot open or map the page: check that the path exists, is readable and is a page file or /dev/vmclockN (errno says why)",
            Code::Invalid => c"not a valid vmclock page (bad magic, version or size; or an empty file or a fifo): check that the path names a vmclock page",
            Code::Busy => c"the page's writer held its seqlock for more than 100 ms: retry; if it persists, its publisher is stuck",
            Code::NoTime => c"the page carries no time (markers only, or no time fields): use a page whose host publishes the time",
            Code::Counter => c"the page's counter is not this CPU's: read the page on the machine it was written for",
            Code::NoUtc => c"the page's time cannot be given in UTC (TAI without a valid TAI offset, or MONOTONIC): wait until its host publishes the offset",
            Code::Overflow => c"the time does not fit (counter far from the page's reference, or an absurd time): the page is stale or wrong; wait for an update",
            Code::Gone => c"the page file shrank or went away while mapped: close this handle and open the page again",
            Code::Limit => c"64 handles on page files are open already: close one, or share one handle between threads (it is thread-safe)",
            Code::Unsynchronized => c"the page's status is not SYNCHRONIZED: wait until its host is synchronised, or read without the cap",
            Code::TooWide => c"the bound is wider than the cap asked for (or the page gives none): wait for a tighter bound, or raise the cap",
            Code::TooOld => c"the timestamp is older than 1 s or later than now: bound a CLOCK_REALTIME timestamp taken within the last second",
            Code::Disrupted => c"a disruption or a leap second may lie between the timestamp and now (or it predates this handle): take a new timestamp and bound that",
            Code::Slewing => c"the kernel is slewing CLOCK_REALTIME faster than 500 ppm, so its elapsed time cannot bound a past timestamp: retry when the slew is over (chrony: maxslewrate 500)",
        }
    }

    /// [`Code::text_c`] as a `str`.
    pub fn text(self) -> &'static str {
        // Every text is ASCII.
        self.text_c().to_str().unwrap_or("")
    }

    /// The code of a page that is not a page.
    pub fn of_page(_: &PageError) -> Code {
        Code::Invalid
    }

    /// The code of a time that cannot be computed.
    pub fn of_time(e: &TimeError) -> Code {
        match e {
            TimeError::NoCounter | TimeError::NoTimeFields { .. } | TimeError::UnsupportedTimeType(_) => Code::NoTime,
            TimeError::UnusableShift(_) => Code::Invalid,
            TimeError::CounterMismatch { .. } => Code::Counter,
            TimeError::NoTaiOffset { .. } | TimeError::NotWallClock(_) => Code::NoUtc,
            TimeError::Overflow => Code::Overflow,
        }
    }

    /// The code of a failed open or read.
    pub fn of_clock(e: &ClockError) -> Code {
        match e {
            // Opened, but empty (or too short to map as a page): not a page, whatever errno says.
            ClockError::Map { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => Code::Invalid,
            ClockError::Map { .. } => Code::Open,
            ClockError::Read(ReadError::Timeout { .. }) => Code::Busy,
            ClockError::Read(ReadError::Page(p)) | ClockError::Page(p) => Code::of_page(p),
            ClockError::Time(t) => Code::of_time(t),
        }
    }
}

impl core::fmt::Display for Code {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.text())
    }
}

impl std::error::Error for Code {}

/// One reading on CLOCK_REALTIME's scale: whole ns since 1970-01-01 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The earliest the true time can be, rounded down (`None`: the page gives no bound).
    pub earliest_ns: Option<i64>,
    /// The best estimate, rounded down.
    pub time_ns: i64,
    /// The latest the true time can be, rounded up (`None`: the page gives no bound).
    pub latest_ns: Option<i64>,
    /// The maximum error, ns, rounded up (`None`: not bounded).
    pub maxerror_ns: Option<i64>,
    /// The estimated error, ns, rounded up (`None`: not given).
    pub esterror_ns: Option<i64>,
    /// The time in the page's own timescale (`time_type`), ns since its epoch, rounded down,
    /// before any TAI offset or leap second is applied.
    pub page_time_ns: u128,
    /// The page's `time_type`.
    pub time_type: u8,
    /// TAI − UTC, s (positive: 37), when the page gives a valid offset.
    pub tai_minus_utc: Option<i16>,
    /// The page's `clock_status`.
    pub status: u8,
    /// The page's disruption marker.
    pub disruption_marker: u64,
    /// The counter value the time is for.
    pub counter: u64,
    /// The leap second the page announces and this reading applies, as a `leap_indicator` value:
    /// 0 none, 1 PRE_POS, 2 PRE_NEG, 4 POST_POS, 5 POST_NEG (an indicator the reading cannot
    /// place, or 3 during the inserted second, reads 0: nothing to apply).
    pub leap: u8,
    /// Where that leap second's edge lies: whole UTC seconds since 1970 on the page's linear
    /// scale (see [`LeapEdge`]).
    pub leap_at_sec: Option<u64>,
}

/// 64.64 seconds → ns, rounded down or (`up`) up.
fn ns_of(raw: u128, up: bool) -> u128 {
    let f = (raw & ((1u128 << 64) - 1)) * 1_000_000_000;
    (raw >> 64) * 1_000_000_000 + (f >> 64) + u128::from(up && f & ((1u128 << 64) - 1) != 0)
}

fn leap_value(edge: Option<LeapEdge>) -> u8 {
    match edge {
        Some(LeapEdge { before: false, step: 1, .. }) => abi::leap::PRE_POS,
        Some(LeapEdge { before: false, .. }) => abi::leap::PRE_NEG,
        Some(LeapEdge { before: true, step: -1, .. }) => abi::leap::POST_POS,
        Some(LeapEdge { before: true, .. }) => abi::leap::POST_NEG,
        None => abi::leap::NONE,
    }
}

/// The page-independent facts of a reading.
struct Meta {
    raw: u128,
    time_type: u8,
    tai_minus_utc: Option<i16>,
    status: u8,
    disruption_marker: u64,
    counter: u64,
    leap: Option<LeapEdge>,
}

fn build(utc: Bounded<Utc>, m: Meta) -> Result<Reading, Code> {
    let fit = |ns: u128| i64::try_from(ns).map_err(|_| Code::Overflow);
    let time_ns = fit(ns_of(utc.time.raw(), false))?;
    let (mut earliest_ns, mut latest_ns, mut maxerror_ns) = (None, None, None);
    if let (Some(e), Some(l), Some(x)) = (utc.earliest(), utc.latest(), utc.maxerror_ns()) {
        earliest_ns = Some(fit(ns_of(e.raw(), false))?);
        latest_ns = Some(fit(ns_of(l.raw(), true))?);
        maxerror_ns = Some(fit(x)?);
    }
    Ok(Reading {
        earliest_ns,
        time_ns,
        latest_ns,
        maxerror_ns,
        esterror_ns: utc.esterror_ns().and_then(|e| i64::try_from(e).ok()),
        page_time_ns: ns_of(m.raw, false),
        time_type: m.time_type,
        tai_minus_utc: m.tai_minus_utc,
        status: m.status,
        disruption_marker: m.disruption_marker,
        counter: m.counter,
        leap: leap_value(m.leap),
        leap_at_sec: m.leap.map(|l| l.at_sec),
    })
}

impl Reading {
    /// The reading of a [`Now`] (UTC with the leap second applied, as [`Now::utc`]).
    pub fn from_now(now: &Now) -> Result<Reading, Code> {
        let utc = now.utc().map_err(|e| Code::of_time(&e))?;
        build(
            utc,
            Meta {
                raw: now.raw,
                time_type: now.time_type,
                tai_minus_utc: now.tai_minus_utc,
                status: now.status,
                disruption_marker: now.disruption_marker,
                counter: now.counter,
                leap: now.leap,
            },
        )
    }

    /// `latest_ns − earliest_ns`, the width of the bound (`None`: not bounded).
    pub fn width_ns(&self) -> Option<u64> {
        Some((self.latest_ns? as i128 - self.earliest_ns? as i128) as u64)
    }

    /// Whether the status says the time may be relied upon (SYNCHRONIZED or FREERUNNING).
    pub fn is_reliable(&self) -> bool {
        matches!(self.status, abi::status::SYNCHRONIZED | abi::status::FREERUNNING)
    }
}

/// A page given as bytes (`page.len()` bytes available, as a page file of that length), read at
/// `counter`, a value of the page's own counter: the conformance vectors' evaluation. The
/// page's `counter_id` is not compared with this CPU's (the caller says which counter the
/// value is of); INVALID still means no time. Computed on [`Snapshot`]'s path, not
/// [`Clock`]'s.
pub fn reading_at(page: &[u8], counter: u64) -> Result<Reading, Code> {
    let snap = Snapshot::from_bytes(page).map_err(|e| Code::of_page(&e))?;
    let r = snap.reference().map_err(|e| Code::of_time(&e))?;
    let utc = snap.utc_at(counter).map_err(|e| Code::of_time(&e))?;
    build(
        utc,
        Meta {
            raw: r.raw_time_at(counter).map_err(|e| Code::of_time(&e))?,
            time_type: r.time_type,
            tai_minus_utc: snap.tai_minus_utc(),
            status: snap.clock_status().unwrap_or(abi::status::UNKNOWN),
            disruption_marker: snap.disruption_marker(),
            counter,
            leap: snap.leap_edge(),
        },
    )
}

/// A failed [`now_within`]: the code, and the reading when one was made (the cap refused it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capped {
    /// [`Code::Unsynchronized`], [`Code::TooWide`], or why no reading was made.
    pub code: Code,
    /// The reading the cap refused.
    pub reading: Option<Reading>,
}

impl core::fmt::Display for Capped {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.code.text())
    }
}

impl std::error::Error for Capped {}

/// Checks a reading against a caller's cap: SYNCHRONIZED, and bounded with `latest_ns −
/// earliest_ns ≤ max_width_ns`. FREERUNNING is refused too: the cap asks for a synchronised clock.
pub fn check_cap(reading: &Reading, max_width_ns: u64) -> Result<(), Code> {
    if reading.status != abi::status::SYNCHRONIZED {
        return Err(Code::Unsynchronized);
    }
    match reading.width_ns() {
        Some(w) if w <= max_width_ns => Ok(()),
        _ => Err(Code::TooWide),
    }
}

/// A reading now that fails unless the page is SYNCHRONIZED and its bound is at most
/// `max_width_ns` wide (`latest_ns − earliest_ns`, as returned).
// The refused reading is returned by value: no allocation on a read path.
#[allow(clippy::result_large_err)]
pub fn now_within<M: PageMemory>(clock: &Clock<M>, max_width_ns: u64) -> Result<Reading, Capped> {
    let now = clock.now().map_err(|e| Capped { code: Code::of_clock(&e), reading: None })?;
    let reading = Reading::from_now(&now).map_err(|code| Capped { code, reading: None })?;
    check_cap(&reading, max_width_ns).map_err(|code| Capped { code, reading: Some(reading) })?;
    Ok(reading)
}

/// The oldest timestamp [`bound_realtime`] bounds: 1 s before the call.
pub const PAST_MAX_AGE_NS: i64 = 1_000_000_000;
/// The rate error assumed of CLOCK_REALTIME between a timestamp and the call, parts per
/// million: the kernel's frequency correction (at most 500 ppm) plus its offset slew (at most
/// 500 ppm). Over the 1 s limit it adds at most 1 ms on each side.
pub const PAST_RATE_PPM: i64 = 1_000;

/// The largest correction of CLOCK_REALTIME's rate the kernel may be applying when
/// [`bound_realtime`] is called: 500 ppm, the kernel's own frequency limit. With at most as much
/// again of calibration error (which the frequency correction exists to cancel), the clock runs
/// within [`PAST_RATE_PPM`] of true time.
pub const PAST_SLEW_LIMIT_PPB: u64 = 500_000;

/// The kernel's discipline state that sets CLOCK_REALTIME's rate (`adjtimex` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRate {
    /// `tick`, µs per clock tick.
    pub tick: i64,
    /// Nominal `tick`: 10^6 / USER_HZ.
    pub nominal_tick: i64,
    /// `freq`, ppm with a 16-bit fraction.
    pub freq: i64,
    /// `offset`, ns (the PLL's remaining offset).
    pub offset_ns: i64,
    /// `constant` (the PLL's time constant).
    pub constant: i64,
    /// `status` (STA_* bits).
    pub status: i32,
}

impl KernelRate {
    /// The correction of CLOCK_REALTIME's rate it applies, ppb, summed in absolute value: the
    /// tick's deviation from nominal, the frequency offset, and the PLL's slew of its remaining
    /// offset (a 2^-(2 + constant) share of it each second, as the kernel's `second_overflow`).
    pub fn correction_ppb(&self) -> u64 {
        let tick = (self.tick - self.nominal_tick).unsigned_abs() as u128 * 1_000_000_000
            / self.nominal_tick.max(1).unsigned_abs() as u128;
        let freq = self.freq.unsigned_abs() as u128 * 1_000 / 65_536;
        let pll = if self.status & 0x0001 != 0 {
            // STA_PLL; FLL mode (STA_FLL) applies the offset the same way or slower.
            (self.offset_ns.unsigned_abs() as u128) >> (2 + self.constant.clamp(0, 10)) as u32
        } else {
            0
        };
        u64::try_from(tick + freq + pll).unwrap_or(u64::MAX)
    }

    /// The kernel's state now, read with `adjtimex` and `modes` 0 (no privilege; it changes
    /// nothing). `None` when the call is refused (a sandbox's seccomp filter).
    pub fn read() -> Option<KernelRate> {
        // SAFETY: an all-zero `timex` is a valid value of this plain C struct.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = 0;
        // SAFETY: `tx` is a valid, writable timex; modes 0 makes the call read-only.
        if unsafe { libc::adjtimex(&mut tx) } < 0 {
            return None;
        }
        // SAFETY: sysconf has no preconditions; an error gives -1, replaced by the usual 100.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as i64 } else { 100 };
        let nano = tx.status & libc::STA_NANO != 0;
        Some(KernelRate {
            tick: tx.tick as i64,
            nominal_tick: 1_000_000 / hz,
            freq: tx.freq as i64,
            offset_ns: if nano { tx.offset as i64 } else { (tx.offset as i64).saturating_mul(1_000) },
            constant: tx.constant as i64,
            status: tx.status,
        })
    }
}

/// CLOCK_REALTIME now, ns since 1970 (negative before it).
pub fn realtime_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// What a handle has seen of the page's disruption marker: the marker and the CLOCK_REALTIME
/// time by which it was surely in place (the end of the first read that saw it). A timestamp
/// before that time may lie before a disruption this handle did not see.
#[derive(Debug)]
pub struct MarkerWatch {
    marker: AtomicU64,
    since: AtomicI64,
    /// CLOCK_REALTIME of the last check that found the kernel's rate correction within
    /// [`PAST_SLEW_LIMIT_PPB`] (i64::MIN: none yet).
    slew_ok_at: AtomicI64,
}

/// How long a passed check of the kernel's rate correction is taken as still true: 10 ms (so a
/// caller bounding many timestamps makes one `adjtimex` call per 10 ms, not one per call).
pub const SLEW_CHECK_VALID_NS: i64 = 10_000_000;

impl MarkerWatch {
    /// A watch that saw `marker` in place at `seen_ns` (CLOCK_REALTIME).
    pub fn new(marker: u64, seen_ns: i64) -> Self {
        MarkerWatch {
            marker: AtomicU64::new(marker),
            since: AtomicI64::new(seen_ns),
            slew_ok_at: AtomicI64::new(i64::MIN),
        }
    }

    /// Whether the kernel corrects CLOCK_REALTIME's rate by more than [`PAST_SLEW_LIMIT_PPB`]
    /// now (`now_ns`: CLOCK_REALTIME): asked with `adjtimex` unless a check passed within the
    /// last [`SLEW_CHECK_VALID_NS`]. Where `adjtimex` is refused, `false`.
    pub fn slewing(&self, now_ns: i64) -> bool {
        let last = self.slew_ok_at.load(Ordering::Relaxed);
        if last != i64::MIN && (0..SLEW_CHECK_VALID_NS).contains(&now_ns.saturating_sub(last)) {
            return false;
        }
        match KernelRate::read() {
            Some(k) if k.correction_ppb() > PAST_SLEW_LIMIT_PPB => {
                self.slew_ok_at.store(i64::MIN, Ordering::Relaxed);
                true
            }
            _ => {
                self.slew_ok_at.store(now_ns, Ordering::Relaxed);
                false
            }
        }
    }

    /// A watch over `clock`'s page as it is now.
    pub fn of<M: PageMemory>(clock: &Clock<M>) -> Result<Self, Code> {
        let snap = clock.snapshot().map_err(|e| Code::of_clock(&e))?;
        Ok(MarkerWatch::new(snap.disruption_marker(), realtime_ns()))
    }

    /// The time since which `marker` (read by a read that ended at `seen_ns`) has been in place:
    /// the time it was first seen, or `seen_ns` when it is new (then remembered).
    pub fn since(&self, marker: u64, seen_ns: i64) -> i64 {
        // A reader that loads a new marker then loads `since` ordered after the writer's MAX.
        if self.marker.load(Ordering::Acquire) == marker {
            return self.since.load(Ordering::Acquire);
        }
        self.since.store(i64::MAX, Ordering::Relaxed);
        self.marker.store(marker, Ordering::Release);
        self.since.store(seen_ns, Ordering::Release);
        seen_ns
    }
}

/// The interval holding the true time at the instant a CLOCK_REALTIME timestamp `ts_ns` was
/// taken (in this machine's kernel, within the last [`PAST_MAX_AGE_NS`]).
///
/// The page maps counter values to time; a past CLOCK_REALTIME value has no counter value. It is
/// mapped through the kernel clock's relation now: the page is read between two CLOCK_REALTIME
/// reads `a` and `b`, so the kernel had elapsed between `a − ts` and `b − ts` from the timestamp
/// to the page's counter read. Assuming CLOCK_REALTIME ran within [`PAST_RATE_PPM`] of true time
/// and was not stepped in between, the true time elapsed is within `[(a − ts)(1 − ρ), (b −
/// ts)(1 + ρ)]`, so
///
/// `earliest = earliest_now − (b − ts)(1 + ρ)`, `latest = latest_now − (a − ts)(1 − ρ)`,
///
/// the time is `time_now − ((a + b)/2 − ts)` (kept within the bound). The bound is the page's
/// bound now, widened by `(b − a) + 2ρ(b − ts)`: the read's own width and the assumed rate error
/// over the age (at most 2 ms at the 1 s limit).
///
/// Without a bound on the page, the reading has none either (only the estimate moves back).
///
/// Refused: a timestamp later than `b` or older than 1 s ([`Code::TooOld`]); CLOCK_REALTIME going
/// back between `a` and `b` ([`Code::Disrupted`]); a timestamp from before the
/// first read of this handle that saw the page's current disruption marker (a live migration or
/// restore may lie between, across which the kernel clock may have been stepped), or within 1 s
/// of the leap second the page announces ([`Code::Disrupted`]); any call while the kernel corrects
/// CLOCK_REALTIME's rate by more than [`PAST_SLEW_LIMIT_PPB`] (its tick, frequency and PLL slew,
/// read with `adjtimex`; chrony slews up to 83,333 ppm by default) ([`Code::Slewing`]). The rate is
/// checked at the call, not over the whole interval: a fast slew that began and ended between
/// the timestamp and the call is not seen, nor is a step of CLOCK_REALTIME by other means
/// (settimeofday): the result is then wrong by the slew's excess or the step. A passed check holds
/// for [`SLEW_CHECK_VALID_NS`]. Where `adjtimex` is refused (a seccomp filter), the check is
/// skipped.
pub fn bound_realtime<M: PageMemory>(clock: &Clock<M>, watch: &MarkerWatch, ts_ns: i64) -> Result<Reading, Code> {
    if watch.slewing(realtime_ns()) {
        return Err(Code::Slewing);
    }
    bound_realtime_with(clock, watch, ts_ns, realtime_ns, crate::counter::read)
}

/// [`bound_realtime`] with another CLOCK_REALTIME and counter (tests, simulations).
pub fn bound_realtime_with<M: PageMemory>(
    clock: &Clock<M>,
    watch: &MarkerWatch,
    ts_ns: i64,
    mut realtime: impl FnMut() -> i64,
    read_counter: impl FnMut() -> u64,
) -> Result<Reading, Code> {
    let a = realtime();
    let now = clock.now_with_counter(read_counter).map_err(|e| Code::of_clock(&e))?;
    let b = realtime();
    let now_reading = Reading::from_now(&now)?;
    past_from(&now_reading, watch.since(now.disruption_marker, b), a, b, ts_ns)
}

/// [`bound_realtime`]'s arithmetic: the reading `now` made between CLOCK_REALTIME `a` and `b`,
/// its marker in place since `since`.
pub fn past_from(now: &Reading, since: i64, a: i64, b: i64, ts_ns: i64) -> Result<Reading, Code> {
    if b < a {
        // CLOCK_REALTIME went back during the read: it was stepped.
        return Err(Code::Disrupted);
    }
    let (a, b, ts) = (a as i128, b as i128, ts_ns as i128);
    if ts > b || b - ts > PAST_MAX_AGE_NS as i128 {
        return Err(Code::TooOld);
    }
    if ts < since as i128 {
        return Err(Code::Disrupted);
    }
    if now.leap != abi::leap::NONE {
        // The edge in CLOCK_REALTIME ns: within 1 s of [ts, b], CLOCK_REALTIME may have
        // repeated or skipped a second that true time did not.
        let edge = now.leap_at_sec.map(|s| s as i128 * 1_000_000_000);
        if edge.is_none_or(|e| e + 1_000_000_000 >= ts && e - 1_000_000_000 <= b) {
            return Err(Code::Disrupted);
        }
    }
    let hi = b - ts;
    let lo = (a - ts).max(0);
    let grow = hi + ((hi * PAST_RATE_PPM as i128) as u128).div_ceil(1_000_000) as i128;
    let shrink = lo - ((lo * PAST_RATE_PPM as i128) as u128).div_ceil(1_000_000) as i128;
    let fit = |v: i128| i64::try_from(v).map_err(|_| Code::Overflow);
    let earliest = now.earliest_ns.map(|e| fit(e as i128 - grow)).transpose()?;
    let latest = now.latest_ns.map(|l| fit(l as i128 - shrink)).transpose()?;
    let mut time = now.time_ns as i128 - ((a + b).div_euclid(2) - ts);
    if let (Some(e), Some(l)) = (earliest, latest) {
        time = time.clamp(e as i128, l as i128);
    }
    let time_ns = fit(time)?;
    let maxerror_ns = match (earliest, latest) {
        (Some(e), Some(l)) => Some(fit((time - e as i128).max(l as i128 - time))?),
        _ => None,
    };
    Ok(Reading {
        earliest_ns: earliest,
        time_ns,
        latest_ns: latest,
        maxerror_ns,
        esterror_ns: None,
        page_time_ns: (now.page_time_ns as i128 - (now.time_ns as i128 - time)).max(0) as u128,
        ..*now
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::synchronized_tai;
    use crate::{PageBuf, Writer};

    /// A clock over a TAI page whose reference is `c1` at 1_795_000_037 s TAI, a 1 GHz counter,
    /// maxerror 1 µs and 100 · 2^-93 s a tick, status `status`.
    fn clock(c1: u64, status: u8) -> Clock<PageBuf> {
        let buf = PageBuf::new();
        Writer::new(&buf).publish(&synchronized_tai(crate::counter::NATIVE, c1, 1_000_000_000).status(status).build());
        Clock::new(buf)
    }

    #[test]
    fn codes_are_the_c_values_with_distinct_one_line_texts() {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in Code::ALL.into_iter().enumerate() {
            assert_eq!(c as i32, -(i as i32) - 1);
            assert_eq!(Code::from_i32(c as i32), Some(c));
            assert!(c.text().contains(": ") && !c.text().contains('\n'), "{c:?}");
            assert!(seen.insert(c.text()), "{c:?}");
            assert!(c.name().starts_with("VMCLOCK_E_"));
        }
        assert_eq!(Code::from_i32(0), None);
        assert_eq!(Code::from_i32(-16), None);
    }

    #[test]
    fn the_cap_refuses_wide_bounds_and_unsynchronized_pages() {
        if crate::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let c = clock(crate::counter::read(), abi::status::SYNCHRONIZED);
        let r = now_within(&c, 10_000_000).expect("a 1 µs page within 10 ms");
        // 1 µs either side, rounded outwards, plus the little growth since the reference.
        let w = r.width_ns().unwrap();
        assert!((2_000..10_000_000).contains(&w), "{w}");
        let e = now_within(&c, 1_000).unwrap_err();
        assert_eq!(e.code, Code::TooWide);
        assert!(e.reading.is_some_and(|r| r.width_ns().unwrap() > 1_000));
        for status in [abi::status::FREERUNNING, abi::status::UNKNOWN, abi::status::UNRELIABLE] {
            let c = clock(crate::counter::read(), status);
            assert_eq!(now_within(&c, u64::MAX).unwrap_err().code, Code::Unsynchronized, "{status}");
        }
        // An unbounded reading is wider than any cap.
        let mut r = r;
        (r.earliest_ns, r.latest_ns) = (None, None);
        assert_eq!(check_cap(&r, u64::MAX), Err(Code::TooWide));
    }

    fn reading(e: i64, t: i64, l: i64) -> Reading {
        Reading {
            earliest_ns: Some(e),
            time_ns: t,
            latest_ns: Some(l),
            maxerror_ns: Some((t - e).max(l - t)),
            esterror_ns: None,
            page_time_ns: t as u128 + 37_000_000_000,
            time_type: abi::time_type::TAI,
            tai_minus_utc: Some(37),
            status: abi::status::SYNCHRONIZED,
            disruption_marker: 1,
            counter: 0,
            leap: 0,
            leap_at_sec: None,
        }
    }

    #[test]
    fn the_past_bound_widens_by_the_read_and_the_rate_over_the_age() {
        let now = reading(10_000, 11_000, 12_000);
        // Read between 5_000 and 5_100; the timestamp 600 ns before the read began.
        let p = past_from(&now, 0, 5_000, 5_100, 4_400).unwrap();
        // Elapsed 600..700 ns; 1000 ppm: at most 700 + 1, at least 600 − 1.
        assert_eq!(p.earliest_ns, Some(10_000 - 701));
        assert_eq!(p.latest_ns, Some(12_000 - 599));
        assert_eq!(p.time_ns, 11_000 - 650);
        assert_eq!(p.page_time_ns, now.page_time_ns - 650);
        // A timestamp inside the read: no shrinking.
        let p = past_from(&now, 0, 5_000, 5_100, 5_050).unwrap();
        assert_eq!((p.earliest_ns, p.latest_ns), (Some(10_000 - 51), Some(12_000)));
        // Refusals.
        assert_eq!(past_from(&now, 0, 5_000, 5_100, 5_101), Err(Code::TooOld), "later than now");
        assert_eq!(past_from(&now, i64::MIN, 5_000, 5_100, 5_100 - PAST_MAX_AGE_NS - 1), Err(Code::TooOld));
        assert!(past_from(&now, i64::MIN, 5_000, 5_100, 5_100 - PAST_MAX_AGE_NS).is_ok());
        assert_eq!(past_from(&now, 4_500, 5_000, 5_100, 4_400), Err(Code::Disrupted), "before the marker was seen");
        assert_eq!(past_from(&now, 0, 5_100, 5_000, 4_400), Err(Code::Disrupted), "CLOCK_REALTIME stepped back");
        // A leap second within a second of the timestamp or the read.
        let leap = Reading { leap: abi::leap::PRE_POS, leap_at_sec: Some(0), ..now };
        assert_eq!(past_from(&leap, 0, 5_000, 5_100, 4_400), Err(Code::Disrupted));
        let far = Reading { leap_at_sec: Some(100), ..leap };
        assert!(past_from(&far, 0, 5_000, 5_100, 4_400).is_ok());
    }

    #[test]
    fn the_kernel_rate_correction_sums_tick_frequency_and_pll_slew() {
        let quiet = KernelRate { tick: 10_000, nominal_tick: 10_000, freq: 0, offset_ns: 0, constant: 2, status: 0 };
        assert_eq!(quiet.correction_ppb(), 0);
        // chrony's fast slew: tick 10_050 µs is +5000 ppm.
        assert_eq!(KernelRate { tick: 10_050, ..quiet }.correction_ppb(), 5_000_000);
        // freq 500 ppm (the kernel's limit) and −12.5 ppm.
        assert_eq!(KernelRate { freq: 500 << 16, ..quiet }.correction_ppb(), 500_000);
        assert_eq!(KernelRate { freq: -(25 << 15), ..quiet }.correction_ppb(), 12_500);
        // The PLL slews a 2^-(2 + constant) share of its 1 ms offset a second: 1e6 >> 4 ppb.
        let pll = KernelRate { offset_ns: -1_000_000, status: 0x0001, ..quiet };
        assert_eq!(pll.correction_ppb(), 62_500);
        assert_eq!(KernelRate { status: 0, ..pll }.correction_ppb(), 0, "no PLL: the offset is not slewed");
        // This machine's kernel answers (adjtimex with modes 0 needs no privilege).
        let k = KernelRate::read().expect("adjtimex readable");
        assert!(k.nominal_tick > 0 && k.tick > 0, "{k:?}");
    }

    #[test]
    fn a_passed_slew_check_holds_for_10_ms() {
        let w = MarkerWatch::new(0, 0);
        if w.slewing(1_000) {
            // This machine's kernel is slewing fast right now: nothing is remembered.
            assert_eq!(w.slew_ok_at.load(Ordering::Relaxed), i64::MIN);
            return;
        }
        assert_eq!(w.slew_ok_at.load(Ordering::Relaxed), 1_000);
        assert!(!w.slewing(1_000 + SLEW_CHECK_VALID_NS - 1));
        assert_eq!(w.slew_ok_at.load(Ordering::Relaxed), 1_000, "within 10 ms: not asked again");
        let later = 1_000 + SLEW_CHECK_VALID_NS;
        if !w.slewing(later) {
            assert_eq!(w.slew_ok_at.load(Ordering::Relaxed), later, "10 ms on: asked again");
        }
        // CLOCK_REALTIME stepped back: asked again.
        if !w.slewing(500) {
            assert_eq!(w.slew_ok_at.load(Ordering::Relaxed), 500);
        }
    }

    #[test]
    fn a_marker_change_refuses_every_earlier_timestamp() {
        let w = MarkerWatch::new(5, 1_000);
        assert_eq!(w.since(5, 9_000), 1_000);
        assert_eq!(w.since(6, 9_000), 9_000, "a new marker is in place from the read that saw it");
        assert_eq!(w.since(6, 12_000), 9_000);
        assert_eq!(w.since(5, 13_000), 13_000, "changed back: a change again");
    }

    proptest::proptest! {
        /// A simulated kernel clock running within the assumed rate error of true time (the
        /// page's time), offset from it: the bound of a timestamp taken up to 1 s earlier holds
        /// the true time at that instant. The page's own bound is 1 µs either side.
        #[test]
        fn the_past_bound_holds_the_true_time(
            ppm in -999i64..=999,
            offset_ns in -1_000_000_000i64..1_000_000_000,
            age_ns in 0i64..1_000_000_000,
            half_read_ns in 0i64..20_000,
        ) {
            if crate::counter::NATIVE == abi::counter_id::INVALID {
                return Ok(());
            }
            // The 1 GHz counter: one tick a ns from c1 on the page's time.
            let c1 = 1u64 << 40;
            let c = clock(c1, abi::status::SYNCHRONIZED);
            let kernel = |tick: i64| offset_ns + tick + tick * ppm / 1_000_000;
            let read_at = 2_000_000_000i64; // ticks after c1
            let ts = kernel(read_at - half_read_ns - age_ns);
            let watch = MarkerWatch::new(c.snapshot().unwrap().disruption_marker(), i64::MIN);
            let mut calls = 0;
            let realtime = || {
                calls += 1;
                kernel(if calls == 1 { read_at - half_read_ns } else { read_at + half_read_ns })
            };
            let truth_then = read_at - half_read_ns - age_ns; // ns after the reference, true time
            match bound_realtime_with(&c, &watch, ts, realtime, || c1 + read_at as u64) {
                Ok(p) => {
                    let base = 1_795_000_000_000_000_000i64; // the reference, UTC
                    let t = base + truth_then;
                    proptest::prop_assert!(p.earliest_ns.unwrap() <= t && t <= p.latest_ns.unwrap(), "{p:?} vs {t}");
                    proptest::prop_assert!(p.earliest_ns.unwrap() <= p.time_ns && p.time_ns <= p.latest_ns.unwrap());
                }
                // Older than 1 s by the kernel's count (a fast kernel clock): refused, not wrong.
                Err(Code::TooOld) => proptest::prop_assert!(2 * half_read_ns + age_ns + (2 * half_read_ns + age_ns) * ppm / 1_000_000 > 1_000_000_000 - 2),
                Err(e) => proptest::prop_assert!(false, "{e:?}"),
            }
        }
    }
}
