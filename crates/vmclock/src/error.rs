//! Typed errors. Every failure of decoding, validation, reading and time math has its own
//! variant with a message a user can act on.

use thiserror::Error;

/// The page itself is not a usable vmclock page.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PageError {
    /// `magic` is not "VCLK".
    #[error("bad magic {found:#010x}: not a vmclock page (expected {:#010x}, \"VCLK\")", crate::abi::MAGIC)]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// `version` is not 1.
    #[error("unsupported vmclock version {found} (this build reads version 1)")]
    UnsupportedVersion {
        /// The value found.
        found: u16,
    },
    /// `size` does not even cover the header through `flags`.
    #[error("page size field {size} is smaller than the {min} bytes up to and including `flags`")]
    TooSmall {
        /// The `size` field.
        size: u32,
        /// The minimum the Linux driver accepts.
        min: u32,
    },
    /// `size` claims more bytes than were mapped or given.
    #[error("only {mapped} bytes of the page are available (size field {size}): fewer than the bytes up to and including `flags`")]
    LargerThanMapping {
        /// The `size` field.
        size: u32,
        /// Bytes actually mapped or given.
        mapped: usize,
    },
}

/// Why no time (or no time in the wanted timescale) can be computed from a page.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[repr(u64)]
pub enum TimeError {
    /// `counter_id` is INVALID: the page carries markers only.
    #[error("the page has no counter (counter_id INVALID): it carries disruption markers only, no time")]
    NoCounter,
    /// The page's counter is not the one this CPU reads.
    #[error("the page's counter is {page} but this CPU reads {cpu}")]
    CounterMismatch {
        /// The page's counter name.
        page: &'static str,
        /// This CPU's counter name.
        cpu: &'static str,
    },
    /// The time fields lie beyond `size`.
    #[error("the page's size ({size}) ends before the time fields: it carries no time")]
    NoTimeFields {
        /// The `size` field.
        size: u32,
    },
    /// Smeared or unknown time types are not supported by the ABI.
    #[error("time_type {0} ({name}) is not supported", name = crate::abi::time_type_name(*.0))]
    UnsupportedTimeType(u8),
    /// The period shift is too large for any exact computation.
    #[error("counter_period_shift {0} is unusable (must be below 128)")]
    UnusableShift(u8),
    /// The result does not fit: the counter is too far from the reference, or time_sec is absurd.
    #[error("time computation overflows (counter too far from the reference, or time_sec out of range)")]
    Overflow,
    /// The page is TAI but does not give TAI − UTC, so UTC cannot be derived (or vice versa).
    #[error("the page's time is {from} and it gives no valid TAI offset (TAI_OFFSET_VALID clear), so {to} cannot be derived from it")]
    NoTaiOffset {
        /// The page's timescale.
        from: &'static str,
        /// The wanted timescale.
        to: &'static str,
    },
    /// A monotonic page has no relation to wall-clock time.
    #[error("the page's time is MONOTONIC (undefined epoch): it gives no {0}")]
    NotWallClock(&'static str),
}

/// A consistent copy could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The writer held the seqlock (odd count) or kept changing it for too long.
    #[error("no consistent read of the page after {attempts} attempts over {waited_us} µs (seq_count odd or changing: is the writer stuck?)")]
    Timeout {
        /// Copies tried.
        attempts: u32,
        /// Time spent, µs.
        waited_us: u64,
    },
    /// The copy was consistent but the page is invalid.
    #[error(transparent)]
    Page(#[from] PageError),
}

/// Failure of [`crate::Clock`].
#[derive(Debug, Error)]
pub enum ClockError {
    /// Opening or mapping the page failed.
    #[error("cannot map {path}")]
    Map {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The page gives no usable time.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// The page is not valid.
    #[error(transparent)]
    Page(#[from] PageError),
}
