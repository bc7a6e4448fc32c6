//! `vmtime-lab leapwatch` (in the guest): samples CLOCK_MONOTONIC, CLOCK_REALTIME and CLOCK_TAI
//! every millisecond until CLOCK_REALTIME passes a given instant, then prints what happened:
//! the steps of UTC against MONOTONIC (a leap second is one step of −1 s), the largest jump of
//! TAI against MONOTONIC (continuity: it should be the slew of a millisecond, never a second), and
//! the kernel's TAI offset before and after.

use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use vmtime_sys::clock::{gettime, ClockId};

#[derive(clap::Args)]
pub struct Args {
    /// Stop once CLOCK_REALTIME is past this many seconds since 1970.
    #[arg(long)]
    until_unix_s: i64,
    /// Give up after this many seconds of CLOCK_MONOTONIC.
    #[arg(long, default_value_t = 60)]
    max_s: u64,
}

struct Sample {
    mono: i128,
    real: i128,
    tai: i128,
}

fn sample() -> Result<Sample> {
    let mono = gettime(ClockId::Monotonic)?;
    let real = gettime(ClockId::Realtime)?;
    let tai = gettime(ClockId::Tai)?;
    Ok(Sample { mono, real, tai })
}

pub fn watch(a: &Args) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(a.max_s);
    let until = i128::from(a.until_unix_s) * 1_000_000_000;
    let first = sample()?;
    let mut prev = sample()?;
    let (mut utc_steps, mut tai_jump_max, mut n) = (Vec::new(), 0i128, 0u64);
    while prev.real < until {
        if Instant::now() > deadline {
            bail!("CLOCK_REALTIME did not reach {} within {} s", a.until_unix_s, a.max_s);
        }
        std::thread::sleep(Duration::from_millis(1));
        let s = sample()?;
        let dm = s.mono - prev.mono;
        let utc_vs_mono = (s.real - prev.real) - dm;
        if utc_vs_mono.abs() > 100_000_000 {
            utc_steps
                .push(serde_json::json!({ "before_unix_ns": prev.real.to_string(), "delta_ns": utc_vs_mono as i64 }));
        }
        tai_jump_max = tai_jump_max.max(((s.tai - prev.tai) - dm).abs());
        prev = s;
        n += 1;
    }
    let offset = |s: &Sample| ((s.tai - s.real) as f64 / 1e9).round() as i64;
    println!(
        "{}",
        serde_json::json!({
            "samples": n,
            "first_unix_ns": first.real.to_string(),
            "utc_steps": utc_steps,
            "tai_jump_max_ns": tai_jump_max as i64,
            "tai_minus_utc_before": offset(&first),
            "tai_minus_utc_after": offset(&prev),
        })
    );
    Ok(())
}
