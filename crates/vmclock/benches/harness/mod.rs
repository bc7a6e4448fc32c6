//! The independent harness, shared by `cargo bench -p vmclock --bench independent` and
//! `cargo bench -p vmclock-ffi --bench independent`, so that both measure the same way: each side
//! is one `#[inline(never)]` function making [`BLOCK`] calls back to back; the blocks of the
//! sides are interleaved, the order rotating from block to block; the figure is the median over
//! all blocks of the per-block ratio to the reference (side 0) next to it.
//!
//! A bench includes it with `#[path]` and names the vmclock crate `rs` in its root (the FFI
//! crate's own library is also called `vmclock`).
use super::rs::{Clock, ClockError};
use std::hint::black_box;
use std::time::Instant;

/// Calls per block.
pub const BLOCK: usize = 64;

/// A side: its name, and one block of it returning a value folded from every call.
pub type Side<'a> = (&'static str, Box<dyn Fn() -> u64 + 'a>);

/// The number of blocks (the first number among the arguments; default 300,000 under
/// `cargo bench`, 2,000 as a smoke run under `cargo test`), and whether this is a real run.
pub fn blocks() -> (usize, bool) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let default = if full { 300_000 } else { 2_000 };
    (args.iter().filter(|a| !a.starts_with('-')).find_map(|a| a.parse().ok()).unwrap_or(default), full)
}

/// The page of `cargo bench -p vmclock --bench now`: TAI, bounds on, a 2.5 GHz counter.
pub fn app_page() -> Vec<u8> {
    super::rs::test_support::synchronized_tai(super::rs::counter::NATIVE, super::rs::counter::read(), 2_500_000_000)
        .esterror(100, 10)
        .page_bytes()
}

/// What an application does, [`BLOCK`] times: a bounded reading, TAI, earliest and latest.
#[inline(never)]
pub fn app(clock: &Clock) -> Result<u128, ClockError> {
    let mut sum = 0u128;
    for _ in 0..BLOCK {
        let t = clock.now()?.tai()?;
        sum = sum.wrapping_add(t.earliest().map_or(0, |e| e.raw())).wrapping_add(t.latest().map_or(0, |l| l.raw()));
    }
    Ok(sum)
}

/// The reference, [`BLOCK`] times: CLOCK_REALTIME through the vDSO.
#[inline(never)]
pub fn realtime() -> i64 {
    let mut sum = 0i64;
    for _ in 0..BLOCK {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        sum = sum.wrapping_add(ts.tv_sec).wrapping_add(ts.tv_nsec);
    }
    sum
}

/// Warms every side up, runs `blocks` rotating blocks, and prints each side's median ratio to
/// side 0 (with p25 and p75) and, for orientation, the median ns per call.
pub fn run(title: &str, sides: &[Side<'_>], blocks: usize, full: bool) {
    let n = sides.len();
    // Warm up: every side a few thousand times (page in cache, CPUID asked, branch history).
    for _ in 0..2_000 {
        for (_, f) in sides {
            black_box(f());
        }
    }
    let mut ns = vec![Vec::with_capacity(blocks); n];
    let mut t = vec![0f64; n];
    for b in 0..blocks {
        // Rotate the order: block b starts with side b mod n.
        for k in 0..n {
            let i = (b + k) % n;
            let t0 = Instant::now();
            black_box(sides[i].1());
            t[i] = t0.elapsed().as_nanos() as f64;
        }
        for i in 0..n {
            ns[i].push(t[i]);
        }
    }
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    };
    println!("{title}: {blocks} blocks of {BLOCK} calls per side, order rotating, #[inline(never)] block functions");
    if !full {
        println!("(a smoke run: no --bench argument, so `cargo test` built and ran it; not a figure)");
    }
    for i in 1..n {
        let mut r: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(a, b)| a / b).collect();
        let (m, p25, p75) = (q(&mut r, 0.5), q(&mut r, 0.25), q(&mut r, 0.75));
        println!("independent: {} / {} per block: median {m:.3} (p25 {p25:.3}, p75 {p75:.3})", sides[i].0, sides[0].0);
    }
    for (i, (name, _)) in sides.iter().enumerate() {
        let mut v = ns[i].clone();
        println!("  {name:<26} median {:.1} ns/call", q(&mut v, 0.5) / BLOCK as f64);
    }
}
