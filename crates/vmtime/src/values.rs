//! Validated values: the one place where every number a user gives vmtime (a command-line flag or
//! a key of the configuration file) is parsed and range-checked.
//!
//! Each type below is used both as a clap value (through `FromStr`) and as a serde value (through
//! `Deserialize`), so a flag and its configuration key cannot disagree on what is allowed. A value
//! outside the range, not a number, NaN, an infinity, or one that cannot be represented exactly
//! (1.5 for an integer, 0.0001 ppm where the unit is 1 ppb) is refused with a message that gives
//! the allowed range. Every value inside a range is safe to use: no arithmetic on it can overflow
//! or run forever.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a value was refused: what was given and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueError {
    /// The text given.
    pub got: String,
    /// What is allowed, e.g. "an integer in [1, 600000] (ms)".
    pub allowed: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allowed: {}", self.allowed)
    }
}

impl std::error::Error for ValueError {}

/// Parses an integer: decimal (underscores allowed) or 0x hexadecimal, with a sign. Wide enough
/// (i128) that any 64-bit value, and anything beyond it, is seen for what it is.
fn parse_int(s: &str) -> Option<i128> {
    let t = s.trim().replace('_', "");
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let v = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(h) => u128::from_str_radix(h, 16).ok()?,
        None => digits.parse::<u128>().ok()?,
    };
    let v = i128::try_from(v).ok()?;
    Some(if neg { -v } else { v })
}

/// Registers a type's range text for the help and for the hostile-input test.
#[derive(Debug)]
pub struct Numeric {
    /// The value type.
    pub type_id: fn() -> std::any::TypeId,
    /// What is allowed.
    pub allowed: fn() -> String,
    /// Whether a text is allowed.
    #[allow(dead_code)] // read by the hostile-input test
    pub accepts: fn(&str) -> bool,
}

