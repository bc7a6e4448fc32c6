//! `Clock`: bounded time read straight from a mapped page, with no system call.

use crate::abi::{self, PAGE_SIZE};
use crate::error::{ClockError, TimeError};
use crate::map::Mapping;
use crate::seqlock::{self, PageMemory};
use crate::snapshot::{Bounded, PageTime, Snapshot};
use crate::time::{Tai, Timescale, Timestamp, Utc};
use std::path::Path;
use std::time::Duration;

/// A vmclock page mapped read-only, for applications.
#[derive(Debug)]
pub struct Clock<M: PageMemory = Mapping> {
    mem: M,
    max_wait: Duration,
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
    /// Estimated error, 2^-64 s.
    pub esterror: Option<u128>,
    /// The counter value the time was computed for.
    pub counter: u64,
    /// `clock_status` (UNKNOWN when absent).
    pub status: u8,
    /// `disruption_marker` of the page the time came from.
    pub disruption_marker: u64,
    /// TAI − UTC (positive: 37), when the page gives it (see [`Snapshot::tai_minus_utc`]).
    pub tai_minus_utc: Option<i16>,
}

impl Now {
    fn bounded<S: Timescale>(&self) -> Bounded<S> {
        Bounded { time: Timestamp::from_raw(self.raw), maxerror: self.maxerror, esterror: self.esterror }
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

    /// The time in UTC (a TAI page needs a valid TAI offset).
    #[inline]
    pub fn utc(&self) -> Result<Bounded<Utc>, TimeError> {
        self.time().utc(self.tai_minus_utc)
    }

    /// Whether the page says its time may be relied upon (SYNCHRONIZED or FREERUNNING).
    pub fn is_reliable(&self) -> bool {
        matches!(self.status, abi::status::SYNCHRONIZED | abi::status::FREERUNNING)
    }
}

impl Clock<Mapping> {
    /// Maps `path` (`/dev/vmclock0` or a page file) read-only. The page is checked once here;
    /// every `now()` validates its copy again.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClockError> {
        let path = path.as_ref();
        let mem = Mapping::open(path).map_err(|source| ClockError::Map { path: path.display().to_string(), source })?;
        let clock = Clock::new(mem);
        clock.snapshot()?;
        Ok(clock)
    }
}

impl<M: PageMemory> Clock<M> {
    /// A clock over any page memory.
    pub fn new(mem: M) -> Self {
        Clock { mem, max_wait: seqlock::DEFAULT_MAX_WAIT }
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

    /// One consistent copy of the page.
    #[inline]
    pub fn snapshot(&self) -> Result<Snapshot, ClockError> {
        Ok(seqlock::read(&self.mem, self.max_wait)?)
    }

    /// Earliest, latest and best time now: one seqlock copy and one counter read; no system
    /// call unless the writer is busy for a while.
    #[inline]
    pub fn now(&self) -> Result<Now, ClockError> {
        let snap = self.snapshot()?;
        let counter = crate::counter::read();
        Ok(now_at(&snap, counter)?)
    }
}

/// The bounded time a snapshot gives at `counter`, if the counter is this CPU's.
#[inline]
pub fn now_at(snap: &Snapshot, counter: u64) -> Result<Now, TimeError> {
    let id = snap.counter_id();
    if id != abi::counter_id::INVALID && id != crate::counter::NATIVE {
        return Err(TimeError::CounterMismatch {
            page: abi::counter_name(id),
            cpu: abi::counter_name(crate::counter::NATIVE),
        });
    }
    let r = snap.reference()?;
    Ok(Now {
        time_type: r.time_type,
        raw: r.raw_time_at(counter)?,
        maxerror: r.maxerror_at(counter),
        esterror: r.esterror_at(counter),
        counter,
        status: snap.clock_status().unwrap_or(abi::status::UNKNOWN),
        disruption_marker: snap.disruption_marker(),
        tai_minus_utc: snap.tai_minus_utc(),
    })
}

const _: () = assert!(PAGE_SIZE >= abi::ABI_SIZE);
