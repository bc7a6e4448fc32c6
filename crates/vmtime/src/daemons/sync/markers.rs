//! `vmtime sync` on a page of markers only with no PHC: no time source; the markers are watched
//! for the hook.

use super::*;

/// A page with markers only and no PHC on this machine: no time source. The markers are still
/// watched and the hook run; the clock is left alone.
pub(super) struct MarkersOnly {
    pub(super) page: crate::page::FollowedPage,
    /// A full read every interval; between them the markers are looked at, at the cadence (or
    /// notified).
    pub(super) pace: MarkerPace,
    pub(super) watch: MarkerWatch,
    pub(super) dry_run: bool,
    pub(super) hook: Option<String>,
    pub(super) m: crate::ops::figures::SyncMetrics,
}

impl Daemon for MarkersOnly {
    type Settings = SyncSettings;
    type Figures = crate::ops::figures::SyncMetrics;
    const NAME: &'static str = "sync";
    const STOPPED: &'static str = "the socket is removed";
    const LIVE: &'static [&'static str] = LIVE_PHC;

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
        self.pace.look(Some(&mut self.page), false)
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        if !self.pace.take(t, Some(&mut self.page), false)? {
            return Ok(Flow::Continue);
        }
        self.page.refresh();
        if let Ok(p) = self.page.read() {
            self.pace.cadence.seen(Markers::of(&p));
            let c = self.watch.observe(&p);
            if c.disrupted {
                tracing::info!("disruption marker changed: {:#x} (no time source to step from)", p.disruption_marker());
            }
            if c.new_generation {
                self.m.hooks_run += 1;
                run_hook(&self.hook, self.dry_run);
            }
            self.m.page_seen(&p);
        }
        Ok(Flow::Continue)
    }

    fn reconfigure(&mut self, _now: &SyncSettings) {}

    fn figures(&mut self) -> &mut crate::ops::figures::SyncMetrics {
        &mut self.m
    }
}
