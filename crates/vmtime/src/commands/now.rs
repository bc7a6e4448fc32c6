//! `vmtime now [PAGE]`: bounded time read straight from the page.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vmclock::{abi, Clock};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The page: /dev/vmclock0 or a page file [default: /dev/vmclock0; where that is absent
    /// and this machine publishes a host page (vmtime host), that page].
    pub(crate) page: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct NowJson {
    timescale: &'static str,
    time_ns: u128,
    earliest_ns: Option<u128>,
    latest_ns: Option<u128>,
    maxerror_ns: Option<u128>,
    esterror_ns: Option<u128>,
    status: &'static str,
    reliable: bool,
    disruption_marker: u64,
    counter: u64,
    /// TAI − UTC (positive: 37).
    tai_minus_utc: Option<i16>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let path = crate::paths::page_or_default(a.page);
    let clock = Clock::open(&path).map_err(|e| match e {
        vmclock::ClockError::Map { .. } => anyhow::Error::from(e), // names the path already
        e => anyhow::Error::from(e).context(path.display().to_string()),
    })?;
    let snap = clock.snapshot().with_context(|| path.display().to_string())?;
    crate::page::warn_legacy_tai(&path, &snap);
    let n = clock.now().with_context(|| path.display().to_string())?;
    let t = n.time();
    let ns = |x: u128| vmclock::Timestamp::<vmclock::Tai>::from_raw(x).as_nanos();
    let (raw, maxerror) = (t.raw(), t.maxerror());
    let out = NowJson {
        timescale: t.timescale(),
        time_ns: ns(raw),
        earliest_ns: maxerror.map(|e| ns(raw.saturating_sub(e))),
        latest_ns: maxerror.map(|e| ns(raw.saturating_add(e))),
        maxerror_ns: maxerror.map(vmclock::snapshot::frac_to_nanos_ceil),
        esterror_ns: t.esterror().map(vmclock::snapshot::frac_to_nanos_ceil),
        status: abi::status_name(n.status),
        reliable: n.is_reliable(),
        disruption_marker: n.disruption_marker,
        counter: n.counter,
        tai_minus_utc: n.tai_minus_utc,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let fmt = |x: u128| match t {
        vmclock::PageTime::Tai(_) => vmclock::Timestamp::<vmclock::Tai>::from_raw(x).to_string(),
        vmclock::PageTime::Utc(_) => vmclock::Timestamp::<vmclock::Utc>::from_raw(x).to_string(),
        vmclock::PageTime::Monotonic(_) => vmclock::Timestamp::<vmclock::Monotonic>::from_raw(x).to_string(),
    };
    match maxerror {
        Some(e) => {
            println!("earliest  {}", fmt(raw.saturating_sub(e)));
            println!("time      {}", fmt(raw));
            println!("latest    {}", fmt(raw.saturating_add(e)));
            println!("maxerror  ±{} ns", out.maxerror_ns.unwrap_or_default());
        }
        None => {
            println!("time      {}", fmt(raw));
            println!("bounds    unknown: the page gives no maximum error");
        }
    }
    if let Ok(utc) = n.utc() {
        if t.timescale() != "UTC" {
            println!("as UTC    {}", utc.time);
        }
    }
    println!(
        "status    {} ({})",
        out.status,
        if out.reliable { "may be relied upon" } else { "must not be relied upon" }
    );
    println!("disruption_marker {:#x}", n.disruption_marker);
    Ok(ExitCode::SUCCESS)
}
