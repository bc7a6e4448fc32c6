//! The one runtime of every daemon (`host`, `relay`, `sync` on each of its sources, both feeds).
//!
//! It owns what every daemon needs and none decides: the poll loop; the signals (SIGTERM and
//! SIGINT stop the run at once, SIGHUP re-reads the settings: flags over the file, the live keys
//! applied, the others named as needing a restart); the control socket (`vmtime status`); the
//! metrics endpoint; systemd's READY, STATUS and WATCHDOG (pinged on its own schedule, however
//! far apart the daemon's turns are); the log level; and the end of a run (`--duration-s`).
//!
//! A daemon supplies a [`Daemon`]: when its next turn is due, the descriptors that wake it, one
//! turn, its answers to requests beyond `status`, and how it takes new settings. Its figures are
//! one typed struct ([`Figures`]) rendered both as the `status` answer and as the metrics.
//!
//! ```no_run
//! # use vmtime::ops::runtime::{Daemon, Figures, Flow, RunFigures, Runtime, Turn};
//! # use vmtime::ops::metrics::{Expose, Exposition};
//! # use std::time::{Duration, Instant};
//! # use vmtime::ops::config::FeedChronySettings as MySettings;
//! #[derive(Clone, Debug, Default)]
//! struct Counted { turns: u64, run: RunFigures }
//! impl Expose for Counted {
//!     fn render(&self, _now: Instant, e: &mut Exposition) {
//!         e.counter("example_turns_total", "Turns taken.", self.turns);
//!     }
//! }
//! impl Figures for Counted {
//!     fn run(&mut self) -> &mut RunFigures { &mut self.run }
//!     fn status(&self, _now: Instant) -> serde_json::Value { serde_json::json!({ "turns": self.turns }) }
//!     fn status_line(&self, line: &mut String) {
//!         if self.turns > 0 { line.push_str("ticking") }
//!     }
//! }
//! struct Ticker { next: Instant, f: Counted }
//! impl Daemon for Ticker {
//!     type Settings = MySettings;
//!     type Figures = Counted;
//!     const NAME: &'static str = "feed chrony";
//!     const LIVE: &'static [&'static str] = &["log_level"];
//!     fn next_turn(&self) -> Option<Instant> { Some(self.next) }
//!     fn turn(&mut self, t: &mut Turn<'_>) -> anyhow::Result<Flow> {
//!         if t.due() {
//!             self.f.turns += 1;
//!             self.next = t.now() + Duration::from_secs(1);
//!         }
//!         Ok(Flow::Continue)
//!     }
//!     fn reconfigure(&mut self, _s: &MySettings) {}
//!     fn figures(&mut self) -> &mut Counted { &mut self.f }
//! }
//! # fn main() -> anyhow::Result<()> {
//! let settings = MySettings::default();
//! let rt = Runtime::start(settings.clone(), move || Ok(settings.clone()), "/tmp/example.sock".as_ref())?;
//! let mut d = Ticker { next: Instant::now(), f: Counted::default() };
//! let _exit = rt.run(&mut d)?; // until SIGTERM, SIGINT or --duration-s
//! # Ok(()) }
//! ```

use crate::ops::config::LogLevel;
use crate::ops::control::ServerView;
use crate::ops::metrics::{Board, Expose, GapWindow};
use crate::ops::systemd::Supervisor;
use crate::ops::{config, logging, metrics};
use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmtime_sys::serve::{self, Poller, Reply, Server, ServerStats, Token};
use vmtime_sys::signals::{SignalEvent, Signals};

/// The keys every daemon's settings have, which the runtime applies.
pub trait Settings: Serialize + DeserializeOwned + Clone {
    fn log_level(&self) -> LogLevel;
    fn metrics_listen(&self) -> Option<SocketAddr>;
    /// `--duration-s`: the run ends this long after its start.
    fn duration_s(&self) -> Option<u64>;
}

/// What the runtime knows of a run, kept in each daemon's figures (the metrics thread and the
/// `status` answer read it there).
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    /// The largest gap between two turns of the loop in the last 10 s.
    pub loop_gap_max: Option<Duration>,
    /// Subscribers to the control socket's notifications.
    pub subscribers: usize,
    /// The control socket's counters.
    pub server: ServerStats,
    /// SIGHUPs received (each one a reload request).
    pub reload_requests: u64,
    /// Changes re-read on SIGHUP that wait for a restart ("key = new (in force: old)").
    pub restart_needed: Vec<String>,
    /// When the run started.
    pub started: Option<Instant>,
}

