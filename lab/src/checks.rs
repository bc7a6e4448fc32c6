//! `vmtime-lab run`: builds the guest's initramfs, starts `vmtime host` on this machine, boots
//! the guest, and runs the checks, printing one `PASS name: figures` or `FAIL name: why` line each.
//!
//! Nothing here changes this machine's clock: `vmtime host` and `vmtime relay` only read it; the
//! only `vmtime sync` without --dry-run runs inside the guest, on the guest's clock.

use crate::cpio::Cpio;
use crate::echo::{self, Echo};
use crate::vm::{Vm, VmConfig, QEMU_VMCLOCK_ADDR};
use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use vmclock::abi::{self, leap, status};
use vmclock::{PageBuilder, Period, Snapshot, Tai, Timestamp};

#[derive(clap::Args)]
pub struct Args {
    /// The extracted QEMU packages (usr/bin/qemu-system-x86_64 and its libraries).
    #[arg(long)]
    qemu_root: PathBuf,
    /// The guest kernel (vmlinuz).
    #[arg(long)]
    kernel: PathBuf,
    /// The guest kernel's ptp_vmclock module, uncompressed.
    #[arg(long)]
    module: PathBuf,
    /// A static busybox.
    #[arg(long)]
    busybox: PathBuf,
    /// A static vmtime (this lab's guest binary is itself, built static too).
    #[arg(long)]
    vmtime: PathBuf,
    /// A qcow2 image for savevm/loadvm.
    #[arg(long)]
    state_disk: PathBuf,
    /// Working directory (sockets, pages, logs).
    #[arg(long)]
    work: PathBuf,
}

const GUEST_PAGE: &str = "/sys/bus/pci/devices/0000:00:04.0/resource2";
const GUEST_MAILBOX: &str = "/sys/bus/pci/devices/0000:00:05.0/resource2";
const SEC: Duration = Duration::from_secs(1);

/// A daemon we started; ended by its pid when dropped.
struct Daemon(Child);

