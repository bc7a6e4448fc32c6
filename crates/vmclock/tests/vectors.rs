//! The conformance vectors (testdata/vectors.json, docs/PROTOCOL.md):
//! * the committed file is exactly what the generator (examples/vectors) writes, so every
//!   expectation comes from its big-integer reference (examples/vectors/reference.rs), which
//!   shares no code with the library;
//! * the reference agrees with figures worked out by hand;
//! * the library agrees with every case, on both of its paths: `realtime::reading_at` (the
//!   snapshot's math) and `Clock::now_with_counter` (the mapped page's read path), each turned
//!   into a `realtime::Reading`.
#![cfg(not(loom))]

#[path = "../examples/vectors/cases.rs"]
#[allow(dead_code)]
mod cases;
#[path = "../examples/vectors/reference.rs"]
#[allow(dead_code)]
mod reference;

use serde_json::Value;
use std::path::PathBuf;
use vmclock::realtime::{reading_at, Code, Reading};
use vmclock::{Clock, PageBuf};

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors.json")
}

#[test]
fn the_committed_file_is_what_the_generator_writes() {
    let committed = std::fs::read_to_string(vectors_path()).expect("testdata/vectors.json");
    let generated = cases::render(&cases::all());
    assert!(
        committed == generated,
        "testdata/vectors.json is stale: run `cargo run -p vmclock --example vectors` and commit it"
    );
}

/// Figures worked out by hand from docs/PROTOCOL.md, against the reference.
#[test]
fn the_reference_agrees_with_hand_worked_figures() {
    let all = cases::all();
    let case = |name: &str| all.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name}"));
    let ok = |name: &str| match reference::evaluate(&case(name).page, case(name).counter) {
        reference::Outcome::Ok(e) => e,
        reference::Outcome::Err(x) => panic!("{name}: {x}"),
    };
    // TAI 1_795_000_037 s at the reference; UTC is 37 s less; maxerror 1000 ns plus two 2^-64 s
    // units (the time term's formula) makes the ns bounds 1001 ns either side, rounded outwards.
    let e = ok("counter/tai/at-reference");
    assert_eq!(e.time_ns, 1_795_000_037_000_000_000u64.into());
    assert_eq!(e.earliest_ns, Some(1_794_999_999_999_998_999u64.into()));
    assert_eq!(e.latest_ns, Some(1_795_000_000_000_001_001u64.into()));
    assert_eq!((e.timescale, e.status, e.tai_minus_utc), ("TAI", 2, Some(37)));
    // The legacy sign (+37) reads the same offset.
    assert_eq!(ok("tai-offset/tai/stored+37").tai_minus_utc, Some(37));
    // A 2^30 Hz counter one tick before the end of 2026 on a UTC page announcing an inserted
    // second: 1_798_761_599.999999999 s (2^-30 s before the edge, floored); at the edge the
    // time repeats 23:59:59 (1_798_761_599 s): the bounds move back one second.
    let before = ok("leap/1/utc/ref-before-edge/one-tick-before");
    assert_eq!(before.time_ns, 1_798_761_599_999_999_999u64.into());
    let at = ok("leap/1/utc/ref-before-edge/at-edge");
    assert_eq!(at.time_ns, 1_798_761_600_000_000_000u64.into(), "the page's own time does not repeat");
    assert!(at.latest_ns.unwrap() < 1_798_761_600_000_000_000u64.into());
    // Refusals.
    let err = |name: &str| match reference::evaluate(&case(name).page, case(name).counter) {
        reference::Outcome::Err(x) => x,
        reference::Outcome::Ok(e) => panic!("{name}: {e:?}"),
    };
    assert_eq!(err("invalid/magic-zero"), "VMCLOCK_E_INVALID");
    assert_eq!(err("invalid/monotonic-no-utc"), "VMCLOCK_E_NO_UTC");
    assert_eq!(err("size/size-0x57-no-time"), "VMCLOCK_E_NO_TIME");
    assert_eq!(err("extreme/one-ns-past-i64"), "VMCLOCK_E_OVERFLOW");
    assert!(ok("extreme/last-ns-of-i64-unbounded").earliest_ns.is_none());
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().filter(|&&c| c != b'=').count();
        let v = chunk.iter().take(n).fold(0u32, |v, &c| v << 6 | u32::from(val(c))) << (6 * (4 - n));
        out.extend_from_slice(&v.to_be_bytes()[1..n]);
    }
    out
}

