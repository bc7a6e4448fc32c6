//! Guest sync against the simulated guest kernel (the real clock of this machine is never
//! changed): the targets of the sync issue.
use vmclock::abi::{leap, status};
use vmtime_core::sync::{SyncAction, SyncConfig, SyncNotice, KERNEL_MAX_ERROR_US};
use vmtime_sim::sync_run::{p99_abs, SyncRun};
use vmtime_sim::SimHost;

const NS: i128 = 1_000_000_000;
const MS: i128 = 1_000_000;
const T0: i128 = (1_795_348_800 + 37) * NS;

/// A guest whose kernel starts `err_ns` off true time, on a +30 ppm oscillator, unsynchronised.
fn guest(seed: u64, err_ns: i128) -> SyncRun {
    let g = SimHost::new(seed, T0, 2_500_000_000, 30_000, 37, err_ns);
    SyncRun::new(g, SyncConfig::default())
}

fn steps(r: &SyncRun, from: i128) -> usize {
    r.actions.iter().filter(|(t, a)| *t >= from && matches!(a, SyncAction::Step { .. })).count()
}

#[test]
fn startup_from_two_seconds_off() {
    let mut r = guest(1, 2 * NS);
    let t0 = r.guest.now();
    r.run_for(10 * NS, NS, 10 * MS);
    let at = r.converged_at(t0, 1_000).expect("converges");
    eprintln!("start-up from 2 s off: within 1 µs after {:.3} s, {} step(s)", (at - t0) as f64 / 1e9, steps(&r, t0));
    assert!(at - t0 <= 2 * NS, "{}", at - t0);
    assert_eq!(r.guest.tx.tai, 37, "ADJ_TAI from the page");
    assert!(r.guest.tx.status & vmtime_core::kernel::STA_UNSYNC == 0, "synchronised");
}

#[test]
fn steady_state_offset() {
    let mut r = guest(2, 5 * MS);
    r.guest.wander_ppb = 2; // a random walk of ±2 ppb per second
    r.run_for(60 * NS, NS, 10 * MS);
    let from = r.guest.now();
    r.run_for(600 * NS, NS, 10 * MS);
    let p = p99_abs(r.trace.iter().filter(|(t, _, _)| *t >= from).map(|(_, e, _)| *e - 3)); // minus the page's 3 ns host error
    let max = r.trace.iter().filter(|(t, _, _)| *t >= from).map(|(_, e, _)| (*e - 3).abs()).max().unwrap();
    eprintln!("steady state over 600 s: |offset| p99 {p} ns, max {max} ns, {} steps", steps(&r, from));
    assert!(p <= 50, "{p}");
    assert_eq!(steps(&r, from), 0);
}

#[test]
fn migration_steps_at_once_and_settles() {
    let mut r = guest(3, 0);
    r.run_for(30 * NS, NS, 10 * MS);
    // Migration: a 50 ppm frequency step and a counter step; the page's marker changes and the
    // host notifies.
    r.guest.set_oscillator_error(80_000);
    r.guest.jump_counter(1_234_567);
    r.spec.marker += 1;
    let t = r.guest.now();
    r.notify();
    r.run_for(5 * NS, NS, 10 * MS);
    let at = r.converged_at(t, 1_000).expect("converges");
    eprintln!("migration: within 1 µs {:.3} ms after the notification", (at - t) as f64 / 1e6);
    assert!(at - t <= NS);
    assert!(steps(&r, t) >= 1, "stepped at once");
    assert_eq!(r.hooks, 0, "migration does not run the restore hook");
}

#[test]
fn restore_from_a_snapshot_ten_minutes_old() {
    let mut r = guest(4, 0);
    r.run_for(30 * NS, NS, 10 * MS);
    // The VM was snapshotted, and restored 10 minutes later: its kernel clock is 10 min behind.
    r.guest.step(-600 * NS);
    r.spec.marker += 1;
    r.spec.generation += 1;
    let t = r.guest.now();
    r.notify();
    let first = r.actions.iter().find(|(at, a)| *at >= t && matches!(a, SyncAction::Step { .. })).map(|(at, _)| *at);
    assert!(first.is_some_and(|at| at - t < MS), "stepped at once (within the observation itself)");
    assert_eq!(r.hooks, 1, "the hook ran");
    r.run_for(2 * NS, NS, 10 * MS);
    assert!(r.trace.last().unwrap().1.abs() < 1_000);
}

