//! A validated, consistent copy of a page, and the exact time and bound math on it.

use crate::abi::{self, field, flags, VmclockAbi, ABI_SIZE, MAGIC, MIN_SIZE, VERSION};
use crate::error::{PageError, TimeError};
use crate::seqlock::RawWords;
use crate::time::{nanos_to_frac_ceil, Monotonic, Span, Tai, Timescale, Timestamp, Utc};
use zerocopy::{FromBytes, IntoBytes};

/// Byte offsets of the fields, from the layout (each proven by the const assertions in `abi`).
mod off {
    use crate::abi::VmclockAbi;
    use core::mem::offset_of;
    pub const MAGIC: usize = offset_of!(VmclockAbi, magic);
    pub const SIZE: usize = offset_of!(VmclockAbi, size);
    pub const VERSION: usize = offset_of!(VmclockAbi, version);
    pub const COUNTER_ID: usize = offset_of!(VmclockAbi, counter_id);
    pub const TIME_TYPE: usize = offset_of!(VmclockAbi, time_type);
    pub const SEQ: usize = offset_of!(VmclockAbi, seq_count);
    pub const DISRUPTION: usize = offset_of!(VmclockAbi, disruption_marker);
    pub const FLAGS: usize = offset_of!(VmclockAbi, flags);
    pub const STATUS: usize = offset_of!(VmclockAbi, clock_status);
    pub const SMEARING: usize = offset_of!(VmclockAbi, leap_second_smearing_hint);
    pub const TAI: usize = offset_of!(VmclockAbi, tai_offset_sec);
    pub const LEAP: usize = offset_of!(VmclockAbi, leap_indicator);
    pub const SHIFT: usize = offset_of!(VmclockAbi, counter_period_shift);
    pub const COUNTER: usize = offset_of!(VmclockAbi, counter_value);
    pub const PERIOD: usize = offset_of!(VmclockAbi, counter_period_frac_sec);
    pub const PERIOD_EST: usize = offset_of!(VmclockAbi, counter_period_esterror_rate_frac_sec);
    pub const PERIOD_MAX: usize = offset_of!(VmclockAbi, counter_period_maxerror_rate_frac_sec);
    pub const TIME_SEC: usize = offset_of!(VmclockAbi, time_sec);
    pub const TIME_FRAC: usize = offset_of!(VmclockAbi, time_frac_sec);
    pub const TIME_EST: usize = offset_of!(VmclockAbi, time_esterror_nanosec);
    pub const TIME_MAX: usize = offset_of!(VmclockAbi, time_maxerror_nanosec);
    pub const VM_GEN: usize = offset_of!(VmclockAbi, vm_generation_counter);
    // Every u64 field is 4-aligned: it spans exactly two loaded words.
    const _: () = assert!(DISRUPTION % 4 == 0 && FLAGS % 4 == 0 && COUNTER % 4 == 0 && VM_GEN % 4 == 0);
}

/// One consistent, validated copy of a vmclock page.
///
/// Fields that lie beyond the page's `size` are *absent*: their accessors return `None`, never
/// zero. Fields whose meaning depends on a VALID flag return `None` when the flag is clear.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The structure exactly as loaded: the words' native-endian bytes are the page's bytes, so
    /// [`Snapshot::raw`] views them in place as the little-endian structure, with no copy.
    words: RawWords,
    /// How many bytes hold fields: the `size` field, capped by the bytes mapped or given.
    present: u32,
}

impl core::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.raw().fmt(f)
    }
}

impl Snapshot {
    /// Validates a copy of the structure. `available` is how many bytes of the region were
    /// mapped or given (the `size` field may not claim more).
    pub fn new(abi: VmclockAbi, available: usize) -> Result<Self, PageError> {
        Self::from_words(RawWords::read_from_bytes(abi.as_bytes()).expect("exact size"), available)
    }

