//! The one-shot commands' decisions, sans-IO: `vmtime sync --once` (one step from the page, then
//! exit) and `vmtime waitsync` (is CLOCK_REALTIME inside the page's bounds yet?). For agents,
//! init scripts and microVMs that run no daemon.

use crate::host::kernel_reference;
use crate::sync::{Discipline, SyncAction, SyncConfig, SyncObservation};
use crate::AbaSample;
use vmclock::abi::{self, status};
use vmclock::{Period, Snapshot};

const UNIT: f64 = 18_446_744_073_709_551_616.0; // 2^64

/// Why the page gives nothing to act on (one line, for the exit message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Its clock_status is not one that may be relied upon.
    #[error("its clock_status is {0}, not SYNCHRONIZED or FREERUNNING")]
    Status(&'static str),
    /// No time for this machine's counter (QEMU's and Firecracker's devices today).
    #[error("it carries markers only (no time for this machine's counter)")]
    MarkersOnly,
    /// No maximum error: nothing bounds its time.
    #[error("it gives no maximum error (TIME_MAXERROR_VALID clear)")]
    Unbounded,
    /// A TAI page without a valid TAI offset gives no UTC.
    #[error("it gives no UTC ({0})")]
    NoUtc(String),
    /// The (clock, counter, clock) samples are unusable (the clock was stepped during them).
    #[error("CLOCK_REALTIME went backwards during the samples")]
    Samples,
}

/// Whether a page gives bounded time for the counter `native`: the reason if not.
pub fn usable(page: &Snapshot, native: u8) -> Result<(), Unusable> {
    if !crate::sync::gives_time(page, native) {
        return Err(Unusable::MarkersOnly);
    }
    match page.clock_status() {
        Some(status::SYNCHRONIZED | status::FREERUNNING) => {}
        s => return Err(Unusable::Status(s.map_or("absent", abi::status_name))),
    }
    if page.time_maxerror_ns().is_none() {
        return Err(Unusable::Unbounded);
    }
    Ok(())
}

/// What `vmtime sync --once` does.
#[derive(Clone, Debug, PartialEq)]
pub struct Once {
    /// The actions, in order: a step (when the clock is more than 1 µs off), the TAI offset,
    /// the leap second's arming and the bounds (never a frequency: one observation has no rate,
    /// and a slew left running by a process that exits would never end).
    pub actions: Vec<SyncAction>,
    /// Kernel − page at the observation, ns.
    pub offset_ns: f64,
    /// The page's maximum error there plus the pairing's half-width, ns.
    pub bound_ns: f64,
}

impl Once {
    /// The step's size, if one is taken.
    pub fn step_ns(&self) -> Option<i64> {
        self.actions.iter().find_map(|a| match a {
            SyncAction::Step { delta_ns } => Some(*delta_ns),
            _ => None,
        })
    }
}

/// One observation, as the daemon's first one: a step of any size when the clock is more than
/// 1 µs off (a guest booting with a wrong clock is set), the TAI offset, the leap state and the
/// bounds. `native` is this machine's counter id.
pub fn once(cfg: SyncConfig, obs: &SyncObservation<'_>, native: u8) -> Result<Once, Unusable> {
    usable(&obs.page, native)?;
    let r = obs.page.reference().map_err(|e| Unusable::NoUtc(e.to_string()))?;
    obs.page.utc_at(r.counter_value).map_err(|e| Unusable::NoUtc(e.to_string()))?;
    if kernel_reference(obs.samples, Period { frac: r.period, shift: r.shift }, 0).is_none() {
        return Err(Unusable::Samples);
    }
    let mut d = Discipline::new(SyncConfig { step_updates: cfg.step_updates.max(1), ..cfg });
    let actions: Vec<SyncAction> =
        d.handle_observation(obs).into_iter().filter(|a| !matches!(a, SyncAction::SetFrequency { .. })).collect();
    let st = d.status();
    if st.updates == 0 {
        // Refused by the discipline's own limits (it says why in its notices).
        let why = d.take_notices().first().map_or("refused".to_string(), |n| n.to_string());
        return Err(Unusable::NoUtc(why));
    }
    Ok(Once { actions, offset_ns: st.offset_ns, bound_ns: st.source_maxerror_ns.unwrap_or(0.0) + st.pairing_ns })
}

