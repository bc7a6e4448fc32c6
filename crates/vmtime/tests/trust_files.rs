//! Issue 20, files and users: what another user can plant, link or hold, what a small ulimit
//! does, and the messages the tools give. Each test is the issue's reproduction, bounded in
//! time, and waits on the daemons' own output or answers, never on a sleep.
//!
//! "Another user" is uid 65534 (nobody): files are made by the test (root here) in a temporary
//! directory with the sticky bit, like /tmp, and given to 65534 with chown. Tests that need root
//! say SKIP without it.

mod common;

use common::{spawn_logged, vmtime, wait_line, Daemon, LINE_WITHIN, READY_WITHIN};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vmtime");

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temporary directory like /tmp: mode 1777, where anyone may create a name.
fn sticky_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

fn gen(page: &Path) {
    let o = vmtime(&["gen", s(page), "--tai-offset", "37", "--maxerror-ns", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Gives `path` to uid 65534 with `mode`, as if that user had planted it.
fn plant(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// (owner, mode, contents) of a file, to show it was left as it was.
fn fingerprint(path: &Path) -> (u32, u32, u64, Vec<u8>) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.mode() & 0o7777, m.ino(), std::fs::read(path).unwrap())
}

/// Runs `vmtime ARGS`, failing the test if it has not ended within `within` (it is then
/// killed by its pid): for inputs that used to block forever.
fn run_bounded(args: &[&str], within: Duration) -> Output {
    let child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            panic!("vmtime {args:?} did not end within {within:?}");
        }
    }
}

