//! A page generator for producers, tests and demos: builds a valid page for a given
//! counter/time relation.

use crate::abi::{self, flags, VmclockAbi, MAGIC, PAGE_SIZE, VERSION};
use crate::time::{Timescale, Timestamp};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

/// A counter period: `frac` in units of 2^-(64 + shift) s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    /// `counter_period_frac_sec`.
    pub frac: u64,
    /// `counter_period_shift`.
    pub shift: u8,
}

impl Period {
    /// The period of a counter running at `hz` ticks per second, with the largest shift that
    /// keeps `frac` below 2^64 (full precision), rounded to nearest. 1 GHz gives
    /// 0x89705F4136B4A597 with shift 29, the spec's example. `None` for 0 Hz.
    pub fn from_hz(hz: u64) -> Option<Period> {
        Self::from_ratio(1, hz as u128)
    }

    /// A period of `num / den` seconds per tick, full precision, rounded to nearest; `None` when
    /// it is zero, ≥ 1 s, or an input reaches 2^126.
    pub fn from_ratio(num: u128, den: u128) -> Option<Period> {
        if num == 0 || den == 0 || num >= den || num >> 126 != 0 || den >> 126 != 0 {
            return None;
        }
        // period · 2^(64 + shift) = num · 2^(64 + shift) / den must lie in [2^63, 2^64).
        // Normalise num/den into [1/2, 1) · 2^-k, i.e. find k with 2^k · num in [den/2, den).
        let mut k = 0u32;
        while (num << (k + 1)) < den {
            k += 1;
        }
        // Now num·2^k ∈ [den/2, den). frac = round(num · 2^(64 + k) / den), and shift = k.
        // Long division, bit by bit so every value stays below 2^127: the remainder is always
        // below den < 2^126, and doubling it stays below 2^127.
        let mut rem = num << k;
        let mut q: u128 = 0;
        for _ in 0..65 {
            rem <<= 1;
            q <<= 1;
            if rem >= den {
                rem -= den;
                q |= 1;
            }
        }
        // q has 65 bits: the last is the rounding bit.
        let frac = (q >> 1) + (q & 1);
        if frac >> 64 != 0 || k > 127 {
            return None; // rounding carried past 2^64: never for a valid num/den < 1.
        }
        Some(Period { frac: frac as u64, shift: k as u8 })
    }

    /// The frequency in Hz this period stands for (for display).
    pub fn hz(&self) -> f64 {
        2f64.powi(64 + self.shift as i32) / self.frac as f64
    }
}

/// Builds a page field by field; flags follow what is filled in.
#[derive(Clone, Debug)]
pub struct PageBuilder {
    abi: VmclockAbi,
}

impl Default for PageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PageBuilder {
    /// A full 4096-byte page: magic, size, version 1, no counter, status UNKNOWN, no time.
    pub fn new() -> Self {
        let abi = VmclockAbi {
            magic: U32::new(MAGIC),
            size: U32::new(PAGE_SIZE as u32),
            version: U16::new(VERSION),
            counter_id: abi::counter_id::INVALID,
            ..Default::default()
        };
        PageBuilder { abi }
    }

    /// Sets the `size` field.
    pub fn size(mut self, size: u32) -> Self {
        self.abi.size = U32::new(size);
        self
    }

    /// The reference pair: counter `counter` of kind `counter_id` at time `time`, and the period.
    pub fn reference<S: Timescale>(mut self, counter_id: u8, counter: u64, time: Timestamp<S>, period: Period) -> Self {
        self.abi.counter_id = counter_id;
        self.abi.time_type = S::TIME_TYPE;
        self.abi.counter_value = U64::new(counter);
        self.abi.time_sec = U64::new(time.sec());
        self.abi.time_frac_sec = U64::new(time.frac());
        self.abi.counter_period_frac_sec = U64::new(period.frac);
        self.abi.counter_period_shift = period.shift;
        self
    }

    /// The constant fields alone, `counter_id` and `time_type` (which readers take once, as the
    /// Linux driver does at probe): for a page that has no time to give yet.
    pub fn constants(mut self, counter_id: u8, time_type: u8) -> Self {
        self.abi.counter_id = counter_id;
        self.abi.time_type = time_type;
        self
    }

    /// TAI − UTC (37 in 2026), flagged valid. The page stores its negation, UTC − TAI (−37),
    /// the convention of the Linux driver and spec v1.1.
    pub fn tai_minus_utc(self, sec: i16) -> Self {
        self.tai_offset_raw(abi::tai_offset::stored(sec))
    }

    /// `tai_offset_sec` exactly as given, flagged valid (for legacy and test pages: a positive
    /// value is the legacy TAI − UTC convention).
    pub fn tai_offset_raw(mut self, raw: i16) -> Self {
        self.abi.tai_offset_sec = U16::new(raw as u16);
        self.flag(flags::TAI_OFFSET_VALID, true)
    }

    /// `clock_status`.
    pub fn status(mut self, status: u8) -> Self {
        self.abi.clock_status = status;
        self
    }

    /// `leap_indicator`.
    pub fn leap(mut self, leap: u8) -> Self {
        self.abi.leap_indicator = leap;
        self
    }

    /// `leap_second_smearing_hint`.
    pub fn smearing(mut self, hint: u8) -> Self {
        self.abi.leap_second_smearing_hint = hint;
        self
    }

    /// Maximum error: of the time (ns) and of the period (same unit as the period); both flags.
    pub fn maxerror(mut self, time_ns: u64, rate: u64) -> Self {
        self.abi.time_maxerror_nanosec = U64::new(time_ns);
        self.abi.counter_period_maxerror_rate_frac_sec = U64::new(rate);
        self.flag(flags::TIME_MAXERROR_VALID | flags::PERIOD_MAXERROR_VALID, true)
    }

    /// Estimated error: of the time (ns) and of the period; both flags.
    pub fn esterror(mut self, time_ns: u64, rate: u64) -> Self {
        self.abi.time_esterror_nanosec = U64::new(time_ns);
        self.abi.counter_period_esterror_rate_frac_sec = U64::new(rate);
        self.flag(flags::TIME_ESTERROR_VALID | flags::PERIOD_ESTERROR_VALID, true)
    }

    /// `disruption_marker`.
    pub fn disruption_marker(mut self, m: u64) -> Self {
        self.abi.disruption_marker = U64::new(m);
        self
    }

    /// `vm_generation_counter`, flagged present.
    pub fn vm_generation(mut self, g: u64) -> Self {
        self.abi.vm_generation_counter = U64::new(g);
        self.flag(flags::VM_GEN_COUNTER_PRESENT, true)
    }

    /// Sets or clears flag bits.
    pub fn flag(mut self, bits: u64, on: bool) -> Self {
        let f = self.abi.flags.get();
        self.abi.flags = U64::new(if on { f | bits } else { f & !bits });
        self
    }

    /// The structure (with `seq_count` 0).
    pub fn build(self) -> VmclockAbi {
        self.abi
    }

    /// A whole 4096-byte page image.
    pub fn page_bytes(self) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_SIZE];
        page[..abi::ABI_SIZE].copy_from_slice(self.abi.as_bytes());
        page
    }
}
