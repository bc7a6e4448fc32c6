//! The OS boundary (issue 12, classes 1–6) tried directly: the control server against
//! misbehaving clients, page and state files against what may be found at their paths,
//! directories, locks and followers of a shrinking page. Each server test drives the server's
//! loop itself on this thread: a call that blocked would hang the test (and fail it by the
//! harness's timeout) instead of passing.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};
use vmtime_sys::files::{self, FileError, PageTarget};
use vmtime_sys::follow::{FollowError, PageReader};
use vmtime_sys::serve::{self, ClientError, Limits, Poller, Reply, Server};

fn answer(line: &str) -> Reply {
    match line {
        "subscribe" => Reply::Subscribe("0".into()),
        "status" => Reply::Line(r#"{"ok":true}"#.into()),
        other => Reply::Line(serve::error_json(&format!("unknown request {other}"))),
    }
}

/// One turn of a daemon's loop: wait (at most `max`), then serve.
fn turn(s: &mut Server, p: &mut Poller, max: Duration) {
    p.clear();
    s.register(p);
    let wake = s.next_deadline().map_or(max, |d| d.saturating_duration_since(Instant::now()).min(max));
    p.wait(Some(wake)).unwrap();
    s.handle(p, answer);
}

/// Turns the loop until `done`, at most `n` times.
fn turn_until(s: &mut Server, p: &mut Poller, n: usize, mut done: impl FnMut(&Server) -> bool) {
    for _ in 0..n {
        if done(s) {
            return;
        }
        turn(s, p, Duration::from_millis(100));
    }
    assert!(done(s), "the server did not get there in {n} turns: {s:?}");
}

fn server(dir: &Path, limits: Limits) -> (Server, std::path::PathBuf) {
    let path = dir.join("d.sock");
    (Server::bind_unix(&path, 0o600, None, limits).unwrap(), path)
}

fn read_line(c: &mut UnixStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = Vec::new();
    let mut b = [0u8; 1];
    while c.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        v.push(b[0]);
    }
    String::from_utf8(v).unwrap()
}

#[test]
fn class1_a_subscriber_that_stops_reading_is_dropped_without_blocking_notify() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, path) = server(d.path(), Limits::default());
    let mut p = Poller::new();
    let mut stopped = UnixStream::connect(&path).unwrap();
    stopped.write_all(b"subscribe\n").unwrap();
    let mut good = UnixStream::connect(&path).unwrap();
    good.write_all(b"subscribe\n").unwrap();
    turn_until(&mut s, &mut p, 50, |s| s.subscribers() == 2);
    assert_eq!(read_line(&mut stopped), "0");
    assert_eq!(read_line(&mut good), "0");
    good.set_nonblocking(true).unwrap();
    // `stopped` never reads again (a suspended `vmtime watch`). Every notify returns at once.
    let mut slowest = Duration::ZERO;
    let mut got = Vec::new();
    for seq in 1..=2000u32 {
        let t = Instant::now();
        s.notify(seq);
        slowest = slowest.max(t.elapsed());
        let mut b = [0u8; 4096];
        while let Ok(n) = good.read(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
    }
    assert_eq!(s.stats().dropped_subscribers, 1, "the stopped subscriber is dropped and counted");
    assert_eq!(s.subscribers(), 1, "the reading subscriber stays");
    let lines: Vec<u32> = String::from_utf8(got).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines, (1..=2000).collect::<Vec<_>>(), "the reader got every notification in order");
    println!("slowest notify of 2000 with a stopped subscriber: {slowest:?}");
}

#[test]
fn class1_a_request_line_longer_than_the_cap_is_refused_and_memory_stays_bounded() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, path) = server(d.path(), Limits::default());
    let mut p = Poller::new();
    let c = UnixStream::connect(&path).unwrap();
    let mut w = c.try_clone().unwrap();
    // A writer thread tries to send 1.5 GB without a newline; the server reads 4 KiB at most.
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0u64;
        while sent < 1_500_000_000 {
            match w.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(_) => break,
            }
        }
        sent
    });
    turn_until(&mut s, &mut p, 50, |s| s.stats().too_long == 1 && s.connections() == 0);
    let mut c = c;
    let reply: serde_json::Value = serde_json::from_str(&read_line(&mut c)).unwrap();
    assert!(reply["error"].as_str().unwrap().contains("longer than 4096 bytes"), "{reply}");
    drop(c);
    let sent = writer.join().unwrap();
    assert!(sent < 1_500_000_000, "the server closed the connection: the client stopped after {sent} bytes");
}

