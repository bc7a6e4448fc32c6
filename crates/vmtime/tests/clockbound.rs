//! `vmtime feed clockbound` read by the real, unmodified `clock-bound-client` 2.0.3 (crates.io),
//! from a temporary directory.
mod common;
use clock_bound_client::{ClockBoundClient, ClockStatus};
use common::start;
use std::path::Path;
use std::time::{Duration, Instant};
use vmtime_sys::clock::{gettime, ClockId};

const MAXERROR_NS: i128 = 50_000;
const AHEAD_NS: i128 = 100_000;

/// A page of this machine's clock moved `AHEAD_NS` ahead, maxerror 50 µs, period maxerror 1 ppm,
/// disruption marker `marker`.
fn gen_page(dir: &Path, page: &Path, marker: u64) {
    gen_page_with(dir, page, marker, "synchronized")
}

/// The same with the page's clock_status.
fn gen_page_with(dir: &Path, page: &Path, marker: u64, status: &str) {
    common::gen_bounded_page(dir, page, AHEAD_NS, MAXERROR_NS, marker, status)
}

fn reading(c: &mut ClockBoundClient) -> (i128, i128, ClockStatus) {
    let r = c.now().expect("clock-bound-client now()");
    let ns = |sec: i64, nsec: i64| sec as i128 * 1_000_000_000 + nsec as i128;
    (ns(r.earliest.tv_sec(), r.earliest.tv_nsec()), ns(r.latest.tv_sec(), r.latest.tv_nsec()), r.clock_status)
}

fn start_feed(page: &Path, dir: &Path, support: &str) -> common::Daemon {
    start_feed_every(page, dir, support, 100)
}

/// The feed with another interval (its disruption hold-off is two intervals).
fn start_feed_every(page: &Path, dir: &Path, support: &str, interval_ms: u64) -> common::Daemon {
    let interval = interval_ms.to_string();
    let life = (20 * interval_ms).to_string();
    let (d, _) = start(
        &[
            "feed",
            "clockbound",
            "--source",
            page.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
            "--interval-ms",
            &interval,
            "--life-ms",
            &life,
            "--disruption-support",
            support,
            "--duration-s",
            "60",
        ],
        "vmtime feed clockbound",
    );
    d
}

/// Waits (bounded) until the client reports `want`.
fn wait_status(c: &mut ClockBoundClient, want: ClockStatus, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if reading(c).2 == want {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

#[test]
fn thousand_readings_are_synchronized_honest_and_contain_realtime() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1);
    let _feed = start_feed(&page, dir.path(), "off");
    let seg = dir.path().join("shm0");
    let mut c = ClockBoundClient::new_with_path(seg.to_str().unwrap()).expect("the client opens vmtime's segment");
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
        // CLOCK_REALTIME at the client's read lies in [r1, r2].
        assert!(
            earliest <= r2 && latest >= r1,
            "reading {i}: [{earliest}, {latest}] misses CLOCK_REALTIME [{r1}, {r2}]"
        );
        // Honest: every time the page allows at that instant is inside (necessary conditions:
        // the page's time then lies in [p1, p2] and its maxerror is at least e1).
        assert!(earliest <= p2 - e1, "reading {i}: earliest {earliest} > page's earliest {}", p2 - e1);
        assert!(latest >= p1 + e1, "reading {i}: latest {latest} < page's latest {}", p1 + e1);
        // And not absurdly wide: the page's offset + maxerror + 1 ms of growth at most.
        assert!(
            latest - earliest < 2 * (AHEAD_NS + MAXERROR_NS + 1_000_000),
            "reading {i}: {} ns wide",
            latest - earliest
        );
    }
}

#[test]
fn a_disruption_is_seen_by_the_client() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1);
    // 1 s intervals: Disrupted then lasts at least two of them (the hold-off), so a test thread
    // starved on a loaded machine still sees it (with 100 ms it could miss a 200 ms window).
    let feed = start_feed_every(&page, dir.path(), "off", 1000);
    let seg = dir.path().join("shm0");
    let mut c = ClockBoundClient::new_with_path(seg.to_str().unwrap()).unwrap();
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    // The page is replaced by one with another marker: the segment says Disrupted until the
    // new page is current (a page that is not updated again: after two intervals).
    gen_page(dir.path(), &page, 2);
    assert!(wait_status(&mut c, ClockStatus::Disrupted, Duration::from_secs(10)), "the client never saw Disrupted");
    assert!(
        wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)),
        "no recovery after the disruption"
    );
    drop(feed);

    // With disruption support on, a client compares the segment's marker with the page's itself:
    // when the page's marker changes and vmtime is not there to follow, it says Unknown at once.
    let _feed = start_feed(&page, dir.path(), "on");
    let mut c = ClockBoundClient::new_with_paths(seg.to_str().unwrap(), page.to_str().unwrap()).unwrap();
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    drop(_feed);
    gen_page(dir.path(), &page, 3);
    let mut fresh = ClockBoundClient::new_with_paths(seg.to_str().unwrap(), page.to_str().unwrap()).unwrap();
    assert_eq!(reading(&mut fresh).2, ClockStatus::Unknown, "a changed marker must void the segment");
}

