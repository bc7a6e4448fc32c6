//! A second opinion on the page, sans-IO: an SNTP client (RFC 4330's client side of RFC 5905's
//! packet) that never steers anything and only judges the page.
//!
//! A hypervisor's clock can be wrong without saying so. `vmtime sync --cross-check-ntp ADDR`
//! asks an NTP server now and then and compares the server's time with the *page's* time (the
//! client's timestamps T1 and T4 are the page's UTC, read at the send and at the receipt):
//!
//! * offset θ = ((T2 − T1) + (T3 − T4)) / 2 (server − page), round trip δ = (T4 − T1) − (T3 − T2);
//! * the server's bound: its root delay / 2 + its root dispersion + δ / 2 (the true time lies
//!   within that of its answer, as far as it knows);
//! * the page's bound: its maxerror at T1 and T4 (the larger);
//! * **disagree** when |θ| exceeds both bounds added: one of the two is wrong beyond what it
//!   claims. Then the discipline widens the kernel's maxerror to cover the disagreement and
//!   leaves the clock unsynchronised (STA_UNSYNC); it never moves the clock towards the server.
//!
//! The client is cheap to the server and never stalls its caller: one query in flight at a time,
//! a timeout, queries every [`INTERVAL_MIN_NS`] at first and every [`INTERVAL_NS`] once the server
//! answers, doubling up to [`BACKOFF_MAX_NS`] while it does not (or sends a kiss-o'-death).
//! Replies are matched by a random transmit timestamp (the server echoes it as the origin), so
//! a stale, duplicated or forged datagram without it is ignored.

use serde::Serialize;

const NS: i128 = 1_000_000_000;
const UNIT: i128 = 1 << 64;

/// The packet's size without extensions.
pub const PACKET_SIZE: usize = 48;
/// Seconds from the NTP epoch (1900) to the Unix epoch.
pub const NTP_UNIX_OFFSET: i128 = 2_208_988_800;
/// The first queries, and after a timeout the starting point of the backoff, ns.
pub const INTERVAL_MIN_NS: i128 = 16 * NS;
/// Queries once the server answers, ns.
pub const INTERVAL_NS: i128 = 64 * NS;
/// The longest wait between queries while the server does not answer, ns.
pub const BACKOFF_MAX_NS: i128 = 1024 * NS;
/// How long an answer is waited for, ns.
pub const TIMEOUT_NS: i128 = 2 * NS;
/// Answers at [`INTERVAL_MIN_NS`] before the interval grows to [`INTERVAL_NS`].
pub const FAST_QUERIES: u32 = 4;

/// An SNTP client request (version 4, mode 3), with `cookie` as its transmit timestamp (the
/// server echoes it as the origin timestamp: the reply is matched by it). Nothing else is set:
/// the client's own time is not disclosed.
pub fn request(cookie: u64) -> [u8; PACKET_SIZE] {
    let mut p = [0u8; PACKET_SIZE];
    p[0] = (4 << 3) | 3; // LI 0, VN 4, mode 3 (client)
    p[40..48].copy_from_slice(&cookie.to_be_bytes());
    p
}

/// A server's reply, decoded and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Leap indicator (0–2; 3 is refused).
    pub leap: u8,
    /// Stratum (1–15).
    pub stratum: u8,
    /// Root delay, ns.
    pub root_delay_ns: i128,
    /// Root dispersion, ns.
    pub root_dispersion_ns: i128,
    /// The origin timestamp (our cookie).
    pub origin: u64,
    /// Receive timestamp T2 (NTP 32.32).
    pub receive: u64,
    /// Transmit timestamp T3 (NTP 32.32).
    pub transmit: u64,
}

