//! Other time daemons: `vmtime sync` refuses to start while one disciplines the clock, and stops
//! when another process changes the kernel's NTP state under it (two disciplines on one clock
//! fight: each undoes the other's frequency, and the clock wanders between them).
//!
//! Sans-IO: the caller lists the processes (`/proc/*/comm` and `cmdline`) and reads `adjtimex`;
//! this module decides.

use crate::kernel::{KernelTimex, STA_DEL, STA_FREQHOLD, STA_INS, STA_PLL, STA_UNSYNC};
use crate::sync::SyncAction;
use std::fmt;

/// `STA_PPSFREQ`.
pub const STA_PPSFREQ: i32 = 0x0002;
/// `STA_PPSTIME`.
pub const STA_PPSTIME: i32 = 0x0004;
/// `STA_FLL`.
pub const STA_FLL: i32 = 0x0008;

/// Status bits only a process writes (the kernel never changes them by itself) and that
/// `vmtime sync` either sets itself (INS, DEL) or never sets (the PLL/FLL/PPS modes, FREQHOLD).
/// STA_UNSYNC is handled apart: the kernel sets it on its own when maxerror reaches 16 s.
const WATCHED: i32 = STA_PLL | STA_PPSFREQ | STA_PPSTIME | STA_FLL | STA_INS | STA_DEL | STA_FREQHOLD;

/// The kernel's frequency limit (MAXFREQ_SCALED): ±500 ppm in 2^-16 ppm.
const MAXFREQ_SCALED: i64 = 500 << 16;

/// A process, as /proc shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/comm` (at most 15 bytes).
    pub comm: String,
    /// `/proc/PID/cmdline`, split at NUL.
    pub cmdline: Vec<String>,
}

/// A time daemon found running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rival {
    pub pid: u32,
    /// Its usual name ("chronyd", "ntpd", "systemd-timesyncd", …).
    pub name: &'static str,
}

/// The daemons that discipline CLOCK_REALTIME, by `comm` (ntpsec's daemon is also "ntpd"; ntpd-rs's
/// is "ntp-daemon"; phc2sys steers the system clock from a PHC).
const DAEMONS: &[(&str, &str)] = &[
    ("chronyd", "chronyd"),
    ("ntpd", "ntpd"),
    ("systemd-timesyn", "systemd-timesyncd"),
    ("ntp-daemon", "ntpd-rs"),
    ("openntpd", "openntpd"),
    ("phc2sys", "phc2sys"),
    ("timemaster", "timemaster"),
];

/// The time daemons among `procs` that may change the clock. `chronyd -x` never does (it only
/// measures), so it is not one.
pub fn rivals(procs: &[Process]) -> Vec<Rival> {
    procs
        .iter()
        .filter_map(|p| {
            let (_, name) = DAEMONS.iter().find(|(comm, _)| p.comm.trim_end() == *comm)?;
            let measuring_only = *name == "chronyd" && p.cmdline.iter().skip(1).any(|a| a == "-x");
            (!measuring_only).then_some(Rival { pid: p.pid, name })
        })
        .collect()
}

/// Why `vmtime sync` will not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A time daemon runs.
    Daemon { rival: Rival, kernel: String },
    /// No known daemon runs, but the kernel's own PLL/FLL/PPS discipline is on: something set it
    /// (a daemon under another name, or one that died and left it on).
    KernelDiscipline { kernel: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HOW: &str = "stop it (for example `systemctl disable --now chrony`) or, if it does not change the \
                           clock, give --allow-other-daemon";
        match self {
            Refusal::Daemon { rival, kernel } => write!(
                f,
                "{} (pid {}) is running and may discipline the clock ({kernel}): two daemons on one clock fight; {HOW}",
                rival.name, rival.pid
            ),
            Refusal::KernelDiscipline { kernel } => write!(
                f,
                "the kernel's own discipline is on ({kernel}): another program is disciplining the clock; {HOW}"
            ),
        }
    }
}

