//! Check `sync`.

use super::stats::{dist, floor_of, us};
use super::{Lab, GUEST_PAGE, SEC};
use crate::echo::Echo;
use anyhow::{bail, ensure, Result};
use std::time::Duration;

impl Lab {
    /// 3. vmtime sync in the guest on its real clock: the start-up step from 2001, then the offset
    ///    it holds against this machine's clock.
    pub(super) fn sync(&mut self) -> Result<String> {
        let before = self.mailbox()?.ask()?.clock_error();
        ensure!(before.abs() > 1_000_000_000, "the guest clock should start wrong (RTC 2001), it is {before} ns off");
        self.vm.sh_ok(
            &format!("vmtime sync --source {GUEST_PAGE} --socket /tmp/sync.sock </dev/null >/tmp/sync.log 2>&1 &"),
            5 * SEC,
        )?;
        let conv = self.converge(1_000_000, Duration::from_secs(20))?;
        let log = self.vm.sh_ok("cat /tmp/sync.log", 5 * SEC)?;
        let Some(within) = conv else { bail!("not within 1 ms of the host after 20 s; sync log: {log}") };
        // Let the frequency settle, then hold.
        std::thread::sleep(Duration::from_secs(10));
        let (e, aside) =
            self.clean_echoes(200, Duration::from_millis(100), Duration::from_secs(60), Echo::clock_noise)?;
        let d = dist(e.iter().map(Echo::clock_error));
        let floor = floor_of(&e, Echo::clock_noise, aside);
        let (check, _) = self.vm.sh(&format!("vmtime-full check {GUEST_PAGE} --samples 1000 --json"), 30 * SEC)?;
        let check = serde_json::from_str::<serde_json::Value>(&check).ok();
        let steps = log.lines().filter(|l| l.contains("step CLOCK_REALTIME")).count();
        ensure!(steps >= 1, "no start-up step in the sync log: {log}");
        ensure!(d.p99 < 1e6, "held |guest − host| {d} ≥ 1 ms at p99; {floor}");
        Ok(format!(
            "stepped from {:.0} s off; within 1 ms of the host after {:.2} s; held over 20 s: |guest CLOCK_REALTIME \
             − host| {d}; {floor}; in-guest `vmtime check`: {}",
            before as f64 / -1e9,
            within.as_secs_f64(),
            check.map_or("no result".into(), |c| summary_of_check(&c))
        ))
    }
}

fn summary_of_check(c: &serde_json::Value) -> String {
    let e = &c["error_ns"];
    let ns = |k: &str| e[k].as_f64().map_or("?".into(), us);
    format!(
        "page − guest clock p50 {} p99 {} max {}, {}/{} samples inside their window",
        ns("p50"),
        ns("p99"),
        ns("max"),
        c["inside"],
        c["samples"]
    )
}
