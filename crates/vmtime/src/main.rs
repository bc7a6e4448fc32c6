//! `vmtime`: accurate, bounded time for virtual machines.
#![forbid(unsafe_code)]

use vmtime::commands::{check, gen, generate, kvm_tsc, now, phc, qemu, show, sim, status, waitsync, watch};
use vmtime::daemons::{feed, host, relay, sync};
use vmtime::ops::{config, logging};

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Accurate, bounded time for virtual machines (Linux vmclock).
#[derive(Parser, Debug)]
#[command(name = "vmtime", version, about, long_about = None)]
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
    /// Wait until CLOCK_REALTIME lies inside the page's bounds (widened by --max-error-ns): exit 0, or 1 at the timeout.
    Waitsync(waitsync::Args),
    /// Print each update of a page with the fields that changed.
    Watch(watch::Args),
    /// Give a stock guest under an unmodified QEMU a vmclock device on a page file: SSDT + QEMU arguments.
    Qemu(qemu::Args),
    /// Feed vmtime's page to chrony (SOCK refclock) or ClockBound's clients (shared memory).
    Feed(feed::Args),
    /// Ask a running vmtime daemon for its state (JSON over its control socket).
    Status(status::Args),
    /// A running KVM guest's TSC offset and scaling (debugfs, by QEMU pid): the relay's map.
    KvmTsc(kvm_tsc::Args),
    /// The configuration file: check it, print the effective or the default configuration.
    Config(config::Args),
    /// Write the man pages or shell completions (packaging).
    #[command(hide = true)]
    Generate(generate::Args),
}

/// The command line with what the value types know added (crate::cli).
fn command() -> clap::Command {
    vmtime::cli::command(Cli::command())
}

/// Parses the command line; a mistake is one line naming the flag and what is allowed.
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, (ExitCode, String)> {
    vmtime::cli::parse(command(), args)
}

