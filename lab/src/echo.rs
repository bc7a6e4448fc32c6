//! The counter echo: a mailbox in shared memory (an ivshmem BAR the host also maps as a file)
//! through which the host asks the guest for its counter, its page's time and its
//! CLOCK_REALTIME, bracketing each request with its own counter and clock reads.
//!
//! This is how the lab measures the guest's counter map (TCG: guest TSC = host TSC + offset,
//! the offset unknown and changed by every pause) and the real error of what the guest sees.
//!
//! Words (u32, little-endian, atomics on both sides): 0 request sequence (host), 1 reply
//! sequence (guest), 2–3 guest counter, 4–5 page time ns at that counter (i64; i64::MIN when
//! there is none), 6–7 page half-width ns (the page's bound), 8–9 guest CLOCK_REALTIME ns, 10
//! `READY` once the guest serves, 11–12 the guest counter again after its CLOCK_REALTIME read.
//!
//! Why the errors do not depend on how busy this machine is: the guest's answer carries its
//! counter, and under TCG the guest counter is this machine's TSC plus an offset (measured
//! once per resume, from the tightest of many round trips). So each answer is compared with this
//! machine's CLOCK_REALTIME *at the instant the guest read its counter*, interpolated between
//! two (TSC, CLOCK_REALTIME) pairs the host reads just before the request and just after the
//! reply. A round trip that takes milliseconds because QEMU or the lab was descheduled widens
//! nothing; what remains is the noise floor of each sample (the offset's uncertainty, the gap
//! between the guest's two counter reads, the host pairs' widths), reported with every figure.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};
use vmclock::seqlock::PageMemory;
use vmclock::Mapping;
use vmtime_sys::clock::{gettime, ClockId};

/// The request that asks the guest's echo to exit.
const QUIT: u32 = u32::MAX;
/// Written by the guest when it starts serving (the host clears it first).
const READY: u32 = 0x4543_484f;
const READY_WORD: usize = 10;

fn put64(m: &Mapping, at: usize, v: u64) {
    m.words()[at].store(v as u32, Relaxed);
    m.words()[at + 1].store((v >> 32) as u32, Relaxed);
}

fn get64(m: &Mapping, at: usize) -> u64 {
    u64::from(m.words()[at].load(Relaxed)) | (u64::from(m.words()[at + 1].load(Relaxed)) << 32)
}

/// The guest side: answers requests until the host sends QUIT. Yields the CPU while it waits so
/// that the guest's other tasks (the sync daemon) still run on a one-CPU guest.
pub fn serve(mailbox: &Path, page: Option<&Path>) -> Result<()> {
    let m = Mapping::open_rw(mailbox).with_context(|| format!("map {}", mailbox.display()))?;
    // The page is read afresh for every request: it may be invalid until the relay fills it.
    let page = page.map(Mapping::open).transpose().context("map the page")?;
    let mut last = m.words()[0].load(Acquire);
    // Tell the host we are here: the reply word echoes the request word we start from.
    m.words()[1].store(last, Relaxed);
    m.words()[READY_WORD].store(READY, Release);
    loop {
        let seq = m.words()[0].load(Acquire);
        if seq == last {
            std::thread::yield_now();
            continue;
        }
        if seq == QUIT {
            return Ok(());
        }
        let snap = page.as_ref().and_then(|p| vmclock::seqlock::read(p, Duration::from_millis(10)).ok());
        let g = vmclock::counter::read();
        let rt = gettime(ClockId::Realtime)?;
        let g2 = vmclock::counter::read();
        let (t, half) = match snap.map(|s| vmclock::now_at(&s, g).map(|n| n.utc())) {
            Some(Ok(Ok(b))) => {
                // 2^-64 s → ns, rounded up; an unbounded page says so with the largest width.
                let half =
                    b.maxerror.and_then(|m| m.checked_mul(1_000_000_000)).map_or(u64::MAX, |x| (x >> 64) as u64 + 1);
                (b.time.as_nanos() as i64, half)
            }
            _ => (i64::MIN, 0),
        };
        put64(&m, 2, g);
        put64(&m, 4, t as u64);
        put64(&m, 6, half);
        put64(&m, 8, rt as i64 as u64);
        put64(&m, 11, g2);
        m.words()[1].store(seq, Release);
        last = seq;
    }
}

/// A (TSC, CLOCK_REALTIME) pair read on this machine: counter, clock, counter.
#[derive(Clone, Copy, Debug)]
pub struct HostPair {
    pub c0: u64,
    pub real: i128,
    pub c1: u64,
}

