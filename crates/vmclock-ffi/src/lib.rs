//! libvmclock: the C API to vmclock pages, built on [`vmclock_rs::Clock`].
//!
//! ```c
//! int err;
//! struct vmclock *c = vmclock_open("/dev/vmclock0", &err);
//! struct vmclock_now n;
//! if (c && vmclock_now(c, &n) == 0 && (n.flags & VMCLOCK_NOW_RELIABLE))
//!     printf("%lld in [%lld, %lld]\n", n.time_ns, n.earliest_ns, n.latest_ns);
//! vmclock_close(c);
//! ```
//!
//! * Times are CLOCK_REALTIME's timescale: POSIX UTC, nanoseconds since the epoch (as
//!   ClockBound's API); `tai_minus_utc` converts to TAI.
//! * `vmclock_now` is thread-safe (the handle is shared read-only), allocates nothing and makes
//!   no system call: one seqlock copy of the page and one counter read (it waits for a writer
//!   that holds the seqlock, and gives up with `VMCLOCK_E_BUSY` after 100 ms, as the kernel).
//! * A null pointer gives `VMCLOCK_E_NULL`. A page *file* that shrinks or goes away while mapped
//!   gives `VMCLOCK_E_GONE`, never a crash: `vmclock_open` protects file mappings with
//!   `vmclock::guard` (a SIGBUS handler that, for the kernel's own fault (`BUS_ADRERR`) inside a
//!   guarded mapping, maps a zero page over the vanished page; a *sent* SIGBUS and faults
//!   elsewhere go on exactly as without it; see its documentation). A device cannot shrink.
//!   At most 64 handles on page files are open at once (`VMCLOCK_E_LIMIT` for the 65th: refused rather
//!   than mapped unguarded). A file that is replaced (renamed over, as publishers do) or
//!   unlinked keeps its last content in this mapping: open it again to follow the new file.
//!
//! `unsafe` here is only the C boundary (raw pointers in and out), each block with its
//! `// SAFETY:` reason; the page access itself is the `vmclock` crate's.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, CStr};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use vmclock_rs::guard::{protect, GuardError, Protection};
use vmclock_rs::realtime::{Code, MarkerWatch, Reading};
use vmclock_rs::{Clock, ClockError, TimeError};

/// Success.
pub const VMCLOCK_OK: c_int = 0;
/// A null pointer was passed.
pub const VMCLOCK_E_NULL: c_int = -1;
/// The page cannot be opened or mapped (`errno` is set to the system's reason).
pub const VMCLOCK_E_OPEN: c_int = -2;
/// Not a valid vmclock page (magic, version or size), or an empty file or a fifo.
pub const VMCLOCK_E_INVALID: c_int = -3;
/// The page's writer held the seqlock for too long.
pub const VMCLOCK_E_BUSY: c_int = -4;
/// The page carries no time (markers only, or no time fields).
pub const VMCLOCK_E_NO_TIME: c_int = -5;
/// The page's counter is not this CPU's.
pub const VMCLOCK_E_COUNTER: c_int = -6;
/// The time cannot be given in UTC (a TAI page without its TAI offset, or a MONOTONIC page).
pub const VMCLOCK_E_NO_UTC: c_int = -7;
/// The time does not fit (counter far from the reference, absurd time).
pub const VMCLOCK_E_OVERFLOW: c_int = -8;
/// The page file shrank or went away while mapped.
pub const VMCLOCK_E_GONE: c_int = -9;
/// 64 handles on page files are open already (each mapping is guarded against SIGBUS, and
/// the guard has 64 places; opening one file twice takes two): close one first. Devices
/// (`/dev/vmclock0`) do not count.
pub const VMCLOCK_E_LIMIT: c_int = -10;
/// vmclock_now_within: the page's status is not SYNCHRONIZED (`*out` holds the reading).
pub const VMCLOCK_E_UNSYNCHRONIZED: c_int = -11;
/// vmclock_now_within: the bound is wider than the cap, or the page gives none (`*out` holds
/// the reading).
pub const VMCLOCK_E_TOO_WIDE: c_int = -12;
/// vmclock_bound_realtime: the timestamp is older than 1 s, or later than now.
pub const VMCLOCK_E_TOO_OLD: c_int = -13;
/// vmclock_bound_realtime: a disruption or a leap second may lie between the timestamp and
/// now, or the timestamp predates the handle's first sight of the page's disruption marker.
pub const VMCLOCK_E_DISRUPTED: c_int = -14;
/// vmclock_bound_realtime: the kernel is correcting CLOCK_REALTIME's rate by more than 500 ppm
/// (a fast slew), so its elapsed time cannot bound a past timestamp.
pub const VMCLOCK_E_SLEWING: c_int = -15;

/// `flags`: `earliest_ns` and `latest_ns` bound the time (the page gives a maximum error).
pub const VMCLOCK_NOW_BOUNDED: u32 = 1;
/// `flags`: `tai_minus_utc` is valid.
pub const VMCLOCK_NOW_TAI_VALID: u32 = 2;
/// `flags`: the page's status is SYNCHRONIZED or FREERUNNING (its time may be relied upon).
pub const VMCLOCK_NOW_RELIABLE: u32 = 4;

/// `status`: nothing is known.
pub const VMCLOCK_STATUS_UNKNOWN: u8 = 0;
/// `status`: the host is calibrating.
pub const VMCLOCK_STATUS_INITIALIZING: u8 = 1;
/// `status`: synchronised to an external reference.
pub const VMCLOCK_STATUS_SYNCHRONIZED: u8 = 2;
/// `status`: running without a reference, still bounded.
pub const VMCLOCK_STATUS_FREERUNNING: u8 = 3;
/// `status`: the time must not be used.
pub const VMCLOCK_STATUS_UNRELIABLE: u8 = 4;

/// One bounded reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vmclock_now {
    /// Best estimate, ns since 1970-01-01 UTC (CLOCK_REALTIME's timescale).
    pub time_ns: i64,
    /// The earliest the true time can be (INT64_MIN without VMCLOCK_NOW_BOUNDED).
    pub earliest_ns: i64,
    /// The latest the true time can be (INT64_MAX without VMCLOCK_NOW_BOUNDED).
    pub latest_ns: i64,
    /// Maximum error, ns, rounded up (-1: not bounded).
    pub maxerror_ns: i64,
    /// Estimated error, ns, rounded up (-1: not given).
    pub esterror_ns: i64,
    /// The page's disruption marker: a change means the counter's calibration broke (live
    /// migration, restore).
    pub disruption_marker: u64,
    /// The counter value the time is for.
    pub counter: u64,
    /// TAI − UTC, s (with VMCLOCK_NOW_TAI_VALID).
    pub tai_minus_utc: i32,
    /// VMCLOCK_NOW_* bits.
    pub flags: u32,
    /// The page's clock_status (VMCLOCK_STATUS_*).
    pub status: u8,
    /// The page's time_type (0 TAI, 1 UTC, 2 MONOTONIC).
    pub time_type: u8,
    /// Zero.
    pub reserved: [u8; 6],
}

/// One lean bounded reading (vmclock_now_bounds): the interval and what decides whether to
/// trust it, nothing else. Exactly vmclock_now's fields of the same names for the same page
/// and counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vmclock_bounds {
    /// The earliest the true time can be, ns since 1970-01-01 UTC (CLOCK_REALTIME's
    /// timescale), rounded down (INT64_MIN without VMCLOCK_NOW_BOUNDED).
    pub earliest_ns: i64,
    /// The latest the true time can be, rounded up (INT64_MAX without VMCLOCK_NOW_BOUNDED).
    pub latest_ns: i64,
    /// The page's disruption marker: a change means the counter's calibration broke (live
    /// migration, restore).
    pub disruption_marker: u64,
    /// VMCLOCK_NOW_* bits.
    pub flags: u32,
    /// TAI − UTC, s (with VMCLOCK_NOW_TAI_VALID).
    pub tai_minus_utc: i16,
    /// The page's clock_status (VMCLOCK_STATUS_*).
    pub status: u8,
    /// Zero.
    pub reserved: u8,
}

/// An open page (opaque).
#[derive(Debug)]
pub struct vmclock {
    // Dropped first: unregistered before the mapping is unmapped.
    protection: Option<Protection>,
    clock: Clock,
    /// The page's disruption marker as this handle has seen it (vmclock_bound_realtime).
    watch: MarkerWatch,
    /// The header-only reader's published constants (vmclock_reader), and a reader that always
    /// calls the library (for a header this library cannot serve).
    reader: vmclock_reader,
    reader_off: vmclock_reader,
    /// One publisher at a time; the key of the version last considered for publication.
    publishing: Mutex<u64>,
}

/// `vmclock_reader_get`'s `abi` for vmclock.h's inline reader on x86_64: layout 1, the counter read
/// with RDTSCP.
pub const VMCLOCK_READER_X86_RDTSCP: u32 = 0x0101;
/// `vmclock_reader_get`'s `abi` for a header that reads nothing inline (other architectures and
/// compilers): every read is a library call.
pub const VMCLOCK_READER_CALL: u32 = 0;