#[test]
fn class1_a_slow_client_is_dropped_at_the_whole_request_deadline() {
    let d = tempfile::tempdir().unwrap();
    let limits = Limits { request_deadline: Duration::from_millis(300), ..Limits::default() };
    let (mut s, path) = server(d.path(), limits);
    let mut p = Poller::new();
    let t0 = Instant::now();
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"st").unwrap(); // and nothing more: one byte every so often would do the same
    turn_until(&mut s, &mut p, 20, |s| s.stats().accepted == 1);
    c.write_all(b"a").unwrap();
    turn_until(&mut s, &mut p, 50, |s| s.stats().timed_out == 1);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.connections(), 0);
    let mut b = [0u8; 16];
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.read(&mut b).unwrap(), 0, "the server closed the connection");
}

#[test]
fn class1_connections_beyond_the_limit_are_told_busy_and_closed() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, path) = server(d.path(), Limits { max_connections: 4, ..Limits::default() });
    let mut p = Poller::new();
    let mut idle: Vec<UnixStream> = (0..10).map(|_| UnixStream::connect(&path).unwrap()).collect();
    turn_until(&mut s, &mut p, 50, |s| s.stats().accepted == 10);
    assert_eq!(s.stats().refused_busy, 6);
    assert_eq!(s.connections(), 4);
    let busy = idle.iter_mut().skip(4).map(read_line).collect::<Vec<_>>();
    for b in busy {
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert!(v["error"].as_str().unwrap().starts_with("busy"), "{b}");
    }
    // A request still gets through once the idle ones are gone.
    drop(idle);
    turn_until(&mut s, &mut p, 50, |s| s.connections() == 0);
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"status\n").unwrap();
    turn_until(&mut s, &mut p, 50, |s| s.stats().answered >= 1);
    assert_eq!(read_line(&mut c), r#"{"ok":true}"#);
}

#[test]
fn class1_error_answers_are_valid_json_whatever_the_request() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, path) = server(d.path(), Limits::default());
    let mut p = Poller::new();
    for req in [&b"\"quoted\" \\ back\tslash\n"[..], b"\xff\xfe\n"] {
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(req).unwrap();
        let before = s.stats().answered;
        turn_until(&mut s, &mut p, 50, |s| s.stats().answered > before);
        let line = read_line(&mut c);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["error"].is_string(), "{line}");
    }
}

#[test]
fn class1_client_requests_time_out() {
    let d = tempfile::tempdir().unwrap();
    // A daemon that accepts nothing and answers nothing.
    let path = d.path().join("silent.sock");
    let _l = UnixListener::bind(&path).unwrap();
    let t0 = Instant::now();
    let e = serve::request(&path, "status", Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // A full backlog: connect itself would wait; it is bounded too.
    let fd = rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::STREAM, None).unwrap();
    let full = d.path().join("full.sock");
    rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new(&full).unwrap()).unwrap();
    rustix::net::listen(&fd, 0).unwrap();
    let mut held = Vec::new();
    loop {
        let c = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let r = rustix::net::connect(&c, &rustix::net::SocketAddrUnix::new(&full).unwrap());
        held.push(c);
        if r.is_err() || held.len() > 64 {
            break;
        }
    }
    let t0 = Instant::now();
    let e = serve::request(&full, "status", Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Nobody there at all: a clear error at once.
    let e = serve::request(&d.path().join("none.sock"), "status", Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, ClientError::NoDaemon { .. }), "{e}");
}

#[test]
fn class2_only_a_stale_socket_is_removed_to_bind() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file.sock");
    std::fs::write(&f, b"precious").unwrap();
    let e = Server::bind_unix(&f, 0o600, None, Limits::default()).unwrap_err();
    assert!(matches!(e, FileError::NotASocket { .. }), "{e}");
    assert!(e.to_string().contains("a regular file"), "{e}");
    assert_eq!(std::fs::read(&f).unwrap(), b"precious");
    let live = d.path().join("live.sock");
    let _l = UnixListener::bind(&live).unwrap();
    let e = Server::bind_unix(&live, 0o600, None, Limits::default()).unwrap_err();
    assert!(matches!(e, FileError::SocketInUse { .. }), "{e}");
    let stale = d.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let s = Server::bind_unix(&stale, 0o600, None, Limits::default()).unwrap();
    let m = std::fs::symlink_metadata(&stale).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "0600 whatever the umask");
    drop(s);
    assert!(!stale.exists(), "our own socket is removed when the server goes");
}

fn blank() -> Vec<u8> {
    vmclock::PageBuilder::new().page_bytes()
}

/// A character device made in the test's own directory (never a real /dev node).
fn mknod_char(path: &Path) -> bool {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    mknodat(CWD, path, FileType::CharacterDevice, Mode::from_raw_mode(0o666), rustix::fs::makedev(1, 5)).is_ok()
}

