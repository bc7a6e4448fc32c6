//! Simulator speed: one simulated hour of the whole chain (one host, one guest, 1 s updates),
//! with clock_gettime(CLOCK_REALTIME) measured in the same run as the machine's yardstick.
//! Simulated days per minute = 86,400 / 3,600 × 60 s / (median of `steady_1h` in s).
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vmtime_sim::scenario::{run, Scenario};

fn clock_gettime() -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.bench_function("clock_gettime_realtime", |b| b.iter(|| black_box(clock_gettime())));
    let s = Scenario::builtin("steady").unwrap();
    g.bench_function("steady_1h", |b| b.iter(|| black_box(run(&s, 1, Some(3600), |_| {}).summary.host_pages)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