impl HostPair {
    pub fn read() -> Result<HostPair> {
        let c0 = vmclock::counter::read();
        let real = gettime(ClockId::Realtime)?;
        let c1 = vmclock::counter::read();
        Ok(HostPair { c0, real, c1 })
    }
    pub fn mid(&self) -> u64 {
        self.c0.wrapping_add(self.c1.wrapping_sub(self.c0) / 2)
    }
    pub fn half_ticks(&self) -> u64 {
        self.c1.wrapping_sub(self.c0).div_ceil(2)
    }
}

/// The guest counter − this machine's counter, and its uncertainty (± ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset {
    pub ticks: u64,
    pub half: u64,
}

/// One answered request, with the host's brackets.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    pub before: HostPair,
    pub after: HostPair,
    pub guest_counter: u64,
    pub guest_counter_after: u64,
    /// The guest page's time at `guest_counter` (midpoint of its bounds) and half-width, if any.
    pub page: Option<(i128, i128)>,
    pub guest_realtime: i128,
    /// The offset in force when this echo was taken (None: not measured since the last resume).
    pub offset: Option<Offset>,
    /// This machine's TSC frequency, Hz.
    pub hz: f64,
}

impl Echo {
    /// guest counter − host counter, at the middle of the round trip (wrapping like KVM's offset).
    pub fn offset(&self) -> u64 {
        let (b, a) = (self.before.c1, self.after.c0);
        let mid = b.wrapping_add(a.wrapping_sub(b) / 2);
        self.guest_counter.wrapping_sub(mid)
    }
    pub fn width_ticks(&self) -> u64 {
        self.after.c0.wrapping_sub(self.before.c1)
    }
    fn ns(&self, ticks: u64) -> i128 {
        (ticks as f64 / self.hz * 1e9).ceil() as i128
    }
    /// Half the round trip, ns: the uncertainty an echo would have without the counter map.
    pub fn half_window(&self) -> i128 {
        (self.after.real - self.before.real) / 2
    }
    /// This machine's CLOCK_REALTIME when its counter read `h`, interpolated between the two
    /// host pairs (h lies between them: the guest read its counter during the round trip).
    fn host_time_at(&self, h: u64) -> i128 {
        let (m0, m1) = (self.before.mid(), self.after.mid());
        let span = m1.wrapping_sub(m0) as i128;
        let dt = h.wrapping_sub(m0) as i64 as i128;
        if span <= 0 {
            return self.before.real;
        }
        self.before.real + dt * (self.after.real - self.before.real) / span
    }
    /// (this machine's time when the guest read `g`, its uncertainty ns), through the offset;
    /// without a measured offset, the middle of the round trip and its half-width.
    fn truth_at(&self, g: u64, extra_ticks: u64) -> (i128, i128) {
        match self.offset {
            Some(o) => {
                let noise = o.half + self.before.half_ticks().max(self.after.half_ticks()) + extra_ticks;
                (self.host_time_at(g.wrapping_sub(o.ticks)), self.ns(noise) + 1)
            }
            None => ((self.before.real + self.after.real) / 2, self.half_window() + self.ns(extra_ticks)),
        }
    }
    /// The guest page's time − this machine's clock, ns.
    pub fn page_error(&self) -> Option<i128> {
        self.page.map(|(t, _)| t - self.truth_at(self.guest_counter, 0).0)
    }
    /// The noise floor of `page_error`, ns.
    pub fn page_noise(&self) -> i128 {
        self.truth_at(self.guest_counter, 0).1
    }
    /// Whether the page's bounds, widened by the noise floor, hold this machine's clock.
    pub fn page_contains_truth(&self) -> Option<bool> {
        let (truth, noise) = self.truth_at(self.guest_counter, 0);
        self.page.map(|(t, h)| (t - truth).abs() <= h + noise)
    }
    fn guest_gap(&self) -> u64 {
        self.guest_counter_after.wrapping_sub(self.guest_counter)
    }
    /// The guest's CLOCK_REALTIME − this machine's clock, ns (its counter read midway between
    /// the guest's two counter reads).
    pub fn clock_error(&self) -> i128 {
        let g = self.guest_counter.wrapping_add(self.guest_gap() / 2);
        self.guest_realtime - self.truth_at(g, 0).0
    }
    /// The noise floor of `clock_error`, ns.
    pub fn clock_noise(&self) -> i128 {
        self.truth_at(self.guest_counter, self.guest_gap().div_ceil(2)).1
    }
}

