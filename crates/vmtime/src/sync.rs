//! `vmtime sync`: keeps this guest's CLOCK_REALTIME locked to a vmclock page (see
//! `vmtime_core::sync`). With `--dry-run` it prints what it would do and changes nothing: the only
//! mode to use on a machine whose clock must not be touched.

use crate::config::{LogLevel, SyncSettings, Timescale};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::abi::{self, flags};
use vmtime_core::sync::{Discipline, SyncAction, SyncConfig, SyncObservation};
use vmtime_sys::clock::{aba_sample, tightest, ClockId};
use vmtime_sys::files;
use vmtime_sys::serve::{self, Poller, Reply, Server, Subscription};
use vmtime_sys::signals::{SignalEvent, Signals};

/// `vmtime sync`'s flags: each one is also a key of the configuration's `[sync]` section; a flag
/// overrides the file.
#[derive(ClapArgs, Debug, Serialize)]
pub struct Args {
    /// The configuration file (default: /etc/vmtime/vmtime.toml, if it exists).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The source: a vmclock device or page file (default: the first /dev/vmclock*).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Print the actions instead of applying them: nothing is changed.
    #[arg(long)]
    dry_run: bool,
    /// Interval between observations without notification, ms.
    #[arg(long)]
    interval_ms: Option<IntervalMs>,
    /// Step instead of slewing when the offset exceeds this during the first updates, ns
    /// (chrony's makestep).
    #[arg(long)]
    makestep_ns: Option<MakestepNs>,
    /// How many first updates may step (disruptions step too, up to --max-step-s).
    #[arg(long)]
    makestep_updates: Option<MakestepUpdates>,
    /// After start-up, a step larger than this (a disruption, or a source gone wrong) is refused
    /// and the clock holds over, s.
    #[arg(long)]
    max_step_s: Option<MaxStepS>,
    /// Command run (by sh -c) when the VM generation changes: reseed entropy, reset connections.
    #[arg(long)]
    hook: Option<String>,
    /// Control socket (default: sync.sock beside the host page's default).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Exit after this many seconds.
    #[arg(long)]
    duration_s: Option<DurationS>,
    /// The timescale of a PHC source (required unless its driver is known: ptp_kvm is UTC).
    #[arg(long, value_enum)]
    phc_timescale: Option<Timescale>,
    /// TAI − UTC in s, positive (37 in 2026), to read a TAI PHC.
    #[arg(long)]
    tai_offset: Option<TaiUtcS>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// Serve Prometheus metrics on this loopback address (default: [metrics] listen; off).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

impl Args {
    /// The settings: these flags over the configuration file over the defaults. Called again on
    /// SIGHUP: an error there keeps the old settings.
    pub fn settings(&self) -> Result<SyncSettings> {
        crate::config::sync(self.config.as_deref(), self)
    }
}

/// A pure PHC, if there is one.
fn find_phc() -> Option<(PathBuf, String)> {
    vmtime_sys::phc::list()
        .into_iter()
        .find(|i| vmtime_core::phc::pure_source(&i.clock_name).is_some())
        .map(|i| (i.dev, i.clock_name))
}

/// The PHC path: measurements every interval, the PI servo, the same actions.
fn run_phc(a: &SyncSettings, args: &Args, dev: PathBuf, clock_name: &str) -> Result<ExitCode> {
    use vmtime_core::phc::{pure_source, read_best, PhcServo, PhcServoConfig, PhcTimescale};
    let timescale = match (a.phc_timescale, pure_source(clock_name).flatten()) {
        (Some(Timescale::Utc), _) => PhcTimescale::Utc,
        (Some(Timescale::Tai), _) => PhcTimescale::Tai,
        (None, Some(t)) => t,
        (None, None) => bail!(
            "{} (clock \"{clock_name}\"): its timescale is not known; give --phc-timescale utc|tai (it is never guessed)",
            dev.display()
        ),
    };
    let mut d = vmtime_sys::phc::PhcFile::open(&dev).with_context(|| format!("cannot open {}", dev.display()))?;
    let mut servo =
        PhcServo::new(PhcServoConfig { timescale, tai_minus_utc: a.tai_offset.get(), ..PhcServoConfig::default() });
    eprintln!(
        "vmtime sync: {} ({clock_name}, {timescale}) → CLOCK_REALTIME{}",
        dev.display(),
        if a.dry_run { " (dry run: nothing is changed)" } else { "" }
    );
    let interval = Duration::from_millis(a.interval_ms.get());
    let end = a.duration_s.map(|d| Instant::now() + Duration::from_secs(d.get()));
    let mut signals = Signals::install()?;
    let mut poller = Poller::new();
    while end.is_none_or(|e| Instant::now() < e) {
        let tx = vmtime_sys::read_timex()?;
        match read_best(&mut d, 25) {
            Ok((m, _)) => {
                for act in servo.handle_measurement(&m, tx.tick, tx.freq, interval.as_secs_f64()) {
                    if a.dry_run {
                        println!(
                            "dry run: would {} (offset {:+.1} ns, {} reading)",
                            describe(&act),
                            servo.last_offset_ns,
                            m.method
                        );
                    } else {
                        vmtime_sys::timex::apply(&act).with_context(|| format!("cannot {}", describe(&act)))?;
                    }
                }
            }
            Err(failed) => {
                let why: Vec<String> = failed.iter().map(|(m, e)| format!("{m}: {e}")).collect();
                tracing::warn!("{}: no reading method works ({})", dev.display(), why.join("; "));
            }
        }
        // The wait between measurements is also where signals arrive.
        poller.clear();
        signals.register(&mut poller);
        poller.wait(Some(interval))?;
        match signals.take(&poller) {
            Some(SignalEvent::Terminate(name)) => {
                tracing::info!("{name}: stopping (the clock is left as it is)");
                break;
            }
            Some(SignalEvent::Reload) => match args.settings() {
                Ok(new) if new == *a => tracing::info!("SIGHUP: configuration re-read, unchanged"),
                Ok(_) => tracing::info!(
                    "SIGHUP: configuration re-read and valid; the changes take effect when vmtime sync restarts"
                ),
                Err(e) => tracing::warn!("SIGHUP: {e:#}; keeping the settings in force"),
            },
            None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first vmclock device, if any.
fn find_device() -> Option<PathBuf> {
    (0..8).map(|i| PathBuf::from(format!("/dev/vmclock{i}"))).find(|p| p.exists())
}

fn describe(a: &SyncAction) -> String {
    match *a {
        SyncAction::Step { delta_ns } => format!("step CLOCK_REALTIME by {:+.3} µs", delta_ns as f64 / 1e3),
        SyncAction::SetFrequency { tick, freq } => {
            format!("set tick {tick} and frequency {:+.6} ppm", freq as f64 / 65536.0)
        }
        SyncAction::SetTai(t) => format!("set the TAI offset to {t} s"),
        SyncAction::SetState { insert, delete, synchronized, maxerror_us, esterror_us } => format!(
            "set {}{}{}, maxerror {maxerror_us} µs, esterror {esterror_us} µs",
            if synchronized { "synchronised (STA_UNSYNC clear)" } else { "unsynchronised (STA_UNSYNC)" },
            if insert { ", STA_INS (leap second at midnight)" } else { "" },
            if delete { ", STA_DEL (leap second deleted at midnight)" } else { "" }
        ),
        SyncAction::RunHook => "run the generation hook".into(),
    }
}

struct Sync {
    page: crate::page::FollowedPage,
    device: Option<File>,
    discipline: Discipline,
    dry_run: bool,
    hook: Option<String>,
    applied: u64,
    last_marker: Option<u64>,
    /// Dry run: the last line printed for each kind of action (only changes are printed).
    printed: std::collections::HashMap<std::mem::Discriminant<SyncAction>, String>,
    /// SIGHUPs received (each one a reload request).
    reload_requests: u64,
}

impl Sync {
    fn apply(&mut self, actions: Vec<SyncAction>) -> Result<()> {
        for a in actions {
            self.applied += 1;
            if self.dry_run {
                // The kernel is not changed, so the same action comes back: print changes only.
                let line = describe(&a);
                let kind = std::mem::discriminant(&a);
                if matches!(a, SyncAction::Step { .. } | SyncAction::RunHook) || self.printed.get(&kind) != Some(&line)
                {
                    println!("dry run: would {line}");
                    self.printed.insert(kind, line);
                }
                continue;
            }
            match a {
                SyncAction::RunHook => {
                    if let Some(h) = &self.hook {
                        eprintln!("VM generation changed: running {h}");
                        let _ = std::process::Command::new("sh").arg("-c").arg(h).status();
                    }
                }
                a => vmtime_sys::timex::apply(&a).with_context(|| {
                    format!("cannot {} (vmtime sync needs CAP_SYS_TIME; use --dry-run to watch)", describe(&a))
                })?,
            }
            if matches!(a, SyncAction::Step { .. }) {
                eprintln!("{}", describe(&a));
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
        let kernel = vmtime_sys::read_timex()?;
        // A page that cannot be read (a truncated file, a stuck writer) is a lost source:
        // holdover, never a crash.
        let page = match self.page.read() {
            Ok(p) if p.counter_id() == vmclock::counter::NATIVE => p,
            Ok(_) | Err(_) => {
                let a = self.discipline.handle_source_lost(&kernel);
                self.log_notices();
                return self.apply(a);
            }
        };
        if self.last_marker.is_some_and(|m| m != page.disruption_marker()) {
            eprintln!(
                "disruption marker changed: {:#x} → {:#x}",
                self.last_marker.unwrap_or(0),
                page.disruption_marker()
            );
        }
        self.last_marker = Some(page.disruption_marker());
        crate::page::warn_legacy_tai(self.page.path(), &page);
        let raw = tightest(ClockId::MonotonicRaw, 16)?;
        let samples = (0..64).map(|_| aba_sample(ClockId::Realtime)).collect::<std::io::Result<Vec<_>>>()?;
        let a = self.discipline.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel });
        self.log_notices();
        self.apply(a)
    }

    fn status_json(&self) -> serde_json::Value {
        let page = self.page.read().ok();
        serde_json::json!({
            "role": "sync",
            "reload_requests": self.reload_requests,
            "source": self.page.path().display().to_string(),
            "dry_run": self.dry_run,
            "discipline": self.discipline.status(),
            "source_status": page.and_then(|p| p.clock_status()).map(abi::status_name),
            "disruption_marker": page.map(|p| p.disruption_marker()),
            "vm_generation_counter": page.and_then(|p| p.vm_generation_counter()),
            "notified": self.device.is_some(),
        })
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let a = args.settings()?;
    // --source auto: a vmclock device first, then a pure PHC; or the path given.
    let source = match a.source.clone().or_else(find_device) {
        Some(s) => s,
        None => match find_phc() {
            Some((dev, name)) => return run_phc(&a, &args, dev, &name),
            None => bail!("no source here: no /dev/vmclock* and no pure PHC (ptp_kvm, VMclock, hyperv, VMware, virtio-rtc, s390); give --source PAGE"),
        },
    };
    if source.to_string_lossy().starts_with("/dev/ptp") {
        let name =
            vmtime_sys::phc::list().into_iter().find(|i| i.dev == source).map(|i| i.clock_name).unwrap_or_default();
        return run_phc(&a, &args, source, &name);
    }
    let page = crate::page::FollowedPage::open(&source)?;
    let first = page.read()?;
    if first.counter_id() != vmclock::counter::NATIVE {
        bail!(
            "{} gives no time for this CPU's counter (counter_id {}): nothing to synchronise to",
            source.display(),
            abi::counter_name(first.counter_id())
        );
    }
    // Notification: the device's poll() (read() acknowledges), or a publisher's socket.
    let is_device = page.reader().is_device();
    let device = (is_device && first.has(flags::NOTIFICATION_PRESENT)).then(|| File::open(&source)).transpose()?;
    let subscribe = || Subscription::open(&crate::host::socket_for(&source), Duration::from_secs(2)).ok();
    let mut sub = if is_device { None } else { subscribe() };
    let socket = match a.socket.clone() {
        Some(s) => s,
        None => {
            files::ensure_private_dir(&files::runtime_dir())?;
            files::runtime_dir().join("sync.sock")
        }
    };
    let mut server = Server::bind_unix(&socket, 0o600, None, serve::Limits::default())?;
    let mut signals = Signals::install()?;
    let cfg = SyncConfig {
        step_threshold_ns: a.makestep_ns.get() as i64,
        step_updates: a.makestep_updates.get(),
        interval_ns: a.interval_ms.get() as i128 * 1_000_000,
        max_step_ns: (a.max_step_s.get() as i64).saturating_mul(1_000_000_000),
        ..SyncConfig::default()
    };
    let mut s = Sync {
        page,
        device,
        discipline: Discipline::new(cfg),
        dry_run: a.dry_run,
        hook: a.hook.clone(),
        applied: 0,
        last_marker: None,
        printed: Default::default(),
        reload_requests: 0,
    };
    eprintln!(
        "vmtime sync: {} → CLOCK_REALTIME{}",
        source.display(),
        if a.dry_run { " (dry run: nothing is changed)" } else { "" }
    );
    eprintln!(
        "  source: {} {}, status {}, marker {:#x}",
        abi::time_type_name(first.time_type()),
        first.tai_minus_utc().map_or("without a TAI offset".to_string(), |o| format!("with TAI − UTC = {o} s")),
        first.clock_status().map_or("absent", abi::status_name),
        first.disruption_marker()
    );
    eprintln!(
        "  woken by {}",
        if s.device.is_some() {
            "the device's notifications"
        } else if sub.is_some() {
            "the publisher's socket"
        } else {
            "polling"
        }
    );
    eprintln!("  control socket {}", socket.display());

    let end = a.duration_s.map(|d| Instant::now() + Duration::from_secs(d.get()));
    let mut next_obs = Instant::now();
    let mut last_resubscribe = Instant::now();
    let mut poller = Poller::new();
    loop {
        let now = Instant::now();
        let raw_now = vmtime_sys::gettime(ClockId::MonotonicRaw)?;
        let slew_wait = s.discipline.next_deadline().map(|d| Duration::from_nanos((d - raw_now).max(0) as u64));
        let wait = [Some(next_obs.saturating_duration_since(now)), slew_wait]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let wake = serve::earliest(Some(now + wait), server.next_deadline());
        poller.clear();
        signals.register(&mut poller);
        server.register(&mut poller);
        let t_note = if let Some(d) = &s.device {
            Some(poller.add(d.as_fd(), serve::READABLE))
        } else {
            sub.as_ref().map(|x| poller.add(x.fd(), serve::READABLE))
        };
        poller.wait(wake.map(|w| w.saturating_duration_since(Instant::now())))?;
        match signals.take(&poller) {
            Some(SignalEvent::Terminate(name)) => {
                tracing::info!("{name}: stopping (the clock is left as it is; the socket is removed)");
                break;
            }
            Some(SignalEvent::Reload) => {
                // Re-read and re-check the configuration (the same flags on top). A bad file
                // keeps the settings in force. The new settings take effect at the next start.
                s.reload_requests += 1;
                match args.settings() {
                    Ok(new) if new == a => tracing::info!("SIGHUP: configuration re-read, unchanged"),
                    Ok(_) => tracing::info!(
                        "SIGHUP: configuration re-read and valid; the changes take effect when vmtime sync restarts"
                    ),
                    Err(e) => tracing::warn!("SIGHUP: {e:#}; keeping the settings in force"),
                }
            }
            None => {}
        }
        let notified = t_note.is_some_and(|t| poller.readable(t));
        if notified {
            if let Some(d) = &s.device {
                let mut buf = [0u8; abi::ABI_SIZE];
                let _ = d.read_at(&mut buf, 0); // acknowledges this seq_count to the driver
            } else if !sub.as_mut().is_some_and(|x| x.drain()) {
                tracing::warn!("the publisher went away: polling the page");
                sub = None;
            }
        }
        if notified || Instant::now() >= next_obs {
            s.observe()?;
            next_obs = Instant::now() + Duration::from_nanos(s.discipline.poll_interval_ns() as u64);
        }
        let a2 = s.discipline.handle_tick(vmtime_sys::gettime(ClockId::MonotonicRaw)?);
        s.apply(a2)?;
        server.handle(&poller, |line| match line.trim() {
            "status" => Reply::Line(s.status_json().to_string()),
            _ => Reply::Line(serve::error_json("unknown request: send status")),
        });
        if !is_device && sub.is_none() && last_resubscribe.elapsed() >= Duration::from_secs(1) {
            last_resubscribe = Instant::now();
            sub = subscribe();
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    drop(server); // removes our socket (only if it is still ours)
    Ok(ExitCode::SUCCESS)
}
