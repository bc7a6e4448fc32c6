//! `vmtime feed chrony|clockbound`: vmtime's page for software that already runs — chrony's
//! SOCK refclock and ClockBound's clients (docs/INTEROP.md). The decisions are in
//! `vmtime_core::feed`; this is the loop and the I/O. Neither command changes a clock.

use crate::config::LogLevel;
use crate::values::{Burst, DriftPpb, DurationS, FeedIntervalMs, LifeMs};
use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::Snapshot;
use vmtime_core::feed::chrony::{ChronyAction, ChronyFeed};
use vmtime_core::feed::clockbound::{v3, CbStatus, ClockBoundConfig, ClockBoundFeed, ErrorBound, LAYOUT_V2};
use vmtime_core::feed::{Hold, Observation};
use vmtime_core::AbaSample;
use vmtime_sys::clock::{aba_sample, gettime, ClockId};
use vmtime_sys::feed::{ChronySocket, ClockBoundSegment};
use vmtime_sys::serve::Poller;
use vmtime_sys::signals::{SignalEvent, Signals};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand, Debug)]
enum Target {
    /// Send chrony SOCK refclock samples (chrony.conf: `refclock SOCK PATH`).
    Chrony(ChronyArgs),
    /// Maintain ClockBound's shared-memory segments (2.x `shm0`, 3.x `shm1`) for its unmodified clients.
    Clockbound(ClockBoundArgs),
}

