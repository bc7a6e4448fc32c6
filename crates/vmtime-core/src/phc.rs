//! Pure PTP hardware clocks (ptp_kvm, vmclock, hyperv, VMware, virtio-rtc, s390) as a time
//! source: reading them (PTP_SYS_OFFSET_PRECISE, else _EXTENDED, else the basic ioctl, in
//! chrony's order), and a servo for a source that gives no rate.
//!
//! The device is behind [`PhcDevice`], so the logic is tested against a fake device; the
//! ioctls live in `vmtime-sys`.

use crate::sync::{tick_freq, SyncAction};
use serde::Serialize;
use std::io;

/// One (system, PHC, system) reading, ns since each clock's epoch. A cross-timestamp
/// (PRECISE) has `sys_before_ns == sys_after_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PhcTriple {
    /// CLOCK_REALTIME before the PHC read.
    pub sys_before_ns: i128,
    /// The PHC.
    pub phc_ns: i128,
    /// CLOCK_REALTIME after.
    pub sys_after_ns: i128,
}

impl PhcTriple {
    /// PHC − the system clock at the middle of the window, ns.
    pub fn offset_ns(&self) -> f64 {
        (self.phc_ns - self.sys_before_ns) as f64 - (self.sys_after_ns - self.sys_before_ns) as f64 / 2.0
    }
    /// The window, ns.
    pub fn delay_ns(&self) -> i128 {
        self.sys_after_ns - self.sys_before_ns
    }
}

/// How a PHC is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Method {
    /// PTP_SYS_OFFSET_PRECISE: a cross-timestamp by the device.
    Precise,
    /// PTP_SYS_OFFSET_EXTENDED: (sys, phc, sys) triples taken in the driver.
    Extended,
    /// PTP_SYS_OFFSET: interleaved sys/phc readings.
    Basic,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Precise => "precise",
            Method::Extended => "extended",
            Method::Basic => "basic",
        })
    }
}

/// What PTP_CLOCK_GETCAPS reports (the fields vmtime uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhcCaps {
    /// Maximum frequency adjustment, ppb.
    pub max_adj: i32,
    /// Programmable pins.
    pub n_pins: i32,
    /// Whether the device supports cross-timestamps (PRECISE).
    pub cross_timestamping: bool,
}

/// A PTP clock device.
pub trait PhcDevice {
    /// PTP_CLOCK_GETCAPS.
    fn caps(&mut self) -> io::Result<PhcCaps>;
    /// PTP_SYS_OFFSET_PRECISE.
    fn precise(&mut self) -> io::Result<PhcTriple>;
    /// PTP_SYS_OFFSET_EXTENDED with `n` samples (at most 25).
    fn extended(&mut self, n: usize) -> io::Result<Vec<PhcTriple>>;
    /// PTP_SYS_OFFSET with `n` samples (at most 25).
    fn basic(&mut self, n: usize) -> io::Result<Vec<PhcTriple>>;
}

/// One measurement: the readings of one method, and the offset they give.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhcMeasurement {
    /// The method used.
    pub method: Method,
    /// PHC − CLOCK_REALTIME, ns: the mean over the readings whose window is within 1.5× the
    /// shortest (a cross-timestamp has one reading).
    pub offset_ns: f64,
    /// The shortest window, ns (0 for a cross-timestamp).
    pub delay_ns: i128,
    /// Readings taken and kept.
    pub readings: usize,
    /// Readings kept for the mean.
    pub kept: usize,
    /// The system time of the measurement (middle of the best window), ns.
    pub sys_ns: i128,
}

fn summarise(method: Method, triples: &[PhcTriple]) -> Option<PhcMeasurement> {
    let best = triples.iter().min_by_key(|t| t.delay_ns())?;
    let limit = best.delay_ns() + best.delay_ns() / 2 + 1;
    let kept: Vec<&PhcTriple> = triples.iter().filter(|t| t.delay_ns() <= limit).collect();
    let offset_ns = kept.iter().map(|t| t.offset_ns()).sum::<f64>() / kept.len() as f64;
    Some(PhcMeasurement {
        method,
        offset_ns,
        delay_ns: best.delay_ns(),
        readings: triples.len(),
        kept: kept.len(),
        sys_ns: best.sys_before_ns + best.delay_ns() / 2,
    })
}