#[test]
fn class2_page_paths_refuse_devices_dirs_fifos_links_and_other_files() {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("zero");
    if mknod_char(&dev) {
        for e in [files::create_page(&dev, &blank()).unwrap_err(), files::open_page(&dev).unwrap_err()] {
            assert!(e.to_string().contains("a character device"), "{e}");
            assert!(e.to_string().contains(&dev.display().to_string()), "{e}");
        }
        assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_char_device(), "the node is untouched");
    } else {
        println!("SKIP character device case: mknod not permitted here");
    }
    let dir = d.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    assert!(files::create_page(&dir, &blank()).unwrap_err().to_string().contains("a directory"));
    let fifo = d.path().join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .unwrap();
    assert!(files::open_page(&fifo).unwrap_err().to_string().contains("a fifo"));
    // Someone's file of a page or more: not a vmclock page, so never overwritten.
    let other = d.path().join("other");
    std::fs::write(&other, vec![7u8; 8192]).unwrap();
    for e in [files::create_page(&other, &blank()).unwrap_err(), files::open_page(&other).unwrap_err()] {
        assert!(e.to_string().contains("not a vmclock page"), "{e}");
    }
    assert_eq!(std::fs::read(&other).unwrap(), vec![7u8; 8192]);
    // A planted link to a private file: refused, the target untouched.
    let secret = d.path().join("secret");
    std::fs::write(&secret, blank()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    for e in [files::create_page(&link, &blank()).unwrap_err(), files::open_page(&link).unwrap_err()] {
        assert!(matches!(e, FileError::Symlink { .. }), "{e}");
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&secret).unwrap(), blank());
    // A state path that is a link: refused too.
    let e = files::write_state(&link, b"{}").unwrap_err();
    assert!(matches!(e, FileError::Symlink { .. }), "{e}");
    // No temporary left anywhere.
    assert!(std::fs::read_dir(d.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn class2_a_zeroed_vmm_file_is_written_in_place_and_a_page_replaced_only_by_rename() {
    let d = tempfile::tempdir().unwrap();
    let z = d.path().join("guest.page");
    std::fs::write(&z, vec![0u8; 4096]).unwrap();
    let ino = std::fs::metadata(&z).unwrap().ino();
    assert_eq!(files::inspect_page(&z, "write").unwrap(), PageTarget::Zeroed);
    let (p, prev) = files::open_or_create_page(&z, &blank()).unwrap();
    assert!(prev.is_none());
    assert_eq!(p.file().metadata().unwrap().ino(), ino, "the VMM's file keeps its inode");
    drop(p);
    let n = d.path().join("new.page");
    let p = files::create_page(&n, &blank()).unwrap();
    drop(p);
    let ino = std::fs::metadata(&n).unwrap().ino();
    files::create_page(&n, &blank()).unwrap();
    assert_ne!(std::fs::metadata(&n).unwrap().ino(), ino, "a page is replaced by a rename, never rewritten");
}

#[test]
fn class3_directories_are_checked_for_owner_and_mode() {
    let d = tempfile::tempdir().unwrap();
    let mine = d.path().join("mine");
    files::ensure_private_dir(&mine).unwrap();
    assert_eq!(std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777, 0o700);
    let open = d.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = files::ensure_private_dir(&open).unwrap_err();
    assert!(e.to_string().contains("chmod 700"), "{e}");
    let e = files::ensure_dir_for(&open.join("x.page")).unwrap_err();
    assert!(e.to_string().contains("chmod go-w"), "{e}");
    // A sticky world-writable directory (like /tmp) is usable: the files are protected.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    files::ensure_dir_for(&open.join("x.page")).unwrap();
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let e = files::ensure_private_dir(&theirs).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534, not uid 0"), "{e}");
        assert!(e.to_string().contains("chown 0"), "{e}");
    } else {
        println!("SKIP another owner's directory: needs root to make one");
    }
    // Keyed on the uid, never on $USER.
    let rd = files::runtime_dir();
    assert!(
        uid == 0 && rd == Path::new("/run/vmtime")
            || rd.to_string_lossy().contains(&uid.to_string())
            || rd.starts_with(std::env::var("XDG_RUNTIME_DIR").unwrap_or_default())
    );
}

#[test]
fn class4_a_second_writer_is_refused_with_the_holders_pid() {
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("page");
    let held = files::create_page(&page, &blank()).unwrap();
    let e = files::open_page(&page).unwrap_err();
    assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
    let e = files::create_page(&page, &blank()).unwrap_err();
    assert!(matches!(e, FileError::Locked { .. }), "a held page is not replaced either: {e}");
    drop(held);
    files::open_page(&page).unwrap();
    let lock = d.path().join("state.lock");
    let l = files::LockFile::acquire(&lock).unwrap();
    let e = files::LockFile::acquire(&lock).unwrap_err();
    assert!(matches!(e, FileError::Locked { .. }), "{e}");
    drop(l);
    files::LockFile::acquire(&lock).unwrap();
}

#[test]
fn class5_a_follower_of_a_shrinking_or_replaced_file_holds_over_and_follows() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("page");
    std::fs::write(&p, blank()).unwrap();
    let mut f = vmtime_sys::follow::FollowedPage::open(&p).unwrap();
    f.read().unwrap();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(0).unwrap();
    assert!(matches!(f.read().unwrap_err(), FollowError::Short { len: 0, .. }));
    assert!(!f.refresh(), "same file");
    // Its publisher puts a new file in place: followed.
    let tmp = d.path().join("new");
    std::fs::write(&tmp, blank()).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    assert!(f.refresh());
    f.read().unwrap();
    // A directory at the path is refused by name.
    let e = PageReader::open(d.path()).unwrap_err();
    assert!(e.to_string().contains("not a vmclock device or page file"), "{e}");
}

