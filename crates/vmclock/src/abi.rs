//! The byte layout of the vmclock page and every named constant of the ABI.
//!
//! The reference is Linux `include/uapi/linux/vmclock-abi.h` (version 1, 112 bytes, every
//! field little-endian). The UAPI group's published specification ("UAPI.13 VMClock") has two
//! errata that this crate does **not** follow:
//!
//! * its flag table puts `VM_GEN_COUNTER_PRESENT` at bit 7 and `NOTIFICATION_PRESENT` at bit 8
//!   and omits `TIME_MONOTONIC`; Linux has bit 7 `TIME_MONOTONIC`, bit 8
//!   `VM_GEN_COUNTER_PRESENT`, bit 9 `NOTIFICATION_PRESENT`;
//! * it places `vm_generation_counter` at 0x64, which would overlap the 8-byte
//!   `time_maxerror_nanosec` at 0x60; Linux places it at 0x68.

use core::mem::{offset_of, size_of};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `"VCLK"` read as a little-endian `u32`.
pub const MAGIC: u32 = 0x4b4c_4356;
/// The only version this crate understands.
pub const VERSION: u16 = 1;
/// Bytes defined by version 1 (`sizeof(struct vmclock_abi)`).
pub const ABI_SIZE: usize = 112;
/// The smallest `size` the Linux driver accepts: every byte up to (not including) `pad`,
/// i.e. through `flags` (`VMCLOCK_MIN_SIZE`).
pub const MIN_SIZE: u32 = offset_of!(VmclockAbi, pad) as u32;
/// The size of the region a page is published in (`/dev/vmclock0` maps exactly one page).
pub const PAGE_SIZE: usize = 4096;

/// Counter identifiers (`counter_id`, matching virtio-rtc's `VIRTIO_RTC_COUNTER_*`).
pub mod counter_id {
    /// arm64 virtual counter, CNTVCT_EL0.
    pub const ARM_VCNT: u8 = 0;
    /// x86 time-stamp counter.
    pub const X86_TSC: u8 = 1;
    /// No usable counter: the page carries markers only.
    pub const INVALID: u8 = 0xff;
}

/// Time types (`time_type`, matching virtio-rtc's `VIRTIO_RTC_TYPE_*`).
pub mod time_type {
    /// UTC, seconds since 1970-01-01T00:00:00Z (the spec calls this "not recommended").
    pub const UTC: u8 = 0;
    /// TAI, seconds since 1970-01-01T00:00:00 TAI.
    pub const TAI: u8 = 1;
    /// A monotonic clock with an undefined epoch.
    pub const MONOTONIC: u8 = 2;
    /// Smeared UTC: not supported by the ABI.
    pub const INVALID_SMEARED: u8 = 3;
    /// Possibly smeared UTC: not supported by the ABI.
    pub const INVALID_MAYBE_SMEARED: u8 = 4;
}

/// Bits of `flags`, as in the Linux header.
pub mod flags {
    /// `tai_offset_sec` is valid.
    pub const TAI_OFFSET_VALID: u64 = 1 << 0;
    /// A disruption (maintenance, migration) is expected in about a day.
    pub const DISRUPTION_SOON: u64 = 1 << 1;
    /// A disruption is expected in about an hour.
    pub const DISRUPTION_IMMINENT: u64 = 1 << 2;
    /// `counter_period_esterror_rate_frac_sec` is valid.
    pub const PERIOD_ESTERROR_VALID: u64 = 1 << 3;
    /// `counter_period_maxerror_rate_frac_sec` is valid.
    pub const PERIOD_MAXERROR_VALID: u64 = 1 << 4;
    /// `time_esterror_nanosec` is valid.
    pub const TIME_ESTERROR_VALID: u64 = 1 << 5;
    /// `time_maxerror_nanosec` is valid.
    pub const TIME_MAXERROR_VALID: u64 = 1 << 6;
    /// Times computed from the page never go backwards across an update (leap seconds aside).
    pub const TIME_MONOTONIC: u64 = 1 << 7;
    /// `vm_generation_counter` is maintained (changes on snapshot restore or clone).
    pub const VM_GEN_COUNTER_PRESENT: u64 = 1 << 8;
    /// The hypervisor notifies the guest on every new even `seq_count`.
    pub const NOTIFICATION_PRESENT: u64 = 1 << 9;