/// The kernel state in words, for the messages.
pub fn describe_kernel(k: &KernelTimex) -> String {
    let mut modes = Vec::new();
    for (bit, name) in [(STA_PLL, "PLL"), (STA_FLL, "FLL"), (STA_PPSFREQ, "PPS frequency"), (STA_PPSTIME, "PPS time")] {
        if k.status & bit != 0 {
            modes.push(name);
        }
    }
    format!(
        "kernel clock {}, frequency {:+.3} ppm{}",
        if k.status & STA_UNSYNC == 0 { "synchronised" } else { "unsynchronised" },
        k.freq as f64 / 65536.0,
        if modes.is_empty() { String::new() } else { format!(", {} on", modes.join(" and ")) }
    )
}

/// Whether `vmtime sync` may start: refuses when a time daemon runs, or when the kernel's PLL,
/// FLL or PPS discipline is on (vmtime never turns them on, and clears STA_PLL when it runs).
pub fn may_start(procs: &[Process], kernel: &KernelTimex) -> Result<(), Refusal> {
    let kernel_words = describe_kernel(kernel);
    if let Some(rival) = rivals(procs).into_iter().next() {
        return Err(Refusal::Daemon { rival, kernel: kernel_words });
    }
    if kernel.status & (STA_PLL | STA_FLL | STA_PPSFREQ | STA_PPSTIME) != 0 {
        return Err(Refusal::KernelDiscipline { kernel: kernel_words });
    }
    Ok(())
}

/// A change of the kernel's NTP state that `vmtime sync` did not make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interference {
    /// The frequency (2^-16 ppm) or the tick (µs) moved.
    Frequency { expected: (i64, i64), found: (i64, i64) },
    /// Status bits were set or cleared (the bits that changed).
    Status { expected: i32, found: i32 },
    /// TAI − UTC was set.
    Tai { expected: i32, found: i32 },
}

fn bits(b: i32) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (STA_PLL, "STA_PLL"),
        (STA_PPSFREQ, "STA_PPSFREQ"),
        (STA_PPSTIME, "STA_PPSTIME"),
        (STA_FLL, "STA_FLL"),
        (STA_INS, "STA_INS"),
        (STA_DEL, "STA_DEL"),
        (STA_UNSYNC, "STA_UNSYNC"),
        (STA_FREQHOLD, "STA_FREQHOLD"),
    ] {
        if b & bit != 0 {
            v.push(name);
        }
    }
    v.join(", ")
}

impl fmt::Display for Interference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Interference::Frequency { expected, found } => write!(
                f,
                "another process changed the kernel clock's frequency: vmtime sync left it at {:+.3} ppm (tick {}), \
                 it is now {:+.3} ppm (tick {})",
                expected.1 as f64 / 65536.0,
                expected.0,
                found.1 as f64 / 65536.0,
                found.0
            ),
            Interference::Status { expected, found } => {
                let set = found & !expected;
                let cleared = expected & !found;
                write!(f, "another process changed the kernel clock's status:")?;
                if set != 0 {
                    write!(f, " set {}", bits(set))?;
                }
                if cleared != 0 {
                    write!(f, "{} cleared {}", if set != 0 { ";" } else { "" }, bits(cleared))?;
                }
                Ok(())
            }
            Interference::Tai { expected, found } => write!(
                f,
                "another process set the kernel's TAI − UTC offset: vmtime sync left it at {expected} s, it is now {found} s"
            ),
        }
    }
}

/// What the kernel should look like, given what `vmtime sync` did to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expected {
    tick: i64,
    freq: i64,
    status: i32,
    tai: i32,
}

/// Watches the kernel's NTP state for changes `vmtime sync` did not make.
///
/// Feed it every adjtimex read with [`ClockWatch::check`] and every action applied with
/// [`ClockWatch::applied`] (in dry-run mode nothing is applied, so any change is someone else's).
#[derive(Clone, Debug, Default)]
pub struct ClockWatch {
    expected: Option<Expected>,
}

