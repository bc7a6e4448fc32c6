//! Hostile numbers and configuration files against the real binary: exit status 2, one line on
//! stderr naming the flag or key and the allowed range, never a panic (issue 12, class 7).
mod common;
use std::process::{Command, Output};

fn vmtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmtime")).args(args).output().expect("run vmtime")
}

fn refused(args: &[&str], needles: &[&str]) {
    let out = vmtime(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} missing from {err}");
    }
}

#[test]
fn the_issue_cases_are_refused_with_their_range() {
    refused(&["host", "--duration-s", "18446744073709551615"], &["--duration-s", "allowed: an integer in [1, "]);
    for v in ["NaN", "-1", "1e30", "0", "inf"] {
        refused(&["host", "--tolerance-ppm", v], &["--tolerance-ppm", "allowed: a number in [0.001, 100000] (ppm)"]);
    }
    refused(&["host", "--poll-ms", "18446744073709551615"], &["--poll-ms", "[1, 1000]"]);
    refused(&["check", "--samples", "100000000"], &["--samples", "[1, 1000000]"]);
    refused(
        &["gen", "p", "--counter", "1", "--counter-hz", "1000", "--time-ns", "18446744073709551616"],
        &["--time-ns"],
    );
    refused(&["gen", "p", "--size", "0"], &["--size", "allowed: an integer in ["]);
    refused(&["sim", "steady", "--duration", "18446744073709551615d"], &["--duration", "from 1 s to 30 d"]);
    refused(&["host", "--tai-offset", "-5"], &["--tai-offset", "allowed: an integer in [0, 1000]"]);
    refused(&["sync", "--dry-run", "--makestep-ns", "-1"], &["--makestep-ns"]);
    refused(&["relay", "--guest-page", "g", "--tsc-frac-bits", "64"], &["--tsc-frac-bits", "[1, 63]"]);
}

#[test]
fn a_ratio_kvm_cannot_hold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g");
    refused(
        &["relay", "--guest-page", g.to_str().unwrap(), "--tsc-ratio", "2.5", "--tsc-frac-bits", "63"],
        &["--tsc-ratio 2.5 with --tsc-frac-bits 63", "lower --tsc-frac-bits"],
    );
    assert!(!g.exists(), "nothing is written before the arguments are checked");
}

