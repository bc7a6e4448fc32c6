//! chrony's SOCK refclock.
//!
//! chronyd creates the socket (`refclock SOCK PATH` in chrony.conf) and reads datagrams of
//! `struct sock_sample`: a `struct timeval` (the system time of the measurement), a `double`
//! offset in seconds (reference − system time), `int pulse` (0 here), `int leap` (0 normal,
//! 1 insert, 2 delete), an ignored `int` and `int magic` = 0x534f434b, native-endian with
//! the C layout (40 bytes on LP64 Linux).
use super::*;

/// The magic number ("SOCK").
pub const MAGIC: i32 = 0x534f_434b;
/// The datagram's size on LP64 Linux.
pub const SAMPLE_SIZE: usize = 40;

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SockSample {
    /// System time of the measurement, s.
    pub tv_sec: i64,
    /// Its µs.
    pub tv_usec: i64,
    /// Reference − system time, s.
    pub offset: f64,
    /// 0: the sample carries whole seconds.
    pub pulse: i32,
    /// 0 normal, 1 insert, 2 delete.
    pub leap: i32,
}

impl SockSample {
    /// The datagram (native byte order, C layout).
    pub fn to_bytes(&self) -> [u8; SAMPLE_SIZE] {
        let mut b = [0u8; SAMPLE_SIZE];
        b[0..8].copy_from_slice(&self.tv_sec.to_ne_bytes());
        b[8..16].copy_from_slice(&self.tv_usec.to_ne_bytes());
        b[16..24].copy_from_slice(&self.offset.to_ne_bytes());
        b[24..28].copy_from_slice(&self.pulse.to_ne_bytes());
        b[28..32].copy_from_slice(&self.leap.to_ne_bytes());
        // 32..36: padding, ignored.
        b[36..40].copy_from_slice(&MAGIC.to_ne_bytes());
        b
    }
}

/// chrony's leap value for a page's leap indicator: insert while a positive leap second is
/// announced or under way, delete while a negative one is announced.
pub fn leap_of(indicator: u8) -> i32 {
    match indicator {
        leap::PRE_POS | leap::POS => 1,
        leap::PRE_NEG => 2,
        _ => 0,
    }
}

/// The sample for a pairing: labelled with CLOCK_REALTIME at the counter (truncated to µs),
/// offset = page UTC − CLOCK_REALTIME at the same counter.
pub fn sample_of(p: &Pairing) -> SockSample {
    let sec = p.realtime >> 64;
    let usec = ((p.realtime & (UNIT - 1)) * 1_000_000) >> 64;
    SockSample {
        tv_sec: sec as i64,
        tv_usec: usec as i64,
        offset: p.offset() as f64 / UNIT as f64,
        pulse: 0,
        leap: leap_of(p.leap),
    }
}

/// What to do at a send slot.
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub enum ChronyAction {
    /// Send this sample.
    Send(SockSample),
    /// Send nothing, for this reason.
    Hold(Hold),
}

/// The chrony feed: one decision per send slot (every `--interval-ms`).
#[derive(Clone, Debug)]
pub struct ChronyFeed {
    gate: PageGate,
    /// Samples sent.
    pub sent: u64,
    /// Slots held.
    pub held: u64,
    /// The last reason for holding.
    pub last_hold: Option<Hold>,
    /// The last offset sent, ns.
    pub last_offset_ns: Option<f64>,
}

impl ChronyFeed {
    /// A feed whose send interval is `interval_ns` (a page unchanged for two intervals after
    /// a disruption is taken as current).
    pub fn new(interval_ns: i128) -> Self {
        ChronyFeed { gate: PageGate::new(2 * interval_ns), sent: 0, held: 0, last_hold: None, last_offset_ns: None }
    }

    /// A new send interval (SIGHUP): the hold-off after a disruption follows it (two
    /// intervals).
    pub fn set_interval_ns(&mut self, interval_ns: i128) {
        self.gate.set_holdoff_ns(2 * interval_ns);
    }

    /// Whether a disruption is pending (the page is not current yet): the next page is
    /// urgent ([`crate::cadence::Look::observe_now`]).
    pub fn disruption_pending(&self) -> bool {
        self.gate.disrupted()
    }

    /// One send slot.
    pub fn handle(&mut self, obs: &Observation<'_>) -> ChronyAction {
        match self.gate.pass(obs) {
            Ok(p) => {
                let s = sample_of(&p);
                self.sent += 1;
                self.last_offset_ns = Some(s.offset * 1e9);
                ChronyAction::Send(s)
            }
            Err(h) => {
                self.held += 1;
                self.last_hold = Some(h);
                ChronyAction::Hold(h)
            }
        }
    }
}