impl RunFigures {
    /// The keys of the `status` answer every daemon has.
    fn status(&self, role: &str, now: Instant) -> serde_json::Map<String, serde_json::Value> {
        let s = self.server;
        let v = serde_json::json!({
            "role": role,
            "reload_requests": self.reload_requests,
            "restart_needed": self.restart_needed,
            "subscribers": self.subscribers,
            "uptime_s": self.started.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            "server": {
                "accepted": s.accepted,
                "answered": s.answered,
                "refused_busy": s.refused_busy,
                "timed_out": s.timed_out,
                "too_long": s.too_long,
                "dropped_subscribers": s.dropped_subscribers,
                "accept_failures": s.accept_failures,
            },
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("a JSON object"),
        }
    }
}

/// A daemon's figures: one struct, rendered as its metrics ([`Expose`]) and as its `status`.
pub trait Figures: Expose + std::fmt::Debug {
    /// The runtime's part.
    fn run(&mut self) -> &mut RunFigures;
    /// The daemon's own keys of the `status` answer (a JSON object); the runtime adds `role`,
    /// `reload_requests`, `restart_needed`, `subscribers`, `uptime_s` and `server`.
    fn status(&self, now: Instant) -> serde_json::Value;
    /// Its STATUS line for systemd, written into `line` (given empty); left empty until its
    /// first useful work (the first line is sent with READY=1).
    fn status_line(&self, line: &mut String);
}

/// Whether a turn ends the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End the run with this exit status.
    Stop(u8),
}

/// What a turn sees: why it was woken, and the control socket's subscribers to notify.
#[derive(Debug)]
pub struct Turn<'a> {
    poller: &'a Poller,
    server: &'a mut Server,
    now: Instant,
    due: bool,
}

impl Turn<'_> {
    /// The time of the wake-up.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// The turn's time ([`Daemon::next_turn`]) has come.
    pub fn due(&self) -> bool {
        self.due
    }
    /// One of the daemon's descriptors ([`Daemon::register`]) is readable.
    pub fn readable(&self, t: Token) -> bool {
        self.poller.readable(t)
    }
    /// Tells the control socket's subscribers of a new `seq_count` (never blocks).
    pub fn notify(&mut self, seq: u32) {
        self.server.notify(seq);
    }
}

/// An answer to a control request.
#[derive(Debug)]
pub enum Answer {
    /// The `status` answer (after what the request did).
    Status,
    /// This reply.
    Reply(Reply),
    /// Not a request of this daemon.
    Unknown,
}

/// What a daemon supplies to the runtime.
pub trait Daemon {
    type Settings: Settings;
    type Figures: Figures;
    /// Its name after `vmtime` (log lines, the status `role` is its first word).
    const NAME: &'static str;
    /// The settings keys it applies on SIGHUP without a restart.
    const LIVE: &'static [&'static str];
    /// What a stop on a signal leaves behind, in words, for the log line.
    const STOPPED: &'static str = "";
    /// The requests it answers, in words, for the reply to an unknown one.
    const REQUESTS: &'static str = "status";

    /// When its next turn is due (None: only when one of its descriptors wakes it).
    fn next_turn(&self) -> Option<Instant>;
    /// When it next wants a *look* between turns (None: no look): something cheap, such as a
    /// page's markers, that mostly finds nothing. A look costs the wake-up and what
    /// [`Daemon::look`] does, nothing else: the runtime waits again on the same descriptors
    /// without a turn and without its own bookkeeping (at rest, most wake-ups are looks).
    fn next_look(&self) -> Option<Instant> {
        None
    }
    /// The look, at its time ([`Daemon::next_look`]): `true` when it found something a turn
    /// must handle now (the turn follows at once).
    fn look(&mut self, _now: Instant) -> bool {
        false
    }
    /// Adds the descriptors that wake it (a subscription, a device) to the next wait.
    fn register(&mut self, _poller: &mut Poller) {}
    /// One turn: its time came, or one of its descriptors (or a request, a signal) woke the
    /// loop. [`Flow::Stop`] ends the run.
    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow>;
    /// A control request other than `status`.
    fn answer(&mut self, _request: &str) -> Answer {
        Answer::Unknown
    }
    /// New settings (SIGHUP), the live keys changed.
    fn reconfigure(&mut self, settings: &Self::Settings);
    /// Its figures (also its STATUS line for systemd: [`Figures::status_line`]).
    fn figures(&mut self) -> &mut Self::Figures;
    /// The end of the run (`why`: a signal's name, or "--duration-s elapsed"): its last words.
    fn stop(&mut self, _why: &str) -> Result<()> {
        Ok(())
    }
}

