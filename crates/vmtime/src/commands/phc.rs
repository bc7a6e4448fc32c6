//! `vmtime phc list` and `vmtime phc read DEV`: PTP clocks and how they read.

use crate::values::PhcReadings;
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vmtime_core::phc::{pure_source, read_with, Method, PhcDevice, PhcTimescale};
use vmtime_sys::phc::{list, PhcFile};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every /dev/ptp*: name, driver, capabilities, timescale, which reading methods work.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Offset to CLOCK_REALTIME and delay, per reading method (like phc_ctl cmp).
    Read {
        /// The device, e.g. /dev/ptp0.
        dev: PathBuf,
        /// Readings per method (at most 25 for EXTENDED and basic).
        #[arg(short, long, default_value = "10")]
        n: PhcReadings,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct MethodResult {
    method: Method,
    offset_ns: Option<f64>,
    delay_ns: Option<i128>,
    readings: Option<usize>,
    error: Option<String>,
}

fn methods(dev: &mut dyn PhcDevice, n: usize) -> Vec<MethodResult> {
    [Method::Precise, Method::Extended, Method::Basic]
        .into_iter()
        .map(|m| match read_with(dev, m, n) {
            Ok(r) => MethodResult {
                method: m,
                offset_ns: Some(r.offset_ns),
                delay_ns: Some(r.delay_ns),
                readings: Some(r.readings),
                error: None,
            },
            Err(e) => {
                MethodResult { method: m, offset_ns: None, delay_ns: None, readings: None, error: Some(e.to_string()) }
            }
        })
        .collect()
}

fn timescale_note(name: &str) -> &'static str {
    match pure_source(name) {
        Some(Some(PhcTimescale::Utc)) => "UTC (pure time source)",
        Some(Some(PhcTimescale::Tai)) => "TAI (pure time source)",
        // ptp_vmclock: UTC in Linux 6.13–6.19, TAI after; the name does not say which.
        Some(None) if vmtime_core::phc::vmclock_index(name).is_some() => {
            "pure time source, UTC or TAI by driver version: vmtime sync decides from its vmclock page"
        }
        Some(None) => "pure time source, timescale unknown: give --phc-timescale",
        None => "not a pure time source (a NIC's clock?)",
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        Cmd::List { json } => {
            let found = list();
            let mut rows = Vec::new();
            for info in &found {
                let mut dev = PhcFile::open(&info.dev);
                let caps = dev.as_mut().ok().and_then(|d| d.caps().ok());
                let m = dev.as_mut().map(|d| methods(d, 3)).unwrap_or_default();
                rows.push(serde_json::json!({
                    "dev": info.dev.display().to_string(),
                    "clock_name": info.clock_name,
                    "driver": info.driver,
                    "caps": caps,
                    "timescale": timescale_note(&info.clock_name),
                    "methods": m.iter().map(|r| serde_json::json!({"method": r.method, "works": r.error.is_none()})).collect::<Vec<_>>(),
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no PTP clocks (/sys/class/ptp is empty)");
            } else {
                for r in &rows {
                    println!(
                        "{} \"{}\" driver {} — {}",
                        r["dev"].as_str().unwrap_or(""),
                        r["clock_name"].as_str().unwrap_or(""),
                        r["driver"],
                        r["timescale"].as_str().unwrap_or("")
                    );
                    println!("    caps {}  methods {}", r["caps"], r["methods"]);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Read { dev, n, json } => {
            let mut d = PhcFile::open(&dev).with_context(|| format!("cannot open {}", dev.display()))?;
            let results = methods(&mut d, n.get() as usize);
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                for r in &results {
                    match (&r.error, r.offset_ns, r.delay_ns) {
                        (None, Some(o), Some(dl)) => println!(
                            "{:<9} offset {:+.1} ns (PHC − CLOCK_REALTIME), delay {dl} ns",
                            r.method.to_string(),
                            o
                        ),
                        (Some(e), ..) => println!("{:<9} unavailable: {e}", r.method.to_string()),
                        _ => {}
                    }
                }
            }
            Ok(if results.iter().any(|r| r.error.is_none()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
