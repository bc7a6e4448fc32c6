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

/// One sample: CLOCK_REALTIME and CLOCK_TAI read between two CLOCK_MONOTONIC reads. On a busy
/// host the guest can be descheduled between any two reads; the bracket says by how much, so a
/// pause is never taken for a jump of the clocks.
struct Sample {
    mono_a: i128,
    real: i128,
    tai: i128,
    mono_b: i128,
}

fn sample() -> Result<Sample> {
    let mono_a = gettime(ClockId::Monotonic)?;
    let real = gettime(ClockId::Realtime)?;
    let tai = gettime(ClockId::Tai)?;
    let mono_b = gettime(ClockId::Monotonic)?;
    Ok(Sample { mono_a, real, tai, mono_b })
}

/// The change of (clock − MONOTONIC) from `p` to `s`, both known within their brackets: the
/// smallest change the brackets allow (0 when they overlap), and the change of the midpoints.
fn change(p: &Sample, s: &Sample, clock: fn(&Sample) -> i128) -> (i128, i128) {
    let (lo_p, hi_p) = (clock(p) - p.mono_b, clock(p) - p.mono_a);
    let (lo_s, hi_s) = (clock(s) - s.mono_b, clock(s) - s.mono_a);
    let least = if lo_s > hi_p {
        lo_s - hi_p
    } else if hi_s < lo_p {
        hi_s - lo_p
    } else {
        0
    };
    (least, (lo_s + hi_s) / 2 - (lo_p + hi_p) / 2)
}

pub fn watch(a: &Args) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(a.max_s);
    let until = i128::from(a.until_unix_s) * 1_000_000_000;
    let first = sample()?;
    let mut prev = sample()?;
    let (mut utc_steps, mut tai_jump_max, mut gap_max, mut n) = (Vec::new(), 0i128, 0i128, 0u64);
    while prev.real < until {
        if Instant::now() > deadline {
            bail!("CLOCK_REALTIME did not reach {} within {} s", a.until_unix_s, a.max_s);
        }
        std::thread::sleep(Duration::from_millis(1));
        let s = sample()?;
        let (least, mid) = change(&prev, &s, |x| x.real);
        if least.abs() > 100_000_000 {
            let uncertainty = (s.mono_b - s.mono_a + prev.mono_b - prev.mono_a) / 2;
            utc_steps.push(serde_json::json!({
                "before_unix_ns": prev.real.to_string(),
                "delta_ns": mid as i64,
                "uncertainty_ns": uncertainty as i64,
            }));
        }
        tai_jump_max = tai_jump_max.max(change(&prev, &s, |x| x.tai).0.abs());
        gap_max = gap_max.max(s.mono_b - s.mono_a);
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
            "read_gap_max_ns": gap_max as i64,
            "tai_minus_utc_before": offset(&first),
            "tai_minus_utc_after": offset(&prev),
        })
    );
    Ok(())
}
