//! Issue 12, classes 1–6, tried against the real daemons: hostile clients, things planted at
//! page and socket paths, shared directories, second writers, signals, shrinking pages and
//! state that cannot be read or written. Every wait is on the daemon's own output, exit or
//! answers (bounded by a deadline), never a sleep. Nothing here changes this machine's clock:
//! `sync` runs with --dry-run, host and relay only read it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vmtime");
const DEADLINE: Duration = Duration::from_secs(30);

fn vmtime(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run vmtime")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A process the test started: its output lines arrive on a channel; killed by pid on drop.
struct Proc {
    child: Child,
    rx: Receiver<String>,
    seen: Vec<String>,
}

fn spawn_cmd(mut cmd: Command) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let (tx, rx) = channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    std::thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).try_for_each(|l| tx2.send(l)));
    Proc { child, rx, seen: Vec::new() }
}

fn spawn(args: &[&str]) -> Proc {
    let mut c = Command::new(BIN);
    c.args(args);
    spawn_cmd(c)
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an output line containing `needle`.
    fn wait_line(&mut self, needle: &str) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            match self.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e:?}); seen: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the process to end (its output closes), bounded.
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            match self.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
                Err(RecvTimeoutError::Timeout) => panic!("still running; seen: {:#?}", self.seen),
            }
        }
    }

    /// Sends a signal to this process (by its pid).
    fn signal(&self, sig: &str) {
        use rustix::process::{kill_process, Pid, Signal};
        let sig = match sig {
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "HUP" => Signal::HUP,
            other => panic!("no signal {other}"),
        };
        kill_process(Pid::from_raw(self.pid() as i32).unwrap(), sig).unwrap();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until its control socket answers `status` (after the daemon's first turn),
    /// bounded; a daemon that exits meanwhile fails at once, with what it said.
    fn wait_answering(&mut self, control: &Path) {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok((line, _)) = vmtime_sys::serve::request(control, "status", Duration::from_secs(5)) {
                if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v.get("role").is_some()) {
                    return;
                }
            }
            if !self.running() || Instant::now() >= end {
                self.seen.extend(self.rx.try_iter());
                panic!("{} never answered status; seen: {:#?}", control.display(), self.seen);
            }
            std::thread::sleep(Duration::from_millis(10)); // polls the socket; bounded above
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sock(page: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sock", page.display()))
}

fn gen(page: &Path) {
    let o = vmtime(&[
        "gen",
        page.to_str().unwrap(),
        "--tai-offset",
        "37",
        "--maxerror-ns",
        "1000",
        "--period-maxerror-ppb",
        "100",
        "--calibrate-ms",
        "50",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn status(socket: &Path) -> serde_json::Value {
    let (line, _) = vmtime_sys::serve::request(socket, "status", Duration::from_secs(5)).expect("status");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Asks for the status until `ok` holds (each answer is the daemon's own word; bounded).
fn wait_status(socket: &Path, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let v = status(socket);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < end, "{}: never {what}: {v}", socket.display());
    }
}

fn host(page: &Path) -> Proc {
    let mut h = spawn(&["host", "--page", page.to_str().unwrap(), "--quiet", "--duration-s", "120"]);
    h.wait_answering(&sock(page));
    h
}

fn relay(host_page: &Path, guest: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["relay", "--host-page", host_page.to_str().unwrap(), "--guest-page", guest.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--duration-s", "120"]);
    let mut r = spawn(&args);
    r.wait_answering(&sock(guest));
    r
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn class1_the_host_keeps_publishing_while_clients_misbehave() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    let h = host(&page);
    let s = sock(&page);

    // A stopped `vmtime watch`: subscribes, never reads again (held to the end).
    let mut stopped = UnixStream::connect(&s).unwrap();
    stopped.write_all(b"subscribe\n").unwrap();

    // 1. 200 idle connections. Requests meanwhile are answered at once ("busy" while the idle
    //    ones hold every slot is an answer too); the idle ones are closed at their deadline.
    let mut idle: Vec<UnixStream> = (0..200).filter_map(|_| UnixStream::connect(&s).ok()).collect();
    let mut slowest = Duration::ZERO;
    let mut busy = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let (line, _) = vmtime_sys::serve::request(&s, "status", Duration::from_secs(2)).expect("an answer");
        slowest = slowest.max(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        busy += usize::from(v.get("error").is_some());
    }
    for c in &mut idle {
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut sink = Vec::new();
        std::io::Read::read_to_end(c, &mut sink).expect("closed by the daemon, not by the timeout");
    }
    drop(idle);

    // 2. One byte every 100 ms (the pace is the attack's, not a synchronisation): cut off at
    //    the whole-request deadline.
    let mut c = UnixStream::connect(&s).unwrap();
    let mut slow_sent = 0;
    for b in b"status status status status".iter().take(25) {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        slow_sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(c);

    // 3. A 1.5 GB request line: the daemon reads 4 KiB, answers, closes; its memory stays flat.
    let rss0 = rss_kib(h.pid());
    let mut c = UnixStream::connect(&s).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut big_sent = 0u64;
    while big_sent < 1_500_000_000 {
        match c.write(&chunk) {
            Ok(n) => big_sent += n as u64,
            Err(_) => break,
        }
    }
    let rss1 = rss_kib(h.pid());

    let st = status(&s);
    let gap_ms = st["loop"]["max_gap_ms"].as_f64().unwrap();
    let srv = &st["server"];
    println!(
        "FIGURES host: largest publishing-loop gap {gap_ms:.1} ms (poll every {} ms, interval 1000 ms); \
         slowest answer among 20 status requests beside 200 idle connections {:.1} ms ({busy} busy); \
         slow client cut off after {slow_sent} bytes; \
         VmRSS {rss0} KiB before, {rss1} KiB after a 1.5 GB request line (the client got {big_sent} bytes in); \
         pages published {}; server {srv}",
        st["loop"]["poll_ms"],
        slowest.as_secs_f64() * 1e3,
        st["stats"]["published"],
    );
    assert!(gap_ms < 1000.0, "the publishing path stalled {gap_ms} ms (more than one interval)");
    assert_eq!(srv["too_long"], 1, "{srv}");
    assert!(srv["refused_busy"].as_u64().unwrap() >= 100, "{srv}");
    assert!(srv["timed_out"].as_u64().unwrap() >= 2, "the idle and the slow client: {srv}");
    assert!(slowest < Duration::from_secs(1), "requests are answered at once even when busy");
    assert!(big_sent < 1_500_000_000, "the host stopped reading the huge line");
    assert!(rss1 < rss0 + 1024, "memory grew from {rss0} to {rss1} KiB");
    assert!(slow_sent < 25, "the slow client was cut off at its deadline");
    drop(stopped);
}

#[test]
fn class1_watch_and_relay_poll_the_page_when_the_publisher_does_not_answer() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    gen(&page);
    // A publisher that is stuck: its socket accepts nothing and answers nothing.
    let _stuck = UnixListener::bind(sock(&page)).unwrap();
    let mut w = spawn(&["watch", page.to_str().unwrap(), "--count", "1", "--poll-ms", "5"]);
    w.wait_line("seq ");
    let mut r = relay(&page, &d.path().join("guest.page"), &[]);
    r.wait_line("by polling");
    // The page changes without any notification: both see it.
    let mut bytes = std::fs::read(&page).unwrap();
    let seq = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) + 2;
    bytes[12..16].copy_from_slice(&seq.to_le_bytes());
    std::fs::set_permissions(&page, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&page, &bytes).unwrap();
    w.wait_line(&format!("seq {seq}"));
    assert!(w.wait_exit().success());
    let end = Instant::now() + DEADLINE;
    while status(&sock(&d.path().join("guest.page")))["last_host_seq"] != seq {
        assert!(Instant::now() < end, "the relay did not poll the page");
    }
    assert!(r.running());
}

/// A character device made in the test's own directory (never a real /dev node).
fn mknod_char(path: &Path) -> bool {
    Command::new("mknod").arg(path).args(["c", "1", "5"]).status().is_ok_and(|s| s.success())
}

#[test]
fn class2_daemons_refuse_devices_and_foreign_files_and_leave_them_intact() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    let dev = d.path().join("zero");
    if mknod_char(&dev) {
        for args in [
            vec!["host", "--page", dev.to_str().unwrap(), "--duration-s", "1"],
            vec!["gen", dev.to_str().unwrap()],
            vec!["relay", "--host-page", host_page.to_str().unwrap(), "--guest-page", dev.to_str().unwrap()],
        ] {
            let o = vmtime(&args);
            assert!(!o.status.success(), "{args:?}");
            let e = stderr(&o);
            assert!(e.contains(dev.to_str().unwrap()) && e.contains("a character device"), "{args:?}: {e}");
            assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_char_device());
        }
    } else {
        println!("SKIP the device node case: mknod is not permitted here");
    }
    // Someone's file of 4 KiB or more is not overwritten by the relay.
    let other = d.path().join("notes");
    std::fs::write(&other, vec![b'n'; 8192]).unwrap();
    let o = vmtime(&["relay", "--host-page", host_page.to_str().unwrap(), "--guest-page", other.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a vmclock page"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&other).unwrap(), vec![b'n'; 8192]);
    assert!(!d.path().join("notes.state.json").exists(), "no state is written for a refused page");
    // --socket never deletes a file that is not a socket.
    let keep = d.path().join("keep");
    std::fs::write(&keep, b"keep").unwrap();
    let o = vmtime(&[
        "host",
        "--page",
        d.path().join("p").to_str().unwrap(),
        "--socket",
        keep.to_str().unwrap(),
        "--duration-s",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&keep).unwrap(), b"keep");
    // A planted link at the guest page: refused, its target untouched.
    let target = d.path().join("target");
    std::fs::write(&target, vmclock::PageBuilder::new().page_bytes()).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("link.page");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = vmtime(&["relay", "--host-page", host_page.to_str().unwrap(), "--guest-page", link.to_str().unwrap()]);
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&target).unwrap(), vmclock::PageBuilder::new().page_bytes());
}

#[test]
fn class2_queries_never_create_directories() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing");
    let p = missing.join("x.page");
    let run_existed = Path::new("/run/vmtime").exists();
    for args in [
        vec!["status", "--socket", missing.join("x.sock").to_str().unwrap()],
        vec!["watch", p.to_str().unwrap(), "--count", "1"],
        vec!["show", p.to_str().unwrap()],
        vec!["check", p.to_str().unwrap()],
    ] {
        let o = vmtime(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // The default socket: where a host already runs on this machine (the README's main job) it
    // answers, and that is right; where nothing runs, the query fails and creates nothing.
    let o = vmtime(&["status"]);
    if !run_existed {
        assert!(!o.status.success(), "status answered with no /run/vmtime: {}", stderr(&o));
        assert!(!Path::new("/run/vmtime").exists(), "a query created /run/vmtime");
    }
}

/// Runs `script` (sh) in a private mount namespace; None (after a SKIP line) where that is not
/// available.
fn in_private_mounts(script: &str) -> Option<Output> {
    let probe = Command::new("unshare").args(["-m", "--propagation", "private", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIP: unshare -m is not available here (needs root or user namespaces)");
        return None;
    }
    Some(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .env("VMTIME", BIN)
            .output()
            .unwrap(),
    )
}

#[test]
fn class3_shared_and_foreign_runtime_directories_are_refused() {
    if rustix::process::geteuid().as_raw() != 0 {
        println!("SKIP: needs root to act as two users");
        return;
    }
    // Another user (here root) made /tmp/vmtime-65534 first, world-writable: user 65534, with
    // USER unset, refuses it (and would never share a "/tmp/vmtime-user"). The binary is opened
    // before the fresh /tmp hides it (the checkout itself may lie under /tmp).
    let Some(o) = in_private_mounts(
        "exec 3<\"$VMTIME\" && mount -t tmpfs tmpfs /tmp && cat <&3 >/tmp/vmtime && exec 3<&- && chmod 755 /tmp/vmtime && \
         mkdir -m 777 /tmp/vmtime-65534 && \
         setpriv --reuid 65534 --regid 65534 --clear-groups env -u USER -u XDG_RUNTIME_DIR /tmp/vmtime host --quiet --duration-s 1",
    ) else {
        return;
    };
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("/tmp/vmtime-65534: owned by uid 0, not uid 65534"), "{e}");
    // Not there yet: created 0700 for that uid.
    let o = in_private_mounts(
        "exec 3<\"$VMTIME\" && mount -t tmpfs tmpfs /tmp && cat <&3 >/tmp/vmtime && exec 3<&- && chmod 755 /tmp/vmtime && \
         setpriv --reuid 65534 --regid 65534 --clear-groups env -u USER -u XDG_RUNTIME_DIR /tmp/vmtime host --quiet --duration-s 2; \
         stat -c 'dir %u %a' /tmp/vmtime-65534; stat -c 'sock %F' /tmp/vmtime-65534/host.page.sock 2>&1",
    )
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("dir 65534 700"), "{out} {}", stderr(&o));
    assert!(out.contains("No such file"), "the socket is removed at exit: {out}");
    // Root and a /run/vmtime it does not own.
    let o = in_private_mounts(
        "mount -t tmpfs tmpfs /run && mkdir -m 700 /run/vmtime && chown 65534 /run/vmtime && \
         \"$VMTIME\" host --quiet --duration-s 1",
    )
    .unwrap();
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("/run/vmtime: owned by uid 65534, not uid 0") && e.contains("chown 0"), "{e}");
}

#[test]
fn class3_sockets_pages_and_state_are_private_whatever_the_umask() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    let guest = d.path().join("guest.page");
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$0\" \"$@\"", BIN, "relay", "--host-page"])
        .arg(&host_page)
        .arg("--guest-page")
        .arg(&guest)
        .args(["--duration-s", "60"]);
    let mut r = spawn_cmd(c);
    r.wait_answering(&sock(&guest));
    assert_eq!(mode(&sock(&guest)), 0o600, "socket");
    assert_eq!(mode(Path::new(&format!("{}.state.json", guest.display()))), 0o600, "state");
    assert_eq!(mode(&guest), 0o444, "page");
    let p = d.path().join("h2.page");
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$0\" \"$@\"", BIN, "host", "--quiet", "--duration-s", "60", "--page"]).arg(&p);
    let mut h = spawn_cmd(c);
    h.wait_answering(&sock(&p));
    assert_eq!(mode(&sock(&p)), 0o600);
    assert_eq!(mode(&p), 0o444);
}

