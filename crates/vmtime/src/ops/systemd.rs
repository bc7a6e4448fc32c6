//! systemd supervision (`Type=notify`): READY once the daemon has done its first useful work,
//! STATUS lines, and WATCHDOG pings from the daemon's own loop, so a stuck loop is restarted.
//!
//! `sd-notify` (a small, dependency-light crate) speaks the protocol; without `NOTIFY_SOCKET`
//! (not under systemd) every call is a no-op.

use std::time::{Duration, Instant};

/// The daemon's side of the notify protocol.
#[derive(Debug)]
pub struct Supervisor {
    ready: bool,
    /// Half the watchdog timeout, when systemd asked for pings.
    ping_every: Option<Duration>,
    last_ping: Instant,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let mut usec = 0u64;
        let ping_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)));
        Supervisor { ready: false, ping_every, last_ping: Instant::now() }
    }

    /// Says READY=1 (once) with a status line: call it after the first page, relay or sync.
    pub fn ready(&mut self, status: &str) {
        if !self.ready {
            self.ready = true;
            if let Err(e) =
                sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)])
            {
                tracing::warn!("cannot tell systemd the daemon is ready: {e}");
            }
        }
    }

    /// Pings the watchdog when half its timeout has passed: call it every turn of the loop (a
    /// turn that never comes means systemd restarts the daemon).
    pub fn tick(&mut self) {
        if let Some(every) = self.ping_every {
            if self.ready && self.last_ping.elapsed() >= every {
                self.last_ping = Instant::now();
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
    }

    /// A new STATUS line (`systemctl status` shows it), once the daemon is ready.
    pub fn status(&self, status: &str) {
        if self.ready {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
        }
    }

    /// The longest a loop may wait before its next [`Supervisor::tick`] keeps the watchdog fed
    /// (None: no watchdog). A daemon whose turns can be further apart than this (a feed at one
    /// sample an hour) wakes for it.
    pub fn tick_within(&self) -> Option<Duration> {
        self.ping_every
    }

    /// STOPPING=1, on the way out.
    pub fn stopping(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
}
