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

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The extracted QEMU packages (usr/bin/qemu-system-x86_64 and its libraries).
    #[arg(long)]
    pub(crate) qemu_root: PathBuf,
    /// The guest kernel (vmlinuz).
    #[arg(long)]
    pub(crate) kernel: PathBuf,
    /// The guest kernel's ptp_vmclock module, uncompressed.
    #[arg(long)]
    pub(crate) module: PathBuf,
    /// A static busybox.
    #[arg(long)]
    pub(crate) busybox: PathBuf,
    /// A static vmtime (this lab's guest binary is itself, built static too).
    #[arg(long)]
    pub(crate) vmtime: PathBuf,
    /// A qcow2 image for savevm/loadvm.
    #[arg(long)]
    pub(crate) state_disk: PathBuf,
    /// Working directory (sockets, pages, logs).
    #[arg(long)]
    pub(crate) work: PathBuf,
    /// A directory tree with Debian's chronyd and its libraries (copied into the chrony guest's
    /// initramfs); without it, the chrony comparison is skipped.
    #[arg(long)]
    pub(crate) chrony_tree: Option<PathBuf>,
    /// A QEMU package tree that can live-migrate a guest with ivshmem devices (QEMU 7.2; the
    /// main one, 10.0.2, aborts): without it the migration check is skipped.
    #[arg(long)]
    pub(crate) qemu_migration_root: Option<PathBuf>,
    /// Where the results go, one JSON object per check (default: WORK/../results.json).
    #[arg(long)]
    pub(crate) results: Option<PathBuf>,
    /// Only these checks (comma-separated names; the guests they need are booted).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
}

/// The three guests the lab boots, one after the other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    /// QEMU's own `-device vmclock`, plus the relayed page read through `resource2`.
    QemuVmclock,
    /// A stock guest: the relayed page given to its ptp_vmclock by `vmtime qemu` (ivshmem +
    /// SSDT), `vmtime sync` on /dev/vmclock0.
    Stock,
    /// The same, chronyd on the driver's PTP clock instead of `vmtime sync`.
    Chrony,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::QemuVmclock => "qemu-vmclock",
            Setup::Stock => "stock",
            Setup::Chrony => "chrony",
        }
    }
}

const GUEST_PAGE: &str = "/sys/bus/pci/devices/0000:00:04.0/resource2";
/// The ivshmem slot of the mailbox (the page is at 4).
const MAILBOX_SLOT: u8 = 5;
const GUEST_MAILBOX: &str = "/sys/bus/pci/devices/0000:00:05.0/resource2";
/// Echo samples whose noise floor is wider than this are set aside (counted, not judged): the
/// host or the guest was descheduled between two of its counter reads.
pub(crate) const NOISE_CAP_NS: i128 = 50_000;
const SEC: Duration = Duration::from_secs(1);

/// A daemon we started; ended by its pid when dropped.
pub(crate) struct Daemon(Child);

impl Daemon {
    /// Starts `bin ARGS` and returns once a stderr line contains `ready`.
    pub(crate) fn start(bin: &Path, args: &[&str], ready: &str) -> Result<Daemon> {
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
    setup: Setup,
    vm: Vm,
    vmtime: PathBuf,
    _host: Daemon,
    relay: Option<Daemon>,
    mailbox: Option<echo::Host>,
    host_page: PathBuf,
    guest_page: PathBuf,
    /// The guest's counter − the host's, as last measured (± ticks).
    offset: Option<echo::Offset>,
    /// This machine's TSC frequency, Hz (the host page's).
    hz: f64,
    /// The figures of this guest's clock discipline, for the comparison table.
    row: Option<Row>,
    /// The uncertainty budget of the last map written into QEMU's page, ns.
    budget_ns: f64,
    /// What QEMU's page allows for QEMU acting on `cont` late (ticks), learnt from misses.
    cont_slack: u64,
}

/// Adds every file under `tree` (symlinks followed) to the archive, at the same relative path.
fn add_tree<W: std::io::Write>(c: &mut Cpio<W>, tree: &Path, rel: &Path) -> Result<()> {
    let here = tree.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&here)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let name = r.to_str().context("path")?;
        let meta = std::fs::metadata(e.path())?;
        if meta.is_dir() {
            c.dir(name)?;
            add_tree(c, tree, &r)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            c.file(name, meta.permissions().mode() & 0o777, &std::fs::read(e.path())?)?;
        }
    }
    Ok(())
}

