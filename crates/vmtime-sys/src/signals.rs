//! Signals as events of the daemon's loop: SIGTERM and SIGINT ask it to stop cleanly, SIGHUP
//! asks it to reload its configuration. Each is turned by `signal-hook` into a byte on a
//! socket pair that the loop polls like any other descriptor (the self-pipe trick, written by
//! a well-kept crate rather than by hand), so a signal never interrupts the page write, and
//! no signal is lost between a check and the wait.

use crate::serve::{Poller, Token, READABLE};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

/// What the signals asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGTERM or SIGINT (its name): stop cleanly.
    Terminate(&'static str),
    /// SIGHUP: reload the configuration (or say there is none).
    Reload,
}

/// The daemon's signal handlers (restored to the defaults when dropped).
#[derive(Debug)]
pub struct Signals {
    term: UnixStream,
    int: UnixStream,
    hup: UnixStream,
    ids: Vec<signal_hook::SigId>,
    tokens: Option<(Token, Token, Token)>,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> io::Result<Self> {
        let mut ids = Vec::new();
        let mut pair = |sig| -> io::Result<UnixStream> {
            let (r, w) = UnixStream::pair()?;
            r.set_nonblocking(true)?;
            ids.push(signal_hook::low_level::pipe::register(sig, w)?);
            Ok(r)
        };
        let doing = "set up the signals' socket pairs";
        let term = pair(signal_hook::consts::SIGTERM).map_err(|e| crate::io_context(e, doing))?;
        let int = pair(signal_hook::consts::SIGINT).map_err(|e| crate::io_context(e, doing))?;
        let hup = pair(signal_hook::consts::SIGHUP).map_err(|e| crate::io_context(e, doing))?;
        Ok(Signals { term, int, hup, ids, tokens: None })
    }

    /// Adds the signals to the next wait.
    pub fn register(&mut self, p: &mut Poller) {
        self.tokens = Some((
            p.add(self.term.as_fd(), READABLE),
            p.add(self.int.as_fd(), READABLE),
            p.add(self.hup.as_fd(), READABLE),
        ));
    }

    /// What arrived during the last wait (termination first).
    pub fn take(&mut self, p: &Poller) -> Option<SignalEvent> {
        let (t, i, h) = self.tokens.take()?;
        let got = |s: &mut UnixStream, tok| p.readable(tok) && drain(s);
        let term = got(&mut self.term, t);
        let int = got(&mut self.int, i);
        let hup = got(&mut self.hup, h);
        if term {
            Some(SignalEvent::Terminate("SIGTERM"))
        } else if int {
            Some(SignalEvent::Terminate("SIGINT"))
        } else if hup {
            Some(SignalEvent::Reload)
        } else {
            None
        }
    }
}

fn drain(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    let mut any = false;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        any = true;
    }
    any
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
