//! Golden vectors: a page built byte by byte from the Linux header's offsets decodes to the
//! expected fields, and the spec's 1 GHz period is reproduced exactly.
use vmclock::abi::{self, flags};
use vmclock::{PageBuilder, PageError, Period, Snapshot, Tai, TimeError, Timestamp, Utc};

struct Raw([u8; 4096]);
impl Raw {
    fn new() -> Self {
        Raw([0; 4096])
    }
    fn u8(&mut self, off: usize, v: u8) -> &mut Self {
        self.0[off] = v;
        self
    }
    fn u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
}

const SPEC_1GHZ_PERIOD: u64 = 0x89705F4136B4A597;

fn full_page() -> Raw {
    let mut r = Raw::new();
    r.u32(0x00, 0x4b4c4356)
        .u32(0x04, 4096)
        .u16(0x08, 1)
        .u8(0x0a, 1) // X86_TSC
        .u8(0x0b, 1) // TAI
        .u32(0x0c, 42)
        .u64(0x10, 0x1122_3344_5566_7788)
        .u64(0x18, 0x3ff)
        .u8(0x22, 2) // SYNCHRONIZED
        .u8(0x23, 1) // NOON_LINEAR
        .u16(0x24, (-37i16) as u16) // UTC − TAI, as the driver and spec v1.1
        .u8(0x26, 1) // PRE_POS
        .u8(0x27, 29)
        .u64(0x28, 1_000_000_000_000)
        .u64(0x30, SPEC_1GHZ_PERIOD)
        .u64(0x38, 1 << 20)
        .u64(0x40, 1 << 30)
        .u64(0x48, 1_795_000_037)
        .u64(0x50, 1 << 63)
        .u64(0x58, 100)
        .u64(0x60, 1_000)
        .u64(0x68, 7);
    r
}

#[test]
fn spec_example_period_for_1ghz() {
    let p = Period::from_hz(1_000_000_000).unwrap();
    assert_eq!(p, Period { frac: SPEC_1GHZ_PERIOD, shift: 29 });
    // Other frequencies keep the top bit of frac set (full precision) and round to nearest.
    for hz in [2u64, 3, 19_200_000, 2_500_000_000, 3_000_000_007, u32::MAX as u64 * 7] {
        let p = Period::from_hz(hz).unwrap();
        assert!(p.frac >> 63 == 1, "{hz}: {p:?}");
        let exact = num_bigint::BigUint::from(1u8) << (64 + p.shift as usize);
        let q = &exact / hz;
        let r = &exact % hz;
        let rounded = if r * 2u8 >= num_bigint::BigUint::from(hz) { q + 1u8 } else { q };
        assert_eq!(rounded, num_bigint::BigUint::from(p.frac), "{hz}");
    }
    assert_eq!(Period::from_hz(0), None);
    assert_eq!(Period::from_hz(1), None, "a period of 1 s does not fit below 2^64 units");
}