/// The constants vmclock.h's inline reader (`vmclock_now_bounds_inline`) uses for the page
/// version this handle read last, published under a seqlock of their own (`gen`: odd while
/// written, or before the first publication). Hand-written in the header (src/reader.h) with the
/// same layout (asserted on both sides); nothing outside this file writes it.
///
/// The inline reader answers only for that version (`key`, `counter_value`, the page's
/// `seq_count` unchanged around its counter read) and for ΔC ≤ `dmax`. There it computes
/// earliest and latest in 2^-64 ns as `A + K·ΔC` (see [`Published`]), which is within
/// `ΔC + 2^31` units of the library's exact value; when the fraction of that figure is at least
/// `ΔC + 2^32` from a whole ns, the ns (earliest rounded down, latest up) are exactly the
/// library's. Otherwise, and for anything else, it calls [`vmclock_reader_now_bounds`].
#[repr(C)]
#[derive(Debug)]
pub struct vmclock_reader {
    gen: AtomicU32,
    reserved: u32,
    /// The mapped page (`const uint32_t *`; 0 in a reader that always calls the library).
    page: usize,
    /// The handle (`const struct vmclock *`).
    handle: usize,
    /// `seq_count << 32 | word08` of the version (one little-endian 64-bit load of 0x08).
    key: AtomicU64,
    counter_value: AtomicU64,
    dmax: AtomicU64,
    /// flags (bits 0..8), status (8..16), TAI − UTC as u16 (16..32).
    info: AtomicU64,
    disruption_marker: AtomicU64,
    /// Earliest: A (2^-64 ns, 128 bits) and K (2^-64 ns per tick, below 2^64).
    e_a_lo: AtomicU64,
    e_a_hi: AtomicU64,
    e_k: AtomicU64,
    /// Latest: A and K.
    l_a_lo: AtomicU64,
    l_a_hi: AtomicU64,
    l_k: AtomicU64,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<vmclock_reader>() == 112);
    assert!(std::mem::offset_of!(vmclock_reader, page) == 8);
    assert!(std::mem::offset_of!(vmclock_reader, handle) == 16);
    assert!(std::mem::offset_of!(vmclock_reader, key) == 24);
    assert!(std::mem::offset_of!(vmclock_reader, dmax) == 40);
    assert!(std::mem::offset_of!(vmclock_reader, disruption_marker) == 56);
    assert!(std::mem::offset_of!(vmclock_reader, e_a_lo) == 64);
    assert!(std::mem::offset_of!(vmclock_reader, l_a_lo) == 88);
    assert!(std::mem::offset_of!(vmclock_reader, l_k) == 104);
};

impl vmclock_reader {
    fn new(page: usize) -> Self {
        let z = || AtomicU64::new(0);
        vmclock_reader {
            // Odd: nothing published yet.
            gen: AtomicU32::new(1),
            reserved: 0,
            page,
            handle: 0,
            key: z(),
            counter_value: z(),
            dmax: z(),
            info: z(),
            disruption_marker: z(),
            e_a_lo: z(),
            e_a_hi: z(),
            e_k: z(),
            l_a_lo: z(),
            l_a_hi: z(),
            l_k: z(),
        }
    }
}

/// The largest ΔC the inline reader is given: its tolerance `ΔC + 2^32` stays far below 2^63.
const READER_DMAX: u64 = 1 << 56;

/// What the inline reader publishes for one page version. With T the time at C1 in UTC and M the
/// maximum error's time term (2^-64 s), P the period, R the maximum error's rate and s the
/// shift, the library computes earliest = T − M + ⌊P·ΔC/2^s⌋ − ⌈R·ΔC/2^s⌉ and latest = T + M +
/// ⌊P·ΔC/2^s⌋ + ⌈R·ΔC/2^s⌉ (2^-64 s), then ns (earliest rounded down, latest up). Here
/// `A = (T ∓ M)·10^9` (exact, 2^-64 ns) and `K = ⌊(P ∓ R)·10^9 / 2^s⌋` (2^-64 ns per tick):
/// `A + K·ΔC` differs from the exact value times 10^9 by less than 2·10^9 (the two roundings
/// to 2^-64 s) plus ΔC (K's rounding), below `ΔC + 2^31`.
///
/// Served only where that arithmetic is the library's: bounded, a UTC time (a TAI page with its
/// offset), P ≥ R and T − M ≥ 1 s (earliest never saturates), ΔC ≤ the cached read's range
/// (no sum overflows), no leap second step, latest below 2^62 ns. `None` for a page it does not
/// serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// `seq_count << 32 | word08`.
    pub key: u64,
    pub counter_value: u64,
    pub dmax: u64,
    pub info: u64,
    pub disruption_marker: u64,
    pub earliest_a: u128,
    pub earliest_k: u64,
    pub latest_a: u128,
    pub latest_k: u64,
}

/// [`Published`] from the cached read's constants (see there).
pub fn published(c: &vmclock_rs::Cached) -> Option<Published> {
    use vmclock_rs::abi::time_type;
    const NS: u128 = 1_000_000_000;
    let tt = c.maxerror_time?;
    let time = match c.time_type {
        time_type::UTC => c.time,
        time_type::TAI => {
            let off = c.tai_minus_utc?;
            let shift = (off.unsigned_abs() as u128) << 64;
            if off >= 0 {
                c.time.checked_sub(shift)?
            } else {
                c.time.checked_add(shift)?
            }
        }
        _ => return None,
    };
    if c.rate > c.period || time.checked_sub(tt)? < 1 << 64 {
        return None;
    }
    let fit = |room: u128, k: u128| room.checked_div(k).map_or(u64::MAX, |q| u64::try_from(q).unwrap_or(u64::MAX));
    // The UTC time + P·ΔC must not overflow either (≥ the time term P·ΔC / 2^shift).
    let mut dmax = c.dmax.min(fit(u128::MAX - time, c.period as u128)).min(READER_DMAX);
    if let Some(l) = c.leap.filter(|l| l.step != 0) {
        let edge = (l.at_sec as u128) << 64;
        if l.before {
            // The step applies below the edge: served only when the reference is at or past it
            // (the time only grows with ΔC ≥ 0).
            if time < edge {
                return None;
            }
        } else {
            // The step applies at and past the edge: ΔC with ⌊P·ΔC / 2^s⌋ < edge − time, which
            // P·ΔC ≤ (edge − time)·2^s − 1 guarantees.
            let room = edge.checked_sub(time).filter(|&r| r > 0)?;
            if c.period != 0 && room <= u128::MAX >> c.shift {
                dmax = dmax.min(fit((room << c.shift) - 1, c.period as u128));
            }
        }
    }
    let s = c.shift & 63;
    let earliest_a = (time - tt).checked_mul(NS)?;
    let latest_a = time.checked_add(tt)?.checked_mul(NS)?;
    let earliest_k = ((c.period - c.rate) as u128 * NS) >> s;
    // Below 2^64 (a counter of about 1 GHz or more), so that K·ΔC is one 64×64 product.
    let latest_k = u64::try_from(((c.period as u128 + c.rate as u128) * NS) >> s).ok()?;
    let earliest_k = earliest_k as u64; // ≤ latest_k
                                        // Latest (and so earliest) below 2^62 ns: A + K·ΔC + the tolerance < 2^126.
    let limit = 1u128 << 126;
    dmax = dmax.min(fit(limit.checked_sub(latest_a)?, latest_k.max(1) as u128));
    let flags = VMCLOCK_NOW_BOUNDED
        | if c.tai_minus_utc.is_some() { VMCLOCK_NOW_TAI_VALID } else { 0 }
        | if matches!(c.status, VMCLOCK_STATUS_SYNCHRONIZED | VMCLOCK_STATUS_FREERUNNING) {
            VMCLOCK_NOW_RELIABLE
        } else {
            0
        };
    let info = flags as u64 | (c.status as u64) << 8 | (c.tai_minus_utc.unwrap_or(0) as u16 as u64) << 16;
    Some(Published {
        key: (c.seq as u64) << 32 | c.word08 as u64,
        counter_value: c.counter_value,
        dmax,
        info,
        disruption_marker: c.disruption_marker,
        earliest_a,
        earliest_k,
        latest_a,
        latest_k,
    })
}