#[test]
fn leap_insertion_and_deletion_at_midnight() {
    for insert in [true, false] {
        // 40 s before midnight UTC at the end of 2026-12-31.
        let midnight = 20_819 * 86_400 * NS;
        let g = SimHost::new(5, midnight - 40 * NS + 37 * NS, 2_500_000_000, 30_000, 37, 0);
        let mut r = SyncRun::new(g, SyncConfig::default());
        r.spec.leap_at = Some((midnight, if insert { 1 } else { -1 }));
        r.run_for(30 * NS, NS, 10 * MS);
        assert!(
            r.guest.tx.status & if insert { vmtime_core::kernel::STA_INS } else { vmtime_core::kernel::STA_DEL } != 0,
            "armed on the last day"
        );
        // Midnight passes; the page's TAI − UTC and leap indicator follow true time.
        r.run_for(30 * NS, NS, 10 * MS);
        assert_eq!(r.page().leap_indicator(), Some(if insert { leap::POST_POS } else { leap::POST_NEG }));
        // The kernel applied it exactly at midnight UTC.
        let secs = 20_819 * 86_400;
        assert_eq!(r.guest.leaps_applied, vec![(if insert { secs } else { secs - 1 }, if insert { 1 } else { -1 })]);
        // TAI stayed continuous: once settled, the kernel's TAI (REALTIME + tai) never left truth
        // by more than 1 µs, through the leap.
        let settled = r.trace[0].0 + 5 * NS;
        let worst = r.trace.iter().filter(|(t, _, _)| *t >= settled).map(|(_, e, _)| e.abs()).max().unwrap();
        assert!(worst < 1_000, "{insert}: {worst}");
        assert_eq!(r.guest.tx.tai, if insert { 38 } else { 36 });
        assert_eq!(steps(&r, settled), 0, "the leap is the kernel's, not a step of ours");
    }
}

#[test]
fn source_loss_is_holdover() {
    let mut r = guest(6, 0);
    r.run_for(60 * NS, NS, 10 * MS);
    let t = r.guest.now();
    r.source_up = false;
    r.run_for(600 * NS, NS, 10 * MS);
    assert_eq!(steps(&r, t), 0, "no step in holdover");
    assert!(r.guest.tx.status & vmtime_core::kernel::STA_UNSYNC != 0);
    assert_eq!(r.discipline.status().state, "holdover");
    // The kernel's bound (its maxerror, growing 500 µs/s) always contains the truth.
    for &(_, e, maxerr_us) in r.trace.iter().filter(|(at, _, _)| *at >= t) {
        assert!(e.unsigned_abs() <= maxerr_us as u128 * 1000, "{e} ns outside ±{maxerr_us} µs");
    }
    let drift = r.trace.last().unwrap().1;
    eprintln!("10 min holdover: drift {drift} ns, maxerror {} µs", r.trace.last().unwrap().2);
    // The source comes back: synchronised again, by slewing (no step for a small offset).
    r.source_up = true;
    let back = r.guest.now();
    r.run_for(10 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "synchronised");
    assert!(r.trace.last().unwrap().1.abs() < 1_000);
    let _ = back;
}

#[test]
fn a_free_running_host_is_followed_with_the_kernel_unsynchronised() {
    let mut r = guest(7, 0);
    r.run_for(10 * NS, NS, 10 * MS);
    r.spec.status = status::FREERUNNING;
    r.run_for(5 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "following a free-running source");
    assert!(r.trace.last().unwrap().1.abs() < 1_000, "still within 1 µs of the host");
    assert_ne!(r.guest.timex().status & vmtime_core::kernel::STA_UNSYNC, 0, "the kernel is told it is unsynchronised");
    r.spec.status = status::UNRELIABLE;
    r.run_for(5 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "holdover");
    r.spec.status = status::SYNCHRONIZED;
    r.run_for(3 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "synchronised");
}