/// Where CLOCK_REALTIME stands against the page's bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    /// CLOCK_REALTIME − the page's UTC, ns (at one counter value).
    pub offset_ns: f64,
    /// How far CLOCK_REALTIME may be off that and still be inside: the page's maximum error
    /// there + the tolerance − the pairing's half-width, ns.
    pub allowed_ns: f64,
}

impl Standing {
    /// Whether CLOCK_REALTIME lies inside the page's bounds widened by the tolerance.
    pub fn inside(&self) -> bool {
        self.offset_ns.abs() <= self.allowed_ns
    }
}

/// `vmtime waitsync`'s test: whether CLOCK_REALTIME, measured by the (REALTIME, counter,
/// REALTIME) `samples`, lies inside the page's UTC bounds widened by `tolerance_ns`. The
/// whole window of the pairing must fit (its half-width counts against the allowance).
pub fn standing(page: &Snapshot, samples: &[AbaSample], tolerance_ns: u64, native: u8) -> Result<Standing, Unusable> {
    usable(page, native)?;
    let r = page.reference().map_err(|e| Unusable::NoUtc(e.to_string()))?;
    let k = kernel_reference(samples, Period { frac: r.period, shift: r.shift }, 0).ok_or(Unusable::Samples)?;
    let src = page.utc_at(k.counter).map_err(|e| Unusable::NoUtc(e.to_string()))?;
    let max = src.maxerror_ns().ok_or(Unusable::Unbounded)?;
    let offset = k.time - src.time.raw() as i128;
    Ok(Standing {
        offset_ns: offset as f64 * 1e9 / UNIT,
        allowed_ns: max as f64 + tolerance_ns as f64 - k.half as f64 * 1e9 / UNIT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelTimex;
    use vmclock::abi::{counter_id, flags};
    use vmclock::{PageBuilder, Tai, Timestamp};

    const NS: i128 = 1_000_000_000;
    const HZ: u64 = 1 << 30;
    const T: u64 = 1_795_000_000; // UTC s at counter C
    const C: u64 = 1 << 40;

    fn page(maxerror_ns: u64, status: u8) -> Snapshot {
        let b = PageBuilder::new()
            .reference(counter_id::X86_TSC, C, Timestamp::<Tai>::from_parts(T + 37, 0), Period::from_hz(HZ).unwrap())
            .tai_minus_utc(37)
            .status(status)
            .maxerror(maxerror_ns, 0);
        Snapshot::new(b.build(), 4096).unwrap()
    }

    /// Samples of a kernel clock `ahead_ns` ahead of the page, windows of 40 ns around the counter.
    fn samples(ahead_ns: i128) -> Vec<AbaSample> {
        (0..8u64)
            .map(|i| {
                let c = C + i * HZ / 1000; // 1 ms apart
                let t = T as i128 * NS + (i as i128) * 1_000_000 + ahead_ns;
                AbaSample { before_ns: t - 20, counter: c, after_ns: t + 20 }
            })
            .collect()
    }

    fn obs<'a>(page: Snapshot, s: &'a [AbaSample]) -> SyncObservation<'a> {
        SyncObservation {
            page,
            raw: AbaSample { before_ns: 0, counter: C, after_ns: 1 },
            samples: s,
            kernel: KernelTimex { tai: 0, maxerror_us: 16_000_000, esterror_us: 16_000_000, ..Default::default() },
        }
    }

    #[test]
    fn once_steps_sets_tai_and_bounds_and_never_a_frequency() {
        let s = samples(3 * NS);
        let o = once(SyncConfig::default(), &obs(page(1_000, status::SYNCHRONIZED), &s), counter_id::X86_TSC).unwrap();
        // (A window is [before, after + 1 ns): the middle is half a ns later.)
        assert!(o.step_ns().is_some_and(|d| (d + 3_000_000_000).abs() <= 2), "{:?}", o.actions);
        assert!(o.actions.contains(&SyncAction::SetTai(37)), "{:?}", o.actions);
        assert!(o.actions.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: true, .. })));
        assert!(!o.actions.iter().any(|a| matches!(a, SyncAction::SetFrequency { .. })));
        // Within 1 µs: no step, the state all the same.
        let s = samples(300);
        let o = once(SyncConfig::default(), &obs(page(1_000, status::SYNCHRONIZED), &s), counter_id::X86_TSC).unwrap();
        assert_eq!(o.step_ns(), None);
        assert!((o.offset_ns - 300.0).abs() < 30.0, "{}", o.offset_ns);
        // Any size at once: a guest booting years off is set (no step limit applies).
        let s = samples(400 * 86_400 * NS);
        let o = once(SyncConfig::default(), &obs(page(1_000, status::SYNCHRONIZED), &s), counter_id::X86_TSC).unwrap();
        assert!(o.step_ns().is_some_and(|d| (d + 400 * 86_400 * 1_000_000_000).abs() <= 2), "{:?}", o.actions);
    }

    #[test]
    fn once_says_why_a_page_is_not_used() {
        let s = samples(0);
        let e = once(SyncConfig::default(), &obs(page(1_000, status::UNRELIABLE), &s), counter_id::X86_TSC);
        assert_eq!(e.unwrap_err().to_string(), "its clock_status is UNRELIABLE, not SYNCHRONIZED or FREERUNNING");
        let e = once(SyncConfig::default(), &obs(page(1_000, status::SYNCHRONIZED), &s), counter_id::ARM_VCNT);
        assert_eq!(e.unwrap_err(), Unusable::MarkersOnly);
        let unbounded = PageBuilder::new()
            .reference(counter_id::X86_TSC, C, Timestamp::<Tai>::from_parts(T + 37, 0), Period::from_hz(HZ).unwrap())
            .tai_minus_utc(37)
            .status(status::SYNCHRONIZED)
            .flag(flags::TIME_MAXERROR_VALID, false);
        let p = Snapshot::new(unbounded.build(), 4096).unwrap();
        assert_eq!(once(SyncConfig::default(), &obs(p, &s), counter_id::X86_TSC).unwrap_err(), Unusable::Unbounded);
    }

    #[test]
    fn standing_is_inside_only_when_the_whole_window_fits() {
        let p = page(1_000, status::SYNCHRONIZED);
        let x = counter_id::X86_TSC;
        // 500 ns off, bound 1000 ns: inside without tolerance.
        let st = standing(&p, &samples(500), 0, x).unwrap();
        assert!(st.inside(), "{st:?}");
        // 1500 ns off: outside, inside with 600 ns of tolerance, not with 400.
        assert!(!standing(&p, &samples(1_500), 0, x).unwrap().inside());
        assert!(standing(&p, &samples(1_500), 600, x).unwrap().inside());
        assert!(!standing(&p, &samples(1_500), 400, x).unwrap().inside());
        // Behind by as much: the same.
        assert!(!standing(&p, &samples(-1_500), 400, x).unwrap().inside());
        // The pairing's half-width (20 ns) counts: 990 ns off with 1000 ns allowed is outside.
        assert!(!standing(&p, &samples(990), 0, x).unwrap().inside());
        // A page that may not be relied upon is never inside.
        let e = standing(&page(1_000, status::INITIALIZING), &samples(0), 1 << 40, x).unwrap_err();
        assert_eq!(e, Unusable::Status("INITIALIZING"));
    }
}
