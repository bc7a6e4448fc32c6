//! `vmtime feed clockbound`'s 3.x segment (`shm1`) read by the real, unmodified ClockBound 3.x
//! client (`clock-bound` 3.0.0-rc.0 from crates.io, its Rust `Client`), from a temporary
//! directory. That client never reads CLOCK_REALTIME: it reads the counter and applies the
//! segment's counter→UTC map (docs/INTEROP.md).
mod common;
use clock_bound::{Client, ClockStatus};
use common::{gen_bounded_page, start};
use std::path::Path;
use std::time::{Duration, Instant};
use vmtime_sys::clock::{gettime, ClockId};

const MAXERROR_NS: i128 = 50_000;
const AHEAD_NS: i128 = 100_000;

/// A page of this machine's clock moved `AHEAD_NS` ahead, maxerror 50 µs, period maxerror 1 ppm.
fn gen_page(dir: &Path, page: &Path, marker: u64, status: &str) {
    gen_bounded_page(dir, page, AHEAD_NS, MAXERROR_NS, marker, status)
}

fn ns(t: nix_time::TimeSpec) -> i128 {
    t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
}

/// The nix version `clock-bound` re-exports (its `TimeWindow` holds nix's `TimeSpec`).
use clock_bound::nix::sys::time as nix_time;

fn reading(c: &mut Client) -> (i128, i128, ClockStatus) {
    let r = c.now().expect("clock-bound 3.x now()");
    (ns(r.earliest), ns(r.latest), r.clock_status)
}

fn client(dir: &Path) -> Client {
    Client::new_with_path(dir.join("shm1").to_str().unwrap()).expect("the 3.x client opens vmtime's shm1")
}

/// The feed, every `interval_ms` (life: 20 intervals), with `extra` arguments.
fn start_feed(page: &Path, dir: &Path, interval_ms: u64, extra: &[&str]) -> common::Daemon {
    let (interval, life) = (interval_ms.to_string(), (20 * interval_ms).to_string());
    let mut args = vec!["feed", "clockbound", "--source", page.to_str().unwrap(), "--dir", dir.to_str().unwrap()];
    args.extend(["--interval-ms", &interval, "--life-ms", &life, "--duration-s", "60"]);
    args.extend(extra);
    start(&args, "vmtime feed clockbound").0
}

/// Waits (bounded) until the client reports `want`.
fn wait_status(c: &mut Client, want: ClockStatus, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if reading(c).2 == want {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

fn supported() -> bool {
    vmclock::counter::NATIVE != vmclock::abi::counter_id::INVALID
}

#[test]
fn thousand_readings_are_synchronized_honest_and_contain_realtime() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "synchronized");
    let _feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let mut c = client(dir.path());
    let clock = vmclock::Clock::open(&page).unwrap();
    let page_now = || {
        let n = clock.now().unwrap().utc().unwrap();
        (n.time.as_nanos() as i128, n.maxerror_ns().unwrap() as i128)
    };
    for i in 0..1000 {
        let r1 = gettime(ClockId::Realtime).unwrap();
        let (p1, e1) = page_now();
        let (earliest, latest, status) = reading(&mut c);
        let (p2, _) = page_now();
        let r2 = gettime(ClockId::Realtime).unwrap();
        assert_eq!(status, ClockStatus::Synchronized, "reading {i}");
        // CLOCK_REALTIME at the client's read lies in [r1, r2]; the window holds it although the
        // client computed it from the counter and the page's map (the page is 100 µs ahead).
        assert!(
            earliest <= r2 && latest >= r1,
            "reading {i}: [{earliest}, {latest}] misses CLOCK_REALTIME [{r1}, {r2}]"
        );
        // Honest: every time the page allows at that instant is inside.
        assert!(earliest <= p2 - e1, "reading {i}: earliest {earliest} > page's earliest {}", p2 - e1);
        assert!(latest >= p1 + e1, "reading {i}: latest {latest} < page's latest {}", p1 + e1);
        // The window is centred on the page's time (its map), not on CLOCK_REALTIME.
        let mid = (earliest + latest) / 2;
        assert!(mid >= p1 - 2 && mid <= p2 + 2, "reading {i}: centre {mid} is not the page's time [{p1}, {p2}]");
        assert!(
            latest - earliest < 2 * (AHEAD_NS + MAXERROR_NS + 1_000_000),
            "reading {i}: {} ns wide",
            latest - earliest
        );
    }
}

