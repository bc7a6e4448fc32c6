//! `vmtime-lab pollwatch` (in the guest): waits in poll() on a vmclock device, as `vmtime sync`
//! does when the device notifies, and logs each wake-up: `wake COUNTER SEQ MARKER` (the guest's
//! counter just after poll() returned, then the page's seq_count and disruption marker as the
//! device's read() gives them; read() also acknowledges the seq_count to the driver). The first
//! line is `start COUNTER SEQ MARKER`. A driver whose poll() never waits (no notification) is
//! given up after 1000 wake-ups in a row with nothing new.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The vmclock device (/dev/vmclock0).
    #[arg(long)]
    device: PathBuf,
    /// How long to watch.
    #[arg(long)]
    seconds: u64,
}

fn read(f: &std::fs::File) -> Result<(u32, u64)> {
    let mut b = [0u8; 24];
    let n = f.read_at(&mut b, 0).context("read() the vmclock device")?;
    if n < 24 {
        bail!("the device gave {n} bytes");
    }
    let seq = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    let marker = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    Ok((seq, marker))
}

pub fn watch(a: &Args) -> Result<()> {
    let f = std::fs::File::open(&a.device).with_context(|| format!("open {}", a.device.display()))?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let (mut seq, marker) = read(&f)?;
    writeln!(out, "start {} {seq} {marker}", vmclock::counter::read())?;
    out.flush()?;
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut idle = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let ready = vmtime_sys::event::poll_readable(&[f.as_raw_fd()], left.as_millis().min(i32::MAX as u128) as i32)?;
        if !ready[0] {
            continue;
        }
        let c = vmclock::counter::read();
        let (s, m) = read(&f)?;
        writeln!(out, "wake {c} {s} {m}")?;
        out.flush()?;
        if s == seq {
            idle += 1;
            if idle >= 1000 {
                bail!("poll() on {} is readable with nothing new (no notification)", a.device.display());
            }
        } else {
            idle = 0;
        }
        seq = s;
    }
}
