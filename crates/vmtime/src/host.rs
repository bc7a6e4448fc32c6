//! `vmtime host`: publishes this machine's kernel clock as a vmclock page (see
//! `vmtime_core::host` for the model). It only reads the clock; it never writes it.

use crate::config::{HostSettings, LogLevel, Smearing};
use crate::tai::{self, Found};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::abi::{self, PAGE_SIZE};
use vmclock::{Mapping, PageBuilder, Snapshot, WritableMapping, Writer};
use vmtime_core::host::{HostAction, HostConfig, HostEvent, Observation, Publisher, Sampled};
use vmtime_core::leapsecs::{LeapSeconds, TaiOffset};
use vmtime_sys::clock::{aba_sample, tightest, ClockId};
use vmtime_sys::event::{self, StepDetector};

/// `vmtime host`'s flags: each one is also a key of the configuration's `[host]` section
/// (crate::config::HostSettings has the defaults); a flag overrides the file.
#[derive(ClapArgs, Debug, Serialize)]
pub struct Args {
    /// The configuration file (default: /etc/vmtime/vmtime.toml, if it exists).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where to publish the page (default: /run/vmtime/host.page, or under $XDG_RUNTIME_DIR or
    /// /tmp when /run/vmtime cannot be created).
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
    pub fn settings(&self) -> Result<HostSettings> {
        crate::config::host(self.config.as_deref(), self)
    }
}

/// The default page path for this user.
pub fn default_page() -> PathBuf {
    let run = Path::new("/run/vmtime");
    if std::fs::create_dir_all(run).is_ok() && access_w(run) {
        return run.join("host.page");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(x).join("vmtime/host.page");
    }
    PathBuf::from(format!("/tmp/vmtime-{}/host.page", std::env::var("USER").unwrap_or_else(|_| "user".into())))
}

