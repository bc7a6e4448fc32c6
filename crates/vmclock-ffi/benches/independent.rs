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
//!
//! `c_inline_bounds` is vmclock.h's `vmclock_now_bounds_inline` compiled by the C compiler
//! (benches/inline.c, `cc -O2`, built by build.rs): one C function making the 64 reads, as a C
//! program's loop does.
use std::ffi::{c_char, c_int, CString};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use vmclock::{vmclock_close, vmclock_now, vmclock_now_bounds, vmclock_open};
use vmclock_rs as rs;
use vmclock_rs::Clock;

#[path = "../../vmclock/benches/harness/mod.rs"]
mod harness;
use harness::*;

type NowFn = unsafe extern "C" fn(*const vmclock::vmclock, *mut vmclock::vmclock_now) -> c_int;
type BoundsFn = unsafe extern "C" fn(*const vmclock::vmclock, *mut vmclock::vmclock_bounds) -> c_int;

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

#[cfg(vmclock_inline_bench)]
extern "C" {
    fn vmclock_bench_inline_sum(r: *const vmclock::vmclock_reader) -> i64;
}

fn main() {
    let (blocks, full) = blocks();

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
        ("rust_now_tai_bounds", Box::new(move || app(cl).unwrap() as u64)),
    ];
    #[cfg(vmclock_inline_bench)]
    let sides = {
        let mut sides = sides;
        // SAFETY: the open handle; the reader lives as long as it.
        let r = unsafe { vmclock::vmclock_reader_get(handle, vmclock::VMCLOCK_READER_X86_RDTSCP) } as usize;
        let mut b = vmclock::vmclock_bounds::default();
        // SAFETY: the reader of the open handle and a local struct: the library read, which
        // publishes the page's constants (the inline reader's first read would do the same).
        assert_eq!(unsafe { vmclock::vmclock_reader_now_bounds(r as *const _, &mut b) }, 0);
        // SAFETY: the reader of the open handle, alive until vmclock_close below.
        sides.push((
            "c_inline_bounds",
            Box::new(move || unsafe { vmclock_bench_inline_sum(black_box(r) as *const _) } as u64),
        ));
        sides
    };
    run("independent harness (libvmclock)", &sides, blocks, full);
    // SAFETY: the handle from vmclock_open, closed once.
    unsafe { vmclock_close(handle) };
}