/// A daemon's run, from its start to its end.
#[derive(Debug)]
pub struct Runtime<S: Settings> {
    settings: S,
    reread: fn_box::Reread<S>,
    server: Server,
    socket: PathBuf,
    signals: Signals,
    supervisor: Supervisor,
    poller: Poller,
    /// `--duration-s`, counted from the first turn.
    duration: Option<Duration>,
    end: Option<Instant>,
    run: RunFigures,
    gaps: GapWindow,
}

mod fn_box {
    /// The settings read again (flags over the file over the defaults).
    pub struct Reread<S>(pub Box<dyn Fn() -> anyhow::Result<S>>);
    impl<S> std::fmt::Debug for Reread<S> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Reread")
        }
    }
}

impl<S: Settings> Runtime<S> {
    /// Starts a run: installs the signal handlers (first: a SIGTERM from now on stops the run
    /// cleanly), sets the log level, binds the control socket at `socket`. `reread` reads the
    /// settings again on SIGHUP (an error keeps those in force).
    pub fn start(settings: S, reread: impl Fn() -> Result<S> + 'static, socket: &Path) -> Result<Self> {
        let signals = Signals::install()?;
        logging::set_level(settings.log_level());
        let server = Server::bind_unix(socket, 0o600, None, serve::Limits::default())?;
        let now = Instant::now();
        Ok(Runtime {
            duration: settings.duration_s().map(Duration::from_secs),
            end: None,
            settings,
            reread: fn_box::Reread(Box::new(reread)),
            server,
            socket: socket.to_path_buf(),
            signals,
            supervisor: Supervisor::from_env(),
            poller: Poller::new(),
            run: RunFigures { started: Some(now), ..RunFigures::default() },
            gaps: GapWindow::new(now),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &S {
        &self.settings
    }

    /// Another supervisor than the environment's (tests).
    pub fn with_supervisor(mut self, s: Supervisor) -> Self {
        self.supervisor = s;
        self
    }

    /// SIGHUP: the settings re-read, the live keys applied (the log level here, the rest by the
    /// daemon), the others named as needing a restart.
    fn reload<D: Daemon<Settings = S>>(&mut self, d: &mut D) {
        self.run.reload_requests += 1;
        let reread = (self.reread.0)();
        if let Some((now, restart)) = config::on_sighup(D::NAME, &self.settings, reread, D::LIVE) {
            logging::set_level(now.log_level());
            d.reconfigure(&now);
            self.run.restart_needed = restart;
            self.settings = now;
        }
    }

    /// Runs `d` to the end of the run; its exit status.
    pub fn run<D: Daemon<Settings = S>>(mut self, d: &mut D) -> Result<ExitCode> {
        let board = Board::new(d.figures().clone());
        metrics::start(self.settings.metrics_listen(), &board)?;
        tracing::info!("control socket {} (vmtime status --socket PATH)", self.socket.display());
        let role = D::NAME.split(' ').next().unwrap_or(D::NAME);
        let mut line = String::new();
        let code = loop {
            let due = d.next_turn();
            self.poller.clear();
            self.signals.register(&mut self.poller);
            self.server.register(&mut self.poller);
            d.register(&mut self.poller);
            let deadline =
                [due, self.server.next_deadline(), self.supervisor.next_ping(), self.end].into_iter().flatten().min();
            // Looks that find nothing wait again on the same descriptors: no turn, no bookkeeping.
            let mut again = false;
            loop {
                let look = d.next_look();
                let wake = [deadline, look].into_iter().flatten().min();
                let timeout = wake.map(|w| w.saturating_duration_since(Instant::now()));
                if again {
                    self.poller.wait_again(timeout)?;
                } else {
                    self.poller.wait(timeout)?;
                    again = true;
                }
                if self.poller.any_ready() {
                    break;
                }
                let now = Instant::now();
                if deadline.is_some_and(|w| now >= w) || (look.is_some_and(|l| now >= l) && d.look(now)) {
                    break;
                }
            }
            match self.signals.take(&self.poller) {
                Some(SignalEvent::Terminate(name)) => {
                    if !D::STOPPED.is_empty() {
                        tracing::info!("{name}: stopping ({})", D::STOPPED);
                    }
                    d.stop(name)?;
                    break 0;
                }
                Some(SignalEvent::Reload) => self.reload(d),
                None => {}
            }
            let now = Instant::now();
            let mut t =
                Turn { poller: &self.poller, server: &mut self.server, now, due: due.is_some_and(|due| now >= due) };
            if let Flow::Stop(code) = d.turn(&mut t)? {
                break code;
            }
            if self.end.is_none() {
                // The run's length counts from the first turn (the daemon's start is done).
                self.end = self.duration.and_then(|d| Instant::now().checked_add(d));
            }
            self.gaps.turn(now);
            self.run.loop_gap_max = Some(self.gaps.max(now));
            let view = ServerView::of(&self.server);
            let run = &self.run;
            self.server.handle(&self.poller, |line| {
                let request = line.trim();
                let answer = if request == "status" { Answer::Status } else { d.answer(request) };
                match answer {
                    Answer::Reply(r) => r,
                    Answer::Status => {
                        let mut run = run.clone();
                        run.subscribers = view.subscribers;
                        run.server = view.stats;
                        Reply::Line(status_json(role, &run, d.figures(), Instant::now()).to_string())
                    }
                    Answer::Unknown => Reply::Line(serve::error_json(&format!(
                        "unknown request {}: send {}",
                        serde_json::Value::from(request.chars().take(64).collect::<String>()),
                        D::REQUESTS
                    ))),
                }
            });
            self.run.subscribers = self.server.subscribers();
            self.run.server = self.server.stats();
            d.figures().run().clone_from(&self.run);
            board.offer(d.figures());
            line.clear();
            d.figures().status_line(&mut line);
            if !line.is_empty() {
                self.supervisor.status(&line);
            }
            self.supervisor.tick(Instant::now());
            // The end comes after a turn due at the same time (a last page, a last sample).
            if self.end.is_some_and(|e| Instant::now() >= e) {
                d.stop("--duration-s elapsed")?;
                break 0;
            }
        };
        self.supervisor.stopping();
        drop(self.server); // removes our socket (only if it is still ours)
        Ok(ExitCode::from(code))
    }
}

/// A fixed pace: a turn every interval, the first at once. A late turn (the machine suspended
/// or overloaded) is taken at once and the next one an interval after it: no burst of catch-up
/// turns.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    next: Instant,
    interval: Duration,
}

impl Pace {
    pub fn new(first: Instant, interval: Duration) -> Self {
        Pace { next: first, interval }
    }

    /// When the next turn is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// A turn taken at `now`.
    pub fn turned(&mut self, now: Instant) {
        self.next = if now >= self.next + self.interval { now + self.interval } else { self.next + self.interval };
    }

    /// A turn taken at `now` out of pace (something urgent): the next one an interval after it.
    pub fn restart(&mut self, now: Instant) {
        self.next = now + self.interval;
    }

    /// A new interval: the next turn is that long after the last one.
    pub fn set_interval(&mut self, interval: Duration) {
        if let Some(last) = self.next.checked_sub(self.interval) {
            self.next = last + interval;
        }
        self.interval = interval;
    }
}

/// The `status` answer: the runtime's keys and the daemon's.
pub fn status_json<F: Figures>(role: &str, run: &RunFigures, f: &F, now: Instant) -> serde_json::Value {
    let mut m = run.status(role, now);
    if let serde_json::Value::Object(own) = f.status(now) {
        m.extend(own);
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::SyncSettings;
    use crate::ops::metrics::Exposition;
    use std::os::unix::net::UnixDatagram;

    #[derive(Clone, Debug, Default)]
    struct Measured {
        updates: u64,
        run: RunFigures,
    }
    impl Expose for Measured {
        fn render(&self, _now: Instant, e: &mut Exposition) {
            e.counter("vmtime_test_updates_total", "Updates.", self.updates);
        }
    }
    impl Figures for Measured {
        fn run(&mut self) -> &mut RunFigures {
            &mut self.run
        }
        fn status(&self, _now: Instant) -> serde_json::Value {
            serde_json::json!({ "updates": self.updates })
        }
        fn status_line(&self, line: &mut String) {
            if self.updates > 0 {
                line.push_str("following /dev/ptp0");
            }
        }
    }

    /// A daemon on a PTP clock's pace: one measurement per `interval_ms` (here 600 s, the
    /// longest allowed), like `vmtime sync` on a PHC.
    struct SlowPhc {
        next: Instant,
        interval: Duration,
        f: Measured,
    }
    impl Daemon for SlowPhc {
        type Settings = SyncSettings;
        type Figures = Measured;
        const NAME: &'static str = "sync";
        const LIVE: &'static [&'static str] = &["log_level"];
        fn next_turn(&self) -> Option<Instant> {
            Some(self.next)
        }
        fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
            if t.due() {
                self.f.updates += 1;
                self.next = t.now() + self.interval;
            }
            Ok(Flow::Continue)
        }
        fn reconfigure(&mut self, _s: &SyncSettings) {}
        fn figures(&mut self) -> &mut Measured {
            &mut self.f
        }
    }

    #[test]
    fn the_pace_follows_a_new_interval_and_skips_missed_turns() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pace::new(t0, Duration::from_secs(3600));
        assert_eq!(p.next(), t0, "the first turn at once");
        p.turned(t0);
        // An hour between turns, then 5 ms: the next turn comes 5 ms after the last one.
        p.set_interval(ms(5));
        assert_eq!(p.next(), t0 + ms(5));
        p.turned(t0 + ms(6));
        assert_eq!(p.next(), t0 + ms(10), "a little late: the pace is kept");
        // Late by far more than an interval: one turn at once, the next an interval after it.
        p.turned(t0 + ms(10_000));
        assert_eq!(p.next(), t0 + ms(10_005), "no catch-up turns");
    }