#[test]
fn the_segment_is_void_after_its_life() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1);
    let feed = start_feed(&page, dir.path(), "off");
    let seg = dir.path().join("shm0");
    let mut c = ClockBoundClient::new_with_path(seg.to_str().unwrap()).unwrap();
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    drop(feed); // vmtime is killed (no last word): the segment's stated life is 2 s
                // Judge against what the segment itself states (its last as_of and void_after, in
                // CLOCK_MONOTONIC_COARSE), not against when the test saw the kill: a feed starved on a loaded
                // machine wrote its last update earlier than the kill by an unknown time.
    let b = std::fs::read(&seg).unwrap();
    let ts = |o: usize| {
        i64::from_ne_bytes(b[o..o + 8].try_into().unwrap()) as i128 * 1_000_000_000
            + i64::from_ne_bytes(b[o + 8..o + 16].try_into().unwrap()) as i128
    };
    let (as_of, void_after) = (ts(16), ts(32));
    assert_eq!(void_after - as_of, 2_000_000_000, "the life written is --life-ms");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let status = reading(&mut c).2;
        // The client read its coarse clock before this: at most `now`.
        let now = gettime(ClockId::MonotonicCoarse).unwrap();
        if status == ClockStatus::Unknown {
            assert!(now >= void_after, "Unknown at {now}, before the segment's void_after {void_after}");
            break;
        }
        assert!(Instant::now() < end, "the segment never became void ({status:?})");
        std::thread::yield_now();
    }
}

#[test]
fn a_feed_stopped_by_sigterm_voids_its_segment_at_once() {
    use std::io::BufRead;
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vmtime"))
        .args(["feed", "clockbound", "--source", page.to_str().unwrap(), "--dir", dir.path().to_str().unwrap()])
        .args(["--interval-ms", "100", "--life-ms", "60000", "--duration-s", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("vmtime feed clockbound") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the feed exited");
    }
    let seg = dir.path().join("shm0");
    let mut c = ClockBoundClient::new_with_path(seg.to_str().unwrap()).unwrap();
    assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    use rustix::process::{kill_process, Pid, Signal};
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success(), "the feed exits cleanly on SIGTERM");
    // Its segment said 60 s of life, but a feed stopped on purpose says Unknown at once.
    assert_eq!(reading(&mut c).2, ClockStatus::Unknown);
}

#[test]
fn the_status_follows_the_page() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page_with(dir.path(), &page, 1, "freerunning");
    let _feed = start_feed(&page, dir.path(), "off");
    let seg = dir.path().join("shm0");
    let mut c = ClockBoundClient::new_with_path(seg.to_str().unwrap()).unwrap();
    assert!(wait_status(&mut c, ClockStatus::FreeRunning, Duration::from_secs(10)), "FREERUNNING → FreeRunning");
    for (status, want) in [("unknown", ClockStatus::Unknown), ("synchronized", ClockStatus::Synchronized)] {
        gen_page_with(dir.path(), &page, 1, status);
        assert!(wait_status(&mut c, want, Duration::from_secs(10)), "{status} → {want:?}");
    }
    for status in ["initializing", "unreliable"] {
        gen_page_with(dir.path(), &page, 1, status);
        assert!(wait_status(&mut c, ClockStatus::Unknown, Duration::from_secs(10)), "{status} → Unknown");
        gen_page_with(dir.path(), &page, 1, "synchronized");
        assert!(wait_status(&mut c, ClockStatus::Synchronized, Duration::from_secs(10)));
    }
}

