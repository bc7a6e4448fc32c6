//! `vmtime`: accurate, bounded time for virtual machines.
#![forbid(unsafe_code)]

mod check;
mod feed;
mod gen;
mod host;
mod now;
mod page;
mod phc;
mod relay;
mod show;
mod sim;
mod status;
mod sync;
mod tai;
mod watch;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Accurate, bounded time for virtual machines (Linux vmclock).
#[derive(Parser, Debug)]
#[command(name = "vmtime", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode a vmclock page: every field with its meaning, validation, and the time it gives.
    Show(show::Args),
    /// Check a page against the kernel clock with (clock, counter, clock) samples.
    Check(check::Args),
    /// Print bounded time now (earliest, latest, status), read straight from the page.
    Now(now::Args),
    /// Write a valid page for a given counter/time relation (tests and demos).
    Gen(gen::Args),
    /// Publish this machine's kernel clock as a vmclock page (a daemon; reads the clock only).
    Host(host::Args),
    /// Relay a host page to one guest's page (TSC offset and scaling), owning its markers.
    Relay(relay::Args),
    /// Simulate the whole chain, host to guest: summary, CSV and SVG plots.
    Sim(sim::Args),
    /// PTP hardware clocks: list them, read them.
    Phc(phc::Args),
    /// Keep this guest's CLOCK_REALTIME locked to a vmclock page (--dry-run: change nothing).
    Sync(sync::Args),
    /// Print each update of a page with the fields that changed.
    Watch(watch::Args),
    /// Feed vmtime's page to chrony (SOCK refclock) or ClockBound's clients (shared memory).
    Feed(feed::Args),
    /// Ask a running vmtime daemon for its state (JSON over its control socket).
    Status(status::Args),
}

/// The default page of a guest.
pub const DEFAULT_GUEST_PAGE: &str = "/dev/vmclock0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<ExitCode> = match cli.command {
        Command::Show(a) => show::run(a),
        Command::Check(a) => check::run(a),
        Command::Now(a) => now::run(a),
        Command::Gen(a) => gen::run(a),
        Command::Host(a) => host::run(a),
        Command::Relay(a) => relay::run(a),
        Command::Phc(a) => phc::run(a),
        Command::Sim(a) => sim::run(a),
        Command::Sync(a) => sync::run(a),
        Command::Watch(a) => watch::run(a),
        Command::Status(a) => status::run(a),
        Command::Feed(a) => feed::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmtime: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A path argument with the guest default.
pub fn page_or_default(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_PAGE))
}
