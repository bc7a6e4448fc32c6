//! The host publisher against the simulated host: steady state, frequency changes, slews both
//! ways, steps, leap seconds, unsync/resync, restart; and long random runs.
use vmclock::abi::{flags, leap, status};
use vmtime_core::host::{HostConfig, Reason, Sampled};
use vmtime_core::kernel::{STA_DEL, STA_INS};
use vmtime_sim::host_run::HostRun;
use vmtime_sim::SimHost;

const NS: i128 = 1_000_000_000;
const MS: i128 = 1_000_000;
/// 2026-11-22T12:00:00Z in TAI ns.
const T0: i128 = (1_795_348_800 + 37) * NS;

fn synced_host(seed: u64) -> SimHost {
    // A +20 ppm oscillator, corrected by the kernel's freq; kernel 2 µs off truth, NTP says ±10 µs.
    let mut h = SimHost::new(seed, T0, 2_500_000_000, 20_000, 37, 2_000);
    h.set_freq_ppb(-20_000);
    h.set_kernel_tai(37);
    h.ntp_sync(10, 5);
    h
}

fn run(seed: u64, sampled: Sampled) -> HostRun {
    let cfg = HostConfig { marker_seed: 0x5eed_0000 + seed, ..HostConfig::default() };
    HostRun::new(synced_host(seed), cfg, sampled)
}

#[test]
fn the_kernels_own_page_is_followed_exactly() {
    // With /dev/vmclock_host (RFC) as the source, the page follows the kernel's own relation:
    // through a frequency change and a PLL slew, still with bounds, status and markers.
    let mut r = run(21, Sampled::Tai);
    r.use_kernel_page = true;
    r.run_for(60 * NS, 10 * MS);
    let steady = p99(&r.page_vs_kernel_ns[200..]);
    let n = r.page_vs_kernel_ns.len();
    r.host.set_freq_ppb(-17_000);
    r.run_for(10 * NS, 10 * MS);
    r.host.set_offset_ns(100_000);
    r.host.ntp_sync(150, 10);
    r.run_for(60 * NS, 10 * MS);
    assert_clean(&r);
    let slewing = p99(&r.page_vs_kernel_ns[n..]);
    eprintln!("kernel page source: {} pages, |page − kernel| p99 {steady:.1} ns steady, {slewing:.1} ns through a frequency change and a PLL slew", r.pages.len());
    assert!(steady <= 2.0, "{steady}");
    // The PLL changes the rate at every second boundary and a full observation runs once a
    // second, so the page can lag by one second's rate change beyond the 20 ns threshold
    // (measured p99: 30 ns); a regression guard, not a claim.
    assert!(slewing <= 25.0 + 10.0, "{slewing}");
    let p = r.current.unwrap();
    assert!(p.has(flags::TIME_MAXERROR_VALID | flags::TIME_MONOTONIC));
    assert_eq!(p.clock_status(), Some(status::SYNCHRONIZED));
}

