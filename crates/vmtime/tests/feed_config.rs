//! The feeds' configuration, `[feed.chrony]` and `[feed.clockbound]`: a bad key or value is
//! refused in one line naming it (exit 2, nothing written), flags override the file, and SIGHUP
//! applies the live keys and names those needing a restart. Everything in temporary directories;
//! the tests wait on the feeds' own log lines and segment, never on sleeps.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs vmtime and expects exit status 2 with one stderr line containing each of `want`.
fn refused(args: &[&str], want: &[&str]) {
    let out = vmtime(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
    }
}

fn gen_page(dir: &Path) -> String {
    let page = dir.join("page");
    let out = vmtime(&["gen", page.to_str().unwrap(), "--tai-offset", "37", "--maxerror-ns", "1000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    page.to_str().unwrap().to_string()
}

/// (as_of, void_after, max_drift_ppb) of a ClockBound segment, ns: from two identical reads at
/// an even generation (a running feed may be writing it).
fn segment_life(path: &Path) -> (i128, i128, u32) {
    let b = loop {
        let a = std::fs::read(path).unwrap();
        assert_eq!(a.len(), 80);
        if a[14] % 2 == 0 && std::fs::read(path).unwrap() == a {
            break a;
        }
    };
    let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().unwrap()) as i128;
    let drift = u32::from_ne_bytes(b[64..68].try_into().unwrap());
    (i64_at(16) * 1_000_000_000 + i64_at(24), i64_at(32) * 1_000_000_000 + i64_at(40), drift)
}

#[test]
fn a_bad_feed_key_or_value_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmtime.toml");
    let c = f.to_str().unwrap();
    let page = gen_page(dir.path());
    let seg = dir.path().join("seg");
    let s = seg.to_str().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "[feed.chrony]\nintervl_ms = 5\n",
            &["feed", "chrony"],
            "[feed.chrony] intervl_ms: unknown field `intervl_ms`",
        ),
        ("[feed]\nbogus = 1\n", &["feed", "chrony"], "[feed] bogus: unknown field `bogus`"),
        (
            "[feed.clockbound]\ninterval_ms = 5\n",
            &["feed", "clockbound"],
            "[feed.clockbound] interval_ms: 5 is refused; allowed: an integer in [10, 3600000] (ms)",
        ),
        (
            "[feed.clockbound]\ndrift_margin_ppb = -1\n",
            &["feed", "clockbound"],
            "[feed.clockbound] drift_margin_ppb: -1 is refused",
        ),
        (
            "[feed.clockbound]\ndisruption_support = \"maybe\"\n",
            &["feed", "clockbound"],
            "[feed.clockbound] disruption_support: unknown variant `maybe`",
        ),
        (
            "[feed.clockbound]\ninterval_ms = 1000\nlife_ms = 1500\n",
            &["feed", "clockbound"],
            "[feed.clockbound] life_ms = 1500 is shorter than two intervals (interval_ms = 1000): give at least 2000",
        ),
        (
            "[feed.clockbound]\ninterval_ms = 10\nlife_ms = 400000\n",
            &["feed", "clockbound"],
            "[feed.clockbound] life_ms = 400000 with interval_ms = 10: the segment's generation comes back",
        ),
        (
            "[feed.clockbound]\ninterval_ms = 3600000\n",
            &["feed", "clockbound"],
            "[feed.clockbound] interval_ms = 3600000 is too long for the ClockBound feed: at most 1800000",
        ),
        (
            "[feed.chrony]\nmetrics_listen = \"0.0.0.0:9864\"\n",
            &["feed", "chrony"],
            "[feed.chrony] metrics_listen = \"0.0.0.0:9864\" is not a loopback address",
        ),
    ];
    for (text, cmd, want) in cases {
        std::fs::write(&f, text).unwrap();
        let mut args = cmd.to_vec();
        args.extend(["--config", c, "--source", &page, "--duration-s", "5"]);
        if cmd[1] == "chrony" {
            args.extend(["--socket", s]);
        } else {
            args.extend(["--dir", s]);
        }
        refused(&args, &[want]);
        // `vmtime config check` refuses the same file with the same words.
        refused(&["config", "check", c], &[want]);
        assert!(!seg.exists(), "nothing is written before the settings are checked");
    }
    // The same rule between flags, without a file.
    refused(
        &["feed", "clockbound", "--config", "/nonexistent.toml", "--source", &page, "--dir", s],
        &["cannot read the configuration /nonexistent.toml"],
    );
    std::fs::write(&f, "").unwrap();
    let out = vmtime(&[
        "feed",
        "clockbound",
        "--config",
        c,
        "--source",
        &page,
        "--dir",
        s,
        "--interval-ms",
        "1000",
        "--life-ms",
        "1500",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--life-ms 1500: give at least two intervals (2000 ms)"), "{err}");
    assert!(!seg.exists());
}

#[test]
fn flags_override_the_feed_section_which_overrides_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let page = gen_page(dir.path());
    let (a, b) = (dir.path().join("from-file"), dir.path().join("from-flag"));
    let f = dir.path().join("vmtime.toml");
    std::fs::write(
        &f,
        format!(
            "[feed.clockbound]\ndir = \"{}\"\nlayout = \"2\"\ninterval_ms = 100\nlife_ms = 2500\nduration_s = 1\n",
            a.display()
        ),
    )
    .unwrap();
    // The file gives the life and the duration (the feed exits after 1 s); the flag the directory.
    let out = vmtime(&[
        "feed",
        "clockbound",
        "--config",
        f.to_str().unwrap(),
        "--source",
        &page,
        "--dir",
        b.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!a.exists(), "the flag's directory wins");
    assert!(!b.join("shm1").exists(), "the file's layout: 2.x only");
    let (as_of, void_after, _) = segment_life(&b.join("shm0"));
    assert_eq!(void_after - as_of, 2_500_000_000, "the life is the file's");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every 100 ms (life 2500 ms"), "{err}");
    // Flags over the file for a value too: --life-ms wins over life_ms.
    let out = vmtime(&[
        "feed",
        "clockbound",
        "--config",
        f.to_str().unwrap(),
        "--source",
        &page,
        "--dir",
        b.to_str().unwrap(),
        "--life-ms",
        "3000",
        "--layout",
        "both",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(b.join("shm1").exists(), "the flag's layout: both segments");
    let (as_of, void_after, _) = segment_life(&b.join("shm0"));
    assert_eq!(void_after - as_of, 3_000_000_000, "the flag's life");
    // The effective configuration shows both sections, defaults filled in.
    let out = vmtime(&["config", "check", f.to_str().unwrap()]);
    let effective: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_eq!(effective["feed"]["clockbound"]["life_ms"].as_integer(), Some(2500));
    assert_eq!(effective["feed"]["clockbound"]["drift_margin_ppb"].as_integer(), Some(15000));
    assert_eq!(effective["feed"]["chrony"]["socket"].as_str(), Some("/run/chrony.vmclock0.sock"));
}

#[test]
fn sighup_applies_the_feeds_live_keys_and_names_those_needing_a_restart() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A calibrated page of this machine's clock: the segment carries a bound and a drift.
    let page = dir.path().join("page");
    let mut args = gen_ahead_args(dir.path(), &page, 0);
    args.extend(["--maxerror-ns", "50000"].map(String::from));
    vmtime_ok(&args);
    let page = page.to_str().unwrap().to_string();
    let cfg = dir.path().join("vmtime.toml");
    let c = cfg.to_str().unwrap();
    let seg = dir.path().join("cb");
    std::fs::write(&cfg, "[feed.clockbound]\ninterval_ms = 100\nlife_ms = 60000\n").unwrap();
    let (cb, log) = spawn_answering(
        &["feed", "clockbound", "--config", c, "--source", &page, "--dir", seg.to_str().unwrap()],
        &seg.join("feed-clockbound.sock"),
    );
    let (as_of, void_after, _) = segment_life(&seg.join("shm0"));
    assert_eq!(void_after - as_of, 60_000_000_000, "the life in force");
    // Live: the drift margin, the life and the interval (the next segment carries them). Restart:
    // disruption support. The directory the file now names is not reported: the flag wins.
    std::fs::write(
        &cfg,
        "[feed.clockbound]\ninterval_ms = 50\nlife_ms = 30000\ndrift_margin_ppb = 90000000\n\
         disruption_support = \"on\"\ndir = \"/elsewhere\"\n",
    )
    .unwrap();
    hup(&cb);
    let line = wait_line(&log, "SIGHUP", LINE_WITHIN);
    assert!(
        line.contains("applied drift_margin_ppb = 90000000, interval_ms = 50, life_ms = 30000; these changes need a restart of vmtime feed clockbound: disruption_support = \"on\" (in force: \"auto\")"),
        "{line}"
    );
    assert!(!line.contains("dir ="), "{line}");
    // The segments written from now on carry the new life exactly, and each one with a bound
    // carries at least the new margin (9 %: without it, a drift that high would need this
    // machine's clock to wander by 9 % against the page). Bounded wait on the feed's own writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (as_of, void_after, drift) = segment_life(&seg.join("shm0"));
        if void_after - as_of == 30_000_000_000 && drift > 0 {
            assert!(drift >= 90_000_000, "the new margin: {drift}");
            break;
        }
        assert!(Instant::now() < deadline, "no bounded segment with the new life and margin");
        std::thread::yield_now();
    }
    // A bad file (a life shorter than two intervals) keeps the settings in force.
    std::fs::write(&cfg, "[feed.clockbound]\ninterval_ms = 1000\nlife_ms = 1500\n").unwrap();
    hup(&cb);
    let line = wait_line(&log, "SIGHUP", LINE_WITHIN);
    assert!(line.contains("life_ms = 1500 is shorter than two intervals"), "{line}");
    assert!(line.contains("keeping the settings in force"), "{line}");

    // chrony: the interval and log level are live, the metrics address needs a restart.
    let sock = dir.path().join("refclock.sock");
    std::fs::write(&cfg, "[feed.chrony]\ninterval_ms = 100\n").unwrap();
    let (ch, log) = spawn_answering(
        &[
            "feed",
            "chrony",
            "--config",
            c,
            "--source",
            &page,
            "--socket",
            sock.to_str().unwrap(),
            "--control-socket",
            dir.path().join("ctl").to_str().unwrap(),
        ],
        &dir.path().join("ctl"),
    );
    std::fs::write(
        &cfg,
        "[feed.chrony]\ninterval_ms = 200\nburst = 4\nlog_level = \"debug\"\nmetrics_listen = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    hup(&ch);
    let line = wait_line(&log, "SIGHUP", LINE_WITHIN);
    assert!(
        line.contains("applied burst = 4, interval_ms = 200, log_level = \"debug\"; these changes need a restart of vmtime feed chrony: metrics_listen = \"127.0.0.1:9\" (in force: unset)"),
        "{line}"
    );
}

/// The feeds with their default paths, as their units run them, inside a private mount namespace
/// whose /run is a fresh tmpfs (so nothing of this machine's /run is touched): the ClockBound
/// segment lands in /var/run/clockbound (= /run/clockbound, the unit's RuntimeDirectory, made
/// here as systemd makes it: 0755), readable by every client; the chrony feed sends to
/// /run/chrony.vmclock0.sock, the socket of the documented chrony.conf line.
#[test]
fn default_paths_are_the_units_directories() {
    let dir = tempfile::tempdir().unwrap();
    let page = gen_page(dir.path());
    let cfg = dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let script = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/clockbound
"$0" feed clockbound --config "$1" --source "$2" --interval-ms 100 --duration-s 1 2>&1
stat -c 'segment %a %s' /var/run/clockbound/shm0
"$0" feed chrony --config "$1" --source "$2" --interval-ms 100 --duration-s 1 2>&1"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_vmtime"))
        .arg(&cfg)
        .arg(&page)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("unshare failed") => {
            eprintln!("SKIP: no private mount namespace here (needs root): {}", String::from_utf8_lossy(&o.stderr));
            return;
        }
        Ok(o) => panic!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("SKIP: unshare cannot be run: {e}");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("vmtime feed clockbound: {page} → /var/run/clockbound/shm0")), "{text}");
    assert!(text.contains("\nsegment 644 80\n"), "{text}");
    assert!(
        text.contains(&format!(
            "vmtime feed chrony: {page} → /run/chrony.vmclock0.sock every 100 ms (chrony.conf: refclock SOCK /run/chrony.vmclock0.sock)"
        )),
        "{text}"
    );
}
