use super::chrony::*;
use super::clockbound::*;
use super::*;
use vmclock::abi::{counter_id, time_type};
use vmclock::{PageBuilder, Timestamp, Utc};

const HZ: u64 = 1_000_000_000;
const T0: i128 = 1_790_000_000 * NS;

/// A 1 GHz page on this CPU's counter: UTC `T0 + offset_ns` at counter 1e9.
fn page(seq_bump: u32, marker: u64, st: u8, offset_ns: i128, leap_ind: u8) -> Snapshot {
    let t = Timestamp::<Utc>::from_raw(crate::ns_to_frac(T0 + offset_ns, false) as u128);
    let b = PageBuilder::new()
        .reference(vmclock::counter::NATIVE, 1_000_000_000, t, Period::from_hz(HZ).unwrap())
        .status(st)
        .leap(leap_ind)
        .maxerror(1_000, 1 << 20)
        .disruption_marker(marker)
        .build();
    let mut s = Snapshot::new(b, 4096).unwrap().to_bytes();
    s[12..16].copy_from_slice(&(2 * seq_bump).to_le_bytes());
    Snapshot::decode(&s, 4096).unwrap()
}

/// Samples whose REALTIME is T0 at counter 1e9 (± 10 ns windows).
fn samples() -> Vec<AbaSample> {
    (0..8u64)
        .map(|i| {
            let c = 1_000_000_000 + i * 1000;
            let t = T0 + (i * 1000) as i128;
            AbaSample { before_ns: t - 10, counter: c, after_ns: t + 10 }
        })
        .collect()
}

fn obs<'a>(p: Snapshot, s: &'a [AbaSample], mono_ns: i128) -> Observation<'a> {
    Observation { before: p, after: p, samples: s, mono_ns }
}

#[test]
fn chrony_sample_layout_and_offset_sign() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ChronyFeed::new(NS);
    // The page is 250 µs ahead of CLOCK_REALTIME: chrony must be told reference − system = +250 µs.
    let ChronyAction::Send(x) = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 250_000, 0), &s, 0)) else {
        panic!("held")
    };
    assert!((x.offset - 250e-6).abs() < 20e-9, "offset {}", x.offset);
    // Labelled with CLOCK_REALTIME at the counter, truncated to the µs.
    let label = x.tv_sec as i128 * NS + x.tv_usec as i128 * 1000;
    assert!((T0 - 1_020..=T0).contains(&label), "label {label}");
    assert!((0..1_000_000).contains(&x.tv_usec));
    let b = x.to_bytes();
    assert_eq!(b.len(), 40);
    assert_eq!(i32::from_ne_bytes(b[36..40].try_into().unwrap()), 0x534f434b);
    assert_eq!(f64::from_ne_bytes(b[16..24].try_into().unwrap()), x.offset);
    assert_eq!(i64::from_ne_bytes(b[0..8].try_into().unwrap()), x.tv_sec);
    // Behind: negative.
    let ChronyAction::Send(y) = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, -3_000, 0), &s, 1)) else {
        panic!("held")
    };
    assert!((y.offset + 3e-6).abs() < 20e-9, "offset {}", y.offset);
}

#[test]
fn chrony_leap_mapping() {
    assert_eq!(leap_of(leap::NONE), 0);
    assert_eq!(leap_of(leap::PRE_POS), 1);
    assert_eq!(leap_of(leap::POS), 1);
    assert_eq!(leap_of(leap::PRE_NEG), 2);
    assert_eq!(leap_of(leap::POST_POS), 0);
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ChronyFeed::new(NS);
    let ChronyAction::Send(x) = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, leap::PRE_POS), &s, 0)) else {
        panic!("held")
    };
    assert_eq!(x.leap, 1);
}

#[test]
fn chrony_holds_while_unreliable_and_after_a_disruption() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ChronyFeed::new(NS);
    for st in [status::UNKNOWN, status::INITIALIZING, status::UNRELIABLE] {
        assert_eq!(f.handle(&obs(page(1, 7, st, 0, 0), &s, 0)), ChronyAction::Hold(Hold::Unreliable));
    }
    assert!(matches!(f.handle(&obs(page(1, 7, status::FREERUNNING, 0, 0), &s, 0)), ChronyAction::Send(_)));
    // The marker changes (seq 2): nothing until a later update …
    let disrupted = page(2, 8, status::SYNCHRONIZED, 0, 0);
    assert_eq!(f.handle(&obs(disrupted, &s, NS)), ChronyAction::Hold(Hold::Disrupted));
    assert_eq!(f.handle(&obs(disrupted, &s, 2 * NS)), ChronyAction::Hold(Hold::Disrupted));
    // … (seq 3) which is current.
    assert!(matches!(f.handle(&obs(page(3, 8, status::SYNCHRONIZED, 0, 0), &s, 2 * NS)), ChronyAction::Send(_)));
    // Another disruption on a page never updated again: current after the hold-off (2 intervals).
    let again = page(4, 9, status::SYNCHRONIZED, 0, 0);
    assert_eq!(f.handle(&obs(again, &s, 10 * NS)), ChronyAction::Hold(Hold::Disrupted));
    assert_eq!(f.handle(&obs(again, &s, 11 * NS)), ChronyAction::Hold(Hold::Disrupted));
    assert!(matches!(f.handle(&obs(again, &s, 12 * NS)), ChronyAction::Send(_)));
    // A page updated during the measurement is not used.
    let o = Observation {
        before: page(5, 9, status::SYNCHRONIZED, 0, 0),
        after: page(6, 9, status::SYNCHRONIZED, 0, 0),
        samples: &s,
        mono_ns: 13 * NS,
    };
    assert_eq!(f.handle(&o), ChronyAction::Hold(Hold::ChangedDuringMeasurement));
    assert_eq!(
        f.handle(&obs(page(6, 9, status::SYNCHRONIZED, 0, 0), &[], 13 * NS)),
        ChronyAction::Hold(Hold::NoSamples)
    );
}

