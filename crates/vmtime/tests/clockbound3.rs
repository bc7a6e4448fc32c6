//! `vmtime feed clockbound`'s 3.x segment (`shm1`) read by the real, unmodified ClockBound 3.x
//! client (`clock-bound` 3.0.0-rc.0 from crates.io, its Rust `Client`), from a temporary
//! directory. That client never reads CLOCK_REALTIME: it reads the counter and applies the
//! segment's counter→UTC map (docs/INTEROP.md).
#[path = "common/clockbound.rs"]
mod cb;
mod common;
use cb::{gen_page, start_feed, supported, wait_status, Centre, Reader};
use clock_bound::{Client, ClockStatus};
use std::path::Path;
use std::time::{Duration, Instant};
use vmtime_sys::clock::{gettime, ClockId};

#[test]
fn thousand_readings_are_synchronized_honest_and_contain_realtime() {
    // The window holds CLOCK_REALTIME although the client computed it from the counter and the
    // page's map, and it is centred on the page's time.
    cb::thousand_readings_are_synchronized_honest_and_contain_realtime::<Client>(Centre::Page);
}

#[test]
fn a_disruption_is_seen_by_the_client() {
    // With disruption support on, a changed page marker the feed is not there to follow: 3.x
    // says Disrupted at once, where 2.0.3 said Unknown.
    cb::a_disruption_is_seen_by_the_client::<Client>(ClockStatus::Disrupted);
}

#[test]
fn the_status_follows_the_page() {
    cb::the_status_follows_the_page::<Client>();
}

#[test]
fn the_segment_is_void_after_its_life() {
    if !supported() {
        return;
    }
    // Killed, no last word: the segment's stated life is 2 s. Its as_of and void_after are UTC
    // on the page's map (offsets 24 and 40); the client's own time is the centre of its window.
    let (mut c, void_after, _dir) = cb::killed_feed::<Client>();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (earliest, latest, status) = c.reading();
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
    let (dir, page) = cb::dir_with_page("synchronized");
    // The default layout is both; a minute of life, so only the feed's last word voids them.
    let feed = cb::start_long_lived_feed(&page, dir.path());
    let mut c3 = Client::open(dir.path());
    let mut c2 = clock_bound_client::ClockBoundClient::open(dir.path());
    assert!(wait_status(&mut c3, ClockStatus::Synchronized, Duration::from_secs(10)));
    assert_eq!(c2.now().unwrap().clock_status, clock_bound_client::ClockStatus::Synchronized);
    assert!(feed.terminate().success(), "the feed exits cleanly on SIGTERM");
    assert_eq!(c3.reading().2, ClockStatus::Unknown, "shm1 still claims a bound");
    assert_eq!(c2.now().unwrap().clock_status, clock_bound_client::ClockStatus::Unknown, "shm0 still claims a bound");
}

#[test]
fn layout_chooses_the_segments() {
    if !supported() {
        return;
    }
    let (dir, page) = cb::dir_with_page("synchronized");
    for (layout, shm0, shm1) in [("3", false, true), ("2", true, false)] {
        let sub = dir.path().join(format!("layout{layout}"));
        let feed = start_feed(&page, &sub, 100, &["--layout", layout]);
        assert_eq!((sub.join("shm0").exists(), sub.join("shm1").exists()), (shm0, shm1), "--layout {layout}");
        if shm1 {
            assert!(wait_status(&mut Client::open(&sub), ClockStatus::Synchronized, Duration::from_secs(10)));
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
    let page_now = || cb::page_now(&clock);
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
