//! libvmclock's `vmclock_now()` and `vmclock_now_bounds()` against `clock_gettime(CLOCK_REALTIME)`, measured the way an
//! outside harness does (issue 23; the same harness as `cargo bench -p vmclock --bench
//! independent`): each side one `#[inline(never)]` function making 64 calls back to back and
//! folding every result into a sum, the blocks interleaved with the order rotating, the median
//! of the per-block ratios.
//!
//! Each C function is called through a function pointer the optimiser cannot see through (a real
//! call across the library boundary, the whole struct written to the caller's memory), as a C
//! program calls it.
//!   cargo bench -p vmclock-ffi --bench independent              # 300,000 blocks
//!   cargo bench -p vmclock-ffi --bench independent -- 1000000  # another number of blocks
//! Under `cargo test` (no `--bench` argument) it runs 2,000 blocks: a smoke test, not a figure.
use std::ffi::{c_char, c_int, CString};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;
use vmclock::{vmclock_close, vmclock_now, vmclock_now_bounds, vmclock_open};
use vmclock_rs::test_support::synchronized_tai;
use vmclock_rs::{Clock, ClockError};

const BLOCK: usize = 64;

type NowFn = unsafe extern "C" fn(*const vmclock::vmclock, *mut vmclock::vmclock_now) -> c_int;
type BoundsFn = unsafe extern "C" fn(*const vmclock::vmclock, *mut vmclock::vmclock_bounds) -> c_int;

/// The page of `cargo bench -p vmclock --bench now`: TAI, bounds on, a 2.5 GHz counter.
fn app_page() -> Vec<u8> {
    synchronized_tai(vmclock_rs::counter::NATIVE, vmclock_rs::counter::read(), 2_500_000_000)
        .esterror(100, 10)
        .page_bytes()
}

/// A C program's read, 64 times: `vmclock_now`, earliest and latest.
#[inline(never)]
fn c_now(f: NowFn, h: *const vmclock::vmclock) -> i64 {
    let mut sum = 0i64;
    for _ in 0..BLOCK {
        let mut n = vmclock::vmclock_now::default();
        // SAFETY: an open handle and a local struct, as a C caller passes them.
        let rc = unsafe { f(h, &mut n) };
        if rc != 0 {
            panic!("vmclock_now: {rc}");
        }
        sum = sum.wrapping_add(n.earliest_ns).wrapping_add(n.latest_ns);
    }
    sum
}

/// The lean C read, 64 times: `vmclock_now_bounds`, earliest and latest.
#[inline(never)]
fn c_bounds(f: BoundsFn, h: *const vmclock::vmclock) -> i64 {
    let mut sum = 0i64;
    for _ in 0..BLOCK {
        let mut b = vmclock::vmclock_bounds::default();
        // SAFETY: an open handle and a local struct, as a C caller passes them.
        let rc = unsafe { f(h, &mut b) };
        if rc != 0 {
            panic!("vmclock_now_bounds: {rc}");
        }
        sum = sum.wrapping_add(b.earliest_ns).wrapping_add(b.latest_ns);
    }
    sum
}

/// `vmclock_now_bounds`' reading inlined into the block (no call across the library boundary), 64
/// times: the cost of the work without the call.
#[inline(never)]
fn diag_bounds_inline(h: &vmclock::vmclock) -> i64 {
    let mut sum = 0i64;
    for _ in 0..BLOCK {
        let mut b = std::mem::MaybeUninit::uninit();
        let rc = vmclock::now_bounds_inline(h, &mut b);
        if rc != 0 {
            panic!("vmclock_now_bounds: {rc}");
        }
        // SAFETY: written by now_bounds_inline, which returned 0.
        let b = unsafe { b.assume_init() };
        sum = sum.wrapping_add(b.earliest_ns).wrapping_add(b.latest_ns);
    }
    sum
}

/// The Rust application's read, 64 times (as `benches/independent.rs` of vmclock).
#[inline(never)]
fn rust_app(clock: &Clock) -> Result<u128, ClockError> {
    let mut sum = 0u128;
    for _ in 0..BLOCK {
        let t = clock.now()?.tai()?;
        sum = sum.wrapping_add(t.earliest().map_or(0, |e| e.raw())).wrapping_add(t.latest().map_or(0, |l| l.raw()));
    }
    Ok(sum)
}

/// The reference, 64 times: CLOCK_REALTIME through the vDSO.
#[inline(never)]
fn realtime() -> i64 {
    let mut sum = 0i64;
    for _ in 0..BLOCK {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        sum = sum.wrapping_add(ts.tv_sec).wrapping_add(ts.tv_nsec);
    }
    sum
}

type Side<'a> = (&'static str, Box<dyn Fn() -> u64 + 'a>);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let blocks: usize = args.iter().filter(|a| !a.starts_with('-')).find_map(|a| a.parse().ok()).unwrap_or(if full {
        300_000
    } else {
        2_000
    });

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page");
    std::fs::File::create(&path).unwrap().write_all(&app_page()).unwrap();
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut err = 0;
    // SAFETY: a NUL-terminated path and a local int.
    let handle = unsafe { vmclock_open(cpath.as_ptr() as *const c_char, &mut err) };
    assert!(!handle.is_null(), "vmclock_open: {err}");
    let clock = Clock::open(&path).unwrap();
    let f: NowFn = black_box(vmclock_now);
    let fb: BoundsFn = black_box(vmclock_now_bounds);
    let cl = &clock;
    let h = handle as usize;
    // SAFETY: the open handle, alive until vmclock_close below.
    let hr = unsafe { &*handle };

    // Index 0 is the reference.
    let sides: Vec<Side> = vec![
        ("clock_gettime_realtime", Box::new(|| realtime() as u64)),
        ("c_vmclock_now", Box::new(move || c_now(f, black_box(h) as *const vmclock::vmclock) as u64)),
        ("c_vmclock_now_bounds", Box::new(move || c_bounds(fb, black_box(h) as *const vmclock::vmclock) as u64)),
        ("diag_bounds_inline", Box::new(move || diag_bounds_inline(hr) as u64)),
        ("rust_now_tai_bounds", Box::new(move || rust_app(cl).unwrap() as u64)),
    ];
    let n = sides.len();
    for _ in 0..2_000 {
        for (_, s) in &sides {
            black_box(s());
        }
    }
    let mut ns = vec![Vec::with_capacity(blocks); n];
    let mut t = vec![0f64; n];
    for b in 0..blocks {
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
    // SAFETY: the handle from vmclock_open, closed once.
    unsafe { vmclock_close(handle) };
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    };
    println!("independent harness (libvmclock): {blocks} blocks of {BLOCK} calls per side, order rotating, #[inline(never)] block functions");
    if !full {
        println!("(a smoke run: no --bench argument, so `cargo test` built and ran it; not a figure)");
    }
    for i in 1..n {
        let mut r: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(a, b)| a / b).collect();
        let (m, p25, p75) = (q(&mut r, 0.5), q(&mut r, 0.25), q(&mut r, 0.75));
        println!("independent: {} / {} per block: median {m:.3} (p25 {p25:.3}, p75 {p75:.3})", sides[i].0, sides[0].0);
    }
    for i in 0..n {
        let mut v = ns[i].clone();
        println!("  {:<24} median {:.1} ns/call", sides[i].0, q(&mut v, 0.5) / BLOCK as f64);
    }
}