/// Issue 20, item 9: a kernel page that missed a 1 s clock step (the RFC's revision 1 does not
/// republish after settimeofday) is caught by the host's own samples: the page follows the
/// clock, said once, and the kernel page is declared unusable until it agrees again.
#[test]
fn a_kernel_page_that_missed_a_step_is_not_followed() {
    use vmtime_core::host::{HostNotice, KERNEL_PAGE_UNUSABLE_AFTER};
    let mut r = run(26, Sampled::Tai);
    r.use_kernel_page = true;
    r.run_for(10 * NS, 10 * MS);
    assert_eq!(r.publisher.stats().kernel_page.rejected, 0, "a live kernel page agrees");
    assert!(r.publisher.stats().kernel_page.checked > 5);
    let n = r.page_vs_kernel_ns.len();
    // The clock is stepped 1 s; the kernel page stays as it was.
    r.stale_kernel_page = Some(r.host.kernel_page());
    r.host.step(NS);
    r.publisher.handle_event(vmtime_core::host::HostEvent::Stepped);
    r.run_for(10 * NS, 10 * MS);
    let worst = r.page_vs_kernel_ns[n + 10..].iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(worst < 1_000.0, "the page follows the clock, not the stale kernel page: {worst} ns");
    let kp = r.publisher.stats().kernel_page;
    assert!(kp.unusable && kp.rejected >= KERNEL_PAGE_UNUSABLE_AFTER, "{kp:?}");
    assert!((kp.last_disagreement_ns + 1e9).abs() < 1e3, "{kp:?}");
    let notes = r.publisher.take_notices();
    assert!(
        matches!(notes[..], [HostNotice::KernelPageDisagrees { .. }, HostNotice::KernelPageUnusable { .. }]),
        "said once: {notes:?}"
    );
    // A kernel page right at this instant but with a period 1 % off is not used either.
    r.stale_kernel_page = None;
    r.run_for(20 * NS, 10 * MS);
    assert!(!r.publisher.stats().kernel_page.unusable);
    let _ = r.publisher.take_notices();
    let rejected = r.publisher.stats().kernel_page.rejected;
    let mut abi = *r.host.kernel_page().raw();
    abi.counter_period_frac_sec.set(abi.counter_period_frac_sec.get() / 100 * 101);
    r.stale_kernel_page = Some(vmclock::Snapshot::new(abi, 4096).unwrap());
    r.observe();
    assert_eq!(r.publisher.stats().kernel_page.rejected, rejected + 1, "{:?}", r.publisher.stats().kernel_page);
    r.stale_kernel_page = None;
    r.run_for(20 * NS, 10 * MS);
    let _ = r.publisher.take_notices();
    r.stale_kernel_page = Some(r.host.kernel_page());
    r.host.step(NS);
    r.publisher.handle_event(vmtime_core::host::HostEvent::Stepped);
    r.run_for(10 * NS, 10 * MS);
    assert!(r.publisher.stats().kernel_page.unusable);
    let _ = r.publisher.take_notices();
    // The kernel page is live again: used again after agreeing for a while.
    r.stale_kernel_page = None;
    r.run_for(20 * NS, 10 * MS);
    assert!(!r.publisher.stats().kernel_page.unusable);
    assert_eq!(r.publisher.take_notices(), vec![HostNotice::KernelPageAgrees]);
    // The step made the kernel clock itself 1 s off truth (the simulation's truth check says
    // so, not the publisher's fault); the pages keep their own promises.
    assert_eq!((r.violations.monotonic, r.violations.bound_consistency), (0, 0), "{:?}", r.violations);
}

#[test]
fn a_tighter_tolerance_turns_fast_slews_into_disruptions() {
    // With 15 ppm promised, a 5 ms PLL correction (333 ppm) breaks the old page's bounds for
    // earlier counter values: the marker must say so, and no promise may be broken.
    let cfg = HostConfig { tolerance_ppb: 15_000, ..HostConfig::default() };
    let mut r = HostRun::new(synced_host(20), cfg, Sampled::Tai);
    r.run_for(20 * NS, 10 * MS);
    r.host.set_offset_ns(-5_000_000);
    r.host.ntp_sync(5_010, 5);
    r.run_for(120 * NS, 10 * MS);
    assert_clean(&r);
    assert!(r.pages.iter().any(|p| p.disrupted));
}

fn p99(v: &[f64]) -> f64 {
    let mut a: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    a.sort_by(f64::total_cmp);
    a[((a.len() - 1) as f64 * 0.99) as usize]
}

fn assert_clean(r: &HostRun) {
    assert_eq!(
        r.violations,
        Default::default(),
        "violations; pages: {:#?}",
        r.pages.iter().map(|p| (p.at_ns, p.reason, p.disrupted)).collect::<Vec<_>>()
    );
}

#[test]
fn steady_state_is_quiet_and_tight() {
    let mut r = run(1, Sampled::Tai);
    r.run_for(600 * NS, 10 * MS);
    assert_clean(&r);
    let last = r.current.unwrap();
    assert_eq!(last.clock_status(), Some(status::SYNCHRONIZED));
    assert_eq!(last.tai_minus_utc(), Some(37));
    assert_eq!(last.tai_offset_raw(), Some(-37), "the page stores UTC − TAI, as the driver reads it");
    assert!(last.has(flags::TIME_MONOTONIC | flags::TIME_MAXERROR_VALID | flags::PERIOD_MAXERROR_VALID));
    // Error against the kernel clock once calibrated (skip the first 5 s).
    let settled = &r.page_vs_kernel_ns[500..];
    let e = p99(settled);
    eprintln!(
        "steady: {} pages in 600 s, |page − kernel| p99 {e:.1} ns, truth checks {}",
        r.pages.len(),
        r.truth_checks
    );
    assert!(e <= 20.0, "p99 {e}");
    assert!(r.pages.len() < 40, "idle updates: {}", r.pages.len());
    assert!(r.truth_checks > 50_000);
}

/// The first page with `reason` after true time `t`.
fn first_after(r: &HostRun, t: i128, reason: Reason) -> Option<&vmtime_sim::host_run::Published> {
    r.pages.iter().find(|p| p.at_ns >= t && p.reason == reason)
}

