//! Metrics in the Prometheus text exposition format (0.0.4), served on an opt-in loopback address.
//!
//! The daemon never waits for the server: after each turn of its loop it *offers* a small copy of
//! its figures to a [`Board`] with `try_lock` (skipped when the server holds the lock, for the few
//! nanoseconds a copy takes; the next turn offers again). A dedicated thread accepts connections,
//! copies the latest figures and renders them. Each request is bounded: at most
//! [`MAX_CONNECTIONS`] at once (more are answered 503 and closed), [`MAX_REQUEST`] bytes of request
//! head, [`IO_TIMEOUT`] for reading the request and for writing the answer.
//!
//! Hand-written rather than a metrics crate plus an HTTP server crate: the exposition is a dozen
//! numbers per daemon, and the server must never share the daemon's thread or an async runtime;
//! the whole of it is this file, with `promtool check metrics` checking the output in
//! scripts/test.

#[cfg(test)]
use anyhow::bail;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections served at once; more are refused with 503.
pub const MAX_CONNECTIONS: usize = 4;
/// The longest request head read (request line and headers), bytes.
pub const MAX_REQUEST: usize = 8192;
/// Read and write timeout of a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest figures of a daemon, handed from its loop to the metrics thread without blocking.
#[derive(Debug)]
pub struct Board<T> {
    inner: Arc<Mutex<T>>,
}

impl<T> Clone for Board<T> {
    fn clone(&self) -> Self {
        Board { inner: Arc::clone(&self.inner) }
    }
}

impl<T: Clone> Board<T> {
    pub fn new(t: T) -> Self {
        Board { inner: Arc::new(Mutex::new(t)) }
    }

    /// Stores `t` unless the server is copying the previous figures right now (then nothing is
    /// stored and false is returned: the caller offers again at its next turn). Never blocks.
    pub fn offer(&self, t: &T) -> bool {
        match self.inner.try_lock() {
            Ok(mut g) => {
                g.clone_from(t);
                true
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().clone_from(t);
                true
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// A copy of the latest figures.
    pub fn read(&self) -> T {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// What a daemon exposes.
pub trait Expose: Clone + Send + 'static {
    /// Writes every metric; `now` is the time of the scrape (ages are computed from it).
    fn render(&self, now: Instant, out: &mut Exposition);
}

/// The text being built, one metric family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// A sample value in the exposition's spelling.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }
    /// A gauge; `None` leaves it out (the daemon does not know it yet).
    pub fn gauge(&mut self, name: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.head(name, "gauge", help);
            let _ = writeln!(self.text, "{name} {}", value(v));
        }
    }
    /// A counter (its name ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        debug_assert!(name.ends_with("_total"));
        self.head(name, "counter", help);
        let _ = writeln!(self.text, "{name} {v}");
    }
    /// A gauge per label value, 1 for `current` and 0 for the others (a state set).
    pub fn state_set(&mut self, name: &str, help: &str, label: &str, states: &[&str], current: Option<&str>) {
        self.head(name, "gauge", help);
        for s in states {
            let _ = writeln!(self.text, "{name}{{{label}=\"{s}\"}} {}", u8::from(Some(*s) == current));
        }
    }
    /// A counter per label value (its name ends in `_total`).
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        debug_assert!(name.ends_with("_total"));
        self.head(name, "counter", help);
        for (l, v) in values {
            let _ = writeln!(self.text, "{name}{{{label}=\"{l}\"}} {v}");
        }
    }
    /// `vmtime_build_info{version,role} 1`.
    pub fn build_info(&mut self, role: &str) {
        self.head("vmtime_build_info", "gauge", "Always 1; the labels give the version and the daemon.");
        let _ = writeln!(self.text, "vmtime_build_info{{version=\"{}\",role=\"{role}\"}} 1", env!("CARGO_PKG_VERSION"));
    }
    pub fn into_string(self) -> String {
        self.text
    }
}

/// Renders figures to the exposition text.
pub fn render<T: Expose>(t: &T, now: Instant) -> String {
    let mut e = Exposition::default();
    t.render(now, &mut e);
    e.into_string()
}

/// Seconds since `t`, if known.
pub fn age(now: Instant, t: Option<Instant>) -> Option<f64> {
    t.map(|t| now.saturating_duration_since(t).as_secs_f64())
}

