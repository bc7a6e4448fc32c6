//! libvmclock's `vmclock_now()` and the lean `vmclock_now_bounds()` as C calls them, against `clock_gettime(CLOCK_REALTIME)` measured
//! in the same run, with the Rust application's read (`Clock::now()`, TAI earliest and latest:
//! the figure `cargo bench -p vmclock --bench now` reports) beside it.
//!
//! The C function is called through a function pointer the optimiser cannot see through
//! (`black_box`), so it is a real call across the library boundary, as from a C program (no
//! inlining into the caller, the whole `struct vmclock_now` written to memory).
//! `diag_c_read_inlined` is the same reading as `vmclock_now` inlined into the caller (the cost
//! of the work without the call). All are interleaved in blocks of 64 calls, so all see the same
//! machine (this one is shared); the per-block ratios are printed at the end.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::ffi::{c_char, c_int, CString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};
use vmclock::{vmclock_close, vmclock_now, vmclock_now_bounds, vmclock_open};
use vmclock_rs::test_support::synchronized_tai;
use vmclock_rs::Clock;

// vmclock.h's inline reader compiled by the C compiler (benches/inline.c, built by build.rs).
#[cfg(vmclock_inline_bench)]
extern "C" {
    fn vmclock_bench_inline_each(r: *const vmclock::vmclock_reader, n: c_int, sink: *mut i64);
}

type NowFn = unsafe extern "C" fn(*const vmclock::vmclock, *mut vmclock::vmclock_now) -> c_int;
type BoundsFn = unsafe extern "C" fn(*const vmclock::vmclock, *mut vmclock::vmclock_bounds) -> c_int;

fn clock_gettime(id: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts
}

/// The page of `cargo bench -p vmclock --bench now`: TAI, bounds on, a 2.5 GHz counter.
fn app_page() -> Vec<u8> {
    synchronized_tai(vmclock_rs::counter::NATIVE, vmclock_rs::counter::read(), 2_500_000_000)
        .esterror(100, 10)
        .page_bytes()
}

