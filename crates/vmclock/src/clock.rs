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
use crate::seqlock::{self, AtomicU32, Ordering, PageMemory, SEQ_WORD};
use crate::snapshot::{utc_with_leap, Bounded, ErrorModel, LeapEdge, PageTime, Reference, Snapshot};
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
    /// an application that reads earliest and latest does not pay for it.
    esterror_model: ErrorModel,
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
        self.esterror_model.at(self.delta, self.shift)
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
    #[inline]
    pub fn tai(&self) -> Result<Bounded<Tai>, TimeError> {
        self.time().tai(self.tai_minus_utc)
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
        Clock { mem, max_wait: seqlock::DEFAULT_MAX_WAIT, checked: AtomicU64::new(0) }
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
        let mut w = [0u32; COUNT];
        // The uncontended path: one attempt, no wait state set up.
        if let Some(counter) = seqlock::try_read_with_counter(words, FIRST, &mut w, &mut read_counter) {
            let checked = self.checked.load(Ordering::Relaxed);
            if checked & CHECKED != 0 && checked as u32 == w[0] {
                return Ok(compute(&w, (checked >> 32) as u16 as u64, counter)?);
            }
        }
        self.now_contended(words, &mut read_counter)
    }

    /// The uncontended read of [`Clock::now_with_counter`] alone: `None` when the writer held
    /// the seqlock, the constant fields are not checked yet, or the page memory is too short;
    /// then [`Clock::now_with_counter`] (which retries and checks) gives the answer. Whenever this
    /// gives `Some`, it is what [`Clock::now_with_counter`] would have given.
    ///
    /// For callers that do more work with the `Now` (libvmclock): keeping the retry out of the
    /// caller's hot path lets the compiler keep the `Now` in registers instead of merging the
    /// two paths' results through memory.
    #[inline(always)]
    pub fn try_now_with_counter(&self, read_counter: impl FnOnce() -> u64) -> Option<Result<Now, TimeError>> {
        let words = self.mem.words().get(..FIRST + COUNT)?;
        let mut w = [0u32; COUNT];
        let counter = seqlock::try_read_with_counter(words, FIRST, &mut w, read_counter)?;
        let checked = self.checked.load(Ordering::Relaxed);
        if checked & CHECKED != 0 && checked as u32 == w[0] {
            return Some(compute(&w, (checked >> 32) as u16 as u64, counter));
        }
        None
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
                    return Ok(compute(&w, (checked >> 32) as u16 as u64, counter)?);
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

/// The time at `counter` from the words of one consistent read (0x08..0x68); `absent`: the flag
/// bits of fields beyond the page's size.
#[inline(always)]
fn compute(w: &[u32; COUNT], absent: u64, counter: u64) -> Result<Now, TimeError> {
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
    Ok(Now {
        time_type,
        raw: r.raw_time_at(counter)?,
        maxerror: r.maxerror_at(counter),
        counter,
        status: (u32::from_le(w[0x20 / 4 - FIRST]) >> 16) as u8,
        disruption_marker: u64_of(w, 0x10),
        tai_minus_utc,
        leap,
        esterror_model: r.esterror,
        delta: r.delta(counter),
        shift,
    })
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
        esterror_model: r.esterror,
        delta: r.delta(counter),
        shift: r.shift,
    })
}

const _: () = assert!(PAGE_SIZE >= abi::ABI_SIZE);
const _: () = assert!(SEQ_WORD >= FIRST && SEQ_WORD < FIRST + COUNT);
