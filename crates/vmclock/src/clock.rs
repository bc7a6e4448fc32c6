//! `Clock`: bounded time read straight from a mapped page, with no system call.
//!
//! The read path is the spec's and the driver's: `seq_count`, the copy, the ordered counter
//! read, an acquire fence, `seq_count` again, and a retry when it changed. Only what can change
//! per read is validated per read; the constant fields (magic, size, version, `counter_id`,
//! `time_type`) are checked once per mapping (again only if the word holding `counter_id` and
//! `time_type` ever differs from the one checked, which a conforming producer never does).

use crate::abi::{self, flags, PAGE_SIZE};
use crate::error::{ClockError, ReadError, TimeError};
use crate::map::Mapping;
use crate::seqlock::{self, fence, AtomicU32, Ordering, PageMemory, SEQ_WORD};
use crate::snapshot::{bound_at, utc_with_leap, Bounded, ErrorModel, LeapEdge, PageTime, Reference, Snapshot};
use crate::time::nanos_to_frac_ceil;
use crate::time::{Tai, Timescale, Timestamp, Utc};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A vmclock page mapped read-only, for applications.
#[derive(Debug)]
pub struct Clock<M: PageMemory = Mapping> {
    mem: M,
    max_wait: Duration,
    /// The constant fields, once checked: bit 63 set, the word at 0x08 (version, counter_id,
    /// time_type) in bits 0..32, and the flag bits whose fields the page's size leaves out in
    /// bits 32..48 (cleared from every read's flags). 0: not checked yet.
    checked: AtomicU64,
    /// The hot path's constants for the page version last read ([`Fast`]).
    fast: Fast,
}

/// One bounded reading of the clock. Flat, so it is returned in registers and a few stores;
/// the typed views ([`Now::time`], [`Now::tai`], [`Now::utc`]) are built on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The page's `time_type` (UTC, TAI or MONOTONIC; anything else is refused before).
    pub time_type: u8,
    /// The time at `counter`, 64.64 fixed-point seconds in the page's timescale.
    pub raw: u128,
    /// Maximum error, 2^-64 s (`None`: the page does not bound it).
    pub maxerror: Option<u128>,
    /// The counter value the time was computed for (read inside the seqlock with the page).
    pub counter: u64,
    /// `clock_status` (UNKNOWN when absent).
    pub status: u8,
    /// `disruption_marker` of the page the time came from.
    pub disruption_marker: u64,
    /// TAI − UTC (positive: 37) at the reference, when the page gives it (see
    /// [`Snapshot::tai_minus_utc`]).
    pub tai_minus_utc: Option<i16>,
    /// The leap second the page's `leap_indicator` announces, placed in time ([`LeapEdge`]);
    /// [`Now::utc`] applies it.
    pub leap: Option<LeapEdge>,
    /// The estimated error's terms, turned into a bound only when asked ([`Now::esterror`]):
    /// an application that reads earliest and latest does not pay for it. The time term is
    /// already in 2^-64 s (rounded up, as [`ErrorModel::at`] converts it).
    est_time: Option<u128>,
    /// The estimated error's rate term, 2^-(64 + shift) s per tick.
    est_rate: Option<u64>,
    /// C − C1 (two's complement of the wrapped difference), for [`Now::esterror`].
    delta: i64,
    /// The period's shift, for [`Now::esterror`].
    shift: u8,
}

impl Now {
    #[inline(always)]
    fn bounded<S: Timescale>(&self) -> Bounded<S> {
        Bounded { time: Timestamp::from_raw(self.raw), maxerror: self.maxerror, esterror: self.esterror() }
    }

    /// Estimated error, 2^-64 s (`None`: the page does not give it), computed from the terms
    /// read with the time (exactly what [`Snapshot::time_at`] gives for the same counter).
    #[inline]
    pub fn esterror(&self) -> Option<u128> {
        bound_at(self.est_time?, self.est_rate, self.delta, self.shift)
    }

    /// The time and its bounds, in the page's timescale.
    #[inline]
    pub fn time(&self) -> PageTime {
        match self.time_type {
            abi::time_type::TAI => PageTime::Tai(self.bounded()),
            abi::time_type::UTC => PageTime::Utc(self.bounded()),
            _ => PageTime::Monotonic(self.bounded()),
        }
    }

    /// The time in TAI (a UTC page needs a valid TAI offset).
    #[inline(always)]
    pub fn tai(&self) -> Result<Bounded<Tai>, TimeError> {
        // What `self.time().tai(self.tai_minus_utc)` gives, with the errors decided before the
        // bounds are built: the result's variant then does not depend on the estimated error
        // (whose `Option` tag the compiler may use to store it), so an application that reads
        // only earliest and latest does not compute it.
        // The errors come from a call: built in place, the error's unused bytes would be taken
        // from an earlier reading's result (the same memory) and keep its estimated error live.
        #[cold]
        #[inline(never)]
        fn fail(e: TimeError) -> Result<Bounded<Tai>, TimeError> {
            Err(e)
        }
        let time = match self.time_type {
            abi::time_type::TAI => Timestamp::<Tai>::from_raw(self.raw),
            abi::time_type::UTC => match self.tai_minus_utc {
                Some(off) => match Timestamp::<Utc>::from_raw(self.raw).to_tai(off) {
                    Some(t) => t,
                    None => return fail(TimeError::Overflow),
                },
                None => return fail(TimeError::NoTaiOffset { from: "UTC", to: "TAI" }),
            },
            _ => return fail(TimeError::NotWallClock("TAI")),
        };
        Ok(Bounded { time, maxerror: self.maxerror, esterror: self.esterror() })
    }

