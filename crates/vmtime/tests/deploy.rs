//! The production shape of the daemons: systemd notifications (READY, WATCHDOG), the metrics
//! endpoint (checked with promtool when it is installed: scripts/test-packaging provides it), log
//! lines under journald, the check for other time daemons, and the generated man pages and
//! completions. Nothing here changes this machine's clock: sync runs with --dry-run.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `sync_names_another_time_daemon` runs a process named chronyd: every other test here that
/// starts a sync holds this for reading, so that no sync of theirs sees that rival (tests run in
/// parallel threads).
static RIVAL: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn no_rival() -> std::sync::RwLockReadGuard<'static, ()> {
    RIVAL.read().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// promtool, if this machine has it (PROMTOOL, or on PATH).
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("promtool")).find(|p| p.exists())
}

/// `promtool check metrics` on an exposition: Ok(false) when promtool is not installed.
fn promtool_check(text: &str) -> bool {
    let Some(tool) = promtool() else {
        eprintln!(
            "promtool not installed: exposition checked by this test only (scripts/test-packaging runs promtool)"
        );
        return false;
    };
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// The daemon's name in its arguments: "host", "feed-chrony".
fn name_of(args: &[&str]) -> String {
    args.iter().take_while(|a| !a.starts_with('-')).copied().collect::<Vec<_>>().join("-")
}

/// Starts `vmtime ARGS` under a fake systemd (NOTIFY_SOCKET) and returns once it said READY=1:
/// the daemon has done its first work and offered its first figures to the metrics server.
fn start_ready(dir: &Path, args: &[&str]) -> Daemon {
    let path = dir.join(format!("notify-{}.sock", name_of(args)));
    let sock = UnixDatagram::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vmtime"))
        .args(args)
        .env("NOTIFY_SOCKET", &path)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon::from_child(child);
    wait_notify(&sock, &["READY=1"]);
    d
}

#[test]
fn each_daemon_serves_its_metrics_and_promtool_accepts_them() {
    let _rival = no_rival();
    let dir = tempfile::tempdir().unwrap();
    let host_page = dir.path().join("host.page");
    let guest_page = dir.path().join("guest.page");
    let (hp, rp, sp) = (free_port(), free_port(), free_port());
    let (h, g) = (host_page.to_str().unwrap(), guest_page.to_str().unwrap());
    let (hl, rl, sl) = (format!("127.0.0.1:{hp}"), format!("127.0.0.1:{rp}"), format!("127.0.0.1:{sp}"));
    let sync_sock = dir.path().join("sync.sock");
    let _host =
        start_ready(dir.path(), &["host", "--page", h, "--quiet", "--duration-s", "120", "--metrics-listen", &hl]);
    let _relay = start_ready(
        dir.path(),
        &["relay", "--host-page", h, "--guest-page", g, "--duration-s", "120", "--metrics-listen", &rl],
    );
    let _sync = start_ready(
        dir.path(),
        &[
            "sync",
            "--source",
            h,
            "--dry-run",
            "--socket",
            sync_sock.to_str().unwrap(),
            "--duration-s",
            "120",
            "--metrics-listen",
            &sl,
        ],
    );

    let host = scrape(hp);
    assert!(sample(&host, "vmtime_host_pages_published_total").unwrap() >= 1.0, "{host}");
    let age = sample(&host, "vmtime_host_page_age_seconds").unwrap();
    assert!((0.0..5.0).contains(&age), "page age {age}");
    assert!(sample(&host, "vmtime_host_last_observation_age_seconds").unwrap() < 5.0, "{host}");
    assert!(sample(&host, "vmtime_host_page_maxerror_seconds").unwrap() > 0.0);
    assert!(sample(&host, "vmtime_host_page_error_seconds").unwrap().abs() < 1e-3);
    assert!(host.contains("vmtime_host_subscribers "));
    assert!(host.contains("vmtime_host_subscribers_dropped_total 0\n"));
    let status_ones = host.lines().filter(|l| l.starts_with("vmtime_host_clock_status{") && l.ends_with(" 1")).count();
    assert_eq!(status_ones, 1, "one status is current: {host}");
    assert!(host.contains("vmtime_build_info{version=\"0.1.0\",role=\"host\"} 1\n"));

    // READY came after the relay's first guest page and sync's first observation.
    let relay = scrape(rp);
    assert!(sample(&relay, "vmtime_relay_guest_pages_total").unwrap() >= 1.0, "{relay}");
    assert!(sample(&relay, "vmtime_relay_page_age_seconds").unwrap() < 5.0, "{relay}");
    assert_eq!(sample(&relay, "vmtime_relay_holdover"), Some(0.0), "{relay}");
    let sync = scrape(sp);
    assert!(sample(&sync, "vmtime_sync_updates_total").unwrap() >= 1.0, "{sync}");
    assert!(sample(&sync, "vmtime_sync_offset_seconds").unwrap().abs() < 1.0, "{sync}");
    assert_eq!(sample(&sync, "vmtime_sync_dry_run"), Some(1.0));
    assert_eq!(sample(&sync, "vmtime_sync_holdover"), Some(0.0));
    assert!(sample(&sync, "vmtime_sync_last_good_observation_age_seconds").unwrap() < 10.0);
    assert!(sync.contains("vmtime_sync_frequency_ratio "));
    assert!(sync.contains("vmtime_sync_steps_total "));

    for text in [&host, &relay, &sync] {
        promtool_check(text);
    }
}

/// A page of this machine's clock (calibrated, SYNCHRONIZED, maxerror 50 µs) for the feeds.
fn feed_page(dir: &Path) -> PathBuf {
    let page = dir.join("feed.page");
    let mut args = gen_ahead_args(dir, &page, 0);
    args.extend(["--maxerror-ns", "50000"].map(String::from));
    vmtime_ok(&args);
    page
}

#[test]
fn feeds_serve_their_metrics_and_promtool_accepts_them() {
    if vmclock::counter::NATIVE == vmclock::abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = feed_page(dir.path());
    let p = page.to_str().unwrap();
    // chronyd's side of the SOCK refclock: a socket the test binds.
    let refclock = dir.path().join("refclock.sock");
    let chronyd = UnixDatagram::bind(&refclock).unwrap();
    let segdir = dir.path().join("clockbound");
    let (cp, bp) = (free_port(), free_port());
    let (cl, bl) = (format!("127.0.0.1:{cp}"), format!("127.0.0.1:{bp}"));
    let common = ["--source", p, "--interval-ms", "100", "--duration-s", "120"];
    let _chrony = start_ready(
        dir.path(),
        &[
            &["feed", "chrony", "--socket", refclock.to_str().unwrap(), "--metrics-listen", &cl][..],
            &["--control-socket", dir.path().join("chrony-ctl").to_str().unwrap()],
            &common,
        ]
        .concat(),
    );
    let _cb =
        start_ready(
            dir.path(),
            &[
                &[
                    "feed",
                    "clockbound",
                    "--dir",
                    segdir.to_str().unwrap(),
                    "--life-ms",
                    "60000",
                    "--metrics-listen",
                    &bl,
                ][..],
                &common,
            ]
            .concat(),
        );
    // READY came after the first sample was sent and the first segment written.
    chronyd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut b = [0u8; 64];
    assert_eq!(chronyd.recv(&mut b).expect("a sample"), 40);
    assert_eq!(std::fs::metadata(segdir.join("shm0")).unwrap().len(), 80, "the segment is written");

    let chrony = scrape(cp);
    assert!(sample(&chrony, "vmtime_feed_chrony_samples_sent_total").unwrap() >= 1.0, "{chrony}");
    assert_eq!(sample(&chrony, "vmtime_feed_chrony_send_failures_total"), Some(0.0), "{chrony}");
    assert_eq!(sample(&chrony, "vmtime_feed_chrony_send_failing"), Some(0.0), "{chrony}");
    assert!(sample(&chrony, "vmtime_feed_chrony_last_offset_seconds").unwrap().abs() < 1e-3, "{chrony}");
    assert!(sample(&chrony, "vmtime_feed_chrony_last_sample_age_seconds").unwrap() < 60.0, "{chrony}");
    assert!(sample(&chrony, "vmtime_feed_chrony_page_age_seconds").unwrap() < 600.0, "{chrony}");
    assert!(chrony.contains("vmtime_feed_chrony_held_total{reason=\"unreliable\"} 0\n"), "{chrony}");
    assert!(chrony.contains("vmtime_feed_chrony_held_total{reason=\"unreadable\"} 0\n"), "{chrony}");
    assert!(chrony.contains("vmtime_build_info{version=\"0.1.0\",role=\"feed-chrony\"} 1\n"));

    let cb = scrape(bp);
    assert!(sample(&cb, "vmtime_feed_clockbound_segment_writes_total").unwrap() >= 1.0, "{cb}");
    assert!(cb.contains("vmtime_feed_clockbound_status{status=\"SYNCHRONIZED\"} 1\n"), "{cb}");
    let bound = sample(&cb, "vmtime_feed_clockbound_bound_seconds").unwrap();
    assert!((50e-6..0.1).contains(&bound), "the bound covers the page's 50 µs: {bound}");
    assert!(sample(&cb, "vmtime_feed_clockbound_drift_ratio").unwrap() >= 15e-6, "the margin: {cb}");
    assert!(sample(&cb, "vmtime_feed_clockbound_segment_age_seconds").unwrap() < 60.0, "{cb}");
    assert!(sample(&cb, "vmtime_feed_clockbound_last_bounded_age_seconds").unwrap() < 60.0, "{cb}");
    assert!(cb.contains("vmtime_feed_clockbound_held_total{reason=\"disrupted\"} 0\n"), "{cb}");

    for text in [&chrony, &cb] {
        promtool_check(text);
    }
}

#[test]
fn a_metrics_address_off_loopback_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("host.page");
    let out =
        vmtime(&["host", "--page", page.to_str().unwrap(), "--metrics-listen", "0.0.0.0:9470", "--duration-s", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0:9470") && err.contains("is not a loopback address"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("loopback")).count(), 1, "one line: {err}");
}

/// Receives notify datagrams until `want` has been seen (bounded).
fn wait_notify(sock: &UnixDatagram, want: &[&str]) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !want.iter().all(|w| got.iter().any(|g: &String| g.contains(w))) {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification ({e}); so far {got:?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// Starts `vmtime ARGS` as systemd would with WatchdogSec=0.2s (NOTIFY_SOCKET, WATCHDOG_USEC and
/// WATCHDOG_PID) and checks READY=1 comes first, with a STATUS line, then WATCHDOG=1 pings.
fn ready_and_pings(dir: &Path, args: &[&str]) -> Daemon {
    let path = dir.join(format!("watchdog-{}.sock", name_of(args)));
    let sock = UnixDatagram::bind(&path).unwrap();
    // systemd names the watched process in WATCHDOG_PID: the shell's pid, kept by exec.
    let child = Command::new("sh")
        .arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vmtime"))
        .args(args)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon::from_child(child);
    let got = wait_notify(&sock, &["READY=1", "WATCHDOG=1"]);
    assert!(got[0].contains("READY=1") && got[0].contains("STATUS="), "{}: READY comes first: {got:?}", args[0]);
    // Pings keep coming (every half WATCHDOG_USEC, from the daemon's loop).
    wait_notify(&sock, &["WATCHDOG=1"]);
    d
}

#[test]
fn daemons_tell_systemd_they_are_ready_and_ping_the_watchdog() {
    let _rival = no_rival();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("host.page");
    let (p, g) = (page.to_str().unwrap(), dir.path().join("guest.page"));
    let sync_sock = dir.path().join("sync.sock");
    let _host = ready_and_pings(dir.path(), &["host", "--page", p, "--quiet", "--duration-s", "60"]);
    // Sync is ready after its first update, which needs a calibrated page.
    wait_calibrated(&page);
    let _relay = ready_and_pings(
        dir.path(),
        &["relay", "--host-page", p, "--guest-page", g.to_str().unwrap(), "--duration-s", "60"],
    );
    let _sync = ready_and_pings(
        dir.path(),
        &["sync", "--source", p, "--dry-run", "--socket", sync_sock.to_str().unwrap(), "--duration-s", "60"],
    );
}

#[test]
fn feeds_tell_systemd_they_are_ready_and_ping_the_watchdog_between_turns() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("feed.page");
    let out = vmtime(&["gen", page.to_str().unwrap(), "--tai-offset", "37", "--maxerror-ns", "1000"]);
    assert!(out.status.success());
    let p = page.to_str().unwrap();
    // Turns an hour (chrony) and half an hour (ClockBound) apart: the pings still come every
    // 100 ms. No chronyd listens: the feed is ready all the same, and says so in its status.
    let nowhere = dir.path().join("no-chronyd.sock");
    let path = dir.path().join("watchdog-feed-chrony-status.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vmtime"))
        .args(["feed", "chrony", "--source", p, "--socket", nowhere.to_str().unwrap()])
        .args(["--control-socket", dir.path().join("ctl").to_str().unwrap()])
        .args(["--interval-ms", "3600000", "--duration-s", "60"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _chrony = Daemon::from_child(child);
    let got = wait_notify(&sock, &["READY=1", "WATCHDOG=1"]);
    assert!(got[0].contains("READY=1"), "{got:?}");
    assert!(got[0].contains(&format!("STATUS=chronyd takes no sample at {}", nowhere.display())), "{got:?}");
    wait_notify(&sock, &["WATCHDOG=1"]);
    let _cb = ready_and_pings(
        dir.path(),
        &[
            "feed",
            "clockbound",
            "--source",
            p,
            "--dir",
            dir.path().join("cb").to_str().unwrap(),
            "--interval-ms",
            "1800000",
            "--life-ms",
            "3600000",
            "--duration-s",
            "60",
        ],
    );
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let run = |journal: bool| {
        let log = dir.path().join(format!("log{journal}"));
        // A page of its own: a new page is published at once (a page taken over waits for an
        // interval, as long as the whole run).
        let page = dir.path().join(format!("host{journal}.page"));
        let f = std::fs::File::create(&log).unwrap();
        let m = f.metadata().unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmtime"));
        c.args(["host", "--page", page.to_str().unwrap(), "--quiet", "--duration-s", "1"])
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .stderr(f)
            .env_remove("JOURNAL_STREAM");
        if journal {
            c.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        assert!(c.status().unwrap().success());
        std::fs::read_to_string(&log).unwrap()
    };
    let journal = run(true);
    let line = journal.lines().find(|l| l.contains("serving metrics on")).expect(&journal);
    assert_eq!(line, format!("<6>serving metrics on http://127.0.0.1:{port}/metrics"));
    let plain = run(false);
    let line = plain.lines().find(|l| l.contains("serving metrics on")).expect(&plain);
    let (ts, rest) = line.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line}");
    assert!(rest.trim_start().starts_with("INFO serving metrics"), "{line}");
}

#[test]
fn sync_names_another_time_daemon() {
    let _rival = RIVAL.write().unwrap_or_else(|e| e.into_inner());
    // A process named chronyd (a copy of sleep), not started with -x: a dry run names it and goes
    // on (it changes nothing); without --dry-run the same check refuses to start (exit 3), which
    // this test does not run because it would be a clock-changing daemon on this machine.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("chronyd");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let rival = Command::new(&fake).arg("60").spawn().unwrap();
    let rival = Daemon::from_child(rival);
    let page = dir.path().join("host.page");
    let out = vmtime(&["gen", page.to_str().unwrap(), "--tai-offset", "37", "--maxerror-ns", "1000"]);
    assert!(out.status.success());
    let out = vmtime(&[
        "sync",
        "--source",
        page.to_str().unwrap(),
        "--dry-run",
        "--socket",
        dir.path().join("s.sock").to_str().unwrap(),
        "--duration-s",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("chronyd (pid {}) is running and may discipline the clock", rival.pid())), "{err}");
    assert!(err.contains("--allow-other-daemon"), "{err}");
    let out = vmtime(&[
        "sync",
        "--source",
        page.to_str().unwrap(),
        "--dry-run",
        "--allow-other-daemon",
        "--socket",
        dir.path().join("s.sock").to_str().unwrap(),
        "--duration-s",
        "1",
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("chronyd"));
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let comp = dir.path().join("comp");
    assert!(vmtime(&["generate", "man", man.to_str().unwrap()]).status.success());
    assert!(vmtime(&["generate", "completions", comp.to_str().unwrap()]).status.success());
    let help = String::from_utf8(vmtime(&["--help"]).stdout).unwrap();
    let subs: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .take_while(|w| *w != "Options:")
        .filter(|w| *w != "help")
        .collect();
    assert!(subs.len() >= 10, "{subs:?}");
    assert!(!subs.contains(&"generate"), "the generator is hidden");
    for s in &subs {
        let page =
            std::fs::read_to_string(man.join(format!("vmtime-{s}.1"))).unwrap_or_else(|_| panic!("no page for {s}"));
        assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH"), "{s}: not roff");
        // roff writes every hyphen as \- (vmtime\-kvm\-tsc).
        assert!(page.contains(&format!("vmtime\\-{}", s.replace('-', "\\-"))), "{s}: its name");
        for section in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
            assert!(page.contains(section), "{s}: no {section}");
        }
    }
    let top = std::fs::read_to_string(man.join("vmtime.1")).unwrap();
    assert!(top.contains(".TH vmtime 1"));
    let host = std::fs::read_to_string(man.join("vmtime-host.1")).unwrap();
    for flag in ["\\-\\-log\\-level", "\\-\\-metrics\\-listen", "\\-\\-config"] {
        assert!(host.contains(flag), "vmtime-host.1 lacks {flag}");
    }
    // The help as the parser gives it, ranges included.
    assert!(host.contains("[allowed:"), "vmtime-host.1 has the allowed ranges");
    for (f, needle) in
        [("vmtime.bash", "_vmtime()"), ("_vmtime", "#compdef vmtime"), ("vmtime.fish", "complete -c vmtime")]
    {
        let t = std::fs::read_to_string(comp.join(f)).unwrap();
        assert!(t.contains(needle), "{f}");
        assert!(t.contains("metrics-listen"), "{f}: the daemon flags");
    }
}
