//! A daemon's one event loop and its control socket, and the client side of that socket.
//!
//! - [`Poller`]: `poll(2)` over a reused array (no allocation once it has grown).
//! - [`Server`]: a daemon's control socket (a listening Unix socket; the metrics endpoint is
//!   the binary's own HTTP thread, not this). Its connections are all non-blocking and bounded:
//!   a request is one line of at most [`Limits::max_request`] bytes, answered within
//!   [`Limits::request_deadline`] of the accept or dropped; at most [`Limits::max_connections`]
//!   requests in progress (more are told "busy" and closed at once). A connection whose request
//!   was `subscribe` becomes a subscriber: [`Server::notify`] sends it each new `seq_count` with
//!   `MSG_DONTWAIT` and drops it when its small send buffer is full (it fell behind). `notify` is
//!   the only call on the publishing path: it never blocks and never allocates.
//! - [`request`] / [`Subscription`]: the client side, every step bounded by a timeout.

use crate::files::{self, FileError};
use rustix::io::Errno;
use rustix::net::{self as rnet, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Poller

/// A slot in the [`Poller`] for one wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(usize);

/// `poll(2)` over descriptors added anew before each wait (the array is reused). Repeated
/// waits on the same descriptors ([`Poller::wait_again`]) go through an epoll set of them
/// instead: a wake-up then costs no per-descriptor work in the kernel.
#[derive(Debug)]
pub struct Poller {
    fds: Vec<libc::pollfd>,
    /// An epoll set holding exactly `fds` (with their events), made at the first
    /// [`Poller::wait_again`] after the descriptors changed; `None` when they changed since.
    again: Option<OwnedFd>,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

/// Readable (or hung up, or in error: a read will tell).
pub const READABLE: i16 = libc::POLLIN;
/// Writable.
pub const WRITABLE: i16 = libc::POLLOUT;

impl Poller {
    /// An empty poller.
    pub fn new() -> Self {
        Poller { fds: Vec::with_capacity(256), again: None }
    }

    /// Forgets the descriptors of the last wait.
    pub fn clear(&mut self) {
        self.fds.clear();
        self.again = None;
    }

    /// Adds a descriptor for the next wait.
    pub fn add(&mut self, fd: BorrowedFd<'_>, events: i16) -> Token {
        self.fds.push(libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 });
        self.again = None;
        Token(self.fds.len() - 1)
    }

    /// Waits again on the descriptors of the last wait, as [`Poller::wait`] does, after a wait
    /// that found none of them ready (the caller closed none of them since: it owns them).
    /// Through an epoll set of them, made at the first such wait (one `epoll_ctl` each): the
    /// kernel then does no per-descriptor work at each wake-up, which is what a loop waking
    /// often with nothing to do pays for. Where the set cannot be made, a plain `poll`.
    pub fn wait_again(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        use rustix::event::epoll;
        if self.again.is_none() {
            self.again = self.epoll_set();
        }
        let Some(ep) = &self.again else { return self.wait(timeout) };
        self.fds.iter_mut().for_each(|p| p.revents = 0);
        let ms = timeout.map(|t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i64);
        let ts = ms.map(|ms| rustix::event::Timespec { tv_sec: ms / 1000, tv_nsec: ms % 1000 * 1_000_000 });
        let mut events = [epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) }; 8];
        let n = match epoll::wait(ep, &mut events[..], ts.as_ref()) {
            Ok(n) => n,
            Err(Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for e in &events[..n] {
            // Copies out of the packed record.
            let (flags, data) = (e.flags, e.data);
            if let Some(p) = usize::try_from(data.u64()).ok().and_then(|i| self.fds.get_mut(i)) {
                // EPOLLIN, OUT, ERR and HUP have poll's values.
                p.revents = (flags.bits() & 0xffff) as i16;
            }
        }
        Ok(())
    }

    /// An epoll set of the descriptors (level-triggered, as poll), or None.
    fn epoll_set(&self) -> Option<OwnedFd> {
        use rustix::event::epoll;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
        for (i, p) in self.fds.iter().enumerate() {
            // SAFETY: the caller registered `p.fd` from a BorrowedFd for this wait and keeps it
            // open until the next `clear` (see `wait_again`); it is only borrowed for the call.
            let fd = unsafe { BorrowedFd::borrow_raw(p.fd) };
            let flags = epoll::EventFlags::from_bits_truncate(p.events as u16 as u32);
            // The same descriptor twice (EEXIST) or one epoll cannot hold: poll instead.
            epoll::add(&ep, fd, epoll::EventData::new_u64(i as u64), flags).ok()?;
        }
        Some(ep)
    }

    /// Waits until a descriptor is ready or `timeout` passes (`None`: no timeout). A signal
    /// ends the wait early with no descriptor ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
        // SAFETY: `fds` is a valid, exclusively borrowed array of `len` pollfd structures.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                self.fds.iter_mut().for_each(|p| p.revents = 0);
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether the last wait saw any event on any descriptor (a signal's included).
    pub fn any_ready(&self) -> bool {
        self.fds.iter().any(|p| p.revents != 0)
    }

    /// The events seen on `t` in the last wait.
    pub fn revents(&self, t: Token) -> i16 {
        self.fds.get(t.0).map_or(0, |p| p.revents)
    }

    /// Whether `t` is readable, hung up or in error.
    pub fn readable(&self, t: Token) -> bool {
        self.revents(t) & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// The earliest of some optional instants.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// Bounds on what clients may cost a daemon.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest request line, bytes (newline included).
    pub max_request: usize,
    /// From accept to the last byte of the answer.
    pub request_deadline: Duration,
    /// Requests in progress at once; more are refused with a "busy" answer.
    pub max_connections: usize,
    /// Subscribers at once.
    pub max_subscribers: usize,
    /// A subscriber's send buffer, bytes: a subscriber that leaves this much unread (about a
    /// dozen notifications) has fallen behind and is dropped.
    pub subscriber_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 4096,
            request_deadline: Duration::from_secs(1),
            max_connections: 32,
            max_subscribers: 64,
            subscriber_buffer: 4096,
        }
    }
}

/// What the server has seen (for status and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Requests answered.
    pub answered: u64,
    /// Connections refused because `max_connections` were in progress.
    pub refused_busy: u64,
    /// Requests dropped at their deadline.
    pub timed_out: u64,
    /// Requests longer than `max_request`.
    pub too_long: u64,
    /// Subscribers dropped because they fell behind.
    pub dropped_subscribers: u64,
    /// Accepts that failed for want of resources (out of file descriptors, memory).
    pub accept_failures: u64,
}

