//! The daemons' control socket, as the answers see it.

use std::path::Path;
use std::time::Duration;
use vmtime_sys::serve::{Server, ServerStats, Subscription};

/// How long a client waits for a daemon's answer (connect, request, first line).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Subscribes to a publisher's notifications (a host's for a relay, a host's or relay's for a
/// sync), if it answers within [`CLIENT_TIMEOUT`].
pub fn subscribe(socket: &Path) -> Option<Subscription> {
    Subscription::open(socket, CLIENT_TIMEOUT).ok()
}

/// What the control server looked like before a request (read by the answers).
#[derive(Debug)]
pub struct ServerView {
    pub subscribers: usize,
    pub stats: ServerStats,
}

impl ServerView {
    pub fn of(s: &Server) -> Self {
        ServerView { subscribers: s.subscribers(), stats: s.stats() }
    }
}
