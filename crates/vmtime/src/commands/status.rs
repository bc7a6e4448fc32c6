//! `vmtime status`: asks a running daemon over its control socket.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The daemon's control socket (default: the host page's).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
    /// Send this request instead of "status" (a relay takes "migrated [OFFSET [RATIO BITS]]" and
    /// "restored").
    #[arg(long)]
    request: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let socket = a.socket.unwrap_or_else(|| crate::paths::socket_for(&crate::paths::find_host_page()));
    let (line, _) = vmtime_sys::serve::request(
        &socket,
        a.request.as_deref().unwrap_or("status"),
        crate::ops::control::CLIENT_TIMEOUT,
    )?;
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
