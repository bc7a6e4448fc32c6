//! ClockBound's own clients (2.x reading `shm0`, 3.x reading `shm1`) on `vmtime feed
//! clockbound`'s segments, next to vmtime's
//! `Clock::now()` on the page and `clock_gettime(CLOCK_REALTIME)`, in one run;
//! `scripts/bench-ratios interop clock_gettime_realtime` turns the estimates into ratios.
use clock_bound_client::ClockBoundClient;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::Duration;
use vmclock::abi::{self, flags};
use vmclock::{seqlock, Clock, PageBuilder, Period, Timestamp, Utc};
use vmtime_core::feed::clockbound::{v3, ClockBoundConfig, ClockBoundFeed};
use vmtime_core::feed::Observation;
use vmtime_sys::clock::{aba_sample, gettime, ClockId};
use vmtime_sys::feed::ClockBoundSegment;

fn realtime_ns() -> u128 {
    gettime(ClockId::Realtime).unwrap() as u128
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // A UTC page of this machine's clock (50 ms calibration), bounded.
    let (t0, c0) = (realtime_ns(), vmclock::counter::read());
    std::thread::sleep(Duration::from_millis(50));
    let (t1, c1) = (realtime_ns(), vmclock::counter::read());
    let page = dir.path().join("page");
    let bytes = PageBuilder::new()
        .reference(
            vmclock::counter::NATIVE,
            c1,
            Timestamp::<Utc>::from_nanos(t1),
            Period::from_ratio(t1 - t0, (c1 - c0) as u128 * 1_000_000_000).unwrap(),
        )
        .tai_minus_utc(37)
        .maxerror(10_000, 1 << 20)
        .status(abi::status::SYNCHRONIZED)
        .flag(flags::TIME_MONOTONIC, true)
        .page_bytes();
    std::fs::write(&page, bytes).unwrap();
    let clock = Clock::open(&page).unwrap();

    // The segment, written once by the feed's own code (valid for an hour: the run is shorter).
    let snap = seqlock::read(clock.memory(), seqlock::DEFAULT_MAX_WAIT).unwrap();
    let samples: Vec<_> = (0..16).map(|_| aba_sample(ClockId::Realtime).unwrap()).collect();
    let mut feed = ClockBoundFeed::new(ClockBoundConfig { life_ns: 3_600_000_000_000, ..ClockBoundConfig::default() });
    let as_of = gettime(ClockId::MonotonicCoarse).unwrap();
    let obs = Observation { before: snap, after: snap, samples: &samples, mono_ns: 0 };
    let eb = feed.handle(&obs, as_of);
    let seg_path = dir.path().join("shm0");
    let mut seg = ClockBoundSegment::open_or_create(&seg_path).unwrap();
    seg.write(&eb.to_bytes());
    let mut client = ClockBoundClient::new_with_path(seg_path.to_str().unwrap()).unwrap();
    let seg1_path = dir.path().join("shm1");
    let mut seg1 = ClockBoundSegment::open_or_create_as(&seg1_path, v3::LAYOUT).unwrap();
    seg1.write(&feed.v3(&eb).to_bytes());
    let mut client3 = clock_bound::Client::new_with_path(seg1_path.to_str().unwrap()).unwrap();
    assert_eq!(client3.now().unwrap().clock_status, clock_bound::ClockStatus::Synchronized);

    let mut g = c.benchmark_group("interop");
    g.bench_function("clock_gettime_realtime", |b| b.iter(|| black_box(gettime(ClockId::Realtime).unwrap())));
    g.bench_function("clockbound_client_now", |b| b.iter(|| black_box(client.now().unwrap())));
    g.bench_function("clockbound3_client_now", |b| b.iter(|| black_box(client3.now().unwrap())));
    g.bench_function("vmclock_now_utc_bounds", |b| {
        b.iter(|| {
            let n = clock.now().unwrap();
            let u = n.utc().unwrap();
            black_box((u.earliest(), u.latest()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
