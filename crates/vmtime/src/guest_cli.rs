//! The guest binary's command line (`vmtime-guest`: `sync`, `waitsync`, `now`, `status`, `show`),
//! parsed by hand so that the guest binary carries no argument-parsing library (clap was a tenth
//! of it). The flags, the values they take, the one-line errors, the exit codes and the help texts
//! are the full binary's: the help texts are clap's own renderings, kept in `guest-help/`, and a
//! test parses a corpus of good and bad command lines with both this parser and clap's (the
//! guest commands declared as the full binary declares them) and requires the same outcome.

use crate::commands::{now, show, status, waitsync};
use crate::daemons::sync;
use crate::ops::config::{LogLevel, Timescale};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

/// A guest command with its flags (made once per run: its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// `sync`.
    Sync(sync::Args),
    /// `waitsync`.
    Waitsync(waitsync::Args),
    /// `now`.
    Now(now::Args),
    /// `status`.
    Status(status::Args),
    /// `show`.
    Show(show::Args),
}

/// The parsed command line.
#[derive(Debug)]
pub struct Cli {
    /// The command.
    pub command: Command,
    /// The global `--log-level`.
    pub log_level: Option<LogLevel>,
}

/// What the command line asks for besides a command: a text to print and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Help or the version, on stdout; exit 0.
    Print(String),
    /// Help when nothing was given, on stderr; exit 0.
    PrintErr(String),
    /// A mistake: one line on stderr; exit 2.
    Error(String),
}

impl Stop {
    /// Prints what it says and gives the exit code (as `crate::cli::parse` does for clap's).
    pub fn finish(self) -> ExitCode {
        use std::io::Write;
        match self {
            Stop::Print(t) => {
                let _ = std::io::stdout().write_all(t.as_bytes());
                ExitCode::SUCCESS
            }
            Stop::PrintErr(t) => {
                let _ = std::io::stderr().write_all(t.as_bytes());
                ExitCode::SUCCESS
            }
            Stop::Error(line) => {
                eprintln!("{line}");
                ExitCode::from(2)
            }
        }
    }
}

/// The help texts (clap's renderings of the full binary's declarations; `guest-help/`).
mod help {
    pub const TOP_SHORT: &str = include_str!("guest-help/top.short");
    pub const TOP_LONG: &str = include_str!("guest-help/top.long");
    /// `help help`.
    pub const HELP: &str = include_str!("guest-help/help.long");
    /// (command, short help, long help).
    pub const COMMANDS: &[(&str, &str, &str)] = &[
        ("sync", include_str!("guest-help/sync.short"), include_str!("guest-help/sync.long")),
        ("waitsync", include_str!("guest-help/waitsync.short"), include_str!("guest-help/waitsync.long")),
        ("now", include_str!("guest-help/now.short"), include_str!("guest-help/now.long")),
        ("status", include_str!("guest-help/status.short"), include_str!("guest-help/status.long")),
        ("show", include_str!("guest-help/show.short"), include_str!("guest-help/show.long")),
    ];
}

/// The help texts by name ("top" or a command; short or long), for the test that keeps them
/// equal to clap's.
pub fn help_text(name: &str, long: bool) -> Option<&'static str> {
    if name == "top" {
        return Some(if long { help::TOP_LONG } else { help::TOP_SHORT });
    }
    if name == "help" {
        return Some(help::HELP);
    }
    help::COMMANDS.iter().find(|(n, _, _)| *n == name).map(|(_, s, l)| if long { *l } else { *s })
}

fn mistake(what: String) -> Stop {
    Stop::Error(format!("vmtime: {what} (see vmtime --help)"))
}

const BAD_UTF8: &str = "invalid UTF-8 was detected in one or more arguments";

/// A flag's value stored by its setter (given the name clap shows); the error is clap's line.
type Setter<'a> = Box<dyn FnMut(&OsStr, &str) -> Result<(), String> + 'a>;

