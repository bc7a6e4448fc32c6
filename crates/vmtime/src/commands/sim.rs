//! `vmtime sim SCENARIO`: the whole chain, host to guest, simulated deterministically.

use crate::values::{AnyU64, SimDuration};
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
    /// source-loss, host-slews, fleet) or a TOML scenario file.
    scenario: String,
    /// The seed: same seed, same output, byte for byte.
    #[arg(long, default_value = "1")]
    seed: AnyU64,
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

pub fn run(a: Args) -> Result<ExitCode> {
    let sc = if a.scenario.ends_with(".toml") || std::path::Path::new(&a.scenario).is_file() {
        let text = crate::values::read_small_text(std::path::Path::new(&a.scenario))
            .with_context(|| format!("cannot read {}", a.scenario))?;
        Scenario::from_toml(&text).with_context(|| format!("{} is not a valid scenario", a.scenario))?
    } else {
        Scenario::builtin(&a.scenario)?
    };
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
