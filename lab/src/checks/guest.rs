//! Booting one guest (its host, relay and QEMU) and the measurements every check shares:
//! the mailbox, the counter offset, echoes, convergence, and what a FAIL line explains.

use super::daemon::{relay_daemon, Daemon};
use super::initramfs::initramfs;
use super::page::{period_of, read_page};
use super::stats::{loadavg, us};
use super::{Args, Lab, Setup, GUEST_MAILBOX, GUEST_PAGE, MAILBOX_SLOT, NOISE_CAP_NS, SEC};
use crate::echo::{self, Echo};
use crate::vm::{Vm, VmConfig};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

impl Lab {
    pub(super) fn start(a: Args, setup: Setup) -> Result<Lab> {
        let work = a.work.join(setup.name());
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let initrd = work.join("initramfs.cpio");
        initramfs(&a, &initrd, if setup == Setup::Chrony { a.chrony_tree.as_deref() } else { None })?;
        let host_page = work.join("host.page");
        let guest_page = work.join("guest.page");
        let mailbox = work.join("mailbox");
        std::fs::write(&guest_page, vec![0u8; 4096])?;
        std::fs::write(&mailbox, vec![0u8; 4096])?;
        let vmtime = std::env::current_exe()?.with_file_name("vmtime");
        let host = Daemon::start_answering(
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
            &work.join("host.page.sock"),
        )
        .context("start vmtime host")?;
        // The host page has a counter once `vmtime host` made its first observation.
        let t = Instant::now();
        let hz = loop {
            match read_page(&host_page).and_then(|p| period_of(&p)) {
                // Its first pages may carry no calibrated period yet (0: an infinite rate).
                Ok(p) if (1e6..1e11).contains(&p.hz()) => break p.hz(),
                Ok(p) if t.elapsed() > Duration::from_secs(10) => {
                    bail!("vmtime host's page has no plausible period after 10 s ({} Hz)", p.hz())
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(50)), // polls a file, deadline above
                Err(e) if t.elapsed() > Duration::from_secs(10) => bail!("vmtime host's page has no counter: {e:#}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)), // polls a file, deadline above
            }
        };
        let root = &a.qemu_root;
        let lib = |p: &str| root.join(p).display().to_string();
        let mut cfg = VmConfig {
            qemu: root.join("usr/bin/qemu-system-x86_64"),
            lib_path: format!("{}:{}", lib("usr/lib/x86_64-linux-gnu"), lib("lib/x86_64-linux-gnu")),
            module_dir: root.join("usr/lib/x86_64-linux-gnu/qemu"),
            firmware: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
            kernel: a.kernel.clone(),
            initrd,
            work: work.clone(),
            rtc_base: "2001-01-01T00:00:00".into(),
            shared: vec![(mailbox, MAILBOX_SLOT)],
            qemu_vmclock: setup == Setup::QemuVmclock,
            extra: Vec::new(),
            tsc_khz: (hz / 1e3).round() as u64,
            state_disk: a.state_disk.clone(),
            append: String::new(),
        };
        let mut relay = None;
        let doorbell = (setup == Setup::Notify).then(|| work.join("doorbell.sock"));
        if setup == Setup::QemuVmclock {
            cfg.shared.insert(0, (guest_page.clone(), 4));
        } else {
            // What an operator does: the relay writes the guest's page file (its counter map is
            // measured once the guest runs, and the relay restarted with it), and `vmtime qemu`
            // gives QEMU that file as the guest's vmclock device.
            relay = Some(relay_daemon(&vmtime, &host_page, &guest_page, 0, doorbell.as_deref())?);
            let mut qemu = Command::new(&vmtime);
            qemu.args(["qemu", "--page", guest_page.to_str().context("path")?, "--slot", "4", "--json", "--ssdt"])
                .arg(work.join("vmclock-ssdt.aml"));
            if let Some(d) = &doorbell {
                // The doorbell UART beside the lab's two (ttyS0 0x3f8/4, ttyS1 0x2f8/3): COM3's
                // port on a free ISA interrupt (7: QEMU's MADT makes 5, 9, 10 and 11 level-triggered
                // PCI interrupts). savevm/loadvm need a migratable page (master=on).
                qemu.arg("--notify").arg(d).args(["--notify-io", "0x3e8", "--notify-irq", "7", "--migratable"]);
                // The guest's 8250 driver takes only the lab's two UARTs: the third is ACPI's.
                // (no_timer_check: with both cores busy this guest's kernel once found the
                // emulated 8254 too slow at boot and panicked, "IO-APIC + timer doesn't work".)
                cfg.append = "8250.nr_uarts=2 no_timer_check".into();
            }
            let out = qemu.output()?;
            ensure!(out.status.success(), "vmtime qemu: {}", String::from_utf8_lossy(&out.stderr).trim());
            cfg.extra = serde_json::from_slice(&out.stdout).context("vmtime qemu --json")?;
            std::fs::write(work.join("qemu-args.txt"), cfg.extra.join(" "))?;
        }
        let t0 = Instant::now();
        let mut vm = Vm::start(&cfg)?;
        // The doorbell rings while the guest boots, as it does beside a host whose page changes
        // every second: rings that reach the UART before the guest's GED driver holds its
        // interrupt must not leave the doorbell silent afterwards (checked by `notify`'s wake-ups).
        let ringing = doorbell.as_ref().map(|_| {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (s2, sock) = (stop.clone(), std::path::PathBuf::from(format!("{}.sock", guest_page.display())));
            let h = std::thread::spawn(move || {
                let mut rings = 0u32;
                while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                    // `migrated 0`: a rewrite of the guest page (the map the relay was started with).
                    if crate::checks::daemon::tell(&sock, "migrated 0").is_ok() {
                        rings += 1;
                    }
                    std::thread::sleep(Duration::from_millis(200)); // the spacing of the rings
                }
                rings
            });
            (stop, h)
        });
        let ready = vm.wait_ready(Duration::from_secs(120));
        let boot_rings = ringing.map(|(stop, h)| {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            h.join().unwrap_or(0)
        });
        ready?;
        if let Some(n) = boot_rings {
            ensure!(n > 0, "the relay never answered `migrated 0` while the notify guest booted: no ring to check");
            println!("lab: the doorbell rang {n} times while the notify guest booted");
        }
        println!(
            "lab: {} guest booted to its shell in {:.1} s (QEMU pid {})",
            setup.name(),
            t0.elapsed().as_secs_f64(),
            vm.pid()
        );
        let mut devs = vec![format!("0000:00:{MAILBOX_SLOT:02x}.0")];
        if setup == Setup::QemuVmclock {
            devs.push("0000:00:04.0".into());
        }
        for dev in devs {
            vm.sh_ok(&format!("echo 1 > /sys/bus/pci/devices/{dev}/enable"), 5 * SEC)?;
        }
        Ok(Lab {
            a: Args { work, ..a },
            setup,
            vm,
            vmtime,
            _host: host,
            relay,
            doorbell,
            mailbox: None,
            host_page,
            guest_page,
            offset: None,
            hz,
            row: None,
            budget_ns: 0.0,
            cont_slack: 0,
            figures: None,
        })
    }

