//! `vmtime feed chrony|clockbound`: vmtime's page for software that already runs — chrony's
//! SOCK refclock and ClockBound's clients (docs/INTEROP.md). The decisions are in
//! `vmtime_core::feed`; this is the loop and the I/O. Neither command changes a clock. Their
//! service side (systemd, metrics, SIGHUP) is crate::daemons::feed_service; their settings are the
//! configuration's `[feed.chrony]` and `[feed.clockbound]` (crate::ops::config), flags over file.

use crate::daemons::MarkerPace;
use crate::ops::config::{
    DaemonArgs, DisruptionSupport, FeedChronyFlags, FeedChronySettings, FeedClockBoundFlags, FeedClockBoundSettings,
    Layout, LogLevel,
};
use crate::ops::figures::{cb_status_name, FeedChronyMetrics, FeedClockBoundMetrics};
use crate::ops::runtime::{Daemon, Flow, Runtime, Turn};
use crate::values::FeedIntervalMs;
use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::Snapshot;
use vmtime_core::cadence::Markers;
use vmtime_core::feed::chrony::{ChronyAction, ChronyFeed};
use vmtime_core::feed::clockbound::{v3, ClockBoundConfig, ClockBoundFeed, ErrorBound, LAYOUT_V2};
use vmtime_core::feed::{Hold, Observation};
use vmtime_core::AbaSample;
use vmtime_sys::clock::{aba_sample, gettime, ClockId};
use vmtime_sys::feed::{ChronySocket, ClockBoundSegment};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

impl Args {
    /// The global `--log-level`, over the configuration's `log_level`.
    pub fn set_log_level(&mut self, level: Option<LogLevel>) {
        match &mut self.target {
            Target::Chrony(a) => a.daemon.log_level = level,
            Target::Clockbound(a) => a.daemon.log_level = level,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Target {
    /// Send chrony SOCK refclock samples (chrony.conf: `refclock SOCK PATH`).
    Chrony(ChronyArgs),
    /// Maintain ClockBound's shared-memory segments (2.x `shm0`, 3.x `shm1`) for its unmodified clients.
    Clockbound(ClockBoundArgs),
}

/// `vmtime feed chrony`'s flags: each one but `--config` is also a key of `[feed.chrony]`.
#[derive(ClapArgs, Debug, Serialize)]
struct ChronyArgs {
    #[command(flatten)]
    #[serde(flatten)]
    keys: FeedChronyFlags,
    #[command(flatten)]
    #[serde(flatten)]
    daemon: DaemonArgs,
}

/// `vmtime feed clockbound`'s flags: each one but `--config` is also a key of `[feed.clockbound]`.
#[derive(ClapArgs, Debug, Serialize)]
struct ClockBoundArgs {
    #[command(flatten)]
    #[serde(flatten)]
    keys: FeedClockBoundFlags,
    #[command(flatten)]
    #[serde(flatten)]
    daemon: DaemonArgs,
}

/// What each feed applies on SIGHUP without a restart.
const CHRONY_LIVE: &[&str] = &["log_level", "interval_ms", "burst"];
const CLOCKBOUND_LIVE: &[&str] = &["log_level", "interval_ms", "burst", "life_ms", "drift_margin_ppb"];

pub fn run(a: Args) -> Result<ExitCode> {
    match a.target {
        Target::Chrony(c) => run_chrony(c),
        Target::Clockbound(c) => run_clockbound(c),
    }
}

fn interval_of(ms: FeedIntervalMs) -> Duration {
    Duration::from_millis(ms.get())
}

/// The page, a measurement burst and the page again.
struct Measurer {
    page: crate::page::FollowedPage,
    samples: Vec<AbaSample>,
    /// Not read again before this, after a read found the page's writer stuck.
    stuck_until: Option<Instant>,
}

/// A read that finds the page's writer stuck mid-update spins for the seqlock's whole wait
/// (100 ms, as the kernel's reader): at a 10 ms interval a stuck page kept a core busy. After
/// one, the page is not read again for this long (unless it is replaced).
const STUCK_BACKOFF: Duration = Duration::from_secs(1);

/// The measurement skipped while backing off from a stuck page (held, not logged again).
#[derive(Debug)]
struct StuckBackoff;

impl std::fmt::Display for StuckBackoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the page's writer seemed stuck at the last read: waiting before reading it again")
    }
}

impl std::error::Error for StuckBackoff {}

impl Measurer {
    fn open(path: &Path, burst: usize) -> Result<Self> {
        let page = crate::page::FollowedPage::open(path).map_err(|e| match e.to_string() {
            said if said.contains("(give ") => anyhow::anyhow!(said), // it says what to do already
            said => anyhow::anyhow!(
                "{said}: give --source the vmclock device (/dev/vmclock0, from the ptp_vmclock driver) or a page file"
            ),
        })?;
        Ok(Measurer { page, samples: Vec::with_capacity(burst), stuck_until: None })
    }