#[test]
fn config_check_names_the_key_or_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmtime.toml");
    std::fs::write(&f, "[sync]\ninterval_ms = 5\n").unwrap();
    refused(
        &["config", "check", f.to_str().unwrap()],
        &["vmtime.toml: [sync] interval_ms: 5 is refused; allowed: an integer in [10, 600000] (ms)"],
    );
    std::fs::write(&f, "[sync]\ninterval_ms = 500\n[metrics]\nlisten = \"127.0.0.1:9100\"\n").unwrap();
    let out = vmtime(&["config", "check", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_eq!(effective["sync"]["interval_ms"].as_integer(), Some(500));
    assert_eq!(effective["host"]["interval_ms"].as_integer(), Some(1000), "defaults are filled in");
    assert_eq!(effective["metrics"]["listen"].as_str(), Some("127.0.0.1:9100"));
    // The daemons refuse the same file with the same line.
    std::fs::write(&f, "[host]\npoll_ms = 0\n").unwrap();
    refused(
        &["host", "--config", f.to_str().unwrap(), "--page", dir.path().join("p").to_str().unwrap()],
        &["[host] poll_ms: 0 is refused; allowed: an integer in [1, 1000] (ms)"],
    );
    assert!(!dir.path().join("p").exists());
}

#[test]
fn a_flag_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmtime.toml");
    let page = dir.path().join("page");
    // The file asks for a page elsewhere; the flag wins. An invalid key in another section
    // would be refused, so the whole file is read.
    std::fs::write(&f, format!("[host]\npage = \"{}/other\"\nquiet = true\n", dir.path().display())).unwrap();
    let out = vmtime(&[
        "host",
        "--config",
        f.to_str().unwrap(),
        "--page",
        page.to_str().unwrap(),
        "--no-vmclock-host",
        "--duration-s",
        "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(page.exists());
    assert!(!dir.path().join("other").exists());
}

#[test]
fn replies_are_json_and_logs_are_words() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p");
    let socket = dir.path().join("s");
    let host = Command::new(env!("CARGO_BIN_EXE_vmtime"))
        .args(["host", "--page", page.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
        .args(["--no-vmclock-host", "--duration-s", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The socket is there once the daemon listens (bounded wait: 200 × 10 ms).
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A request with quotes and backslashes: the error reply is still valid JSON that names it.
    let out = vmtime(&["status", "--socket", socket.to_str().unwrap(), "--request", r#"bo"gus\x"#, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(v["error"].as_str().unwrap().contains(r#"unknown request "bo\"gus\\x""#), "{v}");
    let log = String::from_utf8(host.wait_with_output().unwrap().stderr).unwrap();
    assert!(log.contains("page 2: first page, status INITIALIZING"), "{log}");
    for debug in ["Some(", "None", "Initial,", "Calibrated,", "SlewDone", "{:?}"] {
        assert!(!log.contains(debug), "Debug output {debug:?} in the log: {log}");
    }
}

#[test]
fn check_says_not_yet_calibrated_while_the_page_is_initializing() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p");
    let out = vmtime(&[
        "gen",
        page.to_str().unwrap(),
        "--tai-offset",
        "37",
        "--calibrate-ms",
        "20",
        "--status",
        "initializing",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = vmtime(&["check", page.to_str().unwrap(), "--samples", "100"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not yet calibrated"));
}

#[test]
fn check_is_a_health_probe_for_a_fresh_host() {
    // A fresh host daemon (it only reads the clock): from the moment its page exists, `check`
    // says "not yet calibrated" (3) and then PASS (0), never FAIL (1) or an error (2). Bounded:
    // at most 60 checks, 100 ms apart; the daemon calibrates in about a second.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p");
    let socket = dir.path().join("s");
    // Ready once its control socket answers; the page is written before that.
    let (host, _) = common::spawn_answering(
        &["host", "--page", page.to_str().unwrap(), "--socket", socket.to_str().unwrap()]
            .into_iter()
            .chain(["--no-vmclock-host", "--quiet", "--duration-s", "20"])
            .collect::<Vec<_>>(),
        &socket,
    );
    assert!(page.exists(), "the page exists once the daemon answers");
    let mut codes = Vec::new();
    for _ in 0..60 {
        let out = vmtime(&["check", page.to_str().unwrap()]);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 3,
            "check on a healthy fresh host gave {code}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        codes.push(code);
        if codes.iter().filter(|&&c| c == 0).count() >= 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(host);
    assert!(codes.iter().filter(|&&c| c == 0).count() >= 5, "never calibrated: {codes:?}");
    // Once PASS, it stays PASS.
    let first = codes.iter().position(|&c| c == 0).unwrap();
    assert!(codes[first..].iter().all(|&c| c == 0), "{codes:?}");
}

#[test]
fn sighup_rereads_the_configuration_and_a_bad_file_keeps_the_daemon_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vmtime.toml");
    let page = dir.path().join("p");
    let socket = dir.path().join("s");
    std::fs::write(&cfg, "[host]\nquiet = true\nthreshold_ns = 30\n").unwrap();
    let mut host = Command::new(env!("CARGO_BIN_EXE_vmtime"))
        .args(["host", "--config", cfg.to_str().unwrap(), "--page", page.to_str().unwrap()])
        .args(["--socket", socket.to_str().unwrap(), "--no-vmclock-host", "--duration-s", "20"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = || -> Option<serde_json::Value> {
        let out = vmtime(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    };
    let wait_for = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..200 {
            if status().is_some_and(|v| ok(&v)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("timed out waiting for {what}");
    };
    wait_for("the daemon", &|_| true);
    // The file goes bad; SIGHUP: the error is logged, the daemon keeps its settings and serves.
    std::fs::write(&cfg, "[host]\nthreshold_ns = 0\n").unwrap();
    let hup = Command::new("kill").args(["-HUP", &host.id().to_string()]).status().unwrap();
    assert!(hup.success());
    wait_for("the first SIGHUP counted", &|v| v["reload_requests"] == 1);
    // A good file again: re-read as well.
    std::fs::write(&cfg, "[host]\nthreshold_ns = 40\n").unwrap();
    let hup = Command::new("kill").args(["-HUP", &host.id().to_string()]).status().unwrap();
    assert!(hup.success());
    wait_for("the second SIGHUP counted", &|v| v["reload_requests"] == 2);
    assert!(host.try_wait().unwrap().is_none(), "still running");
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn the_feeds_cross_flag_checks_name_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    let seg_dir = dir.path().join("clockbound");
    let d = seg_dir.to_str().unwrap();
    let cb = |interval: &str, life: &str| {
        ["feed", "clockbound", "--source", "/nonexistent", "--dir", d, "--interval-ms", interval, "--life-ms", life]
            .map(String::from)
    };
    let refused_owned =
        |args: [String; 10], needles: &[&str]| refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    // A life shorter than two intervals: void between two updates.
    refused_owned(cb("100", "100"), &["--life-ms 100", "at least two intervals (200 ms)"]);
    // The generation comes back to a value after 32767 updates (327.67 s at 10 ms): a client
    // that read rarely could keep a bound that old, so the segment must be void by then.
    refused_owned(cb("10", "400000"), &["--life-ms 400000 with --interval-ms 10", "below 327670"]);
    refused_owned(cb("10", "3600000"), &["below 327670"]);
    // An interval no life can cover (life at most 1 h): said so, not "give at least 2 h and at
    // most 1 h".
    refused_owned(cb("3600000", "5000"), &["--interval-ms 3600000: at most 1800000 for the ClockBound feed"]);
    refused_owned(cb("1800000", "3600000"), &["/nonexistent"]);
    // Both ends of what is allowed together pass the checks (and fail on the source).
    let out = vmtime(&cb("10", "327669").iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent") && err.contains("give --source"), "{err}");
    assert!(!seg_dir.exists(), "nothing is created before the flags and the source are checked");
    // A --source that can never be a page: one line, what to give instead.
    for feed in [&["feed", "chrony", "--socket", "/nonexistent/s"][..], &["feed", "clockbound", "--dir", d]] {
        let src = dir.path().to_str().unwrap();
        refused(&[feed, &["--source", src]].concat(), &["not a vmclock device or page file", "give --source"]);
    }
}