macro_rules! int_value {
    ($(#[$m:meta])* $name:ident: $t:ty, $min:expr, $max:expr, $unit:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($t);

        #[allow(dead_code)]
        impl $name {
            /// The smallest value allowed.
            pub const MIN: $t = $min;
            /// The largest value allowed.
            pub const MAX: $t = $max;

            /// The value, if it lies in the range.
            pub const fn new(v: $t) -> Option<Self> {
                if v >= Self::MIN && v <= Self::MAX { Some($name(v)) } else { None }
            }

            /// The value.
            pub const fn get(self) -> $t {
                self.0
            }

            /// What is allowed, in words.
            pub fn allowed() -> String {
                let unit: &str = $unit;
                if unit.is_empty() {
                    format!("an integer in [{}, {}]", Self::MIN, Self::MAX)
                } else {
                    format!("an integer in [{}, {}] ({unit})", Self::MIN, Self::MAX)
                }
            }

            fn from_i128(v: i128, got: &str) -> Result<Self, ValueError> {
                <$t>::try_from(v)
                    .ok()
                    .and_then(Self::new)
                    .ok_or_else(|| ValueError { got: got.to_string(), allowed: Self::allowed() })
            }

            /// The registry entry.
            pub const NUMERIC: Numeric =
                Numeric { type_id: std::any::TypeId::of::<$name>, allowed: $name::allowed, accepts: |s| s.parse::<$name>().is_ok() };
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                match parse_int(s) {
                    Some(v) => Self::from_i128(v, s),
                    None => Err(ValueError { got: s.to_string(), allowed: Self::allowed() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // TOML integers are i64: larger u64 values are written as 0x strings.
                match i64::try_from(self.0) {
                    Ok(v) => s.serialize_i64(v),
                    Err(_) => s.serialize_str(&format!("{:#x}", self.0)),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Raw::deserialize(d)?;
                let (v, got) = match raw {
                    Raw::Int(i) => (Some(i as i128), i.to_string()),
                    Raw::Str(s) => (parse_int(&s), format!("{s:?}")),
                    Raw::Float(x) => (None, x.to_string()),
                    Raw::Bool(b) => (None, b.to_string()),
                };
                match v {
                    Some(v) => Self::from_i128(v, &got),
                    None => Err(ValueError { got: got.clone(), allowed: Self::allowed() }),
                }
                .map_err(|e| serde::de::Error::custom(format!("{} is refused; {e}", e.got)))
            }
        }
    };
}

/// A value as it comes from TOML (or JSON).
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl Raw {
    fn float(self) -> (Option<f64>, String) {
        match self {
            Raw::Int(i) => (Some(i as f64), i.to_string()),
            Raw::Float(x) => (Some(x), x.to_string()),
            Raw::Str(s) => (s.trim().parse::<f64>().ok(), format!("{s:?}")),
            Raw::Bool(b) => (None, b.to_string()),
        }
    }
}

/// A decimal value kept as an integer count of a finer unit (`$scale` of them per unit): ppm
/// kept as ppb. Finer digits than the unit are refused, never silently rounded.
macro_rules! fixed_value {
    ($(#[$m:meta])* $name:ident, $min:expr, $max:expr, $scale:expr, $unit:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            /// The smallest value allowed, in the fine unit.
            pub const MIN: u64 = $min;
            /// The largest value allowed, in the fine unit.
            pub const MAX: u64 = $max;

            /// The value in the fine unit, if it lies in the range.
            pub const fn from_fine(v: u64) -> Option<Self> {
                if v >= Self::MIN && v <= Self::MAX { Some($name(v)) } else { None }
            }

            /// The value in the fine unit.
            pub const fn fine(self) -> u64 {
                self.0
            }

            /// What is allowed, in words.
            pub fn allowed() -> String {
                let s = $scale as f64;
                format!(
                    "a number in [{}, {}] ({}), in steps of {}",
                    Self::MIN as f64 / s,
                    Self::MAX as f64 / s,
                    $unit,
                    1.0 / s
                )
            }

            fn from_f64(x: Option<f64>, got: &str) -> Result<Self, ValueError> {
                let err = || ValueError { got: got.to_string(), allowed: Self::allowed() };
                let x = x.filter(|x| x.is_finite()).ok_or_else(err)?;
                let fine = x * $scale as f64;
                let r = fine.round();
                if (fine - r).abs() > 1e-6 * r.abs().max(1.0) || r < 0.0 || r > u64::MAX as f64 {
                    return Err(err());
                }
                Self::from_fine(r as u64).ok_or_else(err)
            }

            /// The registry entry.
            pub const NUMERIC: Numeric =
                Numeric { type_id: std::any::TypeId::of::<$name>, allowed: $name::allowed, accepts: |s| s.parse::<$name>().is_ok() };
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Self::from_f64(s.trim().parse::<f64>().ok(), s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (self.0 as f64 / $scale as f64).fmt(f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.0 as f64 / $scale as f64)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let (x, got) = Raw::deserialize(d)?.float();
                Self::from_f64(x, &got).map_err(|e| serde::de::Error::custom(format!("{} is refused; {e}", e.got)))
            }
        }
    };
}

/// A finite float in a closed range (for ratios, where exactness is checked by the user of the value).
macro_rules! float_value {
    ($(#[$m:meta])* $name:ident, $min:expr, $max:expr, $unit:expr, $open_min:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
        pub struct $name(f64);

        impl $name {
            /// The value.
            pub const fn get(self) -> f64 {
                self.0
            }

            /// What is allowed, in words.
            pub fn allowed() -> String {
                format!("a number in {}{}, {}] ({})", if $open_min { "(" } else { "[" }, $min as f64, $max as f64, $unit)
            }

            fn from_f64(x: Option<f64>, got: &str) -> Result<Self, ValueError> {
                let ok = |x: f64| x.is_finite() && x <= $max as f64 && if $open_min { x > $min as f64 } else { x >= $min as f64 };
                x.filter(|x| ok(*x)).map($name).ok_or_else(|| ValueError { got: got.to_string(), allowed: Self::allowed() })
            }

            /// The registry entry.
            pub const NUMERIC: Numeric =
                Numeric { type_id: std::any::TypeId::of::<$name>, allowed: $name::allowed, accepts: |s| s.parse::<$name>().is_ok() };
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Self::from_f64(s.trim().parse::<f64>().ok(), s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let (x, got) = Raw::deserialize(d)?.float();
                Self::from_f64(x, &got).map_err(|e| serde::de::Error::custom(format!("{} is refused; {e}", e.got)))
            }
        }
    };
}

/// Ten years, s: the longest run a `--duration-s` asks for.
const TEN_YEARS_S: u64 = 10 * 366 * 86_400;

int_value!(
    /// Interval between full observations (host) or updates (sync), ms.
    IntervalMs: u64, 10, 600_000, "ms"
);
int_value!(
    /// The longest interval between a follower's observations at rest, ms: at most 30 s, the
    /// age at which the shipped alert on the last good observation fires.
    MaxIntervalMs: u64, 10, 30_000, "ms"
);
int_value!(
    /// How often a cheap poll runs (the host's adjtimex read; watch's page poll), ms. At most 1 s so
    /// a state change is always seen within a second.
    PollMs: u64, 1, 1_000, "ms"
);
int_value!(
    /// A small time threshold, ns (up to 1 s).
    ThresholdNs: u64, 1, 1_000_000_000, "ns"
);
int_value!(
    /// A tolerance added to each side of a window, ns (up to 1 s).
    ToleranceNs: u64, 0, 1_000_000_000, "ns"
);
int_value!(
    /// How long a command runs before it exits, s.
    DurationS: u64, 1, TEN_YEARS_S, "s"
);
int_value!(
    /// TAI − UTC, s (37 since 2017; it has never been negative).
    TaiUtcS: i16, 0, 1_000, "s, TAI − UTC"
);
int_value!(
    /// The start-up step threshold (chrony's makestep), ns: from 1 µs to 1000 s.
    MakestepNs: u64, 1_000, 1_000_000_000_000, "ns"
);
int_value!(
    /// How many first updates may step.
    MakestepUpdates: u32, 0, 1_000, "updates"
);
int_value!(
    /// Fraction bits of KVM's TSC scaling ratio (Intel 48, AMD 32).
    FracBits: u8, 1, 63, "bits"
);
int_value!(
    /// A PCI slot on the root bus (function 0).
    PciSlot: u8, 1, 31, "slot"
);
int_value!(
    /// Number of (clock, counter, clock) samples.
    Samples: u32, 1, 1_000_000, "samples"
);
int_value!(
    /// Readings per PTP reading method (the kernel's ioctls take at most 25).
    PhcReadings: u32, 1, 25, "readings"
);
int_value!(
    /// A counter frequency, Hz (at least 2 Hz; at most 1 THz).
    CounterHz: u64, 2, 1_000_000_000_000, "Hz"
);
int_value!(
    /// Calibration time, ms (up to 10 s).
    CalibrateMs: u64, 1, 10_000, "ms"
);
int_value!(
    /// Any 64-bit unsigned value (counters, markers, ns since an epoch): decimal or 0x hex.
    AnyU64: u64, 0, u64::MAX, ""
);
int_value!(
    /// The page's `size` field: at least the header through `flags`, at most one page.
    PageSize: u32, vmclock::abi::MIN_SIZE, vmclock::abi::PAGE_SIZE as u32, "bytes"
);
int_value!(
    /// A counter id (the ABI's counter_id byte).
    CounterIdByte: u8, 0, u8::MAX, ""
);
int_value!(
    /// How many updates to print.
    Count: u64, 1, u64::MAX, "updates"
);
int_value!(
    /// A process id (Linux's pid_max is at most 2^22).
    ProcessId: u32, 1, 4_194_304, ""
);

int_value!(
    /// A tolerance added to a page's bounds, ns (up to 1000 s).
    MaxErrorNs: u64, 0, 1_000_000_000_000, "ns"
);
int_value!(
    /// How long to wait before giving up, s (0: look once).
    TimeoutS: u64, 0, TEN_YEARS_S, "s"
);

int_value!(
    /// An interval between a feed's samples or updates, ms (up to an hour).
    FeedIntervalMs: u64, 10, 3_600_000, "ms"
);
int_value!(
    /// Samples per measurement burst.
    Burst: u32, 1, 256, "samples"
);
int_value!(
    /// How long a published segment stays valid without an update, ms (up to an hour).
    LifeMs: u64, 20, 3_600_000, "ms"
);
int_value!(
    /// A drift margin, ppb (below 10 %).
    DriftPpb: u64, 0, 99_999_999, "ppb"
);

fixed_value!(
    /// A rate tolerance, ppm, kept exactly in ppb: from 0.001 ppm to 10 % (100 000 ppm).
    TolerancePpm, 1, 100_000_000, 1000u64, "ppm"
);
fixed_value!(
    /// The largest offset acted on outside start-up, disruptions and the return from holdover,
    /// s, kept exactly in ms: from 1 ms to 100 years.
    MaxStepS, 1, 3_155_760_000_000, 1000u64, "s"
);

float_value!(
    /// KVM's TSC scaling ratio (guest ticks per host tick).
    TscRatio, 0.0, 255.0, "guest ticks per host tick", true
);
float_value!(
    /// A period error rate, ppb (up to 100 %).
    PeriodPpb, 0.0, 1e9, "ppb", false
);

/// A 64-bit TSC offset: any u64 (decimal or 0x hex), or a negative i64 (it wraps, as KVM's does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TscOffset(u64);

impl TscOffset {
    /// The offset, mod 2^64.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// What is allowed, in words.
    pub fn allowed() -> String {
        "an integer in [-9223372036854775808, 18446744073709551615] (decimal or 0x hex; negative values wrap mod 2^64)"
            .into()
    }

    /// The registry entry.
    pub const NUMERIC: Numeric = Numeric {
        type_id: std::any::TypeId::of::<TscOffset>,
        allowed: TscOffset::allowed,
        accepts: |s| s.parse::<TscOffset>().is_ok(),
    };

    fn from_i128(v: Option<i128>, got: &str) -> Result<Self, ValueError> {
        match v {
            Some(v) if (i64::MIN as i128..=u64::MAX as i128).contains(&v) => Ok(TscOffset(v as u64)),
            _ => Err(ValueError { got: got.to_string(), allowed: Self::allowed() }),
        }
    }
}

impl FromStr for TscOffset {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Self::from_i128(parse_int(s), s)
    }
}

impl fmt::Display for TscOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for TscOffset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for TscOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (v, got) = match Raw::deserialize(d)? {
            Raw::Int(i) => (Some(i as i128), i.to_string()),
            Raw::Str(s) => (parse_int(&s), format!("{s:?}")),
            Raw::Float(x) => (None, x.to_string()),
            Raw::Bool(b) => (None, b.to_string()),
        };
        Self::from_i128(v, &got).map_err(|e| serde::de::Error::custom(format!("{} is refused; {e}", e.got)))
    }
}

/// The largest text file vmtime reads whole (a configuration, a scenario): 1 MiB.
pub const MAX_TEXT_FILE: u64 = 1 << 20;

/// Reads a small text file whole, refusing one larger than [`MAX_TEXT_FILE`] (a careless path
/// to a huge file must not grow the process).
pub fn read_small_text(path: &std::path::Path) -> std::io::Result<String> {
    // Never waits (O_NONBLOCK: a fifo put at the path neither blocks the open nor a daemon's
    // SIGHUP) and reads only a regular file (vmtime_sys::files).
    text(vmtime_sys::files::read_small_regular(path, MAX_TEXT_FILE))
}

/// [`read_small_text`] for a configuration: it decides what the daemons do (the command `sync`
/// runs as its hook, its step limits), so it must also be this user's or root's and writable
/// by its owner only (`vmtime_sys::files::check_trusted`).
pub fn read_config_text(path: &std::path::Path) -> std::io::Result<String> {
    text(vmtime_sys::files::read_small_trusted(path, MAX_TEXT_FILE, "a configuration file"))
}

fn text(r: std::io::Result<Vec<u8>>) -> std::io::Result<String> {
    let bytes = r.map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KiB: not a vmtime text file", MAX_TEXT_FILE / 1024),
        ),
        _ => e,
    })?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text: not a vmtime text file"))
}

