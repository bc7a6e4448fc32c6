//! Stopping the VM, writing QEMU's own vmclock page for the map it will have, and resuming it
//! (shared by `phc` and `disruption`).

use super::page::{period_of, qemu_page, read_page};
use super::stats::{loadavg, us};
use super::Lab;
use crate::vm::QEMU_VMCLOCK_ADDR;
use anyhow::{ensure, Result};
use vmclock::abi::{self};
use vmclock::Snapshot;

impl Lab {
    /// Stops the VM. The guest's counter stops with it (TCG freezes it while the VM is stopped):
    /// its frozen value (midpoint) and half-uncertainty, from the offset measured just before.
    pub(super) fn stop(&mut self) -> Result<(u64, u64)> {
        let o = self.measure_offset()?;
        let h0 = vmclock::counter::read();
        self.vm.qmp("stop", serde_json::json!({}))?;
        let h1 = vmclock::counter::read();
        // The map moves on resume: echoes fall back to the round trip until it is measured again.
        self.mailbox()?.offset = None;
        let half = h1.wrapping_sub(h0) / 2;
        Ok((h0.wrapping_add(half).wrapping_add(o.ticks), half + o.half))
    }

    /// With the VM stopped: writes QEMU's own vmclock page (guest-physical, through the gdbstub)
    /// for the counter map the guest will have when it resumes at a planned instant, with the
    /// map's uncertainty added to the page's maxerror, then resumes it there. Returns the
    /// predicted offset and the uncertainty budget (ticks).
    pub(super) fn write_qemu_page_and_resume(
        &mut self,
        frozen: (u64, u64),
        marker: u64,
        generation: u64,
    ) -> Result<(u64, u64)> {
        use vmclock::abi::flags;
        let host = read_page(&self.host_page)?;
        let hz = period_of(&host)?.hz();
        let mut gdb = self.vm.gdb()?;
        let old = qemu_page(&mut gdb).ok();
        let seq = old.map_or(0, |s| s.seq_count());
        // Resume 150 ms from now (the gdbstub write must be done by then, even on a busy
        // machine); QMP `cont` answers within a millisecond or two on an idle one.
        let resume_at = vmclock::counter::read().wrapping_add((hz * 0.15) as u64);
        let predicted = frozen.0.wrapping_sub(resume_at);
        // + the time QEMU takes to act on `cont`: 5 ms, or twice the longest delay seen so far
        // (a busy machine: 12–27 ms were seen at load average 15).
        let budget = frozen.1 + self.cont_slack.max((hz / 200.0) as u64);
        let mut page = vmtime_core::relay::transform(&host, &vmtime_core::relay::CounterMap::offset_only(predicted))?;
        let budget_ns = (budget as f64 / hz * 1e9).ceil() as u64;
        page.time_maxerror_nanosec.set(page.time_maxerror_nanosec.get().saturating_add(budget_ns));
        page.disruption_marker.set(marker);
        page.vm_generation_counter.set(generation);
        page.flags.set((page.flags.get() | flags::VM_GEN_COUNTER_PRESENT) & !flags::NOTIFICATION_PRESENT);
        page.seq_count.set((seq | 1).wrapping_add(1));
        let bytes = Snapshot::new(page, abi::PAGE_SIZE)?.to_bytes();
        gdb.write_phys(QEMU_VMCLOCK_ADDR, &bytes)?;
        let back = gdb.read_phys(QEMU_VMCLOCK_ADDR, abi::ABI_SIZE)?;
        ensure!(back == bytes, "QEMU's vmclock page did not take the write");
        drop(gdb); // closing the gdbstub leaves the VM stopped
        ensure!((vmclock::counter::read().wrapping_sub(resume_at) as i64) < 0, "missed the planned resume instant");
        while (vmclock::counter::read().wrapping_sub(resume_at) as i64) < 0 {
            std::hint::spin_loop();
        }
        self.vm.qmp("cont", serde_json::json!({}))?;
        Ok((predicted, budget))
    }

    /// After a resume: the measured map, how far the prediction was from it, and the relay
    /// (ivshmem page) moved to it. A prediction beyond its budget (QEMU took longer than 5 ms to
    /// act on `cont`: a busy machine) is made again, stop, write, resume, up to 4 times.
    pub(super) fn after_resume(
        &mut self,
        mut predicted: u64,
        mut budget: u64,
        mut marker: u64,
        generation: u64,
    ) -> Result<String> {
        let hz = self.hz;
        let ns = move |t: i64| t as f64 / hz * 1e9;
        let mut misses = Vec::new();
        loop {
            let measured = self.measure_offset()?.ticks;
            let err = predicted.wrapping_sub(measured) as i64;
            if err.unsigned_abs() <= budget {
                self.budget_ns = ns(budget as i64);
                self.start_relay(&self.host_page.clone(), measured)?;
                let again = if misses.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; made again, with a new marker, after predictions {} off (load average {})",
                        misses.join(", "),
                        loadavg()
                    )
                };
                return Ok(format!(
                    "map predicted {} from the measured one (budget ±{}){again}",
                    us(ns(err)),
                    us(ns(budget as i64))
                ));
            }
            misses.push(us(ns(err)));
            // The miss is QEMU's delay in acting on `cont`: the next budget covers twice it.
            self.cont_slack = self.cont_slack.max(err.unsigned_abs().saturating_mul(2));
            ensure!(
                misses.len() < 5,
                "QEMU's page map was predicted off beyond its {} budget 5 times: {} (load average {})",
                us(ns(budget as i64)),
                misses.join(", "),
                loadavg()
            );
            // The stop moved the guest's counter again: a new disruption for the guest (its
            // clock stood still meanwhile), so the page says so with a new marker.
            marker = marker.wrapping_add(1);
            let frozen = self.stop()?;
            (predicted, budget) = self.write_qemu_page_and_resume(frozen, marker, generation)?;
        }
    }
}