#[test]
fn a_phc_with_20us_jitter_converges_and_holds() {
    use vmtime_core::phc::{read_best, PhcServo, PhcServoConfig};
    use vmtime_sim::phc::SimPhc;
    // A guest 3 ms off on a +30 ppm oscillator; the PHC reads true UTC ±20 µs.
    let mut g = SimHost::new(8, T0, 2_500_000_000, 30_000, 37, 3 * MS);
    let mut servo = PhcServo::new(PhcServoConfig::default());
    let mut trace = Vec::new();
    let start = g.now();
    for _ in 0..900 {
        let m = {
            let mut phc = SimPhc { guest: &mut g, jitter_ns: 20_000 };
            read_best(&mut phc, 25).unwrap().0
        };
        let tx = g.timex();
        for a in servo.handle_measurement(&m, tx.tick, tx.freq, 1.0) {
            g.apply(&a);
        }
        g.advance(NS);
        trace.push((g.now() - start, g.kernel_error_ns()));
    }
    let converged = trace.iter().rposition(|(_, e)| e.abs() > 10_000).map_or(0, |i| trace[i].0);
    let hold = p99_abs(trace.iter().filter(|(t, _)| *t > 300 * NS).map(|(_, e)| *e));
    eprintln!(
        "PHC, ±20 µs read jitter: within 10 µs for good after {:.0} s; |offset| p99 {:.2} µs over the last 10 minutes",
        converged as f64 / 1e9,
        hold as f64 / 1e3
    );
    assert!(converged <= 120 * NS, "{converged}");
    assert!(hold <= 5_000, "{hold}");
}

#[test]
fn a_source_beyond_the_kernels_rate_range_is_holdover() {
    // A mis-scaled page: its counter period is 120 % too long. No tick or frequency outside the
    // kernel's range is ever set; the discipline holds over and says why.
    let mut r = guest(9, 0);
    r.run_for(10 * NS, NS, 10 * MS);
    let t = r.guest.now();
    r.spec.period_error_ppb = 1_200_000_000;
    r.spec.marker += 1;
    r.notify();
    r.run_for(10 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "holdover");
    let notices = r.discipline.take_notices();
    assert!(matches!(notices[..], [SyncNotice::RateOutOfRange { .. }]), "{notices:?}");
    assert!(notices[0].to_string().contains("beyond the kernel's ±100300 ppm: holding over"), "{}", notices[0]);
    for (_, a) in r.actions.iter().filter(|(at, _)| *at >= t) {
        if let SyncAction::SetFrequency { tick, freq } = a {
            assert!((9_000..=11_000).contains(tick) && freq.abs() <= 500 << 16, "{a:?}");
        }
        assert!(!matches!(a, SyncAction::Step { .. }), "no step from an unusable source: {a:?}");
    }
    // The page is fixed: synchronised again.
    r.spec.period_error_ppb = 0;
    r.run_for(5 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "synchronised");
    assert_eq!(r.discipline.take_notices(), vec![SyncNotice::Recovered]);
}

