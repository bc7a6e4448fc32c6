//! The doorbell: one byte written to a VMM's Unix stream socket after each new guest page, so
//! that the VMM raises the guest's vmclock notification (with `vmtime qemu --notify`: QEMU
//! serves a 16550's chardev on the socket; the byte raises the UART's interrupt, and the SSDT's
//! Generic Event Device turns it into `Notify (VCLK, 0x80)`).
//!
//! The publishing path never waits on it: the socket is non-blocking (connect included: a full
//! backlog fails at once), a full socket drops the ring (the guest has unread bytes, so a
//! notification is already on its way, and the driver's `poll()` compares seq_counts, so
//! notifications coalesce), and a dead or absent peer is reconnected at most once per
//! [`RETRY`], at the next ring.

use rustix::io::Errno;
use rustix::net::{self as rnet, AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The least time between two connection attempts.
pub const RETRY: Duration = Duration::from_millis(100);

/// What became of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// The byte is in the socket.
    Sent,
    /// The socket is full (the VMM does not read it, or the guest does not take its bytes):
    /// this ring is dropped.
    Full,
    /// No connection: the attempt failed with this error (or none was made: `None`, the last
    /// failure was less than [`RETRY`] ago).
    NotConnected(Option<Errno>),
}

/// Counts, for the status and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorbellFigures {
    /// Rings asked for.
    pub rung: u64,
    /// Bytes written.
    pub sent: u64,
    /// Rings not written (full socket, no connection).
    pub dropped: u64,
    /// Connections made.
    pub connects: u64,
    /// Connection attempts that failed.
    pub failed_connects: u64,
}

/// A client of the VMM's doorbell socket.
#[derive(Debug)]
pub struct Doorbell {
    path: PathBuf,
    sock: Option<OwnedFd>,
    /// No connection attempt before this (after a failed one).
    quiet_until: Option<Instant>,
    figures: DoorbellFigures,
}

impl Doorbell {
    /// A doorbell on `path`, not connected yet (the first ring connects).
    pub fn new(path: &Path) -> Self {
        Doorbell { path: path.to_path_buf(), sock: None, quiet_until: None, figures: DoorbellFigures::default() }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a connection is open.
    pub fn connected(&self) -> bool {
        self.sock.is_some()
    }

    pub fn figures(&self) -> DoorbellFigures {
        self.figures
    }

    /// Writes one byte, connecting first when needed (at most one attempt per ring, and none
    /// within [`RETRY`] of a failed one). Never waits.
    pub fn ring(&mut self, now: Instant) -> Ring {
        self.figures.rung += 1;
        let r = self.ring_inner(now);
        if r == Ring::Sent {
            self.figures.sent += 1;
        } else {
            self.figures.dropped += 1;
        }
        r
    }

    fn ring_inner(&mut self, now: Instant) -> Ring {
        let mut attempted = false;
        loop {
            if self.sock.is_none() {
                if attempted || self.quiet_until.is_some_and(|t| now < t) {
                    return Ring::NotConnected(None);
                }
                attempted = true;
                match self.connect() {
                    Ok(s) => {
                        self.figures.connects += 1;
                        self.quiet_until = None;
                        self.sock = Some(s);
                    }
                    Err(e) => {
                        self.figures.failed_connects += 1;
                        self.quiet_until = Some(now + RETRY);
                        return Ring::NotConnected(Some(e));
                    }
                }
            }
            let sock = self.sock.as_ref().expect("connected above");
            match rnet::send(sock, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(1) => return Ring::Sent,
                Ok(_) | Err(Errno::AGAIN) => return Ring::Full,
                Err(Errno::INTR) => continue,
                // The peer is gone (EPIPE, ECONNRESET, …): a new connection, at once if this
                // ring has not tried one yet.
                Err(_) => self.sock = None,
            }
        }
    }

    /// A non-blocking connection (a Unix listener whose backlog is full fails with EAGAIN).
    fn connect(&self) -> Result<OwnedFd, Errno> {
        let addr = SocketAddrUnix::new(&self.path).map_err(|_| Errno::NAMETOOLONG)?;
        let fd = rnet::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rnet::connect(&fd, &addr) {
            Ok(()) => Ok(fd),
            Err(Errno::INPROGRESS) => Err(Errno::AGAIN),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn read_all_available(s: &mut std::os::unix::net::UnixStream) -> usize {
        s.set_nonblocking(true).unwrap();
        let mut n = 0;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return n,
                Ok(k) => {
                    assert!(buf[..k].iter().all(|&b| b == 1));
                    n += k;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn each_ring_is_one_byte_on_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut d = Doorbell::new(&path);
        assert!(!d.connected(), "connects at the first ring, not before");
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(d.ring(now), Ring::Sent);
        }
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(read_all_available(&mut peer), 5);
        let f = d.figures();
        assert_eq!((f.rung, f.sent, f.dropped, f.connects), (5, 5, 0, 1));
    }

    #[test]
    fn no_listener_is_retried_at_most_once_per_retry_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let mut d = Doorbell::new(&path);
        let t0 = Instant::now();
        assert!(matches!(d.ring(t0), Ring::NotConnected(Some(_))));
        // Within RETRY: no attempt at all.
        assert_eq!(d.ring(t0 + RETRY / 2), Ring::NotConnected(None));
        assert_eq!(d.figures().failed_connects, 1);
        // The VMM starts listening; the next ring after RETRY connects and delivers.
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(d.ring(t0 + RETRY), Ring::Sent);
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(read_all_available(&mut peer), 1);
        let f = d.figures();
        assert_eq!((f.rung, f.sent, f.dropped, f.connects, f.failed_connects), (3, 1, 2, 1, 1));
    }

    #[test]
    fn a_peer_that_went_away_is_replaced_in_the_same_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut d = Doorbell::new(&path);
        let now = Instant::now();
        assert_eq!(d.ring(now), Ring::Sent);
        let (peer, _) = listener.accept().unwrap();
        drop(peer); // the VMM closed the connection (a restarted chardev)
        assert_eq!(d.ring(now), Ring::Sent, "reconnected at once and written");
        let (mut peer2, _) = listener.accept().unwrap();
        assert_eq!(read_all_available(&mut peer2), 1);
        assert_eq!(d.figures().connects, 2);
        // The VMM is gone entirely: the ring fails at once, never waits.
        drop(peer2);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(d.ring(now), Ring::NotConnected(Some(_))));
        assert!(!d.connected());
    }

    #[test]
    fn a_full_socket_drops_rings_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut d = Doorbell::new(&path);
        let now = Instant::now();
        // Nobody reads: the socket fills (bounded: a Unix socket holds far fewer than 10^7
        // one-byte writes), and each ring after that returns Full at once.
        let mut sent = 0u64;
        let mut full = false;
        for _ in 0..10_000_000u32 {
            match d.ring(now) {
                Ring::Sent => sent += 1,
                Ring::Full => {
                    full = true;
                    break;
                }
                r => panic!("{r:?}"),
            }
        }
        assert!(full, "the socket never filled");
        assert_eq!(d.ring(now), Ring::Full);
        assert!(d.connected(), "a full socket is kept");
        // Once the VMM reads, rings go through again.
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(read_all_available(&mut peer) as u64, sent);
        assert_eq!(d.ring(now), Ring::Sent);
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_not_connected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, b"x").unwrap();
        let mut d = Doorbell::new(&path);
        assert!(matches!(d.ring(Instant::now()), Ring::NotConnected(Some(_))));
    }
}
