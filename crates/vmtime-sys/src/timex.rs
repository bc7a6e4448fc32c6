//! The kernel's NTP state: read with `adjtimex` (modes = 0: no privilege, nothing changed) by
//! every daemon, and written by [`apply`] (`clock_adjtime`) for `vmtime sync` alone.

use std::io;
pub use vmtime_core::kernel::KernelTimex;

/// The kernel's NTP state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TimexError {
    /// The read was refused. `adjtimex` with modes = 0 needs no privilege, so the kernel itself
    /// never refuses it: a seccomp filter did.
    #[error(
        "adjtimex (a read-only call, modes = 0) was refused ({0}): a seccomp filter denies it, as \
         container runtimes and systemd-nspawn do by default for a container without CAP_SYS_TIME, \
         or a unit's SystemCallFilter= without adjtimex and clock_adjtime. Reading needs no \
         privilege: allow the adjtimex and clock_adjtime system calls (systemd-nspawn \
         --system-call-filter='adjtimex clock_adjtime'; in a unit, add them to SystemCallFilter=; \
         in a container runtime's seccomp profile), without granting CAP_SYS_TIME"
    )]
    Denied(#[source] io::Error),
    /// Any other failure.
    #[error("adjtimex (a read-only call, modes = 0) failed: {0}")]
    Failed(#[source] io::Error),
}

impl TimexError {
    /// The read was refused by a filter (EPERM, or ENOSYS from a filter that fakes absence).
    pub fn is_denied(&self) -> bool {
        matches!(self, TimexError::Denied(_))
    }

    fn from_io(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSYS) => TimexError::Denied(e),
            _ => TimexError::Failed(e),
        }
    }
}

/// Reads the kernel NTP state. Read-only: `modes` is 0, which needs no privilege and changes
/// nothing.
pub fn read_timex() -> Result<KernelTimex, TimexError> {
    decode(adjtimex_read())
}

/// The system call: its return value (the clock state) and the filled `timex`.
fn adjtimex_read() -> io::Result<(libc::c_int, libc::timex)> {
    // SAFETY: an all-zero `timex` is a valid value of this plain C struct.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid, writable timex for the call; modes = 0 makes it read-only.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((state, tx))
}

/// The call's outcome as the kernel state or a named error.
// c_long is i64 here and i32 on 32-bit targets: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
fn decode(call: io::Result<(libc::c_int, libc::timex)>) -> Result<KernelTimex, TimexError> {
    let (state, tx): (libc::c_int, libc::timex) = call.map_err(TimexError::from_io)?;
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

/// Reads the kernel's NTP state where it is only advisory (the host publisher, a dry run): a
/// read refused by a seccomp filter gives [`KernelTimex::unreadable`] (not synchronised, 16 s
/// bounds, nominal rate) instead of an error, and the first refusal is handed back to be said
/// once. Any other failure is an error.
#[derive(Debug, Default)]
pub struct AdvisoryTimex {
    denied: bool,
}

impl AdvisoryTimex {
    /// A reader that has seen no refusal yet.
    pub const fn new() -> Self {
        AdvisoryTimex { denied: false }
    }

    /// The kernel state, and the refusal when this is the first read refused.
    pub fn read(&mut self) -> Result<(KernelTimex, Option<TimexError>), TimexError> {
        self.take(adjtimex_read())
    }

    /// Whether reads are being refused (the state published is [`KernelTimex::unreadable`]).
    pub fn denied(&self) -> bool {
        self.denied
    }

    fn take(
        &mut self,
        call: io::Result<(libc::c_int, libc::timex)>,
    ) -> Result<(KernelTimex, Option<TimexError>), TimexError> {
        match decode(call) {
            Ok(tx) => {
                self.denied = false;
                Ok((tx, None))
            }
            Err(e) if e.is_denied() => {
                let first = !std::mem::replace(&mut self.denied, true);
                Ok((KernelTimex::unreadable(), first.then_some(e)))
            }
            Err(e) => Err(e),
        }
    }
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
            tx.time.tv_sec = delta_ns.div_euclid(1_000_000_000) as _;
            tx.time.tv_usec = delta_ns.rem_euclid(1_000_000_000) as _;
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
            let now = read_timex().map_err(|e| match e {
                TimexError::Denied(e) | TimexError::Failed(e) => e,
            })?;
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
        // The advisory reader gives the same state when the read is allowed.
        let (again, refused) = AdvisoryTimex::new().read().unwrap();
        assert!(refused.is_none());
        assert_eq!((again.tick, again.tai), (tx.tick, tx.tai));
    }

    fn refused(errno: i32) -> io::Result<(libc::c_int, libc::timex)> {
        Err(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn a_refused_read_names_the_call_the_cause_and_the_fix() {
        let e = decode(refused(libc::EPERM)).unwrap_err();
        assert!(e.is_denied());
        let msg = e.to_string();
        for part in [
            "adjtimex",
            "Operation not permitted",
            "seccomp",
            "CAP_SYS_TIME",
            "SystemCallFilter=",
            "--system-call-filter",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        // Another error is not taken for a filter.
        let e = decode(refused(libc::EFAULT)).unwrap_err();
        assert!(!e.is_denied() && e.to_string().starts_with("adjtimex"), "{e}");
    }

    #[test]
    fn an_advisory_read_goes_on_unsynchronised_and_says_so_once() {
        let mut r = AdvisoryTimex::new();
        let (tx, first) = r.take(refused(libc::EPERM)).unwrap();
        assert_eq!(tx, KernelTimex::unreadable());
        assert!(!tx.synchronized());
        assert!(first.is_some_and(|e| e.is_denied()));
        assert!(r.denied());
        for _ in 0..3 {
            let (tx, again) = r.take(refused(libc::EPERM)).unwrap();
            assert_eq!((tx, again.is_none()), (KernelTimex::unreadable(), true));
        }
        // A failure that is not a refusal stays an error.
        assert!(!r.take(refused(libc::EINVAL)).unwrap_err().is_denied());
        // Readable again: the real state, and a later refusal is said again.
        let (tx, none) = r.read().unwrap();
        assert!(none.is_none() && (0..=5).contains(&tx.state) && !r.denied());
        assert!(r.take(refused(libc::EPERM)).unwrap().1.is_some());
    }
}
