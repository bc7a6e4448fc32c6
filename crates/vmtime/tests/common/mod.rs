//! Helpers shared by the daemon tests: start a daemon we own, wait until it answers on its
//! control socket or notifies (never on sleeps, never on its log wording as a readiness signal),
//! and stop it by its pid.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The guest's commands: with `VMTIME_BIN` set (scripts/test sets it to the guest binary,
/// scripts/guest-binary), the tests run them on that binary, so the guest binary's behaviour is
/// checked by the same tests as the full one's.
pub const GUEST_COMMANDS: &[&str] = &["sync", "waitsync", "now", "status", "show"];

/// The binary that runs `args`: `VMTIME_BIN` for a guest command when set, else the full
/// `vmtime`.
pub fn bin_for(args: &[&str]) -> std::ffi::OsString {
    let sub =
        args.iter().find(|a| !a.starts_with('-') && !matches!(**a, "debug" | "info" | "warn" | "error" | "trace"));
    match std::env::var_os("VMTIME_BIN") {
        Some(b) if sub.is_some_and(|s| GUEST_COMMANDS.contains(s)) => b,
        _ => env!("CARGO_BIN_EXE_vmtime").into(),
    }
}

pub fn vmtime(args: &[&str]) -> Output {
    Command::new(bin_for(args)).args(args).output().expect("run vmtime")
}