    fn read(&mut self) -> Result<Snapshot> {
        self.page.read().map_err(|e| {
            if matches!(e, vmtime_sys::follow::FollowError::Busy { .. }) {
                self.stuck_until = Some(Instant::now() + STUCK_BACKOFF);
            }
            e.into()
        })
    }

    /// (before, after, monotonic ns), the burst left in `self.samples`. A page updated during
    /// the burst is measured again (up to 4 times; then the core holds for this interval).
    fn measure(&mut self, burst: usize) -> Result<(Snapshot, Snapshot, i128)> {
        if self.page.refresh() {
            self.stuck_until = None; // a new file: read it now
        }
        if self.stuck_until.is_some_and(|t| Instant::now() < t) {
            return Err(StuckBackoff.into());
        }
        let mut attempt = 0;
        loop {
            let before = self.read()?;
            self.samples.clear();
            for _ in 0..burst {
                self.samples.push(aba_sample(ClockId::Realtime)?);
            }
            let after = self.read()?;
            attempt += 1;
            if after.seq_count() == before.seq_count() || attempt == 4 {
                return Ok((before, after, gettime(ClockId::Monotonic)?));
            }
        }
    }
}

/// A page that cannot be read (truncated, replaced by junk, its writer stuck mid-update)
/// usually stays so for a while: its error is logged when it first appears or changes, not at
/// every interval (at 10 ms, a hundred lines a second).
#[derive(Default)]
struct ReadErrors {
    last: Option<String>,
}

impl ReadErrors {
    /// The line to log for this error, if it is news. A page whose writer seems stuck is the
    /// same news whatever the attempts and time its message counts.
    fn fresh(&mut self, e: &anyhow::Error) -> Option<String> {
        if e.is::<StuckBackoff>() {
            return None; // the stuck page, already logged
        }
        let line = format!("{e:#}");
        let key = match e.downcast_ref::<vmtime_sys::follow::FollowError>() {
            Some(vmtime_sys::follow::FollowError::Busy { path, .. }) => format!("busy {path}"),
            _ => line.clone(),
        };
        (self.last.as_deref() != Some(key.as_str())).then(|| {
            self.last = Some(key);
            line
        })
    }

    /// The page was read again.
    fn clear(&mut self) {
        self.last = None;
    }
}

/// Logs a line when the reason for holding changes.
fn report(last: &mut Option<Option<Hold>>, now: Option<Hold>, what: &str) {
    if *last != Some(now) {
        match now {
            Some(h) => tracing::warn!("{what}: holding: {}", h.describe()),
            None => tracing::info!("{what}: running"),
        }
        *last = Some(now);
    }
}

/// The control socket: the one given, else the feed's default in the runtime directory (made
/// private if missing).
fn control_socket(given: &Option<PathBuf>, feed: &str) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => {
            vmtime_sys::files::ensure_private_dir(&vmtime_sys::files::runtime_dir())?;
            Ok(crate::paths::feed_socket(feed))
        }
    }
}