    /// Validates a copy of the structure as loaded from the page's words. `size` may exceed
    /// 4096 (a 64 KiB page of an arm64 guest) and the bytes available (the Linux driver maps one
    /// kernel page of a larger region): a field is present when it lies within both, and the
    /// page is refused only when the bytes up to `flags` do not.
    #[inline]
    pub fn from_words(words: RawWords, available: usize) -> Result<Self, PageError> {
        let mut snap = Snapshot { words, present: 0 };
        let magic = snap.u32_at(off::MAGIC);
        if magic != MAGIC {
            return Err(PageError::BadMagic { found: magic });
        }
        let version = snap.u16_at(off::VERSION);
        if version != VERSION {
            return Err(PageError::UnsupportedVersion { found: version });
        }
        let size = snap.size();
        if size < MIN_SIZE {
            return Err(PageError::TooSmall { size, min: MIN_SIZE });
        }
        if available < MIN_SIZE as usize {
            return Err(PageError::LargerThanMapping { size, mapped: available });
        }
        snap.present = size.min(u32::try_from(available).unwrap_or(u32::MAX));
        Ok(snap)
    }

    /// Decodes and validates a copy of the structure's bytes from a region of `available` bytes.
    pub fn decode(bytes: &[u8; ABI_SIZE], available: usize) -> Result<Self, PageError> {
        Self::from_words(RawWords::read_from_bytes(bytes).expect("exact size"), available)
    }