/// What a flag does.
enum Kind<'a> {
    /// Sets a switch.
    Switch(&'a mut bool),
    /// Takes a value. `hyphen`: the value may start with '-' (the numeric flags: `--tai-offset
    /// -5` is refused with its range, not taken for a flag); `words`: a closed set.
    Value { set: Setter<'a>, hyphen: bool, words: Option<&'static str> },
    /// Prints help (`-h`: the short text, `--help`: the long one).
    Help,
    /// Prints the version.
    Version,
}

/// One flag of a command.
struct Flag<'a> {
    long: &'static str,
    short: Option<u8>,
    /// As clap names it in errors: "--source <SOURCE>", or "--json" for a switch.
    shown: &'static str,
    kind: Kind<'a>,
    /// Must be given.
    required: bool,
    seen: bool,
}

fn flag<'a>(long: &'static str, shown: &'static str, kind: Kind<'a>) -> Flag<'a> {
    Flag { long, short: None, shown, kind, required: false, seen: false }
}

fn switch<'a>(long: &'static str, shown: &'static str, slot: &'a mut bool) -> Flag<'a> {
    flag(long, shown, Kind::Switch(slot))
}

fn value<'a>(
    long: &'static str,
    shown: &'static str,
    set: impl FnMut(&OsStr, &str) -> Result<(), String> + 'a,
) -> Flag<'a> {
    flag(long, shown, Kind::Value { set: Box::new(set), hyphen: false, words: None })
}

/// A numeric flag (a validated type of crate::values): values may start with '-'.
fn number<'a, T: FromStr>(long: &'static str, shown: &'static str, slot: &'a mut Option<T>) -> Flag<'a>
where
    T::Err: std::fmt::Display,
{
    let set = move |v: &OsStr, shown: &str| {
        *slot = Some(parse_from_str(v, shown)?);
        Ok(())
    };
    flag(long, shown, Kind::Value { set: Box::new(set), hyphen: true, words: None })
}

/// A flag taking a word of a closed set (clap's `ValueEnum`): refused naming the set.
fn one_of<'a, T: Copy + 'a>(
    long: &'static str,
    shown: &'static str,
    words: &'static [(&'static str, T)],
    listed: &'static str,
    slot: &'a mut Option<T>,
) -> Flag<'a> {
    let set = move |v: &OsStr, shown: &str| {
        *slot = Some(word(v, shown, words, listed)?);
        Ok(())
    };
    flag(long, shown, Kind::Value { set: Box::new(set), hyphen: false, words: Some(listed) })
}

fn help_flag<'a>() -> Flag<'a> {
    Flag { long: "help", short: Some(b'h'), shown: "--help", kind: Kind::Help, required: false, seen: false }
}

fn parse_from_str<T: FromStr>(v: &OsStr, shown: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let s = v.to_str().ok_or_else(|| BAD_UTF8.to_string())?;
    s.parse::<T>().map_err(|e| format!("invalid value '{s}' for '{shown}': {e}"))
}

fn path(v: &OsStr, shown: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err(format!("a value is required for '{shown}' but none was supplied"));
    }
    Ok(PathBuf::from(v))
}

fn path_flag<'a>(long: &'static str, shown: &'static str, slot: &'a mut Option<PathBuf>) -> Flag<'a> {
    value(long, shown, move |v, shown| {
        *slot = Some(path(v, shown)?);
        Ok(())
    })
}

fn text_flag<'a>(long: &'static str, shown: &'static str, slot: &'a mut Option<String>) -> Flag<'a> {
    value(long, shown, move |v, _| {
        *slot = Some(v.to_str().ok_or_else(|| BAD_UTF8.to_string())?.to_string());
        Ok(())
    })
}