    /// The PHC path's defects, gone by construction: READY after the first measurement, the
    /// watchdog pinged at half its timeout though the next measurement is 600 s away, and a
    /// control socket that answers `status`.
    #[test]
    fn a_daemon_with_a_long_interval_is_ready_pings_the_watchdog_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify");
        let listener = UnixDatagram::bind(&notify).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let socket = dir.path().join("sync.sock");
        let settings = SyncSettings { duration_s: crate::values::DurationS::new(2), ..SyncSettings::default() };
        let s2 = settings.clone();
        let rt = Runtime::start(settings, move || Ok(s2.clone()), &socket)
            .unwrap()
            .with_supervisor(Supervisor::new(Some(notify.display().to_string()), Some(Duration::from_millis(400))));
        let asker = {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let (line, _) = serve::request(&socket, "status", Duration::from_secs(5)).unwrap();
                serde_json::from_str::<serde_json::Value>(&line).unwrap()
            })
        };
        // The notifications, read as they come (as systemd does).
        let reader = std::thread::spawn(move || {
            let mut msgs = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = listener.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                let last = m.contains("STOPPING=1");
                msgs.push(m);
                if last {
                    break;
                }
            }
            msgs
        });
        let mut d = SlowPhc { next: Instant::now(), interval: Duration::from_secs(600), f: Measured::default() };
        let started = Instant::now();
        let code = rt.run(&mut d).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(started.elapsed() < Duration::from_secs(4), "--duration-s ends the run");
        assert_eq!(d.f.updates, 1, "one measurement: the next is 600 s away");
        let status = asker.join().unwrap();
        assert_eq!((status["role"].as_str(), status["updates"].as_u64()), (Some("sync"), Some(1)), "{status}");
        // READY first, then pings every 100 ms (a quarter of the timeout) for 2 s, then STOPPING.
        let msgs = reader.join().unwrap();
        assert!(msgs[0].starts_with("READY=1\nSTATUS=following /dev/ptp0"), "{msgs:?}");
        let pings = msgs.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
        assert!(pings >= 10, "{pings} pings in 2 s at a 400 ms watchdog: {msgs:?}");
    }
}
