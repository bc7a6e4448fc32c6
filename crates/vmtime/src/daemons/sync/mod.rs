//! `vmtime sync`: keeps this guest's CLOCK_REALTIME locked to a vmclock page (see
//! `vmtime_core::sync`). With `--dry-run` it prints what it would do and changes nothing: the only
//! mode to use on a machine whose clock must not be touched.

mod markers;
mod once;
mod page;
mod phc;

use markers::MarkersOnly;
use once::*;
pub(crate) use page::DeviceNotes;
use page::{find_device, Sync};
use phc::*;

use crate::daemons::MarkerPace;
use crate::ops::config::{DaemonArgs, SyncFlags, SyncSettings, Timescale};
use crate::ops::runtime::{Daemon, Flow, Runtime, Turn};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::abi::{self, flags};
use vmtime_core::cadence::{Cadence, Look, Markers};
use vmtime_core::rival::{ClockWatch, Interference};
use vmtime_core::sync::{
    gives_time, sample_under_page, Discipline, MarkerWatch, NotifyCheck, Rearm, RearmStep, Silence, SyncAction,
    SyncConfig, SyncObservation, Wakeup,
};
use vmtime_sys::clock::{aba_sample, tightest, ClockId};
use vmtime_sys::files;
use vmtime_sys::serve::{self, Poller, Subscription, Token};

/// `vmtime sync`'s flags: each one but `--config` and `--once` is also a key of the
/// configuration's `[sync]` section; a flag overrides the file.
#[derive(ClapArgs, Debug, Default, Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    pub keys: SyncFlags,
    /// One bounded step from the page (or PHC), with the TAI offset, leap state and bounds, then
    /// exit: 0, or 1 with the reason on one line (for agents, init scripts, microVMs).
    #[arg(long)]
    #[serde(skip)]
    pub once: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub daemon: DaemonArgs,
}

/// The flags every daemon takes, as fields of `Args` (`vmtime-guest` sets `log_level` so).
impl std::ops::Deref for Args {
    type Target = DaemonArgs;
    fn deref(&self) -> &DaemonArgs {
        &self.daemon
    }
}

impl std::ops::DerefMut for Args {
    fn deref_mut(&mut self) -> &mut DaemonArgs {
        &mut self.daemon
    }
}

/// What `vmtime sync` applies on SIGHUP following a vmclock page: the log level, the step policy
/// and its limits, the interval and the hook. The source, the socket, `dry_run` (never switched
/// to changing the clock behind the operator's back), the run time, the PHC's timescale and
/// TAI offset and the metrics address need a restart.
const LIVE: &[&str] =
    &["log_level", "interval_ms", "max_interval_ms", "makestep_ns", "makestep_updates", "max_step_s", "hook"];
/// On a PHC source (or markers only) only the log level is applied live.
const LIVE_PHC: &[&str] = &["log_level"];

/// The discipline's settings from `vmtime sync`'s.
fn discipline_config(a: &SyncSettings) -> SyncConfig {
    SyncConfig {
        step_threshold_ns: a.makestep_ns.get() as i64,
        step_updates: a.makestep_updates.get(),
        interval_ns: a.interval_ms.get() as i128 * 1_000_000,
        max_interval_ns: a.max_interval_ms.get() as i128 * 1_000_000,
        max_step_ns: (a.max_step_s.fine() as i64).saturating_mul(1_000_000),
        ..SyncConfig::default()
    }
}

/// A pure PHC, if there is one.
fn find_phc() -> Option<vmtime_sys::phc::PhcInfo> {
    vmtime_sys::phc::list().into_iter().find(|i| vmtime_core::phc::pure_source(&i.clock_name).is_some())
}

fn timescale_of(t: Option<Timescale>) -> Option<vmtime_core::phc::PhcTimescale> {
    use vmtime_core::phc::PhcTimescale;
    t.map(|t| match t {
        Timescale::Utc => PhcTimescale::Utc,
        Timescale::Tai => PhcTimescale::Tai,
    })
}

/// Runs the hook for a new VM generation (prints it in a dry run).
fn run_hook(hook: &Option<String>, dry_run: bool) {
    if dry_run {
        println!("dry run: would {}", SyncAction::RunHook);
    } else if let Some(h) = hook {
        tracing::info!("VM generation changed: running {h}");
        let _ = std::process::Command::new("sh").arg("-c").arg(h).status();
    }
}

