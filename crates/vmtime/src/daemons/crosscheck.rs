//! `--cross-check-ntp` (sync, feed clockbound): the socket (vmtime-sys) and the client
//! (vmtime-core), polled in the daemon's loop, never waited on.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use vmtime_core::sync::gives_time;

/// `--cross-check-ntp`: the socket (vmtime-sys) and the client (vmtime-core); times are ns since
/// `start` (monotonic).
pub(crate) struct NtpCross {
    pub(crate) cc: vmtime_core::crosscheck::CrossCheck,
    pub(crate) sock: vmtime_sys::ntp::SntpSocket,
    start: Instant,
}

/// The page's UTC now (64.64 s since the epoch) and its maxerror (ns), if it gives them.
pub(crate) fn page_utc(page: &crate::page::FollowedPage) -> Option<(i128, Option<u128>)> {
    let p = page.read().ok().filter(|p| gives_time(p, vmclock::counter::NATIVE))?;
    let u = p.utc_at(vmclock::counter::read()).ok()?;
    Some((i128::try_from(u.time.raw()).ok()?, u.maxerror_ns()))
}

impl NtpCross {
    pub(crate) fn new(server: std::net::SocketAddr) -> Result<Self> {
        let sock = vmtime_sys::ntp::SntpSocket::connect(server)
            .with_context(|| format!("--cross-check-ntp {server}: cannot open a UDP socket to it"))?;
        Ok(NtpCross {
            cc: vmtime_core::crosscheck::CrossCheck::new(server.to_string(), 0),
            sock,
            start: Instant::now(),
        })
    }

    fn now_ns(&self) -> i128 {
        self.start.elapsed().as_nanos() as i128
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.start + Duration::from_nanos(self.cc.next_deadline_ns().max(0) as u64)
    }

    /// A query or a timeout when due; never waits.
    pub(crate) fn tick(&mut self, page: &crate::page::FollowedPage) {
        let now = self.now_ns();
        if now < self.cc.next_deadline_ns() {
            return;
        }
        let cookie = vmtime_sys::event::random_u64().unwrap_or(now as u64 ^ 0x9E37_79B9_7F4A_7C15);
        let Some((utc, max)) = page_utc(page) else {
            // Nothing to judge: a query in flight may still time out; none is started.
            if self.cc.in_flight() {
                let _ = self.cc.tick(now, cookie);
            } else {
                self.cc.postpone(now);
            }
            return;
        };
        if let Some(vmtime_core::crosscheck::CrossAction::Send(p)) = self.cc.tick(now, cookie) {
            match self.sock.send(&p) {
                Ok(()) => self.cc.sent(self.now_ns(), utc, max),
                Err(e) => {
                    tracing::debug!("cross-check: cannot send to {}: {e}", self.sock.server());
                    self.cc.send_failed(now);
                }
            }
        }
    }

    /// The datagrams waiting (never waits).
    pub(crate) fn readable(&mut self, page: &crate::page::FollowedPage) {
        let mut buf = [0u8; 512];
        // A few at most per turn: a flood cannot hold the loop.
        for _ in 0..8 {
            match self.sock.recv(&mut buf) {
                Ok(Some(d)) => {
                    let now = self.now_ns();
                    if let Some((utc, max)) = page_utc(page) {
                        self.cc.received(d, now, utc, max);
                    }
                }
                // Nothing more; or an ICMP error (nobody listens there): the timeout says so.
                Ok(None) | Err(_) => break,
            }
        }
    }

    pub(crate) fn log(&mut self) {
        use vmtime_core::crosscheck::CrossNotice;
        for n in self.cc.take_notices() {
            match n {
                CrossNotice::Disagree(_) | CrossNotice::NoReply => tracing::warn!("{n} ({})", self.sock.server()),
                CrossNotice::Agree(_) | CrossNotice::Refused(_) => tracing::info!("{n} ({})", self.sock.server()),
            }
        }
    }
}