#[test]
#[ignore = "open defect (issue 15 note): under heavy load a segment is sometimes narrower than the pages' intersection, by up to ~1 µs; run with --ignored"]
fn bounds_stay_honest_while_a_host_publishes_updates() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    // A live page (vmtime host reads this machine's clock, writes only its page), read from its
    // first calibrations on, when the host updates it most: each segment must bound
    // CLOCK_REALTIME and contain every time the pages allow. A segment is built from one page
    // and aged by its own rates; the host's next calibration may move the interval (the spec
    // only keeps the earlier counter's time inside the earlier bounds), so the segment must
    // contain the *intersection* of the calibrated pages' intervals at the reading — where true
    // time is — not the newest page's whole interval. An empty intersection (the host
    // contradicted itself) is skipped and counted.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("host.page");
    let _host = common::start_host(&page);
    let _feed = start_feed(&page, dir.path(), "off");
    let seg = dir.path().join("shm0");
    let mut c = ClockBoundClient::new_with_path(seg.to_str().unwrap()).unwrap();
    let clock = vmclock::Clock::open(&page).unwrap();
    // (earliest, latest) of a page at a counter value, ns.
    let interval = |s: &vmclock::Snapshot, counter: u64| {
        let u = s.utc_at(counter).ok()?;
        let (t, e) = (u.time.as_nanos() as i128, u.maxerror_ns()? as i128);
        Some((t - e, t + e))
    };
    let calibrated = |s: &vmclock::Snapshot| {
        matches!(s.clock_status(), Some(vmclock::abi::status::FREERUNNING | vmclock::abi::status::SYNCHRONIZED))
    };
    // The calibrated pages seen on the current marker, newest last (the last few suffice: the
    // feed rewrites its segment every 100 ms, far more often than the host recalibrates).
    let mut pages: Vec<vmclock::Snapshot> = Vec::new();
    let (mut claimed, mut moved, mut contradicted) = (0u32, 0u32, 0u32);
    let end = Instant::now() + Duration::from_secs(60);
    let mut seqs = std::collections::BTreeSet::new();
    // At least 3000 claimed readings, across at least one update of a calibrated page.
    while claimed < 3000 || seqs.len() < 2 {
        assert!(Instant::now() < end, "{claimed} claimed readings over {} calibrated pages in 60 s", seqs.len());
        let (Ok(s1), c1) = (clock.snapshot(), vmclock::counter::read()) else { continue };
        let r1 = gettime(ClockId::Realtime).unwrap();
        let (earliest, latest, status) = reading(&mut c);
        let r2 = gettime(ClockId::Realtime).unwrap();
        let (c2, Ok(s2)) = (vmclock::counter::read(), clock.snapshot()) else { continue };
        if !matches!(status, ClockStatus::Synchronized | ClockStatus::FreeRunning) {
            continue; // nothing is claimed
        }
        claimed += 1;
        assert!(earliest <= r2 && latest >= r1, "reading {claimed}: misses CLOCK_REALTIME");
        for s in [s1, s2] {
            if !calibrated(&s) {
                continue;
            }
            if pages.last().is_some_and(|l| l.disruption_marker() != s.disruption_marker()) {
                pages.clear();
            }
            if pages.last().is_none_or(|l| l.seq_count() != s.seq_count()) {
                pages.push(s);
                seqs.insert(s.seq_count());
            }
        }
        if pages.len() > 4 {
            pages.drain(..pages.len() - 4);
        }
        if !calibrated(&s2) || s1.disruption_marker() != s2.disruption_marker() || pages.is_empty() {
            continue;
        }
        // The segment, read between c1 and c2, must contain the intersection at its instant:
        // its earliest may not pass the pages' earliest at c2 (the latest the instant can be),
        // nor its latest fall short of their latest at c1. Pages whose intervals do not meet
        // at c1 contradict each other.
        let (mut lo, mut hi, mut lo1, mut lo_new, mut hi_new) = (i128::MIN, i128::MAX, i128::MIN, i128::MIN, i128::MAX);
        for (i, s) in pages.iter().enumerate() {
            let (Some((e1, l1)), Some((e2, _))) = (interval(s, c1), interval(s, c2)) else { continue };
            (lo, hi, lo1) = (lo.max(e2), hi.min(l1), lo1.max(e1));
            if i + 1 == pages.len() {
                (lo_new, hi_new) = (e2, l1);
            }
        }
        if lo1 > hi {
            contradicted += 1;
            continue;
        }
        if earliest > lo_new || latest < hi_new {
            moved += 1; // the newest page reaches past an earlier one's interval
        }
        assert!(earliest <= lo, "reading {claimed}: earliest {earliest} > the pages' earliest {lo}");
        assert!(latest >= hi, "reading {claimed}: latest {latest} < the pages' latest {hi}");
    }
    eprintln!(
        "{claimed} claimed readings over {} pages; {moved} inside the pages' intersection but not the newest \
         page's whole interval; {contradicted} with contradicting pages",
        seqs.len()
    );
    assert!(contradicted * 100 <= claimed, "{contradicted} of {claimed} readings saw contradicting pages");
}
