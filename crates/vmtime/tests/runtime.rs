//! Every daemon, on every source path, runs on the one runtime: started as systemd starts it
//! (`NOTIFY_SOCKET`, `WATCHDOG_USEC=2000000`, `WATCHDOG_PID`), it says READY=1 within 5 s, pings
//! the watchdog at least every second, answers `vmtime status`, and stops at once on SIGTERM.
//! (The PHC path, which needs a PTP clock, is covered by the runtime's own unit test.)

mod common;
use common::{vmtime, wait_calibrated, Supervised};
use std::path::Path;
use std::time::{Duration, Instant};

/// READY=1 within this long.
const READY: Duration = Duration::from_secs(5);
/// A watchdog ping at least this often.
const PING: Duration = Duration::from_secs(1);

/// READY, pings, `status` with its role, and SIGTERM's stop; the figures printed.
fn supervised(dir: &Path, args: &[&str], control: &Path, role: &str) -> serde_json::Value {
    let mut d = Supervised::start(dir, args, control);
    let ready = d.ready_within(READY);
    let longest = d.pings(3);
    let st = d.status();
    assert_eq!(st["role"], role, "{st}");
    assert!(st["server"]["answered"].as_u64().is_some(), "{st}");
    let t0 = Instant::now();
    let exit = d.daemon.terminate();
    let stop = t0.elapsed();
    println!(
        "FIGURES {}: READY after {ready:?}, longest watchdog gap {longest:?}, stopped {stop:?} after SIGTERM",
        args[..2].join(" ")
    );
    assert!(longest <= PING, "{}: a watchdog gap of {longest:?}", args[0]);
    assert!(exit.success() || args[0] == "host", "{}: {exit}", args[0]);
    st
}

fn gen(page: &Path, extra: &[&str]) {
    let mut args = vec!["gen", page.to_str().unwrap(), "--tai-offset", "37", "--maxerror-ns", "1000"];
    args.extend_from_slice(extra);
    let out = vmtime(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn host_relay_and_sync_on_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("host.page");
    let p = page.to_str().unwrap();
    let host = Supervised::start(
        dir.path(),
        &["host", "--page", p, "--quiet", "--duration-s", "120"],
        &dir.path().join("host.page.sock"),
    );
    // The host itself, judged while relay and sync follow it.
    let mut host = host;
    host.ready_within(READY);
    assert!(host.pings(2) <= PING);
    assert_eq!(host.status()["role"], "host");
    wait_calibrated(&page);
    let guest = dir.path().join("guest.page");
    let g = guest.to_str().unwrap();
    let st = supervised(
        dir.path(),
        &["relay", "--host-page", p, "--guest-page", g, "--duration-s", "120"],
        &dir.path().join("guest.page.sock"),
        "relay",
    );
    assert!(st["relayed"].as_u64().unwrap() >= 1, "{st}");
    let sock = dir.path().join("sync.sock");
    let st = supervised(
        dir.path(),
        &["sync", "--source", p, "--dry-run", "--socket", sock.to_str().unwrap(), "--duration-s", "120"],
        &sock,
        "sync",
    );
    assert!(st["updates"].as_u64().unwrap() >= 1, "{st}");
    let t0 = Instant::now();
    host.daemon.terminate();
    println!("FIGURES host: stopped {:?} after SIGTERM", t0.elapsed());
}

/// QEMU's page without a PHC: markers only, no time source. This path said no READY=1 and served
/// no metrics before the runtime.
#[test]
fn sync_on_a_markers_only_page() {
    use vmclock::abi::status;
    use vmclock::PageBuilder;
    if std::fs::read_dir("/sys/class/ptp").is_ok_and(|mut d| d.next().is_some()) {
        eprintln!("SKIP: this machine has a PHC, which vmtime sync would use");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("vmclock.page");
    let markers = PageBuilder::new().status(status::UNKNOWN).disruption_marker(7).vm_generation(1);
    std::fs::write(&page, markers.page_bytes()).unwrap();
    let sock = dir.path().join("sync.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["sync", "--source", page.to_str().unwrap(), "--dry-run", "--socket", sock.to_str().unwrap()];
    let args = [&args[..], &["--metrics-listen", &listen, "--duration-s", "120"]].concat();
    let mut d = Supervised::start(dir.path(), &args, &sock);
    d.ready_within(READY);
    assert!(d.pings(3) <= PING);
    let st = d.status();
    assert_eq!(st["discipline"]["state"], "no time source (markers only)", "{st}");
    assert_eq!(st["disruption_marker"], 7, "{st}");
    // The metrics endpoint serves this path too.
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics are served");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.contains("vmtime_build_info{") && text.contains("role=\"sync\""), "{text}");
    assert!(d.daemon.terminate().success());
}

#[test]
fn both_feeds() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("feed.page");
    gen(&page, &[]);
    let p = page.to_str().unwrap();
    // No chronyd listens: the feed still runs, and says so in its status.
    let ctl = dir.path().join("chrony-ctl.sock");
    let st = supervised(
        dir.path(),
        &[
            "feed",
            "chrony",
            "--source",
            p,
            "--socket",
            dir.path().join("no-chronyd.sock").to_str().unwrap(),
            "--control-socket",
            ctl.to_str().unwrap(),
            "--interval-ms",
            "3600000",
            "--duration-s",
            "120",
        ],
        &ctl,
        "feed",
    );
    assert!(st["socket"].as_str().unwrap().ends_with("no-chronyd.sock"), "{st}");
    let segs = dir.path().join("cb");
    let st = supervised(
        dir.path(),
        &[
            "feed",
            "clockbound",
            "--source",
            p,
            "--dir",
            segs.to_str().unwrap(),
            "--interval-ms",
            "1800000",
            "--life-ms",
            "3600000",
            "--duration-s",
            "120",
        ],
        &segs.join("feed-clockbound.sock"),
        "feed",
    );
    assert!(st["segment_writes"].as_u64().unwrap() >= 1, "{st}");
}
