//! `vmtime feed chrony` against a socket bound where chronyd would bind it: the datagrams'
//! layout and values, silence while the page is unreliable, and after a disruption until the
//! new page is current. (scripts/test-interop-chrony runs the real chronyd.)
mod common;
use common::spawn_answering;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;
use vmtime_sys::clock::{gettime, ClockId};

const AHEAD_NS: i128 = 200_000;

/// A page of this machine's clock moved 200 µs ahead, with `extra` gen options.
fn gen_page(dir: &Path, page: &Path, extra: &[&str]) {
    let mut args = common::gen_ahead_args(dir, page, AHEAD_NS);
    args.extend(["--maxerror-ns", "50000"].iter().chain(extra).map(|a| a.to_string()));
    common::vmtime_ok(&args);
}

struct Sample {
    tv_ns: i128,
    offset: f64,
    pulse: i32,
    leap: i32,
}

fn recv(sock: &UnixDatagram) -> Option<Sample> {
    let mut b = [0u8; 64];
    let n = match sock.recv(&mut b) {
        Ok(n) => n,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
        Err(e) => panic!("recv: {e}"),
    };
    assert_eq!(n, 40, "a sock_sample is 40 bytes");
    let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
    let i32_at = |o: usize| i32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(i32_at(36), 0x534f434b, "magic");
    Some(Sample {
        tv_ns: i64_at(0) as i128 * 1_000_000_000 + i64_at(8) as i128 * 1000,
        offset: f64::from_ne_bytes(b[16..24].try_into().unwrap()),
        pulse: i32_at(24),
        leap: i32_at(28),
    })
}

#[test]
fn samples_pause_while_unreliable_and_after_a_disruption() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, &["--disruption-marker", "1"]);
    let path = dir.path().join("refclock.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _feed = spawn_answering(
        &[
            "feed",
            "chrony",
            "--source",
            page.to_str().unwrap(),
            "--socket",
            path.to_str().unwrap(),
            "--control-socket",
            dir.path().join("ctl").to_str().unwrap(),
        ]
        .into_iter()
        .chain(["--interval-ms", "100", "--duration-s", "60"])
        .collect::<Vec<_>>(),
        &dir.path().join("ctl"),
    );
    for _ in 0..5 {
        let s = recv(&sock).expect("a sample every 100 ms");
        let now = gettime(ClockId::Realtime).unwrap();
        // Never from the future; recent (10 s: samples may wait in the queue while this test is
        // starved on a loaded machine).
        assert!((now - 10_000_000_000..=now).contains(&s.tv_ns), "labelled with CLOCK_REALTIME at the measurement");
        assert!((s.offset - 200e-6).abs() < 20e-6, "offset {} s, expected +200 µs (page ahead)", s.offset);
        assert_eq!((s.pulse, s.leap), (0, 0));
    }

    // Unreliable: silence. The new page is made aside and renamed in (as a publisher does), the
    // queue drained just before: after the rename, at most the one measurement under way when
    // it happened may still send (the next one reads the new page), however slow this test is.
    let next = dir.path().join("next");
    gen_page(dir.path(), &next, &["--disruption-marker", "1", "--status", "unreliable"]);
    sock.set_nonblocking(true).unwrap();
    while recv(&sock).is_some() {}
    sock.set_nonblocking(false).unwrap();
    std::fs::rename(&next, &page).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    let mut late = 0;
    while recv(&sock).is_some() {
        late += 1;
        assert!(late <= 1, "samples keep coming from an UNRELIABLE page");
    }

    // A new marker on a reliable page that is not updated again: silent for the hold-off (two
    // intervals from when the feed first read the new page, which is after the rename), then
    // samples again, with the page's leap state.
    gen_page(dir.path(), &next, &["--disruption-marker", "2", "--leap", "pre-pos"]);
    let marker_changed = gettime(ClockId::Monotonic).unwrap();
    std::fs::rename(&next, &page).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = recv(&sock).expect("samples resume once the new page is current");
    let gap = gettime(ClockId::Monotonic).unwrap() - marker_changed;
    assert!(gap >= 200_000_000, "a sample {gap} ns after the disruption, before the hold-off");
    assert_eq!(s.leap, 1, "PRE_POS is chrony's insert");
    assert!((s.offset - 200e-6).abs() < 20e-6);
}