/// Why a datagram is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Refused {
    /// Shorter than 48 bytes.
    Short,
    /// Not a server reply (mode 4) of version 1–4.
    NotAReply,
    /// Its origin timestamp is not our query's (stale, duplicated, forged, or none in flight).
    NotOurs,
    /// A kiss-o'-death (stratum 0): the server asks us to back off.
    Kiss,
    /// The server says it is not synchronised (leap indicator 3, or stratum 16 or more).
    Unsynchronised,
    /// Its timestamps are zero or its transmit is before its receive.
    BadTimestamps,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Short => "shorter than an NTP packet",
            Refused::NotAReply => "not an NTP server reply",
            Refused::NotOurs => "not the answer to our query",
            Refused::Kiss => "a kiss-o'-death: backing off",
            Refused::Unsynchronised => "the server says it is not synchronised",
            Refused::BadTimestamps => "its timestamps are invalid",
        })
    }
}

/// NTP short format (16.16 s) → ns.
fn short_ns(b: &[u8]) -> i128 {
    (u32::from_be_bytes(b.try_into().expect("4 bytes")) as i128 * NS) >> 16
}

/// Decodes a datagram (mode, version, lengths; not yet matched to a query).
pub fn decode(b: &[u8]) -> Result<Reply, Refused> {
    if b.len() < PACKET_SIZE {
        return Err(Refused::Short);
    }
    let (li, vn, mode) = (b[0] >> 6, (b[0] >> 3) & 7, b[0] & 7);
    if mode != 4 || !(1..=4).contains(&vn) {
        return Err(Refused::NotAReply);
    }
    let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let r = Reply {
        leap: li,
        stratum: b[1],
        root_delay_ns: short_ns(&b[4..8]),
        root_dispersion_ns: short_ns(&b[8..12]),
        origin: u64_at(24),
        receive: u64_at(32),
        transmit: u64_at(40),
    };
    if r.stratum == 0 {
        return Err(Refused::Kiss);
    }
    if li == 3 || r.stratum >= 16 {
        return Err(Refused::Unsynchronised);
    }
    if r.receive == 0 || r.transmit == 0 {
        return Err(Refused::BadTimestamps);
    }
    Ok(r)
}

/// An NTP 32.32 timestamp → Unix 64.64 s, in the era that puts it closest to `near` (Unix 64.64):
/// the 32-bit seconds wrap every 136 years (the next time in 2036).
pub fn ntp_to_unix(ts: u64, near: i128) -> i128 {
    let frac = ((ts as u32) as i128) << 32;
    let secs = (ts >> 32) as i128 - NTP_UNIX_OFFSET;
    let era_len = 1i128 << 32;
    let base = (secs << 64) | frac;
    // Candidates one era either side; the closest to `near`.
    [base - (era_len << 64), base, base + (era_len << 64)]
        .into_iter()
        .min_by_key(|t| (t - near).unsigned_abs())
        .expect("three candidates")
}

/// One exchange measured against the page.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// Server − page, ns.
    pub offset_ns: f64,
    /// The round trip, ns.
    pub delay_ns: f64,
    /// The server's bound: root delay / 2 + root dispersion + round trip / 2, ns.
    pub server_bound_ns: f64,
    /// The page's maxerror at the exchange, ns (`None`: the page gives none).
    pub page_bound_ns: Option<f64>,
    /// Stratum of the server.
    pub stratum: u8,
}

impl Measurement {
    /// From a matched reply: `t1` and `t4` the page's UTC (Unix 64.64) at the send and the
    /// receipt, `page_maxerror_ns` the page's maxerror then (the larger of the two).
    pub fn of(r: &Reply, t1: i128, t4: i128, page_maxerror_ns: Option<u128>) -> Result<Self, Refused> {
        let t2 = ntp_to_unix(r.receive, t1);
        let t3 = ntp_to_unix(r.transmit, t4);
        if t3 < t2 {
            return Err(Refused::BadTimestamps);
        }
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let delay = ((t4 - t1) - (t3 - t2)).max(0);
        let to_ns = |x: i128| (x as f64) * 1e9 / UNIT as f64;
        let delay_ns = to_ns(delay);
        Ok(Measurement {
            offset_ns: to_ns(offset),
            delay_ns,
            server_bound_ns: r.root_delay_ns as f64 / 2.0 + r.root_dispersion_ns as f64 + delay_ns / 2.0,
            page_bound_ns: page_maxerror_ns.map(|m| m as f64),
            stratum: r.stratum,
        })
    }