/// Reads with one method.
pub fn read_with(dev: &mut dyn PhcDevice, method: Method, n: usize) -> io::Result<PhcMeasurement> {
    let triples = match method {
        Method::Precise => (0..n.max(1)).map(|_| dev.precise()).collect::<io::Result<Vec<_>>>()?,
        Method::Extended => dev.extended(n.clamp(1, 25))?,
        Method::Basic => dev.basic(n.clamp(1, 25))?,
    };
    summarise(method, &triples)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the device returned no readings"))
}

/// The methods that failed, with their errors.
pub type Failures = Vec<(Method, String)>;

/// Reads with the best method that works: PRECISE, else EXTENDED, else basic (chrony's and
/// phc_ctl's order). Returns the errors of the methods that failed too.
pub fn read_best(dev: &mut dyn PhcDevice, n: usize) -> Result<(PhcMeasurement, Failures), Failures> {
    let mut failed = Vec::new();
    for m in [Method::Precise, Method::Extended, Method::Basic] {
        match read_with(dev, m, n) {
            Ok(r) => return Ok((r, failed)),
            Err(e) => failed.push((m, e.to_string())),
        }
    }
    Err(failed)
}

/// The timescale a PHC keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PhcTimescale {
    /// UTC (as CLOCK_REALTIME).
    Utc,
    /// TAI.
    Tai,
}

impl std::fmt::Display for PhcTimescale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PhcTimescale::Utc => "UTC",
            PhcTimescale::Tai => "TAI",
        })
    }
}

/// Whether a `clock_name` marks a pure time source (not a NIC's PTP clock), and the timescale
/// its driver has kept in every version (`None`: unknown or version-dependent, so it is decided
/// from facts on the machine, see [`decide_timescale`], never guessed from the name).
pub fn pure_source(clock_name: &str) -> Option<Option<PhcTimescale>> {
    let n = clock_name.trim();
    match n {
        // ptp_kvm reads the host's CLOCK_REALTIME, in every version.
        "KVM virtual PTP" => Some(Some(PhcTimescale::Utc)),
        "ptp_vmw" | "hyperv" | "VMclock" | "s390 STCKE Clock" | "s390 Physical Clock" => Some(None),
        // ptp_vmclock names its clock after its device ("vmclockN"); it returns UTC in Linux
        // 6.13–6.19 and TAI after "ptp: ptp_vmclock: return TAI not UTC": version-dependent.
        n if n.starts_with("vmclock") => Some(None),
        n if n.starts_with("Virtio PTP") => Some(None),
        _ => None,
    }
}

/// The `/dev/vmclockN` whose driver registered a PTP clock named `clock_name` ("vmclockN"), as
/// the device's index.
pub fn vmclock_index(clock_name: &str) -> Option<u32> {
    clock_name.trim().strip_prefix("vmclock")?.parse().ok()
}

/// A PHC reading against the matching vmclock page, at the same instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PageComparison {
    /// PHC − the page's time (in the page's `time_type`), ns.
    pub phc_minus_page_ns: f64,
    /// The page's `time_type` (`vmclock::abi::time_type`).
    pub page_time_type: u8,
    /// TAI − UTC from the page or the kernel, when known.
    pub tai_minus_utc: Option<i16>,
}

/// What the machine says about a PHC's timescale.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimescaleFacts {
    /// The PTP timescale attribute, where the kernel has one.
    pub attribute: Option<PhcTimescale>,
    /// The PHC compared with its vmclock page.
    pub page: Option<PageComparison>,
    /// A driver whose timescale never changed between versions ([`pure_source`]).
    pub driver: Option<PhcTimescale>,
    /// `--phc-timescale`.
    pub configured: Option<PhcTimescale>,
}