#[test]
fn an_unreadable_page_is_logged_once_not_every_interval() {
    // A page file truncated to 10 bytes stays unreadable: one line saying so, not one per
    // interval (100 a second at 10 ms).
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    std::fs::write(&page, [0u8; 10]).unwrap();
    let path = dir.path().join("refclock.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmtime"))
        .args(["feed", "chrony", "--source", page.to_str().unwrap(), "--socket", path.to_str().unwrap()])
        .args(["--control-socket", dir.path().join("ctl").to_str().unwrap()])
        .args(["--interval-ms", "10", "--duration-s", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let n = err.lines().filter(|l| l.contains("is only 10 bytes")).count();
    assert_eq!(n, 1, "{err}");
}

#[test]
fn the_socket_is_named_for_what_is_wrong_and_followed_across_chronyd_restarts() {
    use common::wait_line;
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_page(dir.path(), &page, &[]);
    let src = page.to_str().unwrap();
    // A directory can never be chronyd's socket: refused at once, in one line.
    let out = common::vmtime(&[
        "feed",
        "chrony",
        "--source",
        src,
        "--socket",
        dir.path().to_str().unwrap(),
        "--control-socket",
        dir.path().join("ctl").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("a directory is there, not a socket"), "{err}");

    // chronyd not started yet: named, and followed once it binds (it creates the socket).
    let path = dir.path().join("refclock.sock");
    let (_feed, log) = common::spawn_logged(&[
        "feed",
        "chrony",
        "--source",
        src,
        "--socket",
        path.to_str().unwrap(),
        "--control-socket",
        dir.path().join("ctl").to_str().unwrap(),
        "--interval-ms",
        "50",
        "--duration-s",
        "120",
    ]);
    let within = Duration::from_secs(20);
    wait_line(&log, "no socket there: is chronyd running", within);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(recv(&sock).is_some(), "no sample once the socket exists");
    wait_line(&log, "chronyd receives samples again", within);

    // chronyd stops (its socket file stays), then someone leaves a regular file there: each is
    // named for what it is, once.
    drop(sock);
    wait_line(&log, "nobody listens on this socket", within);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not a socket").unwrap();
    wait_line(&log, "a regular file is there, not chronyd's socket", within);

    // chronyd starts again (it unlinks the path and binds): samples reach the new socket.
    std::fs::remove_file(&path).unwrap();
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(recv(&sock).is_some(), "no sample after chronyd restarted");
    wait_line(&log, "chronyd receives samples again", within);

    // chronyd stops reading: its queue fills (net.unix.max_dgram_qlen datagrams), the feed
    // drops samples without waiting and says so once; samples flow again when it reads.
    wait_line(&log, "chronyd is not reading its samples (its queue is full)", within);
    sock.set_nonblocking(true).unwrap();
    while recv(&sock).is_some() {}
    wait_line(&log, "chronyd receives samples again", within);
}

#[test]
fn a_page_whose_writer_seems_stuck_is_logged_once() {
    // seq_count odd for good (a writer that died mid-update, or junk): every read gives up after
    // its wait with a message counting attempts and µs, which differ each time; the feed logged
    // one line per interval. Now one, and the hold says the page cannot be read.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    common::vmtime_ok(
        &["gen", page.to_str().unwrap(), "--counter-hz", "1000000000", "--counter", "1", "--time-ns", "1"]
            .map(String::from),
    );
    let mut b = std::fs::read(&page).unwrap();
    b[12..16].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(&page, &b).unwrap();
    let path = dir.path().join("refclock.sock");
    // Run under sh to get the feed's CPU time from `times` (children's user and system time).
    let out = std::process::Command::new("sh")
        .args(["-c", "\"$0\" \"$@\" && times", env!("CARGO_BIN_EXE_vmtime")])
        .args(["feed", "chrony", "--source", page.to_str().unwrap(), "--socket", path.to_str().unwrap()])
        .args(["--control-socket", dir.path().join("ctl").to_str().unwrap()])
        .args(["--interval-ms", "10", "--duration-s", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let stuck = err.lines().filter(|l| l.contains("no consistent copy")).count();
    assert_eq!(stuck, 1, "{err}");
    assert!(err.contains("holding: the page cannot be read"), "{err}");
    // Each read of a stuck page spins for the seqlock's 100 ms wait: read every 10 ms, the feed
    // spent its life spinning (1.2 s of CPU in 3 s here; 0.12 s now). It now waits 1 s after such a read.
    let times = String::from_utf8_lossy(&out.stdout);
    let secs = |t: &str| {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let children = times.lines().nth(1).unwrap_or_else(|| panic!("times: {times:?}"));
    let cpu: f64 = children.split_whitespace().map(secs).sum();
    assert!(cpu < 0.6, "the feed used {cpu} s of CPU in 3 s on a stuck page");
}