/// One vector as the library must give it: the expectation's fields from a reading or an error.
fn actual(r: Result<Reading, Code>) -> Value {
    match r {
        Err(code) => serde_json::json!({"error": code.text(), "timescale": null, "time_ns": null,
            "earliest_ns": null, "latest_ns": null, "status": null, "tai_minus_utc": null}),
        Ok(r) => serde_json::json!({
            "error": null,
            "timescale": (["UTC", "TAI", "MONOTONIC"][r.time_type as usize]),
            "time_ns": u64::try_from(r.page_time_ns).expect("fits the vectors"),
            "earliest_ns": r.earliest_ns,
            "latest_ns": r.latest_ns,
            "status": r.status,
            "tai_minus_utc": r.tai_minus_utc,
        }),
    }
}

/// (name, page, counter, expect).
type Vector = (String, Vec<u8>, u64, Value);

fn load() -> Vec<Vector> {
    let text = std::fs::read_to_string(vectors_path()).expect("testdata/vectors.json");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                base64_decode(c["page_b64"].as_str().unwrap()),
                c["counter"].as_u64().unwrap(),
                c["expect"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_vectors_cover_what_they_promise() {
    let v = load();
    assert!(v.len() >= 200, "{} cases", v.len());
    let mut names = std::collections::HashSet::new();
    for (name, ..) in &v {
        assert!(names.insert(name.clone()), "{name} twice");
    }
    let has = |f: &dyn Fn(&Vector) -> bool| v.iter().any(f);
    assert!(has(&|c| c.3["timescale"] == "UTC") && has(&|c| c.3["timescale"] == "TAI"));
    assert!(has(&|c| c.2 == 0) && has(&|c| c.2 == u64::MAX));
    assert!(has(&|c| c.1.len() > 4096));
    // Every error the evaluation can give.
    for code in [Code::Invalid, Code::NoTime, Code::NoUtc, Code::Overflow] {
        assert!(has(&|c| c.3["error"] == code.text()), "{code:?}");
    }
}

#[test]
fn the_snapshot_path_agrees_with_every_vector() {
    for (name, page, counter, expect) in load() {
        assert_eq!(actual(reading_at(&page, counter)), expect, "{name}");
    }
}

#[test]
fn the_clock_read_path_agrees_with_every_vector() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    for (name, mut page, counter, expect) in load() {
        // The read path checks the page's counter against this CPU's, and waits on an odd
        // seq_count: a vector is a consistent copy of a page of the reading's own counter.
        if page.len() > 0x0c + 4 {
            page[0x0c..0x10].copy_from_slice(&[0; 4]);
        }
        if page.len() > 0x0a && page[0x0a] != vmclock::abi::counter_id::INVALID {
            page[0x0a] = vmclock::counter::NATIVE;
        }
        let buf = PageBuf::with_available(page.len());
        buf.store_bytes(&page);
        let clock = Clock::new(&buf);
        let got =
            clock.now_with_counter(|| counter).map_err(|e| Code::of_clock(&e)).and_then(|n| Reading::from_now(&n));
        assert_eq!(actual(got), expect, "{name}");
        // The second read takes the checked fast path.
        let got =
            clock.now_with_counter(|| counter).map_err(|e| Code::of_clock(&e)).and_then(|n| Reading::from_now(&n));
        assert_eq!(actual(got), expect, "{name} (fast path)");
    }
}
