//! Checks `sync-driver` and `chrony`: a discipline of the stock guest's clock, and the
//! comparison table's row.

use super::stats::{dist, floor_of, Dist};
use super::{Lab, SEC};
use crate::echo::Echo;
use anyhow::{bail, ensure, Context, Result};
use std::time::{Duration, Instant};

/// One guest clock discipline's figures (the comparison table).
pub(super) struct Row {
    pub(super) who: &'static str,
    pub(super) from_s: f64,
    pub(super) within_1ms: Option<Duration>,
    pub(super) within_10us: Option<Duration>,
    pub(super) held: Dist,
    pub(super) floor: String,
    pub(super) kernel: serde_json::Value,
}

pub(super) fn secs(d: Option<Duration>, deadline: u64) -> String {
    d.map_or(format!("not in {deadline} s"), |d| format!("{:.2} s", d.as_secs_f64()))
}

impl Lab {
    /// 8./9. A discipline of the stock guest's clock from 2001: `vmtime sync` on /dev/vmclock0,
    ///    or chronyd on the driver's PTP clock. Time to 1 ms and to 10 µs, then the offset held.
    pub(super) fn discipline(&mut self, chrony: bool) -> Result<Row> {
        let before = self.mailbox()?.ask()?.clock_error();
        ensure!(before.abs() > 1_000_000_000, "the guest clock should start wrong (RTC 2001), it is {before} ns off");
        let (log, start) = if chrony {
            (
                "/tmp/chrony.log",
                "mkdir -p /run/chrony /var/lib/chrony && chronyd -f /etc/chrony/chrony.conf -d -u root </dev/null \
                 >/tmp/chrony.log 2>&1 &",
            )
        } else {
            (
                "/tmp/sync.log",
                "vmtime sync --source /dev/vmclock0 --socket /tmp/sync.sock </dev/null >/tmp/sync.log 2>&1 &",
            )
        };
        // From the moment the command is sent (its serial round trip counts for both).
        let t0 = Instant::now();
        self.vm.sh_ok(start, 5 * SEC)?;
        let within_1ms = self.converge_from(t0, 1_000_000, Duration::from_secs(60))?;
        let within_10us = self.converge_from(t0, 10_000, Duration::from_secs(60))?;
        let Some(_) = within_1ms else {
            let l = self.vm.sh(&format!("tail -n 20 {log}"), 5 * SEC)?.0;
            bail!("not within 1 ms of the host in 60 s; {log}: {l}")
        };
        std::thread::sleep(Duration::from_secs(10)); // settle, then hold
        let (e, aside) =
            self.clean_echoes(200, Duration::from_millis(100), Duration::from_secs(60), Echo::clock_noise)?;
        let held = dist(e.iter().map(Echo::clock_error));
        let floor = floor_of(&e, Echo::clock_noise, aside);
        let kernel: serde_json::Value =
            serde_json::from_str(&self.vm.sh_ok("vmtime-lab timex", 5 * SEC)?).context("vmtime-lab timex")?;
        Ok(Row {
            who: if chrony { "chronyd (refclock PHC /dev/ptp0 tai)" } else { "vmtime sync (/dev/vmclock0)" },
            from_s: before as f64 / -1e9,
            within_1ms,
            within_10us,
            held,
            floor,
            kernel,
        })
    }

    pub(super) fn row_line(&mut self, chrony: bool) -> Result<String> {
        let r = self.discipline(chrony)?;
        let line = format!(
            "{}: stepped from {:.0} s off; within 1 ms after {}, within 10 µs after {}; held: |guest − host| {}; {}; \
             kernel maxerror {} µs esterror {} µs TAI offset {} s",
            r.who,
            r.from_s,
            secs(r.within_1ms, 60),
            secs(r.within_10us, 60),
            r.held,
            r.floor,
            r.kernel["maxerror_us"],
            r.kernel["esterror_us"],
            r.kernel["tai"]
        );
        ensure!(r.held.p99 < 1e6, "{line}: held p99 ≥ 1 ms");
        self.row = Some(r);
        Ok(line)
    }

    pub(super) fn sync_driver(&mut self) -> Result<String> {
        self.row_line(false)
    }

    pub(super) fn chrony(&mut self) -> Result<String> {
        self.driver_loaded()?;
        self.row_line(true)
    }

    /// The chrony guest: the driver loaded and the counter map measured as in `driver`.
    pub(super) fn driver_loaded(&mut self) -> Result<()> {
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko && ls /dev/ptp0", 10 * SEC)?;
        let o = self.measure_offset()?;
        self.start_relay(&self.host_page.clone(), o.ticks)
    }
}