    /// Whether page and server disagree beyond both their bounds (a page without a bound is
    /// judged by the server's alone).
    pub fn disagrees(&self) -> bool {
        self.offset_ns.abs() > self.server_bound_ns + self.page_bound_ns.unwrap_or(0.0)
    }
}

/// The verdict, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No answer yet.
    #[default]
    Unknown,
    /// The last answer agrees with the page within both bounds.
    Agree,
    /// The last answer disagrees beyond both bounds.
    Disagree,
    /// The server has not answered the last queries (the last verdict is no longer current).
    NoReply,
}

impl Verdict {
    /// Its name in status and logs.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Agree => "agree",
            Verdict::Disagree => "disagree",
            Verdict::NoReply => "no_reply",
        }
    }
}

/// Something to log: one line per episode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum CrossNotice {
    /// Page and server disagree (the start of an episode).
    Disagree(Measurement),
    /// They agree again.
    Agree(Measurement),
    /// The server stopped answering (logged once until it answers).
    NoReply,
    /// A datagram was refused (logged once per kind until an answer is used).
    Refused(Refused),
}

impl std::fmt::Display for CrossNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrossNotice::Disagree(m) => write!(
                f,
                "cross-check: the NTP server is {:+.6} s from the page, beyond both bounds (server ±{:.6} s, page {}): the kernel's maxerror is widened to cover it and the clock is marked unsynchronised; the page is still followed",
                m.offset_ns / 1e9,
                m.server_bound_ns / 1e9,
                m.page_bound_ns.map_or("unbounded".to_string(), |b| format!("±{:.6} s", b / 1e9))
            ),
            CrossNotice::Agree(m) => write!(
                f,
                "cross-check: the NTP server agrees with the page again ({:+.6} s, within the bounds)",
                m.offset_ns / 1e9
            ),
            CrossNotice::NoReply => f.write_str("cross-check: the NTP server does not answer: backing off (the page is followed as before)"),
            CrossNotice::Refused(r) => write!(f, "cross-check: a datagram from the NTP server was not used: {r}"),
        }
    }
}

/// What the caller must do now.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossAction {
    /// Send this request, noting the page's UTC at the send (Unix 64.64) with
    /// [`CrossCheck::sent`].
    Send([u8; PACKET_SIZE]),
}

/// The cross-check's state, for `status` (`"cross_check"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CrossStatus {
    /// `agree`, `disagree`, `unknown` or `no_reply`.
    pub state: &'static str,
    /// Server − page at the last answer, ns.
    pub offset_ns: Option<f64>,
    /// The server.
    pub server: String,
    /// The last measurement.
    pub last: Option<Measurement>,
    /// Queries sent.
    pub queries: u64,
    /// Answers used.
    pub replies: u64,
    /// Queries that timed out.
    pub timeouts: u64,
    /// Datagrams refused.
    pub refused: u64,
    /// Disagreement episodes.
    pub episodes: u64,
    /// The interval to the next query, s.
    pub interval_s: f64,
}

/// The cross-check client (see the module's documentation). Times are any monotonic clock, ns.
#[derive(Clone, Debug)]
pub struct CrossCheck {
    server: String,
    next_query_ns: i128,
    interval_ns: i128,
    /// (cookie, monotonic send time, page UTC at the send, page maxerror then) of the query in flight.
    in_flight: Option<(u64, i128, i128, Option<u128>)>,
    verdict: Verdict,
    last: Option<Measurement>,
    answered: u32,
    notices: Vec<CrossNotice>,
    said_no_reply: bool,
    said_refused: Option<Refused>,
    status: CrossStatus,
}

impl CrossCheck {
    /// A client for `server` (its name in status and logs); the first query is due at `now_ns`.
    pub fn new(server: String, now_ns: i128) -> Self {
        CrossCheck {
            status: CrossStatus { server: server.clone(), state: Verdict::Unknown.name(), ..Default::default() },
            server,
            next_query_ns: now_ns,
            interval_ns: INTERVAL_MIN_NS,
            in_flight: None,
            verdict: Verdict::Unknown,
            last: None,
            answered: 0,
            notices: Vec::new(),
            said_no_reply: false,
            said_refused: None,
        }
    }