/// The host side of the mailbox (the ivshmem backing file).
pub struct Host {
    m: Mapping,
    seq: u32,
    /// The counter map in force (cleared when the VM stops: TCG moves it on every resume).
    pub offset: Option<Offset>,
    hz: f64,
}

impl Host {
    /// `hz`: this machine's TSC frequency.
    pub fn open(mailbox: &Path, hz: f64) -> Result<Self> {
        let m = Mapping::open_rw(mailbox).with_context(|| format!("map {}", mailbox.display()))?;
        let seq = m.words()[0].load(Acquire);
        m.words()[READY_WORD].store(0, Release);
        Ok(Host { m, seq, offset: None, hz })
    }

    /// The mailbox of a guest echo that already serves it (the destination's file after a
    /// migration, or after a `loadvm`: the words came with the VM's state).
    pub fn attach(mailbox: &Path, hz: f64) -> Result<Self> {
        let m = Mapping::open_rw(mailbox).with_context(|| format!("map {}", mailbox.display()))?;
        let seq = m.words()[0].load(Acquire);
        Ok(Host { m, seq, offset: None, hz })
    }

    /// Waits until a guest echo serves this mailbox (its reply word equals the request word).
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.m.words()[READY_WORD].load(Acquire) != READY || self.m.words()[1].load(Acquire) != self.seq {
            if Instant::now() > deadline {
                bail!("the guest's echo did not start within {timeout:?}");
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    pub fn ask(&mut self) -> Result<Echo> {
        self.seq = match self.seq.wrapping_add(1) {
            QUIT => 0,
            s => s,
        };
        let before = HostPair::read()?;
        self.m.words()[0].store(self.seq, Release);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        while self.m.words()[1].load(Acquire) != self.seq {
            let now = Instant::now();
            if now > deadline {
                bail!("the guest's echo did not answer within 5 s");
            }
            // Spin for a tight round trip; beyond 50 µs yield: this machine has 2 cores, and a
            // waiting lab must not take the one QEMU's vCPU needs to answer (the guest then ran
            // its own tasks, sync among them, tens to hundreds of ms late after a resume).
            if now - start < Duration::from_micros(50) {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let after = HostPair::read()?;
        let page_t = get64(&self.m, 4) as i64;
        Ok(Echo {
            before,
            after,
            guest_counter: get64(&self.m, 2),
            guest_counter_after: get64(&self.m, 11),
            page: (page_t != i64::MIN).then(|| (i128::from(page_t), i128::from(get64(&self.m, 6)))),
            guest_realtime: i128::from(get64(&self.m, 8) as i64),
            offset: self.offset,
            hz: self.hz,
        })
    }

    /// At least `n` requests, more (within `deadline`) until one round trip is no wider than
    /// `target_ticks`: the tightest gives the offset, which is kept for later echoes.
    pub fn measure_offset(&mut self, n: usize, target_ticks: u64, deadline: Duration) -> Result<Offset> {
        let end = Instant::now() + deadline;
        let mut best: Option<Echo> = None;
        let mut i = 0;
        while i < n || (best.is_some_and(|b| b.width_ticks() > target_ticks) && Instant::now() < end) {
            let e = self.ask()?;
            if best.is_none_or(|b| e.width_ticks() < b.width_ticks()) {
                best = Some(e);
            }
            i += 1;
        }
        let b = best.context("no echo")?;
        let o = Offset { ticks: b.offset(), half: b.width_ticks().div_ceil(2) };
        self.offset = Some(o);
        Ok(o)
    }

    pub fn quit(&mut self) {
        self.m.words()[0].store(QUIT, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_between_threads_measures_a_zero_offset() {
        let dir = std::env::temp_dir().join(format!("vmtime-lab-echo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mb = dir.join("mailbox");
        std::fs::write(&mb, vec![0u8; 4096]).unwrap();
        let mut host = Host::open(&mb, 1e9).unwrap();
        let guest = {
            let mb = mb.clone();
            std::thread::spawn(move || serve(&mb, None))
        };
        host.wait_ready(Duration::from_secs(10)).unwrap();
        let o = host.measure_offset(200, 0, Duration::ZERO).unwrap();
        // Same machine, same counter: the offset is zero within the bracket.
        assert!((o.ticks as i64).unsigned_abs() <= o.half, "{o:?}");
        let e = host.ask().unwrap();
        assert!(e.page.is_none());
        // Both clocks are this machine's: the error lies within the noise floor.
        assert!(e.clock_error().abs() <= e.clock_noise(), "{e:?}");
        host.quit();
        guest.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