/// The figures every sync path starts with.
fn sync_figures(a: &SyncSettings, source: &Path, state: Option<&'static str>) -> crate::ops::figures::SyncMetrics {
    crate::ops::figures::SyncMetrics {
        dry_run: a.dry_run,
        state,
        source: source.display().to_string(),
        lock: LOCK.get().cloned(),
        ..Default::default()
    }
}

/// Another process changed the kernel's NTP state.
#[derive(Debug)]
struct Interfered(Interference);

impl std::fmt::Display for Interfered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: vmtime sync stops so that two daemons do not fight over the clock; stop the other one, or \
             run vmtime sync with --allow-other-daemon",
            self.0
        )
    }
}

impl std::error::Error for Interfered {}

/// Exit status when another daemon is in the way (the unit does not restart on it).
pub const EXIT_OTHER_DAEMON: u8 = 3;

/// A turn's end: interference stops the run with [`EXIT_OTHER_DAEMON`], another error is the
/// run's.
fn stopped_by(r: Result<()>) -> Result<Flow> {
    match r {
        Ok(()) => Ok(Flow::Continue),
        Err(e) => match e.downcast_ref::<Interfered>() {
            Some(i) => {
                tracing::error!("{i}");
                Ok(Flow::Stop(EXIT_OTHER_DAEMON))
            }
            None => Err(e),
        },
    }
}

/// The kernel's NTP state. In a dry run it is advisory (nothing is changed): a read refused by a
/// seccomp filter (a container) is said once and the discipline sees an unsynchronised kernel
/// (`KernelTimex::unreadable`). Otherwise a refusal is an error naming the call, the cause and
/// the fix: the discipline cannot run without it.
fn kernel_state(dry_run: bool) -> Result<vmtime_core::kernel::KernelTimex> {
    static READER: std::sync::Mutex<vmtime_sys::AdvisoryTimex> =
        std::sync::Mutex::new(vmtime_sys::AdvisoryTimex::new());
    if !dry_run {
        return Ok(vmtime_sys::read_timex()?);
    }
    let (tx, refused) = READER.lock().unwrap_or_else(|p| p.into_inner()).read()?;
    if let Some(e) = refused {
        tracing::warn!("{e}");
        tracing::warn!(
            "dry run: going on as if the kernel clock were unsynchronised (its state is unknown; \
             the checks for another time daemon's changes see nothing)"
        );
    }
    Ok(tx)
}

/// Refuses to start next to another time daemon (a dry run only warns: it changes nothing).
fn check_rivals(a: &SyncSettings) -> Result<Option<ExitCode>> {
    if a.allow_other_daemon {
        return Ok(None);
    }
    let procs = vmtime_sys::procs::list().context("cannot list the processes in /proc")?;
    match vmtime_core::rival::may_start(&procs, &kernel_state(a.dry_run)?) {
        Ok(()) => Ok(None),
        Err(r) if a.dry_run => {
            tracing::warn!("{r} (dry run: going on, nothing is changed)");
            Ok(None)
        }
        Err(r) => {
            tracing::error!("vmtime sync does not start: {r}");
            Ok(Some(ExitCode::from(EXIT_OTHER_DAEMON)))
        }
    }
}

/// The single-instance lock of a real sync, held while it runs (its path, for the status).
static LOCK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A real sync takes the exclusive lock in its runtime directory, or says which pid holds it; a
/// dry run changes nothing and takes none (its status says `"lock": null`).
fn take_lock(a: &SyncSettings) -> Result<Result<Option<files::LockFile>, ExitCode>> {
    if a.dry_run {
        return Ok(Ok(None));
    }
    take_lock_at(&crate::paths::sync_lock())
}