    /// When the caller must call [`CrossCheck::tick`] next (a query or a timeout is due).
    pub fn next_deadline_ns(&self) -> i128 {
        match self.in_flight {
            Some((_, sent, _, _)) => sent + TIMEOUT_NS,
            None => self.next_query_ns,
        }
    }

    /// Times out a query, or starts one when due: `cookie` is a fresh random value.
    pub fn tick(&mut self, now_ns: i128, cookie: u64) -> Option<CrossAction> {
        if let Some((_, sent, _, _)) = self.in_flight {
            if now_ns < sent + TIMEOUT_NS {
                return None;
            }
            self.in_flight = None;
            self.status.timeouts += 1;
            self.backoff(now_ns);
            if self.verdict != Verdict::Unknown || self.answered == 0 {
                self.verdict = Verdict::NoReply;
            }
            if !std::mem::replace(&mut self.said_no_reply, true) {
                self.notices.push(CrossNotice::NoReply);
            }
            self.refresh();
            return None;
        }
        if now_ns < self.next_query_ns {
            return None;
        }
        self.status.queries += 1;
        // The send time is noted by `sent`; until then the query counts from now.
        self.in_flight = Some((cookie, now_ns, 0, None));
        Some(CrossAction::Send(request(cookie)))
    }

    /// Whether a query waits for its answer.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Nothing can be judged now (the page gives no time): the next query waits
    /// [`INTERVAL_MIN_NS`] (a query in flight is left to its answer or timeout).
    pub fn postpone(&mut self, now_ns: i128) {
        if self.in_flight.is_none() && now_ns >= self.next_query_ns {
            self.next_query_ns = now_ns + INTERVAL_MIN_NS;
        }
    }

    /// The request was sent at `now_ns`, the page's UTC then being `page_utc` (Unix 64.64) with
    /// maxerror `page_maxerror_ns`.
    pub fn sent(&mut self, now_ns: i128, page_utc: i128, page_maxerror_ns: Option<u128>) {
        if let Some((cookie, _, _, _)) = self.in_flight {
            self.in_flight = Some((cookie, now_ns, page_utc, page_maxerror_ns));
        }
    }

    /// The request could not be sent (no route, a full buffer): counts as no answer.
    pub fn send_failed(&mut self, now_ns: i128) {
        if let Some((_, _, _, _)) = self.in_flight.take() {
            self.status.timeouts += 1;
            self.backoff(now_ns);
            self.verdict = Verdict::NoReply;
            if !std::mem::replace(&mut self.said_no_reply, true) {
                self.notices.push(CrossNotice::NoReply);
            }
            self.refresh();
        }
    }

    fn backoff(&mut self, now_ns: i128) {
        self.interval_ns = (self.interval_ns * 2).clamp(INTERVAL_MIN_NS, BACKOFF_MAX_NS);
        self.next_query_ns = now_ns + self.interval_ns;
    }

    fn refuse(&mut self, why: Refused) {
        self.status.refused += 1;
        if self.said_refused != Some(why) {
            self.said_refused = Some(why);
            self.notices.push(CrossNotice::Refused(why));
        }
    }