#[test]
fn frequency_change_reaches_the_page_within_one_poll() {
    // 20 frequency changes at random phases of the daemon's 10 ms poll.
    let mut r = run(2, Sampled::Tai);
    r.run_for(30 * NS, 10 * MS);
    let mut delays = Vec::new();
    for i in 0..20 {
        let phase = r.host.rng.range(0, 10_000_000) as i128;
        r.run_for(phase, 10 * MS); // a random phase of the poll schedule
        let t = r.host.now();
        r.host.set_freq_ppb(-20_000 + if i % 2 == 0 { 3_000 } else { -3_000 }); // NTP moves ±3 ppm
        r.run_for(2 * NS, 10 * MS);
        let p = first_after(&r, t, Reason::Rate).expect("a Rate update");
        delays.push(p.at_ns - t);
    }
    let max = *delays.iter().max().unwrap();
    let mean = delays.iter().sum::<i128>() / delays.len() as i128;
    eprintln!(
        "frequency change → new page over 20 changes: mean {:.3} ms, max {:.3} ms",
        mean as f64 / 1e6,
        max as f64 / 1e6
    );
    assert!(max <= 10 * MS + MS, "{max}");
    assert_clean(&r);
}

#[test]
fn slews_in_both_directions_keep_every_promise() {
    for (seed, offset) in [(3u64, 200_000i64), (4, -200_000), (5, 5_000_000), (6, -5_000_000)] {
        let mut r = run(seed, Sampled::Tai);
        r.run_for(20 * NS, 10 * MS);
        let marker = r.current.unwrap().disruption_marker();
        r.host.set_offset_ns(offset); // the kernel PLL slews it over the next minute or so
        r.host.ntp_sync(offset.unsigned_abs() as i64 / 1000 + 10, 5); // NTP's maxerror covers what it found
        r.run_for(300 * NS, 10 * MS);
        assert_clean(&r);
        // A small correction keeps the marker. A 5 ms one makes the kernel run 333 ppm off its
        // past trajectory at once: a page with the new rate, extrapolated back to the previous
        // reference, leaves the old page's bounds there, so the marker changes (once) and says so.
        let changes = r.pages.iter().filter(|p| p.disrupted).count();
        if offset.abs() <= 200_000 {
            assert_eq!(r.current.unwrap().disruption_marker(), marker, "{offset}");
        } else {
            assert!(changes <= 1, "{offset}: {changes}");
        }
        let tail = &r.page_vs_kernel_ns[r.page_vs_kernel_ns.len() - 3000..];
        eprintln!("slew {offset} ns: {} pages, tail p99 {:.1} ns", r.pages.len(), p99(tail));
        // The 20 ns threshold is checked at each observation (1 s); in between the page may
        // drift on by the residual rate error of one interval (a few ns in the PLL's tail).
        assert!(p99(tail) <= 25.0, "{}", p99(tail));
    }
}

#[test]
fn steps_change_the_marker_and_backward_steps_are_not_monotonic() {
    for (seed, step) in [(7u64, 10 * MS), (8, -10 * MS), (9, -300_000)] {
        let mut r = run(seed, Sampled::Tai);
        r.run_for(20 * NS, 10 * MS);
        let before = r.current.unwrap();
        let t = r.host.now();
        r.host.step(step);
        r.publisher.handle_event(vmtime_core::host::HostEvent::Stepped);
        r.run_for(5 * NS, 10 * MS);
        let p = r.pages.iter().find(|p| p.at_ns >= t).expect("an update");
        assert!(p.at_ns - t <= 11 * MS, "reacts within a poll");
        // Every detected step changes the marker; a backward one cannot promise monotonic time.
        assert!(p.disrupted && p.snap.disruption_marker() != before.disruption_marker(), "{step}");
        assert_eq!(p.snap.has(flags::TIME_MONOTONIC), step > 0, "{step}");
        assert_clean(&r);
        assert!(r.page_vs_kernel_ns.last().unwrap().abs() <= 20.0);
    }
}