/// Issue 20, item 6: the chrony feed hands chronyd no offset from a page claiming 1970, and
/// none from a page whose time jumped an hour without a marker change.
#[test]
fn chrony_holds_a_page_outside_the_range_and_a_jump_without_a_marker_change() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ChronyFeed::new(NS);
    assert!(matches!(f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0)), ChronyAction::Send(_)));
    // SYNCHRONIZED, claiming 1970 (and within chrony's own 2^32 s limit).
    let at_1970 = page(2, 7, status::SYNCHRONIZED, -T0 + 5 * NS, 0);
    assert_eq!(f.handle(&obs(at_1970, &s, NS)), ChronyAction::Hold(Hold::OutOfRange));
    // Even with a new marker, once current.
    let at_1970 = page(3, 8, status::SYNCHRONIZED, -T0 + 5 * NS, 0);
    let _ = f.handle(&obs(at_1970, &s, 2 * NS));
    assert_eq!(f.handle(&obs(at_1970, &s, 5 * NS)), ChronyAction::Hold(Hold::OutOfRange));
    assert!(matches!(f.handle(&obs(page(4, 8, status::SYNCHRONIZED, 0, 0), &s, 6 * NS)), ChronyAction::Send(_)));
    // One hour ahead, the markers unchanged: held, update after update.
    for seq in 5..8 {
        let ahead = page(seq, 8, status::SYNCHRONIZED, 3600 * NS, 0);
        assert_eq!(f.handle(&obs(ahead, &s, seq as i128 * NS)), ChronyAction::Hold(Hold::Jump));
    }
    // 1 s (a missed leap second) is within the limit.
    assert!(matches!(f.handle(&obs(page(8, 8, status::SYNCHRONIZED, NS, 0), &s, 8 * NS)), ChronyAction::Send(_)));
    // The same hour with a new marker: sent once the page is current.
    let ahead = page(9, 9, status::SYNCHRONIZED, 3600 * NS, 0);
    assert_eq!(f.handle(&obs(ahead, &s, 9 * NS)), ChronyAction::Hold(Hold::Disrupted));
    let ChronyAction::Send(x) = f.handle(&obs(page(10, 9, status::SYNCHRONIZED, 3600 * NS, 0), &s, 10 * NS)) else {
        panic!("held")
    };
    assert!((x.offset - 3600.0).abs() < 1e-6, "{}", x.offset);
}

/// Issue 20, the adversarial pass over the feeds' gate: page sequences with time jumps with
/// and without marker changes, status and time_type flips, extreme times: every sample sent
/// is in the believable range, and none moves more than the step limit (plus the page's
/// bound) from the last one sent unless the marker changed in between.
#[test]
fn hostile_page_sequences_never_reach_chrony() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut sent_total = 0;
    let mut held_jump = 0;
    for seed in 1..=8u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut f = ChronyFeed::new(NS);
        let (mut marker, mut off) = (7u64, 0i128);
        let mut last_sent: Option<(f64, u64)> = None;
        for i in 1..400u32 {
            let r = next();
            if r % 5 == 0 {
                off = match next() % 5 {
                    0 => 3_600 * NS,
                    1 => -T0 + NS, // 1970
                    2 => (next() % 1_000_000) as i128 * 86_400 * NS,
                    3 => (next() % 4_000_000_000) as i128 - 2_000_000_000,
                    _ => 0,
                };
            }
            if r % 9 == 0 {
                marker += 1;
            }
            let mut b = page(i, marker, status::SYNCHRONIZED, off, 0).to_bytes();
            match next() % 8 {
                0 => b[34] = next() as u8,       // clock_status
                1 => b[11] = (next() % 6) as u8, // time_type
                2 => b[39] = next() as u8,       // counter_period_shift
                3 => b[72..80].fill(0xff),       // time_sec
                4 => b[96..104].fill(0xff),      // time_maxerror_nanosec
                _ => {}
            }
            let Ok(p) = Snapshot::decode(&b, 4096) else { continue };
            let got = f.handle(&obs(p, &s, i as i128 * NS));
            match got {
                ChronyAction::Send(x) => {
                    sent_total += 1;
                    let utc_s = T0 / NS + x.offset as i128;
                    assert!(
                        (crate::sanity::EARLIEST_UNIX_S as i128..crate::sanity::LATEST_UNIX_S as i128).contains(&utc_s),
                        "seed {seed} step {i}: sent {x:?}"
                    );
                    if let Some((o, m)) = last_sent {
                        if m == p.disruption_marker() {
                            assert!(
                                (x.offset - o).abs() <= 2.001,
                                "seed {seed} step {i}: {o} -> {} without a marker change",
                                x.offset
                            );
                        }
                    }
                    last_sent = Some((x.offset, p.disruption_marker()));
                }
                ChronyAction::Hold(Hold::Jump) => held_jump += 1,
                ChronyAction::Hold(_) => {}
            }
        }
    }
    assert!(sent_total > 200 && held_jump > 20, "sent {sent_total}, held for a jump {held_jump}");
}

