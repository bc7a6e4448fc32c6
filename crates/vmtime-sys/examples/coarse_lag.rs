//! How far CLOCK_MONOTONIC_COARSE lags CLOCK_MONOTONIC on this machine: the figure behind the
//! ClockBound feed's `as_of` allowance (docs/INTEROP.md, "Found and fixed").
//!
//! `cargo run --release -p vmtime-sys --example coarse_lag -- [SECONDS]` (default 10) samples the
//! lag as the feed does (`vmtime_sys::clock::coarse_lag_ns`, preempted looks set aside) for that
//! long and prints the tick, the largest lag and a histogram in ticks.
use vmtime_sys::clock::{coarse_lag_ns, getres, gettime, ClockId};

fn main() -> std::io::Result<()> {
    let seconds: i128 = match std::env::args().nth(1) {
        None => 10,
        Some(s) => match s.parse() {
            Ok(n) if (1..=3600).contains(&n) => n,
            _ => {
                eprintln!("coarse_lag: SECONDS must be a whole number from 1 to 3600, not {s:?}");
                std::process::exit(2);
            }
        },
    };
    let tick = getres(ClockId::MonotonicCoarse)?.max(1);
    let end = gettime(ClockId::Monotonic)? + seconds * 1_000_000_000;
    let (mut looks, mut preempted, mut max) = (0u64, 0u64, 0i128);
    let mut ticks = [0u64; 5]; // lag in [0,1), [1,2), [2,3), [3,4), 4+ ticks
    while gettime(ClockId::Monotonic)? < end {
        match coarse_lag_ns()? {
            Some(lag) => {
                looks += 1;
                max = max.max(lag);
                ticks[((lag / tick).max(0) as usize).min(4)] += 1;
            }
            None => preempted += 1,
        }
    }
    println!("tick {:.3} ms; {looks} looks ({preempted} preempted, set aside) in {seconds} s", tick as f64 / 1e6);
    println!("largest lag {:.3} ms = {:.2} ticks", max as f64 / 1e6, max as f64 / tick as f64);
    for (i, n) in ticks.iter().enumerate() {
        let label = if i == 4 { "4+ ticks".to_string() } else { format!("{i}-{} ticks", i + 1) };
        println!("  {label:>10}: {:8.4} % ({n})", *n as f64 * 100.0 / looks.max(1) as f64);
    }
    Ok(())
}