#[test]
fn class4_a_second_host_or_relay_is_refused_with_the_holders_pid() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    let h = host(&page);
    let o = vmtime(&["host", "--page", page.to_str().unwrap(), "--duration-s", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("pid {}", h.pid())), "{}", stderr(&o));
    assert_eq!(status(&sock(&page))["role"], "host", "the first one's socket is still there");
    let guest = d.path().join("guest.page");
    let r = relay(&page, &guest, &[]);
    let o = vmtime(&["relay", "--host-page", page.to_str().unwrap(), "--guest-page", guest.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("pid {}", r.pid())), "{}", stderr(&o));
    // Another guest page but the same state file: refused too.
    let st = format!("{}.state.json", guest.display());
    let o = vmtime(&[
        "relay",
        "--host-page",
        page.to_str().unwrap(),
        "--guest-page",
        d.path().join("g2.page").to_str().unwrap(),
        "--state",
        &st,
    ]);
    assert!(stderr(&o).contains(&format!("pid {}", r.pid())), "{}", stderr(&o));
    assert_eq!(status(&sock(&guest))["role"], "relay");
}

#[test]
fn class5_signals_stop_cleanly_or_are_logged() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    let mut h = host(&page);
    let guest = d.path().join("guest.page");
    let mut r = relay(&page, &guest, &[]);
    // sync follows a page of its own (the host's may not be calibrated yet).
    let src = d.path().join("src.page");
    gen(&src);
    let sync_sock = d.path().join("sync.sock");
    let mut s = spawn(&[
        "sync",
        "--source",
        src.to_str().unwrap(),
        "--dry-run",
        "--socket",
        sync_sock.to_str().unwrap(),
        "--duration-s",
        "120",
    ]);
    s.wait_answering(&sync_sock);
    // SIGHUP: a reload request (no configuration file yet): counted, logged, still serving.
    for (p, sockp) in [(&h, sock(&page)), (&r, sock(&guest)), (&s, sync_sock.clone())] {
        p.signal("HUP");
        wait_status(&sockp, "counted the SIGHUP", |v| v["reload_requests"] == 1);
    }
    for (p, sig, sockp) in
        [(&mut s, "TERM", sync_sock.clone()), (&mut r, "INT", sock(&guest)), (&mut h, "TERM", sock(&page))]
    {
        p.signal(sig);
        assert!(p.wait_exit().success(), "{sig}: {:?}", p.seen);
        assert!(!sockp.exists(), "{} removed", sockp.display());
    }
    for pg in [&page, &guest] {
        let o = vmtime(&["show", pg.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["valid"], true, "{} stays valid: {v}", pg.display());
    }
}