/// The cross-check reaches the ClockBound segment: while it disagrees, the bound covers the
/// disagreement and the status is FreeRunning; then back to the page's own bound.
#[test]
fn a_disagreeing_cross_check_widens_the_clockbound_bound() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    let p = page(1, 7, status::SYNCHRONIZED, 0, 0);
    let eb = f.handle(&obs(p, &s, 0), 0);
    assert_eq!(eb.status, CbStatus::Synchronized);
    assert!(eb.bound_ns < 10_000, "{}", eb.bound_ns);
    f.set_cross_check(Some(50_100_000.0));
    let eb = f.handle(&obs(page(2, 7, status::SYNCHRONIZED, 0, 0), &s, NS), NS);
    assert_eq!(eb.status, CbStatus::FreeRunning);
    assert!((50_100_000..50_110_000).contains(&eb.bound_ns), "{}", eb.bound_ns);
    let v3 = f.v3(&eb);
    assert!(v3.bound_ns >= 50_100_000 && v3.status == CbStatus::FreeRunning, "shm1 too: {v3:?}");
    f.set_cross_check(None);
    let eb = f.handle(&obs(page(3, 7, status::SYNCHRONIZED, 0, 0), &s, 2 * NS), 2 * NS);
    assert_eq!(eb.status, CbStatus::Synchronized);
    assert!(eb.bound_ns < 10_000);
}

#[test]
fn chrony_refuses_a_page_without_utc() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let t = Timestamp::<vmclock::Tai>::from_raw((T0 as u128) << 64);
    let b = PageBuilder::new()
        .reference(vmclock::counter::NATIVE, 0, t, Period::from_hz(HZ).unwrap())
        .status(status::SYNCHRONIZED)
        .build();
    let p = Snapshot::new(b, 4096).unwrap();
    assert_eq!(p.time_type(), time_type::TAI);
    let s = samples();
    assert_eq!(ChronyFeed::new(NS).handle(&obs(p, &s, 0)), ChronyAction::Hold(Hold::NoTime));
}

#[test]
fn clockbound_layout() {
    let h = header_bytes(4);
    assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), 0x414D5A4E);
    assert_eq!(u32::from_ne_bytes(h[4..8].try_into().unwrap()), 0x43420200);
    assert_eq!(u32::from_ne_bytes(h[8..12].try_into().unwrap()), 80);
    assert_eq!(u16::from_ne_bytes(h[12..14].try_into().unwrap()), 2);
    assert_eq!(u16::from_ne_bytes(h[14..16].try_into().unwrap()), 4);
    let eb = ErrorBound {
        as_of_ns: 5 * NS + 7,
        void_after_ns: 10 * NS,
        bound_ns: 1234,
        disruption_marker: 0xdead,
        max_drift_ppb: 15_000,
        status: CbStatus::FreeRunning,
        disruption_support: true,
    };
    let b = eb.to_bytes();
    assert_eq!(i64::from_ne_bytes(b[0..8].try_into().unwrap()), 5);
    assert_eq!(i64::from_ne_bytes(b[8..16].try_into().unwrap()), 7);
    assert_eq!(i64::from_ne_bytes(b[16..24].try_into().unwrap()), 10);
    assert_eq!(i64::from_ne_bytes(b[32..40].try_into().unwrap()), 1234);
    assert_eq!(u64::from_ne_bytes(b[40..48].try_into().unwrap()), 0xdead);
    assert_eq!(u32::from_ne_bytes(b[48..52].try_into().unwrap()), 15_000);
    assert_eq!(i32::from_ne_bytes(b[52..56].try_into().unwrap()), 2);
    assert_eq!(b[56], 1);
}

#[test]
fn clockbound_bound_is_honest_and_status_follows_the_page() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    // Page 40 µs ahead of REALTIME, maxerror 1 µs: the bound covers both and the window.
    let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 40_000, 0), &s, 0), 100);
    assert_eq!(eb.status, CbStatus::Synchronized);
    assert!(eb.bound_ns >= 41_000 + ROUNDING_NS as i64, "bound {}", eb.bound_ns);
    assert!(eb.bound_ns <= 41_030 + ROUNDING_NS as i64, "bound {} is not tight", eb.bound_ns);
    let allowance = 4 * ClockBoundConfig::default().coarse_tick_ns;
    assert_eq!(eb.as_of_ns, 100 - allowance);
    assert_eq!(eb.void_after_ns, 100 - allowance + 5 * NS);
    assert_eq!(eb.disruption_marker, 7);
    // Drift: the page's rate error (2^20 / 2^64·2^29… as ppb) + the 15 ppm margin.
    assert!(eb.max_drift_ppb >= 15_000);
    let fr = f.handle(&obs(page(2, 7, status::FREERUNNING, 40_000, 0), &s, 1), 200);
    assert_eq!(fr.status, CbStatus::FreeRunning);
    assert_eq!(f.handle(&obs(page(3, 7, status::UNKNOWN, 0, 0), &s, 2), 300).status, CbStatus::Unknown);
    // Disruption: Disrupted with the new marker, until the page is current.
    let d = f.handle(&obs(page(4, 8, status::SYNCHRONIZED, 0, 0), &s, 3), 400);
    assert_eq!((d.status, d.disruption_marker), (CbStatus::Disrupted, 8));
    let ok = f.handle(&obs(page(5, 8, status::SYNCHRONIZED, 0, 0), &s, 4), 500);
    assert_eq!((ok.status, ok.disruption_marker), (CbStatus::Synchronized, 8));
}