#[test]
fn page_built_byte_by_byte_decodes() {
    let s = Snapshot::from_bytes(&full_page().0).unwrap();
    assert_eq!(s.size(), 4096);
    assert_eq!(s.counter_id(), abi::counter_id::X86_TSC);
    assert_eq!(s.time_type(), abi::time_type::TAI);
    assert_eq!(s.seq_count(), 42);
    assert_eq!(s.disruption_marker(), 0x1122_3344_5566_7788);
    assert_eq!(s.flags(), 0x3ff);
    assert!(s.has(flags::TIME_MONOTONIC | flags::NOTIFICATION_PRESENT | flags::VM_GEN_COUNTER_PRESENT));
    assert_eq!(s.clock_status(), Some(abi::status::SYNCHRONIZED));
    assert_eq!(s.smearing_hint(), Some(abi::smearing::NOON_LINEAR));
    assert_eq!(s.tai_offset_raw(), Some(-37));
    assert_eq!(s.tai_minus_utc(), Some(37));
    assert!(!s.tai_offset_is_legacy());
    assert_eq!(s.leap_indicator(), Some(abi::leap::PRE_POS));
    assert_eq!(s.counter_period_shift(), Some(29));
    assert_eq!(s.counter_value(), Some(1_000_000_000_000));
    assert_eq!(s.counter_period(), Some(SPEC_1GHZ_PERIOD));
    assert_eq!(s.period_esterror(), Some(1 << 20));
    assert_eq!(s.period_maxerror(), Some(1 << 30));
    assert_eq!(s.time_sec(), Some(1_795_000_037));
    assert_eq!(s.time_frac_sec(), Some(1 << 63));
    assert_eq!(s.time_esterror_ns(), Some(100));
    assert_eq!(s.time_maxerror_ns(), Some(1_000));
    assert_eq!(s.vm_generation_counter(), Some(7));
    // The builder produces the same bytes.
    let built = PageBuilder::new()
        .reference(
            abi::counter_id::X86_TSC,
            1_000_000_000_000,
            Timestamp::<Tai>::from_parts(1_795_000_037, 1 << 63),
            Period::from_hz(1_000_000_000).unwrap(),
        )
        .disruption_marker(0x1122_3344_5566_7788)
        .status(abi::status::SYNCHRONIZED)
        .smearing(abi::smearing::NOON_LINEAR)
        .tai_minus_utc(37)
        .leap(abi::leap::PRE_POS)
        .esterror(100, 1 << 20)
        .maxerror(1_000, 1 << 30)
        .vm_generation(7)
        .flag(
            flags::DISRUPTION_SOON | flags::DISRUPTION_IMMINENT | flags::TIME_MONOTONIC | flags::NOTIFICATION_PRESENT,
            true,
        )
        .page_bytes();
    let mut expect = full_page().0;
    expect[0x0c..0x10].fill(0); // the builder leaves seq_count to the writer
    assert_eq!(built, expect.to_vec());
}

#[test]
fn one_second_of_a_1ghz_counter_is_exact() {
    let s = Snapshot::from_bytes(&full_page().0).unwrap();
    let t = s.tai_at(1_000_000_000_000 + 1_000_000_000).unwrap();
    // P is 2^93/1e9 rounded down by 0.19 units: 1e9 ticks fall short of 1 s by 0.35·2^-64 s,
    // which the floor turns into exactly one unit.
    assert_eq!(t.time, Timestamp::<Tai>::from_parts(1_795_000_038, (1 << 63) - 1));
    // Bounds: 1000 ns + 2^30 · 1e9 / 2^29 units = 1000 ns + 2e9 · 2^-64 s (~0.108 ns): rounded up.
    assert_eq!(t.maxerror_ns(), Some(1_001));
    let utc = s.utc_at(1_000_000_000_000).unwrap();
    assert_eq!(utc.time, Timestamp::<Utc>::from_parts(1_795_000_000, 1 << 63));
    assert_eq!(utc.time.to_string(), "2026-11-18T11:06:40.500000000 UTC");
    // One tick before the reference is a negative delta, not a wrapped huge one.
    let before = s.tai_at(999_999_999_999).unwrap();
    assert!(before.time < Timestamp::<Tai>::from_parts(1_795_000_037, 1 << 63));
    assert!(before.time > Timestamp::<Tai>::from_parts(1_795_000_037, (1 << 63) - 20_000_000_000));
}

#[test]
fn absent_is_not_zero() {
    // A page that ends right after `flags`: every later field is absent.
    let mut r = full_page();
    r.u32(0x04, abi::MIN_SIZE);
    let s = Snapshot::from_bytes(&r.0).unwrap();
    assert_eq!(s.clock_status(), None);
    assert_eq!(s.tai_minus_utc(), None);
    assert_eq!(s.counter_value(), None);
    assert_eq!(s.vm_generation_counter(), None);
    assert_eq!(s.reference(), Err(TimeError::NoTimeFields { size: 0x20 }));
    // The generation counter needs all its 8 bytes.
    r.u32(0x04, 0x6f);
    let s = Snapshot::from_bytes(&r.0).unwrap();
    assert_eq!(s.vm_generation_counter(), None);
    assert_eq!(s.time_maxerror_ns(), Some(1_000));
}