#[test]
fn class5_followers_survive_a_shrinking_page() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    gen(&page);
    let good = std::fs::read(&page).unwrap();
    let guest = d.path().join("guest.page");
    let mut r = relay(&page, &guest, &[]);
    let mut w = spawn(&["watch", page.to_str().unwrap(), "--poll-ms", "5", "--count", "1"]);
    w.wait_line("seq ");
    let sync_sock = d.path().join("sync.sock");
    let mut s = spawn(&[
        "sync",
        "--source",
        page.to_str().unwrap(),
        "--dry-run",
        "--socket",
        sync_sock.to_str().unwrap(),
        "--duration-s",
        "120",
        "--interval-ms",
        "50",
    ]);
    s.wait_answering(&sync_sock);
    std::fs::set_permissions(&page, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&page).unwrap().set_len(0).unwrap();
    wait_status(&sock(&guest), "in holdover", |v| v["holdover"] == true);
    w.wait_line("only 0 bytes");
    // sync sees a lost source: it answers and reports it.
    let end = Instant::now() + DEADLINE;
    while status(&sync_sock)["source_status"] != serde_json::Value::Null {
        assert!(Instant::now() < end);
    }
    // The page comes back (a new seq_count): every follower carries on.
    let mut bytes = good.clone();
    let seq = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) + 2;
    bytes[12..16].copy_from_slice(&seq.to_le_bytes());
    std::fs::write(&page, &bytes).unwrap();
    wait_status(&sock(&guest), "relaying again", |v| v["holdover"] == false && v["last_host_seq"] == seq);
    w.wait_line(&format!("seq {seq}"));
    assert!(w.wait_exit().success());
    assert!(r.running() && s.running());
}