#[derive(ClapArgs, Debug)]
struct Common {
    /// The page: a vmclock device or page file.
    #[arg(long, default_value = crate::DEFAULT_GUEST_PAGE)]
    source: PathBuf,
    /// Interval between samples or updates, ms.
    #[arg(long, default_value = "1000")]
    interval_ms: FeedIntervalMs,
    /// (CLOCK_REALTIME, counter, CLOCK_REALTIME) samples per measurement.
    #[arg(long, default_value = "16")]
    burst: Burst,
    /// Exit after this many seconds.
    #[arg(long)]
    duration_s: Option<DurationS>,
    /// Log level: error, warn, info, debug (a line per sample or segment write) or trace.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(ClapArgs, Debug)]
struct ChronyArgs {
    #[command(flatten)]
    common: Common,
    /// chronyd's SOCK refclock socket: the PATH of chrony.conf's `refclock SOCK PATH` (chronyd
    /// creates it, as root: run the feed as root).
    #[arg(long)]
    socket: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DisruptionSupport {
    /// On when the source is /dev/vmclock0 (the device the clients compare markers with).
    Auto,
    /// Clients compare the segment's marker with /dev/vmclock0's and say Unknown when they differ.
    On,
    /// Clients go by the segment's status alone.
    Off,
}

/// Which ClockBound segments to maintain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// `shm0` only, for ClockBound 2.x clients (time from CLOCK_REALTIME).
    #[value(name = "2")]
    V2,
    /// `shm1` only, for ClockBound 3.x clients (time from the counter, on the page's map).
    #[value(name = "3")]
    V3,
    /// Both, as ClockBound 3's own daemon writes them.
    Both,
}

#[derive(ClapArgs, Debug)]
struct ClockBoundArgs {
    #[command(flatten)]
    common: Common,
    /// The directory of the segments (`shm0` and/or `shm1` in it, as --layout says).
    #[arg(long, default_value = "/var/run/clockbound")]
    dir: PathBuf,
    /// Which segments: 2 (`shm0`, ClockBound 2.x clients), 3 (`shm1`, 3.x clients) or both.
    #[arg(long, value_enum, default_value_t = Layout::Both)]
    layout: Layout,
    /// How long the segments stay valid without an update, ms (at least two intervals, less
    /// than 32767 intervals).
    #[arg(long, default_value = "5000")]
    life_ms: LifeMs,
    /// Drift allowed to CLOCK_REALTIME beyond the rate measured, ppb (ClockBound assumes 15 ppm).
    #[arg(long, default_value = "15000")]
    drift_margin_ppb: DriftPpb,
    /// Whether clients compare the segment's marker with /dev/vmclock0's.
    #[arg(long, value_enum, default_value_t = DisruptionSupport::Auto)]
    disruption_support: DisruptionSupport,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let level = match &a.target {
        Target::Chrony(c) => c.common.log_level,
        Target::Clockbound(c) => c.common.log_level,
    };
    crate::logging::set_level(level);
    match a.target {
        Target::Chrony(c) => run_chrony(c),
        Target::Clockbound(c) => run_clockbound(c),
    }
}

/// The interval (the ranges are checked when the flags are parsed: crate::values).
fn validate(c: &Common) -> Result<Duration> {
    Ok(Duration::from_millis(c.interval_ms.get()))
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

/// The loop's wait: until `next` (then it moves on by one interval), or a signal. Returns the
/// signal's name when one asks to stop.
struct Pacer {
    signals: Signals,
    poller: Poller,
    next: Instant,
    interval: Duration,
    end: Option<Instant>,
    name: &'static str,
}

impl Pacer {
    fn new(interval: Duration, duration_s: Option<u64>, name: &'static str) -> Result<Self> {
        let now = Instant::now();
        Ok(Pacer {
            signals: Signals::install()?,
            poller: Poller::new(),
            next: now,
            interval,
            end: duration_s.and_then(|d| now.checked_add(Duration::from_secs(d))),
            name,
        })
    }

    /// Waits for the next slot; `Some(reason)` to stop.
    fn wait(&mut self) -> Result<Option<&'static str>> {
        self.next += self.interval;
        let now = Instant::now();
        if self.next < now {
            self.next = now; // late (suspended, overloaded): no burst of catch-up slots
        }
        loop {
            if self.end.is_some_and(|e| Instant::now() >= e) {
                return Ok(Some("--duration-s elapsed"));
            }
            self.poller.clear();
            self.signals.register(&mut self.poller);
            self.poller.wait(Some(self.next.saturating_duration_since(Instant::now())))?;
            match self.signals.take(&self.poller) {
                Some(SignalEvent::Terminate(name)) => return Ok(Some(name)),
                Some(SignalEvent::Reload) => {
                    tracing::info!("SIGHUP: vmtime feed {} has no configuration file to reload; ignored", self.name)
                }
                None => {}
            }
            if Instant::now() >= self.next {
                return Ok(None);
            }
        }
    }
}

fn run_chrony(a: ChronyArgs) -> Result<ExitCode> {
    let interval = validate(&a.common)?;
    let mut m = Measurer::open(&a.common.source, a.common.burst.get() as usize)?;
    vmtime_sys::feed::check_chrony_socket_path(&a.socket)?;
    let sock = ChronySocket::new(&a.socket)?;
    // chronyd reads a relative path in chrony.conf from its own working directory (/).
    let conf_path = std::path::absolute(&a.socket).unwrap_or_else(|_| a.socket.clone());
    let mut feed = ChronyFeed::new(interval.as_nanos() as i128);
    let mut pacer = Pacer::new(interval, a.common.duration_s.map(DurationS::get), "chrony")?;
    tracing::info!(
        "vmtime feed chrony: {} → {} every {} ms (chrony.conf: refclock SOCK {})",
        a.common.source.display(),
        a.socket.display(),
        a.common.interval_ms,
        conf_path.display()
    );
    let (mut last, mut send_failing, mut errors) = (None, None, ReadErrors::default());
    loop {
        let action = match m.measure(a.common.burst.get() as usize) {
            Ok((before, after, mono_ns)) => {
                errors.clear();
                feed.handle(&Observation { before, after, samples: &m.samples, mono_ns })
            }
            Err(e) => {
                if let Some(line) = errors.fresh(&e) {
                    tracing::warn!("{line}");
                }
                ChronyAction::Hold(Hold::Unreadable)
            }
        };
        match action {
            ChronyAction::Send(s) => {
                report(&mut last, None, "chrony feed");
                match sock.send(&s.to_bytes()) {
                    Ok(()) => {
                        if send_failing.take().is_some() {
                            tracing::info!("{}: chronyd receives samples again", a.socket.display());
                        }
                    }
                    Err(e) => {
                        // Logged when the cause changes (a full queue after a missing socket is
                        // news), not at every interval.
                        let problem = sock.diagnose(&e);
                        if send_failing != Some(problem) {
                            tracing::warn!("{}: {problem}", a.socket.display());
                            send_failing = Some(problem);
                        }
                    }
                }
            }
            ChronyAction::Hold(h) => report(&mut last, Some(h), "chrony feed"),
        }
        if let Some(why) = pacer.wait()? {
            tracing::info!("{why}: stopping (chronyd gets no more samples)");
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Looks at the coarse clock's lag per interval (each three vDSO reads).
const COARSE_LAG_LOOKS: usize = 8;

/// Updates after which the segment's generation (even, never 0, u16) has the same value again.
const GENERATION_PERIOD: u64 = 32767;

fn run_clockbound(a: ClockBoundArgs) -> Result<ExitCode> {
    let interval = validate(&a.common)?;
    const LIFE_MAX_MS: u64 = 3_600_000;
    if 2 * a.common.interval_ms.get() > LIFE_MAX_MS {
        bail!(
            "--interval-ms {}: at most {} for the ClockBound feed (the segment's life, --life-ms, at most {LIFE_MAX_MS} ms, must cover two intervals)",
            a.common.interval_ms,
            LIFE_MAX_MS / 2
        );
    }
    if a.life_ms.get() < 2 * a.common.interval_ms.get() {
        bail!(
            "--life-ms {}: give at least two intervals ({} ms) and at most 3600000",
            a.life_ms,
            2 * a.common.interval_ms.get()
        );
    }
    // The segment's generation (u16, by two per update, never 0) comes back to a value every
    // 32767 updates, and clock-bound-client keeps its copy while the generation it read is the
    // one it sees: a client that reads rarely could take a bound that old for the current one.
    // It must be void by then.
    let wrap_ms = GENERATION_PERIOD * a.common.interval_ms.get();
    if a.life_ms.get() >= wrap_ms {
        bail!(
            "--life-ms {} with --interval-ms {}: the segment's generation comes back to the same value after {GENERATION_PERIOD} updates ({wrap_ms} ms), and a segment must be void by then: give a --life-ms below {wrap_ms}, or a longer --interval-ms",
            a.life_ms,
            a.common.interval_ms
        );
    }
    let disruption_support = match a.disruption_support {
        DisruptionSupport::On => true,
        DisruptionSupport::Off => false,
        DisruptionSupport::Auto => a.common.source == Path::new(crate::DEFAULT_GUEST_PAGE),
    };
    let mut m = Measurer::open(&a.common.source, a.common.burst.get() as usize)?;
    vmtime_sys::feed::ensure_segment_dir(&a.dir)?;
    let open = |name: &str, layout| {
        let path = a.dir.join(name);
        ClockBoundSegment::open_or_create_as(&path, layout)
    };
    let mut seg0 = if a.layout == Layout::V3 { None } else { Some(open("shm0", LAYOUT_V2)?) };
    let mut seg1 = if a.layout == Layout::V2 { None } else { Some(open("shm1", v3::LAYOUT)?) };
    let paths: Vec<_> = seg0.iter().chain(&seg1).map(|s| s.path().display().to_string()).collect();
    let paths = paths.join(" and ");
    let cfg = ClockBoundConfig {
        life_ns: a.life_ms.get() as i128 * 1_000_000,
        drift_margin_ppb: a.drift_margin_ppb.get(),
        disruption_support,
        holdoff_ns: 2 * interval.as_nanos() as i128,
        coarse_tick_ns: vmtime_sys::clock::getres(ClockId::MonotonicCoarse)?.clamp(1, 1_000_000_000),
    };
    let mut feed = ClockBoundFeed::new(cfg);
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
    let mut pacer = Pacer::new(interval, a.common.duration_s.map(DurationS::get), "clockbound")?;
    let mut last = None;
    let mut errors = ReadErrors::default();
    let mut first = true;
    loop {
        // The clients' coarse clock lags the fine one: a few looks each interval keep the largest
        // lag seen, which `as_of` allows for.
        for _ in 0..COARSE_LAG_LOOKS {
            if let Some(lag) = vmtime_sys::clock::coarse_lag_ns()? {
                feed.observe_coarse_lag(lag);
            }
        }
        let start = gettime(ClockId::Monotonic)?;
        let eb = match m.measure(a.common.burst.get() as usize) {
            Ok((before, after, mono_ns)) => {
                errors.clear();
                feed.handle(&Observation { before, after, samples: &m.samples, mono_ns }, start)
            }
            Err(e) => {
                if let Some(line) = errors.fresh(&e) {
                    tracing::warn!("{line}");
                }
                feed.last_hold = Some(Hold::Unreadable);
                let as_of = start - feed.coarse_allowance_ns();
                ErrorBound {
                    as_of_ns: as_of,
                    void_after_ns: as_of + cfg.life_ns,
                    bound_ns: 0,
                    // Not the page's (it has none now): the last one written, so that clients
                    // comparing markers see no false change.
                    disruption_marker: last_marker,
                    max_drift_ppb: 0,
                    status: CbStatus::Unknown,
                    disruption_support,
                }
            }
        };
        let eb3 = feed.v3(&eb);
        seg0.iter_mut().for_each(|s| s.write(&eb.to_bytes()));
        seg1.iter_mut().for_each(|s| s.write(&eb3.to_bytes()));
        if let Some(t) = feed.last_terms {
            tracing::debug!(
                "segment generation {} ({}): page seq {} counter {} maxerror {} ns, offset {} ns, pairing {} ns, span {} ns, \
                 rounding {} ns: bound {} ns; drift {} ppb (page {}, CLOCK_REALTIME {}, margin {}); as_of {} ns \
                 ({} ns early for the coarse clock)",
                seg0.as_ref().or(seg1.as_ref()).map_or(0, |s| s.generation()),
                if seg0.is_some() { "shm0" } else { "shm1" },
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
        last_marker = eb.disruption_marker;
        if first {
            tracing::info!(
                "vmtime feed clockbound: {} → {} every {} ms (life {} ms, disruption support {})",
                a.common.source.display(),
                paths,
                a.common.interval_ms,
                a.life_ms,
                if disruption_support { "on" } else { "off" }
            );
            first = false;
        }
        report(&mut last, feed.last_hold, "clockbound feed");
        if let Some(why) = pacer.wait()? {
            if why.starts_with("SIG") {
                // Stopped on purpose: void the segment now rather than at the end of its life.
                let now = gettime(ClockId::MonotonicCoarse)?;
                seg0.iter_mut().for_each(|s| {
                    s.write(&ErrorBound { status: CbStatus::Unknown, void_after_ns: now, ..eb }.to_bytes())
                });
                let void = v3::ErrorBound { status: CbStatus::Unknown, void_after_ns: eb3.map.as_of_ns, ..eb3 };
                seg1.iter_mut().for_each(|s| s.write(&void.to_bytes()));
                tracing::info!("{why}: stopping (the segments now say Unknown)");
            } else {
                tracing::info!("{why}: stopping (the segments are void after their life)");
            }
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