    /// The time in UTC (a TAI page needs a valid TAI offset), with a leap second announced
    /// between the page's reference and this reading applied.
    #[inline]
    pub fn utc(&self) -> Result<Bounded<Utc>, TimeError> {
        utc_with_leap(self.time(), self.tai_minus_utc, self.leap)
    }

    /// Whether the page says its time may be relied upon (SYNCHRONIZED or FREERUNNING).
    pub fn is_reliable(&self) -> bool {
        matches!(self.status, abi::status::SYNCHRONIZED | abi::status::FREERUNNING)
    }
}

impl Clock<Mapping> {
    /// Maps `path` (`/dev/vmclock0` or a page file) read-only. The page is checked once here.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClockError> {
        let path = path.as_ref();
        let mem = Mapping::open(path).map_err(|source| ClockError::Map { path: path.display().to_string(), source })?;
        let clock = Clock::new(mem);
        clock.snapshot()?;
        Ok(clock)
    }
}

/// First and last word of the fields a reading needs: 0x08 (version, counter_id, time_type)
/// up to the end of `time_maxerror_nanosec` (0x68).
const FIRST: usize = 2;
const COUNT: usize = 0x68 / 4 - FIRST;
const CHECKED: u64 = 1 << 63;

/// A little-endian u64 from two loaded words.
#[inline(always)]
fn u64_of(w: &[u32; COUNT], byte_off: usize) -> u64 {
    let i = byte_off / 4 - FIRST;
    u32::from_le(w[i]) as u64 | (u32::from_le(w[i + 1]) as u64) << 32
}

impl<M: PageMemory> Clock<M> {
    /// A clock over any page memory.
    pub fn new(mem: M) -> Self {
        Clock { mem, max_wait: seqlock::DEFAULT_MAX_WAIT, checked: AtomicU64::new(0), fast: Fast::default() }
    }

    /// How long a read waits for a busy writer before failing (default 100 ms, as the kernel).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The page memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// One consistent, fully validated copy of the page.
    #[inline]
    pub fn snapshot(&self) -> Result<Snapshot, ClockError> {
        Ok(seqlock::read(&self.mem, self.max_wait)?)
    }

    /// Earliest, latest and best time now: the counter is read inside the seqlock, so the time
    /// always comes from the page that was current when the counter was read. No system call
    /// unless the writer is busy for a while.
    #[inline(always)]
    pub fn now(&self) -> Result<Now, ClockError> {
        self.now_with_counter(crate::counter::read)
    }

    /// [`Clock::now`] with another counter read (tests, simulations). `read_counter` runs inside
    /// the seqlock, after the copy, and again on every retry.
    #[inline(always)]
    pub fn now_with_counter(&self, mut read_counter: impl FnMut() -> u64) -> Result<Now, ClockError> {
        let words = self.mem.words();
        let Some(words) = words.get(..FIRST + COUNT) else {
            return Err(too_short(words.len()));
        };
        // The cache shared by every reader of this clock; when it does not serve the read, a full
        // read ([`Clock::now_full_loaded`]) whose answer comes back in the cache's form. Both
        // give plain integers (`Loaded`) and the `Now` is built from them by one code: the
        // compiler does not merge two `Now`s (which it does through memory).
        if let Some(l) = self.fast.read(words, false, &mut read_counter) {
            return Ok(l.now());
        }
        Ok(self.now_full_loaded(words, &mut read_counter)?.now())
    }

    /// [`Clock::now_full`]'s reading in the cache's form: written into a local `Fast`, read
    /// back from it (trusted: for its own counter value it is exactly that reading).
    #[cold]
    #[inline(never)]
    fn now_full_loaded(
        &self,
        words: &[AtomicU32],
        read_counter: &mut impl FnMut() -> u64,
    ) -> Result<Loaded, ClockError> {
        let local = Fast::default();
        let counter = self.now_full(words, read_counter, &local)?;
        // Always `Some` (trusted, ΔC = 0); the error is never returned.
        local.read(words, true, || counter).ok_or(ReadError::Timeout { attempts: 0, waited_us: 0 }.into())
    }

    /// The uncontended read of [`Clock::now_with_counter`] alone: `None` when the page's
    /// constants are not cached (the first read of a page version, a writer holding the
    /// seqlock, a page or a counter the cache does not serve, a page memory too short); then
    /// [`Clock::now_with_counter`] gives the answer. Whenever this gives `Some`, it is what
    /// [`Clock::now_with_counter`] would have given.
    ///
    /// For callers that do more work with the `Now` (libvmclock): keeping the full read out of
    /// the caller's hot path lets the compiler keep the `Now` in registers instead of merging
    /// the two paths' results through memory.
    #[inline(always)]
    pub fn try_now_with_counter(&self, read_counter: impl FnOnce() -> u64) -> Option<Result<Now, TimeError>> {
        let words = self.mem.words().get(..FIRST + COUNT)?;
        self.fast.read(words, false, read_counter).map(|l| Ok(l.now()))
    }