    /// Every defined bit with its name, lowest first.
    pub const ALL: [(u64, &str); 10] = [
        (TAI_OFFSET_VALID, "TAI_OFFSET_VALID"),
        (DISRUPTION_SOON, "DISRUPTION_SOON"),
        (DISRUPTION_IMMINENT, "DISRUPTION_IMMINENT"),
        (PERIOD_ESTERROR_VALID, "PERIOD_ESTERROR_VALID"),
        (PERIOD_MAXERROR_VALID, "PERIOD_MAXERROR_VALID"),
        (TIME_ESTERROR_VALID, "TIME_ESTERROR_VALID"),
        (TIME_MAXERROR_VALID, "TIME_MAXERROR_VALID"),
        (TIME_MONOTONIC, "TIME_MONOTONIC"),
        (VM_GEN_COUNTER_PRESENT, "VM_GEN_COUNTER_PRESENT"),
        (NOTIFICATION_PRESENT, "NOTIFICATION_PRESENT"),
    ];

    /// The names of the set bits, and any unknown bits as one hex value.
    pub fn names(bits: u64) -> (Vec<&'static str>, u64) {
        let known = ALL.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n);
        let mask = ALL.iter().fold(0, |m, (b, _)| m | b);
        (known.collect(), bits & !mask)
    }
}

/// Clock status (`clock_status`). Only SYNCHRONIZED and FREERUNNING may be relied upon.
pub mod status {
    /// Nothing is known about the clock.
    pub const UNKNOWN: u8 = 0;
    /// The host is still calibrating.
    pub const INITIALIZING: u8 = 1;
    /// The host clock is synchronised to an external reference.
    pub const SYNCHRONIZED: u8 = 2;
    /// The host clock runs without an external reference (holdover).
    pub const FREERUNNING: u8 = 3;
    /// The time data must not be used.
    pub const UNRELIABLE: u8 = 4;
}

/// Leap-second smearing hints (`leap_second_smearing_hint`, virtio-rtc subtypes). The page's
/// time is never smeared; the hint tells a guest how its neighbours smear, if it wants to.
pub mod smearing {
    /// No smearing: leap seconds are inserted or deleted.
    pub const STRICT: u8 = 0;
    /// Linear smear over 24 h, noon to noon.
    pub const NOON_LINEAR: u8 = 1;
    /// UTC-SLS: the last 1000 s before the leap.
    pub const UTC_SLS: u8 = 2;
}

/// Leap indicator (`leap_indicator`): the leap-second state at the reference time.
pub mod leap {
    /// No known nearby leap second.
    pub const NONE: u8 = 0;
    /// A positive leap second at the end of the month (23:59:60 inserted).
    pub const PRE_POS: u8 = 1;
    /// A negative leap second at the end of the month (23:59:59 deleted).
    pub const PRE_NEG: u8 = 2;
    /// Set during the inserted second 23:59:60.
    pub const POS: u8 = 3;
    /// After a positive leap second (for guests that smear).
    pub const POST_POS: u8 = 4;
    /// After a negative leap second (for guests that smear).
    pub const POST_NEG: u8 = 5;
}