/// `vmtime feed chrony`: a sample per interval to chronyd's SOCK refclock.
struct Chrony {
    a: FeedChronySettings,
    m: Measurer,
    sock: ChronySocket,
    feed: ChronyFeed,
    pace: MarkerPace,
    last: Option<Option<Hold>>,
    send_failing: Option<vmtime_sys::feed::SendProblem>,
    errors: ReadErrors,
    f: FeedChronyMetrics,
}

impl Daemon for Chrony {
    type Settings = FeedChronySettings;
    type Figures = FeedChronyMetrics;
    const NAME: &'static str = "feed chrony";
    const LIVE: &'static [&'static str] = CHRONY_LIVE;

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
        self.pace.look(Some(&mut self.m.page), self.feed.disruption_pending())
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        if !self.pace.take(t, Some(&mut self.m.page), self.feed.disruption_pending())? {
            return Ok(Flow::Continue);
        }
        let a = &self.a;
        let action = match self.m.measure(a.burst.get() as usize) {
            Ok((before, after, mono_ns)) => {
                self.errors.clear();
                self.f.common.page_seen(before.seq_count(), Instant::now());
                self.pace.cadence.seen(Markers::of(&after));
                self.feed.handle(&Observation { before, after, samples: &self.m.samples, mono_ns })
            }
            Err(e) => {
                if let Some(line) = self.errors.fresh(&e) {
                    tracing::warn!("{line}");
                }
                ChronyAction::Hold(Hold::Unreadable)
            }
        };
        self.f.common.state = match action {
            ChronyAction::Send(s) => {
                report(&mut self.last, None, "chrony feed");
                match self.sock.send(&s.to_bytes()) {
                    Ok(()) => {
                        if self.send_failing.take().is_some() {
                            tracing::info!("{}: chronyd receives samples again", a.socket.display());
                        }
                        self.f.sent += 1;
                        self.f.last_sent = Some(Instant::now());
                        self.f.last_offset_ns = Some(s.offset * 1e9);
                    }
                    Err(e) => {
                        // Logged when the cause changes (a full queue after a missing socket is
                        // news), not at every interval.
                        let problem = self.sock.diagnose(&e);
                        if self.send_failing != Some(problem) {
                            tracing::warn!("{}: {problem}", a.socket.display());
                            self.send_failing = Some(problem);
                        }
                        self.f.send_failures += 1;
                    }
                }
                match self.send_failing {
                    Some(problem) => format!("chronyd takes no sample at {}: {problem}", a.socket.display()),
                    None => format!("sending {} to {}", a.source.display(), a.socket.display()),
                }
            }
            ChronyAction::Hold(h) => {
                report(&mut self.last, Some(h), "chrony feed");
                self.f.common.held(Some(h));
                format!("holding: {}", h.describe())
            }
        };
        self.f.send_failing = self.send_failing.is_some();
        Ok(Flow::Continue)
    }

    fn reconfigure(&mut self, now: &FeedChronySettings) {
        let interval = interval_of(now.interval_ms);
        self.pace.pace.set_interval(interval);
        self.feed.set_interval_ns(interval.as_nanos() as i128);
        self.a = now.clone();
    }

    fn figures(&mut self) -> &mut FeedChronyMetrics {
        self.pace.report(&mut self.f.common);
        &mut self.f
    }

    fn stop(&mut self, why: &str) -> Result<()> {
        tracing::info!("{why}: stopping (chronyd gets no more samples)");
        Ok(())
    }
}

