//! The conformance vectors' cases (pages written byte by byte here, not by the library's
//! builder, so that invalid pages are as easy as valid ones) and their JSON rendering.
use super::reference::{evaluate, Outcome};

/// One case: a page (all its bytes available) read at a counter value.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub page: Vec<u8>,
    pub counter: u64,
}

// Byte offsets (docs/PROTOCOL.md).
const SIZE: usize = 0x04;
const VERSION: usize = 0x08;
const COUNTER_ID: usize = 0x0a;
const TIME_TYPE: usize = 0x0b;
const MARKER: usize = 0x10;
const FLAGS: usize = 0x18;
const STATUS: usize = 0x22;
const TAI: usize = 0x24;
const LEAP: usize = 0x26;
const SHIFT: usize = 0x27;
const C1: usize = 0x28;
const PERIOD: usize = 0x30;
const PERIOD_EST: usize = 0x38;
const PERIOD_MAX: usize = 0x40;
const SEC: usize = 0x48;
const FRAC: usize = 0x50;
const EST: usize = 0x58;
const MAX: usize = 0x60;

const TAI_OFFSET_VALID: u64 = 1 << 0;
const PERIOD_MAXERROR_VALID: u64 = 1 << 4;
const TIME_MAXERROR_VALID: u64 = 1 << 6;

const UTC_T: u8 = 0;
const TAI_T: u8 = 1;

/// The reference counter value of the base page.
const BASE_C1: u64 = 1_000_000_000_000;
/// 2026-11-18T00:00:00Z.
const BASE_UTC: u64 = 1_795_000_000;
/// A 1 GHz counter (the specification's example: 0x89705F4136B4A597 · 2^-(64 + 29) s).
const GHZ: (u64, u8) = (0x8970_5F41_36B4_A597, 29);
/// A 2^30 Hz counter: exactly 2^-30 s a tick (2^34 · 2^-64 s).
const POW2_HZ: (u64, u8) = (1 << 34, 0);

#[derive(Clone)]
struct Page(Vec<u8>);

impl Page {
    /// A SYNCHRONIZED TAI page of 112 bytes (its `size` says 4096: a page file cut after the
    /// structure), TAI − UTC 37 stored as −37, a 1 GHz counter, maxerror 1 µs + 100 · 2^-93 s a
    /// tick, esterror 100 ns + 10 · 2^-93 s a tick.
    fn base() -> Page {
        let mut p = Page(vec![0; 112]);
        p.put(0, 4, 0x4b4c_4356);
        p.put(SIZE, 4, 4096);
        p.put(VERSION, 2, 1);
        p.put(COUNTER_ID, 1, 1); // x86 TSC
        p.put(TIME_TYPE, 1, TAI_T as u64);
        p.put(0x0c, 4, 2);
        p.put(MARKER, 8, 7);
        p.put(FLAGS, 8, 0b1111_1001); // TAI offset, both errors (time and period), TIME_MONOTONIC
        p.put(STATUS, 1, 2);
        p.put(TAI, 2, (-37i16) as u16 as u64);
        p.put(SHIFT, 1, GHZ.1 as u64);
        p.put(C1, 8, BASE_C1);
        p.put(PERIOD, 8, GHZ.0);
        p.put(PERIOD_EST, 8, 10);
        p.put(PERIOD_MAX, 8, 100);
        p.put(SEC, 8, BASE_UTC + 37);
        p.put(EST, 8, 100);
        p.put(MAX, 8, 1_000);
        p
    }
    fn put(&mut self, off: usize, n: usize, v: u64) {
        for i in 0..n {
            if off + i < self.0.len() {
                self.0[off + i] = (v >> (8 * i)) as u8;
            }
        }
    }
    fn set(mut self, off: usize, n: usize, v: u64) -> Page {
        self.put(off, n, v);
        self
    }
    fn flag(self, bit: u64, on: bool) -> Page {
        let f = u64::from_le_bytes(self.0[FLAGS..FLAGS + 8].try_into().unwrap());
        self.set(FLAGS, 8, if on { f | bit } else { f & !bit })
    }
    /// The same page as a UTC page (the reference time moved to UTC).
    fn utc(self) -> Page {
        let sec = u64::from_le_bytes(self.0[SEC..SEC + 8].try_into().unwrap());
        self.set(TIME_TYPE, 1, UTC_T as u64).set(SEC, 8, sec - 37)
    }
    fn period(self, (p, shift): (u64, u8)) -> Page {
        self.set(PERIOD, 8, p).set(SHIFT, 1, shift as u64)
    }
    fn len(mut self, n: usize) -> Page {
        self.0.resize(n, 0);
        self
    }
}