    /// Decodes and validates the first bytes of a region (any length; bytes past the slice are
    /// treated as not available).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PageError> {
        let mut buf = [0u8; ABI_SIZE];
        let n = bytes.len().min(ABI_SIZE);
        buf[..n].copy_from_slice(&bytes[..n]);
        Self::decode(&buf, bytes.len())
    }

    /// The raw structure, every field as stored (a view, not a copy).
    #[inline]
    pub fn raw(&self) -> &VmclockAbi {
        VmclockAbi::ref_from_bytes(self.words.as_bytes()).expect("exact size, alignment 1")
    }

    /// The structure's bytes.
    pub fn to_bytes(&self) -> [u8; ABI_SIZE] {
        let mut out = [0u8; ABI_SIZE];
        out.copy_from_slice(self.words.as_bytes());
        out
    }

    /// A little-endian u64 at a 4-aligned byte offset of the structure (const-folded).
    #[inline(always)]
    fn u64_at(&self, off: usize) -> u64 {
        let i = off / 4;
        u32::from_le(self.words[i]) as u64 | (u32::from_le(self.words[i + 1]) as u64) << 32
    }
    #[inline(always)]
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le(self.words[off / 4])
    }
    #[inline(always)]
    fn u16_at(&self, off: usize) -> u16 {
        (self.u32_at(off & !3) >> ((off % 4) * 8)) as u16
    }
    #[inline(always)]
    fn u8_at(&self, off: usize) -> u8 {
        (self.u32_at(off & !3) >> ((off % 4) * 8)) as u8
    }

    #[inline(always)]
    fn present(&self, f: abi::Field) -> bool {
        f.present_in(self.present)
    }

    /// How many bytes of the structure hold fields: `size`, capped by the bytes available.
    #[inline]
    pub fn present_size(&self) -> u32 {
        self.present
    }

    #[inline(always)]
    fn opt<T>(&self, f: abi::Field, v: T) -> Option<T> {
        self.present(f).then_some(v)
    }

    /// The `size` field.
    #[inline]
    pub fn size(&self) -> u32 {
        self.u32_at(off::SIZE)
    }
    /// `counter_id`.
    #[inline]
    pub fn counter_id(&self) -> u8 {
        self.u8_at(off::COUNTER_ID)
    }
    /// `time_type`.
    #[inline]
    pub fn time_type(&self) -> u8 {
        self.u8_at(off::TIME_TYPE)
    }
    /// The (even) `seq_count` of this copy.
    pub fn seq_count(&self) -> u32 {
        self.u32_at(off::SEQ)
    }
    /// `disruption_marker`.
    #[inline]
    pub fn disruption_marker(&self) -> u64 {
        self.u64_at(off::DISRUPTION)
    }
    /// `flags`.
    #[inline]
    pub fn flags(&self) -> u64 {
        self.u64_at(off::FLAGS)
    }
    /// Whether every bit of `f` is set.
    #[inline]
    pub fn has(&self, f: u64) -> bool {
        self.flags() & f == f
    }
    /// `clock_status`, if present.
    #[inline]
    pub fn clock_status(&self) -> Option<u8> {
        self.opt(field::CLOCK_STATUS, self.u8_at(off::STATUS))
    }
    /// `leap_second_smearing_hint`, if present.
    pub fn smearing_hint(&self) -> Option<u8> {
        self.opt(field::SMEARING_HINT, self.u8_at(off::SMEARING))
    }
    /// `tai_offset_sec` as stored, if present (whether or not it is flagged valid).
    #[inline]
    pub fn tai_offset_raw(&self) -> Option<i16> {
        self.opt(field::TAI_OFFSET, self.u16_at(off::TAI) as i16)
    }
    /// TAI − UTC in seconds (37 in 2026), only if present and TAI_OFFSET_VALID is set.
    ///
    /// The field stores UTC − TAI (−37), as the Linux driver reads it in every version and as
    /// spec v1.1 says. A *positive* stored value is the legacy convention (the RFC
    /// `/dev/vmclock_host`, older vmtime pages): TAI − UTC has been ≥ 10 s since 1972, so the sign
    /// alone tells the two apart, and a positive value is taken as TAI − UTC as it is (see
    /// [`Snapshot::tai_offset_is_legacy`]). `i16::MIN` has no positive counterpart: `None`.
    #[inline]
    pub fn tai_minus_utc(&self) -> Option<i16> {
        let v = self.tai_offset_raw().filter(|_| self.has(flags::TAI_OFFSET_VALID))?;
        abi::tai_offset::tai_minus_utc(v)
    }
    /// Whether the page holds a valid TAI offset written in the legacy convention (a positive
    /// stored value, meaning TAI − UTC). Readers should warn once per page.
    #[inline]
    pub fn tai_offset_is_legacy(&self) -> bool {
        self.has(flags::TAI_OFFSET_VALID) && self.tai_offset_raw().is_some_and(abi::tai_offset::is_legacy)
    }
    /// `leap_indicator`, if present.
    pub fn leap_indicator(&self) -> Option<u8> {
        self.opt(field::LEAP_INDICATOR, self.u8_at(off::LEAP))
    }
    /// `counter_period_shift`, if present.
    pub fn counter_period_shift(&self) -> Option<u8> {
        self.opt(field::PERIOD_SHIFT, self.u8_at(off::SHIFT))
    }
    /// `counter_value`, if present.
    pub fn counter_value(&self) -> Option<u64> {
        self.opt(field::COUNTER_VALUE, self.u64_at(off::COUNTER))
    }
    /// `counter_period_frac_sec`, if present.
    pub fn counter_period(&self) -> Option<u64> {
        self.opt(field::PERIOD, self.u64_at(off::PERIOD))
    }
    /// The period's estimated error rate, if present and PERIOD_ESTERROR_VALID.
    #[inline]
    pub fn period_esterror(&self) -> Option<u64> {
        self.opt(field::PERIOD_ESTERROR, self.u64_at(off::PERIOD_EST))
            .filter(|_| self.has(flags::PERIOD_ESTERROR_VALID))
    }
    /// The period's maximum error rate, if present and PERIOD_MAXERROR_VALID.
    #[inline]
    pub fn period_maxerror(&self) -> Option<u64> {
        self.opt(field::PERIOD_MAXERROR, self.u64_at(off::PERIOD_MAX))
            .filter(|_| self.has(flags::PERIOD_MAXERROR_VALID))
    }
    /// `time_sec`, if present.
    pub fn time_sec(&self) -> Option<u64> {
        self.opt(field::TIME_SEC, self.u64_at(off::TIME_SEC))
    }
    /// `time_frac_sec`, if present.
    pub fn time_frac_sec(&self) -> Option<u64> {
        self.opt(field::TIME_FRAC, self.u64_at(off::TIME_FRAC))
    }
    /// `time_esterror_nanosec`, if present and TIME_ESTERROR_VALID.
    #[inline]
    pub fn time_esterror_ns(&self) -> Option<u64> {
        self.opt(field::TIME_ESTERROR, self.u64_at(off::TIME_EST)).filter(|_| self.has(flags::TIME_ESTERROR_VALID))
    }
    /// `time_maxerror_nanosec`, if present and TIME_MAXERROR_VALID.
    #[inline]
    pub fn time_maxerror_ns(&self) -> Option<u64> {
        self.opt(field::TIME_MAXERROR, self.u64_at(off::TIME_MAX)).filter(|_| self.has(flags::TIME_MAXERROR_VALID))
    }
    /// `vm_generation_counter`, if present and VM_GEN_COUNTER_PRESENT.
    pub fn vm_generation_counter(&self) -> Option<u64> {
        self.opt(field::VM_GENERATION, self.u64_at(off::VM_GEN)).filter(|_| self.has(flags::VM_GEN_COUNTER_PRESENT))
    }

    /// The counter-to-time relation the page gives, or why it gives none.
    #[inline]
    pub fn reference(&self) -> Result<Reference, TimeError> {
        if self.u8_at(off::COUNTER_ID) == abi::counter_id::INVALID {
            return Err(TimeError::NoCounter);
        }
        if !self.present(field::TIME_FRAC) {
            return Err(TimeError::NoTimeFields { size: self.size() });
        }
        let time_type = self.u8_at(off::TIME_TYPE);
        if !matches!(time_type, abi::time_type::UTC | abi::time_type::TAI | abi::time_type::MONOTONIC) {
            return Err(TimeError::UnsupportedTimeType(time_type));
        }
        let shift = self.u8_at(off::SHIFT);
        if shift >= 128 {
            return Err(TimeError::UnusableShift(shift));
        }
        Ok(Reference {
            counter_id: self.u8_at(off::COUNTER_ID),
            time_type,
            counter_value: self.u64_at(off::COUNTER),
            period: self.u64_at(off::PERIOD),
            shift,
            time: ((self.u64_at(off::TIME_SEC) as u128) << 64) | self.u64_at(off::TIME_FRAC) as u128,
            maxerror: ErrorModel { time_ns: self.time_maxerror_ns(), rate: self.period_maxerror() },
            esterror: ErrorModel { time_ns: self.time_esterror_ns(), rate: self.period_esterror() },
        })
    }

    /// The time (in the page's timescale) and bounds at counter value `counter`.
    #[inline]
    pub fn time_at(&self, counter: u64) -> Result<PageTime, TimeError> {
        self.reference()?.time_at(counter)
    }

    /// The TAI time and bounds at `counter` (a UTC page needs a valid TAI offset). A UTC page's
    /// time is linear in the counter from the reference, so TAI is it plus the offset at the
    /// reference, whatever leap second lies between.
    #[inline]
    pub fn tai_at(&self, counter: u64) -> Result<Bounded<Tai>, TimeError> {
        self.time_at(counter)?.tai(self.tai_minus_utc())
    }

    /// The UTC time and bounds at `counter` (a TAI page needs a valid TAI offset). A leap second
    /// that `leap_indicator` places between the reference and `counter` is applied, as the spec
    /// requires (see [`LeapEdge`]).
    #[inline]
    pub fn utc_at(&self, counter: u64) -> Result<Bounded<Utc>, TimeError> {
        let r = self.reference()?;
        let t = r.time_at(counter)?;
        let off = self.tai_minus_utc();
        let leap = match self.leap_indicator() {
            Some(l) if l != abi::leap::NONE => LeapEdge::of(r.time_type, r.time, off, l),
            _ => None,
        };
        utc_with_leap(t, off, leap)
    }

    /// The leap second this page's `leap_indicator` places in time, if any (see [`LeapEdge`]).
    pub fn leap_edge(&self) -> Option<LeapEdge> {
        let r = self.reference().ok()?;
        LeapEdge::of(r.time_type, r.time, self.tai_minus_utc(), self.leap_indicator()?)
    }
}