fn leap_run(seed: u64, insert: bool, sampled: Sampled) -> HostRun {
    // Start 30 s before midnight UTC at the end of 2026-12-31 (a leap day in this scenario).
    let midnight = 20_819 * 86_400 * NS;
    let mut h = SimHost::new(seed, midnight - 30 * NS + 37 * NS, 2_500_000_000, 0, 37, 1_000);
    h.ntp_sync(10, 5);
    if sampled == Sampled::Tai {
        h.set_kernel_tai(37);
    }
    h.set_status(if insert { STA_INS } else { STA_DEL }, true);
    let mut r = HostRun::new(h, HostConfig { marker_seed: seed, ..HostConfig::default() }, sampled);
    if let Sampled::Utc { .. } = sampled {
        let day = (midnight / NS) as i64; // the first second after the leap
        r.leap_list = Some(vmtime_core::leapsecs::LeapSeconds {
            entries: vec![(1_483_228_800, 37), (day, if insert { 38 } else { 36 })],
            expires: day + 86_400 * 180,
        });
    }
    r.run_for(25 * NS, 10 * MS);
    let pre = r.current.unwrap();
    assert_eq!(pre.leap_indicator(), Some(if insert { leap::PRE_POS } else { leap::PRE_NEG }));
    // Through midnight; the true TAI − UTC changes with the leap.
    let switch = if insert { midnight + 37 * NS } else { midnight - NS + 37 * NS };
    r.host.world_leap = Some((switch, if insert { 38 } else { 36 }));
    r.run_for(15 * NS, 10 * MS);
    r.host.set_status(STA_INS | STA_DEL, false);
    r.run_for(20 * NS, 10 * MS);
    r
}

#[test]
fn leap_seconds_keep_tai_continuous() {
    for (seed, insert, sampled) in [
        (10u64, true, Sampled::Tai),
        (11, false, Sampled::Tai),
        (12, true, Sampled::Utc { tai_minus_utc: Some(37) }),
        (16, false, Sampled::Utc { tai_minus_utc: Some(37) }),
    ] {
        let r = leap_run(seed, insert, sampled);
        assert_eq!(r.host.leaps_applied.len(), 1, "the kernel applied the leap");
        assert_clean(&r);
        let markers: std::collections::BTreeSet<u64> = r.pages.iter().map(|p| p.snap.disruption_marker()).collect();
        assert_eq!(markers.len(), 1, "a leap second is not a disruption of a TAI page");
        let leaps: Vec<u8> = r.pages.iter().filter_map(|p| p.snap.leap_indicator()).collect();
        let want_post = if insert { leap::POST_POS } else { leap::POST_NEG };
        assert!(leaps.contains(&want_post), "{leaps:?}");
        if insert && sampled == Sampled::Tai {
            assert!(leaps.contains(&leap::POS), "23:59:60 is announced: {leaps:?}");
        }
        let tail = &r.page_vs_kernel_ns[r.page_vs_kernel_ns.len() - 1000..];
        assert!(p99(tail) <= 20.0, "{insert} {sampled:?}: {}", p99(tail));
    }
}

#[test]
fn unsync_and_resync_change_the_status() {
    let mut r = run(13, Sampled::Tai);
    r.run_for(10 * NS, 10 * MS);
    assert_eq!(r.current.unwrap().clock_status(), Some(status::SYNCHRONIZED));
    r.host.set_status(vmtime_core::kernel::STA_UNSYNC, true);
    r.run_for(2 * NS, 10 * MS);
    assert_eq!(r.current.unwrap().clock_status(), Some(status::FREERUNNING));
    r.host.ntp_sync(20, 5);
    r.run_for(2 * NS, 10 * MS);
    assert_eq!(r.current.unwrap().clock_status(), Some(status::SYNCHRONIZED));
    assert!(r.pages.iter().any(|p| p.reason == Reason::Status));
    assert_clean(&r);
}

#[test]
fn unknown_tai_offset_publishes_utc_never_tai() {
    let mut r = run(14, Sampled::Utc { tai_minus_utc: None });
    r.run_for(5 * NS, 10 * MS);
    let p = r.current.unwrap();
    assert_eq!(p.time_type(), vmclock::abi::time_type::UTC);
    assert!(!p.has(flags::TAI_OFFSET_VALID));
    assert_clean(&r);
}

#[test]
fn restart_keeps_the_marker_only_with_continuity() {
    let mut r = run(15, Sampled::Tai);
    r.run_for(20 * NS, 10 * MS);
    let page = r.current.unwrap();
    // Same host, a new publisher over the page it left.
    let cfg = HostConfig { marker_seed: 999, ..HostConfig::default() };
    let mut again = HostRun::new(r.host.clone(), cfg.clone(), Sampled::Tai);
    again.publisher = vmtime_core::host::Publisher::resume(cfg.clone(), page);
    again.current = Some(page);
    again.run_for(3 * NS, 10 * MS);
    assert_eq!(again.current.unwrap().disruption_marker(), page.disruption_marker(), "continuity proven");
    assert_clean(&again);
    // The host clock was stepped while the daemon was down: the marker must change.
    let mut stepped = r.host.clone();
    stepped.step(50 * MS);
    let mut again = HostRun::new(stepped, cfg.clone(), Sampled::Tai);
    again.publisher = vmtime_core::host::Publisher::resume(cfg, page);
    again.current = Some(page);
    again.run_for(3 * NS, 10 * MS);
    assert_ne!(again.current.unwrap().disruption_marker(), page.disruption_marker());
    assert_eq!(again.pages[0].reason, Reason::Restart);
}