/// `struct vmclock_abi`, byte for byte. Every multi-byte field is little-endian whatever the
/// host's endianness; the struct has alignment 1, so it has no padding of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct VmclockAbi {
    /// [`MAGIC`].
    pub magic: U32,
    /// Size of the region holding the structure (a field beyond it is absent).
    pub size: U32,
    /// [`VERSION`].
    pub version: U16,
    /// One of [`counter_id`].
    pub counter_id: u8,
    /// One of [`time_type`].
    pub time_type: u8,
    /// Seqlock count: odd while an update is in progress.
    pub seq_count: U32,
    /// Changes to another non-repeating value when the counter's calibration is disrupted.
    pub disruption_marker: U64,
    /// Bits of [`flags`].
    pub flags: U64,
    /// Reserved.
    pub pad: [u8; 2],
    /// One of [`status`].
    pub clock_status: u8,
    /// One of [`smearing`].
    pub leap_second_smearing_hint: u8,
    /// UTC − TAI in seconds, two's complement (−37 in 2026), as the Linux driver and spec v1.1
    /// read it; a positive value is the legacy TAI − UTC convention. Read it through
    /// `Snapshot::tai_minus_utc`.
    pub tai_offset_sec: U16,
    /// One of [`leap`].
    pub leap_indicator: u8,
    /// Extra right shift for the period fields: their unit is 2^-(64 + shift) s.
    pub counter_period_shift: u8,
    /// The counter value of the reference pair.
    pub counter_value: U64,
    /// The counter period, in units of 2^-(64 + shift) s.
    pub counter_period_frac_sec: U64,
    /// Estimated error of the period, same unit.
    pub counter_period_esterror_rate_frac_sec: U64,
    /// Maximum error of the period, same unit.
    pub counter_period_maxerror_rate_frac_sec: U64,
    /// Whole seconds of the reference time, in the page's timescale.
    pub time_sec: U64,
    /// Fraction of the reference time, in units of 2^-64 s.
    pub time_frac_sec: U64,
    /// Estimated error of the reference time, ns.
    pub time_esterror_nanosec: U64,
    /// Maximum error of the reference time, ns.
    pub time_maxerror_nanosec: U64,
    /// Changes when the VM is loaded from a snapshot or cloned (not on live migration).
    pub vm_generation_counter: U64,
}

impl VmclockAbi {
    /// The structure from its bytes as they lie in the page (not validated).
    pub fn from_le_bytes(bytes: &[u8; ABI_SIZE]) -> Self {
        Self::read_from_bytes(bytes).expect("exact size")
    }
}

// The layout, proven against the Linux header's offsets.
const _: () = {
    assert!(size_of::<VmclockAbi>() == ABI_SIZE);
    assert!(core::mem::align_of::<VmclockAbi>() == 1);
    assert!(offset_of!(VmclockAbi, magic) == 0x00);
    assert!(offset_of!(VmclockAbi, size) == 0x04);
    assert!(offset_of!(VmclockAbi, version) == 0x08);
    assert!(offset_of!(VmclockAbi, counter_id) == 0x0a);
    assert!(offset_of!(VmclockAbi, time_type) == 0x0b);
    assert!(offset_of!(VmclockAbi, seq_count) == 0x0c);
    assert!(offset_of!(VmclockAbi, disruption_marker) == 0x10);
    assert!(offset_of!(VmclockAbi, flags) == 0x18);
    assert!(offset_of!(VmclockAbi, pad) == 0x20);
    assert!(offset_of!(VmclockAbi, clock_status) == 0x22);
    assert!(offset_of!(VmclockAbi, leap_second_smearing_hint) == 0x23);
    assert!(offset_of!(VmclockAbi, tai_offset_sec) == 0x24);
    assert!(offset_of!(VmclockAbi, leap_indicator) == 0x26);
    assert!(offset_of!(VmclockAbi, counter_period_shift) == 0x27);
    assert!(offset_of!(VmclockAbi, counter_value) == 0x28);
    assert!(offset_of!(VmclockAbi, counter_period_frac_sec) == 0x30);
    assert!(offset_of!(VmclockAbi, counter_period_esterror_rate_frac_sec) == 0x38);
    assert!(offset_of!(VmclockAbi, counter_period_maxerror_rate_frac_sec) == 0x40);
    assert!(offset_of!(VmclockAbi, time_sec) == 0x48);
    assert!(offset_of!(VmclockAbi, time_frac_sec) == 0x50);
    assert!(offset_of!(VmclockAbi, time_esterror_nanosec) == 0x58);
    assert!(offset_of!(VmclockAbi, time_maxerror_nanosec) == 0x60);
    assert!(offset_of!(VmclockAbi, vm_generation_counter) == 0x68);
    assert!(MIN_SIZE == 0x20);
    // The seqlock copies the page as 32-bit words; seq_count must be one whole word.
    assert!(offset_of!(VmclockAbi, seq_count) % 4 == 0);
    assert!(ABI_SIZE % 4 == 0);
};