fn access_w(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The socket path that goes with a page.
pub fn socket_for(page: &Path) -> PathBuf {
    let mut s = page.as_os_str().to_owned();
    s.push(".sock");
    PathBuf::from(s)
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
    kernel_page: Option<Mapping>,
    writer: Writer<WritableMapping>,
    publisher: Publisher,
    tai: TaiSource,
    subscribers: Vec<UnixStream>,
    started: Instant,
    clocksource: String,
    tai_note: String,
}

impl Daemon {
    /// A full observation; `kernel` is the NTP state the poll has just read.
    fn observe(&mut self, kernel: vmtime_core::kernel::KernelTimex) -> Result<()> {
        let (sampled, clock) = self.tai.sampled(kernel.tai);
        let raw = tightest(ClockId::MonotonicRaw, 16)?;
        let samples = (0..64).map(|_| aba_sample(clock)).collect::<std::io::Result<Vec<_>>>()?;
        let kernel_page = match &self.kernel_page {
            Some(m) => Some(
                vmclock::seqlock::read(m, vmclock::seqlock::DEFAULT_MAX_WAIT)
                    .context("reading the kernel's vmclock_host page")?,
            ),
            None => None,
        };
        let obs = Observation { raw, clock: sampled, samples: &samples, kernel, kernel_page };
        if let Some(HostAction::Publish { page, reason, disrupted }) = self.publisher.handle_observation(&obs) {
            let seq = self.writer.publish(&page);
            self.notify(seq);
            let st = abi::status_name(page.clock_status);
            let stats = self.publisher.stats();
            if disrupted {
                eprintln!(
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
                eprintln!(
                    "page {seq}: {reason}, status {st}, kernel rate {:+.3} ppm, pairing ±{:.1} ns",
                    stats.kernel_rate_ppb / 1000.0,
                    stats.pairing_ns
                );
            }
        }
        Ok(())
    }

    fn notify(&mut self, seq: u32) {
        let msg = format!("{seq}\n");
        self.subscribers.retain_mut(|s| s.write_all(msg.as_bytes()).is_ok());
    }

    fn status_json(&self) -> serde_json::Value {
        let snap = vmclock::seqlock::read(self.writer.memory(), vmclock::seqlock::DEFAULT_MAX_WAIT).ok();
        serde_json::json!({
            "role": "host",
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
            "subscribers": self.subscribers.len(),
            "stats": self.publisher.stats(),
        })
    }

    fn control(&mut self, conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            return;
        }
        let mut conn = conn;
        match line.trim() {
            "status" => {
                let _ = writeln!(conn, "{}", self.status_json());
            }
            "subscribe" => {
                let seq = self.writer.seq_count();
                if writeln!(conn, "{seq}").is_ok() {
                    self.subscribers.push(conn);
                }
            }
            other => {
                let error = format!("unknown request \"{}\": send status or subscribe", other.escape_debug());
                let _ = writeln!(conn, "{}", serde_json::json!({ "error": error }));
            }
        }
    }
}

/// Opens the page for writing: reuses our own page file so readers' mappings stay valid, or
/// creates a new one atomically.
fn open_page(path: &Path) -> Result<(WritableMapping, Option<Snapshot>)> {
    if let Ok(bytes) = std::fs::read(path) {
        if bytes.len() >= PAGE_SIZE {
            if let Ok(prev) = Snapshot::from_bytes(&bytes[..PAGE_SIZE]) {
                let f = vmtime_sys::pagefile::open_existing(path)
                    .with_context(|| format!("cannot reopen {}", path.display()))?;
                let m = Mapping::map(&f, true).and_then(WritableMapping::new);
                let m = m.with_context(|| format!("cannot map {} for writing", path.display()))?;
                return Ok((m, Some(prev)));
            }
        }
    }
    // INITIALIZING until the first page: `vmtime check` then says "not yet calibrated".
    let blank = PageBuilder::new().status(abi::status::INITIALIZING).page_bytes();
    let f = vmtime_sys::pagefile::create(path, &blank).with_context(|| format!("cannot create {}", path.display()))?;
    let m = Mapping::map(&f, true).and_then(WritableMapping::new);
    Ok((m.with_context(|| format!("cannot map {} for writing", path.display()))?, None))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let a = args.settings()?;
    let page_path = a.page.unwrap_or_else(default_page);
    if let Some(dir) = page_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let socket_path = a.socket.unwrap_or_else(|| socket_for(&page_path));
    let clocksource = event::current_clocksource().unwrap_or_else(|_| "unknown".into());
    let usable = event::clocksource_uses_counter(&clocksource) && vmclock::counter::NATIVE != abi::counter_id::INVALID;

    // TAI − UTC: the kernel's, a stated one, or the leap-second list while it is current.
    let kernel = vmtime_sys::read_timex()?;
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
            Found::Stale { why, .. } | Found::Unknown { why } => (TaiSource::Unknown, format!("TAI − UTC unknown ({why}): publishing UTC, TAI_OFFSET_VALID clear; give --tai-offset to publish TAI")),
        },
    };

    let (mem, prev) = open_page(&page_path)?;
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
        ..HostConfig::default()
    };
    let resumed = prev.is_some();
    let publisher = match prev {
        Some(p) => Publisher::resume(cfg, p),
        None => Publisher::new(cfg),
    };
    let _ = std::fs::remove_file(&socket_path);
    let listener =
        UnixListener::bind(&socket_path).with_context(|| format!("cannot listen on {}", socket_path.display()))?;
    listener.set_nonblocking(true)?;

    let mut source_note = "source: (clock, counter, clock) samples of the kernel clock".to_string();
    let kernel_page = if a.no_vmclock_host {
        None
    } else {
        match Mapping::open(&a.vmclock_host) {
            Ok(m) => {
                let ok = vmclock::seqlock::read(&m, vmclock::seqlock::DEFAULT_MAX_WAIT)
                    .ok()
                    .is_some_and(|s| s.reference().is_ok());
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
    eprintln!(
        "vmtime host: publishing {} ({})",
        page_path.display(),
        if resumed { "taking over the page found there" } else { "new page" }
    );
    eprintln!(
        "  counter {} via clocksource {clocksource}{}",
        abi::counter_name(vmclock::counter::NATIVE),
        if usable { "" } else { ": NOT usable, the page carries markers only" }
    );
    eprintln!("  {tai_note}");
    eprintln!(
        "  kernel: {}, maxerror {} µs, freq {:+.3} ppm",
        if kernel.synchronized() { "synchronised" } else { "not synchronised (FREERUNNING)" },
        kernel.maxerror_us,
        kernel.freq as f64 / 65536.0
    );
    eprintln!("  {source_note}");
    eprintln!("  control socket {} (vmtime status; vmtime watch)", socket_path.display());
    eprintln!("  calibrating the counter against CLOCK_MONOTONIC_RAW …");

    let mut d = Daemon {
        page: page_path,
        kernel_page,
        writer: Writer::new(mem),
        publisher,
        tai,
        subscribers: Vec::new(),
        started: Instant::now(),
        clocksource,
        tai_note,
    };
    if !usable {
        d.publisher.handle_event(HostEvent::CounterChanged { usable: false });
    }
    let steps = StepDetector::new()?;
    let poll_every = Duration::from_millis(a.poll_ms.get());
    let mut next_poll = Instant::now();
    let mut last_obs = Instant::now() - Duration::from_secs(3600);
    let mut last_line = Instant::now();
    let mut last_cs_check = Instant::now();
    let end = a.duration_s.map(|s| Instant::now() + Duration::from_secs(s.get()));
    loop {
        // One system call per wake-up: poll() sleeps until the next adjtimex read is due, a step
        // or a control connection.
        let wait = next_poll.saturating_duration_since(Instant::now());
        let fds = [steps.fd(), listener.as_raw_fd()];
        let ready = event::poll_readable(&fds, wait.as_micros().div_ceil(1000).min(1000) as i32)?;
        if ready[0] && steps.stepped()? {
            eprintln!("the kernel clock was set");
            d.publisher.handle_event(HostEvent::Stepped);
            next_poll = Instant::now();
        }
        if ready[1] {
            while let Ok((conn, _)) = listener.accept() {
                let _ = conn.set_nonblocking(false);
                d.control(conn);
            }
        }
        if Instant::now() >= next_poll {
            next_poll += poll_every;
            if next_poll < Instant::now() {
                next_poll = Instant::now() + poll_every;
            }
            if last_cs_check.elapsed() >= Duration::from_secs(1) {
                last_cs_check = Instant::now();
                let cs = event::current_clocksource().unwrap_or_default();
                if cs != d.clocksource {
                    let usable = event::clocksource_uses_counter(&cs);
                    eprintln!("clocksource changed: {} → {cs}", d.clocksource);
                    d.clocksource = cs;
                    d.publisher.handle_event(HostEvent::CounterChanged { usable });
                }
            }
            let tx = vmtime_sys::read_timex()?;
            let since = last_obs.elapsed().as_nanos() as i128;
            if d.publisher.wants_observation(&tx, since) {
                last_obs = Instant::now();
                d.observe(tx)?;
            }
        }
        if !a.quiet && last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            let s = d.publisher.stats();
            eprintln!(
                "pages {}, last: {}, page − kernel {:+.1} ns, pairing ±{:.1} ns, baseline {:.0} s, subscribers {}",
                s.published,
                s.last_reason.map_or("none yet".to_string(), |r| r.to_string()),
                s.last_error_ns,
                s.pairing_ns,
                s.baseline_s,
                d.subscribers.len()
            );
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    if d.publisher.stats().published == 0 {
        bail!("no page was published");
    }
    Ok(ExitCode::SUCCESS)
}
