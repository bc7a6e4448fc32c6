//! Relay cost: one guest update (transform + seqlock write), and 1,000 guests for one host
//! update, against clock_gettime(CLOCK_REALTIME) in the same run.
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use vmclock::abi::{counter_id, flags, status};
use vmclock::{PageBuf, PageBuilder, Period, Snapshot, Tai, Timestamp};
use vmtime_core::relay::{CounterMap, GuestPageWriter, GuestRelay};

fn host() -> Snapshot {
    let abi = PageBuilder::new()
        .reference(
            counter_id::X86_TSC,
            1 << 40,
            Timestamp::<Tai>::from_parts(1_795_000_037, 12345),
            Period::from_hz(2_500_000_000).unwrap(),
        )
        .tai_minus_utc(37)
        .status(status::SYNCHRONIZED)
        .maxerror(1_000, 1 << 20)
        .esterror(100, 1 << 10)
        .flag(flags::TIME_MONOTONIC, true)
        .build();
    Snapshot::new(abi, 4096).unwrap()
}

fn clock_gettime() -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
}

fn bench(c: &mut Criterion) {
    let h = host();
    let mut g = c.benchmark_group("relay");
    g.bench_function("clock_gettime_realtime", |b| b.iter(|| black_box(clock_gettime())));
    let map = CounterMap::new(0x1234_5678_9abc, (1u64 << 48) * 3 / 2, 48).unwrap();
    g.bench_function("transform", |b| {
        b.iter(|| black_box(vmtime_core::relay::transform(black_box(&h), &map).unwrap()))
    });
    let mut one = GuestPageWriter::new(GuestRelay::new(map, 1, true), PageBuf::new(), |s| {
        black_box(s);
    });
    g.bench_function("one_guest_update", |b| b.iter(|| black_box(one.update(black_box(&h)).unwrap())));
    let mut fleet: Vec<_> = (0..1000u64)
        .map(|i| {
            let map =
                CounterMap::new(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), (1u64 << 48) / 2 + i * 12_345_678, 48).unwrap();
            GuestPageWriter::new(GuestRelay::new(map, i, true), PageBuf::new(), |s| {
                black_box(s);
            })
        })
        .collect();
    g.bench_function("fleet_1000_guests", |b| {
        b.iter_batched(
            || (),
            |_| {
                for w in fleet.iter_mut() {
                    black_box(w.update(&h).unwrap());
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