/// Why a timescale could not be decided.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum TimescaleError {
    /// Nothing on the machine says, and nothing was configured.
    #[error("its timescale cannot be told from this machine (no timescale attribute, no vmclock page with time to compare with); give --phc-timescale utc|tai")]
    Unknown,
    /// The PHC matches neither the page's UTC nor its TAI.
    #[error("it reads {0:+.3} s from its vmclock page, which is neither the page's UTC nor its TAI; give --phc-timescale utc|tai if you know better")]
    Inconsistent(f64),
}

/// How far a PHC may be from a timescale and still be judged on it: half a second (TAI − UTC is
/// whole seconds, ≥ 10 s).
const MATCH_NS: f64 = 500_000_000.0;

/// The PHC's timescale, and what decided it: the kernel's timescale attribute, else the PHC
/// compared with its vmclock page (its `time_type`, and TAI − UTC), else a driver whose
/// timescale never changed, else the configured one. Facts win over the configuration (the
/// caller warns when they disagree).
pub fn decide_timescale(f: &TimescaleFacts) -> Result<(PhcTimescale, &'static str), TimescaleError> {
    if let Some(t) = f.attribute {
        return Ok((t, "the kernel's PTP timescale attribute"));
    }
    if let Some(p) = f.page {
        let page = if p.page_time_type == vmclock::abi::time_type::TAI { PhcTimescale::Tai } else { PhcTimescale::Utc };
        let other = if page == PhcTimescale::Tai { PhcTimescale::Utc } else { PhcTimescale::Tai };
        if p.phc_minus_page_ns.abs() < MATCH_NS {
            return Ok((page, "a reading against its vmclock page"));
        }
        if let Some(o) = p.tai_minus_utc {
            // A UTC PHC reads TAI − UTC behind a TAI page; a TAI PHC that far ahead of a UTC page.
            let want = if page == PhcTimescale::Tai { -(o as f64) } else { o as f64 } * 1e9;
            if (p.phc_minus_page_ns - want).abs() < MATCH_NS {
                return Ok((other, "a reading against its vmclock page"));
            }
        }
        if f.configured.is_none() && f.driver.is_none() {
            return Err(TimescaleError::Inconsistent(p.phc_minus_page_ns / 1e9));
        }
    }
    if let Some(t) = f.driver {
        return Ok((t, "its driver"));
    }
    f.configured.map(|t| (t, "--phc-timescale")).ok_or(TimescaleError::Unknown)
}

/// What the source says beside the PHC, each interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhcSourceState {
    /// The source may be relied upon as synchronised (no page, or a SYNCHRONIZED page); a
    /// FREERUNNING page is followed with STA_UNSYNC kept.
    pub synchronized: bool,
    /// The source cannot be used now (an UNRELIABLE page): holdover.
    pub unreliable: bool,
    /// TAI − UTC from the kernel (adjtimex) or the page, to read a TAI PHC.
    pub tai_minus_utc: Option<i16>,
}

impl PhcSourceState {
    /// The state from the PHC's own vmclock page (if it has one), the kernel's TAI offset
    /// (adjtimex, 0 when unset) and a configured TAI − UTC, in that order for the offset. Without
    /// a page the source is taken as synchronised (ptp_kvm says nothing more).
    pub fn from_facts(page: Option<&vmclock::Snapshot>, kernel_tai: i32, configured: Option<i16>) -> Self {
        use vmclock::abi::status::{SYNCHRONIZED, UNRELIABLE};
        let st = page.and_then(|p| p.clock_status());
        PhcSourceState {
            synchronized: page.is_none() || st == Some(SYNCHRONIZED),
            unreliable: st == Some(UNRELIABLE),
            tai_minus_utc: page
                .and_then(|p| p.tai_minus_utc())
                .or((kernel_tai > 0).then_some(kernel_tai as i16))
                .or(configured),
        }
    }
}

impl Default for PhcSourceState {
    fn default() -> Self {
        PhcSourceState { synchronized: true, unreliable: false, tai_minus_utc: None }
    }
}

