//! `vmtime check PAGE`: the page against the kernel clock, with (clock, counter, clock) samples.
//!
//! Exit status (a health probe can rely on it): 0 PASS, 1 FAIL, 2 the page cannot be checked (an
//! error, one line on stderr), 3 not yet calibrated (the page is INITIALIZING: its publisher has
//! just started and promises nothing yet; try again in a few seconds).

use crate::page::Page;
use crate::values::{Samples, ToleranceNs};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use vmclock::abi;
use vmtime_core::check::{check, scale_for, CheckReport, Scale, Verdict};
use vmtime_core::stats::Summary;
use vmtime_sys::{aba_sample, ClockId};

#[derive(ClapArgs, Debug)]
#[command(
    after_help = "Exit status: 0 PASS, 1 FAIL, 2 cannot check (error), 3 not yet calibrated (the page is INITIALIZING)."
)]
pub struct Args {
    /// The page: /dev/vmclock0 or a page file [default: /dev/vmclock0; where that is absent
    /// and this machine publishes a host page (vmtime host), that page].
    page: Option<PathBuf>,
    /// Number of (clock, counter, clock) samples.
    #[arg(long, default_value = "1000")]
    samples: Samples,
    /// Slack allowed on each side of a sample's window, ns. A healthy host page is within its
    /// republish threshold (20 ns) plus its pairing uncertainty (±20-odd ns) of the kernel clock,
    /// about as wide as a sample's window, so 0 (the strict self-test) fails on healthy pages;
    /// the default leaves margin while still failing a page a microsecond off.
    #[arg(long, default_value = "1000")]
    tolerance: ToleranceNs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Samples against one unchanged page (retried if the page is updated meanwhile).
pub fn sample(page: &Page, n: usize) -> Result<(vmclock::Snapshot, Vec<vmtime_core::AbaSample>)> {
    // Allocated fallibly, once (a million samples under `ulimit -v` is an error, not an abort).
    let mut samples = Vec::new();
    samples.try_reserve_exact(n).map_err(|_| {
        anyhow::anyhow!(
            "not enough memory for {n} samples ({} bytes): give fewer --samples",
            n.saturating_mul(std::mem::size_of::<vmtime_core::AbaSample>())
        )
    })?;
    for _ in 0..10 {
        let before = page.snapshot()?;
        samples.clear();
        for _ in 0..n {
            samples.push(aba_sample(ClockId::Realtime)?);
        }
        let after = page.snapshot()?;
        crate::page::warn_legacy_tai(&page.path, &after);
        if before.seq_count() == after.seq_count() {
            return Ok((after, samples));
        }
    }
    bail!("the page changed during every one of 10 sampling rounds")
}

fn row(name: &str, s: &Summary) {
    println!("  {name:<16} {:>10.1} {:>10.1} {:>10.1} {:>10.1}", s.min, s.p50, s.p99, s.max);
}

fn print_human(path: &str, r: &CheckReport, verdict: Verdict) {
    let how = match r.scale {
        Scale::Utc => "a UTC page against CLOCK_REALTIME".to_string(),
        Scale::Tai { tai_minus_utc, source } => {
            format!("a TAI page against CLOCK_REALTIME + {tai_minus_utc} s (TAI offset from the {source})")
        }
    };
    println!("vmtime check {path}: {} samples of (CLOCK_REALTIME, counter, CLOCK_REALTIME), {how}", r.samples);
    println!("  {:<16} {:>10} {:>10} {:>10} {:>10}   (ns)", "", "min", "p50", "p99", "max");
    row("page − kernel", &r.error_ns);
    row("window", &r.window_ns);
    row("outside window", &r.outside_ns);
    if let Some(m) = &r.maxerror_ns {
        row("page maxerror", m);
    }
    let pct = 100.0 * r.inside as f64 / r.samples as f64;
    println!("inside [before − {t} ns, after + {t} ns]: {}/{} ({pct:.2} %)", r.inside, r.samples, t = r.tolerance_ns);
    if r.bounded > 0 {
        println!("kernel clock within the page's maximum error: {}/{}", r.within_bounds, r.bounded);
    } else {
        println!("the page gives no maximum error");
    }
    println!("{verdict}");
}

pub fn run(a: Args) -> Result<ExitCode> {
    let path = crate::paths::page_or_default(a.page.clone());
    let page = Page::open(&path)?;
    let (snap, samples) = sample(&page, a.samples.get() as usize).with_context(|| path.display().to_string())?;
    if snap.clock_status() == Some(abi::status::INITIALIZING) && snap.reference().is_err() {
        // A publisher that has just created its page and not yet published the first time.
        println!("{}: {}", path.display(), Verdict::NotYetCalibrated);
        return Ok(ExitCode::from(3));
    }
    if snap.counter_id() != vmclock::counter::NATIVE {
        bail!(
            "the page's counter is {} but this CPU reads {}: it cannot be checked here",
            abi::counter_name(snap.counter_id()),
            abi::counter_name(vmclock::counter::NATIVE)
        );
    }
    let kernel_tai = vmtime_sys::read_timex().context("adjtimex")?.tai;
    let scale = scale_for(&snap, kernel_tai).with_context(|| path.display().to_string())?;
    let r = check(&snap, scale, &samples, a.tolerance.get()).with_context(|| path.display().to_string())?;
    let verdict = Verdict::of(&r, snap.clock_status());
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["page"] = path.display().to_string().into();
        v["passed"] = (verdict == Verdict::Pass).into();
        v["verdict"] = serde_json::to_value(verdict)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_human(&path.display().to_string(), &r, verdict);
    }
    // Exit status: 0 PASS, 1 FAIL, 2 cannot check (an error), 3 not yet calibrated.
    Ok(match verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Fail => ExitCode::from(1),
        Verdict::NotYetCalibrated => ExitCode::from(3),
    })
}