#[test]
fn class6_only_enoent_means_no_state() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("state.json");
    assert!(files::read_state(&s).unwrap().is_none());
    files::write_state(&s, b"{\"a\":1}").unwrap();
    assert_eq!(std::fs::metadata(&s).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(files::read_state(&s).unwrap().unwrap(), b"{\"a\":1}");
    let dir = d.path().join("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let e = files::read_state(&dir).unwrap_err();
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    let big = d.path().join("big.json");
    std::fs::write(&big, vec![b' '; 100_000]).unwrap();
    assert!(matches!(files::read_state(&big).unwrap_err(), FileError::TooLarge { .. }));
}

#[test]
fn class3_a_socket_for_a_group_is_0660_with_that_group() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.sock");
    let gid = rustix::process::getegid().as_raw();
    let s = Server::bind_unix(&p, 0o660, Some(gid), Limits::default()).unwrap();
    let m = std::fs::symlink_metadata(&p).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.gid(), gid);
    assert!(std::fs::read_dir(d.path()).unwrap().count() == 1, "no temporary socket left");
    drop(s);
}

#[test]
fn a_lock_file_has_one_holder_and_names_it_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.lock");
    let first = files::LockFile::acquire(&path).unwrap();
    // flock belongs to an open file description: a second open in this very process is refused.
    let second = files::LockFile::acquire(&path).unwrap_err();
    assert!(matches!(second, FileError::Locked { .. }), "{second}");
    let msg = second.to_string();
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    assert!(msg.contains("sync.lock") && !msg.contains('\n'), "{msg}");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Released with its holder: the next one takes it.
    drop(first);
    let _third = files::LockFile::acquire(&path).unwrap();
    // Never through a link.
    let link = dir.path().join("link.lock");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(files::LockFile::acquire(&link).is_err());
}

#[test]
fn a_dry_run_directory_is_never_a_system_path() {
    let d = files::dry_run_dir();
    assert!(!d.starts_with("/run") && !d.starts_with("/etc") && !d.starts_with("/dev"), "{}", d.display());
    if rustix::process::geteuid().is_root() {
        assert_eq!(d, std::env::temp_dir().join("vmtime-0"));
    } else {
        assert_eq!(d, files::runtime_dir());
    }
}

#[test]
fn shared_words_map_a_whole_file_both_ways() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("region");
    std::fs::File::create(&p).unwrap().set_len(3 * 4096 + 12).unwrap();
    let a = vmtime_sys::files::SharedWords::map(&p).unwrap();
    let b = vmtime_sys::files::SharedWords::map(&p).unwrap();
    // The whole file (rounded down to whole words), not one page.
    assert_eq!(a.words().len(), (3 * 4096 + 8) / 8);
    let last = a.words().len() - 1;
    a.words()[last].store(0x0123_4567_89ab_cdef, SeqCst);
    assert_eq!(b.words()[last].load(SeqCst), 0x0123_4567_89ab_cdef, "one shared mapping");
    drop((a, b));
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[last * 8..last * 8 + 8], &0x0123_4567_89ab_cdefu64.to_ne_bytes(), "in the file");
    std::fs::File::create(dir.path().join("tiny")).unwrap().set_len(7).unwrap();
    assert!(vmtime_sys::files::SharedWords::map(&dir.path().join("tiny")).is_err());
}
