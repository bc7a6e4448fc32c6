//! Reading the kernel's NTP state with `adjtimex` (modes = 0: read-only, no privilege).

use std::io;
pub use vmtime_core::kernel::KernelTimex;

/// Reads the kernel NTP state. Read-only: `modes` is 0, which needs no privilege and changes
/// nothing.
pub fn read_timex() -> io::Result<KernelTimex> {
    // SAFETY: an all-zero `timex` is a valid value of this plain C struct.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid, writable timex for the call; modes = 0 makes it read-only.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    let nano = tx.status & libc::STA_NANO != 0;
    Ok(KernelTimex {
        state,
        freq: tx.freq as i64,
        offset_ns: if nano { tx.offset as i64 } else { tx.offset as i64 * 1000 },
        constant: tx.constant as i64,
        tick: tx.tick as i64,
        status: tx.status,
        maxerror_us: tx.maxerror as i64,
        esterror_us: tx.esterror as i64,
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
