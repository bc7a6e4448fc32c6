//! The daemons: each one's decisions and wiring.

pub mod crosscheck;
pub mod feed;
pub mod host;
pub mod relay;
pub mod sync;

use std::time::{Duration, Instant};
use vmtime_core::cadence::Cadence;

/// CLOCK_MONOTONIC, ns (the marker checks' clock; vDSO, no system call).
pub(crate) fn mono_ns() -> std::io::Result<i128> {
    vmtime_sys::gettime(vmtime_sys::clock::ClockId::Monotonic)
}

/// When `cadence` next wants the page's markers checked, as an instant (None: no check due).
pub(crate) fn next_check(cadence: &Cadence) -> Option<Instant> {
    let mono = mono_ns().ok()?;
    let t = cadence.next_check_ns(mono)?;
    Some(Instant::now() + Duration::from_nanos((t - mono).max(0) as u64))
}

/// A daemon's pace: a turn every interval; between turns a page's markers are looked at, at the
/// cadence (loads from the mapped page; none while its device notifies), and a disruption, or
/// any update while one is pending, is a turn at once (the next one an interval after it). The
/// feeds', and sync's on a PTP clock or on a page of markers only; without a page, turns only.
pub(crate) struct MarkerPace {
    pace: crate::ops::runtime::Pace,
    pub(crate) cadence: Cadence,
    /// A look between turns ([`MarkerPace::look`]) said observe now.
    looked: bool,
    /// The device's notifications (7.0+ driver): no looks while it gives them.
    notes: crate::daemons::sync::DeviceNotes,
    t_note: Option<vmtime_sys::serve::Token>,
}

impl MarkerPace {
    /// The pace of a daemon watching `page` (opened from `source`), notified by the device when
    /// it notifies; `None`: a turn every interval and no looks.
    pub(crate) fn new(
        interval: Duration,
        page: Option<&vmtime_sys::follow::FollowedPage>,
        source: &std::path::Path,
    ) -> Self {
        use crate::daemons::sync::DeviceNotes;
        let notes = page.and_then(|p| p.read().ok().and_then(|first| DeviceNotes::of(p, &first, source).ok()));
        let notes = notes.unwrap_or_else(DeviceNotes::none);
        let mut cadence = Cadence::default();
        cadence.set_notified(page.is_none() || notes.device.is_some());
        let pace = crate::ops::runtime::Pace::new(Instant::now(), interval);
        MarkerPace { pace, cadence, looked: false, notes, t_note: None }
    }

    /// The next turn (the interval's); the markers' checks are looks between turns.
    pub(crate) fn next(&self) -> Instant {
        self.pace.next()
    }

    /// The pace's figures in a feed's status: whether the device notifies, and the checks made.
    pub(crate) fn report(&self, c: &mut crate::ops::figures::FeedCommon) {
        c.notified = self.notes.device.is_some();
        c.marker_checks = self.cadence.checks();
    }

    /// When the next look at the markers is due (none while the device notifies).
    pub(crate) fn next_look(&self) -> Option<Instant> {
        next_check(&self.cadence)
    }

    pub(crate) fn register(&mut self, p: &mut vmtime_sys::serve::Poller) {
        use std::os::fd::AsFd;
        self.t_note = self.notes.device.as_ref().map(|d| p.add(d.as_fd(), vmtime_sys::serve::READABLE));
    }

    /// A look at the markers when due (loads from the mapped page): whether to observe now.
    pub(crate) fn look(&mut self, page: Option<&mut vmtime_sys::follow::FollowedPage>, pending: bool) -> bool {
        let (Some(page), Ok(mono)) = (page, mono_ns()) else { return self.looked };
        if !self.cadence.due(mono) {
            return self.looked;
        }
        let markers = page.markers();
        self.looked |= self.cadence.look(mono, markers, pending).observe_now(pending);
        // A device set aside as silent: do its notifications come back? Then a turn, so that
        // the runtime waits on the device again.
        if let Some(m) = markers.filter(|_| self.notes.silenced.is_some()) {
            if self.notes.look_silenced(mono, m.seq_count) {
                self.cadence.set_notified(true);
                self.looked = true;
            }
        }
        self.looked
    }

    /// Whether this wake-up is a turn: its time came, the device notified a page that says
    /// observe now, or the markers say now.
    pub(crate) fn take(
        &mut self,
        t: &crate::ops::runtime::Turn<'_>,
        mut page: Option<&mut vmtime_sys::follow::FollowedPage>,
        pending: bool,
    ) -> std::io::Result<bool> {
        if let Some(p) = page.as_deref_mut().filter(|_| self.t_note.is_some_and(|x| t.readable(x))) {
            let seen = &*p;
            if self.notes.readable(|| seen.read().map_or(u32::MAX, |s| s.seq_count())) {
                let mono = mono_ns()?;
                self.looked |= self.cadence.look(mono, p.markers(), pending).observe_now(pending);
            }
            self.cadence.set_notified(self.notes.device.is_some());
        }
        let now = t.now();
        if now >= self.pace.next() {
            self.looked = false;
            self.pace.turned(now);
            return Ok(true);
        }
        if std::mem::take(&mut self.looked) || self.look(page, pending) {
            self.looked = false;
            self.pace.restart(now);
            return Ok(true);
        }
        Ok(false)
    }
}
