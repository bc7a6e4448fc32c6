//! `vmtime generate man|completions DIR` (hidden): writes the man pages and the shell completions
//! from the CLI definition itself, so they can never drift from the binary that ships them.
//!
//! A hidden subcommand rather than an xtask or a build script: `scripts/package` already builds
//! the binary it packages, and running that very binary to describe itself needs no second crate,
//! no copy of the CLI definition and nothing at build time. `clap_mangen` and `clap_complete` are
//! the clap project's own generators.

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// vmtime.1 and one page per subcommand (vmtime-host.1, vmtime-phc-list.1, …).
    Man {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Completions for bash (vmtime), zsh (_vmtime) and fish (vmtime.fish).
    Completions {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// The page of `cmd` and of each of its visible subcommands (vmtime-host.1, vmtime-phc-list.1, …).
fn write_man(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man(sub, dir)?;
    }
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    page.extend_from_slice(crate::commands::man::roff(&crate::commands::man::extra(&name)).as_bytes());
    std::fs::write(dir.join(format!("{name}.1")), page)
}

/// Writes what `a` asks for from `cmd`: the command line as parsed, ranges and configured
/// defaults in the help included (`main` hands it in).
pub fn run(a: Args, cmd: clap::Command) -> Result<ExitCode> {
    match a.what {
        What::Man { dir } => {
            mkdir(&dir)?;
            // clap_mangen's pages (the --help text), each with EXAMPLES, FILES, EXIT STATUS and
            // SEE ALSO appended (crate::commands::man).
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            write_man(&cmd, &dir).with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
        What::Completions { dir } => {
            use clap_complete::Shell;
            mkdir(&dir)?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd.clone(), "vmtime", &dir)
                    .with_context(|| format!("cannot write {shell} completions into {}", dir.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
