//! The full `vmtime` binary's command line (clap): what the value types know is added to the
//! flags, and a mistake is one line. The guest binary (`vmtime-guest`) parses its five commands
//! by hand (crate::guest_cli), tested against this.

use crate::ops::config;
use crate::values;
use clap::FromArgMatches;
use std::process::ExitCode;

/// `cmd` with what the value types know added: each numeric flag takes values that start with
/// '-' (so `--tai-offset -5` is a number, refused with its range, not a flag) and its help gives
/// the allowed range and, for a daemon, the default from the configuration's defaults.
pub fn command(cmd: clap::Command) -> clap::Command {
    let defaults = toml::Table::try_from(config::FileConfig::default()).unwrap_or_default();
    harden(cmd, &defaults)
}

fn harden(cmd: clap::Command, defaults: &toml::Table) -> clap::Command {
    let section = defaults.get(cmd.get_name()).and_then(|v| v.as_table()).cloned();
    let cmd = cmd.mut_args(|arg| {
        let id = arg.get_value_parser().type_id();
        let numeric = values::NUMERIC.iter().find(|n| id == (n.type_id)()).map(|n| (n.allowed)());
        let default = section.as_ref().and_then(|t| t.get(arg.get_id().as_str())).map(|v| match v {
            toml::Value::String(s) => s.clone(),
            v => v.to_string(),
        });
        let mut extra = String::new();
        if let Some(allowed) = &numeric {
            extra.push_str(&format!(" [allowed: {allowed}]"));
        }
        if let Some(d) = default.filter(|d| d != "false") {
            extra.push_str(&format!(" [default: {d}]"));
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let arg = if numeric.is_some() { arg.allow_hyphen_values(true) } else { arg };
        if extra.is_empty() {
            arg
        } else {
            arg.help(format!("{help}{extra}"))
        }
    });
    // A subcommand's section may be a subsection of its parent's (`feed chrony`: [feed.chrony]).
    let nested = section.unwrap_or_default();
    cmd.mut_subcommands(|sub| {
        let scope = if nested.get(sub.get_name()).is_some_and(toml::Value::is_table) { &nested } else { defaults };
        harden(sub, scope)
    })
}

/// Parses the command line; a mistake is one line naming the flag and what is allowed.
pub fn parse<C: FromArgMatches>(
    cmd: clap::Command,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<C, (ExitCode, String)> {
    use clap::error::ErrorKind;
    let matches = cmd.try_get_matches_from(args).and_then(|m| C::from_arg_matches(&m));
    matches.map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            (ExitCode::SUCCESS, String::new())
        }
        _ => (ExitCode::from(2), error_line(&e)),
    })
}

/// A clap error as one line: its first line, with the set of allowed words where there is one.
pub(crate) fn error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid command line");
    let first = first.trim().strip_prefix("error: ").unwrap_or(first.trim());
    // A word outside a closed set: name the set on the same line.
    let valid = match e.get(clap::error::ContextKind::ValidValue) {
        Some(clap::error::ContextValue::Strings(v)) if !v.is_empty() => format!(": one of {}", v.join(", ")),
        _ => String::new(),
    };
    format!("vmtime: {first}{valid} (see vmtime --help)")
}