/// A word of a closed set.
fn word<T: Copy>(v: &OsStr, shown: &str, words: &[(&str, T)], listed: &str) -> Result<T, String> {
    if v.is_empty() {
        return Err(format!("a value is required for '{shown}' but none was supplied: one of {listed}"));
    }
    let s = v.to_string_lossy();
    match words.iter().find(|(w, _)| *w == s) {
        Some((_, t)) => Ok(*t),
        None => Err(format!("invalid value '{s}' for '{shown}': one of {listed}")),
    }
}

const LOG_LEVELS: &[(&str, LogLevel)] = &[
    ("error", LogLevel::Error),
    ("warn", LogLevel::Warn),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
    ("trace", LogLevel::Trace),
];
const LOG_LEVELS_LISTED: &str = "error, warn, info, debug, trace";
const TIMESCALES: &[(&str, Timescale)] = &[("utc", Timescale::Utc), ("tai", Timescale::Tai)];

fn log_level_flag(slot: &mut Option<LogLevel>) -> Flag<'_> {
    one_of("log-level", "--log-level <LOG_LEVEL>", LOG_LEVELS, LOG_LEVELS_LISTED, slot)
}

fn os_from_bytes(b: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(b).to_os_string()
}

fn looks_like_flag(a: &OsStr) -> bool {
    let b = a.as_encoded_bytes();
    b.len() > 1 && b[0] == b'-'
}

/// The words of one level of the command line.
enum Level<'p> {
    /// Before the command: a command's name ends it.
    Top,
    /// A command's, with its optional positional (the page).
    Command(Option<&'p mut Option<PathBuf>>),
}

const COMMAND_NAMES: &[&str] = &["sync", "waitsync", "now", "status", "show", "help"];

/// A word waiting for the next flag or the end to be taken: a flag's value (None: missing) or
/// the positional.
enum Pending {
    Flag(usize, Option<OsString>),
    Positional(OsString),
}

/// Parses `words` as clap does: flags in any order, each once, a flag's value after '=' or as
/// the next word, "--" ending the flags. A value given as the next word and the positional are
/// checked when the next flag is taken or at the end (before the command: after the command's
/// words, by the caller). Returns the index after the command's
/// name (Level::Top; 0 when there is none), or the length.
fn parse_words(
    words: &[OsString],
    flags: &mut [Flag<'_>],
    short_help: &str,
    long_help: &str,
    mut level: Level<'_>,
    pending: &mut Option<Pending>,
) -> Result<usize, Stop> {
    let mut positional_given = false;
    let mut trailing = false;
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let b = w.as_encoded_bytes();
        if let Some(Pending::Flag(p, None)) = *pending {
            let hyphen = matches!(flags[p].kind, Kind::Value { hyphen: true, .. });
            if !trailing && (hyphen || !looks_like_flag(w)) {
                *pending = Some(Pending::Flag(p, Some(w.clone())));
                continue;
            }
        }
        if matches!(level, Level::Top) && !trailing && w.to_str().is_some_and(|n| COMMAND_NAMES.contains(&n)) {
            // A value given before the command is checked after the command's words.
            return Ok(i);
        }
        if !trailing && b == b"--" {
            trailing = true;
            continue;
        }
        if !trailing && b.starts_with(b"--") {
            let body = &b[2..];
            let (key, inline) = match body.iter().position(|&c| c == b'=') {
                Some(eq) => (&body[..eq], Some(os_from_bytes(&body[eq + 1..]))),
                None => (body, None),
            };
            let Some(f) = flags.iter().position(|f| f.long.as_bytes() == key) else {
                return Err(mistake(format!("unexpected argument '--{}' found", String::from_utf8_lossy(key))));
            };
            let takes_value = matches!(flags[f].kind, Kind::Value { .. });
            if let (false, Some(v)) = (takes_value, &inline) {
                return Err(mistake(format!(
                    "unexpected value '{}' for '{}' found; no more were expected",
                    v.to_string_lossy(),
                    flags[f].shown
                )));
            }
            resolve(flags, &mut level, pending)?;
            match inline {
                Some(v) => give(&mut flags[f], Some(&v))?,
                None if takes_value => *pending = Some(Pending::Flag(f, None)),
                None => react(&mut flags[f], short_help, long_help, true)?,
            }
            continue;
        }
        if !trailing && looks_like_flag(w) {
            let c = b[1];
            let Some(f) = flags.iter().position(|f| f.short == Some(c)) else {
                let c = String::from_utf8_lossy(&b[1..]).chars().next().unwrap_or('?');
                return Err(mistake(format!("unexpected argument '-{c}' found")));
            };
            resolve(flags, &mut level, pending)?;
            react(&mut flags[f], short_help, long_help, false)?;
            continue;
        }
        match &level {
            // After "--", a command's name is "unexpected" there (clap's tip: without the "--").
            Level::Top if trailing && w.to_str().is_some_and(|n| COMMAND_NAMES.contains(&n)) => {
                return Err(mistake(format!("unexpected argument '{}' found", w.to_string_lossy())))
            }
            Level::Top => return Err(mistake(format!("unrecognized subcommand '{}'", w.to_string_lossy()))),
            Level::Command(Some(_)) if !positional_given => {
                positional_given = true;
                resolve(flags, &mut level, pending)?;
                *pending = Some(Pending::Positional(w.clone()));
            }
            Level::Command(_) => return Err(mistake(format!("unexpected argument '{}' found", w.to_string_lossy()))),
        }
    }
    resolve(flags, &mut level, pending)?;
    // No command's name (Level::Top): 0.
    Ok(if matches!(level, Level::Top) { 0 } else { words.len() })
}