fn paired(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page");
    std::fs::File::create(&path).unwrap().write_all(&app_page()).unwrap();
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut err = 0;
    // SAFETY: a NUL-terminated path and a local int.
    let handle = unsafe { vmclock_open(cpath.as_ptr() as *const c_char, &mut err) };
    assert!(!handle.is_null(), "vmclock_open: {err}");
    let clock = Clock::open(&path).unwrap();
    let c_now: NowFn = black_box(vmclock_now);
    let c_bounds: BoundsFn = black_box(vmclock_now_bounds);
    const BLOCK: u64 = 64;
    let c_call = || {
        let mut n = vmclock::vmclock_now::default();
        // SAFETY: an open handle and a local struct, as a C caller passes them.
        let rc = unsafe { c_now(black_box(handle), &mut n) };
        assert_eq!(rc, 0);
        black_box((n.earliest_ns, n.latest_ns));
    };
    let c_bounds_call = || {
        let mut b = vmclock::vmclock_bounds::default();
        // SAFETY: an open handle and a local struct, as a C caller passes them.
        let rc = unsafe { c_bounds(black_box(handle), &mut b) };
        assert_eq!(rc, 0);
        black_box((b.earliest_ns, b.latest_ns));
    };
    let rust_app = || {
        let n = clock.now().unwrap();
        let t = n.tai().unwrap();
        black_box((t.earliest(), t.latest()));
    };
    // SAFETY: the open handle, alive until vmclock_close below.
    let h = unsafe { &*handle };
    let inline_full = || {
        let mut n = std::mem::MaybeUninit::uninit();
        assert_eq!(vmclock::now_inline(h, &mut n), 0);
        // The whole struct, as the C call writes it all.
        // SAFETY: written by now_inline, which returned 0.
        black_box(unsafe { n.assume_init() });
    };
    let realtime = || {
        black_box(clock_gettime(libc::CLOCK_REALTIME));
    };
    // SAFETY: the open handle; the reader lives as long as it.
    let reader = unsafe { vmclock::vmclock_reader_get(handle, vmclock::VMCLOCK_READER_X86_RDTSCP) };
    let mut b = vmclock::vmclock_bounds::default();
    // SAFETY: the reader of the open handle and a local struct (the library read, which publishes).
    assert_eq!(unsafe { vmclock::vmclock_reader_now_bounds(reader, &mut b) }, 0);
    // 64 reads by the C code, each stored (as black_box stores the others'); without a C
    // compiler at build time, the library call instead.
    let inline_block = || {
        let mut sink = [0i64; 2];
        #[cfg(vmclock_inline_bench)]
        // SAFETY: the reader of the open handle and a local array of two.
        unsafe {
            vmclock_bench_inline_each(black_box(reader), BLOCK as c_int, sink.as_mut_ptr())
        };
        #[cfg(not(vmclock_inline_bench))]
        for _ in 0..BLOCK {
            let mut b = vmclock::vmclock_bounds::default();
            // SAFETY: the reader of the open handle and a local struct.
            unsafe { vmclock::vmclock_reader_now_bounds(black_box(reader), &mut b) };
            sink = [b.earliest_ns, b.latest_ns];
        }
        black_box(&sink);
    };
    // Per block: each one's time / realtime's.
    let ratios = std::cell::RefCell::new(Vec::<[f64; 5]>::new());
    let run = |iters: u64, which: usize| {
        let mut total = [Duration::ZERO; 6];
        for _ in 0..iters.div_ceil(BLOCK) {
            let t0 = Instant::now();
            for _ in 0..BLOCK {
                c_call();
            }
            let t1 = Instant::now();
            for _ in 0..BLOCK {
                rust_app();
            }
            let t2 = Instant::now();
            for _ in 0..BLOCK {
                realtime();
            }
            let t3 = Instant::now();
            for _ in 0..BLOCK {
                inline_full();
            }
            let t4 = Instant::now();
            for _ in 0..BLOCK {
                c_bounds_call();
            }
            let t5 = Instant::now();
            inline_block();
            let t6 = Instant::now();
            let d = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5];
            for (t, d) in total.iter_mut().zip(d) {
                *t += d;
            }
            let rt = d[2].as_secs_f64();
            ratios.borrow_mut().push([d[0], d[1], d[3], d[4], d[5]].map(|d| d.as_secs_f64() / rt));
        }
        total[which].mul_f64(iters as f64 / (iters.div_ceil(BLOCK) * BLOCK) as f64)
    };
    let mut g = c.benchmark_group("ffi_paired");
    g.bench_function("c_vmclock_now", |b| b.iter_custom(|iters| run(iters, 0)));
    g.bench_function("rust_now_tai_bounds", |b| b.iter_custom(|iters| run(iters, 1)));
    g.bench_function("clock_gettime_realtime", |b| b.iter_custom(|iters| run(iters, 2)));
    g.bench_function("diag_c_read_inlined", |b| b.iter_custom(|iters| run(iters, 3)));
    g.bench_function("c_vmclock_now_bounds", |b| b.iter_custom(|iters| run(iters, 4)));
    g.bench_function("c_inline_bounds", |b| b.iter_custom(|iters| run(iters, 5)));
    g.finish();
    // SAFETY: the handle from vmclock_open, closed once.
    unsafe { vmclock_close(handle) };
    let r = ratios.into_inner();
    if !r.is_empty() {
        for (name, pick) in [
            ("c_vmclock_now", 0),
            ("rust_now_tai_bounds", 1),
            ("diag_c_read_inlined", 2),
            ("c_vmclock_now_bounds", 3),
            ("c_inline_bounds", 4),
        ] {
            let mut v: Vec<f64> = r.iter().map(|x| x[pick]).collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
            println!(
                "ffi_paired: {name} / clock_gettime_realtime per block of {BLOCK} calls: median {:.3} (p25 {:.3}, p75 {:.3}) over {} blocks",
                q(0.5),
                q(0.25),
                q(0.75),
                v.len()
            );
        }
    }
}

criterion_group!(benches, paired);
criterion_main!(benches);
