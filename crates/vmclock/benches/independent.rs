//! `Clock::now()` + TAI earliest/latest against `clock_gettime(CLOCK_REALTIME)`, measured the way
//! an outside harness does (issue 23), not the way `benches/now.rs` does:
//!
//! * each side is one `#[inline(never)]` function that makes 64 calls back to back and folds
//!   every result into a sum it returns (no `black_box` between the calls, no closure, no
//!   per-call store the compiler must keep);
//! * the blocks of the sides are interleaved, the order rotating from block to block;
//! * the figure is the median, over all blocks, of the per-block ratio (this side's block time
//!   over the `clock_gettime` block next to it), so a shared machine's load cancels out.
//!
//! No criterion: one run prints the ratios (and, for orientation, the median ns per call).
//!   cargo bench -p vmclock --bench independent                # 300,000 blocks
//!   cargo bench -p vmclock --bench independent -- 1000000    # another number of blocks
//! Under `cargo test` (no `--bench` argument) it runs 2,000 blocks: a smoke test, not a figure.
//!
//! The `diag_*` sides split the cost: the same read with the counter read replaced (no counter,
//! unfenced RDTSC), and the ordered counter read alone.
use std::hint::black_box;
use std::io::Write;
use vmclock as rs;
use vmclock::{Clock, ClockError, PageMemory};

#[path = "harness/mod.rs"]
mod harness;
use harness::*;

/// Diagnostic: [`app`] with `read_counter` in place of the ordered counter read.
#[inline(always)]
fn app_with(clock: &Clock, read_counter: impl Fn() -> u64) -> Result<u128, ClockError> {
    let mut sum = 0u128;
    for _ in 0..BLOCK {
        let t = clock.now_with_counter(&read_counter)?.tai()?;
        sum = sum.wrapping_add(t.earliest().map_or(0, |e| e.raw())).wrapping_add(t.latest().map_or(0, |l| l.raw()));
    }
    Ok(sum)
}

#[inline(never)]
fn diag_no_counter(clock: &Clock) -> Result<u128, ClockError> {
    let c = vmclock::counter::read();
    app_with(clock, || black_box(c))
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn diag_rdtsc_unfenced(clock: &Clock) -> Result<u128, ClockError> {
    // SAFETY: RDTSC has no preconditions on x86_64.
    app_with(clock, || unsafe { core::arch::x86_64::_rdtsc() })
}

#[inline(never)]
fn now_outlined(clock: &Clock) -> Result<vmclock::Now, ClockError> {
    clock.now()
}

#[inline(never)]
fn diag_app_now_outlined(clock: &Clock) -> Result<u128, ClockError> {
    let mut sum = 0u128;
    for _ in 0..BLOCK {
        let t = now_outlined(clock)?.tai()?;
        sum = sum.wrapping_add(t.earliest().map_or(0, |e| e.raw())).wrapping_add(t.latest().map_or(0, |l| l.raw()));
    }
    Ok(sum)
}

/// Diagnostic: the same reading without `tai()` (the page is TAI: raw ∓ maxerror directly).
#[inline(never)]
fn diag_now_raw_bounds(clock: &Clock) -> Result<u128, ClockError> {
    let mut sum = 0u128;
    for _ in 0..BLOCK {
        let n = clock.now()?;
        let m = n.maxerror.unwrap_or(0);
        sum = sum.wrapping_add(n.raw.saturating_sub(m)).wrapping_add(n.raw.saturating_add(m));
    }
    Ok(sum)
}

#[inline(never)]
fn diag_counter_only() -> u64 {
    let mut sum = 0u64;
    for _ in 0..BLOCK {
        sum = sum.wrapping_add(vmclock::counter::read());
    }
    sum
}

/// Prototype: the floor of a cached read (constants precomputed, only seq checked).
#[derive(Clone, Copy)]
struct Pre {
    seq: u32,
    c1: u64,
    p: u64,
    r: u64,
    s: u32,
    round: u128,
    t1e: u128,
    t1l: u128,
    dmax: u64,
}

#[inline(always)]
fn lean_with(clock: &Clock, k: &Pre, ctr: impl Fn() -> u64) -> u128 {
    let seqw = &clock.memory().words()[3];
    let mut sum = 0u128;
    for _ in 0..BLOCK {
        let s1 = seqw.load(std::sync::atomic::Ordering::Acquire);
        if s1 != k.seq {
            panic!("seq");
        }
        let c = ctr();
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        if seqw.load(std::sync::atomic::Ordering::Relaxed) != s1 {
            panic!("seq2");
        }
        let d = c.wrapping_sub(k.c1);
        if d > k.dmax {
            panic!("d");
        }
        let a = (k.p as u128 * d as u128) >> k.s;
        let b = (k.r as u128 * d as u128 + k.round) >> k.s;
        let e = k.t1e + a - b;
        let l = k.t1l + a + b;
        sum = sum.wrapping_add(e).wrapping_add(l);
    }
    sum
}

fn pre_of(clock: &Clock) -> Pre {
    let snap = clock.snapshot().unwrap();
    let r = snap.reference().unwrap();
    let tt = vmclock::time::nanos_to_frac_ceil(r.maxerror.time_ns.unwrap());
    Pre {
        seq: clock.memory().words()[3].load(std::sync::atomic::Ordering::Relaxed),
        c1: r.counter_value,
        p: r.period,
        r: r.maxerror.rate.unwrap(),
        s: r.shift as u32,
        round: (1u128 << r.shift) - 1,
        t1e: r.time - tt,
        t1l: r.time + tt,
        dmax: u64::MAX >> 1,
    }
}

#[inline(never)]
fn diag_lean_rdtscp(clock: &Clock, k: &Pre) -> u128 {
    lean_with(clock, k, vmclock::counter::read)
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn diag_lean_lfence(clock: &Clock, k: &Pre) -> u128 {
    lean_with(clock, k, vmclock::counter::read_lfence_rdtsc)
}

fn main() {
    let (blocks, full) = blocks();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page");
    std::fs::File::create(&path).unwrap().write_all(&app_page()).unwrap();
    let clock = Clock::open(&path).unwrap();
    let cl = &clock;

    // Index 0 is the reference. Each side's result goes into one black_box per block.
    let sides: Vec<Side> = vec![
        ("clock_gettime_realtime", Box::new(|| realtime() as u64)),
        ("app_now_tai_bounds", Box::new(move || app(cl).unwrap() as u64)),
        ("diag_app_now_outlined", Box::new(move || diag_app_now_outlined(cl).unwrap() as u64)),
        ("diag_now_raw_bounds", Box::new(move || diag_now_raw_bounds(cl).unwrap() as u64)),
        ("diag_now_no_counter", Box::new(move || diag_no_counter(cl).unwrap() as u64)),
        #[cfg(target_arch = "x86_64")]
        ("diag_now_rdtsc_unfenced", Box::new(move || diag_rdtsc_unfenced(cl).unwrap() as u64)),
        ("diag_lean_rdtscp", Box::new(move || diag_lean_rdtscp(cl, &black_box(pre_of(cl))) as u64)),
        #[cfg(target_arch = "x86_64")]
        ("diag_lean_lfence", Box::new(move || diag_lean_lfence(cl, &black_box(pre_of(cl))) as u64)),
        ("diag_counter_read_only", Box::new(diag_counter_only)),
    ];
    run("independent harness", &sides, blocks, full);
}
