//! The daemons' control socket, as the answers see it.

use std::time::Duration;
use vmtime_sys::serve::{Server, ServerStats};

/// How long a client waits for a daemon's answer (connect, request, first line).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

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
