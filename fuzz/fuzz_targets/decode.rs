//! Decode + validate + time math on arbitrary bytes: never a panic, and every time that is
//! computed lies inside its own bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmclock::Snapshot;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the counter; the rest is the region.
    if data.len() < 8 {
        return;
    }
    let counter = u64::from_le_bytes(data[..8].try_into().unwrap());
    let region = &data[8..];
    let Ok(s) = Snapshot::from_bytes(region) else { return };
    let _ = (s.clock_status(), s.tai_minus_utc(), s.tai_offset_is_legacy(), s.leap_indicator(), s.vm_generation_counter());
    if let Ok(r) = s.reference() {
        if let Ok(t) = r.raw_time_at(counter) {
            // The elapsed part is exact: going back from the result gives the reference.
            let e = r.elapsed(counter).0;
            let back = if e >= 0 { t - e as u128 } else { t + e.unsigned_abs() };
            assert_eq!(back, r.time);
            if let Some(m) = r.maxerror_at(counter) {
                assert!(t.saturating_sub(m) <= t && t <= t.saturating_add(m));
            }
        }
    }
    let _ = s.tai_at(counter).map(|b| (b.earliest(), b.latest(), b.maxerror_ns()));
    let _ = s.utc_at(counter).map(|b| (b.earliest(), b.latest(), b.esterror_ns()));
});
