//! Every built-in scenario of `vmtime sim`, on the whole chain (the real publisher, relay and
//! discipline), with assertions on its summary; determinism; TOML scenarios.
use vmtime_sim::scenario::{self, csv, Scenario, ScenarioError};

fn run(name: &str, duration: Option<u64>) -> scenario::Outcome {
    let s = Scenario::builtin(name).unwrap();
    let o = scenario::run(&s, 1, duration, |_| {});
    let m = &o.summary;
    eprintln!(
        "{name}: conv {:?} s, |guest−host| p99 {:.0} ns max {:.0}, |guest−truth| p99 {:.0} ns, steps {}, pages {}",
        m.convergence_s, m.chain_offset_ns.p99, m.chain_offset_ns.max, m.truth_offset_ns.p99, m.steps, m.host_pages
    );
    assert_eq!(m.bound_violations, 0, "{name}: bound violations");
    assert_eq!(m.monotonic_violations, 0, "{name}: MONOTONIC violations");
    o
}

/// |guest − host| at the first row at or after `t_s`.
fn chain_at(o: &scenario::Outcome, t_s: f64) -> f64 {
    let r = o.rows.iter().find(|r| r.t_s >= t_s).unwrap();
    (r.guest_ns - r.host_ns).abs()
}

#[test]
fn steady_and_startup() {
    // The default host: its NTP measures within ±10 µs and slews on what it measures, so its
    // rate changes at every update and the guest, following, lags it by up to ~1 µs.
    let o = run("steady", Some(600));
    assert!(o.summary.chain_offset_ns.p99 <= 1_000.0, "{:?}", o.summary.chain_offset_ns);
    assert_eq!(o.summary.steps, 1, "only the start-up step");
    // Tight bounds at the defaults (issue 19: median bound ≤ 4 × p99 error).
    let m = &o.summary;
    assert!(
        m.read_bound_p50_ns <= 4 * m.read_error_p99_ns,
        "bound {} error {}",
        m.read_bound_p50_ns,
        m.read_error_p99_ns
    );
    // A host whose NTP measures exactly holds its rate: the guest follows it within tens of ns.
    let mut quiet = Scenario::builtin("steady").unwrap();
    quiet.ntp_noise_us = 0.0;
    let q = scenario::run(&quiet, 1, Some(600), |_| {}).summary;
    assert_eq!((q.bound_violations, q.monotonic_violations), (0, 0));
    assert!(q.chain_offset_ns.p99 <= 50.0, "{:?}", q.chain_offset_ns);
    // Start-up: within 1 µs of a host that holds its rate in 2 s; of the default host (its slews
    // move it by up to ~1 µs against the guest) for good after ~100 s.
    let o = run("startup", None);
    assert!(o.summary.convergence_s.unwrap() <= 300.0, "{:?}", o.summary.convergence_s);
    let mut quiet = Scenario::builtin("startup").unwrap();
    quiet.ntp_noise_us = 0.0;
    assert!(scenario::run(&quiet, 1, None, |_| {}).summary.convergence_s.unwrap() <= 2.0);
}

#[test]
fn migration_and_restore() {
    let o = run("migration", None);
    assert!(chain_at(&o, 301.0) < 1_000.0, "within 1 µs a second after the migration");
    assert_eq!((o.summary.steps, o.summary.disruptions), (2, 1));
    let o = run("restore", None);
    assert!(chain_at(&o, 901.0) < 1_000.0, "within 1 µs a second after the restore");
    assert_eq!(o.summary.disruptions, 1);
}

#[test]
fn leap_seconds() {
    for name in ["leap-insert", "leap-delete"] {
        let o = run(name, None);
        // Through the leap second, the guest follows the host to well within 1 µs.
        assert!(o.summary.chain_offset_ns.max < 1_000.0, "{name}: {:?}", o.summary.chain_offset_ns);
        assert_eq!(o.summary.steps, 1, "{name}: no step for a leap second");
    }
}

/// Every seed, not only the documented one: a kernel a few ns ahead of truth applies the leap
/// second a few ns before the true instant, which is no bound violation (issue 11, item 7: the
/// simulator judged truth with the TAI − UTC of the start of its 10 ms step, so half the seeds
/// reported one violation of a whole second at the instant of the leap).
#[test]
fn leap_seconds_hold_their_bounds_for_many_seeds() {
    for name in ["leap-insert", "leap-delete"] {
        let s = Scenario::builtin(name).unwrap();
        let failed: Vec<u64> = (1..=32)
            .filter(|&seed| {
                let m = scenario::run(&s, seed, None, |_| {}).summary;
                m.bound_violations != 0 || m.monotonic_violations != 0 || m.steps != 1
            })
            .collect();
        assert!(failed.is_empty(), "{name}: seeds with violations or extra steps: {failed:?}");
    }
}

#[test]
fn source_loss_and_host_slews() {
    let o = run("source-loss", None);
    assert_eq!(o.summary.steps, 1, "no step in holdover or after it");
    // The host is stepped (a disruption: the guest steps too), then loses NTP for 200 s: its
    // page says FREERUNNING and guests follow it with their kernels marked unsynchronised,
    // staying well under a microsecond from the host.
    let o = run("host-slews", None);
    assert_eq!((o.summary.steps, o.summary.disruptions), (2, 1));
    assert!(o.summary.chain_offset_ns.max < 1_000.0, "{:?}", o.summary.chain_offset_ns);
}