/// UTC from a page time: page-linear UTC (the page's UTC, or its TAI minus the offset at the
/// reference), corrected by the leap second `leap` places between the reference and the time.
#[inline]
pub(crate) fn utc_with_leap(
    t: PageTime,
    tai_minus_utc: Option<i16>,
    leap: Option<LeapEdge>,
) -> Result<Bounded<Utc>, TimeError> {
    let linear = t.utc(tai_minus_utc)?;
    match leap {
        None => Ok(linear),
        Some(l) => {
            let step = l.step_at(linear.time.raw());
            if step == 0 {
                return Ok(linear);
            }
            linear.map(|ts| ts.checked_add(Span::from_secs(-(step as i64)))).ok_or(TimeError::Overflow)
        }
    }
}

/// A leap second announced (PRE_POS, PRE_NEG) or just past (POST_POS, POST_NEG) by a page's
/// `leap_indicator`, placed on the page's *linear* UTC scale: u = the page's UTC time, or its TAI
/// time minus the TAI offset at the reference, both linear in the counter from the reference.
///
/// The indicator describes the state at the reference T1; "the end of the present month" is the
/// end of the UTC month of T1. Then true UTC = u − step for u on the far side of the edge:
///
/// | indicator | edge (UTC seconds)            | where        | step |
/// |-----------|-------------------------------|--------------|------|
/// | PRE_POS   | M, the first second of next month | u ≥ edge | +1 (23:59:60 repeats 23:59:59, as the kernel shows it) |
/// | PRE_NEG   | M − 1 (23:59:59 is skipped)   | u ≥ edge     | −1 |
/// | POST_POS  | M0 − 1 (M0: this month's first second) | u < edge | −1 |
/// | POST_NEG  | M0                            | u < edge     | +1 |
///
/// POS (the inserted second in progress) needs nothing: the page's offset already counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeapEdge {
    /// The edge, whole UTC seconds since 1970 on the page's linear scale.
    pub at_sec: u64,
    /// Whether the step applies before the edge (POST_*) rather than at and after it (PRE_*).
    pub before: bool,
    /// Seconds to subtract from linear UTC beyond the edge: +1 for an inserted second, −1 for a
    /// deleted one (in the PRE direction; the POST cases undo the leap before the edge).
    pub step: i8,
}

