//! What the ClockBound client tests share (tests/clockbound.rs: the 2.x client on `shm0`;
//! tests/clockbound3.rs: the 3.x client on `shm1`): the page, the feed, one trait over both
//! clients, and the checks that are the same whichever client reads its segment.
//! Included by those two files only (`#[path]`), next to `mod common`.
#![allow(dead_code)] // each file uses a part
use crate::common;
use std::path::Path;
use std::time::{Duration, Instant};
use vmtime_sys::clock::{gettime, ClockId};

pub const MAXERROR_NS: i128 = 50_000;
pub const AHEAD_NS: i128 = 100_000;

/// Whether this machine has a counter the page can name (the feed and clients need one).
pub fn supported() -> bool {
    vmclock::counter::NATIVE != vmclock::abi::counter_id::INVALID
}

/// A page of this machine's clock moved `AHEAD_NS` ahead, maxerror 50 µs, period maxerror 1 ppm,
/// disruption marker `marker`, clock_status `status`.
pub fn gen_page(dir: &Path, page: &Path, marker: u64, status: &str) {
    common::gen_bounded_page(dir, page, AHEAD_NS, MAXERROR_NS, marker, status)
}

/// A temporary directory with a page in it (`page`, marker 1, clock_status `status`).
pub fn dir_with_page(status: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, 1, status);
    (dir, page)
}

/// `vmtime feed clockbound` from `page` into `dir`, every `interval_ms` (life: 20 intervals; its
/// disruption hold-off is two intervals), with `extra` arguments.
pub fn start_feed(page: &Path, dir: &Path, interval_ms: u64, extra: &[&str]) -> common::Daemon {
    let (interval, life) = (interval_ms.to_string(), (20 * interval_ms).to_string());
    let mut args = vec!["feed", "clockbound", "--source", page.to_str().unwrap(), "--dir", dir.to_str().unwrap()];
    args.extend(["--interval-ms", &interval, "--life-ms", &life, "--duration-s", "60"]);
    args.extend(extra);
    common::spawn_answering(&args, &dir.join("feed-clockbound.sock")).0
}

/// The page's time and maximum error now, in ns.
pub fn page_now(clock: &vmclock::Clock) -> (i128, i128) {
    let n = clock.now().unwrap().utc().unwrap();
    (n.time.as_nanos() as i128, n.maxerror_ns().unwrap() as i128)
}

/// The timespec (native-endian i64 seconds and nanoseconds) at byte `o` of a segment, in ns.
pub fn segment_time(b: &[u8], o: usize) -> i128 {
    i64::from_ne_bytes(b[o..o + 8].try_into().unwrap()) as i128 * 1_000_000_000
        + i64::from_ne_bytes(b[o + 8..o + 16].try_into().unwrap()) as i128
}

/// One real ClockBound client, on the segment it reads.
pub trait Reader: Sized {
    type Status: Copy + PartialEq + std::fmt::Debug;
    const SYNCHRONIZED: Self::Status;
    const FREE_RUNNING: Self::Status;
    const UNKNOWN: Self::Status;
    const DISRUPTED: Self::Status;
    /// The segment's file name in the feed's directory.
    const SEGMENT: &'static str;
    /// Where the segment's `as_of` timespec is (its `void_after` follows, 16 bytes on).
    const AS_OF_AT: usize;
    /// The client on the segment in `dir`.
    fn open(dir: &Path) -> Self;
    /// The client on the segment in `dir`, checking the page's disruption marker itself.
    fn open_with_page(dir: &Path, page: &Path) -> Self;
    /// One reading: (earliest ns, latest ns, status).
    fn reading(&mut self) -> (i128, i128, Self::Status);
    /// One reading: (earliest ns, latest ns, whether the client claims a bound).
    fn claimed_reading(&mut self) -> (i128, i128, bool) {
        let (earliest, latest, status) = self.reading();
        (earliest, latest, status == Self::SYNCHRONIZED || status == Self::FREE_RUNNING)
    }
}

