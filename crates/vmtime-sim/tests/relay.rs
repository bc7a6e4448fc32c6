//! A guest's page through migrations and a snapshot restore, in the simulator: the real host
//! publisher on two hosts with different oscillators and clock errors, the real relay in
//! between. Markers change exactly when they should, never go back, survive a relay restart;
//! and the guest's page always bounds true time.
use vmtime_core::host::{HostConfig, Sampled};
use vmtime_core::relay::{CounterMap, GuestRelay, GuestState};
use vmtime_sim::host_run::HostRun;
use vmtime_sim::SimHost;

const NS: i128 = 1_000_000_000;
const MS: i128 = 1_000_000;
const T0: i128 = (1_795_348_800 + 37) * NS;

fn host(seed: u64, err_ppb: i64, kernel_err_ns: i128) -> HostRun {
    let mut h = SimHost::new(seed, T0, 2_500_000_000, err_ppb, 37, kernel_err_ns);
    h.set_freq_ppb(-err_ppb);
    h.set_kernel_tai(37);
    h.ntp_sync(50, 10);
    let mut r = HostRun::new(h, HostConfig { marker_seed: seed, ..HostConfig::default() }, Sampled::Tai);
    r.run_for(5 * NS, 10 * MS);
    r
}

/// The guest's page now, and whether it bounds true time at the guest's counter.
fn guest_bounds_truth(relay: &mut GuestRelay, host: &HostRun) -> (vmclock::Snapshot, bool) {
    let g = vmclock::Snapshot::new(relay.guest_page(&host.current.unwrap()).unwrap(), 4096).unwrap();
    let c = host.host.counter();
    let t = g.tai_at(relay.state().map.guest(c)).unwrap();
    let truth = host.host.truth_at_counter(c);
    let err = t.time.as_nanos() as i128 - truth;
    (g, err.unsigned_abs() <= t.maxerror_ns().unwrap() + 1)
}

fn forward(prev: &GuestState, now: &GuestState) -> (u64, u64) {
    let d = now.disruption_marker.wrapping_sub(prev.disruption_marker);
    let g = now.vm_generation.wrapping_sub(prev.vm_generation);
    assert!(d < 1 << 32 && g < 1 << 32, "a marker went back");
    (d, g)
}

#[test]
fn migration_and_restore_sequence() {
    let (mut a, mut b) = (host(1, 20_000, 3_000), host(2, -35_000, -8_000));
    // The guest starts on A with an offset and 1.5× scaling.
    let ratio = (1u64 << 48) * 3 / 2;
    let map_a = CounterMap::new(0x1000_0000, ratio, 48).unwrap();
    let mut relay = GuestRelay::new(map_a, 0xabc0_0000, true);
    let mut prev = *relay.state();
    for _ in 0..30 {
        a.run_for(2 * NS, 10 * MS);
        let (_, ok) = guest_bounds_truth(&mut relay, &a);
        assert!(ok, "truth inside the guest's bounds on A");
    }
    assert_eq!(forward(&prev, relay.state()), (0, 0), "plain updates change no marker");
    prev = *relay.state();

    // Live migration to B: KVM keeps the guest TSC continuous with a new offset.
    let g_now = map_a.guest(a.host.counter());
    let scaled_b = ((b.host.counter() as u128 * ratio as u128) >> 48) as u64;
    let map_b = CounterMap::new(g_now.wrapping_sub(scaled_b), ratio, 48).unwrap();
    relay.migrated_in(map_b);
    let (g, ok) = guest_bounds_truth(&mut relay, &b);
    assert!(ok, "right after migration the guest's page bounds truth on B");
    assert_eq!(forward(&prev, relay.state()), (1, 0), "migration: marker +1, generation kept");
    assert_eq!(g.disruption_marker(), relay.state().disruption_marker);
    prev = *relay.state();
    for _ in 0..30 {
        b.run_for(2 * NS, 10 * MS);
        assert!(guest_bounds_truth(&mut relay, &b).1);
    }
    assert_eq!(forward(&prev, relay.state()), (0, 0));

    // The relay restarts (VMM upgrade): state saved and loaded.
    let saved = serde_json::to_string(relay.state()).unwrap();
    let mut relay = GuestRelay::from_state(serde_json::from_str(&saved).unwrap());
    assert_eq!(forward(&prev, relay.state()), (0, 0), "a relay restart changes nothing");

    // Snapshot taken now, restored 10 minutes later (on B again, new offset).
    b.run_for(600 * NS, 10 * MS);
    let scaled_b = ((b.host.counter() as u128 * ratio as u128) >> 48) as u64;
    relay.migrated_in(CounterMap::new(g_now.wrapping_sub(scaled_b), ratio, 48).unwrap());
    relay.restored_from_snapshot();
    let (_, ok) = guest_bounds_truth(&mut relay, &b);
    assert!(ok);
    assert_eq!(forward(&prev, relay.state()), (2, 1), "restore: new map and both markers");
    prev = *relay.state();

    // A disruption of the host (a step) is the guest's too, once.
    b.host.step(20 * MS);
    b.publisher.handle_event(vmtime_core::host::HostEvent::Stepped);
    b.run_for(2 * NS, 10 * MS);
    assert!(guest_bounds_truth(&mut relay, &b).1);
    assert_eq!(forward(&prev, relay.state()), (1, 0));
    assert_eq!(a.violations, Default::default());
    assert_eq!(b.violations, Default::default());
}