/// Defines a value type whose allowed set is a range with exceptions (`$ok` says which values
/// of `$t` are allowed; `$allowed` says so in words), parsed like the integers above.
macro_rules! picked_value {
    ($(#[$m:meta])* $name:ident: $t:ty, $ok:expr, $allowed:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name($t);

        impl $name {
            /// The value, if it is allowed.
            pub fn new(v: $t) -> Option<Self> {
                let ok: fn($t) -> bool = $ok;
                ok(v).then_some($name(v))
            }

            /// The value.
            pub const fn get(self) -> $t {
                self.0
            }

            /// What is allowed, in words.
            pub fn allowed() -> String {
                $allowed.to_string()
            }

            /// The registry entry.
            pub const NUMERIC: Numeric =
                Numeric { type_id: std::any::TypeId::of::<$name>, allowed: $name::allowed, accepts: |s| s.parse::<$name>().is_ok() };
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                parse_int(s)
                    .and_then(|v| <$t>::try_from(v).ok())
                    .and_then(Self::new)
                    .ok_or_else(|| ValueError { got: s.to_string(), allowed: Self::allowed() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

picked_value!(
    /// A 16550 UART's I/O base for the doorbell (`vmtime qemu --notify-io`): eight ports, so
    /// 8-aligned, above the legacy PC's own (the PICs, the PIT, the keyboard).
    UartIoBase: u16,
    |v| v % 8 == 0 && (0x100..=0xfff8).contains(&v),
    "an 8-aligned I/O port in [0x100, 0xfff8] (0x2f8 is COM2, 0x3e8 COM3, 0x2e8 COM4)"
);
picked_value!(
    /// The doorbell UART's ISA interrupt (`vmtime qemu --notify-irq`): 3–15, except 8 (the RTC)
    /// and 9 (ACPI's SCI).
    IsaIrq: u8,
    |v| (3..=15).contains(&v) && v != 8 && v != 9,
    "an ISA interrupt in [3, 15] other than 8 (RTC) and 9 (ACPI SCI)"
);

/// Every numeric value type: `vmtime` adds the range to each flag's help, lets each take a value
/// starting with '-' (so -5 is a number, not a flag), and the hostile-input test finds them here.
pub const NUMERIC: &[Numeric] = &[
    UartIoBase::NUMERIC,
    IsaIrq::NUMERIC,
    IntervalMs::NUMERIC,
    MaxIntervalMs::NUMERIC,
    PciSlot::NUMERIC,
    PollMs::NUMERIC,
    ThresholdNs::NUMERIC,
    ToleranceNs::NUMERIC,
    DurationS::NUMERIC,
    TaiUtcS::NUMERIC,
    MakestepNs::NUMERIC,
    MakestepUpdates::NUMERIC,
    MaxStepS::NUMERIC,
    FracBits::NUMERIC,
    Samples::NUMERIC,
    PhcReadings::NUMERIC,
    CounterHz::NUMERIC,
    CalibrateMs::NUMERIC,
    AnyU64::NUMERIC,
    PageSize::NUMERIC,
    CounterIdByte::NUMERIC,
    Count::NUMERIC,
    ProcessId::NUMERIC,
    TolerancePpm::NUMERIC,
    TscRatio::NUMERIC,
    PeriodPpb::NUMERIC,
    TscOffset::NUMERIC,
    SimDuration::NUMERIC,
    FeedIntervalMs::NUMERIC,
    Burst::NUMERIC,
    LifeMs::NUMERIC,
    DriftPpb::NUMERIC,
    MaxErrorNs::NUMERIC,
    TimeoutS::NUMERIC,
    SeedRange::NUMERIC,
];

/// Seeds `A..B`: A through B, both included (`1..1000` is a thousand seeds); at most a million.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedRange {
    /// The first seed.
    pub first: u64,
    /// The last seed (included).
    pub last: u64,
}

impl SeedRange {
    /// The most seeds one run takes.
    pub const MAX_SEEDS: u64 = 1_000_000;

    /// What is allowed, in words.
    pub fn allowed() -> String {
        format!("A..B, the seeds A through B (both included, A ≤ B, at most {} of them)", Self::MAX_SEEDS)
    }

    /// The registry entry.
    pub const NUMERIC: Numeric = Numeric {
        type_id: std::any::TypeId::of::<SeedRange>,
        allowed: SeedRange::allowed,
        accepts: |s| s.parse::<SeedRange>().is_ok(),
    };

    /// The seeds.
    pub fn seeds(self) -> std::ops::RangeInclusive<u64> {
        self.first..=self.last
    }
}

impl fmt::Display for SeedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.first, self.last)
    }
}

impl FromStr for SeedRange {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let err = || ValueError { got: s.to_string(), allowed: Self::allowed() };
        let (a, b) = s.split_once("..").ok_or_else(err)?;
        let int =
            |t: &str| parse_int(t).filter(|v| (0..=u64::MAX as i128).contains(v) && !t.trim().starts_with(['-', '+']));
        let (a, b) = (int(a).ok_or_else(err)? as u64, int(b).ok_or_else(err)? as u64);
        if a > b || b - a >= Self::MAX_SEEDS {
            return Err(err());
        }
        Ok(SeedRange { first: a, last: b })
    }
}

/// A simulated duration: "600", "600s", "10m", "1h", "1d"; from 1 s to 30 days (as a scenario file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimDuration(u64);

impl SimDuration {
    /// The longest simulation, s.
    pub const MAX_S: u64 = vmtime_sim::scenario::MAX_S;

    /// Seconds.
    pub const fn secs(self) -> u64 {
        self.0
    }

    /// What is allowed, in words.
    pub fn allowed() -> String {
        format!("a whole number of s, m, h or d (e.g. 600, 10m, 1h, 1d) from 1 s to {} d", Self::MAX_S / 86_400)
    }

    /// The registry entry.
    pub const NUMERIC: Numeric = Numeric {
        type_id: std::any::TypeId::of::<SimDuration>,
        allowed: SimDuration::allowed,
        accepts: |s| s.parse::<SimDuration>().is_ok(),
    };
}

impl FromStr for SimDuration {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let err = || ValueError { got: s.to_string(), allowed: Self::allowed() };
        let (num, mul) = match s.chars().last() {
            Some('s') => (&s[..s.len() - 1], 1),
            Some('m') => (&s[..s.len() - 1], 60),
            Some('h') => (&s[..s.len() - 1], 3600),
            Some('d') => (&s[..s.len() - 1], 86_400),
            _ => (s, 1),
        };
        let n = parse_int(num).ok_or_else(err)?;
        let secs = n.checked_mul(mul).ok_or_else(err)?;
        if !(1..=Self::MAX_S as i128).contains(&secs) {
            return Err(err());
        }
        Ok(SimDuration(secs as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_range_checked_and_exact() {
        assert_eq!("1000".parse::<IntervalMs>().map(IntervalMs::get), Ok(1000));
        assert_eq!("1_000".parse::<IntervalMs>().map(IntervalMs::get), Ok(1000));
        for bad in ["0", "-1", "9", "600001", "NaN", "inf", "1e30", "1.5", "", "18446744073709551616", "--1", "+-1"] {
            let e = bad.parse::<IntervalMs>().unwrap_err();
            assert_eq!(e.got, bad);
            assert_eq!(e.allowed, "an integer in [10, 600000] (ms)");
        }
        assert_eq!("18446744073709551615".parse::<AnyU64>().map(AnyU64::get), Ok(u64::MAX));
        assert_eq!("0xffff".parse::<AnyU64>().map(AnyU64::get), Ok(0xffff));
        assert!("-1".parse::<AnyU64>().is_err());
        assert!("18446744073709551615".parse::<DurationS>().is_err());
        assert_eq!("-5".parse::<TaiUtcS>().unwrap_err().allowed, "an integer in [0, 1000] (s, TAI − UTC)");
    }

    #[test]
    fn fixed_point_refuses_what_it_cannot_hold() {
        assert_eq!("500".parse::<TolerancePpm>().map(TolerancePpm::fine), Ok(500_000));
        assert_eq!("0.001".parse::<TolerancePpm>().map(TolerancePpm::fine), Ok(1));
        assert_eq!("12.345".parse::<TolerancePpm>().map(TolerancePpm::fine), Ok(12_345));
        for bad in ["0.0001", "0", "-1", "NaN", "inf", "-inf", "1e30", "100000.001", "x"] {
            assert!(bad.parse::<TolerancePpm>().is_err(), "{bad}");
        }
    }

    #[test]
    fn floats_are_finite_and_in_range() {
        assert_eq!("2.5".parse::<TscRatio>().map(TscRatio::get), Ok(2.5));
        for bad in ["0", "-1", "NaN", "inf", "1e30", "256"] {
            assert!(bad.parse::<TscRatio>().is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_wrap_only_inside_64_bits() {
        assert_eq!("-1".parse::<TscOffset>().map(TscOffset::get), Ok(u64::MAX));
        assert_eq!("0x10".parse::<TscOffset>().map(TscOffset::get), Ok(16));
        assert!("18446744073709551616".parse::<TscOffset>().is_err());
        assert!("-9223372036854775809".parse::<TscOffset>().is_err());
    }

    #[test]
    fn sim_durations_do_not_overflow() {
        assert_eq!("10m".parse::<SimDuration>().map(SimDuration::secs), Ok(600));
        assert_eq!("1d".parse::<SimDuration>().map(SimDuration::secs), Ok(86_400));
        for bad in ["0", "18446744073709551615d", "31d", "-1", "1.5h", "NaN", "h"] {
            assert!(bad.parse::<SimDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_values_follow_the_same_rules() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: IntervalMs,
        }
        assert_eq!(toml::from_str::<T>("a = 1000").unwrap().a.get(), 1000);
        for bad in ["a = 0", "a = 1.5", "a = nan", "a = -1", "a = \"x\"", "a = true"] {
            let e = toml::from_str::<T>(bad).unwrap_err();
            assert!(e.message().contains("allowed: an integer in [10, 600000] (ms)"), "{bad}: {}", e.message());
        }
    }
}