#[test]
fn fleet_short() {
    // The full fleet (1,000 guests, 1 h) is `vmtime sim fleet`; here 30 simulated seconds.
    let o = run("fleet", Some(30));
    assert_eq!(o.summary.guests, 1000);
    assert!(o.summary.relayed >= 1000);
    assert!(o.summary.worst_guest_ns < 1_000.0, "{}", o.summary.worst_guest_ns);
}

#[test]
fn same_seed_same_bytes() {
    let s = Scenario::builtin("migration").unwrap();
    let a = scenario::run(&s, 7, Some(400), |_| {});
    let b = scenario::run(&s, 7, Some(400), |_| {});
    let c = scenario::run(&s, 8, Some(400), |_| {});
    assert_eq!(csv(&a), csv(&b));
    assert_eq!(serde_json::to_string(&a.summary).unwrap(), serde_json::to_string(&b.summary).unwrap());
    assert_eq!(vmtime_sim::plot::plots(&a), vmtime_sim::plot::plots(&b));
    assert_ne!(csv(&a), csv(&c));
}

#[test]
fn toml_scenarios_are_checked() {
    let s = Scenario::from_toml(
        r#"
name = "my migration"
duration_s = 200
host_oscillator_ppm = -40
guests = 2
[[events]]
kind = "migrate"
at_s = 100
oscillator_ppm = 30
host_error_us = 3
counter_step = 5000
"#,
    )
    .unwrap();
    assert_eq!(s.guests, 2);
    let o = scenario::run(&s, 3, None, |_| {});
    assert_eq!(o.summary.bound_violations, 0);
    let e = Scenario::from_toml("name = \"x\"\nduraton_s = 5\n").unwrap_err();
    assert!(matches!(e, ScenarioError::Parse(ref m) if m.contains("duraton_s")), "{e}");
    let e = Scenario::from_toml("name = \"x\"\ntsc_ratio = 7\n").unwrap_err();
    assert_eq!(e.to_string(), "tsc_ratio: must lie in 0.5–2.0");
    let e =
        Scenario::from_toml("name = \"x\"\n[[events]]\nkind = \"restore\"\nat_s = 9999\npause_s = 1\n").unwrap_err();
    assert!(e.to_string().contains("within the run"));
    assert!(matches!(Scenario::builtin("nope"), Err(ScenarioError::Unknown(_))));
}

#[test]
fn hostile_scenario_values_are_refused() {
    let event = |kind: &str, fields: &str| format!("name = \"x\"\n[[events]]\nkind = \"{kind}\"\nat_s = 1\n{fields}\n");
    for (text, field) in [
        ("name = \"x\"\nwander_ppb = 9223372036854775807\n".to_string(), "wander_ppb"),
        ("name = \"x\"\nwander_ppb = -1\n".to_string(), "wander_ppb"),
        ("name = \"x\"\nduration_s = 0\n".to_string(), "duration_s"),
        ("name = \"x\"\nleap_in_s = 18446744073709551615\n".to_string(), ""),
        ("name = \"x\"\nleap = \"insert\"\nleap_in_s = 9999999999\n".to_string(), "leap_in_s"),
        ("name = \"x\"\nhost_oscillator_ppm = nan\n".to_string(), "host_oscillator_ppm"),
        (event("restore", "pause_s = 1e300"), "events.pause_s"),
        (event("restore", "pause_s = nan"), "events.pause_s"),
        (event("restore", "pause_s = -1"), "events.pause_s"),
        (event("source-loss", "for_s = inf"), "events.for_s"),
        (event("ntp-loss", "for_s = nan"), "events.for_s"),
        (event("host-step", "by_us = nan"), "events.by_us"),
        (event("host-step", "by_us = 1e30"), "events.by_us"),
        (event("migrate", "oscillator_ppm = nan\nhost_error_us = 1\ncounter_step = 1"), "events.oscillator_ppm"),
        (event("migrate", "oscillator_ppm = 1\nhost_error_us = nan\ncounter_step = 1"), "events.host_error_us"),
        (
            event("migrate", "oscillator_ppm = 1\nhost_error_us = 1\ncounter_step = -9223372036854775808"),
            "events.counter_step",
        ),
        (event("restore", "pause_s = 1\nat_s = nan"), ""),
    ] {
        let e = Scenario::from_toml(&text).expect_err(&text);
        assert!(e.to_string().starts_with(field), "{text}: {e}");
    }
}

/// Without notification (a 6.13–6.19 driver, a PCI BAR), vmtime sync sees a migration through its
/// checks of the page's markers every 20 ms (vmtime_core::cadence): the new marker's page is
/// observed within one check (the chain's steps are 10 ms), and stepped from, as when notified.
#[test]
fn without_notification_the_marker_checks_see_a_migration_within_a_check() {
    let mut s = Scenario::builtin("migration").unwrap();
    s.guest_check_ms = Some(20);
    let o = scenario::run(&s, 1, None, |_| {});
    let m = &o.summary;
    assert_eq!((m.bound_violations, m.monotonic_violations), (0, 0));
    assert_eq!((m.steps, m.disruptions), (2, 1), "the start-up step and the migration's");
    assert!(m.detection_ms.max <= 20.0, "{:?}", m.detection_ms);
    assert!(chain_at(&o, 301.0) < 1_000.0, "within 1 µs a second after the migration");
    // Checks only: far fewer observations than pages would have caused, reads judged all along.
    assert!(m.reads > 900_000, "{}", m.reads);
}
