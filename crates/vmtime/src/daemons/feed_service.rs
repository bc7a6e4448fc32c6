//! The feeds as services: their pace (one turn per interval, woken early by signals and by the
//! watchdog), systemd's READY/STATUS/WATCHDOG (crate::ops::systemd), the metrics they offer
//! (crate::ops::metrics) and their SIGHUP. The feeds' own work stays in crate::daemons::feed.

use crate::ops::metrics::{Board, Expose, FeedChronyMetrics, FeedClockBoundMetrics, FeedCommon, GapWindow};
use crate::ops::systemd::Supervisor;
use anyhow::Result;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vmtime_core::cadence::{Cadence, Markers};
use vmtime_sys::serve::Poller;
use vmtime_sys::signals::{SignalEvent, Signals};

/// Why [`Service::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Time for the next turn.
    Turn,
    /// SIGHUP: re-read the configuration, then wait again.
    Reload,
    /// Stop, for this reason (a signal's name, or "--duration-s elapsed").
    Stop(&'static str),
}

/// The figures of a feed, with the part both feeds share.
pub trait FeedFigures: Expose {
    fn common(&mut self) -> &mut FeedCommon;
}

impl FeedFigures for FeedChronyMetrics {
    fn common(&mut self) -> &mut FeedCommon {
        &mut self.common
    }
}

impl FeedFigures for FeedClockBoundMetrics {
    fn common(&mut self) -> &mut FeedCommon {
        &mut self.common
    }
}

/// A feed's service side: its figures (`m`, updated by the loop), the metrics board they are
/// offered to, the supervisor and the pace.
#[derive(Debug)]
pub struct Service<M: FeedFigures> {
    /// The figures: the loop updates them, [`Service::turned`] offers them.
    pub m: M,
    board: Board<M>,
    sup: Supervisor,
    signals: Signals,
    poller: Poller,
    /// The slot of the last turn: the next one is an interval later.
    slot: Instant,
    interval: Duration,
    end: Option<Instant>,
    gaps: GapWindow,
    status: String,
    /// The checks of the page's markers between turns.
    cadence: Cadence,
}

impl<M: FeedFigures> Service<M> {
    /// Serves the metrics when `listen` is set (a busy address stops the feed here), installs
    /// the signal handlers and starts the pace: the first turn is now.
    pub fn start(listen: Option<SocketAddr>, m: M, interval: Duration, duration_s: Option<u64>) -> Result<Self> {
        let board = Board::new(m.clone());
        crate::ops::metrics::start(listen, &board)?;
        let now = Instant::now();
        Ok(Service {
            m,
            board,
            sup: Supervisor::new(),
            signals: Signals::install()?,
            poller: Poller::new(),
            slot: now,
            interval,
            end: duration_s.and_then(|d| now.checked_add(Duration::from_secs(d))),
            gaps: GapWindow::new(now),
            status: String::new(),
            cadence: Cadence::default(),
        })
    }

    /// After each turn: offers the figures to the metrics server (never waiting for it), says
    /// READY=1 after the first turn, and STATUS when `status` changed.
    pub fn turned(&mut self, status: &str) {
        let now = Instant::now();
        self.gaps.turn(now);
        self.m.common().loop_gap_max = Some(self.gaps.max(now));
        self.board.offer(&self.m);
        if self.status != status {
            self.status = status.to_string();
            self.sup.status(status); // before READY: not sent; READY carries it
            self.sup.ready(status);
        }
        self.sup.tick();
    }

    /// A new interval (SIGHUP): the next turn is that long after the last one.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// The markers of the page a turn just read in full: the checks compare with them.
    pub fn seen(&mut self, m: Markers) {
        self.cadence.seen(m);
    }

    /// Waits for the next turn, a signal or the end, pinging the watchdog meanwhile (a feed at
    /// one sample an hour still pings every few seconds). A late turn (suspended, overloaded)
    /// is taken at once and the next one an interval after it: no burst of catch-up turns.
    /// Meanwhile the page's markers are checked at the cadence (`markers` reads them: loads from
    /// the mapped page): a disruption, or any update while one is `pending`, is a turn at once
    /// (and the next one an interval after it).
    pub fn wait(&mut self, mut markers: impl FnMut() -> Option<Markers>, pending: bool) -> Result<Wake> {
        loop {
            let now = Instant::now();
            if self.end.is_some_and(|e| now >= e) {
                return Ok(Wake::Stop("--duration-s elapsed"));
            }
            let next = self.slot + self.interval;
            if now >= next {
                self.slot = if now >= next + self.interval { now } else { next };
                return Ok(Wake::Turn);
            }
            let mono = mono_ns()?;
            if self.cadence.due(mono) && self.cadence.look(mono, markers()).observe_now(pending) {
                self.slot = now;
                return Ok(Wake::Turn);
            }
            self.sup.tick();
            let mut until = next;
            if let Some(t) = self.cadence.next_check_ns(mono) {
                until = until.min(now + std::time::Duration::from_nanos((t - mono).max(0) as u64));
            }
            if let Some(e) = self.end {
                until = until.min(e);
            }
            if let Some(p) = self.sup.tick_within() {
                until = until.min(now + p);
            }
            self.poller.clear();
            self.signals.register(&mut self.poller);
            self.poller.wait(Some(until.saturating_duration_since(now)))?;
            match self.signals.take(&self.poller) {
                Some(SignalEvent::Terminate(name)) => return Ok(Wake::Stop(name)),
                Some(SignalEvent::Reload) => return Ok(Wake::Reload),
                None => {}
            }
        }
    }

    /// STOPPING=1.
    pub fn stopping(&self) {
        self.sup.stopping();
    }
}

/// CLOCK_MONOTONIC, ns (the cadence's clock; vDSO, no system call).
fn mono_ns() -> Result<i128> {
    Ok(vmtime_sys::gettime(vmtime_sys::clock::ClockId::Monotonic)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_follows_a_new_interval_and_skips_missed_turns() {
        let mut s = Service::start(None, FeedChronyMetrics::default(), Duration::from_secs(3600), None).unwrap();
        // An hour between turns, then 5 ms: the next turn comes 5 ms after the first.
        s.set_interval(Duration::from_millis(5));
        let t0 = s.slot;
        for i in 1..=3 {
            assert_eq!(s.wait(|| None, false).unwrap(), Wake::Turn);
            assert!(Instant::now() >= t0 + Duration::from_millis(5 * i), "never early");
        }
        // Late by far more than an interval: one turn at once, the next an interval after it.
        s.slot = s.slot.checked_sub(Duration::from_secs(10)).expect("up for 10 s");
        let before = Instant::now();
        assert_eq!(s.wait(|| None, false).unwrap(), Wake::Turn);
        assert!(s.slot >= before, "no catch-up turns");
        // --duration-s: the end stops the wait.
        s.end = Some(Instant::now());
        assert_eq!(s.wait(|| None, false).unwrap(), Wake::Stop("--duration-s elapsed"));
    }
}
