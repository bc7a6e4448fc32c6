use super::*;
use vmclock::abi::{counter_id, flags};
use vmclock::{PageBuilder, Period, Tai, Timestamp};

fn page(seq: u32, marker: u64, generation: Option<u64>) -> Snapshot {
    let mut b = PageBuilder::new()
        .reference(
            counter_id::X86_TSC,
            1000,
            Timestamp::<Tai>::from_parts(1_795_000_037, 0),
            Period::from_hz(1_000_000_000).unwrap(),
        )
        .status(status::SYNCHRONIZED)
        .disruption_marker(marker);
    if let Some(g) = generation {
        b = b.vm_generation(g);
    }
    let mut abi = b.build();
    abi.seq_count.set(seq);
    Snapshot::new(abi, 4096).unwrap()
}

#[test]
fn samples_are_paired_with_the_page_current_during_them() {
    // The page is updated (seq 2 → 4, a new marker) while the first samples are taken: they
    // must not be paired with the old page.
    let pages = [page(2, 1, None), page(4, 2, None)];
    let mut reads = 0;
    let mut sampled = 0;
    let seq_after = [4u32, 4];
    let mut checks = 0;
    let got = sample_under_page::<u32, ()>(
        4,
        || {
            reads += 1;
            Ok(pages[(reads - 1).min(1)])
        },
        || {
            sampled += 1;
            Ok(sampled)
        },
        || {
            checks += 1;
            seq_after[checks - 1]
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!((got.0.seq_count(), got.0.disruption_marker(), got.1), (4, 2, 2), "the second samples, the new page");
    // A page that never holds still gives no observation (and no stale pairing).
    let none = sample_under_page::<(), ()>(3, || Ok(page(2, 1, None)), || Ok(()), || 5).unwrap();
    assert!(none.is_none());
}

#[test]
fn a_poll_that_is_always_readable_is_found_out() {
    let mut n = NotifyCheck::default();
    assert_eq!(n.readable(None, 2), Wakeup::Update);
    assert_eq!(n.readable(Some(2), 4), Wakeup::Update);
    assert_eq!(n.readable(Some(4), 4), Wakeup::Spurious);
    assert_eq!(n.readable(Some(4), 6), Wakeup::Update, "an update in between starts the count again");
    assert_eq!(n.readable(Some(6), 6), Wakeup::Spurious);
    assert_eq!(n.readable(Some(6), 6), Wakeup::Spurious);
    assert_eq!(n.readable(Some(6), 6), Wakeup::NoPoll);
}

#[test]
fn notifications_that_stop_coming_are_found_out() {
    let mut n = NotifyCheck::default();
    assert_eq!(n.page_found(true), Silence::Kept);
    // One page without a wake-up (a lost ring, a notification still on its way): suspect only.
    assert_eq!(n.page_found(false), Silence::Suspect);
    assert_eq!(n.page_found(true), Silence::Kept, "the next one announced: all is well");
    assert_eq!(n.page_found(false), Silence::Suspect);
    assert_eq!(n.page_found(false), Silence::Missed, "two in a row: the notifications stopped");
}

#[test]
fn a_silent_device_is_trusted_again_once_its_notifications_come_back() {
    const MS: i128 = 1_000_000;
    let mut r = Rearm::default();
    // Nothing new: nothing to judge.
    assert_eq!(r.look(0, 10, Some(10), false), RearmStep::Wait);
    // A new page, no wake-up yet: it may still come (up to 1 s).
    assert_eq!(r.look(40 * MS, 12, Some(10), false), RearmStep::Wait);
    assert_eq!(r.look(80 * MS, 12, Some(10), false), RearmStep::Wait);
    // It never came: judged silent, acknowledged.
    assert_eq!(r.look(1_040 * MS, 12, Some(10), false), RearmStep::Acknowledge);
    // Three pages, each woken (one of them late, within the second): trusted again.
    assert_eq!(r.look(2_000 * MS, 14, Some(12), true), RearmStep::Acknowledge);
    assert_eq!(r.look(3_000 * MS, 16, Some(14), false), RearmStep::Wait);
    assert_eq!(r.look(3_300 * MS, 16, Some(14), true), RearmStep::Acknowledge);
    assert_eq!(r.look(4_000 * MS, 18, Some(16), true), RearmStep::Trust);
    // A silent page in between starts the count again.
    let mut r = Rearm::default();
    assert_eq!(r.look(0, 4, Some(2), true), RearmStep::Acknowledge);
    assert_eq!(r.look(MS, 6, Some(4), true), RearmStep::Acknowledge);
    assert_eq!(r.look(2 * MS, 8, Some(6), false), RearmStep::Wait);
    assert_eq!(r.look(2_000 * MS, 8, Some(6), false), RearmStep::Acknowledge);
    assert_eq!(r.look(2_001 * MS, 10, Some(8), true), RearmStep::Acknowledge);
    assert_eq!(r.look(2_002 * MS, 12, Some(10), true), RearmStep::Acknowledge);
    assert_eq!(r.look(2_003 * MS, 14, Some(12), true), RearmStep::Trust);
}

#[test]
fn markers_only_pages_are_watched() {
    // QEMU/Firecracker: counter INVALID, status UNKNOWN, markers only.
    let mk = |marker, generation| {
        let abi =
            PageBuilder::new().status(status::UNKNOWN).disruption_marker(marker).vm_generation(generation).build();
        Snapshot::new(abi, 4096).unwrap()
    };
    let p = mk(5, 1);
    assert!(!gives_time(&p, counter_id::X86_TSC));
    assert!(p.has(flags::VM_GEN_COUNTER_PRESENT));
    let mut w = MarkerWatch::default();
    assert_eq!(w.observe(&p), MarkerChange::default());
    assert_eq!(w.observe(&mk(5, 1)), MarkerChange::default());
    let c = w.observe(&mk(6, 2));
    assert_eq!(c, MarkerChange { disrupted: true, new_generation: true });
    assert_eq!(MarkerWatch::actions(c), vec![SyncAction::RunHook]);
    let c = w.observe(&mk(7, 2));
    assert_eq!(c, MarkerChange { disrupted: true, new_generation: false });
    assert!(MarkerWatch::actions(c).is_empty());
    assert!(gives_time(&page(2, 1, None), counter_id::X86_TSC));
}

#[test]
fn kernel_bounds_saturate() {
    assert_eq!(kernel_bound_us(1500.0, 1), 3);
    assert_eq!(kernel_bound_us(0.0, 0), 0);
    for huge in [1e30, f64::INFINITY, 9.3e21, f64::NAN] {
        assert_eq!(kernel_bound_us(huge, 1), KERNEL_MAX_ERROR_US, "{huge}");
    }
}

#[test]
fn tick_and_freq_stay_in_the_kernels_range() {
    for ppb in [2e9, -2e9, f64::INFINITY, 1.2e9] {
        let (t, f) = tick_freq(ppb);
        assert!((9_000..=11_000).contains(&t) && f.abs() <= 500 << 16, "{ppb}: {t} {f}");
    }
}

/// A toy world: a 1 GHz counter, the page `page_off_ns` ahead of truth, the kernel
/// `kernel_off_ns` ahead; one observation at `t_s` seconds.
struct World {
    d: Discipline,
    kernel_off_ns: i128,
    page_off_ns: i128,
    marker: u64,
    generation: u64,
}

const C0: u64 = 10_000_000_000_000;
const UTC0: i128 = 1_795_000_000 * NS;

impl World {
    fn new() -> Self {
        World { d: Discipline::new(SyncConfig::default()), kernel_off_ns: 0, page_off_ns: 0, marker: 1, generation: 1 }
    }
    fn observe(&mut self, t_s: i128) -> Vec<SyncAction> {
        let ref_c = (C0 as i128 - self.page_off_ns) as u64;
        let abi = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                ref_c,
                Timestamp::<Tai>::from_parts(1_795_000_037, 0),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .tai_minus_utc(37)
            .status(status::SYNCHRONIZED)
            .maxerror(1_000, 0)
            .disruption_marker(self.marker)
            .vm_generation(self.generation)
            .build();
        let page = Snapshot::new(abi, 4096).unwrap();
        let c = C0 + (t_s * NS) as u64;
        let k = UTC0 + t_s * NS + self.kernel_off_ns;
        let samples = [AbaSample { before_ns: k - 5, counter: c, after_ns: k + 5 }];
        let raw = AbaSample { before_ns: t_s * NS - 5, counter: c, after_ns: t_s * NS + 5 };
        let acts = self.d.handle_observation(&SyncObservation {
            page,
            raw,
            samples: &samples,
            kernel: KernelTimex::default(),
        });
        for a in &acts {
            if let SyncAction::Step { delta_ns } = a {
                self.kernel_off_ns += *delta_ns as i128;
            }
        }
        acts
    }
}

fn stepped(acts: &[SyncAction]) -> Option<i64> {
    acts.iter().find_map(|a| match a {
        SyncAction::Step { delta_ns } => Some(*delta_ns),
        _ => None,
    })
}

#[test]
fn the_step_limit_holds_unless_the_markers_change() {
    const HOUR: i128 = 3_600 * NS;
    let mut w = World::new();
    w.kernel_off_ns = -3 * HOUR; // start-up: any step
    assert_eq!(stepped(&w.observe(0)), Some(3 * HOUR as i64));
    for t in 1..5 {
        assert_eq!(stepped(&w.observe(t)), None);
    }
    // 1 h jump, markers unchanged: refused, one notice for the episode.
    w.page_off_ns = HOUR;
    for t in 5..8 {
        assert_eq!(stepped(&w.observe(t)), None);
        assert_eq!(w.d.status().state, "holdover");
    }
    assert!(matches!(w.d.take_notices()[..], [SyncNotice::StepRefused { limit_ns: 2_000_000_000, .. }]));
    // The same page with a new disruption marker: stepped.
    w.marker += 1;
    assert_eq!(stepped(&w.observe(8)), Some(HOUR as i64));
    assert_eq!(w.d.take_notices(), vec![SyncNotice::Recovered]);
    // A new VM generation alone (a clone) also allows a large step (with the hook).
    w.page_off_ns = -HOUR;
    w.generation += 1;
    let acts = w.observe(9);
    assert!(acts.contains(&SyncAction::RunHook));
    // Within the ns: the kernel's clock is read truncated, so it is placed half a ns late.
    assert!(stepped(&acts).is_some_and(|d| (d + 2 * HOUR as i64).abs() <= 1), "{acts:?}");
    // Within the limit: slewed, never stepped, after start-up.
    w.page_off_ns += NS;
    assert_eq!(stepped(&w.observe(10)), None);
    assert_eq!(w.d.status().state, "synchronised");
    // Live reconfiguration: a tighter limit refuses what was accepted.
    w.d.reconfigure(SyncConfig { max_step_ns: 100_000_000, ..w.d.config().clone() });
    w.page_off_ns += NS / 2;
    assert_eq!(stepped(&w.observe(11)), None);
    assert_eq!(w.d.status().state, "holdover");
}

/// Issue 20, item 5: a marker change allows a step of any size, years included, but never
/// to a time before this program was written (a page claiming 1970) nor beyond what the
/// kernel can be set to.
#[test]
fn a_disruption_never_steps_outside_the_believable_range() {
    use crate::sanity::{Implausible, LATEST_UNIX_S};
    const YEAR: i128 = 365 * 86_400 * NS;
    let mut w = World::new();
    for t in 0..4 {
        let _ = w.observe(t);
    }
    assert_eq!(w.d.status().state, "synchronised");
    // time_sec = 0 in place and the marker bumped: the page claims 1970.
    w.page_off_ns = -UTC0;
    w.marker += 1;
    for t in 4..7 {
        let acts = w.observe(t);
        assert_eq!(stepped(&acts), None, "{acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, SyncAction::SetState { synchronized: true, .. })), "{acts:?}");
        assert_eq!(w.d.status().state, "holdover");
    }
    assert_eq!(w.d.take_notices(), vec![SyncNotice::Implausible(Implausible::BeforeBuild { utc_s: 4 })]);
    // Beyond the kernel's range, with another marker: held too.
    w.page_off_ns = (LATEST_UNIX_S as i128 - 1_795_000_000 + 10) * NS;
    w.marker += 1;
    assert_eq!(stepped(&w.observe(7)), None);
    assert_eq!(w.d.status().state, "holdover");
    // A restore from an old snapshot: years are fine inside the range, and the pending
    // disruption still allows the step once the page is believable.
    w.page_off_ns = 5 * YEAR;
    let acts = w.observe(8);
    assert!(stepped(&acts).is_some_and(|d| (d as i128 - 5 * YEAR).abs() <= 1), "{acts:?}");
    assert_eq!(w.d.take_notices(), vec![SyncNotice::Recovered]);
}

/// The cross-check widens the kernel's maxerror and leaves the clock unsynchronised while
/// it disagrees; it never steps or slews towards the server.
#[test]
fn a_disagreeing_second_opinion_widens_the_bound_and_never_steers() {
    let state = |acts: &[SyncAction]| {
        acts.iter().find_map(|a| match a {
            SyncAction::SetState { synchronized, maxerror_us, .. } => Some((*synchronized, *maxerror_us)),
            _ => None,
        })
    };
    let mut w = World::new();
    for t in 0..4 {
        let _ = w.observe(t);
    }
    let (sync0, max0) = state(&w.observe(4)).unwrap();
    assert!(sync0 && max0 < 10, "{max0}");
    w.d.set_cross_check(Some(50_000_000.0));
    let acts = w.observe(5);
    assert_eq!(stepped(&acts), None);
    assert!(!acts.iter().any(|a| matches!(a, SyncAction::SetFrequency { .. })), "{acts:?}");
    let (sync1, max1) = state(&acts).unwrap();
    assert!(!sync1, "unsynchronised while they disagree");
    assert!((50_000..50_010).contains(&max1), "{max1}");
    assert_eq!(w.d.status().state, "synchronised", "the page is still followed");
    w.d.set_cross_check(None);
    assert_eq!(state(&w.observe(6)), Some((true, max0)));
}

/// Issue 20, the adversarial pass: a page mutated at every observation (time jumps with and
/// without marker changes, to 1970, to the end of u64, by years; status and time_type flips
/// through every value; extreme shifts, periods and bounds; leap values) never makes the
/// discipline step outside the believable range, step beyond the limit without start-up, a
/// marker change or a holdover, or call the clock synchronised on a page that is not
/// SYNCHRONIZED with a usable time type.
#[test]
fn hostile_page_sequences_never_step_wrong() {
    use crate::sanity::{EARLIEST_UNIX_S, LATEST_UNIX_S};
    use vmclock::abi::time_type;
    let mut worst_ok_step = 0i128;
    let mut steps_seen = 0;
    for seed in 1..=8u64 {
        let mut rng = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut d = Discipline::new(SyncConfig::default());
        let mut kernel_off: i128 = 0;
        let (mut marker, mut generation) = (1u64, 1u64);
        let mut page_off: i128 = 0; // page − truth, ns
        let mut since_update_markers_changed = false;
        let mut lost_since_update = false;
        for t in 0..400i128 {
            // The page of this observation: mostly good, often mutated.
            let r = next();
            if r % 7 == 0 {
                page_off = match next() % 6 {
                    0 => 3_600 * NS,
                    1 => -UTC0, // 1970
                    2 => (next() % (300 * 365 * 86_400)) as i128 * NS,
                    3 => -((next() % 20) as i128) * 365 * 86_400 * NS,
                    4 => (next() % 3_000_000_000) as i128 - 1_500_000_000,
                    _ => 0,
                };
            }
            if r % 11 == 0 {
                marker = marker.wrapping_add(1);
                since_update_markers_changed = true;
            }
            if r % 13 == 0 {
                generation = generation.wrapping_add(1);
                since_update_markers_changed = true;
            }
            let c = C0 + (t * NS) as u64;
            let ref_c = (C0 as i128 - page_off) as u64;
            let mut abi = PageBuilder::new()
                .reference(
                    counter_id::X86_TSC,
                    ref_c,
                    Timestamp::<Tai>::from_parts(1_795_000_037, 0),
                    Period::from_hz(1_000_000_000).unwrap(),
                )
                .tai_minus_utc(37)
                .status(status::SYNCHRONIZED)
                .maxerror(1_000, 1 << 10)
                .disruption_marker(marker)
                .vm_generation(generation)
                .build();
            match next() % 10 {
                0 => abi.clock_status = next() as u8,
                1 => abi.time_type = (next() % 6) as u8,
                2 => abi.counter_period_shift = next() as u8,
                3 => abi.counter_period_frac_sec.set(next()),
                4 => abi.time_sec.set([0, 1, u64::MAX, i64::MAX as u64, 1 << 40][(next() % 5) as usize]),
                5 => abi.time_maxerror_nanosec.set([0, u64::MAX, 1 << 40][(next() % 3) as usize]),
                6 => abi.leap_indicator = next() as u8,
                7 => abi.counter_period_maxerror_rate_frac_sec.set(u64::MAX),
                _ => {}
            }
            let Ok(page) = Snapshot::new(abi, 4096) else { continue };
            let k = UTC0 + t * NS + kernel_off;
            let samples = [AbaSample { before_ns: k - 5, counter: c, after_ns: k + 5 }];
            let raw = AbaSample { before_ns: t * NS - 5, counter: c, after_ns: t * NS + 5 };
            let updates_before = d.status().updates;
            let acts =
                d.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel: KernelTimex::default() });
            let updated = d.status().updates > updates_before;
            let starting = updates_before < u64::from(SyncConfig::default().step_updates.max(1));
            for a in &acts {
                match *a {
                    SyncAction::Step { delta_ns } => {
                        steps_seen += 1;
                        let to_s = (k + delta_ns as i128).div_euclid(NS) as i64;
                        assert!(
                            (EARLIEST_UNIX_S..LATEST_UNIX_S).contains(&to_s),
                            "seed {seed} t {t}: stepped to {to_s} ({:?})",
                            page.raw()
                        );
                        if (delta_ns as i128).abs() > DEFAULT_MAX_STEP_NS as i128 + 2 * NS {
                            assert!(
                                starting || since_update_markers_changed || lost_since_update,
                                "seed {seed} t {t}: a {delta_ns} ns step without start-up, marker change or holdover"
                            );
                        } else {
                            worst_ok_step = worst_ok_step.max((delta_ns as i128).abs());
                        }
                        kernel_off += delta_ns as i128;
                    }
                    SyncAction::SetState { synchronized: true, .. } => {
                        assert_eq!(page.clock_status(), Some(status::SYNCHRONIZED), "seed {seed} t {t}");
                        assert!(matches!(page.time_type(), time_type::TAI | time_type::UTC), "seed {seed} t {t}");
                    }
                    _ => {}
                }
            }
            if updated {
                since_update_markers_changed = false;
                lost_since_update = false;
            } else {
                lost_since_update = true;
            }
        }
    }
    // Not vacuous: steps of both kinds happened.
    assert!(steps_seen > 20, "{steps_seen}");
    assert!(worst_ok_step > 0);
}

#[test]
fn the_whole_kernel_range_is_used_and_never_exceeded() {
    // ±10 % by ADJ_TICK plus ±500 ppm by ADJ_FREQUENCY: 100.5 ‰ either way, no more.
    assert_eq!(KERNEL_MAX_PPB, 100_500_000);
    assert_eq!(tick_freq(100_400_000.0), (11_000, 400 << 16));
    assert_eq!(tick_freq(-100_500_000.0), (9_000, -500 << 16));
    assert_eq!(tick_freq(100_600_000.0), (11_000, 500 << 16), "clamped");
    assert_eq!(tick_freq(f64::NAN), (10_000, 0));
    assert_eq!(SyncConfig::default().max_step_ns, 2_000_000_000);
    let n = SyncNotice::StepRefused { offset_ns: -3.6e12, limit_ns: 2_500_000_000 };
    assert_eq!(
        n.to_string(),
        "the source is +3600.000 s away from this clock, more than the step limit of 2.5 s, and its disruption_marker and vm_generation_counter did not change: holding over; if the source is right, raise max_step_s and send SIGHUP, or restart vmtime sync"
    );
}

#[test]
fn tick_and_freq_split() {
    assert_eq!(tick_freq(0.0), (10_000, 0));
    assert_eq!(tick_freq(12_000.0), (10_000, 786_432)); // 12 ppm × 2^16
    let (t, f) = tick_freq(750_000.0); // 750 ppm: beyond ADJ_FREQUENCY's ±500
    assert_eq!(t, 10_008);
    assert!((f as f64 / 65.536 - -50_000.0).abs() < 1.0);
    let (t, f) = tick_freq(-1_234_567.0);
    assert_eq!(t, 9_988);
    assert!(((t - 10_000) as f64 * 100_000.0 + f as f64 / 65.536 - -1_234_567.0).abs() < 0.02);
}

/// A page read whole that gives no time for this machine's counter (no time fields, another
/// counter) but carries a new marker: the marker must count, so the page with time that follows
/// is observed at once (pending) and stepped from, and a new generation runs the hook.
#[test]
fn a_new_marker_on_a_page_without_time_makes_the_next_page_urgent() {
    const MS: i128 = 1_000_000;
    let mut w = World::new();
    w.kernel_off_ns = -5 * MS;
    assert_eq!(stepped(&w.observe(0)), Some(5 * MS as i64), "start-up");
    for t in 1..5 {
        w.observe(t);
    }
    assert!(!w.d.disruption_pending());
    // The guest was stopped 300 ms (its clock stood still); a page without time comes first.
    w.kernel_off_ns -= 300 * MS;
    let placeholder = PageBuilder::new()
        .constants(counter_id::X86_TSC, vmclock::abi::time_type::TAI)
        .status(status::UNRELIABLE)
        .disruption_marker(w.marker + 1)
        .vm_generation(w.generation)
        .build();
    let placeholder = Snapshot::new(placeholder, 4096).unwrap();
    let acts = w.d.handle_timeless_page(&placeholder, &KernelTimex::default());
    assert_eq!(stepped(&acts), None, "no time: nothing to step to");
    assert!(w.d.disruption_pending(), "the next page with time must be observed at once");
    assert_eq!(w.d.status().disruptions, 1);
    // The page with the new map and the same new marker: a step, whatever its size.
    w.marker += 1;
    assert_eq!(stepped(&w.observe(5)), Some(300 * MS as i64));
    assert!(!w.d.disruption_pending());
    assert_eq!(w.d.status().disruptions, 1, "one disruption, counted once");
    // A placeholder with a new VM generation runs the hook (a restore before the map is known).
    w.generation += 1;
    let restored = PageBuilder::new()
        .constants(counter_id::X86_TSC, vmclock::abi::time_type::TAI)
        .status(status::UNRELIABLE)
        .disruption_marker(w.marker)
        .vm_generation(w.generation)
        .build();
    let acts = w.d.handle_timeless_page(&Snapshot::new(restored, 4096).unwrap(), &KernelTimex::default());
    assert!(acts.contains(&SyncAction::RunHook), "{acts:?}");
}

/// At rest the interval doubles after each quiet update, up to the longest; an offset beyond
/// [`REST_OFFSET_NS`], a disruption and a holdover bring it back to the shortest, and a slew
/// still ends within half of the interval that follows it.
#[test]
fn the_interval_grows_at_rest_and_falls_back_on_anything_else() {
    let mut w = World::new();
    let mut t = 0;
    let mut intervals = Vec::new();
    let step = |w: &mut World, t: &mut i128| {
        let acts = w.observe(*t);
        let iv = w.d.poll_interval_ns();
        *t += (iv / NS).max(1);
        (acts, iv)
    };
    for _ in 0..9 {
        intervals.push(step(&mut w, &mut t).1 / 1_000_000);
    }
    // The first observation calibrates (100 ms), start-up's updates keep 1 s, then 2, 4, 8, 16, 16 s.
    assert_eq!(intervals, [100, 1_000, 1_000, 2_000, 4_000, 8_000, 16_000, 16_000, 16_000]);
    assert!(w.d.resting());
    assert_eq!(w.d.status().interval_s, 16.0);
    // 40 µs off: still quiet; the slew ends within half of the 16 s that follow.
    w.kernel_off_ns += 40_000;
    let (acts, iv) = step(&mut w, &mut t);
    assert_eq!(iv, 16 * NS);
    assert!(acts.iter().any(|a| matches!(a, SyncAction::SetFrequency { .. })), "{acts:?}");
    let end = w.d.next_deadline().expect("a slew");
    assert!(end - (t - 16) * NS <= 8 * NS, "the slew ends {} s after the observation", (end - (t - 16) * NS) / NS);
    // 80 µs off: not quiet, back to 1 s, and the slew ends within 0.5 s.
    w.kernel_off_ns += 40_000;
    let (_, iv) = step(&mut w, &mut t);
    assert_eq!(iv, NS);
    assert!(!w.d.resting());
    let end = w.d.next_deadline().expect("a slew");
    assert!(end - (t - 1) * NS <= NS / 2);
    w.kernel_off_ns = 0;
    assert_eq!(step(&mut w, &mut t).1, 2 * NS, "quiet again: doubling again");
    // A disruption (a step): back to 1 s.
    w.marker += 1;
    w.page_off_ns = 3_000_000;
    let (acts, iv) = step(&mut w, &mut t);
    assert!(stepped(&acts).is_some());
    assert_eq!(iv, NS);
    let _ = step(&mut w, &mut t);
    assert_eq!(step(&mut w, &mut t).1, 4 * NS);
    // A holdover: back to 1 s.
    let _ = w.d.handle_source_lost(&KernelTimex::default());
    assert_eq!(w.d.poll_interval_ns(), NS);
    // A longest interval at or below the shortest: a fixed interval.
    w.d.reconfigure(SyncConfig { max_interval_ns: NS / 2, ..w.d.config().clone() });
    for _ in 0..4 {
        assert_eq!(step(&mut w, &mut t).1, NS);
    }
    assert!(!w.d.resting());
}
