//! `vmtime gen PAGE`: writes a valid page for a counter/time relation. By default it pairs this
//! machine's CLOCK_REALTIME with its counter, with the counter's rate calibrated against
//! CLOCK_REALTIME; every field can be given instead.

use crate::tai::{self, Found};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vmclock::abi::{self, flags};
use vmclock::{PageBuilder, Period, Tai, Timestamp, Utc};
use vmtime_sys::clock::tightest;
use vmtime_sys::ClockId;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Where to write the page (replaced atomically, mode 0444).
    page: PathBuf,
    /// The counter's frequency in Hz (default: calibrated against CLOCK_REALTIME).
    #[arg(long)]
    counter_hz: Option<CounterHz>,
    /// Calibration time, ms.
    #[arg(long, default_value = "200")]
    calibrate_ms: CalibrateMs,
    /// The reference counter value (with --time-ns; default: a fresh reading).
    #[arg(long, requires = "time_ns")]
    counter: Option<AnyU64>,
    /// The reference time in the page's timescale, ns since its epoch (with --counter).
    #[arg(long, requires = "counter")]
    time_ns: Option<AnyU64>,
    /// The page's timescale.
    #[arg(long, value_enum, default_value_t = TimeType::Tai)]
    time_type: TimeType,
    /// TAI − UTC in s, positive (37 in 2026); the page stores its negation, UTC − TAI, as the
    /// driver and spec v1.1 read it (default: the kernel's, else the system leap-second list).
    #[arg(long)]
    tai_offset: Option<TaiUtcS>,
    /// clock_status.
    #[arg(long, value_enum, default_value_t = Status::Synchronized)]
    status: Status,
    /// Maximum error of the time, ns (sets TIME_MAXERROR_VALID and PERIOD_MAXERROR_VALID).
    #[arg(long)]
    maxerror_ns: Option<AnyU64>,
    /// Maximum error of the period, parts per billion (with --maxerror-ns).
    #[arg(long, default_value = "0")]
    period_maxerror_ppb: PeriodPpb,
    /// Estimated error of the time, ns (sets the ESTERROR flags).
    #[arg(long)]
    esterror_ns: Option<AnyU64>,
    /// disruption_marker.
    #[arg(long, default_value = "0")]
    disruption_marker: AnyU64,
    /// vm_generation_counter (sets VM_GEN_COUNTER_PRESENT).
    #[arg(long)]
    vm_generation: Option<AnyU64>,
    /// leap_indicator.
    #[arg(long, value_enum, default_value_t = Leap::None)]
    leap: Leap,
    /// The `size` field.
    #[arg(long, default_value = "4096")]
    size: PageSize,
    /// The counter id (default: this CPU's).
    #[arg(long)]
    counter_id: Option<CounterIdByte>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TimeType {
    Tai,
    Utc,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Status {
    Unknown,
    Initializing,
    Synchronized,
    Freerunning,
    Unreliable,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Leap {
    None,
    PrePos,
    PreNeg,
    Pos,
    PostPos,
    PostNeg,
}

/// Calibrates the counter against CLOCK_REALTIME: two tightest (clock, counter, clock) samples
/// `ms` apart. Returns the period and the later sample as the reference (midpoint, counter).
fn calibrate(ms: u64) -> Result<(Period, u64, i128)> {
    let a = tightest(ClockId::Realtime, 64)?;
    std::thread::sleep(Duration::from_millis(ms.max(1)));
    let b = tightest(ClockId::Realtime, 64)?;
    let dns = (b.mid_ns() - a.mid_ns()) as u128;
    let dc = b.counter.wrapping_sub(a.counter) as u128;
    if dc == 0 || dns == 0 {
        bail!("the counter or the clock did not advance during calibration");
    }
    let period = Period::from_ratio(dns, dc * 1_000_000_000).context("counter period out of range")?;
    Ok((period, b.counter, b.mid_ns()))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let (period, counter, realtime_ns) =
        match (a.counter_hz.map(CounterHz::get), a.counter.map(AnyU64::get), a.time_ns.map(AnyU64::get)) {
            (Some(hz), Some(c), Some(t)) => {
                (Period::from_hz(hz).context("--counter-hz must be at least 2")?, c, t as i128)
            }
            (hz, None, None) => {
                let (p, c, t) = calibrate(a.calibrate_ms.get())?;
                let p = match hz {
                    Some(hz) => Period::from_hz(hz).context("--counter-hz must be at least 2")?,
                    None => p,
                };
                (p, c, t)
            }
            (None, Some(_), Some(_)) => bail!("--counter and --time-ns need --counter-hz"),
            _ => bail!("give both --counter and --time-ns, or neither"),
        };
    let explicit_time = a.time_ns.is_some();
    let tai = match a.tai_offset.map(TaiUtcS::get) {
        Some(o) => Some(o),
        None => {
            let kernel_tai = vmtime_sys::read_timex()?.tai;
            match tai::find(
                kernel_tai,
                std::path::Path::new(tai::LEAP_SECONDS_LIST),
                (realtime_ns / 1_000_000_000) as i64,
            ) {
                Found::Known { offset, source } => {
                    eprintln!("TAI − UTC = {offset} s, from {source}");
                    Some(offset)
                }
                Found::Stale { offset, why } => {
                    eprintln!("warning: {why}; using {offset} s (pass --tai-offset to state it)");
                    Some(offset)
                }
                Found::Unknown { why } => {
                    eprintln!("note: TAI offset unknown: {why}");
                    None
                }
            }
        }
    };
    let id = a.counter_id.map_or(vmclock::counter::NATIVE, CounterIdByte::get);
    let mut b = PageBuilder::new().size(a.size.get());
    b = match a.time_type {
        TimeType::Tai => {
            let ns = if explicit_time {
                realtime_ns
            } else {
                let off = tai.context("a TAI page needs TAI − UTC: pass --tai-offset, or --time-type utc")?;
                realtime_ns + off as i128 * 1_000_000_000
            };
            b.reference(id, counter, Timestamp::<Tai>::from_nanos(ns as u128), period)
        }
        TimeType::Utc => b.reference(id, counter, Timestamp::<Utc>::from_nanos(realtime_ns as u128), period),
    };
    if let Some(o) = tai {
        b = b.tai_minus_utc(o);
    }
    if let Some(ns) = a.maxerror_ns.map(AnyU64::get) {
        let rate = (a.period_maxerror_ppb.get() * 1e-9 * period.frac as f64).ceil() as u64;
        b = b.maxerror(ns, rate);
    }
    if let Some(ns) = a.esterror_ns.map(AnyU64::get) {
        b = b.esterror(ns, 0);
    }
    if let Some(g) = a.vm_generation.map(AnyU64::get) {
        b = b.vm_generation(g);
    }
    let status = match a.status {
        Status::Unknown => abi::status::UNKNOWN,
        Status::Initializing => abi::status::INITIALIZING,
        Status::Synchronized => abi::status::SYNCHRONIZED,
        Status::Freerunning => abi::status::FREERUNNING,
        Status::Unreliable => abi::status::UNRELIABLE,
    };
    let leap = match a.leap {
        Leap::None => abi::leap::NONE,
        Leap::PrePos => abi::leap::PRE_POS,
        Leap::PreNeg => abi::leap::PRE_NEG,
        Leap::Pos => abi::leap::POS,
        Leap::PostPos => abi::leap::POST_POS,
        Leap::PostNeg => abi::leap::POST_NEG,
    };
    let bytes = b
        .status(status)
        .leap(leap)
        .disruption_marker(a.disruption_marker.get())
        .flag(flags::TIME_MONOTONIC, false)
        .page_bytes();
    vmtime_sys::files::create_page(&a.page, &bytes)?;
    eprintln!("wrote {} (counter {} at {:.3} Hz)", a.page.display(), abi::counter_name(id), period.hz());
    Ok(ExitCode::SUCCESS)
}