#[test]
fn clockbound_measures_realtime_drift_against_the_page() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let mut f = ClockBoundFeed::new(ClockBoundConfig { drift_margin_ppb: 0, ..ClockBoundConfig::default() });
    let s = samples();
    f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), 0);
    // One second later REALTIME has gained 20 µs on the page (20 ppm).
    let later: Vec<AbaSample> = s
        .iter()
        .map(|x| AbaSample {
            before_ns: x.before_ns + NS + 20_000,
            counter: x.counter + HZ,
            after_ns: x.after_ns + NS + 20_000,
        })
        .collect();
    let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &later, 1), NS);
    let r = f.rate_ppb.unwrap();
    assert!((20_000..20_100).contains(&r), "rate {r}");
    assert!(eb.max_drift_ppb as u64 >= r);
    assert!(eb.bound_ns >= 21_000);
}

/// What the ClockBound 3.x client computes from a body at a counter value (clock-bound
/// 3.0.0-rc.0, src/shm.rs, `compute_bound_at_tsc`): f64 arithmetic, truncations to the ns.
fn client3_window(b: &v3::ErrorBound, counter: u64) -> (i128, i128) {
    let period = b.map.period_frac as f64 / 2f64.powi(64 + b.map.period_shift as i32);
    let period_err = b.period_err_frac as f64 / 2f64.powi(64 + b.period_err_shift as i32);
    let ticks = counter.saturating_sub(b.map.as_of_counter) as f64;
    let (dur_s, dur_ns) = (ticks * period, ticks * period * 1e9);
    let now = b.map.as_of_ns + dur_ns as i64 as i128;
    let bound = (b.bound_ns as f64 + dur_s * b.max_drift_ppb as f64 + dur_ns * period_err) as i64 as i128;
    (now - bound, now + bound)
}

#[test]
fn clockbound3_layout() {
    let h = v3::LAYOUT.header_bytes(6);
    assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), 0x414D5A4E);
    assert_eq!(u32::from_ne_bytes(h[4..8].try_into().unwrap()), 0x43420200);
    assert_eq!(u32::from_ne_bytes(h[8..12].try_into().unwrap()), 104);
    assert_eq!(u16::from_ne_bytes(h[12..14].try_into().unwrap()), 0x0303);
    assert_eq!(u16::from_ne_bytes(h[14..16].try_into().unwrap()), 6);
    assert_eq!((v3::BODY_SIZE, v3::SEGMENT_SIZE, v3::LAYOUT.segment_size()), (88, 104, 104));
    assert_eq!(LAYOUT_V2.header_bytes(4), header_bytes(4));
    let b = v3::ErrorBound {
        map: v3::Map { as_of_counter: 0x1122_3344, as_of_ns: 5 * NS + 7, period_frac: 0xabcd, period_shift: 29 },
        void_after_ns: 10 * NS + 9,
        period_err_frac: 0x77,
        period_err_shift: 3,
        bound_ns: 1234,
        disruption_marker: 0xdead,
        max_drift_ppb: 15_000,
        status: CbStatus::Disrupted,
        disruption_support: true,
    }
    .to_bytes();
    let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
    let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(u64_at(0), 0x1122_3344);
    assert_eq!((i64_at(8), i64_at(16)), (5, 7));
    assert_eq!((i64_at(24), i64_at(32)), (10, 9));
    assert_eq!((u64_at(40), u64_at(48)), (0xabcd, 0x77));
    assert_eq!(i64_at(56), 1234);
    assert_eq!(u64_at(64), 0xdead);
    assert_eq!(u32::from_ne_bytes(b[72..76].try_into().unwrap()), 15_000);
    assert_eq!(i32::from_ne_bytes(b[76..80].try_into().unwrap()), 3);
    assert_eq!((b[80], b[81], b[82]), (1, 29, 3));
    assert!(b[83..].iter().all(|&x| x == 0));
}