/// Names a field of [`VmclockAbi`] by its offset and size, so presence can be decided exactly
/// as the kernel's `VMCLOCK_FIELD_PRESENT` does: `size >= offset + sizeof(field)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The C name of the field.
    pub name: &'static str,
    /// Byte offset in the page.
    pub offset: usize,
    /// Size in bytes.
    pub len: usize,
}

macro_rules! field {
    ($f:ident, $t:ty) => {
        Field { name: stringify!($f), offset: offset_of!(VmclockAbi, $f), len: size_of::<$t>() }
    };
}

/// The fields that can be absent (everything after `flags`), in page order.
/// The one rule for the sign of `tai_offset_sec`. The field stores UTC − TAI (−37 in 2026), as
/// the Linux driver reads it in every version and as spec v1.1 says. A *positive* stored value is
/// the legacy convention (spec v1.0, the RFC `/dev/vmclock_host`, older vmtime pages): TAI − UTC
/// has been ≥ 10 s since 1972, so the sign alone tells the two apart, and a positive value is
/// taken as TAI − UTC as it is.
pub mod tai_offset {
    /// TAI − UTC in seconds from a stored `tai_offset_sec` (either convention). `i16::MIN` has no
    /// positive counterpart: `None`.
    #[inline]
    pub const fn tai_minus_utc(stored: i16) -> Option<i16> {
        if stored < 0 {
            stored.checked_neg()
        } else {
            Some(stored)
        }
    }

    /// Whether a stored `tai_offset_sec` is in the legacy convention (positive: TAI − UTC).
    #[inline]
    pub const fn is_legacy(stored: i16) -> bool {
        stored > 0
    }

    /// The value to store for TAI − UTC = `tai_minus_utc`, in the driver's convention (UTC − TAI).
    #[inline]
    pub const fn stored(tai_minus_utc: i16) -> i16 {
        tai_minus_utc.wrapping_neg()
    }
}

pub mod field {
    use super::*;
    /// `clock_status`.
    pub const CLOCK_STATUS: Field = field!(clock_status, u8);
    /// `leap_second_smearing_hint`.
    pub const SMEARING_HINT: Field = field!(leap_second_smearing_hint, u8);
    /// `tai_offset_sec`.
    pub const TAI_OFFSET: Field = field!(tai_offset_sec, U16);
    /// `leap_indicator`.
    pub const LEAP_INDICATOR: Field = field!(leap_indicator, u8);
    /// `counter_period_shift`.
    pub const PERIOD_SHIFT: Field = field!(counter_period_shift, u8);
    /// `counter_value`.
    pub const COUNTER_VALUE: Field = field!(counter_value, U64);
    /// `counter_period_frac_sec`.
    pub const PERIOD: Field = field!(counter_period_frac_sec, U64);
    /// `counter_period_esterror_rate_frac_sec`.
    pub const PERIOD_ESTERROR: Field = field!(counter_period_esterror_rate_frac_sec, U64);
    /// `counter_period_maxerror_rate_frac_sec`.
    pub const PERIOD_MAXERROR: Field = field!(counter_period_maxerror_rate_frac_sec, U64);
    /// `time_sec`.
    pub const TIME_SEC: Field = field!(time_sec, U64);
    /// `time_frac_sec`.
    pub const TIME_FRAC: Field = field!(time_frac_sec, U64);
    /// `time_esterror_nanosec`.
    pub const TIME_ESTERROR: Field = field!(time_esterror_nanosec, U64);
    /// `time_maxerror_nanosec`.
    pub const TIME_MAXERROR: Field = field!(time_maxerror_nanosec, U64);
    /// `vm_generation_counter`.
    pub const VM_GENERATION: Field = field!(vm_generation_counter, U64);
}

impl Field {
    /// Whether a page whose `size` field is `size` holds this field.
    pub const fn present_in(&self, size: u32) -> bool {
        size as usize >= self.offset + self.len
    }
}

