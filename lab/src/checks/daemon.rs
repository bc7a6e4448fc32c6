//! The daemons the lab starts on this machine: `vmtime host` and `vmtime relay`.

use super::page::read_page;
use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon we started; ended by its pid when dropped.
pub(crate) struct Daemon(Child);

impl Daemon {
    /// Starts the daemon `bin ARGS` and returns once its control socket `control` answers
    /// `status`: the runtime answers after the daemon's first turn (a host's first page; a
    /// relay's first guest page is written before that). What it logged is kept for the error
    /// when it exits first, or does not answer within 30 s.
    pub(crate) fn start_answering(bin: &Path, args: &[&str], control: &Path) -> Result<Daemon> {
        let mut child = Command::new(bin).args(args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let err = BufReader::new(child.stderr.take().context("stderr")?);
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = said.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                let mut s = log.lock().unwrap_or_else(|p| p.into_inner());
                if s.len() < 64 * 1024 {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
        });
        let mut d = Daemon(child);
        let said = || said.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let t = Instant::now();
        loop {
            if let Ok((line, _)) = vmtime_sys::serve::request(control, "status", Duration::from_secs(5)) {
                if line.contains("\"role\"") {
                    return Ok(d);
                }
            }
            if let Some(status) = d.0.try_wait()? {
                bail!("{} {args:?} exited ({status}): {}", bin.display(), said());
            }
            ensure!(
                t.elapsed() < Duration::from_secs(30),
                "{} {args:?} did not answer status on {} in 30 s: {}",
                bin.display(),
                control.display(),
                said()
            );
            std::thread::sleep(Duration::from_millis(10)); // polls the socket, deadline above
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vmtime relay` from `host_page` to `guest_page` under a TSC offset; with `doorbell`, it
/// notifies the guest through QEMU's doorbell socket (`vmtime qemu --notify`), else not at all.
pub(crate) fn relay_daemon(
    vmtime: &Path,
    host_page: &Path,
    guest_page: &Path,
    offset: u64,
    doorbell: Option<&Path>,
) -> Result<Daemon> {
    let seq_before = read_page(guest_page).map(|p| p.seq_count()).ok();
    let notify = match doorbell {
        Some(d) => vec!["--doorbell", d.to_str().context("path")?],
        None => vec!["--no-notify"],
    };
    let args = [
        "relay",
        "--host-page",
        host_page.to_str().context("path")?,
        "--guest-page",
        guest_page.to_str().context("path")?,
        "--tsc-offset",
        &(offset as i64).to_string(),
    ];
    let args: Vec<&str> = args.iter().copied().chain(notify).collect();
    let control = PathBuf::from(format!("{}.sock", guest_page.display()));
    let d = Daemon::start_answering(vmtime, &args, &control).context("start vmtime relay")?;
    // What the lab reads next must be the new map's page: the relay's first write (the guest
    // page's seq_count moves) comes before it answers; checked, bounded.
    let t = Instant::now();
    while read_page(guest_page).map(|p| p.seq_count()).ok() == seq_before {
        ensure!(t.elapsed() < Duration::from_secs(10), "vmtime relay did not write {} in 10 s", guest_page.display());
        std::thread::sleep(Duration::from_millis(10)); // polls a file, deadline above
    }
    Ok(d)
}

/// One request to a daemon's control socket (`line`), its answer; an answer with an error is
/// an error.
pub(crate) fn tell(socket: &Path, line: &str) -> Result<serde_json::Value> {
    let (l, _) = vmtime_sys::serve::request(socket, line, std::time::Duration::from_secs(5))?;
    let v: serde_json::Value = serde_json::from_str(&l)?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("{}: `{line}`: {e}", socket.display());
    }
    Ok(v)
}