fn status(socket: &Path) -> serde_json::Value {
    let (line, _) = vmtime_sys::serve::request(socket, "status", Duration::from_secs(5)).expect("status");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Asks for the status until `ok` holds (each answer is the daemon's own word), at most
/// `LINE_WITHIN`.
fn wait_status(socket: &Path, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + LINE_WITHIN;
    loop {
        let v = status(socket);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {LINE_WITHIN:?}; last status {v}");
        std::thread::sleep(Duration::from_millis(50)); // the pace of asking, not a synchronisation
    }
}

fn sock(page: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sock", page.display()))
}

fn mknod_char(path: &Path) -> bool {
    // /dev/null's numbers, made in the test's own directory.
    Command::new("mknod").arg(path).args(["c", "1", "3"]).status().is_ok_and(|s| s.success())
}

fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 1. Pages another user planted

#[test]
fn item1_pages_another_user_planted_are_refused_not_adopted() {
    if !is_root() {
        println!("SKIP: needs root to give files to uid 65534");
        return;
    }
    let d = sticky_dir();
    let host_page = d.path().join("host.page");
    gen(&host_page);

    // The issue's page: made by nobody, mode 0666; and the same at 0644 (nobody may chmod it).
    for mode in [0o666, 0o644] {
        let planted = d.path().join(format!("planted-{mode:o}.page"));
        gen(&planted);
        plant(&planted, mode);
        let before = fingerprint(&planted);
        let o = run_bounded(&["host", "--page", s(&planted), "--quiet", "--duration-s", "2"], READY_WITHIN);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(!e.contains("taking over"), "{e}");
        assert!(
            e.contains(&format!("{}: a page file owned by uid 65534 with mode {mode:04o}", planted.display())),
            "{e}"
        );
        assert!(e.contains("never adopts") && e.contains(&format!("rm {}", planted.display())), "{e}");
        assert_eq!(fingerprint(&planted), before, "the planted file is left as it was");

        // The relay's guest page: the same rule.
        let o = run_bounded(
            &[
                "relay",
                "--host-page",
                s(&host_page),
                "--guest-page",
                s(&planted),
                "--tsc-offset",
                "0",
                "--duration-s",
                "2",
            ],
            READY_WITHIN,
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains("a page file owned by uid 65534"), "{e}");
        assert_eq!(fingerprint(&planted), before);
    }

    // A zero-filled "VMM file" nobody planted 0666: the guest would read the relay's time from
    // memory another user writes.
    let vmm = d.path().join("vmm.page");
    std::fs::write(&vmm, vec![0u8; 4096]).unwrap();
    plant(&vmm, 0o666);
    let o = run_bounded(
        &["relay", "--host-page", s(&host_page), "--guest-page", s(&vmm), "--tsc-offset", "0", "--duration-s", "2"],
        READY_WITHIN,
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("a page file owned by uid 65534 with mode 0666"), "{e}");
    assert_eq!(std::fs::read(&vmm).unwrap(), vec![0u8; 4096], "not written");

    // root's own page, but writable by others: refused for its mode.
    let open = d.path().join("open.page");
    gen(&open);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = run_bounded(&["host", "--page", s(&open), "--quiet", "--duration-s", "2"], READY_WITHIN);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("mode 0666 lets every user write it") && e.contains("chmod go-w"), "{e}");

    // A page of one's own (0444, as a host leaves it) is still taken over in place.
    let own = d.path().join("own.page");
    gen(&own);
    let ino = std::fs::metadata(&own).unwrap().ino();
    let (host, _rx) =
        common::spawn_answering(&["host", "--page", s(&own), "--quiet", "--duration-s", "60"], &sock(&own));
    assert_eq!(std::fs::metadata(&own).unwrap().ino(), ino, "taken over in place");
    host.terminate();
}

// ---------------------------------------------------------------------------------------------
// 2. State and lock files another user planted

#[test]
fn item2_a_planted_relay_state_or_lock_is_refused_with_its_owner() {
    if !is_root() {
        println!("SKIP: needs root to give files to uid 65534");
        return;
    }
    let d = sticky_dir();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    let guest = d.path().join("g.page");
    let state = d.path().join("g.page.state.json");
    // The attacker's markers: with them adopted, markers could repeat or go backwards.
    let forged = r#"{"map":{"offset":0,"ratio":1,"frac_bits":0},"disruption_marker":42,"vm_generation":7,"notify":false,"last_host_marker":null,"constants":null}"#;
    std::fs::write(&state, forged).unwrap();
    plant(&state, 0o600);
    let relay = |extra: &[&str]| {
        let mut args = vec![
            "relay",
            "--host-page",
            s(&host_page),
            "--guest-page",
            s(&guest),
            "--tsc-offset",
            "0",
            "--duration-s",
            "2",
        ];
        args.extend_from_slice(extra);
        run_bounded(&args, READY_WITHIN)
    };
    let o = relay(&[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains(&format!("{}: a state file owned by uid 65534 with mode 0600", state.display())), "{e}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), forged, "left as it was");
    assert!(!guest.exists(), "no guest page was published");
    assert!(!d.path().join("g.page.state.json.lock").exists(), "no lock made beside a refused state");
    std::fs::remove_file(&state).unwrap();

    // A lock planted and held (flock) by another user: named for what it is, with the fix,
    // not "in use by another writer".
    let lock = d.path().join("g.page.state.json.lock");
    let held = std::fs::File::create(&lock).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    plant(&lock, 0o644);
    let o = relay(&[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(!e.contains("in use by another writer"), "{e}");
    assert!(e.contains("a lock file owned by uid 65534") && e.contains(&format!("rm {}", lock.display())), "{e}");
    drop(held);
    std::fs::remove_file(&lock).unwrap();

    // With the planted files removed the relay starts, with markers of its own.
    let o = relay(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_ne!(saved["disruption_marker"], 42);
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), 0);
}

// ---------------------------------------------------------------------------------------------
// 3. vmtime qemu --ssdt

#[test]
fn item3_qemu_ssdt_never_writes_through_links_devices_fifos_or_the_page() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("g.page");
    gen(&page);
    let page_before = std::fs::read(&page).unwrap();
    let qemu = |ssdt: &Path| run_bounded(&["qemu", "--page", s(&page), "--ssdt", s(ssdt)], LINE_WITHIN);

    // A link to someone's 0600 file.
    let secret = d.path().join("secret");
    std::fs::write(&secret, "secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("link.aml");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let o = qemu(&link);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret\n");

    // The page itself, by its name and through a link.
    let o = qemu(&page);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the guest page given with --page is there"), "{}", stderr(&o));
    let to_page = d.path().join("to-page");
    std::os::unix::fs::symlink(&page, &to_page).unwrap();
    assert_eq!(qemu(&to_page).status.code(), Some(2));
    assert_eq!(std::fs::read(&page).unwrap(), page_before, "the page is untouched");

    // A fifo: refused at once, not waited on.
    let fifo = d.path().join("fifo.aml");
    mkfifo(&fifo);
    let o = qemu(&fifo);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("a fifo is there, not an ACPI SSDT"), "{}", stderr(&o));

    // A character device (made here with /dev/null's numbers).
    let dev = d.path().join("null.aml");
    if mknod_char(&dev) {
        let o = qemu(&dev);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("a character device is there"), "{}", stderr(&o));
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&std::fs::symlink_metadata(&dev).unwrap().file_type()));
    }

    // Some other file: left alone.
    let other = d.path().join("notes.txt");
    std::fs::write(&other, "my notes\n").unwrap();
    let o = qemu(&other);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not an ACPI SSDT"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "my notes\n");

    // A new path, then the SSDT it wrote: created, then replaced by a new file (rename).
    let out = d.path().join("vm.aml");
    let o = qemu(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::metadata(&out).unwrap();
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"SSDT");
    let o = qemu(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::metadata(&out).unwrap().ino(), first.ino(), "replaced by a new file");
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "no temporary left: {names:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. A metrics port bound first by someone else