/// The answer to one request line.
#[derive(Debug)]
pub enum Reply {
    /// One line (a newline is added), then the connection is closed.
    Line(String),
    /// One line, then the connection stays open as a subscriber of [`Server::notify`].
    Subscribe(String),
}

/// `{"error": MSG}` as one line of valid JSON.
pub fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

enum Phase {
    Reading,
    Writing { subscribe: bool },
}

struct Conn {
    fd: OwnedFd,
    started: Instant,
    buf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    phase: Phase,
}

/// A socket path bound by this process: removed at drop if it is still ours.
#[derive(Debug)]
struct Bound {
    path: PathBuf,
    dev_ino: (u64, u64),
}

/// A listening socket served from the daemon's event loop. See the module documentation.
pub struct Server {
    name: &'static str,
    listener: OwnedFd,
    bound: Option<Bound>,
    limits: Limits,
    conns: Vec<Conn>,
    subs: Vec<OwnedFd>,
    stats: ServerStats,
    tokens: Option<(Token, usize, usize)>,
    unlogged_drops: u64,
    /// Accepting failed for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM): the
    /// connection stays queued and the listener readable, so it is left out of the wait until
    /// then instead of waking the loop at once, forever (a spin).
    accept_paused_until: Option<Instant>,
    /// Set while accepting keeps failing (logged once per episode).
    accept_failing_logged_at: Option<Instant>,
}

