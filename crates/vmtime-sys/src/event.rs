//! Event sources for daemons: a timerfd that fires when CLOCK_REALTIME is set, a periodic
//! timer, `poll`, the current clocksource, and random seeds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn timerfd(clock: libc::clockid_t) -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create takes no pointers; the result is checked before it is owned.
    let fd = unsafe { libc::timerfd_create(clock, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn settime(fd: &OwnedFd, flags: i32, value: libc::itimerspec) -> io::Result<()> {
    // SAFETY: `value` is a valid itimerspec; the old value pointer may be null.
    let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &value, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a timerfd's expiry count: `Ok(n)` (0 if not expired), or the error (ECANCELED when a
/// CANCEL_ON_SET timer saw the clock set).
fn read_expiries(fd: &OwnedFd) -> io::Result<u64> {
    let mut n = 0u64;
    // SAFETY: reads at most 8 bytes into `n`, which is 8 bytes long.
    let rc = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
    }
    Ok(n)
}

/// Detects steps of CLOCK_REALTIME (settimeofday, clock_settime, ADJ_SETOFFSET, leap seconds):
/// an absolute timer far in the future with TFD_TIMER_CANCEL_ON_SET, which the kernel cancels
/// (read fails with ECANCELED) whenever the clock is set.
#[derive(Debug)]
pub struct StepDetector {
    fd: OwnedFd,
}

impl StepDetector {
    /// Arms the detector.
    pub fn new() -> io::Result<Self> {
        let doing = "create the timer that sees clock steps (timerfd)";
        let d = StepDetector { fd: timerfd(libc::CLOCK_REALTIME).map_err(|e| crate::io_context(e, doing))? };
        d.arm().map_err(|e| crate::io_context(e, doing))?;
        Ok(d)
    }

    fn arm(&self) -> io::Result<()> {
        let far = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: i32::MAX as _, tv_nsec: 0 },
        };
        settime(&self.fd, libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET, far)
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The descriptor to poll, borrowed.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Whether the clock was set since the last call (re-arms the detector).
    pub fn stepped(&self) -> io::Result<bool> {
        match read_expiries(&self.fd) {
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                self.arm()?;
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(_) => Ok(false),
        }
    }
}

/// Waits until one of `fds` is readable (or `timeout_ms`, −1 for none); returns which are.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `p` is a valid array of `p.len()` pollfd structures for the call.
        let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(p.iter().map(|x| x.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The kernel's current clocksource (`tsc`, `kvm-clock`, `arch_sys_counter`, …).
pub fn current_clocksource() -> io::Result<String> {
    Ok(std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")?.trim().to_string())
}

/// Whether the clocksource is driven by this CPU's counter (so CLOCK_MONOTONIC_RAW is linear
/// in it).
pub fn clocksource_uses_counter(name: &str) -> bool {
    matches!(name, "tsc" | "tsc-early" | "arch_sys_counter")
}

/// 64 random bits from the kernel.
pub fn random_u64() -> io::Result<u64> {
    let mut v = 0u64;
    // The system call itself, not libc's wrapper: a static musl build (the guest binary,
    // scripts/guest-binary) leaves the wrapper a null weak symbol.
    // SAFETY: getrandom(2) writes at most 8 bytes into `v`, which is 8 bytes long.
    let rc = unsafe { libc::syscall(libc::SYS_getrandom, (&mut v as *mut u64).cast::<libc::c_void>(), 8usize, 0u32) };
    if rc != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_detector_stays_quiet() {
        // The detector must not report a step when nobody sets the clock (this test never
        // does: it only reads).
        let d = StepDetector::new().unwrap();
        let ready = poll_readable(&[d.fd()], 20).unwrap();
        assert!(!ready[0] || !d.stepped().unwrap());
        assert!(!d.stepped().unwrap());
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
        assert!(!current_clocksource().unwrap().is_empty());
    }
}

/// Whether a descriptor's wait queue was woken: an epoll set holding only that descriptor, made
/// once and never waited on, only asked ([`WakeProbe::woke`]). A level-triggered epoll set
/// looks at a descriptor again only when its driver wakes it (and once when it is added), so
/// it tells a notification from a state that changed silently, which `poll()`, asking the
/// driver afresh every time, cannot: a vmclock device's `poll()` is readable whenever its page
/// differs from the one last read, whether or not the device notified that page.
#[derive(Debug)]
pub struct WakeProbe {
    ep: OwnedFd,
}

impl WakeProbe {
    /// A probe of `fd` (readable events). Fails where the descriptor cannot be polled by epoll
    /// (a driver without `.poll`: EPERM).
    pub fn new(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        use rustix::event::epoll;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(&ep, fd, epoll::EventData::new_u64(0), epoll::EventFlags::IN)?;
        Ok(WakeProbe { ep })
    }

    /// Whether the descriptor was woken since it was last found not ready by this probe (or
    /// added), and is readable now. Never waits. Asked right after the readable state was
    /// consumed (a `read()`), it finds it not ready and forgets older wake-ups.
    pub fn woke(&self) -> io::Result<bool> {
        use rustix::event::epoll;
        let mut ev = [epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) }; 1];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            match epoll::wait(&self.ep, &mut ev[..], Some(&zero)) {
                Ok(n) => return Ok(n > 0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_probe_reports_a_wake_up_until_the_state_is_consumed() {
        let (mut r, mut w) = std::io::pipe().unwrap();
        let p = WakeProbe::new(r.as_fd()).unwrap();
        assert!(!p.woke().unwrap(), "nothing written");
        w.write_all(b"x").unwrap();
        assert!(p.woke().unwrap(), "woken and readable");
        assert!(p.woke().unwrap(), "still readable: still reported");
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        assert!(!p.woke().unwrap(), "consumed");
        w.write_all(b"y").unwrap();
        assert!(p.woke().unwrap(), "woken again");
    }
}
