//! `vmtime host`: publishes this machine's kernel clock as a vmclock page (see
//! `vmtime_core::host` for the model). It only reads the clock; it never writes it.

use crate::ops::config::{HostSettings, LogLevel, Smearing};
use crate::tai::{self, Found};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::abi::{self, PAGE_SIZE};
use vmclock::{Mapping, PageBuilder, Snapshot, WritableMapping, Writer};
use vmtime_core::host::{HostAction, HostConfig, HostEvent, Observation, Publisher, Sampled};
use vmtime_core::leapsecs::{LeapSeconds, TaiOffset};
use vmtime_sys::clock::{aba_sample, tightest, ClockId};
use vmtime_sys::event::{self, StepDetector};
use vmtime_sys::files::{self, PageFile};
use vmtime_sys::serve::{self, Poller, Reply, Server};
use vmtime_sys::signals::{SignalEvent, Signals};

/// `vmtime host`'s flags: each one is also a key of the configuration's `[host]` section
/// (crate::ops::config::HostSettings has the defaults); a flag overrides the file.
#[derive(ClapArgs, Debug, Serialize)]
pub struct Args {
    /// The configuration file (default: /etc/vmtime/vmtime.toml, if it exists).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where to publish the page (default: /run/vmtime/host.page for root, else
    /// $XDG_RUNTIME_DIR/vmtime/host.page or /tmp/vmtime-UID/host.page).
    #[arg(long)]
    page: Option<PathBuf>,
    /// Control socket (default: the page path + ".sock").
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Longest time between full observations, ms.
    #[arg(long)]
    interval_ms: Option<IntervalMs>,
    /// How often the kernel's NTP state is read (cheap adjtimex), ms.
    #[arg(long)]
    poll_ms: Option<PollMs>,
    /// Republish when the page is this far off the kernel clock, ns.
    #[arg(long)]
    threshold_ns: Option<ThresholdNs>,
    /// Rate tolerance of the kernel clock against true time, ppm (the page's period maximum
    /// error rate; 500 is the kernel's own MAXFREQ).
    #[arg(long)]
    tolerance_ppm: Option<TolerancePpm>,
    /// TAI − UTC in s, positive (37 in 2026); the page stores its negation, UTC − TAI, as the
    /// driver and spec v1.1 read it (default: the kernel's, else the system leap-second list if
    /// current).
    #[arg(long)]
    tai_offset: Option<TaiUtcS>,
    /// leap_second_smearing_hint to publish.
    #[arg(long, value_enum)]
    smearing: Option<Smearing>,
    /// The kernel's own vmclock page (RFC "/dev/vmclock_host"): used as the source of the
    /// counter-to-clock relation when present; vmtime adds bounds, leap state, status and markers.
    #[arg(long)]
    vmclock_host: Option<PathBuf>,
    /// Ignore the kernel's page even when it exists (sample the clock instead).
    #[arg(long)]
    no_vmclock_host: bool,
    /// No live status line.
    #[arg(long)]
    quiet: bool,
    /// Exit after this many seconds (tests, measurements).
    #[arg(long)]
    duration_s: Option<DurationS>,
    /// The global `--log-level` (main sets it; a key of the configuration too).
    #[arg(skip)]
    pub log_level: Option<LogLevel>,
    /// Serve Prometheus metrics on this loopback address (default: [metrics] listen; off).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

impl Args {
    /// The settings: these flags over the configuration file over the defaults. Called again on
    /// SIGHUP: an error there keeps the old settings.
    pub fn settings(&self) -> Result<HostSettings> {
        crate::ops::config::host(self.config.as_deref(), self)
    }
}

/// Where TAI − UTC comes from for each observation.
enum TaiSource {
    Kernel,
    Fixed(i16),
    List(LeapSeconds),
    Unknown,
}

impl TaiSource {
    fn sampled(&self, kernel_tai: i32) -> (Sampled, ClockId) {
        match self {
            _ if kernel_tai != 0 => (Sampled::Tai, ClockId::Tai),
            TaiSource::Fixed(o) => (Sampled::Utc { tai_minus_utc: Some(*o) }, ClockId::Realtime),
            TaiSource::List(l) => {
                let now_s = vmtime_sys::gettime(ClockId::Realtime).map(|ns| (ns / 1_000_000_000) as i64).unwrap_or(0);
                let tai_minus_utc = match l.offset_at(now_s) {
                    TaiOffset::Known(o) => Some(o),
                    TaiOffset::Expired { .. } => None,
                };
                (Sampled::Utc { tai_minus_utc }, ClockId::Realtime)
            }
            TaiSource::Kernel | TaiSource::Unknown => (Sampled::Utc { tai_minus_utc: None }, ClockId::Realtime),
        }
    }
}

struct Daemon {
    page: PathBuf,
    /// The kernel's own page (a device, or a file read with pread: never a SIGBUS).
    kernel_page: Option<vmtime_sys::follow::PageReader>,
    /// The kernel's page could not be read at the last observation (logged once).
    kernel_page_failing: bool,
    /// The kernel's NTP state (adjtimex): a read refused by a seccomp filter is said once and
    /// the page goes on FREERUNNING with the kernel's 16 s ceiling as its bound.
    timex: vmtime_sys::AdvisoryTimex,
    /// SIGHUPs received (each one a reload request).
    reload_requests: u64,
    /// Changes re-read on SIGHUP that wait for a restart ("key = new (in force: old)").
    restart_needed: Vec<String>,
    /// The observation's samples (reused).
    samples: Vec<vmtime_core::AbaSample>,
    writer: Writer<WritableMapping>,
    /// The page file, locked: held for the daemon's life (one writer per page).
    _page_file: PageFile,
    publisher: Publisher,
    tai: TaiSource,
    started: Instant,
    clocksource: String,
    tai_note: String,
    /// The figures offered to the metrics server.
    m: crate::ops::metrics::HostMetrics,
    /// The longest time between two turns of the publishing path (adjtimex poll, observation,
    /// page write): what a client could at most have delayed a page by.
    max_gap: Duration,
    poll_every: Duration,
}

impl Daemon {
    /// A full observation; `kernel` is the NTP state the poll has just read. Returns the new
    /// seq_count when a page was published (the loop notifies the subscribers).
    fn observe(&mut self, kernel: vmtime_core::kernel::KernelTimex) -> Result<Option<u32>> {
        let (sampled, clock) = self.tai.sampled(kernel.tai);
        let raw = tightest(ClockId::MonotonicRaw, 16)?;
        // Reused buffer: the publishing path allocates nothing once it has run.
        let mut samples = std::mem::take(&mut self.samples);
        samples.clear();
        for _ in 0..64 {
            samples.push(aba_sample(clock)?);
        }
        // An unreadable kernel page (a file that shrank, a stuck writer) is not fatal: this
        // observation samples the kernel clock instead, and it is said once.
        let kernel_page = match self.kernel_page.as_ref().map(|r| r.read()) {
            Some(Ok(p)) => {
                if std::mem::take(&mut self.kernel_page_failing) {
                    tracing::info!("the kernel's page is readable again: using it");
                }
                Some(p)
            }
            Some(Err(e)) => {
                if !std::mem::replace(&mut self.kernel_page_failing, true) {
                    tracing::warn!("{e}: sampling the kernel clock until it is readable again");
                }
                None
            }
            None => None,
        };
        let obs = Observation { raw, clock: sampled, samples: &samples, kernel, kernel_page };
        let action = self.publisher.handle_observation(&obs);
        for n in self.publisher.take_notices() {
            tracing::warn!("{n}");
        }
        self.samples = samples;
        let mut published = None;
        if let Some(HostAction::Publish { page, reason, disrupted }) = action {
            let seq = self.writer.publish(&page);
            published = Some(seq);
            self.m.published_page(self.writer.memory(), self.publisher.stats());
            let st = abi::status_name(page.clock_status);
            let stats = self.publisher.stats();
            if disrupted {
                tracing::warn!(
                    "page {seq}: {reason}, status {st}, new disruption marker {:#x}",
                    page.disruption_marker.get()
                );
            } else if stats.published <= 3
                || !matches!(
                    reason,
                    vmtime_core::host::Reason::Drift
                        | vmtime_core::host::Reason::SlewDone
                        | vmtime_core::host::Reason::Rate
                )
            {
                tracing::info!(
                    "page {seq}: {reason}, status {st}, kernel rate {:+.3} ppm, pairing ±{:.1} ns",
                    stats.kernel_rate_ppb / 1000.0,
                    stats.pairing_ns
                );
            }
        }
        Ok(published)
    }