/// How long a listener is left out of the wait after accepting failed for want of resources.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("name", &self.name).field("stats", &self.stats).finish_non_exhaustive()
    }
}

fn ino_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Server {
    /// Binds a Unix socket at `path` with mode `mode` (0600, or 0660 with `group`) whatever the
    /// umask: bound under a temporary name, chmod'ed (and chown'ed), then renamed into place,
    /// so it is never reachable with other permissions. Something at `path` is removed only if
    /// it is a socket nobody listens on; a live daemon's socket or any other file is refused.
    pub fn bind_unix(path: &Path, mode: u32, group: Option<u32>, limits: Limits) -> Result<Self, FileError> {
        use rustix::fs::{self as rfs, AtFlags, FileType, Mode, CWD};
        let io_err = |op, e: Errno| FileError::Io { op, path: path.display().to_string(), err: e.into() };
        files::ensure_dir_for(path)?;
        match rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("inspect", e)),
            Ok(s) => {
                let t = FileType::from_raw_mode(s.st_mode);
                if t != FileType::Socket {
                    return Err(FileError::NotASocket {
                        path: path.display().to_string(),
                        found: files::kind_name(t).into(),
                    });
                }
                if UnixStream::connect(path).is_ok() {
                    return Err(FileError::SocketInUse { path: path.display().to_string() });
                }
                // A stale socket of a daemon that died: the only thing ever removed.
                match rfs::unlinkat(CWD, path, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err("remove the stale socket", e)),
                }
            }
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        // Short, so that it fits sun_path wherever the final name does.
        let tmp = dir.join(format!(".s{:08x}", crate::event::random_u64().unwrap_or(0) as u32));
        let fd = rnet::socket_with(
            rnet::AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| io_err("create a socket for", e))?;
        let addr = SocketAddrUnix::new(&tmp).map_err(|e| io_err("bind (path too long?)", e))?;
        rnet::bind(&fd, &addr).map_err(|e| io_err("bind", e))?;
        let done = (|| {
            if let Some(g) = group {
                rfs::chownat(CWD, &tmp, None, Some(rfs::Gid::from_raw(g)), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("set the group of", e))?;
            }
            rfs::chmodat(CWD, &tmp, Mode::from_raw_mode(mode), AtFlags::empty()).map_err(|e| io_err("chmod", e))?;
            rnet::listen(&fd, 64).map_err(|e| io_err("listen on", e))?;
            rfs::renameat_with(CWD, &tmp, CWD, path, rfs::RenameFlags::NOREPLACE)
                .map_err(|e| io_err("put the socket at", e))
        })();
        if let Err(e) = done {
            let _ = rfs::unlinkat(CWD, &tmp, AtFlags::empty());
            return Err(e);
        }
        let bound = ino_of(path).map(|dev_ino| Bound { path: path.to_path_buf(), dev_ino });
        Ok(Self::with(fd, bound, "control socket", limits))
    }

    fn with(listener: OwnedFd, bound: Option<Bound>, name: &'static str, limits: Limits) -> Self {
        Server {
            name,
            listener,
            bound,
            limits,
            conns: Vec::with_capacity(limits.max_connections),
            subs: Vec::with_capacity(limits.max_subscribers),
            stats: ServerStats::default(),
            tokens: None,
            unlogged_drops: 0,
            accept_paused_until: None,
            accept_failing_logged_at: None,
        }
    }

    /// The path bound, if any.
    pub fn path(&self) -> Option<&Path> {
        self.bound.as_ref().map(|b| b.path.as_path())
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.subs.len()
    }

    /// Requests in progress now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Adds the listener, the requests in progress and the subscribers to the next wait (and
    /// logs subscribers dropped since the last call: logging is kept off the publishing path).
    pub fn register(&mut self, p: &mut Poller) {
        if self.unlogged_drops > 0 {
            tracing::warn!(
                "{}: dropped {} subscriber(s) that fell behind ({} in all)",
                self.name,
                self.unlogged_drops,
                self.stats.dropped_subscribers
            );
            self.unlogged_drops = 0;
        }
        if self.accept_paused_until.is_some_and(|t| Instant::now() >= t) {
            self.accept_paused_until = None;
        }
        let l = p.add(self.listener.as_fd(), if self.accept_paused_until.is_some() { 0 } else { READABLE });
        let first_conn = p.fds.len();
        for c in &self.conns {
            let ev = match c.phase {
                Phase::Reading => READABLE,
                Phase::Writing { .. } => WRITABLE,
            };
            p.add(c.fd.as_fd(), ev);
        }
        let first_sub = p.fds.len();
        for s in &self.subs {
            p.add(s.as_fd(), READABLE);
        }
        self.tokens = Some((l, first_conn, first_sub));
    }

    /// When the next request in progress reaches its deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let requests = self.conns.iter().map(|c| c.started + self.limits.request_deadline).min();
        match (requests, self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends `seq` to every subscriber without waiting; drops those that fell behind (their
    /// buffer is full) or went away. Returns how many fell behind. No allocation, no blocking.
    pub fn notify(&mut self, seq: u32) -> usize {
        let mut buf = [0u8; 12];
        let n = format_u32_line(seq, &mut buf);
        let mut behind = 0;
        let mut i = self.subs.len();
        while i > 0 {
            i -= 1;
            match rnet::send(&self.subs[i], &buf[..n], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(k) if k == n => continue,
                Ok(_) | Err(Errno::AGAIN) => behind += 1,
                Err(Errno::INTR) => continue,
                Err(_) => {}
            }
            self.subs.swap_remove(i);
        }
        self.stats.dropped_subscribers += behind as u64;
        self.unlogged_drops += behind as u64;
        behind
    }

    /// Serves what the last wait found ready: accepts, reads requests, answers them with
    /// `answer(line)`, writes answers, enforces the limits. Never blocks.
    pub fn handle(&mut self, p: &Poller, mut answer: impl FnMut(&str) -> Reply) {
        let now = Instant::now();
        if let Some((l, first_conn, first_sub)) = self.tokens.take() {
            // Subscribers: anything readable is either noise (discarded) or a hang-up.
            let mut i = self.subs.len().min(p.fds.len().saturating_sub(first_sub));
            while i > 0 {
                i -= 1;
                if p.readable(Token(first_sub + i)) && !drain_alive(&self.subs[i]) {
                    self.subs.swap_remove(i);
                }
            }
            let mut i = self.conns.len().min(first_sub - first_conn);
            while i > 0 {
                i -= 1;
                if p.revents(Token(first_conn + i)) != 0 {
                    let next = self.serve(i, &mut answer);
                    self.finish(i, next);
                }
            }
            if p.readable(l) && self.accept_paused_until.is_none() {
                self.accept(&mut answer);
            }
        }
        let deadline = self.limits.request_deadline;
        let before = self.conns.len();
        self.conns.retain(|c| now.duration_since(c.started) < deadline);
        let expired = before - self.conns.len();
        if expired > 0 {
            self.stats.timed_out += expired as u64;
            tracing::info!(
                "{}: dropped {expired} request(s) not completed within {} ms",
                self.name,
                deadline.as_millis()
            );
        }
    }

    fn accept(&mut self, answer: &mut impl FnMut(&str) -> Reply) {
        for _ in 0..64 {
            let fd = match rnet::accept_with(&self.listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(fd) => fd,
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
                    self.stats.accept_failures += 1;
                    if self.accept_failing_logged_at.is_none() {
                        tracing::warn!(
                            "{}: cannot accept a connection ({}): pausing {} ms between tries (raise the open-files limit?)",
                            self.name,
                            std::io::Error::from(e),
                            ACCEPT_BACKOFF.as_millis()
                        );
                        self.accept_failing_logged_at = Some(Instant::now());
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                Err(_) => return,
            };
            self.accept_failing_logged_at = None;
            self.stats.accepted += 1;
            if self.conns.len() >= self.limits.max_connections {
                self.stats.refused_busy += 1;
                let msg = error_json("busy: too many requests in progress; try again") + "\n";
                let _ = rnet::send(&fd, msg.as_bytes(), SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
                continue;
            }
            self.conns.push(Conn {
                fd,
                started: Instant::now(),
                buf: Vec::with_capacity(self.limits.max_request),
                out: Vec::new(),
                sent: 0,
                phase: Phase::Reading,
            });
            // Most requests are already there: serve at once.
            let i = self.conns.len() - 1;
            let next = self.serve(i, answer);
            self.finish(i, next);
        }
    }

    /// Makes progress on connection `i`.
    fn serve(&mut self, i: usize, answer: &mut impl FnMut(&str) -> Reply) -> Next {
        let max = self.limits.max_request;
        let c = &mut self.conns[i];
        if let Phase::Reading = c.phase {
            let old = c.buf.len();
            c.buf.resize(max, 0);
            let r = rnet::recv(&c.fd, &mut c.buf[old..], RecvFlags::DONTWAIT);
            let got = match r {
                Ok((n, _)) => n,
                Err(Errno::AGAIN) | Err(Errno::INTR) => {
                    c.buf.truncate(old);
                    return Next::Keep;
                }
                Err(_) => return Next::Close,
            };
            c.buf.truncate(old + got);
            if got == 0 {
                return Next::Close; // the client left before finishing its line
            }
            let reply = match c.buf.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.stats.answered += 1;
                    match std::str::from_utf8(&c.buf[..end]) {
                        Ok(line) => answer(line.trim_end_matches('\r')),
                        Err(_) => Reply::Line(error_json("the request is not UTF-8 text")),
                    }
                }
                None if c.buf.len() >= max => {
                    self.stats.too_long += 1;
                    Reply::Line(error_json(&format!("request longer than {max} bytes: send one short line")))
                }
                None => return Next::Keep,
            };
            let c = &mut self.conns[i];
            c.buf = Vec::new();
            let subscribe = match reply {
                Reply::Line(s) => {
                    c.out = s.into_bytes();
                    c.out.push(b'\n');
                    false
                }
                Reply::Subscribe(s) if self.subs.len() < self.limits.max_subscribers => {
                    c.out = s.into_bytes();
                    c.out.push(b'\n');
                    true
                }
                Reply::Subscribe(_) => {
                    c.out = (error_json("too many subscribers; poll the page instead") + "\n").into_bytes();
                    false
                }
            };
            c.phase = Phase::Writing { subscribe };
        }
        let c = &mut self.conns[i];
        let Phase::Writing { subscribe } = c.phase else { return Next::Keep };
        while c.sent < c.out.len() {
            match rnet::send(&c.fd, &c.out[c.sent..], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => c.sent += n,
                Err(Errno::AGAIN) => return Next::Keep,
                Err(Errno::INTR) => {}
                Err(_) => return Next::Close,
            }
        }
        if subscribe && self.subs.len() < self.limits.max_subscribers {
            Next::Subscribe
        } else {
            Next::Close
        }
    }

    /// Acts on what [`Server::serve`] said about connection `i`.
    fn finish(&mut self, i: usize, next: Next) {
        match next {
            Next::Keep => {}
            Next::Close => {
                let c = self.conns.swap_remove(i);
                // Say we are done, and discard what the client sent beyond its line (HTTP
                // headers): a TCP close with unread input would reset the connection and could
                // lose the answer. Never waits.
                let _ = rnet::shutdown(&c.fd, rnet::Shutdown::Write);
                let _ = drain_alive(&c.fd);
            }
            Next::Subscribe => {
                let c = self.conns.swap_remove(i);
                let _ = rnet::sockopt::set_socket_send_buffer_size(&c.fd, self.limits.subscriber_buffer);
                self.subs.push(c.fd);
            }
        }
    }
}

/// What becomes of a connection after some progress.
enum Next {
    Keep,
    Close,
    Subscribe,
}

/// Reads and discards what a subscriber sent; false when it hung up.
fn drain_alive(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match rnet::recv(fd, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return false,
            Ok(_) => continue,
            Err(Errno::AGAIN) => return true,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// "N\n" into `buf`, returning its length (no allocation).
fn format_u32_line(mut v: u32, buf: &mut [u8; 12]) -> usize {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for k in 0..n {
        buf[k] = tmp[n - 1 - k];
    }
    buf[n] = b'\n';
    n + 1
}

impl Drop for Server {
    fn drop(&mut self) {
        // Our socket only: a later daemon's socket at the same path stays.
        if let Some(b) = &self.bound {
            if ino_of(&b.path) == Some(b.dev_ino) {
                let _ = std::fs::remove_file(&b.path);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// Why a request to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there.
    #[error("no daemon answers on {path}: {err} (is it running? is this its socket?)")]
    NoDaemon { path: String, err: io::Error },
    /// It did not answer in time.
    #[error("{path}: no answer within {ms} ms (the daemon is stuck or overloaded)")]
    Timeout { path: String, ms: u128 },
    /// The answer is longer than any daemon sends.
    #[error("{path}: the answer is longer than {max} bytes: not a vmtime daemon")]
    TooLong { path: String, max: usize },
    /// The connection failed.
    #[error("{path}: {err}")]
    Io { path: String, err: io::Error },
}

/// The longest answer a client reads.
pub const MAX_ANSWER: usize = 1 << 20;

/// Sends one request line to the daemon at `socket` and reads the first answer line, all
/// within `timeout` (connect included: a full backlog does not hang the client). Returns the
/// line (without its newline) and the connection (blocking, timeouts cleared) for a
/// subscription to go on reading.
pub fn request(socket: &Path, line: &str, timeout: Duration) -> Result<(String, UnixStream), ClientError> {
    let path = socket.display().to_string();
    let start = Instant::now();
    let timeout = timeout.max(Duration::from_millis(1));
    let left = || timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
    let io_err = |err: io::Error| {
        if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            ClientError::Timeout { path: path.clone(), ms: timeout.as_millis() }
        } else {
            ClientError::Io { path: path.clone(), err }
        }
    };
    let fd = rnet::socket_with(rnet::AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| io_err(e.into()))?;
    // SO_SNDTIMEO also bounds a Unix connect() waiting for room in the backlog.
    rnet::sockopt::set_socket_timeout(&fd, rnet::sockopt::Timeout::Send, Some(left())).map_err(|e| io_err(e.into()))?;
    rnet::sockopt::set_socket_timeout(&fd, rnet::sockopt::Timeout::Recv, Some(left())).map_err(|e| io_err(e.into()))?;
    let addr = SocketAddrUnix::new(socket).map_err(|e| io_err(e.into()))?;
    match rnet::connect(&fd, &addr) {
        Ok(()) => {}
        Err(e @ (Errno::AGAIN | Errno::TIMEDOUT)) => return Err(io_err(e.into())),
        Err(e) => return Err(ClientError::NoDaemon { path, err: e.into() }),
    }
    let mut s = UnixStream::from(fd);
    // A daemon that refuses the connection (busy) may close it before reading: its answer is
    // still there to read, so a failed write is reported only if no answer comes.
    let write_err = s.write_all(format!("{line}\n").as_bytes()).err();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if start.elapsed() >= timeout {
            return Err(ClientError::Timeout { path, ms: timeout.as_millis() });
        }
        s.set_read_timeout(Some(left())).map_err(io_err)?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(write_err.unwrap_or(e))),
        };
        if n == 0 {
            let err = write_err.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection without an answer")
            });
            return Err(ClientError::Io { path, err });
        }
        // Daemons send nothing after the first line until the next notification, which a
        // subscriber reads itself: nothing is lost by reading whole buffers here.
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            got.extend_from_slice(&buf[..end]);
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > MAX_ANSWER {
            return Err(ClientError::TooLong { path, max: MAX_ANSWER });
        }
    }
    s.set_read_timeout(None).map_err(io_err)?;
    s.set_write_timeout(None).map_err(io_err)?;
    Ok((String::from_utf8_lossy(&got).into_owned(), s))
}