impl Reader for clock_bound_client::ClockBoundClient {
    type Status = clock_bound_client::ClockStatus;
    const SYNCHRONIZED: Self::Status = clock_bound_client::ClockStatus::Synchronized;
    const FREE_RUNNING: Self::Status = clock_bound_client::ClockStatus::FreeRunning;
    const UNKNOWN: Self::Status = clock_bound_client::ClockStatus::Unknown;
    const DISRUPTED: Self::Status = clock_bound_client::ClockStatus::Disrupted;
    const SEGMENT: &'static str = "shm0";
    const AS_OF_AT: usize = 16;
    fn open(dir: &Path) -> Self {
        Self::new_with_path(dir.join(Self::SEGMENT).to_str().unwrap()).expect("the 2.x client opens vmtime's shm0")
    }
    fn open_with_page(dir: &Path, page: &Path) -> Self {
        Self::new_with_paths(dir.join(Self::SEGMENT).to_str().unwrap(), page.to_str().unwrap()).unwrap()
    }
    fn reading(&mut self) -> (i128, i128, Self::Status) {
        let r = self.now().expect("clock-bound-client now()");
        let ns = |sec: i64, nsec: i64| sec as i128 * 1_000_000_000 + nsec as i128;
        (ns(r.earliest.tv_sec(), r.earliest.tv_nsec()), ns(r.latest.tv_sec(), r.latest.tv_nsec()), r.clock_status)
    }
}

impl Reader for clock_bound::Client {
    type Status = clock_bound::ClockStatus;
    const SYNCHRONIZED: Self::Status = clock_bound::ClockStatus::Synchronized;
    const FREE_RUNNING: Self::Status = clock_bound::ClockStatus::FreeRunning;
    const UNKNOWN: Self::Status = clock_bound::ClockStatus::Unknown;
    const DISRUPTED: Self::Status = clock_bound::ClockStatus::Disrupted;
    const SEGMENT: &'static str = "shm1";
    const AS_OF_AT: usize = 24;
    fn open(dir: &Path) -> Self {
        Self::new_with_path(dir.join(Self::SEGMENT).to_str().unwrap()).expect("the 3.x client opens vmtime's shm1")
    }
    fn open_with_page(dir: &Path, page: &Path) -> Self {
        Self::new_with_paths(dir.join(Self::SEGMENT).to_str().unwrap(), page.to_str().unwrap()).unwrap()
    }
    fn reading(&mut self) -> (i128, i128, Self::Status) {
        // The nix version `clock-bound` re-exports (its `TimeWindow` holds nix's `TimeSpec`).
        let ns = |t: clock_bound::nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
        let r = self.now().expect("clock-bound 3.x now()");
        (ns(r.earliest), ns(r.latest), r.clock_status)
    }
}

/// Waits (bounded) until the client reports `want`.
pub fn wait_status<C: Reader>(c: &mut C, want: C::Status, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if c.reading().2 == want {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// Whether the window of a reading is centred on the page's time (3.x: the client applies the
/// segment's counter→UTC map) or not checked for it (2.x: CLOCK_REALTIME ± a bound).
#[derive(Clone, Copy, PartialEq)]
pub enum Centre {
    Page,
    Unchecked,
}

/// 1,000 readings through `C` from a feed of a synchronized page 100 µs ahead: each
/// Synchronized, containing CLOCK_REALTIME, honest to the page and not absurdly wide.
pub fn thousand_readings_are_synchronized_honest_and_contain_realtime<C: Reader>(centre: Centre) {
    if !supported() {
        return;
    }
    let (dir, page) = dir_with_page("synchronized");
    let _feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let mut c = C::open(dir.path());
    let clock = vmclock::Clock::open(&page).unwrap();
    for i in 0..1000 {
        let r1 = gettime(ClockId::Realtime).unwrap();
        let (p1, e1) = page_now(&clock);
        let (earliest, latest, status) = c.reading();
        let (p2, _) = page_now(&clock);
        let r2 = gettime(ClockId::Realtime).unwrap();
        assert_eq!(status, C::SYNCHRONIZED, "reading {i}");
        // CLOCK_REALTIME at the client's read lies in [r1, r2]; the window holds it (a 3.x client
        // computed it from the counter and the page's map, and the page is 100 µs ahead).
        assert!(
            earliest <= r2 && latest >= r1,
            "reading {i}: [{earliest}, {latest}] misses CLOCK_REALTIME [{r1}, {r2}]"
        );
        // Honest: every time the page allows at that instant is inside (necessary conditions:
        // the page's time then lies in [p1, p2] and its maxerror is at least e1).
        assert!(earliest <= p2 - e1, "reading {i}: earliest {earliest} > page's earliest {}", p2 - e1);
        assert!(latest >= p1 + e1, "reading {i}: latest {latest} < page's latest {}", p1 + e1);
        if centre == Centre::Page {
            // The window is centred on the page's time (its map), not on CLOCK_REALTIME.
            let mid = (earliest + latest) / 2;
            assert!(mid >= p1 - 2 && mid <= p2 + 2, "reading {i}: centre {mid} is not the page's time [{p1}, {p2}]");
        }
        // And not absurdly wide: the page's offset + maxerror + 1 ms of growth at most.
        assert!(
            latest - earliest < 2 * (AHEAD_NS + MAXERROR_NS + 1_000_000),
            "reading {i}: {} ns wide",
            latest - earliest
        );
    }
}

/// A new disruption marker on the page: the client sees Disrupted, then Synchronized again.
/// Then, with disruption support on and the feed gone, a client opened on a page whose marker
/// changed reports `changed_marker` at once (it compares the markers itself).
pub fn a_disruption_is_seen_by_the_client<C: Reader>(changed_marker: C::Status) {
    if !supported() {
        return;
    }
    let (dir, page) = dir_with_page("synchronized");
    // 1 s intervals: Disrupted then lasts at least two of them (the hold-off), so a test thread
    // starved on a loaded machine still sees it (with 100 ms it could miss a 200 ms window).
    let feed = start_feed(&page, dir.path(), 1000, &["--disruption-support", "off"]);
    let mut c = C::open(dir.path());
    assert!(wait_status(&mut c, C::SYNCHRONIZED, Duration::from_secs(10)));
    // The page is replaced by one with another marker: the segment says Disrupted until the
    // new page is current (a page that is not updated again: after two intervals).
    gen_page(dir.path(), &page, 2, "synchronized");
    assert!(wait_status(&mut c, C::DISRUPTED, Duration::from_secs(10)), "the client never saw Disrupted");
    assert!(wait_status(&mut c, C::SYNCHRONIZED, Duration::from_secs(10)), "no recovery after the disruption");
    drop(feed);

    let feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "on"]);
    let mut c = C::open_with_page(dir.path(), &page);
    assert!(wait_status(&mut c, C::SYNCHRONIZED, Duration::from_secs(10)));
    drop(feed);
    gen_page(dir.path(), &page, 3, "synchronized");
    let mut fresh = C::open_with_page(dir.path(), &page);
    assert_eq!(fresh.reading().2, changed_marker, "a changed marker must void the segment");
}

