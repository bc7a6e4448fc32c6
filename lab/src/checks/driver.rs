//! Check `driver`.

use super::page::read_page;
use super::stats::us;
use super::{Lab, SEC};
use crate::echo::Echo;
use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;

impl Lab {
    /// 7. The stock guest's own ptp_vmclock on the relayed page (ivshmem + `vmtime qemu`'s SSDT,
    ///    QEMU unmodified): it registers, /dev/vmclock0 and a PTP clock appear, the page read
    ///    through the driver is the relayed one, its time holds this machine's clock inside its
    ///    bounds, and the PTP clock's three reading methods agree with it.
    pub(super) fn driver(&mut self) -> Result<String> {
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko", 10 * SEC)?;
        let dmesg = self.vm.sh_ok("dmesg | grep -i vmclock", 5 * SEC)?;
        ensure!(dmesg.contains("registered miscdev, PTP"), "ptp_vmclock did not register on the relayed page: {dmesg}");
        let node = self.vm.sh_ok("cat /sys/bus/platform/devices/AMZNC10C:00/firmware_node/path", 5 * SEC)?;
        self.vm.sh_ok("ls /dev/vmclock0 /dev/ptp0", 5 * SEC).context("the driver's devices")?;
        // The counter map, measured; the relay restarted with it (as a VMM starts the relay with
        // the guest's TSC offset).
        let o = self.measure_offset()?;
        self.start_relay(&self.host_page.clone(), o.ticks)?;
        let relayed = read_page(&self.guest_page)?;
        let show: serde_json::Value =
            serde_json::from_str(&self.vm.sh_ok("vmtime show /dev/vmclock0 --json", 10 * SEC)?)?;
        ensure!(show["valid"] == true, "/dev/vmclock0 is not a valid page: {}", show["error"]);
        let f = &show["fields"];
        ensure!(
            f["disruption_marker"].as_u64() == Some(relayed.disruption_marker())
                && f["counter_value"].as_u64() == relayed.counter_value(),
            "/dev/vmclock0 is not the relayed page: marker {} counter {} (relayed: {:#x}, {:?})",
            f["disruption_marker"],
            f["counter_value"],
            relayed.disruption_marker(),
            relayed.counter_value()
        );
        let (e, aside) = self.clean_echoes(200, Duration::from_millis(5), Duration::from_secs(30), Echo::page_noise)?;
        let now = self.page_verdict(&e, aside, o)?;
        // The PTP clock against the page, both read in the guest: PHC − CLOCK_REALTIME by each
        // method, and page − CLOCK_REALTIME from an echo just before and just after.
        let page_minus_rt = |e: &Echo| e.page.map(|p| p.0 - e.guest_realtime).unwrap_or(i128::MAX);
        let b = page_minus_rt(&self.mailbox()?.ask()?);
        let read: serde_json::Value =
            serde_json::from_str(&self.vm.sh_ok("vmtime-full phc read /dev/ptp0 --json", 20 * SEC)?)?;
        let a = page_minus_rt(&self.mailbox()?.ask()?);
        // The 7.3 driver's PHC reads TAI: TAI − UTC = 37 s (as `vmtime host --tai-offset 37`).
        // Page − CLOCK_REALTIME moves only as fast as the guest clock's rate error (it is not
        // disciplined yet): more than 1 ms across one PHC read means a guest clock too wrong
        // to compare with.
        ensure!(
            (a - b).abs() < 1_000_000,
            "page − guest CLOCK_REALTIME moved {} during one PHC read: the guest clock's rate is wrong",
            us((a - b) as f64)
        );
        let expect = (a + b) / 2 + 37_000_000_000;
        let tol = 200_000 + (a - b).abs();
        let mut agree = Vec::new();
        for r in read.as_array().cloned().unwrap_or_default() {
            let m = r["method"].as_str().unwrap_or("?").to_string();
            let Some(off) = r["offset_ns"].as_f64() else { bail!("PHC method {m} failed: {}", r["error"]) };
            let diff = off as i128 - expect;
            ensure!(diff.abs() <= tol, "PHC ({m}) − page = {} beyond ±{}: {read}", us(diff as f64), us(tol as f64));
            agree.push(format!("{m} {:+.1} µs", diff as f64 / 1e3));
        }
        ensure!(agree.len() == 3, "expected PRECISE, EXTENDED and basic readings: {read}");
        Ok(format!(
            "ptp_vmclock bound {} (\"{}\"), /dev/vmclock0 + /dev/ptp0; `vmtime show /dev/vmclock0` decodes the \
             relayed page; the page's time (as `vmtime now` reads it, through the driver's mmap) vs this machine: \
             {now}; PHC (TAI) − page by method: {}",
            node.trim(),
            dmesg.lines().find(|l| l.contains("registered")).unwrap_or("").trim(),
            agree.join(", ")
        ))
    }
}