#[test]
fn clockbound3_maps_the_page_with_the_2x_bound() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    // Page 40 µs ahead of REALTIME, maxerror 1 µs, period maxerror 2^20 (≈ 0.1 ppb).
    let pg = page(1, 7, status::SYNCHRONIZED, 40_000, 0);
    let eb = f.handle(&obs(pg, &s, 0), 100);
    let b = f.v3(&eb);
    assert_eq!((b.status, b.disruption_marker, b.disruption_support), (CbStatus::Synchronized, 7, false));
    // The map is the page's, anchored at one of the burst's counters.
    let r = pg.reference().unwrap();
    assert_eq!((b.map.period_frac, b.map.period_shift), (r.period, r.shift));
    let c = b.map.as_of_counter;
    assert!(s.iter().any(|x| x.counter == c), "as_of_tsc {c} is not a burst counter");
    let utc = pg.utc_at(c).unwrap();
    assert_eq!(b.map.as_of_ns, utc.time.as_nanos() as i128, "as_of is the page's UTC there, floored");
    let exact = T0 + 40_000 + (c - 1_000_000_000) as i128; // the fixed-point period is a hair short of 1 ns
    assert!((exact - 2..=exact).contains(&b.map.as_of_ns), "as_of {} vs {exact}", b.map.as_of_ns);
    // period_err = Pm / P, rounded up (never below).
    let pe = b.period_err_frac as f64 / 2f64.powi(64 + b.period_err_shift as i32);
    let want = (1u64 << 20) as f64 / r.period as f64;
    assert!(pe >= want * (1.0 - 1e-15) && pe < want * (1.0 + 1e-12), "period_err {pe} vs {want}");
    // The 2.x bound, plus the client's roundings; the growth is at least the 2.x drift.
    assert_eq!(b.bound_ns, eb.bound_ns + v3::ROUNDING_NS as i64);
    assert!(b.max_drift_ppb as f64 + pe * 1e9 >= eb.max_drift_ppb as f64, "{} {}", b.max_drift_ppb, eb.max_drift_ppb);
    assert!(b.max_drift_ppb <= eb.max_drift_ppb + 2, "{} {}", b.max_drift_ppb, eb.max_drift_ppb);
    assert_eq!(b.void_after_ns, b.map.as_of_ns + ClockBoundConfig::default().life_ns);
    // What the 3.x client computes holds the page's interval and CLOCK_REALTIME (T0 at
    // counter 1e9, 1 GHz, drifting at most the margin) from the pairing to an hour on.
    for dt in [0u64, 1, 1_000, 1_000_000, 1_000_000_000, 5_000_000_000, 3_600_000_000_000] {
        let at = c + dt;
        let (lo, hi) = client3_window(&b, at);
        let u = pg.utc_at(at).unwrap();
        let (t, e) = (u.time.as_nanos() as i128, u.maxerror_ns().unwrap() as i128);
        assert!(lo <= t - e && hi >= t + e, "+{dt}: [{lo}, {hi}] misses the page's [{}, {}]", t - e, t + e);
        let rt = T0 + (at - 1_000_000_000) as i128;
        let slack = (dt as i128 * 15_000).div_euclid(NS) + 20; // the margin's drift + the windows
        assert!(lo <= rt - slack && hi >= rt + slack, "+{dt}: [{lo}, {hi}] misses REALTIME {rt} ± {slack}");
    }
    // A page 0.1 ns wide still gives a window: the roundings are covered.
    assert!(client3_window(&b, c).1 - client3_window(&b, c).0 >= 2 * eb.bound_ns as i128);
}

#[test]
fn clockbound3_status_follows_the_2x_segment_and_keeps_the_map() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    // Nothing claimed yet: Unknown, no map.
    let eb = f.handle(&obs(page(1, 7, status::UNKNOWN, 0, 0), &s, 0), 100);
    let b = f.v3(&eb);
    assert_eq!((b.status, b.bound_ns, b.max_drift_ppb, b.map), (CbStatus::Unknown, 0, 0, v3::Map::default()));
    let eb = f.handle(&obs(page(2, 7, status::FREERUNNING, 0, 0), &s, 1), 200);
    let fr = f.v3(&eb);
    assert_eq!(fr.status, CbStatus::FreeRunning);
    // Unknown keeps the last map (the client keeps an Unknown status whatever the map says).
    let eb = f.handle(&obs(page(3, 7, status::UNRELIABLE, 0, 0), &s, 2), 300);
    let u = f.v3(&eb);
    assert_eq!((u.status, u.map, u.max_drift_ppb), (CbStatus::Unknown, fr.map, 0));
    // Disruption: Disrupted with the new marker until the page is current.
    let eb = f.handle(&obs(page(4, 8, status::SYNCHRONIZED, 0, 0), &s, 3), 400);
    let d = f.v3(&eb);
    assert_eq!((d.status, d.disruption_marker), (CbStatus::Disrupted, 8));
    let eb = f.handle(&obs(page(5, 8, status::SYNCHRONIZED, 0, 0), &s, 4), 500);
    let ok = f.v3(&eb);
    assert_eq!((ok.status, ok.disruption_marker), (CbStatus::Synchronized, 8));
    // A 2.x body from elsewhere (the binary's own Unknown when the page cannot be read) never
    // picks up the last claim.
    let unread = ErrorBound { status: CbStatus::Synchronized, as_of_ns: 1, ..eb };
    assert_eq!(f.v3(&unread).status, CbStatus::Unknown);
}

