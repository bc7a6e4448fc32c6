//! Property tests: the time and bound math against an independent wide-integer model, and
//! random bytes through validation and math never panic.
use num_bigint::{BigInt, Sign};
use proptest::prelude::*;
use vmclock::abi::{self, flags};
use vmclock::{PageBuilder, Period, Snapshot, Tai, TimeError, Timestamp};

fn big<T: Into<BigInt>>(x: T) -> BigInt {
    x.into()
}
fn one() -> BigInt {
    BigInt::from(1u8)
}

/// floor(a / 2^s) and ceil(a / 2^s) for a non-negative BigInt.
fn floor_shr(a: &BigInt, s: u8) -> BigInt {
    // BigInt >> on negatives rounds toward -inf, as the model requires.
    a >> s as usize
}
fn ceil_shr(a: &BigInt, s: u8) -> BigInt {
    -((-a) >> s as usize)
}

/// The spec's formula, computed in unbounded integers: T = T1 + floor(ΔC·P / 2^shift), ΔC the
/// signed (two's complement, modulo 2^64) counter difference.
fn model_time(sec: u64, frac: u64, cv: u64, period: u64, shift: u8, c: u64) -> Option<BigInt> {
    let delta = big(c.wrapping_sub(cv) as i64);
    let t1: BigInt = (big(sec) << 64) + big(frac);
    let t: BigInt = t1 + floor_shr(&(delta * big(period)), shift);
    (t.sign() != Sign::Minus && t < (one() << 128)).then_some(t)
}

fn model_bound(ns: u64, rate: u64, shift: u8, delta_abs: u64) -> BigInt {
    // ceil(ns·2^64 / 1e9)
    let scaled: BigInt = big(ns) << 64;
    let billion = big(1_000_000_000u64);
    let time: BigInt = (&scaled + &billion - one()) / &billion;
    let rate: BigInt = if delta_abs == 0 { big(0u8) } else { ceil_shr(&(big(rate) * big(delta_abs)), shift) };
    (time + rate).min((one() << 128) - one())
}

fn page(sec: u64, frac: u64, cv: u64, period: u64, shift: u8, max_ns: u64, rate: u64) -> Snapshot {
    let mut b = PageBuilder::new()
        .reference(
            abi::counter_id::X86_TSC,
            cv,
            Timestamp::<Tai>::from_parts(sec, frac),
            Period { frac: period, shift },
        )
        .maxerror(max_ns, rate)
        .build();
    b.counter_period_shift = shift;
    Snapshot::new(b, 4096).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn time_matches_wide_model(
        sec in prop_oneof![0u64..4_000_000_000, any::<u64>()],
        frac in any::<u64>(),
        cv in any::<u64>(),
        period in any::<u64>(),
        shift in 0u8..128,
        c in any::<u64>(),
        near in any::<bool>(),
        d in -100_000_000_000_000i64..100_000_000_000_000,
    ) {
        // Half the cases within ±1 day of a 1 GHz reference, half anywhere in u64.
        let c = if near { cv.wrapping_add(d as u64) } else { c };
        let s = page(sec, frac, cv, period, shift, 0, 0);
        let r = s.reference().unwrap();
        match (r.raw_time_at(c), model_time(sec, frac, cv, period, shift, c)) {
            (Ok(t), Some(m)) => prop_assert_eq!(big(t), m),
            (Err(TimeError::Overflow), None) => {}
            (got, want) => prop_assert!(false, "got {:?}, model {:?}", got, want),
        }
    }

    #[test]
    fn bounds_match_wide_model(
        cv in any::<u64>(), c in any::<u64>(), shift in 0u8..128,
        max_ns in any::<u64>(), rate in any::<u64>(),
    ) {
        let s = page(1_800_000_000, 0, cv, 1 << 63, shift, max_ns, rate);
        let r = s.reference().unwrap();
        let delta_abs = (c.wrapping_sub(cv) as i64).unsigned_abs();
        let got = r.maxerror_at(c).unwrap();
        // Never below the exact bound, at most 2 units (1.1e-19 s) above it.
        let model = model_bound(max_ns, rate, shift, delta_abs);
        prop_assert!(big(got) >= model && big(got) <= model.clone() + 2u8, "got {}, model {}", got, model);
        // The bracket contains the time, and esterror is unknown (flags clear).
        let t = s.time_at(c);
        if let Ok(t) = t {
            prop_assert_eq!(t.esterror(), None);
            prop_assert!(t.maxerror().unwrap() == got);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), c in any::<u64>(), magic in any::<bool>(), size in 0u32..200) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 12 {
            // Steer half the cases past the magic and version checks.
            bytes[0..4].copy_from_slice(&abi::MAGIC.to_le_bytes());
            bytes[4..8].copy_from_slice(&size.to_le_bytes());
            bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        }
        if let Ok(s) = Snapshot::from_bytes(&bytes) {
            let _ = s.time_at(c);
            let _ = s.tai_at(c);
            let _ = s.utc_at(c);
            let _ = (s.clock_status(), s.tai_minus_utc(), s.tai_offset_is_legacy(), s.vm_generation_counter(), flags::names(s.flags()));
        }
    }

    #[test]
    fn period_from_ratio_is_nearest(num in 1u128..1 << 100, den in 1u128..1 << 125) {
        prop_assume!(num < den);
        let p = Period::from_ratio(num, den).unwrap();
        prop_assert!(p.frac >> 63 == 1);
        // |frac − num·2^(64+shift)/den| ≤ 1/2
        let exact_num: BigInt = big(num) << (64 + p.shift as usize);
        let err: BigInt = (big(p.frac) * big(den) - exact_num) * 2;
        prop_assert!(err.magnitude() <= big(den).magnitude());
    }
}

