//! An oracle: the Linux `ptp_vmclock` driver's arithmetic, transcribed as facts (not code) from
//! drivers/ptp/ptp_vmclock.c, and vmtime agreeing with it to the nanosecond on random pages, for
//! counters at or after the reference (the driver takes `cycle − counter_value` as unsigned, so it
//! has no answer before the reference; vmtime reads those as negative deltas).
//!
//! The driver, per reading:
//! * `delta = cycle − counter_value` (u64, wrapping);
//! * `r = (delta · counter_period_frac_sec) >> counter_period_shift` in 128 bits, `r += time_frac_sec`;
//!   seconds `= (r >> 64) + time_sec`, fraction `= r mod 2^64`;
//! * `tv_nsec = (fraction · 10^9) >> 64` (rounded down);
//! * 6.13–6.19 (returns UTC): a UTC page as is; a TAI page with TAI_OFFSET_VALID gets
//!   `sec += (int16_t)tai_offset_sec`; a TAI page without it has no PTP clock;
//! * "return TAI not UTC" (returns TAI): a TAI page as is; a UTC page with TAI_OFFSET_VALID gets
//!   `sec -= (int16_t)tai_offset_sec`; without it, no clock.
#![cfg(not(loom))]
use proptest::prelude::*;
use vmclock::abi::{self, flags};
use vmclock::{PageBuilder, Period, Snapshot, Tai, Timestamp, Utc};

/// (tv_sec, tv_nsec) before the timescale adjustment.
fn driver_time(s: &Snapshot, cycle: u64) -> (i64, u32) {
    let raw = s.raw();
    let delta = cycle.wrapping_sub(raw.counter_value.get());
    let mut r = (delta as u128 * raw.counter_period_frac_sec.get() as u128) >> raw.counter_period_shift;
    r += raw.time_frac_sec.get() as u128;
    let sec = ((r >> 64) as u64).wrapping_add(raw.time_sec.get()) as i64;
    let nsec = ((r as u64 as u128 * 1_000_000_000) >> 64) as u32;
    (sec, nsec)
}

fn offset_valid(s: &Snapshot) -> bool {
    s.raw().flags.get() & flags::TAI_OFFSET_VALID != 0
}

/// The 6.13–6.19 driver: UTC, or `None` where it registers no clock.
fn driver_utc(s: &Snapshot, cycle: u64) -> Option<(i64, u32)> {
    let (sec, nsec) = driver_time(s, cycle);
    match s.time_type() {
        abi::time_type::UTC => Some((sec, nsec)),
        abi::time_type::TAI if offset_valid(s) => Some((sec + s.raw().tai_offset_sec.get() as i16 as i64, nsec)),
        _ => None,
    }
}

/// The TAI-returning driver.
fn driver_tai(s: &Snapshot, cycle: u64) -> Option<(i64, u32)> {
    let (sec, nsec) = driver_time(s, cycle);
    match s.time_type() {
        abi::time_type::TAI => Some((sec, nsec)),
        abi::time_type::UTC if offset_valid(s) => Some((sec - s.raw().tai_offset_sec.get() as i16 as i64, nsec)),
        _ => None,
    }
}

fn page(
    tai: bool,
    counter_value: u64,
    sec: u64,
    frac: u64,
    period: u64,
    shift: u8,
    utc_minus_tai: Option<i16>,
) -> Snapshot {
    let p = Period { frac: period, shift };
    let b = if tai {
        PageBuilder::new().reference(
            vmclock::counter::NATIVE,
            counter_value,
            Timestamp::<Tai>::from_parts(sec, frac),
            p,
        )
    } else {
        PageBuilder::new().reference(
            vmclock::counter::NATIVE,
            counter_value,
            Timestamp::<Utc>::from_parts(sec, frac),
            p,
        )
    };
    let b = match utc_minus_tai {
        Some(v) => b.tai_offset_raw(v),
        None => b,
    };
    Snapshot::new(b.status(abi::status::SYNCHRONIZED).build(), 4096).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn vmtime_agrees_with_the_driver_to_the_nanosecond(
        tai in any::<bool>(),
        counter_value in any::<u64>(),
        sec in 0u64..1 << 40,
        frac in any::<u64>(),
        period in any::<u64>(),
        shift in 0u8..100,
        ticks in prop_oneof![0u64..1 << 20, 0u64..1 << 40, 0u64..1 << 62],
        offset in prop_oneof![Just(Some(-37i16)), (-100i16..=-10).prop_map(Some), Just(None)],
    ) {
        let s = page(tai, counter_value, sec, frac, period, shift, offset);
        let cycle = counter_value.wrapping_add(ticks); // at or after the reference, wrapping
        // Keep the seconds in range for both (the driver's tv_sec is signed 64-bit).
        let (raw_sec, _) = driver_time(&s, cycle);
        prop_assume!((0..1i64 << 62).contains(&raw_sec));
        match (driver_utc(&s, cycle), s.utc_at(cycle)) {
            (Some((ds, dn)), Ok(v)) => {
                prop_assert_eq!((ds, dn), (v.time.sec() as i64, v.time.subsec_nanos()), "UTC");
            }
            (None, Err(_)) => {}
            (d, v) => prop_assert!(false, "UTC: driver {:?}, vmtime {:?}", d, v),
        }
        match (driver_tai(&s, cycle), s.tai_at(cycle)) {
            (Some((ds, dn)), Ok(v)) => {
                prop_assert_eq!((ds, dn), (v.time.sec() as i64, v.time.subsec_nanos()), "TAI");
            }
            (None, Err(_)) => {}
            (d, v) => prop_assert!(false, "TAI: driver {:?}, vmtime {:?}", d, v),
        }
        // The application's path gives the same time.
        if vmclock::counter::NATIVE != abi::counter_id::INVALID {
            let n = vmclock::now_at(&s, cycle).unwrap();
            if let Some((ds, dn)) = driver_utc(&s, cycle) {
                let u = n.utc().unwrap().time;
                prop_assert_eq!((ds, dn), (u.sec() as i64, u.subsec_nanos()));
            }
        }
    }
}

/// The sign: on a TAI page holding −37 (the driver's convention), the 6.13–6.19 driver's UTC is
/// TAI − 37 s, and so is vmtime's; a page holding +37 (the old vmtime sign) made that driver
/// return UTC + 74 s relative to vmtime's old reading.
#[test]
fn the_driver_reads_minus_37_as_utc_minus_tai() {
    let s = page(true, 0, 1_795_000_037, 0, 1 << 63, 30, Some(-37));
    assert_eq!(driver_utc(&s, 0), Some((1_795_000_000, 0)));
    assert_eq!(s.utc_at(0).unwrap().time.sec(), 1_795_000_000);
    let legacy = page(true, 0, 1_795_000_037, 0, 1 << 63, 30, Some(37));
    assert_eq!(driver_utc(&legacy, 0), Some((1_795_000_074, 0)), "what a kernel makes of a legacy page");
    assert_eq!(legacy.utc_at(0).unwrap().time.sec(), 1_795_000_000, "vmtime reads the legacy sign as meant");
}