/// Settings of the PHC servo.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhcServoConfig {
    /// Phase time constant, s: the phase error is slewed out over about this long.
    pub tau_s: f64,
    /// Step when the first measurement is off by more than this, ns.
    pub step_threshold_ns: f64,
    /// The PHC's timescale.
    pub timescale: PhcTimescale,
}

impl Default for PhcServoConfig {
    fn default() -> Self {
        PhcServoConfig { tau_s: 8.0, step_threshold_ns: 1_000_000.0, timescale: PhcTimescale::Utc }
    }
}

/// A PI servo for a source without rate information: the phase error is slewed out over
/// `tau`, and its integral (over 4·tau) becomes the frequency.
#[derive(Debug)]
pub struct PhcServo {
    cfg: PhcServoConfig,
    freq_ppb: Option<f64>,
    updates: u64,
    /// |offset| smoothed, ns (for the error bound).
    jitter_ns: f64,
    /// The last offset (kernel − source), ns.
    pub last_offset_ns: f64,
    source: PhcSourceState,
    holdover: bool,
}

impl PhcServo {
    /// A servo.
    pub fn new(cfg: PhcServoConfig) -> Self {
        PhcServo {
            cfg,
            freq_ppb: None,
            updates: 0,
            jitter_ns: 0.0,
            last_offset_ns: 0.0,
            source: PhcSourceState::default(),
            holdover: false,
        }
    }

    /// The frequency the servo holds, ppb against RAW.
    pub fn frequency_ppb(&self) -> Option<f64> {
        self.freq_ppb
    }

    /// What the source says now (status, TAI − UTC); measurements are judged with it.
    pub fn set_source(&mut self, s: PhcSourceState) {
        self.source = s;
    }

    /// Whether the servo is in holdover.
    pub fn in_holdover(&self) -> bool {
        self.holdover
    }

    /// The counter's calibration was broken (the page's disruption marker changed): the next
    /// measurement may step at once.
    pub fn disrupted(&mut self) {
        self.updates = 0;
    }

    /// No usable measurement (every reading method failed, the source is UNRELIABLE, or a TAI
    /// PHC without a known TAI − UTC): holdover. The frequency is kept without the phase slew,
    /// and STA_UNSYNC is set once; the kernel's maxerror is left to grow from where it is.
    pub fn handle_failure(&mut self, maxerror_us: i64, esterror_us: i64) -> Vec<SyncAction> {
        if self.holdover {
            return Vec::new();
        }
        self.holdover = true;
        let mut out = Vec::new();
        if let Some(f) = self.freq_ppb {
            let (tick, freq) = tick_freq(f);
            out.push(SyncAction::SetFrequency { tick, freq });
        }
        out.push(SyncAction::SetState { insert: false, delete: false, synchronized: false, maxerror_us, esterror_us });
        out
    }

