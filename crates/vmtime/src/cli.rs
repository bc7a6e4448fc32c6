//! The command line's shared behaviour, for the full `vmtime` binary and the guest binary
//! (`vmtime-guest`, the guest commands only): what the value types know is added to the flags,
//! and a mistake is one line.

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

/// [`command`] for the guest binary, whose only section is `[sync]`: the same flags and help,
/// without the other sections' serialisers.
pub fn guest_command(cmd: clap::Command) -> clap::Command {
    let mut defaults = toml::Table::new();
    if let Ok(sync) = toml::Value::try_from(config::SyncSettings::default()) {
        defaults.insert("sync".into(), sync);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    /// The guest binary's commands, as the two binaries declare them.
    fn guest_commands() -> clap::Command {
        use crate::commands::{now, show, status, waitsync};
        clap::Command::new("vmtime")
            .subcommand(crate::daemons::sync::Args::augment_args(clap::Command::new("sync")))
            .subcommand(waitsync::Args::augment_args(clap::Command::new("waitsync")))
            .subcommand(now::Args::augment_args(clap::Command::new("now")))
            .subcommand(status::Args::augment_args(clap::Command::new("status")))
            .subcommand(show::Args::augment_args(clap::Command::new("show")))
    }

    #[test]
    fn the_guest_binary_shows_the_same_ranges_and_defaults_as_the_full_one() {
        let (mut full, mut guest) = (command(guest_commands()), guest_command(guest_commands()));
        for name in ["sync", "waitsync", "now", "status", "show"] {
            let f = full.find_subcommand_mut(name).expect("full").render_long_help().to_string();
            let g = guest.find_subcommand_mut(name).expect("guest").render_long_help().to_string();
            assert_eq!(f, g, "{name}");
        }
        let sync = guest.find_subcommand_mut("sync").expect("sync").render_long_help().to_string();
        assert!(sync.contains("[allowed: an integer in [10, 600000] (ms)] [default: 1000]"), "{sync}");
    }
}
