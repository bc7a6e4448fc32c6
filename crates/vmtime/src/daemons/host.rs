//! `vmtime host`: publishes this machine's kernel clock as a vmclock page (see
//! `vmtime_core::host` for the model). It only reads the clock; it never writes it.

use crate::ops::config::{DaemonArgs, HostFlags, HostSettings, Smearing};
use crate::ops::runtime::{Answer, Daemon, Flow, Runtime, Turn};
use crate::tai::{self, Found};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::abi::{self, PAGE_SIZE};
use vmclock::{Mapping, PageBuilder, Snapshot, WritableMapping, Writer};
use vmtime_core::host::{HostAction, HostConfig, HostEvent, Observation, PollSchedule, Publisher, Sampled};
use vmtime_core::leapsecs::{LeapSeconds, TaiOffset};
use vmtime_sys::clock::{aba_sample, tightest, ClockId};
use vmtime_sys::event::{self, StepDetector};
use vmtime_sys::files::{self, PageFile};
use vmtime_sys::serve::{self, Poller, Reply, Token};

/// `vmtime host`'s flags: each one but `--config` is also a key of the configuration's `[host]`
/// section (crate::ops::config::HostSettings declares them); a flag overrides the file.
#[derive(ClapArgs, Debug, Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    keys: HostFlags,
    #[command(flatten)]
    #[serde(flatten)]
    pub daemon: DaemonArgs,
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

/// What the host says (once, and in its status) when a seccomp filter refuses the adjtimex read.
const UNREADABLE_NOTE: &str = "the kernel's NTP state cannot be read (adjtimex refused), so whether \
     the kernel clock is synchronised is unknown: the page says FREERUNNING with the kernel's 16 s \
     ceiling as its maxerror, announces no leap second, and is republished whenever it drifts from \
     the sampled clock";
/// The status's `kernel_state` when the read works.
const READ_NOTE: &str = "read with adjtimex";

struct Host {
    /// The kernel's own page (a device, or a file read with pread: never a SIGBUS).
    kernel_page: Option<vmtime_sys::follow::PageReader>,
    /// The kernel's page could not be read at the last observation (logged once).
    kernel_page_failing: bool,
    /// The kernel's NTP state (adjtimex): a read refused by a seccomp filter is said once and
    /// the page goes on FREERUNNING with the kernel's 16 s ceiling as its bound.
    timex: vmtime_sys::AdvisoryTimex,
    /// The observation's samples (reused).
    samples: Vec<vmtime_core::AbaSample>,
    writer: Writer<WritableMapping>,
    /// The page file, locked: held for the daemon's life (one writer per page).
    _page_file: PageFile,
    publisher: Publisher,
    tai: TaiSource,
    /// The figures (metrics and status).
    m: crate::ops::figures::HostMetrics,
    /// The wake-up schedule: short while the kernel's NTP state changes, long once still.
    schedule: PollSchedule,
    /// When the daemon started (the schedule's time origin).
    t0: Instant,
    quiet: bool,
    /// The clock's steps (a timerfd cancelled when the clock is set).
    steps: StepDetector,
    t_step: Option<Token>,
    next_poll: Instant,
    last_obs: Option<Instant>,
    last_line: Instant,
    last_cs_check: Instant,
    /// The clocksource could not be read at the last look (said once per episode).
    cs_unreadable: bool,
    last_turn: Option<Instant>,
}

impl Host {
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
        // The publisher's figures after every observation, not only after a publish (the kernel
        // page's check, the pairing, the error move without a new page).
        self.m.stats.clone_from(self.publisher.stats());
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

pub fn run(args: Args) -> Result<ExitCode> {
    let a: HostSettings = args.daemon.settings(&args)?;
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
    let schedule = PollSchedule::new(a.poll_ms.get() as i128 * 1_000_000, a.idle_poll_ms.get() as i128 * 1_000_000);
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
        longest_poll_gap_ns: schedule.longest_gap_ns(),
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
    let cfg_copy = cfg.clone();
    let placeholder = Publisher::new(cfg.clone()).placeholder().expect("the time type is fixed");
    let (page_file, mem, prev) = open_page(&page_path, placeholder)?;
    let resumed = prev.is_some();
    let publisher = match prev {
        Some(p) => Publisher::resume(cfg, p),
        None => Publisher::new(cfg),
    };
    let rt = Runtime::start(a.clone(), move || args.daemon.settings(&args), &socket_path)?;

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
    tracing::info!("calibrating the counter against CLOCK_MONOTONIC_RAW …");

    let now = Instant::now();
    let m = crate::ops::figures::HostMetrics {
        page: page_path.display().to_string(),
        clocksource,
        tai: tai_note,
        poll_every: Duration::from_millis(a.poll_ms.get()),
        kernel_page_readable: kernel_page.as_ref().map(|_| true),
        kernel_state: if timex.denied() { UNREADABLE_NOTE } else { READ_NOTE },
        timex_denied: timex.denied(),
        config: cfg_copy,
        ..Default::default()
    };
    let mut d = Host {
        kernel_page,
        kernel_page_failing: false,
        timex,
        samples: Vec::with_capacity(64),
        writer: Writer::new(mem),
        _page_file: page_file,
        publisher,
        tai,
        schedule,
        t0: now,
        quiet: a.quiet,
        steps: StepDetector::new()?,
        t_step: None,
        next_poll: now,
        last_obs: None,
        last_line: now,
        last_cs_check: now,
        cs_unreadable: false,
        last_turn: None,
        m,
    };
    if !usable {
        d.publisher.handle_event(HostEvent::CounterChanged { usable: false });
    }
    let code = rt.run(&mut d)?;
    if d.publisher.stats().published == 0 {
        bail!("no page was published");
    }
    Ok(code)
}

impl Daemon for Host {
    type Settings = HostSettings;
    type Figures = crate::ops::figures::HostMetrics;
    const NAME: &'static str = "host";
    const STOPPED: &'static str = "the page stays valid; the socket is removed";
    /// What `vmtime host` applies on SIGHUP: the log level, the tunables of the publishing loop
    /// and the status line. The page and socket paths, the kernel page, the smearing hint and
    /// TAI − UTC (constants of the page) and the metrics address need a restart.
    const LIVE: &'static [&'static str] =
        &["log_level", "interval_ms", "poll_ms", "idle_poll_ms", "threshold_ns", "tolerance_ppm", "quiet"];
    const REQUESTS: &'static str = "status or subscribe";

