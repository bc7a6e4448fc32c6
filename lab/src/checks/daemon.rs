//! The daemons the lab starts on this machine: `vmtime host` and `vmtime relay`.

use super::page::read_page;
use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon we started; ended by its pid when dropped.
pub(crate) struct Daemon(Child);

impl Daemon {
    /// Starts `bin ARGS` and returns once a stderr line contains `ready`.
    pub(crate) fn start(bin: &Path, args: &[&str], ready: &str) -> Result<Daemon> {
        let mut child = Command::new(bin).args(args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let mut err = BufReader::new(child.stderr.take().context("stderr")?);
        let mut seen = String::new();
        loop {
            let mut l = String::new();
            if err.read_line(&mut l)? == 0 {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} {args:?} exited: {seen}", bin.display());
            }
            seen.push_str(&l);
            if l.contains(ready) {
                break;
            }
        }
        std::thread::spawn(move || for _ in err.lines() {});
        Ok(Daemon(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vmtime relay` from `host_page` to `guest_page` under a TSC offset (no notification: QEMU has
/// no way to notify for a file).
pub(crate) fn relay_daemon(vmtime: &Path, host_page: &Path, guest_page: &Path, offset: u64) -> Result<Daemon> {
    let seq_before = read_page(guest_page).map(|p| p.seq_count()).ok();
    let args = [
        "relay",
        "--host-page",
        host_page.to_str().context("path")?,
        "--guest-page",
        guest_page.to_str().context("path")?,
        "--tsc-offset",
        &(offset as i64).to_string(),
        "--no-notify",
    ];
    let d = Daemon::start(vmtime, &args, "control socket").context("start vmtime relay")?;
    // The relay says it is ready before its first write: wait for that write (the guest page's
    // seq_count moves), so that what the lab reads next is the new map's page.
    let t = Instant::now();
    while read_page(guest_page).map(|p| p.seq_count()).ok() == seq_before {
        ensure!(t.elapsed() < Duration::from_secs(10), "vmtime relay did not write {} in 10 s", guest_page.display());
        std::thread::sleep(Duration::from_millis(10)); // polls a file, deadline above
    }
    Ok(d)
}