fn run_chrony(args: ChronyArgs) -> Result<ExitCode> {
    let a: FeedChronySettings = args.daemon.settings(&args)?;
    let interval = interval_of(a.interval_ms);
    let m = Measurer::open(&a.source, a.burst.get() as usize)?;
    vmtime_sys::feed::check_chrony_socket_path(&a.socket)?;
    let sock = ChronySocket::new(&a.socket)?;
    let rt = Runtime::start(
        a.clone(),
        move || args.daemon.settings(&args),
        &control_socket(&a.control_socket, "feed-chrony")?,
    )?;
    // chronyd reads a relative path in chrony.conf from its own working directory (/).
    let conf_path = std::path::absolute(&a.socket).unwrap_or_else(|_| a.socket.clone());
    tracing::info!(
        "vmtime feed chrony: {} → {} every {} ms (chrony.conf: refclock SOCK {})",
        a.source.display(),
        a.socket.display(),
        a.interval_ms,
        conf_path.display()
    );
    let mut f = FeedChronyMetrics::default();
    f.common.source = a.source.display().to_string();
    f.socket = a.socket.display().to_string();
    let mut d = Chrony {
        feed: ChronyFeed::new(interval.as_nanos() as i128),
        pace: MarkerPace::new(interval, Some(&m.page), &a.source),
        a,
        m,
        sock,
        last: None,
        send_failing: None,
        errors: ReadErrors::default(),
        f,
    };
    rt.run(&mut d)
}

/// The ClockBound settings of the core for the feed's settings.
fn clockbound_config(a: &FeedClockBoundSettings, disruption_support: bool, coarse_tick_ns: i128) -> ClockBoundConfig {
    ClockBoundConfig {
        life_ns: a.life_ms.get() as i128 * 1_000_000,
        drift_margin_ppb: a.drift_margin_ppb.get(),
        disruption_support,
        holdoff_ns: 2 * interval_of(a.interval_ms).as_nanos() as i128,
        coarse_tick_ns,
    }
}

/// Looks at the coarse clock's lag per interval (each three vDSO reads).
const COARSE_LAG_LOOKS: usize = 8;

/// `vmtime feed clockbound`: ClockBound's segments, written every interval.
struct ClockBound {
    a: FeedClockBoundSettings,
    m: Measurer,
    seg0: Option<ClockBoundSegment>,
    seg1: Option<ClockBoundSegment>,
    paths: String,
    feed: ClockBoundFeed,
    disruption_support: bool,
    coarse_tick_ns: i128,
    pace: MarkerPace,
    /// The marker last written: the last one clients were given.
    last_marker: u64,
    /// The segments last written (voided at a stop on purpose).
    last_written: Option<(ErrorBound, v3::ErrorBound)>,
    last: Option<Option<Hold>>,
    errors: ReadErrors,
    f: FeedClockBoundMetrics,
    /// The NTP cross-check, when configured, and its socket in this turn's poll.
    cross: Option<crate::daemons::crosscheck::NtpCross>,
    t_cross: Option<vmtime_sys::serve::Token>,
}

