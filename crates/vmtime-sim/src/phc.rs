//! A simulated pure PHC on a simulated guest: it reads true UTC with a uniform read jitter, and
//! answers PTP_SYS_OFFSET_EXTENDED-style triples against the guest kernel's CLOCK_REALTIME.

use crate::host::{Clock, SimHost};
use std::io;
use vmtime_core::phc::{PhcCaps, PhcDevice, PhcTriple};

/// The PHC of `guest`, jittered by up to ±`jitter_ns`.
#[derive(Debug)]
pub struct SimPhc<'a> {
    /// The guest whose kernel the readings pair with.
    pub guest: &'a mut SimHost,
    /// Uniform read jitter, ± ns.
    pub jitter_ns: u64,
}

impl SimPhc<'_> {
    fn triple(&mut self) -> PhcTriple {
        let w = self.guest.sample(Clock::Realtime); // the window and the counter at its middle
        let j = self.guest.rng.range(0, 2 * self.jitter_ns) as i128 - self.jitter_ns as i128;
        let truth_tai = self.guest.truth_at_counter(w.counter);
        let truth_utc = truth_tai - self.guest.world_tai_minus_utc_at(truth_tai) as i128 * 1_000_000_000;
        self.guest.advance(1_000); // the driver's loop
        PhcTriple { sys_before_ns: w.before_ns, phc_ns: truth_utc + j, sys_after_ns: w.after_ns }
    }
}

impl PhcDevice for SimPhc<'_> {
    fn caps(&mut self) -> io::Result<PhcCaps> {
        Ok(PhcCaps { max_adj: 0, n_pins: 0, cross_timestamping: false })
    }
    fn precise(&mut self) -> io::Result<PhcTriple> {
        Err(io::Error::from_raw_os_error(95))
    }
    fn extended(&mut self, n: usize) -> io::Result<Vec<PhcTriple>> {
        Ok((0..n).map(|_| self.triple()).collect())
    }
    fn basic(&mut self, n: usize) -> io::Result<Vec<PhcTriple>> {
        self.extended(n)
    }
}
