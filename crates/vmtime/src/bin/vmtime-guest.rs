//! `vmtime-guest`: the guest's commands only (`sync`, `waitsync`, `now`, `status`, `show`), for
//! microVMs that want no host, relay, simulator or feeds in every guest. The same code as the
//! full binary's commands (the `vmtime` library); built small and static by
//! `scripts/guest-binary` (docs/BENCHMARKS.md: size, memory, idle CPU).
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;
use vmtime::commands::{now, show, status, waitsync};
use vmtime::daemons::sync;
use vmtime::ops::{config, logging};

/// Accurate, bounded time for virtual machines (Linux vmclock): the guest's commands.
#[derive(Parser, Debug)]
#[command(name = "vmtime", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level: error, warn, info, debug or trace (every command; for a daemon, over its
    /// configuration's log_level) [default: info].
    #[arg(long, value_enum, global = true)]
    log_level: Option<config::LogLevel>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Keep this guest's CLOCK_REALTIME locked to a vmclock page (--dry-run: change nothing).
    Sync(sync::Args),
    /// Wait until CLOCK_REALTIME lies inside the page's bounds (widened by --max-error-ns): exit 0, or 1 at the timeout.
    Waitsync(waitsync::Args),
    /// Print bounded time now (earliest, latest, status), read straight from the page.
    Now(now::Args),
    /// Ask a running vmtime daemon for its state (JSON over its control socket).
    Status(status::Args),
    /// Decode a vmclock page: every field with its meaning, validation, and the time it gives.
    Show(show::Args),
}

fn main() -> ExitCode {
    let cli: Cli = match vmtime::cli::parse(vmtime::cli::guest_command(Cli::command()), std::env::args_os()) {
        Ok(c) => c,
        Err((code, line)) => {
            if !line.is_empty() {
                eprintln!("{line}");
            }
            return code;
        }
    };
    // The one-shot commands stop quietly when their reader goes away (`vmtime show | head`).
    if !matches!(cli.command, Command::Sync(_)) {
        vmtime_sys::sigpipe_default();
    }
    logging::init(cli.log_level.unwrap_or(config::LogLevel::Info));
    let result: Result<ExitCode> = match cli.command {
        Command::Sync(mut a) => {
            a.log_level = cli.log_level;
            sync::run_guest(a)
        }
        Command::Waitsync(a) => waitsync::run(a),
        Command::Now(a) => now::run(a),
        Command::Status(a) => status::run(a),
        Command::Show(a) => show::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmtime: {e:#}");
            ExitCode::from(2)
        }
    }
}