/// A deterministic generator (splitmix64) for the random cases.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every case, in a fixed order.
pub fn all() -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name: String, p: Page, counter: u64| out.push(Case { name, page: p.0, counter });

    // Counters: at, after and before the reference, at 0 and 2^64 − 1, half the counter's range
    // either way, and across the counter's wrap.
    let sec = 1_000_000_000u64;
    for (scale, page) in [("tai", Page::base()), ("utc", Page::base().utc())] {
        let counters = [
            ("at-reference", BASE_C1),
            ("one-tick-after", BASE_C1 + 1),
            ("one-second-after", BASE_C1 + sec),
            ("one-hour-after", BASE_C1 + 3_600 * sec),
            ("one-tick-before", BASE_C1 - 1),
            ("one-second-before", BASE_C1 - sec),
            ("zero", 0),
            ("max", u64::MAX),
            ("half-range-after", BASE_C1.wrapping_add(i64::MAX as u64)),
            ("half-range-before", BASE_C1.wrapping_add(1 << 63)),
            ("half-range-before-plus-one", BASE_C1.wrapping_sub(i64::MAX as u64)),
        ];
        for (name, c) in counters {
            add(format!("counter/{scale}/{name}"), page.clone(), c);
        }
        add(format!("counter/{scale}/wrap-forward"), page.clone().set(C1, 8, u64::MAX - 10), 5);
        add(format!("counter/{scale}/wrap-backward"), page.clone().set(C1, 8, 5), u64::MAX - 10);
    }

    // The TAI offset field: UTC − TAI (−37) is canonical; a positive value is the legacy
    // TAI − UTC; i16::MIN has no positive counterpart; the flag clear means no offset.
    for (scale, page) in [("tai", Page::base()), ("utc", Page::base().utc())] {
        for raw in [-37i16, 37, 0, -1, 1, -32_767, 32_767, i16::MIN] {
            add(
                format!("tai-offset/{scale}/stored{raw:+}"),
                page.clone().set(TAI, 2, raw as u16 as u64),
                BASE_C1 + sec,
            );
        }
        add(format!("tai-offset/{scale}/flag-clear"), page.clone().flag(TAI_OFFSET_VALID, false), BASE_C1 + sec);
    }

    // Leap indicators (0–5, and 6, which the ABI does not define) with the reference an hour
    // before or after the end of 2026 (a month end), the counter on either side of the edge.
    let edge = vmclock::time::days_from_civil(2027, 1, 1) as u64 * 86_400;
    let tick = 1u64 << 30; // a second of the 2^30 Hz counter
    for indicator in 0u8..=6 {
        for (when, ref_utc) in [("ref-before-edge", edge - 3_600), ("ref-after-edge", edge + 3_600)] {
            for (scale, off) in [("utc", 0u64), ("tai", 37)] {
                let p = Page::base()
                    .period(POW2_HZ)
                    .set(TIME_TYPE, 1, if off == 0 { UTC_T } else { TAI_T } as u64)
                    .set(SEC, 8, ref_utc + off)
                    .set(LEAP, 1, indicator as u64);
                // The counter value at UTC edge + `d` ticks on the page's linear scale.
                let at = |d: i64| BASE_C1.wrapping_add(((edge as i64 - ref_utc as i64) * tick as i64 + d) as u64);
                let positions = [
                    ("one-second-before", -(tick as i64)),
                    ("one-tick-before", -1),
                    ("at-edge", 0),
                    ("half-second-after", tick as i64 / 2),
                    ("one-second-after", tick as i64),
                ];
                for (pos, d) in positions {
                    add(format!("leap/{indicator}/{scale}/{when}/{pos}"), p.clone(), at(d));
                }
            }
        }
    }

    // Shifts and periods, with the counter an hour (3.6e12 ticks) after and before the
    // reference.
    let periods: [(&str, u64, u8); 12] = [
        ("shift-0-period-1", 1, 0),
        ("shift-0-period-max", u64::MAX, 0),
        ("shift-1-period-max", u64::MAX, 1),
        ("shift-27-1ghz", GHZ.0 >> 2, 27),
        ("shift-32", GHZ.0, 32),
        ("shift-63-period-max", u64::MAX, 63),
        ("shift-64-period-half", 1 << 63, 64),
        ("shift-65-period-max", u64::MAX, 65),
        ("shift-96-period-max", u64::MAX, 96),
        ("shift-127-period-max", u64::MAX, 127),
        ("shift-0-period-0", 0, 0),
        ("shift-127-period-1", 1, 127),
    ];
    for (name, p, shift) in periods {
        for (dir, c) in [("after", BASE_C1 + 3_600_000_000_000), ("before", BASE_C1 - 3_600_000_000)] {
            add(format!("period/{name}/{dir}"), Page::base().period((p, shift)), c);
        }
    }
    for shift in [128u8, 200, 255] {
        add(format!("period/shift-{shift}-refused"), Page::base().set(SHIFT, 1, shift as u64), BASE_C1);
    }

    // Extreme times: the epoch, the end of signed 64-bit nanoseconds, the end of u64 seconds.
    // i64::MAX ns = 9_223_372_036.854775807 s; the fraction of .854775807 s, rounded down and up.
    let frac_of = |ns: u64| ((ns as u128) << 64).div_ceil(1_000_000_000) as u64;
    let last_sec = 9_223_372_036u64;
    let last_frac = frac_of(854_775_807);
    let extremes: [(&str, Page, u64); 12] = [
        ("epoch-utc", Page::base().utc().set(SEC, 8, 0), BASE_C1),
        ("epoch-utc-before-reference", Page::base().utc().set(SEC, 8, 0), BASE_C1 - 1),
        ("tai-before-epoch-after-offset", Page::base().set(SEC, 8, 10), BASE_C1),
        (
            "last-ns-of-i64-unbounded",
            Page::base().utc().set(SEC, 8, last_sec).set(FRAC, 8, last_frac).flag(TIME_MAXERROR_VALID, false),
            BASE_C1,
        ),
        ("last-ns-of-i64-bounded", Page::base().utc().set(SEC, 8, last_sec).set(FRAC, 8, last_frac), BASE_C1),
        (
            "one-ns-past-i64",
            Page::base()
                .utc()
                .set(SEC, 8, last_sec)
                .set(FRAC, 8, frac_of(854_775_808))
                .flag(TIME_MAXERROR_VALID, false),
            BASE_C1,
        ),
        (
            "tai-last-ns-of-i64",
            Page::base().set(SEC, 8, last_sec + 37).set(FRAC, 8, last_frac).flag(TIME_MAXERROR_VALID, false),
            BASE_C1,
        ),
        ("max-seconds", Page::base().utc().set(SEC, 8, u64::MAX).set(FRAC, 8, u64::MAX), BASE_C1),
        ("max-seconds-past-2^128", Page::base().utc().set(SEC, 8, u64::MAX).set(FRAC, 8, u64::MAX), BASE_C1 + 1),
        ("maxerror-max-ns", Page::base().set(MAX, 8, u64::MAX), BASE_C1),
        ("maxerror-ns-just-fits", Page::base().set(MAX, 8, 9_000_000_000_000_000_000).set(SEC, 8, 37), BASE_C1),
        (
            "maxerror-rate-max",
            Page::base().set(PERIOD_MAX, 8, u64::MAX).period((u64::MAX, 0)),
            BASE_C1.wrapping_add(i64::MAX as u64),
        ),
    ];
    for (name, p, c) in extremes {
        add(format!("extreme/{name}"), p, c);
    }

    // Sizes: the `size` field and the bytes given.
    let sizes: [(&str, Page); 20] = [
        ("size-4096", Page::base()),
        ("size-8192", Page::base().set(SIZE, 4, 8192)),
        ("size-65536", Page::base().set(SIZE, 4, 65_536)),
        ("size-max", Page::base().set(SIZE, 4, u32::MAX as u64)),
        ("size-112", Page::base().set(SIZE, 4, 112)),
        ("size-0x68-no-generation", Page::base().set(SIZE, 4, 0x68)),
        ("size-0x60-no-maxerror", Page::base().set(SIZE, 4, 0x60)),
        ("size-0x58-no-errors", Page::base().set(SIZE, 4, 0x58)),
        ("size-0x57-no-time", Page::base().set(SIZE, 4, 0x57)),
        ("size-0x20-minimum", Page::base().set(SIZE, 4, 0x20)),
        ("size-0x1f-refused", Page::base().set(SIZE, 4, 0x1f)),
        ("size-0-refused", Page::base().set(SIZE, 4, 0)),
        ("bytes-4096-size-4096", Page::base().len(4096)),
        ("bytes-8192-size-8192", Page::base().set(SIZE, 4, 8192).len(8192)),
        ("bytes-96-no-maxerror", Page::base().len(0x60)),
        ("bytes-87-no-time", Page::base().len(0x57)),
        ("bytes-32-minimum", Page::base().len(0x20)),
        ("bytes-31-refused", Page::base().len(0x1f)),
        ("bytes-4-refused", Page::base().len(4)),
        ("bytes-0-refused", Page::base().len(0)),
    ];
    for (name, p) in sizes {
        add(format!("size/{name}"), p, BASE_C1 + sec);
    }

    // Every page the library refuses, and near misses it accepts.
    let invalid: [(&str, Page); 17] = [
        ("magic-zero", Page::base().set(0, 4, 0)),
        ("magic-byte-swapped", Page::base().set(0, 4, 0x5643_4c4b)),
        ("magic-one-bit", Page::base().set(0, 4, 0x4b4c_4357)),
        ("version-0", Page::base().set(VERSION, 2, 0)),
        ("version-2", Page::base().set(VERSION, 2, 2)),
        ("version-max", Page::base().set(VERSION, 2, 0xffff)),
        ("counter-invalid", Page::base().set(COUNTER_ID, 1, 0xff)),
        ("counter-arm-vcnt-accepted", Page::base().set(COUNTER_ID, 1, 0)),
        ("counter-unknown-7-accepted", Page::base().set(COUNTER_ID, 1, 7)),
        ("time-type-smeared", Page::base().set(TIME_TYPE, 1, 3)),
        ("time-type-maybe-smeared", Page::base().set(TIME_TYPE, 1, 4)),
        ("time-type-255", Page::base().set(TIME_TYPE, 1, 255)),
        ("time-type-smeared-before-shift", Page::base().set(TIME_TYPE, 1, 3).set(SHIFT, 1, 128)),
        ("monotonic-no-utc", Page::base().set(TIME_TYPE, 1, 2)),
        ("tai-without-offset-no-utc", Page::base().flag(TAI_OFFSET_VALID, false)),
        ("utc-without-offset-accepted", Page::base().utc().flag(TAI_OFFSET_VALID, false)),
        ("all-ones", Page(vec![0xff; 112])),
    ];
    for (name, p) in invalid {
        add(format!("invalid/{name}"), p, BASE_C1 + sec);
    }

    // The error terms' flags, and a zero error.
    let bounds: [(&str, Page, u64); 7] = [
        ("maxerror-flag-clear", Page::base().flag(TIME_MAXERROR_VALID, false), BASE_C1 + sec),
        ("period-maxerror-clear-at-reference", Page::base().flag(PERIOD_MAXERROR_VALID, false), BASE_C1),
        ("period-maxerror-clear-away", Page::base().flag(PERIOD_MAXERROR_VALID, false), BASE_C1 + 1),
        ("zero-error-at-reference", Page::base().set(MAX, 8, 0).set(PERIOD_MAX, 8, 0), BASE_C1),
        ("zero-error-away", Page::base().set(MAX, 8, 0).set(PERIOD_MAX, 8, 0), BASE_C1 + sec),
        ("one-second-maxerror", Page::base().set(MAX, 8, 1_000_000_000), BASE_C1 - sec),
        ("large-rate-error", Page::base().set(PERIOD_MAX, 8, 1 << 40), BASE_C1 + 3_600 * sec),
    ];
    for (name, p, c) in bounds {
        add(format!("bounds/{name}"), p, c);
    }

    // Every status the page may hold: the reading gives it as it is.
    for status in [0u64, 1, 2, 3, 4, 5, 255] {
        add(format!("status/{status}"), Page::base().set(STATUS, 1, status), BASE_C1 + sec);
    }

    // Random pages: realistic ones (a time near now, a counter near its reference) and wild ones
    // (every field random).
    let mut rng = Rng(0x766d_636c_6f63_6b21);
    for i in 0..40 {
        let utc = rng.below(2) == 0;
        let shift = 28 + rng.below(8) as u8;
        let c1 = rng.next();
        let p = Page::base()
            .set(SEC, 8, 1_700_000_000 + rng.below(200_000_000))
            .set(FRAC, 8, rng.next())
            .set(C1, 8, c1)
            .period((rng.next(), shift))
            .set(MAX, 8, rng.below(1_000_000))
            .set(PERIOD_MAX, 8, rng.below(1 << 20))
            .set(FLAGS, 8, rng.below(1 << 10))
            .set(TAI, 2, if rng.below(2) == 0 { (-37i16) as u16 as u64 } else { 37 })
            .set(LEAP, 1, rng.below(7))
            .set(STATUS, 1, rng.below(6))
            .set(TIME_TYPE, 1, if utc { UTC_T } else { TAI_T } as u64);
        let d = rng.below(1 << 41) as i64 - (1 << 40);
        add(format!("random/realistic-{i:02}"), p, c1.wrapping_add(d as u64));
    }
    for i in 0..20 {
        let mut p = Page::base();
        for off in (MARKER..112).step_by(8) {
            p.put(off, 8, rng.next());
        }
        p = p.set(TIME_TYPE, 1, rng.below(3)).set(SHIFT, 1, rng.below(128));
        add(format!("random/wild-{i:02}"), p, rng.next());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("null".into(), |v| v.to_string())
}

