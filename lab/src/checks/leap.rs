//! Check `leap`.

use super::page::{period_of, read_page};
use super::stats::us;
use super::{Lab, SEC};
use anyhow::{bail, ensure, Context, Result};
use std::time::{Duration, Instant};
use vmclock::abi::{self, leap, status};
use vmclock::{PageBuilder, Tai, Timestamp};

impl Lab {
    /// 5. A leap second: the guest's page announces an insertion at the end of 2026-12-31 (a leap second
    ///    the page invents: none is scheduled, and the relay and sync refuse times before 2026-09-01); the
    ///    guest kernel, armed by vmtime sync, inserts it; CLOCK_TAI stays continuous.
    pub(super) fn leap(&mut self) -> Result<String> {
        let host = read_page(&self.host_page)?;
        let period = period_of(&host)?;
        // 2027-01-01T00:00:00Z, and TAI then (TAI − UTC 37 s before the leap, 38 after).
        let midnight_utc = 1_798_761_600u64;
        let midnight_tai_oop = Timestamp::<Tai>::from_parts(midnight_utc + 37, 0);
        let midnight_tai = Timestamp::<Tai>::from_parts(midnight_utc + 38, 0);
        let start = Timestamp::<Tai>::from_parts(midnight_utc + 37 - 12, 0); // 23:59:48 UTC
        let c0 = vmclock::counter::read();
        let page = |leap_state: u8, tai: i16 /* TAI − UTC */| {
            PageBuilder::new()
                .reference(abi::counter_id::X86_TSC, c0, start, period)
                .tai_minus_utc(tai)
                .status(status::SYNCHRONIZED)
                .leap(leap_state)
                .maxerror(1_000, 1)
        };
        // The lab publishes this page as a host would: one file, updated in place (seqlock).
        let leap_page = self.a.work.join("leap.page");
        let file = vmtime_sys::files::create_page(&leap_page, &page(leap::PRE_POS, 37).page_bytes())?;
        let mut writer =
            vmclock::Writer::new(vmclock::WritableMapping::new(vmclock::Mapping::map(file.file(), true)?)?);
        let offset = self.offset.context("no counter map")?.ticks;
        self.start_relay(&leap_page, offset)?;
        // The counter values where the page's state changes (a TAI page is continuous): the
        // inserted second 23:59:60 starts at TAI midnight+37 s (POS, and the TAI offset is already
        // 38 there, as `vmtime host` publishes it from a kernel in TIME_OOP) and ends at +38 s.
        let hz = period.hz();
        let counter_at = |t: Timestamp<Tai>| -> Result<u64> {
            let s = t.checked_sub(start).context("span")?.as_nanos_floor() as f64 / 1e9;
            Ok(c0.wrapping_add((s * hz) as u64))
        };
        let c_oop = counter_at(midnight_tai_oop)?;
        let c_mid = counter_at(midnight_tai)?;
        // Wait until the guest has stepped to the leap page (its marker changed), then watch.
        let t = Instant::now();
        let near = |t: i128| (t / 1_000_000_000 - i128::from(midnight_utc)).abs() < 30;
        while !near(self.mailbox()?.ask()?.guest_realtime) {
            ensure!(t.elapsed() < Duration::from_secs(10), "the guest did not step to the leap page");
            std::thread::sleep(Duration::from_millis(20));
        }
        let watch = self.vm.sh(
            &format!("vmtime-lab leapwatch --until-unix-s {} --max-s 40 >/tmp/leap.json 2>&1 &", midnight_utc + 3),
            5 * SEC,
        )?;
        ensure!(watch.1 == 0, "leapwatch: {}", watch.0);
        let deadline = Instant::now() + Duration::from_secs(30);
        for (at, state) in [(c_oop, leap::POS), (c_mid, leap::POST_POS)] {
            while (vmclock::counter::read().wrapping_sub(at) as i64) < 0 {
                ensure!(Instant::now() < deadline, "midnight did not come");
                std::hint::spin_loop();
            }
            writer.publish(&page(state, 38).build());
        }
        // leapwatch ends 3 s after midnight (guest time).
        let t = Instant::now();
        let out = loop {
            let (o, _) = self.vm.sh("cat /tmp/leap.json", 5 * SEC)?;
            if o.contains("tai_minus_utc_after") || o.contains("vmtime-lab") || t.elapsed() > Duration::from_secs(20) {
                break o;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let v: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| format!("leapwatch: {out}"))?;
        let steps = v["utc_steps"].as_array().cloned().unwrap_or_default();
        let jump = v["tai_jump_max_ns"].as_i64().unwrap_or(i64::MAX);
        let d = steps.first().and_then(|s| s["delta_ns"].as_i64()).unwrap_or(0);
        let unc = steps.first().and_then(|s| s["uncertainty_ns"].as_i64()).unwrap_or(0);
        let verdict = if steps.len() != 1 || (d + 1_000_000_000).abs() > 10_000_000 + unc {
            Err(format!("expected one UTC step of −1 s, saw {steps:?}"))
        } else if jump > 10_000_000 {
            Err(format!("CLOCK_TAI jumped by {jump} ns"))
        } else if v["tai_minus_utc_before"] != 37 || v["tai_minus_utc_after"] != 38 {
            Err(format!("TAI offset {} → {}", v["tai_minus_utc_before"], v["tai_minus_utc_after"]))
        } else {
            Ok(())
        };
        if let Err(why) = verdict {
            let log = self.vm.sh("tail -n 12 /tmp/sync.log", 5 * SEC)?.0;
            bail!("{why}; leapwatch {v}; sync log: {log}");
        }
        Ok(format!(
            "UTC stepped {:+.3} ms (±{}) at 2026-12-31T23:59:60 (inserted by the guest kernel); CLOCK_TAI's \
             largest jump against MONOTONIC beyond its read brackets over {} 1 ms samples: {} (largest bracket, the \
             guest descheduled between two reads: {}); TAI − UTC 37 → 38",
            d as f64 / 1e6,
            us(unc as f64),
            v["samples"],
            us(jump as f64),
            us(v["read_gap_max_ns"].as_f64().unwrap_or(f64::NAN))
        ))
    }
}