#[test]
fn unknown_bounds_are_unknown() {
    let mut r = full_page();
    r.u64(0x18, flags::TIME_MAXERROR_VALID); // time error valid, period error not
    let s = Snapshot::from_bytes(&r.0).unwrap();
    let at_ref = s.time_at(1_000_000_000_000).unwrap();
    assert!(at_ref.maxerror().is_some(), "at C1 only the time term is needed");
    let later = s.time_at(1_000_000_000_001).unwrap();
    assert_eq!(later.maxerror(), None, "away from C1 the rate term is unknown");
    assert_eq!(later.esterror(), None);
    // Without TAI_OFFSET_VALID a TAI page gives no UTC, and says why.
    let err = s.utc_at(1_000_000_000_000).unwrap_err();
    assert_eq!(err, TimeError::NoTaiOffset { from: "TAI", to: "UTC" });
    assert!(err.to_string().contains("TAI_OFFSET_VALID"));
}

#[test]
fn validation_errors() {
    let mut r = full_page();
    r.u32(0x00, 0x12345678);
    assert_eq!(Snapshot::from_bytes(&r.0), Err(PageError::BadMagic { found: 0x12345678 }));
    let mut r = full_page();
    r.u16(0x08, 2);
    assert_eq!(Snapshot::from_bytes(&r.0), Err(PageError::UnsupportedVersion { found: 2 }));
    let mut r = full_page();
    r.u32(0x04, 0x1f);
    assert_eq!(Snapshot::from_bytes(&r.0), Err(PageError::TooSmall { size: 0x1f, min: 0x20 }));
    let r = full_page();
    // A size beyond the bytes available is accepted (the driver maps one kernel page of a
    // larger region); only the bytes up to `flags` must be there.
    assert_eq!(Snapshot::from_bytes(&r.0[..2048]).map(|s| (s.size(), s.present_size())), Ok((4096, 2048)));
    assert_eq!(Snapshot::from_bytes(&r.0[..0x60]).unwrap().time_maxerror_ns(), None, "beyond the bytes given");
    assert_eq!(Snapshot::from_bytes(&r.0[..0x1f]), Err(PageError::LargerThanMapping { size: 4096, mapped: 0x1f }));
    let mut r = full_page();
    r.u8(0x0a, abi::counter_id::INVALID);
    assert_eq!(Snapshot::from_bytes(&r.0).unwrap().reference(), Err(TimeError::NoCounter));
    let mut r = full_page();
    r.u8(0x0b, abi::time_type::INVALID_SMEARED);
    assert_eq!(Snapshot::from_bytes(&r.0).unwrap().reference(), Err(TimeError::UnsupportedTimeType(3)));
    let mut r = full_page();
    r.u8(0x27, 200);
    assert_eq!(Snapshot::from_bytes(&r.0).unwrap().reference(), Err(TimeError::UnusableShift(200)));
    let mut r = full_page();
    r.u64(0x48, u64::MAX);
    r.u8(0x27, 0);
    let s = Snapshot::from_bytes(&r.0).unwrap();
    assert_eq!(s.time_at(u64::MAX / 2).unwrap_err(), TimeError::Overflow);
}