pub(crate) fn initramfs(a: &Args, out: &Path, extra_tree: Option<&Path>) -> Result<()> {
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
    if let Some(t) = extra_tree {
        add_tree(&mut c, t, Path::new(""))?;
    }
    c.finish()?;
    Ok(())
}

/// `vmtime relay` from `host_page` to `guest_page` under a TSC offset (no notification: QEMU has
/// no way to notify for a file).
pub(crate) fn relay_daemon(vmtime: &Path, host_page: &Path, guest_page: &Path, offset: u64) -> Result<Daemon> {
    let seq_before = read_page(guest_page).map(|p| p.seq_count()).ok();
    let args = [
        "relay",
        "--host-page",
        host_page.to_str().context("path")?,
        "--guest-page",
        guest_page.to_str().context("path")?,
        "--tsc-offset",
        &(offset as i64).to_string(),
        "--no-notify",
    ];
    let d = Daemon::start(vmtime, &args, "control socket").context("start vmtime relay")?;
    // The relay says it is ready before its first write: wait for that write (the guest page's
    // seq_count moves), so that what the lab reads next is the new map's page.
    let t = Instant::now();
    while read_page(guest_page).map(|p| p.seq_count()).ok() == seq_before {
        ensure!(t.elapsed() < Duration::from_secs(10), "vmtime relay did not write {} in 10 s", guest_page.display());
        std::thread::sleep(Duration::from_millis(10)); // polls a file, deadline above
    }
    Ok(d)
}

pub(crate) fn read_page(p: &Path) -> Result<Snapshot> {
    let m = vmclock::Mapping::open(p)?;
    Ok(vmclock::seqlock::read(&m, vmclock::seqlock::DEFAULT_MAX_WAIT)?)
}

/// A page's counter period.
pub(crate) fn period_of(page: &Snapshot) -> Result<Period> {
    let r = page.reference()?;
    Ok(Period { frac: r.period, shift: r.shift })
}

/// QEMU's vmclock page, read through the gdbstub (the region is a whole page).
fn qemu_page(gdb: &mut crate::vm::Gdb) -> Result<Snapshot> {
    let bytes: [u8; abi::ABI_SIZE] =
        gdb.read_phys(QEMU_VMCLOCK_ADDR, abi::ABI_SIZE)?.try_into().map_err(|_| anyhow::anyhow!("short read"))?;
    Ok(Snapshot::decode(&bytes, abi::PAGE_SIZE)?)
}

pub(crate) fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap_or(&0.0))
}

pub(crate) fn us(ns: f64) -> String {
    format!("{:.1} µs", ns / 1e3)
}

/// p50, p99 and max of |values| (ns), and how many.
struct Dist {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

fn dist(v: impl Iterator<Item = i128>) -> Dist {
    let v: Vec<f64> = v.map(|x| x.unsigned_abs() as f64).collect();
    let n = v.len();
    let (p50, p99, max) = if n == 0 { (f64::NAN, f64::NAN, f64::NAN) } else { quantiles(v) };
    Dist { p50, p99, max, n }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {} p99 {} max {} (n {})", us(self.p50), us(self.p99), us(self.max), self.n)
    }
}

/// The noise floor of a set of echoes, and how many were set aside, in words.
fn floor_of(e: &[Echo], noise: fn(&Echo) -> i128, aside: usize) -> String {
    let d = dist(e.iter().map(noise));
    format!("noise floor p50 {} p99 {}, {aside} set aside above {}", us(d.p50), us(d.p99), us(NOISE_CAP_NS as f64))
}