/// A subscription to a publisher's notifications, read without blocking from the caller's
/// event loop. When it hangs up or stays silent, the caller polls the page instead.
#[derive(Debug)]
pub struct Subscription {
    stream: UnixStream,
    last: Instant,
}

/// How long a daemon's loop waits when it subscribes again to a publisher that went away: a
/// publisher that accepts but never answers (stopped with SIGSTOP, hung, or a listener another
/// user put at the socket's path) would otherwise stall the loop for the whole client timeout
/// at every try. A healthy publisher answers within a millisecond; a slow one is tried again.
pub const RESUBSCRIBE_WAIT: Duration = Duration::from_millis(20);

impl Subscription {
    /// Subscribes again from a daemon's loop: [`Subscription::open`] within [`RESUBSCRIBE_WAIT`].
    pub fn reopen(socket: &Path) -> Option<Self> {
        Self::open(socket, RESUBSCRIBE_WAIT).ok()
    }

    /// Subscribes at `socket` (within `timeout`).
    pub fn open(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let (_, stream) = request(socket, "subscribe", timeout)?;
        stream.set_nonblocking(true).map_err(|err| ClientError::Io { path: socket.display().to_string(), err })?;
        Ok(Subscription { stream, last: Instant::now() })
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Reads what arrived; returns false when the publisher hung up.
    pub fn drain(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => self.last = Instant::now(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// When the last notification arrived.
    pub fn last_notified(&self) -> Instant {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines() {
        let mut b = [0u8; 12];
        for v in [0u32, 7, 10, 12345, u32::MAX] {
            let n = format_u32_line(v, &mut b);
            assert_eq!(&b[..n], format!("{v}\n").as_bytes());
        }
    }

    #[test]
    fn waits_again_report_what_a_wait_would() {
        let (a, a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        let mut p = Poller::new();
        let ta = p.add(a.as_fd(), READABLE);
        let tb = p.add(b.as_fd(), READABLE);
        p.wait(Some(Duration::ZERO)).unwrap();
        assert!(!p.any_ready());
        // Nothing ready: the repeated wait times out with nothing (the epoll set made now).
        p.wait_again(Some(Duration::from_millis(1))).unwrap();
        assert!(!p.any_ready() && p.again.is_some());
        // The second descriptor readable: only its token says so, at every repeated wait
        // (level-triggered, as poll).
        b_peer.write_all(b"x").unwrap();
        for _ in 0..2 {
            p.wait_again(None).unwrap();
            assert!(p.any_ready() && p.readable(tb) && !p.readable(ta));
        }
        // A hang-up is seen too.
        drop(a_peer);
        p.wait_again(None).unwrap();
        assert!(p.readable(ta) && p.readable(tb));
        // New descriptors: the set is made again from them.
        p.clear();
        assert!(p.again.is_none());
        let (c, mut c_peer) = UnixStream::pair().unwrap();
        let tc = p.add(c.as_fd(), READABLE);
        p.wait_again(Some(Duration::from_millis(1))).unwrap();
        assert!(!p.any_ready());
        c_peer.write_all(b"y").unwrap();
        p.wait_again(None).unwrap();
        assert!(p.readable(tc));
    }
}
