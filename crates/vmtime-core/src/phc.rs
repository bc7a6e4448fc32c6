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
/// its driver is known to keep (`None`: unknown, so it must be configured, never guessed).
pub fn pure_source(clock_name: &str) -> Option<Option<PhcTimescale>> {
    let n = clock_name.trim();
    match n {
        // ptp_kvm reads the host's CLOCK_REALTIME.
        "KVM virtual PTP" => Some(Some(PhcTimescale::Utc)),
        "ptp_vmw" | "hyperv" | "VMclock" | "s390 STCKE Clock" | "s390 Physical Clock" => Some(None),
        // ptp_vmclock names its clock after its device ("vmclock0", Linux 7.3) and reads TAI:
        // the lab measured PHC − CLOCK_REALTIME = +37 s on a page with TAI − UTC = 37.
        n if n.starts_with("vmclock") => Some(Some(PhcTimescale::Tai)),
        n if n.starts_with("Virtio PTP") => Some(None),
        _ => None,
    }
}

/// Settings of the PHC servo.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhcServoConfig {
    /// Phase time constant, s: the phase error is slewed out over about this long.
    pub tau_s: f64,
    /// Step when the first measurement is off by more than this, ns.
    pub step_threshold_ns: f64,
    /// TAI − UTC (positive: 37), to read a TAI PHC.
    pub tai_minus_utc: i16,
    /// The PHC's timescale.
    pub timescale: PhcTimescale,
}

impl Default for PhcServoConfig {
    fn default() -> Self {
        PhcServoConfig { tau_s: 8.0, step_threshold_ns: 1_000_000.0, tai_minus_utc: 37, timescale: PhcTimescale::Utc }
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
}

impl PhcServo {
    /// A servo.
    pub fn new(cfg: PhcServoConfig) -> Self {
        PhcServo { cfg, freq_ppb: None, updates: 0, jitter_ns: 0.0, last_offset_ns: 0.0 }
    }

    /// The frequency the servo holds, ppb against RAW.
    pub fn frequency_ppb(&self) -> Option<f64> {
        self.freq_ppb
    }

    /// One measurement (PHC − CLOCK_REALTIME, in the PHC's timescale) and the kernel's
    /// current (tick, freq), every `interval_s`.
    pub fn handle_measurement(&mut self, m: &PhcMeasurement, tick: i64, freq: i64, interval_s: f64) -> Vec<SyncAction> {
        let to_utc = match self.cfg.timescale {
            PhcTimescale::Utc => 0.0,
            PhcTimescale::Tai => self.cfg.tai_minus_utc as f64 * 1e9,
        };
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
            synchronized: true,
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

    #[test]
    fn timescales_are_known_or_must_be_configured() {
        assert_eq!(pure_source("KVM virtual PTP"), Some(Some(PhcTimescale::Utc)));
        assert_eq!(pure_source("Virtio PTP type 0/variant 0"), Some(None));
        assert_eq!(pure_source("hyperv"), Some(None));
        assert_eq!(pure_source("igb"), None, "a NIC's clock is not a pure time source");
    }
}