    pub(super) fn mailbox(&mut self) -> Result<&mut echo::Host> {
        if self.mailbox.is_none() {
            let h = echo::Host::open(&self.a.work.join("mailbox"), self.hz)?;
            // The stock guest reads its page through the driver (the same mmap `vmtime now` does).
            let page = if self.setup == Setup::QemuVmclock { GUEST_PAGE } else { "/dev/vmclock0" };
            self.vm.sh_ok(
                &format!("vmtime-lab echo --mailbox {GUEST_MAILBOX} --page {page} </dev/null >/tmp/echo.log 2>&1 &"),
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

    /// The guest counter − this machine's: at least 500 round trips, and more (up to 10 s) until
    /// one is no wider than 2 µs.
    pub(super) fn measure_offset(&mut self) -> Result<echo::Offset> {
        let target = (self.hz * 2e-6) as u64;
        let o = self.mailbox()?.measure_offset(500, target, Duration::from_secs(10))?;
        self.offset = Some(o);
        Ok(o)
    }

    /// Echoes `every` apart until `n` have a noise floor (by `noise`) within NOISE_CAP_NS, or
    /// `deadline` passes (then at least half of `n` are required). Returns the kept echoes and
    /// how many were set aside.
    pub(super) fn clean_echoes(
        &mut self,
        n: usize,
        every: Duration,
        deadline: Duration,
        noise: fn(&Echo) -> i128,
    ) -> Result<(Vec<Echo>, usize)> {
        let end = Instant::now() + deadline;
        let (mut kept, mut aside) = (Vec::with_capacity(n), 0);
        while kept.len() < n {
            if Instant::now() > end {
                ensure!(
                    kept.len() >= n / 2,
                    "only {} of {n} echoes had a noise floor within {} in {deadline:?} ({aside} set aside; load \
                     average {})",
                    kept.len(),
                    us(NOISE_CAP_NS as f64),
                    loadavg()
                );
                break;
            }
            if !kept.is_empty() || aside > 0 {
                std::thread::sleep(every); // a sampling interval, not a synchronisation
            }
            let e = self.mailbox()?.ask()?;
            if noise(&e) <= NOISE_CAP_NS {
                kept.push(e);
            } else {
                aside += 1;
            }
        }
        Ok((kept, aside))
    }

    pub(super) fn start_relay(&mut self, host_page: &Path, offset: u64) -> Result<()> {
        self.relay = None;
        self.relay = Some(relay_daemon(&self.vmtime, host_page, &self.guest_page, offset, self.doorbell.as_deref())?);
        Ok(())
    }

    /// `n` echoes `every` apart.
    pub(super) fn echoes(&mut self, n: usize, every: Duration) -> Result<Vec<Echo>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                std::thread::sleep(every); // a sampling interval, not a synchronisation
            }
            v.push(self.mailbox()?.ask()?);
        }
        Ok(v)
    }