#[test]
fn a_disruption_is_seen_by_the_client() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "synchronized");
    // 1 s intervals: Disrupted lasts at least two of them (the hold-off), long enough for a test
    // thread starved on a loaded machine to see it.
    let feed = start_feed(&page, dir.path(), 1000, &["--disruption-support", "off"]);
    let mut c = client(dir.path());
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    gen_page(dir.path(), &page, 2, "synchronized");
    assert!(wait_status(&mut c, ClockStatus::Disrupted, Duration::from_secs(10)), "the client never saw Disrupted");
    assert!(
        wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)),
        "no recovery after the disruption"
    );
    drop(feed);

    // With disruption support on, the client compares the segment's marker with the page's
    // itself: when the page's marker changes and vmtime is not there to follow, it says
    // Disrupted at once (3.x says Disrupted where 2.0.3 said Unknown).
    let feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "on"]);
    let (seg, page_path) = (dir.path().join("shm1"), page.to_str().unwrap().to_string());
    let mut c = Client::new_with_paths(seg.to_str().unwrap(), &page_path).unwrap();
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    drop(feed);
    gen_page(dir.path(), &page, 3, "synchronized");
    let mut fresh = Client::new_with_paths(seg.to_str().unwrap(), &page_path).unwrap();
    assert_eq!(reading(&mut fresh).2, ClockStatus::Disrupted, "a changed marker must void the segment");
}

#[test]
fn the_status_follows_the_page() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "freerunning");
    let _feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let mut c = client(dir.path());
    assert!(wait_status(&mut c, ClockStatus::FreeRunning, Duration::from_secs(10)), "FREERUNNING → FreeRunning");
    for (status, want) in [("unknown", ClockStatus::Unknown), ("synchronized", ClockStatus::Synchronized)] {
        gen_page(dir.path(), &page, 1, status);
        assert!(wait_status(&mut c, want, Duration::from_secs(10)), "{status} → {want:?}");
    }
    for status in ["initializing", "unreliable"] {
        gen_page(dir.path(), &page, 1, status);
        assert!(wait_status(&mut c, ClockStatus::Unknown, Duration::from_secs(10)), "{status} → Unknown");
        gen_page(dir.path(), &page, 1, "synchronized");
        assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    }
}

#[test]
fn the_segment_is_void_after_its_life() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "synchronized");
    let feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let mut c = client(dir.path());
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    drop(feed); // killed, no last word: the segment's stated life is 2 s
                // Judge against what the segment itself states (as_of and void_after, UTC on the page's map,
                // at offsets 24 and 40), and the client's own time (the centre of its window), not against
                // when the test saw the kill.
    let b = std::fs::read(dir.path().join("shm1")).unwrap();
    let ts = |o: usize| {
        i64::from_ne_bytes(b[o..o + 8].try_into().unwrap()) as i128 * 1_000_000_000
            + i64::from_ne_bytes(b[o + 8..o + 16].try_into().unwrap()) as i128
    };
    let (as_of, void_after) = (ts(24), ts(40));
    assert_eq!(void_after - as_of, 2_000_000_000, "the life written is --life-ms");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (earliest, latest, status) = reading(&mut c);
        let t = (earliest + latest) / 2;
        if status == ClockStatus::Unknown {
            assert!(t > void_after - 2, "Unknown at {t}, before the segment's void_after {void_after}");
            break;
        }
        assert_eq!(status, ClockStatus::Synchronized);
        assert!(t <= void_after + 2, "still {status:?} at {t}, after void_after {void_after}");
        assert!(Instant::now() < end, "the segment never became void");
        std::thread::yield_now();
    }
}

#[test]
fn sigterm_voids_both_segments_at_once() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "synchronized");
    // The default layout is both; a minute of life, so only the feed's last word voids them.
    let (feed, _) = start(
        &[
            "feed",
            "clockbound",
            "--source",
            page.to_str().unwrap(),
            "--dir",
            dir.path().to_str().unwrap(),
            "--interval-ms",
            "100",
            "--life-ms",
            "60000",
            "--duration-s",
            "60",
        ],
        "vmtime feed clockbound",
    );
    let mut c3 = client(dir.path());
    let mut c2 =
        clock_bound_client::ClockBoundClient::new_with_path(dir.path().join("shm0").to_str().unwrap()).unwrap();
    assert!(wait_status(&mut c3, ClockStatus::Synchronized, Duration::from_secs(10)));
    assert_eq!(c2.now().unwrap().clock_status, clock_bound_client::ClockStatus::Synchronized);
    assert!(feed.terminate().success(), "the feed exits cleanly on SIGTERM");
    assert_eq!(reading(&mut c3).2, ClockStatus::Unknown, "shm1 still claims a bound");
    assert_eq!(c2.now().unwrap().clock_status, clock_bound_client::ClockStatus::Unknown, "shm0 still claims a bound");
}

