//! Check `relay`, and the page verdict `driver` shares.

use super::stats::{dist, floor_of, us};
use super::{Lab, GUEST_PAGE, SEC};
use crate::echo::{self, Echo};
use anyhow::{bail, ensure, Result};
use std::time::Duration;

impl Lab {
    /// 2. host + relay → the guest's page (ivshmem), with a measured counter map; the error of
    ///    the time the guest reads from it against this machine's clock.
    pub(super) fn relay(&mut self) -> Result<String> {
        let o = self.measure_offset()?;
        self.start_relay(&self.host_page.clone(), o.ticks)?;
        let out = self.vm.sh_ok(&format!("vmtime show {GUEST_PAGE} --json"), 10 * SEC)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        ensure!(v["valid"] == true, "the guest's page is not valid: {}", v["error"]);
        let (e, aside) = self.clean_echoes(200, Duration::from_millis(5), Duration::from_secs(30), Echo::page_noise)?;
        self.page_verdict(&e, aside, o)
    }

    /// Every echo's page time inside the page's bounds (widened by the echo's noise floor).
    pub(super) fn page_verdict(&self, e: &[Echo], aside: usize, o: echo::Offset) -> Result<String> {
        let outside: Vec<&Echo> = e.iter().filter(|e| e.page_contains_truth() != Some(true)).collect();
        let d = dist(e.iter().filter_map(Echo::page_error));
        let floor = floor_of(e, Echo::page_noise, aside);
        let rt = dist(e.iter().map(Echo::half_window));
        if let Some(x) = outside.first() {
            bail!(
                "{} of {} guest page reads had bounds that excluded this machine's clock (first: error {}, bound ±{}, \
                 floor {}); guest page − host clock {d}; {floor}",
                outside.len(),
                e.len(),
                us(x.page_error().unwrap_or(0) as f64),
                us(x.page.map_or(0, |p| p.1) as f64),
                us(x.page_noise() as f64)
            );
        }
        Ok(format!(
            "offset measured ±{} ticks ({:.0} ns at {:.3} GHz); guest page − host clock {d}; {floor}; echo round \
             trip half-width p50 {} (not in the error); all inside the page's bounds",
            o.half,
            o.half as f64 / self.hz * 1e9,
            self.hz / 1e9,
            us(rt.p50)
        ))
    }
}