fn take_lock_at(path: &std::path::Path) -> Result<Result<Option<files::LockFile>, ExitCode>> {
    files::ensure_dir_for(path)?;
    match files::LockFile::acquire(path) {
        Ok(l) => {
            let _ = LOCK.set(path.display().to_string());
            Ok(Ok(Some(l)))
        }
        Err(files::FileError::Locked { path, holder }) => {
            tracing::error!("vmtime sync does not start: another vmtime sync ({holder}) holds {path}; stop it first");
            Ok(Err(ExitCode::from(EXIT_OTHER_DAEMON)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where `vmtime sync` takes its time from, its source open.
enum Source {
    /// A vmclock page that gives time, and its first read.
    Page(crate::page::FollowedPage, vmclock::Snapshot),
    /// A PTP clock, and the page of markers only that led to it, if any.
    Phc(vmtime_sys::phc::PhcInfo, Option<crate::page::FollowedPage>),
    /// A page of markers only, and no PHC on this machine: no time source.
    MarkersOnly(crate::page::FollowedPage),
}

/// The source the settings name: `--source` (a page, or a PHC under /dev/ptp*), else the first
/// vmclock device, else a pure PHC. Ok: a page's path; Err: a PHC.
fn pick_source(a: &SyncSettings) -> Result<Result<PathBuf, vmtime_sys::phc::PhcInfo>> {
    Ok(match a.source.clone().or_else(find_device) {
        Some(s) if s.to_string_lossy().starts_with("/dev/ptp") => Err(vmtime_sys::phc::list()
            .into_iter()
            .find(|i| i.dev == s)
            .unwrap_or(vmtime_sys::phc::PhcInfo { dev: s.clone(), clock_name: String::new(), driver: None })),
        Some(s) => Ok(s),
        None => match find_phc() {
            Some(info) => Err(info),
            None => bail!("no source here: no /dev/vmclock* and no pure PHC (ptp_kvm, VMclock, hyperv, VMware, virtio-rtc, s390); give --source PAGE"),
        },
    })
}

/// Opens a page source. A page with markers only (QEMU, Firecracker: counter INVALID, status
/// UNKNOWN) gives time from a PHC if there is one, and its markers either way.
fn open_page_source(path: &Path) -> Result<Source> {
    let page = crate::page::FollowedPage::open(path)?;
    let first = page.read()?;
    if gives_time(&first, vmclock::counter::NATIVE) {
        return Ok(Source::Page(page, first));
    }
    Ok(match find_phc() {
        Some(info) => Source::Phc(info, Some(page)),
        None => Source::MarkersOnly(page),
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    run_with(args, |a| a.daemon.settings(a))
}

/// `vmtime sync` in the guest binary (`vmtime-guest`): the configuration file read by
/// [`crate::ops::config::sync_guest`] (its `[sync]` and `[metrics]` alone).
pub fn run_guest(args: Args) -> Result<ExitCode> {
    run_with(args, |a| crate::ops::config::sync_guest(a.daemon.config.as_deref(), a))
}

/// `vmtime sync` with `settings` reading the flags over the configuration file (at start and on
/// SIGHUP).
fn run_with(args: Args, settings: fn(&Args) -> Result<SyncSettings>) -> Result<ExitCode> {
    let a: SyncSettings = settings(&args)?;
    if let Some(code) = check_rivals(&a)? {
        return Ok(code);
    }
    let _lock = match take_lock(&a)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    if args.once {
        return once(&a);
    }
    let source = match pick_source(&a)? {
        Ok(path) => open_page_source(&path)?,
        Err(info) => Source::Phc(info, None),
    };
    let socket = match a.socket.clone() {
        Some(s) => s,
        None => {
            files::ensure_private_dir(&crate::paths::sync_dir(a.dry_run))?;
            crate::paths::sync_socket(a.dry_run)
        }
    };
    let rt = Runtime::start(a.clone(), move || settings(&args), &socket)?;
    let (page, first) = match source {
        Source::Page(page, first) => (page, first),
        Source::Phc(info, markers) => return rt.run(&mut PhcSync::open(&a, info, markers)?),
        Source::MarkersOnly(page) => {
            tracing::info!(
                "vmtime sync: {} carries markers only and this machine has no PHC: no time source; watching its disruption_marker and vm_generation_counter{}",
                page.path().display(),
                if a.hook.is_some() { " for the hook" } else { "" }
            );
            let mut m = sync_figures(&a, page.path(), Some("no time source (markers only)"));
            m.markers_only = true;
            let interval = Duration::from_millis(a.interval_ms.get());
            let source = page.path().to_path_buf();
            return rt.run(&mut MarkersOnly {
                pace: MarkerPace::new(interval, Some(&page), &source),
                page,
                watch: MarkerWatch::default(),
                dry_run: a.dry_run,
                hook: a.hook.clone(),
                m,
            });
        }
    };
    let source = page.path().to_path_buf();
    // Notification: the device's poll() (read() acknowledges), or a publisher's socket.
    let is_device = page.reader().is_device();
    let notes = DeviceNotes::of(&page, &first, &source)?;
    let publisher = crate::paths::socket_for(&source);
    let sub = if is_device { None } else { crate::ops::control::subscribe(&publisher) };
    let cfg = discipline_config(&a);
    let mut m = sync_figures(&a, &source, None);
    m.step_policy = Some(cfg.clone());
    let now = Instant::now();
    let mut s = Sync {
        page,
        notes,
        discipline: Discipline::new(cfg),
        dry_run: a.dry_run,
        hook: a.hook.clone(),
        applied: 0,
        last_marker: None,
        printed: Default::default(),
        redone: 0,
        m,
        rival: (!a.allow_other_daemon).then(ClockWatch::new),
        cross: a.cross_check_ntp.map(crate::daemons::crosscheck::NtpCross::new).transpose()?,
        cadence: Cadence::default(),
        looked_disrupted: false,
        publisher,
        sub,
        t_note: None,
        t_cross: None,
        is_device,
        next_obs: now,
        last_obs: now,
        last_refresh: now,
        rescheduled: false,
        last_resubscribe: now,
        resubscribe_every: Duration::from_secs(1),
    };
    s.cadence.set_notified(s.notes.device.is_some());
    tracing::info!(
        "vmtime sync: {} → CLOCK_REALTIME{}",
        source.display(),
        if a.dry_run { " (dry run: nothing is changed)" } else { "" }
    );
    tracing::info!(
        "source: {} {}, status {}, marker {:#x}",
        abi::time_type_name(first.time_type()),
        first.tai_minus_utc().map_or("without a TAI offset".to_string(), |o| format!("with TAI − UTC = {o} s")),
        first.clock_status().map_or("absent", abi::status_name),
        first.disruption_marker()
    );
    tracing::info!(
        "woken by {}",
        if s.notes.device.is_some() {
            "the device's notifications"
        } else if s.sub.is_some() {
            "the publisher's socket"
        } else {
            "polling"
        }
    );
    rt.run(&mut s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_real_sync_is_refused_by_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("sync.lock");
        let first = take_lock_at(&path).unwrap();
        assert!(matches!(first, Ok(Some(_))));
        assert_eq!(LOCK.get().map(String::as_str), Some(path.to_str().unwrap()));
        // The second holder is refused with the "other daemon" exit status, not an error.
        assert!(matches!(take_lock_at(&path), Ok(Err(_))));
        drop(first);
        assert!(matches!(take_lock_at(&path), Ok(Ok(Some(_)))));
    }

    /// A page that stops saying NOTIFICATION_PRESENT (a relay restarted without its doorbell):
    /// the driver's poll() then says POLLHUP at every wait. The first wake-up sets the device
    /// aside (the markers are checked instead); it is not taken for an update.
    #[test]
    fn a_page_without_notification_present_is_not_polled() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("vmclock0");
        let mut page = vec![0u8; 4096];
        page[12..16].copy_from_slice(&6u32.to_le_bytes());
        std::fs::write(&dev, page).unwrap();
        let mut notes = DeviceNotes::with(Some(File::open(&dev).unwrap()), None);
        notes.acked = Some(4);
        assert!(!notes.readable(|| 6), "a new seq_count, but the page no longer notifies");
        assert!(notes.device.is_none());
    }

    /// A 6.13–6.19 driver's poll() is always readable. A regular file is too: the daemon must
    /// find that out after a few wake-ups and then wait out its intervals, not spin.
    #[test]
    fn an_always_readable_device_falls_back_to_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("vmclock0");
        // A page whose seq_count is always 0 and that says NOTIFICATION_PRESENT (as the host's
        // page does; the old driver ignores it).
        let mut page = vec![0u8; 4096];
        page[0x18..0x20].copy_from_slice(&flags::NOTIFICATION_PRESENT.to_le_bytes());
        std::fs::write(&dev, page).unwrap();
        let mut notes = DeviceNotes::with(Some(File::open(&dev).unwrap()), None);
        let mut poller = Poller::new();
        let start = Instant::now();
        let mut updates = 0;
        for _ in 0..10 {
            // The daemon's wait: the device (while it is polled) and a 20 ms interval.
            poller.clear();
            let t = notes.device.as_ref().map(|d| poller.add(d.as_fd(), serve::READABLE));
            poller.wait(Some(Duration::from_millis(20))).unwrap();
            if t.is_some_and(|t| poller.readable(t)) {
                // The file reads as a page whose seq_count is always 0: it never changes.
                updates += u32::from(notes.readable(|| 0));
            }
        }
        assert_eq!(updates, 1, "only the first wake-up (nothing read before it) counts as an update");
        assert!(notes.device.is_none(), "the device is no longer polled");
        // 10 waits: at most 1 + NotifyCheck::LIMIT return at once, the rest wait their 20 ms.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(20 * (10 - 1 - NotifyCheck::LIMIT as u64)), "{waited:?}");
    }
}