#[test]
fn item4_a_metrics_port_taken_first_does_not_stop_the_time_service() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap().to_string();
    let (host, rx) =
        spawn_logged(&["host", "--page", s(&page), "--quiet", "--duration-s", "120", "--metrics-listen", &addr]);
    let l = wait_line(&rx, "cannot serve metrics", READY_WITHIN);
    assert!(l.contains(&addr) && l.contains("trying again"), "{l}");
    // The time service runs meanwhile.
    common::wait_calibrated(&page);
    // Freed: the metrics are served once the daemon tries again.
    drop(squatter);
    wait_line(&rx, "serving metrics on", LINE_WITHIN);
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("vmtime_host_"), "{body}");
    host.terminate();
}

// ---------------------------------------------------------------------------------------------
// 8. The same file as host and guest page

#[test]
fn item8_the_relay_refuses_its_own_output_as_its_input() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("p.page");
    gen(&page);
    let link = d.path().join("link.page");
    std::os::unix::fs::symlink(&page, &link).unwrap();
    let hard = d.path().join("hard.page");
    std::fs::hard_link(&page, &hard).unwrap();
    for (host, guest) in [(&page, &page), (&link, &page), (&hard, &page)] {
        let o = run_bounded(
            &["relay", "--host-page", s(host), "--guest-page", s(guest), "--tsc-offset", "0", "--duration-s", "2"],
            READY_WITHIN,
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{host:?} {guest:?}: {e}");
        assert!(e.contains("are the same file"), "{e}");
    }
    assert!(!d.path().join("p.page.state.json").exists());
    assert!(!d.path().join("p.page.state.json.lock").exists(), "refused before anything was made");
}

// ---------------------------------------------------------------------------------------------
// 11. A fifo for a configuration