impl Daemon {
    /// Starts `bin ARGS` and returns once a stderr line contains `ready`.
    fn start(bin: &Path, args: &[&str], ready: &str) -> Result<Daemon> {
        let mut child = Command::new(bin).args(args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let mut err = BufReader::new(child.stderr.take().context("stderr")?);
        let mut seen = String::new();
        loop {
            let mut l = String::new();
            if err.read_line(&mut l)? == 0 {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} {args:?} exited: {seen}", bin.display());
            }
            seen.push_str(&l);
            if l.contains(ready) {
                break;
            }
        }
        std::thread::spawn(move || for _ in err.lines() {});
        Ok(Daemon(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Lab {
    a: Args,
    vm: Vm,
    vmtime: PathBuf,
    _host: Daemon,
    relay: Option<Daemon>,
    mailbox: Option<echo::Host>,
    host_page: PathBuf,
    guest_page: PathBuf,
    /// The guest's counter − the host's, as last measured, and the bracket it came from.
    offset: Option<(u64, u64)>,
}

fn initramfs(a: &Args, out: &Path) -> Result<()> {
    let f = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut c = Cpio::new(f);
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lab"] {
        c.dir(d)?;
    }
    c.char_dev("dev/console", 5, 1)?;
    c.file("init", 0o755, include_bytes!("../guest/init"))?;
    c.file("lab/shell", 0o644, include_bytes!("../guest/shell"))?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    c.file("bin/busybox", 0o755, &read(&a.busybox)?)?;
    c.file("bin/vmtime", 0o755, &read(&a.vmtime)?)?;
    c.file("bin/vmtime-lab", 0o755, &read(&std::env::current_exe()?)?)?;
    c.file("lib/ptp_vmclock.ko", 0o644, &read(&a.module)?)?;
    c.finish()?;
    Ok(())
}

fn read_page(p: &Path) -> Result<Snapshot> {
    let m = vmclock::Mapping::open(p)?;
    Ok(vmclock::seqlock::read(&m, vmclock::seqlock::DEFAULT_MAX_WAIT)?)
}

/// A page's counter period.
fn period_of(page: &Snapshot) -> Result<Period> {
    let r = page.reference()?;
    Ok(Period { frac: r.period, shift: r.shift })
}

/// QEMU's vmclock page, read through the gdbstub (the region is a whole page).
fn qemu_page(gdb: &mut crate::vm::Gdb) -> Result<Snapshot> {
    let bytes: [u8; abi::ABI_SIZE] =
        gdb.read_phys(QEMU_VMCLOCK_ADDR, abi::ABI_SIZE)?.try_into().map_err(|_| anyhow::anyhow!("short read"))?;
    Ok(Snapshot::decode(&bytes, abi::PAGE_SIZE)?)
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap_or(&0.0))
}

fn us(ns: f64) -> String {
    format!("{:.1} µs", ns / 1e3)
}

impl Lab {
    fn start(a: Args) -> Result<Lab> {
        std::fs::create_dir_all(&a.work)?;
        let initrd = a.work.join("initramfs.cpio");
        initramfs(&a, &initrd)?;
        let host_page = a.work.join("host.page");
        let guest_page = a.work.join("guest.page");
        let mailbox = a.work.join("mailbox");
        std::fs::write(&guest_page, vec![0u8; 4096])?;
        std::fs::write(&mailbox, vec![0u8; 4096])?;
        let vmtime = std::env::current_exe()?.with_file_name("vmtime");
        let host = Daemon::start(
            &vmtime,
            // TAI − UTC is 37 s in 2026: given, because this machine's leap-second list may have
            // expired, and the kernel's PTP clock needs a TAI page (or UTC with the offset).
            &[
                "host",
                "--page",
                host_page.to_str().context("path")?,
                "--quiet",
                "--poll-ms",
                "50",
                "--tai-offset",
                "37",
            ],
            "control socket",
        )
        .context("start vmtime host")?;
        let root = &a.qemu_root;
        let lib = |p: &str| root.join(p).display().to_string();
        let cfg = VmConfig {
            qemu: root.join("usr/bin/qemu-system-x86_64"),
            lib_path: format!("{}:{}", lib("usr/lib/x86_64-linux-gnu"), lib("lib/x86_64-linux-gnu")),
            module_dir: root.join("usr/lib/x86_64-linux-gnu/qemu"),
            firmware: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
            kernel: a.kernel.clone(),
            initrd,
            work: a.work.clone(),
            rtc_base: "2001-01-01T00:00:00".into(),
            shared: vec![guest_page.clone(), mailbox],
            state_disk: a.state_disk.clone(),
        };
        let t0 = Instant::now();
        let mut vm = Vm::start(&cfg)?;
        vm.wait_ready(Duration::from_secs(120))?;
        println!("lab: guest booted to its shell in {:.1} s (QEMU pid {})", t0.elapsed().as_secs_f64(), vm.pid());
        for dev in ["0000:00:04.0", "0000:00:05.0"] {
            vm.sh_ok(&format!("echo 1 > /sys/bus/pci/devices/{dev}/enable"), 5 * SEC)?;
        }
        Ok(Lab { a, vm, vmtime, _host: host, relay: None, mailbox: None, host_page, guest_page, offset: None })
    }

    /// 1. QEMU's own vmclock page, through the kernel's driver, decoded in the guest.
    fn show(&mut self) -> Result<String> {
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko", 10 * SEC)?;
        let out = self.vm.sh_ok("vmtime show /dev/vmclock0 --json", 10 * SEC);
        self.vm.sh_ok("rmmod ptp_vmclock", 10 * SEC)?;
        let v: serde_json::Value = serde_json::from_str(&out?)?;
        let f = &v["fields"];
        ensure!(f["magic"] == abi::MAGIC, "bad magic: {}", f["magic"]);
        Ok(format!(
            "/dev/vmclock0: version {}, counter {}, status {}, disruption_marker {:#x} (QEMU fills only these)",
            f["version"],
            f["counter_id"]["name"],
            f["clock_status"]["name"],
            f["disruption_marker"].as_u64().unwrap_or(0)
        ))
    }

    fn mailbox(&mut self) -> Result<&mut echo::Host> {
        if self.mailbox.is_none() {
            let h = echo::Host::open(&self.a.work.join("mailbox"))?;
            self.vm.sh_ok(
                &format!(
                    "vmtime-lab echo --mailbox {GUEST_MAILBOX} --page {GUEST_PAGE} </dev/null >/tmp/echo.log 2>&1 &"
                ),
                5 * SEC,
            )?;
            if let Err(e) = h.wait_ready(Duration::from_secs(20)) {
                let log = self.vm.sh("cat /tmp/echo.log", 5 * SEC).map(|o| o.0).unwrap_or_default();
                bail!("{e}: {log}");
            }
            self.mailbox = Some(h);
        }
        Ok(self.mailbox.as_mut().expect("set"))
    }

    fn measure_offset(&mut self) -> Result<(u64, u64)> {
        let o = self.mailbox()?.measure_offset(500)?;
        self.offset = Some(o);
        Ok(o)
    }

    fn start_relay(&mut self, host_page: &Path, offset: u64) -> Result<()> {
        self.relay = None;
        let args = [
            "relay",
            "--host-page",
            host_page.to_str().context("path")?,
            "--guest-page",
            self.guest_page.to_str().context("path")?,
            "--tsc-offset",
            &(offset as i64).to_string(),
            "--no-notify",
        ];
        self.relay = Some(Daemon::start(&self.vmtime, &args, "control socket").context("start vmtime relay")?);
        Ok(())
    }

    /// `n` echoes `every` apart.
    fn echoes(&mut self, n: usize, every: Duration) -> Result<Vec<Echo>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                std::thread::sleep(every); // a sampling interval, not a synchronisation
            }
            v.push(self.mailbox()?.ask()?);
        }
        Ok(v)
    }

    /// 2. host + relay → the guest's page (ivshmem), with a measured counter map; the error of
    ///    the time the guest reads from it against this machine's clock.
    fn relay(&mut self) -> Result<String> {
        let (offset, width) = self.measure_offset()?;
        let host_hz = period_of(&read_page(&self.host_page)?)?.hz();
        self.start_relay(&self.host_page.clone(), offset)?;
        let out = self.vm.sh_ok(&format!("vmtime show {GUEST_PAGE} --json"), 10 * SEC)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        ensure!(v["valid"] == true, "the guest's page is not valid: {}", v["error"]);
        let e = self.echoes(200, Duration::from_millis(5))?;
        let outside = e.iter().filter(|e| e.page_contains_truth() != Some(true)).count();
        let (p50, p99, max) = quantiles(e.iter().filter_map(|e| e.page_error()).map(|x| x.abs() as f64).collect());
        let (w50, ..) = quantiles(e.iter().map(|e| e.half_window() as f64).collect());
        ensure!(outside == 0, "{outside} of {} guest page reads had bounds that excluded the host's clock", e.len());
        Ok(format!(
            "offset {:+} ticks measured ±{} ticks ({:.0} ns at {:.3} GHz); guest page − host clock over 200 echoes: \
             p50 {} p99 {} max {} (echo half-window p50 {}), all inside the page's bounds",
            offset as i64,
            width / 2,
            width as f64 / 2.0 / host_hz * 1e9,
            host_hz / 1e9,
            us(p50),
            us(p99),
            us(max),
            us(w50)
        ))
    }

    /// 3. vmtime sync in the guest on its real clock: the start-up step from 2001, then the offset
    ///    it holds against this machine's clock.
    fn sync(&mut self) -> Result<String> {
        let before = self.mailbox()?.ask()?.clock_error();
        ensure!(before.abs() > 1_000_000_000, "the guest clock should start wrong (RTC 2001), it is {before} ns off");
        self.vm.sh_ok(
            &format!("vmtime sync --source {GUEST_PAGE} --socket /tmp/sync.sock </dev/null >/tmp/sync.log 2>&1 &"),
            5 * SEC,
        )?;
        let t0 = Instant::now();
        let mut within_ms = None;
        while t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
            if self.mailbox()?.ask()?.clock_error().abs() < 1_000_000 {
                within_ms = Some(t0.elapsed());
                break;
            }
        }
        let log = self.vm.sh_ok("cat /tmp/sync.log", 5 * SEC)?;
        let Some(within) = within_ms else { bail!("not within 1 ms of the host after 20 s; sync log: {log}") };
        // Let the frequency settle, then hold.
        std::thread::sleep(Duration::from_secs(10));
        let e = self.echoes(200, Duration::from_millis(100))?;
        let (p50, p99, max) = quantiles(e.iter().map(|e| e.clock_error().abs() as f64).collect());
        let (check, _) = self.vm.sh(&format!("vmtime check {GUEST_PAGE} --samples 1000 --json"), 30 * SEC)?;
        let check = serde_json::from_str::<serde_json::Value>(&check).ok();
        let steps = log.lines().filter(|l| l.contains("step CLOCK_REALTIME")).count();
        ensure!(steps >= 1, "no start-up step in the sync log: {log}");
        ensure!(p99 < 1e6, "held offset p99 {} ≥ 1 ms", us(p99));
        Ok(format!(
            "stepped from {:.0} s off; within 1 ms of the host after {:.2} s; held over 20 s (200 echoes): |guest \
             CLOCK_REALTIME − host| p50 {} p99 {} max {}; in-guest `vmtime check`: {}",
            before as f64 / -1e9,
            within.as_secs_f64(),
            us(p50),
            us(p99),
            us(max),
            check.map_or("no result".into(), |c| summary_of_check(&c))
        ))
    }

    /// Stops the VM. The guest's counter stops with it (TCG freezes it while the VM is stopped):
    /// its frozen value (midpoint) and half-uncertainty, from the offset measured just before.
    fn stop(&mut self) -> Result<(u64, u64)> {
        let (o, w) = self.measure_offset()?;
        let h0 = vmclock::counter::read();
        self.vm.qmp("stop", serde_json::json!({}))?;
        let h1 = vmclock::counter::read();
        let half = h1.wrapping_sub(h0) / 2;
        Ok((h0.wrapping_add(half).wrapping_add(o), half + w / 2))
    }

    /// With the VM stopped: writes QEMU's own vmclock page (guest-physical, through the gdbstub)
    /// for the counter map the guest will have when it resumes at a planned instant, with the
    /// map's uncertainty added to the page's maxerror, then resumes it there. Returns the
    /// predicted offset and the uncertainty budget (ticks).
    fn write_qemu_page_and_resume(&mut self, frozen: (u64, u64), marker: u64, generation: u64) -> Result<(u64, u64)> {
        use vmclock::abi::flags;
        let host = read_page(&self.host_page)?;
        let hz = period_of(&host)?.hz();
        let mut gdb = self.vm.gdb()?;
        let old = qemu_page(&mut gdb).ok();
        let seq = old.map_or(0, |s| s.seq_count());
        // Resume 50 ms from now; QMP `cont` answers within a millisecond or two here.
        let resume_at = vmclock::counter::read().wrapping_add((hz / 20.0) as u64);
        let predicted = frozen.0.wrapping_sub(resume_at);
        let budget = frozen.1 + (hz / 200.0) as u64; // + 5 ms for `cont` to take effect
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
    /// (ivshmem page) moved to it.
    fn after_resume(&mut self, predicted: u64, budget: u64) -> Result<String> {
        let (measured, _) = self.measure_offset()?;
        let hz = period_of(&read_page(&self.host_page)?)?.hz();
        let err = predicted.wrapping_sub(measured) as i64;
        let ns = |t: i64| t as f64 / hz * 1e9;
        ensure!(
            err.unsigned_abs() <= budget,
            "QEMU's page map was predicted {} off, beyond its {} budget",
            us(ns(err)),
            us(ns(budget as i64))
        );
        self.start_relay(&self.host_page.clone(), measured)?;
        Ok(format!("map predicted {} from the measured one (budget ±{})", us(ns(err)), us(ns(budget as i64))))
    }

    /// 6. QEMU's vmclock page filled with real time (gdbstub) before the driver probes: the
    ///    driver registers a PTP clock, read by `vmtime phc` with the real ioctls.
    fn phc(&mut self) -> Result<String> {
        let frozen = self.stop()?;
        let (predicted, budget) = self.write_qemu_page_and_resume(frozen, 0x1000, 1)?;
        let map = self.after_resume(predicted, budget)?;
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko", 10 * SEC)?;
        let list = self.vm.sh_ok("vmtime phc list --json", 10 * SEC)?;
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
        let read = self.vm.sh_ok(&format!("vmtime phc read {path} --json"), 20 * SEC)?;
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
        ensure!((off - 37e9).abs() < 10e6, "PHC − CLOCK_REALTIME is {off} ns, not 37 s (TAI) within 10 ms");
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

    /// 4. A real disruption: savevm, 2 s with the VM stopped, loadvm. QEMU bumps the marker of
    ///    its page; vmtime sync, reading /dev/vmclock0 through the driver, steps at once.
    fn disruption(&mut self) -> Result<String> {
        // Sync now follows QEMU's page through the driver.
        self.vm.sh("killall vmtime", 5 * SEC)?;
        self.vm.sh_ok(
            "vmtime sync --source /dev/vmclock0 --socket /tmp/sync2.sock </dev/null >/tmp/sync2.log 2>&1 &",
            5 * SEC,
        )?;
        let t = Instant::now();
        while !self.vm.sh_ok("cat /tmp/sync2.log", 5 * SEC)?.contains("control socket") {
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
        let t = Instant::now();
        let mut first = None;
        while t.elapsed() < Duration::from_secs(5) {
            let e = self.mailbox()?.ask()?.clock_error();
            if e.abs() < 5_000_000 {
                first = Some((t.elapsed(), e));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.vm.sh_ok("cat /tmp/sync2.log", 5 * SEC)?;
        let map = self.after_resume(predicted, budget)?;
        let Some((within, _)) = first else {
            bail!("the guest did not step back within 5 ms of the host in 5 s: {log}")
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

    /// 5. A leap second: the guest's page announces an insertion at the end of 2016-12-31; the
    ///    guest kernel, armed by vmtime sync, inserts it; CLOCK_TAI stays continuous.
    fn leap(&mut self) -> Result<String> {
        let host = read_page(&self.host_page)?;
        let period = period_of(&host)?;
        // 2017-01-01T00:00:00Z, and TAI then (TAI − UTC was 36 s before the leap, 37 after).
        let midnight_utc = 1_483_228_800u64;
        let midnight_tai_oop = Timestamp::<Tai>::from_parts(midnight_utc + 36, 0);
        let midnight_tai = Timestamp::<Tai>::from_parts(midnight_utc + 37, 0);
        let start = Timestamp::<Tai>::from_parts(midnight_utc + 36 - 12, 0); // 23:59:48 UTC
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
        let file = vmtime_sys::pagefile::create(&leap_page, &page(leap::PRE_POS, 36).page_bytes())?;
        let mut writer =
            vmclock::Writer::new(vmclock::WritableMapping::new(vmclock::Mapping::map(file.file(), true)?)?);
        let offset = self.offset.context("no counter map")?.0;
        self.start_relay(&leap_page, offset)?;
        // The counter values where the page's state changes (a TAI page is continuous): the
        // inserted second 23:59:60 starts at TAI midnight+36 s (POS, and the TAI offset is already
        // 37 there, as `vmtime host` publishes it from a kernel in TIME_OOP) and ends at +37 s.
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
            writer.publish(&page(state, 37).build());
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
        let verdict = if steps.len() != 1 || (d + 1_000_000_000).abs() > 10_000_000 {
            Err(format!("expected one UTC step of −1 s, saw {steps:?}"))
        } else if jump > 10_000_000 {
            Err(format!("CLOCK_TAI jumped by {jump} ns"))
        } else if v["tai_minus_utc_before"] != 36 || v["tai_minus_utc_after"] != 37 {
            Err(format!("TAI offset {} → {}", v["tai_minus_utc_before"], v["tai_minus_utc_after"]))
        } else {
            Ok(())
        };
        if let Err(why) = verdict {
            let log = self.vm.sh("tail -n 12 /tmp/sync.log", 5 * SEC)?.0;
            bail!("{why}; leapwatch {v}; sync log: {log}");
        }
        Ok(format!(
            "UTC stepped {:+.3} ms at 2016-12-31T23:59:60 (inserted by the guest kernel); CLOCK_TAI's largest jump \
             against MONOTONIC over {} ms samples: {}; TAI − UTC 36 → 37",
            d as f64 / 1e6,
            v["samples"],
            us(jump as f64)
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

pub fn run(a: Args) -> Result<ExitCode> {
    let mut lab = Lab::start(a)?;
    type Check = fn(&mut Lab) -> Result<String>;
    let checks: [(&str, Check); 6] = [
        ("show", Lab::show),
        ("relay", Lab::relay),
        ("sync", Lab::sync),
        ("leap", Lab::leap),
        ("phc", Lab::phc),
        ("disruption", Lab::disruption),
    ];
    let mut failed = 0;
    let mut lines = Vec::new();
    for (name, f) in checks {
        let t = Instant::now();
        let line = match f(&mut lab) {
            Ok(s) => format!("PASS {name}: {s} ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                failed += 1;
                format!("FAIL {name}: {e:#}")
            }
        };
        println!("{line}");
        lines.push(line);
    }
    if let Some(m) = lab.mailbox.as_mut() {
        m.quit();
    }
    println!("\nlab results:");
    for l in &lines {
        println!("  {l}");
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