    /// One measurement (PHC − CLOCK_REALTIME, in the PHC's timescale) and the kernel's
    /// current (tick, freq, maxerror, esterror: see [`PhcServo::handle_failure`]), every
    /// `interval_s`.
    pub fn handle_measurement(&mut self, m: &PhcMeasurement, tick: i64, freq: i64, interval_s: f64) -> Vec<SyncAction> {
        let to_utc = match (self.cfg.timescale, self.source.tai_minus_utc) {
            (PhcTimescale::Utc, _) => 0.0,
            (PhcTimescale::Tai, Some(o)) => o as f64 * 1e9,
            // TAI without TAI − UTC: no UTC to give the kernel.
            (PhcTimescale::Tai, None) => return self.handle_failure(16_000_000, 16_000_000),
        };
        if self.source.unreliable {
            return self.handle_failure(16_000_000, 16_000_000);
        }
        self.holdover = false;
        let offset = -(m.offset_ns - to_utc); // kernel − source
        self.last_offset_ns = offset;
        let mut out = Vec::new();
        let f = *self.freq_ppb.get_or_insert((tick - 10_000) as f64 * 100_000.0 + freq as f64 / 65.536);
        if self.updates == 0 && offset.abs() > self.cfg.step_threshold_ns.min(1_000.0).max(m.delay_ns as f64) {
            out.push(SyncAction::Step { delta_ns: (-offset).round() as i64 });
            self.updates += 1;
            return out;
        }
        // PI: the phase slewed out over tau (a rate, for one interval), the integral into the
        // frequency (time constant 4·tau: critically damped).
        let slew = -offset / self.cfg.tau_s;
        let f = f - offset * interval_s / (4.0 * self.cfg.tau_s * self.cfg.tau_s);
        self.freq_ppb = Some(f);
        let (tick, freq) = tick_freq(f + slew);
        out.push(SyncAction::SetFrequency { tick, freq });
        self.jitter_ns += (offset.abs() - self.jitter_ns) / 8.0;
        let bound_us = ((offset.abs() + 3.0 * self.jitter_ns + m.delay_ns as f64 / 2.0) / 1000.0).ceil() as i64 + 1;
        out.push(SyncAction::SetState {
            insert: false,
            delete: false,
            synchronized: self.source.synchronized,
            maxerror_us: bound_us,
            esterror_us: (self.jitter_ns / 1000.0).ceil() as i64,
        });
        self.updates += 1;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake device: offset +500 ns, windows of 300 ns, optional missing methods.
    struct Fake {
        precise: bool,
        extended: bool,
        t: i128,
    }

    impl PhcDevice for Fake {
        fn caps(&mut self) -> io::Result<PhcCaps> {
            Ok(PhcCaps { max_adj: 0, n_pins: 0, cross_timestamping: self.precise })
        }
        fn precise(&mut self) -> io::Result<PhcTriple> {
            if !self.precise {
                return Err(io::Error::from_raw_os_error(95)); // EOPNOTSUPP
            }
            self.t += 1000;
            Ok(PhcTriple { sys_before_ns: self.t, phc_ns: self.t + 500, sys_after_ns: self.t })
        }
        fn extended(&mut self, n: usize) -> io::Result<Vec<PhcTriple>> {
            if !self.extended {
                return Err(io::Error::from_raw_os_error(25)); // ENOTTY: an old kernel
            }
            self.basic(n)
        }
        fn basic(&mut self, n: usize) -> io::Result<Vec<PhcTriple>> {
            Ok((0..n)
                .map(|i| {
                    self.t += 1000;
                    // Every fifth reading was preempted: a 5 µs window, off-centre.
                    let w = if i % 5 == 4 { 5_000 } else { 300 };
                    PhcTriple {
                        sys_before_ns: self.t,
                        phc_ns: self.t + w / 2 + 500 + if w > 300 { 2_000 } else { 0 },
                        sys_after_ns: self.t + w,
                    }
                })
                .collect())
        }
    }

    #[test]
    fn methods_fall_back_in_chronys_order() {
        let mut d = Fake { precise: true, extended: true, t: 0 };
        let (m, failed) = read_best(&mut d, 10).unwrap();
        assert_eq!((m.method, m.offset_ns, failed.len()), (Method::Precise, 500.0, 0));
        let mut d = Fake { precise: false, extended: true, t: 0 };
        let (m, failed) = read_best(&mut d, 10).unwrap();
        assert_eq!(m.method, Method::Extended);
        assert_eq!(failed[0].0, Method::Precise);
        // The preempted readings are left out of the mean.
        assert_eq!((m.offset_ns, m.delay_ns, m.readings, m.kept), (500.0, 300, 10, 8));
        let mut d = Fake { precise: false, extended: false, t: 0 };
        let (m, failed) = read_best(&mut d, 25).unwrap();
        assert_eq!((m.method, failed.len()), (Method::Basic, 2));
    }

    fn tai_page(d_s: f64) -> TimescaleFacts {
        TimescaleFacts {
            page: Some(PageComparison {
                phc_minus_page_ns: d_s * 1e9,
                page_time_type: vmclock::abi::time_type::TAI,
                tai_minus_utc: Some(37),
            }),
            ..TimescaleFacts::default()
        }
    }

    #[test]
    fn the_timescale_is_decided_from_facts() {
        // ptp_vmclock's name says nothing: 6.13–6.19 return UTC, newer kernels TAI.
        assert_eq!(pure_source("vmclock0"), Some(None));
        assert_eq!(vmclock_index("vmclock3"), Some(3));
        assert_eq!(decide_timescale(&TimescaleFacts::default()), Err(TimescaleError::Unknown));
        // A TAI page: a PHC reading it (new driver) or 37 s behind it (old driver, UTC).
        assert_eq!(decide_timescale(&tai_page(0.000_002)).unwrap().0, PhcTimescale::Tai);
        assert_eq!(decide_timescale(&tai_page(-37.000_002)).unwrap().0, PhcTimescale::Utc);
        // A UTC page with TAI − UTC = 37: a TAI PHC reads 37 s ahead of it.
        let utc_page = |d: f64| TimescaleFacts {
            page: Some(PageComparison {
                phc_minus_page_ns: d * 1e9,
                page_time_type: vmclock::abi::time_type::UTC,
                tai_minus_utc: Some(37),
            }),
            ..TimescaleFacts::default()
        };
        assert_eq!(decide_timescale(&utc_page(37.0)).unwrap().0, PhcTimescale::Tai);
        assert_eq!(decide_timescale(&utc_page(0.0)).unwrap().0, PhcTimescale::Utc);
        // Neither: said plainly, unless configured.
        assert!(matches!(decide_timescale(&utc_page(5.0)), Err(TimescaleError::Inconsistent(_))));
        let f = TimescaleFacts { configured: Some(PhcTimescale::Utc), ..utc_page(5.0) };
        assert_eq!(decide_timescale(&f).unwrap(), (PhcTimescale::Utc, "--phc-timescale"));
        // Facts beat the configuration; the attribute beats the page.
        let f = TimescaleFacts { configured: Some(PhcTimescale::Utc), ..tai_page(0.0) };
        assert_eq!(decide_timescale(&f).unwrap().0, PhcTimescale::Tai);
        let f = TimescaleFacts { attribute: Some(PhcTimescale::Utc), ..tai_page(0.0) };
        assert_eq!(decide_timescale(&f).unwrap().0, PhcTimescale::Utc);
        // ptp_kvm has read UTC in every version.
        let f = TimescaleFacts { driver: pure_source("KVM virtual PTP").flatten(), ..TimescaleFacts::default() };
        assert_eq!(decide_timescale(&f).unwrap().0, PhcTimescale::Utc);
    }

    fn measurement(offset_ns: f64) -> PhcMeasurement {
        PhcMeasurement { method: Method::Precise, offset_ns, delay_ns: 0, readings: 1, kept: 1, sys_ns: 0 }
    }

    #[test]
    fn the_servo_honours_the_source() {
        let mut s = PhcServo::new(PhcServoConfig { timescale: PhcTimescale::Tai, ..PhcServoConfig::default() });
        // TAI − UTC from the kernel or page (here 37): a TAI PHC 37 s ahead is on time.
        s.set_source(PhcSourceState { tai_minus_utc: Some(37), ..PhcSourceState::default() });
        let a = s.handle_measurement(&measurement(37e9 + 100.0), 10_000, 0, 1.0);
        assert!(a.iter().all(|a| !matches!(a, SyncAction::Step { .. })), "{a:?}");
        assert!((s.last_offset_ns + 100.0).abs() < 1e-6, "{}", s.last_offset_ns);
        assert!(a.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: true, .. })), "{a:?}");
        // A different offset from the source is used, not a constant 37.
        s.set_source(PhcSourceState { tai_minus_utc: Some(38), ..PhcSourceState::default() });
        s.handle_measurement(&measurement(38e9), 10_000, 0, 1.0);
        assert!(s.last_offset_ns.abs() < 1.0, "{}", s.last_offset_ns);
        // UNRELIABLE: holdover, STA_UNSYNC once.
        s.set_source(PhcSourceState { unreliable: true, tai_minus_utc: Some(38), ..PhcSourceState::default() });
        let a = s.handle_measurement(&measurement(38e9), 10_000, 0, 1.0);
        assert!(s.in_holdover());
        assert!(a.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: false, .. })), "{a:?}");
        assert!(s.handle_measurement(&measurement(38e9), 10_000, 0, 1.0).is_empty(), "once");
        // A TAI PHC without TAI − UTC cannot give UTC: holdover.
        let mut s = PhcServo::new(PhcServoConfig { timescale: PhcTimescale::Tai, ..PhcServoConfig::default() });
        let a = s.handle_measurement(&measurement(37e9), 10_000, 0, 1.0);
        assert!(a.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: false, .. })), "{a:?}");
        // Failing reads: holdover; a FREERUNNING source keeps STA_UNSYNC.
        let mut s = PhcServo::new(PhcServoConfig::default());
        assert!(!s.handle_measurement(&measurement(0.0), 10_000, 0, 1.0).is_empty());
        let a = s.handle_failure(5, 1);
        assert!(a.contains(&SyncAction::SetState {
            insert: false,
            delete: false,
            synchronized: false,
            maxerror_us: 5,
            esterror_us: 1
        }));
        s.set_source(PhcSourceState { synchronized: false, ..PhcSourceState::default() });
        let a = s.handle_measurement(&measurement(0.0), 10_000, 0, 1.0);
        assert!(!s.in_holdover());
        assert!(a.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: false, .. })), "{a:?}");
    }

    #[test]
    fn the_source_state_comes_from_the_page_then_the_kernel() {
        use vmclock::abi::status;
        let page = |st: u8, tai: Option<i16>| {
            let mut b = vmclock::PageBuilder::new().status(st);
            if let Some(t) = tai {
                b = b.tai_minus_utc(t);
            }
            vmclock::Snapshot::new(b.build(), 4096).unwrap()
        };
        let s = PhcSourceState::from_facts(Some(&page(status::UNRELIABLE, Some(37))), 0, None);
        assert_eq!(s, PhcSourceState { synchronized: false, unreliable: true, tai_minus_utc: Some(37) });
        let s = PhcSourceState::from_facts(Some(&page(status::FREERUNNING, None)), 37, Some(36));
        assert_eq!(s, PhcSourceState { synchronized: false, unreliable: false, tai_minus_utc: Some(37) });
        let s = PhcSourceState::from_facts(Some(&page(status::SYNCHRONIZED, Some(38))), 37, None);
        assert_eq!(s, PhcSourceState { synchronized: true, unreliable: false, tai_minus_utc: Some(38) });
        // No page (ptp_kvm), no kernel offset: the configured one, else none (no built-in 37).
        assert_eq!(PhcSourceState::from_facts(None, 0, Some(37)).tai_minus_utc, Some(37));
        assert_eq!(PhcSourceState::from_facts(None, 0, None), PhcSourceState::default());
    }

    #[test]
    fn a_disruption_steps_at_once() {
        let mut s = PhcServo::new(PhcServoConfig::default());
        for _ in 0..5 {
            let _ = s.handle_measurement(&measurement(0.0), 10_000, 0, 1.0);
        }
        // 5 ms off after a restore: slewed normally, stepped after a disruption.
        let a = s.handle_measurement(&measurement(5e6), 10_000, 0, 1.0);
        assert!(!a.iter().any(|a| matches!(a, SyncAction::Step { .. })), "{a:?}");
        s.disrupted();
        let a = s.handle_measurement(&measurement(5e6), 10_000, 0, 1.0);
        assert_eq!(a, vec![SyncAction::Step { delta_ns: 5_000_000 }]);
    }

    #[test]
    fn timescales_are_known_or_must_be_configured() {
        assert_eq!(pure_source("KVM virtual PTP"), Some(Some(PhcTimescale::Utc)));
        assert_eq!(pure_source("Virtio PTP type 0/variant 0"), Some(None));
        assert_eq!(pure_source("hyperv"), Some(None));
        assert_eq!(pure_source("igb"), None, "a NIC's clock is not a pure time source");
    }
}