#[test]
fn clockbound3_is_void_around_an_announced_leap_second() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let edge = page(1, 7, status::SYNCHRONIZED, 0, leap::PRE_POS).leap_edge().unwrap().at_sec as i128 * NS;
    let s = samples();
    let cfg = ClockBoundConfig::default(); // 5 s of life
    for (before_edge, void_after) in [(10 * NS, None), (3 * NS, Some(edge - NS)), (NS / 2, Some(edge - NS / 2))] {
        let mut f = ClockBoundFeed::new(cfg);
        let pg = page(1, 7, status::SYNCHRONIZED, edge - before_edge - T0, leap::PRE_POS);
        let eb = f.handle(&obs(pg, &s, 0), 100);
        assert_eq!(eb.status, CbStatus::Synchronized);
        let b = f.v3(&eb);
        let want = void_after.unwrap_or(b.map.as_of_ns + cfg.life_ns);
        // The pairing's counter is a few µs past 1e9: as_of is that far past the page's time.
        assert!((0..10_000).contains(&(b.map.as_of_ns - (edge - before_edge))), "as_of {}", b.map.as_of_ns);
        if void_after.is_some_and(|v| v < b.map.as_of_ns) {
            assert_eq!(b.void_after_ns, b.map.as_of_ns, "{before_edge}");
        } else {
            assert_eq!(b.void_after_ns, want, "{before_edge} ns before the edge");
        }
    }
}

#[test]
fn clockbound3_period_error_is_rounded_up_with_its_significant_bits() {
    use v3::ratio_ceil;
    assert_eq!(ratio_ceil(0, 7), Some((0, 0)));
    assert_eq!(ratio_ceil(7, 7), None);
    assert_eq!(ratio_ceil(8, 7), None);
    for (num, den) in [(1u64, 3u64), (1 << 20, 0x89705F4136B4A597), (1, u64::MAX), (u64::MAX - 1, u64::MAX), (3, 4)] {
        let (f, s) = ratio_ceil(num, den).unwrap();
        // f / 2^(64+s) ≥ num/den, by less than 2^-(64+s), and f uses its top bits.
        let (lhs, n) = ((f as u128) * den as u128, (num as u128) << (64 + s)); // exact, < 2^128
        assert!(lhs >= n, "{num}/{den}: {f} >> {s} is below");
        assert!(lhs < n + den as u128, "{num}/{den}: not the ceiling");
        assert!(f >= 1 << 62, "{num}/{den}: {f} with shift {s} loses bits");
    }
}

#[test]
fn as_of_allows_for_the_largest_coarse_lag_seen() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    // The client ages the bound with CLOCK_MONOTONIC_COARSE, which lags the true instant
    // (by 4 to 13 ms with 4 ms ticks on a loaded machine): as_of is written early by the
    // largest lag seen (at least three ticks) plus a tick.
    let cfg = ClockBoundConfig { coarse_tick_ns: 4_000_000, ..ClockBoundConfig::default() };
    let mut f = ClockBoundFeed::new(cfg);
    assert_eq!(f.coarse_allowance_ns(), 16_000_000);
    let s = samples();
    let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), 10 * NS);
    assert_eq!(eb.status, CbStatus::Synchronized);
    assert_eq!(eb.as_of_ns, 10 * NS - 16_000_000);
    assert_eq!(eb.void_after_ns, eb.as_of_ns + cfg.life_ns);
    // Smaller lags change nothing; a larger one moves as_of for every later segment.
    f.observe_coarse_lag(5_000_000);
    assert_eq!(f.coarse_allowance_ns(), 16_000_000);
    f.observe_coarse_lag(12_900_000);
    f.observe_coarse_lag(1_000);
    assert_eq!(f.coarse_allowance_ns(), 16_900_000);
    // A resume after a 10 s pause looks like a 10 s lag: not kept, or every later segment
    // (life 5 s) would be void when written.
    f.observe_coarse_lag(10 * NS);
    assert_eq!(f.coarse_allowance_ns(), 16_900_000);
    let later = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 2), 20 * NS);
    assert!(later.void_after_ns > 20 * NS, "void when written");
    let eb = f.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 1), 11 * NS);
    assert_eq!(eb.as_of_ns, 11 * NS - 16_900_000);
}

#[test]
fn a_pairing_allows_for_the_truncated_clock() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    // clock_gettime truncates: a zero-width window [T, T] means the clock was in [T, T + 1 ns)
    // at the counter, so the page exactly at T is placed within the pairing's half-width of
    // that window's middle, never outside it.
    let exact: Vec<AbaSample> =
        (0..4u64).map(|i| AbaSample { before_ns: T0, counter: 1_000_000_000 + i, after_ns: T0 }).collect();
    let p = PageGate::new(NS).pass(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &exact, 0)).expect("a pairing");
    let half_ns = p.half * NS / UNIT;
    let realtime_ns = (p.realtime - (T0 << 64) / NS) * NS / UNIT;
    assert!(p.half >= UNIT / NS / 2, "half-width {half_ns} ns");
    assert!((0..=1).contains(&realtime_ns), "middle {realtime_ns} ns past T0");
}

/// A page built field by field with extreme values (raw, so nothing is tidied up).
fn extreme_page(
    counter: u64,
    (sec, frac): (u64, u64),
    period: Period,
    (maxerr, rate): (u64, u64),
    (st, leap_ind): (u8, u8),
) -> Option<Snapshot> {
    let t = Timestamp::<Utc>::from_raw(((sec as u128) << 64) | frac as u128);
    let b = PageBuilder::new()
        .reference(vmclock::counter::NATIVE, counter, t, period)
        .status(st)
        .leap(leap_ind)
        .maxerror(maxerr, rate)
        .disruption_marker(7)
        .build();
    let mut s = Snapshot::new(b, 4096).ok()?.to_bytes();
    s[12..16].copy_from_slice(&2u32.to_le_bytes());
    Snapshot::decode(&s, 4096).ok()
}