impl LeapEdge {
    /// The edge for a page of `time_type` whose reference time is `t1` (64.64), with TAI − UTC
    /// `tai_minus_utc` at the reference (needed for a TAI page) and `leap_indicator`.
    pub fn of(time_type: u8, t1: u128, tai_minus_utc: Option<i16>, leap_indicator: u8) -> Option<LeapEdge> {
        // A reference at 2^63 s or later has no edge (it was read as a negative second before).
        let sec = i64::try_from(t1 >> 64).ok()?;
        let u1 = match time_type {
            abi::time_type::UTC => sec,
            abi::time_type::TAI => sec.checked_sub(tai_minus_utc? as i64)?,
            _ => return None,
        };
        let (y, m, _) = crate::time::civil_from_days(u1.div_euclid(86_400));
        // Checked: a hostile page's reference may lie at the end of i64's seconds (found by the
        // fuzzer); there is no edge to place there.
        let this_month = crate::time::days_from_civil(y, m, 1).checked_mul(86_400)?;
        let next_days =
            if m == 12 { crate::time::days_from_civil(y + 1, 1, 1) } else { crate::time::days_from_civil(y, m + 1, 1) };
        let next_month = next_days.checked_mul(86_400)?;
        let (at, before, step) = match leap_indicator {
            abi::leap::PRE_POS => (next_month, false, 1),
            abi::leap::PRE_NEG => (next_month.checked_sub(1)?, false, -1),
            abi::leap::POST_POS => (this_month.checked_sub(1)?, true, -1),
            abi::leap::POST_NEG => (this_month, true, 1),
            _ => return None,
        };
        Some(LeapEdge { at_sec: u64::try_from(at).ok()?, before, step })
    }