pub fn json(args: &[&str]) -> serde_json::Value {
    let out = vmtime(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// A daemon started by the test; killed (by its pid) when dropped.
pub struct Daemon(Child);

impl Daemon {
    /// Owns a child started by the test.
    pub fn from_child(c: Child) -> Self {
        Daemon(c)
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        self.0.wait().expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long a daemon may take to log an expected line after an event (a bound, not a pace).
pub const LINE_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a daemon may take to say it is ready (a bound, not a pace: a loaded machine).
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts the daemon `vmtime ARGS` and returns once its control socket `control` answers
/// `status`: the runtime answers only after the daemon's first turn (a host's first page, a
/// relay's first guest page, a feed's first sample or segment). Waits on that behaviour, never on
/// log wording; the daemon's stderr lines come on the channel.
pub fn spawn_answering(args: &[&str], control: &Path) -> (Daemon, std::sync::mpsc::Receiver<String>) {
    let (mut d, rx) = spawn_logged(args);
    wait_answering(control, &mut d, &rx);
    (d, rx)
}

/// Waits until the daemon's control socket `control` answers `status` (bounded by
/// [`READY_WITHIN`]; a daemon that exits meanwhile fails at once, with what it logged).
pub fn wait_answering(control: &Path, d: &mut Daemon, log: &std::sync::mpsc::Receiver<String>) -> serde_json::Value {
    let end = std::time::Instant::now() + READY_WITHIN;
    loop {
        if let Ok((line, _)) = vmtime_sys::serve::request(control, "status", std::time::Duration::from_secs(5)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v.get("role").is_some() {
                    return v;
                }
            }
        }
        let exited = d.0.try_wait().expect("try_wait");
        if exited.is_some() || std::time::Instant::now() >= end {
            let said: Vec<String> = log.try_iter().collect();
            panic!(
                "{} never answered status ({}); the daemon said {said:#?}",
                control.display(),
                exited.map_or(format!("not within {READY_WITHIN:?}"), |s| format!("it exited: {s}"))
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10)); // polls the socket; bounded above
    }
}

/// Sends SIGHUP to a daemon the test started.
pub fn hup(d: &Daemon) {
    use rustix::process::{kill_process, Pid, Signal};
    kill_process(Pid::from_raw(d.pid() as i32).expect("a pid"), Signal::HUP).expect("SIGHUP");
}

/// `vmtime host` publishing `page`, once it answers on its control socket.
pub fn start_host(page: &Path) -> (Daemon, std::sync::mpsc::Receiver<String>) {
    spawn_answering(
        &["host", "--page", page.to_str().unwrap(), "--quiet", "--duration-s", "120"],
        Path::new(&socket(page)),
    )
}

pub fn socket(page: &Path) -> String {
    format!("{}.sock", page.display())
}

/// Subscribes to a daemon's notifications.
pub fn subscribe(page: &Path) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(socket(page)).expect("connect");
    writeln!(s, "subscribe").unwrap();
    BufReader::new(s)
}

pub fn show(page: &Path) -> serde_json::Value {
    json(&["show", page.to_str().unwrap(), "--json"])
}

/// Waits (on notifications) until the page is calibrated (SYNCHRONIZED or FREERUNNING).
pub fn wait_calibrated(page: &Path) -> serde_json::Value {
    let mut r = subscribe(page);
    for _ in 0..50 {
        let mut seq = String::new();
        assert!(r.read_line(&mut seq).unwrap() > 0, "the daemon hung up");
        let v = show(page);
        let st = v["fields"]["clock_status"]["name"].as_str().unwrap_or("").to_string();
        if st == "SYNCHRONIZED" || st == "FREERUNNING" {
            return v;
        }
    }
    panic!("no calibrated page after 50 updates");
}

/// Runs `vmtime` with owned arguments and asserts that it succeeded.
pub fn vmtime_ok(args: &[String]) {
    let out = vmtime(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Writes a page of this machine's clock at `dir/base` (`vmtime gen`, calibrated over 300 ms)
/// and returns the `vmtime gen` arguments for a page at `page` on the same counter relation moved
/// `ahead_ns` ahead (TAI − UTC 37), for a test to add its own options to.
pub fn gen_ahead_args(dir: &Path, page: &Path, ahead_ns: i128) -> Vec<String> {
    let base = dir.join("base");
    let out = vmtime(&["gen", base.to_str().unwrap(), "--tai-offset", "37", "--calibrate-ms", "300"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = show(&base);
    let f = &v["fields"];
    let time_ns = f["time_sec"].as_u64().unwrap() as i128 * 1_000_000_000
        + ((f["time_frac_sec"].as_u64().unwrap() as u128 * 1_000_000_000) >> 64) as i128;
    [
        "gen",
        page.to_str().unwrap(),
        "--tai-offset",
        "37",
        "--counter",
        &f["counter_value"].as_u64().unwrap().to_string(),
        "--time-ns",
        &(time_ns + ahead_ns).to_string(),
        "--counter-hz",
        &(v["frequency_hz"].as_f64().unwrap().round() as u64).to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A page of this machine's clock moved `ahead_ns` ahead (`gen_ahead_args`), maxerror
/// `maxerror_ns`, period maxerror 1 ppm, disruption marker `marker`, clock_status `status`, as a
/// publisher leaves it: updated at least once (seq_count 2) and replaced atomically. (ClockBound's
/// clients cache their copy of the vmclock page by seq_count from 0, so a page still at seq_count 0
/// would read as marker 0.)
pub fn gen_bounded_page(dir: &Path, page: &Path, ahead_ns: i128, maxerror_ns: i128, marker: u64, status: &str) {
    let mut args = gen_ahead_args(dir, page, ahead_ns);
    let (maxerror, marker) = (maxerror_ns.to_string(), marker.to_string());
    let extra = [
        "--maxerror-ns",
        &maxerror,
        "--period-maxerror-ppb",
        "1000",
        "--disruption-marker",
        &marker,
        "--status",
        status,
    ];
    args.extend(extra.map(String::from));
    vmtime_ok(&args);
    let mut bytes = std::fs::read(page).unwrap();
    bytes[12..16].copy_from_slice(&2u32.to_le_bytes());
    let tmp = dir.join("page.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, page).unwrap();
}

/// Starts `vmtime ARGS` and hands its stderr lines over a channel, for a test that waits on
/// what a daemon logs while it runs ([`wait_line`]).
pub fn spawn_logged(args: &[&str]) -> (Daemon, std::sync::mpsc::Receiver<String>) {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_vmtime")).args(args).stderr(Stdio::piped()).spawn().expect("start daemon");
    let err = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = tx.send(l); // keep draining after the test stopped listening
        }
    });
    (Daemon(child), rx)
}

/// The next line containing `needle`, waiting at most `within`; panics with the lines seen.
pub fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, within: std::time::Duration) -> String {
    let end = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {needle:?} within {within:?}; saw {seen:#?}"),
        }
    }
}

/// A tiny SNTP responder on loopback for the cross-check tests: answers each client request with
/// this machine's CLOCK_REALTIME moved by `offset_ns` (root delay 0, root dispersion 1/1024 s),
/// or never answers (`answer: false`). Returns its address; it runs until the test ends.
pub fn sntp_responder(offset_ns: i64, answer: bool) -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if !answer || n < 48 || buf[0] & 7 != 3 {
                continue;
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128
                + offset_ns as i128;
            let secs = (now.div_euclid(1_000_000_000) + 2_208_988_800) as u64;
            let frac = ((now.rem_euclid(1_000_000_000) << 32) / 1_000_000_000) as u64;
            let ts = ((secs << 32) | frac).to_be_bytes();
            let mut p = [0u8; 48];
            p[0] = (4 << 3) | 4; // LI 0, version 4, server
            p[1] = 2; // stratum
            p[8..12].copy_from_slice(&64u32.to_be_bytes()); // root dispersion 64/65536 s
            p[12..16].copy_from_slice(b"TEST");
            p[24..32].copy_from_slice(&buf[40..48]); // origin = the client's transmit
            p[32..40].copy_from_slice(&ts);
            p[40..48].copy_from_slice(&ts);
            let _ = sock.send_to(&p, from);
        }
    });
    addr
}

/// A daemon started as systemd starts a `Type=notify` service with `WatchdogSec=2s`:
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC=2000000` and `WATCHDOG_PID` (its own pid: the shell's, kept by
/// `exec`). Tests wait on what it does (READY=1, WATCHDOG=1, `status` answering), never on its
/// log wording.
pub struct Supervised {
    pub daemon: Daemon,
    notify: std::os::unix::net::UnixDatagram,
    /// The control socket `vmtime status` asks.
    pub control: std::path::PathBuf,
    /// Every notification so far, with when it came.
    pub seen: Vec<(std::time::Instant, String)>,
}

/// The watchdog timeout the supervised daemons are given.
pub const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(2);

impl Supervised {
    /// Starts `vmtime ARGS`; its notifications go to a datagram socket in `dir`; `control` is
    /// its control socket.
    pub fn start(dir: &Path, args: &[&str], control: &Path) -> Supervised {
        let path = dir.join(format!("notify-{}.sock", args.iter().take(2).copied().collect::<Vec<_>>().join("-")));
        let notify = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        let child = Command::new("sh")
            .arg("-c")
            .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_vmtime"))
            .args(args)
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon");
        Supervised { daemon: Daemon::from_child(child), notify, control: control.to_path_buf(), seen: Vec::new() }
    }

    /// The next notification within `within`, or None.
    fn next(&mut self, within: std::time::Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).ok()?;
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        self.seen.push((std::time::Instant::now(), m.clone()));
        Some(m)
    }

    /// Waits for READY=1 (the first notification), bounded by `within`; the time it took.
    pub fn ready_within(&mut self, within: std::time::Duration) -> std::time::Duration {
        let t0 = std::time::Instant::now();
        let first = self.next(within).unwrap_or_else(|| panic!("no READY=1 within {within:?}"));
        assert!(first.contains("READY=1") && first.contains("STATUS="), "READY=1 with a STATUS comes first: {first:?}");
        t0.elapsed()
    }

    /// Collects `n` watchdog pings; the longest gap between two of them (the first gap counted
    /// from now). Fails if a ping does not come within the watchdog timeout.
    pub fn pings(&mut self, n: usize) -> std::time::Duration {
        let mut last = std::time::Instant::now();
        let mut longest = std::time::Duration::ZERO;
        let mut got = 0;
        while got < n {
            let m = self.next(WATCHDOG).unwrap_or_else(|| panic!("no WATCHDOG=1 within {WATCHDOG:?}: {:?}", self.seen));
            if m.contains("WATCHDOG=1") {
                let now = std::time::Instant::now();
                longest = longest.max(now - last);
                last = now;
                got += 1;
            }
        }
        longest
    }

    /// `vmtime status` on its control socket, as JSON.
    pub fn status(&self) -> serde_json::Value {
        json(&["status", "--socket", self.control.to_str().unwrap(), "--json"])
    }
}