    fn next_turn(&self) -> Option<Instant> {
        Some(self.next_poll)
    }

    fn register(&mut self, p: &mut Poller) {
        self.t_step = Some(p.add(self.steps.as_fd(), serve::READABLE));
    }

    /// The adjtimex poll is due, or the clock was set: an observation when the publisher wants
    /// one, a page when it decides to publish (subscribers told at once).
    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        if self.t_step.is_some_and(|s| t.readable(s)) && self.steps.stepped()? {
            tracing::warn!("the kernel clock was set");
            self.publisher.handle_event(HostEvent::Stepped);
            self.next_poll = Instant::now();
        }
        if Instant::now() >= self.next_poll {
            let now = Instant::now();
            if let Some(last) = self.last_turn {
                self.m.max_gap = self.m.max_gap.max(now - last);
            }
            self.last_turn = Some(now);
            if self.last_cs_check.elapsed() >= Duration::from_secs(1) {
                self.last_cs_check = Instant::now();
                // "Cannot read" (out of file descriptors, say) is not "changed": the clocksource
                // is taken as unchanged until it can be read again (said once per episode).
                match event::current_clocksource() {
                    Ok(cs) => {
                        if std::mem::take(&mut self.cs_unreadable) {
                            tracing::info!("the current clocksource can be read again: {cs}");
                        }
                        if cs != self.m.clocksource {
                            let usable = event::clocksource_uses_counter(&cs);
                            tracing::warn!("clocksource changed: {} → {cs}", self.m.clocksource);
                            self.m.clocksource = cs;
                            self.publisher.handle_event(HostEvent::CounterChanged { usable });
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut self.cs_unreadable, true) {
                            tracing::warn!(
                                "cannot read the current clocksource ({e}): taken as unchanged ({}) until it can be read",
                                self.m.clocksource
                            );
                        }
                    }
                }
            }
            let (tx, refused) = self.timex.read()?;
            if let Some(e) = refused {
                tracing::warn!("{e}");
                tracing::warn!("going on: {UNREADABLE_NOTE}");
            }
            self.m.kernel_state = if self.timex.denied() { UNREADABLE_NOTE } else { READ_NOTE };
            self.m.timex_denied = self.timex.denied();
            let delay = self.schedule.after_poll(&tx, (now - self.t0).as_nanos() as i128);
            self.next_poll = now + Duration::from_nanos(delay as u64);
            self.m.poll_every = Duration::from_nanos(delay as u64);
            let since = self.last_obs.map_or(3_600_000_000_000, |o| o.elapsed().as_nanos() as i128);
            if self.publisher.wants_observation(&tx, since) {
                self.last_obs = Some(Instant::now());
                if let Some(seq) = self.observe(tx)? {
                    t.notify(seq);
                }
            }
        }
        if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            let s = self.publisher.stats();
            tracing::info!(
                "pages {}, last: {}, page − kernel {:+.1} ns, pairing ±{:.1} ns, baseline {:.0} s, subscribers {}",
                s.published,
                s.last_reason.map_or("none yet".to_string(), |r| r.to_string()),
                s.last_error_ns,
                s.pairing_ns,
                s.baseline_s,
                self.m.run.subscribers
            );
        }
        self.m.last_observation = self.last_obs;
        self.m.kernel_page_readable = self.kernel_page.as_ref().map(|_| !self.kernel_page_failing);
        Ok(Flow::Continue)
    }

    fn answer(&mut self, request: &str) -> Answer {
        match request {
            "subscribe" => Answer::Reply(Reply::Subscribe(self.writer.seq_count().to_string())),
            _ => Answer::Unknown,
        }
    }

    fn reconfigure(&mut self, now: &HostSettings) {
        self.publisher.retune(
            now.threshold_ns.get(),
            now.tolerance_ppm.fine(),
            now.interval_ms.get() as i128 * 1_000_000,
            now.idle_poll_ms.get().max(now.poll_ms.get()) as i128 * 1_000_000,
        );
        self.schedule.retune(now.poll_ms.get() as i128 * 1_000_000, now.idle_poll_ms.get() as i128 * 1_000_000);
        self.m.config = self.publisher.config().clone();
        let first = Duration::from_millis(now.poll_ms.get());
        self.next_poll = self.next_poll.min(Instant::now() + first);
        self.quiet = now.quiet;
    }

    fn figures(&mut self) -> &mut crate::ops::figures::HostMetrics {
        &mut self.m
    }
}