    /// The step (seconds to subtract) at linear UTC `u` (64.64).
    #[inline]
    pub fn step_at(&self, u: u128) -> i8 {
        let beyond = if self.before { u < (self.at_sec as u128) << 64 } else { u >= (self.at_sec as u128) << 64 };
        if beyond {
            self.step
        } else {
            0
        }
    }
}

/// An error bound's two terms, each present only when its VALID flag is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorModel {
    /// Error of the reference time, ns.
    pub time_ns: Option<u64>,
    /// Error of the period, 2^-(64 + shift) s per counter tick.
    pub rate: Option<u64>,
}

impl ErrorModel {
    /// The bound `delta` counter ticks from the reference, in 2^-64 s, rounded up (never
    /// narrower than the spec's formula): the time term plus |ΔC| times the rate (2^-(64 +
    /// `shift`) s per tick). `None` without the time term, and away from the reference without
    /// the rate term.
    #[inline]
    pub fn at(self, delta: i64, shift: u8) -> Option<u128> {
        bound_at(nanos_to_frac_ceil(self.time_ns?), self.rate, delta, shift)
    }
}

/// [`ErrorModel::at`] with the time term already in 2^-64 s (`nanos_to_frac_ceil` of it).
#[inline]
pub(crate) fn bound_at(time: u128, rate: Option<u64>, delta: i64, shift: u8) -> Option<u128> {
    let delta = delta.unsigned_abs() as u128;
    if delta == 0 {
        return Some(time);
    }
    let x = rate? as u128 * delta; // < 2^128
                                   // ceil(x / 2^shift) = floor((x − 1) / 2^shift) + 1 for x ≥ 1.
    let rate = if x == 0 { 0 } else { ((x - 1) >> shift) + 1 };
    Some(time.saturating_add(rate))
}

/// The counter-to-time relation of a page: T(C) = T1 + P·(C − C1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Which counter C is.
    pub counter_id: u8,
    /// Which timescale T is.
    pub time_type: u8,
    /// C1.
    pub counter_value: u64,
    /// P in 2^-(64 + shift) s.
    pub period: u64,
    /// The period's extra shift.
    pub shift: u8,
    /// T1, 64.64 fixed-point seconds.
    pub time: u128,
    /// Maximum error terms.
    pub maxerror: ErrorModel,
    /// Estimated error terms.
    pub esterror: ErrorModel,
}

impl Reference {
    /// C − C1 as a signed count. Counters wrap at 2^64, so the difference is taken modulo 2^64
    /// and read as two's complement: a counter just before C1 is a small negative delta, and a
    /// reference on either side of a wrap works.
    #[inline]
    pub fn delta(&self, counter: u64) -> i64 {
        counter.wrapping_sub(self.counter_value) as i64
    }

    /// P·(C − C1) in 2^-64 s, rounded towards negative infinity (exact: the product of a 64-bit
    /// signed delta and a 64-bit period always fits 128 bits).
    #[inline]
    pub fn elapsed(&self, counter: u64) -> Span {
        let product = self.delta(counter) as i128 * self.period as i128;
        Span(product >> self.shift)
    }

