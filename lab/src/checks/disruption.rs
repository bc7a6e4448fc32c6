//! Check `disruption`.

use super::page::qemu_page;
use super::stats::{quantiles, us};
use super::{Lab, SEC};
use anyhow::{bail, ensure, Result};
use std::time::{Duration, Instant};

impl Lab {
    /// 4. A real disruption: savevm, 2 s with the VM stopped, loadvm. QEMU bumps the marker of
    ///    its page; vmtime sync, reading /dev/vmclock0 through the driver, steps at once.
    pub(super) fn disruption(&mut self) -> Result<String> {
        // Sync now follows QEMU's page through the driver.
        // Gone before the next starts: a real sync holds the single-instance lock until it exits.
        self.vm.sh("killall vmtime; while pidof vmtime >/dev/null; do sleep 0.1; done", 5 * SEC)?;
        self.vm.sh_ok(
            "vmtime sync --source /dev/vmclock0 --socket /tmp/sync2.sock </dev/null >/tmp/sync2.log 2>&1 &",
            5 * SEC,
        )?;
        // Started once its control socket answers (after its first turn).
        let t = Instant::now();
        while self.vm.sh("vmtime status --socket /tmp/sync2.sock >/dev/null 2>&1", 5 * SEC)?.1 != 0 {
            ensure!(t.elapsed() < Duration::from_secs(10), "sync on /dev/vmclock0 did not start");
        }
        std::thread::sleep(Duration::from_secs(3)); // a few observations on the device
        let frozen = self.stop()?;
        self.vm.hmp("savevm lab")?;
        let mut gdb = self.vm.gdb()?;
        let saved = qemu_page(&mut gdb)?;
        drop(gdb);
        std::thread::sleep(Duration::from_secs(2)); // the snapshot ages with the VM stopped
        self.vm.hmp("loadvm lab")?;
        let mut gdb = self.vm.gdb()?;
        let loaded = qemu_page(&mut gdb)?;
        drop(gdb);
        ensure!(
            loaded.disruption_marker() != saved.disruption_marker(),
            "QEMU did not change the disruption marker on loadvm ({:#x})",
            saved.disruption_marker()
        );
        // Our page keeps QEMU's new marker; the generation changes too (a restore).
        let generation = saved.vm_generation_counter().unwrap_or(0).wrapping_add(1);
        let (predicted, budget) = self.write_qemu_page_and_resume(frozen, loaded.disruption_marker(), generation)?;
        // Back within 5 ms of this machine, plus what QEMU's page may be off by (the map's budget:
        // QEMU acts on `cont` late on a busy machine; after_resume below redoes a map beyond it).
        let bound = 5_000_000 + (budget as f64 / self.hz * 1e9) as i128;
        let mut first = self.back_within(bound)?;
        let map = self.after_resume(predicted, budget, loaded.disruption_marker(), generation)?;
        if first.is_none() {
            // The map was made again (a new marker): the step comes from that resume.
            first = self.back_within(5_000_000 + self.budget_ns as i128)?;
        }
        let log = self.vm.sh_ok("cat /tmp/sync2.log", 5 * SEC)?;
        let Some((within, _)) = first else {
            bail!("the guest did not step back within {} (+ the map's budget) of the host in 5 s: {log}", us(5e6))
        };
        let step = log.lines().rfind(|l| l.contains("step CLOCK_REALTIME")).unwrap_or("no step").to_string();
        ensure!(log.contains("disruption marker changed"), "sync did not see the marker change: {log}");
        let e = self.echoes(50, Duration::from_millis(20))?;
        let (p50, _, max) = quantiles(e.iter().map(|e| e.clock_error().abs() as f64).collect());
        Ok(format!(
            "QEMU changed the marker {:#x} → {:#x} on loadvm; sync (on /dev/vmclock0): \"{step}\" within {:.0} ms of \
             the resume; then |guest − host| p50 {} max {} (QEMU's page is off by its map prediction: {map})",
            saved.disruption_marker(),
            loaded.disruption_marker(),
            within.as_secs_f64() * 1e3,
            us(p50),
            us(max)
        ))
    }
}