#[test]
fn a_jump_without_a_disruption_is_refused_and_with_one_is_stepped() {
    const HOUR: i128 = 3600 * NS;
    // After start-up, a hostile or broken page jumps 1 h with its markers unchanged: refused,
    // one notice for the whole episode, the clock stays where it was.
    let mut r = guest(10, 0);
    r.run_for(30 * NS, NS, 10 * MS);
    let t = r.guest.now();
    r.spec.host_error_ns = HOUR;
    r.notify();
    r.run_for(10 * NS, NS, 10 * MS);
    assert_eq!(steps(&r, t), 0, "refused");
    assert_eq!(r.discipline.status().state, "holdover");
    let notices = r.discipline.take_notices();
    assert!(matches!(notices[..], [SyncNotice::StepRefused { .. }]), "one notice per episode: {notices:?}");
    let text = notices[0].to_string();
    assert!(text.contains("+3600.000 s away from this clock, more than the step limit of 2 s"), "{text}");
    assert!(text.contains("raise max_step_s and send SIGHUP"), "{text}");
    assert!(r.trace.last().unwrap().1.abs() < 1_000_000, "the clock stayed where it was");
    assert_ne!(r.guest.tx.status & vmtime_core::kernel::STA_UNSYNC, 0, "the kernel is told");
    // The page comes back: recovered, no step.
    r.spec.host_error_ns = 0;
    r.run_for(3 * NS, NS, 10 * MS);
    assert_eq!(r.discipline.status().state, "synchronised");
    assert_eq!(r.discipline.take_notices(), vec![SyncNotice::Recovered]);
    assert_eq!(steps(&r, t), 0);

    // The same jump with a new disruption marker (a migration, a host step): stepped at once.
    let mut r = guest(11, 0);
    r.run_for(30 * NS, NS, 10 * MS);
    let t = r.guest.now();
    r.spec.host_error_ns = HOUR;
    r.spec.marker += 1;
    r.notify();
    r.run_for(2 * NS, NS, 10 * MS);
    assert_eq!(steps(&r, t), 1);
    assert!((r.trace.last().unwrap().1 - HOUR).abs() < 1_000, "follows the page");
    assert!(r.discipline.take_notices().is_empty());

    // A disruption seen while the page is UNRELIABLE (the host still settling) still allows
    // the step at the first usable observation.
    let mut r = guest(14, 0);
    r.run_for(30 * NS, NS, 10 * MS);
    let t = r.guest.now();
    r.spec.status = status::UNRELIABLE;
    r.spec.marker += 1;
    r.notify();
    r.run_for(3 * NS, NS, 10 * MS);
    r.spec.host_error_ns = -HOUR;
    r.spec.status = status::SYNCHRONIZED;
    r.run_for(2 * NS, NS, 10 * MS);
    assert_eq!(steps(&r, t), 1);
    assert!((r.trace.last().unwrap().1 + HOUR).abs() < 1_000);

    // At start-up any step is taken: that is how a guest with a wrong clock is set.
    const YEAR: i128 = 365 * 86_400 * NS;
    let mut r = guest(12, -3 * YEAR);
    let t = r.guest.now();
    r.run_for(5 * NS, NS, 10 * MS);
    assert!(steps(&r, t) >= 1);
    assert!(r.trace.last().unwrap().1.abs() < 1_000);
}

#[test]
fn leaving_holdover_allows_what_the_kernel_may_have_drifted() {
    // 10 minutes without a source: the kernel may have drifted 500 ppm × 600 s = 300 ms.
    let cfg = SyncConfig { max_step_ns: 10 * MS as i64, ..SyncConfig::default() };
    let run = |extra_ns: i128| {
        let mut r = SyncRun::new(SimHost::new(15, T0, 2_500_000_000, 30_000, 37, 0), cfg.clone());
        r.run_for(30 * NS, NS, 10 * MS);
        r.source_up = false;
        r.run_for(600 * NS, NS, 10 * MS);
        let t = r.guest.now();
        r.spec.host_error_ns = extra_ns;
        r.source_up = true;
        r.run_for(3 * NS, NS, 10 * MS);
        (steps(&r, t), r.discipline.status().state, r.discipline.take_notices())
    };
    // 200 ms: within the drift allowed (plus the 10 ms limit), stepped (beyond makestep).
    let (n, state, notices) = run(200 * MS);
    assert_eq!((n, state), (1, "synchronised"), "{notices:?}");
    // 1 s: more than any drift could explain: refused.
    let (n, state, notices) = run(NS);
    assert_eq!((n, state), (0, "holdover"));
    assert!(
        matches!(notices[..], [SyncNotice::StepRefused { limit_ns, .. }] if (300 * MS as i64..320 * MS as i64).contains(&limit_ns)),
        "{notices:?}"
    );
}

#[test]
fn bounds_given_to_the_kernel_saturate() {
    // A page claiming the largest maxerror there is: no overflow, the kernel gets its 16 s limit.
    let mut r = guest(13, 0);
    r.spec.maxerror_ns = u64::MAX;
    r.run_for(5 * NS, NS, 10 * MS);
    let states: Vec<i64> = r
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            SyncAction::SetState { maxerror_us, .. } => Some(*maxerror_us),
            _ => None,
        })
        .collect();
    assert!(!states.is_empty());
    assert!(states.iter().all(|&m| m == KERNEL_MAX_ERROR_US), "{states:?}");
}
