//! libvmclock against the conformance vectors (testdata/vectors.json, docs/PROTOCOL.md): every
//! case through the C function `vmclock_read_page`, its error text through `vmclock_strerror`.
use serde_json::Value;
use std::ffi::CStr;
use vmclock::{vmclock_now, vmclock_page_time, vmclock_read_page, vmclock_strerror, VMCLOCK_NOW_BOUNDED};

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

#[test]
fn the_c_api_agrees_with_every_vector() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = v.as_array().unwrap();
    assert!(cases.len() >= 200);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let page = base64_decode(c["page_b64"].as_str().unwrap());
        let counter = c["counter"].as_u64().unwrap();
        let mut out = vmclock_now::default();
        let mut t = vmclock_page_time::default();
        // SAFETY: `page` is valid for its length; `out` and `t` are local structs.
        let rc = unsafe { vmclock_read_page(page.as_ptr(), page.len(), counter, &mut out, &mut t) };
        let got = if rc != 0 {
            // SAFETY: vmclock_strerror returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(vmclock_strerror(rc)) }.to_str().unwrap();
            serde_json::json!({"error": text, "timescale": null, "time_ns": null, "earliest_ns": null,
                "latest_ns": null, "status": null, "tai_minus_utc": null})
        } else {
            let bounded = out.flags & VMCLOCK_NOW_BOUNDED != 0;
            serde_json::json!({
                "error": null,
                "timescale": (["UTC", "TAI", "MONOTONIC"][t.time_type as usize]),
                "time_ns": t.sec * 1_000_000_000 + u64::from(t.nsec),
                "earliest_ns": bounded.then_some(out.earliest_ns),
                "latest_ns": bounded.then_some(out.latest_ns),
                "status": out.status,
                "tai_minus_utc": (out.flags & vmclock::VMCLOCK_NOW_TAI_VALID != 0).then_some(out.tai_minus_utc),
            })
        };
        assert_eq!(&got, &c["expect"], "{name}");
    }
}