    /// T(C) as raw 64.64 seconds.
    #[inline]
    pub fn raw_time_at(&self, counter: u64) -> Result<u128, TimeError> {
        let d = counter.wrapping_sub(self.counter_value);
        if (d as i64) >= 0 {
            // At or after the reference (the usual case): one unsigned 64×64 multiply.
            return self.time.checked_add((d as u128 * self.period as u128) >> self.shift).ok_or(TimeError::Overflow);
        }
        let e = self.elapsed(counter).0;
        let t = if e >= 0 { self.time.checked_add(e as u128) } else { self.time.checked_sub(e.unsigned_abs()) };
        t.ok_or(TimeError::Overflow)
    }

    #[inline]
    fn bound(&self, model: ErrorModel, counter: u64) -> Option<u128> {
        model.at(self.delta(counter), self.shift)
    }

    /// The maximum error at `counter` in 2^-64 s (rounded up), or `None` if the page does not
    /// give it: TIME_MAXERROR_VALID is required, and PERIOD_MAXERROR_VALID too away from C1.
    #[inline]
    pub fn maxerror_at(&self, counter: u64) -> Option<u128> {
        self.bound(self.maxerror, counter)
    }

    /// The estimated error at `counter`, under the same rules with the ESTERROR flags.
    #[inline]
    pub fn esterror_at(&self, counter: u64) -> Option<u128> {
        self.bound(self.esterror, counter)
    }

    /// The time and bounds at `counter`, in the page's timescale.
    pub fn time_at(&self, counter: u64) -> Result<PageTime, TimeError> {
        let raw = self.raw_time_at(counter)?;
        let maxerror = self.maxerror_at(counter);
        let esterror = self.esterror_at(counter);
        #[inline(always)]
        fn mk<S: Timescale>(raw: u128, maxerror: Option<u128>, esterror: Option<u128>) -> Bounded<S> {
            Bounded { time: Timestamp::from_raw(raw), maxerror, esterror }
        }
        Ok(match self.time_type {
            abi::time_type::TAI => PageTime::Tai(mk(raw, maxerror, esterror)),
            abi::time_type::UTC => PageTime::Utc(mk(raw, maxerror, esterror)),
            abi::time_type::MONOTONIC => PageTime::Monotonic(mk(raw, maxerror, esterror)),
            other => return Err(TimeError::UnsupportedTimeType(other)),
        })
    }
}

/// A time with its error bounds (each in 2^-64 s, `None` when the page does not give it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounded<S: Timescale> {
    /// The best estimate.
    pub time: Timestamp<S>,
    /// True time lies within `time ± maxerror`.
    pub maxerror: Option<u128>,
    /// The estimated error (one standard deviation, as NTP's esterror).
    pub esterror: Option<u128>,
}

impl<S: Timescale> Bounded<S> {
    /// The earliest the true time can be, if the page bounds it.
    #[inline]
    pub fn earliest(&self) -> Option<Timestamp<S>> {
        self.maxerror.map(|e| Timestamp::from_raw(self.time.raw().saturating_sub(e)))
    }
    /// The latest the true time can be, if the page bounds it.
    #[inline]
    pub fn latest(&self) -> Option<Timestamp<S>> {
        self.maxerror.map(|e| Timestamp::from_raw(self.time.raw().saturating_add(e)))
    }
    /// The maximum error in ns, rounded up.
    pub fn maxerror_ns(&self) -> Option<u128> {
        self.maxerror.map(frac_to_nanos_ceil)
    }
    /// The estimated error in ns, rounded up.
    pub fn esterror_ns(&self) -> Option<u128> {
        self.esterror.map(frac_to_nanos_ceil)
    }
    /// The same bounds around a time moved into another timescale.
    #[inline]
    pub fn map<T: Timescale>(self, f: impl FnOnce(Timestamp<S>) -> Option<Timestamp<T>>) -> Option<Bounded<T>> {
        Some(Bounded { time: f(self.time)?, maxerror: self.maxerror, esterror: self.esterror })
    }
}