/// Takes the pending word.
fn resolve(flags: &mut [Flag<'_>], level: &mut Level<'_>, pending: &mut Option<Pending>) -> Result<(), Stop> {
    match pending.take() {
        None => Ok(()),
        Some(Pending::Flag(p, v)) => give(&mut flags[p], v.as_deref()),
        Some(Pending::Positional(w)) => {
            if let Level::Command(Some(slot)) = level {
                **slot = Some(path(&w, "[PAGE]").map_err(mistake)?);
            }
            Ok(())
        }
    }
}

/// A flag without a value given.
fn react(flag: &mut Flag<'_>, short_help: &str, long_help: &str, long: bool) -> Result<(), Stop> {
    match &mut flag.kind {
        Kind::Help => Err(Stop::Print(if long { long_help } else { short_help }.to_string())),
        Kind::Version => Err(Stop::Print(version())),
        Kind::Value { .. } => give(flag, None),
        Kind::Switch(slot) => {
            if std::mem::replace(&mut flag.seen, true) {
                return Err(mistake(format!("the argument '{}' cannot be used multiple times", flag.shown)));
            }
            **slot = true;
            Ok(())
        }
    }
}

/// A flag's value (None: missing).
fn give(flag: &mut Flag<'_>, v: Option<&OsStr>) -> Result<(), Stop> {
    let Kind::Value { set, words, .. } = &mut flag.kind else { return Ok(()) };
    let Some(v) = v else {
        let listed = words.map(|w| format!(": one of {w}")).unwrap_or_default();
        return Err(mistake(format!("a value is required for '{}' but none was supplied{listed}", flag.shown)));
    };
    if std::mem::replace(&mut flag.seen, true) {
        return Err(mistake(format!("the argument '{}' cannot be used multiple times", flag.shown)));
    }
    set(v, flag.shown).map_err(mistake)
}

/// A command's flags (the global `--log-level` and `-h`/`--help` added) and optional positional.
fn parse_command<'a>(
    name: &str,
    words: &[OsString],
    mut flags: Vec<Flag<'a>>,
    page: Option<&mut Option<PathBuf>>,
    log_level: &'a mut Option<LogLevel>,
) -> Result<(), Stop> {
    let (short, long) = match help::COMMANDS.iter().find(|(n, _, _)| *n == name) {
        Some((_, s, l)) => (*s, *l),
        None => ("", ""),
    };
    flags.push(log_level_flag(log_level));
    flags.push(help_flag());
    parse_words(words, &mut flags, short, long, Level::Command(page), &mut None)?;
    if flags.iter().any(|f| f.required && !f.seen) {
        return Err(mistake("the following required arguments were not provided:".to_string()));
    }
    Ok(())
}

