//! `vmtime sim SCENARIO`: the whole chain, host to guest, simulated deterministically.

use crate::values::{AnyU64, Burst, SeedRange, SimDuration, ToleranceNs, TolerancePpm};
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use vmtime_sim::scenario::{self, Scenario};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A built-in scenario (steady, startup, migration, restore, leap-insert, leap-delete,
    /// source-loss, host-slews, writer-stalls, fleet) or a TOML scenario file; with --seeds, a
    /// comma-separated list of them.
    scenario: String,
    /// The seed: same seed, same output, byte for byte.
    #[arg(long, default_value = "1")]
    seed: AnyU64,
    /// Run every seed A..B (both included) of every scenario given and print one summary over
    /// all of them: reads judged against truth, violations, tightness.
    #[arg(long, conflicts_with_all = ["seed", "out"])]
    seeds: Option<SeedRange>,
    /// With --seeds: runs at once (threads).
    #[arg(long, default_value = "1")]
    jobs: Burst,
    /// The host NTP daemon measures its offset within ± this and claims what it knows
    /// (|measured| + this + 1 µs), ns (sets every scenario's ntp_noise_us; default 10000; 0: it
    /// measures exactly and claims its error + 100 µs).
    #[arg(long)]
    ntp_noise_ns: Option<ToleranceNs>,
    /// The host publisher's rate tolerance (vmtime host --tolerance-ppm), ppm (sets every
    /// scenario's host_tolerance_ppm; default 1, an NTP-disciplined server's; 500 is vmtime
    /// host's own default).
    #[arg(long)]
    host_tolerance_ppm: Option<TolerancePpm>,
    /// Simulated duration (e.g. 600, 10m, 1h, 1d; default: the scenario's).
    #[arg(long)]
    duration: Option<SimDuration>,
    /// Write trace.csv, summary.json and the SVG plots here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn scenario_of(a: &Args, name: &str) -> Result<Scenario> {
    let mut s = if name.ends_with(".toml") || std::path::Path::new(name).is_file() {
        let text = crate::values::read_small_text(std::path::Path::new(name))
            .with_context(|| format!("cannot read {name}"))?;
        Scenario::from_toml(&text).with_context(|| format!("{name} is not a valid scenario"))?
    } else {
        Scenario::builtin(name)?
    };
    if let Some(ns) = a.ntp_noise_ns {
        s.ntp_noise_us = ns.get() as f64 / 1000.0;
    }
    if let Some(t) = a.host_tolerance_ppm {
        s.host_tolerance_ppm = t.fine() as f64 / 1000.0;
    }
    s.validate()?;
    Ok(s)
}