#[test]
fn utc_page_to_tai() {
    let page = PageBuilder::new()
        .reference(
            abi::counter_id::X86_TSC,
            0,
            Timestamp::<Utc>::from_parts(1_795_000_000, 0),
            Period::from_hz(1_000_000_000).unwrap(),
        )
        .tai_minus_utc(37)
        .build();
    let s = Snapshot::new(page, 4096).unwrap();
    assert_eq!(s.tai_at(0).unwrap().time, Timestamp::<Tai>::from_parts(1_795_000_037, 0));
    let s = Snapshot::new(
        PageBuilder::new()
            .reference(abi::counter_id::X86_TSC, 0, Timestamp::<Utc>::from_parts(5, 0), Period::from_hz(2).unwrap())
            .build(),
        4096,
    )
    .unwrap();
    assert_eq!(s.tai_at(0).unwrap_err(), TimeError::NoTaiOffset { from: "UTC", to: "TAI" });
}

/// The sign of `tai_offset_sec`: the driver and spec v1.1 store UTC − TAI (−37); a positive
/// value is the legacy TAI − UTC (the RFC host, older vmtime pages). Both read as TAI − UTC = 37.
#[test]
fn tai_offset_sign_driver_and_legacy() {
    let page = |raw: Option<i16>, ts: u8| {
        let mut r = full_page();
        r.u8(0x0b, ts);
        match raw {
            Some(v) => r.u16(0x24, v as u16),
            None => r.u64(0x18, 0x3ff & !flags::TAI_OFFSET_VALID),
        };
        Snapshot::from_bytes(&r.0).unwrap()
    };
    let c = 1_000_000_000_000;
    for ts in [abi::time_type::TAI, abi::time_type::UTC] {
        let driver = page(Some(-37), ts);
        let legacy = page(Some(37), ts);
        assert_eq!((driver.tai_offset_raw(), driver.tai_minus_utc()), (Some(-37), Some(37)));
        assert_eq!((legacy.tai_offset_raw(), legacy.tai_minus_utc()), (Some(37), Some(37)));
        assert!(!driver.tai_offset_is_legacy() && legacy.tai_offset_is_legacy());
        assert_eq!(driver.tai_at(c), legacy.tai_at(c));
        assert_eq!(driver.utc_at(c), legacy.utc_at(c));
    }
    // The driver's arithmetic on a TAI page: UTC = TAI + tai_offset_sec (6.13–6.19 driver).
    let tai_page = page(Some(-37), abi::time_type::TAI);
    assert_eq!(tai_page.utc_at(c).unwrap().time, Timestamp::<Utc>::from_parts(1_795_000_000, 1 << 63));
    // ... and on a UTC page: TAI = UTC − tai_offset_sec (the TAI-returning driver).
    let utc_page = page(Some(-37), abi::time_type::UTC);
    assert_eq!(utc_page.tai_at(c).unwrap().time, Timestamp::<Tai>::from_parts(1_795_000_074, 1 << 63));
    assert_eq!(page(Some(0), abi::time_type::TAI).tai_minus_utc(), Some(0));
    assert_eq!(page(Some(i16::MIN), abi::time_type::TAI).tai_minus_utc(), None, "no positive counterpart");
    let invalid = page(None, abi::time_type::TAI);
    assert_eq!(invalid.tai_minus_utc(), None);
    assert!(!invalid.tai_offset_is_legacy());
    // The builder stores the negation; tai_offset_raw stores as given.
    let b = |f: fn(PageBuilder) -> PageBuilder| Snapshot::new(f(PageBuilder::new()).build(), 4096).unwrap();
    assert_eq!(b(|p| p.tai_minus_utc(37)).tai_offset_raw(), Some(-37));
    assert_eq!(b(|p| p.tai_offset_raw(37)).tai_offset_raw(), Some(37));
}