#[test]
fn layout_chooses_the_segments() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "synchronized");
    for (layout, shm0, shm1) in [("3", false, true), ("2", true, false)] {
        let sub = dir.path().join(format!("layout{layout}"));
        let feed = start_feed(&page, &sub, 100, &["--layout", layout]);
        assert_eq!((sub.join("shm0").exists(), sub.join("shm1").exists()), (shm0, shm1), "--layout {layout}");
        if shm1 {
            assert!(wait_status(&mut client(&sub), ClockStatus::Synchronized, Duration::from_secs(10)));
        } else {
            assert!(Client::new_with_path(sub.join("shm0").to_str().unwrap()).is_err(), "a 3.x client refuses shm0");
        }
        drop(feed);
    }
    let out = common::vmtime(&["feed", "clockbound", "--source", "x", "--layout", "4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.lines().count() == 1 && err.contains("--layout"), "one line naming the flag: {err}");
}

/// clock-bound-ffi 3.0.0-rc.0 (a dev-dependency: Cargo builds its `libclockbound.a` next to this
/// test's dependencies) and its header, found through `cargo metadata`.
fn clockbound_ffi() -> (std::path::PathBuf, std::path::PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg =
        v["packages"].as_array().unwrap().iter().find(|p| p["name"] == "clock-bound-ffi").expect("clock-bound-ffi");
    let include = Path::new(pkg["manifest_path"].as_str().unwrap()).parent().unwrap().join("include");
    // target/<profile>/deps, from this test's own path (target/<profile>/deps/clockbound3-…): the
    // newest libclockbound-HASH.a is the one this build made.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let lib = std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("libclockbound-") && n.ends_with(".a")
        })
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .expect("libclockbound-*.a in target/*/deps (clock-bound-ffi is a dev-dependency)")
        .path();
    (include, lib)
}

#[test]
fn a_c_program_reads_shm1_through_clock_bound_ffi() {
    use std::process::Command;
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (include, lib) = clockbound_ffi();
    let exe = dir.path().join("clockbound3_now");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/clockbound3_now.c");
    let st = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg(&lib)
        .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc", "-o"])
        .arg(&exe)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed on {}", src.display());

    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, "synchronized");
    let feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let shm1 = dir.path().join("shm1");
    let run = |count: &str| {
        let out = Command::new(&exe).arg(&shm1).arg(&page).arg(count).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<(i32, i128, i128)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
            })
            .collect();
        assert_eq!(lines.len().to_string(), count);
        lines
    };
    let clock = vmclock::Clock::open(&page).unwrap();
    let page_now = || {
        let n = clock.now().unwrap().utc().unwrap();
        (n.time.as_nanos() as i128, n.maxerror_ns().unwrap() as i128)
    };
    let (r1, (p1, e1)) = (gettime(ClockId::Realtime).unwrap(), page_now());
    let readings = run("1000");
    let (p2, r2) = (page_now().0, gettime(ClockId::Realtime).unwrap());
    for (i, &(status, earliest, latest)) in readings.iter().enumerate() {
        assert_eq!(status, 1, "reading {i}: CLOCKBOUND_STA_SYNCHRONIZED");
        // Every reading happened within the program's run: CLOCK_REALTIME in [r1, r2], the
        // page's time in [p1, p2].
        assert!(earliest <= r2 && latest >= r1, "reading {i}: [{earliest}, {latest}] misses CLOCK_REALTIME");
        assert!(earliest <= p2 - e1 && latest >= p1 + e1, "reading {i}: misses the page's interval");
    }
    // SIGTERM: the C client says CLOCKBOUND_STA_UNKNOWN.
    assert!(feed.terminate().success());
    assert_eq!(run("1")[0].0, 0, "shm1 still claims a bound after SIGTERM");
}