/// A relayed guest page keeps its time type when its host restarts with a page of the other one
/// (the guest's driver read it once, at probe): the relay converts with the host page's TAI − UTC.
#[test]
fn the_guest_page_keeps_its_time_type_across_a_host_restart() {
    let a = host(3, 10_000, 2_000);
    let map = CounterMap::new(0x1234, (1u64 << 48) * 5 / 4, 48).unwrap();
    let mut relay = GuestRelay::new(map, 0x77, false);
    let (g0, ok) = guest_bounds_truth(&mut relay, &a);
    assert!(ok);
    assert_eq!(g0.time_type(), vmclock::abi::time_type::TAI);
    // The host restarts without TAI − UTC and creates a UTC page (no offset: the guest page
    // cannot be given in TAI and says UNRELIABLE) …
    let cfg = HostConfig { marker_seed: 9, time_type: Some(vmclock::abi::time_type::UTC), ..HostConfig::default() };
    let mut b = HostRun::new(a.host.clone(), cfg, Sampled::Utc { tai_minus_utc: None });
    b.run_for(3 * NS, 10 * MS);
    assert_eq!(b.current.unwrap().time_type(), vmclock::abi::time_type::UTC);
    let g = vmclock::Snapshot::new(relay.guest_page(&b.current.unwrap()).unwrap(), 4096).unwrap();
    assert_eq!((g.time_type(), g.clock_status()), (g0.time_type(), Some(vmclock::abi::status::UNRELIABLE)));
    assert!(relay.unconvertible());
    // … then learns TAI − UTC (REALTIME + 37): its page becomes TAI with a new marker (issue 20,
    // item 10), and the guest page is usable again, still TAI, with a new marker too.
    b.sampled = Sampled::Utc { tai_minus_utc: Some(37) };
    b.run_for(3 * NS, 10 * MS);
    assert_eq!(b.current.unwrap().time_type(), vmclock::abi::time_type::TAI);
    let (g1, ok) = guest_bounds_truth(&mut relay, &b);
    assert_ne!(g1.disruption_marker(), g.disruption_marker());
    assert_eq!((g1.time_type(), g1.counter_id()), (g0.time_type(), g0.counter_id()));
    assert_eq!(g1.clock_status(), Some(vmclock::abi::status::SYNCHRONIZED));
    assert!(ok, "the converted guest page bounds true time");
    assert!(!relay.unconvertible());
}