/// An arm64 guest with 64 KiB pages: the region and its `size` are 65536 bytes. The Linux driver
/// accepts any size up to the region and maps one kernel page; so does vmtime (it used to refuse
/// a size above 4096 or above what it mapped).
#[test]
fn a_64k_page_is_read() {
    use vmclock::{Clock, PageBuf, Writer};
    let abi = PageBuilder::new()
        .size(65_536)
        .reference(
            vmclock::counter::NATIVE,
            1_000,
            Timestamp::<Tai>::from_parts(1_795_000_037, 0),
            Period::from_hz(1_000_000_000).unwrap(),
        )
        .tai_minus_utc(37)
        .maxerror(500, 1)
        .build();
    // In memory: a 64 KiB region.
    let buf = PageBuf::with_available(65_536);
    Writer::new(&buf).publish(&abi);
    let s = vmclock::seqlock::read(&buf, vmclock::seqlock::DEFAULT_MAX_WAIT).unwrap();
    assert_eq!((s.size(), s.present_size()), (65_536, 65_536));
    assert_eq!(s.tai_at(1_000).unwrap().maxerror_ns(), Some(501));
    if vmclock::counter::NATIVE != abi::counter_id::INVALID {
        let n = Clock::new(&buf).now_with_counter(|| 2_000).unwrap();
        assert_eq!(n.tai().unwrap().time.subsec_nanos() / 10, 99, "1000 ticks after the reference");
    }
    // In a file: a 64 KiB page file, mapped as one system page.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page64k");
    let mut bytes = vec![0u8; 65_536];
    bytes[..abi::ABI_SIZE].copy_from_slice(zerocopy::IntoBytes::as_bytes(&abi));
    std::fs::write(&path, &bytes).unwrap();
    let m = vmclock::Mapping::open(&path).unwrap();
    let page = vmclock::map::system_page_size();
    assert_eq!(vmclock::seqlock::PageMemory::available(&m), page.min(65_536));
    let s = vmclock::seqlock::read(&m, vmclock::seqlock::DEFAULT_MAX_WAIT).unwrap();
    assert_eq!(s.size(), 65_536);
    assert_eq!(s.tai_minus_utc(), Some(37));
    assert!(s.reference().is_ok());
}

