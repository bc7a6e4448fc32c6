//! Check `phc`.

use super::stats::us;
use super::{Lab, SEC};
use anyhow::{bail, ensure, Result};
use std::time::{Duration, Instant};

impl Lab {
    /// 6. QEMU's vmclock page filled with real time (gdbstub) before the driver probes: the
    ///    driver registers a PTP clock, read by `vmtime phc` with the real ioctls.
    pub(super) fn phc(&mut self) -> Result<String> {
        let frozen = self.stop()?;
        let (predicted, budget) = self.write_qemu_page_and_resume(frozen, 0x1000, 1)?;
        let map = self.after_resume(predicted, budget, 0x1000, 1)?;
        // QEMU's page is off by the map prediction, within its budget (in its maxerror).
        let tolerance_ns = 2e6 + self.budget_ns;
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko", 10 * SEC)?;
        let list = self.vm.sh_ok("vmtime-full phc list --json", 10 * SEC)?;
        let list: serde_json::Value = serde_json::from_str(&list)?;
        let Some(dev) = list.as_array().and_then(|l| l.iter().find(|d| d["driver"] == "vmclock")) else {
            bail!("the driver registered no VMclock PTP clock: {list}")
        };
        let path = dev["dev"].as_str().unwrap_or_default().to_string();
        // Let sync step the guest onto the re-mapped ivshmem page (its marker changed) first.
        let t = Instant::now();
        while self.mailbox()?.ask()?.clock_error().abs() > 1_000_000 {
            ensure!(t.elapsed() < Duration::from_secs(5), "the guest clock did not return within 1 ms of the host");
            std::thread::sleep(Duration::from_millis(20));
        }
        let read = self.vm.sh_ok(&format!("vmtime-full phc read {path} --json"), 20 * SEC)?;
        let read: serde_json::Value = serde_json::from_str(&read)?;
        let rows = read.as_array().cloned().unwrap_or_default();
        let works: Vec<String> = rows
            .iter()
            .filter(|r| r["error"].is_null())
            .map(|r| {
                format!(
                    "{} {:+.1} µs",
                    r["method"].as_str().unwrap_or("?"),
                    r["offset_ns"].as_f64().unwrap_or(f64::NAN) / 1e3
                )
            })
            .collect();
        ensure!(!works.is_empty(), "no reading method works: {read}");
        // The driver's clock is TAI: PHC − CLOCK_REALTIME = 37 s, within the map's budget.
        let off = rows.iter().find_map(|r| r["offset_ns"].as_f64()).unwrap_or(f64::NAN);
        ensure!(
            (off - 37e9).abs() < tolerance_ns,
            "PHC − CLOCK_REALTIME is {off} ns, not 37 s (TAI) within {} (2 ms + the map's budget)",
            us(tolerance_ns)
        );
        ensure!(
            dev["timescale"].as_str().unwrap_or("").contains("pure time source"),
            "vmtime does not take {dev} for a pure time source"
        );
        Ok(format!(
            "{path} {} registered by ptp_vmclock; PHC − guest CLOCK_REALTIME by method: {}; {map}",
            dev["clock_name"],
            works.join(", ")
        ))
    }
}