#[test]
fn a_restart_onto_a_page_ahead_of_the_kernel_is_not_monotonic() {
    // docs/HOST.md: a backward step is published with TIME_MONOTONIC clear. The host clock was
    // stepped back while the daemon was down.
    let mut r = run(16, Sampled::Tai);
    r.run_for(20 * NS, 10 * MS);
    let page = r.current.unwrap();
    assert!(page.has(flags::TIME_MONOTONIC));
    let mut back = r.host.clone();
    back.step(-50 * MS);
    let cfg = HostConfig { marker_seed: 999, ..HostConfig::default() };
    let mut again = HostRun::new(back, cfg.clone(), Sampled::Tai);
    again.publisher = vmtime_core::host::Publisher::resume(cfg, page);
    again.current = Some(page);
    again.run_for(3 * NS, 10 * MS);
    let first = again.pages[0].snap;
    assert_eq!(again.pages[0].reason, Reason::Restart);
    assert_ne!(first.disruption_marker(), page.disruption_marker());
    assert!(!first.has(flags::TIME_MONOTONIC), "a restart going back in time cannot be monotonic");
    // Only that page: the ones after it are monotonic again.
    assert!(again.pages[1..].iter().all(|p| p.snap.has(flags::TIME_MONOTONIC)));
    // (The simulated kernel was stepped 50 ms off truth without widening its maxerror, so only
    // the monotonic promise is checked here.)
    assert_eq!(again.violations.monotonic, 0);
}

#[test]
fn a_restart_onto_a_torn_page_cannot_prove_continuity() {
    // Same host, no step: continuity would hold, but the page's seq_count is odd (its writer died
    // mid-update), so its body may be torn.
    let mut r = run(17, Sampled::Tai);
    r.run_for(20 * NS, 10 * MS);
    let page = r.current.unwrap();
    let mut bytes = page.to_bytes();
    let seq = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) | 1;
    bytes[12..16].copy_from_slice(&seq.to_le_bytes());
    let torn = vmclock::Snapshot::decode(&bytes, vmclock::abi::PAGE_SIZE).unwrap();
    assert_eq!(torn.seq_count() % 2, 1);
    let cfg = HostConfig { marker_seed: 999, ..HostConfig::default() };
    let mut again = HostRun::new(r.host.clone(), cfg.clone(), Sampled::Tai);
    again.publisher = vmtime_core::host::Publisher::resume(cfg, torn);
    again.current = Some(page);
    again.run_for(3 * NS, 10 * MS);
    let first = again.pages[0].snap;
    assert_eq!(again.pages[0].reason, Reason::Restart);
    assert_ne!(first.disruption_marker(), page.disruption_marker(), "a torn page proves nothing");
    assert!(!first.has(flags::TIME_MONOTONIC));
}