#[test]
fn item11_a_fifo_configuration_is_refused_at_once_and_sighup_never_blocks() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo.toml");
    mkfifo(&fifo);
    let o = run_bounded(&["config", "check", s(&fifo)], LINE_WITHIN);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a fifo is there, not a regular file"), "{}", stderr(&o));
    let page = d.path().join("host.page");
    let o = run_bounded(&["host", "--config", s(&fifo), "--page", s(&page), "--duration-s", "2"], LINE_WITHIN);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a fifo is there"), "{}", stderr(&o));

    // SIGHUP with the configuration replaced by a fifo: logged, the daemon keeps serving.
    let cfg = d.path().join("vmtime.toml");
    std::fs::write(&cfg, "[host]\nquiet = true\n").unwrap();
    let (host, rx) = common::spawn_answering(
        &["host", "--config", s(&cfg), "--page", s(&page), "--duration-s", "120"],
        &sock(&page),
    );
    std::fs::rename(&fifo, &cfg).unwrap();
    common::hup(&host);
    wait_line(&rx, "a fifo is there", LINE_WITHIN);
    let v = status(&sock(&page));
    assert_eq!(v["reload_requests"], 1, "{v}");
    host.terminate();
}

// ---------------------------------------------------------------------------------------------
// 12. Out of file descriptors

/// Nanoseconds the threads of a process have spent on a CPU, summed over
/// `/proc/PID/task/*/schedstat` (its first field).
fn on_cpu_ns(pid: u32) -> u64 {
    let mut sum = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        if let Ok(st) = std::fs::read_to_string(t.unwrap().path().join("schedstat")) {
            sum += st.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    }
    sum
}

/// This thread's CPU time (ns), from `/proc/thread-self/schedstat`.
fn this_thread_on_cpu_ns() -> u64 {
    let st = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    st.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn item12_out_of_descriptors_is_no_clocksource_change_and_no_spin() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("host.page");
    let mut cmd = Command::new("sh");
    // The metrics server too: its accept loop runs in a thread of its own.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cmd.args([
        "-c",
        &format!(
            "ulimit -n 20 && exec {BIN} host --page {} --quiet --duration-s 120 --metrics-listen {metrics}",
            s(&page)
        ),
    ]);
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id();
    let mut host = Daemon::from_child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    common::wait_answering(&sock(&page), &mut host, &rx);
    let marker = common::wait_calibrated(&page)["fields"]["disruption_marker"].clone();

    // Subscribers are kept: take every descriptor the host may open, until one more
    // connection is no longer accepted (its subscription is not answered).
    let mut subs = Vec::new();
    loop {
        assert!(subs.len() < 40, "the host accepted 40 subscribers under ulimit -n 20");
        let mut c = UnixStream::connect(sock(&page)).unwrap();
        c.write_all(b"subscribe\n").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut first = String::new();
        let answered = r.read_line(&mut first).is_ok_and(|n| n > 0);
        // Keep every subscriber reading (a subscriber that falls behind is dropped).
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let _ = r.get_mut().set_read_timeout(None);
            while r.get_mut().read(&mut sink).is_ok_and(|n| n > 0) {}
        });
        subs.push(c);
        if !answered {
            break;
        }
    }
    // Now the host is out of descriptors: reading current_clocksource fails, and the queued
    // connection keeps the listener readable. A scrape waits in the metrics server's queue too.
    let _scrape = std::net::TcpStream::connect(metrics).unwrap();
    wait_line(&rx, "cannot read the current clocksource", LINE_WITHIN);
    wait_line(&rx, "metrics: cannot accept a connection", LINE_WITHIN);
    // A measurement window (not a synchronisation): the host's CPU time over 2 s against a
    // reference thread that spins through the same window. A spinning loop gets about as much
    // CPU as the reference however busy the machine is; a loop that waits gets almost none.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c0 = this_thread_on_cpu_ns();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            this_thread_on_cpu_ns() - c0
        })
    };
    let r0 = on_cpu_ns(pid);
    std::thread::sleep(Duration::from_secs(2));
    let host_ns = on_cpu_ns(pid) - r0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reference_ns = spinner.join().unwrap().max(1);
    let share = host_ns as f64 / reference_ns as f64;
    println!(
        "FIGURES out-of-descriptors: host threads used {:.1} % of the CPU a spinning thread got in the same 2 s",
        share * 100.0
    );
    assert!(
        share < 0.25,
        "the host spins: its threads used {:.0} % of the CPU a spinning thread got while out of descriptors",
        share * 100.0
    );
    let now = common::show(&page);
    assert_eq!(now["fields"]["disruption_marker"], marker, "no false disruption");
    let st = now["fields"]["clock_status"]["name"].as_str().unwrap().to_string();
    assert!(st == "SYNCHRONIZED" || st == "FREERUNNING", "{st}");
    let seen: Vec<String> = rx.try_iter().collect();
    assert!(!seen.iter().any(|l| l.contains("clocksource changed")), "{seen:#?}");
    drop(subs);
    drop(host);
}

