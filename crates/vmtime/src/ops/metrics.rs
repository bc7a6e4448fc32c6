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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::figures::{RelayMetrics, SyncMetrics};

    #[test]
    fn values_in_the_expositions_spelling() {
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(0.25), "0.25");
    }

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