fn main() -> ExitCode {
    let cli = match parse(std::env::args_os()) {
        Ok(c) => c,
        Err((code, line)) => {
            if !line.is_empty() {
                eprintln!("{line}");
            }
            return code;
        }
    };
    // The one-shot commands stop quietly when their reader goes away (`vmtime show | head`).
    if !matches!(cli.command, Command::Host(_) | Command::Relay(_) | Command::Sync(_) | Command::Feed(_)) {
        vmtime_sys::sigpipe_default();
    }
    // Log lines at the flag's level (info by default) until a daemon has read its own (the flag
    // over its configuration's log_level).
    logging::init(cli.log_level.unwrap_or(config::LogLevel::Info));
    let level = cli.log_level;
    let result: Result<ExitCode> = match cli.command {
        Command::Show(a) => show::run(a),
        Command::Check(a) => check::run(a),
        Command::Now(a) => now::run(a),
        Command::Gen(a) => gen::run(a),
        Command::Host(mut a) => {
            a.daemon.log_level = level;
            host::run(a)
        }
        Command::Relay(mut a) => {
            a.daemon.log_level = level;
            relay::run(a)
        }
        Command::Phc(a) => phc::run(a),
        Command::Sim(a) => sim::run(a),
        Command::Sync(mut a) => {
            a.daemon.log_level = level;
            sync::run(a)
        }
        Command::Waitsync(a) => waitsync::run(a),
        Command::Watch(a) => watch::run(a),
        Command::Status(a) => status::run(a),
        Command::KvmTsc(a) => kvm_tsc::run(a),
        Command::Qemu(a) => qemu::run(a),
        Command::Config(a) => config::run(a),
        Command::Feed(mut a) => {
            a.set_log_level(level);
            feed::run(a)
        }
        Command::Generate(a) => generate::run(a, command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmtime: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::any::TypeId;
    use vmtime::values;

    #[test]
    fn a_word_outside_a_closed_set_is_refused_naming_the_set() {
        let args = ["vmtime", "feed", "clockbound", "--layout", "4"].map(std::ffi::OsString::from);
        let Err((code, line)) = parse(args) else { panic!("accepted") };
        assert_eq!(code, ExitCode::from(2));
        assert!(line.contains("'--layout <LAYOUT>': one of 2, 3, both"), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
    }

    /// Hostile values for every numeric flag of every subcommand.
    const HOSTILE: &[&str] = &[
        "0",
        "-1",
        "-5",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "1e30",
        "1.5",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "99999999999999999999999999999999999999999999999999",
        "",
        "0x",
        "ten",
    ];

    /// (subcommand path, flag, value type's entry) for every numeric flag.
    fn numeric_flags() -> Vec<(Vec<String>, clap::Arg, &'static values::Numeric)> {
        fn walk(
            cmd: &clap::Command,
            path: Vec<String>,
            out: &mut Vec<(Vec<String>, clap::Arg, &'static values::Numeric)>,
        ) {
            for arg in cmd.get_arguments() {
                let id = arg.get_value_parser().type_id();
                for t in [
                    TypeId::of::<u8>(),
                    TypeId::of::<u16>(),
                    TypeId::of::<u32>(),
                    TypeId::of::<u64>(),
                    TypeId::of::<u128>(),
                    TypeId::of::<usize>(),
                    TypeId::of::<i8>(),
                    TypeId::of::<i16>(),
                    TypeId::of::<i32>(),
                    TypeId::of::<i64>(),
                    TypeId::of::<i128>(),
                    TypeId::of::<f32>(),
                    TypeId::of::<f64>(),
                ] {
                    assert!(
                        id != t,
                        "vmtime {} --{}: a bare number type; use a validated type from values.rs",
                        path.join(" "),
                        arg.get_id()
                    );
                }
                if let Some(n) = values::NUMERIC.iter().find(|n| id == (n.type_id)()) {
                    out.push((path.clone(), arg.clone(), n));
                }
            }
            for sub in cmd.get_subcommands() {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                walk(sub, p, out);
            }
        }
        let mut out = Vec::new();
        walk(&command(), Vec::new(), &mut out);
        out
    }

    /// The command line for a subcommand with its required positionals filled in.
    fn base(path: &[String]) -> Vec<String> {
        let mut cmd = command();
        let mut argv = vec!["vmtime".to_string()];
        for p in path {
            argv.push(p.clone());
            cmd = cmd.find_subcommand(p).expect("subcommand").clone();
        }
        for a in cmd.get_positionals() {
            if a.is_required_set() && a.get_value_parser().type_id() != TypeId::of::<bool>() {
                argv.push("x".into());
            }
        }
        argv
    }

    #[test]
    fn every_numeric_flag_refuses_hostile_values_in_one_line() {
        let flags = numeric_flags();
        eprintln!("{} numeric flags", flags.len());
        assert!(flags.len() >= 40, "only {} numeric flags found", flags.len());
        let mut refused = 0;
        for (path, arg, n) in &flags {
            let flag = match arg.get_long() {
                Some(l) => format!("--{l}"),
                None => format!("<{}>", arg.get_id()),
            };
            for v in HOSTILE {
                if (n.accepts)(v) {
                    continue;
                }
                let mut argv = base(path);
                if arg.is_positional() {
                    continue;
                }
                argv.push(format!("{flag}={v}"));
                let r = std::panic::catch_unwind(|| parse(argv.iter().map(Into::into)));
                let Ok(Err((code, line))) = r else {
                    panic!("{argv:?}: accepted or panicked");
                };
                assert_eq!(code, ExitCode::from(2), "{argv:?}");
                assert_eq!(line.lines().count(), 1, "{argv:?}: {line}");
                assert!(line.contains(&flag), "{argv:?}: the flag is not named: {line}");
                assert!(line.contains(&format!("allowed: {}", (n.allowed)())), "{argv:?}: no range: {line}");
                refused += 1;
                // The same value as a separate word: a negative number is a value, not a flag.
                let mut argv = base(path);
                argv.push(flag.clone());
                argv.push(v.to_string());
                if v.is_empty() {
                    continue;
                }
                let Err((_, line)) = parse(argv.iter().map(Into::into)) else { panic!("{argv:?} accepted") };
                assert!(line.contains(&format!("allowed: {}", (n.allowed)())), "{argv:?}: {line}");
            }
        }
        assert!(refused > 400, "{refused}");
    }

    #[test]
    fn the_defaults_are_in_range_and_shown() {
        let help = command().find_subcommand("host").unwrap().clone().render_long_help().to_string();
        assert!(help.contains("[allowed: an integer in [10, 600000] (ms)] [default: 1000]"), "{help}");
    }
}
