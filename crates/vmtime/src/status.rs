//! `vmtime status`: asks a running daemon over its control socket.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
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

/// Sends one request line and returns the first reply line.
pub fn request(socket: &std::path::Path, what: &str) -> Result<(String, UnixStream)> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("no daemon answers on {}", socket.display()))?;
    writeln!(s, "{what}").with_context(|| format!("cannot send to {}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).with_context(|| format!("no answer from {}", socket.display()))?;
    Ok((line, s))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let socket = a.socket.unwrap_or_else(|| crate::host::socket_for(&crate::host::default_page()));
    let (line, _) = request(&socket, a.request.as_deref().unwrap_or("status"))?;
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