// ---------------------------------------------------------------------------------------------
// 13. A host page replaced by something that is not a page

#[test]
fn item13_the_relay_holds_over_when_its_host_page_is_replaced_by_a_fifo() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    let guest = d.path().join("g.page");
    let (host, _hrx) = common::spawn_answering(
        &["host", "--page", s(&host_page), "--quiet", "--duration-s", "120"],
        &sock(&host_page),
    );
    common::wait_calibrated(&host_page);
    let (relay, rx) = common::spawn_answering(
        &["relay", "--host-page", s(&host_page), "--guest-page", s(&guest), "--tsc-offset", "0", "--duration-s", "120"],
        &sock(&guest),
    );
    wait_status(&sock(&guest), "relaying", |v| v["holdover"] == false && v["relayed"].as_u64() > Some(0));
    // The host page replaced by a fifo (the host keeps writing its now nameless file).
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &host_page).unwrap();
    wait_status(&sock(&guest), "holdover once the host page is gone", |v| v["holdover"] == true);
    wait_line(&rx, "no longer names the page followed", LINE_WITHIN);
    relay.terminate();
    host.terminate();
}

// ---------------------------------------------------------------------------------------------
// 14. Nothing left behind by a refusal

#[test]
fn item14_a_refusal_leaves_no_files_behind() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    // The relay on a device path: refused before its state's lock is made.
    let dev = d.path().join("dev.page");
    if mknod_char(&dev) {
        let o = run_bounded(
            &["relay", "--host-page", s(&host_page), "--guest-page", s(&dev), "--tsc-offset", "0", "--duration-s", "2"],
            READY_WITHIN,
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("a character device is there"), "{}", stderr(&o));
        assert!(!d.path().join("dev.page.state.json.lock").exists());
        assert!(!d.path().join("dev.page.state.json").exists());
    }
    // ClockBound with shm1 a link: no blank shm0 made first.
    let dir = d.path().join("cb");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(d.path().join("elsewhere"), dir.join("shm1")).unwrap();
    let o = run_bounded(
        &["feed", "clockbound", "--source", s(&host_page), "--dir", s(&dir), "--layout", "both", "--duration-s", "2"],
        READY_WITHIN,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a symbolic link is there"), "{}", stderr(&o));
    assert!(!dir.join("shm0").exists(), "no blank shm0 left behind");
    assert!(!d.path().join("elsewhere").exists());
}

// ---------------------------------------------------------------------------------------------
// 15. A million samples in 30 MB

