//! `Clock::now()` against `clock_gettime(CLOCK_REALTIME)` and `CLOCK_TAI`, measured in the same
//! run; `scripts/bench-ratios` turns the estimates into the ratios in docs/BENCHMARKS.md.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::io::Write;
use vmclock::abi;
use vmclock::Clock;

fn clock_gettime(id: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts
}

fn bench(c: &mut Criterion) {
    // A realistic page in a mapped file: TAI, bounds on, 2.5 GHz counter.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page");
    let page = app_page();
    std::fs::File::create(&path).unwrap().write_all(&page).unwrap();
    let clock = Clock::open(&path).unwrap();

    let mut g = c.benchmark_group("read");
    g.bench_function("clock_gettime_realtime", |b| b.iter(|| black_box(clock_gettime(libc::CLOCK_REALTIME))));
    g.bench_function("clock_gettime_tai", |b| b.iter(|| black_box(clock_gettime(libc::CLOCK_TAI))));
    g.bench_function("counter_read_fenced", |b| b.iter(|| black_box(vmclock::counter::read())));
    #[cfg(target_arch = "x86_64")]
    g.bench_function("counter_lfence_rdtsc", |b| b.iter(|| black_box(vmclock::counter::read_lfence_rdtsc())));
    #[cfg(target_arch = "x86_64")]
    if vmclock::counter::has_rdtscp() {
        g.bench_function("counter_rdtscp", |b| b.iter(|| black_box(vmclock::counter::read_rdtscp())));
    }
    // The unfenced instruction alone: the floor no ordered read can reach (reference only).
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no preconditions on x86_64.
    g.bench_function("rdtsc_unfenced", |b| b.iter(|| black_box(unsafe { core::arch::x86_64::_rdtsc() })));
    g.bench_function("snapshot", |b| b.iter(|| black_box(clock.snapshot().unwrap())));
    g.bench_function("vmclock_now", |b| b.iter(|| black_box(clock.now().unwrap())));
    g.bench_function("vmclock_now_tai_bounds", |b| {
        b.iter(|| {
            let n = clock.now().unwrap();
            let t = n.tai().unwrap();
            black_box((t.earliest(), t.latest()))
        })
    });
    // Diagnostic: the same read with LFENCE; RDTSC instead of RDTSCP.
    #[cfg(target_arch = "x86_64")]
    g.bench_function("diag_now_tai_bounds_lfence", |b| {
        b.iter(|| {
            let n = clock.now_with_counter(vmclock::counter::read_lfence_rdtsc).unwrap();
            let t = n.tai().unwrap();
            black_box((t.earliest(), t.latest()))
        })
    });
    g.bench_function("diag_now_tai_bounds_nocounter", |b| {
        b.iter(|| {
            let n = clock.now_with_counter(|| black_box(12345)).unwrap();
            let t = n.tai().unwrap();
            black_box((t.earliest(), t.latest()))
        })
    });
    g.finish();
}

/// The application's read and its reference measured interleaved, in blocks of 64 calls each,
/// so both see the same machine (this one is shared): each benchmark of the group runs both
/// and reports the time of its own half.
fn paired(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page");
    std::fs::File::create(&path).unwrap().write_all(&app_page()).unwrap();
    let clock = Clock::open(&path).unwrap();
    const BLOCK: u64 = 64;
    let app = || {
        // Exactly what an application does: a bounded reading, then TAI earliest and latest.
        let n = clock.now().unwrap();
        let t = n.tai().unwrap();
        black_box((t.earliest(), t.latest()));
    };
    let realtime = || {
        black_box(clock_gettime(libc::CLOCK_REALTIME));
    };
    // Every block pair, for the ratio of the two halves over the whole group (printed at the end).
    let ratios = std::cell::RefCell::new(Vec::<f64>::new());
    let run = |iters: u64, mine: bool| {
        let (mut a, mut b) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for _ in 0..iters.div_ceil(BLOCK) {
            let t0 = std::time::Instant::now();
            for _ in 0..BLOCK {
                app();
            }
            let t1 = std::time::Instant::now();
            for _ in 0..BLOCK {
                realtime();
            }
            let t2 = std::time::Instant::now();
            a += t1 - t0;
            b += t2 - t1;
            ratios.borrow_mut().push((t1 - t0).as_secs_f64() / (t2 - t1).as_secs_f64());
        }
        let own = if mine { a } else { b };
        own.mul_f64(iters as f64 / (iters.div_ceil(BLOCK) * BLOCK) as f64)
    };
    let mut g = c.benchmark_group("paired");
    g.bench_function("clock_gettime_realtime", |bch| bch.iter_custom(|iters| run(iters, false)));
    g.bench_function("app_now_tai_bounds", |bch| bch.iter_custom(|iters| run(iters, true)));
    g.finish();
    let mut r = ratios.into_inner();
    if !r.is_empty() {
        r.sort_by(f64::total_cmp);
        let q = |p: f64| r[((r.len() - 1) as f64 * p) as usize];
        println!(
            "paired: app_now_tai_bounds / clock_gettime_realtime per block of {BLOCK} calls: median {:.3} (p25 {:.3}, p75 {:.3}) over {} block pairs",
            q(0.5),
            q(0.25),
            q(0.75),
            r.len()
        );
    }
}

fn app_page() -> Vec<u8> {
    vmclock::test_support::synchronized_tai(abi::counter_id::X86_TSC, vmclock::counter::read(), 2_500_000_000)
        .esterror(100, 10)
        .page_bytes()
}

criterion_group!(benches, bench, paired);
criterion_main!(benches);