impl vmclock {
    /// Publishes the constants of the version the clock cached last, if the inline reader can
    /// serve it and it is not the one considered last. Another thread publishing: left to it.
    #[cold]
    #[inline(never)]
    fn publish(&self) {
        let Some(cached) = self.clock.cached() else { return };
        let key = (cached.word08 as u64) << 32 | cached.seq as u64;
        let Ok(mut last) = self.publishing.try_lock() else { return };
        if *last == key {
            return;
        }
        *last = key;
        let Some(p) = published(&cached) else { return };
        let r = &self.reader;
        let g = r.gen.load(Ordering::Relaxed);
        r.gen.store(g | 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let wide = |lo: &AtomicU64, hi: &AtomicU64, v: u128| {
            lo.store(v as u64, Ordering::Relaxed);
            hi.store((v >> 64) as u64, Ordering::Relaxed);
        };
        r.key.store(p.key, Ordering::Relaxed);
        r.counter_value.store(p.counter_value, Ordering::Relaxed);
        r.dmax.store(p.dmax, Ordering::Relaxed);
        r.info.store(p.info, Ordering::Relaxed);
        r.disruption_marker.store(p.disruption_marker, Ordering::Relaxed);
        wide(&r.e_a_lo, &r.e_a_hi, p.earliest_a);
        r.e_k.store(p.earliest_k, Ordering::Relaxed);
        wide(&r.l_a_lo, &r.l_a_hi, p.latest_a);
        r.l_k.store(p.latest_k, Ordering::Relaxed);
        r.gen.store((g | 1).wrapping_add(1), Ordering::Release);
    }
}

fn code_of(e: &ClockError) -> c_int {
    Code::of_clock(e) as c_int
}

fn time_code(e: &TimeError) -> c_int {
    Code::of_time(e) as c_int
}

fn clamp(ns: u128) -> Option<i64> {
    i64::try_from(ns).ok()
}

/// # Safety
/// `err` is NULL or points to a writable int.
unsafe fn set_err(err: *mut c_int, code: c_int) {
    if !err.is_null() {
        // SAFETY: not null, and writable per this function's contract.
        unsafe { *err = code };
    }
}

/// Maps the page at `path` (`/dev/vmclock0` or a page file) and checks it once. Returns NULL on
/// failure with `*err` (if `err` is not NULL) set to a VMCLOCK_E_* code; on success `*err` is 0.
/// Never blocks: a fifo is refused at once (VMCLOCK_E_INVALID: it holds no page).
///
/// A page *file* is guarded against SIGBUS (a file that shrinks gives VMCLOCK_E_GONE, never a
/// crash). At most 64 handles on page files can be open at once in a process (opening one file
/// twice takes two): the 65th open fails with
/// VMCLOCK_E_LIMIT (it is not mapped unguarded) until one is closed. Share one handle between
/// threads instead of opening one per thread. Devices (`/dev/vmclock0`) cannot shrink, are not
/// guarded and do not count.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `err` is NULL or points to a writable int.
#[no_mangle]
pub unsafe extern "C" fn vmclock_open(path: *const c_char, err: *mut c_int) -> *mut vmclock {
    if path.is_null() {
        // SAFETY: `err` is NULL or writable, per this function's contract.
        unsafe { set_err(err, VMCLOCK_E_NULL) };
        return std::ptr::null_mut();
    }
    // SAFETY: `path` is not null and the caller passes a NUL-terminated string.
    let path = Path::new(std::ffi::OsStr::from_bytes(unsafe { CStr::from_ptr(path) }.to_bytes()));
    let clock = match Clock::open(path) {
        Ok(c) => c,
        Err(e) => {
            let code = code_of(&e);
            let errno = match &e {
                ClockError::Map { source, .. } => source.raw_os_error(),
                _ => None,
            };
            drop(e); // freed first: nothing after the errno write may change it
            if let Some(errno) = errno {
                // SAFETY: __errno_location has no preconditions.
                let at = unsafe { libc::__errno_location() };
                // SAFETY: it points to this thread's errno, always valid to write.
                unsafe { *at = errno };
            }
            // SAFETY: `err` is NULL or writable, per this function's contract.
            unsafe { set_err(err, code) };
            return std::ptr::null_mut();
        }
    };
    // What was mapped decides, not the path again (it may have been replaced since).
    let protection = if !clock.memory().is_device() {
        let (start, len) = clock.memory().region();
        // A 65th page file is refused (VMCLOCK_E_LIMIT), not mapped unguarded: an unguarded
        // mapping would turn a truncated file back into a crash, which this API promises never
        // happens, and only for some handles, depending on how many others are open. The
        // caller gets a clear code it can act on (close a handle, or share one: a handle is
        // thread-safe).
        match protect(start, len) {
            Ok(p) => Some(p),
            Err(e) => {
                let code = match e {
                    GuardError::Full => VMCLOCK_E_LIMIT,
                    GuardError::Install(_) => VMCLOCK_E_OPEN,
                };
                // SAFETY: `err` is NULL or writable, per this function's contract.
                unsafe { set_err(err, code) };
                return std::ptr::null_mut();
            }
        }
    } else {
        None
    };
    let watch = match MarkerWatch::of(&clock) {
        Ok(w) => w,
        Err(code) => {
            // SAFETY: `err` is NULL or writable, per this function's contract.
            unsafe { set_err(err, code as c_int) };
            return std::ptr::null_mut();
        }
    };
    // SAFETY: `err` is NULL or writable, per this function's contract.
    unsafe { set_err(err, VMCLOCK_OK) };
    let page = vmclock_rs::PageMemory::words(clock.memory()).as_ptr() as usize;
    let handle = Box::into_raw(Box::new(vmclock {
        protection,
        clock,
        watch,
        reader: vmclock_reader::new(page),
        reader_off: vmclock_reader::new(0),
        publishing: Mutex::new(0),
    }));
    // SAFETY: just allocated by Box::into_raw and not yet shared.
    let h = unsafe { &mut *handle };
    // The readers learn their handle's address.
    h.reader.handle = handle as usize;
    h.reader_off.handle = handle as usize;
    handle
}

/// The handle's reader for vmclock.h's inline `vmclock_now_bounds_inline` (call it through the
/// header's `vmclock_reader_of(c)`, which passes the header's `abi`). Valid until
/// vmclock_close(c). NULL only when `c` is NULL. A reader whose `abi` this library or CPU does
/// not serve calls the library on every read.
///
/// # Safety
/// `c` is NULL or a handle from vmclock_open not yet closed.
#[no_mangle]
pub unsafe extern "C" fn vmclock_reader_get(c: *const vmclock, abi: u32) -> *const vmclock_reader {
    if c.is_null() {
        return std::ptr::null();
    }
    // SAFETY: `c` is not null and came from vmclock_open (not yet closed), per the API.
    let c = unsafe { &*c };
    if abi == VMCLOCK_READER_X86_RDTSCP && reader_serves_rdtscp() {
        &c.reader
    } else {
        &c.reader_off
    }
}

#[cfg(target_arch = "x86_64")]
fn reader_serves_rdtscp() -> bool {
    vmclock_rs::counter::has_rdtscp()
}

#[cfg(not(target_arch = "x86_64"))]
fn reader_serves_rdtscp() -> bool {
    false
}

/// The library call behind vmclock.h's inline reader: what vmclock_now_bounds gives for the
/// reader's handle, and the reader's constants published for the page version read (when the
/// inline reader can serve it).
///
/// # Safety
/// `r` is NULL or a reader from vmclock_reader_get whose handle is not yet closed; `out` is NULL
/// or points to a writable struct vmclock_bounds.
#[no_mangle]
pub unsafe extern "C" fn vmclock_reader_now_bounds(r: *const vmclock_reader, out: *mut vmclock_bounds) -> c_int {
    if r.is_null() {
        return VMCLOCK_E_NULL;
    }
    // SAFETY: `r` is not null and came from vmclock_reader_get on a handle not yet closed.
    let handle = unsafe { (*r).handle } as *const vmclock;
    // SAFETY: a reader's handle is the open handle it belongs to.
    let c = unsafe { &*handle };
    // SAFETY: as vmclock_now_bounds' contract, which this one's implies.
    let rc = unsafe { vmclock_now_bounds(c, out) };
    if rc == VMCLOCK_OK && std::ptr::eq(r, &c.reader) && !c.protection.as_ref().is_some_and(|p| p.gone()) {
        c.publish();
    }
    rc
}

/// Reads the time now into `*out`: 0, or a negative VMCLOCK_E_* code (then `*out` is
/// unchanged). Thread-safe; no allocation; no system call.
///
/// # Safety
/// `c` is NULL or a handle from vmclock_open not yet closed; `out` is NULL or points to a
/// writable struct vmclock_now.
#[no_mangle]
pub unsafe extern "C" fn vmclock_now(c: *const vmclock, out: *mut vmclock_now) -> c_int {
    if c.is_null() || out.is_null() {
        return VMCLOCK_E_NULL;
    }
    // SAFETY: `c` is not null and came from vmclock_open (not yet closed), per the API.
    let c = unsafe { &*c };
    // SAFETY: `out` is not null and points to a writable vmclock_now, per the API; seen as
    // possibly uninitialised memory, which is only written.
    let out = unsafe { &mut *out.cast::<MaybeUninit<vmclock_now>>() };
    read(&c.clock, || c.protection.as_ref().is_some_and(|p| p.gone()), vmclock_rs::counter::read, out)
}

/// `vmclock_now` for Rust callers of this crate (its benchmark): the same reading, inlined into
/// the caller, to tell the cost of the call across the library boundary from that of the work.
#[doc(hidden)]
#[inline(always)]
pub fn now_inline(c: &vmclock, out: &mut MaybeUninit<vmclock_now>) -> c_int {
    read(&c.clock, || c.protection.as_ref().is_some_and(|p| p.gone()), vmclock_rs::counter::read, out)
}

/// The read paths of one C entry point: `$read`, whose uncontended attempt is inlined into the
/// entry point, and its cold `$contended` (the full read: retries, the once-per-mapping checks),
/// both ending in `$fill`. A macro rather than one function generic over the fill: that
/// compiled worse (`cargo bench -p vmclock-ffi --bench independent`: vmclock_now_bounds 1.44×
/// clock_gettime against 1.17×, vmclock_now 1.57× against 1.43×, run back to back on
/// 2026-12-07); each expansion is the concrete code of one entry point.
macro_rules! read_paths {
    ($(#[$m:meta])* $read:ident, $contended:ident, $fill:ident, $out:ty) => {
        $(#[$m])*
        #[inline(always)]
        fn $read<M: vmclock_rs::PageMemory>(
            clock: &Clock<M>,
            gone: impl Fn() -> bool,
            mut read_counter: impl FnMut() -> u64,
            out: &mut MaybeUninit<$out>,
        ) -> c_int {
            match clock.try_now_with_counter(&mut read_counter) {
                Some(Ok(now)) if !gone() => $fill(&now, out),
                Some(Ok(_)) => VMCLOCK_E_GONE,
                Some(Err(e)) => {
                    if gone() {
                        VMCLOCK_E_GONE
                    } else {
                        time_code(&e)
                    }
                }
                None => $contended(clock, gone, read_counter, out),
            }
        }

        #[cold]
        #[inline(never)]
        fn $contended<M: vmclock_rs::PageMemory>(
            clock: &Clock<M>,
            gone: impl Fn() -> bool,
            read_counter: impl FnMut() -> u64,
            out: &mut MaybeUninit<$out>,
        ) -> c_int {
            match clock.now_with_counter(read_counter) {
                Ok(now) if !gone() => $fill(&now, out),
                Ok(_) => VMCLOCK_E_GONE,
                Err(e) => {
                    if gone() {
                        VMCLOCK_E_GONE
                    } else {
                        code_of(&e)
                    }
                }
            }
        }
    };
}

read_paths!(
    /// One reading as `vmclock_now` gives it, written to `out` (0), or a VMCLOCK_E_* code (`out`
    /// untouched): the page read with `read_counter` inside the seqlock (`Clock::now_with_counter`),
    /// `VMCLOCK_E_GONE` when `gone()` says the page file vanished (asked after the read, so a copy
    /// that met the zero page is never returned), then the UTC fields.
    ///
    /// Shaped for the compiler (the cost per call halved, docs/BENCHMARKS.md): the uncontended
    /// attempt alone is inlined here and its `Now` used at once, and the struct is built in one
    /// expression and written straight to `out`. Before, the `Result<Now, ClockError>` of the full
    /// read (whose retry path returns through memory) and a finished `struct vmclock_now` went
    /// through the stack and were loaded back in other widths: store-forwarding stalls.
    read,
    read_contended,
    fill,
    vmclock_now
);

/// The C reading from a Rust one, written to `out` (0) or a code (`out` untouched): UTC (a
/// leap second applied, as `Now::utc`), ns rounded outwards.
#[inline(always)]
fn fill(now: &vmclock_rs::Now, out: &mut MaybeUninit<vmclock_now>) -> c_int {
    let utc = match now.utc() {
        Ok(u) => u,
        Err(e) => return time_code(&e),
    };
    let Some(time_ns) = clamp(ns_of(utc.time.raw(), false)) else { return VMCLOCK_E_OVERFLOW };
    let (mut earliest_ns, mut latest_ns, mut maxerror_ns, mut flags) = (i64::MIN, i64::MAX, -1, 0);
    if let (Some(e), Some(l), Some(m)) = (utc.earliest(), utc.latest(), utc.maxerror_ns()) {
        // Nanoseconds rounded outwards: earliest down, latest up.
        let (Some(e), Some(l), Some(m)) = (clamp(ns_of(e.raw(), false)), clamp(ns_of(l.raw(), true)), clamp(m)) else {
            return VMCLOCK_E_OVERFLOW;
        };
        (earliest_ns, latest_ns, maxerror_ns, flags) = (e, l, m, VMCLOCK_NOW_BOUNDED);
    }
    if now.tai_minus_utc.is_some() {
        flags |= VMCLOCK_NOW_TAI_VALID;
    }
    if now.is_reliable() {
        flags |= VMCLOCK_NOW_RELIABLE;
    }
    out.write(vmclock_now {
        time_ns,
        earliest_ns,
        latest_ns,
        maxerror_ns,
        esterror_ns: utc.esterror_ns().and_then(clamp).unwrap_or(-1),
        disruption_marker: now.disruption_marker,
        counter: now.counter,
        tai_minus_utc: now.tai_minus_utc.map_or(0, i32::from),
        flags,
        status: now.status,
        time_type: now.time_type,
        reserved: [0; 6],
    });
    VMCLOCK_OK
}

/// 64.64 seconds → ns, rounded down or (`ceil`) up.
fn ns_of(raw: u128, ceil: bool) -> u128 {
    let f = (raw & ((1u128 << 64) - 1)) * 1_000_000_000;
    (raw >> 64) * 1_000_000_000 + (f >> 64) + u128::from(ceil && f & ((1u128 << 64) - 1) != 0)
}

/// Reads the time now as vmclock_now does, and gives only the bounds (rounded outwards), the
/// flags, the status, the TAI offset and the disruption marker: 0, or the code vmclock_now
/// would give (then `*out` is unchanged). For the same page and counter, every field is
/// vmclock_now's field of the same name. Leaner: no estimate, no estimated error, fewer
/// conversions to ns and a smaller struct to write (docs/BENCHMARKS.md). Thread-safe; no
/// allocation; no system call.
///
/// # Safety
/// `c` is NULL or a handle from vmclock_open not yet closed; `out` is NULL or points to a
/// writable struct vmclock_bounds.
#[no_mangle]
pub unsafe extern "C" fn vmclock_now_bounds(c: *const vmclock, out: *mut vmclock_bounds) -> c_int {
    if c.is_null() || out.is_null() {
        return VMCLOCK_E_NULL;
    }
    // SAFETY: `c` is not null and came from vmclock_open (not yet closed), per the API.
    let c = unsafe { &*c };
    // SAFETY: `out` is not null and points to a writable vmclock_bounds, per the API; seen as
    // possibly uninitialised memory, which is only written.
    let out = unsafe { &mut *out.cast::<MaybeUninit<vmclock_bounds>>() };
    read_bounds(&c.clock, || c.protection.as_ref().is_some_and(|p| p.gone()), vmclock_rs::counter::read, out)
}

/// `vmclock_now_bounds` inlined into a Rust caller (the criterion bench's diagnostic).
#[doc(hidden)]
#[inline(always)]
pub fn now_bounds_inline(c: &vmclock, out: &mut MaybeUninit<vmclock_bounds>) -> c_int {
    read_bounds(&c.clock, || c.protection.as_ref().is_some_and(|p| p.gone()), vmclock_rs::counter::read, out)
}

/// `vmclock_now_bounds` with the counter value given (its tests: the inline reader's answer is
/// compared with this one for the same page and counter).
#[doc(hidden)]
pub fn now_bounds_at(c: &vmclock, counter: u64, out: &mut MaybeUninit<vmclock_bounds>) -> c_int {
    read_bounds(&c.clock, || c.protection.as_ref().is_some_and(|p| p.gone()), || counter, out)
}

read_paths!(
    /// [`read`] for `vmclock_now_bounds`: the same paths and codes, [`fill_bounds`] instead of
    /// [`fill`].
    read_bounds,
    read_bounds_contended,
    fill_bounds,
    vmclock_bounds
);

/// [`fill`]'s bounds, flags, status, offset and marker, with its codes. A bounded reading
/// converts only earliest and latest: [`fill`]'s other two conversions cannot fail when latest
/// fits (0 ≤ time ≤ latest, and the maximum error ≤ latest, both in 64.64, and the ns
/// conversion is monotonic), so they decide nothing here.
#[inline(always)]
fn fill_bounds(now: &vmclock_rs::Now, out: &mut MaybeUninit<vmclock_bounds>) -> c_int {
    let utc = match now.utc() {
        Ok(u) => u,
        Err(e) => return time_code(&e),
    };
    let (earliest_ns, latest_ns, mut flags) = match (utc.earliest(), utc.latest()) {
        (Some(e), Some(l)) => {
            // Nanoseconds rounded outwards: earliest down, latest up.
            let (Some(e), Some(l)) = (ns_i64(e.raw(), false), ns_i64(l.raw(), true)) else {
                return VMCLOCK_E_OVERFLOW;
            };
            (e, l, VMCLOCK_NOW_BOUNDED)
        }
        _ => {
            if clamp(ns_of(utc.time.raw(), false)).is_none() {
                return VMCLOCK_E_OVERFLOW;
            }
            (i64::MIN, i64::MAX, 0)
        }
    };
    if now.tai_minus_utc.is_some() {
        flags |= VMCLOCK_NOW_TAI_VALID;
    }
    if now.is_reliable() {
        flags |= VMCLOCK_NOW_RELIABLE;
    }
    out.write(vmclock_bounds {
        earliest_ns,
        latest_ns,
        disruption_marker: now.disruption_marker,
        flags,
        tai_minus_utc: now.tai_minus_utc.unwrap_or(0),
        status: now.status,
        reserved: 0,
    });
    VMCLOCK_OK
}

/// `clamp(ns_of(raw, ceil))` with 64-bit arithmetic where it fits (whole seconds below
/// 2^63 ns, every time until 2262): the whole seconds by one 64-bit multiplication, the fraction
/// by one 64×64 product. Equal to it for every `raw` (`ns_i64_equals_ns_of`).
#[inline(always)]
fn ns_i64(raw: u128, ceil: bool) -> Option<i64> {
    let (sec, frac) = ((raw >> 64) as u64, raw as u64);
    if raw >> 64 >= (i64::MAX as u64 / 1_000_000_000) as u128 {
        return ns_wide(raw, ceil);
    }
    let f = frac as u128 * 1_000_000_000;
    let ns = sec * 1_000_000_000 + (f >> 64) as u64 + u64::from(ceil && f as u64 != 0);
    i64::try_from(ns).ok()
}

#[cold]
#[inline(never)]
fn ns_wide(raw: u128, ceil: bool) -> Option<i64> {
    clamp(ns_of(raw, ceil))
}

/// Unmaps the page and frees the handle (NULL is ignored). No vmclock_now may run on it then.
///
/// # Safety
/// `c` is NULL or a handle from vmclock_open, closed once.
#[no_mangle]
pub unsafe extern "C" fn vmclock_close(c: *mut vmclock) {
    if !c.is_null() {
        // SAFETY: `c` came from Box::into_raw in vmclock_open and is closed once, per the API.
        drop(unsafe { Box::from_raw(c) });
    }
}

/// A static, NUL-terminated description of a VMCLOCK_E_* code (never NULL).
#[no_mangle]
pub extern "C" fn vmclock_strerror(err: c_int) -> *const c_char {
    let s: &'static CStr = match (err, Code::from_i32(err)) {
        (VMCLOCK_OK, _) => c"success",
        (_, Some(code)) => code.text_c(),
        (_, None) => c"not a libvmclock error code (VMCLOCK_OK or a VMCLOCK_E_* value)",
    };
    s.as_ptr()
}

/// The time of a reading in the page's own timescale (vmclock_read_page), before any TAI
/// offset or leap second: what the conformance vectors' `time_ns` is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vmclock_page_time {
    /// Whole seconds since the timescale's epoch.
    pub sec: u64,
    /// Nanoseconds within the second, rounded down.
    pub nsec: u32,
    /// The page's time_type (0 UTC, 1 TAI, 2 MONOTONIC).
    pub time_type: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// The C reading of a [`Reading`].
fn c_of(r: &Reading) -> vmclock_now {
    let mut flags = 0;
    if r.earliest_ns.is_some() {
        flags |= VMCLOCK_NOW_BOUNDED;
    }
    if r.tai_minus_utc.is_some() {
        flags |= VMCLOCK_NOW_TAI_VALID;
    }
    if r.is_reliable() {
        flags |= VMCLOCK_NOW_RELIABLE;
    }
    vmclock_now {
        time_ns: r.time_ns,
        earliest_ns: r.earliest_ns.unwrap_or(i64::MIN),
        latest_ns: r.latest_ns.unwrap_or(i64::MAX),
        maxerror_ns: r.maxerror_ns.unwrap_or(-1),
        esterror_ns: r.esterror_ns.unwrap_or(-1),
        disruption_marker: r.disruption_marker,
        counter: r.counter,
        tai_minus_utc: r.tai_minus_utc.map_or(0, i32::from),
        flags,
        status: r.status,
        time_type: r.time_type,
        reserved: [0; 6],
    }
}

/// Reads the time now as vmclock_now does, and fails unless the page is SYNCHRONIZED
/// (VMCLOCK_E_UNSYNCHRONIZED; FREERUNNING too) and the bound is at most `max_width_ns` wide
/// (`latest_ns - earliest_ns`; VMCLOCK_E_TOO_WIDE, also when the page gives no bound or
/// `max_width_ns` is negative). On those two codes `*out` holds the refused reading; on any other
/// code it is unchanged. Thread-safe; no allocation; no system call.
///
/// # Safety
/// As vmclock_now.
#[no_mangle]
pub unsafe extern "C" fn vmclock_now_within(c: *const vmclock, max_width_ns: i64, out: *mut vmclock_now) -> c_int {
    // SAFETY: the same contract as vmclock_now's.
    let rc = unsafe { vmclock_now(c, out) };
    if rc != VMCLOCK_OK {
        return rc;
    }
    // SAFETY: vmclock_now returned 0, so `out` is not null and holds a reading it wrote.
    let n = unsafe { &*out };
    if n.status != VMCLOCK_STATUS_SYNCHRONIZED {
        return VMCLOCK_E_UNSYNCHRONIZED;
    }
    let width = n.latest_ns as i128 - n.earliest_ns as i128;
    if n.flags & VMCLOCK_NOW_BOUNDED == 0 || max_width_ns < 0 || width > max_width_ns as i128 {
        return VMCLOCK_E_TOO_WIDE;
    }
    VMCLOCK_OK
}

/// Bounds a CLOCK_REALTIME timestamp `realtime_ns` (ns since 1970, from clock_gettime) taken
/// within the last second: `*out` gets the interval holding the true time at the instant it was
/// taken (`earliest_ns`, `latest_ns`, the estimate `time_ns`; `esterror_ns` -1; `counter` that of
/// the reading now). The page is read now between two CLOCK_REALTIME reads, and the elapsed
/// time is taken from the kernel clock, assumed within 1000 ppm of true time and not stepped in
/// between: the bound is the page's bound now widened by the read's width and 0.1 % of the age
/// each way (docs/INTEROP.md). VMCLOCK_E_TOO_OLD: older than 1 s or later than now;
/// VMCLOCK_E_DISRUPTED: taken before this handle first read the page's current disruption
/// marker (after vmclock_open, or after a live migration or restore this handle saw), or within
/// 1 s of the leap second the page announces; VMCLOCK_E_SLEWING: the kernel is correcting
/// CLOCK_REALTIME's rate by more than 500 ppm now (read with adjtimex, modes 0). `*out` is
/// unchanged on an error. Two or three clock_gettime calls, and one adjtimex per 10 ms (a passed
/// check holds that long); thread-safe; no allocation.
///
/// # Safety
/// As vmclock_now.
#[no_mangle]
pub unsafe extern "C" fn vmclock_bound_realtime(c: *const vmclock, realtime_ns: i64, out: *mut vmclock_now) -> c_int {
    if c.is_null() || out.is_null() {
        return VMCLOCK_E_NULL;
    }
    // SAFETY: `c` is not null and came from vmclock_open (not yet closed), per the API.
    let c = unsafe { &*c };
    let gone = || c.protection.as_ref().is_some_and(|p| p.gone());
    let r = vmclock_rs::realtime::bound_realtime(&c.clock, &c.watch, realtime_ns);
    if gone() {
        return VMCLOCK_E_GONE;
    }
    match r {
        Ok(r) => {
            // SAFETY: `out` is not null and points to a writable vmclock_now, per the API.
            unsafe { out.write(c_of(&r)) };
            VMCLOCK_OK
        }
        Err(code) => code as c_int,
    }
}

/// Reads a page given as `len` bytes (a copy, or a page file's contents: bytes past `len` are
/// absent) at `counter`, a value of the page's own counter, into `*out` as vmclock_now would,
/// and its time in the page's own timescale into `*page_time` (if not NULL). The page's
/// counter_id is not compared with this CPU's. This is the conformance vectors' evaluation
/// (testdata/vectors.json, docs/PROTOCOL.md). Errors as vmclock_now's (VMCLOCK_E_INVALID,
/// VMCLOCK_E_NO_TIME, VMCLOCK_E_NO_UTC, VMCLOCK_E_OVERFLOW), outputs then unchanged.
///
/// # Safety
/// `page` is NULL or valid for reading `len` bytes; `out` is NULL or points to a writable
/// struct vmclock_now; `page_time` is NULL or points to a writable struct vmclock_page_time.
#[no_mangle]
pub unsafe extern "C" fn vmclock_read_page(
    page: *const u8,
    len: usize,
    counter: u64,
    out: *mut vmclock_now,
    page_time: *mut vmclock_page_time,
) -> c_int {
    if page.is_null() || out.is_null() {
        return VMCLOCK_E_NULL;
    }
    // SAFETY: `page` is not null and valid for `len` bytes, per the API.
    let bytes = unsafe { std::slice::from_raw_parts(page, len) };
    match vmclock_rs::realtime::reading_at(bytes, counter) {
        Ok(r) => {
            // SAFETY: `out` is not null and writable, per the API.
            unsafe { out.write(c_of(&r)) };
            if !page_time.is_null() {
                let t = vmclock_page_time {
                    sec: (r.page_time_ns / 1_000_000_000) as u64,
                    nsec: (r.page_time_ns % 1_000_000_000) as u32,
                    time_type: r.time_type,
                    reserved: [0; 3],
                };
                // SAFETY: not null, and writable per the API.
                unsafe { page_time.write(t) };
            }
            VMCLOCK_OK
        }
        Err(code) => code as c_int,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests call the C functions as C would, each call with valid or NULL pointers.
    fn open(p: *const c_char, err: *mut c_int) -> *mut vmclock {
        // SAFETY: `p` is NULL or a CString's pointer; `err` is NULL or a local int.
        unsafe { vmclock_open(p, err) }
    }
    fn now(c: *const vmclock, out: *mut vmclock_now) -> c_int {
        // SAFETY: `c` is NULL or an open handle; `out` is NULL or a local struct.
        unsafe { vmclock_now(c, out) }
    }
    fn close(c: *mut vmclock) {
        // SAFETY: `c` is NULL or an open handle, closed once.
        unsafe { vmclock_close(c) }
    }
    use std::mem::MaybeUninit;
    use vmclock_rs::abi;
    use vmclock_rs::test_support::synchronized_tai;
    use vmclock_rs::{PageBuilder, Period, Timestamp};

    fn page_file(dir: &Path, status: u8) -> std::path::PathBuf {
        let p = dir.join("page");
        let bytes = synchronized_tai(vmclock_rs::counter::NATIVE, vmclock_rs::counter::read(), 2_500_000_000)
            .esterror(100, 10)
            .status(status)
            .page_bytes();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn cpath(p: &Path) -> std::ffi::CString {
        std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    /// What `vmclock_now` must give for `snap` at `counter`, from the Rust API's exact snapshot
    /// path (`Snapshot::utc_at`: UTC with the leap second applied, bounds in 2^-64 s) turned
    /// into ns rounded outwards with `Timestamp::as_nanos` (not the library's `ns_of`).
    fn reference(snap: &vmclock_rs::Snapshot, counter: u64) -> Result<vmclock_now, c_int> {
        fn ns(t: vmclock_rs::Timestamp<vmclock_rs::Utc>, up: bool) -> Option<i64> {
            // Exact in ns when frac · 1e9 is a whole multiple of 2^64.
            let rest = (t.frac() as u128 * 1_000_000_000) & ((1u128 << 64) - 1);
            i64::try_from(t.as_nanos() + u128::from(up && rest != 0)).ok()
        }
        let utc = snap.utc_at(counter).map_err(|e| time_code(&e))?;
        let time_ns = ns(utc.time, false).ok_or(VMCLOCK_E_OVERFLOW)?;
        let mut r = vmclock_now {
            time_ns,
            earliest_ns: i64::MIN,
            latest_ns: i64::MAX,
            maxerror_ns: -1,
            esterror_ns: utc.esterror_ns().and_then(|e| i64::try_from(e).ok()).unwrap_or(-1),
            disruption_marker: snap.disruption_marker(),
            counter,
            tai_minus_utc: 0,
            flags: 0,
            status: snap.clock_status().unwrap_or(abi::status::UNKNOWN),
            time_type: snap.time_type(),
            reserved: [0; 6],
        };
        if let Some(m) = utc.maxerror_ns() {
            r.maxerror_ns = i64::try_from(m).map_err(|_| VMCLOCK_E_OVERFLOW)?;
            r.earliest_ns = ns(utc.earliest().unwrap(), false).ok_or(VMCLOCK_E_OVERFLOW)?;
            r.latest_ns = ns(utc.latest().unwrap(), true).ok_or(VMCLOCK_E_OVERFLOW)?;
            r.flags |= VMCLOCK_NOW_BOUNDED;
        }
        if let Some(t) = snap.tai_minus_utc() {
            r.tai_minus_utc = t.into();
            r.flags |= VMCLOCK_NOW_TAI_VALID;
        }
        if matches!(r.status, abi::status::SYNCHRONIZED | abi::status::FREERUNNING) {
            r.flags |= VMCLOCK_NOW_RELIABLE;
        }
        Ok(r)
    }

    /// `read` (what `vmclock_now` runs) as a Result, over any page memory and counter.
    fn read_result<M: vmclock_rs::PageMemory>(clock: &Clock<M>, counter: u64) -> Result<vmclock_now, c_int> {
        let mut out = MaybeUninit::uninit();
        match read(clock, || false, || counter, &mut out) {
            // SAFETY: `read` wrote `out` when it returned 0.
            VMCLOCK_OK => Ok(unsafe { out.assume_init() }),
            code => Err(code),
        }
    }

    /// What vmclock_now_bounds must give, from vmclock_now's answer.
    fn bounds_of(r: Result<vmclock_now, c_int>) -> Result<vmclock_bounds, c_int> {
        r.map(|n| vmclock_bounds {
            earliest_ns: n.earliest_ns,
            latest_ns: n.latest_ns,
            disruption_marker: n.disruption_marker,
            flags: n.flags,
            tai_minus_utc: i16::try_from(n.tai_minus_utc).unwrap(),
            status: n.status,
            reserved: 0,
        })
    }

    fn read_bounds_result<M: vmclock_rs::PageMemory>(clock: &Clock<M>, counter: u64) -> Result<vmclock_bounds, c_int> {
        let mut out = MaybeUninit::uninit();
        match read_bounds(clock, || false, || counter, &mut out) {
            // SAFETY: `read_bounds` wrote `out` when it returned 0.
            VMCLOCK_OK => Ok(unsafe { out.assume_init() }),
            code => Err(code),
        }
    }

    /// vmclock_now and vmclock_now_bounds on one page at one counter, each on a clock of its
    /// own (each first read checks the page and fills the cache; the second takes the cached
    /// path): the bounds reading is vmclock_now's, field for field, or the same code.
    fn both_ways<M: vmclock_rs::PageMemory>(
        now_clock: &Clock<M>,
        bounds_clock: &Clock<M>,
        counter: u64,
    ) -> Vec<(Result<vmclock_bounds, c_int>, Result<vmclock_bounds, c_int>)> {
        (0..2)
            .map(|_| (read_bounds_result(bounds_clock, counter), bounds_of(read_result(now_clock, counter))))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4096, ..Default::default() })]

        /// The C reading equals the Rust API's for the same page and counter, field by field, or
        /// it is the same error: on the first read (which checks the page's constants) and on
        /// the uncontended fast path after it.
        #[test]
        fn c_reading_equals_the_rust_snapshot_path(
            utc in proptest::bool::ANY,
            // Now, anywhere, and just after the epoch (where the earliest time saturates at 0)
            // or at the end of u64 seconds (where the latest overflows).
            sec in proptest::prop_oneof![
                1_700_000_000u64..1_900_000_000,
                proptest::num::u64::ANY,
                0u64..3,
                u64::MAX - 2..=u64::MAX,
            ],
            frac in proptest::num::u64::ANY,
            cv in proptest::num::u64::ANY,
            period in proptest::prop_oneof![proptest::num::u64::ANY, proptest::strategy::Just(u64::MAX), proptest::strategy::Just(0u64)],
            shift in proptest::prop_oneof![0u8..128, proptest::strategy::Just(64u8), 128u8..=255],
            bounds in proptest::prop_oneof![
                proptest::array::uniform4(proptest::num::u64::ANY),
                proptest::array::uniform4(0u64..1_000_000),
                proptest::strategy::Just([u64::MAX; 4]),
            ],
            valid in proptest::num::u8::ANY,
            tai_raw in proptest::prop_oneof![proptest::strategy::Just(-37i16), proptest::strategy::Just(37i16), proptest::num::i16::ANY],
            leap in 0u8..7,
            status in 0u8..6,
            kind in 0u8..5,
            d in proptest::num::i64::ANY,
        ) {
            // A whole page from random fields (test_support::random_page), any status, and a
            // disruption marker of its own.
            let p = Period { frac: period, shift };
            let abi = vmclock_rs::test_support::random_page(utc, sec, frac, cv, p, bounds, valid, tai_raw, leap)
                .status(status)
                .disruption_marker(cv ^ sec)
                .build();
            let c = match kind {
                0 => cv,
                1 => cv.wrapping_add((d % 3) as u64),
                2 => cv.wrapping_add((d % 100_000_000_000_000) as u64),
                3 => cv.wrapping_add(1 << 63),
                _ => d as u64,
            };
            let buf = vmclock_rs::PageBuf::new();
            vmclock_rs::Writer::new(&buf).publish(&abi);
            let clock = Clock::new(&buf);
            let want = match vmclock_rs::Snapshot::new(abi, 4096) {
                Ok(snap) => reference(&snap, c),
                Err(_) => Err(VMCLOCK_E_INVALID),
            };
            proptest::prop_assert_eq!(read_result(&clock, c), want);
            proptest::prop_assert_eq!(read_result(&clock, c), want);
            // vmclock_now_bounds: vmclock_now's fields, on its first read and its cached one.
            let bounds_clock = Clock::new(&buf);
            proptest::prop_assert_eq!(read_bounds_result(&bounds_clock, c), bounds_of(want));
            proptest::prop_assert_eq!(read_bounds_result(&bounds_clock, c), bounds_of(want));
        }

        /// The 64-bit conversion equals the 128-bit one, around its switch-over and anywhere.
        #[test]
        fn ns_i64_equals_ns_of(
            sec in proptest::prop_oneof![
                0u64..3_000_000_000,
                9_223_372_030u64..9_223_372_040,
                proptest::num::u64::ANY,
            ],
            frac in proptest::prop_oneof![proptest::num::u64::ANY, 0u64..3, u64::MAX - 3..=u64::MAX],
            ceil in proptest::bool::ANY,
        ) {
            let raw = (sec as u128) << 64 | frac as u128;
            proptest::prop_assert_eq!(ns_i64(raw, ceil), clamp(ns_of(raw, ceil)));
        }

        /// vmclock_now_bounds equals vmclock_now over random pages read at random counters
        /// near the reference (the fast path's range), both clocks warm.
        #[test]
        fn bounds_reading_equals_vmclock_now(
            utc in proptest::bool::ANY,
            sec in proptest::prop_oneof![1_700_000_000u64..1_900_000_000, proptest::num::u64::ANY, 0u64..3],
            frac in proptest::num::u64::ANY,
            cv in proptest::num::u64::ANY,
            period in proptest::num::u64::ANY,
            shift in proptest::prop_oneof![0u8..64, proptest::strategy::Just(32u8)],
            bounds in proptest::prop_oneof![
                proptest::array::uniform4(proptest::num::u64::ANY),
                proptest::array::uniform4(0u64..1_000_000),
            ],
            valid in proptest::num::u8::ANY,
            tai_raw in proptest::prop_oneof![proptest::strategy::Just(-37i16), proptest::num::i16::ANY],
            leap in 0u8..7,
            status in 0u8..6,
            ds in proptest::collection::vec(0u64..10_000_000_000, 1..8),
        ) {
            let p = Period { frac: period, shift };
            let abi = vmclock_rs::test_support::random_page(utc, sec, frac, cv, p, bounds, valid, tai_raw, leap)
                .status(status)
                .disruption_marker(cv ^ sec)
                .build();
            let buf = vmclock_rs::PageBuf::new();
            vmclock_rs::Writer::new(&buf).publish(&abi);
            let (now_clock, bounds_clock) = (Clock::new(&buf), Clock::new(&buf));
            for d in ds {
                for (got, want) in both_ways(&now_clock, &bounds_clock, cv.wrapping_add(d)) {
                    proptest::prop_assert_eq!(got, want);
                }
            }
        }
    }

    /// The rounding edges of the ns conversion, hit exactly (random pages almost never do): the
    /// fractions of a ns of the time (α) and of the maximum error (μ) summing to exactly one ns,
    /// equal, one step apart, zero; a bound reaching past the epoch; a time at the end of u64
    /// seconds. Each reading equals the reference.
    #[test]
    fn ns_rounding_edges_equal_the_reference() {
        // frac with frac · 1e9 ≡ t (mod 2^64), for t a multiple of 2^9 (1e9 = 2^9 · 1953125).
        let inv = (0..6).fold(1_953_125u64, |x, _| x.wrapping_mul(2u64.wrapping_sub(1_953_125u64.wrapping_mul(x))));
        assert_eq!(inv.wrapping_mul(1_953_125), 1);
        let frac_for = |t: u64| {
            assert_eq!(t % 512, 0);
            let f = (t >> 9).wrapping_mul(inv);
            assert_eq!(f.wrapping_mul(1_000_000_000), t);
            f
        };
        let max_ns = 1_234u64;
        let m = vmclock_rs::time::nanos_to_frac_ceil(max_ns);
        let mu = (m as u64).wrapping_mul(1_000_000_000);
        assert!(mu != 0 && mu % 512 == 0);
        let cases = [
            ("α + μ = one ns", 1_795_000_000, frac_for(mu.wrapping_neg())),
            ("α = μ", 1_795_000_000, frac_for(mu)),
            ("α one step below μ", 1_795_000_000, frac_for(mu - 512)),
            ("α one step above μ", 1_795_000_000, frac_for(mu + 512)),
            ("α = 0", 1_795_000_000, 0),
            ("bound past the epoch", 0, 1 << 40),
            ("time at the end of u64 seconds", u64::MAX, u64::MAX - 7),
        ];
        for (name, sec, frac) in cases {
            let abi = PageBuilder::new()
                .reference(
                    vmclock_rs::counter::NATIVE,
                    1_000,
                    Timestamp::<vmclock_rs::Utc>::from_parts(sec, frac),
                    Period::from_hz(1_000_000_000).unwrap(),
                )
                .maxerror(max_ns, 0)
                .status(abi::status::SYNCHRONIZED)
                .build();
            let buf = vmclock_rs::PageBuf::new();
            vmclock_rs::Writer::new(&buf).publish(&abi);
            let clock = Clock::new(&buf);
            let want = reference(&vmclock_rs::Snapshot::new(abi, 4096).unwrap(), 1_000);
            // The first read (constants checked) and the fast path.
            assert_eq!(read_result(&clock, 1_000), want, "{name}");
            assert_eq!(read_result(&clock, 1_000), want, "{name}");
            let bounds_clock = Clock::new(&buf);
            for _ in 0..2 {
                assert_eq!(read_bounds_result(&bounds_clock, 1_000), bounds_of(want), "{name}");
            }
            if name.starts_with('α') {
                assert!(want.is_ok(), "{name}");
            }
        }
    }

    #[test]
    fn reads_utc_with_bounds_and_flags() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = page_file(dir.path(), abi::status::SYNCHRONIZED);
        let mut err = 99;
        let c = open(cpath(&p).as_ptr(), &mut err);
        assert!(!c.is_null());
        assert_eq!(err, 0);
        let mut n = vmclock_now::default();
        assert_eq!(now(c, &mut n), 0);
        // 1_795_000_037 TAI − 37 s = 1_795_000_000 UTC, plus a few counter ticks.
        assert!((1_795_000_000_000_000_000..1_795_000_010_000_000_000).contains(&n.time_ns), "{}", n.time_ns);
        assert_eq!(n.flags, VMCLOCK_NOW_BOUNDED | VMCLOCK_NOW_TAI_VALID | VMCLOCK_NOW_RELIABLE);
        assert_eq!(n.tai_minus_utc, 37);
        assert!(n.maxerror_ns >= 1_000);
        assert!(n.earliest_ns <= n.time_ns - 1_000 && n.latest_ns >= n.time_ns + 1_000);
        assert!(n.latest_ns - n.time_ns <= n.maxerror_ns + 1);
        assert_eq!(n.status, abi::status::SYNCHRONIZED);
        // Exactly the Rust API's reading of the same page at the same counter.
        let snap = vmclock_rs::Snapshot::from_bytes(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(Ok(n), reference(&snap, n.counter));
        // The lean call, between n and a later reading: the same flags, status, offset and
        // marker, and bounds that moved forward with the counter.
        let mut b = vmclock_bounds::default();
        // SAFETY: an open handle and a local struct.
        assert_eq!(unsafe { vmclock_now_bounds(c, &mut b) }, VMCLOCK_OK);
        let mut later = vmclock_now::default();
        assert_eq!(now(c, &mut later), 0);
        assert_eq!(
            (b.flags, b.status, b.tai_minus_utc, b.disruption_marker),
            (n.flags, n.status, 37, n.disruption_marker)
        );
        assert!(n.earliest_ns <= b.earliest_ns && b.earliest_ns <= later.earliest_ns, "{n:?} {b:?} {later:?}");
        assert!(n.latest_ns <= b.latest_ns && b.latest_ns <= later.latest_ns, "{n:?} {b:?} {later:?}");
        // SAFETY: a NULL handle: the NULL code, nothing written.
        assert_eq!(unsafe { vmclock_now_bounds(std::ptr::null(), &mut b) }, VMCLOCK_E_NULL);
        // SAFETY: a NULL out: the NULL code.
        assert_eq!(unsafe { vmclock_now_bounds(c, std::ptr::null_mut()) }, VMCLOCK_E_NULL);
        close(c);
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }

    #[test]
    fn null_pointers_give_null_codes() {
        let mut err = 0;
        assert!(open(std::ptr::null(), &mut err).is_null());
        assert_eq!(err, VMCLOCK_E_NULL);
        assert!(open(std::ptr::null(), std::ptr::null_mut()).is_null());
        let mut n = vmclock_now::default();
        assert_eq!(now(std::ptr::null(), &mut n), VMCLOCK_E_NULL);
        assert_eq!(now(std::ptr::null(), std::ptr::null_mut()), VMCLOCK_E_NULL);
        close(std::ptr::null_mut());
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        // A valid handle with a NULL out.
        let dir = tempfile::tempdir().unwrap();
        let c = open(cpath(&page_file(dir.path(), abi::status::SYNCHRONIZED)).as_ptr(), &mut err);
        assert!(!c.is_null());
        assert_eq!(now(c, std::ptr::null_mut()), VMCLOCK_E_NULL);
        assert_eq!(now(c, &mut n), VMCLOCK_OK);
        close(c);
    }

    #[test]
    fn absent_empty_short_and_garbage_files_give_codes() {
        let dir = tempfile::tempdir().unwrap();
        let mut err = 0;
        assert!(open(cpath(&dir.path().join("absent")).as_ptr(), &mut err).is_null());
        assert_eq!(err, VMCLOCK_E_OPEN);
        assert_eq!(errno(), libc::ENOENT, "errno says why");
        let cases: [(&str, Vec<u8>); 4] = [
            ("empty", Vec::new()),
            ("garbage", vec![0xAA; 4096]),
            ("zeros", vec![0; 4096]),
            // A page's first 10 bytes: not even its flags.
            ("stub", PageBuilder::new().page_bytes()[..10].to_vec()),
        ];
        for (name, bytes) in cases {
            let f = dir.path().join(name);
            std::fs::write(&f, bytes).unwrap();
            assert!(open(cpath(&f).as_ptr(), std::ptr::null_mut()).is_null(), "{name}");
            let mut err = 0;
            assert!(open(cpath(&f).as_ptr(), &mut err).is_null(), "{name}");
            assert_eq!(err, VMCLOCK_E_INVALID, "{name}");
        }
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        // A time page cut after 50 bytes is a page whose time fields are absent (a field is
        // present only within the bytes there are): it opens, and a reading says no time.
        let short = dir.path().join("short");
        let full = page_file(dir.path(), abi::status::SYNCHRONIZED);
        std::fs::write(&short, &std::fs::read(&full).unwrap()[..50]).unwrap();
        let c = open(cpath(&short).as_ptr(), &mut err);
        assert!(!c.is_null(), "{err}");
        let mut n = vmclock_now::default();
        assert_eq!(now(c, &mut n), VMCLOCK_E_NO_TIME);
        close(c);
    }

    #[test]
    fn a_huge_sparse_file_maps_only_its_first_page() {
        let dir = tempfile::tempdir().unwrap();
        // 1 TiB of holes: not a page.
        let holes = dir.path().join("holes");
        std::fs::File::create(&holes).unwrap().set_len(1 << 40).unwrap();
        let mut err = 0;
        assert!(open(cpath(&holes).as_ptr(), &mut err).is_null());
        assert_eq!(err, VMCLOCK_E_INVALID);
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        // A valid page followed by 1 TiB of holes: the page is read, nothing else.
        let p = page_file(dir.path(), abi::status::SYNCHRONIZED);
        let snap = vmclock_rs::Snapshot::from_bytes(&std::fs::read(&p).unwrap()).unwrap();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(1 << 40).unwrap();
        let c = open(cpath(&p).as_ptr(), &mut err);
        assert!(!c.is_null(), "{err}");
        let mut n = vmclock_now::default();
        assert_eq!(now(c, &mut n), VMCLOCK_OK);
        assert_eq!(Ok(n), reference(&snap, n.counter));
        close(c);
    }

    #[test]
    fn a_page_renamed_over_or_unlinked_while_mapped_keeps_its_last_content() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = page_file(dir.path(), abi::status::SYNCHRONIZED);
        let old = vmclock_rs::Snapshot::from_bytes(&std::fs::read(&p).unwrap()).unwrap();
        let c = open(cpath(&p).as_ptr(), std::ptr::null_mut());
        assert!(!c.is_null());
        // A publisher replaces the file: a new page (FREERUNNING) renamed over the path.
        let sub = dir.path().join("new");
        std::fs::create_dir(&sub).unwrap();
        let q = page_file(&sub, abi::status::FREERUNNING);
        std::fs::rename(&q, &p).unwrap();
        let mut n = vmclock_now::default();
        assert_eq!(now(c, &mut n), VMCLOCK_OK);
        assert_eq!(Ok(n), reference(&old, n.counter), "the handle keeps the page it mapped");
        // A new handle follows the new file.
        let c2 = open(cpath(&p).as_ptr(), std::ptr::null_mut());
        assert_eq!(now(c2, &mut n), VMCLOCK_OK);
        assert_eq!(n.status, abi::status::FREERUNNING);
        close(c2);
        // Unlinked: still the last content, no error, no fault.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(now(c, &mut n), VMCLOCK_OK);
        assert_eq!(Ok(n), reference(&old, n.counter));
        close(c);
    }

    #[test]
    fn every_code_has_one_line_naming_cause_and_remedy() {
        let mut seen = std::collections::HashSet::new();
        for code in VMCLOCK_E_SLEWING..=VMCLOCK_OK {
            // SAFETY: vmclock_strerror returns a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(vmclock_strerror(code)) }.to_str().unwrap();
            assert!(!s.contains('\n') && !s.contains("not a libvmclock error code"), "{code}: {s}");
            assert!(code == VMCLOCK_OK || s.contains(": "), "{code}: no remedy in {s}");
            assert!(seen.insert(s), "{code}: the same text as another code");
        }
        for code in [1, VMCLOCK_E_SLEWING - 1, c_int::MIN, c_int::MAX] {
            // SAFETY: as above.
            let s = unsafe { CStr::from_ptr(vmclock_strerror(code)) }.to_str().unwrap();
            assert!(s.contains("not a libvmclock error code"), "{code}: {s}");
        }
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || {
            let mut err = 0;
            let h = open(cpath(&f).as_ptr(), &mut err);
            close(h);
            tx.send((h.is_null(), err)).unwrap();
        });
        // A hang detector, not a synchronisation: the open returns or blocks forever.
        let r = rx.recv_timeout(std::time::Duration::from_secs(60));
        if r.is_err() {
            let _writer = std::fs::OpenOptions::new().write(true).open(&fifo); // unblock it
            panic!("vmclock_open blocked on a fifo");
        }
        // Opened without waiting, a fifo holds nothing: not a page.
        assert_eq!(r.unwrap(), (true, VMCLOCK_E_INVALID));
        let mut err = 0;
        assert!(open(cpath(dir.path()).as_ptr(), &mut err).is_null());
        assert_eq!(err, VMCLOCK_E_OPEN);
    }