#[test]
fn item15_check_with_too_little_memory_for_its_samples_says_so() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("p.page");
    gen(&page);
    let o = Command::new("sh")
        .args(["-c", &format!("ulimit -v 30000 && exec {BIN} check {} --samples 1000000", s(&page))])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "an error, not an abort: {e}");
    assert!(e.contains("not enough memory for 1000000 samples") && e.contains("give fewer --samples"), "{e}");
    assert!(!e.contains("memory allocation"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// 16. Messages that name the path and the cause

#[test]
fn item16_messages_name_the_path_and_the_cause() {
    let d = tempfile::tempdir().unwrap();
    // now on a directory, on a fifo.
    let o = run_bounded(&["now", s(d.path())], LINE_WITHIN);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains(s(d.path())) && e.contains("Is a directory") && !e.contains("No such device"), "{e}");
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    let o = run_bounded(&["now", s(&fifo)], LINE_WITHIN);
    let e = stderr(&o);
    assert!(e.contains("a fifo is there") && !e.contains("empty"), "{e}");

    // sim --out on a file, and with a fifo where a file goes: named, before the run / not hung.
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = run_bounded(&["sim", "steady", "--duration", "60s", "--quiet", "--out", s(&file)], READY_WITHIN);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&format!("--out {}", file.display())), "{}", stderr(&o));
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    mkfifo(&out.join("trace.csv"));
    let o = run_bounded(&["sim", "steady", "--duration", "60s", "--quiet", "--out", s(&out)], READY_WITHIN);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains(&format!("{}/trace.csv", out.display())) && e.contains("a fifo is there"), "{e}");

    // A host page whose period is 0, relayed with a TSC ratio: the page is blamed, not the ratio.
    let p0 = d.path().join("p0.page");
    gen(&p0);
    let mut b = std::fs::read(&p0).unwrap();
    b[0x30..0x38].fill(0);
    std::fs::set_permissions(&p0, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&p0, &b).unwrap();
    let guest = d.path().join("g.page");
    let o = run_bounded(
        &[
            "relay",
            "--host-page",
            s(&p0),
            "--guest-page",
            s(&guest),
            "--tsc-offset",
            "0",
            "--tsc-ratio",
            "2",
            "--duration-s",
            "2",
        ],
        READY_WITHIN,
    );
    let e = stderr(&o);
    assert!(e.contains(&p0.display().to_string()) && e.contains("counter period is 0"), "{e}");
    assert!(!e.contains("ratio too far"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The adversarial pass after the items: what else the same kinds of input reached

/// A configuration decides what a daemon does (sync runs its `hook` command): one that another
/// user owns or every user may write is refused, as sshd's StrictModes would.
#[test]
fn adversarial_a_configuration_others_may_write_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("vmtime.toml");
    std::fs::write(&cfg, "[sync]\nhook = \"true\"\n").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = run_bounded(&["config", "check", s(&cfg)], LINE_WITHIN);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("a configuration file owned by uid") && e.contains("mode 0666 lets every user write it"), "{e}");
    assert!(e.contains(&format!("chmod go-w {}", cfg.display())) && !e.contains("rm "), "{e}");
    let page = d.path().join("h.page");
    let o = run_bounded(&["host", "--config", s(&cfg), "--page", s(&page), "--duration-s", "1"], LINE_WITHIN);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!page.exists());
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run_bounded(&["config", "check", s(&cfg)], LINE_WITHIN);
    assert!(o.status.success(), "{}", stderr(&o));
    if is_root() {
        std::os::unix::fs::chown(&cfg, Some(65534), None).unwrap();
        let o = run_bounded(&["config", "check", s(&cfg)], LINE_WITHIN);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("belongs to another user (uid 65534)"), "{}", stderr(&o));
    }
}

/// A page every user may write is not followed by a daemon that passes its time on (relay,
/// feeds): anyone could set that time. Refused before anything is made.
#[test]
fn adversarial_a_page_every_user_may_write_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    std::fs::set_permissions(&host_page, std::fs::Permissions::from_mode(0o666)).unwrap();
    let guest = d.path().join("g.page");
    let o = run_bounded(
        &["relay", "--host-page", s(&host_page), "--guest-page", s(&guest), "--tsc-offset", "0", "--duration-s", "2"],
        READY_WITHIN,
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("a page file every user may write (mode 0666)"), "{e}");
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "nothing made beside the refused pages: {left:?}");
    let cb = d.path().join("cb");
    let o = run_bounded(
        &["feed", "clockbound", "--source", s(&host_page), "--dir", s(&cb), "--duration-s", "2"],
        READY_WITHIN,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("every user may write"), "{}", stderr(&o));
}

