//! The kernel's NTP state: read with `adjtimex` (modes = 0: no privilege, nothing changed) by
//! every daemon, and written by [`apply`] (`clock_adjtime`) for `vmtime sync` alone.

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

/// Applies one discipline action to CLOCK_REALTIME with `clock_adjtime`. **This changes the
/// machine's clock**: only `vmtime sync` without `--dry-run` calls it, inside a guest (or a lab
/// VM). Tests never do; they drive the simulated kernel instead. `RunHook` is the caller's.
pub fn apply(action: &vmtime_core::sync::SyncAction) -> io::Result<()> {
    use vmtime_core::kernel::{STA_DEL, STA_INS, STA_PLL, STA_UNSYNC};
    use vmtime_core::sync::SyncAction;
    // SAFETY: an all-zero `timex` is a valid value of this plain C struct.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    match *action {
        SyncAction::Step { delta_ns } => {
            tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
            tx.time.tv_sec = delta_ns.div_euclid(1_000_000_000) as libc::time_t;
            tx.time.tv_usec = delta_ns.rem_euclid(1_000_000_000) as libc::suseconds_t;
        }
        SyncAction::SetFrequency { tick, freq } => {
            tx.modes = libc::ADJ_TICK | libc::ADJ_FREQUENCY;
            tx.tick = tick as libc::c_long;
            tx.freq = freq as libc::c_long;
        }
        SyncAction::SetTai(tai) => {
            tx.modes = libc::ADJ_TAI;
            tx.constant = tai as libc::c_long;
        }
        SyncAction::SetState { insert, delete, synchronized, maxerror_us, esterror_us } => {
            let now = read_timex()?;
            let mut status = now.status & !(STA_INS | STA_DEL | STA_UNSYNC | STA_PLL);
            if insert {
                status |= STA_INS;
            }
            if delete {
                status |= STA_DEL;
            }
            if !synchronized {
                status |= STA_UNSYNC;
            }
            tx.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
            tx.status = status;
            tx.maxerror = maxerror_us as libc::c_long;
            tx.esterror = esterror_us as libc::c_long;
        }
        SyncAction::RunHook => return Ok(()),
    }
    // SAFETY: `tx` is a valid timex for the call; the modes set above are the only changes.
    let rc = unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, &mut tx) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
