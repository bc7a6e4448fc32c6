//! The real-guest lab (see lab/README.md): `vmtime-lab run` boots a Linux guest under QEMU and
//! proves vmtime inside it; `echo` and `leapwatch` are the lab's own helpers that run in the guest.
#![forbid(unsafe_code)]

mod checks;
mod cpio;
mod echo;
mod leap;
mod migration;
mod pollwatch;
mod reads;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "vmtime's real-guest lab")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the initramfs, boot the guest, run every check, print one PASS/FAIL line each.
    Run(checks::Args),
    /// (In the guest) answer the host's counter echo through a shared-memory mailbox.
    Echo {
        #[arg(long)]
        mailbox: PathBuf,
        /// The guest's vmclock page, whose time goes into each answer.
        #[arg(long)]
        page: Option<PathBuf>,
    },
    /// (In the guest) sample CLOCK_REALTIME and CLOCK_TAI across a leap second; print a JSON summary.
    Leapwatch(leap::Args),
    /// (In the guest) the kernel's NTP state (adjtimex, read-only) as JSON.
    Timex,
    /// (In the guest) read the time through a page's mmap every N µs, logging each read.
    Reads(reads::Args),
    /// (In the guest) wait in poll() on a vmclock device and log each wake-up.
    Pollwatch(pollwatch::Args),
    /// (In the guest) print the counter (TSC) now: a stamp the host can place in its own time.
    Counter,
}

fn timex() -> Result<()> {
    let t = vmtime_sys::timex::read_timex()?;
    println!(
        "{}",
        serde_json::json!({
            "maxerror_us": t.maxerror_us,
            "esterror_us": t.esterror_us,
            "tai": t.tai,
            "status": t.status,
            "state": t.state,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r: Result<ExitCode> = match cli.cmd {
        Cmd::Run(a) => checks::run(a),
        Cmd::Echo { mailbox, page } => echo::serve(&mailbox, page.as_deref()).map(|()| ExitCode::SUCCESS),
        Cmd::Leapwatch(a) => leap::watch(&a).map(|()| ExitCode::SUCCESS),
        Cmd::Timex => timex().map(|()| ExitCode::SUCCESS),
        Cmd::Reads(a) => reads::serve(&a).map(|()| ExitCode::SUCCESS),
        Cmd::Pollwatch(a) => pollwatch::watch(&a).map(|()| ExitCode::SUCCESS),
        Cmd::Counter => {
            println!("{}", vmclock::counter::read());
            Ok(ExitCode::SUCCESS)
        }
    };
    r.unwrap_or_else(|e| {
        eprintln!("vmtime-lab: {e:#}");
        ExitCode::FAILURE
    })
}
