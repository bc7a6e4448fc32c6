//! `vmtime-guest`: the guest's commands only (`sync`, `waitsync`, `now`, `status`, `show`), for
//! microVMs that want no host, relay, simulator or feeds in every guest. The same code as the
//! full binary's commands (the `vmtime` library), with a command line parsed by hand
//! (`vmtime::guest_cli`, tested against the full binary's clap declarations) and the
//! configuration's `[sync]` read alone; built small and static by `scripts/guest-binary`
//! (docs/BENCHMARKS.md: size, memory, idle CPU).
#![forbid(unsafe_code)]

use anyhow::Result;
use std::process::ExitCode;
use vmtime::commands::{now, show, status, waitsync};
use vmtime::daemons::sync;
use vmtime::guest_cli::{self, Command};
use vmtime::ops::{config, logging};

fn main() -> ExitCode {
    let cli = match guest_cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(stop) => return stop.finish(),
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