    fn status_json(&self, srv: &crate::ops::control::ServerView) -> serde_json::Value {
        let snap = vmclock::seqlock::read(self.writer.memory(), vmclock::seqlock::DEFAULT_MAX_WAIT).ok();
        serde_json::json!({
            "role": "host",
            "reload_requests": self.reload_requests,
            "restart_needed": self.restart_needed,
            "tunables": {
                "threshold_ns": self.publisher.config().threshold_ns,
                "tolerance_ppb": self.publisher.config().tolerance_ppb,
                "interval_ms": self.publisher.config().interval_ns / 1_000_000,
            },
            "kernel_page_readable": self.kernel_page.as_ref().map(|_| !self.kernel_page_failing),
            "kernel_state": if self.timex.denied() { UNREADABLE_NOTE } else { "read with adjtimex" },
            "kernel_page_usable": self.kernel_page.as_ref().map(|_| !self.publisher.stats().kernel_page.unusable),
            "page": self.page.display().to_string(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "clocksource": self.clocksource,
            "tai": self.tai_note,
            "seq_count": snap.map(|s| s.seq_count()),
            "status": snap.and_then(|s| s.clock_status()).map(abi::status_name),
            "time_type": snap.map(|s| abi::time_type_name(s.time_type())),
            "tai_minus_utc": snap.and_then(|s| s.tai_minus_utc()),
            "disruption_marker": snap.map(|s| s.disruption_marker()),
            "maxerror_ns": snap.and_then(|s| s.time_maxerror_ns()),
            "leap_indicator": snap.and_then(|s| s.leap_indicator()).map(abi::leap_name),
            "subscribers": srv.subscribers,
            "server": srv.json(),
            "loop": { "max_gap_ms": self.max_gap.as_secs_f64() * 1e3, "poll_ms": self.poll_every.as_secs_f64() * 1e3 },
            "stats": self.publisher.stats(),
        })
    }

    /// The answer to one control request (the server bounds its size and time).
    fn answer(&mut self, line: &str, srv: &crate::ops::control::ServerView) -> Reply {
        match line.trim() {
            "status" => Reply::Line(self.status_json(srv).to_string()),
            "subscribe" => Reply::Subscribe(self.writer.seq_count().to_string()),
            other => Reply::Line(serve::error_json(&format!(
                "unknown request {}: send status or subscribe",
                serde_json::Value::from(other.chars().take(64).collect::<String>())
            ))),
        }
    }
}

/// Opens the page for writing (`vmtime_sys::files`): our own page file found there is taken
/// over in place so readers' mappings stay valid, else a new one is created; anything else at
/// the path is refused. The page is locked for the daemon's life.
/// A new page is created as `placeholder`, its constant fields already final.
fn open_page(path: &Path, placeholder: PageBuilder) -> Result<(PageFile, WritableMapping, Option<Snapshot>)> {
    let (pf, prev) = files::open_or_create_page(path, &placeholder.page_bytes())?;
    let prev = prev.and_then(|b| Snapshot::from_bytes(&b[..PAGE_SIZE]).ok());
    let m = Mapping::map(pf.file(), true).and_then(WritableMapping::new);
    let m = m.with_context(|| format!("cannot map {} for writing", path.display()))?;
    Ok((pf, m, prev))
}

/// What the host says (once, and in its status) when a seccomp filter refuses the adjtimex read.
const UNREADABLE_NOTE: &str = "the kernel's NTP state cannot be read (adjtimex refused), so whether \
     the kernel clock is synchronised is unknown: the page says FREERUNNING with the kernel's 16 s \
     ceiling as its maxerror, announces no leap second, and is republished whenever it drifts from \
     the sampled clock";

/// What `vmtime host` applies on SIGHUP: the log level, the tunables of the publishing loop and
/// the status line. The page and socket paths, the kernel page, the smearing hint and TAI − UTC
/// (constants of the page) and the metrics address need a restart.
const HOST_LIVE: &[&str] = &["log_level", "interval_ms", "poll_ms", "threshold_ns", "tolerance_ppm", "quiet"];

pub fn run(args: Args) -> Result<ExitCode> {
    let mut a = args.settings()?;
    crate::ops::logging::set_level(a.log_level);
    let page_path = match a.page.clone() {
        Some(p) => {
            files::ensure_dir_for(&p)?;
            p
        }
        None => {
            files::ensure_private_dir(&files::runtime_dir())?;
            crate::paths::default_host_page()
        }
    };
    let socket_path = a.socket.clone().unwrap_or_else(|| crate::paths::socket_for(&page_path));
    let clocksource = event::current_clocksource().unwrap_or_else(|_| "unknown".into());
    let usable = event::clocksource_uses_counter(&clocksource) && vmclock::counter::NATIVE != abi::counter_id::INVALID;

    // TAI − UTC: the kernel's, a stated one, or the leap-second list while it is current.
    // The kernel's NTP state is advisory here: where a seccomp filter refuses the read (a
    // container), the page goes on unsynchronised with the kernel's ceiling as its bound.
    let mut timex = vmtime_sys::AdvisoryTimex::new();
    let (kernel, refused) = timex.read()?;
    if let Some(e) = refused {
        tracing::warn!("{e}");
        tracing::warn!("going on: {UNREADABLE_NOTE}");
    }
    let now_s = (vmtime_sys::gettime(ClockId::Realtime)? / 1_000_000_000) as i64;
    let (tai, tai_note) = match a.tai_offset.map(TaiUtcS::get) {
        Some(o) => (TaiSource::Fixed(o), format!("TAI − UTC = {o} s, as given"))
        ,
        None => match tai::find(kernel.tai, Path::new(tai::LEAP_SECONDS_LIST), now_s) {
            Found::Known { offset, source } if kernel.tai != 0 => (TaiSource::Kernel, format!("TAI − UTC = {offset} s from {source}")),
            Found::Known { offset, source } => {
                let list = LeapSeconds::parse(&std::fs::read_to_string(tai::LEAP_SECONDS_LIST)?).ok();
                (list.map_or(TaiSource::Fixed(offset), TaiSource::List), format!("TAI − UTC = {offset} s from {source}"))
            }
            Found::Stale { why, .. } | Found::Unknown { why } => (TaiSource::Unknown, format!("TAI − UTC unknown ({why}): publishing UTC, TAI_OFFSET_VALID clear, until it is known (then TAI, with a new disruption marker); give --tai-offset to publish TAI")),
        },
    };

    // The page's time type is fixed now, for its life: TAI when TAI − UTC is known at start.
    let time_type = match tai {
        TaiSource::Unknown => abi::time_type::UTC,
        TaiSource::List(ref l) if !matches!(l.offset_at(now_s), TaiOffset::Known(_)) => abi::time_type::UTC,
        _ => abi::time_type::TAI,
    };
    let cfg = HostConfig {
        counter_id: if usable { vmclock::counter::NATIVE } else { abi::counter_id::INVALID },
        threshold_ns: a.threshold_ns.get(),
        smearing_hint: match a.smearing {
            Smearing::Strict => abi::smearing::STRICT,
            Smearing::NoonLinear => abi::smearing::NOON_LINEAR,
            Smearing::UtcSls => abi::smearing::UTC_SLS,
        },
        tolerance_ppb: a.tolerance_ppm.fine(),
        interval_ns: a.interval_ms.get() as i128 * 1_000_000,
        marker_seed: event::random_u64()?,
        time_type: Some(time_type),
        // The placeholder carries TAI − UTC when it is known now (a guest driver probing it
        // then registers its PTP clock).
        tai_minus_utc: match &tai {
            TaiSource::Fixed(o) => Some(*o),
            TaiSource::List(l) => match l.offset_at(now_s) {
                TaiOffset::Known(o) => Some(o),
                TaiOffset::Expired { .. } => None,
            },
            TaiSource::Kernel => i16::try_from(kernel.tai).ok(),
            TaiSource::Unknown => None,
        },
        ..HostConfig::default()
    };
    let placeholder = Publisher::new(cfg.clone()).placeholder().expect("the time type is fixed");
    let (page_file, mem, prev) = open_page(&page_path, placeholder)?;
    let resumed = prev.is_some();
    let publisher = match prev {
        Some(p) => Publisher::resume(cfg, p),
        None => Publisher::new(cfg),
    };
    let mut server = Server::bind_unix(&socket_path, 0o600, None, serve::Limits::default())?;
    let mut signals = Signals::install()?;

    let mut source_note = "source: (clock, counter, clock) samples of the kernel clock".to_string();
    let kernel_page = if a.no_vmclock_host {
        None
    } else {
        match vmtime_sys::follow::PageReader::open(&a.vmclock_host) {
            Ok(m) => {
                let ok = m.read().ok().is_some_and(|s| s.reference().is_ok());
                if ok {
                    source_note = format!(
                        "source: the kernel's own page {} (bounds, leap, status and markers added)",
                        a.vmclock_host.display()
                    );
                    Some(m)
                } else {
                    source_note =
                        format!("{} gives no usable time: sampling the kernel clock instead", a.vmclock_host.display());
                    None
                }
            }
            Err(_) => None,
        }
    };
    tracing::info!(
        "vmtime host: publishing {} ({})",
        page_path.display(),
        if resumed { "taking over the page found there" } else { "new page" }
    );
    tracing::info!(
        "counter {} via clocksource {clocksource}{}",
        abi::counter_name(vmclock::counter::NATIVE),
        if usable { "" } else { ": NOT usable, the page carries markers only" }
    );
    tracing::info!("{tai_note}");
    tracing::info!(
        "kernel: {}, maxerror {} µs, freq {:+.3} ppm",
        if kernel.synchronized() { "synchronised" } else { "not synchronised (FREERUNNING)" },
        kernel.maxerror_us,
        kernel.freq as f64 / 65536.0
    );
    if let Some(advice) = kernel.unsynchronised_advice() {
        tracing::warn!("{advice}");
    }
    tracing::info!("{source_note}");
    tracing::info!("control socket {} (vmtime status; vmtime watch)", socket_path.display());
    tracing::info!("calibrating the counter against CLOCK_MONOTONIC_RAW …");

    let mut d = Daemon {
        page: page_path,
        kernel_page,
        kernel_page_failing: false,
        timex,
        samples: Vec::with_capacity(64),
        reload_requests: 0,
        restart_needed: Vec::new(),
        writer: Writer::new(mem),
        _page_file: page_file,
        publisher,
        tai,
        max_gap: Duration::ZERO,
        poll_every: Duration::from_millis(a.poll_ms.get()),
        started: Instant::now(),
        clocksource,
        tai_note,
        m: Default::default(),
    };
    let board = crate::ops::metrics::Board::new(d.m.clone());
    crate::ops::metrics::start(a.metrics_listen, &board)?;
    let mut supervisor = crate::ops::systemd::Supervisor::new();
    let mut gaps = crate::ops::metrics::GapWindow::new(Instant::now());
    if !usable {
        d.publisher.handle_event(HostEvent::CounterChanged { usable: false });
    }
    let steps = StepDetector::new()?;
    let mut poll_every = d.poll_every;
    let mut next_poll = Instant::now();
    let mut last_obs = Instant::now() - Duration::from_secs(3600);
    let mut last_line = Instant::now();
    let mut cs_unreadable = false;
    let mut last_cs_check = Instant::now();
    let mut last_turn: Option<Instant> = None;
    let end = a.duration_s.map(|s| Instant::now() + Duration::from_secs(s.get()));
    let mut poller = Poller::new();
    loop {
        // One event loop: the adjtimex poll is due, the clock was set, a signal, or a client.
        // Clients are served without blocking, so they never delay the publishing path.
        poller.clear();
        signals.register(&mut poller);
        server.register(&mut poller);
        let t_step = poller.add(steps.as_fd(), serve::READABLE);
        let wake = serve::earliest(Some(next_poll), server.next_deadline()).unwrap_or(next_poll);
        poller.wait(Some(wake.saturating_duration_since(Instant::now()).min(Duration::from_secs(1))))?;
        match signals.take(&poller) {
            Some(SignalEvent::Terminate(name)) => {
                tracing::info!("{name}: stopping (the page stays valid; the socket is removed)");
                break;
            }
            Some(SignalEvent::Reload) => {
                // Re-read and re-check the configuration (the same flags on top): the tunables
                // are applied now, the rest named as needing a restart; a bad file keeps the
                // settings in force.
                d.reload_requests += 1;
                if let Some((now, restart)) = crate::ops::config::on_sighup("host", &a, args.settings(), HOST_LIVE) {
                    crate::ops::logging::set_level(now.log_level);
                    d.publisher.retune(
                        now.threshold_ns.get(),
                        now.tolerance_ppm.fine(),
                        now.interval_ms.get() as i128 * 1_000_000,
                    );
                    d.poll_every = Duration::from_millis(now.poll_ms.get());
                    poll_every = d.poll_every;
                    next_poll = next_poll.min(Instant::now() + poll_every);
                    d.restart_needed = restart;
                    a = now;
                }
            }
            None => {}
        }
        if poller.readable(t_step) && steps.stepped()? {
            tracing::warn!("the kernel clock was set");
            d.publisher.handle_event(HostEvent::Stepped);
            next_poll = Instant::now();
        }
        if Instant::now() >= next_poll {
            let now = Instant::now();
            if let Some(t) = last_turn {
                d.max_gap = d.max_gap.max(now - t);
            }
            last_turn = Some(now);
            next_poll += poll_every;
            if next_poll < Instant::now() {
                next_poll = Instant::now() + poll_every;
            }
            if last_cs_check.elapsed() >= Duration::from_secs(1) {
                last_cs_check = Instant::now();
                // "Cannot read" (out of file descriptors, say) is not "changed": the clocksource
                // is taken as unchanged until it can be read again (said once per episode).
                match event::current_clocksource() {
                    Ok(cs) => {
                        if std::mem::take(&mut cs_unreadable) {
                            tracing::info!("the current clocksource can be read again: {cs}");
                        }
                        if cs != d.clocksource {
                            let usable = event::clocksource_uses_counter(&cs);
                            tracing::warn!("clocksource changed: {} → {cs}", d.clocksource);
                            d.clocksource = cs;
                            d.publisher.handle_event(HostEvent::CounterChanged { usable });
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut cs_unreadable, true) {
                            tracing::warn!(
                                "cannot read the current clocksource ({e}): taken as unchanged ({}) until it can be read",
                                d.clocksource
                            );
                        }
                    }
                }
            }
            let (tx, refused) = d.timex.read()?;
            if let Some(e) = refused {
                tracing::warn!("{e}");
                tracing::warn!("going on: {UNREADABLE_NOTE}");
            }
            let since = last_obs.elapsed().as_nanos() as i128;
            if d.publisher.wants_observation(&tx, since) {
                last_obs = Instant::now();
                if let Some(seq) = d.observe(tx)? {
                    server.notify(seq);
                }
            }
        }
        let view = crate::ops::control::ServerView::of(&server);
        server.handle(&poller, |line| d.answer(line, &view));
        if !a.quiet && last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            let s = d.publisher.stats();
            tracing::info!(
                "pages {}, last: {}, page − kernel {:+.1} ns, pairing ±{:.1} ns, baseline {:.0} s, subscribers {}",
                s.published,
                s.last_reason.map_or("none yet".to_string(), |r| r.to_string()),
                s.last_error_ns,
                s.pairing_ns,
                s.baseline_s,
                server.subscribers()
            );
        }
        d.m.last_observation = Some(last_obs);
        gaps.turn(Instant::now());
        d.m.loop_gap_max = Some(gaps.max(Instant::now()));
        d.m.subscribers = server.subscribers();
        d.m.subscribers_dropped = server.stats().dropped_subscribers;
        board.offer(&d.m);
        if d.m.published > 0 {
            let unread = if d.timex.denied() { " (kernel NTP state unreadable: FREERUNNING, 16 s bound)" } else { "" };
            supervisor.ready(&format!("publishing {}{unread}", d.page.display()));
        }
        supervisor.tick();
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    supervisor.stopping();
    drop(server); // removes our socket (only if it is still ours)
    if d.publisher.stats().published == 0 {
        bail!("no page was published");
    }
    Ok(ExitCode::SUCCESS)
}