#[test]
fn class6_state_that_cannot_be_read_stops_the_relay() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    let guest = d.path().join("guest.page");
    let st = d.path().join("state.json");
    std::fs::create_dir(&st).unwrap();
    let args = [
        "relay",
        "--host-page",
        host_page.to_str().unwrap(),
        "--guest-page",
        guest.to_str().unwrap(),
        "--state",
        st.to_str().unwrap(),
    ];
    let o = vmtime(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(st.to_str().unwrap()), "{}", stderr(&o));
    assert!(st.is_dir());
    std::fs::remove_dir(&st).unwrap();
    std::fs::write(&st, b"{ not json").unwrap();
    let o = vmtime(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not a relay state"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&st).unwrap(), b"{ not json", "left as it was");
}

fn marker(page: &Path) -> u64 {
    let o = vmtime(&["show", page.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["fields"]["disruption_marker"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn class6_state_is_saved_before_the_page_and_a_failure_answers_json() {
    if rustix::process::geteuid().as_raw() != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIP: needs root and setpriv to run the relay as a user whose directory can be made read-only");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pages = d.path().join("pages");
    let state_dir = d.path().join("state");
    for x in [&pages, &state_dir] {
        std::fs::create_dir(x).unwrap();
        std::os::unix::fs::chown(x, Some(65534), Some(65534)).unwrap();
    }
    let host_page = pages.join("host.page");
    gen(&host_page);
    let guest = pages.join("guest.page");
    let st = state_dir.join("relay.json");
    let bin = d.path().join("vmtime");
    // Copied by another process: a copy written by this one would be open for writing here, and a
    // process another test forks meanwhile would hold it open until it execs, so that executing
    // the copy fails with ETXTBSY ("Text file busy"; seen under load).
    assert!(Command::new("cp").arg(BIN).arg(&bin).status().unwrap().success());
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .args(["relay", "--duration-s", "120", "--host-page"])
        .arg(&host_page)
        .arg("--guest-page")
        .arg(&guest)
        .arg("--state")
        .arg(&st);
    let mut r = spawn_cmd(c);
    r.wait_answering(&sock(&guest));
    let m0 = marker(&guest);
    // The disk "fills": the state directory can no longer take a new file.
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let (line, _) = vmtime_sys::serve::request(&sock(&guest), "restored", Duration::from_secs(5)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
    assert!(v["error"].as_str().unwrap().contains(st.to_str().unwrap()), "{v}");
    assert_eq!(marker(&guest), m0, "a marker that could not be saved is not published");
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (line, _) = vmtime_sys::serve::request(&sock(&guest), "restored", Duration::from_secs(5)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v.get("error").is_none(), "{v}");
    let m1 = marker(&guest);
    assert_ne!(m1, m0);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&st).unwrap()).unwrap();
    assert_eq!(saved["disruption_marker"].as_u64(), Some(m1), "the page's marker is the saved one");
    r.signal("TERM");
    assert!(r.wait_exit().success());
}

#[test]
fn class6_markers_never_go_backwards_across_restarts() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    let guest = d.path().join("guest.page");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut r = relay(&host_page, &guest, &["--restored"]);
        let m = marker(&guest);
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}.state.json", guest.display())).unwrap()).unwrap();
        assert_eq!(saved["disruption_marker"].as_u64(), Some(m));
        assert!(!seen.contains(&m), "a marker came back: {m:#x} in {seen:x?}");
        seen.push(m);
        r.signal("TERM");
        assert!(r.wait_exit().success());
    }
}

#[test]
fn class5_the_host_survives_its_kernel_page_shrinking() {
    // A page file stands in for /dev/vmclock_host (as in the host tests); it is truncated under
    // the running host, which samples the kernel clock meanwhile and uses the page again after.
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("vmclock_host");
    let o = vmtime(&["gen", fake.to_str().unwrap(), "--time-type", "utc", "--calibrate-ms", "50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let good = std::fs::read(&fake).unwrap();
    let page = d.path().join("host.page");
    let mut h = spawn(&[
        "host",
        "--page",
        page.to_str().unwrap(),
        "--vmclock-host",
        fake.to_str().unwrap(),
        "--quiet",
        "--duration-s",
        "120",
    ]);
    h.wait_line("source: the kernel's own page");
    h.wait_answering(&sock(&page));
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&fake).unwrap().set_len(0).unwrap();
    wait_status(&sock(&page), "off the kernel page", |v| v["kernel_page_readable"] == false);
    std::fs::write(&fake, &good).unwrap();
    wait_status(&sock(&page), "back on the kernel page", |v| v["kernel_page_readable"] == true);
    assert!(h.running());
}

#[test]
fn class1_the_relay_keeps_relaying_while_its_clients_misbehave() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    std::fs::set_permissions(&host_page, std::fs::Permissions::from_mode(0o644)).unwrap();
    let guest = d.path().join("guest.page");
    let _r = relay(&host_page, &guest, &[]);
    let s = sock(&guest);
    // A well-behaved subscriber (another guest's VMM, say) and a stopped one.
    let mut good = UnixStream::connect(&s).unwrap();
    good.write_all(b"subscribe\n").unwrap();
    good.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut good = BufReader::new(good);
    let mut first = String::new();
    good.read_line(&mut first).unwrap();
    let mut stopped = UnixStream::connect(&s).unwrap();
    stopped.write_all(b"subscribe\n").unwrap();
    // A 1.5 GB request line, then 200 idle connections held throughout.
    let mut c = UnixStream::connect(&s).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0u64;
    while sent < 1_500_000_000 {
        match c.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(_) => break,
        }
    }
    let idle: Vec<UnixStream> = (0..200).filter_map(|_| UnixStream::connect(&s).ok()).collect();
    // The host page changes 50 times (written in place, as a publisher does); each change must
    // reach the good subscriber.
    let mut bytes = std::fs::read(&host_page).unwrap();
    let mut slowest = Duration::ZERO;
    for k in 1..=50u32 {
        bytes[12..16].copy_from_slice(&(2 * k).to_le_bytes());
        let t = Instant::now();
        std::fs::write(&host_page, &bytes).unwrap();
        let mut line = String::new();
        assert!(good.read_line(&mut line).unwrap() > 0, "the relay hung up");
        slowest = slowest.max(t.elapsed());
    }
    drop(idle);
    let end = Instant::now() + DEADLINE;
    let st = loop {
        let v = status(&s);
        if v.get("error").is_none() {
            break v;
        }
        assert!(Instant::now() < end, "still busy: {v}");
    };
    let srv = &st["server"];
    println!(
        "FIGURES relay: slowest host page write → guest notification over 50 updates under attack {:.1} ms \
         (the relay polls the page every 1 ms); server {srv}",
        slowest.as_secs_f64() * 1e3
    );
    assert_eq!(st["last_host_seq"], 100);
    assert!(slowest < Duration::from_secs(1), "a client delayed the relay {slowest:?}");
    assert_eq!(srv["dropped_subscribers"], 1, "the stopped subscriber is dropped: {srv}");
    assert_eq!(srv["too_long"], 1, "{srv}");
    drop(stopped);
}
