//! `vmtime sync`: keeps this guest's CLOCK_REALTIME locked to a vmclock page (see
//! `vmtime_core::sync`). With `--dry-run` it prints what it would do and changes nothing: the only
//! mode to use on a machine whose clock must not be touched.

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
use vmtime_core::cadence::{Cadence, Markers};
use vmtime_core::rival::{ClockWatch, Interference};
use vmtime_core::sync::{
    gives_time, sample_under_page, Discipline, MarkerWatch, NotifyCheck, SyncAction, SyncConfig, SyncObservation,
    Wakeup,
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
const LIVE: &[&str] = &["log_level", "interval_ms", "makestep_ns", "makestep_updates", "max_step_s", "hook"];
/// On a PHC source (or markers only) only the log level is applied live.
const LIVE_PHC: &[&str] = &["log_level"];

/// The discipline's settings from `vmtime sync`'s.
fn discipline_config(a: &SyncSettings) -> SyncConfig {
    SyncConfig {
        step_threshold_ns: a.makestep_ns.get() as i64,
        step_updates: a.makestep_updates.get(),
        interval_ns: a.interval_ms.get() as i128 * 1_000_000,
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

/// The PHC path: measurements every interval, the PI servo, the same actions. `markers` is a
/// vmclock page that carries markers only (QEMU, Firecracker): its VM generation runs the hook
/// and its disruption marker makes the next measurement step.
struct PhcSync {
    dev: PathBuf,
    d: vmtime_sys::phc::PhcFile,
    own_page: Option<vmclock::Mapping>,
    markers: Option<crate::page::FollowedPage>,
    /// A measurement every interval; between them the markers page (if any) is looked at, at
    /// the cadence (or notified): a new disruption marker makes the next measurement come at
    /// once, and step.
    pace: MarkerPace,
    clock_name: String,
    servo: vmtime_core::phc::PhcServo,
    watch: MarkerWatch,
    rival: Option<ClockWatch>,
    dry_run: bool,
    hook: Option<String>,
    tai_offset: Option<i16>,
    interval: Duration,
    printed: String,
    m: crate::ops::figures::SyncMetrics,
}

impl PhcSync {
    fn open(
        a: &SyncSettings,
        info: vmtime_sys::phc::PhcInfo,
        markers: Option<crate::page::FollowedPage>,
    ) -> Result<Self> {
        use vmtime_core::phc::{decide_timescale, pure_source, PhcServo, PhcServoConfig};
        let dev = info.dev.clone();
        let clock_name = info.clock_name.clone();
        let mut d = vmtime_sys::phc::PhcFile::open(&dev).with_context(|| format!("cannot open {}", dev.display()))?;
        // The page of the vmclock device that registered this PHC, if any: its status, TAI − UTC,
        // and a reading against it decide the PHC's timescale.
        let own_page = vmtime_sys::phc::vmclock_device(&info, std::path::Path::new("/dev"))
            .and_then(|p| vmclock::Mapping::open(&p).ok());
        let kernel = kernel_state(a.dry_run)?;
        let facts = vmtime_core::phc::TimescaleFacts {
            attribute: None, // no released kernel has the PTP timescale attributes yet
            page: own_page.as_ref().and_then(|m| vmtime_sys::phc::compare_with_page(&mut d, m, kernel.tai)),
            driver: pure_source(&clock_name).flatten(),
            configured: timescale_of(a.phc_timescale),
        };
        let (timescale, by) = match decide_timescale(&facts) {
            Ok(t) => t,
            Err(e) => bail!("{} ({clock_name}): {e}", dev.display()),
        };
        let scale = match timescale {
            vmtime_core::phc::PhcTimescale::Utc => "UTC",
            vmtime_core::phc::PhcTimescale::Tai => "TAI",
        };
        if facts.configured.is_some_and(|c| c != timescale) {
            tracing::warn!("{}: --phc-timescale ignored: {by} shows the PHC keeps {scale}", dev.display());
        }
        tracing::info!(
            "vmtime sync: {} ({clock_name}, {scale} by {by}) → CLOCK_REALTIME{}",
            dev.display(),
            if a.dry_run { " (dry run: nothing is changed)" } else { "" }
        );
        if let Some(m) = &markers {
            tracing::info!("{} carries markers only: watching them for the hook and for steps", m.path().display());
        }
        let interval = Duration::from_millis(a.interval_ms.get());
        let pace = MarkerPace::new(interval, markers.as_ref(), markers.as_ref().map_or(dev.as_path(), |m| m.path()));
        Ok(PhcSync {
            m: sync_figures(a, &dev, Some("starting")),
            dev,
            d,
            own_page,
            pace,
            markers,
            clock_name,
            servo: PhcServo::new(PhcServoConfig { timescale, ..PhcServoConfig::default() }),
            watch: MarkerWatch::default(),
            rival: (!a.allow_other_daemon).then(ClockWatch::new),
            dry_run: a.dry_run,
            hook: a.hook.clone(),
            tai_offset: a.tai_offset.map(TaiUtcS::get),
            interval,
            printed: String::new(),
        })
    }

    fn say(&mut self, act: &SyncAction, how: &str) {
        let line = format!("dry run: would {act} (offset {:+.1} ns{how})", self.servo.last_offset_ns);
        if matches!(act, SyncAction::Step { .. }) || line != self.printed {
            println!("{line}");
            self.printed = line;
        }
    }

    /// Before a measurement: the kernel's state (another daemon's changes refused), the markers
    /// page's news, and the source's facts handed to the servo.
    fn prepare(&mut self) -> Result<(vmtime_core::kernel::KernelTimex, vmtime_core::phc::PhcSourceState)> {
        use vmtime_core::phc::PhcSourceState;
        let tx = kernel_state(self.dry_run)?;
        if let Some(w) = &mut self.rival {
            w.check(&tx).map_err(Interfered)?;
        }
        if let Some(m) = &self.markers {
            if let Ok(p) = m.read() {
                self.pace.cadence.seen(Markers::of(&p));
                let c = self.watch.observe(&p);
                if c.disrupted {
                    tracing::info!("disruption marker changed: {:#x}; stepping from the PHC", p.disruption_marker());
                    self.servo.disrupted();
                }
                if c.new_generation {
                    run_hook(&self.hook, self.dry_run);
                }
            }
        }
        let page =
            self.own_page.as_ref().and_then(|m| vmclock::seqlock::read(m, vmclock::seqlock::DEFAULT_MAX_WAIT).ok());
        let src = PhcSourceState::from_facts(page.as_ref(), tx.tai, self.tai_offset);
        self.servo.set_source(src);
        Ok((tx, src))
    }

    /// One measurement and the servo's actions.
    fn measure(&mut self) -> Result<()> {
        use vmtime_core::phc::read_best;
        let (tx, _) = self.prepare()?;
        let actions = match read_best(&mut self.d, 25) {
            Ok((m, _)) => {
                let acts = self.servo.handle_measurement(&m, tx.tick, tx.freq, self.interval.as_secs_f64());
                self.m.phc_measured(self.servo.last_offset_ns);
                if self.dry_run {
                    let how = match m.method {
                        vmtime_core::phc::Method::Precise => " by PTP_SYS_OFFSET_PRECISE",
                        vmtime_core::phc::Method::Extended => " by PTP_SYS_OFFSET_EXTENDED",
                        vmtime_core::phc::Method::Basic => " by PTP_SYS_OFFSET",
                    };
                    for act in &acts {
                        self.say(act, how);
                    }
                }
                acts
            }
            Err(failed) => {
                let first = failed.first().map(|(_, e)| e.as_str()).unwrap_or("no reading");
                tracing::warn!("{}: no reading method works ({first}): holdover", self.dev.display());
                self.servo.handle_failure(tx.maxerror_us, tx.esterror_us)
            }
        };
        for act in actions {
            self.m.phc_action(&act);
            if self.dry_run {
                self.say(&act, "");
            } else {
                vmtime_sys::timex::apply(&act).with_context(|| format!("cannot {act}"))?;
                if let Some(w) = &mut self.rival {
                    w.applied(&act);
                }
            }
        }
        Ok(())
    }
}

impl Daemon for PhcSync {
    type Settings = SyncSettings;
    type Figures = crate::ops::figures::SyncMetrics;
    const NAME: &'static str = "sync";
    const STOPPED: &'static str = "the clock is left as it is";
    const LIVE: &'static [&'static str] = LIVE_PHC;

    fn next_turn(&self) -> Option<Instant> {
        Some(self.pace.next())
    }

    fn register(&mut self, p: &mut vmtime_sys::serve::Poller) {
        self.pace.register(p);
    }

    fn next_look(&self) -> Option<Instant> {
        self.pace.next_look()
    }

    fn look(&mut self, _now: Instant) -> bool {
        self.pace.look(self.markers.as_mut(), false)
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        if !self.pace.take(t, self.markers.as_mut(), false)? {
            return Ok(Flow::Continue);
        }
        stopped_by(self.measure())
    }

    fn reconfigure(&mut self, _now: &SyncSettings) {}

    fn figures(&mut self) -> &mut crate::ops::figures::SyncMetrics {
        &mut self.m
    }
}

/// `--once` on a PTP clock: one reading, its step (when more than 1 µs off), the TAI offset and
/// the bounds; after a real step, one more reading gives the bounds of the clock as now set.
fn phc_once(mut p: PhcSync) -> Result<ExitCode> {
    use vmtime_core::phc::read_best;
    let dev = p.dev.clone();
    let mut once_again = false;
    loop {
        let (tx, src) = match p.prepare() {
            Ok(x) => x,
            Err(e) => return once_failed(&dev, format!("{e:#}")),
        };
        let m = match read_best(&mut p.d, 25) {
            Ok((m, _)) => m,
            Err(failed) => {
                let first = failed.first().map(|(_, e)| e.as_str()).unwrap_or("no reading");
                return once_failed(&dev, format!("no reading method works ({first})"));
            }
        };
        let acts = p.servo.handle_measurement(&m, tx.tick, tx.freq, p.interval.as_secs_f64());
        if p.servo.in_holdover() {
            return once_failed(&dev, "the source cannot be used now (UNRELIABLE, or TAI without TAI − UTC)");
        }
        let stepped = acts.iter().find_map(|x| match x {
            SyncAction::Step { delta_ns } => Some(*delta_ns),
            _ => None,
        });
        let mut acts: Vec<_> = acts.into_iter().filter(|x| !matches!(x, SyncAction::SetFrequency { .. })).collect();
        if let Some(t) = src.tai_minus_utc.filter(|&t| i32::from(t) != tx.tai) {
            acts.push(SyncAction::SetTai(i32::from(t)));
        }
        if let Err(why) = apply_once(&acts, p.dry_run) {
            return once_failed(&dev, why);
        }
        if stepped.is_some() && !p.dry_run && !once_again {
            once_again = true;
            continue;
        }
        println!(
            "vmtime sync --once: {} ({}): offset {:+.0} ns, {}{}",
            dev.display(),
            p.clock_name,
            p.servo.last_offset_ns,
            match stepped {
                Some(d) if p.dry_run => format!("would step by {:+.3} µs", d as f64 / 1e3),
                Some(d) => format!("stepped by {:+.3} µs", d as f64 / 1e3),
                None if once_again => "stepped before".to_string(),
                None => "not stepped".to_string(),
            },
            if p.dry_run { " (dry run: nothing was changed)" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
}

/// `--once` failed: one line naming the source and the reason, exit status 1.
fn once_failed(source: &Path, why: impl std::fmt::Display) -> Result<ExitCode> {
    eprintln!("vmtime sync --once: {}: {why}; the clock is left as it is", source.display());
    Ok(ExitCode::from(1))
}

/// `vmtime sync --once`: the source the settings name, opened as the daemon opens it; one
/// bounded step from it, or one line saying why not (exit status 1).
fn once(a: &SyncSettings) -> Result<ExitCode> {
    let path = match pick_source(a)? {
        Ok(path) => path,
        Err(info) => return phc_once(PhcSync::open(a, info, None)?),
    };
    match open_page_source(&path) {
        Err(e) => once_failed(&path, e),
        Ok(Source::Page(page, _)) => page_once(a, &page),
        Ok(Source::Phc(info, markers)) => phc_once(PhcSync::open(a, info, markers)?),
        Ok(Source::MarkersOnly(_)) => {
            once_failed(&path, "it carries markers only and this machine has no PHC: no time source")
        }
    }
}

/// `--once` on a page: one observation (its samples paired with one version of the page: a page
/// updated meanwhile, a migration or restore, is observed again), then the step, TAI offset,
/// leap state and bounds of `vmtime_core::oneshot::once`.
fn page_once(a: &SyncSettings, page: &crate::page::FollowedPage) -> Result<ExitCode> {
    let source = page.path();
    let kernel = kernel_state(a.dry_run)?;
    let (p, (raw, samples)) = match sample_page(page, &mut 0) {
        Ok(Some(x)) => x,
        Ok(None) => return once_failed(source, "the page changed during every one of 4 observations"),
        Err(e) => return once_failed(source, format!("{e:#}")),
    };
    crate::page::warn_legacy_tai(source, &p);
    let obs = SyncObservation { page: p, raw, samples: &samples, kernel };
    let once = match vmtime_core::oneshot::once(discipline_config(a), &obs, vmclock::counter::NATIVE) {
        Ok(o) => o,
        Err(e) => return once_failed(source, e),
    };
    if let Err(why) = apply_once(&once.actions, a.dry_run) {
        return once_failed(source, why);
    }
    let what = match once.step_ns() {
        Some(d) if a.dry_run => format!("would step by {:+.3} µs", d as f64 / 1e3),
        Some(d) => format!("stepped by {:+.3} µs", d as f64 / 1e3),
        None => "within 1 µs: not stepped".to_string(),
    };
    println!(
        "vmtime sync --once: {}: offset {:+.0} ns, {what}; bound {:.0} ns (marker {:#x}){}",
        source.display(),
        once.offset_ns,
        once.bound_ns,
        p.disruption_marker(),
        if a.dry_run { " (dry run: nothing was changed)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `--once`'s actions: printed in a dry run, else applied; the first failure in words.
fn apply_once(actions: &[SyncAction], dry_run: bool) -> Result<(), String> {
    for act in actions {
        if dry_run {
            println!("dry run: would {act}");
        } else if let Err(e) = vmtime_sys::timex::apply(act) {
            return Err(format!("cannot {act} ({e}; vmtime sync needs CAP_SYS_TIME)"));
        }
    }
    Ok(())
}

/// An observation's samples: the tightest CLOCK_MONOTONIC_RAW one, and 64 of CLOCK_REALTIME.
type Samples = (vmtime_core::AbaSample, Vec<vmtime_core::AbaSample>);

/// One observation's samples (CLOCK_MONOTONIC_RAW, and CLOCK_REALTIME against the counter),
/// paired with the page that was current while they were taken: if its seq_count moved
/// meanwhile, they are taken again (None after 4 tries). `reads` counts the page's reads.
fn sample_page(page: &crate::page::FollowedPage, reads: &mut u64) -> Result<Option<(vmclock::Snapshot, Samples)>> {
    sample_under_page(
        4,
        || {
            *reads += 1;
            page.read().map_err(anyhow::Error::from)
        },
        || -> Result<_> {
            let raw = tightest(ClockId::MonotonicRaw, 16)?;
            let samples = (0..64).map(|_| aba_sample(ClockId::Realtime)).collect::<std::io::Result<Vec<_>>>()?;
            Ok((raw, samples))
        },
        || page.read().map_or(u32::MAX, |p| p.seq_count()),
    )
}

/// A page with markers only and no PHC on this machine: no time source. The markers are still
/// watched and the hook run; the clock is left alone.
struct MarkersOnly {
    page: crate::page::FollowedPage,
    /// A full read every interval; between them the markers are looked at, at the cadence (or
    /// notified).
    pace: MarkerPace,
    watch: MarkerWatch,
    dry_run: bool,
    hook: Option<String>,
    m: crate::ops::figures::SyncMetrics,
}

impl Daemon for MarkersOnly {
    type Settings = SyncSettings;
    type Figures = crate::ops::figures::SyncMetrics;
    const NAME: &'static str = "sync";
    const STOPPED: &'static str = "the socket is removed";
    const LIVE: &'static [&'static str] = LIVE_PHC;

    fn next_turn(&self) -> Option<Instant> {
        Some(self.pace.next())
    }

    fn register(&mut self, p: &mut vmtime_sys::serve::Poller) {
        self.pace.register(p);
    }

    fn next_look(&self) -> Option<Instant> {
        self.pace.next_look()
    }

    fn look(&mut self, _now: Instant) -> bool {
        self.pace.look(Some(&mut self.page), false)
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        if !self.pace.take(t, Some(&mut self.page), false)? {
            return Ok(Flow::Continue);
        }
        self.page.refresh();
        if let Ok(p) = self.page.read() {
            self.pace.cadence.seen(Markers::of(&p));
            let c = self.watch.observe(&p);
            if c.disrupted {
                tracing::info!("disruption marker changed: {:#x} (no time source to step from)", p.disruption_marker());
            }
            if c.new_generation {
                self.m.hooks_run += 1;
                run_hook(&self.hook, self.dry_run);
            }
            self.m.page_seen(&p);
        }
        Ok(Flow::Continue)
    }

    fn reconfigure(&mut self, _now: &SyncSettings) {}

    fn figures(&mut self) -> &mut crate::ops::figures::SyncMetrics {
        &mut self.m
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

/// The device's notifications, checked: a 6.13–6.19 driver's `poll()` is always readable.
/// (Sync's and the feeds'.)
pub(crate) struct DeviceNotes {
    pub(crate) device: Option<File>,
    check: NotifyCheck,
    /// The seq_count the device's read() last returned (what the driver's poll() compares with).
    acked: Option<u32>,
}

impl DeviceNotes {
    /// The notifications of the page at `source`, when it is a device that notifies
    /// (NOTIFICATION_PRESENT): its file, opened once more (each open file has its own seq).
    /// No notifications: the markers are checked at the cadence.
    pub(crate) fn none() -> Self {
        DeviceNotes { device: None, check: NotifyCheck::default(), acked: None }
    }

    pub(crate) fn of(page: &crate::page::FollowedPage, first: &vmclock::Snapshot, source: &Path) -> Result<Self> {
        let device = (page.reader().is_device() && first.has(flags::NOTIFICATION_PRESENT))
            .then(|| File::open(source))
            .transpose()?;
        Ok(DeviceNotes { device, check: NotifyCheck::default(), acked: None })
    }

    /// The device was readable: acknowledges with read() and says whether the page changed.
    /// `seq_now` reads the page's seq_count when read() fails. After [`NotifyCheck::LIMIT`]
    /// readable wake-ups in a row with nothing new, the device is no longer polled.
    pub(crate) fn readable(&mut self, seq_now: impl Fn() -> u32) -> bool {
        let Some(d) = &self.device else { return false };
        // read() acknowledges this seq_count to the driver and says which it is: the driver's
        // poll() wakes a file only for a seq other than the one it last read.
        let mut buf = [0u8; abi::ABI_SIZE];
        let seq = match d.read_at(&mut buf, 0) {
            Ok(n) if n >= 16 => u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]),
            _ => seq_now(),
        };
        let last = self.acked.replace(seq);
        match self.check.readable(last, seq) {
            Wakeup::Update => true,
            Wakeup::Spurious => false,
            Wakeup::NoPoll => {
                tracing::warn!(
                    "the vmclock driver's poll() is always readable (Linux 6.13–6.19 has no .poll): observing on the interval instead"
                );
                self.device = None;
                false
            }
        }
    }
}

/// The first vmclock device, if any.
fn find_device() -> Option<PathBuf> {
    (0..8).map(|i| PathBuf::from(format!("/dev/vmclock{i}"))).find(|p| p.exists())
}

struct Sync {
    page: crate::page::FollowedPage,
    notes: DeviceNotes,
    discipline: Discipline,
    dry_run: bool,
    hook: Option<String>,
    applied: u64,
    last_marker: Option<u64>,
    /// Dry run: the last line printed for each kind of action (only changes are printed).
    printed: std::collections::HashMap<std::mem::Discriminant<SyncAction>, String>,
    /// Observations redone because the page changed while their samples were taken.
    redone: u64,
    /// The publisher's socket, when the source is a page file beside one.
    publisher: PathBuf,
    sub: Option<Subscription>,
    t_note: Option<Token>,
    /// The cross-check's socket in this turn's poll.
    t_cross: Option<Token>,
    is_device: bool,
    next_obs: Instant,
    last_resubscribe: Instant,
    /// The figures offered to the metrics server.
    m: crate::ops::figures::SyncMetrics,
    /// Changes to the kernel's NTP state that this daemon did not make.
    rival: Option<ClockWatch>,
    /// The NTP cross-check, when configured.
    cross: Option<crate::daemons::crosscheck::NtpCross>,
    /// The checks of the page's markers between observations.
    cadence: Cadence,
    /// A check between turns ([`Daemon::look`]) found the page disrupted: observe at the turn.
    looked_disrupted: bool,
}

impl Sync {
    fn apply(&mut self, actions: Vec<SyncAction>) -> Result<()> {
        for a in actions {
            self.applied += 1;
            if self.dry_run {
                // The kernel is not changed, so the same action comes back: print changes only.
                let line = a.to_string();
                let kind = std::mem::discriminant(&a);
                if matches!(a, SyncAction::Step { .. } | SyncAction::RunHook) || self.printed.get(&kind) != Some(&line)
                {
                    println!("dry run: would {line}");
                    self.printed.insert(kind, line);
                }
                continue;
            }
            match a {
                SyncAction::RunHook => run_hook(&self.hook, false),
                a => {
                    vmtime_sys::timex::apply(&a).with_context(|| {
                        format!("cannot {a} (vmtime sync needs CAP_SYS_TIME; use --dry-run to watch)")
                    })?;
                    if let Some(w) = &mut self.rival {
                        w.applied(&a);
                    }
                }
            }
            if matches!(a, SyncAction::Step { .. }) {
                tracing::info!("{a}");
            }
        }
        Ok(())
    }

    /// Logs what the discipline refused (a source beyond the kernel's range, a step beyond the
    /// limit) and when it recovers.
    fn log_notices(&mut self) {
        for n in self.discipline.take_notices() {
            match n {
                vmtime_core::sync::SyncNotice::Recovered => tracing::info!("{}: {n}", self.page.path().display()),
                _ => tracing::warn!("{}: {n}", self.page.path().display()),
            }
        }
    }

    fn observe(&mut self) -> Result<()> {
        self.page.refresh();
        let kernel = kernel_state(self.dry_run)?;
        if let Some(w) = &mut self.rival {
            w.check(&kernel).map_err(Interfered)?;
        }
        // A page that cannot be read (a truncated file, a stuck writer) is a lost source:
        // holdover, never a crash. The samples are paired with the page that was current while
        // they were taken: if the seq_count moved meanwhile, the observation is taken again.
        let mut tries = 0u64;
        let got = sample_page(&self.page, &mut tries);
        self.redone += tries.saturating_sub(1);
        let (page, (raw, samples)) = match got {
            Ok(Some((p, s))) if gives_time(&p, vmclock::counter::NATIVE) => (p, s),
            other => {
                match &other {
                    Ok(Some((p, _))) => self.m.page_seen(p),
                    _ => self.m.page_lost(),
                }
                let a = self.discipline.handle_source_lost(&kernel);
                self.log_notices();
                self.m.discipline(self.discipline.status(), false);
                return self.apply(a);
            }
        };
        if self.last_marker.is_some_and(|m| m != page.disruption_marker()) {
            tracing::warn!(
                "disruption marker changed: {:#x} → {:#x}",
                self.last_marker.unwrap_or(0),
                page.disruption_marker()
            );
        }
        self.last_marker = Some(page.disruption_marker());
        // A new marker found here (before any check did) makes the checks urgent too.
        self.cadence.seen_at(crate::daemons::mono_ns()?, Markers::of(&page));
        self.m.page_seen(&page);
        crate::page::warn_legacy_tai(self.page.path(), &page);
        let a = self.discipline.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel });
        self.log_notices();
        self.m.discipline(self.discipline.status(), true);
        self.apply(a)
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
        last_resubscribe: now,
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

impl Sync {
    /// The markers' check, when due: loads from the mapped page (no system call beyond the
    /// vDSO's clock). Whether it says observe now.
    fn check_markers(&mut self) -> bool {
        let Ok(mono) = crate::daemons::mono_ns() else { return false };
        if !self.cadence.due(mono) {
            return false;
        }
        let look = self.cadence.look(mono, self.page.markers());
        let now = look.observe_now(self.discipline.disruption_pending());
        if now {
            tracing::debug!("the page's check found {look:?}: observing now");
        }
        now
    }
}

impl Daemon for Sync {
    type Settings = SyncSettings;
    type Figures = crate::ops::figures::SyncMetrics;
    const NAME: &'static str = "sync";
    const STOPPED: &'static str = "the clock is left as it is; the socket is removed";
    const LIVE: &'static [&'static str] = LIVE;

    /// The next observation, or the end of a slew, at the latest in 1 s.
    fn next_turn(&self) -> Option<Instant> {
        let now = Instant::now();
        let raw_now = vmtime_sys::gettime(ClockId::MonotonicRaw).unwrap_or(0);
        let slew = self.discipline.next_deadline().map(|d| now + Duration::from_nanos((d - raw_now).max(0) as u64));
        let cross = self.cross.as_ref().map(crate::daemons::crosscheck::NtpCross::deadline);
        [Some(self.next_obs), slew, cross, Some(now + Duration::from_secs(1))].into_iter().flatten().min()
    }

    /// The markers' check between observations (none when the device notifies).
    fn next_look(&self) -> Option<Instant> {
        crate::daemons::next_check(&self.cadence)
    }

    /// Loads from the mapped page; a turn only when they say observe now.
    fn look(&mut self, _now: Instant) -> bool {
        self.looked_disrupted |= self.check_markers();
        self.looked_disrupted
    }

    fn register(&mut self, p: &mut Poller) {
        self.t_note = if let Some(d) = &self.notes.device {
            Some(p.add(d.as_fd(), serve::READABLE))
        } else {
            self.sub.as_ref().map(|x| p.add(x.fd(), serve::READABLE))
        };
        self.t_cross = self.cross.as_ref().map(|c| p.add(c.sock.fd(), serve::READABLE));
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        let mut notified = self.t_note.is_some_and(|x| t.readable(x));
        if notified {
            if self.notes.device.is_some() {
                let page = &self.page;
                notified = self.notes.readable(|| page.read().map_or(u32::MAX, |p| p.seq_count()));
                self.cadence.set_notified(self.notes.device.is_some());
            } else if !self.sub.as_mut().is_some_and(|x| x.drain()) {
                tracing::warn!("the publisher went away: polling the page");
                self.sub = None;
            }
        }
        // The second opinion: never waited on; its verdict reaches the next update's bounds.
        if let Some(c) = &mut self.cross {
            if self.t_cross.is_some_and(|x| t.readable(x)) {
                c.readable(&self.page);
            }
            c.log();
            self.discipline.set_cross_check(c.cc.widen_ns());
            self.m.cross_check = Some(c.cc.status().clone());
        }
        // The markers' check between observations (where a look between turns has not made it).
        if std::mem::take(&mut self.looked_disrupted) || self.check_markers() {
            notified = true;
        }
        if notified || Instant::now() >= self.next_obs {
            if let Flow::Stop(code) = stopped_by(self.observe())? {
                return Ok(Flow::Stop(code));
            }
            self.next_obs = Instant::now() + Duration::from_nanos(self.discipline.poll_interval_ns() as u64);
        }
        let a2 = self.discipline.handle_tick(vmtime_sys::gettime(ClockId::MonotonicRaw)?);
        self.apply(a2)?;
        // A query (or a timeout) when due, after the observation: the answer is then read as
        // soon as it comes, by the next wait, not after an observation's work.
        if let Some(c) = &mut self.cross {
            c.tick(&self.page);
            c.log();
            self.m.cross_check = Some(c.cc.status().clone());
        }
        if !self.is_device && self.sub.is_none() && self.last_resubscribe.elapsed() >= Duration::from_secs(1) {
            self.last_resubscribe = Instant::now();
            // A short wait: the loop never stalls on a publisher that accepts but never answers.
            self.sub = Subscription::reopen(&self.publisher);
        }
        self.m.notified = self.notes.device.is_some();
        self.m.observations_redone = self.redone;
        self.m.marker_checks = Some(self.cadence.checks());
        self.m.check_ms = (!self.cadence.notified()).then(|| (self.cadence.check_ns() / 1_000_000) as u64);
        Ok(Flow::Continue)
    }

    fn reconfigure(&mut self, now: &SyncSettings) {
        let cfg = discipline_config(now);
        self.m.step_policy = Some(cfg.clone());
        self.discipline.reconfigure(cfg);
        self.hook = now.hook.clone();
        self.next_obs = self.next_obs.min(Instant::now() + Duration::from_millis(now.interval_ms.get()));
    }

    fn figures(&mut self) -> &mut crate::ops::figures::SyncMetrics {
        &mut self.m
    }
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

    /// A 6.13–6.19 driver's poll() is always readable. A regular file is too: the daemon must
    /// find that out after a few wake-ups and then wait out its intervals, not spin.
    #[test]
    fn an_always_readable_device_falls_back_to_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("vmclock0");
        std::fs::write(&dev, vec![0u8; 4096]).unwrap();
        let mut notes =
            DeviceNotes { device: Some(File::open(&dev).unwrap()), check: NotifyCheck::default(), acked: None };
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