/// Counters that stress the math: the reference itself, its neighbours, the wrap, the ends.
fn counter_strategy() -> impl Strategy<Value = (u8, u64, i64)> {
    (0u8..6, any::<u64>(), any::<i64>())
}

fn pick_counter(cv: u64, (kind, any, d): (u8, u64, i64)) -> u64 {
    match kind {
        0 => cv,
        1 => cv.wrapping_add((d % 3) as u64),
        2 => cv.wrapping_add((d % 100_000_000_000_000) as u64),
        3 => [0, u64::MAX, 1 << 63, (1 << 63) - 1][(any % 4) as usize],
        4 => cv.wrapping_add(1 << 63),
        _ => any,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    /// The application's read ([`vmclock::Clock::now`]: the full copy of the page's words, and
    /// the cached constants of a page read before, with the estimated error computed on demand)
    /// gives exactly what the validated snapshot's exact
    /// path gives for the same counter: time, both bounds, TAI and UTC (leap applied), or the
    /// same error.
    #[test]
    fn clock_now_equals_the_snapshot_path(
        utc in any::<bool>(),
        sec in prop_oneof![1_700_000_000u64..1_900_000_000, any::<u64>()],
        frac in any::<u64>(),
        cv in any::<u64>(),
        period in prop_oneof![any::<u64>(), Just(u64::MAX), Just(0u64)],
        shift in prop_oneof![0u8..128, Just(63u8), Just(64u8), Just(127u8)],
        bounds in prop_oneof![
            proptest::array::uniform4(any::<u64>()),
            proptest::array::uniform4(0u64..1_000_000),
            Just([u64::MAX; 4]),
        ],
        valid in any::<u8>(),
        tai_raw in prop_oneof![Just(-37i16), Just(37i16), any::<i16>()],
        leap in 0u8..6,
        counter in counter_strategy(),
    ) {
        // A whole page from random fields (test_support::random_page), SYNCHRONIZED.
        let p = Period { frac: period, shift };
        let abi = vmclock::test_support::random_page(utc, sec, frac, cv, p, bounds, valid, tai_raw, leap)
            .status(abi::status::SYNCHRONIZED)
            .build();
        let c = pick_counter(cv, counter);
        let snap = Snapshot::new(abi, 4096).unwrap();
        let buf = vmclock::PageBuf::new();
        vmclock::Writer::new(&buf).publish(&abi);
        // A fresh clock reads a full copy; a warm one (an earlier read cached the page's
        // constants) reads through the cache when the page and the counter allow it.
        let cold = vmclock::Clock::new(&buf);
        let warm = vmclock::Clock::new(&buf);
        let _ = warm.now_with_counter(|| cv);
        for clock in [&cold, &warm] {
            match (clock.now_with_counter(|| c), snap.time_at(c)) {
                (Ok(n), Ok(t)) => {
                    prop_assert_eq!(n.counter, c);
                    prop_assert_eq!(n.raw, t.raw());
                    prop_assert_eq!(n.maxerror, t.maxerror());
                    prop_assert_eq!(n.esterror(), t.esterror());
                    prop_assert_eq!(n.time(), t);
                    prop_assert_eq!(n.tai(), snap.tai_at(c));
                    prop_assert_eq!(n.utc(), snap.utc_at(c));
                    prop_assert_eq!(n.tai_minus_utc, snap.tai_minus_utc());
                    prop_assert_eq!(n.leap, snap.leap_edge());
                    // And the snapshot entry point agrees with both.
                    prop_assert_eq!(vmclock::now_at(&snap, c).unwrap(), n);
                }
                (Err(vmclock::ClockError::Time(a)), Err(b)) => prop_assert_eq!(a, b),
                (got, want) => prop_assert!(false, "now {:?}, snapshot {:?}", got, want),
            }
        }
    }
}