mod long_runs {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Ev {
        Freq(i64),
        Offset(i64),
        Step(i64),
        Unsync,
        Resync,
        Tick(i64),
        Osc(i64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            4 => (-30_000i64..-10_000).prop_map(Ev::Freq),
            3 => (-2_000_000i64..2_000_000).prop_map(Ev::Offset),
            1 => prop_oneof![(-50_000_000i64..50_000_000), (-5_000i64..5_000)].prop_map(Ev::Step),
            1 => Just(Ev::Unsync),
            2 => Just(Ev::Resync),
            1 => (9_999i64..10_002).prop_map(Ev::Tick),
            1 => (15_000i64..25_000).prop_map(Ev::Osc),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random NTP behaviour for 20 simulated minutes: never a MONOTONIC violation, never a
        /// bound-consistency violation without a marker change, and true time always inside.
        #[test]
        fn promises_hold_under_random_ntp(seed in any::<u64>(), evs in proptest::collection::vec((1i128..90, ev()), 5..20)) {
            let mut r = run(seed, Sampled::Tai);
            r.run_for(5 * NS, 10 * MS);
            for (gap_s, e) in evs {
                match e {
                    Ev::Freq(p) => r.host.set_freq_ppb(p),
                    // An honest NTP daemon: the maxerror it sets covers the kernel's real error and
                    // what the kernel can drift (here up to ~300 ppm) before its next
                    // once-a-second maxerror increment.
                    Ev::Offset(ns) => {
                        r.host.set_offset_ns(ns);
                        let e = r.host.kernel_error_ns().unsigned_abs() as i64 / 1000;
                        r.host.ntp_sync(e + 500, 5);
                    }
                    Ev::Step(ns) => {
                        r.host.step(ns as i128);
                        let e = r.host.kernel_error_ns().unsigned_abs() as i64 / 1000;
                        r.host.ntp_sync(e + 500, 5);
                        r.publisher.handle_event(vmtime_core::host::HostEvent::Stepped);
                    }
                    Ev::Unsync => r.host.set_status(vmtime_core::kernel::STA_UNSYNC, true),
                    Ev::Resync => {
                        let e = r.host.kernel_error_ns().unsigned_abs() as i64 / 1000;
                        r.host.ntp_sync(e + 500, 5);
                    }
                    Ev::Tick(t) => r.host.set_tick(t),
                    Ev::Osc(ppb) => r.host.set_oscillator_error(ppb),
                }
                r.run_for(gap_s * NS, 10 * MS);
            }
            prop_assert_eq!(r.violations, Default::default(), "{:?}", r.violation_log);
            prop_assert!(r.truth_checks > 1000);
        }
    }
}

/// counter_id and time_type are constant fields: the Linux driver reads them once, at probe.
fn constants(r: &HostRun) -> Vec<(u8, u8)> {
    let mut c: Vec<(u8, u8)> = r.pages.iter().map(|p| (p.snap.counter_id(), p.snap.time_type())).collect();
    c.dedup();
    c
}

#[test]
fn a_utc_page_becomes_tai_with_a_new_marker_when_the_offset_becomes_known() {
    // Issue 11, item 4: the host switched the page to TAI keeping the marker; then (issue 20,
    // item 10) it kept UTC for life. It switches with a disruption: a new marker.
    use vmclock::abi::{counter_id::X86_TSC, time_type};
    let mut r = run(21, Sampled::Utc { tai_minus_utc: None });
    r.run_for(5 * NS, 10 * MS);
    let before = r.current.unwrap();
    assert!(!before.has(flags::TAI_OFFSET_VALID));
    r.sampled = Sampled::Utc { tai_minus_utc: Some(37) };
    r.run_for(5 * NS, 10 * MS);
    let p = r.current.unwrap();
    assert_eq!(constants(&r), [(X86_TSC, time_type::UTC), (X86_TSC, time_type::TAI)]);
    assert!(p.has(flags::TAI_OFFSET_VALID));
    assert_eq!(p.tai_minus_utc(), Some(37));
    let switch = r.pages.iter().find(|p| p.snap.time_type() == time_type::TAI).unwrap();
    assert_eq!(switch.reason, Reason::TaiOffset);
    assert!(switch.disrupted);
    assert_ne!(p.disruption_marker(), before.disruption_marker(), "the guest must see the change");
    assert_eq!(r.pages.iter().filter(|p| p.disrupted).count(), 1, "one disruption, then TAI for good");
    // Both pages give true time (within their bounds).
    assert_clean(&r);
    // The same from CLOCK_TAI samples (the kernel's TAI offset set later by the NTP daemon).
    let mut r = run(22, Sampled::Utc { tai_minus_utc: None });
    r.run_for(5 * NS, 10 * MS);
    r.sampled = Sampled::Tai;
    r.run_for(5 * NS, 10 * MS);
    assert_eq!(constants(&r), [(X86_TSC, time_type::UTC), (X86_TSC, time_type::TAI)]);
    assert_eq!(r.current.unwrap().tai_minus_utc(), Some(37));
    assert_clean(&r);
}

#[test]
fn a_tai_page_stays_tai_when_the_offset_stops_being_known() {
    // An expired leap-second list: the host used to switch the page to UTC.
    let mut r = run(23, Sampled::Utc { tai_minus_utc: Some(37) });
    r.run_for(5 * NS, 10 * MS);
    let before = r.current.unwrap();
    r.sampled = Sampled::Utc { tai_minus_utc: None };
    r.run_for(5 * NS, 10 * MS);
    let p = r.current.unwrap();
    assert_eq!(constants(&r), [(vmclock::abi::counter_id::X86_TSC, vmclock::abi::time_type::TAI)]);
    assert!(!p.has(flags::TAI_OFFSET_VALID), "the offset is no longer vouched for");
    // A leap second may have been missed: a second more of maxerror, the same marker.
    assert!(p.time_maxerror_ns().unwrap() >= 1_000_000_000);
    assert_eq!(p.disruption_marker(), before.disruption_marker());
    assert_clean(&r);
    // Known again: the bound comes back.
    r.sampled = Sampled::Utc { tai_minus_utc: Some(37) };
    r.run_for(3 * NS, 10 * MS);
    assert!(r.current.unwrap().time_maxerror_ns().unwrap() < 100_000_000);
    assert_clean(&r);
}

#[test]
fn a_restarted_host_keeps_its_pages_time_type() {
    // A TAI page; the host restarts without knowing TAI − UTC (its list expired meanwhile).
    let mut r = run(24, Sampled::Tai);
    r.run_for(10 * NS, 10 * MS);
    let page = r.current.unwrap();
    let cfg = HostConfig { marker_seed: 7, time_type: Some(vmclock::abi::time_type::UTC), ..HostConfig::default() };
    let mut again = HostRun::new(r.host.clone(), cfg.clone(), Sampled::Utc { tai_minus_utc: None });
    again.publisher = vmtime_core::host::Publisher::resume(cfg, page);
    again.current = Some(page);
    again.run_for(3 * NS, 10 * MS);
    assert_eq!(constants(&again), [(page.counter_id(), vmclock::abi::time_type::TAI)]);
    assert_clean(&again);
}

#[test]
fn the_first_page_written_has_its_constant_fields() {
    // Both daemons used to write a blank page (counter INVALID) before their first publish; a
    // driver probing then would never see the counter.
    for tt in [vmclock::abi::time_type::TAI, vmclock::abi::time_type::UTC] {
        let p = vmtime_core::host::Publisher::new(HostConfig { time_type: Some(tt), ..HostConfig::default() });
        let page = vmclock::Snapshot::new(p.placeholder().unwrap().build(), 4096).unwrap();
        assert_eq!((page.counter_id(), page.time_type()), (vmclock::abi::counter_id::X86_TSC, tt));
        assert_eq!(page.clock_status(), Some(status::INITIALIZING), "no time yet: readers must not use it");
        // Issue 20, item 10: a placeholder carries TAI − UTC when it is known at start, so a
        // guest driver probing it registers its PTP clock.
        assert_eq!(page.tai_minus_utc(), None, "not known here");
        let known = HostConfig { time_type: Some(tt), tai_minus_utc: Some(37), ..HostConfig::default() };
        let page =
            vmclock::Snapshot::new(vmtime_core::host::Publisher::new(known).placeholder().unwrap().build(), 4096)
                .unwrap();
        assert!(page.has(flags::TAI_OFFSET_VALID));
        assert_eq!((page.tai_minus_utc(), page.tai_offset_raw()), (Some(37), Some(-37)));
        // The first real page keeps them (a UTC page while TAI − UTC stays unknown).
        let sampled =
            if tt == vmclock::abi::time_type::TAI { Sampled::Tai } else { Sampled::Utc { tai_minus_utc: None } };
        let mut r = HostRun::new(synced_host(25), HostConfig { time_type: Some(tt), ..HostConfig::default() }, sampled);
        r.run_for(3 * NS, 10 * MS);
        assert_eq!(constants(&r), [(vmclock::abi::counter_id::X86_TSC, tt)]);
        assert_clean(&r);
    }
}

/// Issue 23, part 2: the host's wake-up schedule at rest polls every 100 ms. The worst case for
/// an unseen change: a page just published (a step, at an idle poll), then the largest frequency
/// change one ADJ_FREQUENCY write can make (−500 ppm → +500 ppm) just after the poll, seen only
/// 100 ms later. The page's bounds must hold the kernel clock all along (its maxerror carries
/// `unseen_change_ns`), the change reaches the page within one idle poll, and the schedule turns
/// to the short poll. Without the unseen-change term the same run leaves the bounds.
#[test]
fn an_unseen_frequency_change_at_rest_stays_inside_the_bounds() {
    use vmtime_core::host::{PollSchedule, DEFAULT_ACTIVE_POLL_NS, DEFAULT_IDLE_POLL_NS, SETTLE_NS};
    let run_case = |gap_term: bool| {
        let mut h = SimHost::new(31, T0, 2_500_000_000, 500_000, 37, 2_000);
        h.set_freq_ppb(-500_000);
        h.set_kernel_tai(37);
        h.ntp_sync(10, 5);
        let cfg = HostConfig {
            marker_seed: 31,
            longest_poll_gap_ns: if gap_term { DEFAULT_IDLE_POLL_NS } else { 0 },
            ..HostConfig::default()
        };
        let mut r = HostRun::new(h, cfg, Sampled::Tai);
        let mut s = PollSchedule::new(DEFAULT_ACTIVE_POLL_NS, DEFAULT_IDLE_POLL_NS);
        r.run_scheduled(SETTLE_NS + 20 * NS, &mut s);
        assert!(!s.active(r.host.now()), "still for 30 s: the idle poll");
        // A fresh page at an idle poll: the clock is stepped 3 µs (the kernel's maxerror just
        // reset by the NTP daemon, so the page's bound is as tight as it gets).
        r.host.step(3_000);
        r.publisher.handle_event(vmtime_core::host::HostEvent::Stepped);
        let to = r.next_poll_at() - r.host.now();
        r.run_scheduled(to - 1, &mut s);
        // The kernel adds 500 µs to its maxerror every second: reset just before the poll.
        r.host.ntp_sync(10, 5);
        let n = r.pages.len();
        r.run_scheduled(2, &mut s);
        assert_eq!(r.pages.len(), n + 1, "the step's page");
        assert_eq!(r.pages.last().unwrap().reason, Reason::Step);
        assert!(!s.active(r.host.now()), "a step is no change of the NTP state: still idle");
        // Just after that poll: the frequency goes from −500 ppm to +500 ppm.
        let t_change = r.host.now();
        r.host.set_freq_ppb(500_000);
        let n = r.pages.len();
        r.kernel_worst_fraction = 0.0;
        r.run_scheduled(2 * NS, &mut s);
        let reaction = r.pages[n].at_ns - t_change;
        (r.kernel_outside, r.kernel_worst_fraction, reaction, s.active(r.host.now()))
    };
    let (outside, worst, reaction, active) = run_case(true);
    eprintln!(
        "unseen 1000 ppm change at rest: reaction {:.3} ms, worst |page − kernel| / maxerror {worst:.3}",
        reaction as f64 / 1e6
    );
    assert_eq!(outside, 0, "the kernel clock left the page's bounds (worst fraction {worst})");
    assert!(reaction <= DEFAULT_IDLE_POLL_NS + 1_000_000, "reaction {reaction} ns");
    assert!(active, "a change turns the short poll on");
    let (outside, worst, _, _) = run_case(false);
    assert!(outside > 0, "without the unseen-change term the bounds miss the kernel (worst {worst})");
}

#[test]
fn an_unreadable_kernel_state_gives_freerunning_pages_with_honest_bounds() {
    // A container whose seccomp filter refuses adjtimex: the daemon publishes from
    // KernelTimex::unreadable() while the real kernel is synchronised, runs at −20 ppm against
    // the raw counter, slews 5 ms and is stepped. Every page says FREERUNNING with at least the
    // kernel's 16 s ceiling, true time stays inside every page's bounds, and the page follows the
    // sampled clock (republished as it drifts, the rate being unknown).
    let cfg = HostConfig { marker_seed: 0x5eed_0031, ..HostConfig::default() };
    let mut r = HostRun::new(synced_host(31), cfg, Sampled::Utc { tai_minus_utc: Some(37) });
    r.kernel_unreadable = true;
    r.run_for(60 * NS, 10 * MS);
    r.host.set_offset_ns(-5_000_000);
    r.host.ntp_sync(5_010, 5);
    r.run_for(60 * NS, 10 * MS);
    r.host.step(300 * MS);
    r.run_for(60 * NS, 10 * MS);
    assert_clean(&r);
    let published: Vec<_> = r.pages.iter().filter(|p| p.snap.clock_status() != Some(status::INITIALIZING)).collect();
    assert!(published.len() > 10, "{} pages", published.len());
    for p in &published {
        assert_eq!(p.snap.clock_status(), Some(status::FREERUNNING), "at {}", p.at_ns);
        let m = p.snap.time_maxerror_ns().expect("a bound");
        assert!(m >= 16_000_000_000, "maxerror {m} ns below the kernel's ceiling");
        assert_eq!(p.snap.leap_indicator(), Some(leap::NONE));
    }
    // The rate is unknown (nominal assumed; the kernel runs 20 ppm off it, and up to 500 ppm
    // while its PLL slews): the page is republished at each 1 s observation, so it stays
    // within a second's drift at the kernel's largest rate.
    let e = p99(&r.page_vs_kernel_ns[600..]);
    eprintln!("unreadable kernel state: {} pages in 180 s, |page − kernel| p99 {e:.0} ns", r.pages.len());
    assert!(e <= 500_000.0 + 20_000.0, "p99 {e}");
    assert!(r.truth_checks > 10_000);
}