/// The client's status follows the page's clock_status.
pub fn the_status_follows_the_page<C: Reader>() {
    if !supported() {
        return;
    }
    let (dir, page) = dir_with_page("freerunning");
    let _feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let mut c = C::open(dir.path());
    assert!(wait_status(&mut c, C::FREE_RUNNING, Duration::from_secs(10)), "FREERUNNING → FreeRunning");
    for (status, want) in [("unknown", C::UNKNOWN), ("synchronized", C::SYNCHRONIZED)] {
        gen_page(dir.path(), &page, 1, status);
        assert!(wait_status(&mut c, want, Duration::from_secs(10)), "{status} → {want:?}");
    }
    for status in ["initializing", "unreliable"] {
        gen_page(dir.path(), &page, 1, status);
        assert!(wait_status(&mut c, C::UNKNOWN, Duration::from_secs(10)), "{status} → Unknown");
        gen_page(dir.path(), &page, 1, "synchronized");
        assert!(wait_status(&mut c, C::SYNCHRONIZED, Duration::from_secs(10)));
    }
}

/// A feed (100 ms, life 2 s) killed with no last word once `C` reads Synchronized: the client,
/// its segment's stated `void_after` (ns, the clock the segment states it in) and the feed's
/// temporary directory. Judge against what the segment itself states, not against when the
/// test saw the kill: a feed starved on a loaded machine wrote its last update earlier than the
/// kill by an unknown time.
pub fn killed_feed<C: Reader>() -> (C, i128, tempfile::TempDir) {
    let (dir, page) = dir_with_page("synchronized");
    let feed = start_feed(&page, dir.path(), 100, &["--disruption-support", "off"]);
    let mut c = C::open(dir.path());
    assert!(wait_status(&mut c, C::SYNCHRONIZED, Duration::from_secs(10)));
    drop(feed);
    let b = std::fs::read(dir.path().join(C::SEGMENT)).unwrap();
    let (as_of, void_after) = (segment_time(&b, C::AS_OF_AT), segment_time(&b, C::AS_OF_AT + 16));
    assert_eq!(void_after - as_of, 2_000_000_000, "the life written is --life-ms");
    (c, void_after, dir)
}

/// The feed with the default layout (both segments), every 100 ms with a minute of life, so
/// that only its last word voids the segments.
pub fn start_long_lived_feed(page: &Path, dir: &Path) -> common::Daemon {
    let mut args = vec!["feed", "clockbound", "--source", page.to_str().unwrap(), "--dir", dir.to_str().unwrap()];
    args.extend(["--interval-ms", "100", "--life-ms", "60000", "--duration-s", "60"]);
    common::spawn_answering(&args, &dir.join("feed-clockbound.sock")).0
}