/// Parses the guest binary's command line (`args` with the program name first).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, Stop> {
    let args: Vec<OsString> = args.into_iter().skip(1).collect();
    if args.is_empty() {
        return Err(Stop::PrintErr(help::TOP_SHORT.to_string()));
    }
    let mut top_level = None;
    let mut top_flags = vec![
        log_level_flag(&mut top_level),
        help_flag(),
        Flag {
            long: "version",
            short: Some(b'V'),
            shown: "--version",
            kind: Kind::Version,
            required: false,
            seen: false,
        },
    ];
    let mut top_pending = None;
    let i = parse_words(&args, &mut top_flags, help::TOP_SHORT, help::TOP_LONG, Level::Top, &mut top_pending)?;
    let given_before = top_flags[0].seen || top_pending.is_some();
    let Some(command) = i.checked_sub(1).and_then(|c| args.get(c)) else {
        // Help when no flag was given either ("--" alone), as clap's arg_required_else_help.
        if !given_before {
            return Err(Stop::PrintErr(help::TOP_SHORT.to_string()));
        }
        return Err(mistake("'vmtime' requires a subcommand but one was not provided".to_string()));
    };
    let mut log_level = None;
    let rest = &args[i..];
    let name = command.to_string_lossy();
    let ll = &mut log_level;
    let command = match &*name {
        "sync" => {
            let mut a = sync::Args::default();
            let (mut dry_run, mut allow_other_daemon) = (false, false);
            let flags = vec![
                path_flag("config", "--config <CONFIG>", &mut a.daemon.config),
                path_flag("source", "--source <SOURCE>", &mut a.keys.source),
                switch("dry-run", "--dry-run", &mut dry_run),
                switch("once", "--once", &mut a.once),
                number("interval-ms", "--interval-ms <INTERVAL_MS>", &mut a.keys.interval_ms),
                number("max-interval-ms", "--max-interval-ms <MAX_INTERVAL_MS>", &mut a.keys.max_interval_ms),
                number("makestep-ns", "--makestep-ns <MAKESTEP_NS>", &mut a.keys.makestep_ns),
                number("makestep-updates", "--makestep-updates <MAKESTEP_UPDATES>", &mut a.keys.makestep_updates),
                number("max-step-s", "--max-step-s <MAX_STEP_S>", &mut a.keys.max_step_s),
                text_flag("hook", "--hook <HOOK>", &mut a.keys.hook),
                path_flag("socket", "--socket <SOCKET>", &mut a.keys.socket),
                number("duration-s", "--duration-s <DURATION_S>", &mut a.daemon.duration_s),
                one_of(
                    "phc-timescale",
                    "--phc-timescale <PHC_TIMESCALE>",
                    TIMESCALES,
                    "utc, tai",
                    &mut a.keys.phc_timescale,
                ),
                number("tai-offset", "--tai-offset <TAI_OFFSET>", &mut a.keys.tai_offset),
                value("metrics-listen", "--metrics-listen <METRICS_LISTEN>", |v, shown| {
                    a.daemon.metrics_listen = Some(parse_from_str(v, shown)?);
                    Ok(())
                }),
                switch("allow-other-daemon", "--allow-other-daemon", &mut allow_other_daemon),
                value("cross-check-ntp", "--cross-check-ntp <ADDRESS:PORT>", |v, shown| {
                    a.keys.cross_check_ntp = Some(parse_from_str(v, shown)?);
                    Ok(())
                }),
            ];
            parse_command("sync", rest, flags, None, ll)?;
            // As clap's SetTrue: false when not given.
            (a.keys.dry_run, a.keys.allow_other_daemon) = (Some(dry_run), Some(allow_other_daemon));
            Command::Sync(a)
        }
        "waitsync" => {
            let (mut source, mut max_error_ns, mut timeout_s) = (None, None, None);
            let mut flags = vec![
                path_flag("source", "--source <SOURCE>", &mut source),
                number("max-error-ns", "--max-error-ns <MAX_ERROR_NS>", &mut max_error_ns),
                number("timeout-s", "--timeout-s <TIMEOUT_S>", &mut timeout_s),
            ];
            flags[1].required = true;
            flags[2].required = true;
            parse_command("waitsync", rest, flags, None, ll)?;
            match (max_error_ns, timeout_s) {
                (Some(max_error_ns), Some(timeout_s)) => {
                    Command::Waitsync(waitsync::Args { source, max_error_ns, timeout_s })
                }
                _ => return Err(mistake("the following required arguments were not provided:".to_string())),
            }
        }
        "now" => {
            let (mut page, mut json) = (None, false);
            parse_command("now", rest, vec![switch("json", "--json", &mut json)], Some(&mut page), ll)?;
            Command::Now(now::Args { page, json })
        }
        "status" => {
            let (mut socket, mut json, mut request) = (None, false, None);
            let flags = vec![
                path_flag("socket", "--socket <SOCKET>", &mut socket),
                switch("json", "--json", &mut json),
                text_flag("request", "--request <REQUEST>", &mut request),
            ];
            parse_command("status", rest, flags, None, ll)?;
            Command::Status(status::Args { socket, json, request })
        }
        "show" => {
            let (mut page, mut json, mut counter) = (None, false, None);
            let flags =
                vec![switch("json", "--json", &mut json), number("counter", "--counter <COUNTER>", &mut counter)];
            parse_command("show", rest, flags, Some(&mut page), ll)?;
            Command::Show(show::Args { page, json, counter })
        }
        "help" => {
            // `help COMMAND`: the words name a command (none has subcommands of its own).
            return Err(match (rest.first().map(|a| a.to_string_lossy()), rest.get(1)) {
                (None, _) => Stop::Print(help::TOP_LONG.to_string()),
                (Some(sub), more) => match help_text(&sub, true).filter(|_| sub != "top") {
                    Some(long) => match more {
                        None => Stop::Print(long.to_string()),
                        Some(m) => mistake(format!("unrecognized subcommand '{}'", m.to_string_lossy())),
                    },
                    None => mistake(format!("unrecognized subcommand '{sub}'")),
                },
            });
        }
        other => return Err(mistake(format!("unrecognized subcommand '{other}'"))),
    };
    resolve(&mut top_flags, &mut Level::Top, &mut top_pending)?;
    drop(top_flags);
    Ok(Cli { command, log_level: log_level.or(top_level) })
}

