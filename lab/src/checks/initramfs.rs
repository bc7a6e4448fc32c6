//! The guest's initramfs: busybox, vmtime, this lab, the driver module and the guest scripts.
//!
//! The guest's `vmtime` is the guest binary (`scripts/guest-binary`: sync, including --once,
//! waitsync, now, status, show); the full binary is there as `vmtime-full`, used only for what
//! the guest binary does not have (`feed`, `check`, `phc`).

use super::Args;
use crate::cpio::Cpio;
use anyhow::{Context, Result};
use std::path::Path;

/// Adds every file under `tree` (symlinks followed) to the archive, at the same relative path.
fn add_tree<W: std::io::Write>(c: &mut Cpio<W>, tree: &Path, rel: &Path) -> Result<()> {
    let here = tree.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&here)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let name = r.to_str().context("path")?;
        let meta = std::fs::metadata(e.path())?;
        if meta.is_dir() {
            c.dir(name)?;
            add_tree(c, tree, &r)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            c.file(name, meta.permissions().mode() & 0o777, &std::fs::read(e.path())?)?;
        }
    }
    Ok(())
}

pub(crate) fn initramfs(a: &Args, out: &Path, extra_tree: Option<&Path>) -> Result<()> {
    let f = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut c = Cpio::new(f);
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lab"] {
        c.dir(d)?;
    }
    c.char_dev("dev/console", 5, 1)?;
    c.file("init", 0o755, include_bytes!("../../guest/init"))?;
    c.file("lab/shell", 0o644, include_bytes!("../../guest/shell"))?;
    c.file("lab/timesync", 0o644, include_bytes!("../../guest/timesync"))?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    c.file("bin/busybox", 0o755, &read(&a.busybox)?)?;
    c.file("bin/vmtime", 0o755, &read(&a.vmtime_guest)?)?;
    c.file("bin/vmtime-full", 0o755, &read(&a.vmtime)?)?;
    c.file("bin/vmtime-lab", 0o755, &read(&std::env::current_exe()?)?)?;
    c.file("lib/ptp_vmclock.ko", 0o644, &read(&a.module)?)?;
    if let Some(t) = extra_tree {
        add_tree(&mut c, t, Path::new(""))?;
    }
    c.finish()?;
    Ok(())
}