    /// A datagram arrived at `now_ns`; the page's UTC then is `page_utc` with maxerror
    /// `page_maxerror_ns`.
    pub fn received(&mut self, bytes: &[u8], now_ns: i128, page_utc: i128, page_maxerror_ns: Option<u128>) {
        let r = match decode(bytes) {
            Ok(r) => r,
            Err(Refused::Kiss) => {
                // Only a kiss that answers our query counts (anyone can send one otherwise).
                if bytes.len() >= PACKET_SIZE && self.in_flight.is_some_and(|(c, ..)| c.to_be_bytes() == bytes[24..32])
                {
                    self.in_flight = None;
                    self.interval_ns = BACKOFF_MAX_NS / 2;
                    self.backoff(now_ns);
                }
                return self.refuse(Refused::Kiss);
            }
            Err(e) => return self.refuse(e),
        };
        let Some((_, _, t1, max1)) = self.in_flight.filter(|(c, ..)| *c == r.origin) else {
            return self.refuse(Refused::NotOurs);
        };
        self.in_flight = None;
        let m = match Measurement::of(&r, t1, page_utc, max1.max(page_maxerror_ns)) {
            Ok(m) => m,
            Err(e) => return self.refuse(e),
        };
        self.said_no_reply = false;
        self.said_refused = None;
        self.answered = self.answered.saturating_add(1);
        self.status.replies += 1;
        self.interval_ns = if self.answered < FAST_QUERIES { INTERVAL_MIN_NS } else { INTERVAL_NS };
        self.next_query_ns = now_ns + self.interval_ns;
        let was_disagreeing = self.last.is_some_and(|l| l.disagrees());
        self.verdict = if m.disagrees() { Verdict::Disagree } else { Verdict::Agree };
        match (was_disagreeing, m.disagrees()) {
            (false, true) => {
                self.status.episodes += 1;
                self.notices.push(CrossNotice::Disagree(m));
            }
            (true, false) => self.notices.push(CrossNotice::Agree(m)),
            _ => {}
        }
        self.last = Some(m);
        self.refresh();
    }

    fn refresh(&mut self) {
        self.status.state = self.verdict.name();
        self.status.last = self.last;
        self.status.offset_ns = self.last.map(|m| m.offset_ns);
        self.status.interval_s = self.interval_ns as f64 / 1e9;
    }

    /// The verdict in force.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// What the kernel's maxerror must cover while the last answer disagrees, ns: the distance
    /// from the page to the server plus the server's own bound (the true time may be anywhere
    /// the server allows). `None` while they agree (or nothing is known).
    pub fn widen_ns(&self) -> Option<f64> {
        let m = self.last.filter(|m| m.disagrees())?;
        Some(m.offset_ns.abs() + m.server_bound_ns)
    }

    /// What happened since the last call, for the log.
    pub fn take_notices(&mut self) -> Vec<CrossNotice> {
        std::mem::take(&mut self.notices)
    }

    /// The state for `status`.
    pub fn status(&self) -> &CrossStatus {
        &self.status
    }

