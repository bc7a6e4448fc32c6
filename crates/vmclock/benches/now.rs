//! `Clock::now()` against `clock_gettime(CLOCK_REALTIME)` and `CLOCK_TAI`, measured in the same
//! run; `scripts/bench-ratios` turns the estimates into the ratios in docs/BENCHMARKS.md.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::io::Write;
use vmclock::abi::{self, flags};
use vmclock::{Clock, PageBuilder, Period, Tai, Timestamp};

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
    let page = PageBuilder::new()
        .reference(
            abi::counter_id::X86_TSC,
            vmclock::counter::read(),
            Timestamp::<Tai>::from_parts(1_795_000_037, 0),
            Period::from_hz(2_500_000_000).unwrap(),
        )
        .tai_minus_utc(37)
        .maxerror(1_000, 100)
        .esterror(100, 10)
        .status(abi::status::SYNCHRONIZED)
        .flag(flags::TIME_MONOTONIC, true)
        .page_bytes();
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

criterion_group!(benches, bench);
criterion_main!(benches);