/// How long the metrics thread waits before trying again to bind an address that another
/// process holds, or to accept after a failure (out of file descriptors: the listener stays
/// readable, so accepting again at once would spin).
pub const RETRY: Duration = Duration::from_secs(5);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` and serves `board` from a thread of its own. Returns the bound address.
pub fn serve<T: Expose>(addr: SocketAddr, board: Board<T>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || accept_loop(listener, board))?;
    Ok(bound)
}

fn accept_loop<T: Expose>(listener: TcpListener, board: Board<T>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut failing = false;
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => {
                failing = false;
                c
            }
            Err(e) => {
                // EMFILE and the like leave the connection queued and the listener readable:
                // pause (this thread only) instead of spinning, and say so once per episode.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "metrics: cannot accept a connection ({e}): pausing {} ms between tries",
                        ACCEPT_BACKOFF.as_millis()
                    );
                }
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
            let _ = conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n",
            );
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (board, slot) = (board.clone(), Arc::clone(&active));
        let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
            let conn = handle(conn, &board);
            slot.fetch_sub(1, Ordering::AcqRel);
            drop(conn);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What to answer to a request head.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    Bad,
}

fn route(head: &str) -> Answer {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Answer::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::Bad;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => Answer::Metrics { head_only: method == "HEAD" },
        ("GET" | "HEAD", _) => Answer::NotFound,
        _ => Answer::BadMethod,
    }
}

/// Reads the request head: up to the blank line, at most [`MAX_REQUEST`] bytes.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if Instant::now() >= deadline {
            return None;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() >= MAX_REQUEST {
            return None;
        }
    }
}

/// Answers one connection and hands it back, to be closed once its slot is freed.
fn handle<T: Expose>(mut conn: TcpStream, board: &Board<T>) -> TcpStream {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let answer = read_head(&mut conn).map_or(Answer::Bad, |h| route(&h));
    let (status, body, head_only) = match answer {
        Answer::Metrics { head_only } => ("200 OK", render(&board.read(), Instant::now()), head_only),
        Answer::NotFound => ("404 Not Found", "only /metrics is here\n".to_string(), false),
        Answer::BadMethod => ("405 Method Not Allowed", "GET /metrics\n".to_string(), false),
        Answer::Bad => ("400 Bad Request", "GET /metrics\n".to_string(), false),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    if !head_only {
        let _ = conn.write_all(body.as_bytes());
    }
    conn
}

/// Starts the server when the settings give an address (`--metrics-listen`, `metrics_listen`,
/// `[metrics] listen`: already checked to be loopback unless `[metrics] allow_non_loopback`).
///
/// Metrics never deny the time service: an address that cannot be bound now (another process,
/// perhaps another user's, holds the port) is logged and tried again every [`RETRY`] from a
/// thread of its own while the daemon runs; `Ok(None)` then.
pub fn start<T: Expose>(addr: Option<SocketAddr>, board: &Board<T>) -> Result<Option<SocketAddr>> {
    let Some(addr) = addr else { return Ok(None) };
    match serve(addr, board.clone()) {
        Ok(bound) => {
            tracing::info!("serving metrics on http://{bound}/metrics");
            Ok(Some(bound))
        }
        Err(e) => {
            tracing::warn!(
                "{e:#}: running without metrics for now; trying again every {} s (free the port, or give another --metrics-listen)",
                RETRY.as_secs()
            );
            let board = board.clone();
            std::thread::Builder::new().name("metrics-bind".into()).spawn(move || loop {
                std::thread::sleep(RETRY);
                if let Ok(bound) = serve(addr, board.clone()) {
                    tracing::info!("serving metrics on http://{bound}/metrics (the address is free now)");
                    return;
                }
            })?;
            Ok(None)
        }
    }
}

/// Fetches `/metrics` from `addr` (tests).
#[cfg(test)]
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect(addr).context("no metrics server answers")?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("the metrics server answered {:?}", out.lines().next().unwrap_or("")),
    }
}

// ---------------------------------------------------------------------------------------------
// The daemons' figures.

/// The largest gap between two turns of a daemon's loop over the last [`GapWindow::SECONDS`]
/// seconds (one maximum per second, in a ring), updated by the loop at each turn.
#[derive(Clone, Debug)]
pub struct GapWindow {
    start: Instant,
    last: Option<Instant>,
    /// (second since start, largest gap ending in it).
    buckets: [(u64, Duration); GapWindow::SECONDS],
}

impl GapWindow {
    pub const SECONDS: usize = 10;

    pub fn new(start: Instant) -> Self {
        GapWindow { start, last: None, buckets: [(u64::MAX, Duration::ZERO); GapWindow::SECONDS] }
    }

    /// A turn of the loop at `now`.
    pub fn turn(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let sec = now.saturating_duration_since(self.start).as_secs();
            let b = &mut self.buckets[(sec % Self::SECONDS as u64) as usize];
            if b.0 != sec {
                *b = (sec, Duration::ZERO);
            }
            b.1 = b.1.max(now.saturating_duration_since(last));
        }
        self.last = Some(now);
    }

    /// The largest gap that ended in the last SECONDS seconds before `now`.
    pub fn max(&self, now: Instant) -> Duration {
        let sec = now.saturating_duration_since(self.start).as_secs();
        self.buckets
            .iter()
            .filter(|(s, _)| *s != u64::MAX && sec.saturating_sub(*s) < Self::SECONDS as u64)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// Clock status names, in the ABI's order.
const STATUSES: &[&str] = &["UNKNOWN", "INITIALIZING", "SYNCHRONIZED", "FREERUNNING", "UNRELIABLE"];

/// `vmtime host`.
#[derive(Clone, Debug, Default)]
pub struct HostMetrics {
    pub published: u64,
    /// When the kernel clock was last observed (at least every --interval-ms, page or not).
    pub last_observation: Option<Instant>,
    pub disruptions: u64,
    pub last_publish: Option<Instant>,
    pub maxerror_ns: Option<u64>,
    pub esterror_ns: Option<u64>,
    /// Page − kernel clock at the last observation, ns.
    pub error_ns: Option<f64>,
    pub pairing_ns: Option<f64>,
    pub status: Option<&'static str>,
    pub subscribers: usize,
    pub subscribers_dropped: u64,
    /// The largest gap between two turns of the publishing loop in the last 10 s.
    pub loop_gap_max: Option<Duration>,
}

impl HostMetrics {
    /// Takes the figures of a page just published.
    pub fn published_page(&mut self, page: &impl vmclock::seqlock::PageMemory, stats: &vmtime_core::host::HostStats) {
        self.last_publish = Some(Instant::now());
        self.published = stats.published;
        self.disruptions = stats.disruptions;
        self.error_ns = Some(stats.last_error_ns);
        self.pairing_ns = Some(stats.pairing_ns);
        if let Ok(s) = vmclock::seqlock::read(page, vmclock::seqlock::DEFAULT_MAX_WAIT) {
            self.maxerror_ns = s.time_maxerror_ns();
            self.esterror_ns = s.time_esterror_ns();
            self.status = s.clock_status().map(vmclock::abi::status_name);
        }
    }
}

impl Expose for HostMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("host");
        e.gauge(
            "vmtime_host_page_age_seconds",
            "Time since the host page was last published.",
            age(now, self.last_publish),
        );
        e.gauge(
            "vmtime_host_last_observation_age_seconds",
            "Time since the kernel clock was last observed (the page is checked against it then, republished only if it drifted).",
            age(now, self.last_observation),
        );
        e.counter("vmtime_host_pages_published_total", "Pages published since the daemon started.", self.published);
        e.gauge(
            "vmtime_host_loop_gap_max_seconds",
            "Largest gap between two turns of the publishing loop in the last 10 s (a stall delays pages).",
            self.loop_gap_max.map(|d| d.as_secs_f64()),
        );
        e.counter(
            "vmtime_host_disruptions_total",
            "Disruption marker changes (clock steps, counter changes, resumes).",
            self.disruptions,
        );
        e.gauge(
            "vmtime_host_page_maxerror_seconds",
            "The page's maximum error at its reference point (time_maxerror).",
            self.maxerror_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            "vmtime_host_page_esterror_seconds",
            "The page's estimated error at its reference point (time_esterror).",
            self.esterror_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            "vmtime_host_page_error_seconds",
            "Page time minus the kernel clock, measured at the last observation.",
            self.error_ns.map(|n| n / 1e9),
        );
        e.gauge(
            "vmtime_host_pairing_seconds",
            "Half-width of the last (clock, counter, clock) pairing.",
            self.pairing_ns.map(|n| n / 1e9),
        );
        e.state_set("vmtime_host_clock_status", "The page's clock_status.", "status", STATUSES, self.status);
        e.gauge(
            "vmtime_host_subscribers",
            "Processes subscribed to page notifications.",
            Some(self.subscribers as f64),
        );
        e.counter(
            "vmtime_host_subscribers_dropped_total",
            "Subscribers dropped because a notification could not be written.",
            self.subscribers_dropped,
        );
    }
}

/// `vmtime relay`.
#[derive(Clone, Debug, Default)]
pub struct RelayMetrics {
    pub relayed: u64,
    /// The host page cannot be read: the guest page keeps its last update.
    pub holdover: bool,
    pub disruptions: u64,
    pub last_publish: Option<Instant>,
    pub maxerror_ns: Option<u64>,
    pub esterror_ns: Option<u64>,
    pub latency_us: Option<f64>,
    pub status: Option<&'static str>,
    pub subscribers: usize,
    pub subscribers_dropped: u64,
}

impl RelayMetrics {
    /// Takes the figures of a guest page just written.
    pub fn relayed_page(
        &mut self,
        page: &impl vmclock::seqlock::PageMemory,
        relayed: u64,
        latency_us: f64,
        disrupted: bool,
    ) {
        self.last_publish = Some(Instant::now());
        self.relayed = relayed;
        self.latency_us = Some(latency_us);
        self.disruptions += u64::from(disrupted);
        if let Ok(s) = vmclock::seqlock::read(page, vmclock::seqlock::DEFAULT_MAX_WAIT) {
            self.maxerror_ns = s.time_maxerror_ns();
            self.esterror_ns = s.time_esterror_ns();
            self.status = s.clock_status().map(vmclock::abi::status_name);
        }
    }
}

impl Expose for RelayMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("relay");
        e.gauge(
            "vmtime_relay_page_age_seconds",
            "Time since the guest page was last written.",
            age(now, self.last_publish),
        );
        e.counter("vmtime_relay_guest_pages_total", "Guest pages written (relayed host pages).", self.relayed);
        e.gauge(
            "vmtime_relay_holdover",
            "1 while the host page cannot be read and the guest page keeps its last update.",
            Some(f64::from(u8::from(self.holdover))),
        );
        e.counter(
            "vmtime_relay_disruptions_total",
            "Guest disruption marker changes (host disruptions, migrations, restores).",
            self.disruptions,
        );
        e.gauge(
            "vmtime_relay_page_maxerror_seconds",
            "The guest page's maximum error at its reference point.",
            self.maxerror_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            "vmtime_relay_page_esterror_seconds",
            "The guest page's estimated error at its reference point.",
            self.esterror_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            "vmtime_relay_latency_seconds",
            "From the host's notification to the guest page written, last update.",
            self.latency_us.map(|u| u / 1e6),
        );
        e.state_set("vmtime_relay_clock_status", "The guest page's clock_status.", "status", STATUSES, self.status);
        e.gauge(
            "vmtime_relay_subscribers",
            "Processes subscribed to guest page notifications.",
            Some(self.subscribers as f64),
        );
        e.counter(
            "vmtime_relay_subscribers_dropped_total",
            "Subscribers dropped because a notification could not be written.",
            self.subscribers_dropped,
        );
    }
}

/// `vmtime sync`.
#[derive(Clone, Debug, Default)]
pub struct SyncMetrics {
    pub offset_ns: Option<f64>,
    pub frequency_ppb: Option<f64>,
    pub maxerror_ns: Option<f64>,
    pub steps: u64,
    pub disruptions: u64,
    pub updates: u64,
    /// The discipline's state word ("synchronised", "holdover", …).
    pub state: Option<&'static str>,
    pub last_good: Option<Instant>,
    pub dry_run: bool,
}

/// The discipline's states as `vmtime status` prints them.
const SYNC_STATES: &[&str] = &["starting", "synchronised", "following a free-running source", "holdover"];

impl SyncMetrics {
    /// Takes the discipline's figures after an observation (`good`: of a valid source).
    pub fn discipline(&mut self, st: &vmtime_core::sync::SyncStatus, good: bool) {
        if good {
            self.last_good = Some(Instant::now());
            self.offset_ns = Some(st.offset_ns);
            self.maxerror_ns = st.source_maxerror_ns;
        }
        self.frequency_ppb = Some(st.frequency_ppb + st.slew_ppb);
        self.steps = u64::from(st.steps);
        self.disruptions = u64::from(st.disruptions);
        self.updates = st.updates;
        self.state = Some(st.state);
    }
}

impl SyncMetrics {
    /// A PTP clock measurement the servo has used (offset in ns).
    pub fn phc_measured(&mut self, offset_ns: f64) {
        self.offset_ns = Some(offset_ns);
        self.updates += 1;
        self.last_good = Some(Instant::now());
        self.state = Some("synchronised");
    }

    /// An action of the PTP servo (its steps and frequency).
    pub fn phc_action(&mut self, a: &vmtime_core::sync::SyncAction) {
        use vmtime_core::sync::SyncAction;
        match *a {
            SyncAction::Step { .. } => self.steps += 1,
            // tick: µs per 1/100 s (10 000 nominal, 100 ppm per µs); freq: 2^-16 ppm.
            SyncAction::SetFrequency { tick, freq } => {
                self.frequency_ppb = Some((tick - 10_000) as f64 * 100_000.0 + freq as f64 * 1000.0 / 65536.0)
            }
            _ => {}
        }
    }
}

impl Expose for SyncMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("sync");
        e.gauge(
            "vmtime_sync_offset_seconds",
            "Kernel clock minus the source at the last observation.",
            self.offset_ns.map(|n| n / 1e9),
        );
        e.gauge(
            "vmtime_sync_frequency_ratio",
            "Frequency correction applied to the kernel clock, as a ratio (1e-6 is 1 ppm).",
            self.frequency_ppb.map(|p| p / 1e9),
        );
        e.gauge(
            "vmtime_sync_source_maxerror_seconds",
            "The source page's maximum error at the last observation.",
            self.maxerror_ns.map(|n| n / 1e9),
        );
        e.counter("vmtime_sync_steps_total", "Steps of the kernel clock.", self.steps);
        e.counter("vmtime_sync_disruptions_total", "Disruption marker changes seen on the source.", self.disruptions);
        e.counter("vmtime_sync_updates_total", "Observations used to update the kernel clock.", self.updates);
        e.gauge(
            "vmtime_sync_holdover",
            "1 while the source is lost and the clock runs on its last frequency.",
            Some(f64::from(u8::from(self.state == Some("holdover")))),
        );
        e.state_set("vmtime_sync_state", "The discipline's state.", "state", SYNC_STATES, self.state);
        e.gauge(
            "vmtime_sync_last_good_observation_age_seconds",
            "Time since the last observation of a valid source.",
            age(now, self.last_good),
        );
        e.gauge(
            "vmtime_sync_dry_run",
            "1 when the daemon changes nothing (--dry-run).",
            Some(f64::from(u8::from(self.dry_run))),
        );
    }
}

/// Why a feed held (sent no sample, or wrote a segment without a bound): the core's reasons
/// (`vmtime_core::feed::Hold`), in its order.
pub const HOLD_REASONS: &[&str] = &[
    "unreliable",
    "no_time",
    "changed_during_measurement",
    "disrupted",
    "no_samples",
    "out_of_range",
    "unreadable",
    "realtime_stepped",
    "no_maxerror",
    "unbounded",
    "jump",
];

/// The label of a hold reason (`None`: the page could not be read).
pub fn hold_reason(h: Option<vmtime_core::feed::Hold>) -> &'static str {
    use vmtime_core::feed::Hold;
    match h {
        Some(Hold::Unreliable) => "unreliable",
        Some(Hold::NoTime) => "no_time",
        Some(Hold::ChangedDuringMeasurement) => "changed_during_measurement",
        Some(Hold::Disrupted) => "disrupted",
        Some(Hold::NoSamples) => "no_samples",
        Some(Hold::OutOfRange) => "out_of_range",
        Some(Hold::Unreadable) | None => "unreadable",
        Some(Hold::RealtimeStepped) => "realtime_stepped",
        Some(Hold::NoMaxError) => "no_maxerror",
        Some(Hold::Unbounded) => "unbounded",
        Some(Hold::Jump) => "jump",
    }
}

/// What both feeds count: their turns held by reason, and the page as they see it.
#[derive(Clone, Debug, Default)]
pub struct FeedCommon {
    /// Turns held, by [`HOLD_REASONS`] index.
    pub held: [u64; HOLD_REASONS.len()],
    /// When the page's content (seq_count or file) was last seen to change.
    pub page_changed: Option<Instant>,
    last_seq: Option<u32>,
    /// The largest gap between two turns of the loop in the last 10 s.
    pub loop_gap_max: Option<Duration>,
}

impl FeedCommon {
    /// A turn held for `reason` (`None`: the page could not be read).
    pub fn held(&mut self, reason: Option<vmtime_core::feed::Hold>) {
        let label = hold_reason(reason);
        if let Some(i) = HOLD_REASONS.iter().position(|r| *r == label) {
            self.held[i] += 1;
        }
    }

    /// The page read at a turn (its seq_count).
    pub fn page_seen(&mut self, seq: u32, now: Instant) {
        if self.last_seq != Some(seq) {
            self.last_seq = Some(seq);
            self.page_changed = Some(now);
        }
    }

    fn render(&self, feed: &str, now: Instant, e: &mut Exposition) {
        let held: Vec<(&str, u64)> = HOLD_REASONS.iter().copied().zip(self.held).collect();
        e.counters(
            &format!("vmtime_feed_{feed}_held_total"),
            "Turns that gave no time, by reason (the page unreliable, unreadable, disrupted, …).",
            "reason",
            &held,
        );
        e.gauge(
            &format!("vmtime_feed_{feed}_page_age_seconds"),
            "Time since the page's content was last seen to change (a quiet host republishes only when its clock drifts).",
            age(now, self.page_changed),
        );
        e.gauge(
            &format!("vmtime_feed_{feed}_loop_gap_max_seconds"),
            "Largest gap between two turns of the feed's loop in the last 10 s.",
            self.loop_gap_max.map(|d| d.as_secs_f64()),
        );
    }
}

/// `vmtime feed chrony`.
#[derive(Clone, Debug, Default)]
pub struct FeedChronyMetrics {
    pub common: FeedCommon,
    /// Samples chronyd's socket took.
    pub sent: u64,
    /// Samples that could not be sent (chronyd not running, its queue full).
    pub send_failures: u64,
    /// 1 while sending fails.
    pub send_failing: bool,
    /// The offset of the last sample, page − CLOCK_REALTIME, ns.
    pub last_offset_ns: Option<f64>,
    /// When chronyd last took a sample.
    pub last_sent: Option<Instant>,
}

impl Expose for FeedChronyMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("feed-chrony");
        e.counter("vmtime_feed_chrony_samples_sent_total", "Samples chronyd's SOCK socket took.", self.sent);
        e.counter(
            "vmtime_feed_chrony_send_failures_total",
            "Samples that could not be sent (chronyd not running or not listening on the socket, its queue full).",
            self.send_failures,
        );
        e.gauge(
            "vmtime_feed_chrony_send_failing",
            "1 while chronyd's socket takes no sample.",
            Some(f64::from(u8::from(self.send_failing))),
        );
        e.gauge(
            "vmtime_feed_chrony_last_offset_seconds",
            "Offset of the last sample: page time minus CLOCK_REALTIME (chrony's reference minus system time).",
            self.last_offset_ns.map(|n| n / 1e9),
        );
        e.gauge(
            "vmtime_feed_chrony_last_sample_age_seconds",
            "Time since chronyd last took a sample.",
            age(now, self.last_sent),
        );
        self.common.render("chrony", now, e);
    }
}

/// ClockBound's status names, in its order.
const CB_STATUSES: &[&str] = &["UNKNOWN", "SYNCHRONIZED", "FREE_RUNNING", "DISRUPTED"];

/// ClockBound's name for a status.
pub fn cb_status_name(s: vmtime_core::feed::clockbound::CbStatus) -> &'static str {
    use vmtime_core::feed::clockbound::CbStatus;
    match s {
        CbStatus::Unknown => "UNKNOWN",
        CbStatus::Synchronized => "SYNCHRONIZED",
        CbStatus::FreeRunning => "FREE_RUNNING",
        CbStatus::Disrupted => "DISRUPTED",
    }
}

/// `vmtime feed clockbound`.
#[derive(Clone, Debug, Default)]
pub struct FeedClockBoundMetrics {
    pub common: FeedCommon,
    /// Segments written.
    pub writes: u64,
    /// When the segment was last written.
    pub last_write: Option<Instant>,
    /// When a segment with a bound (SYNCHRONIZED or FREE_RUNNING) was last written.
    pub last_bounded: Option<Instant>,
    /// The last segment's bound, ns (0 when it carries none).
    pub bound_ns: Option<i64>,
    /// The last segment's drift, ppb.
    pub drift_ppb: Option<u32>,
    /// The last segment's status.
    pub status: Option<&'static str>,
}

impl FeedClockBoundMetrics {
    /// A segment just written.
    pub fn written(&mut self, eb: &vmtime_core::feed::clockbound::ErrorBound, now: Instant) {
        use vmtime_core::feed::clockbound::CbStatus;
        self.writes += 1;
        self.last_write = Some(now);
        self.bound_ns = Some(eb.bound_ns);
        self.drift_ppb = Some(eb.max_drift_ppb);
        self.status = Some(cb_status_name(eb.status));
        if matches!(eb.status, CbStatus::Synchronized | CbStatus::FreeRunning) {
            self.last_bounded = Some(now);
        }
    }
}

impl Expose for FeedClockBoundMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("feed-clockbound");
        e.counter("vmtime_feed_clockbound_segment_writes_total", "Updates of ClockBound's segment.", self.writes);
        e.gauge(
            "vmtime_feed_clockbound_segment_age_seconds",
            "Time since the segment was last written.",
            age(now, self.last_write),
        );
        e.gauge(
            "vmtime_feed_clockbound_last_bounded_age_seconds",
            "Time since a segment with a bound (SYNCHRONIZED or FREE_RUNNING) was last written.",
            age(now, self.last_bounded),
        );
        e.gauge(
            "vmtime_feed_clockbound_bound_seconds",
            "The last segment's bound on CLOCK_REALTIME's error at its as_of (0: none).",
            self.bound_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            "vmtime_feed_clockbound_drift_ratio",
            "The last segment's growth of the bound per second (1e-6 is 1 ppm).",
            self.drift_ppb.map(|p| f64::from(p) / 1e9),
        );
        e.state_set(
            "vmtime_feed_clockbound_status",
            "The last segment's clock status.",
            "status",
            CB_STATUSES,
            self.status,
        );
        self.common.render("clockbound", now, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Answer::Metrics { head_only: false });
        assert_eq!(route("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"), Answer::Metrics { head_only: true });
        assert_eq!(route("GET /other HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Answer::BadMethod);
        assert_eq!(route("GET /metrics\r\n\r\n"), Answer::Bad);
        assert_eq!(route("GET /metrics SPDY/3\r\n\r\n"), Answer::Bad);
    }

    #[test]
    fn values_and_families() {
        let t0 = Instant::now();
        let m = HostMetrics {
            published: 12,
            last_publish: Some(t0),
            maxerror_ns: Some(1_500),
            status: Some("SYNCHRONIZED"),
            ..Default::default()
        };
        let text = render(&m, t0 + Duration::from_millis(250));
        assert!(text.contains("\nvmtime_host_page_age_seconds 0.25\n"), "{text}");
        assert!(
            text.contains("# TYPE vmtime_host_pages_published_total counter\nvmtime_host_pages_published_total 12\n")
        );
        assert!(text.contains("\nvmtime_host_page_maxerror_seconds 0.0000015\n"));
        assert!(text.contains("vmtime_host_clock_status{status=\"SYNCHRONIZED\"} 1\n"));
        assert!(text.contains("vmtime_host_clock_status{status=\"FREERUNNING\"} 0\n"));
        // Unknown values are left out, not written as 0.
        assert!(!text.contains("vmtime_host_page_esterror_seconds"));
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn feed_figures_by_reason_and_status() {
        use vmtime_core::feed::clockbound::{CbStatus, ErrorBound};
        use vmtime_core::feed::Hold;
        let t0 = Instant::now();
        let mut m = FeedChronyMetrics { sent: 3, last_offset_ns: Some(-2500.0), ..Default::default() };
        m.common.held(Some(Hold::Disrupted));
        m.common.held(Some(Hold::Disrupted));
        m.common.held(None);
        m.common.page_seen(4, t0);
        m.common.page_seen(4, t0 + Duration::from_secs(3)); // unchanged: the age keeps growing
        let text = render(&m, t0 + Duration::from_secs(5));
        assert!(text.contains("\nvmtime_feed_chrony_samples_sent_total 3\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_held_total{reason=\"disrupted\"} 2\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_held_total{reason=\"unreadable\"} 1\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_held_total{reason=\"unreliable\"} 0\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_last_offset_seconds -0.0000025\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_page_age_seconds 5\n"), "{text}");
        assert!(!text.contains("last_sample_age"), "nothing sent yet is left out: {text}");

        let mut c = FeedClockBoundMetrics::default();
        let eb = ErrorBound {
            as_of_ns: 0,
            void_after_ns: 1,
            bound_ns: 1_500,
            disruption_marker: 0,
            max_drift_ppb: 16_000,
            status: CbStatus::FreeRunning,
            disruption_support: false,
        };
        c.written(&eb, t0);
        c.written(&ErrorBound { status: CbStatus::Disrupted, bound_ns: 0, ..eb }, t0 + Duration::from_secs(1));
        let text = render(&c, t0 + Duration::from_secs(2));
        assert!(text.contains("\nvmtime_feed_clockbound_segment_writes_total 2\n"), "{text}");
        assert!(text.contains("vmtime_feed_clockbound_status{status=\"DISRUPTED\"} 1\n"), "{text}");
        assert!(text.contains("vmtime_feed_clockbound_status{status=\"FREE_RUNNING\"} 0\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_clockbound_last_bounded_age_seconds 2\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_clockbound_segment_age_seconds 1\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_clockbound_drift_ratio 0.000016\n"), "{text}");
    }

    #[test]
    fn the_phc_servos_actions_count() {
        use vmtime_core::sync::SyncAction;
        let mut m = SyncMetrics::default();
        m.phc_action(&SyncAction::Step { delta_ns: 5 });
        m.phc_action(&SyncAction::SetFrequency { tick: 10_001, freq: 65_536 });
        m.phc_measured(-12.5);
        assert_eq!((m.steps, m.updates, m.frequency_ppb, m.offset_ns), (1, 1, Some(101_000.0), Some(-12.5)));
        let text = render(&m, Instant::now());
        assert!(text.contains("\nvmtime_sync_frequency_ratio 0.000101\n"), "{text}");
        assert!(text.contains("vmtime_sync_state{state=\"synchronised\"} 1\n"));
    }

    #[test]
    fn the_gap_window_forgets_after_ten_seconds() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = GapWindow::new(t0);
        w.turn(t0);
        w.turn(t0 + ms(10));
        w.turn(t0 + ms(510)); // a 500 ms stall in second 0
        for i in 1..=30 {
            w.turn(t0 + ms(510 + 10 * i));
        }
        assert_eq!(w.max(t0 + ms(900)), ms(500));
        // Ten seconds on, with 10 ms turns meanwhile, the stall has left the window.
        let mut t = t0 + ms(810);
        while t < t0 + ms(10_500) {
            t += ms(10);
            w.turn(t);
        }
        assert_eq!(w.max(t), ms(10));
        w.turn(t + ms(250));
        assert_eq!(w.max(t + ms(250)), ms(250));
    }

    #[test]
    fn offer_never_blocks_while_the_server_copies() {
        let b = Board::new(SyncMetrics::default());
        let guard = b.inner.lock().unwrap();
        assert!(!b.offer(&SyncMetrics { steps: 3, ..Default::default() }));
        drop(guard);
        assert!(b.offer(&SyncMetrics { steps: 4, ..Default::default() }));
        assert_eq!(b.read().steps, 4);
    }

    #[test]
    fn serves_bounded_requests() {
        let b = Board::new(SyncMetrics { steps: 2, dry_run: true, ..Default::default() });
        let addr = serve("127.0.0.1:0".parse().unwrap(), b.clone()).unwrap();
        let text = scrape(addr).unwrap();
        assert!(text.contains("vmtime_sync_steps_total 2\n"), "{text}");
        assert!(text.contains("vmtime_sync_dry_run 1\n"));
        b.offer(&SyncMetrics { steps: 5, ..Default::default() });
        assert!(scrape(addr).unwrap().contains("vmtime_sync_steps_total 5\n"));

        // An oversized head is refused with 400, not read forever.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let junk = vec![b'a'; MAX_REQUEST + 10];
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
        let _ = s.write_all(&junk);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");

        // Unknown paths: 404.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /admin HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }

    #[test]
    fn connections_are_limited_and_silent_clients_time_out() {
        let b = Board::new(RelayMetrics { relayed: 9, ..Default::default() });
        let addr = serve("127.0.0.1:0".parse().unwrap(), b).unwrap();
        let started = Instant::now();
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // Every slot is held by a client that sends nothing: the next one is refused at once.
        let mut extra = TcpStream::connect(addr).unwrap();
        let mut out = String::new();
        extra.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        // The server closes each silent client after IO_TIMEOUT (the slot is freed before the
        // close, so a client that has seen the close can count on it).
        for mut c in &silent {
            let mut buf = Vec::new();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.read_to_end(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"));
        }
        let waited = started.elapsed();
        assert!(waited >= IO_TIMEOUT && waited < IO_TIMEOUT + Duration::from_secs(3), "{waited:?}");
        assert!(scrape(addr).unwrap().contains("vmtime_relay_guest_pages_total 9\n"));
    }
}