/// The text of a C error name.
fn text(name: &str) -> &'static str {
    vmclock::realtime::Code::ALL.into_iter().find(|c| c.name() == name).map(|c| c.text()).expect("a known code")
}

/// testdata/vectors.json: a JSON list, one case a line, every expectation from the reference.
pub fn render(cases: &[Case]) -> String {
    let mut s = String::from("[\n");
    for (i, c) in cases.iter().enumerate() {
        let expect = match evaluate(&c.page, c.counter) {
            Outcome::Err(name) => format!(
                "{{\"error\": {}, \"timescale\": null, \"time_ns\": null, \"earliest_ns\": null, \"latest_ns\": null, \"status\": null, \"tai_minus_utc\": null}}",
                serde_json::to_string(text(name)).unwrap()
            ),
            Outcome::Ok(e) => format!(
                "{{\"error\": null, \"timescale\": \"{}\", \"time_ns\": {}, \"earliest_ns\": {}, \"latest_ns\": {}, \"status\": {}, \"tai_minus_utc\": {}}}",
                e.timescale,
                e.time_ns,
                opt(&e.earliest_ns),
                opt(&e.latest_ns),
                e.status,
                opt(&e.tai_minus_utc)
            ),
        };
        s.push_str(&format!(
            "  {{\"name\": {}, \"page_b64\": \"{}\", \"counter\": {}, \"expect\": {}}}{}\n",
            serde_json::to_string(&c.name).unwrap(),
            base64(&c.page),
            c.counter,
            expect,
            if i + 1 == cases.len() { "" } else { "," }
        ));
    }
    s.push_str("]\n");
    s
}