/// `--seeds A..B`: every seed of every scenario, `jobs` at once, one summary.
fn run_seeds(a: &Args, seeds: SeedRange) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let scenarios: Vec<Scenario> =
        a.scenario.split(',').map(str::trim).map(|n| scenario_of(a, n)).collect::<Result<_>>()?;
    let names: Vec<String> = scenarios.iter().map(|s| s.name.clone()).collect();
    let duration = a.duration.map(SimDuration::secs);
    let runs: Vec<(usize, u64)> = (0..scenarios.len()).flat_map(|i| seeds.seeds().map(move |seed| (i, seed))).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let t0 = Instant::now();
    let jobs = (a.jobs.get() as usize).clamp(1, runs.len().max(1));
    let batch = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| {
                    let mut b = scenario::Batch::default();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(i, seed)) = runs.get(k) else { break };
                        let o = scenario::run(&scenarios[i], seed, duration, |_| {});
                        b.add(&o);
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if !a.quiet {
                            eprint!("\r{n}/{} runs ({} {seed}) ", runs.len(), scenarios[i].name);
                            let _ = std::io::stderr().flush();
                        }
                    }
                    b
                })
            })
            .collect();
        let mut all = scenario::Batch::default();
        for w in workers {
            all.merge(w.join().expect("a simulation thread panicked"));
        }
        all
    });
    if !a.quiet {
        eprintln!();
    }
    let s = batch.summary(&names, seeds.to_string());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("{} run(s): scenarios {}, seeds {}", s.runs, names.join(", "), s.seeds);
        println!("  {:<40} {}", "application reads judged against truth", s.reads);
        println!(
            "  {:<40} {} (of which reads: {})",
            "bound violations (must be 0)", s.bound_violations, s.read_violations
        );
        println!("  {:<40} {}", "MONOTONIC violations (must be 0)", s.monotonic_violations);
        println!(
            "  {:<40} median bound {} ns, p99 error {} ns: ratio {:.2}",
            "tightness", s.read_bound_p50_ns, s.read_error_p99_ns, s.tightness
        );
        for p in &s.per_scenario {
            println!(
                "  {:<16} {:>5} runs {:>13} reads {:>3} violations  median bound {:>9} ns  p99 error {:>8} ns  ratio {:>6.2}",
                p.scenario, p.runs, p.reads, p.bound_violations, p.read_bound_p50_ns, p.read_error_p99_ns, p.tightness
            );
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    eprintln!("{} runs, {} reads in {wall:.1} s of wall time ({jobs} job(s))", s.runs, s.reads);
    Ok(if s.bound_violations == 0 && s.monotonic_violations == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(seeds) = a.seeds {
        return run_seeds(&a, seeds);
    }
    let sc = scenario_of(&a, &a.scenario)?;
    if let Some(dir) = &a.out {
        // Before the run, not after it: a directory that cannot take the files is said at once.
        vmtime_sys::files::ensure_output_dir_for(&dir.join("trace.csv"))
            .with_context(|| format!("--out {}: not a directory vmtime can write its files in", dir.display()))?;
    }
    let duration = a.duration.map(SimDuration::secs);
    let seed = a.seed.get();
    let t0 = Instant::now();
    let mut last = -1i64;
    let o = scenario::run(&sc, seed, duration, |f| {
        let pct = (f * 100.0) as i64;
        if !a.quiet && pct != last {
            last = pct;
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r[{bar:<25}] {pct:3}% ");
            let _ = std::io::stderr().flush();
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    if !a.quiet {
        eprintln!();
    }
    let s = &o.summary;
    let simulated = duration.unwrap_or(sc.duration_s) as f64;
    if let Some(dir) = &a.out {
        // Each file new (O_EXCL temporary, rename), never through a link or into a fifo or a
        // device; every error names the file.
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let p = dir.join(name);
            vmtime_sys::files::replace_output(&p, bytes, 0o644, "an output file", None, &[])
                .with_context(|| format!("--out {}: cannot write {name}", dir.display()))
        };
        write("trace.csv", scenario::csv(&o).as_bytes())?;
        write("summary.json", (serde_json::to_string_pretty(s)? + "\n").as_bytes())?;
        for (name, svg) in vmtime_sim::plot::plots(&o) {
            write(name, svg.as_bytes())?;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        println!("scenario {} (seed {}), {} simulated s, {} guest(s)", s.scenario, s.seed, simulated, s.guests);
        println!(
            "  {:<38} {}",
            "convergence (guest within 1 µs of host)",
            s.convergence_s.map_or("never".into(), |c| format!("{c:.0} s"))
        );
        println!(
            "  {:<38} p50 {:.1}  p99 {:.1}  max {:.1} ns",
            "|guest − host| after convergence", s.chain_offset_ns.p50, s.chain_offset_ns.p99, s.chain_offset_ns.max
        );
        println!(
            "  {:<38} p50 {:.1}  p99 {:.1}  max {:.1} ns",
            "|guest − truth| after convergence", s.truth_offset_ns.p50, s.truth_offset_ns.p99, s.truth_offset_ns.max
        );
        if s.guests > 1 {
            println!("  {:<38} {:.1} ns", "worst guest at the end (vs host)", s.worst_guest_ns);
        }
        println!("  {:<38} {}", "bound violations (must be 0)", s.bound_violations);
        println!(
            "  {:<38} {} (violations {}; median bound {} ns, p99 error {} ns)",
            "application reads judged", s.reads, s.read_violations, s.read_bound_p50_ns, s.read_error_p99_ns
        );
        println!("  {:<38} {}", "MONOTONIC violations (must be 0)", s.monotonic_violations);
        println!("  {:<38} {} (disruptions seen: {})", "steps by guest 0", s.steps, s.disruptions);
        println!("  {:<38} {} host pages, {} guest pages relayed", "pages", s.host_pages, s.relayed);
        if let Some(dir) = &a.out {
            println!("  wrote {}/{{trace.csv,summary.json,offset.svg,frequency.svg,cdf.svg}}", dir.display());
        }
    }
    // Wall-clock figures stay off the files, which must not depend on the machine.
    eprintln!(
        "{simulated:.0} simulated s in {wall:.2} s of wall time ({:.1} simulated days per minute)",
        simulated / wall * 60.0 / 86_400.0
    );
    Ok(if s.bound_violations == 0 && s.monotonic_violations == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