/// This machine's load average (1, 5, 15 min).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Lab {
    fn start(a: Args, setup: Setup) -> Result<Lab> {
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
        };
        let mut relay = None;
        if setup == Setup::QemuVmclock {
            cfg.shared.insert(0, (guest_page.clone(), 4));
        } else {
            // What an operator does: the relay writes the guest's page file (its counter map is
            // measured once the guest runs, and the relay restarted with it), and `vmtime qemu`
            // gives QEMU that file as the guest's vmclock device.
            relay = Some(relay_daemon(&vmtime, &host_page, &guest_page, 0)?);
            let out = Command::new(&vmtime)
                .args(["qemu", "--page", guest_page.to_str().context("path")?, "--slot", "4", "--json", "--ssdt"])
                .arg(work.join("vmclock-ssdt.aml"))
                .output()?;
            ensure!(out.status.success(), "vmtime qemu: {}", String::from_utf8_lossy(&out.stderr).trim());
            cfg.extra = serde_json::from_slice(&out.stdout).context("vmtime qemu --json")?;
            std::fs::write(work.join("qemu-args.txt"), cfg.extra.join(" "))?;
        }
        let t0 = Instant::now();
        let mut vm = Vm::start(&cfg)?;
        vm.wait_ready(Duration::from_secs(120))?;
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
            mailbox: None,
            host_page,
            guest_page,
            offset: None,
            hz,
            row: None,
            budget_ns: 0.0,
            cont_slack: 0,
        })
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
    fn measure_offset(&mut self) -> Result<echo::Offset> {
        let target = (self.hz * 2e-6) as u64;
        let o = self.mailbox()?.measure_offset(500, target, Duration::from_secs(10))?;
        self.offset = Some(o);
        Ok(o)
    }

    /// Echoes `every` apart until `n` have a noise floor (by `noise`) within NOISE_CAP_NS, or
    /// `deadline` passes (then at least half of `n` are required). Returns the kept echoes and
    /// how many were set aside.
    fn clean_echoes(
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

    fn start_relay(&mut self, host_page: &Path, offset: u64) -> Result<()> {
        self.relay = None;
        self.relay = Some(relay_daemon(&self.vmtime, host_page, &self.guest_page, offset)?);
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
        let o = self.measure_offset()?;
        self.start_relay(&self.host_page.clone(), o.ticks)?;
        let out = self.vm.sh_ok(&format!("vmtime show {GUEST_PAGE} --json"), 10 * SEC)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        ensure!(v["valid"] == true, "the guest's page is not valid: {}", v["error"]);
        let (e, aside) = self.clean_echoes(200, Duration::from_millis(5), Duration::from_secs(30), Echo::page_noise)?;
        self.page_verdict(&e, aside, o)
    }

    /// Every echo's page time inside the page's bounds (widened by the echo's noise floor).
    fn page_verdict(&self, e: &[Echo], aside: usize, o: echo::Offset) -> Result<String> {
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

    /// 3. vmtime sync in the guest on its real clock: the start-up step from 2001, then the offset
    ///    it holds against this machine's clock.
    fn sync(&mut self) -> Result<String> {
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
        let (check, _) = self.vm.sh(&format!("vmtime check {GUEST_PAGE} --samples 1000 --json"), 30 * SEC)?;
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

    /// The time until an echo with a clean noise floor sees |guest − host| below `within_ns`
    /// (None: not before `deadline`).
    fn converge(&mut self, within_ns: i128, deadline: Duration) -> Result<Option<Duration>> {
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

    /// Stops the VM. The guest's counter stops with it (TCG freezes it while the VM is stopped):
    /// its frozen value (midpoint) and half-uncertainty, from the offset measured just before.
    fn stop(&mut self) -> Result<(u64, u64)> {
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
    fn write_qemu_page_and_resume(&mut self, frozen: (u64, u64), marker: u64, generation: u64) -> Result<(u64, u64)> {
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
    fn after_resume(
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

    /// 6. QEMU's vmclock page filled with real time (gdbstub) before the driver probes: the
    ///    driver registers a PTP clock, read by `vmtime phc` with the real ioctls.
    fn phc(&mut self) -> Result<String> {
        let frozen = self.stop()?;
        let (predicted, budget) = self.write_qemu_page_and_resume(frozen, 0x1000, 1)?;
        let map = self.after_resume(predicted, budget, 0x1000, 1)?;
        // QEMU's page is off by the map prediction, within its budget (in its maxerror).
        let tolerance_ns = 2e6 + self.budget_ns;
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

    /// 4. A real disruption: savevm, 2 s with the VM stopped, loadvm. QEMU bumps the marker of
    ///    its page; vmtime sync, reading /dev/vmclock0 through the driver, steps at once.
    fn disruption(&mut self) -> Result<String> {
        // Sync now follows QEMU's page through the driver.
        // Gone before the next starts: a real sync holds the single-instance lock until it exits.
        self.vm.sh("killall vmtime; while pidof vmtime >/dev/null; do sleep 0.1; done", 5 * SEC)?;
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

    /// The time until the guest clock is back within `bound` ns of this machine (None: not in 5 s).
    fn back_within(&mut self, bound: i128) -> Result<Option<(Duration, i128)>> {
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

    /// 5. A leap second: the guest's page announces an insertion at the end of 2026-12-31 (a leap second
    ///    the page invents: none is scheduled, and the relay and sync refuse times before 2026-09-01); the
    ///    guest kernel, armed by vmtime sync, inserts it; CLOCK_TAI stays continuous.
    fn leap(&mut self) -> Result<String> {
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

/// One guest clock discipline's figures (the comparison table).
struct Row {
    who: &'static str,
    from_s: f64,
    within_1ms: Option<Duration>,
    within_10us: Option<Duration>,
    held: Dist,
    floor: String,
    kernel: serde_json::Value,
}

fn secs(d: Option<Duration>, deadline: u64) -> String {
    d.map_or(format!("not in {deadline} s"), |d| format!("{:.2} s", d.as_secs_f64()))
}

impl Lab {
    /// 7. The stock guest's own ptp_vmclock on the relayed page (ivshmem + `vmtime qemu`'s SSDT,
    ///    QEMU unmodified): it registers, /dev/vmclock0 and a PTP clock appear, the page read
    ///    through the driver is the relayed one, its time holds this machine's clock inside its
    ///    bounds, and the PTP clock's three reading methods agree with it.
    fn driver(&mut self) -> Result<String> {
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
            serde_json::from_str(&self.vm.sh_ok("vmtime phc read /dev/ptp0 --json", 20 * SEC)?)?;
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

    /// 8./9. A discipline of the stock guest's clock from 2001: `vmtime sync` on /dev/vmclock0,
    ///    or chronyd on the driver's PTP clock. Time to 1 ms and to 10 µs, then the offset held.
    fn discipline(&mut self, chrony: bool) -> Result<Row> {
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

    fn converge_from(&mut self, t0: Instant, within_ns: i128, deadline: Duration) -> Result<Option<Duration>> {
        while t0.elapsed() < deadline {
            let e = self.mailbox()?.ask()?;
            if e.clock_noise() <= within_ns.min(NOISE_CAP_NS) && e.clock_error().abs() < within_ns {
                return Ok(Some(t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20)); // a sampling interval
        }
        Ok(None)
    }

    fn row_line(&mut self, chrony: bool) -> Result<String> {
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

    fn sync_driver(&mut self) -> Result<String> {
        self.row_line(false)
    }

    fn chrony(&mut self) -> Result<String> {
        self.driver_loaded()?;
        self.row_line(true)
    }

    /// The chrony guest: the driver loaded and the counter map measured as in `driver`.
    fn driver_loaded(&mut self) -> Result<()> {
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko && ls /dev/ptp0", 10 * SEC)?;
        let o = self.measure_offset()?;
        self.start_relay(&self.host_page.clone(), o.ticks)
    }

    /// What a FAIL line needs beyond its figures: this machine's load, the guest's last kernel
    /// messages and the check's own log.
    fn explain(&mut self, name: &str) -> String {
        let logs: &[&str] = match name {
            "sync" | "sync-driver" => &["/tmp/sync.log"],
            "leap" => &["/tmp/sync.log", "/tmp/leap.json"],
            "disruption" => &["/tmp/sync2.log"],
            "chrony" => &["/tmp/chrony.log"],
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

type Check = fn(&mut Lab) -> Result<String>;

/// Boots one guest and runs its checks; one PASS/FAIL line each.
/// Whether `--only` selects this check (no `--only`: every check).
fn selected(a: &Args, name: &str) -> bool {
    a.only.is_empty() || a.only.iter().any(|o| o == name)
}

fn run_setup(
    a: &Args,
    setup: Setup,
    checks: &[(&'static str, Check)],
    lines: &mut Vec<String>,
    results: &mut Vec<serde_json::Value>,
) -> Option<Row> {
    let checks: Vec<_> = checks.iter().filter(|(n, _)| selected(a, n)).collect();
    if checks.is_empty() {
        return None;
    }
    let mut lab = match Lab::start(a.clone(), setup) {
        Ok(l) => l,
        Err(e) => {
            for (name, _) in checks {
                let line = format!(
                    "FAIL {name}: the {} guest did not start: {e:#} (load average {})",
                    setup.name(),
                    loadavg()
                );
                println!("{line}");
                results.push(serde_json::json!({"check": name, "pass": false, "summary": line}));
                lines.push(line);
            }
            return None;
        }
    };
    for (name, f) in checks {
        let t = Instant::now();
        let r = f(&mut lab);
        let secs = t.elapsed().as_secs_f64();
        let pass = r.is_ok();
        let line = match r {
            Ok(s) => format!("PASS {name}: {s} ({secs:.1} s)"),
            Err(e) => format!("FAIL {name}: {e:#}{}", lab.explain(name)),
        };
        println!("{line}");
        let mut j = serde_json::json!({"check": name, "pass": pass, "seconds": (secs * 10.0).round() / 10.0,
            "summary": line.lines().next().unwrap_or("")});
        if let (true, Some(row)) = (matches!(*name, "sync-driver" | "chrony"), lab.row.as_ref()) {
            // The boot figure: from the discipline's start to |CLOCK_REALTIME − host| ≤ 1 ms.
            j["to_1ms_s"] = serde_json::json!(row.within_1ms.map(|d| d.as_secs_f64()));
            j["to_10us_s"] = serde_json::json!(row.within_10us.map(|d| d.as_secs_f64()));
            j["held_p99_us"] = serde_json::json!(row.held.p99 / 1e3);
        }
        results.push(j);
        lines.push(line);
    }
    if let Some(m) = lab.mailbox.as_mut() {
        m.quit();
    }
    lab.row.take()
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut lines = Vec::new();
    let qemu: [(&str, Check); 6] = [
        ("show", Lab::show),
        ("relay", Lab::relay),
        ("sync", Lab::sync),
        ("leap", Lab::leap),
        ("phc", Lab::phc),
        ("disruption", Lab::disruption),
    ];
    let mut results = Vec::new();
    run_setup(&a, Setup::QemuVmclock, &qemu, &mut lines, &mut results);
    let mut rows = Vec::new();
    let stock: [(&str, Check); 2] = [("driver", Lab::driver), ("sync-driver", Lab::sync_driver)];
    rows.extend(run_setup(&a, Setup::Stock, &stock, &mut lines, &mut results));
    if a.chrony_tree.is_some() {
        rows.extend(run_setup(&a, Setup::Chrony, &[("chrony", Lab::chrony)], &mut lines, &mut results));
    } else if selected(&a, "chrony") {
        let line = "SKIP chrony: no chronyd tree (lab/run extracts Debian's chrony)".to_string();
        println!("{line}");
        lines.push(line);
    }
    if selected(&a, "migration") || selected(&a, "restore") {
        match a.qemu_migration_root.as_deref() {
            Some(root) => {
                for (name, pass, line, j) in crate::migration::run(&a, root, 6, 20) {
                    let line = format!("{} {name}: {line}", if pass { "PASS" } else { "FAIL" });
                    println!("{line}");
                    lines.push(line);
                    results.push(j);
                }
            }
            None => {
                for name in ["migration", "restore"] {
                    let line = format!(
                        "SKIP {name}: no QEMU that can migrate a guest with ivshmem (lab/run fetches QEMU 7.2)"
                    );
                    println!("{line}");
                    results.push(serde_json::json!({"check": name, "pass": false, "skipped": true, "summary": line}));
                    lines.push(line);
                }
            }
        }
    }
    let results_path = a.results.clone().unwrap_or_else(|| a.work.with_file_name("results.json"));
    std::fs::write(&results_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("write {}", results_path.display()))?;
    println!("lab: results in {}", results_path.display());
    let failed = lines.iter().filter(|l| l.starts_with("FAIL")).count();
    println!("\nlab results (load average now {}):", loadavg());
    for l in &lines {
        println!("  {}", l.lines().next().unwrap_or(""));
    }
    if !rows.is_empty() {
        println!("\nthe stock guest's clock from 2001, |guest CLOCK_REALTIME − this machine| (same guest, same page):");
        println!(
            "  {:<38} {:>10} {:>10} {:>9} {:>9} {:>9} {:>18} {:>4}",
            "discipline", "to 1 ms", "to 10 µs", "p50", "p99", "max", "maxerr/esterr µs", "TAI"
        );
        for r in &rows {
            println!(
                "  {:<38} {:>10} {:>10} {:>9} {:>9} {:>9} {:>18} {:>4}",
                r.who,
                secs(r.within_1ms, 60),
                secs(r.within_10us, 60),
                us(r.held.p50),
                us(r.held.p99),
                us(r.held.max),
                format!("{}/{}", r.kernel["maxerror_us"], r.kernel["esterror_us"]),
                r.kernel["tai"]
            );
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