impl Daemon for ClockBound {
    type Settings = FeedClockBoundSettings;
    type Figures = FeedClockBoundMetrics;
    const NAME: &'static str = "feed clockbound";
    const LIVE: &'static [&'static str] = CLOCKBOUND_LIVE;

    fn next_turn(&self) -> Option<Instant> {
        let cross = self.cross.as_ref().map(crate::daemons::crosscheck::NtpCross::deadline);
        [Some(self.pace.next()), cross].into_iter().flatten().min()
    }

    fn next_look(&self) -> Option<Instant> {
        self.pace.next_look()
    }

    fn look(&mut self, _now: Instant) -> bool {
        self.pace.look(Some(&mut self.m.page), self.feed.disruption_pending())
    }

    fn register(&mut self, p: &mut vmtime_sys::serve::Poller) {
        self.pace.register(p);
        self.t_cross = self.cross.as_ref().map(|c| p.add(c.sock.fd(), vmtime_sys::serve::READABLE));
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        // The second opinion: never waited on; its verdict reaches the next segment's bound.
        if let Some(c) = &mut self.cross {
            if self.t_cross.is_some_and(|x| t.readable(x)) {
                c.readable(&self.m.page);
            }
            c.tick(&self.m.page);
            c.log();
            self.feed.set_cross_check(c.cc.widen_ns());
            self.f.cross_check = Some(c.cc.status().clone());
        }
        if !self.pace.take(t, Some(&mut self.m.page), self.feed.disruption_pending())? {
            return Ok(Flow::Continue);
        }
        let feed = &mut self.feed;
        let cfg = feed.config();
        // The clients' coarse clock lags the fine one: a few looks each interval keep the largest
        // lag seen, which `as_of` allows for.
        for _ in 0..COARSE_LAG_LOOKS {
            if let Some(lag) = vmtime_sys::clock::coarse_lag_ns()? {
                feed.observe_coarse_lag(lag);
            }
        }
        let start = gettime(ClockId::Monotonic)?;
        let eb = match self.m.measure(self.a.burst.get() as usize) {
            Ok((before, after, mono_ns)) => {
                self.errors.clear();
                self.f.common.page_seen(before.seq_count(), Instant::now());
                self.pace.cadence.seen(Markers::of(&after));
                let eb = feed.handle(&Observation { before, after, samples: &self.m.samples, mono_ns }, start);
                if feed.last_hold.is_some() {
                    self.f.common.held(feed.last_hold);
                }
                eb
            }
            Err(e) => {
                if let Some(line) = self.errors.fresh(&e) {
                    tracing::warn!("{line}");
                }
                self.f.common.held(Some(Hold::Unreadable));
                feed.unreadable(start, self.last_marker)
            }
        };
        let eb3 = feed.v3(&eb);
        self.seg0.iter_mut().for_each(|s| s.write(&eb.to_bytes()));
        self.seg1.iter_mut().for_each(|s| s.write(&eb3.to_bytes()));
        self.f.written(&eb, Instant::now());
        if let Some(t) = feed.last_terms {
            tracing::debug!(
                "segment generations shm0 {} shm1 {}: page seq {} counter {} maxerror {} ns, offset {} ns, pairing {} ns, span {} ns, \
                 rounding {} ns: bound {} ns; drift {} ppb (page {}, CLOCK_REALTIME {}, margin {}); as_of {} ns \
                 ({} ns early for the coarse clock)",
                self.seg0.as_ref().map_or("-".into(), |s| s.generation().to_string()),
                self.seg1.as_ref().map_or("-".into(), |s| s.generation().to_string()),
                t.seq,
                t.counter,
                t.maxerror_ns,
                t.offset_ns,
                t.pairing_ns,
                t.span_ns,
                vmtime_core::feed::clockbound::ROUNDING_NS,
                eb.bound_ns,
                eb.max_drift_ppb,
                t.page_rate_ppb,
                t.realtime_rate_ppb,
                cfg.drift_margin_ppb,
                eb.as_of_ns,
                feed.coarse_allowance_ns()
            );
        }
        self.last_marker = eb.disruption_marker;
        if self.last_written.is_none() {
            tracing::info!(
                "vmtime feed clockbound: {} → {} every {} ms (life {} ms, disruption support {})",
                self.a.source.display(),
                self.paths,
                self.a.interval_ms,
                self.a.life_ms,
                if self.disruption_support { "on" } else { "off" }
            );
        }
        self.last_written = Some((eb, eb3));
        report(&mut self.last, feed.last_hold, "clockbound feed");
        self.f.common.state = match feed.last_hold {
            Some(h) => format!("writing {}: {} (holding: {})", self.paths, cb_status_name(eb.status), h.describe()),
            None => format!("writing {}: {}", self.paths, cb_status_name(eb.status)),
        };
        Ok(Flow::Continue)
    }

    fn reconfigure(&mut self, now: &FeedClockBoundSettings) {
        self.pace.pace.set_interval(interval_of(now.interval_ms));
        self.feed.set_config(clockbound_config(now, self.disruption_support, self.coarse_tick_ns));
        self.a = now.clone();
    }

    fn figures(&mut self) -> &mut FeedClockBoundMetrics {
        self.pace.report(&mut self.f.common);
        &mut self.f
    }

    fn stop(&mut self, why: &str) -> Result<()> {
        match self.last_written {
            Some((eb, eb3)) if why.starts_with("SIG") => {
                // Stopped on purpose: void the segments now rather than at the end of their life.
                let now = gettime(ClockId::MonotonicCoarse)?;
                let (void, void3) = ClockBoundFeed::stopped(&eb, &eb3, now);
                self.seg0.iter_mut().for_each(|s| s.write(&void.to_bytes()));
                self.seg1.iter_mut().for_each(|s| s.write(&void3.to_bytes()));
                tracing::info!("{why}: stopping (the segments now say Unknown)");
            }
            _ => tracing::info!("{why}: stopping (the segments are void after their life)"),
        }
        Ok(())
    }
}

