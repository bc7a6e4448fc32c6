//! `vmtime status`: asks a running daemon over its control socket.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The daemon's control socket (default: the host page's).
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Send this request instead of "status" (a relay takes "migrated [OFFSET [RATIO BITS]]" and
    /// "restored").
    #[arg(long)]
    pub(crate) request: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let request = a.request.as_deref().unwrap_or("status");
    let (line, _) = match a.socket {
        Some(socket) => vmtime_sys::serve::request(&socket, request, crate::ops::control::CLIENT_TIMEOUT)?,
        None => {
            // The host's socket: this user's own daemon's, else the system daemon's. Which one
            // answers is said on stderr (stdout stays the reply).
            use vmtime_sys::files::{locate_runtime_file, runtime_dir, Found, SYSTEM_RUNTIME_DIR};
            let (socket, found) = locate_runtime_file("host.page.sock");
            let whose = match found {
                Found::Own if runtime_dir() == std::path::Path::new(SYSTEM_RUNTIME_DIR) => "the system daemon's",
                Found::Own => "this user's own daemon's",
                Found::System => "the system daemon's",
            };
            eprintln!("vmtime status: asking {} ({whose})", socket.display());
            vmtime_sys::serve::request(&socket, request, crate::ops::control::CLIENT_TIMEOUT).map_err(|e| {
                let looked = if found == Found::Own && runtime_dir() != std::path::Path::new(SYSTEM_RUNTIME_DIR) {
                    format!(" (no system daemon's socket at {SYSTEM_RUNTIME_DIR}/host.page.sock either)")
                } else {
                    String::new()
                };
                let hint = match &e {
                    vmtime_sys::serve::ClientError::NoDaemon { err, .. }
                        if err.kind() == std::io::ErrorKind::PermissionDenied =>
                    {
                        "; the daemons' sockets are 0600: run this as root or as the daemon's user (sudo vmtime status)"
                    }
                    _ => "",
                };
                anyhow::anyhow!("{e}{looked}{hint}")
            })?
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).context("the daemon's reply is not JSON")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (k, val) in v.as_object().into_iter().flatten() {
            println!("{k:<20} {val}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