/// Golden pages with a leap second between the reference and the reading (spec: "a correct
/// implementation will need to cope with the case where a leap second has occurred since the
/// reference time T₁"). The leap of 2016-12-31: TAI − UTC went from 36 to 37 at 2017-01-01.
/// The counter ticks 2^30 times a second, so every time below is exact.
#[test]
fn leap_after_the_reference() {
    const HZ: u64 = 1 << 30;
    const M: u64 = 1_483_228_800; // 2017-01-01T00:00:00Z
    let sec = |s: f64| (s * HZ as f64) as u64;
    let utc = |t: Timestamp<Utc>| (t.sec(), t.subsec_nanos());
    let page = |tai_page: bool, t1_utc: u64, off: i16, leap: u8| {
        let b = PageBuilder::new();
        let b = if tai_page {
            b.reference(
                vmclock::counter::NATIVE,
                0,
                Timestamp::<Tai>::from_parts(t1_utc + off as u64, 0),
                Period::from_hz(HZ).unwrap(),
            )
        } else {
            b.reference(
                vmclock::counter::NATIVE,
                0,
                Timestamp::<Utc>::from_parts(t1_utc, 0),
                Period::from_hz(HZ).unwrap(),
            )
        };
        Snapshot::new(b.tai_minus_utc(off).leap(leap).maxerror(0, 0).build(), 4096).unwrap()
    };
    for tai_page in [true, false] {
        // T1 = 2016-12-31T23:59:50Z, an insertion announced for the end of the month.
        let s = page(tai_page, M - 10, 36, abi::leap::PRE_POS);
        assert_eq!(utc(s.utc_at(sec(5.0)).unwrap().time), (M - 5, 0), "before the leap");
        assert_eq!(utc(s.utc_at(sec(9.5)).unwrap().time), (M - 1, 500_000_000), "23:59:59.5");
        assert_eq!(
            utc(s.utc_at(sec(10.5)).unwrap().time),
            (M - 1, 500_000_000),
            "23:59:60.5 shows as 23:59:59.5, as the kernel"
        );
        assert_eq!(utc(s.utc_at(sec(11.0)).unwrap().time), (M, 0), "midnight after the leap (it was 1 s late)");
        assert_eq!(utc(s.utc_at(sec(20.0)).unwrap().time), (M + 9, 0));
        // TAI is continuous: the page's time plus the offset at the reference.
        assert_eq!(s.tai_at(sec(20.0)).unwrap().time, Timestamp::<Tai>::from_parts(M + 10 + 36, 0));
        // The fast path agrees.
        if vmclock::counter::NATIVE != abi::counter_id::INVALID {
            let n = vmclock::now_at(&s, sec(20.0)).unwrap();
            assert_eq!(utc(n.utc().unwrap().time), (M + 9, 0));
            let buf = vmclock::PageBuf::new();
            vmclock::Writer::new(&buf).publish(s.raw());
            let n = vmclock::Clock::new(&buf).now_with_counter(|| sec(20.0)).unwrap();
            assert_eq!(utc(n.utc().unwrap().time), (M + 9, 0));
            assert_eq!(n.tai().unwrap().time, Timestamp::<Tai>::from_parts(M + 46, 0));
        }
        // A deletion: 23:59:59 is skipped.
        let s = page(tai_page, M - 10, 36, abi::leap::PRE_NEG);
        assert_eq!(utc(s.utc_at(sec(8.5)).unwrap().time), (M - 2, 500_000_000));
        assert_eq!(utc(s.utc_at(sec(9.0)).unwrap().time), (M, 0));
        assert_eq!(utc(s.utc_at(sec(15.0)).unwrap().time), (M + 6, 0));
        // A reference just after the leap (POST_POS, offset already 37) read at a counter before
        // it: the leap is undone (vmtime reads counters before the reference; the driver does not).
        let s = page(tai_page, M + 10, 37, abi::leap::POST_POS);
        assert_eq!(utc(s.utc_at(0u64.wrapping_sub(sec(15.0))).unwrap().time), (M - 4, 0));
        assert_eq!(utc(s.utc_at(sec(1.0)).unwrap().time), (M + 11, 0));
        // No leap indicated: no correction, whatever the month.
        let s = page(tai_page, M - 10, 36, abi::leap::NONE);
        assert_eq!(utc(s.utc_at(sec(20.0)).unwrap().time), (M + 10, 0));
        assert_eq!(s.leap_edge(), None);
    }
}

/// Found by the fuzzer: a page whose reference lies at the far end of i64's seconds, with a leap
/// announced, made the leap edge's seconds overflow (a panic in a debug build). No edge exists
/// there; the reads answer without panicking.
#[test]
fn a_leap_edge_beyond_the_calendar_is_no_panic() {
    let data: [u8; 96] = [
        255, 255, 0, 0, 0, 0, 0, 0, 86, 67, 76, 75, 247, 255, 255, 137, 1, 0, 0, 0, 12, 255, 75, 86, 67, 75, 247, 255,
        255, 19, 19, 19, 19, 19, 0, 0, 0, 243, 255, 63, 75, 86, 67, 75, 247, 255, 255, 19, 19, 19, 19, 19, 19, 19, 75,
        247, 255, 255, 19, 19, 19, 19, 19, 19, 19, 19, 19, 19, 255, 255, 143, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        255, 255, 255, 255, 255, 127, 255, 255, 255, 19, 19, 67, 76, 75,
    ];
    let counter = u64::from_le_bytes(data[..8].try_into().unwrap());
    let s = Snapshot::from_bytes(&data[8..]).expect("the fuzzer's page validates");
    assert!(s.reference().is_ok(), "the page has a usable reference, so the leap edge is computed");
    let _ = s.utc_at(counter).map(|b| (b.earliest(), b.latest()));
    let _ = s.tai_at(counter).map(|b| (b.earliest(), b.latest()));
}