/// Under a small open-files limit the daemon that cannot start says what it could not do and
/// the remedy, not a bare "Too many open files (os error 24)".
#[test]
fn adversarial_a_low_open_files_limit_is_named_with_its_remedy() {
    let d = tempfile::tempdir().unwrap();
    for n in 6..=12 {
        let page = d.path().join(format!("h{n}.page"));
        let o = Command::new("sh")
            .args(["-c", &format!("ulimit -n {n} && exec {BIN} host --page {} --quiet --duration-s 1", s(&page))])
            .output()
            .unwrap();
        let e = stderr(&o);
        if !o.status.success() {
            let last = e.lines().last().unwrap_or("");
            assert!(last.contains("cannot ") && last.contains("open-files limit is too low"), "ulimit -n {n}: {e}");
        }
    }
}

/// A directory's owner may rename or remove any file in it, sticky or not: a daemon run as
/// root keeps no page, state or lock in another user's directory (that user could swap the
/// page under the guest), and a follower reads no page in a directory others may write.
#[test]
fn adversarial_directories_others_own_or_may_write_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    // Followed: a host page in a non-sticky directory every user may write.
    let open = d.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let open_page = open.join("host.page");
    gen(&open_page);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let guest = d.path().join("g.page");
    let o = run_bounded(
        &["relay", "--host-page", s(&open_page), "--guest-page", s(&guest), "--tsc-offset", "0", "--duration-s", "2"],
        READY_WITHIN,
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("lets other users replace it"), "{e}");
    assert!(!guest.exists() && !d.path().join("g.page.state.json.lock").exists());
    // The same directory made sticky (like /tmp): followed.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let o = run_bounded(
        &["relay", "--host-page", s(&open_page), "--guest-page", s(&guest), "--tsc-offset", "0", "--duration-s", "1"],
        READY_WITHIN,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    if !is_root() {
        println!("SKIP (the rest): needs root to give a directory to uid 65534");
        return;
    }
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    for mode in [0o755, 0o1777] {
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(mode)).unwrap();
        let page = theirs.join("p.page");
        let o = run_bounded(&["host", "--page", s(&page), "--quiet", "--duration-s", "1"], READY_WITHIN);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains("owned by uid 65534, who may replace or remove the files vmtime keeps there"), "{e}");
        let o = run_bounded(
            &[
                "relay",
                "--host-page",
                s(&host_page),
                "--guest-page",
                s(&page),
                "--tsc-offset",
                "0",
                "--duration-s",
                "1",
            ],
            READY_WITHIN,
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0, "nothing made there");
    }
    // A one-shot output may go there (the user's own directory, written with sudo).
    let o = run_bounded(&["qemu", "--page", s(&host_page), "--ssdt", s(&theirs.join("vm.aml"))], LINE_WITHIN);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A listener at the host's socket path that accepts but never answers (a host stopped with
/// SIGSTOP, a hung one, or a socket another user put there while no host ran): the relay's
/// attempts to subscribe again wait a few ms, not the client's 2 s, so its loop (and its own
/// control socket) never stall on it.
#[test]
fn adversarial_a_publisher_socket_that_never_answers_does_not_stall_the_relay() {
    let d = tempfile::tempdir().unwrap();
    let host_page = d.path().join("host.page");
    gen(&host_page);
    let _mute = std::os::unix::net::UnixListener::bind(sock(&host_page)).unwrap(); // never accepts
    let guest = d.path().join("g.page");
    let (relay, _rx) = common::spawn_answering(
        &["relay", "--host-page", s(&host_page), "--guest-page", s(&guest), "--tsc-offset", "0", "--duration-s", "120"],
        &sock(&guest),
    );
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        status(&sock(&guest));
        worst = worst.max(t.elapsed());
    }
    println!("FIGURES mute publisher: slowest of 20 relay status requests {worst:?}");
    assert!(worst < Duration::from_secs(1), "the relay's loop stalled {worst:?} on a publisher that never answers");
    relay.terminate();
}