fn version() -> String {
    format!("vmtime {}\n", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

    /// The guest binary's command line as clap declares it (what `vmtime-guest` was before this
    /// parser), with the same type names so that the parsed values print the same.
    mod reference {
        use super::*;
        use crate::ops::config;

        /// Accurate, bounded time for virtual machines (Linux vmclock): the guest's commands.
        #[derive(Parser, Debug)]
        #[command(name = "vmtime", version, long_about = None)]
        pub struct Cli {
            #[command(subcommand)]
            pub command: Command,
            /// Log level: error, warn, info, debug or trace (every command; for a daemon, over its
            /// configuration's log_level) [default: info].
            #[arg(long, value_enum, global = true)]
            pub log_level: Option<config::LogLevel>,
        }

        #[derive(Subcommand, Debug)]
        #[allow(clippy::large_enum_variant)]
        pub enum Command {
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
    }

    /// clap's outcome, in this parser's terms (the parsed command line by its Debug text).
    fn clap_outcome(args: &[OsString]) -> Result<String, Stop> {
        match clap_raw(args) {
            Err(Stop::Print(t)) => Err(Stop::Print(as_ours(t))),
            r => r,
        }
    }

    /// clap's outcome with clap's own help texts.
    fn clap_raw(args: &[OsString]) -> Result<String, Stop> {
        use clap::error::ErrorKind;
        static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
        let cmd = COMMAND.get_or_init(|| crate::cli::command(reference::Cli::command())).clone();
        let r = cmd.try_get_matches_from(args).and_then(|m| reference::Cli::from_arg_matches(&m));
        match r {
            Ok(c) => Ok(format!("{c:?}")),
            Err(e) => Err(match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Stop::Print(e.render().to_string()),
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Stop::PrintErr(e.render().to_string()),
                _ => Stop::Error(crate::cli::error_line(&e)),
            }),
        }
    }

    /// The reference's rendering of a command's help, as the text kept in guest-help/: the full
    /// binary's (tests/cli.rs checks them against it), whose `--log-level` sits elsewhere in the
    /// list (clap orders a global flag by the parent's count of subcommands).
    fn as_ours(text: String) -> String {
        static RENDERED: std::sync::OnceLock<Vec<(String, &'static str)>> = std::sync::OnceLock::new();
        let rendered = RENDERED.get_or_init(|| {
            let mut v = Vec::new();
            for (name, short, long) in help::COMMANDS {
                for (flag, ours) in [("-h", *short), ("--help", *long)] {
                    let args = ["vmtime", name, flag].map(OsString::from);
                    if let Err(Stop::Print(t)) = clap_raw(&args) {
                        v.push((t, ours));
                    }
                }
            }
            v
        });
        rendered.iter().find(|(t, _)| *t == text).map_or(text, |(_, ours)| ours.to_string())
    }

    fn outcome(args: &[OsString]) -> Result<String, Stop> {
        parse(args.iter().cloned()).map(|c| format!("{c:?}"))
    }

    /// The help texts kept in guest-help/ are clap's renderings (VMTIME_UPDATE_GUEST_HELP=1
    /// writes them anew after a flag or its help changed).
    #[test]
    fn the_help_texts_are_claps() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/guest-help");
        let update = std::env::var_os("VMTIME_UPDATE_GUEST_HELP").is_some();
        // The commands' own help: the full binary's, checked by tests/cli.rs.
        for name in ["top", "help"] {
            for (long, flag, ext) in [(false, "-h", "short"), (true, "--help", "long")] {
                let mut args = vec![OsString::from("vmtime")];
                if name != "top" {
                    args.push(name.into());
                }
                args.push(flag.into());
                if name == "help" {
                    args = ["vmtime", "help", "help"].map(OsString::from).to_vec();
                }
                let Err(Stop::Print(text)) = clap_outcome(&args) else { panic!("{args:?}: no help") };
                if update {
                    std::fs::write(dir.join(format!("{name}.{ext}")), &text).unwrap();
                } else {
                    assert_eq!(
                        help_text(name, long),
                        Some(text.as_str()),
                        "{name} {flag}: VMTIME_UPDATE_GUEST_HELP=1 cargo test -p vmtime --lib guest_cli"
                    );
                }
            }
        }
    }

    /// A small deterministic generator (no dependency): the corpus is the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    #[test]
    fn every_command_line_has_claps_outcome() {
        use std::os::unix::ffi::OsStringExt;
        let commands = ["sync", "waitsync", "now", "status", "show", "help", "host", "snyc", ""];
        let mut words: Vec<OsString> = [
            "--config",
            "--source",
            "--dry-run",
            "--once",
            "--interval-ms",
            "--max-interval-ms",
            "--makestep-ns",
            "--makestep-updates",
            "--max-step-s",
            "--hook",
            "--socket",
            "--duration-s",
            "--phc-timescale",
            "--tai-offset",
            "--metrics-listen",
            "--allow-other-daemon",
            "--cross-check-ntp",
            "--max-error-ns",
            "--timeout-s",
            "--json",
            "--request",
            "--counter",
            "--log-level",
            "--log-level=warn",
            "--log-level=loud",
            "--json=yes",
            "--json=",
            "--interval-ms=",
            "--interval-ms=250",
            "--source=",
            "--source=/p",
            "--tai-offset=-5",
            "--help",
            "--help=x",
            "-h",
            "--version",
            "-V",
            "--",
            "-",
            "--bogus",
            "--bogus=1",
            "-x",
            "-hx",
            "-5",
            "5",
            "250",
            "0",
            "-1",
            "1e30",
            "nan",
            "x",
            "",
            "1000",
            "127.0.0.1:9100",
            "[::1]:9",
            "192.0.2.1:123",
            "localhost:9",
            "tai",
            "utc",
            "gps",
            "info",
            "loud",
            "debug",
            "page",
            "/p",
            "status",
            "sync",
            "help",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        words.push(OsString::from_vec(vec![0x66, 0xff, 0x6f]));
        let mut checked = 0;
        let mut failed = Vec::new();
        let mut check = |args: Vec<OsString>| {
            let (ours, claps) = (outcome(&args), clap_outcome(&args));
            if ours != claps && failed.len() < 40 {
                let short = |r: &Result<String, Stop>| format!("{r:?}").chars().take(240).collect::<String>();
                failed.push(format!("{args:?}\n  ours: {}\n  clap: {}", short(&ours), short(&claps)));
            }
            checked += 1;
        };
        let argv = |cmd: &str, rest: &[&OsString]| {
            let mut a = vec![OsString::from("vmtime")];
            if !cmd.is_empty() {
                a.push(cmd.into());
            }
            a.extend(rest.iter().map(|w| (*w).clone()));
            a
        };
        // Every pair of words after every command, and before it.
        for cmd in commands {
            for a in &words {
                check(argv(cmd, &[a]));
                for b in &words {
                    check(argv(cmd, &[a, b]));
                }
            }
        }
        for a in &words {
            for cmd in commands {
                let mut v = vec![OsString::from("vmtime"), a.clone()];
                if !cmd.is_empty() {
                    v.push(cmd.into());
                }
                check(v);
            }
        }
        // Longer lines at random, good ones included.
        let good: &[&[&str]] = &[
            &["sync", "--dry-run", "--source", "/p", "--interval-ms", "250", "--log-level", "debug"],
            &["sync", "--once", "--config", "/c", "--tai-offset", "37", "--phc-timescale", "tai"],
            &["waitsync", "--max-error-ns", "1000", "--timeout-s", "5", "--source", "/p"],
            &["--log-level", "trace", "now", "/p", "--json"],
            &["show", "--counter", "0x10", "/p", "--json"],
            &["status", "--socket", "/s", "--request", "migrated 5", "--json"],
        ];
        let mut rng = Lcg(23);
        for _ in 0..30_000 {
            let cmd = commands[rng.next(commands.len())];
            let n = 3 + rng.next(4);
            let mut rest: Vec<&OsString> = Vec::new();
            for _ in 0..n {
                rest.push(&words[rng.next(words.len())]);
            }
            check(argv(cmd, &rest));
        }
        for g in good {
            let args: Vec<OsString> = std::iter::once("vmtime").chain(g.iter().copied()).map(OsString::from).collect();
            assert!(outcome(&args).is_ok(), "{args:?}: {:?}", outcome(&args));
            check(args);
        }
        assert!(failed.is_empty(), "{} differences:\n{}", failed.len(), failed.join("\n"));
        assert!(checked > 70_000, "{checked}");
    }
}
