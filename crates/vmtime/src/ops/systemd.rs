//! systemd supervision (`Type=notify`): READY once the daemon has done its first useful work,
//! STATUS lines, and WATCHDOG pings from the runtime's loop (crate::ops::runtime), on their own
//! schedule, so a stuck loop is restarted and a long interval between turns is not.
//!
//! The protocol is a datagram per message to `$NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket); without it (not under systemd) every call is a no-op. `sd-notify` reads
//! `$WATCHDOG_USEC` (checking `$WATCHDOG_PID` against this process).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The daemon's side of the notify protocol.
#[derive(Debug)]
pub struct Supervisor {
    socket: Option<String>,
    ready: bool,
    /// How often to ping: a quarter of the watchdog timeout, when systemd asked for pings.
    ping_every: Option<Duration>,
    last_ping: Instant,
    /// The last STATUS sent.
    status: String,
}

impl Supervisor {
    /// From the environment systemd gives a service.
    pub fn from_env() -> Self {
        let mut usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        Self::new(std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()), watchdog)
    }

    /// Notifies `socket` (None: nobody); `watchdog` is systemd's timeout. It is pinged every
    /// quarter of it: at least every half of it (sd_notify's advice) even when a turn runs long
    /// or the machine is loaded.
    pub fn new(socket: Option<String>, watchdog: Option<Duration>) -> Self {
        let ping_every = watchdog.map(|w| (w / 4).max(Duration::from_millis(1)));
        Supervisor { socket, ready: false, ping_every, last_ping: Instant::now(), status: String::new() }
    }

    fn send(&self, msg: &str) -> std::io::Result<()> {
        let Some(s) = &self.socket else { return Ok(()) };
        let sock = UnixDatagram::unbound()?;
        // Never wait for the supervisor: a full queue drops this message (the next ping comes
        // soon), it does not stall the daemon's loop.
        sock.set_nonblocking(true)?;
        match s.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(msg.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(msg.as_bytes(), s)?;
            }
        }
        Ok(())
    }

    /// The daemon's STATUS line: the first one says READY=1 with it, later ones are sent when
    /// they change (`systemctl status` shows them).
    pub fn status(&mut self, status: &str) {
        if self.ready && self.status == status {
            return;
        }
        self.status.clear();
        self.status.push_str(status);
        let msg = if self.ready { format!("STATUS={status}") } else { format!("READY=1\nSTATUS={status}") };
        match self.send(&msg) {
            Err(e) if !self.ready => tracing::warn!("cannot tell systemd the daemon is ready: {e}"),
            _ => {}
        }
        self.ready = true;
    }

    /// Whether READY=1 was sent.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// When the watchdog wants its next ping (None: no watchdog).
    pub fn next_ping(&self) -> Option<Instant> {
        self.ping_every.map(|e| self.last_ping + e)
    }

    /// Pings the watchdog if its time has come: the runtime's loop calls this at every turn and
    /// wakes for [`Supervisor::next_ping`] (a loop that stops turning means a restart).
    pub fn tick(&mut self, now: Instant) {
        if self.next_ping().is_some_and(|t| now >= t) {
            self.last_ping = now;
            let _ = self.send("WATCHDOG=1");
        }
    }

    /// STOPPING=1, on the way out.
    pub fn stopping(&self) {
        let _ = self.send("STOPPING=1");
    }
}