    /// The server's name.
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// A Unix 64.64 instant → NTP 32.32 (the era wraps; for answering in tests and tools).
pub fn unix_to_ntp(unix: i128) -> u64 {
    let secs = (unix >> 64) + NTP_UNIX_OFFSET;
    let frac = ((unix & (UNIT - 1)) >> 32) as u64;
    ((secs as u64) << 32) | frac
}

/// A server's reply to `req` (for test responders and tools): receive and transmit at `now`
/// (Unix 64.64), stratum 2, the given root delay and dispersion (NTP short format, 16.16 s).
pub fn reply_to(req: &[u8], now: i128, root_delay: u32, root_dispersion: u32) -> Option<[u8; PACKET_SIZE]> {
    if req.len() < PACKET_SIZE || req[0] & 7 != 3 {
        return None;
    }
    let mut p = [0u8; PACKET_SIZE];
    p[0] = (4 << 3) | 4;
    p[1] = 2;
    p[2] = req[2];
    p[3] = 0xEC; // precision 2^-20 s
    p[4..8].copy_from_slice(&root_delay.to_be_bytes());
    p[8..12].copy_from_slice(&root_dispersion.to_be_bytes());
    p[12..16].copy_from_slice(b"LOCL");
    let ts = unix_to_ntp(now).to_be_bytes();
    p[16..24].copy_from_slice(&ts);
    p[24..32].copy_from_slice(&req[40..48]);
    p[32..40].copy_from_slice(&ts);
    p[40..48].copy_from_slice(&ts);
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i128 = 1_796_600_000 << 64; // Unix 64.64

    fn ns(x: i128) -> i128 {
        crate::ns_to_frac(x, false)
    }

    /// One exchange: the server `server_ahead_ns` ahead of the page, the round trip `rtt_ns`.
    fn exchange(c: &mut CrossCheck, server_ahead_ns: i128, rtt_ns: i128, page_max: u128, dispersion: u32) {
        let at_ns = c.next_deadline_ns();
        let Some(CrossAction::Send(req)) = c.tick(at_ns, 0x1234_5678_9abc_def0 ^ at_ns as u64) else {
            panic!("a query is due at {at_ns}")
        };
        let t1 = T0 + ns(at_ns);
        c.sent(at_ns, t1, Some(page_max));
        let server_now = t1 + ns(rtt_ns / 2) + ns(server_ahead_ns);
        let rep = reply_to(&req, server_now, 0, dispersion).unwrap();
        c.received(&rep, at_ns + rtt_ns, t1 + ns(rtt_ns), Some(page_max));
    }

    #[test]
    fn the_packet_round_trips() {
        let req = request(0xdead_beef_0000_0001);
        assert_eq!(req[0], 0x23, "LI 0, VN 4, mode 3");
        assert!(req[1..40].iter().all(|&b| b == 0), "nothing about the client is disclosed");
        let rep = reply_to(&req, T0, 0x0001_0000, 0x0000_8000).unwrap();
        let r = decode(&rep).unwrap();
        assert_eq!((r.origin, r.stratum, r.leap), (0xdead_beef_0000_0001, 2, 0));
        assert_eq!((r.root_delay_ns, r.root_dispersion_ns), (1_000_000_000, 500_000_000));
        assert!((ntp_to_unix(r.transmit, T0) - T0).abs() < ns(1));
        // The era: a 2036 wrap is read next to the page's time.
        let after_wrap = (2_085_978_496i128 + 10) << 64; // 2036-02-07 06:28:26 Unix
        assert_eq!(ntp_to_unix(unix_to_ntp(after_wrap), after_wrap - (100 << 64)), after_wrap);
        // Refusals.
        assert_eq!(decode(&rep[..47]), Err(Refused::Short));
        assert_eq!(decode(&req), Err(Refused::NotAReply));
        let mut kiss = rep;
        kiss[1] = 0;
        assert_eq!(decode(&kiss), Err(Refused::Kiss));
        let mut unsync = rep;
        unsync[0] |= 0xC0;
        assert_eq!(decode(&unsync), Err(Refused::Unsynchronised));
        let mut zero = rep;
        zero[40..48].fill(0);
        assert_eq!(decode(&zero), Err(Refused::BadTimestamps));
    }

    #[test]
    fn agree_and_disagree_beyond_both_bounds() {
        let mut c = CrossCheck::new("127.0.0.1:123".into(), 0);
        // 300 µs apart, page ±1 ms: agree.
        exchange(&mut c, 300_000, 200_000, 1_000_000, 0);
        assert_eq!(c.verdict(), Verdict::Agree);
        assert_eq!(c.status().state, "agree");
        assert!((c.status().offset_ns.unwrap() - 300_000.0).abs() < 2.0, "{:?}", c.status());
        assert_eq!(c.widen_ns(), None);
        assert!(c.take_notices().is_empty(), "agreement from the start is not news");
        // 50 ms apart (Azure's PTP clock): beyond page ±1 ms + server (rtt/2 = 100 µs).
        exchange(&mut c, 50_000_000, 200_000, 1_000_000, 0);
        assert_eq!(c.status().state, "disagree");
        let w = c.widen_ns().unwrap();
        assert!((w - 50_100_000.0).abs() < 10.0, "{w}");
        assert!(matches!(c.take_notices()[..], [CrossNotice::Disagree(_)]));
        // Still: no second line for the same episode.
        exchange(&mut c, 50_000_000, 200_000, 1_000_000, 0);
        assert!(c.take_notices().is_empty());
        assert_eq!(c.status().episodes, 1);
        // The server's own dispersion covers it: agree again (one line).
        exchange(&mut c, 50_000_000, 200_000, 1_000_000, 0x0000_1000); // 62.5 ms
        assert_eq!(c.verdict(), Verdict::Agree);
        assert!(matches!(c.take_notices()[..], [CrossNotice::Agree(_)]));
        // The offset is server − page whichever way: the page ahead is negative.
        exchange(&mut c, -20_000_000, 2_000, 1_000, 0);
        assert!((c.status().offset_ns.unwrap() + 20_000_000.0).abs() < 2.0);
        assert_eq!(c.verdict(), Verdict::Disagree);
        // After FAST_QUERIES answers the interval is the long one.
        assert_eq!(c.status().interval_s, 64.0);
    }

    #[test]
    fn a_silent_server_is_backed_off_and_never_stalls() {
        let mut c = CrossCheck::new("192.0.2.1:123".into(), 0);
        let mut t = 0;
        let mut sent = 0;
        let mut intervals = Vec::new();
        let mut last_send = None;
        // Drive it as the daemon does: tick at every deadline; the server never answers.
        for _ in 0..40 {
            t = c.next_deadline_ns();
            if let Some(CrossAction::Send(_)) = c.tick(t, t as u64) {
                c.sent(t, T0 + ns(t), None);
                sent += 1;
                if let Some(l) = last_send.replace(t) {
                    intervals.push(t - l);
                }
            }
        }
        assert_eq!(c.status().state, "no_reply");
        assert!(matches!(c.take_notices()[..], [CrossNotice::NoReply]), "said once");
        assert_eq!(c.status().timeouts + u64::from(c.in_flight.is_some()), sent);
        // The rate is bounded: every gap between queries is at least the minimum interval, and
        // they double up to the maximum.
        assert!(intervals.iter().all(|&i| i >= INTERVAL_MIN_NS), "{intervals:?}");
        assert_eq!(*intervals.last().unwrap(), BACKOFF_MAX_NS + TIMEOUT_NS);
        assert!(t > 10 * BACKOFF_MAX_NS, "40 deadlines span hours, not a busy loop");
        // A late answer to an abandoned query is not used.
        let req = request(1);
        let rep = reply_to(&req, T0, 0, 0).unwrap();
        c.received(&rep, t + 1, T0, None);
        assert_eq!(c.status().replies, 0);
        assert!(matches!(c.take_notices()[..], [CrossNotice::Refused(Refused::NotOurs)]));
        assert_eq!(c.widen_ns(), None, "no answer: nothing to widen by");
    }

    #[test]
    fn forged_duplicated_and_kiss_datagrams() {
        let mut c = CrossCheck::new("127.0.0.1:123".into(), 0);
        let Some(CrossAction::Send(req)) = c.tick(0, 77) else { panic!() };
        c.sent(0, T0, Some(1_000));
        // A forged answer without our cookie: ignored, the query stays in flight.
        let forged = reply_to(&request(78), T0 + ns(3_600 * NS), 0, 0).unwrap();
        c.received(&forged, 1_000, T0 + ns(1_000), Some(1_000));
        assert_eq!((c.status().replies, c.verdict()), (0, Verdict::Unknown));
        // Ours: used once; a duplicate is not ours any more.
        let ours = reply_to(&req, T0 + ns(500), 0, 0).unwrap();
        c.received(&ours, 1_000, T0 + ns(1_000), Some(1_000));
        c.received(&ours, 1_100, T0 + ns(1_100), Some(1_000));
        assert_eq!((c.status().replies, c.status().refused), (1, 2));
        assert_eq!(c.verdict(), Verdict::Agree);
        // A kiss-o'-death answering our query: the next query waits long.
        let t = c.next_deadline_ns();
        let Some(CrossAction::Send(req)) = c.tick(t, 79) else { panic!() };
        c.sent(t, T0, None);
        let mut kiss = reply_to(&req, T0, 0, 0).unwrap();
        kiss[1] = 0;
        c.received(&kiss, t + 1, T0, None);
        assert!(c.next_deadline_ns() >= t + BACKOFF_MAX_NS, "{}", c.next_deadline_ns() - t);
        assert_eq!(c.verdict(), Verdict::Agree, "a kiss says nothing about the page");
    }
}
