//! `vmtime waitsync`: waits until CLOCK_REALTIME lies inside the page's bounds widened by
//! `--max-error-ns` (exit 0), or gives up at `--timeout-s` (exit 1, the reason on one line). A
//! usage error is exit 2. For boot ordering (a oneshot unit before time-sync.target), agents and
//! databases that must not start on a wrong clock; the same need as ClockBound's `cbctl waitsync`.
//! The decision is `vmtime_core::oneshot::standing`; it reads the clock only.

use crate::values::{MaxErrorNs, TimeoutS};
use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmtime_core::oneshot::standing;
use vmtime_core::sync::sample_under_page;
use vmtime_sys::clock::{aba_sample, ClockId};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The page: a vmclock device or page file (default: /dev/vmclock0).
    #[arg(long)]
    pub(crate) source: Option<PathBuf>,
    /// How far beyond the page's bounds CLOCK_REALTIME may still lie, ns.
    #[arg(long)]
    pub(crate) max_error_ns: MaxErrorNs,
    /// Give up after this long, s (0: look once).
    #[arg(long)]
    pub(crate) timeout_s: TimeoutS,
}

/// Time between two looks.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// One look: where CLOCK_REALTIME stands, or why it cannot be judged yet.
fn look(page: &mut Option<crate::page::FollowedPage>, path: &std::path::Path, tolerance: u64) -> Result<f64, String> {
    if page.is_none() {
        *page = Some(crate::page::FollowedPage::open(path).map_err(|e| e.to_string())?);
    }
    let p = page.as_mut().expect("opened");
    p.refresh();
    let p = &*p;
    let got = sample_under_page(
        4,
        || p.read().map_err(|e| e.to_string()),
        || {
            (0..16)
                .map(|_| aba_sample(ClockId::Realtime))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| e.to_string())
        },
        || p.read().map_or(u32::MAX, |s| s.seq_count()),
    )?;
    let (snap, samples) = got.ok_or("the page kept changing")?;
    let st = standing(&snap, &samples, tolerance, vmclock::counter::NATIVE).map_err(|e| e.to_string())?;
    if st.inside() {
        Ok(st.offset_ns)
    } else {
        Err(format!(
            "CLOCK_REALTIME is {:+.0} ns from the page's time, {:.0} ns allowed (its bound + --max-error-ns − the pairing)",
            st.offset_ns,
            st.allowed_ns.max(0.0)
        ))
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let path = crate::paths::page_or_default(a.source);
    let tolerance = a.max_error_ns.get();
    let start = Instant::now();
    let end = start + Duration::from_secs(a.timeout_s.get());
    let mut page = None;
    loop {
        match look(&mut page, &path, tolerance) {
            Ok(offset) => {
                println!(
                    "vmtime waitsync: CLOCK_REALTIME is inside {}'s bounds + {tolerance} ns (offset {offset:+.0} ns) after {} ms",
                    path.display(),
                    start.elapsed().as_millis()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(why) if Instant::now() >= end => {
                eprintln!("vmtime waitsync: {}: not synchronised after {} s: {why}", path.display(), a.timeout_s);
                return Ok(ExitCode::from(1));
            }
            Err(_) => std::thread::sleep(LOOK_EVERY.min(end.saturating_duration_since(Instant::now()))),
        }
    }
}