impl ClockWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Compares a fresh read with what the kernel should be; the read becomes the new reference
    /// either way (so one change is reported once).
    pub fn check(&mut self, k: &KernelTimex) -> Result<(), Interference> {
        let found = Expected { tick: k.tick, freq: k.freq, status: k.status, tai: k.tai };
        let Some(exp) = self.expected.replace(found) else { return Ok(()) };
        if (exp.tick, exp.freq) != (found.tick, found.freq) {
            return Err(Interference::Frequency { expected: (exp.tick, exp.freq), found: (found.tick, found.freq) });
        }
        let changed = (exp.status ^ found.status) & WATCHED;
        // STA_UNSYNC: the kernel sets it by itself (maxerror reaching 16 s), but only a process
        // clears it.
        let unsync_cleared = exp.status & STA_UNSYNC != 0 && found.status & STA_UNSYNC == 0;
        if changed != 0 || unsync_cleared {
            let mask = WATCHED | STA_UNSYNC;
            return Err(Interference::Status { expected: exp.status & mask, found: found.status & mask });
        }
        // At an armed leap second the kernel itself moves TAI − UTC by one.
        let leap = (exp.status & STA_INS != 0 && found.tai == exp.tai + 1)
            || (exp.status & STA_DEL != 0 && found.tai == exp.tai - 1);
        if exp.tai != found.tai && !leap {
            return Err(Interference::Tai { expected: exp.tai, found: found.tai });
        }
        Ok(())
    }

    /// Records an action `vmtime sync` has applied to the kernel, as the kernel applies it.
    pub fn applied(&mut self, a: &SyncAction) {
        let Some(e) = self.expected.as_mut() else { return };
        match *a {
            SyncAction::SetFrequency { tick, freq } => {
                e.tick = tick;
                e.freq = freq.clamp(-MAXFREQ_SCALED, MAXFREQ_SCALED);
            }
            // ADJ_TAI: the kernel ignores negative values.
            SyncAction::SetTai(t) if t >= 0 => e.tai = t,
            SyncAction::SetState { insert, delete, synchronized, .. } => {
                // As vmtime_sys::timex::apply writes it: INS/DEL/UNSYNC as asked, PLL cleared.
                let mut s = e.status & !(STA_INS | STA_DEL | STA_UNSYNC | STA_PLL);
                if insert {
                    s |= STA_INS;
                }
                if delete {
                    s |= STA_DEL;
                }
                if !synchronized {
                    s |= STA_UNSYNC;
                }
                e.status = s;
            }
            SyncAction::SetTai(_) | SyncAction::Step { .. } | SyncAction::RunHook => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, comm: &str, cmd: &[&str]) -> Process {
        Process { pid, comm: comm.into(), cmdline: cmd.iter().map(|s| s.to_string()).collect() }
    }

    fn kernel(status: i32, freq: i64) -> KernelTimex {
        KernelTimex { status, freq, tick: 10_000, maxerror_us: 16_000_000, ..Default::default() }
    }

    #[test]
    fn finds_the_daemons_but_not_a_measuring_chronyd() {
        let procs = [
            proc(1, "systemd", &["/sbin/init"]),
            proc(300, "chronyd", &["/usr/sbin/chronyd", "-x", "-f", "/tmp/c.conf"]),
            proc(301, "bash", &["bash"]),
        ];
        assert!(rivals(&procs).is_empty());
        assert_eq!(may_start(&procs, &kernel(STA_UNSYNC, 0)), Ok(()));

        let procs = [proc(412, "chronyd", &["/usr/sbin/chronyd", "-F", "1"]), proc(9, "systemd-timesyn", &[])];
        assert_eq!(
            rivals(&procs),
            vec![Rival { pid: 412, name: "chronyd" }, Rival { pid: 9, name: "systemd-timesyncd" }]
        );
        let e = may_start(&procs, &kernel(0, 3 << 16)).unwrap_err().to_string();
        assert!(e.starts_with("chronyd (pid 412) is running"), "{e}");
        assert!(e.contains("synchronised, frequency +3.000 ppm") && e.contains("--allow-other-daemon"), "{e}");
        // A name that merely contains one is not one.
        assert!(rivals(&[proc(5, "ntpdate-debian", &[])]).is_empty());
        assert_eq!(rivals(&[proc(5, "ntpd", &["ntpd", "-x"])]).len(), 1, "ntpd -x slews: it disciplines");
    }

    #[test]
    fn refuses_on_the_kernels_pll_without_a_known_daemon() {
        let e = may_start(&[], &kernel(STA_PLL, 0)).unwrap_err();
        assert!(matches!(e, Refusal::KernelDiscipline { .. }));
        assert!(e.to_string().contains("PLL on"), "{e}");
        assert_eq!(may_start(&[], &kernel(STA_UNSYNC, 12 << 16)), Ok(()), "a frequency alone is ours from before");
    }

    #[test]
    fn its_own_actions_are_not_interference() {
        let mut w = ClockWatch::new();
        let mut k = kernel(STA_UNSYNC | STA_PLL, 0);
        assert_eq!(w.check(&k), Ok(()));
        for a in [
            SyncAction::SetFrequency { tick: 10_001, freq: 700 << 16 },
            SyncAction::SetTai(37),
            SyncAction::SetState { insert: true, delete: false, synchronized: true, maxerror_us: 5, esterror_us: 1 },
            SyncAction::Step { delta_ns: 5 },
        ] {
            w.applied(&a);
        }
        // As the kernel applies them: the frequency clamped, PLL and UNSYNC cleared, INS set.
        k.tick = 10_001;
        k.freq = 500 << 16;
        k.tai = 37;
        k.status = STA_INS;
        assert_eq!(w.check(&k), Ok(()));
        // A negative TAI is ignored by the kernel, and so here.
        w.applied(&SyncAction::SetTai(-1));
        assert_eq!(w.check(&k), Ok(()));
        // The leap second armed (STA_INS) moves TAI − UTC by one in the kernel.
        k.tai = 38;
        assert_eq!(w.check(&k), Ok(()));
        // The kernel setting STA_UNSYNC by itself (maxerror at 16 s) is not interference.
        k.status |= STA_UNSYNC;
        assert_eq!(w.check(&k), Ok(()));
    }

    #[test]
    fn another_process_is_noticed_once() {
        let mut w = ClockWatch::new();
        let mut k = kernel(STA_UNSYNC, 0);
        w.check(&k).unwrap();
        k.freq = 65536 * 2;
        let e = w.check(&k).unwrap_err();
        assert_eq!(e, Interference::Frequency { expected: (10_000, 0), found: (10_000, 131_072) });
        assert!(e.to_string().contains("left it at +0.000 ppm (tick 10000), it is now +2.000 ppm"), "{e}");
        assert_eq!(w.check(&k), Ok(()), "reported once");

        k.status = STA_PLL;
        let e = w.check(&k).unwrap_err().to_string();
        assert_eq!(e, "another process changed the kernel clock's status: set STA_PLL; cleared STA_UNSYNC");
        k.tai = 37;
        assert!(matches!(w.check(&k), Err(Interference::Tai { expected: 0, found: 37 })));
        k.tai = 38;
        assert!(w.check(&k).is_err(), "no leap armed: +1 is not the kernel's");
        k.status |= STA_INS;
        assert!(w.check(&k).unwrap_err().to_string().ends_with("set STA_INS"));
    }

    #[test]
    fn in_dry_run_every_change_is_someone_elses() {
        // Nothing applied: even the change vmtime would have made is noticed.
        let mut w = ClockWatch::new();
        let mut k = kernel(STA_UNSYNC, 0);
        w.check(&k).unwrap();
        k.status = 0;
        assert!(matches!(w.check(&k), Err(Interference::Status { .. })));
    }
}