fn run_clockbound(args: ClockBoundArgs) -> Result<ExitCode> {
    let a: FeedClockBoundSettings = args.daemon.settings(&args)?;
    let interval = interval_of(a.interval_ms);
    let disruption_support = match a.disruption_support {
        DisruptionSupport::On => true,
        DisruptionSupport::Off => false,
        DisruptionSupport::Auto => a.source == Path::new(crate::paths::DEFAULT_GUEST_PAGE),
    };
    let m = Measurer::open(&a.source, a.burst.get() as usize)?;
    vmtime_sys::feed::ensure_segment_dir(&a.dir)?;
    let open = |name: &str, layout| ClockBoundSegment::open_or_create_as(&a.dir.join(name), layout);
    // Both segments checked before either is created: a refusal leaves no new file behind.
    if a.layout != Layout::V3 {
        ClockBoundSegment::check_path(&a.dir.join("shm0"), LAYOUT_V2)?;
    }
    if a.layout != Layout::V2 {
        ClockBoundSegment::check_path(&a.dir.join("shm1"), v3::LAYOUT)?;
    }
    let seg0 = if a.layout == Layout::V3 { None } else { Some(open("shm0", LAYOUT_V2)?) };
    let seg1 = if a.layout == Layout::V2 { None } else { Some(open("shm1", v3::LAYOUT)?) };
    let paths: Vec<_> = seg0.iter().chain(&seg1).map(|s| s.path().display().to_string()).collect();
    let paths = paths.join(" and ");
    // The control socket goes with the segments (the unit's runtime directory is theirs).
    let socket = a.control_socket.clone().unwrap_or_else(|| a.dir.join("feed-clockbound.sock"));
    let rt = Runtime::start(a.clone(), move || args.daemon.settings(&args), &socket)?;
    let coarse_tick_ns = vmtime_sys::clock::getres(ClockId::MonotonicCoarse)?.clamp(1, 1_000_000_000);
    let mut feed = ClockBoundFeed::new(clockbound_config(&a, disruption_support, coarse_tick_ns));
    // A segment left by a previous run: its marker is the last one clients were given.
    let mut last_marker = 0;
    if let Some(seg) = seg0.as_ref().or(seg1.as_ref()) {
        if let Some(m) = seg.body().and_then(|b| feed.resume(&b, seg.layout())) {
            tracing::info!(
                "{}: continuing from generation {}, disruption marker {m}",
                seg.path().display(),
                seg.generation()
            );
            last_marker = m;
        }
    }
    let mut f = FeedClockBoundMetrics::default();
    f.common.source = a.source.display().to_string();
    f.segments.clone_from(&paths);
    let mut d = ClockBound {
        pace: MarkerPace::new(interval, Some(&m.page), &a.source),
        a,
        m,
        seg0,
        seg1,
        paths,
        feed,
        disruption_support,
        coarse_tick_ns,
        last_marker,
        last_written: None,
        last: None,
        errors: ReadErrors::default(),
        f,
        cross: None,
        t_cross: None,
    };
    d.cross = d.a.cross_check_ntp.map(crate::daemons::crosscheck::NtpCross::new).transpose()?;
    rt.run(&mut d)
}