    /// The time until an echo with a clean noise floor sees |guest − host| below `within_ns`
    /// (None: not before `deadline`).
    pub(super) fn converge(&mut self, within_ns: i128, deadline: Duration) -> Result<Option<Duration>> {
        let t0 = Instant::now();
        while t0.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(20)); // a sampling interval
            let e = self.mailbox()?.ask()?;
            if e.clock_noise() <= within_ns.min(NOISE_CAP_NS) && e.clock_error().abs() < within_ns {
                return Ok(Some(t0.elapsed()));
            }
        }
        Ok(None)
    }

    pub(super) fn converge_from(
        &mut self,
        t0: Instant,
        within_ns: i128,
        deadline: Duration,
    ) -> Result<Option<Duration>> {
        while t0.elapsed() < deadline {
            let e = self.mailbox()?.ask()?;
            if e.clock_noise() <= within_ns.min(NOISE_CAP_NS) && e.clock_error().abs() < within_ns {
                return Ok(Some(t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20)); // a sampling interval
        }
        Ok(None)
    }

    /// The time until the guest clock is back within `bound` ns of this machine (None: not in 5 s).
    pub(super) fn back_within(&mut self, bound: i128) -> Result<Option<(Duration, i128)>> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            let e = self.mailbox()?.ask()?.clock_error();
            if e.abs() < bound {
                return Ok(Some((t.elapsed(), e)));
            }
            std::thread::sleep(Duration::from_millis(10)); // a sampling interval
        }
        Ok(None)
    }

    /// What a FAIL line needs beyond its figures: this machine's load, the guest's last kernel
    /// messages and the check's own log.
    pub(super) fn explain(&mut self, name: &str) -> String {
        let logs: &[&str] = match name {
            "sync" | "sync-driver" => &["/tmp/sync.log"],
            "leap" => &["/tmp/sync.log", "/tmp/leap.json"],
            "disruption" => &["/tmp/sync2.log"],
            "chrony" => &["/tmp/chrony.log"],
            "notify" => &["/tmp/sync.log", "/tmp/poll.log", "/tmp/polled.log"],
            _ => &["/tmp/echo.log"],
        };
        let mut cmd = String::from("dmesg | tail -n 6");
        for l in logs {
            cmd.push_str(&format!("; echo '--- {l}'; tail -n 10 {l}"));
        }
        let guest = match self.vm.sh(&cmd, 10 * SEC) {
            Ok((o, _)) => o,
            Err(e) => format!("(the guest's shell did not answer: {e:#})"),
        };
        let guest: String = guest.lines().map(|l| format!("\n       | {l}")).collect();
        format!("\n     load average {}; guest log:{guest}", loadavg())
    }
}