#[test]
fn extreme_pages_and_samples_never_panic_and_are_never_sent_absurd() {
    // A careless or hostile host: counters near the wrap, references in the far past or
    // future, periods of 0 or ~1 s per tick, maxerror and rates at u64::MAX, unknown leap
    // values and statuses flapping at every update; samples whose windows are inverted (the
    // clock stepped back mid-sample), empty, or at the ends of the counter. Both feeds must
    // decide without overflowing (debug builds check arithmetic), and whatever they send or
    // write must be finite and within what chrony and the client accept.
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let counters = [0u64, 1, 1 << 32, u64::MAX / 2, u64::MAX - 1_000_000, u64::MAX];
    let secs = [0u64, 1, 1_790_000_000, 1 << 40, i64::MAX as u64, u64::MAX];
    let periods = [(0u64, 0u8), (1, 0), (u64::MAX, 0), (1 << 63, 63), (u64::MAX, 255), (18_446_744_074, 0)];
    let errs = [(0u64, 0u64), (1_000, 1 << 20), (u64::MAX, u64::MAX), (i64::MAX as u64, 1)];
    let sample_sets: Vec<Vec<AbaSample>> = counters
        .iter()
        .flat_map(|&c| {
            let sane = vec![
                AbaSample { before_ns: T0, counter: c, after_ns: T0 + 10 },
                AbaSample { before_ns: T0 + 1_000, counter: c.wrapping_add(1_000), after_ns: T0 + 1_010 },
            ];
            let mut wide = sane.clone();
            wide.push(AbaSample {
                before_ns: i64::MIN as i128,
                counter: c.wrapping_sub(7),
                after_ns: i64::MAX as i128,
            });
            let mut inverted = sane.clone();
            inverted.push(AbaSample { before_ns: T0 + 2_050, counter: c.wrapping_add(2_000), after_ns: T0 + 2_020 });
            [sane, wide, inverted]
        })
        .chain([Vec::new()])
        .collect();
    let statuses = [status::SYNCHRONIZED, status::FREERUNNING, status::UNRELIABLE, 200];
    let mut chrony = ChronyFeed::new(NS);
    let mut cb = ClockBoundFeed::new(ClockBoundConfig::default());
    let (mut sent, mut written, mut n) = (0u32, 0u32, 0i128);
    for &c in &counters {
        for &sec in &secs {
            for &(period, shift) in &periods {
                for &(maxerr, rate) in &errs {
                    for (k, samples) in sample_sets.iter().enumerate() {
                        n += 1;
                        // The status flaps at every observation.
                        let st = statuses[n as usize % statuses.len()];
                        let leap_ind = (n % 9) as u8;
                        let Some(p) = extreme_page(
                            c,
                            (sec, u64::MAX - k as u64),
                            Period { frac: period, shift },
                            (maxerr, rate),
                            (st, leap_ind),
                        ) else {
                            continue;
                        };
                        let o = obs(p, samples, n * NS);
                        if samples.iter().any(|s| s.after_ns < s.before_ns) {
                            assert!(!matches!(chrony.handle(&o), ChronyAction::Send(_)), "sent across a step back");
                            assert_eq!(cb.handle(&o, n * NS).status, CbStatus::Unknown, "a bound across a step back");
                            continue;
                        }
                        if let ChronyAction::Send(s) = chrony.handle(&o) {
                            sent += 1;
                            assert!(s.offset.is_finite(), "offset {}", s.offset);
                            assert!((0..1_000_000).contains(&s.tv_usec), "tv_usec {}", s.tv_usec);
                            assert!(matches!(s.leap, 0..=2), "chrony drops a sample with leap {}", s.leap);
                            assert_eq!(s.to_bytes().len(), SAMPLE_SIZE);
                        }
                        let eb = cb.handle(&o, n * NS);
                        if matches!(eb.status, CbStatus::Synchronized | CbStatus::FreeRunning) {
                            written += 1;
                            assert!(eb.bound_ns > 0, "a claimed bound of {}", eb.bound_ns);
                            assert!(
                                (eb.max_drift_ppb as u64) < MAX_DRIFT_PPB,
                                "the client refuses {}",
                                eb.max_drift_ppb
                            );
                        }
                        assert!(eb.void_after_ns > eb.as_of_ns);
                        let _ = eb.to_bytes();
                    }
                }
            }
        }
    }
    // Not vacuous: some of these pages are usable (sane period, 1 µs maxerror).
    assert!(sent > 0 && written > 0, "sent {sent}, written {written} of {n}");
}

#[test]
fn a_step_back_during_the_burst_is_held() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    // CLOCK_REALTIME stepped back 1 ms inside the fourth sample (chronyd's makestep): before,
    // its window was negative, chosen as the "tightest", and the pairing's half-width came
    // out negative (an overflow in debug builds; in release a bound narrower than honest).
    let mut s = samples();
    s[3].after_ns = s[3].before_ns - 1_000_000;
    for x in &mut s[4..] {
        (x.before_ns, x.after_ns) = (x.before_ns - 1_000_000, x.after_ns - 1_000_000);
    }
    let p = page(1, 7, status::SYNCHRONIZED, 0, 0);
    let mut c = ChronyFeed::new(NS);
    assert_eq!(c.handle(&obs(p, &s, 0)), ChronyAction::Hold(Hold::RealtimeStepped));
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    assert_eq!(f.handle(&obs(p, &s, 0), NS).status, CbStatus::Unknown);
    assert_eq!(f.last_hold, Some(Hold::RealtimeStepped));
    // The next burst, on one clock again, is used.
    assert!(matches!(c.handle(&obs(p, &samples(), 1)), ChronyAction::Send(_)));
    assert_eq!(f.handle(&obs(p, &samples(), 1), NS).status, CbStatus::Synchronized);
}