    /// The constants the cached read uses for the page version this clock read last (see
    /// docs/PROTOCOL.md, "The cached read"), for a reader that does the same read elsewhere
    /// (libvmclock's header-only reader). `None`: nothing cached yet, a fill in progress, or a
    /// page version the cache does not serve. For a counter value `c` with `ΔC = c −
    /// counter_value` (wrapping) at most `dmax`, read inside the page's seqlock while its
    /// `seq_count` and constant word are the key's and its `counter_value` is this one, the
    /// reading is the [`Cached::time_at`] and [`Cached::maxerror_at`] of `ΔC` with these
    /// fields, exactly what [`Clock::now`] gives.
    pub fn cached(&self) -> Option<Cached> {
        let f = &self.fast;
        let g1 = f.gen.load(Ordering::Acquire);
        let key = f.key.load(Ordering::Relaxed);
        let v: [u64; SLOTS] = std::array::from_fn(|i| f.w[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        let g2 = f.gen.load(Ordering::Relaxed);
        let small = v[SMALL];
        if g1 != g2 || g1 & 1 != 0 || key == 0 || small & USABLE == 0 {
            return None;
        }
        let wide = |lo: usize, hi: usize| (v[hi] as u128) << 64 | v[lo] as u128;
        Some(Cached {
            seq: key as u32,
            word08: (key >> 32) as u32,
            counter_value: v[C1],
            period: v[PERIOD],
            shift: small as u8,
            rate: v[RATE],
            round: v[ROUND],
            time: wide(T1_LO, T1_HI),
            maxerror_time: (small & BOUNDED != 0).then(|| wide(TT_LO, TT_HI)),
            dmax: v[DMAX],
            disruption_marker: v[MARKER],
            time_type: (small >> 8) as u8,
            status: (small >> 16) as u8,
            tai_minus_utc: (small & TAI_VALID != 0).then_some((small >> 24) as u16 as i16),
            leap: (small & LEAP_SOME != 0).then_some(LeapEdge {
                at_sec: v[LEAP_AT],
                before: small & LEAP_BEFORE != 0,
                step: (small >> 48) as u8 as i8,
            }),
        })
    }

    /// A read over a full copy of the page's words (retried while the writer is busy, the
    /// constant fields checked once): its reading written into `local` in the cache's form
    /// (see [`Fast::set_now`]), its counter returned; the shared cache filled when the page
    /// version is not the one it holds.
    #[cold]
    #[inline(never)]
    fn now_full(
        &self,
        words: &[AtomicU32],
        read_counter: &mut impl FnMut() -> u64,
        local: &Fast,
    ) -> Result<u64, ClockError> {
        let now = match self.attempt(words, read_counter) {
            Some(r) => r?,
            None => self.now_contended(words, read_counter)?,
        };
        local.set_now(&now);
        Ok(now.counter)
    }

    /// One attempt over a full copy of the page's words: `None` when the writer held the
    /// seqlock or the constant fields are not checked yet.
    #[inline(always)]
    fn attempt(&self, words: &[AtomicU32], read_counter: &mut impl FnMut() -> u64) -> Option<Result<Now, TimeError>> {
        let mut w = [0u32; COUNT];
        let counter = seqlock::try_read_with_counter(words, FIRST, &mut w, &mut *read_counter)?;
        let checked = self.checked.load(Ordering::Relaxed);
        if checked & CHECKED != 0 && checked as u32 == w[0] {
            return Some(self.compute_and_cache(&w, checked, counter));
        }
        None
    }

    /// [`compute`] on a checked copy, and the copy's constants cached when the cache holds
    /// another version's.
    #[inline(always)]
    fn compute_and_cache(&self, w: &[u32; COUNT], checked: u64, counter: u64) -> Result<Now, TimeError> {
        let absent = (checked >> 32) as u16 as u64;
        let r = compute(w, absent, counter);
        if r.is_ok() && self.fast.key.load(Ordering::Relaxed) != key_of(w[0], w[SEQ_WORD - FIRST]) {
            self.fast.fill(w, absent);
        }
        r
    }

    /// Retries while the writer is busy (bounded by `max_wait`), and checks the constant fields
    /// when they have not been checked yet.
    #[cold]
    #[inline(never)]
    fn now_contended(&self, words: &[AtomicU32], read_counter: &mut impl FnMut() -> u64) -> Result<Now, ClockError> {
        let mut give_up = seqlock::deadline(self.max_wait);
        let mut attempts = 0u32;
        loop {
            let mut w = [0u32; COUNT];
            if let Some(counter) = seqlock::try_read_with_counter(words, FIRST, &mut w, &mut *read_counter) {
                let checked = self.checked.load(Ordering::Relaxed);
                if checked & CHECKED != 0 && checked as u32 == w[0] {
                    return Ok(self.compute_and_cache(&w, checked, counter)?);
                }
                // Checked, then read again; a page whose constant word keeps changing counts
                // as a busy writer, so this loop is bounded by `max_wait` too.
                self.check_constants()?;
            }
            attempts += 1;
            if let Some(waited_us) = give_up(attempts) {
                return Err(ReadError::Timeout { attempts, waited_us }.into());
            }
            core::hint::spin_loop();
        }
    }

    /// The once-per-mapping checks: a full validated snapshot, a time relation, this CPU's
    /// counter. Remembers the constant word and the flag bits of absent fields.
    #[cold]
    #[inline(never)]
    fn check_constants(&self) -> Result<(), ClockError> {
        let snap = self.snapshot()?;
        check_counter(&snap)?;
        snap.reference()?;
        // The word at 0x08 exactly as a read loads it (native-endian load of the page's bytes).
        let b = snap.to_bytes();
        let word = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let mut absent = 0u64;
        let size = snap.present_size();
        if !abi::field::TIME_MAXERROR.present_in(size) {
            absent |= flags::TIME_MAXERROR_VALID;
        }
        if !abi::field::TIME_ESTERROR.present_in(size) {
            absent |= flags::TIME_ESTERROR_VALID;
        }
        // The time fields end before 0x58, so every other field a reading needs is present.
        const _: () = assert!(flags::TIME_MAXERROR_VALID < 1 << 16 && flags::TIME_ESTERROR_VALID < 1 << 16);
        self.checked.store(CHECKED | absent << 32 | word as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A page memory that gives fewer words than a reading needs.
#[cold]
#[inline(never)]
fn too_short(words: usize) -> ClockError {
    ReadError::Page(crate::error::PageError::LargerThanMapping { size: 0, mapped: words * 4 }).into()
}

/// What one consistent copy of the words (0x08..0x68) says, apart from the counter; `absent`:
/// the flag bits of fields beyond the page's size.
struct Decoded {
    r: Reference,
    tai_minus_utc: Option<i16>,
    leap: Option<LeapEdge>,
    status: u8,
    disruption_marker: u64,
}

#[inline(always)]
fn decode(w: &[u32; COUNT], absent: u64) -> Result<Decoded, TimeError> {
    let flags = u64_of(w, 0x18) & !absent;
    let w24 = u32::from_le(w[0x24 / 4 - FIRST]);
    let shift = (w24 >> 24) as u8;
    if shift >= 128 {
        return Err(TimeError::UnusableShift(shift));
    }
    let time_type = (u32::from_le(w[0]) >> 24) as u8;
    let has = |f: u64| flags & f != 0;
    let r = Reference {
        counter_id: (u32::from_le(w[0]) >> 16) as u8,
        time_type,
        counter_value: u64_of(w, 0x28),
        period: u64_of(w, 0x30),
        shift,
        time: (u64_of(w, 0x48) as u128) << 64 | u64_of(w, 0x50) as u128,
        maxerror: ErrorModel {
            time_ns: has(flags::TIME_MAXERROR_VALID).then(|| u64_of(w, 0x60)),
            rate: has(flags::PERIOD_MAXERROR_VALID).then(|| u64_of(w, 0x40)),
        },
        esterror: ErrorModel {
            time_ns: has(flags::TIME_ESTERROR_VALID).then(|| u64_of(w, 0x58)),
            rate: has(flags::PERIOD_ESTERROR_VALID).then(|| u64_of(w, 0x38)),
        },
    };
    let tai_raw = w24 as u16 as i16;
    let tai_minus_utc = if has(flags::TAI_OFFSET_VALID) { abi::tai_offset::tai_minus_utc(tai_raw) } else { None };
    let leap_indicator = (w24 >> 16) as u8;
    let leap = if leap_indicator == abi::leap::NONE { None } else { leap_of(&r, tai_minus_utc, leap_indicator) };
    Ok(Decoded {
        r,
        tai_minus_utc,
        leap,
        status: (u32::from_le(w[0x20 / 4 - FIRST]) >> 16) as u8,
        disruption_marker: u64_of(w, 0x10),
    })
}

/// The time at `counter` from the words of one consistent read (0x08..0x68); `absent`: the flag
/// bits of fields beyond the page's size.
#[inline(always)]
fn compute(w: &[u32; COUNT], absent: u64, counter: u64) -> Result<Now, TimeError> {
    let Decoded { r, tai_minus_utc, leap, status, disruption_marker } = decode(w, absent)?;
    Ok(Now {
        time_type: r.time_type,
        raw: r.raw_time_at(counter)?,
        maxerror: r.maxerror_at(counter),
        counter,
        status,
        disruption_marker,
        tai_minus_utc,
        leap,
        est_time: r.esterror.time_ns.map(nanos_to_frac_ceil),
        est_rate: r.esterror.rate,
        delta: r.delta(counter),
        shift: r.shift,
    })
}

/// The key of a page version: its constant word (0x08: version, counter_id, time_type; never 0
/// on a checked page, whose version is 1) and its `seq_count`, both as loaded.
#[inline(always)]
fn key_of(word08: u32, seq: u32) -> u64 {
    (word08 as u64) << 32 | seq as u64
}

// The cached constants' slots in `Fast::w`.
const C1: usize = 0;
const PERIOD: usize = 1;
const RATE: usize = 2;
/// 2^shift − 1: the rate term's rounding up.
const ROUND: usize = 3;
const T1_LO: usize = 4;
const T1_HI: usize = 5;
/// The maximum error's time term, 2^-64 s.
const TT_LO: usize = 6;
const TT_HI: usize = 7;
const DMAX: usize = 8;
const MARKER: usize = 9;
/// The estimated error's time term, 2^-64 s.
const EST_LO: usize = 10;
const EST_HI: usize = 11;
const EST_RATE: usize = 12;
const LEAP_AT: usize = 13;
/// Added to ΔC for `Now::delta` (0 but in a local form: see [`Fast::set_now`]).
const DELTA: usize = 14;
/// shift (bits 0..8), time_type (8..16), status (16..24), TAI − UTC (24..40), then one bit each:
/// TAI − UTC valid, bounded, esterror time and rate present, leap present, leap before; the
/// leap step (i8) in 48..56.
const SMALL: usize = 15;
const SLOTS: usize = 16;
const TAI_VALID: u64 = 1 << 40;
const BOUNDED: u64 = 1 << 41;
const EST_TIME_SOME: u64 = 1 << 42;
const EST_RATE_SOME: u64 = 1 << 43;
const LEAP_SOME: u64 = 1 << 44;
const LEAP_BEFORE: u64 = 1 << 45;
/// Set by [`Fast::fill`] for a page the cache serves (for [`Clock::cached`]).
const USABLE: u64 = 1 << 46;

#[allow(clippy::too_many_arguments)]
fn small_of(
    shift: u8,
    time_type: u8,
    status: u8,
    tai_minus_utc: Option<i16>,
    bounded: bool,
    est: ErrorModel,
    leap: Option<LeapEdge>,
) -> u64 {
    let leap_bits = match leap {
        Some(l) => LEAP_SOME | if l.before { LEAP_BEFORE } else { 0 } | (l.step as u8 as u64) << 48,
        None => 0,
    };
    shift as u64
        | (time_type as u64) << 8
        | (status as u64) << 16
        | tai_minus_utc.map_or(0, |t| (t as u16 as u64) << 24 | TAI_VALID)
        | if bounded { BOUNDED } else { 0 }
        | est.time_ns.map_or(0, |_| EST_TIME_SOME)
        | est.rate.map_or(0, |_| EST_RATE_SOME)
        | leap_bits
}

/// The constants of the page version last read, so that a read of an unchanged page is one
/// seqlock read, the counter and two multiply-shifts: what a full copy gives, decoded and
/// converted once per page version instead of once per read (the time term of the maximum
/// error in 2^-64 s, the flags, the TAI offset, the leap second, the largest counter distance
/// for which nothing can overflow).
///
/// **Validity.** Filled only from a consistent, checked copy whose reading succeeded, keyed by
/// that copy's `seq_count` and constant word. A read uses it only when the page's `seq_count`
/// (before and after the counter read, as any seqlock read) and constant word equal the key and
/// the page's `counter_value` equals the cached one: then the page is the version the constants
/// came from (a writer bumps `seq_count` on every change; a key seen again after exactly 2^31
/// updates would also need the same reference counter value). The cache has its own seqlock
/// (`gen`), so that threads sharing a `Clock` never see half a fill; a fill in progress sends
/// readers to the full copy, never to a wait.
///
/// **Exactness.** Only pages whose reading needs no special case are cached: shift ≤ 63, the
/// maximum error with both terms or neither, and a read takes it only for a counter at or after
/// the reference and at most `DMAX` ticks from it, chosen so that no sum can overflow or
/// saturate. There the time is T1 + ⌊P·ΔC / 2^shift⌋ and the maximum error time + ⌈R·ΔC /
/// 2^shift⌉, exactly as [`Reference::raw_time_at`] and [`ErrorModel::at`] compute them (the
/// property test `clock_now_equals_the_snapshot_path` compares both paths); anything else goes
/// to the full copy.
///
/// **A local form.** The same slots also hold any one reading exactly, for one counter value
/// (period, rate and rounding 0, ΔC 0, `DELTA` its ΔC): [`Clock::now_with_counter`] writes a
/// full read's answer so into a local `Fast` and builds the `Now` from it with the same code.
#[derive(Debug, Default)]
struct Fast {
    /// Even: stable; odd: a fill in progress.
    gen: AtomicU32,
    /// [`key_of`] the version the constants came from; 0: none.
    key: AtomicU64,
    w: [AtomicU64; SLOTS],
}

impl Fast {
    /// The reading from the cached constants, or `None` (then a full read answers). A
    /// `trusted` (local) form is not checked against the page.
    #[inline(always)]
    fn read(&self, words: &[AtomicU32], trusted: bool, read_counter: impl FnOnce() -> u64) -> Option<Loaded> {
        let seq = &words[SEQ_WORD];
        let s1 = seq.load(Ordering::Acquire);
        // The counter right after the count: nothing else before it, because the ordered read
        // waits for every earlier instruction (the loads below run in its shadow instead; the
        // cache's own seqlock needs no order against the counter).
        let counter = read_counter();
        let g1 = self.gen.load(Ordering::Acquire);
        let key = self.key.load(Ordering::Relaxed);
        let word08 = words[FIRST].load(Ordering::Relaxed);
        let c1_lo = words[0x28 / 4].load(Ordering::Relaxed);
        let c1_hi = words[0x2c / 4].load(Ordering::Relaxed);
        let w = |i: usize| self.w[i].load(Ordering::Relaxed);
        let (c1, period, rate, round, dmax, small) = (w(C1), w(PERIOD), w(RATE), w(ROUND), w(DMAX), w(SMALL));
        let wide = |lo: usize, hi: usize| (w(hi) as u128) << 64 | w(lo) as u128;
        let (t1, tt, est) = (wide(T1_LO, T1_HI), wide(TT_LO, TT_HI), wide(EST_LO, EST_HI));
        let (marker, est_rate, leap_at, delta) = (w(MARKER), w(EST_RATE), w(LEAP_AT), w(DELTA));
        fence(Ordering::Acquire);
        let (s2, g2) = (seq.load(Ordering::Relaxed), self.gen.load(Ordering::Relaxed));
        let page_c1 = u32::from_le(c1_lo) as u64 | (u32::from_le(c1_hi) as u64) << 32;
        if !trusted && (s1 != s2 || g1 != g2 || key != key_of(word08, s1) || g1 & 1 != 0 || page_c1 != c1) {
            return None;
        }
        let d = counter.wrapping_sub(c1);
        if d > dmax {
            return None;
        }
        Some(Loaded { counter, d, period, rate, round, small, t1, tt, est, marker, est_rate, leap_at, delta })
    }
}

/// The cached read's constants for one page version ([`Clock::cached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The version's `seq_count`, as loaded from the page (native-endian).
    pub seq: u32,
    /// The version's word at 0x08 (version, counter_id, time_type), as loaded; never 0.
    pub word08: u32,
    /// The page's `counter_value` (the reference counter C1).
    pub counter_value: u64,
    /// The page's period, 2^-(64 + shift) s per tick.
    pub period: u64,
    /// The period's shift, at most 63.
    pub shift: u8,
    /// The maximum error's rate term, 2^-(64 + shift) s per tick (0 when unbounded).
    pub rate: u64,
    /// 2^shift − 1 (the rate term rounded up).
    pub round: u64,
    /// The time at C1, 64.64 s in the page's timescale.
    pub time: u128,
    /// The maximum error's time term, 2^-64 s (`None`: the page gives no maximum error).
    pub maxerror_time: Option<u128>,
    /// The largest ΔC the constants serve (no sum can overflow up to it).
    pub dmax: u64,
    /// The page's disruption marker.
    pub disruption_marker: u64,
    /// The page's time_type.
    pub time_type: u8,
    /// The page's clock_status.
    pub status: u8,
    /// TAI − UTC, when the page gives it.
    pub tai_minus_utc: Option<i16>,
    /// The leap second the page announces, placed in time.
    pub leap: Option<LeapEdge>,
}

impl Cached {
    /// The time `d` ticks after C1 (`d` ≤ `dmax`), 64.64 s in the page's timescale.
    pub fn time_at(&self, d: u64) -> u128 {
        self.time.wrapping_add((self.period as u128 * d as u128) >> (self.shift & 63))
    }

    /// The maximum error `d` ticks after C1 (`d` ≤ `dmax`), 2^-64 s.
    pub fn maxerror_at(&self, d: u64) -> Option<u128> {
        let tt = self.maxerror_time?;
        Some(tt.wrapping_add((self.rate as u128 * d as u128 + self.round as u128) >> (self.shift & 63)))
    }
}

/// What [`Fast::read`] loaded: integers only, so that `Option<Loaded>` has a tag of its own (an
/// `Option<Now>` would keep its `None` in one of the `Now`'s `Option` tags, which makes the
/// compiler pack and unpack that field on the read's critical path).
#[derive(Clone, Copy)]
struct Loaded {
    counter: u64,
    d: u64,
    period: u64,
    rate: u64,
    round: u64,
    small: u64,
    t1: u128,
    tt: u128,
    est: u128,
    marker: u64,
    est_rate: u64,
    leap_at: u64,
    delta: u64,
}

impl Loaded {
    /// The reading (see [`Fast`] for why it is exact).
    #[inline(always)]
    fn now(self) -> Now {
        let Loaded { counter, d, period, rate, round, small, t1, tt, est, marker, est_rate, leap_at, delta } = self;
        let shift = small as u8;
        let s = shift & 63;
        let some = |bit: u64, v: u64| (small & bit != 0).then_some(v);
        Now {
            time_type: (small >> 8) as u8,
            raw: t1.wrapping_add((period as u128 * d as u128) >> s),
            maxerror: (small & BOUNDED != 0).then(|| tt.wrapping_add((rate as u128 * d as u128 + round as u128) >> s)),
            counter,
            status: (small >> 16) as u8,
            disruption_marker: marker,
            tai_minus_utc: (small & TAI_VALID != 0).then_some((small >> 24) as u16 as i16),
            leap: (small & LEAP_SOME != 0).then_some(LeapEdge {
                at_sec: leap_at,
                before: small & LEAP_BEFORE != 0,
                step: (small >> 48) as u8 as i8,
            }),
            est_time: (small & EST_TIME_SOME != 0).then_some(est),
            est_rate: some(EST_RATE_SOME, est_rate),
            delta: (d as i64).wrapping_add(delta as i64),
            shift,
        }
    }
}

impl Fast {
    /// Writes `now` in the local form: exactly it, for its own counter value.
    fn set_now(&self, now: &Now) {
        let est = ErrorModel { time_ns: now.est_time.map(|_| 0), rate: now.est_rate };
        let small =
            small_of(now.shift, now.time_type, now.status, now.tai_minus_utc, now.maxerror.is_some(), est, now.leap);
        let tt = now.maxerror.unwrap_or(0);
        let e = now.est_time.unwrap_or(0);
        let mut v = [0u64; SLOTS];
        v[C1] = now.counter;
        (v[T1_LO], v[T1_HI]) = (now.raw as u64, (now.raw >> 64) as u64);
        (v[TT_LO], v[TT_HI]) = (tt as u64, (tt >> 64) as u64);
        (v[EST_LO], v[EST_HI]) = (e as u64, (e >> 64) as u64);
        v[MARKER] = now.disruption_marker;
        v[EST_RATE] = now.est_rate.unwrap_or(0);
        v[LEAP_AT] = now.leap.map_or(0, |l| l.at_sec);
        v[DELTA] = now.delta as u64;
        v[SMALL] = small;
        for (slot, x) in self.w.iter().zip(v) {
            slot.store(x, Ordering::Relaxed);
        }
    }

    /// Caches the constants of a consistent, checked copy whose reading succeeded (see
    /// [`Fast`]). Another thread's fill in progress: left to it.
    #[cold]
    #[inline(never)]
    fn fill(&self, w: &[u32; COUNT], absent: u64) {
        let Ok(Decoded { r, tai_minus_utc, leap, status, disruption_marker }) = decode(w, absent) else { return };
        let (bounded, tt, rate, special) = match (r.maxerror.time_ns, r.maxerror.rate) {
            (Some(t), Some(rate)) => (true, nanos_to_frac_ceil(t), rate, false),
            (None, _) => (false, 0, 0, false),
            // Bounded at the reference only: the full copy's special case.
            (Some(_), None) => (false, 0, 0, true),
        };
        // A page the cache cannot serve is remembered too (so that it is not decoded again on
        // every read), with a `counter_value` that never matches the page's.
        let usable = r.shift <= 63 && !special;
        // The largest ΔC for which T1 + P·ΔC and the bound's sum cannot overflow (P·ΔC ≥
        // ⌊P·ΔC / 2^shift⌋, likewise for the rate's ceiling), and ΔC reads as a positive i64.
        let fit =
            |room: u128, k: u64| if k == 0 { u64::MAX } else { u64::try_from(room / k as u128).unwrap_or(u64::MAX) };
        let dmax = (i64::MAX as u64).min(fit(u128::MAX - r.time, r.period)).min(fit(u128::MAX - tt, rate));
        let est = r.esterror.time_ns.map_or(0, nanos_to_frac_ceil);
        let mut v = [0u64; SLOTS];
        v[C1] = if usable { r.counter_value } else { !r.counter_value };
        v[PERIOD] = r.period;
        v[RATE] = rate;
        v[ROUND] = if usable { (1u64 << r.shift) - 1 } else { 0 };
        (v[T1_LO], v[T1_HI]) = (r.time as u64, (r.time >> 64) as u64);
        (v[TT_LO], v[TT_HI]) = (tt as u64, (tt >> 64) as u64);
        v[DMAX] = dmax;
        v[MARKER] = disruption_marker;
        (v[EST_LO], v[EST_HI]) = (est as u64, (est >> 64) as u64);
        v[EST_RATE] = r.esterror.rate.unwrap_or(0);
        v[LEAP_AT] = leap.map_or(0, |l| l.at_sec);
        v[SMALL] = small_of(r.shift, r.time_type, status, tai_minus_utc, bounded, r.esterror, leap)
            | if usable { USABLE } else { 0 };
        let g = self.gen.load(Ordering::Relaxed);
        if g & 1 != 0 || self.gen.compare_exchange(g, g + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        fence(Ordering::Release);
        for (slot, x) in self.w.iter().zip(v) {
            slot.store(x, Ordering::Relaxed);
        }
        self.key.store(key_of(w[0], w[SEQ_WORD - FIRST]), Ordering::Relaxed);
        self.gen.store(g.wrapping_add(2), Ordering::Release);
    }
}

#[cold]
#[inline(never)]
fn leap_of(r: &Reference, tai_minus_utc: Option<i16>, leap_indicator: u8) -> Option<LeapEdge> {
    LeapEdge::of(r.time_type, r.time, tai_minus_utc, leap_indicator)
}

fn check_counter(snap: &Snapshot) -> Result<(), TimeError> {
    let id = snap.counter_id();
    if id != abi::counter_id::INVALID && id != crate::counter::NATIVE {
        return Err(TimeError::CounterMismatch {
            page: abi::counter_name(id),
            cpu: abi::counter_name(crate::counter::NATIVE),
        });
    }
    Ok(())
}

/// The bounded time a snapshot gives at `counter`, if the counter is this CPU's. The counter
/// must have been read inside the seqlock that produced `snap` ([`Clock::now`] does this).
#[inline]
pub fn now_at(snap: &Snapshot, counter: u64) -> Result<Now, TimeError> {
    check_counter(snap)?;
    let r = snap.reference()?;
    let tai_minus_utc = snap.tai_minus_utc();
    Ok(Now {
        time_type: r.time_type,
        raw: r.raw_time_at(counter)?,
        maxerror: r.maxerror_at(counter),
        counter,
        status: snap.clock_status().unwrap_or(abi::status::UNKNOWN),
        disruption_marker: snap.disruption_marker(),
        tai_minus_utc,
        leap: snap.leap_indicator().and_then(|l| LeapEdge::of(r.time_type, r.time, tai_minus_utc, l)),
        est_time: r.esterror.time_ns.map(nanos_to_frac_ceil),
        est_rate: r.esterror.rate,
        delta: r.delta(counter),
        shift: r.shift,
    })
}

const _: () = assert!(PAGE_SIZE >= abi::ABI_SIZE);
const _: () = assert!(SEQ_WORD >= FIRST && SEQ_WORD < FIRST + COUNT);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::synchronized_tai;
    use crate::{PageBuf, Writer};

    fn fast(clock: &Clock<&PageBuf>, counter: u64) -> Option<Now> {
        clock.fast.read(&clock.mem.words()[..FIRST + COUNT], false, || counter).map(Loaded::now)
    }

    /// `Clock::cached` gives nothing before the first read, then the version's constants, whose
    /// `time_at` and `maxerror_at` are the reading's; a page the cache does not serve gives
    /// nothing.
    #[test]
    fn cached_gives_the_constants_of_the_version_read() {
        if crate::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let buf = PageBuf::new();
        let c1 = 1 << 40;
        Writer::new(&buf).publish(&synchronized_tai(crate::counter::NATIVE, c1, 1_000_000_000).build());
        let clock = Clock::new(&buf);
        assert_eq!(clock.cached(), None, "nothing read yet");
        let now = clock.now_with_counter(|| c1 + 12_345).unwrap();
        let c = clock.cached().expect("cached by the read");
        assert_eq!((c.counter_value, c.time_type, c.tai_minus_utc, c.leap), (c1, abi::time_type::TAI, Some(37), None));
        assert_eq!(c.seq, u32::from_le(buf.words()[SEQ_WORD].load(Ordering::Relaxed)));
        assert_eq!(c.time_at(12_345), now.raw);
        assert_eq!(c.maxerror_at(12_345), now.maxerror);
        // Bounded at the reference only (no rate): the full copy's special case, never cached.
        let buf = PageBuf::new();
        let page = synchronized_tai(crate::counter::NATIVE, c1, 1_000_000_000)
            .flag(flags::PERIOD_MAXERROR_VALID, false)
            .build();
        Writer::new(&buf).publish(&page);
        let clock = Clock::new(&buf);
        clock.now_with_counter(|| c1 + 5).unwrap();
        assert_eq!(clock.cached(), None);
    }

    /// The second read of a page takes the cached constants and gives what the full copy
    /// gives; a new page version is never read from the old constants, and is cached in turn.
    #[test]
    fn the_cache_serves_only_the_version_it_came_from() {
        if crate::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let buf = PageBuf::new();
        let mut w = Writer::new(&buf);
        let c1 = 1 << 40;
        w.publish(&synchronized_tai(crate::counter::NATIVE, c1, 1_000_000_000).esterror(100, 10).build());
        let clock = Clock::new(&buf);
        assert!(fast(&clock, c1 + 5).is_none(), "nothing cached before the first read");
        let first = clock.now_with_counter(|| c1 + 5).unwrap();
        let cached = fast(&clock, c1 + 5).expect("cached by the first read");
        assert_eq!(cached, first);
        assert_eq!(cached.tai(), first.tai());
        // Before the reference, or past the distance where nothing can overflow: the full copy.
        assert!(fast(&clock, c1 - 1).is_none());
        assert_eq!(clock.now_with_counter(|| c1 - 1).unwrap().delta, -1);

        // A new version (another reference, another marker): not served from the old constants.
        let mut next = synchronized_tai(crate::counter::NATIVE, c1 + 1_000, 1_000_000_000).build();
        next.disruption_marker.set(7);
        w.publish(&next);
        assert!(fast(&clock, c1 + 2_000).is_none(), "stale constants refused");
        let n = clock.now_with_counter(|| c1 + 2_000).unwrap();
        assert_eq!((n.disruption_marker, n.delta), (7, 1_000));
        assert_eq!(fast(&clock, c1 + 2_000), Some(n), "the new version cached");

        // A writer in the middle of an update: the cache is not used.
        let seq = &buf.words()[SEQ_WORD];
        let even = seq.load(Ordering::Relaxed);
        seq.store(even | 1, Ordering::Relaxed);
        assert!(fast(&clock, c1 + 2_000).is_none());
        seq.store(even, Ordering::Relaxed);
        assert!(fast(&clock, c1 + 2_000).is_some());
    }

    /// A page the cache cannot serve exactly (bounded at the reference only) is remembered as
    /// such: every read goes to the full copy, which answers.
    #[test]
    fn a_page_with_a_special_case_is_never_served_from_the_cache() {
        if crate::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let buf = PageBuf::new();
        let c1 = 1 << 40;
        let page = synchronized_tai(crate::counter::NATIVE, c1, 1_000_000_000)
            .flag(abi::flags::PERIOD_MAXERROR_VALID, false)
            .build();
        Writer::new(&buf).publish(&page);
        let clock = Clock::new(&buf);
        assert!(clock.now_with_counter(|| c1).unwrap().maxerror.is_some(), "bounded at the reference");
        assert_eq!(clock.now_with_counter(|| c1 + 1).unwrap().maxerror, None, "and only there");
        assert_ne!(clock.fast.key.load(Ordering::Relaxed), 0, "remembered");
        assert!(fast(&clock, c1).is_none() && fast(&clock, c1 + 1).is_none());
    }
}
