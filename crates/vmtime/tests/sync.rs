//! `vmtime sync --dry-run` on this machine: it follows a page, reports its offset, reacts to a
//! disruption, and changes nothing (this machine's NTP state is read before and after).
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn gen(page: &std::path::Path, marker: &str) {
    let out = vmtime(&[
        "gen",
        page.to_str().unwrap(),
        "--tai-offset",
        "37",
        "--maxerror-ns",
        "1000",
        "--period-maxerror-ppb",
        "100",
        "--calibrate-ms",
        "200",
        "--disruption-marker",
        marker,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn dry_run_follows_a_page_and_changes_nothing() {
    let before = vmtime_sys::read_timex().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("guest.page");
    let sock = dir.path().join("sync.sock");
    gen(&page, "1");
    let mut child = Command::new(bin_for(&["sync"]))
        .args([
            "sync",
            "--source",
            page.to_str().unwrap(),
            "--dry-run",
            "--duration-s",
            "60",
            "--socket",
            sock.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Lines arrive on a channel so the test can give up instead of hanging.
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(20)).expect("the daemon keeps talking");
    let mut lines = vec![next()];
    while !lines.iter().any(|l| l.contains("synchronised")) {
        lines.push(next());
    }
    assert!(lines.iter().any(|l| l.contains("would set the TAI offset to 37 s")), "{lines:?}");
    let st = json(&["status", "--socket", sock.to_str().unwrap(), "--json"]);
    assert_eq!(st["dry_run"], true);
    // A dry run changes nothing and so takes no single-instance lock.
    assert!(st["lock"].is_null(), "{st}");
    assert_eq!(st["discipline"]["state"], "synchronised");
    // The page was made from this machine's clock moments ago: the offset is small.
    assert!(st["discipline"]["offset_ns"].as_f64().unwrap().abs() < 50_000.0, "{st}");

    // A new disruption marker: it would step at once.
    gen(&page, "2");
    let stepped = (0..200).map(|_| next()).any(|l| l.contains("would step"));
    assert!(stepped, "a disruption makes it step");
    let _ = child.kill();
    let _ = child.wait();

    // Nothing on this machine was changed.
    let after = vmtime_sys::read_timex().unwrap();
    assert_eq!(
        (before.freq, before.tick, before.tai, before.status & 0x70),
        (after.freq, after.tick, after.tai, after.status & 0x70)
    );
}

/// QEMU's and Firecracker's pages carry markers only (counter INVALID, status UNKNOWN). `vmtime
/// sync` used to exit on them, so the VM-generation hook never ran; now it stays, says it has no
/// time source, and runs the hook when the generation changes. (Skipped on a machine with a PHC,
/// which sync would then use for time: tests never touch real devices.)
#[test]
fn a_markers_only_page_is_watched_for_the_hook() {
    use vmclock::abi::status;
    use vmclock::{Mapping, PageBuilder, WritableMapping, Writer};
    if std::fs::read_dir("/sys/class/ptp").is_ok_and(|mut d| d.next().is_some()) {
        eprintln!("SKIP: this machine has a PHC, which vmtime sync would use");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("vmclock.page");
    let sock = dir.path().join("sync.sock");
    let markers = |marker: u64, generation: u64| {
        PageBuilder::new().status(status::UNKNOWN).disruption_marker(marker).vm_generation(generation).build()
    };
    std::fs::write(&page, PageBuilder::new().page_bytes()).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&page).unwrap();
    let mut w = Writer::new(WritableMapping::new(Mapping::map(&f, true).unwrap()).unwrap());
    w.publish(&markers(1, 1));
    let mut child = Command::new(bin_for(&["sync"]))
        .args(["sync", "--source", page.to_str().unwrap(), "--dry-run", "--duration-s", "60"])
        // A turn every 10 min: the restore below is seen by a look at the markers between turns.
        .args(["--interval-ms", "600000", "--hook", "true", "--socket", sock.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let (etx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = etx.send(l);
        }
    });
    let out = child.stdout.take().unwrap();
    let mut d = Daemon::from_child(child);
    // Its state, once it has seen the first page (it answers after its first turn).
    let st = wait_answering(&sock, &mut d, &log);
    wait_line(&log, "no time source", LINE_WITHIN);
    assert_eq!(st["discipline"]["state"], "no time source (markers only)");
    assert_eq!(st["vm_generation_counter"], 1);
    // A restore from a snapshot: new generation, new marker → the hook.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    w.publish(&markers(2, 2));
    let t0 = std::time::Instant::now();
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("the hook line");
    println!("FIGURES markers only: the hook {:?} after the restore", t0.elapsed());
    assert!(line.contains("would run the generation hook"), "{line}");
    let st = json(&["status", "--socket", sock.to_str().unwrap(), "--json"]);
    assert_eq!((st["hooks_run"].as_u64(), st["vm_generation_counter"].as_u64()), (Some(1), Some(2)));
    drop(d);
}

/// `sync --dry-run --cross-check-ntp ADDR` against the responder; returns the status once the
/// cross-check's state is `want` (waiting at most a bound), with the daemon and its stdout lines.
fn cross_check_run(
    server: std::net::SocketAddr,
    want: &str,
) -> (serde_json::Value, Daemon, mpsc::Receiver<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("guest.page");
    let sock = dir.path().join("sync.sock");
    gen(&page, "1");
    let mut child = Command::new(bin_for(&["sync"]))
        .args([
            "sync",
            "--source",
            page.to_str().unwrap(),
            "--dry-run",
            "--duration-s",
            "60",
            "--socket",
            sock.to_str().unwrap(),
            "--cross-check-ntp",
            &server.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let d = Daemon::from_child(child);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = vmtime(&["status", "--socket", sock.to_str().unwrap(), "--json"]);
        if let Ok(st) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if st["cross_check"]["state"] == want && st["discipline"]["updates"].as_u64().unwrap_or(0) >= 3 {
                return (st, d, rx, dir);
            }
            assert!(std::time::Instant::now() < until, "cross_check never {want}: {st}");
        }
        assert!(std::time::Instant::now() < until, "no status");
        std::thread::sleep(Duration::from_millis(50)); // a poll interval between status requests, not a synchronisation
    }
}

/// Whether a SetState line (synchronised?, maxerror µs) matching `ok` is printed, the lines
/// since the start included, waiting at most a bound (the dry run prints changes only).
fn state_printed(rx: &mpsc::Receiver<String>, ok: impl Fn(bool, u64) -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
        if let Some(rest) = l.split("maxerror ").nth(1) {
            let us: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            last = Some((l.contains("would set synchronised"), us));
        }
        // The last state printed so far is the one in force; once it matches, done.
        if last.is_some_and(|(s, us)| ok(s, us)) && rx.try_recv().is_err() {
            return true;
        }
    }
    last.is_some_and(|(s, us)| ok(s, us))
}

#[test]
fn the_cross_check_agrees_with_a_server_that_agrees() {
    let (st, _d, rx, _dir) = cross_check_run(sntp_responder(0, true), "agree");
    let c = &st["cross_check"];
    // Within both bounds (the server's includes half the round trip: loopback, but a loaded
    // machine may delay either side by milliseconds).
    let bound = c["last"]["server_bound_ns"].as_f64().unwrap() + c["last"]["page_bound_ns"].as_f64().unwrap();
    assert!(c["offset_ns"].as_f64().unwrap().abs() <= bound, "{c}");
    assert!(c["server"].as_str().unwrap().starts_with("127.0.0.1:"), "{c}");
    assert_eq!((c["replies"].as_u64(), c["episodes"].as_u64()), (Some(1), Some(0)), "{c}");
    // The kernel is told synchronised, with the page's own small bound.
    assert!(state_printed(&rx, |synced, max_us| synced && max_us < 1_000));
}

#[test]
fn the_cross_check_raises_the_alarm_when_the_server_disagrees() {
    // The server is 500 ms ahead of this machine (and of the page made from its clock).
    let (st, _d, rx, _dir) = cross_check_run(sntp_responder(500_000_000, true), "disagree");
    let c = &st["cross_check"];
    let off = c["offset_ns"].as_f64().unwrap();
    // 500 ms, to within the server's bound (half the round trip: a loaded machine may delay
    // either side by milliseconds).
    assert!((off - 5e8).abs() <= c["last"]["server_bound_ns"].as_f64().unwrap(), "{c}");
    assert_eq!(c["episodes"].as_u64(), Some(1), "{c}");
    // Never steered: the page is still followed (a small offset to it), no step.
    assert!(st["discipline"]["offset_ns"].as_f64().unwrap().abs() < 50_000.0, "{st}");
    assert_eq!(st["discipline"]["steps"].as_u64(), Some(0), "{st}");
    // The kernel's maxerror covers the disagreement and the clock is left unsynchronised.
    assert!(state_printed(&rx, |synced, max_us| !synced && max_us >= 500_000));
}

#[test]
fn a_server_that_never_answers_stalls_nothing() {
    let (st, _d, rx, _dir) = cross_check_run(sntp_responder(0, false), "no_reply");
    let c = &st["cross_check"];
    assert_eq!((c["queries"].as_u64(), c["replies"].as_u64()), (Some(1), Some(0)), "{c}");
    assert_eq!(c["timeouts"].as_u64(), Some(1), "{c}");
    assert!(c["interval_s"].as_f64().unwrap() >= 16.0, "backed off: {c}");
    // The discipline went on meanwhile: synchronised, updating every interval.
    assert_eq!(st["discipline"]["state"], "synchronised", "{st}");
    assert!(state_printed(&rx, |synced, _| synced), "no answer is no verdict");
}

/// At rest the interval between observations grows (here from 20 ms towards 30 s), and a new
/// page is still observed within the shortest interval: the marker checks see its `seq_count`.
/// Once the interval in force is 2.56 s or more, an ordinary update (the page's maxerror changed
/// in place, markers unchanged) written right after an observation must be observed within 1 s,
/// long before the next observation the interval alone would bring. (The interval grows within
/// ~3 s of the start: a dry run corrects nothing, so the page must stay within 50 µs of this
/// machine's clock that long, 15 ppm.)
#[test]
fn a_new_page_is_observed_at_once_when_the_interval_has_grown() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("guest.page");
    let sock = dir.path().join("sync.sock");
    gen(&page, "1");
    let _sync = Daemon::from_child(
        Command::new(bin_for(&["sync"]))
            .args(["sync", "--source", page.to_str().unwrap(), "--dry-run", "--duration-s", "120"])
            .args(["--interval-ms", "20", "--max-interval-ms", "30000", "--socket", sock.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = || {
        let out = vmtime(&["status", "--socket", sock.to_str().unwrap(), "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let updates = |st: &serde_json::Value| st["updates"].as_u64().unwrap_or(0);
    let interval_s = |st: &serde_json::Value| st["discipline"]["interval_s"].as_f64().unwrap_or(0.0);
    // Quiet updates double the interval: 0.04, 0.08, … 2.56 s.
    let t0 = std::time::Instant::now();
    let mut st = status();
    while interval_s(&st) < 2.56 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the interval did not grow: {st}");
        std::thread::sleep(Duration::from_millis(20));
        st = status();
    }
    assert_eq!(st["discipline"]["state"], "synchronised", "{st}");
    // The next observation: the page is written right after it, a whole interval before the
    // one after.
    let before = updates(&st);
    while updates(&st) == before {
        assert!(t0.elapsed() < Duration::from_secs(120), "no observation: {st}");
        std::thread::sleep(Duration::from_millis(10));
        st = status();
    }
    assert!(interval_s(&st) >= 2.56, "{st}");
    let before = updates(&st);
    let maxerror = st["discipline"]["source_maxerror_ns"].as_f64().unwrap();
    // An ordinary update in place: a new seq_count and maxerror, the same markers.
    let mut bytes = std::fs::read(&page).unwrap();
    let at = std::mem::offset_of!(vmclock::abi::VmclockAbi, time_maxerror_nanosec);
    let m = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    bytes[at..at + 8].copy_from_slice(&(m + 7_000).to_le_bytes());
    let written = std::time::Instant::now();
    let map = vmclock::Mapping::open_rw(&page).expect("the page file maps writable");
    vmclock::seqlock::publish_words(vmclock::seqlock::PageMemory::words(&map), &bytes[..vmclock::abi::ABI_SIZE]);
    loop {
        let st = status();
        let seen = st["discipline"]["source_maxerror_ns"].as_f64().unwrap_or(0.0);
        if updates(&st) > before && seen > maxerror + 5_000.0 {
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(1), "the new page was not observed within 1 s: {st}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
