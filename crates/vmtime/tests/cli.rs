//! The `vmtime` binary end to end on page files in a temporary directory.
mod common;
use std::path::Path;
use std::process::{Command, Output};

fn vmtime(args: &[&str]) -> Output {
    Command::new(common::bin_for(args)).args(args).output().expect("run vmtime")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn gen(page: &Path, extra: &[&str]) {
    let mut args = vec!["gen", page.to_str().unwrap(), "--tai-offset", "37", "--calibrate-ms", "50"];
    args.extend_from_slice(extra);
    let out = vmtime(&args);
    assert!(out.status.success(), "gen failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn gen_then_check_passes_against_this_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen(&page, &["--maxerror-ns", "2000", "--period-maxerror-ppb", "1000"]);
    let r = json(&vmtime(&["check", page.to_str().unwrap(), "--samples", "2000", "--tolerance", "2000", "--json"]));
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["samples"], 2000);
    assert_eq!(r["scale"]["Tai"]["tai_minus_utc"], 37);
    assert!(r["error_ns"]["p50"].as_f64().unwrap().abs() < 2000.0, "{r}");
}

#[test]
fn check_fails_on_a_page_that_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    // A page one second ahead: counter 0 at a time far from now, evaluated with the TSC.
    gen(&page, &["--counter-hz", "1000000000", "--counter", "0", "--time-ns", "1000000000000000000"]);
    let out = vmtime(&["check", page.to_str().unwrap(), "--samples", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

#[test]
fn show_decodes_every_field_and_now_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen(&page, &["--maxerror-ns", "1000", "--vm-generation", "9", "--disruption-marker", "77", "--leap", "pre-pos"]);
    let r = json(&vmtime(&["show", page.to_str().unwrap(), "--json"]));
    assert_eq!(r["valid"], true);
    let f = &r["fields"];
    assert_eq!(f["magic"], 0x4b4c4356);
    // The page stores UTC − TAI (the driver's and spec v1.1's sign); show says both.
    assert_eq!(f["tai_offset_sec"], -37);
    assert_eq!(f["tai_minus_utc"], 37);
    assert_eq!(f["tai_offset_legacy"], false);
    assert_eq!(f["vm_generation_counter"], 9);
    assert_eq!(f["disruption_marker"], 77);
    assert_eq!(f["leap_indicator"]["name"], "PRE_POS");
    assert_eq!(f["clock_status"]["name"], "SYNCHRONIZED");
    assert!(f["flag_names"].as_array().unwrap().iter().any(|n| n == "VM_GEN_COUNTER_PRESENT"));
    assert_eq!(r["now"]["timescale"], "TAI");
    assert!(r["now"]["maxerror_ns"].as_u64().unwrap() >= 1000);

    let n = json(&vmtime(&["now", page.to_str().unwrap(), "--json"]));
    let (e, t, l) =
        (n["earliest_ns"].as_u64().unwrap(), n["time_ns"].as_u64().unwrap(), n["latest_ns"].as_u64().unwrap());
    assert!(e < t && t < l && l - e >= 2000, "{n}");
    assert_eq!(n["status"], "SYNCHRONIZED");
    assert_eq!(n["tai_minus_utc"], 37);
    // TAI − UTC = 37 s: the page's TAI is within a minute of this machine's UTC + 37 s.
    let realtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
    assert!(((t as i128) - (realtime + 37_000_000_000)).abs() < 60_000_000_000);
}

#[test]
fn show_reports_invalid_pages_and_absent_fields() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, [0u8; 4096]).unwrap();
    let out = vmtime(&["show", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bad magic"));

    // A page whose size ends after `flags`: later fields are absent (null), not zero.
    let small = dir.path().join("small");
    gen(&small, &["--size", "32"]);
    let r = vmtime(&["show", small.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert!(v["fields"]["clock_status"].is_null());
    assert!(v["fields"]["vm_generation_counter"].is_null());
    assert!(v["time_error"].as_str().unwrap().contains("carries no time"));

    let missing = vmtime(&["now", dir.path().join("nope").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot map"));
}

#[test]
fn a_legacy_positive_tai_offset_reads_the_same_and_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen(
        &page,
        &[
            "--time-type",
            "utc",
            "--maxerror-ns",
            "1000",
            "--counter",
            "0",
            "--time-ns",
            "1795000000000000000",
            "--counter-hz",
            "1000000000",
        ],
    );
    let out = vmtime(&["show", page.to_str().unwrap(), "--json", "--counter", "5"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("legacy sign"), "the driver's sign is not legacy");
    let current = json(&out);
    assert_eq!(current["fields"]["tai_offset_sec"], -37);
    // The same page with +37 stored: the legacy sign of the RFC host and older vmtime pages.
    let mut bytes = std::fs::read(&page).unwrap();
    bytes[0x24..0x26].copy_from_slice(&37i16.to_le_bytes());
    std::fs::write(&page, &bytes).unwrap();
    let out = vmtime(&["show", page.to_str().unwrap(), "--json", "--counter", "5"]);
    let legacy = json(&out);
    assert_eq!(legacy["fields"]["tai_offset_sec"], 37);
    assert_eq!(legacy["fields"]["tai_minus_utc"], 37);
    assert_eq!(legacy["fields"]["tai_offset_legacy"], true);
    assert_eq!(legacy["now"]["tai"], current["now"]["tai"], "both signs give TAI = UTC + 37 s");
    assert_eq!(legacy["now"]["utc"], current["now"]["utc"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<_> = stderr.lines().filter(|l| l.contains("legacy sign")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(page.to_str().unwrap()), "{stderr}");
}

#[test]
fn gen_tai_offset_is_tai_minus_utc_and_positive() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    let out = vmtime(&["gen", page.to_str().unwrap(), "--tai-offset=-37", "--calibrate-ms", "50"]);
    assert_eq!(out.status.code(), Some(2), "a negative TAI − UTC is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tai-offset"));
}

#[test]
fn every_command_takes_the_global_log_level_before_or_after_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen(&page, &["--maxerror-ns", "2000"]);
    let p = page.to_str().unwrap();
    for args in [
        vec!["check", p, "--samples", "10", "--tolerance", "1000000000", "--log-level", "debug"],
        vec!["--log-level", "warn", "now", p],
        vec!["show", "--log-level", "error", p],
        vec!["gen", dir.path().join("p2").to_str().unwrap(), "--calibrate-ms", "10", "--log-level", "trace"],
    ] {
        let o = vmtime(&args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // status: the flag is accepted; what fails is the missing daemon, named.
    let o = vmtime(&["status", "--log-level", "info", "--socket", dir.path().join("none.sock").to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !e.contains("unexpected argument") && e.contains("none.sock"), "{e}");
    // A bad level is refused in one line naming the set.
    let o = vmtime(&["now", p, "--log-level", "loud"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(e.contains("error, warn, info, debug, trace"), "{e}");
}

#[test]
fn watch_prints_a_state_line_while_the_page_stays_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen(&page, &["--maxerror-ns", "2000"]);
    let (d, rx) = common::spawn_logged(&["watch", page.to_str().unwrap(), "--heartbeat-s", "1"]);
    let start = common::wait_line(&rx, "(watching ", std::time::Duration::from_secs(20));
    assert!(start.contains("a state line every 1 s"), "{start}");
    // A page nobody updates: without the state line, watch would print nothing more.
    let beat = common::wait_line(&rx, "unchanged for", std::time::Duration::from_secs(20));
    assert!(beat.starts_with("seq ") && beat.contains("SYNCHRONIZED"), "{beat}");
    drop(d);
}

/// On a host (no /dev/vmclock0) with `vmtime host` publishing at its default path, the reading
/// commands read that page. Root's default is /run/vmtime: a fresh /run in a private mount
/// namespace, so this machine's own /run is never touched.
#[test]
fn reading_commands_default_to_this_machines_host_page() {
    if Path::new("/dev/vmclock0").exists() {
        println!("SKIP: this machine is a guest (/dev/vmclock0): that stays the default");
        return;
    }
    let probe = Command::new("unshare").args(["-m", "--propagation", "private", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) || rustix::process::geteuid().as_raw() != 0 {
        println!("SKIP: needs root and unshare -m (the default host page is /run/vmtime/host.page)");
        return;
    }
    let script = r#"
        mount -t tmpfs tmpfs /run || exit 9
        "$VMTIME" host --quiet --duration-s 60 >/dev/null 2>&1 & h=$!
        i=0
        while [ ! -S /run/vmtime/host.page.sock ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
        [ -S /run/vmtime/host.page.sock ] || { echo "no host socket"; kill $h; exit 9; }
        "$VMTIME" show --json >/dev/null 2>show.err; echo "show $?"; cat show.err
        "$VMTIME" now >/dev/null 2>now.err; echo "now $?"; cat now.err
        timeout 10 "$VMTIME" watch --heartbeat-s 1 --count 1000 >/dev/null 2>watch.err; cat watch.err
        kill $h; wait $h
    "#;
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .current_dir(dir.path())
        .env("VMTIME", env!("CARGO_BIN_EXE_vmtime"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("show 0") && out.contains("now 0"), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let note = "no /dev/vmclock0 (not a guest): reading this machine's host page /run/vmtime/host.page";
    assert_eq!(out.matches(note).count(), 3, "show, now and watch each say which page: {out}");
    assert!(out.contains("unchanged for"), "watch's state line: {out}");
}

/// The guest commands' help and command-line mistakes: the binary under test (`VMTIME_BIN`, the
/// guest binary in scripts/test) prints what the full binary prints, byte for byte, with the same
/// exit status. (Without `VMTIME_BIN` both are the full binary.)
#[test]
fn guest_commands_print_the_full_binarys_help_and_mistakes() {
    let full = env!("CARGO_BIN_EXE_vmtime");
    let cases: &[&[&str]] = &[
        &["sync", "--help"],
        &["sync", "-h"],
        &["waitsync", "--help"],
        &["now", "--help"],
        &["status", "-h"],
        &["show", "--help"],
        &["help", "sync"],
        &["sync", "--interval-ms", "5"],
        &["sync", "--tai-offset", "-5"],
        &["sync", "--phc-timescale", "gps"],
        &["sync", "--bogus"],
        &["sync", "--dry-run", "--dry-run"],
        &["sync", "--source"],
        &["sync", "--cross-check-ntp", "ntp.example:123"],
        &["waitsync", "--max-error-ns", "1000"],
        &["now", "a", "b"],
        &["show", "--counter", "1.5"],
        &["now", "--log-level", "loud"],
        &["status", "--json=yes"],
    ];
    for args in cases {
        let (a, b) = (vmtime(args), Command::new(full).args(*args).output().unwrap());
        assert_eq!(a.status.code(), b.status.code(), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&b.stdout), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr), "{args:?}");
        assert!(!a.stdout.is_empty() || !a.stderr.is_empty(), "{args:?}: nothing printed");
    }
}

/// The guest binary's help texts (crates/vmtime/src/guest-help/, which it prints without clap)
/// are the full binary's, byte for byte. VMTIME_UPDATE_GUEST_HELP=1 writes them anew.
#[test]
fn the_guest_binarys_help_texts_are_the_full_binarys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/guest-help");
    let update = std::env::var_os("VMTIME_UPDATE_GUEST_HELP").is_some();
    for name in ["sync", "waitsync", "now", "status", "show"] {
        for (flag, ext) in [("-h", "short"), ("--help", "long")] {
            let out = Command::new(env!("CARGO_BIN_EXE_vmtime")).args([name, flag]).output().unwrap();
            assert!(out.status.success(), "{name} {flag}");
            let file = dir.join(format!("{name}.{ext}"));
            if update {
                std::fs::write(&file, &out.stdout).unwrap();
            } else {
                let kept = std::fs::read(&file).unwrap();
                assert!(
                    kept == out.stdout,
                    "{}: not `vmtime {name} {flag}`'s text; VMTIME_UPDATE_GUEST_HELP=1 cargo test -p vmtime --test cli",
                    file.display()
                );
            }
        }
    }
}