    #[test]
    fn a_truncated_page_file_gives_gone_not_sigbus() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = page_file(dir.path(), abi::status::SYNCHRONIZED);
        let c = open(cpath(&p).as_ptr(), std::ptr::null_mut());
        assert!(!c.is_null());
        let mut n = vmclock_now::default();
        assert_eq!(now(c, &mut n), 0);
        // Truncated in place: the mapped page is now wholly beyond the end of the file.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(0).unwrap();
        assert_eq!(now(c, &mut n), VMCLOCK_E_GONE);
        assert_eq!(now(c, &mut n), VMCLOCK_E_GONE);
        let mut b = vmclock_bounds::default();
        // SAFETY: an open handle and a local struct.
        assert_eq!(unsafe { vmclock_now_bounds(c, &mut b) }, VMCLOCK_E_GONE);
        assert_eq!(b, vmclock_bounds::default(), "unchanged on an error");
        close(c);
        // A new handle on a new page works again.
        let p = page_file(dir.path(), abi::status::FREERUNNING);
        let c = open(cpath(&p).as_ptr(), std::ptr::null_mut());
        assert_eq!(now(c, &mut n), 0);
        assert_eq!(n.status, abi::status::FREERUNNING);
        close(c);
    }

    #[test]
    fn threads_share_one_handle_while_the_page_is_rewritten() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let p = page_file(dir.path(), abi::status::SYNCHRONIZED);
        let base = vmclock_rs::Snapshot::from_bytes(&std::fs::read(&p).unwrap()).unwrap();
        // Version m of the page: every field a reading reports moves with m (marker, reference
        // time, both errors, status), so a reading mixing two versions cannot match either.
        let version = |m: u64| {
            let mut raw = *base.raw();
            raw.disruption_marker = m.into();
            raw.time_sec = (base.time_sec().unwrap() + m * 1_000).into();
            raw.time_maxerror_nanosec = (1_000 + m).into();
            raw.time_esterror_nanosec = (100 + 3 * m).into();
            raw.clock_status = [abi::status::SYNCHRONIZED, abi::status::FREERUNNING][(m % 2) as usize];
            raw
        };
        const VERSIONS: u64 = 20_000;
        let c = open(cpath(&p).as_ptr(), std::ptr::null_mut());
        assert!(!c.is_null());
        let handle = c as usize; // shared read-only by the threads, as C would
        let map = vmclock_rs::Mapping::open_rw(&p).unwrap();
        let mut w = vmclock_rs::Writer::new(vmclock_rs::WritableMapping::new(map).unwrap());
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (done, version) = (&done, &version);
                    s.spawn(move || {
                        let (mut reads, mut after, mut last) = (0u64, 0u64, 0u64);
                        // During the writes, then 100 successful readings begun after them.
                        while after < 100 {
                            let finished = done.load(Ordering::Acquire);
                            let mut n = vmclock_now::default();
                            match now(handle as *const vmclock, &mut n) {
                                VMCLOCK_OK => {}
                                // A writer that never pauses may hold off a reader for 100 ms
                                // on a loaded machine: a code, not a torn read.
                                VMCLOCK_E_BUSY => continue,
                                e => panic!("vmclock_now: {e}"),
                            }
                            let m = n.disruption_marker;
                            assert!(m >= last && m <= VERSIONS, "marker {m} after {last}");
                            // The whole reading is version m's at the counter it was read with:
                            // within that page's bounds, and nothing torn.
                            let snap = vmclock_rs::Snapshot::new(version(m), 4096).unwrap();
                            assert_eq!(Ok(n), reference(&snap, n.counter), "version {m}");
                            assert!(n.earliest_ns <= n.time_ns && n.time_ns <= n.latest_ns);
                            last = m;
                            reads += 1;
                            after += u64::from(finished);
                        }
                        (reads, last)
                    })
                })
                .collect();
            for m in 1..=VERSIONS {
                w.publish(&version(m));
            }
            done.store(true, Ordering::Release);
            for r in readers {
                let (reads, last) = r.join().unwrap();
                assert!(reads >= 100);
                assert_eq!(last, VERSIONS, "the last page published is the one read at the end");
            }
        });
        close(c);
    }

    /// vmclock_now (its inlined read over a page buffer) agrees with every conformance vector,
    /// and with vmclock_read_page on the same page: the error, the bounds, the status, the
    /// offset and the UTC time.
    #[test]
    fn vmclock_now_agrees_with_every_vector() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for c in v.as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let mut page = b64(c["page_b64"].as_str().unwrap());
            let counter = c["counter"].as_u64().unwrap();
            let expect = &c["expect"];
            // A consistent copy of a page of this CPU's counter (see vmclock's tests/vectors.rs).
            if page.len() > 0x10 {
                page[0x0c..0x10].copy_from_slice(&[0; 4]);
            }
            if page.len() > 0x0a && page[0x0a] != abi::counter_id::INVALID {
                page[0x0a] = vmclock_rs::counter::NATIVE;
            }
            let buf = vmclock_rs::PageBuf::with_available(page.len());
            buf.store_bytes(&page);
            let clock = Clock::new(&buf);
            // vmclock_now_bounds gives vmclock_now's fields or its code, first read and cached.
            for (got, want) in both_ways(&Clock::new(&buf), &Clock::new(&buf), counter) {
                assert_eq!(got, want, "{name}");
            }
            for _ in 0..2 {
                match read_result(&clock, counter) {
                    Err(code) => {
                        // SAFETY: a static NUL-terminated string.
                        let text = unsafe { CStr::from_ptr(vmclock_strerror(code)) }.to_str().unwrap();
                        assert_eq!(expect["error"], text, "{name}");
                    }
                    Ok(n) => {
                        assert!(expect["error"].is_null(), "{name}: {n:?}");
                        let bounded = n.flags & VMCLOCK_NOW_BOUNDED != 0;
                        assert_eq!(expect["earliest_ns"].as_i64(), bounded.then_some(n.earliest_ns), "{name}");
                        assert_eq!(expect["latest_ns"].as_i64(), bounded.then_some(n.latest_ns), "{name}");
                        assert_eq!(expect["status"].as_u64(), Some(u64::from(n.status)), "{name}");
                        let tai = (n.flags & VMCLOCK_NOW_TAI_VALID != 0).then_some(i64::from(n.tai_minus_utc));
                        assert_eq!(expect["tai_minus_utc"].as_i64(), tai, "{name}");
                        let mut r = vmclock_now::default();
                        // SAFETY: `page` is valid for its length; `r` is a local struct.
                        let rc = unsafe {
                            vmclock_read_page(page.as_ptr(), page.len(), counter, &mut r, std::ptr::null_mut())
                        };
                        assert_eq!((rc, r), (VMCLOCK_OK, n), "{name}");
                    }
                }
            }
        }
    }

    fn b64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(4) {
            let n = chunk.iter().filter(|&&c| c != b'=').count();
            let v = chunk.iter().take(n).fold(0u32, |v, &c| v << 6 | u32::from(val(c))) << (6 * (4 - n));
            out.extend_from_slice(&v.to_be_bytes()[1..n]);
        }
        out
    }

    fn within(c: *const vmclock, max: i64, out: &mut vmclock_now) -> c_int {
        // SAFETY: `c` is an open handle; `out` a local struct.
        unsafe { vmclock_now_within(c, max, out) }
    }

    fn past(c: *const vmclock, ts: i64, out: &mut vmclock_now) -> c_int {
        // SAFETY: `c` is an open handle; `out` a local struct.
        unsafe { vmclock_bound_realtime(c, ts, out) }
    }

    #[test]
    fn the_cap_refuses_wide_bounds_and_unsynchronized_pages() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let c = open(cpath(&page_file(dir.path(), abi::status::SYNCHRONIZED)).as_ptr(), std::ptr::null_mut());
        let mut n = vmclock_now::default();
        assert_eq!(within(c, 10_000_000, &mut n), VMCLOCK_OK);
        let width = n.latest_ns - n.earliest_ns;
        assert!((2_000..10_000_000).contains(&width), "{width}");
        let mut m = vmclock_now::default();
        assert_eq!(within(c, 1_000, &mut m), VMCLOCK_E_TOO_WIDE);
        assert!(m.latest_ns - m.earliest_ns > 1_000, "the refused reading is given");
        assert_eq!(within(c, -1, &mut m), VMCLOCK_E_TOO_WIDE);
        close(c);
        let c = open(cpath(&page_file(dir.path(), abi::status::FREERUNNING)).as_ptr(), std::ptr::null_mut());
        assert_eq!(within(c, i64::MAX, &mut m), VMCLOCK_E_UNSYNCHRONIZED);
        assert_eq!(m.status, abi::status::FREERUNNING);
        close(c);
        // SAFETY: NULL handle and out: the NULL code.
        assert_eq!(unsafe { vmclock_now_within(std::ptr::null(), 1, std::ptr::null_mut()) }, VMCLOCK_E_NULL);
    }

    #[test]
    fn a_past_timestamp_is_bounded_until_it_is_too_old_or_disrupted() {
        if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let before_open = vmclock_rs::realtime::realtime_ns();
        let p = page_file(dir.path(), abi::status::SYNCHRONIZED);
        let c = open(cpath(&p).as_ptr(), std::ptr::null_mut());
        let ts = vmclock_rs::realtime::realtime_ns();
        let mut now_reading = vmclock_now::default();
        assert_eq!(now(c, &mut now_reading), VMCLOCK_OK);
        let mut n = vmclock_now::default();
        assert_eq!(past(c, ts, &mut n), VMCLOCK_OK);
        let mut after = vmclock_now::default();
        assert_eq!(now(c, &mut after), VMCLOCK_OK);
        // The page's bound at the call, moved back by at least the age and widened by the read's
        // width and 0.1 % of the age: no later than a reading made after it, no narrower than one
        // made before it.
        assert!(n.earliest_ns <= after.earliest_ns && n.latest_ns <= after.latest_ns, "{n:?} {after:?}");
        assert!(n.latest_ns - n.earliest_ns >= now_reading.latest_ns - now_reading.earliest_ns);
        assert!(n.earliest_ns <= n.time_ns && n.time_ns <= n.latest_ns);
        assert_eq!(n.flags & VMCLOCK_NOW_BOUNDED, VMCLOCK_NOW_BOUNDED);
        assert_eq!(past(c, before_open, &mut n), VMCLOCK_E_DISRUPTED, "taken before the handle saw the marker");
        let late = vmclock_rs::realtime::realtime_ns() + 10_000_000_000;
        assert_eq!(past(c, late, &mut n), VMCLOCK_E_TOO_OLD, "later than now");
        assert_eq!(past(c, ts - 2_000_000_000, &mut n), VMCLOCK_E_TOO_OLD, "older than 1 s");
        // The page's marker changes (a migration): a timestamp from before the first read that
        // saw the new marker is refused; one taken after it is bounded.
        let snap = vmclock_rs::Snapshot::from_bytes(&std::fs::read(&p).unwrap()).unwrap();
        let mut raw = *snap.raw();
        raw.disruption_marker = (snap.disruption_marker() + 1).into();
        let map = vmclock_rs::Mapping::open_rw(&p).unwrap();
        vmclock_rs::Writer::new(vmclock_rs::WritableMapping::new(map).unwrap()).publish(&raw);
        let ts2 = vmclock_rs::realtime::realtime_ns();
        assert_eq!(past(c, ts2, &mut n), VMCLOCK_E_DISRUPTED);
        let ts3 = vmclock_rs::realtime::realtime_ns();
        assert_eq!(past(c, ts3, &mut n), VMCLOCK_OK);
        assert_eq!(n.disruption_marker, snap.disruption_marker() + 1);
        close(c);
        // SAFETY: NULL handle and out: the NULL code.
        assert_eq!(unsafe { vmclock_bound_realtime(std::ptr::null(), 0, std::ptr::null_mut()) }, VMCLOCK_E_NULL);
    }
}
