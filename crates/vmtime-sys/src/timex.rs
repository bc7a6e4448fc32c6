//! Reading the kernel's NTP state with `adjtimex` (modes = 0: read-only, no privilege).

use std::io;

/// The kernel's NTP state, as `adjtimex(2)` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timex {
    /// The return value: TIME_OK 0, TIME_INS 1, TIME_DEL 2, TIME_OOP 3, TIME_WAIT 4, TIME_ERROR 5.
    pub state: i32,
    /// Frequency offset, scaled ppm (2^-16 ppm).
    pub freq: i64,
    /// Remaining PLL offset (µs, or ns with STA_NANO).
    pub offset: i64,
    /// Maximum error, µs.
    pub maxerror: i64,
    /// Estimated error, µs.
    pub esterror: i64,
    /// STA_* bits.
    pub status: i32,
    /// PLL time constant.
    pub constant: i64,
    /// µs per tick (10_000 nominal at USER_HZ 100).
    pub tick: i64,
    /// TAI − UTC, s (0 when nobody set it).
    pub tai: i32,
}

/// `STA_PLL`.
pub const STA_PLL: i32 = 0x0001;
/// `STA_INS`: insert a leap second at the next midnight UTC.
pub const STA_INS: i32 = 0x0010;
/// `STA_DEL`: delete a leap second at the next midnight UTC.
pub const STA_DEL: i32 = 0x0020;
/// `STA_UNSYNC`: the clock is not synchronised.
pub const STA_UNSYNC: i32 = 0x0040;
/// `STA_FREQHOLD`.
pub const STA_FREQHOLD: i32 = 0x0080;
/// `STA_NANO`: offsets are in ns.
pub const STA_NANO: i32 = 0x2000;
/// `TIME_OOP`: a leap second is in progress.
pub const TIME_OOP: i32 = 3;

impl Timex {
    /// The kernel's frequency correction in parts per 10^9 × 2^16 (exact scaled ppm × 1000).
    pub fn freq_scaled_ppm(&self) -> i64 {
        self.freq
    }

    /// Whether the kernel considers itself synchronised (STA_UNSYNC clear, maxerror < 16 s).
    pub fn synchronized(&self) -> bool {
        self.status & STA_UNSYNC == 0 && self.maxerror < 16_000_000
    }

    /// The remaining PLL offset in ns.
    pub fn offset_ns(&self) -> i64 {
        if self.status & STA_NANO != 0 {
            self.offset
        } else {
            self.offset * 1000
        }
    }
}

/// Reads the kernel NTP state. Read-only: `modes` is 0, which needs no privilege and changes
/// nothing.
pub fn read_timex() -> io::Result<Timex> {
    // SAFETY: an all-zero `timex` is a valid value of this plain C struct.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid, writable timex for the call; modes = 0 makes it read-only.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Timex {
        state,
        freq: tx.freq as i64,
        offset: tx.offset as i64,
        maxerror: tx.maxerror as i64,
        esterror: tx.esterror as i64,
        status: tx.status,
        constant: tx.constant as i64,
        tick: tx.tick as i64,
        tai: tx.tai,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_needs_no_privilege_and_is_sane() {
        let tx = read_timex().unwrap();
        assert!((0..=5).contains(&tx.state));
        assert!(tx.freq.abs() <= 500 << 16, "freq within ±500 ppm: {}", tx.freq);
        assert!(tx.tick > 9_000 && tx.tick < 11_000, "tick {}", tx.tick);
    }
}
