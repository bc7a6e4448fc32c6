//! `vmtime sync --once --dry-run` and `vmtime waitsync` on page files of this machine's clock:
//! exit statuses, the one-line reasons, the dry run's output, and nothing changed here.
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MS: i128 = 1_000_000;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = vmtime(args);
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Every `sync --once` here gives --allow-other-daemon: a chronyd or ntpd that runs on this
// machine (chrony installed, or another test's `chronyd -x`) adds its warning line, which is not
// what these tests count.
fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn sync_once_dry_run_steps_once_sets_tai_and_changes_nothing() {
    let before = vmtime_sys::read_timex().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    // The page is 250 ms ahead of this clock: the clock is 250 ms behind it.
    gen_bounded_page(dir.path(), &page, 250 * MS, 50_000, 7, "synchronized");
    let (code, out, err) = run(&["sync", "--once", "--dry-run", "--allow-other-daemon", "--source", p(&page)]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let step = lines.iter().find(|l| l.starts_with("dry run: would step CLOCK_REALTIME by +")).expect("a step");
    let us: f64 =
        step.trim_start_matches("dry run: would step CLOCK_REALTIME by +").trim_end_matches(" µs").parse().unwrap();
    assert!((us - 250_000.0).abs() < 2_000.0, "{step}");
    assert!(lines.contains(&"dry run: would set the TAI offset to 37 s"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("dry run: would set synchronised (STA_UNSYNC clear), maxerror")),
        "{out}"
    );
    assert!(!out.contains("frequency"), "no frequency from one observation: {out}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("dry run: would step")).count(), 1, "{out}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("vmtime sync --once: ") && last.contains("would step by +") && last.contains("marker 0x7"),
        "{last}"
    );
    assert!(last.ends_with("(dry run: nothing was changed)"), "{last}");
    // Nothing on this machine was changed.
    let after = vmtime_sys::read_timex().unwrap();
    assert_eq!((before.tai, before.status & 0x0031), (after.tai, after.status & 0x0031));
}

#[test]
fn sync_once_says_in_one_line_why_it_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_bounded_page(dir.path(), &page, 0, 50_000, 1, "unreliable");
    let (code, out, err) = run(&["sync", "--once", "--dry-run", "--allow-other-daemon", "--source", p(&page)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(p(&page)) && err.contains("UNRELIABLE") && err.contains("the clock is left as it is"),
        "{err}"
    );
    // No page at all.
    let missing = dir.path().join("missing");
    let (code, _, err) = run(&["sync", "--once", "--dry-run", "--allow-other-daemon", "--source", p(&missing)]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(p(&missing)), "{err}");
}

#[test]
fn waitsync_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    // 5 ms ahead, bound 50 µs: outside by ~4.95 ms.
    gen_bounded_page(dir.path(), &page, 5 * MS, 50_000, 1, "synchronized");
    let t0 = Instant::now();
    let (code, out, err) = run(&["waitsync", "--source", p(&page), "--max-error-ns", "0", "--timeout-s", "1"]);
    let took = t0.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(took >= Duration::from_secs(1), "gave up early: {took:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not synchronised after 1 s") && err.contains("CLOCK_REALTIME is -"), "{err}");
    // Widened by 10 ms it is inside: exit 0 at once.
    let (code, out, err) = run(&["waitsync", "--source", p(&page), "--max-error-ns", "10000000", "--timeout-s", "5"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("vmtime waitsync: CLOCK_REALTIME is inside"), "{out}");
    // Usage errors: 2, one line.
    for args in [
        vec!["waitsync", "--source", p(&page), "--timeout-s", "1"],
        vec!["waitsync", "--source", p(&page), "--max-error-ns", "-1", "--timeout-s", "1"],
        vec!["waitsync", "--max-error-ns", "0", "--timeout-s", "1", "--bogus"],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // A page that is not there: waited for, then 1 with the reason.
    let (code, _, err) =
        run(&["waitsync", "--source", p(&dir.path().join("none")), "--max-error-ns", "0", "--timeout-s", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("none") && err.contains("No such file"), "{err}");
}

#[test]
fn waitsync_returns_once_the_page_says_the_clock_is_inside() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    gen_bounded_page(dir.path(), &page, 0, 50_000, 1, "initializing");
    let child = Command::new(bin_for(&["waitsync"]))
        .args(["waitsync", "--source", p(&page), "--max-error-ns", "0", "--timeout-s", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Still waiting on an INITIALIZING page; then the page is synchronised.
    let pid = child.id();
    let waiting = (0..20).all(|_| {
        std::thread::sleep(Duration::from_millis(10)); // sampling whether it is still alive
        Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(waiting, "waitsync exited on an INITIALIZING page");
    gen_bounded_page(dir.path(), &page, 0, 50_000, 1, "synchronized");
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stdout).contains("inside"));
}