#[test]
fn a_page_too_far_from_realtime_is_held_not_sent() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    // 2^32 s ahead: chronyd would drop every sample without a word (UTI_IsTimeOffsetSane).
    let s = samples();
    let far = page(1, 7, status::SYNCHRONIZED, ((1i128 << 32) + 1) * NS, 0);
    let mut c = ChronyFeed::new(NS);
    assert_eq!(c.handle(&obs(far, &s, 0)), ChronyAction::Hold(Hold::OutOfRange));
    // Just under it is sent (chronyd decides what to do with a large offset: makestep).
    let near = page(1, 7, status::SYNCHRONIZED, ((1i128 << 32) - 2) * NS, 0);
    let ChronyAction::Send(x) = c.handle(&obs(near, &s, 1)) else { panic!("held") };
    assert!(x.offset > 4.29e9);
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    assert_eq!(f.handle(&obs(far, &s, 0), NS).status, CbStatus::Unknown);
    assert_eq!(f.last_hold, Some(Hold::OutOfRange));
    // Before 1970.
    let past = page(1, 7, status::SYNCHRONIZED, -T0 - NS, 0);
    assert!(matches!(c.handle(&obs(past, &s, 2)), ChronyAction::Hold(Hold::OutOfRange | Hold::NoTime)));
}

#[test]
fn a_restarted_feed_holds_a_marker_that_changed_while_it_was_down() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    let s = samples();
    let mut first = ClockBoundFeed::new(ClockBoundConfig::default());
    let left = first.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), NS);
    assert_eq!(left.status, CbStatus::Synchronized);
    // The feed dies; the host moves to marker 8 meanwhile; a new feed finds the segment.
    let mut next = ClockBoundFeed::new(ClockBoundConfig::default());
    assert_eq!(next.resume(&left.to_bytes(), LAYOUT_V2), Some(7));
    let p8 = page(1, 8, status::SYNCHRONIZED, 0, 0);
    assert_eq!(next.handle(&obs(p8, &s, 10 * NS), 10 * NS).status, CbStatus::Disrupted);
    // Current once updated again (or after the hold-off).
    assert_eq!(
        next.handle(&obs(page(2, 8, status::SYNCHRONIZED, 0, 0), &s, 11 * NS), 11 * NS).status,
        CbStatus::Synchronized
    );
    // The same marker: no disruption. A body that claimed nothing gives no marker.
    let mut same = ClockBoundFeed::new(ClockBoundConfig::default());
    same.resume(&left.to_bytes(), LAYOUT_V2);
    assert_eq!(same.handle(&obs(page(1, 7, status::SYNCHRONIZED, 0, 0), &s, 0), NS).status, CbStatus::Synchronized);
    let unknown = ErrorBound { status: CbStatus::Unknown, ..left };
    assert_eq!(ClockBoundFeed::new(ClockBoundConfig::default()).resume(&unknown.to_bytes(), LAYOUT_V2), None);
}

#[test]
fn a_page_without_a_maximum_error_is_named_as_such() {
    if vmclock::counter::NATIVE == counter_id::INVALID {
        return;
    }
    // `vmtime gen PAGE` without --maxerror-ns: the page gives UTC (chrony is fed) but no
    // bound. The feed said "the page gives no UTC time for this CPU's counter".
    let t = Timestamp::<Utc>::from_raw(crate::ns_to_frac(T0, false) as u128);
    let b = PageBuilder::new()
        .reference(vmclock::counter::NATIVE, 1_000_000_000, t, Period::from_hz(HZ).unwrap())
        .status(status::SYNCHRONIZED)
        .build();
    let p = Snapshot::new(b, 4096).unwrap();
    let s = samples();
    assert!(matches!(ChronyFeed::new(NS).handle(&obs(p, &s, 0)), ChronyAction::Send(_)));
    let mut f = ClockBoundFeed::new(ClockBoundConfig::default());
    assert_eq!(f.handle(&obs(p, &s, 0), NS).status, CbStatus::Unknown);
    assert_eq!(f.last_hold, Some(Hold::NoMaxError));
    assert!(Hold::NoMaxError.describe().contains("no maximum error"));
    // A maximum error beyond what the segment holds.
    let b = PageBuilder::new()
        .reference(vmclock::counter::NATIVE, 1_000_000_000, t, Period::from_hz(HZ).unwrap())
        .status(status::SYNCHRONIZED)
        .maxerror(u64::MAX, u64::MAX)
        .build();
    let p = Snapshot::new(b, 4096).unwrap();
    assert_eq!(f.handle(&obs(p, &s, 1), NS).status, CbStatus::Unknown);
    assert_eq!(f.last_hold, Some(Hold::Unbounded));
}
