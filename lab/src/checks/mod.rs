//! `vmtime-lab run`: builds the guest's initramfs, starts `vmtime host` on this machine, boots
//! the guest, and runs the checks, printing one `PASS name: figures` or `FAIL name: why` line each.
//!
//! Nothing here changes this machine's clock: `vmtime host` and `vmtime relay` only read it; the
//! only `vmtime sync` without --dry-run runs inside the guest, on the guest's clock.

mod daemon;
mod discipline;
mod disruption;
mod driver;
mod guest;
mod initramfs;
mod leap;
mod notify;
mod page;
mod phc;
mod relay;
mod resume;
mod show;
mod stats;
mod sync;

use crate::echo;
use crate::vm::Vm;
use anyhow::{Context, Result};
use discipline::{secs, Row};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub(crate) use daemon::{relay_daemon, Daemon};
pub(crate) use initramfs::initramfs;
pub(crate) use page::{period_of, read_page};
pub(crate) use stats::{loadavg, quantiles, us};

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
    /// A static full vmtime: in the guest, `vmtime-full`, only for what the guest binary lacks
    /// (`feed`, `check`, `phc`). This lab's own guest helper is itself, built static too.
    #[arg(long)]
    pub(crate) vmtime: PathBuf,
    /// The static guest binary (`scripts/guest-binary`): the guest's `vmtime`, which runs every
    /// guest command it has (sync, including --once, waitsync, now, status, show).
    #[arg(long)]
    pub(crate) vmtime_guest: PathBuf,
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
    /// The stock setup with a doorbell (`vmtime qemu --notify`, `vmtime relay --doorbell`): the
    /// guest's vmclock device notifies.
    Notify,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::QemuVmclock => "qemu-vmclock",
            Setup::Stock => "stock",
            Setup::Chrony => "chrony",
            Setup::Notify => "notify",
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

struct Lab {
    a: Args,
    setup: Setup,
    vm: Vm,
    vmtime: PathBuf,
    _host: Daemon,
    relay: Option<Daemon>,
    /// The doorbell socket QEMU serves and the relay rings (the notify guest).
    doorbell: Option<PathBuf>,
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
    /// A check's own figures for results.json (taken after it ran, pass or fail).
    figures: Option<serde_json::Value>,
}

type Check = fn(&mut Lab) -> Result<String>;

/// Whether `--only` selects this check (no `--only`: every check).
fn selected(a: &Args, name: &str) -> bool {
    a.only.is_empty() || a.only.iter().any(|o| o == name)
}

/// Boots one guest and runs its checks; one PASS/FAIL line each.
fn run_setup(
    a: &Args,
    setup: Setup,
    checks: &[(&'static str, Check)],
    lines: &mut Vec<String>,
    results: &mut Vec<serde_json::Value>,
) -> Option<Row> {
    // `sync` follows the page the `relay` check's relay fills: selecting it selects the relay.
    let needed = |n: &str| selected(a, n) || (n == "relay" && !a.only.is_empty() && selected(a, "sync"));
    let checks: Vec<_> = checks.iter().filter(|(n, _)| needed(n)).collect();
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
        if let (Some(serde_json::Value::Object(f)), Some(o)) = (lab.figures.take(), j.as_object_mut()) {
            o.extend(f);
        }
        if let (true, Some(row)) = (matches!(*name, "sync-driver" | "chrony"), lab.row.as_ref()) {
            // The boot figure: from the discipline's start to |CLOCK_REALTIME − host| ≤ 1 ms.
            j["to_1ms_s"] = serde_json::json!(row.within_1ms.map(|d| d.as_secs_f64()));
            j["to_10us_s"] = serde_json::json!(row.within_10us.map(|d| d.as_secs_f64()));
            j["held_p99_us"] = serde_json::json!(row.held.p99 / 1e3);
            if !row.starts.is_empty() {
                // Which binary the guest's `vmtime` (sync --once, waitsync, the daemon) was.
                j["guest_vmtime"] = guest_binary(a);
                // vmtime sync: every start from 2001, timed from the guest's stamp just before
                // `vmtime sync --once` starts (not the lab's serial command).
                let v: Vec<f64> = row.starts.iter().map(|b| b.to_1ms_s).collect();
                let (p50, p99, max) = quantiles(v.clone());
                let r3 = |x: f64| (x * 1e3).round() / 1e3;
                j["to_1ms_s"] = serde_json::json!(r3(v[0]));
                j["to_1ms_s_p50"] = serde_json::json!(r3(p50));
                j["to_1ms_s_p99"] = serde_json::json!(r3(p99));
                j["to_1ms_s_max"] = serde_json::json!(r3(max));
                j["to_1ms_s_limit"] = serde_json::json!(discipline::TO_1MS_LIMIT_S);
                j["starts"] = serde_json::json!(row.starts.len());
                j["starts_each"] = serde_json::json!(row
                    .starts
                    .iter()
                    .map(|b| serde_json::json!({
                        "to_1ms_s": r3(b.to_1ms_s),
                        "script_to_1ms_s": r3(b.script_to_1ms_s),
                        "exec_s": r3(b.exec_s),
                        "once_s": r3(b.once_s),
                        "once_rc": b.once_rc,
                        "waitsync_s": r3(b.waitsync_s),
                        "waitsync_rc": b.waitsync_rc,
                        "from_command_s": r3(b.from_command_s),
                    }))
                    .collect::<Vec<_>>());
            }
        }
        results.push(j);
        lines.push(line);
    }
    if let Some(m) = lab.mailbox.as_mut() {
        m.quit();
    }
    lab.row.take()
}

/// The guest's `vmtime`: the guest binary's file name and size (results.json).
fn guest_binary(a: &Args) -> serde_json::Value {
    let name = a.vmtime_guest.file_name().map(|n| n.to_string_lossy().into_owned());
    let bytes = std::fs::metadata(&a.vmtime_guest).ok().map(|m| m.len());
    let full_bytes = std::fs::metadata(&a.vmtime).ok().map(|m| m.len());
    serde_json::json!({"binary": name, "bytes": bytes, "full_binary_bytes": full_bytes})
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut lines = Vec::new();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).with_context(|| format!("{}", p.display()));
    println!(
        "lab: the guest's vmtime is {} ({} bytes); vmtime-full ({} bytes) only for feed, check and phc",
        a.vmtime_guest.display(),
        size(&a.vmtime_guest)?,
        size(&a.vmtime)?
    );
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
    run_setup(&a, Setup::Notify, &[("notify", Lab::notify)], &mut lines, &mut results);
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