/// 2^-64 s units to ns, rounded up.
pub fn frac_to_nanos_ceil(x: u128) -> u128 {
    let whole = (x >> 64) * 1_000_000_000;
    let frac = x & (crate::time::ONE_SEC - 1);
    whole + (frac * 1_000_000_000).div_ceil(crate::time::ONE_SEC)
}

/// A bounded time in whichever timescale the page uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageTime {
    /// A UTC page.
    Utc(Bounded<Utc>),
    /// A TAI page.
    Tai(Bounded<Tai>),
    /// A MONOTONIC page.
    Monotonic(Bounded<Monotonic>),
}

impl PageTime {
    /// In TAI: a UTC time needs TAI − UTC (`tai_minus_utc`, positive: 37); a monotonic one has
    /// none. A constant offset: [`Snapshot::utc_at`] and [`crate::Now::utc`] also apply a leap
    /// second announced between the reference and the time.
    #[inline]
    pub fn tai(self, tai_minus_utc: Option<i16>) -> Result<Bounded<Tai>, TimeError> {
        match self {
            PageTime::Tai(t) => Ok(t),
            PageTime::Utc(t) => {
                let off = tai_minus_utc.ok_or(TimeError::NoTaiOffset { from: "UTC", to: "TAI" })?;
                t.map(|ts| ts.to_tai(off)).ok_or(TimeError::Overflow)
            }
            PageTime::Monotonic(_) => Err(TimeError::NotWallClock("TAI")),
        }
    }

    /// In UTC: a TAI time needs TAI − UTC (`tai_minus_utc`, positive: 37); a monotonic one has
    /// none. A constant offset, with no leap second applied (see [`Snapshot::utc_at`]).
    #[inline]
    pub fn utc(self, tai_minus_utc: Option<i16>) -> Result<Bounded<Utc>, TimeError> {
        match self {
            PageTime::Utc(t) => Ok(t),
            PageTime::Tai(t) => {
                let off = tai_minus_utc.ok_or(TimeError::NoTaiOffset { from: "TAI", to: "UTC" })?;
                t.map(|ts| ts.to_utc(off)).ok_or(TimeError::Overflow)
            }
            PageTime::Monotonic(_) => Err(TimeError::NotWallClock("UTC")),
        }
    }

    /// The timescale's name.
    pub fn timescale(&self) -> &'static str {
        match self {
            PageTime::Utc(_) => Utc::NAME,
            PageTime::Tai(_) => Tai::NAME,
            PageTime::Monotonic(_) => Monotonic::NAME,
        }
    }
    /// The raw 64.64 time, whatever the timescale.
    #[inline]
    pub fn raw(&self) -> u128 {
        match self {
            PageTime::Utc(b) => b.time.raw(),
            PageTime::Tai(b) => b.time.raw(),
            PageTime::Monotonic(b) => b.time.raw(),
        }
    }
    /// The maximum error, 2^-64 s.
    #[inline]
    pub fn maxerror(&self) -> Option<u128> {
        match self {
            PageTime::Utc(b) => b.maxerror,
            PageTime::Tai(b) => b.maxerror,
            PageTime::Monotonic(b) => b.maxerror,
        }
    }
    /// The estimated error, 2^-64 s.
    #[inline]
    pub fn esterror(&self) -> Option<u128> {
        match self {
            PageTime::Utc(b) => b.esterror,
            PageTime::Tai(b) => b.esterror,
            PageTime::Monotonic(b) => b.esterror,
        }
    }
    /// The time formatted with its timescale.
    pub fn display(&self) -> String {
        match self {
            PageTime::Utc(b) => b.time.to_string(),
            PageTime::Tai(b) => b.time.to_string(),
            PageTime::Monotonic(b) => b.time.to_string(),
        }
    }
}
