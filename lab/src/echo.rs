//! The counter echo: a mailbox in shared memory (an ivshmem BAR the host also maps as a file)
//! through which the host asks the guest for its counter, its page's time and its
//! CLOCK_REALTIME, bracketing each request with its own counter and clock reads.
//!
//! This is how the lab measures the guest's counter map (TCG: guest TSC = host TSC + offset,
//! the offset unknown and changed by every pause) and the real error of what the guest sees.
//!
//! Words (u32, little-endian, atomics on both sides): 0 request sequence (host), 1 reply
//! sequence (guest), 2–3 guest counter, 4–5 page time ns (i64; `NO_PAGE` when there is none),
//! 6–7 page half-width ns (the page's bound), 8–9 guest CLOCK_REALTIME ns, 10 `READY` once the
//! guest serves.

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
        m.words()[1].store(seq, Release);
        last = seq;
    }
}

/// One answered request, with the host's brackets.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    pub host_before: u64,
    pub host_after: u64,
    pub real_before: i128,
    pub real_after: i128,
    pub guest_counter: u64,
    /// The guest page's time at `guest_counter` (midpoint of its bounds) and half-width, if any.
    pub page: Option<(i128, i128)>,
    pub guest_realtime: i128,
}

impl Echo {
    /// guest counter − host counter, at the middle of the bracket (wrapping like KVM's offset).
    pub fn offset(&self) -> u64 {
        let mid = self.host_before.wrapping_add(self.host_after.wrapping_sub(self.host_before) / 2);
        self.guest_counter.wrapping_sub(mid)
    }
    pub fn width_ticks(&self) -> u64 {
        self.host_after.wrapping_sub(self.host_before)
    }
    fn real_mid(&self) -> i128 {
        (self.real_before + self.real_after) / 2
    }
    /// Half the host's clock bracket, ns: the uncertainty of every error below.
    pub fn half_window(&self) -> i128 {
        (self.real_after - self.real_before) / 2
    }
    /// The guest page's time − the host's clock, ns.
    pub fn page_error(&self) -> Option<i128> {
        self.page.map(|(t, _)| t - self.real_mid())
    }
    /// Whether the page's bounds overlap the host's bracket (the page told the truth).
    pub fn page_contains_truth(&self) -> Option<bool> {
        self.page.map(|(t, h)| t - h <= self.real_after && t + h >= self.real_before)
    }
    /// The guest's CLOCK_REALTIME − the host's clock, ns.
    pub fn clock_error(&self) -> i128 {
        self.guest_realtime - self.real_mid()
    }
}

/// The host side of the mailbox (the ivshmem backing file).
pub struct Host {
    m: Mapping,
    seq: u32,
}

impl Host {
    pub fn open(mailbox: &Path) -> Result<Self> {
        let m = Mapping::open_rw(mailbox).with_context(|| format!("map {}", mailbox.display()))?;
        let seq = m.words()[0].load(Acquire);
        m.words()[READY_WORD].store(0, Release);
        Ok(Host { m, seq })
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
        let real_before = gettime(ClockId::Realtime)?;
        let host_before = vmclock::counter::read();
        self.m.words()[0].store(self.seq, Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.m.words()[1].load(Acquire) != self.seq {
            if Instant::now() > deadline {
                bail!("the guest's echo did not answer within 5 s");
            }
            std::hint::spin_loop();
        }
        let host_after = vmclock::counter::read();
        let real_after = gettime(ClockId::Realtime)?;
        let page_t = get64(&self.m, 4) as i64;
        Ok(Echo {
            host_before,
            host_after,
            real_before,
            real_after,
            guest_counter: get64(&self.m, 2),
            page: (page_t != i64::MIN).then(|| (i128::from(page_t), i128::from(get64(&self.m, 6)))),
            guest_realtime: i128::from(get64(&self.m, 8) as i64),
        })
    }

    /// `n` requests; the one with the tightest counter bracket gives the offset.
    pub fn measure_offset(&mut self, n: usize) -> Result<(u64, u64)> {
        let mut best: Option<Echo> = None;
        for _ in 0..n {
            let e = self.ask()?;
            if best.is_none_or(|b| e.width_ticks() < b.width_ticks()) {
                best = Some(e);
            }
        }
        let b = best.context("no echo")?;
        Ok((b.offset(), b.width_ticks()))
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
        let mut host = Host::open(&mb).unwrap();
        let guest = {
            let mb = mb.clone();
            std::thread::spawn(move || serve(&mb, None))
        };
        host.wait_ready(Duration::from_secs(10)).unwrap();
        let (offset, width) = host.measure_offset(200).unwrap();
        // Same machine, same counter: the offset is zero within the bracket.
        assert!((offset as i64).unsigned_abs() <= width, "offset {offset} width {width}");
        let e = host.ask().unwrap();
        assert!(e.page.is_none());
        assert!(e.clock_error().abs() <= e.half_window() + 1, "{e:?}");
        host.quit();
        guest.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
