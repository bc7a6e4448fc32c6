//! Linux system interfaces for vmtime. This crate and `vmclock` are the only ones with `unsafe`;
//! every block names the invariant it relies on.
//!
//! One module writes a clock: [`timex`] (`timex::apply`, `clock_adjtime` on CLOCK_REALTIME),
//! called only by `vmtime sync` outside a dry run. Everything else only reads clocks.

pub mod clock;
pub mod doorbell;
pub mod event;
pub mod feed;
pub mod files;
pub mod follow;
pub mod kvm;
pub mod ntp;
pub mod phc;
pub mod procs;
pub mod serve;
pub mod signals;
pub mod timex;

pub use clock::{aba_sample, gettime, AbaSample, ClockId};
pub use timex::{read_timex, AdvisoryTimex, KernelTimex, TimexError};

/// An OS error with what was being done, and the remedy when the cause is the open-files limit
/// (a bare "Too many open files (os error 24)" names neither).
pub fn io_context(e: std::io::Error, doing: &str) -> std::io::Error {
    let hint = limit_hint(&e);
    std::io::Error::new(e.kind(), format!("cannot {doing}: {e}{hint}"))
}

/// The remedy to add to an error whose cause is the open-files limit, else "".
pub fn limit_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (the open-files limit is too low: raise it, e.g. ulimit -n 1024, or LimitNOFILE= in the unit)"
        }
        _ => "",
    }
}

/// Lets SIGPIPE end the process, as it does for other command-line tools: `vmtime show | head`
/// then stops quietly instead of failing to print. Rust ignores SIGPIPE by default so a daemon
/// writing to a departed client gets EPIPE instead of dying: call this only from the one-shot
/// commands, never from a daemon.
pub fn sigpipe_default() {
    // SAFETY: signal() with SIG_DFL installs no handler (no code runs in signal context); it only
    // changes this process's disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