/// A human name for a counter id.
pub fn counter_name(id: u8) -> &'static str {
    match id {
        counter_id::ARM_VCNT => "ARM_VCNT",
        counter_id::X86_TSC => "X86_TSC",
        counter_id::INVALID => "INVALID",
        _ => "reserved",
    }
}

/// A human name for a time type.
pub fn time_type_name(t: u8) -> &'static str {
    match t {
        time_type::UTC => "UTC",
        time_type::TAI => "TAI",
        time_type::MONOTONIC => "MONOTONIC",
        time_type::INVALID_SMEARED => "INVALID_SMEARED",
        time_type::INVALID_MAYBE_SMEARED => "INVALID_MAYBE_SMEARED",
        _ => "reserved",
    }
}

/// A human name for a clock status.
pub fn status_name(s: u8) -> &'static str {
    match s {
        status::UNKNOWN => "UNKNOWN",
        status::INITIALIZING => "INITIALIZING",
        status::SYNCHRONIZED => "SYNCHRONIZED",
        status::FREERUNNING => "FREERUNNING",
        status::UNRELIABLE => "UNRELIABLE",
        _ => "reserved",
    }
}

/// A human name for a smearing hint.
pub fn smearing_name(s: u8) -> &'static str {
    match s {
        smearing::STRICT => "STRICT",
        smearing::NOON_LINEAR => "NOON_LINEAR",
        smearing::UTC_SLS => "UTC_SLS",
        _ => "reserved",
    }
}

/// A human name for a leap indicator.
pub fn leap_name(l: u8) -> &'static str {
    match l {
        leap::NONE => "NONE",
        leap::PRE_POS => "PRE_POS",
        leap::PRE_NEG => "PRE_NEG",
        leap::POS => "POS",
        leap::POST_POS => "POST_POS",
        leap::POST_NEG => "POST_NEG",
        _ => "reserved",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tai_offset_sign_rule() {
        use super::tai_offset::{is_legacy, stored, tai_minus_utc};
        // The driver's convention: UTC − TAI stored, TAI − UTC meant.
        assert_eq!(tai_minus_utc(-37), Some(37));
        assert!(!is_legacy(-37));
        // The legacy convention: TAI − UTC stored as it is.
        assert_eq!(tai_minus_utc(37), Some(37));
        assert!(is_legacy(37));
        // Zero is zero in both; i16::MIN has no TAI − UTC.
        assert_eq!((tai_minus_utc(0), is_legacy(0)), (Some(0), false));
        assert_eq!(tai_minus_utc(i16::MIN), None);
        // Writing always uses the driver's convention, and reads back unchanged.
        assert_eq!(stored(37), -37);
        for v in [0i16, 1, 10, 37, 38, i16::MAX] {
            assert!(!is_legacy(stored(v)));
            assert_eq!(tai_minus_utc(stored(v)), Some(v));
        }
    }

    use super::*;

    #[test]
    fn presence_follows_the_kernel_rule() {
        // Only the header through `flags`: nothing optional is present.
        assert!(!field::CLOCK_STATUS.present_in(MIN_SIZE));
        assert!(field::CLOCK_STATUS.present_in(0x23));
        // tai_offset_sec needs both of its bytes.
        assert!(!field::TAI_OFFSET.present_in(0x25));
        assert!(field::TAI_OFFSET.present_in(0x26));
        // The full v1 structure holds every field, the generation counter last.
        assert!(field::VM_GENERATION.present_in(ABI_SIZE as u32));
        assert!(!field::VM_GENERATION.present_in(ABI_SIZE as u32 - 1));
    }

    #[test]
    fn flag_names_and_unknown_bits() {
        let (names, unknown) = flags::names(flags::TIME_MONOTONIC | flags::NOTIFICATION_PRESENT | 1 << 40);
        assert_eq!(names, ["TIME_MONOTONIC", "NOTIFICATION_PRESENT"]);
        assert_eq!(unknown, 1 << 40);
        assert_eq!(flags::VM_GEN_COUNTER_PRESENT, 0x100);
    }
}
